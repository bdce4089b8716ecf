/**
 * The move of a PHP farm that shards its sessions over three memcached servers (php-memcached's
 * own consistent hashing) to mcmux in front of that same pool plus a MariaDB, end to end, with
 * private servers only (three memcached, one mariadbd, all on 127.0.0.1):
 *
 * 1. Before the move: PHP (php-memcached, its defaults: binary protocol, locking) writes the
 *    sessions DIRECTLY to the three servers, `session.save_path = "h1,h2,h3"`,
 *    `memcached.sess_consistent_hash = On`. Known ids, known contents (an id, a payload derived
 *    from it, a counter at 0). The control: each session is on exactly one server, and every
 *    server got a share.
 * 2. The move: mcmux with `--upstream 'memcached://h1,h2,h3?namespace=memc.sess.key.'` and
 *    `--upstream mysql://...`; PHP talks to mcmux alone (`session.save_path = mcmux`, the
 *    handler's defaults). Every session is found with its content (100%); a request that
 *    increments the counter continues it (0 -> 1, no reset); the writes land in the pool (read
 *    straight from each session's own server) and in MySQL (row count and values).
 * 3. One server is SIGKILLed: every session is still served with its content (those of the dead
 *    server from MySQL: with the pool's default eject=false they are misses for the pool), and
 *    two rounds of increments work for every session, the dead server's included; the counts end
 *    exact, through mcmux and in MySQL, and no lock is left behind.
 * 4. The dead server restarts empty: its sessions are served (from MySQL) and come back into it,
 *    read straight from it (bounded polling): the ones written during the outage by the repair
 *    journal, the ones only read (the "dormant" group) by the read repair that follows a read
 *    through mcmux. A last round of increments (the pool now fenced from deciding locks: it came
 *    back empty) ends exact in the pool, restarted server included, and in MySQL.
 *
 * Two groups of sessions: ACTIVE ones are incremented in every phase; DORMANT ones are written
 * before the move, incremented once through mcmux (so MySQL has them), and afterwards only read,
 * so that nothing but a read through mcmux can bring them back into the restarted server.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import type { Connection } from 'mysql2/promise';
import { END, type McmuxProcess, type RawClient, eventually, killAndWait, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';
import { requirePhpExtension } from '../helpers/php-session';
import { type MariadbProcess, connectMysqlUrl, startMariadb } from '../upstream/targets/mysql';

const ACTIVE = 150;
const DORMANT = 30;
/** php-memcached's default memcached.sess_prefix, and the pool's namespace. */
const NS = 'memc.sess.key.';
const TABLE = 'farm_sessions';
/** One php process handles a whole list of sessions: bounded far above what it needs. */
const PHP_TIMEOUT_MS = 60_000;
/** One reply, one query, one background repair. */
const REPLY_MS = 5000;
/** Upstream timeout given to mcmux (MySQL's own default; 2 loaded cores can exceed memcached's 250 ms). */
const UPSTREAM_TIMEOUT_MS = 1000;
/** A member that went down is probed at least this often, so its restart is noticed quickly. */
const PROBE_MAX_MS = 500;

/** The lock's patience, as in php-binary-session.test.ts: short sleeps, many retries. */
const LOCK_SETTINGS = ['memcached.sess_lock_wait_min=5', 'memcached.sess_lock_wait_max=25', 'memcached.sess_lock_retries=400'];

/**
 * `php farm.php MODE IDS_FILE`, one request per session id in the file, each a complete session
 * (session_start, then session_write_close or session_abort) as a web request would do:
 *   write  creates the session: sid, payload, n = 0
 *   read   checks it and prints its count, writes nothing (session_abort)
 *   incr   checks it, increments n, writes it back, prints the new count
 * One line per session: `<sid> <n>`, or `<sid> MISSING|BAD|NOSTART|NOWRITE`; a missing session
 * is never written (no reset hidden by a fresh start at 1).
 */
