/** src/files.ts: mkdir -p that always returns, and files read or created without blocking on what is not a regular one. */

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, after, it } from 'node:test';
import { FileKindError, lockDirectory, makeDirs, readRegularFile, touchRegularFile } from '../src/files';

const root = mkdtempSync(join(tmpdir(), 'mcmux-make-dirs-'));
after(() => rmSync(root, { recursive: true, force: true }));

it('makes every missing level with the mode, and accepts one that exists', () => {
  const deep = join(root, 'a', 'b', 'c');
  makeDirs(deep, 0o700);
  for (const d of [join(root, 'a'), join(root, 'a', 'b'), deep]) {
    assert.ok(statSync(d).isDirectory(), d);
    assert.equal(statSync(d).mode & 0o777, 0o700, d); // no umask clears owner bits
  }
  makeDirs(deep, 0o700);
  makeDirs(`${deep}/./../c/`, 0o700);
});

it('fails with the reason: a file in the way, or a place where nothing can be made', () => {
  const file = join(root, 'file');
  writeFileSync(file, '');
  assert.throws(() => makeDirs(file, 0o700), { code: 'EEXIST' });
  assert.throws(() => makeDirs(join(file, 'x', 'y'), 0o700), { code: 'ENOTDIR' });
  // Where mkdirSync(..., { recursive: true }) never returned.
  assert.throws(() => makeDirs('/proc/mcmux-none/x', 0o700), { code: 'ENOENT' });
});

it('a dangling link in the way is reported as the link it is (EEXIST), not as a missing file', () => {
  const link = join(root, 'dangling');
  symlinkSync(join(root, 'nowhere'), link);
  assert.throws(() => makeDirs(link, 0o700), { code: 'EEXIST' });
});

it('readRegularFile: the bytes of a regular file up to a bound; a FIFO, a device or a directory at once', () => {
  const file = join(root, 'small');
  writeFileSync(file, 'abc');
  assert.equal(readRegularFile(file, 3).toString(), 'abc');
  assert.throws(() => readRegularFile(file, 2), (e: unknown) => e instanceof FileKindError && e.code === 'EFBIG' && /more than 2 bytes/.test(e.message));
  const fifo = join(root, 'fifo');
  execFileSync('mkfifo', [fifo]); // opened without O_NONBLOCK, this would wait for a writer for ever
  for (const path of [fifo, '/dev/zero', root]) {
    assert.throws(() => readRegularFile(path, 1024), (e: unknown) => e instanceof FileKindError && e.code === 'ENOTREG', path);
  }
  assert.throws(() => readRegularFile(join(root, 'missing'), 1024), { code: 'ENOENT' });
});

it('touchRegularFile: creates with the mode, accepts a regular file, refuses a FIFO without waiting for a reader', () => {
  const file = join(root, 'db');
  touchRegularFile(file, 0o600);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  touchRegularFile(file, 0o600);
  const fifo = join(root, 'fifo2');
  execFileSync('mkfifo', [fifo]);
  assert.throws(() => touchRegularFile(fifo, 0o600), (e: unknown) => e instanceof FileKindError && e.code === 'ENOTREG');
});

/** Clock ticks since boot at which `pid` started (/proc/<pid>/stat field 22). */
const startOf = (pid: number): string => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] as string;
};

it('lockDirectory: one process per state directory; a lock left by a dead process, or one whose pid was reused, is taken over', async (t) => {
  const dir = join(root, 'locked');
  makeDirs(dir, 0o700);
  const lock = join(dir, 'mcmux.lock');
  const other = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.after(() => other.kill('SIGKILL'));
  await new Promise((r) => other.once('spawn', r));
  const pid = other.pid as number;

  // Held by another live process: refused, naming it, and the file is left as it was.
  writeFileSync(lock, `${pid} ${startOf(pid)}\n`);
  assert.throws(() => lockDirectory(dir), new RegExp(`state-dir ${dir} is in use by mcmux pid ${pid} `));
  assert.equal(readFileSync(lock, 'latin1'), `${pid} ${startOf(pid)}\n`);
  // The same pid with another start time is a later process that reused it: the holder is gone.
  writeFileSync(lock, `${pid} 1\n`);
  const release = lockDirectory(dir);
  assert.equal(readFileSync(lock, 'latin1'), `${process.pid} ${startOf(process.pid)}\n`);
  release();
  assert.equal(existsSync(lock), false, 'released');

  // Left by a process that is gone (killed: it never released it).
  other.kill('SIGKILL');
  await new Promise((r) => other.once('exit', r));
  writeFileSync(lock, `${pid}\n`); // without a start time, as on a system without /proc
  const again = lockDirectory(dir);
  assert.match(readFileSync(lock, 'latin1'), new RegExp(`^${process.pid} `));
  // A release after another process took the lock over leaves that one's lock in place.
  writeFileSync(lock, `${pid} 1\n`);
  again();
  assert.equal(readFileSync(lock, 'latin1'), `${pid} 1\n`);
  // Garbage (a start that died while writing it) is taken over too.
  writeFileSync(lock, '');
  lockDirectory(dir)();
  assert.equal(existsSync(lock), false);
});

