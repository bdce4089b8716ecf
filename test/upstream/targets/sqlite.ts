import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createSqliteUpstream } from '../../../src/upstream/sqlite';
import { CTX, type ConformanceTarget, instanceOf } from './target';

/**
 * A fresh database file in a fresh temporary directory, removed at stop. `second()` opens another
 * connection on the same file: two connections to one WAL database, as two mcmux processes
 * sharing a file would have (racing writes are serialised by BEGIN IMMEDIATE).
 */
export const sqliteTarget: ConformanceTarget = {
  name: 'sqlite',
  async start(_t, maxItemSize) {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-sqlite-'));
    // file:///tmp/x/store.db -> sqlite:///tmp/x/store.db, with any odd character percent-escaped.
    const url = pathToFileURL(join(dir, 'store.db')).href.replace(/^file:/, 'sqlite:');
    const remove = (): void => rmSync(dir, { recursive: true, force: true });
    try {
      return instanceOf(() => createSqliteUpstream(new URL(url), new Map(), CTX(maxItemSize)), remove);
    } catch (err) {
      remove(); // the first connection failed: nothing to close
      throw err;
    }
  },
};
