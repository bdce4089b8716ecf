/**
 * mcmux (the real binary) with a cache in front of durable stores: a private memcached, then a
 * private redis-server, then a private MariaDB, in that read order. What a restart of the cache
 * must not cost:
 *
 * - memcached restarts EMPTY: every key is still served (from Redis), and the first read puts it
 *   back into memcached with its remaining lifetime and its flags (read repair);
 * - Redis dies too and memcached restarts empty again: the keys are served from MySQL;
 * - PHP's session handler (php-memcached, text and binary protocol) keeps counting across a
 *   killed and restarted memcached, and across Redis dying as well;
 * - the embedded default (`mcmux` with no upstream: memory in front of SQLite): what was stored
 *   before a SIGTERM is served after the next start, and repaired into memory by the first read.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { Redis } from 'ioredis';
import { createConnection } from 'mysql2/promise';
import { END, type McmuxProcess, type RawClient, eventually, killAndWait, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';
import { type MariadbProcess, startMariadb } from '../upstream/targets/mysql';
import { type RedisProcess, startRedis } from '../upstream/targets/redis';

/** Upstream timeout given to mcmux (MySQL's own default; memcached and Redis answer far faster). */
const UPSTREAM_TIMEOUT_MS = 1000;
/** Bound on any one reply or background repair. */
const REPLY_MS = 5000;
/** One php run: start-up, a lock, a read, a write; bounded far above what it needs. */
const PHP_TIMEOUT_MS = 20_000;
const EXPTIME = 100;

interface Item {
  readonly key: string;
  readonly flags: number;
  readonly exptime: number;
  readonly value: string;
}

/** Keys with and without a lifetime, and flags over the whole 32-bit range. */
function items(prefix: string): Item[] {
  const flags = [0, 1, 65535, 4294967295];
  return flags.flatMap((f, i) => [
    { key: `${prefix}.ttl.${i}`, flags: f, exptime: EXPTIME, value: `expiring ${i} ${randomBytes(6).toString('hex')}` },
    { key: `${prefix}.forever.${i}`, flags: f, exptime: 0, value: `forever ${i} ${randomBytes(6).toString('hex')}` },
  ]);
}

function valueReply(list: readonly Item[]): string {
  return list.map((it) => `VALUE ${it.key} ${it.flags} ${it.value.length}\r\n${it.value}\r\n`).join('') + 'END\r\n';
}

/** `stats` (or `stats upstreams`) as a map. */
async function stats(c: RawClient, group = ''): Promise<Map<string, string>> {
  const text = await c.ask(group ? `stats ${group}\r\n` : 'stats\r\n', END, REPLY_MS);
  const out = new Map<string, string>();
  for (const m of text.matchAll(/^STAT (\S+) (.*)\r$/gm)) out.set(m[1] as string, m[2] as string);
  return out;
}

function stat(s: Map<string, string>, name: string): number {
  const v = s.get(name);
  assert.ok(v !== undefined, `stats has ${name}: ${JSON.stringify([...s])}`);
  return Number(v);
}

/**
 * Waits (bounded) until mcmux writes to `mc` again after it came back empty: a memcached client
 * reconnects with a back-off and a down upstream waits for its probe.
 */
async function usesAgain(mux: McmuxProcess, mc: MemcachedProcess, tag: string): Promise<void> {
  const c = await rawClient(mux.port);
  try {
    await eventually(`mcmux writes to the restarted memcached :${mc.port}`, async () => {
      assert.equal(await c.ask(`set probe.${tag} 0 0 1\r\np\r\n`, undefined, REPLY_MS), 'STORED\r\n');
      return (await peekItem(mc.port, `probe.${tag}`)) !== undefined;
    }, 15_000);
  } finally {
    c.close();
  }
}

/** Every item is back in memcached, value and flags intact, with what is left of its lifetime. */
async function repairedInto(mc: MemcachedProcess, list: readonly Item[], what: string): Promise<void> {
  await eventually(`${what}: every key is repaired into memcached`, async () => {
    for (const it of list) if ((await peekItem(mc.port, it.key)) === undefined) return false;
    return true;
  }, REPLY_MS);
  for (const it of list) {
    const got = await peekItem(mc.port, it.key);
    assert.ok(got, `${what}: ${it.key} in memcached`);
    assert.equal(got.value, it.value, `${what}: value of ${it.key}`);
    assert.equal(got.flags, it.flags, `${what}: flags of ${it.key}`);
    if (it.exptime === 0) {
      assert.equal(got.ttl, -1, `${what}: ${it.key} was stored with exptime 0 and must not expire (ttl ${got.ttl})`);
    } else {
      assert.ok(got.ttl <= EXPTIME && got.ttl > 80, `${what}: ${it.key} keeps its remaining lifetime: ttl ${got.ttl}, expected in (80, ${EXPTIME}]`);
    }
  }
}

