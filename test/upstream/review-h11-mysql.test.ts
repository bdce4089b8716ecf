/**
 * Review h11 of the MySQL/MariaDB driver's kill connection made eagerly with the pool's first
 * connection (src/upstream/mysql.ts prepare, connectKiller, killQuery: a0b0fc1). One private
 * MariaDB (targets/mysql.ts) per test, torn down after it.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Connection } from 'mysql2/promise';
import type { Upstream } from '../../src/upstream/upstream';
import { b, codeOf, set } from '../helpers/driver-calls';
import { eventually } from '../helpers/poll';
import { appUser, batchBehindLocks, batchesBehindLocks, fillServer, lockRows, mysqlRig as rig, q, rootConnection } from './targets/mysql-rig';


/** Two pooled connections in use at once, retried until both answer (after a restart the pool's old ones fail first). */
async function warmTwo(up: Upstream): Promise<void> {
  await eventually('two pooled connections answer', async () => {
    const r = await Promise.allSettled([set(up, 'warm:1', 'x'), up.store({ mode: 'add', key: 'warm:2', value: b('x'), flags: 0, deadline: 0 })]);
    return r.every((s) => s.status === 'fulfilled');
  }, 20_000);
}

// ---------------------------------------------------------------------------------------------
// FINDING 1 (fixed): the kill connection is made eagerly only while none is kept (prepare: `this.killer
// === undefined`). The server restarting closes it, but the driver keeps its promise: the pool's
// connections made again after the restart see one kept, and make none. The next timeout finds
// the kept one dead, and only then makes a new one: at max_connections (the overload that makes
// statements time out, the case a0b0fc1 is for) the server refuses it, and with every pooled
// connection stuck killPooled's new one is refused too. Nothing is killed: a batch of session
// writes on rows locked one after another commits after the late window, over the repair (an
// older session value back, a deleted session revived). review-h9 finding 2, back after any
// restart of the server (or anything else that closes the kill connection while idle).
// Fixed: a kill connection that ends is no longer kept (mysql.ts connectKiller): the pool's
// connections made again after the restart make a new one (prepare).
// ---------------------------------------------------------------------------------------------

test('after a server restart, at max_connections with every pooled connection stuck, a timed-out statement is still killed', { timeout: 90_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(await appUser(r), { table: 'h11_restart', timeout: '1000', connections: '2' });
  const batches = [['sess:a', 'sess:b', 'sess:c', 'sess:d'], ['sess:e', 'sess:f', 'sess:g', 'sess:h']];
  await warmTwo(up);
  await Promise.all(batches.flat().map((k) => set(up, k, 'old')));
  await r.db.restart();
  const admin = await rootConnection(r.db);
  t.after(() => admin.destroy());
  await warmTwo(up); // the pool connects again, to the restarted server
  const holders: Connection[][] = [];
  for (const keys of batches) holders.push(await lockRows(t, r.db.url, 'h11_restart', keys));
  await fillServer(t, admin, r.db.url);
  const { stillThere } = await batchesBehindLocks(admin, up, 'h11_restart', batches, holders);
  const values = (await q(admin, 'SELECT `value` FROM h11_restart WHERE `key` LIKE ? ORDER BY `key`', ['sess:%'])).map((row) => String(row.value));
  t.diagnostic(`values once everything settled: ${JSON.stringify(values)}`);
  assert.equal(stillThere, 0, 'timed-out batches still running on the server after the late window (they commit later)');
});

// ---------------------------------------------------------------------------------------------
// FINDING 2 (fixed: an account with a limit of its own gets no kept kill connection; an upgrade
// regression of a0b0fc1, documented there as "one more" in the README): the kill
// connection, made with the pool's first connection and kept, counts against the account's
// MAX_USER_CONNECTIONS (max_user_connections) like any. An account sized to `connections` (or,
// shared by a fleet of mcmux sidecars, to their sum), as the docs before a0b0fc1 asked, now
// refuses the pool its last connection whenever the load needs them all: the request waiting for
// it fails (ER_TOO_MANY_USER_CONNECTIONS) instead of queueing for a connection, again at each
// peak: session writes journaled for repair, reads passed to the next store.
// ---------------------------------------------------------------------------------------------

