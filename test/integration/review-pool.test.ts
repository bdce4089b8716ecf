/**
 * Review of a memcached pool upstream's cold-detector paths on private memcached processes (the
 * router-level tests: test/router/review-pool-cold.test.ts). Tests marked todo fail on the code
 * they were written against (bbdc31d).
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

// Finding 4. A pool with eject=true, one server paused past the timeout: ejected, its keys placed
// on the other server, the pool fenced for lock-fence (knownEmpty at the ring move). A lock is
// taken meanwhile (decided by the next upstream, copied to the pool's other server). The operator
// then turns eject off (SIGHUP: `eject` is a tuning option, so the pool stays the same store and
// keeps its health; the server stays down). The server resumes with the data it had: the ring
// does not move back (eject=false never moves it), so nothing fences the pool as come back
// without its keys' state; the precaution its return sets (serverReconnected) is lifted by the
// marker it kept. The pool, first and warm, decides `add lock.<sid>` on that server, which never
// had the lock: STORED, the lock granted twice, at once after the server's return (with eject=true
// kept, its return would have fenced the pool for lock-fence: README "Locks across failover").
it('eject turned off by a reload while a server is ejected: that server, back, does not grant a lock taken while it was out', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 3);
  const dir = stateDir(t, 'mcmux-review-pool-int-');
  const fence = 1500;
  const scalars = { 'state-dir': dir, 'lock-fence': String(fence), 'log-level': 'silent' };
  const urls = (eject: boolean): string[] => [poolUrl(servers.slice(0, 2), `?eject=${eject}&timeout=200`), (servers[2] as MemcachedProcess).url];
  const app = await inProcessMcmux(scalars, urls(true));
  const w = await client(t, app);
  const lock = keyOn(poolOf(app), 1, 'lock.s');
  const victim = servers[1] as MemcachedProcess;
  assert.equal(await w.ask(`get ${lock}\r\n`), 'END\r\n');
  await victim.pause();
  t.after(() => victim.resume());
  await eventually('the paused server is ejected', async () => {
    await w.ask(`get ${lock}\r\n`, /END\r\n$|ERROR.*\r\n$/);
    return !(poolOf(app).members()[1] as HealthyUpstream).usable;
  });
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n', 'taken while the server is out');
  await new Promise((r) => setTimeout(r, fence + 200)); // the ejection's fence is over
  reloadTo(app, scalars, urls(false));
  const pool = poolOf(app);
  assert.equal(pool.settings.eject, false);
  victim.resume();
  const u = app.upstreams[0] as HealthyUpstream;
  await eventually('the server is back', () => (pool.members()[1] as HealthyUpstream).usable, 15_000);
  // The precaution its return set is lifted by its kept marker (a check or two).
  for (let i = 0; i < 5 && u.fenced && !u.cameBackEmpty; i++) await app.coldDetector.check(u);
  t.diagnostic(`pool fenced: ${u.fenced}, came back empty: ${u.cameBackEmpty}`);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', 'LOCK GRANTED TWICE: the server that was out decided, without the lock');
});
