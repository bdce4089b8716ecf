/**
 * review-h18: an operator's adversarial review of the review-h14 fixes (ea469a4, 2565dbe,
 * cc2153f, 44889fb, 6c1a8c5, ccf76f9/390a352, bd3dc6e/c136816, 596831f, 35819c1, 289bc72,
 * 12a0567, f76a01b). Tests marked todo are findings: they assert what an operator expects and
 * fail on the code as it is. The others are guards (behaviour checked and found right).
 *
 * Findings (each was a todo test failing on that code; all fixed since: 1 in 667447c, with a test
 * of 1142 beside it; 2, 3 in b04064a; 7 in 1ef02dd; 8 in e1cded9; 4, 5 in 017d832; 6 in ecd129d;
 * 9 in 0df4ccb; 10 in 048dc28):
 *   1 mysql: an expired password (sandbox mode, ER_MUST_CHANGE_PASSWORD 1820 on every statement)
 *     is REFUSED: the upstream stays healthy for good (ea469a4 covers only handshake errnos).
 *   2 URL: a password with / or ? after leading digits is printed in part (database, option name).
 *   3 URL: the percent-encoding hint never shows for / ? #; a # silently cuts the URL.
 *   4 own address: 127.0.0.2, ::ffff:127.0.0.1, 127.1 (wildcard listen), 0.0.0.0 pass.
 *   5 own address: a real memcached on [::1]:P is refused when mcmux listens on 127.0.0.1:P.
 *   6 own address: a reload is checked against the new file's listen, not the running one.
 *   7 systemd: a sqlite store locked at start (SQLITE_BUSY) is exit 2: never restarted.
 *   8 SIGUSR1 before main() registers its handler opens the inspector for good.
 *   9 the open-file limit warning is not given when a reload raises max-connections.
 *  10 SIGTERM while mcmux starts kills it (default action): the next start waits as after a crash.
 * Guards: a wrong MySQL password goes down and comes back once fixed; an account at its
 * connection limit (1203) stays healthy; a wrong Redis password (database 2) is named WRONGPASS
 * and comes back once the server takes it; the hint names no part of the password; the
 * own-address check tells ports and loopback names apart under a wildcard listen.
 *
 * MySQL: the shared MariaDB at 127.0.0.1:3306 (root, no password, database `test`): each test
 * makes its own uniquely named user (and table), dropped after it.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import Database from 'better-sqlite3';
import type { Connection } from 'mysql2/promise';
import { eventually, failsWithOneLine, rawClient, runMcmux, startMcmux, statsUpstreams } from '../helpers/mcmux';
import { freePort, holdingServer, requireBinary } from '../helpers/servers';
import { dropAfter, sharedMysql, stopFirst } from '../helpers/shared-mysql';

/** A user of its own on the shared MariaDB (ALL on test.*), and its table name; both dropped after the test. */
async function mysqlUser(root: Connection, password: string): Promise<{ user: string; table: string }> {
  const tag = randomBytes(4).toString('hex');
  const user = `h18_${tag}`;
  const table = `h18_${tag}`;
  dropAfter(root, `DROP USER IF EXISTS '${user}'@'%'`, `DROP TABLE IF EXISTS test.${table}`);
  await root.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${password}'`);
  await root.query(`GRANT ALL ON test.* TO '${user}'@'%'`);
  return { user, table };
}

