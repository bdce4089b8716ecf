import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { RepairJournal } from '../../src/router/journal';
import type { Upstream } from '../../src/upstream/upstream';
import { TestClocks } from '../helpers/clocks';

/** A key or store name as journal.log writes it. */
const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

// The module object journal.ts calls into (CommonJS): writeSync is replaced to model a disk that
// fills up in the middle of a write, as write(2) does: it takes what fits and returns that count.
const fs: typeof import('node:fs') = require('node:fs');
const realWrite = fs.writeSync;
type Plan = (data: string, fd: number) => 'ok' | 'enospc' | number;
/** Each write to a file consults `plan`: write it all, fail with ENOSPC, or take only the first n bytes. */
function diskFull(plan: Plan): () => void {
  fs.writeSync = ((fd: number, data: unknown, ...rest: unknown[]) => {
    // The bytes asked for, whichever form the call takes (a string, or a buffer with offset and length).
    let bytes: Buffer;
    if (typeof data === 'string') bytes = Buffer.from(data, 'utf8');
    else {
      const b = Buffer.from((data as Uint8Array).buffer, (data as Uint8Array).byteOffset, (data as Uint8Array).byteLength);
      const offset = typeof rest[0] === 'number' ? rest[0] : 0;
      const length = typeof rest[1] === 'number' ? rest[1] : b.length - offset;
      bytes = b.subarray(offset, offset + length);
    }
    const what = plan(bytes.toString('latin1'), fd);
    if (what === 'enospc') throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    return realWrite(fd, what === 'ok' ? bytes : bytes.subarray(0, what));
  }) as typeof fs.writeSync;
  return () => {
    fs.writeSync = realWrite;
  };
}

/** A fresh state-dir for `body`, removed after it; `full(plan)` makes the disk follow `plan` until the function it returns is called (or the end). */
function onDisk(body: (dir: string, full: (plan: Plan) => () => void) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-rjf-'));
  let restore = (): void => {};
  try {
    body(dir, (plan) => (restore = diskFull(plan)));
  } finally {
    restore();
    rmSync(dir, { recursive: true, force: true });
  }
}

const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
const v = { name: 'memcached://127.0.0.1:2' } as Upstream;

