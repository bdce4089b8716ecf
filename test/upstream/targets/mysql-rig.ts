/**
 * The rig of the MySQL driver's fault reviews (review-mysql-faults, review-h2-mysql): a private
 * MariaDB with a root connection to it, upstreams closed after the test, and the scenario they
 * share, a batch of sets that times out behind row locks other clients hold one after another.
 */

import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { type Connection, type RowDataPacket, createConnection } from 'mysql2/promise';
import { ErrorCodes } from '../../../src/errors';
import { createMysqlUpstream } from '../../../src/upstream/mysql';
import type { StoreResult, Upstream } from '../../../src/upstream/upstream';
import { codeOf } from '../../helpers/driver-calls';
import { eventually } from '../../helpers/poll';
import { requireBinary } from '../../helpers/servers';
import { type MariadbProcess, connectMysqlUrl, startMariadb } from './mysql';

export const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };

/** src/router/repair.ts: how long the router waits for a timed-out write to land before it repairs. */
const LATE_SETTLE_MS = 1000;
/** Each lock holder keeps its row this long: under the driver's 1 s lock wait. */
const HOLD_MS = 700;

export interface MysqlRig {
  readonly db: MariadbProcess;
  /** root, over the server's socket (mcmux has ALL ON *.* but no GRANT OPTION). */
  readonly admin: Connection;
  open(url: string, options?: Record<string, string>, c?: typeof ctx): Upstream;
}

/** A private MariaDB, an admin connection to it, and upstreams closed after the test (undefined: skipped). */
export async function mysqlRig(t: TestContext): Promise<MysqlRig | undefined> {
  if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return undefined;
  const db = await startMariadb();
  const admin = await rootConnection(db);
  const opened: Upstream[] = [];
  t.after(async () => {
    db.resume();
    await Promise.all(opened.map((u) => u.close()));
    admin.destroy();
    await db.destroy();
  });
  return {
    db,
    admin,
    open: (url, options = {}, c = ctx) => {
      const u = createMysqlUpstream(new URL(url), new Map(Object.entries(options)), c);
      opened.push(u);
      return u;
    },
  };
}

/** root, over the server's Unix socket (root@localhost, no password: mariadb-install-db). */
export async function rootConnection(db: MariadbProcess): Promise<Connection> {
  const probe = await connectMysqlUrl(db.url);
  const socketPath = String((await q(probe, 'SELECT @@socket AS s'))[0]?.s);
  probe.destroy();
  return createConnection({ socketPath, user: 'root', database: 'mcmux', connectTimeout: 5000, supportBigNumbers: true, bigNumberStrings: true });
}

export async function q(conn: Connection, sql: string, params: unknown[] = []): Promise<RowDataPacket[]> {
  const [r] = await conn.query<RowDataPacket[]>({ sql, timeout: 10_000 }, params);
  return r;
}

/** Each of `keys` row-locked (BEGIN; SELECT ... FOR UPDATE) by a client connection of its own, destroyed after the test. */
export async function lockRows(t: TestContext, url: string, table: string, keys: readonly string[]): Promise<Connection[]> {
  const holders: Connection[] = [];
  t.after(() => {
    for (const h of holders) h.destroy();
  });
  for (const k of keys) {
    const h = await connectMysqlUrl(url);
    holders.push(h);
    await q(h, 'BEGIN');
    await q(h, `SELECT * FROM ${table} WHERE \`key\` = ? FOR UPDATE`, [k]);
  }
  return holders;
}

/**
 * Sets of `keys` to 'stale' through `up`, sent at once (one batch, one INSERT into `table`), held
 * by `holders` (lockRows), which let go one after another, each within the lock wait. Asserts
 * that each set times out; resolves once the INSERT has ended on the server, with whether it was
 * still running when the router's late window after the timeouts was over (then it commits
 * later, over the repair).
 */
