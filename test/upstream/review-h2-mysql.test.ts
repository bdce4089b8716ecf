/**
 * Review h2 of the MySQL/MariaDB driver (src/upstream/mysql.ts): a connection lost mid-statement
 * (finding 1, fixed), the table dropped while running (finding 2, fixed), the kill connection
 * closed while idle (finding 3, fixed) or refused at max_connections (finding 4, fixed), a failover
 * that leaves the pool on a read-only old primary (finding 5, fixed); guards: concurrent
 * conditional writes from two sidecars, the server's prepared-statement limit, a batch at the
 * packet limit, expiry/flags/counter edges against memcached. One private MariaDB
 * (targets/mysql.ts) per top-level test, torn down after it. "holds" tests guard behaviour found
 * correct; the others are findings (todo until fixed).
 */

import assert from 'node:assert/strict';
import { type AddressInfo, type Socket, connect, createServer } from 'node:net';
import { type TestContext, test } from 'node:test';
import { EXPIRED } from '../../src/command/command';
import { ErrorCodes, mayLandLate } from '../../src/errors';
import type { StoreResult, Upstream } from '../../src/upstream/upstream';
import { type FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { inProcessMcmux } from '../helpers/in-process';
import { connectWire } from '../helpers/wire';
import { b, codeOf, getOne, retrying, set } from '../helpers/driver-calls';
import { eventually } from '../helpers/poll';
import { startMemcached } from '../helpers/servers';
import { connectMysqlUrl, startMariadb } from './targets/mysql';
import { type MysqlRig, appUser, batchBehindLocks, fillServer, lockRows, mysqlRig as rig, q, rootConnection } from './targets/mysql-rig';

const DAY = 24 * 3600 * 1000;

/** The test server's URL with another port (a proxy in front of it). */
function viaPort(url: string, port: number): string {
  const u = new URL(url);
  u.port = String(port);
  return u.href;
}

const outcome = (p: Promise<StoreResult>): Promise<string> =>
  p.then(
    (s) => s.status,
    (err: unknown) => codeOf(err),
  );

// ---------------------------------------------------------------------------------------------
// FINDING 1: a connection lost while its statement runs is reported as UPSTREAM_IO, not late,
// and the statement is left running on the server. MariaDB (and MySQL) do not stop a statement
// when its client goes away: one waiting for row locks goes on and commits. The driver knows
// this for a timeout (late, KILL QUERY: review-mysql-faults.test.ts), not for a lost connection
// (a TCP reset by a proxy in front of the database, MaxScale/ProxySQL/HAProxy restarting, a NAT
// or firewall dropping the flow): mysql.ts run() -> translate() gives a plain IO error (late
// false), and execute() discards the connection without killing its statement. The router takes
// a non-late failure as settled: it repairs the copy at once (no late window), and the statement
// lands afterwards. Here: a batch of two sessions' sets waits for one row another client holds
// (another sidecar's incr/gat of that session); the connection is reset; the driver reports
// both sets failed and not late; the holder commits; the batch commits the other session's
// stale value after the router would have repaired (or deleted) it: a deleted session comes back,
// or an older cart overwrites a newer one, on the durable store the sessions are read from once
// the cache forgets them.
// Fixed: a request whose connection was lost after it was sent is late (McmuxError.late), and its
// statement is killed as a timed-out one's is (mysql.ts execute(), translate(), killQuery).
// ---------------------------------------------------------------------------------------------

/**
 * A batch of two sets through a proxy that resets every connection (the driver's kill connection
 * among them) while the batch waits for a row lock another client holds; the holder commits once
 * the statement is stopped or after a bound. What the driver said, and what landed.
 */
async function lostMidStatement(r: MysqlRig, up: Upstream, proxy: FaultProxy, keys: readonly string[]): Promise<{ late: boolean[]; stopped: boolean; values: string[] }> {
  const inserting = async (): Promise<boolean> =>
    (await q(r.admin, "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO `h2_lost`%'")).length > 0;
  await retrying(() => Promise.all(keys.map((k) => set(up, k, 'old'))));
  const holder = await connectMysqlUrl(r.db.url); // straight to the server, not through the proxy
  try {
    await q(holder, 'BEGIN');
    await q(holder, 'SELECT * FROM h2_lost WHERE `key` = ? FOR UPDATE', [keys[0]]);
    // One pass, distinct keys, no unique wanted: one autocommit INSERT of both rows, waiting on the first.
    const sets = Promise.allSettled(keys.map((k) => up.store({ mode: 'set', key: k, value: b('stale'), flags: 0, deadline: 0, withCas: false })));
    await eventually('the batch waits for the row lock', inserting);
    proxy.reset(); // RST on both sides: the server's thread is in a lock wait, it does not notice
    const settled = await sets;
    const errors = settled.map((s) => (s.status === 'rejected' ? (s.reason as unknown) : undefined));
    const codes = errors.map((e) => (e === undefined ? 'fulfilled' : codeOf(e)));
    assert.deepEqual(codes, [ErrorCodes.UPSTREAM_IO, ErrorCodes.UPSTREAM_IO], 'both sets fail with the connection');
    // Stopped on the server (KILL QUERY) rather than left to its 30 s lock wait.
    const stopped = await eventually('the INSERT is stopped on the server', async () => !(await inserting()), 5000).then(
      () => true,
      () => false,
    );
    await q(holder, 'COMMIT');
    await eventually('the INSERT has ended on the server', async () => !(await inserting()), 40_000);
    const values: string[] = (await q(r.admin, 'SELECT `value` FROM h2_lost WHERE `key` IN (?, ?) ORDER BY `key`', [...keys])).map((row) => String(row.value));
    return { late: errors.map((e) => mayLandLate(e)), stopped, values };
  } finally {
    holder.destroy();
  }
}

/** An upstream through a fault proxy, with a long timeout (the lock wait is the timeout in seconds: 30 s), so that only a KILL ends the statement within lostMidStatement's poll. */
async function proxied(t: TestContext, r: MysqlRig): Promise<{ up: Upstream; proxy: FaultProxy }> {
  const proxy = await startFaultProxy(r.db.port);
  t.after(() => proxy.close());
  return { up: r.open(viaPort(r.db.url, proxy.port), { table: 'h2_lost', timeout: '30000', connections: '1' }), proxy };
}

test('a connection lost while its statement waits for a row lock: the failure is late, and the statement does not commit later', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const { up, proxy } = await proxied(t, r);
  assert.deepEqual(
    await lostMidStatement(r, up, proxy, ['sess:a', 'sess:b']),
    { late: [true, true], stopped: true, values: ['old', 'old'] },
    'a failure reported as settled (not late) whose statement then committed',
  );
  // The driver goes on: the proxy passes new connections.
  await retrying(() => set(up, 'sess:b', 'new'));
  assert.equal((await getOne(up, 'sess:b'))?.value.toString(), 'new');
});