/**
 * A process that takes `dir`'s lock, stopping just before it takes over a stale one until the
 * file `go` appears; it prints `paused`, then `held` or `refused <message>`, and keeps running
 * (holding what it got) until killed.
 */
function locker(t: TestContext, dir: string, go: string): { lines: string[]; next: (what: RegExp) => Promise<string> } {
  const files = join(__dirname, '..', 'src', 'files.js');
  const code = `
    const { existsSync } = require('node:fs');
    const { lockDirectory } = require(${JSON.stringify(files)});
    const nap = new Int32Array(new SharedArrayBuffer(4));
    try {
      lockDirectory(${JSON.stringify(dir)}, { beforeTakeover: () => {
        console.log('paused');
        while (!existsSync(${JSON.stringify(go)})) Atomics.wait(nap, 0, 0, 5);
      } });
      console.log('held');
    } catch (e) {
      console.log('refused ' + e.message);
    }
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  const lines: string[] = [];
  const waiting: Array<() => void> = [];
  let buf = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    for (const w of waiting.splice(0)) w();
  });
  const next = (what: RegExp): Promise<string> =>
    new Promise((done, fail) => {
      const look = (): void => {
        const line = lines.find((l) => what.test(l));
        if (line !== undefined) done(line);
        else if (child.exitCode !== null) fail(new Error(`locker exited: ${lines.join(' | ')}`));
        else waiting.push(look);
      };
      child.once('exit', look);
      look();
    });
  return { lines, next };
}

it('lockDirectory: two processes that find the same stale lock at once: one takes it over, the other is refused', async (t) => {
  const dir = join(root, 'race');
  makeDirs(dir, 0o700);
  const lock = join(dir, 'mcmux.lock');
  // Left by a process that is gone.
  const dead = spawn('true', { stdio: 'ignore' });
  await new Promise((r) => dead.once('exit', r));
  writeFileSync(lock, `${dead.pid} 1\n`);

  const a = locker(t, dir, join(dir, 'go-a'));
  const b = locker(t, dir, join(dir, 'go-b'));
  // Both have read the stale lock and judged it so.
  await Promise.all([a.next(/^paused$/), b.next(/^paused$/)]);
  writeFileSync(join(dir, 'go-a'), '');
  assert.equal(await a.next(/^(held|refused)/), 'held', 'the first takes the stale lock over');
  writeFileSync(join(dir, 'go-b'), '');
  assert.match(await b.next(/^(held|refused)/), /^refused state-dir .* is in use by mcmux pid \d+ /, 'the second finds it taken, not stale');
  assert.match(readFileSync(lock, 'latin1'), /^\d+ \d+\n$/);
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('mcmux.lock.')), [], 'nothing left beside the lock');
});

it('lockDirectory: a process that died while taking over a stale lock does not keep the next one out', () => {
  const dir = join(root, 'died-breaking');
  makeDirs(dir, 0o700);
  const stale = '999999999 1\n';
  writeFileSync(join(dir, 'mcmux.lock'), stale);
  // What that process left: its claim on breaking this stale lock (files.ts breakStale).
  writeFileSync(join(dir, `mcmux.lock.break.${createHash('sha256').update(stale).digest('hex').slice(0, 16)}.0`), '999999998 1\n');
  const release = lockDirectory(dir);
  assert.match(readFileSync(join(dir, 'mcmux.lock'), 'latin1'), new RegExp(`^${process.pid} `));
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('mcmux.lock.')), [], 'its leftovers are removed with the takeover');
  release();
  assert.deepEqual(readdirSync(dir), []);
});
