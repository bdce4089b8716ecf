/**
 * For tests of an in-process mcmux (helpers/in-process.ts) whose first upstream is a memcached pool
 * over private memcached processes: its URL, its driver, and a state-dir removed after the test.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { App } from '../../src/app';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import type { MemcachedProcess } from './servers';

/** A temporary state-dir, removed when `t` ends. */
export function stateDir(t: TestContext, prefix = 'mcmux-pool-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The pool URL over `servers` (`query`: its options, `?eject=true` say). */
export const poolUrl = (servers: readonly MemcachedProcess[], query = ''): string => `memcached://${servers.map((s) => `127.0.0.1:${s.port}`).join(',')}${query}`;

/** The pool driver of `app`'s first upstream. */
export function poolOf(app: App): MemcachedPool {
  const inner = app.upstreams[0]?.inner;
  assert.ok(inner instanceof MemcachedPool);
  return inner;
}