// ---------------------------------------------------------------------------------------------
// FINDING 3: the KILL QUERY of a timed-out (or, since finding 1, lost) request is sent on the
// driver's kill connection, made on first need and then kept idle, with no keep-alive. When the
// server has closed that connection meanwhile (its wait_timeout: 8 h idle by default, a night
// without timeouts; a restart of a proxy in between; an operator's KILL of idle threads), the
// KILL fails, and that failure only drops the dead connection ("the next KILL fails and makes
// another", mysql.ts connectKiller): this statement is not killed at all. The timed-out batch on
// rows locked one after another then commits after the router's late window, over the repair
// (the failure review-mysql-faults.test.ts fixed with the kill, back after the first idle night).
// Here: a first timeout makes the kill connection (the scenario passes); the server then closes
// every idle connection of the account (as its wait_timeout does); the same scenario again.
// Fixed: a KILL that fails on a kill connection made before (not a server error) is sent once
// more on a new one, within the same bound (mysql.ts killQuery).
// ---------------------------------------------------------------------------------------------

test('a KILL QUERY is not lost when the kill connection was closed by the server while idle', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(r.db.url, { table: 'h2_killer', timeout: '1000', connections: '1' });
  const results: Array<{ round: number; stillThere: boolean }> = [];
  for (let round = 0; round < 2; round++) {
    const keys = ['a', 'b', 'c', 'd'].map((k) => `sess:${round}${k}`);
    await retrying(() => Promise.all(keys.map((k) => set(up, k, 'old'))));
    const holders = await lockRows(t, r.db.url, 'h2_killer', keys);
    const { stillThere } = await batchBehindLocks(r.admin, up, 'h2_killer', keys, holders);
    results.push({ round, stillThere });
    if (round === 0) {
      // The server closes the account's idle connections, the kill connection among them (its
      // wait_timeout would, after a night without a timeout).
      for (const row of await q(r.admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'mcmux'")) await q(r.admin, `KILL ${Number(row.ID)}`).catch(() => undefined);
      await eventually('no connection of the account left', async () => (await q(r.admin, "SELECT 1 FROM information_schema.PROCESSLIST WHERE USER = 'mcmux'")).length === 0);
    }
  }
  assert.deepEqual(results, [
    { round: 0, stillThere: false },
    { round: 1, stillThere: false },
  ], 'the timed-out batch still on the server after the late window (it commits later)');
});

// Finding 3 with finding 1: the reset that loses the request's connection also cuts the kill
// connection a timeout made before (a proxy restarting cuts every connection through it).
test('a connection lost mid-statement, the kill connection cut with it: the statement is still stopped', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const { up, proxy } = await proxied(t, r);
  await lostMidStatement(r, up, proxy, ['sess:0a', 'sess:0b']); // makes the kill connection (finding 1 fixed)
  assert.deepEqual(
    await lostMidStatement(r, up, proxy, ['sess:1a', 'sess:1b']),
    { late: [true, true], stopped: true, values: ['old', 'old'] },
    'the KILL was sent on the dead kill connection only: the statement committed',
  );
});

