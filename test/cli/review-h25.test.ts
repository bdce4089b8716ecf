/**
 * review-h25: an operator's adversarial review of 048dc28 (a stop while mcmux starts), ecd129d and
 * 017d832 (the own-address check), 0df4ccb, 1ef02dd, e1cded9, b04064a, 667447c (MySQL set-up
 * refusals), 9e5a038 and dd44698 (config errors name the file; `mcmux check`).
 *
 * Each test is a finding: it asserted what an operator expects and failed on that code (as a todo
 * test). All fixed since: 5 in 357af42 (and 1bff9b4: the unit lets AF_NETLINK in), 6 and 4 in
 * f0ab62e, 2 in 5cb4934 and e9422af (the check half: the start's exit 1 for it was kept, a failed
 * start rather than a malformed value, and its test dropped), 1 in 396508f (a warning), 3 in
 * 91b9cde, 7 and 8 in 6902e16.
 *
 * Findings:
 *   1 an upstream that refuses every write stays "healthy" with nothing logged above debug and
 *     `mcmux check` says ok: a MySQL account with SELECT only (ER_TABLEACCESS_DENIED_ERROR 1142
 *     on each INSERT: 667447c treats 1142 only at the set-up), a Redis replica (READONLY).
 *   2 a state-dir mcmux cannot make (a regular file there) exits 1 (systemd restarts it for ever),
 *     not 2, and `mcmux check` says "config ok".
 *   3 errors about an upstream the TOML file gave (a bad option, listed twice, mcmux's own
 *     address) and about a metrics address that is a listen address name no file (9e5a038).
 *   5 (high) under the shipped unit (RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: no
 *     AF_NETLINK) os.networkInterfaces() throws, and 017d832's own-address check calls it for a
 *     memcached upstream at an IP address on the port of a wildcard listen (listen 0.0.0.0:11211,
 *     upstream memcached://10.0.0.5:11211): mcmux exits 1 with a stack trace at every start
 *     (restarted for ever), every reload is rejected; `mcmux check` from a shell (no filter) passes.
 *   6 (low) a SIGHUP while mcmux stops (the grace for a request still out) is applied: upstreams
 *     built, removed, journal.log rewritten for the new chain, "configuration reloaded" logged
 *     between "shutting down" and "stopped"; the operator reads a reload that took.
 *   7 (low) `mcmux check` makes the MySQL table when it is missing (its probe runs the driver's
 *     set-up, CREATE TABLE included): README says check "makes nothing" (dd44698).
 *   8 (low) `mcmux check` with a SQLite file another process holds locked (1ef02dd's
 *     StoreUnavailableError) aborts with one stderr line ending "a restart tries again": no
 *     state-dir line, no line for the other upstreams, where check prints one line per upstream.
 *   4 (the known one) a start-up probe still pending when a reload removes its upstream logs
 *     "upstream fails its probe at start: it stays in the chain" for an upstream no longer in it.
 *
 * MySQL: the shared MariaDB at 127.0.0.1:3306 (root, no password, database `test`): each test
 * makes its own uniquely named user and table, dropped after it.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { eventually, rawClient, runMcmux, startMcmux, statsUpstreams, warnings } from '../helpers/mcmux';
import { lockedSqlite } from '../helpers/sqlite-fixture';
import { freePort, requireBinary, startMemcached } from '../helpers/servers';
import { dropAfter, sharedMysql, stopFirst } from '../helpers/shared-mysql';
import { startRedis } from '../upstream/targets/redis';


async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-h25-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}


describe('an upstream that refuses every write (finding 1)', () => {
  it('a MySQL account with SELECT only (every INSERT refused, ER_TABLEACCESS_DENIED_ERROR 1142) is said: down, or a warning, not "healthy" in silence', { timeout: 60_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    const tag = randomBytes(4).toString('hex');
    const user = `h25_${tag}`;
    const table = `h25_${tag}`;
    const pw = `Pw${randomBytes(6).toString('hex')}`;
    dropAfter(root, `DROP USER IF EXISTS '${user}'@'%'`, `DROP TABLE IF EXISTS test.${table}`);
    // The table as mcmux makes it (made by the DBA); the account may read it, not write it.
    await root.query(
      `CREATE TABLE test.${table} (\`key\` varbinary(250) NOT NULL, \`value\` longblob NOT NULL, \`flags\` int unsigned NOT NULL, \`cas\` bigint unsigned NOT NULL, \`exp\` bigint NOT NULL, PRIMARY KEY (\`key\`), KEY mcmux_exp (\`exp\`)) ENGINE=InnoDB`,
    );
    await root.query(`CREATE USER '${user}'@'%' IDENTIFIED BY '${pw}'`);
    await root.query(`GRANT SELECT ON test.* TO '${user}'@'%'`);
    const url = `mysql://${user}:${pw}@127.0.0.1:3306/test?table=${table}`;
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', url]);
    stopFirst(root, () => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 6; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('the writes failed on MySQL', async () => Number((await statsUpstreams(mux.port))['upstream.1.errors']) >= 6, 10_000);
    const said = (): string[] => warnings(mux.logs().stdout).filter((l) => l.includes(user) && /1142|TABLEACCESS|INSERT/.test(l));
    await eventually('said: down, or a warning naming the refusal', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down' || said().length > 0, 10_000).catch(() => undefined);
    const state = (await statsUpstreams(mux.port))['upstream.1.state'];
    assert.ok(state === 'down' || said().length > 0, `every session written to memory only, MySQL "${state}" and no warning: ${warnings(mux.logs().stdout).join('\n')}`);
    assert.ok(said().length <= 1, `said once: ${said().join('\n')}`);
  });

  it('a Redis replica (every write READONLY) is said: down, or a warning naming READONLY, not "healthy" in silence', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    // A replica of a master that is not there: it serves reads, refuses writes (replica-read-only).
    const replica = await startRedis(['--replicaof', '127.0.0.1', String(await freePort())]);
    t.after(() => replica.stop());
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', replica.url]);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 6; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('the writes failed on Redis', async () => Number((await statsUpstreams(mux.port))['upstream.1.errors']) >= 6, 10_000);
    const said = (): string[] => warnings(mux.logs().stdout).filter((l) => /READONLY/.test(l));
    await eventually('said: down, or a warning naming READONLY', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down' || said().length > 0, 10_000).catch(() => undefined);
    const state = (await statsUpstreams(mux.port))['upstream.1.state'];
    assert.ok(state === 'down' || said().length > 0, `every session written to memory only, Redis "${state}" and no warning: ${warnings(mux.logs().stdout).join('\n')}`);
    assert.ok(said().length <= 1, `said once: ${said().join('\n')}`);
  });
});

describe('a state-dir mcmux cannot make (finding 2)', () => {
  it('mcmux check says so (non-zero), rather than "config ok" for a config the start refuses', { timeout: 30_000 }, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, 'not-a-dir');
    await writeFile(file, 'x');
    const r = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--state-dir', file], { timeoutMs: 10_000 });
    assert.notEqual(r.code, 0, `mcmux check: ${r.stdout}`);
    assert.match(r.stdout, /^state-dir [^\n]*not-a-dir\nFAILED state-dir: [^\n]*not-a-dir is not a directory/, r.stdout);
    assert.doesNotMatch(r.stdout, /config ok/);
    // Under the file: the same (the file is the nearest part of the path there), not a crash.
    const under = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--state-dir', join(file, 'state')], { timeoutMs: 10_000 });
    assert.equal(under.code, 1, under.stdout + under.stderr);
    assert.match(under.stdout, /\nFAILED state-dir: [^\n]*not-a-dir is not a directory/, under.stdout);
    // A state-dir not there yet, under a directory mcmux may write in: ok, and not made by check.
    const fresh = join(dir, 'a', 'b');
    const ok = await runMcmux(['check', '--listen', '127.0.0.1:0', '--upstream', 'memory://', '--state-dir', fresh], { timeoutMs: 10_000 });
    assert.equal(ok.code, 0, ok.stdout);
    assert.match(ok.stdout, /config ok/);
    assert.equal(existsSync(join(dir, 'a')), false, 'check made the state-dir');
  });
});

describe('an error about a value the TOML file gave names the file (finding 3, 9e5a038)', () => {
  it('a bad upstream option, an upstream listed twice, an upstream at mcmux\'s own address, a metrics address that is a listen one', { timeout: 60_000 }, async (t) => {
    const dir = await tempDir(t);
    const port = await freePort();
    const cases = {
      'option.toml': `listen = "127.0.0.1:0"\n[[upstream]]\nurl = "memcached://127.0.0.1:1"\ntimeout = "abc"\n`,
      'query.toml': `listen = "127.0.0.1:0"\n[[upstream]]\nurl = "memcached://127.0.0.1:1?timeout=abc"\n`,
      'twice.toml': `listen = "127.0.0.1:0"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "memory://"\n`,
      'own.toml': `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memcached://127.0.0.1:${port}"\n`,
      'metrics.toml': `listen = "127.0.0.1:${port}"\nmetrics = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n`,
    };
    const unnamed: string[] = [];
    for (const [name, text] of Object.entries(cases)) {
      const file = join(dir, name);
      await writeFile(file, text);
      const r = await runMcmux(['--config', file, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.match(r.stderr, /^[^\n]+\n$/);
      if (!r.stderr.includes(file)) unnamed.push(`${name}: ${r.stderr.trim()}`);
    }
    assert.deepEqual(unnamed, [], 'the file is not named');
  });
});

describe('a reload while the start-up probe is pending (finding 4, known)', () => {
  it('an upstream the reload removed is not said to "stay in the chain" by the start-up probe that was still out', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const dir = await tempDir(t);
    const mc = await startMemcached();
    t.after(() => mc.stop());
    // In front of it, a proxy that passes everything but `version` (the probe; the driver sends
    // none at its first connect): the start-up probe waits out the timeout.
    const conns: Socket[] = [];
    const proxy = createServer((client) => {
      const server = connect({ host: '127.0.0.1', port: mc.port });
      conns.push(client, server);
      client.on('data', (d: Buffer) => {
        const text = d.toString('latin1').replace(/version\r\n/g, '');
        server.write(Buffer.from(text, 'latin1'));
      });
      server.on('data', (d) => client.write(d));
      client.on('error', () => server.destroy());
      server.on('error', () => client.destroy());
      client.on('close', () => server.destroy());
      server.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      for (const s of conns) s.destroy();
      proxy.close();
    });
    const proxyPort = (proxy.address() as AddressInfo).port;
    const port = await freePort();
    const file = join(dir, 'config.toml');
    const removed = `memcached://127.0.0.1:${proxyPort}`;
    await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${dir}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "${removed}?timeout=2000"\n`);
    const mux = await startMcmux(['--config', file], { port });
    t.after(() => mux.stop());
    // The start-up probe of that upstream is out (up to its timeout): the operator drops it.
    await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${dir}"\n[[upstream]]\nurl = "memory://"\n`);
    mux.proc.kill('SIGHUP');
    await eventually('the reload is logged', () => /configuration reloaded|reload rejected/.test(mux.logs().stdout), 10_000);
    assert.match(mux.logs().stdout, /configuration reloaded/);
    assert.doesNotMatch(mux.logs().stdout, /fails its probe at start/, 'the probe was still out when the reload came');
    await new Promise((r) => setTimeout(r, 4000));
    const out = mux.logs().stdout;
    const after = out.slice(out.indexOf('configuration reloaded'));
    const line = after.split('\n').find((l) => l.includes('fails its probe at start') && l.includes(removed));
    assert.equal(line, undefined, `logged after the reload removed it: ${line}`);
  });
});

describe("the own-address check under the unit's RestrictAddressFamilies (finding 5, 017d832)", () => {
  it('listen 0.0.0.0:P with a memcached upstream on another host at port P starts under a filter refusing AF_NETLINK (as systemd applies RestrictAddressFamilies)', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'gcc', 'gcc')) return;
    const { execFileSync, spawn } = await import('node:child_process');
    const { MCMUX_BIN } = await import('../helpers/mcmux');
    const { NODE_FLAGS } = await import('../../src/node-flags');
    const dir = await tempDir(t);
    // What systemd's RestrictAddressFamilies= installs: a seccomp filter, socket(AF_NETLINK) -> EAFNOSUPPORT.
    await writeFile(join(dir, 'nonetlink.c'), `#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  struct sock_filter f[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 3),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EAFNOSUPPORT & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) { perror("seccomp"); return 111; }
  execvp(argv[1], argv + 1);
  perror("exec");
  return 111;
}
`);
    const launcher = join(dir, 'nonetlink');
    execFileSync('gcc', ['-o', launcher, join(dir, 'nonetlink.c')]);
    const port = await freePort();
    // 192.0.2.1 (TEST-NET-1): another host's memcached on the port mcmux listens on, as in the README's diagram.
    const p = spawn(launcher, [process.execPath, ...NODE_FLAGS, MCMUX_BIN, '--listen', `0.0.0.0:${port}`, '--upstream', 'memory://', '--upstream', `memcached://192.0.2.1:${port}?timeout=100`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, STATE_DIRECTORY: dir },
    });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    let exit: number | null | undefined;
    const exited = new Promise<void>((resolve) => p.on('close', (code) => ((exit = code), resolve())));
    t.after(async () => {
      p.kill('SIGKILL');
      await exited;
    });
    await eventually('mcmux listening (or exited)', () => out.includes('mcmux listening') || exit !== undefined, 15_000);
    assert.notEqual(exit, 111, `the launcher failed: ${out}`);
    assert.doesNotMatch(out, /ERR_SYSTEM_ERROR|uv_interface_addresses/, 'the own-address check crashed mcmux');
    assert.match(out, /mcmux listening/);
    p.kill('SIGTERM');
    await exited;
  });
});

describe('a SIGHUP while mcmux stops (finding 6, 048dc28)', () => {
  it('is not applied: no "configuration reloaded" between "shutting down" and "stopped", and the stop ends clean', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const dir = await tempDir(t);
    const mc = await startMemcached();
    t.after(async () => {
      mc.resume();
      await mc.stop();
    });
    const port = await freePort();
    const file = join(dir, 'config.toml');
    await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${dir}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "${mc.url}?timeout=3000"\n`);
    const mux = await startMcmux(['--config', file], { port });
    t.after(() => mux.stop());
    // A read that misses in memory waits on the paused memcached: the stop waits for it (grace).
    await mc.pause();
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    const reply = c.ask('get sess:x\r\n', /END\r\n$/, 10_000).catch(() => '');
    await new Promise((r) => setTimeout(r, 300));
    mux.proc.kill('SIGTERM');
    await eventually('shutting down', () => mux.logs().stdout.includes('shutting down'), 5000);
    await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${dir}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "memory://other"\n`);
    mux.proc.kill('SIGHUP');
    const exit = await mux.exited;
    await reply;
    assert.equal(exit.code, 0, mux.logs().stderr);
    const out = mux.logs().stdout;
    const during = out.slice(out.indexOf('shutting down'));
    assert.doesNotMatch(during, /configuration reloaded/, 'a reload was applied to a process that was stopping');
  });
});

describe('mcmux check makes nothing (finding 7, dd44698)', () => {
  it('a MySQL table not there yet is not made by check', { timeout: 30_000 }, async (t) => {
    const root = await sharedMysql(t);
    if (root === undefined) return;
    const table = `h25_check_${randomBytes(4).toString('hex')}`;
    dropAfter(root, `DROP TABLE IF EXISTS test.${table}`);
    const dir = await tempDir(t);
    const r = await runMcmux(['check', '--upstream', `mysql://root@127.0.0.1:3306/test?table=${table}`, '--state-dir', join(dir, 'state')], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const [rows] = await root.query(`SHOW TABLES FROM test LIKE '${table}'`);
    assert.equal((rows as unknown[]).length, 0, `mcmux check made test.${table}: ${r.stdout}`);
  });
});

describe('mcmux check and a SQLite file locked by another process (finding 8, 1ef02dd)', () => {
  it('prints its state-dir line and one line per upstream, the locked one FAILED, exit 1', { timeout: 30_000 }, async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'sessions.db');
    lockedSqlite(t, path);
    const r = await runMcmux(['check', '--upstream', 'memory://', '--upstream', `sqlite://${path}?timeout=100`, '--state-dir', join(dir, 'state')], { timeoutMs: 10_000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /^state-dir /, `the state-dir line: ${JSON.stringify(r.stdout)} ${JSON.stringify(r.stderr)}`);
    assert.match(r.stdout, /\nok\s+memory:\/\//, 'the other upstream\'s line');
    assert.match(r.stdout, /\nFAILED\s+sqlite:\/\/[^\n]*SQLITE_BUSY/, 'the locked one FAILED, with the cause');
  });
});
