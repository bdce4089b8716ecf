/**
 * review-h31: an operator's adversarial review of 396508f (the marker write refused: a warning),
 * 5cb4934 and e9422af (`mcmux check`: a state-dir the start cannot make), 6902e16 (check makes no
 * MySQL table), 91b9cde (errors about the file's upstreams name the file), f0ab62e (a SIGHUP
 * while stopping), 357af42 and 1bff9b4 (the own-address check without AF_NETLINK).
 *
 * Each test below marked as a finding asserted what an operator expects and failed on that code
 * (as a todo test). Fixed since (their todo marks dropped, each test failing without its fix; the
 * commits as on main): 1 in 7dcfeb3; 2 in 926efb1 and b3edc7b (a FAILED line); 3 in 7b43668; 8 in
 * 3bacb5b; 9 in f8c6387; 10 and 11 in 82db8a4 (docs); 12 in 24122ed; 13 in 47d39cc; 6 in
 * 4846f11 (the refused marker read said at warn); 5 for a Redis replica in 3cc2fcf (check asks
 * INFO replication); 7 in 4e798b6 (an existing SQLite file
 * is looked at read-only); 4 by the commit after 4e798b6 (check reads SHOW GRANTS where the
 * table is missing). None is todo now.
 *
 * Findings:
 *   1 `mcmux check` says "config ok" (exit 0) for a state-dir that is a dangling symbolic link (a
 *     mount point's link made before its target, /var/lib/mcmux -> /data/mcmux): the start exits
 *     1 (mkdir: EEXIST). stateDirProblem's statSync follows the link, finds nothing, and judges
 *     the link's parent instead; makeDirs cannot make a directory where a link is.
 *   2 `mcmux check` says "ok ... not there yet (mcmux makes it, and its directory, at start)" and
 *     exits 0 for a sqlite:// file whose directory the start cannot make (a regular file in its
 *     path): the start exits 2 (EEXIST/ENOTDIR). The state-dir has had that look since 5cb4934;
 *     a sqlite upstream's own directory has not.
 *   3 a state-dir holding `%`, `#`, `?` or `@` breaks the embedded default's URL
 *     (`sqlite://<state-dir>/mcmux.db`, built unescaped): `%41` puts the sessions' SQLite file in
 *     another directory than the state-dir (`x%41y` -> `xAy/mcmux.db`), silently; `#`, `?`, `@`
 *     exit 2 with a line about an upstream the operator never configured (for `@`, the path
 *     masked as a password: "sqlite://***@..."), naming neither state-dir nor its expected form.
 *     `StateDirectory=%N` of a template unit (mcmux@a) is such a path.
 *   4 (regression from 6902e16) `mcmux check` says ok, exit 0, for a MySQL table not there yet and
 *     an account that may not CREATE it: the start's first statement fails "CREATE command
 *     denied" and every request to that upstream fails (logged "fails its probe at start"). Before
 *     6902e16 check ran the CREATE and said FAILED; now it runs nothing where the table is missing.
 *   5 (the check half of review-h25 finding 1, which 396508f left) `mcmux check` says ok, exit 0,
 *     for an upstream that refuses every write: a Redis replica (READONLY). The running mcmux warns
 *     "upstream refuses writes" for it since 396508f; check, the tool the unit's comment sends the
 *     operator to, probes with PING only.
 *   6 (the class 396508f meant to cover) a Redis ACL user whose key pattern leaves out mcmux's own
 *     keys (`~sess:*`, the usual least-privilege ACL): every write fails (NOPERM) while the
 *     upstream stays healthy, and nothing is logged above debug: the marker's READ is refused
 *     first (checkStore swallows every error as 'unknown'), so the marker write that 396508f
 *     warns about is never tried. README: "an ACL user without write permission ... the refusal of
 *     mcmux's marker write is logged once at warn".
 *   7 `mcmux check` writes into an existing SQLite file that does not yet hold mcmux's table: it
 *     creates mcmux's three schema objects there and switches the file to WAL, where README says
 *     "It makes nothing" (the MySQL half was 6902e16).
 *   8 with no upstream configured (the embedded default), a state-dir the start cannot make (a
 *     file there) exits 2, never restarted, with a line about `sqlite://<state-dir>/mcmux.db`
 *     ("cannot open ... EEXIST: file already exists, mkdir"), an upstream the operator never
 *     configured: with any upstream configured the same state-dir exits 1 naming the state-dir,
 *     as 5cb4934 says was decided (loadConfig builds the embedded SQLite store, which makes the
 *     state-dir itself, before App's makeStateDir is reached).
 *   9 a unix listen socket whose directory is not there (`unix:/run/mcmux/mcmux.sock`, the
 *     example config's, without the unit's RuntimeDirectory=): the start exits 1 with "listen
 *     EACCES: permission denied" (libuv reports the missing directory so), and the operator looks
 *     for a permission; `mcmux check` says "config ok" for it (check cannot know of a
 *     RuntimeDirectory= systemd makes at start, as for StateDirectory=, so not asserted here).
 *  10 docs/operations.md says the unit has `RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX`:
 *     1bff9b4 added AF_NETLINK to the unit (and README), not there.
 *  11 docs/operations.md's install recipe runs `/opt/mcmux/bin/mcmux check --config ... --state-dir
 *     /var/lib/mcmux` without sudo (every other line has it), before the first start: since 5cb4934
 *     a user not root gets "FAILED state-dir: /var/lib is not writable (EACCES)" and exit 1 for the
 *     directory systemd's StateDirectory= makes at that start (and, after it, EACCES looking into
 *     DynamicUser's /var/lib/private).
 *  12 (low; f0ab62e's class) a SIGTERM while the start-up probe of an upstream is still out (a
 *     memcached slow to answer `version`, up to 4 x its timeout) logs, under the stop, "upstream
 *     fails its probe at start: it stays in the chain, and requests will find it failing" with
 *     "upstream closed": the stop closed it. probeUpstreams' current() still lists it.
 *  13 (finding 2's class) `mcmux check` says "ok ... not there yet" for a sqlite:// path that is a
 *     symbolic link into a directory not there (a disk not mounted yet): the start's open(O_CREAT)
 *     follows the link and fails ENOENT (exit 2); makeDirs made the link's directory, not its
 *     target's.
 *
 * MySQL: the shared MariaDB at 127.0.0.1:3306 (root, no password, database `test`): the test
 * makes its own uniquely named user, dropped after it (and any table, if one got made).
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import Database from 'better-sqlite3';
import { eventually, rawClient, runMcmux, startMcmux, statsUpstreams, warnings } from '../helpers/mcmux';
import { freePort, requireBinary } from '../helpers/servers';
import { account, sharedMysql, stopFirst } from '../helpers/shared-mysql';
import { startRedis } from '../upstream/targets/redis';

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-h31-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}


/** Starts mcmux on `args` (a free port) and stops it at once: its exit status and stderr. */
async function startOnce(args: string[], dir: string): Promise<{ code: number | null; stderr: string; listening: boolean }> {
  const port = await freePort();
  const r = await runMcmux(['--listen', `127.0.0.1:${port}`, ...args], { timeoutMs: 4000, env: { STATE_DIRECTORY: undefined }, cwd: dir });
  return { code: r.timedOut ? null : r.code, stderr: r.stderr, listening: r.stdout.includes('mcmux listening') };
}

