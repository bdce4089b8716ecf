/**
 * Files mcmux opens at start (its config, its repair journal, a SQLite store) and the
 * directories they live in, without ever blocking the start: what is at a path is looked at
 * through a descriptor opened with O_NONBLOCK (a FIFO then opens at once instead of waiting for
 * a writer or reader), and anything but a regular file is refused before a byte is read.
 */

import { closeSync, constants, fstatSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** What is at a path is not a regular file (ENOTREG), or is larger than allowed (EFBIG); the message names no path. */
export class FileKindError extends Error {
  constructor(
    readonly code: 'ENOTREG' | 'EFBIG',
    message: string,
  ) {
    super(message);
  }
}

/**
 * `mkdir -p` that always returns. Node 20's `mkdirSync(path, { recursive: true })` never returns
 * for a path under /proc (a parent it cannot create there sends it round again): `--state-dir
 * /proc/x` hung mcmux at start. Creating one missing level at a time with a plain mkdirSync
 * fails at once with the reason (ENOENT, EACCES, ENOTDIR), which the caller reports.
 */
export function makeDirs(dir: string, mode: number): void {
  const path = resolve(dir);
  try {
    mkdirSync(path, { mode });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && isDirectory(path)) return;
    const parent = dirname(path);
    if (code !== 'ENOENT' || parent === path) throw error;
    makeDirs(parent, mode); // at most one call per level of the path
    try {
      mkdirSync(path, { mode });
    } catch (again) {
      // Made meanwhile by someone else: fine if it is a directory.
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST' || !isDirectory(path)) throw again;
    }
  }
}

/** A directory (or a link to one); false for anything else, a dangling link included. */
function isDirectory(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/**
 * The whole of a regular file of at most `maxBytes`. Throws FileKindError for anything else at
 * the path (a FIFO, a device, a directory) or a larger file, and the errno error (ENOENT, EACCES)
 * when it cannot be opened.
 */
export function readRegularFile(path: string, maxBytes: number): Buffer {
  const fd = openRegular(path, constants.O_RDONLY);
  try {
    const size = fstatSync(fd).size;
    if (size > maxBytes) throw new FileKindError('EFBIG', `more than ${maxBytes} bytes`);
    // Read to the end, never past maxBytes: the file may grow after fstat.
    const buf = Buffer.allocUnsafe(Math.min(size, maxBytes) + 1);
    let n = 0;
    for (let got = 1; got > 0 && n < buf.length; n += got) got = readSync(fd, buf, n, buf.length - n, null);
    if (n > maxBytes) throw new FileKindError('EFBIG', `more than ${maxBytes} bytes`);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/**
 * Creates `path` if missing (with `mode`) and checks that it can be written; refuses, as
 * readRegularFile, what is not a regular file (O_RDWR: a FIFO opens without a reader on Linux).
 */
export function touchRegularFile(path: string, mode: number): void {
  closeSync(openRegular(path, constants.O_RDWR | constants.O_CREAT, mode));
}

function openRegular(path: string, flags: number, mode?: number): number {
  const fd = openSync(path, flags | constants.O_NONBLOCK, mode);
  try {
    if (!fstatSync(fd).isFile()) throw new FileKindError('ENOTREG', 'not a regular file');
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  return fd;
}
