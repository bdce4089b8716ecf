/**
 * Private real servers for integration tests: each on a free port on 127.0.0.1, killed when
 * the test process exits even if a test forgot to stop it.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, readdirSync } from 'node:fs';
import { type Socket, connect, createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import type { TestContext } from 'node:test';

const READY_TIMEOUT_MS = 5000;
const STOP_GRACE_MS = 2000;

const running = new Set<ChildProcess>();
function killAll(): void {
  for (const proc of running) proc.kill('SIGKILL');
}
process.on('exit', killAll);
// 'exit' does not run when a signal ends the process (the test runner's timeout sends SIGTERM):
// clean up, then die of the same signal, the handler being gone.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

/** A port free on 127.0.0.1 right now (another process may still take it before we do). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

export function haveBinary(name: string): boolean {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, name));
  return candidates.some((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * True when `bin` is on PATH. Otherwise skips the test, or, with MCMUX_REQUIRE_SERVERS=1 (CI),
 * fails it: a missing server must not turn a test run green by skipping everything.
 */
export function requireBinary(t: TestContext, bin: string, debPackage: string): boolean {
  const skip = skipWithout(bin, debPackage);
  if (skip === false) return true;
  t.skip(skip);
  return false;
}

/**
 * requireBinary for a whole `describe` (its `skip` option): false when `bin` is on PATH, else why
 * to skip; with MCMUX_REQUIRE_SERVERS=1 (CI) it throws instead, and the file fails.
 */
export function skipWithout(bin: string, debPackage: string): string | false {
  if (haveBinary(bin)) return false;
  if (process.env.MCMUX_REQUIRE_SERVERS === '1') {
    throw new Error(`${bin} not installed and MCMUX_REQUIRE_SERVERS=1: apt-get install ${debPackage}`);
  }
  return `${bin} not installed (apt-get install ${debPackage})`;
}

export interface MemcachedProcess {
  readonly port: number;
  /** memcached://127.0.0.1:PORT */
  readonly url: string;
  /** The current process (a new one after restart). */
  readonly proc: ChildProcess;
  /** SIGTERM, SIGKILL after a grace period; resolves once it has exited. */
  stop(): Promise<void>;
  kill(signal: NodeJS.Signals): void;
  /** Stops it if still running, then starts a fresh, empty one on the same port. */
  restart(): Promise<void>;
  /**
   * SIGSTOP, resolving once every thread has stopped (read from /proc where there is one):
   * the kernel still accepts connections, nothing answers.
   */
  pause(): Promise<void>;
  /** SIGCONT */
  resume(): void;
}

export async function startMemcached(extraArgs: string[] = []): Promise<MemcachedProcess> {
  // freePort() can race with another process grabbing the port: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      const proc = await spawnMemcached(port, extraArgs);
      return handle(port, proc, extraArgs);
    } catch (err) {
      if (attempt >= 3 || !/in use/i.test(String(err))) throw err;
    }
  }
}

/** `n` private memcached processes (each with `extraArgs`), stopped after the test. */
export async function startMemcacheds(t: TestContext, n: number, extraArgs: string[] = []): Promise<MemcachedProcess[]> {
  const list = await Promise.all(Array.from({ length: n }, () => startMemcached(extraArgs)));
  t.after(() => Promise.all(list.map((m) => m.stop())));
  return list;
}

function handle(port: number, first: ChildProcess, extraArgs: string[]): MemcachedProcess {
  let proc = first;
  const h: MemcachedProcess = {
    port,
    url: `memcached://127.0.0.1:${port}`,
    get proc() {
      return proc;
    },
    stop: () => stopProcess(proc),
    kill: (signal) => {
      proc.kill(signal);
    },
    restart: async () => {
      await stopProcess(proc);
      proc = await spawnMemcached(port, extraArgs);
    },
    pause: async () => {
      proc.kill('SIGSTOP');
      await waitStopped(proc);
    },
    resume: () => {
      proc.kill('SIGCONT');
    },
  };
  return h;
}

async function spawnMemcached(port: number, extraArgs: string[]): Promise<ChildProcess> {
  const args = ['-l', '127.0.0.1', '-U', '0', '-p', String(port)];
  if (process.getuid?.() === 0) args.push('-u', 'nobody'); // memcached refuses to run as root
  const proc = spawn('memcached', [...args, ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(proc);
  let stderr = '';
  let exited: string | undefined;
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-4096);
  });
  proc.on('error', (err) => {
    exited = `spawn failed: ${err.message}`;
  });
  proc.on('exit', (code, signal) => {
    running.delete(proc);
    exited ??= `exited with ${signal ?? code}`;
  });
  // Do not hold the test process open: the 'exit' hook kills whatever is left.
  proc.unref();
  (proc.stderr as Socket | null)?.unref();

  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited !== undefined) break;
    if (await answersVersion(port)) return proc;
    if (exited === undefined) await new Promise((r) => setTimeout(r, 20));
  }
  await stopProcess(proc);
  throw new Error(`memcached on port ${port} did not start (${exited ?? 'no answer to version within 5 s'}): ${stderr.trim()}`);
}

/** A TCP server on 127.0.0.1 that accepts connections and never answers (a hung server). */
export interface HoldingServer {
  port: number;
  /** The connections it holds now. */
  sockets: Set<Socket>;
  /** Drops what it holds and stops listening. */
  close(): void;
}

/**
 * A stand-in for a server that accepts and never answers (a hung memcached, a wrong port behind
 * a proxy). With `t`, closed after the test.
 */
export async function holdingServer(t?: TestContext): Promise<HoldingServer> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const held: HoldingServer = {
    port: (server.address() as { port: number }).port,
    sockets,
    close(): void {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
  t?.after(() => held.close());
  return held;
}

/** Connects, sends `version`, and waits (bounded) for `VERSION ...`. */
export function answersVersion(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    let got = '';
    const sock = connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('connect', () => sock.write('version\r\n'));
    sock.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n')) done(got.startsWith('VERSION '));
    });
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
  });
}

/** A signal is delivered to each thread as it next runs: until then the process still answers. */
async function waitStopped(proc: ChildProcess): Promise<void> {
  const dir = `/proc/${proc.pid}/task`;
  if (proc.pid === undefined || !existsSync(dir)) return;
  const stopped = (): boolean => {
    let tids: string[];
    try {
      tids = readdirSync(dir);
    } catch {
      return true; // the process is gone
    }
    return tids.every((tid) => {
      try {
        // state is the field after the parenthesised command name
        return /\) [tT] /.test(readFileSync(`${dir}/${tid}/stat`, 'latin1'));
      } catch {
        return true; // the thread is gone
      }
    });
  };
  for (let i = 0; i < 500 && !stopped(); i++) await new Promise((r) => setTimeout(r, 10));
}

/** SIGTERM (after SIGCONT, should it be paused), SIGKILL after a grace; resolves once it exited. */
export function stopProcess(proc: ChildProcess, graceMs = STOP_GRACE_MS): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    // These timers also keep the loop alive until the (unref'd) child's exit is seen.
    let killer = setTimeout(() => {
      proc.kill('SIGKILL');
      killer = setTimeout(resolve, graceMs);
    }, graceMs);
    proc.once('exit', () => {
      clearTimeout(killer);
      resolve();
    });
    proc.kill('SIGCONT'); // a paused process would not act on SIGTERM
    proc.kill('SIGTERM');
  });
}