// ---------------------------------------------------------------------------------------------
// FINDING 4 (fixed): the KILL QUERY needs a connection of its own, made on first need: when the
// server is at max_connections (the very overload that makes statements time out: every app
// server's pool full), that connection is refused (ER_CON_COUNT_ERROR, 1040) and the statement
// was not killed. The timed-out statement's own connection was cut, but its server thread, still
// in the statement, keeps its slot, so there is no room for the kill either. A batch on rows
// locked one after another then committed after the late window, over the repair: the failure
// review-mysql-faults.test.ts fixed with the kill, back under overload. (The mcmux account here
// has no SUPER / CONNECTION ADMIN, which get one connection more.) The KILL now goes on the
// pool's first free connection when one of its own cannot be made (mysql.ts killPooled).
// ---------------------------------------------------------------------------------------------

test('a timed-out statement is killed even when the server is at max_connections', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(await appUser(r), { table: 'h2_maxconn', timeout: '1000', connections: '2' });
  const keys = ['sess:a', 'sess:b', 'sess:c', 'sess:d'];
  // Both pooled connections made (two requests at once), the rows there.
  await Promise.all([set(up, 'warm:1', 'x'), up.store({ mode: 'add', key: 'warm:2', value: b('x'), flags: 0, deadline: 0 })]);
  await Promise.all(keys.map((k) => set(up, k, 'old')));
  const holders = await lockRows(t, r.db.url, 'h2_maxconn', keys);
  await fillServer(t, r.admin, r.db.url);
  const { stillThere } = await batchBehindLocks(r.admin, up, 'h2_maxconn', keys, holders);
  const values = (await q(r.admin, 'SELECT `value` FROM h2_maxconn WHERE `key` LIKE ? ORDER BY `key`', ['sess:%'])).map((row) => String(row.value));
  t.diagnostic(`values once everything settled: ${JSON.stringify(values)}`);
  assert.equal(stillThere, false, 'the timed-out batch is still running on the server after the late window (it commits later)');
});

