/**
 * The durable stores behind `mcmux3`: a private redis-server and a private MariaDB, each on a free
 * port on 127.0.0.1 with its files in the run's temporary directory, registered in `Children`
 * like every other process of the run. The machine's own Redis or MySQL is never touched.
 *
 *   redis:   redis-server --port P --bind 127.0.0.1 --save '' --appendonly no --dir <tmp>/redis-P
 *            ─► "Ready to accept connections"
 *   mariadb: mariadb-install-db into <tmp>/mariadb-P/data ─► mariadbd --port P ... --init-file
 *            (creates database and user) ─► "ready for connections" (printed after the init file ran)
 *
 * MariaDB keeps its defaults but two: a buffer pool that holds the whole key space (100k × 1 KB),
 * and nothing listening but 127.0.0.1. In particular innodb_flush_log_at_trx_commit stays 1: a
 * session store that is there for durability fsyncs its commits, and writes pay for that.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Children, HOST, type Proc, Unavailable, freePort, waitForOutput, which } from './processes';

const READY_TIMEOUT_MS = { redis: 5000, mariadb: 30_000 } as const;
const INSTALL_TIMEOUT_MS = 60_000;

export interface Store {
  proc: Proc;
  /** The upstream URL mcmux is given. */
  url: string;
}

export async function startRedis(children: Children, tmp: string): Promise<Store> {
  if (!which('redis-server')) throw new Unavailable('not installed (redis-server not on PATH)');
  const port = await freePort();
  const dir = join(tmp, `redis-${port}`);
  mkdirSync(dir);
  const args = ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir];
  const proc = children.spawn(`redis:${port}`, 'redis-server', args);
  await ready(children, proc, /Ready to accept connections/, READY_TIMEOUT_MS.redis);
  return { proc, url: `redis://${HOST}:${port}/0` };
}

export async function startMariadb(children: Children, tmp: string): Promise<Store> {
  if (!which('mariadbd') || !which('mariadb-install-db')) throw new Unavailable('not installed (mariadbd or mariadb-install-db not on PATH)');
  const port = await freePort();
  const dir = join(tmp, `mariadb-${port}`);
  mkdirSync(dir);
  // mariadbd refuses to run as root unless told to.
  const asRoot = process.getuid?.() === 0 ? ['--user=root'] : [];
  const data = join(dir, 'data');
  await children.run('mariadb-install-db', 'mariadb-install-db', [
    '--no-defaults', `--datadir=${data}`, '--auth-root-authentication-method=normal', '--skip-test-db', ...asRoot,
  ], INSTALL_TIMEOUT_MS);
  const init = join(dir, 'init.sql');
  writeFileSync(init, [
    'CREATE DATABASE IF NOT EXISTS mcmux;',
    `CREATE USER IF NOT EXISTS 'mcmux'@'${HOST}' IDENTIFIED BY 'bench';`,
    `GRANT ALL ON mcmux.* TO 'mcmux'@'${HOST}';`,
    '',
  ].join('\n'));
  const proc = children.spawn(`mariadb:${port}`, 'mariadbd', [
    '--no-defaults', ...asRoot, `--datadir=${data}`, `--port=${port}`, `--bind-address=${HOST}`,
    `--socket=${join(dir, 'sock')}`, `--pid-file=${join(dir, 'pid')}`, '--skip-name-resolve',
    `--init-file=${init}`, '--innodb-buffer-pool-size=256M',
  ]);
  await ready(children, proc, /ready for connections/, READY_TIMEOUT_MS.mariadb);
  return { proc, url: `mysql://mcmux:bench@${HOST}:${port}/mcmux` };
}

/** Waits for the line that says `proc` serves; stops it if that never comes. */
async function ready(children: Children, proc: Proc, line: RegExp, ms: number): Promise<void> {
  try {
    await waitForOutput(proc, line, ms);
  } catch (err) {
    await children.stop(proc);
    throw err;
  }
}
