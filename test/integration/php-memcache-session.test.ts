/**
 * PHP's session handler from pecl-memcache (`session.save_handler=memcache`), with its defaults,
 * through mcmux on two memcached processes. Each request is a fresh `php` process, as a web
 * request would be; several of them run at once on the SAME session id.
 *
 * What pecl-memcache 4.x sends (memcache.protocol=ascii, the default; seen with memcached -vv,
 * and in memcache_session.c): one pipelined batch per lock attempt,
 *
 *   incr <sid>.lock 1                   -> 1 means "acquired" (the lock was released, at 0)
 *   add <sid>.lock 768 15 1  "1"        -> STORED means "acquired" (there was no lock)
 *   get <sid>                           -> the data, valid only when one of the two acquired
 *
 * and, when neither acquired, sleeps 5 ms, doubling up to 1 s, for at most 2 x
 * memcache.lock_timeout (15 s) before it gives up and carries on WITHOUT the lock and with an
 * EMPTY session. The write is `set <sid> 0 <now + gc_maxlifetime> ...` (an ABSOLUTE expiry) then
 * `set <sid>.lock 768 15 1 "0"`: the lock is released by setting it to 0 (relative expiry 15 s),
 * never deleted. A lock holder is therefore whoever turned the counter from 0 to 1 (or created
 * it): the incr must be atomic and decided by one store, which is mcmux's authority rule.
 *
 * That fallback is pecl-memcache's hazard: ONE error reply to the lock's incr (or a timeout,
 * 1 s by default) makes it mark the server failed, and the request runs unlocked with an empty
 * session (its write then fails, the server being "failed" for the rest of the request).
 *
 * What must hold:
 * - the lock serialises concurrent requests: W workers x R requests end at exactly W*R, the
 *   printed counts being 1..W*R each once (the control, against memcached direct, too);
 * - one upstream (either) killed midway: no update lost (the requests that succeeded printed
 *   1..k, and k is what is stored), and every request succeeds, also those in flight at the
 *   kill: an incr applied on an authority that dies before mcmux reads the result back is
 *   still answered with its number (authority.ts), or pecl-memcache would run that request
 *   unlocked with an empty session;
 * - at the end the lock is released (`0`) on every live upstream and through mcmux.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { type McmuxProcess, killAndWait, peekItem, startMcmux } from '../helpers/mcmux';
import { type PhpOutcome, type PhpRun, concurrentRun, getThrough, newSid, phpOutcome, request, requirePhpExtension, sessionValue, summary } from '../helpers/php-session';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';

const WORKERS = 4;
const REQUESTS_PER_WORKER = 25;
const TOTAL = WORKERS * REQUESTS_PER_WORKER;
const SEQUENTIAL_RUNS = 10;
/**
 * One php run, lock wait included. pecl-memcache waits up to 2 x lock_timeout = 30 s for the
 * lock before it gives up (and then proceeds unlocked): a run that takes longer than this is a
 * failure either way, and the whole file stays well under 2 minutes when one does.
 */
const PHP_TIMEOUT_MS = 20_000;
/** memcache.lock_timeout's default: the lock's relative expiry, in seconds. */
const LOCK_TIMEOUT_S = 15;

/** A failed session_start() shows as a failed run, never as a count. */
const SCRIPT = `<?php
session_id($argv[1]);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\\n");
    exit(3);
}
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo $_SESSION['n'], "\\n";
`;

function runPhp(script: string, port: number, sid: string): Promise<PhpOutcome> {
  const args = [
    // pecl-memcache's defaults (ascii protocol, lock_timeout 15) are deliberately left alone.
    '-d', 'session.save_handler=memcache',
    '-d', `session.save_path=tcp://127.0.0.1:${port}`,
    // Not session settings: make every warning visible on stderr.
    '-d', 'display_errors=stderr',
    '-d', 'error_reporting=-1',
    script,
    sid,
  ];
  return phpOutcome(args, PHP_TIMEOUT_MS);
}

/**
 * No update lost: the requests that succeeded printed exactly 1..k, each once (a request that
 * read a stale or empty session and wrote it back would repeat a count). Returns k. A request
 * that failed (a warning, a failed write) printed a count nobody stored: it is not counted.
 */
function assertNoLostUpdate(runs: readonly PhpRun[], what: string): number {
  const counts = runs.filter((r) => r.problem === undefined).map((r) => r.count as number).sort((a, b) => a - b);
  const seen = new Map<number, number>();
  for (const c of counts) seen.set(c, (seen.get(c) ?? 0) + 1);
  const repeated = [...seen].filter(([, k]) => k > 1).map(([c, k]) => `${c} x${k}`);
  assert.deepEqual(repeated, [], `${what}: two requests saw the same count (a lost update)`);
  assert.deepEqual(counts, Array.from({ length: counts.length }, (_, i) => i + 1), `${what}: the counts are 1..${counts.length}`);
  return counts.length;
}

function assertAllSucceeded(runs: readonly PhpRun[], what: string): void {
  const failed = runs.filter((r) => r.problem !== undefined);
  assert.deepEqual(failed.map((r) => `worker ${r.worker}: ${r.problem}`), [], `${what}: every request succeeds`);
}