// ---------------------------------------------------------------------------------------------
// FINDING 2: the table dropped while mcmux runs (an operator, a migration, a restore script, a
// `DROP DATABASE` + re-create) is re-created empty by the next request (mysql.ts execute(): on
// ER_NO_SUCH_TABLE, prepare() creates it and the request runs again), silently: every session
// and every session lock the store held is gone, yet mcmux is not told (no onReconnect), so the
// cold detector does not fence it, and the very request that found the table missing (an `add`
// of a lock) is decided on the empty table: STORED. With MySQL the first upstream, a lock the
// other upstreams hold is granted a second time (two PHP requests in one session, one's cart
// written over the other's). The sqlite driver does what is needed for its file (a file
// unlinked or truncated: queued operations fail unrun, onReconnect fences it).
// (The cold detector's periodic marker check, every 2 s, finds the marker gone: the window is
// from the drop to that check.)
// Fixed: a table found missing after this process had it is a store come back empty: the epoch
// moves (requests sent before fail unsent), onReconnect is called, and the request fails as
// UPSTREAM_UNREACHABLE (it changed nothing) after the table is made again (mysql.ts tableLost).
// ---------------------------------------------------------------------------------------------

test('the table dropped while running: reported as a store come back empty, and the add that found it missing is not decided on the empty table', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const up = r.open(r.db.url, { table: 'h2_drop' });
  let reconnects = 0;
  up.onReconnect = () => reconnects++;
  assert.equal((await up.store({ mode: 'add', key: 'lock:1', value: b('held'), flags: 0, deadline: 0 })).status, 'STORED');
  await q(r.admin, 'DROP TABLE h2_drop');
  const second = await outcome(up.store({ mode: 'add', key: 'lock:1', value: b('again'), flags: 0, deadline: 0 }));
  assert.deepEqual({ second, told: reconnects > 0 }, { second: ErrorCodes.UPSTREAM_UNREACHABLE, told: true }, 'the lock granted again on a table made empty behind mcmux');
  // The store works again, on the new table.
  await retrying(() => set(up, 'sess:after', 'v'));
  assert.equal((await getOne(up, 'sess:after'))?.value.toString(), 'v');
});

// The same through mcmux: MySQL first (it decides adds), memcached second.
test('through mcmux: a lock held when the MySQL table is dropped is not granted again', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const mc = await startMemcached();
  t.after(() => mc.stop());
  const app = await inProcessMcmux({}, [`${r.db.url}?table=h2_drop_mux`, mc.url]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  // mcmux fences a store at start until its marker is checked: wait for the first add.
  await eventually('the lock is granted once', async () => (await w.ask('add lock:s1 0 0 1\r\n1\r\n', /\r\n$/)) === 'STORED\r\n');
  assert.equal(await w.ask('add lock:s1 0 0 1\r\n1\r\n', /\r\n$/), 'NOT_STORED\r\n');
  await q(r.admin, 'DROP TABLE h2_drop_mux');
  const answers: string[] = [];
  for (let i = 0; i < 3; i++) answers.push((await w.ask('add lock:s1 0 0 1\r\n1\r\n', /\r\n$/)).trim());
  assert.ok(!answers.includes('STORED'), `a held lock granted again: ${answers.join(', ')}`);
});

// ---------------------------------------------------------------------------------------------
// FINDING 5: a pooled connection to a server that turned read-only is kept for good. A failover
// that moves the primary behind a name (RDS/Aurora's cluster endpoint, a DNS record a failover
// tool rewrites, a proxy that routes new connections only) leaves the old primary running with
// read_only=ON, and every connection opened before still reaches it: each write is refused
// (ER_OPTION_PREVENTS_STATEMENT, 1290), mysql.ts execute() releases the connection to the pool as after
// any server error, and the next write takes it again. Refusals do not count against the health,
// so nothing ever makes the pool reconnect: the store behind the name, which has the sessions'
// future, gets no write (each one journaled, and the repair refused in turn), for as long as the
// process runs with traffic. Sessions written since exist only in the cache in front; a cache
// restart or eviction logs their users out.
// Fixed: a connection whose statement the server refused as read-only is discarded, not released:
// the next request connects again, through the name, to the new primary (a server still
// read-only refuses it again, as before) (mysql.ts execute()).
// ---------------------------------------------------------------------------------------------