describe('mcmux check and what the start cannot make (5cb4934, e9422af)', () => {
  it('a state-dir that is a dangling symbolic link: check says FAILED (the start exits 1: mkdir EEXIST)', {}, async (t) => {
    const dir = await tempDir(t);
    // As a mount point's link made before the disk is there: /var/lib/mcmux -> /data/mcmux.
    const link = join(dir, 'state');
    await symlink(join(dir, 'data', 'mcmux'), link);
    const start = await startOnce(['--upstream', 'memory://', '--state-dir', link], dir);
    assert.equal(start.code, 1, `the start: ${start.stderr}`);
    assert.match(start.stderr, /cannot be made/);
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--state-dir', link], { timeoutMs: 10_000 });
    assert.match(r.stdout, /\nFAILED state-dir: /, `check on a state-dir the start refuses: ${r.stdout}`);
    assert.equal(r.code, 1, r.stdout + r.stderr);
  });

  it('a sqlite:// file whose directory the start cannot make (a file in its path): check does not say ok (the start exits 2)', {}, async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'sessions'), 'not a directory');
    const url = `sqlite://${join(dir, 'sessions', 'mcmux.db')}`;
    const start = await startOnce(['--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], dir);
    assert.equal(start.code, 2, `the start: ${start.stderr}`);
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
    assert.notEqual(r.code, 0, `check exit status 0 for a config the start refuses (exit 2): ${r.stdout}`);
    assert.doesNotMatch(r.stdout, /config ok/);
    assert.match(r.stdout + r.stderr, /sessions/, 'the line names the path');
  });
});

