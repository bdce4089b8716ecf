/** Calls the driver tests (upstream/memcached, mysql, redis) make on an Upstream, and how they read its errors. */

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Hit } from '../../src/command/command';
import { McmuxError } from '../../src/errors';
import type { Upstream } from '../../src/upstream/upstream';

/** A string's bytes, one a character (latin1). */
export const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** A plain set, which must be STORED with a unique; returns that unique. */
export async function set(up: Upstream, key: string, value: string | Buffer, flags = 0, deadline = 0): Promise<bigint> {
  const r = await up.store({ mode: 'set', key, value: typeof value === 'string' ? b(value) : value, flags, deadline });
  assert.equal(r.status, 'STORED');
  assert.equal(typeof r.cas, 'bigint');
  return r.cas as bigint;
}

/** The hit of a get of one key, or undefined for a miss. */
export async function getOne(up: Upstream, key: string): Promise<Hit | undefined> {
  const [hit] = await up.get([key]);
  return hit;
}

/** An McmuxError's code, or anything else as a string. */
export function codeOf(err: unknown): string {
  return err instanceof McmuxError ? err.code : String(err);
}

/**
 * Retries `fn` until it resolves; a bounded poll for state with no event to wait on (401 tries,
 * 25 ms apart). `onError` sees each rejection; the last one is thrown. (helpers/poll's
 * `eventually` waits for a condition to hold instead; this one for a call to succeed.)
 */
export async function retrying<T>(fn: () => Promise<T>, onError: (err: unknown) => void = () => {}): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (err) {
      onError(err);
      if (i >= 400) throw err;
      await sleep(25);
    }
  }
}
