/**
 * Review h15: the router fuzz's rollback model (MCMUX_FUZZ_ROLLBACK) now takes snapshots while the
 * upstream is fenced too, since 0fcbc45 gave the `fenced until` marker a writer and a generation.
 * The fuzz found nothing new (3000 seeds default, 2000 with MCMUX_FUZZ_RESTART=1, 2000 with a pool
 * ejecting half the time, 1000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
 * MCMUX_FUZZ_RESTART=1). What reading the detector found instead is below. Driven by hand over
 * fakes (test/helpers/marker-rig.ts): no timer of the detector runs.
 */

import assert from 'node:assert/strict';
import { setTimeout } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { markerRig } from '../helpers/marker-rig';

// ---------------------------------------------------------------------------------------------
// FINDING 1 (fixed): while an upstream was fenced, its marker was not written again at each check
// (ColdDetector.mark skipped a store whose `fenced until` this process wrote for the same fence,
// until, id, wall clock, for an hour). Before 0fcbc45 that marker had nothing that changed; since,
// it carries a generation, but the generation stayed the one of the fence's first write. So a copy
// taken during a fence, restored during the same fence, held the last marker acknowledged there
// and was never told from the store (as a copy out of a fence taken within the last check or two,
// but here the window was the whole fence, up to lock-fence: the README's "(the marker is written
// every 2 s)" did not hold while fenced). The sessions deleted and the values overwritten since the
// copy came back, trusted. Not in the fuzz: its model floors on the writes acknowledged
// (World.caughtBy), so it never restored such a copy.
// Fixed: the fenced marker is written at every check with a new generation, as the pid marker.
// ---------------------------------------------------------------------------------------------

describe('a copy taken during a fence, restored during the same fence (review-h15 finding 1)', () => {
  it('restored after two more checks: a rollback', async () => {
    const s = markerRig();
    await s.detector.checkAll();
    s.detector.knownEmpty(s.up); // fenced as come back empty (a restart, the repair's flush)
    await s.detector.checkAll(); // the marker says `fenced until <ms> <pid> <gen> <nonce>`
    const copy = await s.current();
    assert.match(copy, /^fenced until \d+ \d+ \d+ [0-9a-f]+$/);
    // Two checks later (4 s with the timer), the fence still on.
    for (let i = 0; i < 2; i++) {
      await setTimeout(5);
      await s.detector.checkAll();
    }
    assert.equal(s.up.fenced, true);
    assert.equal(s.distrusted(), false);
    assert.notEqual(await s.current(), copy, 'the fenced marker was not written again');
    await s.restore(copy);
    await s.detector.checkAll();
    assert.equal(s.distrusted(), true, 'ROLLBACK MISSED: the copy, taken during the fence, holds the marker the store holds now');
    s.detector.stop();
    await s.close();
  });
});