/** A TCP forwarder whose target port can be switched: new connections only (a DNS flip). */
async function switchable(t: TestContext, initial: number): Promise<{ port: number; to(port: number): void }> {
  let target = initial;
  const sockets = new Set<Socket>();
  const server = createServer((c) => {
    const s = connect(target, '127.0.0.1');
    for (const x of [c, s]) {
      sockets.add(x);
      x.on('error', () => {
        c.destroy();
        s.destroy();
      });
      x.on('close', () => {
        sockets.delete(x);
        c.destroy();
        s.destroy();
      });
    }
    c.pipe(s);
    s.pipe(c);
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  t.after(() => {
    for (const x of sockets) x.destroy();
    return new Promise<void>((res) => server.close(() => res()));
  });
  return { port: (server.address() as AddressInfo).port, to: (port) => (target = port) };
}

test('a failover behind a name: writes reach the new primary, not refused for good by the read-only old one', { timeout: 90_000 }, async (t) => {
  const a = await rig(t);
  if (!a) return;
  const bDb = await startMariadb();
  t.after(() => bDb.destroy());
  const bAdmin = await rootConnection(bDb);
  t.after(() => bAdmin.destroy());
  for (const admin of [a.admin, bAdmin]) {
    await q(admin, "CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw'");
    await q(admin, "GRANT ALL ON mcmux.* TO 'app'@'127.0.0.1'"); // no SUPER / READ_ONLY ADMIN
    await q(admin, 'CREATE TABLE h2_failover (`key` VARBINARY(250) NOT NULL, `value` LONGBLOB NOT NULL, `flags` INT UNSIGNED NOT NULL, `cas` BIGINT UNSIGNED NOT NULL, `exp` BIGINT NOT NULL, PRIMARY KEY (`key`), KEY `mcmux_exp` (`exp`)) ENGINE=InnoDB');
  }
  const name = await switchable(t, a.db.port);
  const u = new URL(viaPort(a.db.url, name.port));
  u.username = 'app';
  u.password = 'apppw';
  const up = a.open(u.href, { table: 'h2_failover', connections: '2' });
  await Promise.all([set(up, 'sess:1', 'before'), up.store({ mode: 'add', key: 'sess:2', value: b('before'), flags: 0, deadline: 0 })]);
  // The failover: the old primary demoted (read-only), the name now leads to the new one.
  await q(a.admin, 'SET GLOBAL read_only = 1');
  t.after(() => q(a.admin, 'SET GLOBAL read_only = 0').then(() => {}, () => {}));
  name.to(bDb.port);
  const outcomes: string[] = [];
  for (let i = 0; i < 10; i++) {
    outcomes.push(await outcome(up.store({ mode: 'set', key: 'sess:1', value: b(`after ${i}`), flags: 0, deadline: 0, withCas: false })));
    if (outcomes[i] === 'STORED') break;
  }
  const onB = (await q(bAdmin, "SELECT `value` FROM h2_failover WHERE `key` = 'sess:1'")).map((row) => String(row.value));
  t.diagnostic(outcomes.join());
  assert.ok(outcomes.includes('STORED') && onB.length === 1, `ten writes after the failover: ${outcomes.join()}; the new primary holds ${JSON.stringify(onB)}`);
});

// ---------------------------------------------------------------------------------------------
// holds: conditional writes of one key from two sidecars (two driver instances, two pools) at
// once, on an absent key and on an expired row: exactly one add wins each round; of two cas with
// the same unique exactly one is STORED; concurrent incr lose no step and never answer one value
// twice. Row locks and the ODKU / WHERE conditions decide, deadlocks are retried.
// ---------------------------------------------------------------------------------------------

test('holds: add vs add, cas vs cas and incr races across two sidecars: exactly one winner, no lost step', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const a = r.open(r.db.url, { table: 'h2_race', connections: '8' });
  const c = r.open(r.db.url, { table: 'h2_race', connections: '8' });
  await retrying(() => a.probe());
  await retrying(() => c.probe());
  const add = (u: Upstream, key: string, i: number): Promise<string> => outcome(u.store({ mode: 'add', key, value: b(`owner ${i}`), flags: 0, deadline: Date.now() + DAY }));
  for (let round = 0; round < 30; round++) {
    const key = `lock:${round}`;
    if (round % 2 === 1) await set(a, key, 'expired', 0, EXPIRED + 1); // an expired row in place
    const got = await Promise.all(Array.from({ length: 12 }, (_, i) => add(i % 2 === 0 ? a : c, key, i)));
    assert.equal(got.filter((s) => s === 'STORED').length, 1, `round ${round}: ${got.join(',')}`);
    assert.ok(got.every((s) => s === 'STORED' || s === 'NOT_STORED'), got.join(','));
  }
  for (let round = 0; round < 20; round++) {
    const key = `cas:${round}`;
    const unique = await set(a, key, 'v0');
    const got = await Promise.all(
      Array.from({ length: 8 }, (_, i) => outcome((i % 2 === 0 ? a : c).store({ mode: 'cas', key, value: b(`v${i}`), flags: 0, deadline: 0, cas: unique }))),
    );
    assert.equal(got.filter((s) => s === 'STORED').length, 1, `round ${round}: ${got.join(',')}`);
  }
  await set(a, 'n', '0');
  const incrs = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? a : c).arith('incr', 'n', 1n)));
  const values = incrs.map((x) => (x.status === 'OK' ? x.value : -1n)).sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  assert.deepEqual(values, Array.from({ length: 60 }, (_, i) => BigInt(i + 1)), 'each incr its own step');
  assert.equal((await getOne(c, 'n'))?.value.toString(), '60');
});

