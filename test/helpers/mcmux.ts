/**
 * mcmux as a real process for integration and CLI tests, and a raw socket to talk to it (or to
 * any memcached-protocol server) byte for byte.
 *
 *   startMcmux(args)  spawn `node bin/mcmux --listen 127.0.0.1:<free port> ...args`, wait until it
 *                     answers `version` (bounded), kill it when the test process exits
 *   runMcmux(args)    spawn it, wait for it to exit (bounded): status, signal, stdout, stderr
 *   rawClient(port)   send(bytes) / readUntil(pattern | predicate, timeoutMs) / closed
 *   peekItem(port, key)  one item read straight from a memcached (meta get), bypassing mcmux
 */

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { NODE_FLAGS } from '../../src/node-flags';
import type { TestContext } from 'node:test';
import { type MemcachedProcess, answersVersion, freePort, startMemcached } from './servers';
import { type Until, type Wire, connectWire } from './wire';

/** bin/mcmux, from dist/test/helpers/ (compiled) and from test/helpers/ (ts-node) alike. */
export const MCMUX_BIN = resolve(__dirname, __dirname.includes('/dist/') ? '../../../bin/mcmux' : '../../bin/mcmux');

const READY_TIMEOUT_MS = 15_000;
// Above the default shutdown-timeout (5 s): a clean stop is never cut short by our SIGKILL.
const STOP_GRACE_MS = 8000;

const running = new Set<ChildProcess>();
const stateDirs = new Set<string>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
  for (const dir of stateDirs) rmSync(dir, { recursive: true, force: true });
});

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface McmuxProcess {
  readonly port: number;
  readonly proc: ChildProcess;
  /** Resolves when the process has exited (whoever stopped it). */
  readonly exited: Promise<ExitStatus>;
  /** Sends `signal` (SIGTERM by default), SIGKILL after a grace period; resolves with the exit. */
  stop(signal?: NodeJS.Signals): Promise<ExitStatus>;
  /** What it wrote so far. */
  logs(): { stdout: string; stderr: string };
}

export interface SpawnOptions {
  /**
   * Extra environment variables. Unless it sets STATE_DIRECTORY, each mcmux gets a private
   * temporary one (its journal must not land in the repository nor be shared), which is also
   * its working directory.
   */
  /** Added to the environment; a key set to undefined is left out (STATE_DIRECTORY: an operator's shell). */
  readonly env?: Record<string, string | undefined>;
  /** Working directory (default: the private state directory). */
  readonly cwd?: string;
  /** Node flags before bin/mcmux (default: NODE_FLAGS, as the launchers pass them). */
  readonly nodeFlags?: readonly string[];
}

export interface StartOptions extends SpawnOptions {
  /**
   * The port `args` (or the config file they name) already make mcmux listen on: no --listen
   * is added, and readiness is awaited there.
   */
  readonly port?: number;
}

function spawnMcmux(args: string[], opts: SpawnOptions): { proc: ChildProcess; out: { stdout: string; stderr: string }; exited: Promise<ExitStatus> } {
  let stateDir: string | undefined;
  if (opts.env?.STATE_DIRECTORY === undefined) {
    stateDir = mkdtempSync(join(tmpdir(), 'mcmux-state-'));
    stateDirs.add(stateDir);
  }
  const proc = spawn(process.execPath, [...(opts.nodeFlags ?? NODE_FLAGS), MCMUX_BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(stateDir ? { STATE_DIRECTORY: stateDir } : {}), ...opts.env },
    cwd: opts.cwd ?? stateDir,
  });
  running.add(proc);
  const out = { stdout: '', stderr: '' };
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out.stdout += d;
  });
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    out.stderr += d;
  });
  const exited = new Promise<ExitStatus>((res) => {
    proc.on('error', (err) => {
      out.stderr += `spawn failed: ${err.message}\n`;
    });
    // 'close' (not 'exit'): the pipes are drained, so logs() is complete once this resolves.
    proc.on('close', (code, signal) => {
      running.delete(proc);
      if (stateDir) {
        rmSync(stateDir, { recursive: true, force: true });
        stateDirs.delete(stateDir);
      }
      res({ code, signal });
    });
  });
  return { proc, out, exited };
}

