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
 *   before a SIGTERM is served after the next start, and repaired into memory by the first read;
 * - hazard 8 (T5 on every upstream): a set over --max-item-size, text or binary, is refused with
 *   `SERVER_ERROR object too large for cache` (binary: status 0x0003), and the old session is
 *   gone from memcached, Redis, MySQL and SQLite, each read directly.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import { END, type McmuxProcess, type RawClient, eventually, killAndWait, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { requirePhpExtension, runPhpMemcached } from '../helpers/php-session';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';
import { frame, storeExtras } from '../helpers/binary-frame';
import { type MariadbProcess, connectMysqlUrl, startMariadb } from '../upstream/targets/mysql';
import { type RedisProcess, startRedis } from '../upstream/targets/redis';

/** Upstream timeout given to mcmux (MySQL's own default; memcached and Redis answer far faster). */
const UPSTREAM_TIMEOUT_MS = 1000;
/** Bound on any one reply or background repair. */
const REPLY_MS = 5000;
/** One php run: start-up, a lock, a read, a write; bounded far above what it needs. */
const PHP_TIMEOUT_MS = 20_000;
const EXPTIME = 100;
/** --max-item-size for hazard 8 (the smallest mcmux accepts); the memcached behind takes 1 MiB. */
const MAX_ITEM_SIZE = 1024;

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

/** mcmux on `args` (with the upstream timeout, quiet logs), checked to exit 0 on SIGTERM, and a raw client. */
async function muxAndClient(t: TestContext, args: string[]): Promise<{ mux: McmuxProcess; c: RawClient }> {
  const mux = await startMcmux([...args, '--timeout', String(UPSTREAM_TIMEOUT_MS), '--log-level', 'warn']);
  t.after(async () => {
    const exit = await mux.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `mcmux exits 0 on SIGTERM; stderr: ${mux.logs().stderr}`);
  });
  const c = await rawClient(mux.port);
  t.after(() => c.close());
  return { mux, c };
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
    const { mux, c } = await muxAndClient(t, ['--upstream', mc.url, '--upstream', redis.url, '--upstream', mysqlUrl(table)]);
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
    const db = await connectMysqlUrl(maria.url, REPLY_MS);
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

  await t.test('hazard 8 (T5): a set over --max-item-size, text or binary, is refused and the old session is gone from memcached, redis, mysql and sqlite', async (t) => {
    const [mc, redis] = await Promise.all([startMemcached(), startRedis()]);
    t.after(() => Promise.all([mc.stop(), redis.stop()]));
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-too-large-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const sqliteFile = join(dir, 'store.db');
    const table = 'dur_too_large';
    const { mux, c } = await muxAndClient(t, [
      '--upstream', mc.url,
      '--upstream', redis.url,
      '--upstream', mysqlUrl(table),
      // file:///tmp/x/store.db -> sqlite:///tmp/x/store.db
      '--upstream', pathToFileURL(sqliteFile).href.replace(/^file:/, 'sqlite:'),
      '--max-item-size', String(MAX_ITEM_SIZE),
    ]);

    // Each store is read directly, not through mcmux. These clients are closed in the finally
    // below, before the servers stop (t.after hooks run first to last).
    const r = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: true, maxRetriesPerRequest: 0 });
    await r.connect();
    const db = await connectMysqlUrl(maria.url, REPLY_MS);
    const lite = new Database(sqliteFile, { readonly: true, fileMustExist: true });
    const liteGet = lite.prepare('SELECT value FROM mcmux_items WHERE key = ?');
    /** What each store holds under `key` (undefined: nothing). */
    const held = async (key: string): Promise<Held> => {
      const k = Buffer.from(key, 'latin1');
      // A Redis item is 4 bytes of flags, 8 of cas unique, then the value (src/upstream/redis.ts).
      const inRedis = await r.getBuffer(key);
      const [rows] = await db.query({ sql: `SELECT value FROM \`${table}\` WHERE \`key\` = ?`, values: [k], timeout: REPLY_MS });
      const inSqlite = liteGet.get(k) as { value: Buffer } | undefined;
      return {
        memcached: (await peekItem(mc.port, key))?.value,
        redis: inRedis?.subarray(12).toString('latin1'),
        mysql: (rows as Array<{ value: Buffer }>)[0]?.value.toString('latin1'),
        sqlite: inSqlite?.value.toString('latin1'),
      };
    };
    const everywhere = (v: string): Held => ({ memcached: v, redis: v, mysql: v, sqlite: v });
    const nowhere: Held = { memcached: undefined, redis: undefined, mysql: undefined, sqlite: undefined };

    const big = 'B'.repeat(MAX_ITEM_SIZE + 1);

    try {
      await t.test('text protocol', async () => {
        const key = `sess.t5.text.${randomBytes(4).toString('hex')}`;
        const old = `old session ${randomBytes(6).toString('hex')}`;
        assert.equal(await c.ask(`set ${key} 0 0 ${old.length}\r\n${old}\r\n`, undefined, REPLY_MS), 'STORED\r\n');
        assert.deepEqual(await held(key), everywhere(old), 'every store holds the old session before the oversized set');

        assert.equal(await c.ask(`set ${key} 0 0 ${big.length}\r\n${big}\r\n`, undefined, REPLY_MS), 'SERVER_ERROR object too large for cache\r\n');
        assert.deepEqual(await held(key), nowhere, 'the old session is gone from every store once the refusal is answered');
        // The block was swallowed: the next command gets its own answer, and it is a miss.
        assert.equal(await c.ask(`get ${key}\r\n`, END, REPLY_MS), 'END\r\n');
        // A value of exactly the limit is stored everywhere (the refusal was the size, not the key).
        const limit = 'L'.repeat(MAX_ITEM_SIZE);
        assert.equal(await c.ask(`set ${key} 0 0 ${limit.length}\r\n${limit}\r\n`, undefined, REPLY_MS), 'STORED\r\n');
        assert.deepEqual(await held(key), everywhere(limit));
      });

      await t.test('binary protocol', async (t) => {
        const key = `sess.t5.binary.${randomBytes(4).toString('hex')}`;
        const old = `old session ${randomBytes(6).toString('hex')}`;
        const bin = await rawClient(mux.port);
        t.after(() => bin.close());
        const set = await binAsk(bin, frame({ opcode: BIN_SET, key, extras: storeExtras(0, 0), value: old, opaque: 0x51 }));
        assert.deepEqual([set.opcode, set.status, set.opaque], [BIN_SET, BIN_SUCCESS, 0x51], 'SET of the old session succeeds');
        assert.deepEqual(await held(key), everywhere(old), 'every store holds the old session before the oversized SET');

        const refused = await binAsk(bin, frame({ opcode: BIN_SET, key, extras: storeExtras(0, 0), value: big, opaque: 0x52 }));
        assert.deepEqual(
          [refused.opcode, refused.status, refused.opaque, refused.value],
          [BIN_SET, BIN_TOO_LARGE, 0x52, 'Too large.'],
          'the oversized SET is answered with 0x0003 (value too large)',
        );
        assert.deepEqual(await held(key), nowhere, 'the old session is gone from every store once the refusal is answered');
        // The connection is still in step: a GET gets its own answer, a miss.
        const get = await binAsk(bin, frame({ opcode: BIN_GET, key, opaque: 0x53 }));
        assert.deepEqual([get.opcode, get.status, get.opaque], [BIN_GET, BIN_KEY_NOT_FOUND, 0x53]);
        assert.equal(await c.ask(`get ${key}\r\n`, END, REPLY_MS), 'END\r\n', 'and a miss through the text protocol too');
      });
    } finally {
      r.disconnect();
      db.destroy();
      lite.close();
    }
    assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  });

  await t.test('PHP sessions through memcached, redis, mysql survive the cache restarting', async (t) => {
    if (!requireBinary(t, 'php', 'php-cli php-memcached')) return;
    if (!(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;
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
// Direct readers and binary frames (hazard 8)

/** One key as each store behind mcmux holds it. */
interface Held {
  readonly memcached: string | undefined;
  readonly redis: string | undefined;
  readonly mysql: string | undefined;
  readonly sqlite: string | undefined;
}

const BIN_GET = 0x00;
const BIN_SET = 0x01;
const BIN_SUCCESS = 0x0000;
const BIN_KEY_NOT_FOUND = 0x0001;
const BIN_TOO_LARGE = 0x0003;

/** Sends one binary request and reads exactly one response (nothing after it). */
async function binAsk(c: RawClient, request: Buffer): Promise<{ opcode: number; status: number; opaque: number; value: string }> {
  const complete = (t: string): boolean => t.length >= 24 && t.length >= 24 + Buffer.from(t.slice(0, 24), 'latin1').readUInt32BE(8);
  const b = Buffer.from(await c.ask(request, complete, REPLY_MS), 'latin1');
  assert.equal(b[0], 0x81, `a binary response: ${b.toString('hex')}`);
  const body = b.readUInt32BE(8);
  assert.equal(b.length, 24 + body, `one response, nothing after it: ${b.toString('hex')}`);
  const skip = 24 + (b[4] as number) + b.readUInt16BE(2);
  return { opcode: b[1] as number, status: b.readUInt16BE(6), opaque: b.readUInt32BE(12), value: b.toString('latin1', skip, 24 + body) };
}

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
      assert.equal(await runPhpMemcached(script, mux.port, sid, binary, PHP_TIMEOUT_MS), `${n}\n`, `run ${n} (${when}): the count must continue`);
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
