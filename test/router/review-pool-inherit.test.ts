/**
 * Fuzz seed 4369 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1
 * MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1, reduced. Chain [a, pool(s0, s1)].
 *
 * Process 2 starts while s1 (restarted empty) is unreachable: the pool is fenced as a precaution,
 * s0's kept marker is not rewritten (partial look). s1's reconnect check finds it cold: the pool is
 * fenced as come back empty and the `fenced until` marker goes to s1 ONLY. An incr decided by `a`
 * is copied to the pool under that fence (journal.log: learnt under the fence id).
 * Process 3 starts while `a` (restarted empty) is unreachable: a fenced as a precaution; the pool's
 * look finds s0 plain (fenceId 0) and s1 `fenced until` (id N): verdict fences the pool till then,
 * but ColdDetector.inherit gives up (the stores do not all name the same id): the pool neither
 * knows the counter nor is known as come back empty. `a` answers again: both fenced, both ranked
 * as precautions, chain order: `a`, empty, decides the incr: NOT_FOUND.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { wirePool } from '../helpers/pool-ring';

const silent = pino({ level: 'silent' });
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };
const FENCE_MS = 3_600_000;

function proc(fa: FakeUpstream, sf: FakeUpstream[], dir: string) {
  const pool = new MemcachedPool(
    'memcached://s0,s1',
    sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })),
    { distribution: 'ketama', namespace: '', eject: false },
    HEALTH,
  );
  const a = new HealthyUpstream(fa, HEALTH, () => {});
  const p = new HealthyUpstream(pool, HEALTH, () => {});
  const ups = [a, p];
  const journal = new RepairJournal({ maxKeys: 1000, dir, fsync: 'no' });
  journal.load(ups);
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  wirePool(pool, p, detector);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const keyOn = (i: number): string => {
    for (let n = 0; n < 1000; n++) if (pool.serverFor(`c${n}`) === pool.members()[i]) return `c${n}`;
    throw new Error('no key');
  };
  return { a, p, pool, journal, detector, exec, keyOn, servers: pool.members() as readonly HealthyUpstream[], stop: () => { detector.stop(); journal.close(); return Promise.all(ups.map((u) => u.close())); } };
}

const set = (key: string, v: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(v), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const incr = (key: string, d: number): Command => ({ kind: 'arith', op: 'incr', key, delta: BigInt(d), initial: undefined, deadline: 0, noreply: false });
const show = (r: Reply): string => (r.kind === 'number' ? String(r.value) : r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);

describe('a pool fence named by one server only is inherited (fuzz seed 4369, reduced by helper-123)', () => {
  it('the next process does not let an unverified, emptied upstream decide a counter the fenced pool was written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-pool-inherit-'));
    try {
      const fa = new FakeUpstream('memcached://a:11211', 'memcached');
      const sf = [new FakeUpstream('memcached://s0:11211', 'memcached'), new FakeUpstream('memcached://s1:11211', 'memcached')];
      // Process 1: every marker written, the counter on a and on s0.
      const p1 = proc(fa, sf, dir);
      const c = p1.keyOn(0);
      await p1.detector.checkAll();
      assert.equal(show(await p1.exec(set(c, '10'))), 'STORED');
      await p1.stop();

      // s1 restarts empty while no mcmux runs, unreachable as process 2 starts.
      await (sf[1] as FakeUpstream).inner.flush();
      (sf[1] as FakeUpstream).mode = 'fail';
      const p2 = proc(fa, sf, dir);
      await p2.detector.checkAll();
      assert.equal(p2.p.fenced, true, 'pool fenced as a precaution (s1 unread)');
      (sf[1] as FakeUpstream).mode = 'ok';
      p2.detector.serverReconnected(p2.p, p2.servers[1] as HealthyUpstream);
      await settle();
      assert.equal(p2.p.cameBackEmpty, true, 's1 found come back empty');
      assert.equal(show(await p2.exec(incr(c, 5))), '15', 'decided by a, copied to the fenced pool');
      await settle();
      await p2.stop();

      // a restarts empty while no mcmux runs, unreachable as process 3 starts.
      await fa.inner.flush();
      fa.mode = 'fail';
      const p3 = proc(fa, sf, dir);
      await p3.detector.checkAll();
      assert.equal(p3.p.fenced, true, 'pool fenced by process 2\'s marker on s1');
      assert.equal(p3.a.fenced, true, 'a fenced as a precaution (unread)');
      fa.mode = 'ok'; // answers again before any check read it
      const r = await p3.exec(incr(c, 2));
      assert.notEqual(show(r), 'NOT_FOUND', `LOST WRITE: the counter the pool holds (15) was decided by the emptied a; pool.cameBackEmpty=${p3.p.cameBackEmpty}`);
      await p3.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
