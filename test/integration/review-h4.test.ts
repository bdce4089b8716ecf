/**
 * Review h4: the durable distrust of 3de4ee0 (a sqlite or MySQL store whose marker is found
 * missing is distrusted as well as fenced), the holes it leaves, and the sqlite driver under
 * faults. Private servers and files only, each in its own temporary directory.
 *
 * Findings are `todo` tests (they fail on the code as it is) unless a commit fixed them; guards
 * are plain tests of something that holds.
 *
 *   finding 1  a marker write failed unapplied (sqlite) lowered the rollback floor for good: fixed
 *   finding 2  the same for a MySQL marker write that timed out (late): fixed
 *   finding 3  the sqlite -wal unlinked while open: test/upstream/review-h4-sqlite.test.ts, fixed
 *   finding 4  a flush_all through another mcmux host sharing MySQL distrusts it here: todo
 *   finding 5  a MySQL table re-created by another mcmux: no tableLost here, add decided: todo
 *   finding 6  a marker expired by a wall-clock step distrusted a durable store: fixed
 *   finding 7  past journal-max-keys, a distrusted store serves no session written since after a
 *              restart (within the documented bound): todo
 *   guards     restores caught without finding 1's/2's fault (sqlite, MySQL); the -wal reopen is no
 *              distrust; [sqlite] alone distrusted serves what was written since; a reload of
 *              tuning options neither distrusts nor leaves a fence
 */

