/**
 * The redis conformance target, and private redis-servers for the driver's own tests: each on a
 * free port on 127.0.0.1, no persistence, its own temporary directory, killed when the test
 * process exits even if a test forgot to stop it. The machine's shared Redis is never touched.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { Redis } from 'ioredis';
import { createRedisUpstream } from '../../../src/upstream/redis';
import { freePort, requireBinary, stopProcess } from '../../helpers/servers';
import { CTX, type ConformanceTarget, instanceOf } from './target';

const READY_TIMEOUT_MS = 5000;

const running = new Set<ChildProcess>();
const dirs = new Set<string>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A temporary directory for a server, removed by `removeDir` or at the latest on exit. */
export function makeDir(kind: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mcmux-redis-${kind}`));
  dirs.add(dir);
  return dir;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

export interface RedisProcess {
  readonly port: number;
  /** redis://127.0.0.1:PORT */
  readonly url: string;
  readonly dir: string;
  /** SIGTERM (SIGKILL after a grace period), waits for the exit, removes its directory. */
  stop(): Promise<void>;
  kill(signal: NodeJS.Signals): void;
  /** Stops it if still running, then starts a fresh, empty one on the same port. */
  restart(): Promise<void>;
  /** SIGSTOP: the kernel still accepts connections, nothing answers. */
  pause(): void;
  /** SIGCONT */
  resume(): void;
}

/**
 * Two private redis-servers, `a` and `b`, each with a plain RESP2 client (`ca`, `cb`) that fails
 * at once rather than retry: the set-up of the replication tests (a demoted, resynced, promoted).
 * Stopped and disconnected when the test ends.
 */
export async function redisPair(t: TestContext, argsA: string[] = [], argsB: string[] = argsA): Promise<{ a: RedisProcess; b: RedisProcess; ca: Redis; cb: Redis }> {
  const a = await startRedis(argsA);
  t.after(() => a.stop());
  const b = await startRedis(argsB);
  t.after(() => b.stop());
  const ca = new Redis({ host: '127.0.0.1', port: a.port, maxRetriesPerRequest: 0, protocol: 2 });
  const cb = new Redis({ host: '127.0.0.1', port: b.port, maxRetriesPerRequest: 0, protocol: 2 });
  t.after(() => {
    ca.disconnect();
    cb.disconnect();
  });
  return { a, b, ca, cb };
}

/** Starts a private redis-server; `extraArgs` go after the defaults (`--requirepass x`, ...). */
export async function startRedis(extraArgs: string[] = []): Promise<RedisProcess> {
  const dir = makeDir('');
  // freePort() can race with another process grabbing the port: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      const proc = await spawnRedis(port, dir, extraArgs);
      return handle(port, dir, proc, extraArgs);
    } catch (err) {
      if (attempt >= 3 || !/in use/i.test(String(err))) {
        removeDir(dir);
        throw err;
      }
    }
  }
}

function handle(port: number, dir: string, first: ChildProcess, extraArgs: string[]): RedisProcess {
  let proc = first;
  return {
    port,
    dir,
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      await stopProcess(proc);
      removeDir(dir);
    },
    kill: (signal) => {
      proc.kill(signal);
    },
    restart: async () => {
      await stopProcess(proc);
      proc = await spawnRedis(port, dir, extraArgs);
    },
    pause: () => {
      proc.kill('SIGSTOP');
    },
    resume: () => {
      proc.kill('SIGCONT');
    },
  };
}

/** Spawns redis-server and resolves once it logs that it accepts connections and answers PING. */
export async function spawnRedis(port: number, dir: string, extraArgs: string[]): Promise<ChildProcess> {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const proc = spawn('redis-server', [...args, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let output = '';
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no "Ready to accept connections" within 5 s')), READY_TIMEOUT_MS);
    const onData = (d: string): void => {
      output = (output + d).slice(-8192);
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.setEncoding('utf8').on('data', onData);
    proc.stderr?.setEncoding('utf8').on('data', onData);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`spawn failed: ${err.message}`));
    });
    proc.once('exit', (code, signal) => {
      running.delete(proc);
      clearTimeout(timer);
      reject(new Error(`exited with ${signal ?? code}`));
    });
  });
  try {
    await ready;
    if (!(await answersPing(port))) throw new Error('no answer to PING');
  } catch (err) {
    await stopProcess(proc);
    throw new Error(`redis-server on port ${port} did not start (${(err as Error).message}): ${output.trim().slice(-1000)}`);
  }
  // Do not hold the test process open: the 'exit' hook kills whatever is left.
  proc.unref();
  proc.stdout?.removeAllListeners('data').resume();
  proc.stderr?.removeAllListeners('data').resume();
  (proc.stdout as unknown as { unref?: () => void } | null)?.unref?.();
  (proc.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  return proc;
}

/** Sends PING; true on `+PONG` or `-NOAUTH` (a server with a password answers too). */
export function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    let got = '';
    const sock = connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n')) done(got.startsWith('+PONG') || got.startsWith('-NOAUTH'));
    });
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
  });
}

export { stopProcess };

export const redisTarget: ConformanceTarget = {
  name: 'redis',
  async start(t, maxItemSize) {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return undefined;
    const server = await startRedis();
    return instanceOf(() => createRedisUpstream(new URL(server.url), new Map(), CTX(maxItemSize), []), () => server.stop());
  },
};