describe('MySQL upstream whose account mcmux cannot use (ea469a4)', () => {
  it('an account whose password expired (sandbox mode: every statement ER_MUST_CHANGE_PASSWORD 1820) goes down, as a wrong password does', { timeout: 60_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (!root) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const { user, table } = await mysqlUser(root, pw);
    await root.query(`ALTER USER '${user}'@'%' PASSWORD EXPIRE`);
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `mysql://${user}:${pw}@127.0.0.1:3306/test?table=${table}`, '--log-level', 'debug']);
    stopFirst(root, () => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 6; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    // Every request of the MySQL upstream fails (the server refuses every statement of the session):
    // down after down-after (3) of them, where before it stayed healthy, every request failing.
    const state = async (): Promise<string | undefined> => (await statsUpstreams(mux.port))['upstream.1.state'];
    await eventually('MySQL down', async () => (await state()) === 'down', 10_000).catch(async () => {
      assert.fail(`a store that refuses every statement is down, not ${await state()}; logs: ${mux.logs().stdout.split('\n').filter((l) => /1820|MUST_CHANGE/.test(l)).slice(0, 2).join('\n')}`);
    });
    const down = mux.logs().stdout.split('\n').find((l) => l.includes('"msg":"upstream down"'));
    assert.match(String(down), /ER_MUST_CHANGE_PASSWORD/, `the down line says why: ${down}`);
  });

  it('an account that may not make the missing table (CREATE refused, ER_TABLEACCESS_DENIED_ERROR 1142) goes down too, and comes back once granted', { timeout: 60_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (!root) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const { user, table } = await mysqlUser(root, pw);
    await root.query(`REVOKE CREATE ON test.* FROM '${user}'@'%'`);
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `mysql://${user}:${pw}@127.0.0.1:3306/test?table=${table}`, '--probe-interval', '50', '--probe-interval-max', '200']);
    stopFirst(root, () => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('MySQL down', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down', 10_000);
    assert.match(String(mux.logs().stdout.split('\n').find((l) => l.includes('"msg":"upstream down"'))), /ER_TABLEACCESS_DENIED_ERROR/);
    await root.query(`GRANT CREATE ON test.* TO '${user}'@'%'`);
    await eventually('MySQL healthy again', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'healthy', 10_000);
    assert.equal(await c.ask('set sess:after 0 0 1\r\ny\r\n'), 'STORED\r\n');
  });

  it('holds: a wrong password takes it down, and once the account is given that password it comes back (probe) and takes writes', { timeout: 60_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (!root) return;
    const { user, table } = await mysqlUser(root, `Right${randomBytes(6).toString('hex')}`);
    const used = `Used${randomBytes(6).toString('hex')}`;
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `mysql://${user}:${used}@127.0.0.1:3306/test?table=${table}`, '--probe-interval', '50', '--probe-interval-max', '200']);
    stopFirst(root, () => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('MySQL down', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down', 10_000);
    await root.query(`ALTER USER '${user}'@'%' IDENTIFIED BY '${used}'`);
    await eventually('MySQL healthy again', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'healthy', 10_000);
    const before = Number((await statsUpstreams(mux.port))['upstream.1.errors']);
    assert.equal(await c.ask('set sess:after 0 0 1\r\ny\r\n'), 'STORED\r\n');
    assert.equal(Number((await statsUpstreams(mux.port))['upstream.1.errors']), before, 'no error after the fix');
    assert.ok(!mux.logs().stdout.includes(used), 'the password is never printed');
  });
  it('holds: an account at its connection limit (MAX_USER_CONNECTIONS, ER 1203 at the handshake) is not taken down: the pool goes on with the connections it has', { timeout: 60_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (!root) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const { user, table } = await mysqlUser(root, pw);
    await root.query(`ALTER USER '${user}'@'%' WITH MAX_USER_CONNECTIONS 1`);
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `mysql://${user}:${pw}@127.0.0.1:3306/test?table=${table}&connections=4`]);
    stopFirst(root, () => mux.stop());
    const clients = await Promise.all(Array.from({ length: 8 }, () => rawClient(mux.port)));
    t.after(() => clients.forEach((c) => c.close()));
    // Misses on memory:// go on to MySQL, several at once: the pool wants more than one connection.
    for (let round = 0; round < 5; round++) {
      await Promise.all(clients.map((c, i) => c.ask(`get nokey:${round}:${i}:a nokey:${round}:${i}:b\r\n`, /END\r\n$|ERROR[^\n]*\r\n$/)));
    }
    const s = await statsUpstreams(mux.port);
    assert.ok(Number(s['upstream.1.requests']) > 0, JSON.stringify(s));
    assert.ok(Number(s['upstream.1.errors']) > 0, `the account's limit was reached (else this guard proves nothing): ${JSON.stringify(s)}`);
    assert.equal(s['upstream.1.state'], 'healthy', `errors ${s['upstream.1.errors']}`);
  });
});

