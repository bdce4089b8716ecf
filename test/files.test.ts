/** src/files.ts: mkdir -p that always returns, and files read or created without blocking on what is not a regular one. */

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
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