/**
 * Starts mcmux on a free port of 127.0.0.1 with `args` (anything but --listen) and resolves once
 * it answers `version`; rejects with its stderr if it exits or does not answer within 15 s.
 * With `opts.port`, `args` choose the address themselves and mcmux is awaited on that port.
 */
export async function startMcmux(args: string[], opts: StartOptions = {}): Promise<McmuxProcess> {
  if (opts.port !== undefined) return startOn(opts.port, args, opts);
  // freePort() can race with another process taking the port: try a few.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await startOn(port, ['--listen', `127.0.0.1:${port}`, ...args], opts);
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE|in use/i.test(String(err))) throw err;
    }
  }
}

async function startOn(port: number, args: string[], opts: SpawnOptions): Promise<McmuxProcess> {
  const { proc, out, exited } = spawnMcmux(args, opts);
  let exit: ExitStatus | undefined;
  void exited.then((e) => {
    exit = e;
  });
  const handle: McmuxProcess = {
    port,
    proc,
    exited,
    stop: (signal = 'SIGTERM') => {
      if (exit) return Promise.resolve(exit);
      const killer = setTimeout(() => proc.kill('SIGKILL'), STOP_GRACE_MS);
      proc.kill(signal);
      return exited.finally(() => clearTimeout(killer));
    },
    logs: () => ({ stdout: out.stdout, stderr: out.stderr }),
  };
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline && exit === undefined) {
    if (await answersVersion(port)) return handle;
    if (exit === undefined) await new Promise((r) => setTimeout(r, 25));
  }
  const why = exit ? `exited with ${exit.signal ?? exit.code}` : `no answer to version within ${READY_TIMEOUT_MS / 1000} s`;
  await handle.stop('SIGKILL');
  throw new Error(`mcmux ${args.join(' ')} on port ${port} did not start (${why}); stderr: ${out.stderr.trim()}; stdout: ${out.stdout.trim().slice(-2000)}`);
}

/**
 * Two private memcached and an mcmux over them, in that order (`--log-level warn`, then `args`),
 * every process stopped after the test.
 */
export async function mcmuxOverTwoMemcached(t: TestContext, args: string[] = []): Promise<{ mc1: MemcachedProcess; mc2: MemcachedProcess; mux: McmuxProcess }> {
  const [mc1, mc2] = await Promise.all([startMemcached(), startMemcached()]);
  t.after(() => Promise.all([mc1.stop(), mc2.stop()]));
  const mux = await startMcmux(['--upstream', mc1.url, '--upstream', mc2.url, '--log-level', 'warn', ...args]);
  t.after(() => mux.stop());
  return { mc1, mc2, mux };
}

/**
 * Runs bin/mcmux to completion (for flags that make it exit: --help, bad values). A process
 * still running after `timeoutMs` is killed and reported with signal SIGKILL.
 */
export async function runMcmux(
  args: string[],
  opts: SpawnOptions & { timeoutMs?: number } = {},
): Promise<ExitStatus & { stdout: string; stderr: string; timedOut: boolean }> {
  const { proc, out, exited } = spawnMcmux(args, opts);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill('SIGKILL');
  }, opts.timeoutMs ?? 10_000);
  const status = await exited;
  clearTimeout(timer);
  return { ...status, stdout: out.stdout, stderr: out.stderr, timedOut };
}

/**
 * Runs bin/mcmux with `args`, which it must refuse as a bad flag or config value: exit status 2,
 * nothing on stdout, exactly one line on stderr (returned).
 */
export async function failsWithOneLine(args: string[], env?: Record<string, string>): Promise<string> {
  const r = await runMcmux(args, { timeoutMs: 5000, ...(env ? { env } : {}) });
  const what = `mcmux ${JSON.stringify(args)}`;
  assert.equal(r.timedOut, false, `${what} did not exit: it accepted the value; stdout ${r.stdout.slice(0, 300)}`);
  assert.equal(r.code, 2, `exit status of ${what}; stderr ${JSON.stringify(r.stderr)}`);
  assert.equal(r.stdout, '', `nothing on stdout for ${what}`);
  assert.match(r.stderr, /^[^\n]+\n$/, `exactly one line on stderr for ${what}: ${JSON.stringify(r.stderr)}`);
  return r.stderr;
}