// ---------------------------------------------------------------------------------------------
// holds: the server's max_prepared_stmt_count reached (by every client of the server): a request
// needing a statement not yet prepared on its connection is REFUSED and applied nothing (a batch
// shape, a conditional store); the ones already prepared go on; connections cut and made again
// free their statements (the server's count does not grow across reconnects); once the limit is
// raised everything works.
// ---------------------------------------------------------------------------------------------

test('holds: max_prepared_stmt_count reached: refused as unapplied, no leak across reconnects', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const stmtCount = async (): Promise<number> => Number((await q(r.admin, "SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'"))[0]?.Value);
  const up = r.open(r.db.url, { table: 'h2_ps', connections: '1' });
  await set(up, 'sess:1', 'alice');
  await set(up, 'sess:2', 'bob');
  await getOne(up, 'sess:2');
  const before = Number((await q(r.admin, 'SELECT @@global.max_prepared_stmt_count AS m'))[0]?.m);
  t.after(() => q(r.admin, `SET GLOBAL max_prepared_stmt_count = ${before}`).then(() => {}, () => {}));
  await q(r.admin, `SET GLOBAL max_prepared_stmt_count = ${await stmtCount()}`);
  // Prepared already: a lone set, a get of one key.
  assert.equal((await getOne(up, 'sess:1'))?.value.toString(), 'alice');
  // Not prepared: an add, a replace, a batch of three, a delete.
  const refused = await Promise.all([
    outcome(up.store({ mode: 'add', key: 'sess:3', value: b('x'), flags: 0, deadline: 0 })),
    outcome(up.store({ mode: 'replace', key: 'sess:1', value: b('mallory'), flags: 0, deadline: 0 })),
    up.delete('sess:2').then((s) => s, (err: unknown) => codeOf(err)),
  ]);
  assert.deepEqual(refused, [ErrorCodes.UPSTREAM_REFUSED, ErrorCodes.UPSTREAM_REFUSED, ErrorCodes.UPSTREAM_REFUSED]);
  const batch = await Promise.all(['sess:4', 'sess:5', 'sess:6'].map((k) => outcome(up.store({ mode: 'set', key: k, value: b('y'), flags: 0, deadline: 0, withCas: false }))));
  assert.ok(batch.every((s) => s === ErrorCodes.UPSTREAM_REFUSED), batch.join());
  const rows = (await q(r.admin, 'SELECT `key`, `value` FROM h2_ps ORDER BY `key`')).map((row) => `${String(row.key)}=${String(row.value)}`);
  assert.deepEqual(rows, ['sess:1=alice', 'sess:2=bob'], 'nothing refused was applied');
  await q(r.admin, `SET GLOBAL max_prepared_stmt_count = ${before}`);
  // Connections cut and made again, several times, under requests: the count stays bounded.
  const base = await stmtCount();
  for (let round = 0; round < 5; round++) {
    await Promise.allSettled(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? getOne(up, `sess:${i}`) : set(up, `sess:${i}`, 'z'))));
    for (const row of await q(r.admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'mcmux'")) await q(r.admin, `KILL ${Number(row.ID)}`).catch(() => undefined);
  }
  await retrying(() => set(up, 'sess:last', 'v'));
  await Promise.all([getOne(up, 'sess:1'), up.store({ mode: 'add', key: 'sess:7', value: b('x'), flags: 0, deadline: 0 })]);
  const after = await stmtCount();
  t.diagnostic(`prepared statements: ${base} before the cuts, ${after} after`);
  // One connection prepares about 52 at most (mysql.ts header): a leak of each cut one's would pass it.
  assert.ok(after <= 60, `statements of cut connections are freed: ${base} -> ${after}`);
});