import assert from 'node:assert/strict';
import { renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import Database from 'better-sqlite3';
import type { HealthyUpstream } from '../../src/router/health';
import type { SqliteUpstream } from '../../src/upstream/sqlite';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { sqliteUrl } from '../helpers/sqlite-fixture';
import { tempDir } from '../helpers/temp-dir';
import { connectWire } from '../helpers/wire';
import { clocksFor } from '../helpers/clocks';
import { requireBinary } from '../helpers/servers';
import { connectMysqlUrl, startMariadb } from '../upstream/targets/mysql';

/** The driver's own better-sqlite3 handle (SqliteUpstream.db), for an online backup of the file. */
const handleOf = (u: HealthyUpstream): Database.Database => (u.inner as unknown as { db: Database.Database }).db;

/**
 * [memory://cache, sqlite]: a session written, a backup of the file taken (it holds this
 * process's marker), the marker written again twice since, the session destroyed, then the
 * backup renamed over the file (an operator restoring it while mcmux runs). `failOnce`: before
 * all that, one marker write failed (another connection held the write lock for longer than the
 * driver's `timeout`: a VACUUM, a long batch of another process, a backup tool), and was
 * written again once the lock was released. What `get sess` answers at the end.
 */
async function restoredBackup(t: TestContext, failOnce: boolean): Promise<string> {
  const dir = tempDir(t, 'review-h4-sqlite');
  const file = join(dir, 'store.db');
  const app = await inProcessMcmux({ 'probe-interval': '50' }, ['memory://cache', `${sqliteUrl(file)}?timeout=200`]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const sq = app.upstreams[1] as HealthyUpstream;
  assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
  if (failOnce) {
    const lock = new Database(file);
    lock.exec('BEGIN IMMEDIATE');
    const errors = sq.inner.stats.errors;
    try {
      // The look reads the marker (a read needs no write lock in WAL); the rewrite waits 200 ms, fails unrun.
      await app.coldDetector.check(sq);
      assert.ok(sq.inner.stats.errors > errors, 'the marker write failed');
    } finally {
      lock.exec('ROLLBACK');
      lock.close();
    }
  }
  await app.coldDetector.check(sq);
  const backup = join(dir, 'backup.db');
  await handleOf(sq).backup(backup);
  // The marker is written again at every check: the backup's is now older than the one before last.
  await app.coldDetector.check(sq);
  await app.coldDetector.check(sq);
  assert.equal(await w.ask('delete sess\r\n'), 'DELETED\r\n');
  const fences = sq.fencesBegun;
  renameSync(backup, file);
  await eventually('mcmux reopened the file (a reconnect: fenced)', () => sq.fencesBegun > fences, 15_000);
  await app.coldDetector.check(sq);
  return w.ask('get sess\r\n', 'END\r\n');
}

// GUARD. The same restore with every marker write acknowledged: the backup's marker is an older
// generation of this process's than the last it wrote (ColdDetector: rolledBack), and the store
// is distrusted: the session destroyed since the backup is not served again.
test('guard: a sqlite file replaced by a backup holding an older marker of this very process: a destroyed session is not served again', { timeout: 60_000 }, async (t) => {
  assert.equal(await restoredBackup(t, false), 'END\r\n');
});

// FINDING 1 (fixed: cold-detector.ts mark excuses, by its generation, only a write that may land late). A marker write that failed once (cold-detector.ts mark: `unsure`) lowered, for good,
// the generation below which a marker found there is a rollback (checkStore: `floor`), though
// that write can never land: the sqlite driver fails a write that waited out its `timeout` for a
// lock held elsewhere unrun (UNREACHABLE, not late), and rolls back one that failed. `unsure` is
// forgotten only at a flush. From then on, a backup taken at any later time, restored while
// mcmux runs, holds a marker of this process no older than that floor: taken for a marker kept,
// the reconnect's fence is lifted, and every session destroyed since the backup is served again
// (and read-repaired into the cache). One lock held elsewhere for longer than `timeout` (a
// VACUUM, another process's long transaction), hours before, is enough.
test('a sqlite file replaced by a backup holding an older marker of this very process, after one marker write had failed unrun: a destroyed session is not served again', { timeout: 60_000 }, async (t) => {
  assert.equal(await restoredBackup(t, true), 'END\r\n', 'a session destroyed through mcmux is served again from a restored backup');
});

/**
 * A private MariaDB and an in-process mcmux over `chain(url)` (its URL), with a client connection
 * to the mcmux, the MySQL upstream (`my`) and a client connection of its own to the server (`sql`),
 * all closed after the test; undefined when mariadbd is missing (skipped).
 */
async function overMariadb(t: TestContext, chain: (url: string) => string[]) {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return undefined;
  const server = await startMariadb();
  t.after(() => server.destroy());
  const upstreams = chain(server.url);
  const app = await inProcessMcmux({ 'probe-interval': '50' }, upstreams);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const my = app.upstreams[upstreams.findIndex((u) => u.startsWith('mysql:'))] as HealthyUpstream;
  const sql = await connectMysqlUrl(server.url);
  t.after(() => sql.destroy());
  return { app, w, my, sql };
}

/**
 * The same through mysql:// ([memory://cache, mysql]), with no reconnect: the table restored from
 * a copy taken under this very process (an operator's restore), found by the next periodic marker
 * check (made here). `failOnce`: before all that, one marker write timed out (another session held
 * the marker's row lock for longer than the driver's `timeout`: the driver killed the statement),
 * and was written again once the lock was released. What `get sess` answers at the end.
 */
async function restoredTable(t: TestContext, failOnce: boolean): Promise<string | undefined> {
  const r = await overMariadb(t, (url) => ['memory://cache', `${url}?timeout=300`]);
  if (r === undefined) return undefined;
  const { app, w, my, sql } = r;
  assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
  if (failOnce) {
    await sql.query('BEGIN');
    await sql.query('SELECT `key` FROM mcmux_items WHERE `key` = ? FOR UPDATE', [Buffer.from(app.coldDetector.key, 'latin1')]);
    const timeouts = my.inner.stats.timeouts;
    try {
      await app.coldDetector.check(my);
      assert.ok(my.inner.stats.timeouts > timeouts, 'the marker write timed out');
    } finally {
      await sql.query('ROLLBACK');
    }
  }
  await app.coldDetector.check(my);
  await sql.query('CREATE TABLE mcmux_backup LIKE mcmux_items');
  await sql.query('INSERT INTO mcmux_backup SELECT * FROM mcmux_items');
  await app.coldDetector.check(my);
  await app.coldDetector.check(my);
  assert.equal(await w.ask('delete sess\r\n'), 'DELETED\r\n');
  await sql.query('DELETE FROM mcmux_items');
  await sql.query('INSERT INTO mcmux_items SELECT * FROM mcmux_backup');
  await app.coldDetector.check(my);
  return w.ask('get sess\r\n', 'END\r\n');
}

// GUARD. A MySQL table restored from a copy holding an older marker of this very process, every
// marker write acknowledged: a rollback (distrusted), the destroyed session not served again.
test('guard: a mysql table restored from a copy holding an older marker of this very process: a destroyed session is not served again', { timeout: 90_000 }, async (t) => {
  const got = await restoredTable(t, false);
  if (got !== undefined) assert.equal(got, 'END\r\n');
});

// FINDING 2 (fixed). Finding 1's fix keeps `unsure` for a marker write that may land late, as a
// MySQL write that timed out does (its statement is killed, KILL QUERY). Kept until a flush, it
// lowered the rollback floor for good: after one marker write waited out `timeout` for a row lock
// (a long transaction of an operator's, a backup tool's locking read, a lock wait under load), no
// later restore of the table to a copy taken under this process was caught, and every session
// destroyed since the copy was served again. Now the number of that write alone is excused: the
// marker it wrote, found, is no rollback; a newer one of this process, older than the last
// acknowledged, is.
test('a mysql table restored from a copy holding an older marker of this very process, after one marker write had timed out: a destroyed session is not served again', { timeout: 90_000 }, async (t) => {
  const got = await restoredTable(t, true);
  if (got !== undefined) assert.equal(got, 'END\r\n', 'a session destroyed through mcmux is served again from a restored table');
});

// FINDING 4. A false alarm of 3de4ee0, and what it costs. mcmux on two web hosts sharing one
// MySQL table (each host its own marker key, markerKey(): the host name). A client's flush_all
// through host A (an operator logging everyone out, a deploy script) empties the table, markers
// of every host with it; host A writes its own again at once (ColdDetector.flushed), host B's is
// gone until B's next check, which finds it missing after journal.log had it acknowledged:
// 'cold', and the store durable, so B distrusts it as a backup restored (3de4ee0), where before
// it fenced it. From then on B reads from MySQL no key B did not write since: a user who logged
// in again through host A after the flush and whose next request reaches host B is logged out
// (B's own cache does not hold the session), and again on every host but A, until every item B
// wrote before has expired (journal maxDeadline; never, once any client wrote an item without
// expiry, short of `mcmux repair --trust`). B cannot tell a flush from a restore without a marker:
// the host that flushed would have to leave word of it (a flush record the others read). The
// flush through A is emulated by its statement, DELETE FROM the table (mysql.ts flush), and A's
// client's session by a row inserted after it: two in-process mcmux share a host name, hence a
// marker key.
test('mysql shared by two mcmux hosts: a flush_all through the other host is not taken for a restore (a session written through it since is served)', { timeout: 90_000, todo: 'finding 4: a flush_all through another host distrusts the shared MySQL on every other host' }, async (t) => {
  const r = await overMariadb(t, (url) => ['memory://cache', url]);
  if (r === undefined) return;
  const { app, w, my, sql } = r;
  assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
  await app.coldDetector.check(my);
  // Host A: flush_all, then a user logs in again through it (its session, living 1440 s).
  await sql.query('DELETE FROM mcmux_items');
  await sql.query('INSERT INTO mcmux_items (`key`, `value`, `flags`, `cas`, `exp`) VALUES (?, ?, 0, UUID_SHORT(), ?)', [Buffer.from('sess2'), Buffer.from('new'), Date.now() + 1440_000]);
  // Host B's next periodic check (every 2 s), made now.
  await app.coldDetector.check(my);
  assert.equal(await w.ask('get sess2\r\n', 'END\r\n'), 'VALUE sess2 0 3\r\nnew\r\nEND\r\n', 'a session written through the other host since its flush_all is not served by this one');
});

// FINDING 5. tableLost (review-h2 finding 2's fix) tells only the mcmux whose own statement found
// the table missing. Two mcmux hosts share the MySQL table; it is dropped (an operator, a
// migration gone wrong); host A's next statement finds it missing, makes it again (empty), and A
// fences it. Host B's next statement finds a table there, with no error: no tableLost, no
// fence, and B decides `add`/`incr`/`cas` on the empty table until its next periodic marker
// check (CHECK_MS, 2 s) finds its marker gone. In that window a lock B's other store holds is
// granted again wherever MySQL decides (first in B's chain, or the stores before it fenced or
// down). Emulated here by an atomic swap to an empty table of the same schema (what B sees of A's
// CREATE), with B's periodic check held off (stop(): the window). Not fixed: the driver would have
// to tell the table it prepared from one made since (its CREATE_TIME, or a row of its own).
test('mysql shared by two mcmux hosts: a table dropped and made again by the other host is fenced here before it decides an add', { timeout: 90_000, todo: 'finding 5: a table re-created by another mcmux is not noticed before the next marker check' }, async (t) => {
  const r = await overMariadb(t, (url) => [url, 'memory://second']);
  if (r === undefined) return;
  const { app, w, my, sql } = r;
  assert.equal(await w.ask('add lock 0 0 1\r\n1\r\n'), 'STORED\r\n');
  app.coldDetector.stop(); // the window before B's next periodic check
  await sql.query('CREATE TABLE mcmux_fresh LIKE mcmux_items');
  await sql.query('RENAME TABLE mcmux_items TO mcmux_dropped, mcmux_fresh TO mcmux_items');
  assert.equal(await w.ask('get nothing\r\n', 'END\r\n'), 'END\r\n'); // a statement on the table made again: no error
  assert.ok(!my.fenced, 'not fenced: nothing told this mcmux');
  assert.equal(await w.ask('add lock 0 0 1\r\n2\r\n'), 'NOT_STORED\r\n', 'a lock held (in the other store) granted a second time by the table made again');
});

// GUARD (of finding 3's fix, and of 3de4ee0 at a restart). The -wal unlinked while mcmux runs on
// [memory://cache, sqlite]: the driver checkpoints it into the file and reopens it, reported as a
// reconnect; the marker check finds this process's marker kept: the precautionary fence is lifted
// and the store is not distrusted (no needless logout). The next mcmux process on the same state
// directory, its cache empty, serves the session from the file: the marker there, no distrust.
test('guard: the sqlite -wal unlinked while open is a reconnect, not a store come back empty: no distrust, and the next process serves the session', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'review-h4-sqlite');
  const stateDir = tempDir(t, 'review-h4-state');
  const file = join(dir, 'store.db');
  const upstreams = ['memory://cache', sqliteUrl(file)];
  const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
  const w = await connectWire(app.address.port);
  const sq = app.upstreams[1] as HealthyUpstream;
  assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
  await app.coldDetector.check(sq);
  const fences = sq.fencesBegun;
  unlinkSync(`${file}-wal`);
  await eventually('the driver reopened the file (a reconnect)', async () => {
    await (sq.inner as SqliteUpstream).probe().catch(() => undefined);
    return (sq.inner as SqliteUpstream).reopens === 1;
  });
  assert.ok(sq.fencesBegun > fences, 'fenced as a precaution');
  await app.coldDetector.check(sq);
  assert.equal(app.journal.overflowed(sq), undefined, 'not distrusted');
  assert.ok(!sq.fenced, 'the marker found kept lifts the fence');
  assert.equal(await w.ask('get sess\r\n', 'END\r\n'), 'VALUE sess 0 3\r\nold\r\nEND\r\n');
  w.close();
  await app.close();
  const next = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
  const w2 = await connectWire(next.address.port);
  t.after(() => w2.close());
  assert.equal(next.journal.overflowed(next.upstreams[1] as HealthyUpstream), undefined, 'not distrusted by the next process');
  assert.equal(await w2.ask('get sess\r\n', 'END\r\n'), 'VALUE sess 0 3\r\nold\r\nEND\r\n', 'served from the file by the next process');
});

