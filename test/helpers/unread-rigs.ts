/**
 * The rigs of review-h30, h32 and h33 (one copy, in-process on FakeUpstreams, helpers/flushed-cache
 * proc): a cache the repair flushed whose read fails as it is asked for a key (DirtyEntry.asks),
 * and a marker write of the fence before a flush landing after it (voided fences).
 */

import assert from 'node:assert/strict';
import type { Command, Reply } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { type HealthyUpstream, knowsKey, repairEmptied } from '../../src/router/health';
import type { StoreRequest } from '../../src/upstream/upstream';
import { FakeUpstream, settle } from './fake-upstream';
import { proc } from './flushed-cache';

export const setCmd = (key: string, value: string, deadline = 0): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline, cas: undefined, withCas: false, noreply: false });
export const addCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
export const getCmd = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
export const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
export const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

/** A fake whose gets of `slowKey` time out (the server slow for that one read), the rest as usual. */
export class SlowGet extends FakeUpstream {
  slowKey: string | undefined;
  override async get(keys: readonly string[], touch?: number) {
    if (this.slowKey !== undefined && keys.includes(this.slowKey)) {
      this.calls.push(`get ${keys.join(' ')}`);
      await new Promise((r) => setTimeout(r, this.timeoutMs));
      throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: injected timeout of a get`);
    }
    return super.get(keys, touch);
  }
}

/**
 * [a, b] (`fa`, `fb`: memcached fakes), journal-max-keys 2: `sess` set on both, then a flushed by
 * the repair (it lost the session) and taught two keys since (it stopped learning: past
 * journal-max-keys, what reaches it is not remembered).
 */
export async function flushedUnlearnt(fa: FakeUpstream, fb: FakeUpstream, fenceMs = 60_000, dir?: string) {
  const s = proc([fa, fb], { maxKeys: 2, fenceMs, ...(dir === undefined ? {} : { dir }) });
  const [a, b] = s.ups as [HealthyUpstream, HealthyUpstream];
  await s.detector.checkAll();
  assert.equal(status(await s.exec(setCmd('sess', 'cart'))), 'STORED');
  s.journal.distrust(a);
  for (let n = 0; n < 20 && s.journal.overflowed(a) !== undefined; n++) await s.repairer.tick();
  assert.equal(repairEmptied(a), true, 'a: emptied by the repair');
  assert.equal(status(await s.exec(setCmd('x1', '1'))), 'STORED');
  assert.equal(status(await s.exec(setCmd('x2', '2'))), 'STORED');
  assert.equal(a.learntAll, true, 'a stopped learning');
  return { s, a, b };
}

/**
 * [a: memcached, b: memcached], journal-max-keys 2, a flushed by the repair and stopped learning;
 * `add lock held` decided by b and copied to a, which holds it unremembered; b restarts empty, the
 * next add fails there while a's one read (has()) times out: a is journaled as lacking the lock
 * unread (asks), b dirty for the failed add, fenced as come back empty.
 */
export async function lockUnreadOnA(fenceMs = 60_000, dir?: string) {
  const fa = new SlowGet('memcached://a:11211', 'memcached');
  const fb = new FakeUpstream('memcached://b:11211', 'memcached');
  const { s, a, b } = await flushedUnlearnt(fa, fb, fenceMs, dir);

  assert.equal(status(await s.exec(addCmd('lock', 'held'))), 'STORED', 'add lock: decided by b');
  await settle();
  assert.equal((await fa.inner.get(['lock']))[0]?.value.toString(), 'held', "the add's copy reached a");
  assert.equal(knowsKey(a, 'lock'), false, 'a does not know it (stopped learning)');

  // b restarts empty; the add sent meanwhile fails there (maybe applied), and a is slow for the
  // one read has() makes of it.
  fb.mode = 'fail';
  await fb.inner.flush();
  fa.slowKey = 'lock';
  const again = await s.exec(addCmd('lock', 'other'));
  fa.slowKey = undefined;
  assert.equal(again.kind, 'error', `add while b is down: ${status(again)}`);
  const lacked = s.journal.isDirty(a, 'lock');
  assert.equal(s.journal.entry(a, 'lock')?.asks, true, 'a: journaled as lacking the lock unread');
  fb.mode = 'ok';
  await s.detector.checkAll();
  assert.equal(b.fenced, true, 'b: fenced, come back empty');
  return { s, fa, fb, a, b, lacked };
}

/**
 * A fake whose writes of the marker key can be held (they time out for the caller and are applied
 * at release(): a marker write stuck in a slow connection) or refused unapplied (the connection
 * closes before the server reads it).
 */
export class MarkerWrites extends FakeUpstream {
  hold = false;
  refuse = false;
  private readonly held: StoreRequest[] = [];
  override async store(req: StoreRequest) {
    if (req.key.startsWith('mcmux.sentinel.')) {
      if (this.refuse) throw new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: connection closed (injected, the marker write not applied)`);
      if (this.hold) {
        this.held.push(req);
        await new Promise((r) => setTimeout(r, this.timeoutMs));
        throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: injected timeout of a marker write (applied at release)`);
      }
    }
    return super.store(req);
  }
  async release(): Promise<void> {
    for (const req of this.held.splice(0)) await this.inner.store(req);
  }
}

/**
 * Up to the late marker: a restarts empty (fence F0: its `fenced until` marker names F0); the add
 * of a lock, decided by b, is copied to a, which learns it under F0. A marker rewrite naming F0
 * times out (stuck in a slow connection of a). `sess` is set (both hold it). a overflows and the
 * repair flushes it (fence F1: the lock and the session gone from a); the marker rewrite after the
 * flush is refused (`rewrite` 'refused'), or lands, naming F1 ('lands'). The stuck F0 marker lands.
 */
export async function lateMarkerAfterFlush(dir?: string, rewrite: 'refused' | 'lands' = 'refused') {
  const fa = new MarkerWrites('memcached://a:11211', 'memcached');
  const fb = new FakeUpstream('memcached://b:11211', 'memcached');
  const s = proc([fa, fb], dir === undefined ? {} : { dir });
  const [a] = s.ups as [HealthyUpstream, HealthyUpstream];
  await s.detector.checkAll();

  // a restarts empty: fenced as come back empty (fence F0).
  await fa.inner.flush();
  await s.detector.checkAll();
  assert.equal(a.cameBackEmpty, true, 'a: came back empty');
  const f0 = a.fenceId;

  // The lock, decided by b (a is fenced), its copy learnt by a under F0.
  assert.equal(status(await s.exec(addCmd('lock', 'held'))), 'STORED', 'add lock: decided by b');
  await settle();
  assert.equal(a.knows('lock'), true, 'a learnt the lock under F0');

  // A marker rewrite naming F0 times out (stuck in a slow connection of a).
  fa.hold = true;
  await s.detector.checkAll();
  fa.hold = false;

  // a overflows; the repair flushes it (F1).
  assert.equal(status(await s.exec(setCmd('sess', 'cart'))), 'STORED');
  fa.refuse = rewrite === 'refused';
  s.journal.distrust(a);
  for (let n = 0; n < 20 && s.journal.overflowed(a) !== undefined; n++) await s.repairer.tick();
  fa.refuse = false;
  if (rewrite === 'lands') {
    await settle();
    assert.equal((await fa.inner.get([s.detector.key]))[0]?.flags, a.fenceId, 'the marker after the flush names F1');
    assert.notEqual(a.fenceId, f0);
  }
  assert.equal(s.journal.overflowed(a), undefined, 'a flushed by the repair and trusted');
  assert.equal(repairEmptied(a), true, 'a: emptied by the repair');
  assert.equal((await fa.inner.get(['lock']))[0], undefined, 'the lock is gone from a');
  assert.equal((await fa.inner.get(['sess']))[0], undefined, 'the session is gone from a');
  assert.equal(a.knows('lock'), false, 'a knows the lock no more');

  // The stuck F0 marker lands.
  await fa.release();
  assert.equal((await fa.inner.get([s.detector.key]))[0]?.flags, f0, 'a holds the late marker naming F0');
  return { s, a, fa, fb, f0 };
}

/** lockUnreadOnA (lock-fence 400 ms), then a overflows: two sets fail there (journal-max-keys 2), a still lacking the lock unread. */
export async function overflowedUnread(dir?: string) {
  const rig = await lockUnreadOnA(400, dir);
  rig.fa.mode = 'fail';
  assert.equal(status(await rig.s.exec(setCmd('x3', '3'))), 'STORED');
  assert.equal(status(await rig.s.exec(setCmd('x4', '4'))), 'STORED');
  rig.fa.mode = 'ok';
  assert.notEqual(rig.s.journal.overflowed(rig.a), undefined, 'a overflowed');
  assert.equal(rig.s.journal.unread(rig.a, 'lock'), true, 'a still lacks the lock unread');
  return rig;
}