describe('upstream URL with credentials that are not percent-encoded (bd3dc6e, c136816)', () => {
  it('no part of the password is printed when it holds / or ? after leading digits (a "port"): the error names the rest of it as a database or an option', { timeout: 30_000 }, async () => {
    const cases: Array<[string, string]> = [
      ['redis://app:2024/SecretTailA@127.0.0.1:6379', 'SecretTailA'],
      ['redis://app:12?SecretTailB@127.0.0.1:6379', 'SecretTailB'],
      ['rediss://app:12?SecretTailC@127.0.0.1:6379', 'SecretTailC'],
      ['mysql://app:12/x?SecretTailD@127.0.0.1:3306/sessions', 'SecretTailD'],
    ];
    for (const [url, secret] of cases) {
      const line = await failsWithOneLine(['--upstream', url]);
      assert.ok(!line.includes(secret), `${url}: the line prints part of the password: ${line}`);
    }
  });

  it('the percent-encoding hint is given for the characters it names (/ ? #), and a # in a password does not silently cut the URL', { timeout: 30_000 }, async () => {
    for (const url of ['mysql://app:pa/ssword@127.0.0.1:3306/sessions', 'mysql://app:pa?ssword@127.0.0.1:3306/sessions', 'mysql://app:pa#ssword@127.0.0.1:3306/sessions', 'redis://:pa/ssword@127.0.0.1:6379']) {
      const line = await failsWithOneLine(['--upstream', url]);
      assert.match(line, /percent-encoded/, `${url}: ${line}`);
    }
    // A # ends the URL: what follows (the rest of the password, and the real host) is dropped.
    const line = await failsWithOneLine(['--upstream', 'redis://app:12#ssword@127.0.0.1:6379']);
    assert.match(line, /percent-encoded/);
  });

  it('holds: the hint it gives names no part of the password, and the URL is masked', { timeout: 30_000 }, async () => {
    const line = await failsWithOneLine(['--upstream', 'redis://app:Pq7zWv@x@127.0.0.1:99999']);
    assert.match(line, /percent-encoded/);
    assert.match(line, /redis:\/\/app:\*\*\*@127\.0\.0\.1:99999/);
    for (const part of ['Pq7', 'zWv', '@x@']) assert.ok(!line.includes(part), line);
  });
});

describe('a Redis upstream with a wrong password (2565dbe)', () => {
  it('holds: down with WRONGPASS named (database 2), and back once the server takes that password', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const { startRedis } = await import('../upstream/targets/redis');
    const { default: Redis } = await import('ioredis');
    const server = await startRedis(['--requirepass', 'h18-old-pw']);
    t.after(() => server.stop());
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `redis://:h18-new-pw@127.0.0.1:${server.port}/2`, '--probe-interval', '50', '--probe-interval-max', '200']);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('Redis down', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down', 10_000);
    const down = mux.logs().stdout.split('\n').find((l) => l.includes('"msg":"upstream down"'));
    assert.match(String(down), /WRONGPASS/);
    assert.doesNotMatch(String(down), /NOAUTH|cannot select/);
    const admin = new Redis({ port: server.port, host: '127.0.0.1', password: 'h18-old-pw', lazyConnect: true, maxRetriesPerRequest: 1 });
    await admin.connect();
    await admin.config('SET', 'requirepass', 'h18-new-pw');
    admin.disconnect();
    await eventually('Redis healthy again', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'healthy', 15_000);
    assert.ok(!`${mux.logs().stdout}${mux.logs().stderr}`.includes('h18-new-pw'), 'the password is printed');
  });
});

