/**
 * The mysql conformance target, and a private MariaDB for the driver's own tests.
 *
 * With MCMUX_TEST_MYSQL_URL set (mysql://user:password@host:port/database), that server is used,
 * with a fresh table per run, dropped at stop. Otherwise a private MariaDB is started: a data
 * directory made by mariadb-install-db in a temp dir, mariadbd on a free port on 127.0.0.1, a
 * user `mcmux` with a password created by --init-file. Ready means mariadbd printed "ready for
 * connections" (after the init file ran); here that takes about 0.5 s for the install and
 * 0.15 s for the start.
 */

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Connection, createConnection } from 'mysql2/promise';
import { createMysqlUpstream } from '../../../src/upstream/mysql';
import { freePort, requireBinary, stopProcess } from '../../helpers/servers';
import { CTX, type ConformanceTarget, instanceOf } from './target';

const INSTALL_TIMEOUT_MS = 30_000;
const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;

export const MARIADB_USER = 'mcmux';
/** Characters that need percent-encoding in a URL, so the tests see the decoding work. */
export const MARIADB_PASSWORD = 'S3cr:et@/pw';
export const MARIADB_DATABASE = 'mcmux';

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

export interface MariadbProcess {
  readonly port: number;
  /** mysql://mcmux:<password>@127.0.0.1:PORT/mcmux */
  readonly url: string;
  /** How long mariadb-install-db took, ms. */
  readonly installMs: number;
  /** How long the last start took until "ready for connections", ms. */
  readonly startupMs: number;
  /** SIGTERM (SIGKILL after a grace period); resolves once it has exited. Data is kept. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data directory (after stop()). */
  restart(): Promise<void>;
  /** SIGSTOP: the kernel still accepts connections, nothing answers. */
  pause(): void;
  /** SIGCONT */
  resume(): void;
  /** stop(), then removes the data directory. */
  destroy(): Promise<void>;
}

/** Starts a private MariaDB, or throws (mariadbd must be on PATH: see requireBinary). */
export async function startMariadb(): Promise<MariadbProcess> {
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-mariadb-'));
  try {
    const asRoot = process.getuid?.() === 0 ? ['--user=root'] : [];
    const installStarted = Date.now();
    await run('mariadb-install-db', [
      '--no-defaults',
      `--datadir=${join(dir, 'data')}`,
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      // Its own temporary files: two installs at once in /tmp collided on a temporary table's
      // name ("Error on delete of '/tmp/#sql-temptable-...'").
      `--tmpdir=${dir}`,
      ...asRoot,
    ]);
    const installMs = Date.now() - installStarted;
    const initFile = join(dir, 'init.sql');
    await writeFile(
      initFile,
      [
        `CREATE DATABASE IF NOT EXISTS ${MARIADB_DATABASE};`,
        `CREATE USER IF NOT EXISTS '${MARIADB_USER}'@'127.0.0.1' IDENTIFIED BY '${MARIADB_PASSWORD}';`,
        `GRANT ALL ON *.* TO '${MARIADB_USER}'@'127.0.0.1';`,
        '',
      ].join('\n'),
    );
    const args = (port: number): string[] => [
      '--no-defaults',
      ...asRoot,
      `--datadir=${join(dir, 'data')}`,
      `--port=${port}`,
      '--bind-address=127.0.0.1',
      `--socket=${join(dir, 'sock')}`,
      `--pid-file=${join(dir, 'pid')}`,
      `--tmpdir=${dir}`,
      '--skip-networking=0',
      '--skip-name-resolve',
      `--init-file=${initFile}`,
      '--innodb-buffer-pool-size=32M',
      '--innodb-flush-log-at-trx-commit=0', // a test server: speed over durability on a crash
      '--max-allowed-packet=16M',
    ];
    // freePort() can race with another process taking the port: try a few.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      try {
        const started = Date.now();
        const first = await spawnMariadb(args(port));
        return handle(dir, port, first, installMs, Date.now() - started, args(port));
      } catch (err) {
        if (attempt >= 3 || !/in use|bind/i.test(String(err))) throw err;
      }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function handle(dir: string, port: number, first: ChildProcess, installMs: number, startupMs: number, args: string[]): MariadbProcess {
  let proc = first;
  let startup = startupMs;
  return {
    port,
    installMs,
    url: `mysql://${MARIADB_USER}:${encodeURIComponent(MARIADB_PASSWORD)}@127.0.0.1:${port}/${MARIADB_DATABASE}`,
    get startupMs() {
      return startup;
    },
    stop: () => stopProcess(proc, STOP_GRACE_MS),
    restart: async () => {
      await stopProcess(proc, STOP_GRACE_MS);
      const started = Date.now();
      proc = await spawnMariadb(args);
      startup = Date.now() - started;
    },
    pause: () => {
      proc.kill('SIGSTOP');
    },
    resume: () => {
      proc.kill('SIGCONT');
    },
    destroy: async () => {
      await stopProcess(proc, STOP_GRACE_MS);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function run(bin: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: INSTALL_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve();
    });
  });
}

