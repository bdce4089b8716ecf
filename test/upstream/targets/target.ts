/**
 * A conformance target: how to get a fresh, empty upstream of one driver backed by a real
 * server, and how to tear it down. `start` returns undefined when the test was skipped
 * (server binary missing, via requireBinary).
 */

import type { TestContext } from 'node:test';
import type { Upstream } from '../../../src/upstream/upstream';

export interface TargetInstance {
  readonly upstream: Upstream;
  /** A second, independent client of the same store (for the concurrency cases). */
  readonly second: () => Upstream;
  stop(): Promise<void>;
}

export interface ConformanceTarget {
  readonly name: string;
  /** The largest value the target must accept (the suite uses mcmux's default item limit). */
  start(t: TestContext, maxItemSize: number): Promise<TargetInstance | undefined>;
}

export const CTX = (maxItemSize: number) => ({ defaultTimeoutMs: 2000, maxItemSize });