describe('review: journal.log on disk', () => {
  it('a line the disk took only half of (full disk), then a kill: the next start does not read it as another key\'s line', () => {
    onDisk((dir, full) => {
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([u, v]);
      j1.mark(u, 'sess', 'delete'); // u missed the logout of session "sess"
      j1.mark(u, 'sess.lock', 'write');
      // The disk fills while the clear of "sess.lock" is written: it takes the line up to the
      // hex of "sess" (the key it is a prefix of), and nothing after.
      const cleared = `C ${hex(u.name)} ${hex('sess.lock')}\n`;
      const cut = `C ${hex(u.name)} ${hex('sess')}`.length;
      let spent = false;
      const room = full((data) => (spent ? 'enospc' : data === cleared ? ((spent = true), cut) : 'ok'));
      j1.clear(u, 'sess.lock');
      j1.close(false); // killed (or restarted) before the disk took writes again
      room();
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([u, v]);
      assert.equal(j2.isDirty(u, 'sess'), true, 'u missed the delete of "sess": it must stay dirty (the torn clear of "sess.lock" was read as a clear of "sess")');
      j2.close();
    });
  });

  it('a write the disk took only part of, then room again: the next line is not glued to the half line', () => {
    onDisk((dir, full) => {
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([u, v]);
      j1.mark(u, 'sess', 'delete');
      j1.mark(u, 'sess.lock', 'write');
      const cleared = `C ${hex(u.name)} ${hex('sess.lock')}\n`;
      const cut = `C ${hex(u.name)} ${hex('sess')}`.length;
      let spent = false;
      // Short once (the disk filled), then room again (a log rotated away): every later write goes through.
      const room = full((data) => (!spent && data === cleared ? ((spent = true), cut) : 'ok'));
      j1.clear(u, 'sess.lock');
      j1.mark(u, 'other', 'delete'); // u misses the delete of "other" too
      room();
      assert.equal(j1.writeErrors, 0);
      j1.close(); // a clean stop
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([u, v]);
      assert.deepEqual([...j2.entries(u)].map(([k, e]) => [k, e.op]).sort(), [['other', 'delete'], ['sess', 'delete']],
        `every entry in memory at the clean stop is loaded back; journal.log was ${JSON.stringify(readFileSync(join(dir, 'journal.log'), 'latin1'))}`);
      j2.close();
    });
  });

  it('the compacted journal.log the start writes is not put in place half written (disk full): the old one stays', () => {
    onDisk((dir, full) => {
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([u, v]);
      const keys = Array.from({ length: 20 }, (_, i) => `sess${i}`);
      for (const k of keys) j1.mark(u, k, 'delete');
      j1.close(false); // killed
      // The next start compacts journal.log into journal.log.tmp: the disk takes half of it.
      let spent = false;
      const room = full((data) => (spent ? 'enospc' : data.length > 500 ? ((spent = true), Math.floor(data.length / 2)) : 'ok'));
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      let startError: unknown;
      try {
        j2.load([u, v]);
      } catch (error) {
        startError = error; // a start that stops with the reason is fine
      }
      j2.close(false);
      room();
      const j3 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j3.load([u, v]);
      assert.deepEqual([...j3.entries(u)].map(([k]) => k).sort(), [...keys].sort(),
        `no entry is lost to a rewrite the disk could not take (start error: ${String(startError)})`);
      j3.close();
    });
  });
  /**
   * A journal on a fresh state-dir (test clocks: no time passes unless the test says so) with
   * `first` marked on file, then a disk that refuses every write until `fill(false)`; the write
   * errors it reported; `restart()` loads journal.log into a new journal as the next process.
   */
  function onFillingDisk(
    first: string,
    body: (d: {
      j: RepairJournal;
      errors: Error[];
      fill: (full: boolean) => void;
      clocks: TestClocks;
      restart: (chain: Upstream[]) => RepairJournal;
      /** journal.log as it is now, quoted. */
      file: () => string;
    }) => void,
  ): void {
    const clocks = new TestClocks();
    try {
      onDisk((dir, disk) => {
        const j = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
        j.load([u, v]);
        const errors: Error[] = [];
        j.onWriteError = (e) => errors.push(e);
        j.mark(u, first, 'delete');
        let full = true;
        disk(() => (full ? 'enospc' : 'ok'));
        const restart = (chain: Upstream[]): RepairJournal => {
          const next = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
          next.load(chain);
          return next;
        };
        const file = (): string => JSON.stringify(readFileSync(join(dir, 'journal.log'), 'latin1'));
        body({ j, errors, fill: (f) => (full = f), clocks, restart, file });
      });
    } finally {
      clocks.restore();
    }
  }

  it('a SIGTERM right after the disk took writes again still puts on file the entries it had refused', () => {
    onFillingDisk('k1', ({ j: j1, errors, fill, clocks, restart, file }) => {
      j1.mark(u, 'k2', 'delete'); // refused by the disk: in memory only, for now
      assert.equal(errors.length, 1);
      fill(false); // the disk takes writes again (space freed)
      clocks.advance(200);
      j1.close(); // SIGTERM: every request answered, a clean stop
      const j2 = restart([u, v]);
      assert.deepEqual([...j2.entries(u)].map(([k]) => k).sort(), ['k1', 'k2'], `a restart after the disk takes writes again loses no entry (README); journal.log was ${file()}`);
      j2.close();
    });
  });

  it('a reload on a full disk is applied whole: the journal takes the new chain in memory, and the file catches up once the disk takes writes', () => {
    onFillingDisk('sess', ({ j: j1, errors, fill, clocks, restart, file }) => {
      // A reload that changes only u's timeout, then one that adds w. The first threw: the
      // reload was rejected ("the running configuration stays") with the journal's timeouts
      // already changed under the router's old upstreams.
      const slower = { name: u.name, timeoutMs: 5000 } as Upstream;
      assert.doesNotThrow(() => j1.setChain([slower, v]));
      assert.equal(errors.length, 1, 'the failed write is reported as any other');
      const w = { name: 'memcached://127.0.0.1:3' } as Upstream;
      assert.doesNotThrow(() => j1.setChain([slower, v, w]));
      assert.ok(j1.overflowed(w) !== undefined, 'the added store is distrusted');
      fill(false);
      clocks.advance(1000);
      j1.mark(v, 'other', 'write'); // the next entry rewrites the file from memory
      j1.close(false);
      const j2 = restart([u, v, w]);
      assert.deepEqual([...j2.entries(u)].map(([k]) => k), ['sess']);
      assert.match(file(), new RegExp(`\\\\nR ${hex(u.name)} 5000\\\\n`), 'the new timeout is on file');
      assert.ok(j2.overflowed(w) !== undefined, `w is still distrusted after a restart: ${file()}`);
      j2.close();
    });
  });

  it('a compacted journal.log is made durable: its directory is fsynced after the rename', () => {
    onDisk((dir) => {
      // Which path each descriptor was opened on, and the order of renames and fsyncs.
      const opened = new Map<number, string>();
      const events: string[] = [];
      const real = { openSync: fs.openSync, fsyncSync: fs.fsyncSync, renameSync: fs.renameSync };
      fs.openSync = ((path: string, ...rest: unknown[]) => {
        const fd = (real.openSync as (...a: unknown[]) => number)(path, ...rest);
        opened.set(fd, String(path));
        return fd;
      }) as typeof fs.openSync;
      fs.fsyncSync = ((fd: number) => {
        events.push(`fsync ${opened.get(fd)}`);
        real.fsyncSync(fd);
      }) as typeof fs.fsyncSync;
      fs.renameSync = ((from: string, to: string) => {
        events.push(`rename ${String(to)}`);
        real.renameSync(from, to);
      }) as typeof fs.renameSync;
      try {
        const j = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
        j.load([u, v]); // the start writes journal.log afresh
        j.close();
      } finally {
        Object.assign(fs, real);
      }
      const renamed = events.indexOf(`rename ${join(dir, 'journal.log')}`);
      assert.ok(renamed >= 0, events.join('; '));
      // Without it a power cut can leave the old directory entry: the entries appended (and
      // fsynced) to the new file since would be lost with it.
      assert.ok(events.slice(renamed + 1).includes(`fsync ${dir}`), `the directory is fsynced after the rename: ${events.join('; ')}`);
    });
  });
});