describe('mcmux check and a sqlite:// path that is a symbolic link to nothing', () => {
  it('a link whose target\'s directory is not there: check does not say ok (the start exits 2: ENOENT)', {}, async (t) => {
    const dir = await tempDir(t);
    // As a file moved to a disk not mounted yet: sessions.db -> /data/mcmux/sessions.db.
    const path = join(dir, 'sessions.db');
    await symlink(join(dir, 'data', 'mcmux', 'sessions.db'), path);
    const url = `sqlite://${path}`;
    const start = await startOnce(['--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], dir);
    assert.equal(start.code, 2, `the start: ${start.stderr}`);
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
    assert.notEqual(r.code, 0, `check exit status 0 for a config the start refuses (exit 2): ${r.stdout}`);
    assert.doesNotMatch(r.stdout, /config ok/);
  });

  it('a link whose target\'s directory is there: check says ok, and the start makes the target', async (t) => {
    const dir = await tempDir(t);
    await mkdir(join(dir, 'data'));
    const path = join(dir, 'sessions.db');
    await symlink(join(dir, 'data', 'sessions.db'), path);
    const url = `sqlite://${path}`;
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const start = await startOnce(['--upstream', 'memory://', '--upstream', url, '--state-dir', join(dir, 'state')], dir);
    assert.equal(start.listening, true, start.stderr);
    assert.equal(existsSync(join(dir, 'data', 'sessions.db')), true);
  });
});

describe('a state-dir whose path holds URL characters (the embedded default, config.ts embeddedDefault)', () => {
  it('%41 in it: the embedded SQLite file is made inside the state-dir, not in another directory', {}, async (t) => {
    const dir = await tempDir(t);
    const state = join(dir, 'x%41y');
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--state-dir', state], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`not there yet[^\\n]*: ${state.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/mcmux\\.db\\n`), `where check says the embedded store goes: ${r.stdout}`);
    const start = await runMcmux(['--listen', `127.0.0.1:${await freePort()}`, '--state-dir', state], { timeoutMs: 3000, env: { STATE_DIRECTORY: undefined }, cwd: dir });
    assert.ok(start.stdout.includes('mcmux listening'), start.stderr);
    assert.equal(existsSync(join(dir, 'xAy')), false, 'the sessions\' SQLite file went to another directory than the state-dir');
    assert.equal(existsSync(join(state, 'mcmux.db')), true, 'no mcmux.db in the state-dir');
  });

  it('#, ? and @ in it (StateDirectory=%N of a template unit mcmux@a): the embedded default starts there, no error about an upstream never configured', {}, async (t) => {
    const dir = await tempDir(t);
    const failed: string[] = [];
    for (const name of ['mcmux@a', 'sess#1', 'what?']) {
      const state = join(dir, name);
      const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--state-dir', state], { timeoutMs: 10_000 });
      if (r.code !== 0) failed.push(`${name}: exit ${r.code}: ${r.stderr.trim()}`);
    }
    assert.deepEqual(failed, [], 'a state-dir refused for the URL mcmux builds from it');
  });
});

describe('mcmux check says ok where the start finds the upstream unusable', () => {
  it('a MySQL table not there yet and an account that may not CREATE it: check says FAILED naming CREATE (the start: "CREATE command denied")', async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    // Every privilege a request needs, not the set-up's CREATE (a DBA makes tables).
    const { url, pw } = await account(root, 'h31', (u) => [`GRANT SELECT, INSERT, UPDATE, DELETE ON test.* TO ${u}`]);
    const dir = await tempDir(t);
    // The start: the upstream fails its probe with the refused CREATE.
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', url]);
    stopFirst(root, () => mux.stop());
    await eventually('the start-up probe said', () => /fails its probe at start/.test(mux.logs().stdout), 10_000);
    assert.match(mux.logs().stdout, /CREATE command denied/);
    await mux.stop();
    const r = await runMcmux(['check', '--upstream', url, '--state-dir', join(dir, 'state')], { timeoutMs: 15_000 });
    assert.match(r.stdout, /\nFAILED\s+mysql:\/\/[^\n]*CREATE/, `check: ${r.stdout}`);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout, new RegExp(pw), 'the password is masked');
  });

  it('a Redis replica (every write READONLY, which the running mcmux warns of): check does not say ok', async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const replica = await startRedis(['--replicaof', '127.0.0.1', String(await freePort())]);
    t.after(() => replica.stop());
    const dir = await tempDir(t);
    const r = await runMcmux(['check', '--upstream', 'memory://', '--upstream', replica.url, '--state-dir', join(dir, 'state')], { timeoutMs: 15_000 });
    assert.match(r.stdout, /\nFAILED\s+redis:\/\/[^\n]*(READONLY|replica|read-only)/i, `check: ${r.stdout}`);
    assert.equal(r.code, 1, r.stdout + r.stderr);
  });
});

