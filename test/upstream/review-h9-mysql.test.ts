/**
 * Review h9 of the MySQL/MariaDB driver's KILL on a pooled connection (src/upstream/mysql.ts
 * killPooled, 8c6dc17: review-h2 finding 4): a pooled connection taken for a KILL that is then
 * skipped (the epoch moved) is never given back (finding 1); the KILL finds no pooled connection
 * when every one is busy with a stuck statement (finding 2; both fixed). One private MariaDB (targets/mysql.ts)
 * per test, torn down after it. Guard: the KILL on a pooled connection made for it.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Connection } from 'mysql2/promise';
import { ErrorCodes } from '../../src/errors';
import type { StoreResult } from '../../src/upstream/upstream';
import { b, codeOf, set } from '../helpers/driver-calls';
import { eventually } from '../helpers/poll';
import { connectMysqlUrl } from './targets/mysql';
import { type MysqlRig, appUser, batchesBehindLocks, fillServer, lockRows, mysqlRig as rig, q } from './targets/mysql-rig';

const outcome = (p: Promise<unknown>): Promise<string> =>
  p.then(
    (s) => (Array.isArray(s) ? 'ok' : (s as StoreResult).status ?? String(s)),
    (err: unknown) => codeOf(err),
  );

const running = (r: MysqlRig, prefix: string) => async (): Promise<boolean> =>
  (await q(r.admin, 'SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE ?', [`${prefix}%`])).length > 0;

// ---------------------------------------------------------------------------------------------
// FINDING 1 (fixed): killPooled takes a pooled connection, then returns from inside its `try`
// when the epoch moved since the request was sent (a table found dropped: tableLost; a restart
// seen by observeServer) or the upstream closed: that `return` skips the release after the
// try/catch, so the connection stays checked out of the pool for good. Each such KILL costs the
// pool one of its `connections`; with connections=1 (or after as many as the pool holds) every
// request waits for a connection that never comes and times out: the store takes no session
// write and serves no read until mcmux restarts, all of them journaled for a repair that in turn
// times out. The skip is reached when the KILL had to wait for the pool (its own connection
// refused at max_connections) while the epoch moved: here the refusal of the kill connection is
// stood in for (the test's stub of the private connectKiller; review-h2 finding 4 shows the real
// refusal), arriving after the table was dropped and found missing.
// Fixed (36efb49, found on its own the same day): killPooled gives the connection back (discarded
// only when the KILL failed with no answer from the server, or the upstream closed).
// ---------------------------------------------------------------------------------------------

// (Here and below, `timeout` 500 ms: under the driver's lock wait, 1 s at the least, so that the
// statement held by a row lock times out for the driver before the server's lock wait ends it.)
test('a KILL skipped on a pooled connection (the epoch moved) gives the connection back to the pool', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(r.db.url, { table: 'h9_leak', timeout: '500', connections: '1' });
  await set(up, 'sess:a', 'old');
  let refuse!: () => void;
  const refused = new Promise<void>((res) => (refuse = res));
  // The kill connection is refused (ER_CON_COUNT_ERROR), once the test says so.
  Object.assign(up, {
    connectKiller: () => refused.then(() => Promise.reject(Object.assign(new Error('Too many connections'), { errno: 1040, code: 'ER_CON_COUNT_ERROR', sqlState: '08004', fatal: true }))),
  });
  const holder = await connectMysqlUrl(r.db.url);
  t.after(() => holder.destroy());
  await q(holder, 'BEGIN');
  await q(holder, 'SELECT * FROM h9_leak WHERE `key` = ? FOR UPDATE', ['sess:a']);
  const deleting = running(r, 'DELETE FROM `h9_leak`');
  const stuck = outcome(up.delete('sess:a'));
  await eventually('the delete waits for the row', deleting);
  assert.equal(await stuck, ErrorCodes.UPSTREAM_TIMEOUT);
  // Its KILL waits for the kill connection. The lock goes, the statement ends; the table is
  // dropped (a restore, an operator) and the next request finds it missing (the epoch moves).
  await q(holder, 'ROLLBACK');
  await eventually('the delete ended on the server', async () => !(await deleting()));
  await q(r.admin, 'DROP TABLE h9_leak');
  assert.equal(await outcome(up.get(['sess:x'])), 'ok', 'a read on the table made again');
  refuse(); // the KILL goes on the pool's connection, and is skipped there (the epoch moved)
  await new Promise((res) => setTimeout(res, 200));
  const after: string[] = [];
  for (let i = 0; i < 3; i++) after.push(await outcome(up.store({ mode: 'set', key: `sess:${i}`, value: b('new'), flags: 0, deadline: 0 })));
  assert.deepEqual(after, ['STORED', 'STORED', 'STORED'], 'the pool lost its connection to the skipped KILL: every request times out');
});

// holds: the KILL goes on a pooled connection the pool makes for it (connections=1: the timed-out
// one discarded; the kill connection refused), and that connection, given back unprepared, serves
// the next requests (prepare() runs on it then).
test('holds: a KILL on a new pooled connection, and the connection serves requests after it', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(r.db.url, { table: 'h9_pooled', timeout: '500', connections: '1' });
  await set(up, 'sess:a', 'old');
  Object.assign(up, {
    connectKiller: () => Promise.reject(Object.assign(new Error('Too many connections'), { errno: 1040, code: 'ER_CON_COUNT_ERROR', sqlState: '08004', fatal: true })),
  });
  const holder = await connectMysqlUrl(r.db.url);
  t.after(() => holder.destroy());
  await q(holder, 'BEGIN');
  await q(holder, 'SELECT * FROM h9_pooled WHERE `key` = ? FOR UPDATE', ['sess:a']);
  const deleting = running(r, 'DELETE FROM `h9_pooled`');
  const kills = async (): Promise<number> => Number((await q(r.admin, "SHOW GLOBAL STATUS LIKE 'Com_kill'"))[0]?.Value);
  const killsBefore = await kills();
  const stuck = outcome(up.delete('sess:a'));
  await eventually('the delete waits for the row', deleting);
  assert.equal(await stuck, ErrorCodes.UPSTREAM_TIMEOUT);
  await eventually('a KILL reaches the server (on the pooled connection: the kill connection is refused)', async () => (await kills()) > killsBefore, 2000);
  await eventually('the delete stopped', async () => !(await deleting()));
  await q(holder, 'ROLLBACK');
  assert.equal(await outcome(up.store({ mode: 'set', key: 'sess:b', value: b('new'), flags: 0, deadline: 0 })), 'STORED');
  assert.equal(await outcome(up.store({ mode: 'add', key: 'sess:a', value: b('again'), flags: 0, deadline: 0 })), 'NOT_STORED', 'the killed delete did not land');
});

// ---------------------------------------------------------------------------------------------
// FINDING 2 (fixed): the KILL on a pooled connection works only when one of the pool's is
// idle when the statement times out. Under the overload that fills max_connections (the case
// 8c6dc17 is for), every pooled connection is busy: the timed-out one is discarded (its slot in
// the pool freed, its server thread still in the statement, holding its slot on the server), so
// killPooled's getConnection makes a new connection, and the server refuses it as it refused the
// kill connection. Nothing is killed: a batch on rows locked one after another commits after the
// late window, over the repair (an older session value back, a deleted session revived), as
// before 8c6dc17. Also so with connections=1. Here: connections=2, both stuck (a batch of four
// sets, a replace), the server full.
// Fixed: the kill connection is made with the pool's first connection, before the server fills,
// and kept idle with a session wait_timeout of a year (mysql.ts prepare, connectKiller).
// ---------------------------------------------------------------------------------------------

test('at max_connections with every pooled connection stuck, a timed-out statement is still killed', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(await appUser(r), { table: 'h9_maxconn', timeout: '1000', connections: '2' });
  // Two batches, one a pooled connection, each on rows locked one after another.
  const batches = [['sess:a', 'sess:b', 'sess:c', 'sess:d'], ['sess:e', 'sess:f', 'sess:g', 'sess:h']];
  await Promise.all([set(up, 'warm:1', 'x'), up.store({ mode: 'add', key: 'warm:2', value: b('x'), flags: 0, deadline: 0 })]);
  await Promise.all(batches.flat().map((k) => set(up, k, 'old')));
  const holders: Connection[][] = [];
  for (const keys of batches) holders.push(await lockRows(t, r.db.url, 'h9_maxconn', keys));
  await fillServer(t, r.admin, r.db.url);
  const { stillThere } = await batchesBehindLocks(r.admin, up, 'h9_maxconn', batches, holders);
  const values = (await q(r.admin, 'SELECT `value` FROM h9_maxconn WHERE `key` LIKE ? ORDER BY `key`', ['sess:%'])).map((row) => String(row.value));
  t.diagnostic(`values once everything settled: ${JSON.stringify(values)}`);
  assert.equal(stillThere, 0, 'timed-out batches still running on the server after the late window (they commit later)');
});
