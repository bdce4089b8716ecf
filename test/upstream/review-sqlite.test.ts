/**
 * Review of the sqlite:// driver under faults an operator meets in production: another
 * connection holding the write lock, a disk slower than the load, restarts on the same file,
 * the file unlinked, renamed over or truncated while open.
 */

import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { renameSync, truncateSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { HealthyUpstream } from '../../src/router/health';
import { type SqliteUpstream, createSqliteUpstream } from '../../src/upstream/sqlite';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { ctx, fixture, sqliteUrl } from '../helpers/sqlite-fixture';
import { connectWire } from '../helpers/wire';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

const set = (u: SqliteUpstream, key: string, value: string) => u.store({ mode: 'set', key, value: b(value), flags: 0, deadline: 0 });

/** Rejected as the router's `unapplied` (authority.ts) reads it: nothing of the op reached the store. */
function refusedUnrun(err: unknown): boolean {
  return err instanceof McmuxError && !err.late && err.code === ErrorCodes.UPSTREAM_UNREACHABLE;
}

test('an op that waited out `timeout` for a lock held elsewhere fails as not applied (UNREACHABLE, not IO)', async (t) => {
  const f = fixture(t);
  const u = f.open({ timeout: '100' });
  await set(u, 'k', 'old');
  const other = f.raw();
  other.exec('BEGIN IMMEDIATE');
  const err = await set(u, 'k', 'new').then(
    () => assert.fail('stored under a lock held elsewhere'),
    (e: unknown) => e,
  );
  other.exec('ROLLBACK');
  // Before: MCMUX_UPSTREAM_IO, which the router takes as "may have been applied": the key's copy
  // here became unknown, and a cas it decided answered SERVER_ERROR instead of going on.
  assert.ok(refusedUnrun(err), `expected UPSTREAM_UNREACHABLE, got ${String(err)}`);
  assert.match((err as Error).message, /SQLITE_BUSY.*100 ms \(option timeout\)/);
  assert.equal((await u.get(['k']))[0]?.value.toString(), 'old', 'indeed nothing was applied');
});

test('an existing store opens while another connection holds the write lock (restart, reload, second mcmux)', async (t) => {
  const f = fixture(t);
  const first = f.open();
  await set(first, 'k', 'v');
  await first.close();
  const other = f.raw();
  other.exec('BEGIN IMMEDIATE');
  // Before: the schema transaction waited for the lock in SQLite's busy handler (the event loop
  // frozen, during a reload every client with it), then threw a ConfigError: the start refused.
  let u: SqliteUpstream | undefined;
  try {
    u = f.open({ timeout: '100' });
  } finally {
    if (u === undefined) other.exec('ROLLBACK');
  }
  assert.equal((await u.get(['k']))[0]?.value.toString(), 'v', 'a read needs no write lock (WAL)');
  const write = set(u, 'k', 'w');
  await new Promise(setImmediate); // after the drain the set queued: it has met the lock
  assert.ok(u.busyRetries > 0, 'the write waits for the lock on a timer');
  other.exec('COMMIT');
  // Within `timeout` of its call only if this process is not starved; either way nothing else
  // holds the lock now, and a write goes through.
  await write.catch(() => undefined);
  assert.equal((await set(u, 'k', 'w2')).status, 'STORED');
  assert.equal((await u.get(['k']))[0]?.value.toString(), 'w2');
});

test('ops that waited out `timeout` behind a slow transaction fail unrun: the queue stays bounded', async (t) => {
  const f = fixture(t);
  const u = f.open({ timeout: '100' });
  await u.probe();
  // A slow disk, deterministically: the clock the driver dates its queue with jumps 10 s while
  // the first transaction runs (its fsync), between that drain and the next one.
  const realNow = performance.now;
  let skew = 0;
  performance.now = () => realNow.call(performance) + skew;
  t.after(() => {
    performance.now = realNow;
  });
  const n = 2048 + 10; // one full transaction, and ten ops left for the next
  const before = u.transactions;
  const all = Array.from({ length: n }, (_, i) => set(u, `k${i}`, 'v'));
  setImmediate(() => (skew += 10_000)); // runs after the first drain, before the second
  const results = await Promise.allSettled(all);
  performance.now = realNow;
  assert.equal(u.transactions - before, 1, 'the first transaction committed');
  assert.ok(results.slice(0, 2048).every((r) => r.status === 'fulfilled' && r.value.status === 'STORED'));
  // Before: run regardless, however long they had waited. With a disk committing slower than
  // the load arrives, the queue (and each op's wait) grew without bound and no op ever failed.
  const late = results.slice(2048);
  for (const r of late) {
    assert.equal(r.status, 'rejected', 'an op queued 10 s with timeout=100 is not run');
    assert.ok(refusedUnrun(r.reason), String(r.reason));
    assert.match((r.reason as Error).message, /waited over 100 ms/);
  }
  assert.equal(u.stats.timeouts, 10);
  assert.deepEqual(await u.get(['k2047', 'k2048']).then((h) => h.map((x) => x?.value.toString())), ['v', undefined]);
});

test('a turn of reads of large values is split into transactions of about 16 MiB, as writes are', async (t) => {
  const f = fixture(t);
  const u = f.open();
  const mib = Buffer.alloc(1024 * 1024, 0x61);
  await u.store({ mode: 'set', key: 'big', value: mib, flags: 0, deadline: 0 });
  const before = u.transactions;
  const reads = await Promise.all(Array.from({ length: 40 }, () => u.get(['big'])));
  assert.ok(reads.every(([h]) => h?.value.length === mib.length));
  // Before: one transaction read all 40 MiB (with 2048 such gets, 2 GiB held until one COMMIT,
  // one stall of the event loop), although a batch is bounded to 16 MiB of values (header).
  assert.ok(u.transactions - before >= 3, `${u.transactions - before} transaction(s) for 40 MiB of reads`);
});

test('cas uniques: never handed out twice across a reopen, nor across two connections on one file', async (t) => {
  const f = fixture(t);
  const a = f.open();
  const first = await set(a, 'x', '1');
  const [hit] = await a.get(['x']);
  await a.store({ mode: 'cas', key: 'x', value: b('2'), flags: 0, deadline: 0, cas: hit?.cas });
  await a.close();
  const b1 = f.open();
  const b2 = f.open();
  const seen = new Set<bigint>([first.cas as bigint]);
  for (const r of await Promise.all([set(b1, 'x', '3'), set(b2, 'y', '4'), b1.arith('incr', 'x', 1n), set(b2, 'x', '5')])) {
    const cas = 'cas' in r ? r.cas : undefined;
    assert.ok(cas !== undefined && !seen.has(cas), `unique ${cas} handed out twice`);
    seen.add(cas);
  }
  // The unique read before the restart matches no later version of the key.
  const stale = await b1.store({ mode: 'cas', key: 'x', value: b('z'), flags: 0, deadline: 0, cas: hit?.cas });
  assert.equal(stale.status, 'EXISTS');
});

test('keys of every allowed byte, flags 2^32-1, u64 counters: stored and read back exactly', async (t) => {
  const f = fixture(t);
  const u = f.open();
  let low = '';
  for (let c = 0x21; c <= 0x7e; c++) low += String.fromCharCode(c);
  let high = '';
  for (let c = 0x80; c <= 0xff; c++) high += String.fromCharCode(c);
  await u.store({ mode: 'set', key: low, value: b('lo'), flags: 4294967295, deadline: 0 });
  await u.store({ mode: 'set', key: high, value: b('hi'), flags: 1, deadline: 0 });
  const [lo, hi] = await u.get([low, high]);
  assert.deepEqual([lo?.value.toString(), lo?.flags, hi?.value.toString(), hi?.flags], ['lo', 4294967295, 'hi', 1]);
  await set(u, 'n', '18446744073709551615');
  assert.deepEqual(await u.arith('incr', 'n', 2n).then((r) => r.status === 'OK' && r.value), 1n, 'incr wraps at 2^64');
  assert.deepEqual(await u.arith('decr', 'n', 5n).then((r) => r.status === 'OK' && r.value), 0n, 'decr floors at 0');
  await set(u, 'w', 'abc');
  assert.deepEqual(await u.arith('incr', 'w', 1n), { status: 'NON_NUMERIC' });
  assert.equal((await u.store({ mode: 'prepend', key: 'none', value: b('x'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
  assert.deepEqual(await u.get(['none']), [undefined], 'a prepend to a missing key creates nothing');
});

// Before: every op queued behind a write blocked by another connection's lock waited with it
// (and failed with it after `timeout`), the gets of other keys too, though WAL lets a reader
// read what is committed meanwhile. Now those gets are answered at once (readAhead); a get of a
// key written before it in the queue, and every get behind a flush, still waits for its turn.
test('gets queued behind a write blocked by a lock held elsewhere are answered at once, unless a write before them is of their key', async (t) => {
  const f = fixture(t);
  const u = f.open({ timeout: '5000' });
  await set(u, 'other', 'committed');
  await set(u, 'mine', 'old');
  const lock = f.raw();
  lock.exec('BEGIN IMMEDIATE');
  let released = false;
  const setMine = set(u, 'mine', 'new');
  const getOther = u.get(['other']);
  const getMine = u.get(['mine']);
  const getBoth = u.get(['other', 'mine']);
  const [hit] = await getOther; // with the lock still held: rejected after 5 s before
  assert.equal(released, false);
  assert.equal(hit?.value.toString(), 'committed', 'the get of a key no queued write touches, while the lock is held');
  let mineSettled = false;
  void getMine.then(() => (mineSettled = true));
  void getBoth.then(() => (mineSettled = true));
  await eventually('the read-ahead has run', () => u.readsAhead > 0);
  assert.equal(mineSettled, false, 'a get of a key a queued write changes waits for that write');
  released = true;
  lock.exec('COMMIT');
  assert.equal((await setMine).status, 'STORED');
  assert.equal((await getMine)[0]?.value.toString(), 'new', 'and sees it');
  assert.deepEqual((await getBoth).map((h) => h?.value.toString()), ['committed', 'new']);
  assert.equal(u.readsAhead, 1);
});

/** The rows of the file now at the path, read through a connection of its own (what a restart would find). */
function rowsAtPath(file: string, table = 'mcmux_items'): string[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(`SELECT key FROM ${table} ORDER BY key`).all() as Array<{ key: Buffer }>).map((r) => r.key.toString('latin1'));
  } finally {
    db.close();
  }
}

// Before (all three): SQLite wrote on to the inode it had opened; every write after the unlink or
// rename was acknowledged and gone at the next restart, and the router never fenced the store.
test('the database file unlinked while open: the next probe opens a fresh file, fails the queue unrun, reports a reconnect', async (t) => {
  const f = fixture(t);
  const u = f.open();
  let reconnects = 0;
  u.onReconnect = () => reconnects++;
  await set(u, 'before', 'v');
  unlinkSync(f.file);
  const queued = set(u, 'queued', 'v'); // queued with the probe, in the same turn
  await assert.rejects(u.probe(), (e: unknown) => refusedUnrun(e) && /unlinked while open.*not applied/.test(String(e)));
  assert.ok(refusedUnrun(await queued.catch((e: unknown) => e)), 'an op routed before the loss is not run on the fresh file');
  assert.equal(reconnects, 1);
  assert.equal(u.reopens, 1);
  assert.deepEqual(await u.get(['before']), [undefined], 'the fresh file is empty');
  await set(u, 'after', 'v');
  assert.deepEqual(rowsAtPath(f.file), ['after'], 'a write after the reopen is in the file a restart opens');
  await u.probe();
  assert.equal(reconnects, 1, 'a probe of an unchanged file reports nothing');
});

test('the database file renamed over by another database: reopened as that one, our WAL not replayed into it', async (t) => {
  const f = fixture(t);
  const u = f.open();
  let reconnects = 0;
  u.onReconnect = () => reconnects++;
  await set(u, 'ours', 'v');
  const otherPath = join(f.dir, 'other.db');
  const other = createSqliteUpstream(new URL(sqliteUrl(otherPath)), new Map(), ctx);
  await set(other as SqliteUpstream, 'theirs', 'v');
  await other.close();
  renameSync(otherPath, f.file);
  await set(u, 'lost', 'v').catch(() => undefined); // within the check interval: may still land in the old inode
  await assert.rejects(u.probe(), (e: unknown) => refusedUnrun(e) && /replaced by another file/.test(String(e)));
  assert.equal(reconnects, 1);
  const hits = await u.get(['ours', 'theirs', 'lost']);
  assert.deepEqual(hits.map((h) => h?.value.toString()), [undefined, 'v', undefined], 'it serves the database now at the path, intact');
  await set(u, 'next', 'v');
  // Before the -wal of the old file was removed at the reopen, its frames were replayed into the new one.
  assert.deepEqual(rowsAtPath(f.file), ['next', 'theirs']);
});

test('the database file truncated to 0 bytes while open: reopened as a fresh database, not a torn one', async (t) => {
  const f = fixture(t);
  const u = f.open();
  let reconnects = 0;
  u.onReconnect = () => reconnects++;
  await set(u, 'before', 'v');
  const raw = new Database(f.file);
  raw.pragma('wal_checkpoint(TRUNCATE)'); // the row in the main file, as after an autocheckpoint
  raw.close();
  truncateSync(f.file, 0);
  await assert.rejects(u.probe(), (e: unknown) => refusedUnrun(e) && /truncated/.test(String(e)));
  assert.equal(reconnects, 1);
  assert.deepEqual(await u.get(['before']), [undefined]);
  await set(u, 'after', 'v');
  assert.deepEqual(rowsAtPath(f.file), ['after']);
});

test('through mcmux (memory:// first, sqlite second): the unlinked store is fenced as come back empty, and later writes reach the new file', async (t) => {
  const f = fixture(t);
  const app = await inProcessMcmux({ 'probe-interval': '50' }, ['memory://first', f.url]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const sq = app.upstreams[1] as HealthyUpstream;
  const driver = sq.inner as SqliteUpstream;
  assert.equal(await w.ask('set before 0 0 1\r\nv\r\n'), 'STORED\r\n');
  // The cold detector has written its marker to the file (it does before any client command).
  assert.ok(rowsAtPath(f.file).some((k) => k !== 'before'), 'the marker is in the file');
  assert.ok(!sq.fenced);
  unlinkSync(f.file);
  // The next drain at least probe-interval later (a request, or the detector's periodic read) finds it.
  await eventually('the sqlite upstream reopened and fenced as come back empty', async () => {
    await w.ask('get before\r\n', 'END\r\n');
    return driver.reopens === 1 && sq.fenced && sq.emptyUntil > 0;
  });
  await eventually('a write reaches the new file', async () => {
    await w.ask('set after 0 0 1\r\nv\r\n');
    return rowsAtPath(f.file).includes('after');
  });
  assert.ok(!rowsAtPath(f.file).includes('before'), 'what the lost file held is not in the new one');
});