// FINDING 6 (fixed: cold-detector.ts Sight.expired). A false alarm of 3de4ee0: the marker expired, not lost. mcmux writes its marker with
// a 24 h life (MARKER_TTL_MS) and again at every check; a store expires it by the wall clock. The
// host suspended for longer than that (a VM paused or snapshotted and resumed, a laptop asleep
// over a weekend, a container frozen) and resumed, the wall clock steps forward past the marker's
// deadline: the next check finds no marker where this process wrote one ('cold'), and a durable
// store is distrusted as a backup restored, though it kept everything. Every session that
// outlived the step (a "remember me" session of 30 days, or any longer than the suspension) is
// not served until every item mcmux wrote before has expired (up to 30 days here; never with an
// item without expiry). A marker whose own deadline has passed says nothing of a replacement.
test('the host resumed after more than a day suspended: a sqlite store whose marker merely expired is not distrusted, a 30-day session is served', { timeout: 60_000 }, async (t) => {
  const clocks = clocksFor(t);
  const dir = tempDir(t, 'review-h4-sqlite');
  const app = await inProcessMcmux({ 'probe-interval': '50' }, [sqliteUrl(join(dir, 'store.db'))]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const sq = app.upstreams[0] as HealthyUpstream;
  assert.equal(await w.ask('set sess 0 2592000 3\r\nold\r\n'), 'STORED\r\n');
  await app.coldDetector.check(sq);
  clocks.stepWall(25 * 3600_000); // resumed after 25 h: the wall clock set forward
  await app.coldDetector.check(sq);
  assert.equal(app.journal.overflowed(sq), undefined, 'a store that kept its data distrusted');
  assert.equal(await w.ask('get sess\r\n', 'END\r\n'), 'VALUE sess 0 3\r\nold\r\nEND\r\n', 'a 30-day session not served');
});

/** The marker of `sq` (the sqlite `file`) written, then gone from the file (as from one replaced by a copy without it), and found missing: `sq` distrusted. */
async function markerLost(app: Awaited<ReturnType<typeof inProcessMcmux>>, sq: HealthyUpstream, file: string): Promise<void> {
  await app.coldDetector.check(sq);
  const raw = new Database(file);
  raw.prepare("DELETE FROM mcmux_items WHERE CAST(key AS TEXT) LIKE 'mcmux.sentinel.%'").run();
  raw.close();
  await app.coldDetector.check(sq);
  assert.ok(app.journal.overflowed(sq) !== undefined, 'distrusted');
}

// GUARD. What a distrust of a durable store costs when journal-max-keys is reached: [sqlite] alone,
// distrusted (its marker found missing: a file replaced), more sessions written since than the
// journal may remember (Overflow.known full). A session written since is still served.
test('[sqlite] alone, distrusted, more sessions written since than journal-max-keys: each one written since is served', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'review-h4-sqlite');
  const file = join(dir, 'store.db');
  const app = await inProcessMcmux({ 'probe-interval': '50', 'journal-max-keys': '2' }, [sqliteUrl(file)]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const sq = app.upstreams[0] as HealthyUpstream;
  await markerLost(app, sq, file);
  for (const k of ['s1', 's2', 's3', 's4']) assert.equal(await w.ask(`set ${k} 0 1440 1\r\nv\r\n`), 'STORED\r\n');
  for (const k of ['s1', 's2', 's3', 's4']) assert.equal(await w.ask(`get ${k}\r\n`, 'END\r\n'), `VALUE ${k} 0 1\r\nv\r\nEND\r\n`, `${k} written since the distrust not served`);
});

