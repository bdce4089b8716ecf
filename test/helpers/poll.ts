/**
 * Waiting for state that has no event to wait on (a background repair, a reconnect, a late write
 * landing): `cond` is checked until it holds, with a pause after each miss, and the test fails,
 * naming what it waited for, once the bound is reached.
 */

import assert from 'node:assert/strict';

/** How `eventually` polls. */
export interface Poll {
  /** The bound, in ms of Date.now, checked after each miss. Default 10 s. */
  timeoutMs?: number;
  /**
   * The bound as a number of checks instead, however long they take: for a test that mocks Date,
   * or that waits only for work a few event-loop turns away. Replaces `timeoutMs`.
   */
  checks?: number;
  /** The pause after a miss: ms on a timer, or 'turn' for one setImmediate. Default 50 ms. */
  every?: number | 'turn';
}

/** Polls `cond` (bounded) until it holds; `poll` as a number is the timeout in ms. */
export async function eventually(what: string, cond: () => boolean | Promise<boolean>, poll: number | Poll = {}): Promise<void> {
  const { timeoutMs = 10_000, checks, every = 50 } = typeof poll === 'number' ? { timeoutMs: poll } : poll;
  const deadline = checks === undefined ? Date.now() + timeoutMs : 0;
  for (let n = 1; !(await cond()); n++) {
    if (checks !== undefined) {
      if (n >= checks) assert.fail(`not within ${checks} checks: ${what}`);
    } else if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => (every === 'turn' ? setImmediate(r) : setTimeout(r, every)));
  }
}