const SCRIPT = `<?php
[$_, $mode, $file] = $argv;
$out = [];
foreach (file($file, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $sid) {
  session_id($sid);
  if (!session_start()) { $out[] = "$sid NOSTART"; continue; }
  $payload = md5("payload:$sid");
  if ($mode === 'write') {
    $_SESSION = ['sid' => $sid, 'payload' => $payload, 'n' => 0];
  } elseif (!isset($_SESSION['n'])) {
    session_abort(); $out[] = "$sid MISSING"; continue;
  } elseif (($_SESSION['sid'] ?? null) !== $sid || ($_SESSION['payload'] ?? null) !== $payload) {
    session_abort(); $out[] = "$sid BAD"; continue;
  } elseif ($mode === 'incr') {
    $_SESSION['n']++;
  }
  if ($mode === 'read') { $n = $_SESSION['n']; session_abort(); $out[] = "$sid $n"; continue; }
  $n = $_SESSION['n'];
  $out[] = session_write_close() ? "$sid $n" : "$sid NOWRITE";
}
echo implode("\\n", $out), "\\n";
`;

/** What php's session serializer writes for a session at count `n`. */
function sessionValue(sid: string, n: number): string {
  const payload = createHash('md5').update(`payload:${sid}`).digest('hex');
  return `sid|s:${sid.length}:"${sid}";payload|s:32:"${payload}";n|i:${n};`;
}


/**
 * Runs the script in `mode` over `ids` with php-memcached's session handler on `savePath`;
 * resolves with each session's answer. Anything on stderr (a warning) fails the run.
 */
async function php(script: string, dir: string, mode: 'write' | 'read' | 'incr', ids: readonly string[], savePath: string, ini: string[] = []): Promise<Map<string, string>> {
  const list = join(dir, `ids-${randomBytes(4).toString('hex')}.txt`);
  await writeFile(list, `${ids.join('\n')}\n`);
  const argv = [
    '-d', 'session.save_handler=memcached',
    '-d', `session.save_path=${savePath}`,
    ...LOCK_SETTINGS.flatMap((s) => ['-d', s]),
    // Not the handler's settings: no cookies or cache headers under the CLI, every warning seen.
    '-d', 'session.use_cookies=0',
    '-d', 'session.cache_limiter=',
    '-d', 'display_errors=stderr',
    '-d', 'error_reporting=-1',
    ...ini.flatMap((s) => ['-d', s]),
    script, mode, list,
  ];
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile('php', argv, { timeout: PHP_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, out, stderr) => {
      if (err) reject(new Error(`php ${mode} failed (${err.message.split('\n')[0]}); stdout ${JSON.stringify(out.slice(0, 2000))}; stderr ${JSON.stringify(stderr.slice(0, 2000))}`));
      else if (stderr.trim() !== '') reject(new Error(`php ${mode} wrote to stderr: ${stderr.trim().slice(0, 2000)}`));
      else resolve(out);
    });
  });
  await rm(list, { force: true });
  const got = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const m = /^(\S+) (\S+)$/.exec(line);
    if (m) got.set(m[1] as string, m[2] as string);
  }
  return got;
}

/** Every session answered `expected(sid)`; lists the first few that did not. */
function assertAnswers(got: Map<string, string>, ids: readonly string[], expected: (sid: string) => number, what: string): void {
  const wrong = ids.filter((sid) => got.get(sid) !== String(expected(sid)));
  assert.deepEqual(
    wrong.slice(0, 10).map((sid) => `${sid}: ${got.get(sid) ?? 'no answer'} (expected ${expected(sid)})`),
    [],
    `${what}: ${ids.length - wrong.length} of ${ids.length} sessions as expected`,
  );
}

/** `stats upstreams` of mcmux as a map. */
async function upstreamStats(c: RawClient): Promise<Map<string, string>> {
  const text = await c.ask('stats upstreams\r\n', END, REPLY_MS);
  const out = new Map<string, string>();
  for (const m of text.matchAll(/^STAT (\S+) (.*)\r$/gm)) out.set(m[1] as string, m[2] as string);
  return out;
}

/** The direct content of `keys` on the memcached at `port` (undefined where absent). */
async function peekAll(port: number, keys: readonly string[]): Promise<Array<string | undefined>> {
  const out: Array<string | undefined> = [];
  for (let i = 0; i < keys.length; i += 20) {
    const chunk = await Promise.all(keys.slice(i, i + 20).map((k) => peekItem(port, k, REPLY_MS)));
    out.push(...chunk.map((it) => it?.value));
  }
  return out;
}


/** The rows of TABLE whose key starts with `prefix`, key -> value. */
async function rowsLike(db: Connection, prefix: string): Promise<Map<string, string>> {
  const [rows] = await db.query({ sql: `SELECT \`key\` AS k, \`value\` AS v FROM \`${TABLE}\` WHERE \`key\` LIKE ?`, values: [`${prefix}%`], timeout: REPLY_MS });
  return new Map((rows as Array<{ k: Buffer; v: Buffer }>).map((r) => [r.k.toString('latin1'), r.v.toString('latin1')]));
}

