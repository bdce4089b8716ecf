/**
 * review-h37: an operator's review of 7edeab8 and 7a07608 (a reload rejected whole changes
 * nothing it keeps; a SIGHUP checks the file making nothing), d63d74a and 4e798b6 (check and an
 * existing SQLite file), 373e8cc (check reads SHOW GRANTS where the MySQL table is missing),
 * 3cc2fcf (check says FAILED for a Redis replica), and three suspicions an earlier review left.
 *
 * Each test marked as a finding failed on main (committed as a todo test, cabd641 and 4f2ce77).
 * Fixed since, their todo marks dropped, each test failing without its fix: 1 in 21afb01; 2 in
 * 7a429f5 and bea25cb; 3 and 4 in 43b9184; 5 in 00acdd3; 6 in ec03069; 7 in 1cdf954; 8 in
 * 2890333. None is todo now.
 *
 * Findings:
 *   1 (medium; 373e8cc) `mcmux check` says ok, exit 0, for a MySQL table not there yet and an
 *     account that may not CREATE it, whenever SHOW GRANTS names CREATE or ALL anywhere: ALL on
 *     another database (an application's account reused for the sessions' database), or CREATE
 *     TEMPORARY TABLES / CREATE VIEW / CREATE ROUTINE on this one (a DBA's usual application
 *     grant). The regex /\b(CREATE|ALL)\b/ looks at the privilege list of every line, whatever its
 *     ON names, and matches CREATE inside CREATE TEMPORARY TABLES. The start's CREATE TABLE is
 *     then refused with every request ("CREATE command denied"), what 373e8cc meant to catch.
 *   2 (medium; 3cc2fcf's class) `mcmux check` says ok, exit 0, for a Redis ACL user that refuses
 *     every write mcmux sends: `+@all -@write` (a read-only account), or `+@read +@write` without
 *     `+@scripting` (mcmux writes through EVALSHA: NOPERM). The running mcmux warns "upstream
 *     refuses writes" / "refuses mcmux's marker read" at once; check asks INFO replication only
 *     (a replica), so the tool the unit's comment sends the operator to says "config ok". (A
 *     first fix still said ok for an account without +info, INFO refused: bea25cb.)
 *   3 (low; 7edeab8 left it, code of 7ca16f7) a reload rejected whole still marks the running
 *     memcached pool superseded when an earlier spec rebuilt it (options changed) before a later
 *     one failed: resolveEach calls inner.inheritRing(prev.inner) while building, and that sets
 *     prev.superseded = true on the pool that stays in the chain. From then on unmovedSince()
 *     answers false for every key of the running pool: a read of the pool while it is distrusted
 *     no longer trusts a session on a server that never left (review-today finding 6), for the
 *     life of the process, after a reload the log says was rejected with nothing changed.
 *   4 (low; d0690ea with f043b2e's RESTART_ONLY) a reload changing journal-max-keys logs
 *     "journal-max-keys/journal-fsync change only on restart; kept the current values", yet
 *     applies it to every upstream's health options (fenceKeysMax: the keys a fenced upstream
 *     remembers as written since its fence began): half the setting changed, the log saying none.
 *   5 (low; 396508f, suspicion (a) confirmed) the warning for a refused marker write guesses "a
 *     read-only replica, or an account without write permission?" whatever the refusal: for a
 *     Redis at maxmemory with noeviction ("OOM command not allowed") it sends the operator to the
 *     replication and the ACLs, where the store is full (the err field does name OOM).
 *   6 (low-medium; check's sqlite lines, suspicion (b) confirmed) `sqlite://./rel.db` resolves
 *     against the working directory: `mcmux check` from a shell says "ok sqlite://./rel.db" about
 *     the file in the shell's directory, naming neither the path it opened nor that it is
 *     relative, while the service resolves it against its own (the shipped unit sets no
 *     WorkingDirectory=: "/", read-only under ProtectSystem=strict). The state-dir line has said
 *     so since review-h25 ("relative to <cwd>; ... not seen from a shell"); the sqlite line not.
 *   7 (cosmetic; e42e10c, suspicion (c) confirmed) maskQuerySecrets masks a `?token=`-like value
 *     up to a space, `&`, `#` or a quote: the colon after the URL in "upstream <url>: unknown
 *     option" is eaten ("?token=*** unknown option"), so the line reads as if the URL ran on.
 *   8 (low-medium; 1ef02dd) a SQLite file the service user may write, in a directory it may not
 *     (WAL makes -wal and -shm beside it): the start exits 1 with "SQLITE_READONLY_DIRECTORY ...
 *     (the disk or file system failed, not the config; a restart tries again)", and systemd
 *     restarts it every second for ever; the same file not writable exits 2 naming the
 *     permission. NOT_CONFIG takes every SQLITE_READONLY* for a failing disk, where its own
 *     comment says a permission stays exit 2. (`mcmux check` says FAILED for it, d63d74a.)
 *
 * Refuted (kept as passing tests that could fail):
 *   - a MySQL account whose CREATE comes through a role (SHOW GRANTS: GRANT `role` TO user),
 *     through a wildcard database grant (GRANT ALL ON `test%`.*), or through MariaDB 10.11's
 *     PUBLIC (listed by SHOW GRANTS): check says ok, and the start makes the table.
 *
 * Looked at, no finding: a reload rejected by App.reload keeps the health options and memory://
 * max-bytes (7edeab8's two halves hold); check's exit statuses (0 ok, 1 an upstream or the
 * state-dir unusable, 2 a bad flag or value) are what README says; a reload changing listen,
 * listen-mode, metrics or state-dir logs which it kept; an existing SQLite file in a directory the
 * user may not write is FAILED by check as the start fails (d63d74a's writable(); finding 8 is
 * how the start fails).
 *
 * MySQL: the shared MariaDB at 127.0.0.1:3306 (root, no password, database `test`): the tests
 * make their own uniquely named users and role (grants on a database that is not there need no
 * database), dropped after them; a CREATE granted to PUBLIC is revoked at once.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Redis from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import type { MemcachedPool } from '../../src/upstream/memcached-pool';
import { mayCreate } from '../../src/upstream/mysql';
import { createSqliteUpstream } from '../../src/upstream/sqlite';
import { maskUrl } from '../../src/upstream/upstream';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { eventually, failsWithOneLine, runMcmux, startMcmux, warnings } from '../helpers/mcmux';
import { freePort, requireBinary } from '../helpers/servers';
import { account, dropAfter, sharedMysql, stopFirst } from '../helpers/shared-mysql';
import { ctx, lockedSqlite, sqliteUrl } from '../helpers/sqlite-fixture';
import { tempDir } from '../helpers/temp-dir';
import { startRedis } from '../upstream/targets/redis';
import { haveServers, startCluster } from '../helpers/redis-cluster';


async function check(args: string[], cwd?: string): Promise<{ code: number | null; stdout: string }> {
  const r = await runMcmux(['check', ...args], { timeoutMs: 20_000, ...(cwd === undefined ? {} : { cwd }) });
  return { code: r.code, stdout: r.stdout + r.stderr };
}

describe('finding 1 (373e8cc): check and SHOW GRANTS naming CREATE or ALL that the start cannot use', () => {
  it('ALL on another database, DML on the sessions\' one: check says FAILED naming CREATE (the start: "CREATE command denied")', async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    const other = `h37_app_${randomBytes(4).toString('hex')}`;
    const { url, pw } = await account(root, 'h37', (u) => [`GRANT ALL PRIVILEGES ON \`${other}\`.* TO ${u}`, `GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO ${u}`]);
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', url]);
    stopFirst(root, () => mux.stop());
    await eventually('the start-up probe said', () => /fails its probe at start/.test(mux.logs().stdout), 10_000);
    assert.match(mux.logs().stdout, /CREATE command denied/, 'the start cannot make the table');
    await mux.stop();
    const r = await check(['--upstream', url, '--state-dir', join(tempDir(t, 'h37'), 'state')]);
    assert.doesNotMatch(r.stdout, new RegExp(pw), 'the password is masked');
    assert.match(r.stdout, /\nFAILED\s+mysql:\/\/[^\n]*CREATE/, `check: ${r.stdout}`);
    assert.equal(r.code, 1);
  });

  it('CREATE TEMPORARY TABLES and CREATE VIEW on the sessions\' database, no CREATE: check says FAILED', async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    const { url } = await account(root, 'h37', (u) => [`GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES, CREATE VIEW ON test.* TO ${u}`]);
    const r = await check(['--upstream', url, '--state-dir', join(tempDir(t, 'h37'), 'state')]);
    assert.match(r.stdout, /\nFAILED\s+mysql:\/\/[^\n]*CREATE/, `check: ${r.stdout}`);
    assert.equal(r.code, 1);
  });

  it('refutation: CREATE through a role, a wildcard database grant or PUBLIC: check says ok (the start makes the table)', async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    const tag = randomBytes(4).toString('hex');
    const role = `h37_role_${tag}`;
    dropAfter(root, `DROP ROLE IF EXISTS ${role}`);
    await root.query(`CREATE ROLE ${role}`);
    await root.query(`GRANT CREATE ON test.* TO ${role}`);
    const viaRole = await account(root, 'h37', (u) => [`GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO ${u}`, `GRANT ${role} TO ${u}`, `SET DEFAULT ROLE ${role} FOR ${u}`]);
    const wildcard = await account(root, 'h37', (u) => [`GRANT ALL PRIVILEGES ON \`tes%\`.* TO ${u}`]);
    const said: string[] = [];
    for (const a of [viaRole, wildcard]) {
      const r = await check(['--upstream', a.url, '--state-dir', join(tempDir(t, 'h37'), 'state')]);
      if (r.code !== 0) said.push(r.stdout);
    }
    // PUBLIC last: a grant to every account of the server, revoked after the test.
    // (MariaDB 10.11; left alone if PUBLIC has a grant on `test` already.)
    const publicGrants = await root
      .query('SHOW GRANTS FOR PUBLIC')
      .then(([rows]) => (rows as Array<Record<string, unknown>>).map((r) => String(Object.values(r)[0])).join('\n'))
      .catch((e: { errno?: number }) => (e.errno === 1141 ? '' : undefined));
    if (publicGrants !== undefined && !/ON `test`\./.test(publicGrants)) {
      const viaPublic = await account(root, 'h37', (u) => [`GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO ${u}`]);
      dropAfter(root, 'REVOKE CREATE ON `test`.* FROM PUBLIC');
      await root.query('GRANT CREATE ON `test`.* TO PUBLIC');
      const r = await check(['--upstream', viaPublic.url, '--state-dir', join(tempDir(t, 'h37'), 'state')]);
      await root.query('REVOKE CREATE ON `test`.* FROM PUBLIC');
      if (r.code !== 0) said.push(r.stdout);
    }
    assert.deepEqual(said, [], 'check refused an account that may CREATE the table');
  });
});

describe('finding 1\'s fix: mayCreate reads the lines of SHOW GRANTS (MariaDB and MySQL 8 forms)', () => {
  const may = (lines: string[]): boolean | undefined => mayCreate(["GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'", ...lines], 'sess_db', 'mcmux_items');
  it('CREATE or ALL on *.*, on the database, on a pattern matching it or on the table: true', () => {
    assert.equal(may(['GRANT CREATE ON *.* TO `u`@`%`']), true);
    assert.equal(may(['GRANT ALL PRIVILEGES ON `sess_db`.* TO `u`@`%`']), true);
    assert.equal(may(["GRANT SELECT, INSERT, CREATE ON `sess_db`.* TO 'u'@'%'"]), true);
    assert.equal(may(['GRANT ALL PRIVILEGES ON `sess%`.* TO `u`@`%`']), true);
    assert.equal(may(['GRANT ALL PRIVILEGES ON `sess\\_db`.* TO `u`@`%`']), true);
    assert.equal(may(['GRANT CREATE ON `sess_db`.`mcmux_items` TO `u`@`%`']), true);
    assert.equal(may(['GRANT SELECT (`key`, `value`), CREATE ON `sess_db`.* TO `u`@`%`']), true);
  });
  it('CREATE elsewhere, CREATE VIEW / TEMPORARY TABLES / ROUTINE, another table: false', () => {
    assert.equal(may(['GRANT ALL PRIVILEGES ON `app`.* TO `u`@`%`', 'GRANT SELECT, INSERT, UPDATE, DELETE ON `sess_db`.* TO `u`@`%`']), false);
    assert.equal(may(['GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES, CREATE VIEW, CREATE ROUTINE ON `sess_db`.* TO `u`@`%`']), false);
    assert.equal(may(['GRANT CREATE ON `sess_db`.`other` TO `u`@`%`']), false);
    assert.equal(may(['GRANT ALL PRIVILEGES ON `sess\\_dbx`.* TO `u`@`%`']), false);
    assert.equal(may(['GRANT EXECUTE ON PROCEDURE `sess_db`.`p` TO `u`@`%`']), false);
  });
  it('a role, SET DEFAULT ROLE, a partial revoke: cannot be told (undefined), or the safe side', () => {
    assert.equal(may(['GRANT `r`@`%` TO `u`@`%`']), undefined);
    assert.equal(may(['GRANT `app_role` TO `u`@`%`', 'SET DEFAULT ROLE `app_role` FOR `u`@`%`']), undefined);
    assert.equal(may(['GRANT SELECT ON `sess_db`.* TO `u`@`%`', 'REVOKE CREATE ON `x`.* FROM `u`@`%`']), undefined);
  });
});

describe('finding 2 (3cc2fcf\'s class): check and a Redis ACL user that refuses every write', () => {
  it('+@all -@write, and +@read +@write without +@scripting: check does not say ok (the running mcmux warns that it refuses writes)', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const redis = await startRedis([
      ...['--user', 'ro', 'on', `>${pw}`, '~*', '+@all', '-@write'],
      ...['--user', 'noscript', 'on', `>${pw}`, '~*', '+@read', '+@write', '+@connection', '+info'],
      // Without +info too (INFO is @dangerous): the replica check cannot ask, the write still tells.
      ...['--user', 'readonly', 'on', `>${pw}`, '~*', '+@read', '+@connection', '+@scripting'],
    ]);
    t.after(() => redis.stop());
    const dir = tempDir(t, 'h37');
    const okFor: string[] = [];
    for (const user of ['ro', 'noscript', 'readonly']) {
      const url = `redis://${user}:${pw}@127.0.0.1:${redis.port}/0`;
      const r = await check(['--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')]);
      assert.doesNotMatch(r.stdout, new RegExp(pw), 'the password is masked');
      if (r.code === 0 || !/\nFAILED\s+redis:\/\//.test(r.stdout)) okFor.push(`${user}: ${r.stdout}`);
    }
    assert.deepEqual(okFor, [], 'check says ok for an account every write of mcmux is refused to');
  });

  it('guard: an ACL user with what mcmux needs (+@read +@write +@scripting on ~*), a plain Redis, a Redis Cluster: check says ok and leaves no key', { timeout: 120_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const redis = await startRedis([
      ...['--user', 'app', 'on', `>${pw}`, '~*', '+@read', '+@write', '+@scripting', '+@connection', '+info'],
      ...['--user', 'noinfo', 'on', `>${pw}`, '~*', '+@read', '+@write', '+@scripting', '+@connection'],
    ]);
    t.after(() => redis.stop());
    const dir = tempDir(t, 'h37');
    const urls = [`redis://app:${pw}@127.0.0.1:${redis.port}/0`, `redis://noinfo:${pw}@127.0.0.1:${redis.port}/0`, redis.url];
    if (haveServers(t)) urls.push((await startCluster(t)).url);
    for (const url of urls) {
      const r = await check(['--upstream', url, '--state-dir', join(dir, 'state')]);
      assert.equal(r.code, 0, `${url}: ${r.stdout}`);
    }
    const admin = new Redis({ host: '127.0.0.1', port: redis.port, protocol: 2, lazyConnect: true });
    const keys = await admin.dbsize().finally(() => admin.disconnect());
    assert.equal(keys, 0, 'check left a key behind');
  });

  it('the running mcmux does warn for the same account (what check should have said)', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const redis = await startRedis(['--user', 'ro', 'on', `>${pw}`, '~*', '+@all', '-@write']);
    t.after(() => redis.stop());
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `redis://ro:${pw}@127.0.0.1:${redis.port}/0`]);
    t.after(() => mux.stop());
    await eventually('the refusal warned', () => warnings(mux.logs().stdout).some((l) => /refuses/.test(l)), 10_000);
  });
});

describe('finding 3 (7edeab8 left it): a reload rejected whole and the running memcached pool', () => {
  it('a pool rebuilt (options changed) before a later spec fails: the running pool still tells which keys did not move', async (t) => {
    const dir = tempDir(t, 'h37');
    const [p1, p2] = [await freePort(), await freePort()];
    // Nothing listens there: the pool is built, not used (its ring is what is looked at).
    const pool = `memcached://127.0.0.1:${p1},127.0.0.1:${p2}`;
    const app = await inProcessMcmux({ 'state-dir': join(dir, 'state'), 'log-level': 'silent' }, ['memory://a', pool]);
    const running = app.upstreams[1] as HealthyUpstream;
    const ring = running.inner as MemcachedPool;
    assert.equal(ring.unmovedSince(0, 'sess'), true, 'before the reload: no ring move, the key did not move');
    const locked = join(dir, 'locked.db');
    lockedSqlite(t, locked);
    assert.throws(() => reloadTo(app, { 'state-dir': join(dir, 'state') }, ['memory://a', `${pool}?timeout=300`, `sqlite://${locked}?timeout=100`]), /SQLITE_BUSY|locked/);
    assert.equal(app.upstreams[1], running, 'the running chain stays');
    assert.equal(ring.unmovedSince(0, 'sess'), true, 'the rejected reload marked the running pool superseded: it no longer says any key did not move');
  });
});

describe('finding 4: a reload changing journal-max-keys', () => {
  it('logs that journal-max-keys is kept, and keeps it for the fenced upstreams\' keys too', async (t) => {
    const dir = tempDir(t, 'h37');
    const app = await inProcessMcmux({ 'state-dir': join(dir, 'state'), 'log-level': 'silent', 'journal-max-keys': '100000' }, ['memory://a', 'memory://b']);
    const before = app.upstreams.map((u) => u.options.fenceKeysMax);
    reloadTo(app, { 'state-dir': join(dir, 'state'), 'journal-max-keys': '10' }, ['memory://a', 'memory://b']);
    assert.deepEqual(
      app.upstreams.map((u) => u.options.fenceKeysMax),
      before,
      'the reload logged "journal-max-keys ... change only on restart; kept the current values" but applied it to the upstreams\' fence keys',
    );
  });
});

describe('finding 5 (396508f; suspicion (a)): the warning for a refused marker write', () => {
  it('a Redis at maxmemory (noeviction: OOM): the warning does not guess a replica or a permission', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const redis = await startRedis(['--maxmemory', '1', '--maxmemory-policy', 'noeviction']);
    t.after(() => redis.stop());
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', redis.url]);
    t.after(() => mux.stop());
    const said = (): string[] => warnings(mux.logs().stdout).filter((l) => /refuses/.test(l));
    await eventually('the refused marker write said', () => said().length > 0, 10_000);
    const line = said()[0] as string;
    assert.match(line, /OOM/, 'the err field names the refusal');
    const msg = (JSON.parse(line) as { msg: string }).msg;
    assert.doesNotMatch(msg, /replica|permission/, `an OOM is sent to the replication and the ACLs: ${msg}`);
  });
});

describe('finding 6 (suspicion (b)): check and a relative sqlite:// path', () => {
  it('check names the file it looked at and that it is relative to the shell\'s directory (the service resolves it against its own)', async (t) => {
    const shell = tempDir(t, 'h37-shell');
    const service = tempDir(t, 'h37-service');
    // The sessions' file, in the directory the operator's shell is in.
    const made = createSqliteUpstream(new URL(sqliteUrl(join(shell, 'sessions.db'))), new Map(), ctx);
    await made.close();
    const r = await check(['--upstream', 'memory://', '--upstream', 'sqlite://./sessions.db', '--state-dir', join(shell, 'state')], shell);
    assert.equal(r.code, 0, r.stdout);
    // The start from another working directory (the unit's: /) opens another file: check's ok was not about it.
    const port = await freePort();
    const start = await runMcmux(['--listen', `127.0.0.1:${port}`, '--upstream', 'memory://', '--upstream', 'sqlite://./sessions.db', '--state-dir', join(service, 'state')], { timeoutMs: 3000, env: { STATE_DIRECTORY: undefined }, cwd: service });
    assert.match(start.stdout, /mcmux listening/, start.stderr);
    assert.equal(existsSync(join(service, 'sessions.db')), true, 'the start made its own file beside it');
    const line = r.stdout.split('\n').find((l) => l.includes('sqlite://')) ?? '';
    assert.ok(line.includes(join(shell, 'sessions.db')) && /relative/.test(line), `check's line about a relative path: ${line}`);
  });
});

describe('finding 8 (1ef02dd): a SQLite file in a directory the service user may not write', () => {
  it('the start exits 2 naming a permission, as for a file it may not write, not 1 "the disk or file system failed" (restarted every second)', async (t) => {
    if (process.getuid?.() !== 0) return; // needs another uid than the directory's owner
    const dir = tempDir(t, 'h37-ro-dir');
    const { chmod, chown, mkdir } = await import('node:fs/promises');
    await chmod(dir, 0o755); // root's: the service user may not make -wal and -shm here
    const path = join(dir, 'sessions.db');
    const made = createSqliteUpstream(new URL(sqliteUrl(path)), new Map(), ctx);
    await made.close();
    await chown(path, 65534, 65534); // the file is the service user's (a DBA chowned it)
    const state = join(dir, 'state');
    await mkdir(state);
    await chown(state, 65534, 65534);
    const { execFile } = await import('node:child_process');
    const { MCMUX_BIN } = await import('../helpers/mcmux');
    const { NODE_FLAGS } = await import('../../src/node-flags');
    const port = await freePort();
    const run = (): Promise<{ code: number | null; stderr: string }> =>
      new Promise((res) => {
        const p = execFile(process.execPath, [...NODE_FLAGS, MCMUX_BIN, '--listen', `127.0.0.1:${port}`, '--upstream', sqliteUrl(path), '--state-dir', state], { uid: 65534, gid: 65534, cwd: state, timeout: 10_000 }, (_e, _out, err) => res({ code: p.exitCode, stderr: err }));
      });
    const start = await run();
    assert.match(start.stderr, /READONLY_DIRECTORY|permission/i, start.stderr);
    assert.doesNotMatch(start.stderr, /disk or file system failed/, `a permission said as a failing disk: ${start.stderr}`);
    assert.equal(start.code, 2, `exit status (1 is restarted by systemd every second): ${start.stderr}`);
  });
});

describe('finding 7 (suspicion (c)): a secret query option masked', () => {
  it('the colon after the URL is kept: "?token=***: unknown option"', async () => {
    assert.equal(maskUrl('upstream redis://127.0.0.1:6379/0?token=abc: unknown option "token"'), 'upstream redis://127.0.0.1:6379/0?token=***: unknown option "token"');
    const line = await failsWithOneLine(['--upstream', 'memory://', '--upstream', 'redis://127.0.0.1:6379/0?token=s3cr3t']);
    assert.doesNotMatch(line, /s3cr3t/);
    assert.match(line, /\?token=\*\*\*: unknown option/, line);
  });

  it('the value is still masked whole, a colon in it included', async () => {
    assert.equal(maskUrl('redis://h:1/0?token=ab:cd&x=1'), 'redis://h:1/0?token=***&x=1');
    assert.equal(maskUrl('"redis://h:1/0?auth=a:b"'), '"redis://h:1/0?auth=***"');
  });
});
