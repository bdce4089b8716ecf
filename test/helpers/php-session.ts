/**
 * What the PHP session tests (integration/php-*.test.ts, durable-upstreams) share: the check for
 * a php extension, one `php` run, and for the concurrent ones W workers x R requests on one
 * session, each request a fresh `php` process, with something done (a kill) midway. The settings
 * each test gives php, its script and its checks stay in the test.
 */

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { TestContext } from 'node:test';
import { END, rawClient } from './mcmux';

/** True when php has extension `ext` (php -m); otherwise skips (or fails under MCMUX_REQUIRE_SERVERS=1). */
export async function requirePhpExtension(t: TestContext, ext: 'memcached' | 'memcache', timeoutMs: number): Promise<boolean> {
  const modules = await new Promise<string>((resolve) => {
    execFile('php', ['-m'], { timeout: timeoutMs }, (_err, stdout) => resolve(String(stdout)));
  });
  if (new RegExp(`^${ext}$`, 'm').test(modules)) return true;
  if (process.env.MCMUX_REQUIRE_SERVERS === '1') {
    throw new Error(`the php ${ext} extension is not loaded (php -m) and MCMUX_REQUIRE_SERVERS=1: apt-get install php-${ext}`);
  }
  t.skip(`the php ${ext} extension is not loaded (apt-get install php-${ext})`);
  return false;
}

/** The session data PHP stores for $_SESSION = ['n' => n]. */
export function sessionValue(n: number): string {
  return `n|i:${n};`;
}

export function newSid(): string {
  return randomBytes(16).toString('hex');
}

/**
 * One run of `script` with php-memcached's session handler on 127.0.0.1:`port`, session `sid`:
 * its stdout; rejects when php fails or writes anything to stderr. `binary` false sets
 * memcached.sess_binary_protocol=0; true leaves php-memcached's default (binary) alone.
 */
export function runPhpMemcached(script: string, port: number, sid: string, binary: boolean, timeoutMs: number): Promise<string> {
  const args = [
    '-d', 'session.save_handler=memcached',
    // Binary is php-memcached's default: leave it so, so that the default is what is tested.
    ...(binary ? [] : ['-d', 'memcached.sess_binary_protocol=0']),
    '-d', `session.save_path=127.0.0.1:${port}`,
    '-d', 'session.use_strict_mode=0',
    '-d', 'display_errors=stderr',
    '-d', 'error_reporting=-1',
    script,
    sid,
  ];
  return new Promise((resolve, reject) => {
    execFile('php', args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`php ${args.join(' ')} failed (${err.message}); stdout ${JSON.stringify(stdout)}; stderr ${JSON.stringify(stderr)}`));
      else if (stderr.trim() !== '') reject(new Error(`php wrote to stderr: ${stderr.trim()} (stdout ${JSON.stringify(stdout)})`));
      else resolve(stdout);
    });
  });
}

/** What one php run printed and, when it failed or wrote to stderr, why. */
export interface PhpOutcome {
  readonly stdout: string;
  readonly problem: string | undefined;
}

/** Runs `php ...args`; never rejects: a failure, or anything on stderr, is its `problem`. */
export function phpOutcome(args: readonly string[], timeoutMs: number): Promise<PhpOutcome> {
  return new Promise((resolve) => {
    execFile('php', args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) resolve({ stdout, problem: `php failed (${err.message.split('\n')[0]}); stdout ${JSON.stringify(stdout)}; stderr ${JSON.stringify(stderr.trim())}` });
      else if (stderr.trim() !== '') resolve({ stdout, problem: `php wrote to stderr: ${stderr.trim()} (stdout ${JSON.stringify(stdout)})` });
      else resolve({ stdout, problem: undefined });
    });
  });
}

export interface PhpRun {
  readonly worker: number;
  /** The count this request printed; undefined when it failed. */
  readonly count: number | undefined;
  /** Why it failed, or what it warned about (anything on stderr counts as a failure). */
  readonly problem: string | undefined;
  readonly ms: number;
  /** Started after the upstream was killed. */
  readonly afterKill: boolean;
}

/** One request (`php` runs `run` once): its printed count, or the reason it has none. */
export async function request(run: () => Promise<PhpOutcome>, worker: number, afterKill: boolean): Promise<PhpRun> {
  const start = performance.now();
  const { stdout, problem } = await run();
  const ms = performance.now() - start;
  const m = /^(\d+)\n$/.exec(stdout);
  if (problem === undefined && m) return { worker, count: Number(m[1]), problem: undefined, ms, afterKill };
  return { worker, count: undefined, problem: problem ?? `unexpected output ${JSON.stringify(stdout)}`, ms, afterKill };
}

/**
 * `workers` concurrent loops of `requestsPerWorker` requests each, every one of them `run`. Once
 * half of all requests have completed, `midway` runs (while the other workers keep going);
 * requests started after it resolved are marked `afterKill`.
 */
export async function concurrentRun(run: () => Promise<PhpOutcome>, workers: number, requestsPerWorker: number, midway?: () => Promise<void>): Promise<PhpRun[]> {
  const total = workers * requestsPerWorker;
  const runs: PhpRun[] = [];
  let completed = 0;
  let killed = false;
  let midwayDone: Promise<void> | undefined;
  const worker = async (w: number): Promise<void> => {
    for (let i = 0; i < requestsPerWorker; i++) {
      runs.push(await request(run, w, killed));
      completed++;
      if (midway && midwayDone === undefined && completed >= total / 2) {
        midwayDone = midway().then(() => {
          killed = true;
        });
        await midwayDone;
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  await midwayDone;
  return runs;
}

/** How many requests, how many after the kill, and their p50 and max, for a diagnostic. */
export function summary(runs: readonly PhpRun[]): string {
  const ms = runs.map((r) => r.ms).sort((a, b) => a - b);
  const p = (q: number): number => Math.round(ms[Math.min(ms.length - 1, Math.floor(q * ms.length))] ?? NaN);
  return `${runs.length} requests, ${runs.filter((r) => r.afterKill).length} after the kill; per request p50 ${p(0.5)} ms, max ${p(1)} ms`;
}

/** Reads `key` through mcmux with the text protocol (its own connection). */
export async function getThrough(port: number, key: string): Promise<string | undefined> {
  const c = await rawClient(port);
  try {
    const text = await c.ask(`get ${key}\r\n`, END);
    const m = /^VALUE \S+ \d+ (\d+)\r\n/.exec(text);
    return m ? text.slice(m[0].length, m[0].length + Number(m[1])) : undefined;
  } finally {
    c.close();
  }
}