/**
 * Cleanup in reverse order of start (t.after runs its hooks in registration order): mcmux and
 * the connections first, then the servers, then the temporary directory.
 */
function cleanupStack(t: TestContext): Array<() => unknown> {
  const undo: Array<() => unknown> = [];
  t.after(async () => {
    const errors: unknown[] = [];
    for (const f of undo.reverse()) await Promise.resolve().then(f).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  });
  return undo;
}

/** A private MariaDB and three memcached, started in parallel; whatever started is stopped even when another failed to. */
async function startFarm(undo: Array<() => unknown>): Promise<{ maria: MariadbProcess; servers: MemcachedProcess[] }> {
  const started = await Promise.allSettled([startMariadb(), startMemcached(), startMemcached(), startMemcached()]);
  for (const r of started) if (r.status === 'fulfilled') undo.push(() => ('destroy' in r.value ? r.value.destroy() : r.value.stop()));
  for (const r of started) if (r.status === 'rejected') throw r.reason;
  const [maria, ...servers] = started.map((r) => (r as PromiseFulfilledResult<MariadbProcess | MemcachedProcess>).value) as [MariadbProcess, ...MemcachedProcess[]];
  return { maria, servers };
}

/** mcmux in front of the pool of `servers` (PHP's placement) and MySQL. */
async function startFarmMcmux(undo: Array<() => unknown>, servers: readonly MemcachedProcess[], maria: MariadbProcess): Promise<McmuxProcess> {
  const mux = await startMcmux([
    '--upstream', `memcached://${servers.map((s) => `127.0.0.1:${s.port}`).join(',')}?namespace=${NS}`,
    '--upstream', `${maria.url}?table=${TABLE}`,
    '--timeout', String(UPSTREAM_TIMEOUT_MS),
    '--probe-interval-max', String(PROBE_MAX_MS),
    '--log-level', 'warn',
  ]);
  undo.push(() => mux.stop());
  return mux;
}

