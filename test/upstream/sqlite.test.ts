import assert from 'node:assert/strict';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { EXPIRED } from '../../src/command/command';
import { ConfigError, ErrorCodes, McmuxError } from '../../src/errors';
import { createUpstream } from '../../src/upstream/registry';
import { type SqliteUpstream, createSqliteUpstream, sqlitePathFromUrl } from '../../src/upstream/sqlite';
import { ctx, fixture, sqliteUrl } from '../helpers/sqlite-fixture';

const FORMS = /sqlite:\/\/\/absolute\/path\/file\.db or sqlite:\/\/\.\/relative/;
const b = (s: string): Buffer => Buffer.from(s, 'latin1');

function codeOf(err: unknown): string {
  return err instanceof McmuxError ? err.code : String(err);
}

const set = (u: SqliteUpstream, key: string, value: string | Buffer, flags = 0, deadline = 0) =>
  u.store({ mode: 'set', key, value: typeof value === 'string' ? b(value) : value, flags, deadline });

test('URL forms: absolute, ./relative, percent-escapes; ambiguous forms name the expected form', () => {
  const where = 'upstream test';
  const path = (s: string): string => sqlitePathFromUrl(new URL(s), where, '/srv/app');
  assert.equal(path('sqlite:///var/lib/mcmux/s.db'), '/var/lib/mcmux/s.db');
  assert.equal(path('sqlite://./data/s.db'), '/srv/app/data/s.db');
  assert.equal(path('sqlite://./s.db'), '/srv/app/s.db');
  assert.equal(path('sqlite:///tmp/a%20b/s.db'), '/tmp/a b/s.db');
  for (const bad of [
    'sqlite://data/s.db', // a host: a directory or a server?
    'sqlite://localhost/s.db',
    'sqlite://../s.db',
    'sqlite:////var/s.db', // SQLAlchemy's absolute form
    'sqlite:///s.db', // SQLAlchemy's relative form (would be /s.db here)
    'sqlite:s.db',
    'sqlite://',
    'sqlite:///',
    'sqlite:///var/lib/',
    'sqlite://./',
    'sqlite:///var/s.db#x',
    'sqlite://user@./s.db',
    'sqlite://.:5/s.db',
    'sqlite:///var/a%00b.db',
    'sqlite:///var/a%zzb.db',
  ]) {
    assert.throws(() => path(bad), (err: unknown) => err instanceof ConfigError && FORMS.test(err.message), bad);
  }
  // Through the scheme table, as the config loader calls it.
  assert.throws(() => createUpstream('sqlite://data/s.db', new Map(), ctx), ConfigError);
});

test('options: defaults, validation, unknown options refused; the parent directory is created private', async (t) => {
  const f = fixture(t);
  const nested = join(f.dir, 'a', 'b', 'store.db');
  const u = createUpstream(`${sqliteUrl(nested)}?table=sessions&synchronous=full&timeout=250`, new Map(), ctx) as SqliteUpstream;
  t.after(() => u.close());
  assert.equal(u.scheme, 'sqlite');
  assert.equal(u.name, `${sqliteUrl(nested)}?table=sessions&synchronous=full&timeout=250`);
  assert.equal(u.timeoutMs, 250);
  assert.equal(u.options.synchronous, 'full');
  assert.equal(u.options.table, 'sessions');
  assert.equal(statSync(join(f.dir, 'a')).mode & 0o777, 0o700);
  assert.equal(statSync(join(f.dir, 'a', 'b')).mode & 0o777, 0o700);
  assert.equal(statSync(nested).mode & 0o777, 0o600);

  const d = f.open();
  assert.deepEqual(
    [d.timeoutMs, d.options.table, d.options.synchronous, d.options.purgeIntervalMs, d.options.purgeBatch],
    [1000, 'mcmux_items', 'normal', 60000, 1000],
  );
  const withGlobal = createSqliteUpstream(new URL(f.url), new Map(), { defaultTimeoutMs: 300, maxItemSize: 1 });
  t.after(() => withGlobal.close());
  assert.equal(withGlobal.timeoutMs, 300, 'the global --timeout is the default');

  const refused: Array<[string, string, RegExp]> = [
    ['tabel', 'x', /unknown option "tabel": expected one of table, purge-interval/],
    ['table', 'x;drop table y', /option table=.*expected letters, digits and _/],
    ['table', '1abc', /option table/],
    ['table', 'a"b', /option table/],
    ['table', 'sqlite_master', /option table/],
    ['table', 'x'.repeat(60), /option table/],
    ['purge-interval', '0', /purge-interval="0" is invalid: expected an integer from 10/],
    ['purge-interval', '1e3', /purge-interval/],
    ['purge-batch', '0', /purge-batch/],
    ['synchronous', 'off', /synchronous="off" is invalid: expected normal or full/],
    ['synchronous', 'FULL', /synchronous/],
    ['timeout', '0', /timeout/],
  ];
  for (const [name, value, message] of refused) {
    assert.throws(() => f.open({ [name]: value }), (err: unknown) => err instanceof ConfigError && message.test(err.message), `${name}=${value}`);
  }
});