test('a cache in front of durable stores: memcached, redis, mysql', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  // One MariaDB for the whole file (its start is the slow one); each subtest has its own table.
  const maria: MariadbProcess = await startMariadb();
  t.after(() => maria.destroy());
  const mysqlUrl = (table: string): string => `${maria.url}?table=${table}`;

  await t.test('memcached restarts empty: keys come from Redis, then MySQL, and are repaired with their lifetime', async (t) => {
    const [mc, redis] = await Promise.all([startMemcached(), startRedis()]);
    t.after(() => Promise.all([mc.stop(), redis.stop()]));
    const table = 'dur_items';
    const mux = await startMcmux([
      '--upstream', mc.url,
      '--upstream', redis.url,
      '--upstream', mysqlUrl(table),
      '--timeout', String(UPSTREAM_TIMEOUT_MS),
      '--log-level', 'warn',
    ]);
    t.after(async () => {
      const exit = await mux.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, `mcmux exits 0 on SIGTERM; stderr: ${mux.logs().stderr}`);
    });
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    const list = items('dur');

    const writtenAt = Date.now();
    for (const it of list) {
      assert.equal(await c.ask(`set ${it.key} ${it.flags} ${it.exptime} ${it.value.length}\r\n${it.value}\r\n`, undefined, REPLY_MS), 'STORED\r\n', `set ${it.key}`);
    }

    // Every store holds every item, with the same deadline (read straight from each).
    for (const it of list) {
      const got = await peekItem(mc.port, it.key);
      assert.equal(got?.value, it.value, `memcached holds ${it.key}`);
      assert.equal(got?.flags, it.flags, `memcached holds the flags of ${it.key}`);
    }
    const r = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await r.connect();
      for (const it of list) {
        const pttl = await r.pttl(it.key);
        if (it.exptime === 0) assert.equal(pttl, -1, `redis: ${it.key} has no expiry`);
        else assert.ok(pttl > 80_000 && pttl <= EXPTIME * 1000, `redis: ${it.key} expires in ${pttl} ms`);
      }
    } finally {
      r.disconnect();
    }
    const u = new URL(maria.url);
    const db = await createConnection({
      host: u.hostname,
      port: Number(u.port),
      user: decodeURIComponent(u.username),
      password: decodeURIComponent(u.password),
      database: u.pathname.slice(1),
      connectTimeout: REPLY_MS,
    });
    try {
      const [rows] = await db.query({ sql: `SELECT \`key\` AS k, flags, exp FROM \`${table}\` WHERE \`key\` LIKE 'dur.%'`, timeout: REPLY_MS });
      const byKey = new Map((rows as Array<{ k: Buffer; flags: number; exp: number | string }>).map((row) => [row.k.toString('latin1'), row]));
      for (const it of list) {
        const row = byKey.get(it.key);
        assert.ok(row, `mysql holds ${it.key}`);
        assert.equal(Number(row.flags), it.flags, `mysql: flags of ${it.key}`);
        const exp = Number(row.exp);
        if (it.exptime === 0) assert.equal(exp, 0, `mysql: ${it.key} never expires`);
        else assert.ok(exp >= writtenAt + 99_000 && exp <= Date.now() + EXPTIME * 1000, `mysql: deadline of ${it.key} is ${exp - writtenAt} ms after the write`);
      }
    } finally {
      db.destroy();
    }

    // 1. memcached restarts empty: Redis serves every key; the first read repairs memcached.
    const getAll = `get ${list.map((it) => it.key).join(' ')}\r\n`;
    const before = await stats(c);
    await mc.restart();
    assert.equal(await peekItem(mc.port, list[0]?.key as string), undefined, 'memcached restarted empty');
    // At once, whether or not mcmux has reconnected to it yet: nothing is missing.
    assert.equal(await c.ask(getAll, END, REPLY_MS), valueReply(list), 'every key served right after the cache restart');
    // Once mcmux uses memcached again, a read puts every key back into it.
    await usesAgain(mux, mc, 'one');
    assert.equal(await c.ask(getAll, END, REPLY_MS), valueReply(list), 'every key served after the cache restart');
    await repairedInto(mc, list, 'from Redis');
    const after = await stats(c);
    assert.ok(
      stat(after, 'read_repairs') - stat(before, 'read_repairs') >= list.length,
      `one read repair per key: read_repairs ${stat(before, 'read_repairs')} -> ${stat(after, 'read_repairs')}`,
    );
    assert.equal(stat(after, 'read_repair_failures'), stat(before, 'read_repair_failures'), 'no read repair failed');

    // 2. Redis dies as well, and memcached restarts empty once more: MySQL serves every key.
    await redis.stop();
    await mc.restart();
    assert.equal(await peekItem(mc.port, list[0]?.key as string), undefined, 'memcached restarted empty');
    // The cache is empty (or not reconnected yet) and Redis is dead: this read can only be MySQL's.
    assert.equal(await c.ask(getAll, END, REPLY_MS), valueReply(list), 'every key served from MySQL right after the cache restarted');
    await usesAgain(mux, mc, 'two');
    assert.equal(await c.ask(getAll, END, REPLY_MS), valueReply(list), 'every key served once mcmux uses the cache again');
    await repairedInto(mc, list, 'from MySQL');
    // One key alone, now served by the cache again (and never from the dead Redis).
    const one = list[1] as Item;
    assert.equal(await c.ask(`get ${one.key}\r\n`, END, REPLY_MS), valueReply([one]));
    assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  });

  await t.test('PHP sessions through memcached, redis, mysql survive the cache restarting', async (t) => {
    if (!requireBinary(t, 'php', 'php-cli php-memcached')) return;
    if (!(await requirePhpMemcached(t))) return;
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-php-durable-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const script = join(dir, 'count.php');
    await writeFile(script, SCRIPT);

    for (const binary of [false, true]) {
      await t.test(binary ? 'binary protocol (php-memcached default)' : 'text protocol (memcached.sess_binary_protocol=0)', async (t) => {
        const [mc, redis] = await Promise.all([startMemcached(), startRedis()]);
        t.after(() => Promise.all([mc.stop(), redis.stop()]));
        const mux = await startMcmux([
          '--upstream', mc.url,
          '--upstream', redis.url,
          '--upstream', mysqlUrl(binary ? 'sess_binary' : 'sess_text'),
          '--timeout', String(UPSTREAM_TIMEOUT_MS),
          '--log-level', 'warn',
        ]);
        t.after(() => mux.stop());
        await phpSurvivesCacheRestarts(script, mux, mc, redis, binary);
      });
    }
  });
});