test('a PHP farm sharding sessions over three memcached moves to mcmux (pool + MySQL), loses a server, gets it back', { timeout: 110_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  if (!requireBinary(t, 'php', 'php-cli php-memcached') || !(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;

  const undo = cleanupStack(t);
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-farm-'));
  undo.push(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'farm.php');
  await writeFile(script, SCRIPT);

  const { maria, servers } = await startFarm(undo);
  const hostList = servers.map((s) => `127.0.0.1:${s.port}`).join(',');

  const run = `f${randomBytes(5).toString('hex')}`;
  const active = Array.from({ length: ACTIVE }, (_, i) => `${run}a${String(i).padStart(4, '0')}`);
  const dormant = Array.from({ length: DORMANT }, (_, i) => `${run}d${String(i).padStart(4, '0')}`);
  const all = [...active, ...dormant];
  const isDormant = (sid: string): boolean => sid.startsWith(`${run}d`);
  const key = (sid: string): string => NS + sid;
  const t0 = Date.now();
  const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

  // ---- 1. Before the move: PHP shards the sessions itself, straight to the three servers. ----
  const wrote = await php(script, dir, 'write', all, hostList, ['memcached.sess_consistent_hash=On']);
  assertAnswers(wrote, all, () => 0, 'PHP wrote every session to the pool directly');
  /** Which server (index) each session lives on, read straight from the servers. */
  const home = new Map<string, number>();
  const perServer = await Promise.all(servers.map((s) => peekAll(s.port, all.map(key))));
  all.forEach((sid, i) => {
    const on = perServer.map((vals, s) => (vals[i] === undefined ? -1 : s)).filter((s) => s >= 0);
    assert.equal(on.length, 1, `${sid} is on exactly one server (on ${on.join(',') || 'none'})`);
    assert.equal(perServer[on[0] as number]?.[i], sessionValue(sid, 0), `${sid} holds what PHP wrote`);
    home.set(sid, on[0] as number);
  });
  const share = servers.map((_, s) => all.filter((sid) => home.get(sid) === s).length);
  t.diagnostic(`sessions per server before the move: ${share.join(', ')} (${elapsed()})`);
  for (const n of share) assert.ok(n > all.length / 10, `every server got a share: ${share.join(', ')}`);
  // The victim: the server holding the most dormant sessions (it holds active ones too).
  const victim = [0, 1, 2].sort((a, b) => dormant.filter((s) => home.get(s) === b).length - dormant.filter((s) => home.get(s) === a).length)[0] as number;
  const onVictim = (sid: string): boolean => home.get(sid) === victim;
  assert.ok(active.some(onVictim) && dormant.some(onVictim), 'the victim holds active and dormant sessions');

  // ---- 2. The move: mcmux in front of the pool and MySQL; PHP talks to mcmux only. ----
  const mux = await startFarmMcmux(undo, servers, maria);
  const viaMux = `127.0.0.1:${mux.port}`;
  const c = await rawClient(mux.port);
  undo.push(() => c.close());
  const db = await connectMysqlUrl(maria.url, REPLY_MS);
  undo.push(() => db.destroy());

  const s0 = await upstreamStats(c);
  assert.equal(s0.get('upstream.0.name'), `memcached://${hostList}?namespace=${NS}`, 'the pool is the first upstream');
  assert.equal(s0.get('upstream.1.scheme'), 'mysql', 'MySQL is the second');

  assertAnswers(await php(script, dir, 'read', all, viaMux), all, () => 0, 'after the move, every session is found with its content');
  assertAnswers(await php(script, dir, 'incr', all, viaMux), all, () => 1, 'after the move, an increment continues every session');
  // The writes landed in the pool, each on its own server, and in MySQL.
  for (let s = 0; s < servers.length; s++) {
    const mine = all.filter((sid) => home.get(sid) === s);
    assert.deepEqual(await peekAll((servers[s] as MemcachedProcess).port, mine.map(key)), mine.map((sid) => sessionValue(sid, 1)), `server ${s} holds its sessions at 1`);
  }
  const rows2 = await rowsLike(db, NS + run);
  assert.equal(rows2.size, all.length, 'MySQL has one row per session');
  assert.deepEqual(all.filter((sid) => rows2.get(key(sid)) !== sessionValue(sid, 1)), [], 'MySQL holds every session at 1');
  assert.equal((await rowsLike(db, `${NS}lock.${run}`)).size, 0, 'MySQL holds no session lock');
  t.diagnostic(`moved: ${all.length} sessions found, incremented, in the pool and MySQL (${elapsed()})`);

  // ---- 3. One server dies. ----
  await killAndWait(servers[victim] as MemcachedProcess);
  // Right away (before health marks it down) and throughout: every session, with its content.
  assertAnswers(await php(script, dir, 'read', all, viaMux), all, () => 1, 'a server dead: every session is still served');
  assertAnswers(await php(script, dir, 'incr', active, viaMux), active, () => 2, 'a server dead: the first increment works for every session');
  assertAnswers(await php(script, dir, 'incr', active, viaMux), active, () => 3, 'a server dead: the second increment works for every session');
  const s3 = await upstreamStats(c);
  // down, or probing (each probe of a dead server is down -> probing -> down)
  assert.ok(['down', 'probing'].includes(s3.get(`upstream.0.server.${victim}.state`) as string), `the dead server is marked down: ${JSON.stringify([...s3])}`);
  t.diagnostic(`pool while a server is dead: state ${s3.get('upstream.0.state')}, state changes ${s3.get('upstream.0.state_changes')}, dirty keys ${s3.get('upstream.0.dirty_keys')} (${elapsed()})`);
  const expected3 = (sid: string): number => (isDormant(sid) ? 1 : 3);
  assertAnswers(await php(script, dir, 'read', all, viaMux), all, expected3, 'a server dead: every count is exact');
  const rows3 = await rowsLike(db, NS + run);
  assert.deepEqual(all.filter((sid) => rows3.get(key(sid)) !== sessionValue(sid, expected3(sid))), [], 'MySQL holds every count exactly');
  assert.equal((await rowsLike(db, `${NS}lock.${run}`)).size, 0, 'MySQL holds no leftover lock');
  // The live servers hold their sessions at the exact counts too.
  for (let s = 0; s < servers.length; s++) {
    if (s === victim) continue;
    const mine = all.filter((sid) => home.get(sid) === s);
    assert.deepEqual(await peekAll((servers[s] as MemcachedProcess).port, mine.map(key)), mine.map((sid) => sessionValue(sid, expected3(sid))), `live server ${s} holds exact counts`);
  }

  // ---- 4. The dead server restarts, empty. ----
  const restarted = servers[victim] as MemcachedProcess;
  await restarted.restart();
  const victims = all.filter(onVictim);
  assert.deepEqual(await peekAll(restarted.port, victims.map(key)), victims.map(() => undefined), 'it restarted empty');
  // Served at once (from MySQL), whether or not mcmux has noticed it is back. The dormant
  // sessions of the restarted server are left unread for now (a read may repair them).
  const dormantVictims = dormant.filter(onVictim);
  const readNow = all.filter((sid) => !dormantVictims.includes(sid));
  assertAnswers(await php(script, dir, 'read', readNow, viaMux), readNow, expected3, 'the server restarted empty: every session is served');
  // Health has no outside event: poll mcmux's own view (the member is probed every <= 500 ms).
  await eventually(`mcmux uses the restarted server again`, async () => (await upstreamStats(c)).get(`upstream.0.server.${victim}.state`) === 'healthy', 15_000);
  // The sessions written during the outage are copied back into it by the repair journal.
  const activeVictims = active.filter(onVictim);
  await eventually(`the ${activeVictims.length} active sessions of the restarted server are repaired into it`, async () => {
    const vals = await peekAll(restarted.port, activeVictims.map(key));
    return vals.every((v, i) => v === sessionValue(activeVictims[i] as string, 3));
  }, 15_000);
  // The dormant ones were not written during the outage: only a read through mcmux brings them back.
  assert.deepEqual(await peekAll(restarted.port, dormantVictims.map(key)), dormantVictims.map(() => undefined), 'dormant sessions are not in the restarted server before a read');
  assertAnswers(await php(script, dir, 'read', dormantVictims, viaMux), dormantVictims, () => 1, 'the restarted server\'s dormant sessions are served');
  // Read repair leaves a key alone for 2 s after a write of it (README), and this test can get
  // here sooner after the dormant sessions' last write: each poll reads them through mcmux again.
  const getDormant = `get ${dormantVictims.map(key).join(' ')}\r\n`;
  await eventually(`the ${dormantVictims.length} dormant sessions read through mcmux are repaired into the restarted server`, async () => {
    const reply = await c.ask(getDormant, END, REPLY_MS);
    assert.equal((reply.match(/^VALUE /gm) ?? []).length, dormantVictims.length, 'mcmux serves every dormant session');
    const vals = await peekAll(restarted.port, dormantVictims.map(key));
    return vals.every((v, i) => v === sessionValue(dormantVictims[i] as string, 1));
  }, 10_000);
  // Its marker key is gone: the cold detector (every 2 s) fences the pool from deciding locks.
  await eventually('the pool is fenced: one of its servers came back empty', async () => (await upstreamStats(c)).get('upstream.0.fenced') === '1', REPLY_MS);
  // The outage also journaled the PHP session locks (lock.<sid>: added and deleted by every
  // request) of the dead server's keys; the repair replays those too, at its own pace, after the
  // sessions polled for above: the journal empties soon, not necessarily by the time the fence
  // is seen (in about 1 run of 6 here: 10 or 14 keys left, journal.log's tail showing lock keys
  // cleared, and none left 300 ms later).
  await eventually('the repair journal of the pool is empty', async () => (await upstreamStats(c)).get('upstream.0.dirty_keys') === '0', REPLY_MS);
  t.diagnostic(`restarted server back, repaired (${elapsed()})`);

  // A last round: the pool is whole again and every count goes on, exact, everywhere.
  assertAnswers(await php(script, dir, 'incr', active, viaMux), active, () => 4, 'after the restart, every session increments');
  const expected4 = (sid: string): number => (isDormant(sid) ? 1 : 4);
  assertAnswers(await php(script, dir, 'read', all, viaMux), all, expected4, 'after the restart, every count is exact');
  for (let s = 0; s < servers.length; s++) {
    const mine = all.filter((sid) => home.get(sid) === s);
    assert.deepEqual(await peekAll((servers[s] as MemcachedProcess).port, mine.map(key)), mine.map((sid) => sessionValue(sid, expected4(sid))), `server ${s} holds exact counts at the end`);
    assert.deepEqual((await peekAll((servers[s] as MemcachedProcess).port, all.map((sid) => `${NS}lock.${sid}`))).filter(Boolean), [], `server ${s} holds no leftover lock`);
  }
  const rows4 = await rowsLike(db, NS + run);
  assert.deepEqual(all.filter((sid) => rows4.get(key(sid)) !== sessionValue(sid, expected4(sid))), [], 'MySQL holds every count exactly at the end');
  assert.equal((await rowsLike(db, `${NS}lock.${run}`)).size, 0, 'MySQL holds no leftover lock at the end');
  assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr.slice(-2000)}`);
  t.diagnostic(`done in ${elapsed()}`);
});

/**
 * Two faults of the pool this file found (both fixed, kept as regression tests):
 * - a session lock held before a pool server died must not be granted again by that server right
 *   after it restarts empty: the fence set when its connection comes back is lifted only by that
 *   server's own marker check;
 * - writes to keys of the one dead server must not mark the whole pool down (a server's failure
 *   while others are up is MCMUX_UPSTREAM_PARTIAL, which the pool's health does not count).
 */
test('the pool with one server dead: no double lock, the pool stays up', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  const undo = cleanupStack(t);
  const { maria, servers } = await startFarm(undo);
  const mux = await startFarmMcmux(undo, servers, maria);
  const c = await rawClient(mux.port);
  undo.push(() => c.close());
  const ask = (line: string): Promise<string> => c.ask(line, undefined, REPLY_MS);
  /** Which server holds `k` (written through mcmux), read straight from each. */
  const serverOf = async (k: string): Promise<number> => {
    const on = (await Promise.all(servers.map((s) => peekItem(s.port, k, REPLY_MS)))).map((it, i) => (it ? i : -1)).filter((i) => i >= 0);
    assert.equal(on.length, 1, `${k} is on exactly one server`);
    return on[0] as number;
  };
  const memberState = async (m: number): Promise<string | undefined> => (await upstreamStats(c)).get(`upstream.0.server.${m}.state`);

  // A session lock, held (never released), and plain keys spread over the servers.
  const lock = `${NS}lock.${randomBytes(8).toString('hex')}`;
  assert.equal(await ask(`add ${lock} 0 0 1\r\n1\r\n`), 'STORED\r\n');
  const victim = await serverOf(lock);
  const plain = Array.from({ length: 40 }, (_, i) => `${NS}plain${i}`);
  for (const k of plain) assert.equal(await ask(`set ${k} 0 0 1\r\nv\r\n`), 'STORED\r\n');
  const where = await Promise.all(plain.map(serverOf));
  const onVictim = plain.filter((_, i) => where[i] === victim);
  const elsewhere = plain.find((_, i) => where[i] !== victim) as string;
  assert.ok(onVictim.length >= 3 && elsewhere !== undefined, 'keys on the victim and elsewhere');

  /** Kills the victim and has health mark it down, each failed write followed by one that succeeds (the pool stays up). */
  const killVictim = async (): Promise<void> => {
    await killAndWait(servers[victim] as MemcachedProcess);
    for (const k of onVictim.slice(0, 3)) {
      assert.equal(await ask(`set ${k} 0 0 1\r\nw\r\n`), 'STORED\r\n', 'stored in MySQL');
      assert.equal(await ask(`set ${elsewhere} 0 0 1\r\nw\r\n`), 'STORED\r\n');
    }
    await eventually('the dead server is marked down', async () => ['down', 'probing'].includes((await memberState(victim)) as string), REPLY_MS);
  };

  await t.test('a lock held before a server died is not granted again when it restarts empty', async () => {
    await killVictim();
    const restarted = servers[victim] as MemcachedProcess;
    await restarted.restart();
    await eventually('mcmux uses the restarted server again', async () => (await memberState(victim)) === 'healthy', 15_000);
    // The lock lives in MySQL only now; the restarted server must not decide it.
    assert.equal(await ask(`add ${lock} 0 0 1\r\n2\r\n`), 'NOT_STORED\r\n', 'the held lock is not granted a second time');
  });

  await t.test('writes to keys of the one dead server do not take the whole pool down', async () => {
    const stopped = servers[victim] as MemcachedProcess;
    await killAndWait(stopped);
    const before = await upstreamStats(c);
    for (const k of onVictim.slice(0, 3)) assert.equal(await ask(`set ${k} 0 0 1\r\nx\r\n`), 'STORED\r\n', 'stored in MySQL');
    const after = await upstreamStats(c);
    t.diagnostic(`pool ${before.get('upstream.0.state')} -> ${after.get('upstream.0.state')}, the dead server ${after.get(`upstream.0.server.${victim}.state`)}`);
    assert.notEqual(after.get('upstream.0.state'), 'down', 'the pool stays up: two of its three servers are');
  });
});
