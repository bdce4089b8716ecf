/**
 * PHP's session handler (php-memcached) with its DEFAULT protocol settings: the binary protocol
 * and session locking with `add lock.<sid>` (no expiry under the CLI: max_execution_time is 0).
 * The only session settings given are the lock's patience (below). Each request is a fresh `php`
 * process, as a web request would be; several of them run at once on the SAME session id.
 *
 * What must hold:
 * - the lock serialises concurrent requests: W workers x R requests on one session end at a
 *   count of exactly W*R, and the counts the requests printed are 1..W*R, each exactly once
 *   (a lost update would print some number twice and end lower);
 * - the same holds when one upstream is killed (SIGKILL) in the middle of the run, whichever
 *   of the two it is: the first one decides the lock (the authority), the second one is a
 *   replica;
 * - no `lock.<sid>` key is left behind on any live upstream (a leftover, having no expiry,
 *   would make every later request of that session wait for the lock and then fail);
 * - the control: the same concurrent run against memcached direct is exact too, so what is
 *   checked through mcmux is what the handler guarantees, not more.
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
/** One php run, lock wait included: bounded far above what it needs (the lock gives up first). */
const PHP_TIMEOUT_MS = 20_000;

/**
 * The lock's patience, the only session settings changed from the defaults (150 ms, 150 ms,
 * 5 retries: at most 750 ms of waiting, which 4 workers on 2 loaded cores can exceed). The
 * handler retries `add lock.<sid>` sess_lock_retries times, sleeping sess_lock_wait_min ms first
 * and doubling up to sess_lock_wait_max: 5 ms, 10, 20, 25, 25, ... = at most ~10 s of waiting,
 * where a request holds the lock for a few ms. Short sleeps keep the test fast; many retries
 * make a give-up (which would fail the request, not lose an update) practically impossible.
 */
const LOCK_SETTINGS = {
  'memcached.sess_lock_wait_min': '5',
  'memcached.sess_lock_wait_max': '25',
  'memcached.sess_lock_retries': '400',
} as const;

/** A failed session_start() (for instance the lock given up) shows as a failed run, never as a count. */
const SCRIPT = `<?php
session_id($argv[1]);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\\n");
    exit(3);
}
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo $_SESSION['n'], "\\n";
`;

/** php-memcached's default session key prefix (memcached.sess_prefix). */
const PREFIX = 'memc.sess.key.';

function runPhp(script: string, port: number, sid: string): Promise<PhpOutcome> {
  const args = [
    // The handler's defaults (binary protocol, locking) are deliberately left alone.
    '-d', 'session.save_handler=memcached',
    '-d', `session.save_path=127.0.0.1:${port}`,
    ...Object.entries(LOCK_SETTINGS).flatMap(([k, v]) => ['-d', `${k}=${v}`]),
    // Not session settings: make every warning visible on stderr.
    '-d', 'display_errors=stderr',
    '-d', 'error_reporting=-1',
    script,
    sid,
  ];
  return phpOutcome(args, PHP_TIMEOUT_MS);
}

/** Every request succeeded and the printed counts are exactly 1..TOTAL: none lost, none repeated. */
function assertSerialised(runs: readonly PhpRun[], what: string): void {
  const failed = runs.filter((r) => r.problem !== undefined);
  assert.deepEqual(failed.map((r) => `worker ${r.worker}: ${r.problem}`), [], `${what}: every request succeeds`);
  const counts = runs.map((r) => r.count as number).sort((a, b) => a - b);
  const seen = new Map<number, number>();
  for (const c of counts) seen.set(c, (seen.get(c) ?? 0) + 1);
  const repeated = [...seen].filter(([, k]) => k > 1).map(([c, k]) => `${c} x${k}`);
  assert.deepEqual(repeated, [], `${what}: two requests saw the same count (a lost update)`);
  assert.deepEqual(counts, Array.from({ length: TOTAL }, (_, i) => i + 1), `${what}: the counts are 1..${TOTAL}`);
}

test('PHP sessions (php-memcached defaults: binary protocol, add lock.<sid>), concurrent', async (t) => {
  if (!requireBinary(t, 'php', 'php-cli php-memcached')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-php-bin-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'count.php');
  await writeFile(script, SCRIPT);

  /** What `mc` holds at the end of a run: the session at `n`, and no lock. */
  const holds = async (mc: MemcachedProcess, sid: string, n: number, which: string): Promise<void> => {
    assert.equal((await peekItem(mc.port, PREFIX + sid))?.value, sessionValue(n), `${which} memcached holds the session at ${n}`);
    assert.equal(await peekItem(mc.port, `${PREFIX}lock.${sid}`), undefined, `${which} memcached holds no leftover lock`);
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

    // Sequential requests first, both upstreams alive: each continues the count.
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
    assert.ok(runs.filter((r) => r.afterKill).length >= WORKERS, 'the kill happened in the middle of the run');
    assertSerialised(runs, `through mcmux, upstream #${victim + 1} killed midway`);
    await holds(survivor, sid, TOTAL, 'the surviving');
    assert.equal(await getThrough(mux.port, PREFIX + sid), sessionValue(TOTAL), 'mcmux serves the final count');
    assert.equal(await getThrough(mux.port, `${PREFIX}lock.${sid}`), undefined, 'mcmux serves no leftover lock');
    // The sequential session survived the kill too, and its lock is gone.
    await holds(survivor, seq, SEQUENTIAL_RUNS, 'the surviving');
    assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  };

  await t.test('through mcmux: sequential, then concurrent with the FIRST upstream (the lock authority) killed midway', (t) => throughMcmux(t, 0));
  await t.test('through mcmux: sequential, then concurrent with the SECOND upstream killed midway', (t) => throughMcmux(t, 1));
});
