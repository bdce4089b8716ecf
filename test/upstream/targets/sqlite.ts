import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createSqliteUpstream } from '../../../src/upstream/sqlite';
import type { Upstream } from '../../../src/upstream/upstream';
import { CTX, type ConformanceTarget } from './target';

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
    const clients: Upstream[] = [];
    const make = (): Upstream => {
      const u = createSqliteUpstream(new URL(url), new Map(), CTX(maxItemSize));
      clients.push(u);
      return u;
    };
    let upstream: Upstream;
    try {
      upstream = make();
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return {
      upstream,
      second: make,
      async stop() {
        await Promise.all(clients.map((c) => c.close()));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
