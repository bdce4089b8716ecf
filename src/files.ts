/**
 * Files mcmux opens at start (its config, its repair journal, a SQLite store) and the
 * directories they live in, without ever blocking the start: what is at a path is looked at
 * through a descriptor opened with O_NONBLOCK (a FIFO then opens at once instead of waiting for
 * a writer or reader), and anything but a regular file is refused before a byte is read.
 */

import { createHash } from 'node:crypto';
import { accessSync, closeSync, constants, fstatSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, readlinkSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
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

/**
 * Why `makeStateDir(dir)` would fail, found without making anything (`mcmux check`), or
 * undefined: `dir`, or the nearest part of its path that exists, must be a directory this
 * process may write in (the rest mcmux makes).
 */
export function stateDirProblem(dir: string): string | undefined {
  let path = resolve(dir);
  for (;;) {
    let st;
    try {
      st = statSync(path, { throwIfNoEntry: false });
    } catch (error) {
      // ENOTDIR: a file further up the path (the nearest existing part says so); EACCES: unsearchable.
      if ((error as NodeJS.ErrnoException).code !== 'ENOTDIR') return `${path} cannot be looked at (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
    }
    if (st !== undefined) {
      if (!st.isDirectory()) return `${path} is not a directory`;
      try {
        accessSync(path, constants.W_OK | constants.X_OK);
      } catch (error) {
        return `${path} is not writable (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
      }
      return undefined;
    }
    // A link to nothing (a mount point's link made before its target): stat follows it and finds
    // nothing, but mkdir cannot make a directory where the link is (EEXIST: the start fails).
    if (isLink(path)) return `${path} is a symbolic link to nothing`;
    const parent = dirname(path);
    if (parent === path) return `${path} does not exist`;
    path = parent;
  }
}

/**
 * Why a file not there yet could not be made at `path` (makeDirs of its directory, then an open
 * with O_CREAT), found without making anything (`mcmux check`), or undefined: its directory as
 * stateDirProblem judges it, and where `path` is a symbolic link to nothing, the directory of
 * what it names, which must be there (the open follows the link; makeDirs made the link's own
 * directory only: review-h31 finding 13).
 */
export function newFileProblem(path: string): string | undefined {
  let p = resolve(path);
  const problem = stateDirProblem(dirname(p));
  if (problem !== undefined) return problem;
  for (let hops = 0; isLink(p); hops++) {
    if (hops >= 40) return `${path}: too many levels of symbolic links`;
    let target: string;
    try {
      target = resolve(dirname(p), readlinkSync(p));
    } catch (error) {
      return `${p} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
    }
    if (!isLink(target)) {
      const dir = dirname(target);
      let st;
      try {
        st = statSync(dir, { throwIfNoEntry: false });
      } catch (error) {
        return `${dir} cannot be looked at (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
      }
      if (st === undefined) return `${path} is a symbolic link to ${target}, in a directory not there (mcmux makes none for a link's target)`;
      if (!st.isDirectory()) return `${dir} is not a directory`;
      try {
        accessSync(dir, constants.W_OK | constants.X_OK);
      } catch (error) {
        return `${dir} is not writable (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
      }
      return undefined;
    }
    p = target;
  }
  return undefined;
}

/** Whether a symbolic link is at `path` itself (not followed); false when nothing is, or it cannot be told. */
function isLink(path: string): boolean {
  try {
    return lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink() ?? false;
  } catch {
    return false;
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

/** Test seams of lockDirectory: `beforeTakeover` runs once a lock is judged stale, before it is taken over. */
export interface LockHooks {
  readonly beforeTakeover?: () => void;
}

/**
 * Takes `<dir>/mcmux.lock` for this process and returns its release, or throws naming the process
 * that holds it. A second mcmux on one state directory (started by hand beside the service, on
 * another port or failing on the same one) would compact journal.log under the first, which then
 * appends to the file it replaced, and close it cleanly: a restart would forget the first's
 * journaled misses, and serve a deleted session again. Node has no flock(2): the lock is a file
 * holding `<pid> <start time>`; one whose process is gone (SIGKILL, a crash) is taken over, and
 * the start time tells a holder from a later process that reused its pid.
 *
 * Two processes starting at once must not both get it. The lock is never seen half written: it
 * is written aside and linked into place (link fails if a lock is there). And a stale one is
 * replaced (renamed over, so the path is never empty) by one process only: the one that creates
 * its break file (breakStale), which looks again that the lock is still the stale one it judged.
 */
export function lockDirectory(dir: string, hooks: LockHooks = {}): () => void {
  const path = join(resolve(dir), 'mcmux.lock');
  const me = `${process.pid} ${startedAt(process.pid) ?? ''}`.trim();
  const aside = `${path}.${process.pid}`;
  const fd = openSync(aside, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
  try {
    writeSync(fd, `${me}\n`);
  } finally {
    closeSync(fd);
  }
  try {
    for (let attempt = 0; attempt < 8; attempt++) {
      if (linkNew(aside, path)) return releaseOf(path, me);
      const held = readLock(path);
      if (held === undefined) continue; // released just now
      const [pid, start] = held.trim().split(' ');
      if (pid !== undefined && /^[1-9]\d*$/.test(pid) && holds(Number(pid), start)) {
        throw new Error(`state-dir ${resolve(dir)} is in use by mcmux pid ${pid} (${path}): one mcmux per state directory`);
      }
      // Stale (or garbage): taken over, unless another process is taking it over or did.
      hooks.beforeTakeover?.();
      if (breakStale(path, held, aside)) return releaseOf(path, me);
    }
    throw new Error(`state-dir ${resolve(dir)}: cannot take ${path}: it keeps changing (other mcmux processes starting on it?)`);
  } finally {
    unlinkQuietly(aside);
  }
}

/** The release of a lock this process holds as `me`: removed unless another process took it over since. */
function releaseOf(path: string, me: string): () => void {
  return () => {
    try {
      if (readLock(path)?.trim() === me) unlinkSync(path);
    } catch {
      // gone already, or not a file we can read: not ours to remove
    }
  };
}

/**
 * Replaces the stale lock `stale` at `path` with this process's (`aside`); false
 * if it is not this process's to replace. One process at a time does, for a given stale lock: the
 * one that links its lock as `<path>.break.<hash of stale>.<n>`, the lowest n whose holder is
 * alive or free. Inside, it reads the lock again: another process that judged the same lock stale
 * and got here first has replaced it already (the content of a lock, pid and start time, is never
 * written twice). A break file is removed only by the process that replaced the lock, after
 * that: whoever creates one later reads the new lock.
 */
function breakStale(path: string, stale: string, aside: string): boolean {
  const base = `${path}.break.${createHash('sha256').update(stale).digest('hex').slice(0, 16)}`;
  for (let n = 0; n < 8; n++) {
    const brk = `${base}.${n}`;
    if (!linkNew(aside, brk)) {
      // Linked whole, as the lock: never read half written.
      const [pid, start] = (readLock(brk) ?? '').trim().split(' ');
      // Its breaker is at work (or finished just now): the lock is no longer the stale one then.
      if (pid !== undefined && /^[1-9]\d*$/.test(pid) && holds(Number(pid), start)) return false;
      continue; // a breaker that died inside: the next number
    }
    let replaced = false;
    try {
      if (readLock(path) !== stale) return false;
      renameSync(aside, path);
      replaced = true;
      return true;
    } finally {
      if (replaced) for (let i = 0; i <= n; i++) unlinkQuietly(`${base}.${i}`);
      else unlinkQuietly(brk);
    }
  }
  return false;
}

/** Links `from` as `to`; false if `to` exists. */
function linkNew(from: string, to: string): boolean {
  try {
    linkSync(from, to);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

/** A lock file's text; undefined when there is none. */
function readLock(path: string): string | undefined {
  try {
    return readRegularFile(path, 100).toString('latin1');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // gone already
  }
}