/** Connects, sends `version`, and waits (bounded) for `VERSION ...` (helpers/servers). */
export { answersVersion };

export type { Until };

/** A raw connection (see wire.ts): send / readUntil / ask / pending / closed. */
export type RawClient = Wire;

/** A complete memcached reply to a retrieval command: `END\r\n` at the end of the text. */
export const END = /(?:^|\r\n)END\r\n$/;
/** Any single complete line. */
export const LINE = /\r\n/;

/** rawClient, closed after the test. */
export async function testClient(t: TestContext, port: number): Promise<RawClient> {
  const c = await rawClient(port);
  t.after(() => c.close());
  return c;
}

/** Opens a raw TCP connection to 127.0.0.1:`port` (the second argument is accepted and ignored: older callers passed a connect timeout). */
export function rawClient(port: number, _unused?: number): Promise<RawClient> {
  return connectWire(port);
}

/** mcmux's `stats upstreams` on a connection of its own, as { 'upstream.N.field': value }. */
export async function statsUpstreams(port: number): Promise<Record<string, string>> {
  const c = await rawClient(port);
  try {
    const text = await c.ask('stats upstreams\r\n', /END\r\n$/);
    return Object.fromEntries([...text.matchAll(/^STAT (\S+) (.*)\r$/gm)].map((m) => [m[1] as string, m[2] as string]));
  } finally {
    c.close();
  }
}

export interface PeekedItem {
  value: string;
  flags: number;
  /** Remaining lifetime in seconds, -1 for none. */
  ttl: number;
}

/** A complete reply to one `mg` (or an error line). */
function mgComplete(text: string): boolean {
  if (/^(EN|(CLIENT_|SERVER_)?ERROR[^\r\n]*)\r\n/.test(text)) return true;
  const m = /^VA (\d+)[^\r\n]*\r\n/.exec(text);
  return m !== null && text.length >= m[0].length + Number(m[1]) + 2;
}

/** Reads `key` straight from a memcached (>= 1.6, meta get: value, flags, remaining ttl). */
export async function peekItem(port: number, key: string, timeoutMs = 5000): Promise<PeekedItem | undefined> {
  const c = await rawClient(port, timeoutMs);
  try {
    const text = await c.ask(`mg ${key} v f t\r\n`, mgComplete, timeoutMs);
    if (text === 'EN\r\n') return undefined;
    const m = /^VA (\d+)((?: [a-zA-Z]\S*)*)\r\n/.exec(text);
    assert.ok(m, `unexpected mg reply from memcached :${port}: ${JSON.stringify(text)}`);
    const item: PeekedItem = { value: text.slice(m[0].length, m[0].length + Number(m[1])), flags: -1, ttl: NaN };
    for (const tok of (m[2] ?? '').trim().split(' ')) {
      if (tok.startsWith('f')) item.flags = Number(tok.slice(1));
      if (tok.startsWith('t')) item.ttl = Number(tok.slice(1));
    }
    return item;
  } finally {
    c.close();
  }
}

/** Polls `cond` (bounded) for state that has no event to wait on, such as a background repair (helpers/poll: every 50 ms, 10 s unless told). */
export { eventually } from './poll';

/** SIGKILL, and resolves once the process is gone (so its port refuses connections). */
export async function killAndWait(mc: MemcachedProcess): Promise<void> {
  const proc = mc.proc;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, 'exit');
  mc.kill('SIGKILL');
  await exited;
}

/** The JSON log lines at warn (40) or above of an mcmux's stdout. */
export function warnings(stdout: string): string[] {
  return stdout.split('\n').filter((l) => {
    try {
      return (JSON.parse(l) as { level?: number }).level! >= 40;
    } catch {
      return false;
    }
  });
}
