/**
 * Review h4 of the sqlite:// driver under faults (after test/upstream/review-sqlite.test.ts): the
 * files beside the database, a full disk, permissions. Private files only.
 */

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import type { SqliteUpstream } from '../../src/upstream/sqlite';
import { fixture } from '../helpers/sqlite-fixture';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const set = (u: SqliteUpstream, key: string, value: string) => u.store({ mode: 'set', key, value: b(value), flags: 0, deadline: 0 });

/**
 * What mcmux would find if it were killed now and started again: the files at the path (the
 * database and its -wal, if there is one), copied elsewhere and opened there; their keys.
 */
function afterCrash(file: string, dir: string): string[] {
  const copy = join(mkdtempSync(join(dir, 'crash-')), 'store.db');
  copyFileSync(file, copy);
  if (existsSync(`${file}-wal`)) copyFileSync(`${file}-wal`, `${copy}-wal`);
  const db = new Database(copy, { readonly: true });
  try {
    return (db.prepare('SELECT key FROM mcmux_items ORDER BY key').all() as Array<{ key: Buffer }>).map((r) => r.key.toString('latin1'));
  } finally {
    db.close();
  }
}

// FINDING 3 (fixed: sqlite.ts fileLost checks the -wal too). The -wal unlinked while the database is open (a clean-up of "stray" files, a backup
// script that removes what it copied, an operator who takes -wal for a temporary file): SQLite
// writes on to the -wal it opened, now in no directory. The driver's file check (sqlite.ts
// fileLost) stats the database only, finds it unchanged, and every commit from then on is
// acknowledged into a file a restart never sees: killed (a crash, an OOM kill, a reboot) before
// its connection checkpoints, mcmux comes back to the database as it was at the last checkpoint
// (up to 1000 pages of commits before). A session destroyed since is back (its row is in the
// main file), an acknowledged write is gone, and the marker is an earlier process's, which the
// next process cannot take for a rollback. A check of the -wal's identity too, and a reopen (the
// close checkpoints the unlinked -wal into the file), keeps them.
test('the -wal unlinked while open: writes acknowledged since are in the files a restart after a crash opens', async (t) => {
  const f = fixture(t);
  const u = f.open();
  await set(u, 'sess', 'old');
  await set(u, 'kept', 'v');
  const raw = new Database(f.file);
  raw.pragma('wal_checkpoint(TRUNCATE)'); // the row in the main file, as after an autocheckpoint
  raw.close();
  unlinkSync(`${f.file}-wal`);
  await u.probe().catch(() => undefined); // the file check, whatever it finds
  assert.equal(await u.delete('sess'), 'DELETED');
  assert.equal((await set(u, 'new', 'v')).status, 'STORED');
  assert.deepEqual(afterCrash(f.file, f.dir), ['kept', 'new'], 'a destroyed session back and an acknowledged write lost after a crash');
  assert.deepEqual((await u.get(['kept', 'sess', 'new'])).map((h) => h?.value.toString()), ['v', undefined, 'v'], 'the driver serves all it held');
});
