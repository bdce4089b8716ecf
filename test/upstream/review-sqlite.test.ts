/**
 * Review of the sqlite:// driver under faults an operator meets in production: another
 * connection holding the write lock, a disk slower than the load, restarts on the same file.
 */

import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { SqliteUpstream } from '../../src/upstream/sqlite';
import { fixture } from '../helpers/sqlite-fixture';

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

test(
  'reads queued behind a write blocked by a lock held elsewhere wait (and time out) with it',
  { todo: 'FIFO order keeps a read after the writes of its turn; WAL would serve it at once. Reading ahead would need per-key ordering; with a cache upstream in front, reads rarely reach it' },
  () => undefined,
);

test(
  'the database file unlinked or truncated while mcmux runs',
  { todo: 'SQLite keeps writing to the open inode: writes are acknowledged and lost at restart (where the marker check fences the empty store). Detecting it would cost a stat of the path per transaction' },
  () => undefined,
);
