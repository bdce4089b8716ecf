/**
 * Review h3 of 6e6fc72 on private memcached processes, through app.ts's reload (the router-level
 * tests: test/router/review-h3.test.ts).
 */

import assert from 'node:assert/strict';
import { type TestContext, it } from 'node:test';
import type { App } from '../../src/app';
import type { HealthyUpstream } from '../../src/router/health';
import type { MemcachedPool } from '../../src/upstream/memcached-pool';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { poolOf, poolUrl, stateDir } from '../helpers/pool-app';
import { type MemcachedProcess, requireBinary, startMemcacheds } from '../helpers/servers';
import { type Wire, connectWire } from '../helpers/wire';

async function client(t: TestContext, app: App): Promise<Wire> {
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  return w;
}

/** A key of the form `${prefix}N` that `pool` places on its server `i` (the full ring). */
function keyOn(pool: MemcachedPool, i: number, prefix: string): string {
  for (let n = 0; n < 1000; n++) if (pool.serverFor(`${prefix}${n}`) === pool.members()[i]) return `${prefix}${n}`;
  throw new Error(`no key on server ${i}`);
}

/** Server `i` of the pool stops answering until the pool ejects it (writes of `key`, placed there: a distrusted pool is not read). */
async function eject(app: App, w: Wire, victim: MemcachedProcess, i: number, key: string): Promise<void> {
  await victim.pause();
  await eventually(`server ${i} ejected`, async () => {
    await w.ask(`set ${key} 0 0 1\r\nx\r\n`, /STORED\r\n$|ERROR.*\r\n$/);
    return !(poolOf(app).members()[i] as HealthyUpstream).usable;
  }, 15_000);
}

async function back(app: App, victim: MemcachedProcess, i: number): Promise<void> {
  victim.resume();
  await eventually(`server ${i} back in the ring`, () => (poolOf(app).members()[i] as HealthyUpstream).usable, 15_000);
}

// Finding 1 through app.ts: a reload that changes only the pool's timeout rebuilds the pool (the
// same store, its journal state kept) while a ring move's distrust trusts the keys that did not
// move; that test stayed bound to the pool the reload replaced (repair-flush-caches off keeps the
// pool distrusted, as a store behind it that is down would). Fails without 4efef3d (checked:
// v1 served).
it('after a reload rebuilt a distrusted pool, a session that moves and comes back to a server holding an older value is not served from it', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 4);
  const [m0, m1, m2, m3] = servers as [MemcachedProcess, MemcachedProcess, MemcachedProcess, MemcachedProcess];
  t.after(() => {
    m1.resume();
    m2.resume();
  });
  const scalars = { 'state-dir': stateDir(t, 'mcmux-review-h3-'), 'lock-fence': '1500', 'log-level': 'silent', 'repair-flush-caches': 'false' };
  const urls = (timeout: number): string[] => [poolUrl([m0, m1, m2], `?eject=true&timeout=${timeout}`), m3.url];
  const app = await inProcessMcmux(scalars, urls(200));
  const w = await client(t, app);
  const sess = keyOn(poolOf(app), 1, 'memc.sess.key.');
  const probe2 = keyOn(poolOf(app), 2, 'probe.');
  const probe1 = keyOn(poolOf(app), 1, 'probe.');
  assert.equal(await w.ask(`set ${sess} 0 0 2\r\nv1\r\n`), 'STORED\r\n');
  await eject(app, w, m2, 2, probe2);
  await back(app, m2, 2);
  const u = app.upstreams[0] as HealthyUpstream;
  assert.ok(app.journal.overflowed(u), 'the ring moved: distrusted');
  reloadTo(app, scalars, urls(250)); // a timeout: the same store, a new pool
  await eject(app, w, m1, 1, probe1);
  assert.notEqual(poolOf(app).serverFor(sess), poolOf(app).members()[1], 'sess moved');
  assert.equal(await w.ask(`set ${sess} 0 0 2\r\nv2\r\n`), 'STORED\r\n', 'where it moved to, and the store behind');
  await back(app, m1, 1);
  assert.equal(poolOf(app).serverFor(sess), poolOf(app).members()[1], 'sess back on the server that holds v1');
  assert.equal(await w.ask(`get ${sess}\r\n`), `VALUE ${sess} 0 2\r\nv2\r\nEND\r\n`, 'STALE SESSION: v1, from the server sess came back to');
});
