/**
 * The child processes of a bench run, in one register (`Children`) so that the runner can kill
 * them all on exit, on error and on a signal, whatever started them; and the helpers to start
 * one: a free port on 127.0.0.1, a program on PATH, a line in its output, a command run to the end.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

export const HOST = '127.0.0.1';
const STOP_GRACE_MS = 2000;

/** A target whose program is not installed: its row says so instead of failing. */
export class Unavailable extends Error {}

export interface Proc {
  name: string;
  child: ChildProcess;
  /** The last lines it wrote to stderr/stdout, for the report when it fails. */
  output: string[];
  exited: boolean;
}

/** Every child process started, so that all of them can be killed whatever happens. */
export class Children {
  private readonly all = new Set<Proc>();

  spawn(name: string, cmd: string, args: string[]): Proc {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const proc: Proc = { name, child, output: [], exited: false };
    const keep = (d: Buffer) => {
      proc.output.push(...d.toString('utf8').split('\n').filter((l) => l.trim() !== ''));
      proc.output.splice(0, Math.max(0, proc.output.length - 20));
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.on('error', (err) => {
      proc.output.push(err.message);
      // A child that could not be spawned at all (ENOENT) never emits 'exit'.
      if (child.pid === undefined) {
        proc.exited = true;
        this.all.delete(proc);
      }
    });
    child.on('exit', () => {
      proc.exited = true;
      this.all.delete(proc);
    });
    this.all.add(proc);
    return proc;
  }

  /** Runs a command to its end, killed after `ms`; rejects unless it exits with status 0. */
  run(name: string, cmd: string, args: string[], ms: number): Promise<void> {
    const proc = this.spawn(name, cmd, args);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), ms);
      const done = (code: number | null, signal: string | null) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new Error(`${name} failed (${signal ?? `status ${code}`}): ${proc.output.slice(-3).join(' | ') || 'no output'}`));
      };
      proc.child.on('exit', done);
      proc.child.on('error', () => proc.child.pid === undefined && done(null, 'could not start'));
    });
  }

  /** SIGTERM, then SIGKILL if it has not gone after a grace period. */
  async stop(proc: Proc): Promise<void> {
    if (proc.exited || proc.child.pid === undefined) return;
    const gone = new Promise<void>((resolve) => proc.child.once('exit', () => resolve()));
    proc.child.kill('SIGTERM');
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), STOP_GRACE_MS);
    await gone;
    clearTimeout(timer);
  }

  /** Synchronous last resort, safe in an 'exit' handler: SIGKILL everything still running. */
  killAll(): void {
    for (const p of this.all) if (!p.exited) p.child.kill('SIGKILL');
  }

  /** SIGKILL everything, then wait (at most `ms`) until each has exited and been reaped. */
  async killAllAndWait(ms: number): Promise<void> {
    const left = [...this.all].filter((p) => !p.exited);
    const gone = left.map((p) => new Promise<void>((resolve) => p.child.once('exit', () => resolve())));
    this.killAll();
    await Promise.race([Promise.all(gone), new Promise((r) => setTimeout(r, ms))]);
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Path of an executable on PATH, or null. */
export function which(cmd: string): string | null {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}


/** Resolves once `proc` has written a line matching `pattern`; fails if it exits first or after `ms`. */
export function waitForOutput(proc: Proc, pattern: RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const finish = (err?: Error) => {
      clearTimeout(timer);
      proc.child.stdout?.off('data', onData);
      proc.child.stderr?.off('data', onData);
      proc.child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    const onData = (d: Buffer) => {
      seen = (seen + d.toString('utf8')).slice(-8192);
      if (pattern.test(seen)) finish();
    };
    const onExit = () => finish(new Error(`${proc.name} exited: ${proc.output.slice(-3).join(' | ') || 'no output'}`));
    const timer = setTimeout(() => finish(new Error(`${proc.name}: no ${pattern} within ${ms} ms: ${proc.output.slice(-3).join(' | ')}`)), ms);
    proc.child.stdout?.on('data', onData);
    proc.child.stderr?.on('data', onData);
    proc.child.on('exit', onExit);
    if (proc.exited) onExit();
  });
}
