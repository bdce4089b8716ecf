/**
 * For router-level tests of a memcached pool over fault-injecting fakes: the wiring app.ts gives a
 * pool, and taking a server out of the ring and back (eject=true: each a ring move).
 */

import assert from 'node:assert/strict';
import type { Command, Reply } from '../../src/command/command';
import type { ColdDetector } from '../../src/router/cold-detector';
import type { HealthyUpstream } from '../../src/router/health';
import type { MemcachedPool } from '../../src/upstream/memcached-pool';
import { type FakeUpstream, settle } from './fake-upstream';

/** Wires `pool`, the driver of `p`, to `detector` as app.ts does (resolveUpstreams). */
export function wirePool(pool: MemcachedPool, p: HealthyUpstream, detector: ColdDetector): void {
  for (const member of pool.members()) member.inner.onReconnect = (): void => detector.serverReconnected(p, member);
  pool.onRingMoved = (): void => detector.ringMoved(p);
  pool.onMemberChange = (u, _from, to): void => {
    if (to === 'healthy') detector.serverReconnected(p, u);
  };
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