/** Every request succeeded and the printed counts are exactly 1..TOTAL: none lost, none repeated. */
function assertSerialised(runs: readonly PhpRun[], what: string): void {
  assertAllSucceeded(runs, what);
  assert.equal(assertNoLostUpdate(runs, what), TOTAL);
}

test('PHP sessions (pecl-memcache: ascii, incr/add <sid>.lock), concurrent', async (t) => {
  if (!requireBinary(t, 'php', 'php-cli php-memcache')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!(await requirePhpExtension(t, 'memcache', PHP_TIMEOUT_MS))) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-php-memcache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'count.php');
  await writeFile(script, SCRIPT);

  /** What `mc` holds at the end of a run: the session at `n`, and the lock released (0). */
  const holds = async (mc: MemcachedProcess, sid: string, n: number, which: string): Promise<void> => {
    const session = await peekItem(mc.port, sid);
    assert.equal(session?.value, sessionValue(n), `${which} memcached holds the session at ${n}`);
    // pecl-memcache writes an absolute expiry, now + session.gc_maxlifetime (1440 s); memcached's
    // clock ticks in whole seconds, so the remaining ttl it reports may be one more.
    assert.ok(session.ttl > 1440 - 60 && session.ttl <= 1440 + 1, `${which} memcached: session ttl ${session.ttl}, expected about 1440 s`);
    const lock = await peekItem(mc.port, `${sid}.lock`);
    assert.equal(lock?.value, '0', `${which} memcached holds the lock released (0), not held`);
    assert.ok(lock.ttl > 0 && lock.ttl <= LOCK_TIMEOUT_S + 1, `${which} memcached: lock ttl ${lock.ttl}, expected at most ${LOCK_TIMEOUT_S} s`);
  };

  await t.test(`control: memcached direct, sequential, then ${WORKERS} workers x ${REQUESTS_PER_WORKER} requests on one session`, async (t) => {
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const seq = newSid();
    for (let i = 1; i <= 3; i++) assert.equal((await request(() => runPhp(script, mc.port, seq), 0, false)).count, i);
    await holds(mc, seq, 3, 'the');

    const sid = newSid();
    const runs = await concurrentRun(() => runPhp(script, mc.port, sid), WORKERS, REQUESTS_PER_WORKER);
    t.diagnostic(`control: ${summary(runs)}`);
    assertSerialised(runs, 'memcached direct');
    await holds(mc, sid, TOTAL, 'the');
  });

  /** Two memcached, mcmux in front; `victim` (0: the first, 1: the second) is killed midway. */
  const throughMcmux = async (t: TestContext, victim: 0 | 1): Promise<void> => {
    const mcs = [await startMemcached(), await startMemcached()] as const;
    t.after(() => Promise.all(mcs.map((mc) => mc.stop())));
    const mux: McmuxProcess = await startMcmux(['--upstream', mcs[0].url, '--upstream', mcs[1].url, '--timeout', '1000', '--log-level', 'warn']);
    t.after(() => mux.stop());
    const survivor = mcs[1 - victim] as MemcachedProcess;

    const seq = newSid();
    for (let i = 1; i <= SEQUENTIAL_RUNS; i++) {
      const r = await request(() => runPhp(script, mux.port, seq), 0, false);
      assert.equal(r.problem, undefined);
      assert.equal(r.count, i, `sequential run ${i}`);
    }
    await holds(mcs[0], seq, SEQUENTIAL_RUNS, 'the first');
    await holds(mcs[1], seq, SEQUENTIAL_RUNS, 'the second');

    const sid = newSid();
    const runs = await concurrentRun(() => runPhp(script, mux.port, sid), WORKERS, REQUESTS_PER_WORKER, () => killAndWait(mcs[victim]));
    t.diagnostic(`mcmux, ${victim === 0 ? 'first' : 'second'} upstream killed midway: ${summary(runs)}`);
    const what = `through mcmux, upstream #${victim + 1} killed midway`;
    assert.ok(runs.filter((r) => r.afterKill).length >= WORKERS, 'the kill happened in the middle of the run');
    // Whatever happened to the requests in flight at the kill, the ones after it all succeed.
    const failedAfter = runs.filter((r) => r.afterKill && r.problem !== undefined);
    assert.deepEqual(failedAfter.map((r) => `worker ${r.worker}: ${r.problem}`), [], `${what}: every request started after the kill succeeds`);
    const stored = assertNoLostUpdate(runs, what);
    await holds(survivor, sid, stored, 'the surviving');
    assert.equal(await getThrough(mux.port, sid), sessionValue(stored), 'mcmux serves the final count');
    assert.equal(await getThrough(mux.port, `${sid}.lock`), '0', 'mcmux serves the lock released');
    await t.test('every request succeeds, also those in flight at the kill', () => {
      assertAllSucceeded(runs, what);
      assert.equal(stored, TOTAL);
    });
    assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  };

  await t.test('through mcmux: sequential, then concurrent with the FIRST upstream (the lock authority) killed midway', (t) => throughMcmux(t, 0));
  await t.test('through mcmux: sequential, then concurrent with the SECOND upstream killed midway', (t) => throughMcmux(t, 1));
});
