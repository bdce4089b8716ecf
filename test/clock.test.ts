import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import test from 'node:test';
import { monotonicMs, now, setMonotonicClock } from '../src/clock';

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

test('the monotonic clock does not follow a step of the wall clock; tests can replace it', () => {
  const realNow = Date.now;
  try {
    const before = monotonicMs();
    Date.now = () => realNow() + 86_400_000; // the system clock set a day ahead
    const after = monotonicMs();
    assert.ok(after >= before && after - before < 1000, `${after - before} ms`);
  } finally {
    Date.now = realNow;
  }
  let t = 5;
  setMonotonicClock(() => t);
  try {
    assert.equal(monotonicMs(), 5);
    t = 7;
    assert.equal(monotonicMs(), 7, 'read afresh');
  } finally {
    setMonotonicClock();
  }
  assert.ok(monotonicMs() > 7);
});