test('the embedded default (memory in front of sqlite) keeps data across a restart of mcmux', async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), 'mcmux-embedded-'));
  t.after(() => rm(stateDir, { recursive: true, force: true }));
  const list = items('emb');
  const args = ['--state-dir', stateDir, '--log-level', 'warn'];

  const first = await startMcmux(args);
  try {
    const c = await rawClient(first.port);
    for (const it of list) {
      assert.equal(await c.ask(`set ${it.key} ${it.flags} ${it.exptime} ${it.value.length}\r\n${it.value}\r\n`, undefined, REPLY_MS), 'STORED\r\n', `set ${it.key}`);
    }
    const s = await stats(c, 'upstreams');
    assert.equal(s.get('upstream.0.scheme'), 'memory', `the embedded default starts with memory: ${JSON.stringify([...s])}`);
    assert.equal(s.get('upstream.1.scheme'), 'sqlite');
    assert.ok(s.get('upstream.1.name')?.includes(stateDir), `the sqlite file is in --state-dir: ${s.get('upstream.1.name')}`);
    c.close();
  } finally {
    const exit = await first.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `first run exits 0 on SIGTERM; stderr: ${first.logs().stderr}`);
  }

  const second = await startMcmux(args);
  t.after(async () => {
    const exit = await second.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `second run exits 0 on SIGTERM; stderr: ${second.logs().stderr}`);
  });
  const c = await rawClient(second.port);
  t.after(() => c.close());
  const keys = list.map((it) => it.key).join(' ');
  const s0 = await stats(c);
  assert.equal(stat(s0, 'read_repairs'), 0);
  // The memory store starts empty: SQLite answers, and the first read repairs memory.
  assert.equal(await c.ask(`get ${keys}\r\n`, END, REPLY_MS), valueReply(list), 'served after the restart (from SQLite)');
  const s1 = await stats(c);
  assert.equal(stat(s1, 'read_repairs'), list.length, 'one read repair per key into memory');
  assert.equal(stat(s1, 'get_hits'), list.length);
  // The repair is in the background: once memory has every key, SQLite is no longer asked.
  await eventually('the second read is answered by memory alone', async () => {
    const a = await stats(c, 'upstreams');
    const reply = await c.ask(`get ${keys}\r\n`, END, REPLY_MS);
    assert.equal(reply, valueReply(list), 'the second read');
    const b = await stats(c, 'upstreams');
    assert.ok(stat(b, 'upstream.0.requests') > stat(a, 'upstream.0.requests'), 'memory was asked');
    return stat(b, 'upstream.1.requests') === stat(a, 'upstream.1.requests');
  }, REPLY_MS);
  const s2 = await stats(c);
  assert.equal(stat(s2, 'read_repair_failures'), 0);
  assert.equal(stat(s2, 'read_repairs'), list.length, 'nothing repaired twice');
});

