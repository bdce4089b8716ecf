/** src/files.ts: mkdir -p that always returns, and files read or created without blocking on what is not a regular one. */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { FileKindError, makeDirs, readRegularFile, touchRegularFile } from '../src/files';

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