describe('an upstream that refuses every write is said (396508f)', () => {
  it('a Redis ACL user limited to the sessions\' keys (~sess:*): every write NOPERM, said at warn once, not at debug only', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    const redis = await startRedis(['--user', 'app', 'on', `>${pw}`, '~sess:*', '+@all']);
    t.after(() => redis.stop());
    const url = `redis://app:${pw}@127.0.0.1:${redis.port}`;
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', url]);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 6; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('the writes failed on Redis', async () => Number((await statsUpstreams(mux.port))['upstream.1.errors']) >= 6, 10_000);
    // The marker check's own warning (the repair's, for the copies it is refused, names NOPERM too).
    const said = (): string[] => warnings(mux.logs().stdout).filter((l) => /NOPERM/.test(l) && /marker read/.test(l));
    await eventually('the refused marker read said at warn, naming NOPERM', () => said().length > 0, 10_000).catch(() => undefined);
    const state = (await statsUpstreams(mux.port))['upstream.1.state'];
    assert.ok(said().length > 0, `every session written to memory only, Redis "${state}" and no warning of the marker read: ${warnings(mux.logs().stdout).join('\n')}`);
    // More requests to Redis come and go (marker checks every 2 s, the repair's tries): said once until a marker lands there.
    const checks = Number((await statsUpstreams(mux.port))['upstream.1.requests']);
    await eventually('two more requests to Redis', async () => Number((await statsUpstreams(mux.port))['upstream.1.requests']) >= checks + 2, 10_000);
    assert.equal(said().length, 1, `said once: ${said().join('\n')}`);
    assert.doesNotMatch(mux.logs().stdout, new RegExp(pw), 'the password is masked');
  });
});

describe('mcmux check makes nothing (README; 6902e16 did MySQL)', () => {
  it('an existing SQLite file without mcmux\'s table: check leaves it as it was (no table made, journal mode kept)', async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'app.db');
    const db = new Database(path);
    db.exec('CREATE TABLE app (x)');
    const mode = db.pragma('journal_mode', { simple: true });
    db.close();
    await mkdir(join(dir, 'state'));
    const r = await runMcmux(['check', '--upstream', `sqlite://${path}?table=h31_sessions`, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const after = new Database(path, { readonly: true });
    t.after(() => after.close());
    const names = (after.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'h31_%'").all() as Array<{ name: string }>).map((row) => row.name);
    assert.deepEqual(names, [], `mcmux check made ${names.join(', ')} in the file`);
    assert.equal(after.pragma('journal_mode', { simple: true }), mode, 'check changed the file\'s journal mode');
  });
});

describe('the start with the embedded default and a state-dir it cannot make', () => {
  it('exits as with a configured upstream (1, "state-dir ... cannot be made"), not 2 with a line about sqlite://<state-dir>/mcmux.db', {}, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'not-a-dir');
    await writeFile(file, 'x');
    const configured = await startOnce(['--upstream', 'memory://', '--state-dir', file], dir);
    assert.equal(configured.code, 1, configured.stderr);
    assert.match(configured.stderr, /state-dir "[^"]*not-a-dir" cannot be made/);
    const embedded = await startOnce(['--state-dir', file], dir);
    assert.match(embedded.stderr, /^[^\n]+\n$/, 'one line');
    assert.match(embedded.stderr, /state-dir/, `the line names the state-dir: ${embedded.stderr}`);
    assert.equal(embedded.code, configured.code, `exit status with the embedded default: ${embedded.stderr}`);
  });
});