// ---------------------------------------------------------------------------------------------
// holds: a batch at the packet limit. The server's max_allowed_packet set to exactly what the
// driver asks for (max-item-size + 16 KiB): a batch of 256 sets with 250-byte keys whose keys and
// values fill max-item-size goes in one statement (the per-row overhead of the binary protocol
// fits the 16 KiB), and every byte comes back.
// ---------------------------------------------------------------------------------------------

test('holds: a full batch (256 rows, 250-byte keys, max-item-size bytes) fits the smallest max_allowed_packet the driver accepts', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const small = { defaultTimeoutMs: 5000, maxItemSize: 256 * 1024 };
  const before = Number((await q(r.admin, 'SELECT @@global.max_allowed_packet AS m'))[0]?.m);
  await q(r.admin, `SET GLOBAL max_allowed_packet = ${small.maxItemSize + 16 * 1024}`);
  t.after(() => q(r.admin, `SET GLOBAL max_allowed_packet = ${before}`).then(() => {}, () => {}));
  const up = r.open(r.db.url, { table: 'h2_packet', connections: '1' }, small);
  await retrying(() => up.probe());
  const rows = 256;
  const keyOf = (i: number): string => `${String(i).padStart(3, '0')}${'k'.repeat(247)}`;
  const valueBytes = Math.floor(small.maxItemSize / rows) - 250;
  const valueOf = (i: number): Buffer => Buffer.alloc(valueBytes, i % 256);
  // Occupy the one connection so that all 256 gather into one batch.
  const holder = await connectMysqlUrl(r.db.url);
  t.after(() => holder.destroy());
  await set(up, 'gate', 'x');
  await q(holder, 'BEGIN');
  await q(holder, "SELECT * FROM h2_packet WHERE `key` = 'gate' FOR UPDATE");
  const gate = up.store({ mode: 'set', key: 'gate', value: b('y'), flags: 0, deadline: 0, withCas: false });
  const sets = Array.from({ length: rows }, (_, i) => up.store({ mode: 'set', key: keyOf(i), value: valueOf(i), flags: 0xffffffff, deadline: 0, withCas: false }));
  await q(holder, 'COMMIT');
  await gate;
  const got = await Promise.all(sets.map((p) => outcome(p)));
  assert.ok(got.every((s) => s === 'STORED'), [...new Set(got)].join());
  const hits = await up.get(Array.from({ length: rows }, (_, i) => keyOf(i)));
  assert.ok(hits.every((h, i) => h !== undefined && h.value.equals(valueOf(i)) && h.flags === 0xffffffff), 'every row as written');
});