describe("a memcached upstream at mcmux's own listen address (cc2153f)", () => {
  it('is refused whatever the spelling: another 127/8 address, ::ffff:127.0.0.1, 127.1 under a wildcard listen; 0.0.0.0 under a loopback one', { timeout: 60_000 }, async () => {
    const port = await freePort();
    const cases: string[][] = [
      ['--listen', `0.0.0.0:${port}`, '--upstream', `memcached://127.0.0.2:${port}`],
      ['--listen', `[::]:${port}`, '--upstream', `memcached://[::ffff:127.0.0.1]:${port}`],
      ['--listen', `0.0.0.0:${port}`, '--upstream', `memcached://127.1:${port}`],
      ['--listen', `127.0.0.1:${port}`, '--upstream', `memcached://0.0.0.0:${port}`],
    ];
    // `mcmux check` validates as a start does (exit 2 for a config it refuses) and listens on nothing.
    for (const args of cases) {
      const r = await runMcmux(['check', ...args], { timeoutMs: 10_000 });
      assert.equal(r.code, 2, `${args.join(' ')}: it is mcmux itself; got ${r.code}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /own listen address/);
    }
  });

  it('a memcached on [::1] is not mcmux listening on 127.0.0.1 (the same port on the other family is another socket)', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const port = await freePort();
    const { spawn } = await import('node:child_process');
    const args = ['-l', '::1', '-U', '0', '-p', String(port), ...(process.getuid?.() === 0 ? ['-u', 'root'] : [])];
    const mc = spawn('memcached', args, { stdio: 'ignore' });
    t.after(() => {
      mc.kill('SIGKILL');
    });
    const { connect } = await import('node:net');
    await eventually('memcached listens on [::1]', () => new Promise<boolean>((resolve) => {
      const s = connect({ host: '::1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    }), 10_000);
    const r = await runMcmux(['check', '--listen', `127.0.0.1:${port}`, '--upstream', `memcached://[::1]:${port}`], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, `the memcached on [::1] answers: ${r.stdout}${r.stderr}`);
  });

  it('a reload is checked against the addresses mcmux listens on (listen changes only on restart), not the new file\'s', { timeout: 60_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const [p1, p2] = [await freePort(), await freePort()];
    const file = join(dir, 'config.toml');
    await writeFile(file, `listen = "127.0.0.1:${p1}"\n[[upstream]]\nurl = "memory://"\n`);
    const mux = await startMcmux(['--config', file], { port: p1 });
    t.after(() => mux.stop());
    // The operator moves mcmux off p1 (for a memcached there) and lists that memcached.
    await writeFile(file, `listen = "127.0.0.1:${p2}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "memcached://127.0.0.1:${p1}?timeout=200"\n`);
    mux.proc.kill('SIGHUP');
    await eventually('the reload is logged', () => /configuration reloaded|reload rejected/.test(mux.logs().stdout), 10_000);
    assert.match(mux.logs().stdout, /reload rejected/, 'memcached://127.0.0.1:p1 is mcmux itself until it restarts');
  });

  it('holds: another port on the same host, and the loopback names under a wildcard listen, are told apart as they should be', { timeout: 30_000 }, async () => {
    const { loadConfig } = await import('../../src/cli');
    const port = await freePort();
    assert.doesNotThrow(() => loadConfig(['--listen', `0.0.0.0:${port}`, '--upstream', `memcached://127.0.0.1:${port + 1}`]));
    assert.throws(() => loadConfig(['--listen', `[::]:${port}`, '--upstream', `memcached://localhost:${port}`]), /own listen address/);
    assert.throws(() => loadConfig(['--listen', `0.0.0.0:${port}`, '--upstream', `memcached://127.0.0.2:1,LOCALHOST:${port}`]), /own listen address/);
  });
});

describe('systemd RestartPreventExitStatus=2 (f76a01b)', () => {
  it('a sqlite store locked for a moment at start (another process\'s write) is not exit 2, which systemd now never restarts', { timeout: 30_000 }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'sessions.db');
    const db = new Database(path);
    t.after(() => db.close());
    // Another writer (a second mcmux creating the schema, a backup, a VACUUM) holds the lock.
    db.exec('BEGIN EXCLUSIVE; CREATE TABLE other (x); ');
    const url = `sqlite://${path}?timeout=100`;
    const port = await freePort();
    const locked = await runMcmux(['--listen', `127.0.0.1:${port}`, '--upstream', url], { timeoutMs: 10_000 });
    db.exec('COMMIT');
    // The same config, a moment later: it starts (a restart would have mended it).
    const mux = await startMcmux(['--upstream', url]);
    await mux.stop();
    assert.equal(locked.timedOut, false);
    assert.notEqual(locked.code, 2, `a lock held for a moment is no bad config: ${locked.stderr}`);
    // Exit 1 (restarted), with one line naming the lock, not a stack.
    assert.equal(locked.code, 1, locked.stderr);
    assert.match(locked.stderr, /^mcmux: upstream sqlite:\/\/[^\n]*: SQLITE_BUSY[^\n]*\n$/);
  });
});

