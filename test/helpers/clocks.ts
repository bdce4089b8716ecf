/**
 * The two clocks mcmux reads, moved by hand: the monotonic one (src/clock.ts), which every
 * in-process deadline and window runs on, and the wall clock (Date.now), which item deadlines,
 * the `fenced until` marker and journal.log run on. `advance` is time passing (both move);
 * `stepWall` is the system clock being set (NTP at boot, a resumed VM, `date -s`): only the
 * wall clock moves. Neither moves by itself. `restore` puts the real clocks back (call it in a
 * finally, or t.after).
 */

import type { TestContext } from 'node:test';
import { setMonotonicClock } from '../../src/clock';

export class TestClocks {
  /** Monotonic ms (any value > 0 will do: its readings mean nothing outside the process). */
  mono = 1_000_000;
  /** Wall-clock ms (Unix), starting at the real time. */
  wall = Date.now();
  private readonly realNow = Date.now;

  constructor() {
    setMonotonicClock(() => this.mono);
    Date.now = () => this.wall;
  }

  advance(ms: number): void {
    this.mono += ms;
    this.wall += ms;
  }

  stepWall(ms: number): void {
    this.wall += ms;
  }

  restore(): void {
    setMonotonicClock();
    Date.now = this.realNow;
  }
}

/** Hand-moved clocks for the test `t`, put back when it ends. */
export function clocksFor(t: TestContext): TestClocks {
  const c = new TestClocks();
  t.after(() => c.restore());
  return c;
}
