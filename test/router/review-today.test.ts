/**
 * Adversarial review of the fixes of 2026-11-29 (1976150 pool ring moves distrust the pool,
 * e619220 reads after a repair flush, cd6343c other processes' markers, 4059186 Redis replication
 * id). Each test builds a real MemcachedPool over fault-injecting fakes (as
 * review-pool-cold.test.ts does) or a plain chain of fakes, and asserts what a client must never
 * see. Tests marked todo fail on the code they were written against (4570487).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector, markerKey } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';

const silent = pino({ level: 'silent' });
const FENCE_MS = 60_000;
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const getCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: undefined });
const flushCmd = (): Command => ({ kind: 'flush', delay: 0, noreply: false }) as Command;
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

interface Opts {
  eject?: boolean;
  /** No upstream behind the pool. */
  alone?: boolean;
  allowFlush?: boolean;
  maxKeys?: number;
}

/** One mcmux process over a pool of `sf` (eject) and, unless alone, the plain upstream `fb`; with a repairer. */
function proc(sf: readonly FakeUpstream[], fb: FakeUpstream, o: Opts = {}) {
  const pool = new MemcachedPool(
    `memcached://${sf.map((_, i) => `s${i}`).join(',')}`,
    sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })),
    { distribution: 'ketama', namespace: '', eject: o.eject ?? true },
    HEALTH,
  );
  const p = new HealthyUpstream(pool, HEALTH, () => {});
  const b = new HealthyUpstream(fb, HEALTH, () => {});
  const ups = o.alone === true ? [p] : [p, b];
  const journal = new RepairJournal({ maxKeys: o.maxKeys ?? 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: o.allowFlush ?? false }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  for (const member of pool.members()) member.inner.onReconnect = (): void => detector.serverReconnected(p, member);
  pool.onRingMoved = (): void => detector.ringMoved(p);
  pool.onMemberChange = (u, _from, to): void => {
    if (to === 'healthy') detector.serverReconnected(p, u);
  };
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const servers = pool.members() as readonly HealthyUpstream[];
  const keyOn = (i: number, prefix = 'sess.'): string => {
    for (let n = 0; n < 1000; n++) if (pool.serverFor(`${prefix}${n}`) === servers[i]) return `${prefix}${n}`;
    throw new Error(`no key on server ${i}`);
  };
  const stop = (): Promise<unknown> => {
    journal.close();
    return Promise.all(ups.map((u) => u.close()));
  };
  return { pool, p, b, servers, journal, router, detector, repairer, exec, keyOn, stop };
}

const fakes = (n = 2): { sf: FakeUpstream[]; fb: FakeUpstream } => ({
  sf: Array.from({ length: n }, (_, i) => new FakeUpstream(`memcached://s${i}:11211`, 'memcached')),
  fb: new FakeUpstream('memcached://b:11211', 'memcached'),
});

/** Server `i` fails until its health marks it down (eject: the ring moves). */
async function takeDown(s: ReturnType<typeof proc>, f: FakeUpstream, i: number): Promise<void> {
  f.mode = 'fail';
  const key = s.keyOn(i, 'probe.');
  for (let n = 0; n < 20 && s.servers[i]?.usable; n++) await s.exec(setCmd(key, 'x'));
  assert.equal(s.servers[i]?.usable, false, `server ${i} is down`);
}

/** Server `i` answers again: its next probe brings it back (eject: the ring moves back). */
async function bringBack(s: ReturnType<typeof proc>, f: FakeUpstream, i: number): Promise<void> {
  f.mode = 'ok';
  for (let n = 0; n < 200 && !s.servers[i]?.usable; n++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(s.servers[i]?.usable, true, `server ${i} is back`);
  await settle();
}

describe('review-today 1976150: a pool ring move distrusts the pool', () => {
  // Finding 1. eject=true, sess (home s1) = v1 on s1 and b. s1 goes out (ring move: the pool is
  // distrusted). The user logs out (delete: b; s0 has no copy). The repair flushes the servers in
  // the ring (s0 alone) and, once the flush is answered, trusts the pool. s1 comes back, with v1,
  // while that flush is in flight: the ring moves again and ringMoved distrusts the pool afresh,
  // but flushOverflowed then trusts it (journal.trust) without looking whether the overflow it
  // flushed for is still the one in force. s1 was never flushed: the destroyed session is served.
  it('a server back while the repair flushes the others is not trusted by that flush', async () => {
    const { sf, fb } = fakes();
    const s = proc(sf, fb);
    const sess = s.keyOn(1);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED', 'on s1 and b');
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.ok(s.journal.overflowed(s.p), 'the ring moved: distrusted');
    assert.equal(status(await s.exec(delCmd(sess))), 'DELETED', 'logout, while s1 is out');
    const s0 = sf[0] as FakeUpstream;
    s0.gateOnly = (call) => call === 'flush';
    s0.close_gate();
    const tick = s.repairer.tick(); // flushes s0, held at its gate
    for (let n = 0; n < 50 && !s0.calls.includes('flush'); n++) await settle();
    assert.ok(s0.calls.includes('flush'), 'the repair\'s flush is in flight');
    await bringBack(s, sf[1] as FakeUpstream, 1); // the ring moves back meanwhile
    assert.equal(s.pool.serverFor(sess), s.servers[1]);
    s0.open();
    await tick;
    assert.equal(valueOf(await s.exec(getCmd(sess))), undefined, 'DESTROYED SESSION SERVED: s1, back during the flush, was never flushed, and the flush trusted the pool');
    // Not a pool never trusted again: the next tick flushes both servers and trusts it.
    await s.repairer.tick();
    assert.equal(s.journal.overflowed(s.p), undefined, 'trusted again once flushed whole');
    assert.equal((await (sf[1] as FakeUpstream).inner.get([sess]))[0], undefined, 's1 was flushed');
    assert.equal(status(await s.exec(setCmd(sess, 'v2'))), 'STORED');
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'v2');
    await s.stop();
  });

  // Finding 2. Before 1976150 the pool's flush failed while a server was out (that server's
  // UPSTREAM_DOWN), so a client's flush_all answered SERVER_ERROR. Now the flush leaves the server
  // out of the ring alone and the flush_all is acknowledged: when that server comes back, it still
  // holds every value written before the flush_all. With another upstream behind the pool and
  // repair-flush-caches, the ring move's distrust and the repair's flush cover it; with the pool
  // alone in the chain (or repair-flush-caches = false) the pool is read for every key all the same
  // (docs/drivers.md: "a key no other upstream is clean for is read from the pool"), and a value
  // an acknowledged flush_all removed is served again.
  it('an acknowledged flush_all is not undone by a pool server that was out of the ring (the pool alone)', { todo: 'finding 2: MemcachedPool.flush skips the servers out of the ring for a client\'s flush_all too, which is acknowledged; the server returns with what it held' }, async () => {
    const { sf, fb } = fakes();
    const s = proc(sf, fb, { alone: true, allowFlush: true });
    const sess = s.keyOn(1);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED', 'on s1');
    await takeDown(s, sf[1] as FakeUpstream, 1);
    const flushed = status(await s.exec(flushCmd()));
    await bringBack(s, sf[1] as FakeUpstream, 1);
    const got = valueOf(await s.exec(getCmd(sess)));
    assert.ok(flushed !== 'OK' || got === undefined, `flush_all answered ${flushed}, then the key read ${String(got)}: A VALUE AN ACKNOWLEDGED flush_all REMOVED IS SERVED`);
    await s.stop();
  });
});
