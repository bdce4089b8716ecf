import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import test from 'node:test';
import { now } from '../src/clock';

test('the clock is read once per synchronous run and again after it', async () => {
  const first = now();
  // Let real time pass within this run: the reading must not move.
  while (performance.now() <= first + 1) {
    /* spin */
  }
  assert.equal(now(), first, 'same synchronous run: same reading');
  await Promise.resolve();
  const later = now();
  assert.ok(later > first + 1, `a new run reads the clock again (${later} vs ${first})`);
  await new Promise((resolve) => setImmediate(resolve));
  assert.ok(now() >= later, 'monotonic');
});