describe('a unix socket whose directory is not there', () => {
  it('listen unix:<a directory not there>/mcmux.sock (the example config without the unit\'s RuntimeDirectory=): the start\'s line says the directory is missing, not "permission denied"', {}, async (t) => {
    const dir = await tempDir(t);
    const sock = join(dir, 'run', 'mcmux', 'mcmux.sock');
    const start = await runMcmux(['--listen', `unix:${sock}`, '--upstream', 'memory://', '--state-dir', join(dir, 'state')], { timeoutMs: 4000 });
    assert.equal(start.code, 1, `the start: ${start.stderr}`);
    assert.doesNotMatch(start.stdout, /mcmux listening/);
    assert.doesNotMatch(start.stderr, /permission denied/, 'the directory is missing, not forbidden');
    assert.match(start.stderr, /does not exist|ENOENT|no such/i, start.stderr);
    assert.match(start.stderr, new RegExp(join(dir, 'run', 'mcmux').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'the line names the missing directory');
  });
});

describe('docs/operations.md and what 1bff9b4 and 5cb4934 changed', () => {
  it('the unit\'s RestrictAddressFamilies= as docs/operations.md states it is the unit\'s (AF_NETLINK since 1bff9b4)', {}, async () => {
    const root = join(__dirname, __dirname.includes('/dist/') ? '../../..' : '../..');
    const unit = await readFile(join(root, 'systemd/mcmux.service'), 'utf8');
    const ops = await readFile(join(root, 'docs/operations.md'), 'utf8');
    const inUnit = /^RestrictAddressFamilies=(.*)$/m.exec(unit)?.[1]?.trim();
    assert.ok(inUnit, 'the unit sets RestrictAddressFamilies=');
    const said = [...ops.matchAll(/`RestrictAddressFamilies=([^`]*)`/g)].map((m) => (m[1] as string).trim());
    assert.ok(said.length > 0, 'docs/operations.md states it');
    assert.deepEqual(said.filter((v) => v !== inUnit), [], `the unit has RestrictAddressFamilies=${inUnit}`);
  });

  it('the install recipe\'s `mcmux check ... --state-dir /var/lib/mcmux` runs as root (with sudo, as its other lines): as another user it says FAILED state-dir for the directory systemd makes at the first start', {}, async (t) => {
    const root = join(__dirname, __dirname.includes('/dist/') ? '../../..' : '../..');
    const ops = await readFile(join(root, 'docs/operations.md'), 'utf8');
    const line = ops.split('\n').find((l) => /mcmux check .*--state-dir \/var\/lib\/mcmux/.test(l));
    assert.ok(line, 'the recipe runs check on the service\'s state-dir');
    // What it says run as another user than root, before the first start (the directory not there yet,
    // its parent root's): shown when this test runs as root, with nobody's uid.
    if (process.getuid?.() === 0) {
      const dir = await tempDir(t);
      const { chmod } = await import('node:fs/promises');
      await chmod(dir, 0o755);
      const { execFile } = await import('node:child_process');
      const { MCMUX_BIN } = await import('../helpers/mcmux');
      const { NODE_FLAGS } = await import('../../src/node-flags');
      const stdout = await new Promise<string>((res) => {
        execFile(process.execPath, [...NODE_FLAGS, MCMUX_BIN, 'check', '--upstream', 'memory://', '--state-dir', join(dir, 'mcmux')], { uid: 65534, gid: 65534, cwd: dir, timeout: 10_000 }, (_err, out, err) => res(`${out}${err}`));
      });
      assert.match(stdout, /FAILED state-dir: [^\n]*not writable/, `as nobody: ${stdout}`);
    }
    assert.match(line, /^\s*sudo /, `run without sudo, check says FAILED state-dir for /var/lib/mcmux: ${line}`);
  });
});

describe('a stop while the start-up probe is out (f0ab62e)', () => {
  it('the probe that the stop cut short is not logged as "fails its probe at start: it stays in the chain" under the stop', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { startMemcached } = await import('../helpers/servers');
    const { connect, createServer } = await import('node:net');
    const mc = await startMemcached();
    t.after(() => mc.stop());
    // A proxy that passes everything but `version` (the probe): the start-up probe waits out its limit.
    const conns: Array<import('node:net').Socket> = [];
    const proxy = createServer((client) => {
      const server = connect({ host: '127.0.0.1', port: mc.port });
      conns.push(client, server);
      client.on('data', (d: Buffer) => server.write(Buffer.from(d.toString('latin1').replace(/version\r\n/g, ''), 'latin1')));
      server.on('data', (d) => client.write(d));
      for (const [a, b] of [[client, server], [server, client]] as const) {
        a.on('error', () => b.destroy());
        a.on('close', () => b.destroy());
      }
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      for (const c of conns) c.destroy();
      proxy.close();
    });
    const port = (proxy.address() as import('node:net').AddressInfo).port;
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${port}?timeout=2000`]);
    t.after(() => mux.stop());
    await new Promise((r) => setTimeout(r, 300));
    assert.doesNotMatch(mux.logs().stdout, /fails its probe/, 'the probe is still out');
    const exit = await mux.stop('SIGTERM');
    assert.equal(exit.code, 0, mux.logs().stderr);
    const out = mux.logs().stdout;
    const during = out.slice(out.indexOf('shutting down'));
    assert.doesNotMatch(during, /fails its probe at start/, `logged under the stop: ${warnings(during).join('\n')}`);
  });
});
