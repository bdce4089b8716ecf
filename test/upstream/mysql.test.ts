/**
 * The mysql driver's own behaviour, beyond the conformance suite: the schema it creates, SQL
 * injection, expired rows and their purge, cas uniques, secrets in names and errors, and a
 * server that stops or freezes. Each server is a private MariaDB (see targets/mysql.ts).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Connection, type RowDataPacket, createConnection } from 'mysql2/promise';
import { EXPIRED } from '../../src/command/command';
import { ConfigError, ErrorCodes } from '../../src/errors';
import { createMysqlUpstream } from '../../src/upstream/mysql';
import type { Upstream } from '../../src/upstream/upstream';
import { b, codeOf, getOne, retrying, set } from '../helpers/driver-calls';
import { freePort, requireBinary } from '../helpers/servers';
import { assertMaxQueueOfTwo } from '../helpers/upstream-limits';
import { MARIADB_DATABASE, MARIADB_PASSWORD, MARIADB_USER, type MariadbProcess, startMariadb } from './targets/mysql';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };
const DAY = 24 * 3600 * 1000;

function open(url: string, options: Record<string, string> = {}, c: typeof ctx | { defaultTimeoutMs: number | undefined; maxItemSize: number } = ctx): Upstream {
  return createMysqlUpstream(new URL(url), new Map(Object.entries(options)), c);
}

/** A plain mysql2 connection to look at the server behind the driver's back. */
function inspect(db: MariadbProcess): Promise<Connection> {
  return createConnection({
    host: '127.0.0.1',
    port: db.port,
    user: MARIADB_USER,
    password: MARIADB_PASSWORD,
    database: MARIADB_DATABASE,
    supportBigNumbers: true,
    bigNumberStrings: true,
    connectTimeout: 5000,
  });
}

async function rows(conn: Connection, sql: string, params: Array<Buffer | number | string> = []): Promise<RowDataPacket[]> {
  const [r] = await conn.query<RowDataPacket[]>({ sql, timeout: 10_000 }, params);
  return r;
}

test('options: table name checked, unknown options refused, password masked', async () => {
  const url = 'mysql://app:Sup3rSecret@127.0.0.1:3306/sessions';
  assert.throws(() => open(url, { table: "items'; DROP TABLE x; --" }), ConfigError);
  assert.throws(() => open(url, { table: 'a`b' }), ConfigError);
  assert.throws(() => open(url, { table: '1items' }), ConfigError);
  assert.throws(() => open(url, { table: 'x'.repeat(65) }), ConfigError);
  assert.throws(() => open(url, { table: '' }), ConfigError);
  assert.throws(() => open(url, { tabel: 'x' }), ConfigError);
  assert.throws(() => open(url, { timeout: '0' }), ConfigError);
  assert.throws(() => open(url, { connections: 'many' }), ConfigError);
  assert.throws(() => open(url, { 'purge-batch': '0' }), ConfigError);
  assert.throws(() => open('mysql://app:pw@127.0.0.1:3306/', {}), ConfigError, 'a database is required');
  assert.throws(() => open(url, { table: "it's" }), (err) => err instanceof ConfigError && !err.message.includes('Sup3rSecret'));

  const ok = [open(url, { table: 'x'.repeat(64) }), open(url, { table: '_Items_2' })];
  const up = open(url, { timeout: '300' });
  assert.equal(up.scheme, 'mysql');
  assert.equal(up.timeoutMs, 300);
  assert.equal(up.name, 'mysql://app:***@127.0.0.1:3306/sessions');
  assert.ok(!up.name.includes('Sup3rSecret'));
  const def = createMysqlUpstream(new URL(url), new Map(), { defaultTimeoutMs: undefined, maxItemSize: 1024 });
  assert.equal(def.timeoutMs, 1000, 'a database gets a longer default than a cache');
  await Promise.all([...ok, up, def].map((u) => u.close()));
});

