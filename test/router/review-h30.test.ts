/**
 * Adversarial review h30 of three router commits: 7dcadfd (DirtyEntry.touched a list, TOUCH_SLACK_MS
 * 3 s, lateSettled keeps the deadlines, onWay's removes), 4bb99a3 (lackedWhereEmptied asks a cache
 * the repair flushed that stopped learning, has()) and 05c3b33 (ColdDetector.inherit: an upstream
 * this process has seen come back empty adopts no earlier fence's keys).
 *
 * Findings (each test failed on 01cfadf; fixed by 4733097 (1), 055ae79 (2 and 3) and a384a4e (4),
 * each with the tests of the fix's other side):
 * 1. (medium, double fault: an acknowledged add lost, a lock granted twice; 4bb99a3) the has() that
 *    asks the emptied cache past its learnt keys is taken as "no item" when the read fails (a
 *    timeout): `(await has(u, key)) !== true`. The cache, holding the only copy of the acknowledged
 *    add, is journaled as lacking it (journal.lacks, the least fresh copy), and once the store
 *    behind is back empty the repair takes the store for the truth: fuzz seed 301238's loss again,
 *    with the one read of the cache timing out as the store restarts.
 * 2. (medium, narrow: a lock granted twice, a session read as absent; 05c3b33) the guard
 *    `u.cameBackEmpty && !u.inheritedEmpty` is undone by a reconnect: ColdDetector.reconnected sets
 *    inheritedEmpty on an upstream that came back empty (the repair's flush included), and the
 *    check the reconnect starts then adopts the keys of a fence from BEFORE the flush, from this
 *    process's own `fenced until` marker that landed late (after the flush, its rewrite refused):
 *    seed 4500's class through the other door. The flushed cache "knows" a lock it lost and
 *    decides its add when the store fails; and its miss of the key answers a read while the store
 *    fails (a session read as absent).
 * 3. (medium, narrow: a lock granted twice; same root as 2, not covered by 05c3b33's guard) the
 *    same late `fenced until` marker of the fence before the repair's flush, found by the NEXT
 *    process (mcmux restarted before the rewrite after the flush landed): it has not seen the
 *    flush, journal.log still holds that fence's W lines (the last two fences are kept), and it
 *    adopts them: the flushed cache decides the add of a lock it lost when the store fails. The
 *    flush leaves nothing on file that voids the fences before it (markerGone concerns A lines).
 * 4. (low: a session deleted from the durable store; 7dcadfd) DirtyEntry.touched keeps at most 8
 *    deadlines (TOUCHES_KEPT), and a ninth failed touch turns the entry into a plain missed write:
 *    the repair then copies the cache's absence over the store's session, which none of the nine
 *    touches reached. README ("The repair journal") promises the item is left when it carries the
 *    deadline of none of the touches it missed, and says nothing of a bound. An AJAX-heavy page
 *    touches a session many times a minute; a store that fails now and then (never `down-after`
 *    in a row) while the cache has evicted the session gets there.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command } from '../../src/command/command';
import type { HealthyUpstream } from '../../src/router/health';
import { FakeUpstream, settle } from '../helpers/fake-upstream';
import { proc } from '../helpers/flushed-cache';
import { tempDir } from '../helpers/temp-dir';
import { addCmd, getCmd, lateMarkerAfterFlush, lockUnreadOnA, setCmd, status, valueOf } from '../helpers/unread-rigs';


describe('review-h30 finding 1: the emptied cache past its learnt keys is journaled as lacking a key it holds when has() cannot read it (4bb99a3)', () => {
  // fuzz-seed-301238.test.ts's rig: [a: memcached, b: memcached], journal-max-keys 2, a flushed by
  // the repair and taught two keys (it stopped learning). `add lock` decided by b, copied to a,
  // which holds it unremembered. b restarts empty: the next add fails there, and decide()'s failed()
  // asks a for the key (has): the read times out (a is slow for a moment), has() answers
  // undefined, and lackedWhereEmptied journals a as lacking the lock. The repair takes b (fresher)
  // for the truth; b back empty answers a miss; a, the only copy of the acknowledged add, is
  // skipped as dirty: the lock reads as absent and is granted again.
  it('a read of the emptied cache that times out as the store behind fails does not journal it as lacking the acknowledged add it holds', async () => {
    const { s, lacked } = await lockUnreadOnA();
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    await settle();
    const got = valueOf(await s.exec(getCmd('lock')));
    const third = status(await s.exec(addCmd('lock', 'third')));
    await s.stop();
    assert.equal(got, 'held', `LOST WRITE: the acknowledged add read as ${String(got)}${lacked ? ' (a, its only copy, journaled as lacking it when has() could not read it)' : ''}`);
    assert.notEqual(third, 'STORED', 'A LOCK GRANTED TWICE');
  });

  // The fix's other half: a is journaled as lacking the lock unread (DirtyEntry.asks); while the
  // repair cannot read it either, b (back empty, dirty for the failed add) must not clear itself
  // as the freshest copy, the truth of the lock.
  it('while the repair cannot read the emptied cache either, the store behind is not taken for the truth of the key', async () => {
    const { s, fa, b } = await lockUnreadOnA();
    fa.slowKey = 'lock';
    for (let n = 0; n < 3; n++) await s.repairer.tick();
    fa.slowKey = undefined;
    assert.equal(s.journal.isDirty(b, 'lock'), true, 'b, back empty, was cleared as the truth of the lock while a, holding it, was unread');
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    await settle();
    const got = valueOf(await s.exec(getCmd('lock')));
    await s.stop();
    assert.equal(got, 'held');
  });
});

describe('review-h30 finding 2: a reconnect after the repair\'s flush undoes 05c3b33\'s guard (inheritedEmpty), and a fence from before the flush is adopted', () => {
  // [a: memcached cache, b: memcached]. a restarted empty (fence F0: its `fenced until` marker names
  // F0); the add of a lock, decided by b, is copied to a, which learns it under F0 (journal.log W).
  // A marker rewrite naming F0 is stuck in a slow connection of a (it timed out). a overflows and the
  // repair flushes it (fence F1: the lock gone from a; ColdDetector.flushed forgets what this process
  // wrote there, and the rewrite naming F1 is refused). The stuck F0 marker lands. a's connection is
  // made again (reconnected): inheritedEmpty is set because it came back empty, so inherit's guard
  // `cameBackEmpty && !inheritedEmpty` lets the check take the F0 marker (this process's own, taken
  // for an earlier one's: wrote undefined) and adopt F0's keys: the emptied cache knows the lock.
  it('a cache the repair flushed, then reconnected, does not adopt from a late `fenced until` marker the keys of the fence before the flush', async () => {
    const { s, a, fb, f0 } = await lateMarkerAfterFlush();
    s.detector.reconnected(a);
    await settle();
    await new Promise((r) => setTimeout(r, 20));
    await settle();
    const knows = a.knows('lock');
    // Nor does it take that fence's id for its own: what it learns from now on would go on file
    // under an id voided there, and the marker rewritten would name it.
    assert.notEqual(a.fenceId, f0, 'the flushed cache took on the voided fence');

    // b fails: the cache that lost the lock must not decide it, nor answer its absence.
    fb.mode = 'fail';
    const add = status(await s.exec(addCmd('lock', 'other')));
    const get = valueOf(await s.exec(getCmd('lock')));
    fb.mode = 'ok';
    await s.stop();
    const why = knows ? `: the reconnect's check adopted fence ${f0} (before the flush) from the late marker, and the flushed cache knows the lock again` : '';
    assert.notEqual(add, 'STORED', `A LOCK GRANTED TWICE: the emptied cache decided the add of a lock b holds${why}`);
    assert.ok(get?.startsWith('(SERVER_ERROR'), `a read of the lock while b fails answered ${String(get)} (a miss: a session read as absent)${why}`);
    assert.equal(knows, false, 'the flushed cache knows the lock again');
  });
});

describe('review-h30 finding 3: the next process adopts, from the same late marker, the fence before the repair\'s flush (journal.log keeps its keys)', () => {
  // As finding 2 up to the late F0 marker landing after the flush (its rewrite refused); then mcmux
  // stops (cleanly) before any check writes a marker there again. The next process's first look
  // finds `fenced until ... F0` on a, inherits the fence, and adopts F0's keys from journal.log:
  // the cache, emptied by the flush since, "knows" the lock, and decides its add while b fails.
  it('a process started after the repair flushed a cache does not adopt, from a late marker, the keys of the fence before the flush', async (t) => {
    const dir = tempDir(t, 'review-h30');
    const { s, fa, fb, f0 } = await lateMarkerAfterFlush(dir);
    await s.stop();

    // The next process over the same stores and state-dir.
    const s2 = proc([fa, fb], { dir });
    const [a2] = s2.ups as [HealthyUpstream, HealthyUpstream];
    await s2.detector.checkAll();
    const knows = a2.knows('lock');
    fb.mode = 'fail';
    const add = status(await s2.exec(addCmd('lock', 'other')));
    fb.mode = 'ok';
    await s2.stop();
    const why = knows ? `: the first look adopted fence ${f0} (before the flush) from the late marker, and the flushed cache knows the lock again` : '';
    assert.notEqual(add, 'STORED', `A LOCK GRANTED TWICE: the emptied cache decided the add of a lock b holds${why}`);
    assert.equal(knows, false, 'the flushed cache knows the lock again');
  });
});

describe('review-h30 finding 4: a ninth failed touch of a key drops the deadlines of the eight before (TOUCHES_KEPT, 7dcadfd)', () => {
  // review-h28 finding 3's rig, with nine touches instead of two: [a: memcached, b: MySQL], the
  // session evicted from a, every touch failing on b's connection (closed: not applied).
  it('nine touches of a session the cache evicted, each failing unapplied on the store: the store keeps the session', async () => {
    const fakes = [new FakeUpstream('memcached://a:11211', 'memcached'), new FakeUpstream('mysql://b:3306/db', 'mysql')] as const;
    const s = proc(fakes);
    const b = s.ups[1] as HealthyUpstream;
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd('sess', 'cart', Date.now() + 600_000))), 'STORED');
    await fakes[0].inner.delete('sess'); // memcached evicts it
    const replies: string[] = [];
    for (let i = 0; i < 9; i++) {
      fakes[1].mode = 'fail'; // the store's connection closes under the touch (not applied)
      replies.push(status(await s.exec({ kind: 'touch', key: 'sess', deadline: Date.now() + 1_440_000 + i * 5000, noreply: false } as Command)));
      fakes[1].mode = 'ok';
      assert.equal(status(await s.exec(getCmd('other'))), 'values', 'the store answers other requests in between');
    }
    const kept = s.journal.entry(b, 'sess')?.touched?.length ?? 0;
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    const left = (await fakes[1].inner.get(['sess']))[0]?.value.toString();
    await s.stop();
    assert.equal(left, 'cart', `A SESSION DELETED FROM THE DURABLE STORE BY THE REPAIR (touches answered ${replies.join(', ')}; the entry kept ${kept} touch deadlines)`);
  });
});

describe('review-h30 finding 4, the other side: past eight touches, a copy carrying the deadline of one no longer listed is still taken as touched', () => {
  // Twelve touches fail on the store's connection (answer lost: they may have been applied); the
  // third was. The list keeps the earliest, the latest and the most recent others, not the third's
  // deadline: it stands for every deadline between, so the store's item, carrying the third's, is
  // one a touch kept alive after the cache's copy expired (fuzz seed 1533's class), and goes.
  it('twelve failed touches, the third applied on the store: the repair deletes the item the touch kept alive there', async () => {
    const fakes = [new FakeUpstream('memcached://a:11211', 'memcached'), new FakeUpstream('mysql://b:3306/db', 'mysql')] as const;
    const s = proc(fakes);
    const b = s.ups[1] as HealthyUpstream;
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd('sess', 'cart', Date.now() + 600_000))), 'STORED');
    await fakes[0].inner.delete('sess'); // the cache's copy is gone (expired there)
    const base = Date.now() + 1_440_000;
    for (let i = 0; i < 12; i++) {
      fakes[1].mode = 'fail';
      await s.exec({ kind: 'touch', key: 'sess', deadline: base + i * 5000, noreply: false } as Command);
      fakes[1].mode = 'ok';
      if (i === 2) await fakes[1].inner.touch('sess', base + i * 5000); // this one reached the store
      assert.equal(status(await s.exec(getCmd('other'))), 'values');
    }
    const touched = s.journal.entry(b, 'sess')?.touched ?? [];
    assert.ok(!touched.includes(base + 2 * 5000), `the third touch's deadline is no longer listed (${touched.length} kept)`);
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    const left = (await fakes[1].inner.get(['sess']))[0];
    await s.stop();
    assert.equal(left, undefined, 'the item a touch kept alive on the store after the copy elsewhere expired is deleted');
  });
});
