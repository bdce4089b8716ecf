/**
 * The processes a bench run starts: memcached, twemproxy, mcmux. All listen on 127.0.0.1, on
 * ports found free just before; every child is registered in one `Children` so that the runner
 * can kill them all on exit, error or signal.
 *
 *   startTarget(kind) ──► memcached × 0..2 (the backends) ──► proxy (twemproxy / mcmux), or none
 *                     ──► waitReady: `version\r\n` answered with `VERSION ...`
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { delimiter, join } from 'node:path';

export const TARGETS = ['direct', 'twemproxy', 'mcmux1', 'mcmux2'] as const;
export type TargetKind = (typeof TARGETS)[number];

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = { memcached: 5000, proxy: 15000 } as const;
const STOP_GRACE_MS = 2000;

export interface Target {
  kind: TargetKind;
  host: string;
  port: number;
  /** The process the clients talk to (memcached itself for `direct`). */
  pid: number;
  /** memcached processes behind a proxy; empty for `direct`. */
  backendPids: number[];
  /** Processes to stop when this target is done with. */
  procs: Proc[];
}

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

/** One `version` round trip; resolves true if answered `VERSION ...`. */
function probe(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: HOST, port });
    let got = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    s.on('connect', () => s.write('version\r\n'));
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\n')) done(got.startsWith('VERSION '));
    });
    s.on('error', () => done(false));
  });
}

/** Polls until `port` answers `version`; fails early if the process exits. */
export async function waitReady(proc: Proc, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exited) throw new Error(`${proc.name} exited: ${proc.output.slice(-3).join(' | ') || 'no output'}`);
    if (await probe(port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${proc.name} did not answer 'version' on ${HOST}:${port} within ${timeoutMs} ms`);
}

async function startMemcached(children: Children): Promise<{ proc: Proc; port: number }> {
  const port = await freePort();
  const args = ['-l', HOST, '-p', String(port), '-U', '0', '-m', '1024', '-t', '1'];
  // memcached refuses to run as root unless told which user to become.
  if (process.getuid?.() === 0) args.push('-u', 'nobody');
  const proc = children.spawn(`memcached:${port}`, 'memcached', args);
  await waitReady(proc, port, READY_TIMEOUT_MS.memcached);
  return { proc, port };
}

function twemproxyConfig(listen: number, backend: number): string {
  return [
    'bench:',
    `  listen: ${HOST}:${listen}`,
    '  hash: fnv1a_64',
    '  distribution: ketama',
    '  timeout: 2000',
    '  auto_eject_hosts: false',
    '  servers:',
    `   - ${HOST}:${backend}:1`,
    '',
  ].join('\n');
}

/**
 * Starts a target and what it needs behind it; stops what it started if it fails.
 * Throws `Unavailable` when the program is absent, another Error when it fails to start.
 */
export async function startTarget(kind: TargetKind, children: Children, repo: string, tmp: string): Promise<Target> {
  if (kind === 'twemproxy' && !which('nutcracker')) throw new Unavailable('not installed (nutcracker not on PATH)');
  const mcmux = join(repo, 'bin', 'mcmux');
  if (kind.startsWith('mcmux') && !existsSync(mcmux)) throw new Error(`failed to start: ${mcmux} not found`);

  const procs: Proc[] = [];
  try {
    const backends = kind === 'mcmux2' ? 2 : 1;
    const mcs: { proc: Proc; port: number }[] = [];
    for (let i = 0; i < backends; i++) {
      const mc = await startMemcached(children);
      procs.push(mc.proc);
      mcs.push(mc);
    }
    const first = mcs[0]!;
    if (kind === 'direct') {
      return { kind, host: HOST, port: first.port, pid: first.proc.child.pid!, backendPids: [], procs };
    }

    const port = await freePort();
    let proc: Proc;
    if (kind === 'twemproxy') {
      const conf = join(tmp, `nutcracker-${port}.yml`);
      writeFileSync(conf, twemproxyConfig(port, first.port));
      const stats = await freePort();
      const args = ['-c', conf, '-s', String(stats), '-a', HOST, '-o', join(tmp, `nutcracker-${port}.log`)];
      args.push('-p', join(tmp, `nutcracker-${port}.pid`), '-v', '4');
      proc = children.spawn('nutcracker', 'nutcracker', args);
    } else {
      const args = [mcmux, '--listen', `${HOST}:${port}`];
      for (const mc of mcs) args.push('--upstream', `memcached://${HOST}:${mc.port}`);
      args.push('--log-level', 'warn');
      proc = children.spawn(kind, process.execPath, args);
    }
    procs.push(proc);
    try {
      await waitReady(proc, port, READY_TIMEOUT_MS.proxy);
    } catch (err) {
      throw new Error(`failed to start: ${(err as Error).message}`);
    }
    const backendPids = mcs.map((m) => m.proc.child.pid!);
    return { kind, host: HOST, port, pid: proc.child.pid!, backendPids, procs };
  } catch (err) {
    await Promise.all(procs.map((p) => children.stop(p)));
    throw err;
  }
}

export async function stopTarget(t: Target, children: Children): Promise<void> {
  await Promise.all(t.procs.map((p) => children.stop(p)));
}