export async function batchBehindLocks(admin: Connection, up: Upstream, table: string, keys: readonly string[], holders: readonly Connection[]): Promise<{ stillThere: boolean }> {
  const { stillThere } = await batchesBehindLocks(admin, up, table, [keys], [holders]);
  return { stillThere: stillThere > 0 };
}

/**
 * batchBehindLocks for several batches, each on a pooled connection of its own (sent one after the
 * other, each once the one before waits for its first row), their holders letting go row by row
 * together. `stillThere`: how many of the INSERTs still ran when the late window was over.
 */
export async function batchesBehindLocks(
  admin: Connection,
  up: Upstream,
  table: string,
  batches: ReadonlyArray<readonly string[]>,
  holders: ReadonlyArray<readonly Connection[]>,
): Promise<{ stillThere: number }> {
  const inserts = async (): Promise<number> =>
    (await q(admin, `SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO \`${table}\`%'`)).length;
  const outcomes: Promise<PromiseSettledResult<StoreResult>[]>[] = [];
  for (const [i, keys] of batches.entries()) {
    outcomes.push(Promise.allSettled(keys.map((k) => up.store({ mode: 'set', key: k, value: Buffer.from('stale'), flags: 0, deadline: 0, withCas: false }))));
    await eventually(`batch ${i + 1} waits for its first row`, async () => (await inserts()) === i + 1);
  }
  const rows = Math.max(...holders.map((hs) => hs.length));
  const releases = (async () => {
    for (let i = 0; i < rows; i++) {
      await new Promise((res) => setTimeout(res, HOLD_MS));
      await Promise.all(holders.map((hs) => (hs[i] === undefined ? undefined : q(hs[i] as Connection, 'COMMIT'))));
    }
  })();
  const settled = (await Promise.all(outcomes)).flat();
  const timedOutAt = performance.now();
  assert.deepEqual(
    settled.map((s) => (s.status === 'rejected' ? codeOf(s.reason) : s.value.status)),
    settled.map(() => ErrorCodes.UPSTREAM_TIMEOUT),
    'each set of the batches times out',
  );
  await new Promise((res) => setTimeout(res, Math.max(0, LATE_SETTLE_MS - (performance.now() - timedOutAt))));
  const stillThere = await inserts();
  await releases;
  await eventually('the INSERTs ended on the server', async () => (await inserts()) === 0);
  return { stillThere };
}

/**
 * The server full: max_connections set to the connections open now plus two, and idle client
 * connections opened up to it (closed after the test, the limit put back).
 */
export async function fillServer(t: TestContext, admin: Connection, url: string): Promise<void> {
  const fillers: Connection[] = [];
  t.after(() => {
    for (const c of fillers) c.destroy();
  });
  const connected = async (): Promise<number> => Number((await q(admin, "SHOW GLOBAL STATUS LIKE 'Threads_connected'"))[0]?.Value);
  const before = Number((await q(admin, 'SELECT @@global.max_connections AS m'))[0]?.m);
  await q(admin, `SET GLOBAL max_connections = ${(await connected()) + 2}`);
  t.after(() => q(admin, `SET GLOBAL max_connections = ${before}`).then(() => {}, () => {}));
  const limit = Number((await q(admin, 'SELECT @@global.max_connections AS m'))[0]?.m);
  while ((await connected()) < limit) fillers.push(await connectMysqlUrl(url));
}

/**
 * A new account of the test server, 'app' (password 'apppw'), granted `grant` (by default every
 * privilege on the database, and nothing global: no SUPER, no CONNECTION ADMIN); its URL.
 */
export async function appUser(r: MysqlRig, grant = 'ALL ON mcmux.*'): Promise<string> {
  await q(r.admin, "CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw'");
  await q(r.admin, `GRANT ${grant} TO 'app'@'127.0.0.1'`);
  const u = new URL(r.db.url);
  u.username = 'app';
  u.password = 'apppw';
  return u.href;
}