/** Spawns mariadbd and resolves once it says it is ready (after running the init file). */
function spawnMariadb(args: string[]): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const proc = spawn('mariadbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    running.add(proc);
    let log = '';
    let done = false;
    const fail = (why: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void stopProcess(proc, STOP_GRACE_MS).then(() => reject(new Error(`mariadbd did not start (${why}): ${log.trim().slice(-2000)}`)));
    };
    const timer = setTimeout(() => fail(`not ready within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
      log = (log + d).slice(-8192);
      if (!done && log.includes('ready for connections')) {
        done = true;
        clearTimeout(timer);
        // Do not hold the test process open: the 'exit' hook kills whatever is left.
        proc.unref();
        (proc.stderr as unknown as { unref(): void }).unref();
        resolve(proc);
      }
    });
    proc.on('error', (err) => fail(`spawn failed: ${err.message}`));
    proc.on('exit', (code, signal) => {
      running.delete(proc);
      fail(`exited with ${signal ?? code}`);
    });
  });
}


/** A table name no other run uses. */
export function freshTable(): string {
  return `mcmux_t_${process.pid}_${randomBytes(4).toString('hex')}`;
}

/** Drops a table through a short-lived connection of its own (bounded). */
export async function dropTable(url: string, table: string): Promise<void> {
  const u = new URL(url);
  const conn = await createConnection({
    host: u.hostname,
    port: u.port === '' ? 3306 : Number(u.port),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    database: decodeURIComponent(u.pathname.slice(1)),
    connectTimeout: 5000,
  });
  try {
    await conn.query({ sql: `DROP TABLE IF EXISTS \`${table}\``, timeout: 10_000 });
  } finally {
    conn.destroy();
  }
}

export const mysqlTarget: ConformanceTarget = {
  name: 'mysql',
  async start(t, maxItemSize) {
    const external = process.env.MCMUX_TEST_MYSQL_URL;
    let server: MariadbProcess | undefined;
    let url: string;
    let table: string | undefined;
    if (external) {
      url = external;
      table = freshTable();
    } else {
      if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return undefined;
      server = await startMariadb();
      url = server.url;
    }
    return instanceOf(() => createMysqlUpstream(new URL(url), new Map(table ? [['table', table]] : []), CTX(maxItemSize)), async () => {
      if (table) await dropTable(url, table);
      await server?.destroy();
    });
  },
};

/** A plain mysql2 connection to the database of a mysql:// URL, to look behind mcmux's back. */
export function connectMysqlUrl(url: string, connectTimeout = 5000): Promise<Connection> {
  const u = new URL(url);
  return createConnection({
    host: u.hostname,
    port: Number(u.port),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    database: u.pathname.slice(1),
    connectTimeout,
  });
}
