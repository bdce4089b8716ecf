/**
 * The monotonic clock (performance.now(), in ms): the time base of every duration and deadline
 * measured inside one mcmux process — request timeouts, the lock-fence, probe backoffs, the
 * repair's settle window, retry times. Unlike Date.now() it does not step when the system clock
 * does (NTP setting it at boot, a VM resumed from suspend, `date -s`): a step forward would end
 * every fence at once, a step backward make them last far longer than configured. Its readings
 * mean nothing outside the process: what crosses processes or is compared with data (item
 * deadlines, the `fenced until` marker, journal.log, stats `time`) stays on the wall clock, and
 * a wall time that becomes an in-process deadline is turned into one (the time it has left) once.
 *
 * `now()` is read at most once per run of synchronous work. Every request that one socket read
 * handles, and every reply settled by one upstream read, gets the same reading; the cache is
 * forgotten by a microtask queued with the first reading, so a reading is never older than the
 * synchronous run (and the microtasks queued before it) that took it. Timeouts are in
 * milliseconds and latencies are averaged, so microseconds of skew cost nothing. Pipelined, one
 * reading per request (four per get, driver and health wrapper) was 3.4 % of mcmux's CPU.
 * `monotonicMs()` is a fresh reading of the same clock, for the places that read it once in a
 * while (as Date.now() was read there before).
 */

import { performance } from 'node:perf_hooks';

const performanceNow = (): number => performance.now();
let read: () => number = performanceNow;
let cached: number | undefined;

const forget = (): void => {
  cached = undefined;
};

export function now(): number {
  if (cached === undefined) {
    cached = read();
    queueMicrotask(forget);
  }
  return cached;
}

/** The monotonic clock, read afresh (ms, always > 0). */
export function monotonicMs(): number {
  return read();
}

/**
 * Tests: the monotonic clock reads `clock` (a virtual clock that moves only when the test moves
 * it) until called again without one. Wall-clock steps are simulated by stubbing Date.now.
 */
export function setMonotonicClock(clock?: () => number): void {
  read = clock ?? performanceNow;
  cached = undefined;
}
