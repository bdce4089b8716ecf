/**
 * Review h11 of the cold detector's rollback floor across a reload that rebuilds an upstream
 * (ColdDetector.lastSet by driver, `late` by store identity: d1085c9, d8396a3). Driven by hand
 * over fakes, as test/router/review-h9.test.ts: no timer of the detector runs.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { markerRig } from '../helpers/marker-rig';

const setup = markerRig;

// ---------------------------------------------------------------------------------------------
// FINDING 1 (fixed): the rollback floor (lastSet: the generation of the marker last acknowledged there)
// is kept per driver object, though `late` follows the store's identity (d1085c9). A reload that
// rebuilds the upstream (its options or the global timeout changed, often because the store was
// timing out, or down) starts the new driver with no floor: its first check finds this process's
// older marker, `wrote` undefined, and takes it for a marker kept (even `found`, as one left by
// an earlier process), lifting the reload's precaution fence. A store restored to a copy taken
// earlier under this process while it was down (a MySQL or sqlite restored from last night's
// backup while the operator also changed mcmux's options) is not seen to have gone back: every
// session destroyed or overwritten since the copy is served as it was (a logged-out user logged
// in again, a lock released and granted again).
// Fixed: the floor is kept by the store's identity too (ColdDetector.floors).
// ---------------------------------------------------------------------------------------------

describe('a store restored to an older copy across a reload that rebuilt its upstream (review-h11 finding 1)', () => {
  it('found by the rebuilt driver: a rollback', async () => {
    const s = setup();
    await s.detector.checkAll();
    const copy = await s.current(); // a backup taken now holds it
    await s.detector.checkAll();
    await s.detector.checkAll();
    assert.notEqual(await s.current(), copy, 'newer markers acknowledged since the copy');
    const next = s.reload();
    await s.restore(copy); // the store restored to the copy
    await s.detector.checkAll();
    assert.equal(s.distrusted(next), true, 'ROLLBACK MISSED: an older marker of this process, found by the rebuilt driver');
    assert.equal(next.fenced, true, 'the precaution lifted by a rolled-back marker');
    s.detector.stop();
    await s.up.close();
    await next.close();
  });

  // Guard: the same without the restore is no rollback, and the precaution is lifted.
  it('guard: the marker the retired driver wrote, found by the rebuilt one: kept', async () => {
    const s = setup();
    await s.detector.checkAll();
    await s.detector.checkAll();
    const next = s.reload();
    await s.detector.checkAll();
    await s.detector.checkAll();
    assert.equal(s.distrusted(next), false, 'A KEPT MARKER TAKEN FOR A ROLLBACK');
    assert.equal(next.fenced, false, 'the precaution lifted');
    s.detector.stop();
    await s.up.close();
    await next.close();
  });
});
