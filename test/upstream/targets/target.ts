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

/**
 * The instance of a target whose clients `open` makes: the first one opened now, `second` opening
 * more, and `stop` closing every one of them, then running `stopStore` (the server, the file).
 */
export function instanceOf(open: () => Upstream, stopStore: () => Promise<void> | void): TargetInstance {
  const clients: Upstream[] = [];
  const make = (): Upstream => {
    const u = open();
    clients.push(u);
    return u;
  };
  const upstream = make();
  return {
    upstream,
    second: make,
    async stop() {
      await Promise.all(clients.map((c) => c.close()));
      await stopStore();
    },
  };
}