test('mysql upstream against a private MariaDB', { timeout: 120_000 }, async (t) => {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  const db = await startMariadb();
  t.diagnostic(`private MariaDB: mariadb-install-db ${db.installMs} ms, mariadbd ready ${db.startupMs} ms after spawn`);
  const raw = await inspect(db);
  const up = open(db.url);
  const others: Upstream[] = [];
  const other = (options: Record<string, string> = {}, c: Parameters<typeof open>[2] = ctx): Upstream => {
    const u = open(db.url, options, c);
    others.push(u);
    return u;
  };
  t.after(async () => {
    await Promise.all([up, ...others].map((u) => u.close()));
    raw.destroy();
    await db.destroy();
  });

  await t.test('the table is created on first use, with the documented schema', async () => {
    assert.equal((await rows(raw, "SHOW TABLES LIKE 'mcmux_items'")).length, 0, 'nothing before the first request');
    await up.probe();
    const [row] = await rows(raw, 'SHOW CREATE TABLE mcmux_items');
    const ddl = String(row?.['Create Table']);
    for (const re of [
      /`key` varbinary\(250\) NOT NULL/i,
      /`value` longblob NOT NULL/i,
      /`flags` int(\(\d+\))? unsigned NOT NULL/i,
      /`cas` bigint(\(\d+\))? unsigned NOT NULL/i,
      /`exp` bigint(\(\d+\))? NOT NULL/i,
      /PRIMARY KEY \(`key`\)/i,
      /KEY `mcmux_exp` \(`exp`\)/i,
      /ENGINE=InnoDB/i,
    ]) {
      assert.match(ddl, re);
    }

    const named = other({ table: 'Session_Items' });
    await set(named, 'tk', 'in the other table');
    assert.equal((await rows(raw, 'SELECT `value` FROM Session_Items WHERE `key` = ?', [b('tk')]))[0]?.value.toString(), 'in the other table');
    assert.equal(await getOne(up, 'tk'), undefined, 'tables are separate stores');

    await rows(raw, 'DROP TABLE Session_Items');
    assert.equal(await getOne(named, 'tk'), undefined, 'a table dropped behind its back is created again');
    assert.equal((await rows(raw, "SHOW TABLES LIKE 'Session_Items'")).length, 1);
  });

  await t.test('keys and values that look like SQL are stored literally', async () => {
    // Keys arrive without spaces or control bytes; comments stand in for spaces.
    const keys = [
      "a');DROP/**/TABLE/**/mcmux_items;--",
      "'",
      '"',
      '\\',
      '`',
      '%',
      '_',
      "1'OR'1'='1",
      '\xff\xfe\x80caf\xe9',
      'k'.repeat(250),
    ];
    const values = keys.map((k, i) => Buffer.concat([b(`${i}:'); DROP TABLE mcmux_items; --\\`), Buffer.from([0, 0x27, 0x5c, 0xff]), b(k)]));
    for (const [i, k] of keys.entries()) await set(up, k, values[i] as Buffer, i);
    const hits = await up.get([...keys, 'a%', '_x', keys[0] as string]);
    keys.forEach((k, i) => {
      assert.deepEqual(hits[i]?.value, values[i], k);
      assert.equal(hits[i]?.flags, i);
    });
    assert.equal(hits[keys.length], undefined, 'no LIKE wildcards: a% is not a prefix match');
    assert.equal(hits[keys.length + 1], undefined);
    assert.deepEqual(hits[keys.length + 2]?.value, values[0]);
    assert.equal((await rows(raw, "SHOW TABLES LIKE 'mcmux_items'")).length, 1, 'the table survived');
    const [stored] = await rows(raw, 'SELECT `value` FROM mcmux_items WHERE `key` = ?', [b(keys[0] as string)]);
    assert.deepEqual(stored?.value, values[0], 'the raw row holds the literal bytes');
    for (const k of keys) assert.equal(await up.delete(k), 'DELETED');
  });

  await t.test('expired rows are never returned nor acted on, and add replaces them', async () => {
    const past = Date.now() - 1000;
    for (const k of ['e:1', 'e:2', 'e:3']) {
      await rows(raw, 'INSERT INTO mcmux_items VALUES (?, ?, 7, 12345, ?)', [b(k), b('stale'), past]);
    }
    assert.deepEqual(await up.get(['e:1', 'e:2', 'e:3']), [undefined, undefined, undefined]);
    assert.deepEqual(await up.get(['e:1'], Date.now() + DAY), [undefined], 'gat');
    const req = { key: 'e:1', value: b('x'), flags: 0, deadline: 0 };
    assert.equal((await up.store({ ...req, mode: 'replace' })).status, 'NOT_STORED');
    assert.equal((await up.store({ ...req, mode: 'append' })).status, 'NOT_STORED');
    assert.equal((await up.store({ ...req, mode: 'prepend' })).status, 'NOT_STORED');
    assert.equal((await up.store({ ...req, mode: 'cas', cas: 12345n })).status, 'NOT_FOUND');
    assert.equal(await up.touch('e:1', Date.now() + DAY), 'NOT_FOUND');
    assert.equal(await up.delete('e:1'), 'NOT_FOUND');
    assert.deepEqual(await up.arith('incr', 'e:1', 1n), { status: 'NOT_FOUND' });
    const added = await up.store({ ...req, mode: 'add', value: b('fresh'), flags: 3 });
    assert.equal(added.status, 'STORED');
    const hit = await getOne(up, 'e:1');
    assert.deepEqual([hit?.value.toString(), hit?.flags, hit?.deadline, hit?.cas], ['fresh', 3, 0, added.cas]);
    assert.equal((await up.store({ ...req, mode: 'add' })).status, 'NOT_STORED', 'now it is live');
    assert.equal((await rows(raw, "SELECT COUNT(*) AS n FROM mcmux_items WHERE `key` LIKE 'e:%'"))[0]?.n, '3');
  });

  await t.test('expired rows are purged in the background, in batches', async () => {
    const purger = other({ table: 'purge_items', 'purge-interval': '20', 'purge-batch': '2' });
    await purger.probe(); // creates the table; the purge starts once it exists
    const past = Date.now() - 1000;
    for (let i = 0; i < 7; i++) await rows(raw, 'INSERT INTO purge_items VALUES (?, ?, 0, 1, ?)', [b(`p:${i}`), b('old'), past]);
    await set(purger, 'p:live', 'v', 0, Date.now() + DAY);
    await set(purger, 'p:never', 'v', 0, 0);
    const count = async (): Promise<number> => Number((await rows(raw, 'SELECT COUNT(*) AS n FROM purge_items'))[0]?.n);
    for (let i = 0; i < 400 && (await count()) > 2; i++) await sleep(25);
    assert.deepEqual((await rows(raw, 'SELECT `key` FROM purge_items ORDER BY `key`')).map((r) => r.key.toString()), ['p:live', 'p:never']);
    assert.equal(purger.stats.requests, 3, 'background purges are not counted as requests');
  });

  await t.test('cas uniques: new for every write, shared by clients, never reused', async () => {
    const second = other();
    const seen = new Set<bigint>();
    const fresh = (cas: bigint | undefined): bigint => {
      assert.ok(cas !== undefined && cas > 0n);
      assert.ok(!seen.has(cas), `unique ${cas} seen before`);
      seen.add(cas);
      return cas;
    };
    const c1 = fresh(await set(up, 'u:k', '1'));
    assert.equal((await getOne(second, 'u:k'))?.cas, c1, 'the cas a store returns is the one a get reports');
    const c2 = fresh(await set(second, 'u:k', '2'));
    assert.equal((await up.store({ mode: 'cas', key: 'u:k', value: b('x'), flags: 0, deadline: 0, cas: c1 })).status, 'EXISTS');
    const appended = await up.store({ mode: 'append', key: 'u:k', value: b('0'), flags: 0, deadline: 0 });
    const c3 = fresh(appended.cas);
    assert.equal((await getOne(up, 'u:k'))?.cas, c3);
    const incr = await second.arith('incr', 'u:k', 1n);
    assert.deepEqual({ ...incr, cas: undefined }, { status: 'OK', value: 21n, cas: undefined });
    const c4 = fresh((await getOne(up, 'u:k'))?.cas);
    assert.equal(incr.status === 'OK' ? incr.cas : undefined, c4, 'incr answers the unique it made');
    assert.equal(await up.touch('u:k', Date.now() + DAY), 'TOUCHED');
    assert.equal((await second.get(['u:k'], Date.now() + 2 * DAY))[0]?.cas, c4, 'gat keeps the cas');
    assert.equal((await getOne(up, 'u:k'))?.cas, c4, 'touch and gat keep the cas');
    assert.equal(await up.delete('u:k'), 'DELETED');
    fresh((await second.store({ mode: 'add', key: 'u:k', value: b('again'), flags: 0, deadline: 0 })).cas);
    for (const old of [c1, c2, c3, c4]) {
      assert.equal((await up.store({ mode: 'cas', key: 'u:k', value: b('x'), flags: 0, deadline: 0, cas: old })).status, 'EXISTS');
    }
    const many = await Promise.all(Array.from({ length: 200 }, (_, i) => set(i % 2 ? up : second, `u:${i % 10}`, `${i}`)));
    for (const cas of many) fresh(cas);
  });

  await t.test('touch to the same deadline is TOUCHED; gat on several keys', async () => {
    const deadline = Date.now() + DAY;
    await set(up, 't:a', 'a', 0, deadline);
    assert.equal(await up.touch('t:a', deadline), 'TOUCHED', 'no row changed, but the key exists');
    await set(up, 't:b', 'b');
    const later = Date.now() + 2 * DAY;
    const hits = await up.get(['t:a', 't:none', 't:b', 't:a'], later);
    assert.deepEqual(hits.map((h) => [h?.value.toString(), h?.deadline]), [['a', later], [undefined, undefined], ['b', later], ['a', later]]);
    for (const k of ['t:a', 't:b']) assert.equal((await getOne(up, k))?.deadline, later);
    const gone = await up.get(['t:a', 't:b'], EXPIRED);
    assert.deepEqual(gone.map((h) => h?.value.toString()), ['a', 'b'], 'gat to the past returns the values once');
    assert.deepEqual(await up.get(['t:a', 't:b']), [undefined, undefined]);
  });

  await t.test('append beyond the item limit is NOT_STORED (as memcached answers) and the value kept', async () => {
    const small = other({}, { defaultTimeoutMs: 2000, maxItemSize: 1000 });
    await set(small, 'big:k', Buffer.alloc(900, 0x61));
    assert.equal((await small.store({ mode: 'append', key: 'big:k', value: Buffer.alloc(200), flags: 0, deadline: 0 })).status, 'NOT_STORED');
    assert.equal((await getOne(small, 'big:k'))?.value.length, 900);
    assert.equal((await small.store({ mode: 'prepend', key: 'big:k', value: Buffer.alloc(100, 0x62), flags: 0, deadline: 0 })).status, 'STORED');
    assert.equal((await getOne(small, 'big:k'))?.value.length, 1000);
  });

  await t.test('a max_allowed_packet below the item limit is refused, naming the setting', async () => {
    const huge = other({}, { defaultTimeoutMs: 2000, maxItemSize: 64 * 1024 * 1024 });
    await assert.rejects(huge.probe(), (err) => {
      assert.equal(codeOf(err), ErrorCodes.UPSTREAM_REFUSED);
      assert.match((err as Error).message, /max_allowed_packet is 16777216 bytes/);
      return true;
    });
  });

  await t.test('a multi-get of more keys than one IN list is aligned with its keys', async () => {
    const keys = Array.from({ length: 5000 }, (_, i) => `m:${i}`);
    const stored = keys.filter((_, i) => i % 3 === 0);
    // In slices of 200 requests at once.
    for (let i = 0; i < stored.length; i += 200) await Promise.all(stored.slice(i, i + 200).map((k) => set(up, k, `v${k}`)));
    const hits = await up.get(keys);
    hits.forEach((h, i) => assert.equal(h?.value.toString(), i % 3 === 0 ? `vm:${i}` : undefined));
  });

  await t.test('many concurrent requests over a small pool are paired correctly', async () => {
    const pool = other({ connections: '2', 'max-queue': '1000' }); // 300 at once
    const keys = Array.from({ length: 300 }, (_, i) => `c:${i}`);
    const value = (k: string) => b(`value of ${k} `.repeat(1 + (k.length % 7)));
    await Promise.all(keys.map((k, i) => pool.store({ mode: 'set', key: k, value: value(k), flags: i, deadline: 0 })));
    const [singles, counters] = await Promise.all([
      Promise.all(keys.map((k) => getOne(pool, k))),
      Promise.all(keys.slice(0, 50).map(async (k) => {
        await set(pool, `${k}:n`, '0');
        return pool.arith('incr', `${k}:n`, 5n);
      })),
    ]);
    singles.forEach((hit, i) => {
      assert.deepEqual(hit?.value, value(keys[i] as string));
      assert.equal(hit?.flags, i);
    });
    assert.ok(counters.every((r) => r.status === 'OK' && r.value === 5n));
    assert.equal(pool.stats.timeouts, 0);
    assert.equal(pool.stats.errors, 0);
    assert.ok(pool.stats.requests >= 700);
    assert.ok(pool.stats.latencyCount >= 700 && pool.stats.latencyUsSum > 0);
  });

  await t.test('gets arriving together are one SELECT: each its own keys, counted as requests each', async () => {
    const status = async (name: string): Promise<number> => Number((await rows(raw, `SHOW GLOBAL STATUS LIKE '${name}'`))[0]?.Value);
    const pool = other({ connections: '4', 'max-queue': '1000' });
    await pool.probe();
    await Promise.all(Array.from({ length: 50 }, (_, i) => pool.store({ mode: 'set', key: `read:${i}`, value: b(`r${i}`), flags: i, deadline: 0 })));
    const requests = pool.stats.requests;
    const before = await status('Com_stmt_execute');
    // 50 one-key gets and a two-key one in one event-loop pass, as 50 clients' gets arrive.
    const gets = [...Array.from({ length: 50 }, (_, i) => pool.get([`read:${i}`])), pool.get(['read:7', 'read:none'])];
    const got = await Promise.all(gets);
    const statements = (await status('Com_stmt_execute')) - before;
    t.diagnostic(`51 gets in ${statements} statements`);
    assert.ok(statements <= 2, `${statements} statements for 51 gets: not gathered`);
    got.slice(0, 50).forEach((hits, i) => assert.deepEqual([hits.length, hits[0]?.value.toString(), hits[0]?.flags], [1, `r${i}`, i]));
    assert.deepEqual(got[50]?.map((h) => h?.flags), [7, undefined]);
    assert.equal(pool.stats.requests - requests, 51, 'each get counts as a request');
    assert.equal(pool.stats.latencyCount, pool.stats.requests, 'and its latency');
  });

  await t.test('plain sets arriving together are written as one batch: few statements, each set its own unique, in order', async () => {
    const status = async (name: string): Promise<number> => Number((await rows(raw, `SHOW GLOBAL STATUS LIKE '${name}'`))[0]?.Value);
    const pool = other({ connections: '2', 'max-queue': '1000' });
    await pool.probe();
    const before = await status('Com_insert');
    // 300 sets in one event-loop pass, 10 of them to one key: 'dup' = d0, d1, ... d9 in order.
    const writes = Array.from({ length: 300 }, (_, i) =>
      i % 30 === 0
        ? pool.store({ mode: 'set', key: 'dup', value: b(`d${i / 30}`), flags: i, deadline: 0 })
        : pool.store({ mode: 'set', key: `batch:${i}`, value: b(`v${i}`), flags: i, deadline: 0 }),
    );
    const results = await Promise.all(writes);
    const statements = (await status('Com_insert')) - before;
    t.diagnostic(`300 sets in ${statements} INSERT statements`);
    assert.ok(statements <= 30, `${statements} INSERT statements for 300 sets: not batched`);
    const uniques = results.map((r) => {
      assert.equal(r.status, 'STORED');
      assert.equal(typeof r.cas, 'bigint');
      return r.cas as bigint;
    });
    assert.equal(new Set(uniques).size, 300, 'every set has its own unique, also the ten of one key');
    const dup = await getOne(up, 'dup');
    assert.equal(dup?.value.toString(), 'd9', 'the last set of the key wins');
    assert.equal(dup?.flags, 270);
    assert.equal(dup?.cas, uniques[270], 'and its unique is the one the last set answered');
    const hits = await up.get(Array.from({ length: 300 }, (_, i) => `batch:${i}`));
    hits.forEach((h, i) => {
      if (i % 30 !== 0) assert.deepEqual([h?.value.toString(), h?.flags, h?.cas], [`v${i}`, i, uniques[i]]);
    });
  });

  await t.test('a lone set is one autocommit statement; a batch of three is one INSERT', async () => {
    const status = async (names: string[]): Promise<number[]> => {
      const found = await rows(raw, `SHOW GLOBAL STATUS WHERE Variable_name IN (${names.map((n) => `'${n}'`).join(', ')})`);
      return names.map((n) => Number(found.find((r) => r.Variable_name === n)?.Value));
    };
    const names = ['Com_insert', 'Com_begin', 'Com_select'];
    const pool = other({ connections: '1' });
    await pool.probe();
    const before = await status(names);
    const lone: bigint[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await pool.store({ mode: 'set', key: `lone:${i}`, value: b(`l${i}`), flags: i, deadline: 0 });
      assert.equal(r.status, 'STORED');
      lone.push(r.cas as bigint);
    }
    const afterLone = await status(names);
    assert.deepEqual(afterLone.map((n, i) => n - (before[i] as number)), [5, 0, 0], 'five INSERTs, no transaction, no read-back');
    for (let i = 0; i < 5; i++) assert.equal((await getOne(up, `lone:${i}`))?.cas, lone[i], 'the unique answered is the stored one');
    const three = await Promise.all(['t1', 't2', 't3'].map((k) => pool.store({ mode: 'set', key: k, value: b(k), flags: 0, deadline: 0 })));
    const [inserts] = await status(names);
    assert.equal((inserts as number) - (afterLone[0] as number), 1, 'three sets of one pass: one INSERT of three rows');
    assert.equal(new Set(three.map((r) => r.cas)).size, 3);
  });

  await t.test('a batch whose uniques nobody wants is one autocommit INSERT, padded to a shape; only wanted uniques are read back', async () => {
    const names = ['Com_insert', 'Com_begin', 'Com_select', 'Com_commit'];
    const status = async (): Promise<number[]> => {
      const found = await rows(raw, `SHOW GLOBAL STATUS WHERE Variable_name IN (${names.map((n) => `'${n}'`).join(', ')})`);
      return names.map((n) => Number(found.find((r) => r.Variable_name === n)?.Value));
    };
    const pool = other({ connections: '1' });
    await pool.probe();
    // Each call's sets are made in one pass: one batch.
    const pass = (keys: string[], wanted: (k: string) => boolean, on = pool, value = (k: string) => b(k)) =>
      Promise.all(keys.map((k) => on.store({ mode: 'set', key: k, value: value(k), flags: 1, deadline: 0, withCas: wanted(k) })));
    const delta = async (run: () => Promise<unknown>): Promise<number[]> => {
      const before = await status();
      await run();
      return (await status()).map((n, i) => n - (before[i] as number));
    };

    let plain: Awaited<ReturnType<typeof pass>> = [];
    const fits = await delta(async () => (plain = await pass(['n1', 'n2', 'n3', 'n4'], () => false)));
    assert.deepEqual(fits, [1, 0, 0, 0], 'four rows, one shape, no unique wanted: one INSERT, no BEGIN, SELECT or COMMIT');
    assert.ok(plain.every((r) => r.status === 'STORED' && r.cas === undefined));
    const hits = await up.get(['n1', 'n2', 'n3', 'n4']);
    assert.equal(new Set(hits.map((h) => h?.cas)).size, 4, 'each row made its own unique');
    assert.deepEqual(hits.map((h) => h?.value.toString()), ['n1', 'n2', 'n3', 'n4']);

    // Five rows: the 8-row shape, the smallest row (p4) repeated three times.
    const five = ['p1', 'p2', 'p3', 'p4', 'p5'];
    const long = (k: string) => b(k === 'p4' ? k : `${k} `.repeat(20));
    const padded = await delta(() => pass(five, () => false, pool, long));
    assert.deepEqual(padded, [1, 0, 0, 0], 'five rows: one INSERT padded to eight, no transaction');
    const stored = await up.get(five);
    assert.deepEqual(stored.map((h) => h?.value.toString()), five.map((k) => long(k).toString()), 'each key holds its own set, once');
    assert.equal(new Set(stored.map((h) => h?.cas)).size, 5);

    // Rows go in key order whatever order the sets came in (one lock order for every batch, so
    // two batches cannot deadlock): UUID_SHORT() rises row by row, so the uniques rise with the keys.
    const descending = ['o4', 'o3', 'o2', 'o1'];
    await pass(descending, () => false);
    const uniques = (await up.get(['o1', 'o2', 'o3', 'o4'])).map((h) => h?.cas as bigint);
    assert.deepEqual([...uniques].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), uniques, 'written in key order');

    // Where the repeated rows would not fit the packet room (max-item-size), the rows go as
    // statements of the shapes, in one transaction.
    const tight = other({ connections: '1' }, { defaultTimeoutMs: 2000, maxItemSize: 1000 });
    await tight.probe();
    const r = ['r1', 'r2', 'r3', 'r4', 'r5'];
    const roomless = await delta(() => pass(r, () => false, tight, (k) => b(k.repeat(95))));
    assert.deepEqual(roomless, [2, 1, 0, 1], 'five rows of 192 bytes, room for 1000, not for eight: 4 + 1 rows in one transaction');
    assert.deepEqual((await up.get(r)).map((h) => h?.value.toString()), r.map((k) => k.repeat(95)));

    // A key set twice in one pass: two rounds in one transaction, still no read-back; the later set wins.
    const twice = await delta(() =>
      Promise.all(['first', 'second'].map((v) => pool.store({ mode: 'set', key: 'twice', value: b(v), flags: 0, deadline: 0, withCas: false }))),
    );
    assert.deepEqual(twice, [2, 1, 0, 1]);
    assert.equal((await getOne(up, 'twice'))?.value.toString(), 'second');

    let mixed: Awaited<ReturnType<typeof pass>> = [];
    const some = await delta(async () => (mixed = await pass(['m1', 'm2', 'm3', 'm4'], (k) => k === 'm2')));
    assert.deepEqual(some, [1, 1, 1, 1], 'one unique wanted: the transaction reads it back');
    assert.deepEqual(mixed.map((r) => r.cas !== undefined), [false, true, false, false]);
    assert.equal(mixed[1]?.cas, (await getOne(up, 'm2'))?.cas, 'the unique answered is the stored one');
  });

  await t.test('max-queue counts each set of a batch: the third of three at once with max-queue 2 is BUSY', async () => {
    const small = other({ 'max-queue': '2', connections: '1' });
    await small.probe();
    const results = await Promise.allSettled(['q1', 'q2', 'q3'].map((k) => small.store({ mode: 'set', key: k, value: b(k), flags: 0, deadline: 0 })));
    assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value.status : codeOf(r.reason))), ['STORED', 'STORED', ErrorCodes.UPSTREAM_BUSY]);
    assert.equal((await small.store({ mode: 'set', key: 'q3', value: b('q3'), flags: 0, deadline: 0 })).status, 'STORED');
  });

  await t.test('concurrent incr and append from two clients lose no update', async () => {
    const second = other();
    await set(up, 'race:n', '0');
    await set(up, 'race:s', '');
    const clients = [up, second];
    const results = await Promise.all([
      ...Array.from({ length: 100 }, (_, i) => clients[i % 2]?.arith('incr', 'race:n', 1n)),
      ...Array.from({ length: 40 }, (_, i) => clients[i % 2]?.store({ mode: 'append', key: 'race:s', value: b(`<${i}>`), flags: 0, deadline: 0 })),
    ]);
    const counts = results.slice(0, 100).map((r) => (r && 'value' in r ? Number(r.value) : -1));
    assert.deepEqual(counts.sort((x, y) => x - y), Array.from({ length: 100 }, (_, i) => i + 1), 'every incr saw its own value');
    assert.equal((await getOne(up, 'race:n'))?.value.toString(), '100');
    const s = (await getOne(second, 'race:s'))?.value.toString() ?? '';
    for (let i = 0; i < 40; i++) assert.ok(s.includes(`<${i}>`), `append ${i} kept`);
    assert.equal(s.length, Array.from({ length: 40 }, (_, i) => `<${i}>`).join('').length);
  });

  await t.test('passwords never appear in names or errors', async () => {
    const wrongPassword = 'Wr0ng-Pa55word';
    assert.ok(!up.name.includes(MARIADB_PASSWORD) && !up.name.includes(encodeURIComponent(MARIADB_PASSWORD)));
    assert.match(up.name, /^mysql:\/\/mcmux:\*\*\*@127\.0\.0\.1:\d+\/mcmux$/);
    const bad = open(db.url.replace(encodeURIComponent(MARIADB_PASSWORD), wrongPassword));
    others.push(bad);
    assert.ok(!bad.name.includes(wrongPassword));
    // Refused at the handshake: the store is unusable for every key (UNREACHABLE, which health
    // counts), not one request refused (review-h14 finding 1).
    await assert.rejects(bad.probe(), (err) => {
      assert.equal(codeOf(err), ErrorCodes.UPSTREAM_UNREACHABLE);
      const message = (err as Error).message;
      assert.match(message, /Access denied for user 'mcmux'/);
      assert.ok(!message.includes(wrongPassword), message);
      assert.ok(message.includes(bad.name), 'named by the masked URL');
      return true;
    });
    const noDb = open(db.url.replace(/\/mcmux$/, '/no_such_db'));
    others.push(noDb);
    await assert.rejects(noDb.probe(), (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE && !(err as Error).message.includes(MARIADB_PASSWORD));
  });

  await t.test('flush empties the table; close rejects pending and later requests with CLOSED', async () => {
    await set(up, 'f:k', 'v');
    await up.flush();
    assert.equal(Number((await rows(raw, 'SELECT COUNT(*) AS n FROM mcmux_items'))[0]?.n), 0);
    const closing = other();
    await closing.probe();
    const pending = assert.rejects(closing.get(['f:k']), (err) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
    await closing.close();
    await pending;
    await assert.rejects(closing.probe(), (err) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
  });

  await t.test('max-queue refuses requests beyond the bound with BUSY, and takes new ones once they settle', async () => {
    await assertMaxQueueOfTwo(other({ 'max-queue': '2', connections: '1' }));
    assert.throws(() => open(db.url, { 'max-queue': '0' }), ConfigError);
  });
});

test('an unreachable server fails at once as unreachable: nothing was sent', async () => {
  const up = open(`mysql://u:p@127.0.0.1:${await freePort()}/db`, { timeout: '60000' });
  try {
    await assert.rejects(up.probe(), (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE);
    await assert.rejects(up.get(['k']), (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE);
    assert.equal(up.stats.errors, 2);
  } finally {
    await up.close();
  }
});

test('a stopped server gives fast unsent errors; restarted, it is used again with its data', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  const db = await startMariadb();
  // A long timeout: a request that waited for the dead server instead of failing fast would
  // outlive the subtest's timeout below.
  const up = open(db.url, { timeout: '60000' });
  t.after(async () => {
    await up.close();
    await db.destroy();
  });
  await set(up, 'k', 'before');
  await Promise.all([getOne(up, 'k'), getOne(up, 'k'), getOne(up, 'k')]); // several pooled connections

  await db.stop();
  await t.test('requests fail unsent while it is down', { timeout: 10_000 }, async () => {
    for (let i = 0; i < 20; i++) {
      // Its pooled connections are gone with it: each request finds no connection to send on
      // (the first may still have taken one whose close the pool had not yet seen).
      const expected = i === 0 ? [ErrorCodes.UPSTREAM_UNREACHABLE, ErrorCodes.UPSTREAM_IO] : [ErrorCodes.UPSTREAM_UNREACHABLE];
      await assert.rejects(getOne(up, 'k'), (err) => expected.includes(codeOf(err) as 'MCMUX_UPSTREAM_IO'), `request ${i}`);
    }
  });

  await db.restart();
  t.diagnostic(`restarted in ${db.startupMs} ms`);
  const hit = await retrying(
    () => getOne(up, 'k'),
    (err) => assert.equal(codeOf(err), ErrorCodes.UPSTREAM_UNREACHABLE),
  );
  assert.equal(hit?.value.toString(), 'before', 'the data survived the restart');
  await set(up, 'k', 'after');
  assert.equal((await getOne(up, 'k'))?.value.toString(), 'after');
});

test('a paused server times out in bounded time; resumed, every answer is its own', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
  const db = await startMariadb();
  const up = open(db.url, { timeout: '300' });
  t.after(async () => {
    db.resume();
    await up.close();
    await db.destroy();
  });
  const keys = Array.from({ length: 20 }, (_, i) => `k${i + 1}`);
  await Promise.all(keys.map((k) => set(up, k, `value of ${k}`)));
  await set(up, 'n', '10');
  const frozen = open(db.url, { timeout: '300' });
  await frozen.probe();
  const single = open(db.url, { timeout: '300', connections: '1' });
  t.after(() => single.close());
  await single.probe();

  db.pause();
  await t.test('every request settles with TIMEOUT (or IO) while it is frozen', { timeout: 10_000 }, async () => {
    const results = await Promise.allSettled<unknown>([
      ...keys.map((k) => getOne(up, k)),
      set(up, 'k1', 'written while paused'),
      up.arith('incr', 'n', 1n),
      up.get(keys.slice(0, 5), Date.now() + DAY),
      up.probe(),
    ]);
    const codes = results.map((r) => (r.status === 'rejected' ? codeOf(r.reason) : 'fulfilled'));
    assert.ok(codes.every((c) => c === ErrorCodes.UPSTREAM_TIMEOUT || c === ErrorCodes.UPSTREAM_IO), codes.join());
    assert.ok(codes.includes(ErrorCodes.UPSTREAM_TIMEOUT));
    // close() does not wait for QUIT answers that will not come; it fails what is pending.
    const pending = frozen.get(['k1']);
    await frozen.close();
    await assert.rejects(pending, (err) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
    // Requests arriving while the pool is still full of frozen connections time out too.
    await assert.rejects(getOne(up, 'k2'), (err) => [ErrorCodes.UPSTREAM_TIMEOUT, ErrorCodes.UPSTREAM_IO].includes(codeOf(err) as 'MCMUX_UPSTREAM_IO'));
    // A set waiting for a batch while the only connection carries a frozen one times out in turn.
    const stuck = set(single, 'k3', 'in the frozen batch');
    await new Promise((r) => setImmediate(r));
    const waiting = set(single, 'k4', 'waiting for a connection');
    const settled = await Promise.allSettled([stuck, waiting]);
    assert.deepEqual(settled.map((r) => (r.status === 'rejected' ? codeOf(r.reason) : 'fulfilled')), [ErrorCodes.UPSTREAM_TIMEOUT, ErrorCodes.UPSTREAM_TIMEOUT]);
    // A delete and an incr of a key whose set is frozen wait their turn behind it (a key's writes
    // land in order), and time out with it rather than wait for ever.
    const frozenSet = set(single, 'k5', 'in the frozen batch');
    await new Promise((r) => setImmediate(r));
    const behind = await Promise.allSettled([frozenSet, single.delete('k5'), single.arith('incr', 'k5', 1n)]);
    assert.deepEqual(behind.map((r) => (r.status === 'rejected' ? codeOf(r.reason) : 'fulfilled')), [ErrorCodes.UPSTREAM_TIMEOUT, ErrorCodes.UPSTREAM_TIMEOUT, ErrorCodes.UPSTREAM_TIMEOUT]);
  });
  assert.ok(up.stats.timeouts >= 1);
  db.resume();

  const first = await retrying(
    () => getOne(up, 'k2'),
    (err) => assert.ok([ErrorCodes.UPSTREAM_IO, ErrorCodes.UPSTREAM_TIMEOUT].includes(codeOf(err) as 'MCMUX_UPSTREAM_IO')),
  );
  assert.equal(first?.value.toString(), 'value of k2');
  for (let round = 0; round < 5; round++) {
    const hits = await Promise.all(keys.map((k) => getOne(up, k)));
    hits.forEach((h, i) => {
      // A write that timed out may still have been applied once the server woke up: either
      // value is right for k1, and nothing else may appear anywhere.
      const allowed = i === 0 ? ['value of k1', 'written while paused'] : [`value of ${keys[i]}`];
      assert.ok(allowed.includes(h?.value.toString() ?? ''), `${keys[i]}: ${h?.value.toString()}`);
    });
    const n = (await getOne(up, 'n'))?.value.toString();
    assert.ok(n === '10' || n === '11', `n = ${n}`);
  }
});
