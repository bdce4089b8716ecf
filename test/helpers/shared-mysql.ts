/**
 * The machine's shared MariaDB (127.0.0.1:3306, root, no password, database `test`), for tests
 * that need an account or a table of their own rather than a private server (test/upstream/targets
 * /mysql.ts starts those). Whatever a test makes there is dropped after it, mcmux stopped first.
 */

import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import { type Connection, createConnection } from 'mysql2/promise';

export const SHARED_MYSQL = { host: '127.0.0.1', port: 3306, user: 'root', database: 'test' };

const cleanups = new WeakMap<Connection, { drops: string[]; stops: Array<() => Promise<unknown>> }>();

/**
 * A root connection to the shared MariaDB, closed after the test (after the `stopFirst` and
 * `dropAfter` work). Without one the test is skipped, or fails under MCMUX_REQUIRE_SERVERS=1 (CI),
 * as a missing server binary does (servers.ts requireBinary).
 */
export async function sharedMysql(t: TestContext): Promise<Connection | undefined> {
  let c: Connection;
  try {
    c = await createConnection({ ...SHARED_MYSQL, connectTimeout: 3000 });
  } catch (error) {
    const why = `no MariaDB at 127.0.0.1:3306 as root (apt-get install mariadb-server): ${String(error)}`;
    if (process.env.MCMUX_REQUIRE_SERVERS === '1') throw new Error(`${why}, and MCMUX_REQUIRE_SERVERS=1`);
    t.skip(why);
    return undefined;
  }
  const drops: string[] = [];
  const stops: Array<() => Promise<unknown>> = [];
  cleanups.set(c, { drops, stops });
  t.after(async () => {
    // mcmux first: one still running would make its table again after the drop.
    for (const stop of stops) await stop().catch(() => {});
    for (const sql of drops) await c.query(sql).catch(() => {});
    await c.end().catch(() => {});
  });
  return c;
}

/** Runs `stop` after the test, before what `dropAfter` names is dropped. */
export function stopFirst(root: Connection, stop: () => Promise<unknown>): void {
  cleanups.get(root)?.stops.push(stop);
}

/** Runs each statement (a DROP) after the test, once the `stopFirst` work is done. */
export function dropAfter(root: Connection, ...sql: string[]): void {
  cleanups.get(root)?.drops.push(...sql);
}

/**
 * A uniquely named account `<prefix>_<hex>` on the shared MariaDB (its password, and the name of
 * a table not there yet), given `grants` (each statement, for the account as `'user'@'%'`), and
 * dropped with the table after the test. `url`: mcmux's upstream for that account and table.
 */
export async function account(root: Connection, prefix: string, grants: (user: string) => string[]): Promise<{ url: string; pw: string; table: string }> {
  const tag = randomBytes(4).toString('hex');
  const user = `${prefix}_${tag}`;
  const table = `${prefix}_${tag}`;
  const pw = `Pw${randomBytes(6).toString('hex')}`;
  dropAfter(root, `DROP USER IF EXISTS '${user}'@'%'`, `DROP TABLE IF EXISTS test.${table}`);
  await root.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${pw}'`);
  for (const g of grants(`'${user}'@'%'`)) await root.query(g);
  return { url: `mysql://${user}:${pw}@127.0.0.1:3306/test?table=${table}`, pw, table };
}