// ---------------------------------------------------------------------------------------------
// holds: the text protocol's expiry, flags and counter edges through mcmux on MySQL alone answer
// as a real memcached 1.6 does (cas uniques masked): exptime relative up to 30 days, absolute
// beyond (one in the past expires), negative; flags up to 2^32-1; add over an expired item; cas
// on a missing key; incr wrapping at 2^64, decr flooring at 0, a counter past 2^64 non-numeric;
// append to an expired item; touch and gat.
// ---------------------------------------------------------------------------------------------

test('holds: expiry, flags and counter edges through mcmux on MySQL answer as memcached does', { timeout: 60_000 }, async (t) => {
  const r = await rig(t);
  if (!r) return;
  const mc = await startMemcached();
  t.after(() => mc.stop());
  const app = await inProcessMcmux({}, [`${r.db.url}?table=h2_semantics`]);
  const real = await connectWire(mc.port);
  const mux = await connectWire(app.address.port);
  t.after(() => {
    real.close();
    mux.close();
  });
  await eventually('mcmux takes writes', async () => (await mux.ask('set warm 0 0 1\r\nx\r\n', /\r\n$/)) === 'STORED\r\n');
  const now = Math.floor(Date.now() / 1000);
  const script = [
    'set f 4294967295 0 1\r\na\r\n',
    'get f\r\n',
    'set rel 0 2592000 1\r\nb\r\n',
    'get rel\r\n',
    'set past 0 2592001 1\r\nc\r\n',
    'get past\r\n',
    `set abs 0 ${now + 3600} 1\r\nd\r\n`,
    'get abs\r\n',
    'set neg 0 -1 1\r\ne\r\n',
    'get neg\r\n',
    'set gone 0 0 1\r\nf\r\n',
    'set gone 0 -1 1\r\ng\r\n',
    'get gone\r\n',
    'add gone 0 0 1\r\nh\r\n',
    'get gone\r\n',
    'add gone 0 0 1\r\ni\r\n',
    'cas missing 0 0 1 12345\r\nj\r\n',
    'set n 0 0 20\r\n18446744073709551615\r\n',
    'incr n 1\r\n',
    'decr n 5\r\n',
    'set big 0 0 20\r\n18446744073709551616\r\n',
    'incr big 1\r\n',
    'set w 0 0 2\r\nab\r\n',
    'incr w 1\r\n',
    'set exp 0 -1 1\r\nk\r\n',
    'append exp 0 0 1\r\nl\r\n',
    'touch missing 10\r\n',
    'touch f 100\r\n',
    'gat 100 f rel missing\r\n',
    'set z 0 0 1\r\nm\r\n',
    'touch z -1\r\n',
    'get z\r\n',
  ];
  const mask = (s: string): string => s.replace(/^(VALUE \S+ \d+ \d+) \d+\r$/gm, '$1 CAS\r');
  const answers = async (w: typeof real): Promise<string[]> => {
    const out: string[] = [];
    for (const cmd of script) out.push(mask(await w.ask(cmd, /(END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|ERROR[^\r]*|\d+)\r\n$/, 5000)));
    return out;
  };
  const expected = await answers(real);
  const got = await answers(mux);
  assert.deepEqual(
    script.map((c, i) => `${c.split('\r\n')[0]} -> ${JSON.stringify(got[i])}`),
    script.map((c, i) => `${c.split('\r\n')[0]} -> ${JSON.stringify(expected[i])}`),
  );
});