// FINDING 7 (a cost, within the bound README "A bounded journal" states; made likelier by 3de4ee0,
// as every durable store whose marker is found missing is now distrusted). The same over
// [memory://cache, sqlite] across a restart of mcmux (the cache empty again): the distrust is on
// journal.log (O line) with the keys known held since (K lines) up to journal-max-keys, then F.
// The next process reads the file for those keys only: every session written since the distrust
// beyond journal-max-keys (100,000 by default: a busy site within one session lifetime) is not
// served, its user logged out, until what mcmux wrote before has expired. The running process
// served them (the cache held them; [sqlite] alone, the guard above). Not fixed.
test('[memory, sqlite], sqlite distrusted, more sessions written since than journal-max-keys, mcmux restarted: each one written since is served', { timeout: 60_000, todo: 'finding 7: past journal-max-keys, a distrusted durable store serves no session written since after a restart' }, async (t) => {
  const dir = tempDir(t, 'review-h4-sqlite');
  const stateDir = tempDir(t, 'review-h4-state');
  const file = join(dir, 'store.db');
  const upstreams = ['memory://cache', sqliteUrl(file)];
  const scalars = { 'probe-interval': '50', 'journal-max-keys': '2', 'state-dir': stateDir };
  const app = await inProcessMcmux(scalars, upstreams);
  const w = await connectWire(app.address.port);
  const sq = app.upstreams[1] as HealthyUpstream;
  await markerLost(app, sq, file);
  const keys = ['s1', 's2', 's3', 's4'];
  for (const k of keys) assert.equal(await w.ask(`set ${k} 0 1440 1\r\nv\r\n`), 'STORED\r\n');
  w.close();
  await app.close();
  const next = await inProcessMcmux(scalars, upstreams);
  const w2 = await connectWire(next.address.port);
  t.after(() => w2.close());
  const served = [];
  for (const k of keys) served.push(await w2.ask(`get ${k}\r\n`, 'END\r\n'));
  assert.deepEqual(served, keys.map((k) => `VALUE ${k} 0 1\r\nv\r\nEND\r\n`), 'sessions written since the distrust, not served after a restart');
});

