/**
 * Adversarial review h32 of four commits: e9e2219 (the repair pauses a copy the store refused),
 * 055ae79 (fencesVoided, Z lines), a384a4e (TOUCHES_KEPT: earliest and eight latest), 4733097
 * (DirtyEntry.asks).
 *
 * Findings (each test failed on 8b9d439; fixed by b0dc48c (1), the commit after it (2), 84283a2
 * (3) and 1b4fca7 (4); finding 1's fix has tests of both sides at the end):
 * 1. (medium: a lock granted twice, a held lock read as absent; 4733097 leaves it) asks is looked
 *    at by the repair only. freshest(), authorityOrder and the reads ignore it: with the unread
 *    cache (the only copy of an acknowledged add) least fresh and the store behind (back empty)
 *    dirty for the failed add, the store is the freshest copy: `get lock` misses and `add lock`
 *    is STORED, until the repair has read the cache (a tick if it answers; as long as it is slow
 *    or down). README promises "no other copy is taken for the key's truth meanwhile".
 * 2. (medium: an acknowledged add lost; 4733097) mark() rebuilds the entry without `asks` (as
 *    lateSettled and written() would): a later write of the key that fails on the unread cache (a
 *    touch that times out there) drops it, the store behind is cleared as the freshest, and at the
 *    fence's end its absence is copied over the cache, the only copy.
 * 3. (low-medium: a session read as absent; 055ae79 leaves it) the next process that finds the
 *    late marker of a voided fence (the case 055ae79 is about) refuses to inherit it, and nothing
 *    else tells it of the later fence: journal.log has `B <a> F1 ... r` (the repair's flush), but
 *    the cache is taken for a precaution fence, not emptied by the repair, and its miss of a
 *    session the flush took answers a read while the store holding it fails.
 * 4. (medium: an acknowledged add lost across a restart; 4733097) asks is in memory only: the M
 *    line is a plain least fresh copy. A restart before the repair has read the cache (a deploy
 *    while the cache is slow or down) makes the next process take the store, back empty, for the
 *    truth and delete the lock from the cache.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command } from '../../src/command/command';
import { type HealthyUpstream, repairEmptied } from '../../src/router/health';
import { settle } from '../helpers/fake-upstream';
import { proc } from '../helpers/flushed-cache';
import { tempDir } from '../helpers/temp-dir';
import { addCmd, getCmd, lateMarkerAfterFlush, lockUnreadOnA, status, valueOf } from '../helpers/unread-rigs';


describe('finding 1: DirtyEntry.asks holds back the repair only; a read and the authority still take b (back empty) for the truth while a is unread (4733097)', () => {
  it('before the repair has read a, a get of the lock does not answer it absent, and an add of it is not granted', async () => {
    const { s } = await lockUnreadOnA();
    // No repair tick yet (it runs ten times a second, and a may be slow or down a while longer).
    const got = valueOf(await s.exec(getCmd('lock')));
    const add = status(await s.exec(addCmd('lock', 'third')));
    await s.stop();
    assert.ok(got === 'held' || got?.startsWith('(SERVER_ERROR'), `the held lock read as ${String(got)} (b's miss taken for the truth; the add then answered ${add})`);
    assert.notEqual(add, 'STORED', 'A LOCK GRANTED TWICE: b, back empty, decided the add as the freshest copy while a (holding the lock) was unread');
  });
});

describe('the SERVER_ERROR of a conditional command no copy may decide says why', () => {
  it('while a is unread, the add names a as the copy the repair has yet to read (it said "no upstream configured")', async () => {
    const { s } = await lockUnreadOnA();
    const add = status(await s.exec(addCmd('lock', 'third')));
    await s.stop();
    assert.match(add, /^SERVER_ERROR no upstream answered: every copy of the key is dirty and memcached:\/\/a:11211 may hold its newest state: it decides nothing until the repair has read it there\r?$/);
  });
});

describe('finding 2: a later write that misses the unread cache drops DirtyEntry.asks (mark builds a new entry without it), and the repair copies b\'s absence over the only copy (4733097)', () => {
  it('a touch of the lock that times out on a, unread, leaves a still read first by the repair: the held lock is not deleted from it', async () => {
    // lock-fence 400 ms: the fences end within the test.
    const { s, fa, a } = await lockUnreadOnA(400);
    // a is slow a moment longer: the lock's touch (a PHP session's gat/touch of its lock, say) times out there.
    fa.mode = 'timeout';
    const touched = status(await s.exec({ kind: 'touch', key: 'lock', deadline: Date.now() + 600_000, noreply: false } as Command));
    fa.mode = 'ok';
    const asks = s.journal.entry(a, "lock")?.asks === true;
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the lock-fence ends
    for (let n = 0; n < 8; n++) await s.repairer.tick();
    await settle();
    const got = valueOf(await s.exec(getCmd('lock')));
    const left = (await fa.inner.get(['lock']))[0]?.value.toString();
    await s.stop();
    assert.equal(left, 'held', `LOST WRITE: the repair deleted the acknowledged add from a, its only copy (the touch answered ${touched}; a's entry asks after it: ${asks}; a get of the lock: ${String(got)})`);
  });
});


describe('finding 4: DirtyEntry.asks is not on journal.log: after a restart the unread cache is a plain least fresh copy, and the repair deletes the only copy (4733097)', () => {
  it('mcmux restarted before the repair has read a: the next process does not copy b\'s absence over the acknowledged add a alone holds', async (t) => {
    const dir = tempDir(t, 'review-h32-asks');
    const { s, fa, fb } = await lockUnreadOnA(400, dir);
    await s.stop(); // a deploy, or a crash, before the repair's next tick
    const s2 = proc([fa, fb], { maxKeys: 2, fenceMs: 400, dir });
    const [a2] = s2.ups as [HealthyUpstream, HealthyUpstream];
    await s2.detector.checkAll();
    const entry = JSON.stringify(s2.journal.entry(a2, 'lock'));
    for (let n = 0; n < 5; n++) await s2.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the lock-fences end
    await s2.detector.checkAll();
    for (let n = 0; n < 8; n++) await s2.repairer.tick();
    await settle();
    const left = (await fa.inner.get(['lock']))[0]?.value.toString();
    const got = valueOf(await s2.exec(getCmd('lock')));
    await s2.stop();
    assert.equal(left, 'held', `LOST WRITE: the next process repaired a, the only copy of the acknowledged add, from b back empty (a's entry as loaded: ${entry}; a get of the lock: ${String(got)})`);
  });
});

describe('finding 3: the next process, finding the late marker of a voided fence, takes the flushed cache for one fenced as a precaution: not emptied by the repair (055ae79)', () => {
  it('a process started after the repair flushed a cache answers a read of a session the flush took from it with SERVER_ERROR while the store behind fails, not a miss', async (t) => {
    const dir = tempDir(t, 'review-h32');
    const { s, fa, fb } = await lateMarkerAfterFlush(dir, 'lands');
    await s.stop();
    const s2 = proc([fa, fb], { dir });
    const [a2] = s2.ups as [HealthyUpstream, HealthyUpstream];
    await s2.detector.checkAll();
    const state = `fenced ${a2.fenced}, cameBackEmpty ${a2.cameBackEmpty}, repairEmptied ${repairEmptied(a2)}`;
    fb.mode = 'fail';
    const got = valueOf(await s2.exec(getCmd('sess')));
    fb.mode = 'ok';
    await s2.stop();
    assert.ok(got?.startsWith('(SERVER_ERROR'), `A SESSION READ AS ABSENT: the cache the repair flushed answered its miss while the store holding the session failed (a: ${state}; got ${String(got)})`);
  });
});

describe("finding 1's fix, both sides: a read asks the unread copy first", () => {
  it('its hit is the answer: the held lock is read from a', async () => {
    const { s, a } = await lockUnreadOnA();
    const got = valueOf(await s.exec(getCmd('lock')));
    const unread = s.journal.entry(a, 'lock')?.asks;
    await s.stop();
    assert.equal(got, 'held');
    assert.equal(unread, true, 'still for the repair to settle');
  });

  it('its miss says it lacks the key: the next copy is read, and a is a plain least fresh copy', async () => {
    const { s, fa, fb, a } = await lockUnreadOnA();
    // The other way round: a does lack the key (its copy gone), and b holds a state of it.
    await fa.inner.delete('lock');
    await fb.inner.store({ mode: 'set', key: 'lock', value: Buffer.from('kept'), flags: 0, deadline: 0 });
    const got = valueOf(await s.exec(getCmd('lock')));
    const unread = s.journal.entry(a, 'lock')?.asks;
    await s.stop();
    assert.equal(got, 'kept');
    assert.equal(unread, undefined, 'a read as lacking the key');
    assert.equal(s.journal.isDirty(a, 'lock'), true);
  });
});