describe('SIGUSR1 and SIGUSR2 (35819c1)', () => {
  it('a SIGUSR1 while mcmux loads (before main() registers its handler) does not open the inspector for the rest of its life', { timeout: 30_000 }, async (t) => {
    const { spawn } = await import('node:child_process');
    const { readdirSync, readlinkSync } = await import('node:fs');
    const { MCMUX_BIN } = await import('../helpers/mcmux');
    const { NODE_FLAGS } = await import('../../src/node-flags');
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'sessions.db');
    // Held by another writer for a moment: mcmux waits for it in loadConfig (SQLite's busy
    // handler), a window the test can see (its fd on the file) instead of a race with module loading.
    const db = new Database(path);
    t.after(() => db.close());
    db.exec('BEGIN EXCLUSIVE; CREATE TABLE other (x);');
    const port = await freePort();
    // --inspect-port=0: should the inspector open, on a port of its own, not 9229.
    const p = spawn(process.execPath, [...NODE_FLAGS, '--inspect-port=0', MCMUX_BIN, '--listen', `127.0.0.1:${port}`, '--upstream', `sqlite://${path}?timeout=8000`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, STATE_DIRECTORY: dir },
    });
    const exited = new Promise<void>((resolve) => p.on('close', () => resolve()));
    t.after(async () => {
      p.kill('SIGKILL');
      await exited;
    });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    await eventually('mcmux opened the sqlite file (and waits for its lock)', () => {
      try {
        return readdirSync(`/proc/${p.pid}/fd`).some((f) => {
          try {
            return readlinkSync(`/proc/${p.pid}/fd/${f}`) === path;
          } catch {
            return false;
          }
        });
      } catch {
        return false;
      }
    }, { timeoutMs: 10_000, every: 5 });
    p.kill('SIGUSR1');
    p.kill('SIGUSR2'); // its default action kills mcmux
    db.exec('COMMIT');
    await eventually('mcmux listening', () => out.includes('mcmux listening'), 15_000);
    assert.doesNotMatch(out, /Debugger listening/, 'the inspector opened (and stays open): any local user can run code as mcmux');
    p.kill('SIGTERM');
    await exited;
  });
});

