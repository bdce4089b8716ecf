/**
 * What the router fuzz found with one upstream of the chain a memcached pool of two servers
 * (fuzz.test.ts, MCMUX_FUZZ_POOL=1), minimised by hand to FakeUpstreams behind a real
 * MemcachedPool. Each test failed before the fix that came with it.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command, Reply } from '../../src/command/command';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats } from '../helpers/fake-upstream';
import { describeReply } from '../helpers/reply-text';

const noop = (): void => {};
const set = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const get = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const values = (r: Reply): Array<string | undefined> => (r.kind === 'values' ? r.hits.map((h) => h?.value.toString()) : [`<${describeReply(r)}>`]);
/** Health that takes a server down at its first failure, and probes it back only much later. */
const HEALTH = { downAfter: 1, probeMinMs: 60_000, probeMaxMs: 60_000 };

/** A chain of a plain upstream, then a pool of two servers (as `memcached://10.0.0.1,10.0.0.17`). */
function chain() {
  const first = new FakeUpstream('fake://0');
  const servers = [new FakeUpstream('fake://a'), new FakeUpstream('fake://b')];
  const pool = new MemcachedPool(
    'memcached://10.0.0.1,10.0.0.17',
    servers.map((upstream, i) => ({ host: i === 0 ? '10.0.0.1' : '10.0.0.17', port: 11211, weight: 1, upstream })),
    { distribution: 'ketama', namespace: '', eject: false },
    HEALTH,
  );
  const ups = [new HealthyUpstream(first, HEALTH, noop), new HealthyUpstream(pool, HEALTH, noop)];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, noop);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  /** A key the pool places on server `i`. */
  const keyOn = (i: number): string => {
    for (let n = 0; ; n++) if (pool.serverFor(`sess${n}`) === pool.members()[i]) return `sess${n}`;
  };
  return { first, servers, pool, ups, exec, keyOn, close: () => Promise.all(ups.map((u) => u.close())) };
}

describe('router fuzz findings with a memcached pool (MCMUX_FUZZ_POOL=1)', () => {
  // Seed 1172 of 1-2000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1:
  // up1 = pool(up1a, up1b); up1a paused, its health down; up0 evicted s1 (a cache); then
  // `get s2 s0 s1 s2`: up0 missed s0 and s1, the pool was asked for both, s0 on the down server
  // failed with MCMUX_UPSTREAM_DOWN, and the pool's get threw that error without the hits of the
  // server that answered (MemcachedPool.get attached them to MCMUX_UPSTREAM_PARTIAL only): s1 was
  // answered from up0's miss, a LOST WRITE, while up1b, up and clean for it, held it.
  it('a multi-get over a pool one server of which is down serves what the other servers hold (the next upstream lacks it)', async () => {
    const { first, servers, pool, exec, keyOn, close } = chain();
    try {
      const onA = keyOn(0);
      const onB = keyOn(1);
      assert.deepEqual(values(await exec(set(onB, 'cart'))), ['<STORED>']);
      // The first upstream, a cache, evicts it (mcmux cannot tell: it is clean there).
      await first.inner.delete(onB);
      // Server a fails once: its health takes it down (the pool is still up: b is).
      (servers[0] as FakeUpstream).mode = 'fail';
      await assert.rejects(pool.get([onA]));
      assert.equal(pool.members()[0]?.state, 'down');
      assert.equal(pool.members()[1]?.state, 'healthy');
      // Neither key is in the first upstream: the pool is asked for both, in one request.
      assert.deepEqual(values(await exec(get(onA, onB))), [undefined, 'cart'], 'LOST WRITE: the session on the server that is up is served');
    } finally {
      await close();
    }
  });
});