test('a file that cannot be a database, or a table of another shape, is a ConfigError at start-up', (t) => {
  const f = fixture(t);
  mkdirSync(join(f.dir, 'dir.db'));
  assert.throws(
    () => createSqliteUpstream(new URL(sqliteUrl(join(f.dir, 'dir.db'))), new Map(), ctx),
    (err: unknown) => err instanceof ConfigError && /cannot open .*dir\.db/.test(err.message),
  );
  // A FIFO there (which a plain open would wait on for ever): test/cli/cli.test.ts, in a process of its own.
  const raw = f.raw();
  raw.exec('CREATE TABLE other (id INTEGER PRIMARY KEY, body TEXT)');
  assert.throws(() => f.open({ table: 'other' }), (err: unknown) => err instanceof ConfigError && /no such column/.test(err.message));
  assert.ok(f.open({ table: 'fresh' }), 'another table in the same file opens');
});

test('WAL mode, the documented schema and the partial index on exp', (t) => {
  const f = fixture(t);
  f.open();
  const raw = f.raw();
  assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
  const columns = raw.prepare('SELECT name, type, pk FROM pragma_table_info(?)').all('mcmux_items');
  assert.deepEqual(columns, [
    { name: 'key', type: 'BLOB', pk: 1 },
    { name: 'value', type: 'BLOB', pk: 0 },
    { name: 'flags', type: 'INTEGER', pk: 0 },
    { name: 'cas', type: 'INTEGER', pk: 0 },
    { name: 'exp', type: 'INTEGER', pk: 0 },
  ]);
  const plan = raw
    .prepare('EXPLAIN QUERY PLAN SELECT rowid FROM mcmux_items WHERE exp > 0 AND exp <= ? LIMIT ?')
    .all(1, 1) as Array<{ detail: string }>;
  assert.match(plan.map((p) => p.detail).join('\n'), /mcmux_items_exp/);
});

test('data and cas uniques survive closing and reopening the file (an mcmux restart)', async (t) => {
  const f = fixture(t);
  const deadline = Date.now() + 3_600_000;
  const value = Buffer.from([0, 13, 10, 255, 128, 0]);
  const first = f.open({ synchronous: 'full' });
  const stored = await Promise.all([set(first, 'bin', value, 4294967295, deadline), set(first, 'text', 'hello', 7)]);
  await first.close();
  await assert.rejects(first.get(['text']), (err: unknown) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);

  const again = f.open();
  const [bin, text] = await again.get(['bin', 'text']);
  assert.deepEqual(bin?.value, value);
  assert.equal(bin?.flags, 4294967295);
  assert.equal(bin?.deadline, deadline);
  assert.equal(bin?.cas, stored[0]?.cas);
  assert.equal(text?.value.toString(), 'hello');
  const maxOld = stored.reduce((m, r) => (r.cas !== undefined && r.cas > m ? r.cas : m), 0n);
  const fresh = await set(again, 'text', 'again');
  assert.ok(fresh.cas !== undefined && fresh.cas > maxOld, `a new version gets a new unique: ${fresh.cas} > ${maxOld}`);
  // A client holding the old unique must not overwrite the new version.
  const old = await again.store({ mode: 'cas', key: 'text', value: b('x'), flags: 0, deadline: 0, cas: text?.cas });
  assert.equal(old.status, 'EXISTS');
});