describe('max-connections above the open-file limit (12a0567)', () => {
  it('is warned about when a reload raises max-connections past it, as at start', { timeout: 30_000 }, async (t) => {
    const { spawn } = await import('node:child_process');
    const { MCMUX_BIN } = await import('../helpers/mcmux');
    const { NODE_FLAGS } = await import('../../src/node-flags');
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const port = await freePort();
    const file = join(dir, 'config.toml');
    const config = (max: number): string => `listen = "127.0.0.1:${port}"\nmax-connections = ${max}\nstate-dir = "${dir}"\n[[upstream]]\nurl = "memory://"\n`;
    await writeFile(file, config(256));
    const p = spawn('sh', ['-c', 'ulimit -n 512 && exec "$0" "$@"', process.execPath, ...NODE_FLAGS, MCMUX_BIN, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<void>((resolve) => p.on('close', () => resolve()));
    t.after(async () => {
      p.kill('SIGKILL');
      await exited;
    });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    await eventually('mcmux listening', () => out.includes('mcmux listening'), 15_000);
    assert.doesNotMatch(out, /open-file limit/, 'within the limit at start');
    await writeFile(file, config(4096));
    p.kill('SIGHUP');
    await eventually('the reload is logged', () => out.includes('configuration reloaded'), 10_000);
    p.kill('SIGTERM');
    await exited;
    assert.match(out, /open-file limit 512/, 'max-connections 4096 on 512 descriptors: clients past it are reset in silence');
  });
});

describe('a stop while mcmux starts (35819c1 registers SIGUSR1/SIGUSR2 before the start, not SIGTERM)', () => {
  it('SIGTERM during a slow start (an upstream that does not answer its marker check) stops cleanly: the next start does not wait as after a crash', { timeout: 60_000 }, async (t) => {
    const { spawn } = await import('node:child_process');
    const { existsSync } = await import('node:fs');
    const { MCMUX_BIN } = await import('../helpers/mcmux');
    const { NODE_FLAGS } = await import('../../src/node-flags');
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    // A "memcached" that accepts and never answers: the start's first look at its marker waits out the timeout.
    const holePort = (await holdingServer(t)).port;
    const run = async (stopWhileStarting: boolean): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> => {
      const port = await freePort();
      const p = spawn(process.execPath, [...NODE_FLAGS, MCMUX_BIN, '--listen', `127.0.0.1:${port}`, '--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${holePort}?timeout=3000`], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, STATE_DIRECTORY: dir },
      });
      let out = '';
      p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => p.on('close', (code, signal) => resolve({ code, signal })));
      const killer = setTimeout(() => p.kill('SIGKILL'), 20_000);
      try {
        if (stopWhileStarting) {
          // Its journal is open (the App exists), it is not listening yet.
          await eventually('mcmux opened its journal', () => existsSync(join(dir, 'journal.log')) && existsSync(join(dir, 'mcmux.lock')), { timeoutMs: 10_000, every: 10 });
          assert.doesNotMatch(out, /mcmux listening/);
        } else {
          await eventually('mcmux listening', () => out.includes('mcmux listening'), 15_000);
        }
        p.kill('SIGTERM');
        return { ...(await exited), out };
      } finally {
        clearTimeout(killer);
      }
    };
    const first = await run(true);
    const second = await run(false);
    assert.equal(first.signal, null, `a SIGTERM while starting killed mcmux: ${first.out}`);
    assert.doesNotMatch(second.out, /did not stop cleanly/, 'the next start waits as after a crash');
  });

  it('holds: App.close() while start() waits for an upstream ends the start: start() rejects (StoppedWhileStarting), nothing is left listening, journal.log is marked clean', { timeout: 30_000 }, async (t) => {
    const { connect } = await import('node:net');
    const { readFileSync } = await import('node:fs');
    const { default: pino } = await import('pino');
    const { App, StoppedWhileStarting } = await import('../../src/app');
    const { loadConfig } = await import('../../src/cli');
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-h18-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const hole = await holdingServer(t);
    const holePort = hole.port;
    const port = await freePort();
    const { config } = loadConfig(['--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${holePort}?timeout=5000`]);
    const app = new App(config, pino({ level: 'silent' }));
    const started = app.start();
    started.catch(() => undefined);
    await eventually('the first look reached the upstream', () => hole.sockets.size > 0, 10_000);
    const t0 = Date.now();
    await app.close(1000);
    assert.ok(Date.now() - t0 < 2000, `close() waited out the upstream's timeout: ${Date.now() - t0} ms`);
    await assert.rejects(started, StoppedWhileStarting);
    assert.equal(app.listening, false);
    const refused = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(true));
    });
    assert.ok(refused, 'nothing listens on the listen address');
    assert.match(readFileSync(join(dir, 'journal.log'), 'utf8'), /(^|\n)E\n$/, 'journal.log closed cleanly');
  });
});
