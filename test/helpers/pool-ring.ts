/**
 * For router-level tests of a memcached pool over fault-injecting fakes: the wiring app.ts gives a
 * pool, and taking a server out of the ring and back (eject=true: each a ring move).
 */

import assert from 'node:assert/strict';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats, settle } from './fake-upstream';

/** Wires `pool`, the driver of `p`, to `detector` as app.ts does (resolveUpstreams). */
export function wirePool(pool: MemcachedPool, p: HealthyUpstream, detector: ColdDetector): void {
  for (const member of pool.members()) member.inner.onReconnect = (): void => detector.serverReconnected(p, member);
  pool.onRingMoved = (): void => detector.ringMoved(p);
  pool.onMemberChange = (u, _from, to): void => {
    if (to === 'healthy') detector.serverReconnected(p, u);
  };
}

const noop = (): void => {};

/**
 * One process over [b: memcached, pool(s0, s1)], fakes, wired as app.ts wires them; write-wait
 * copies, lock-fence 60 s (the fences last the test). `keyOn(i, prefix)`: a key on server i.
 */
export function poolRig(eject: boolean) {
  const health = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };
  const sf = [new FakeUpstream('memcached://s0:11211', 'memcached'), new FakeUpstream('memcached://s1:11211', 'memcached')];
  const fb = new FakeUpstream('memcached://b:11211', 'memcached');
  const pool = new MemcachedPool('memcached://s0,s1', sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })), { distribution: 'ketama', namespace: '', eject }, health);
  const p = new HealthyUpstream(pool, health, noop);
  const b = new HealthyUpstream(fb, health, noop);
  const ups = [b, p];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'copies', allowFlush: false }, noStats, noop);
  const detector = new ColdDetector(() => ups, 60_000, pino({ level: 'silent' }), journal);
  wirePool(pool, p, detector);
  const servers = pool.members();
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const keyOn = (i: number, prefix = 'k'): string => {
    for (let n = 0; n < 1000; n++) if (pool.serverFor(`${prefix}${n}`) === servers[i]) return `${prefix}${n}`;
    throw new Error(`no key on server ${i}`);
  };
  const close = async (): Promise<void> => {
    detector.stop();
    journal.close();
    await Promise.all(ups.map((u) => u.close()));
  };
  return { sf, fb, p, b, servers, journal, detector, exec, keyOn, close };
}

/** What takeDown and bringBack need of a test's process. */
interface Rig {
  readonly servers: readonly HealthyUpstream[];
  keyOn(i: number, prefix?: string): string;
  exec(c: Command): Promise<Reply>;
}

/**
 * Server `i` (behind `f`) fails until its health marks it down (eject: the ring moves). By writes:
 * a pool whose ring moved before is read for no key until flushed (ringMoved distrusts it).
 */
export async function takeDown(s: Rig, f: FakeUpstream, i: number): Promise<void> {
  f.mode = 'fail';
  const key = s.keyOn(i, 'probe.');
  const set: Command = { kind: 'store', mode: 'set', key, value: Buffer.from('x'), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false };
  for (let n = 0; n < 20 && s.servers[i]?.usable; n++) await s.exec(set);
  assert.equal(s.servers[i]?.usable, false, `server ${i} is down`);
}

/** Server `i` answers again: its next probe brings it back (eject: the ring moves back). */
export async function bringBack(s: Rig, f: FakeUpstream, i: number): Promise<void> {
  f.mode = 'ok';
  for (let n = 0; n < 200 && !s.servers[i]?.usable; n++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(s.servers[i]?.usable, true, `server ${i} is back`);
  await settle();
}