test('close() runs the queued batch first, then refuses', async (t) => {
  const f = fixture(t);
  const u = f.open();
  const pending = set(u, 'k', 'v');
  const closed = u.close();
  assert.equal((await pending).status, 'STORED');
  await closed;
  await assert.rejects(set(u, 'k', 'w'), (err: unknown) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
  const again = f.open();
  assert.equal((await again.get(['k']))[0]?.value.toString(), 'v');
});

test('expired rows are never returned, and every command treats them as absent', async (t) => {
  const f = fixture(t);
  const u = f.open();
  await set(u, 'seed', 'x'); // creates the schema before the raw insert below
  const raw = f.raw();
  const insert = raw.prepare('INSERT INTO mcmux_items (key, value, flags, cas, exp) VALUES (?, ?, 0, 99, ?)');
  for (const k of ['g', 'a', 't', 'd', 'i', 'p', 'r', 'c']) insert.run(b(k), b('1'), Date.now() - 1000);
  assert.deepEqual(await u.get(['g', 'g']), [undefined, undefined]);
  assert.deepEqual(await u.get(['g'], Date.now() + 60_000), [undefined], 'gat does not revive');
  assert.equal(await u.touch('t', Date.now() + 60_000), 'NOT_FOUND');
  assert.equal(await u.delete('d'), 'NOT_FOUND');
  assert.deepEqual(await u.arith('incr', 'i', 1n), { status: 'NOT_FOUND' });
  assert.equal((await u.store({ mode: 'append', key: 'p', value: b('x'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
  assert.equal((await u.store({ mode: 'replace', key: 'r', value: b('x'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
  assert.equal((await u.store({ mode: 'cas', key: 'c', value: b('x'), flags: 0, deadline: 0, cas: 99n })).status, 'NOT_FOUND');
  assert.equal((await u.store({ mode: 'add', key: 'a', value: b('new'), flags: 0, deadline: 0 })).status, 'STORED');
  assert.equal((await u.get(['a']))[0]?.value.toString(), 'new');
});

test('expired rows are purged in the background, in bounded batches', async (t) => {
  const f = fixture(t);
  const u = f.open({ 'purge-interval': '20', 'purge-batch': '3' });
  const soon = Date.now() + 300;
  await Promise.all(Array.from({ length: 10 }, (_, i) => set(u, `e${i}`, 'v', 0, soon)));
  await set(u, 'forever', 'v');
  await set(u, 'later', 'v', 0, Date.now() + 3_600_000);
  const raw = f.raw();
  const count = raw.prepare('SELECT count(*) AS n FROM mcmux_items');
  // Bounded poll: the purge has no event to wait on.
  for (let i = 0; i < 200 && (count.get() as { n: number }).n > 2; i++) await sleep(10);
  assert.equal((count.get() as { n: number }).n, 2);
  assert.equal(u.purged, 10);
  assert.deepEqual((await u.get(['forever', 'later'])).map((h) => h?.value.toString()), ['v', 'v']);
});

test('one turn of operations is one transaction, each op getting its own result', async (t) => {
  const f = fixture(t);
  const u = f.open();
  await u.probe();
  const before = u.transactions;
  const n = 1000;
  const sets = Array.from({ length: n }, (_, i) => set(u, `k${i}`, `value-${i}`, i));
  const gets = Array.from({ length: n }, (_, i) => u.get([`k${i}`]));
  const [stored, read] = await Promise.all([Promise.all(sets), Promise.all(gets)]);
  assert.equal(u.transactions - before, 1, 'one transaction for the whole turn');
  assert.ok(stored.every((r) => r.status === 'STORED'));
  assert.equal(new Set(stored.map((r) => r.cas)).size, n, 'a distinct unique per write');
  read.forEach(([h], i) => {
    assert.equal(h?.value.toString(), `value-${i}`, 'a get queued after a set of the same turn sees it');
    assert.equal(h?.flags, i);
    assert.equal(h?.cas, stored[i]?.cas);
  });

  await set(u, 'n', '0');
  const mid = u.transactions;
  const incrs = await Promise.all(Array.from({ length: 100 }, () => u.arith('incr', 'n', 1n)));
  assert.equal(u.transactions - mid, 1);
  assert.deepEqual(incrs.map((r) => (r.status === 'OK' ? Number(r.value) : -1)), Array.from({ length: 100 }, (_, i) => i + 1));
  assert.equal((await u.get(['n']))[0]?.value.toString(), '100');

  // Per-key order within one transaction: every op sees the ones called before it.
  const seq = await Promise.all([
    set(u, 'o', 'a'),
    u.store({ mode: 'append', key: 'o', value: b('b'), flags: 0, deadline: 0 }),
    u.get(['o']),
    u.delete('o'),
    u.get(['o']),
    u.store({ mode: 'add', key: 'o', value: b('c'), flags: 0, deadline: 0 }),
    u.store({ mode: 'add', key: 'o', value: b('d'), flags: 0, deadline: 0 }),
    u.get(['o']),
  ]);
  assert.deepEqual(
    seq.map((r) => (Array.isArray(r) ? r[0]?.value.toString() ?? 'miss' : typeof r === 'string' ? r : r.status)),
    ['STORED', 'STORED', 'ab', 'DELETED', 'miss', 'STORED', 'NOT_STORED', 'c'],
  );
  assert.equal(u.stats.requests, u.stats.latencyCount);
  assert.equal(u.stats.errors, 0);
});

test('keys holding quotes and SQL fragments are stored literally, byte for byte', async (t) => {
  const f = fixture(t);
  const u = f.open();
  const keys = ["'; DROP TABLE mcmux_items; --", 'x\' OR \'1\'=\'1', 'a"b', 'a%', 'a_', 'a', '\xff\xfe\x80', '*'];
  await Promise.all(keys.map((k, i) => set(u, k, `v${i}`)));
  const hits = await u.get([...keys, 'a%b', 'x']);
  assert.deepEqual(hits.map((h) => h?.value.toString()), [...keys.map((_, i) => `v${i}`), undefined, undefined]);
  const raw = f.raw();
  const stored = (raw.prepare('SELECT key FROM mcmux_items ORDER BY key').all() as Array<{ key: Buffer }>).map((r) => r.key);
  assert.deepEqual(stored, keys.map(b).sort(Buffer.compare));
  assert.equal(await u.delete("x' OR '1'='1"), 'DELETED');
  assert.equal((await u.get(['a']))[0]?.value.toString(), 'v5', 'other keys untouched');
});

test('a failing batch rolls back and rejects every op in it with UPSTREAM_IO naming the cause', async (t) => {
  const f = fixture(t);
  const u = f.open();
  await set(u, 'kept', 'old');
  // Another connection makes one insert fail, as a full disk would fail it.
  f.raw().exec(`CREATE TRIGGER boom BEFORE INSERT ON mcmux_items WHEN NEW.key = X'626f6f6d'
    BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END`);
  const errors = u.stats.errors;
  const results = await Promise.allSettled([set(u, 'kept', 'new'), set(u, 'boom', 'x'), u.get(['kept'])]);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    assert.equal(codeOf(r.reason), ErrorCodes.UPSTREAM_IO);
    assert.match((r.reason as Error).message, /rolled back: SQLITE_CONSTRAINT\w*: simulated disk full/);
  }
  assert.equal(u.stats.errors - errors, 3);
  assert.equal((await u.get(['kept']))[0]?.value.toString(), 'old', 'nothing of the failed batch was applied');
});

test('a write lock held by another connection is waited for on a timer, not in SQLite', async (t) => {
  const f = fixture(t);
  const u = f.open({ timeout: '300' });
  await u.probe();
  const other = f.raw();
  let ticks = 0;
  let threeTicks!: () => void;
  const turned = new Promise<void>((r) => (threeTicks = r));
  const ticker = setInterval(() => {
    if (++ticks === 3) threeTicks();
  }, 5);
  t.after(() => clearInterval(ticker));

  other.exec('BEGIN IMMEDIATE');
  let settled = false;
  const pending = set(u, 'k', 'v').finally(() => (settled = true));
  const read = u.get(['k']);
  // A lock waited for inside SQLite (busy_timeout) would block the loop: no tick until it ends.
  await turned;
  assert.equal(settled, false, 'the event loop turned three times while the write waited for the lock');
  other.exec('COMMIT');
  assert.equal((await pending).status, 'STORED');
  assert.equal((await read)[0]?.value.toString(), 'v');
  assert.ok(u.busyRetries > 0);

  other.exec('BEGIN IMMEDIATE');
  const timeouts = u.stats.timeouts;
  await assert.rejects(set(u, 'k', 'w'), (err: unknown) =>
    codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE && /SQLITE_BUSY.*300 ms \(option timeout\)/.test((err as Error).message));
  assert.equal(u.stats.timeouts - timeouts, 1);
  other.exec('ROLLBACK');
  assert.equal((await u.get(['k']))[0]?.value.toString(), 'v');
});

test('two threads, two connections, racing adds on the same keys: exactly one wins each', { timeout: 60_000 }, async (t) => {
  const f = fixture(t);
  f.open(); // schema first, so both workers race on the data only
  // Each worker queues round 0 while the test holds the write lock, says so once it has hit the
  // lock (busyRetries > 0), then runs every round as fast as it can: round 0 is a guaranteed
  // race for the lock, the others race as the scheduler lets them.
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { createSqliteUpstream } = require(workerData.module);
    const u = createSqliteUpstream(new URL(workerData.url), new Map([['timeout', '20000']]), { maxItemSize: 1 });
    const round = (r) => {
      const keys = Array.from({ length: 100 }, (_, i) => 'r' + r + ':' + i);
      return Promise.all(keys.map((key) => u.store({ mode: 'add', key, value: Buffer.from(workerData.id), flags: 0, deadline: 0 })))
        .then((rs) => rs.map((res, i) => [keys[i], res.status, res.cas === undefined ? '' : res.cas.toString()]));
    };
    parentPort.once('message', async () => {
      const first = round(0);
      for (let i = 0; i < 5000 && u.busyRetries === 0; i++) await new Promise((r) => setTimeout(r, 1));
      parentPort.postMessage('waiting');
      const out = await first;
      for (let r = 1; r < 10; r++) out.push(...(await round(r)));
      const busy = u.busyRetries;
      await u.close();
      parentPort.postMessage({ out, busy });
    });
    parentPort.postMessage('ready');`;
  const module = require.resolve('../../src/upstream/sqlite');
  const workers = ['A', 'B'].map((id) => new Worker(code, { eval: true, workerData: { module, url: f.url, id } }));
  t.after(() => Promise.all(workers.map((w) => w.terminate())));
  const next = <T>(): Promise<T[]> => Promise.all(workers.map((w) => new Promise<T>((r, j) => w.once('message', r).once('error', j))));
  await next<string>(); // ready
  const lock = f.raw();
  lock.exec('BEGIN IMMEDIATE');
  const waiting = next<string>();
  for (const w of workers) w.postMessage('go');
  await waiting;
  const results = next<{ out: Array<[string, string, string]>; busy: number }>();
  lock.exec('COMMIT');
  const done = await results;
  const winners = new Map<string, number>();
  const uniques = new Set<string>();
  for (const [key, status, cas] of done.flatMap((d) => d.out)) {
    if (status !== 'STORED') continue;
    winners.set(key, (winners.get(key) ?? 0) + 1);
    assert.ok(!uniques.has(cas), `cas ${cas} handed out twice across connections`);
    uniques.add(cas);
  }
  assert.equal(winners.size, 1000);
  assert.ok([...winners.values()].every((n) => n === 1));
  assert.ok(done.every((d) => d.busy > 0), 'both workers waited for the lock at least once');
  t.diagnostic(`lock contention: ${done.map((d) => d.busy).join(' + ')} busy retries`);
  assert.ok(!existsSync(`${f.file}-journal`), 'WAL mode: no rollback journal');
});

test('a set, touch or gat with a past deadline leaves the key absent', async (t) => {
  const f = fixture(t);
  const u = f.open();
  await Promise.all([set(u, 'a', '1'), set(u, 'b', '2'), set(u, 'c', '3')]);
  const [sa, tb, [gc]] = await Promise.all([set(u, 'a', 'x', 0, EXPIRED), u.touch('b', EXPIRED), u.get(['c'], EXPIRED)]);
  assert.equal(sa.status, 'STORED');
  assert.equal(tb, 'TOUCHED');
  assert.equal(gc?.value.toString(), '3', 'gat returns the item it expires');
  assert.deepEqual(await u.get(['a', 'b', 'c']), [undefined, undefined, undefined]);
  const raw = f.raw();
  assert.equal((raw.prepare('SELECT count(*) AS n FROM mcmux_items').get() as { n: number }).n, 0, 'rows deleted, not left to purge');
});