test('an account limited to `connections` connections serves `connections` requests at once', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  await q(r.admin, "CREATE USER 'lim'@'127.0.0.1' IDENTIFIED BY 'limpw' WITH MAX_USER_CONNECTIONS 2");
  await q(r.admin, "GRANT ALL ON mcmux.* TO 'lim'@'127.0.0.1'");
  const u = new URL(r.db.url);
  u.username = 'lim';
  u.password = 'limpw';
  const up = r.open(u.href, { table: 'h11_userlimit', timeout: '1000', connections: '2' });
  await set(up, 'warm:1', 'x'); // the pool's first connection (and, since a0b0fc1, the kill connection)
  await new Promise((res) => setTimeout(res, 200));
  const outcomes: string[] = [];
  for (let i = 0; i < 3; i++) {
    // Two at once, on two pooled connections (an add is not batched).
    const two = await Promise.allSettled([0, 1].map((j) => up.store({ mode: 'add', key: `lock:${i}:${j}`, value: b('1'), flags: 0, deadline: 0 })));
    outcomes.push(...two.map((s) => (s.status === 'fulfilled' ? s.value.status : codeOf(s.reason))));
  }
  assert.deepEqual(outcomes, outcomes.map(() => 'STORED'), 'a request refused for want of a connection the kill connection holds');
});

// ---------------------------------------------------------------------------------------------
// FINDING 3 (fixed): the kill connection is now made as mcmux starts and kept idle with a session
// wait_timeout of a year, so the first KILL, hours or days later, goes on a connection idle all
// that time. Anything in between that forgets an idle flow silently (a NAT or load balancer idle
// timeout without a reset: Azure's 4 min, a conntrack table, a firewall; TCP keepalive is left at
// the OS's 2 h) leaves it dead without a word: killQuery sends the KILL there, no answer comes,
// and its one bound (`timeout`) runs out with the KILL never sent again (a second try is made
// only on an error). The batch behind row locks commits after the late window, over the repair
// (an older session value back, a deleted session revived), the failure the KILL is for. Before
// a0b0fc1 the kill connection was made at the first need (fresh) and the server's wait_timeout
// (8 h) cut it when long idle. Here the flow's silence is stood in for by the test: the kill
// connection's socket swallows what it is given (as a forgotten flow does).
// Fixed: on a kept kill connection the KILL has half the timeout for an answer, then goes on a
// new one (mysql.ts killQuery).
// ---------------------------------------------------------------------------------------------

test('a KILL on a kept kill connection that went silent while idle is sent again on a new one', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(r.db.url, { table: 'h11_silent', timeout: '1000', connections: '1' });
  const keys = ['sess:a', 'sess:b', 'sess:c', 'sess:d'];
  await Promise.all(keys.map((k) => set(up, k, 'old')));
  const kept = await (up as unknown as { killer: Promise<{ connection: { stream: { write: unknown } } }> | undefined }).killer;
  assert.ok(kept !== undefined, 'the kill connection made with the pool\'s first');
  kept.connection.stream.write = () => true; // the flow forgotten in between: nothing reaches the server, nothing comes back
  const holders = await lockRows(t, r.db.url, 'h11_silent', keys);
  const { stillThere } = await batchBehindLocks(r.admin, up, 'h11_silent', keys, holders);
  const values = (await q(r.admin, 'SELECT `value` FROM h11_silent ORDER BY `key`')).map((row) => String(row.value));
  t.diagnostic(`values once everything settled: ${JSON.stringify(values)}`);
  assert.equal(stillThere, false, 'the timed-out batch is still running on the server after the late window (it commits later)');
});