// ---------------------------------------------------------------------------------------------
// PHP

const SCRIPT = `<?php
session_id($argv[1]);
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo $_SESSION['n'], "\\n";
`;

/** php-memcached's default session key prefix. */
const PREFIX = 'memc.sess.key.';

/** True when php has the memcached extension; otherwise skips (or fails under MCMUX_REQUIRE_SERVERS=1). */
async function requirePhpMemcached(t: TestContext): Promise<boolean> {
  const modules = await new Promise<string>((resolve) => {
    execFile('php', ['-m'], { timeout: PHP_TIMEOUT_MS }, (_err, stdout) => resolve(String(stdout)));
  });
  if (/^memcached$/m.test(modules)) return true;
  if (process.env.MCMUX_REQUIRE_SERVERS === '1') {
    throw new Error('the php memcached extension is not loaded (php -m) and MCMUX_REQUIRE_SERVERS=1: apt-get install php-memcached');
  }
  t.skip('the php memcached extension is not loaded (apt-get install php-memcached)');
  return false;
}

function runPhp(script: string, port: number, sid: string, binary: boolean): Promise<string> {
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
    execFile('php', args, { timeout: PHP_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`php ${args.join(' ')} failed (${err.message}); stdout ${JSON.stringify(stdout)}; stderr ${JSON.stringify(stderr)}`));
      else if (stderr.trim() !== '') reject(new Error(`php wrote to stderr: ${stderr.trim()} (stdout ${JSON.stringify(stdout)})`));
      else resolve(stdout);
    });
  });
}

/**
 * The counter must continue, never reset: while memcached is dead (Redis has the session), once
 * it is back empty, and when Redis dies too and memcached restarts empty again (MySQL has it).
 */
async function phpSurvivesCacheRestarts(script: string, mux: McmuxProcess, mc: MemcachedProcess, redis: RedisProcess, binary: boolean): Promise<void> {
  const sid = randomBytes(16).toString('hex');
  const key = PREFIX + sid;
  let n = 0;
  const runs = async (count: number, when: string): Promise<void> => {
    for (let i = 0; i < count; i++) {
      n++;
      assert.equal(await runPhp(script, mux.port, sid, binary), `${n}\n`, `run ${n} (${when}): the count must continue`);
    }
  };
  const cacheHolds = async (when: string): Promise<void> => {
    await eventually(`${when}: memcached holds the session at ${n}`, async () => (await peekItem(mc.port, key))?.value === `n|i:${n};`, REPLY_MS);
    assert.equal(await peekItem(mc.port, `${PREFIX}lock.${sid}`), undefined, `${when}: no leftover lock in memcached`);
  };

  await runs(4, 'all up');
  await cacheHolds('all up');

  await killAndWait(mc);
  await runs(4, 'memcached dead');

  await mc.restart();
  assert.equal(await peekItem(mc.port, key), undefined, 'memcached restarted empty');
  await runs(4, 'memcached back empty');
  await usesAgain(mux, mc, sid);
  await runs(2, 'memcached in use again');
  await cacheHolds('memcached in use again');

  await redis.stop();
  await mc.restart();
  await runs(4, 'redis dead, memcached restarted empty: mysql has the session');
  await usesAgain(mux, mc, `${sid}.2`);
  await runs(2, 'redis dead, memcached in use again');
  await cacheHolds('redis dead, memcached in use again');
  assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
}
