/**
 * Files mcmux opens at start (its config, its repair journal, a SQLite store) and the
 * directories they live in, without ever blocking the start: what is at a path is looked at
 * through a descriptor opened with O_NONBLOCK (a FIFO then opens at once instead of waiting for
 * a writer or reader), and anything but a regular file is refused before a byte is read.
 */

import { closeSync, constants, fstatSync, mkdirSync, openSync, readFileSync, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

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

/** makeDirs for `state-dir`, failing with one line that names it. */
export function makeStateDir(dir: string): void {
  try {
    makeDirs(dir, 0o700);
  } catch (error) {
    throw new Error(`state-dir "${dir}" cannot be made (${error instanceof Error ? error.message : String(error)}): expected a directory mcmux can create and write`);
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

/** When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); undefined without /proc or such a process. */
function startedAt(pid: number): string | undefined {
  try {
    // Not readRegularFile: a /proc file reports size 0.
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name in parentheses may hold spaces: the fields after it start at the state (3).
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[22 - 3];
  } catch {
    return undefined;
  }
}

/** Whether the process a lock file names (`<pid> <start>`) is still the one that wrote it. */
function holds(pid: number, start: string | undefined): boolean {
  if (pid === process.pid) return false; // an App of this process before this one (tests): taken over
  if (start !== undefined && startedAt(process.pid) !== undefined) return startedAt(pid) === start; // a reused pid is another process
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes `<dir>/mcmux.lock` for this process and returns its release, or throws naming the process
 * that holds it. A second mcmux on one state directory (started by hand beside the service, on
 * another port or failing on the same one) would compact journal.log under the first, which then
 * appends to the file it replaced, and close it cleanly: a restart would forget the first's
 * journaled misses, and serve a deleted session again. Node has no flock(2): the lock is a file
 * created with O_EXCL holding `<pid> <start time>`; one whose process is gone (SIGKILL, a crash)
 * is taken over, and the start time tells a holder from a later process that reused its pid.
 */
export function lockDirectory(dir: string): () => void {
  const path = join(resolve(dir), 'mcmux.lock');
  const me = `${process.pid} ${startedAt(process.pid) ?? ''}`.trim();
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      try {
        writeSync(fd, `${me}\n`);
      } finally {
        closeSync(fd);
      }
      return () => {
        try {
          if (readRegularFile(path, 100).toString('latin1').trim() === me) unlinkSync(path);
        } catch {
          // gone already, or taken over: not ours to remove
        }
      };
    } catch (error) {
      // Taken between our look at a stale one and our create: by a process starting with us.
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw error;
    }
    const [pid, start] = readRegularFile(path, 100).toString('latin1').trim().split(' ');
    if (pid !== undefined && /^[1-9]\d*$/.test(pid) && holds(Number(pid), start)) {
      throw new Error(`state-dir ${resolve(dir)} is in use by mcmux pid ${pid} (${path}): one mcmux per state directory`);
    }
    try {
      unlinkSync(path); // stale (or half written by a start that died): taken over
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
}