// GUARD. A reload that changes only tuning options of a sqlite upstream (timeout, synchronous): a
// new driver on the same file, the same store (storeIdentity). Its marker check finds this
// host's marker (the old driver's, written there): the reload's precautionary fence is lifted,
// and the store is not distrusted (3de4ee0 takes no new driver for a store that lost its marker).
test('guard: a reload changing a sqlite upstream\'s tuning options neither distrusts it nor leaves it fenced', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'review-h4-sqlite');
  const stateDir = tempDir(t, 'review-h4-state');
  const url = sqliteUrl(join(dir, 'store.db'));
  const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, ['memory://cache', `${url}?timeout=1000`]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
  const before = app.upstreams[1] as HealthyUpstream;
  await app.coldDetector.check(before);
  reloadTo(app, { 'probe-interval': '50', 'state-dir': stateDir }, ['memory://cache', `${url}?timeout=500&synchronous=full`]);
  const sq = app.upstreams[1] as HealthyUpstream;
  assert.notEqual(sq, before, 'a new driver');
  await app.coldDetector.check(sq);
  assert.equal(app.journal.overflowed(sq), undefined, 'not distrusted');
  assert.ok(!sq.fenced, 'the marker found lifts the reload\'s fence');
  assert.equal(await w.ask('get sess\r\n', 'END\r\n'), 'VALUE sess 0 3\r\nold\r\nEND\r\n');
});
