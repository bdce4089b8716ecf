/** A fresh SQLite file for a driver test, and plain connections to look behind the driver. */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { type SqliteUpstream, createSqliteUpstream } from '../../src/upstream/sqlite';

export const ctx = { defaultTimeoutMs: undefined, maxItemSize: 1024 * 1024 };

export const sqliteUrl = (file: string): string => pathToFileURL(file).href.replace(/^file:/, 'sqlite:');

export interface Fixture {
  readonly dir: string;
  readonly file: string;
  readonly url: string;
  open(options?: Record<string, string>): SqliteUpstream;
  /** A plain better-sqlite3 connection on the same file, to look behind the driver. */
  raw(): Database.Database;
}

/**
 * A fresh directory, removed after the test once every connection opened here is closed (the
 * last opened first: a plain connection holding the write lock lets the driver's close finish).
 */
export function fixture(t: TestContext): Fixture {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-sqlite-test-'));
  const file = join(dir, 'store.db');
  const url = sqliteUrl(file);
  const closers: Array<() => unknown> = [];
  t.after(async () => {
    for (const close of closers.reverse()) await close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir,
    file,
    url,
    open(options = {}) {
      const u = createSqliteUpstream(new URL(url), new Map(Object.entries(options)), ctx);
      closers.push(() => u.close());
      return u;
    },
    raw() {
      const db = new Database(file);
      closers.push(() => db.close());
      return db;
    },
  };
}

/**
 * A SQLite file at `path` that another process holds locked (a table of its own, an EXCLUSIVE
 * transaction left open) until the test ends: opening it for mcmux's schema fails SQLITE_BUSY.
 */
export function lockedSqlite(t: TestContext, path: string): void {
  const db = new Database(path);
  t.after(() => db.close());
  db.exec('CREATE TABLE other (x)');
  db.exec('BEGIN EXCLUSIVE; INSERT INTO other VALUES (1);');
  t.after(() => {
    if (db.inTransaction) db.exec('COMMIT');
  });
}
