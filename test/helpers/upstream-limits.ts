/** Checks shared by the driver tests: how a driver behaves at its limits. */

import assert from 'node:assert/strict';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { Upstream } from '../../src/upstream/upstream';

/**
 * `small` was opened with max-queue=2: of three gets sent at once the third is refused with BUSY
 * (at once, not after a wait), and once the others have settled a new request is taken again.
 */
export async function assertMaxQueueOfTwo(small: Upstream): Promise<void> {
  await small.probe();
  const results = await Promise.allSettled([small.get(['q:a']), small.get(['q:b']), small.get(['q:c'])]);
  assert.deepEqual(
    results.map((r) => (r.status === 'fulfilled' ? 'ok' : r.reason instanceof McmuxError ? r.reason.code : String(r.reason))),
    ['ok', 'ok', ErrorCodes.UPSTREAM_BUSY],
  );
  assert.deepEqual(await small.get(['q:a']), [undefined]);
}
