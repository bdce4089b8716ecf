/**
 * review-h14: an operator's review, mcmux run from its README alone against real servers
 * (MariaDB, redis-server, memcached). Each test here failed before its fix, except those marked
 * "holds" (suspicions refuted, kept as guards) and the todo ones (findings left open).
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { openFileLimit } from '../../src/cli';
import { NODE_FLAGS } from '../../src/node-flags';
import { MCMUX_BIN, eventually, failsWithOneLine, rawClient, runMcmux, startMcmux, statsUpstreams } from '../helpers/mcmux';
import { freePort, requireBinary, startMemcached } from '../helpers/servers';
import { MARIADB_PASSWORD, startMariadb } from '../upstream/targets/mysql';
import { startRedis } from '../upstream/targets/redis';

describe('a MySQL upstream whose server refuses the connection itself (wrong password)', () => {
  it('goes down, and the log says why (ER_ACCESS_DENIED_ERROR), the password never printed (was: "healthy" for good, every request an error, logged at debug only)', { timeout: 120_000 }, async (t) => {
    if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
    const db = await startMariadb();
    t.after(() => db.destroy());
    const wrong = 'Wr0ngPassw0rdH14';
    const url = db.url.replace(encodeURIComponent(MARIADB_PASSWORD), wrong);
    assert.notEqual(url, db.url);
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', url, '--metrics', `127.0.0.1:${await freePort()}`]);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('the MySQL upstream is down in stats upstreams', async () => (await statsUpstreams(mux.port))['upstream.1.state'] === 'down', 10_000);
    const lines = mux.logs().stdout.split('\n');
    const down = lines.find((l) => l.includes('"msg":"upstream down"'));
    assert.match(String(down), /ER_ACCESS_DENIED_ERROR/, `the down line names the refusal: ${down}`);
    const all = `${mux.logs().stdout}${mux.logs().stderr}${JSON.stringify(await statsUpstreams(mux.port))}`;
    assert.ok(!all.includes(wrong), 'the password is printed');
  });

  it('holds: the right password works, and the upstream stays healthy', { timeout: 120_000 }, async (t) => {
    if (!requireBinary(t, 'mariadbd', 'mariadb-server')) return;
    const db = await startMariadb();
    t.after(() => db.destroy());
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', db.url]);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set sess:${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    const s = await statsUpstreams(mux.port);
    assert.equal(s['upstream.1.state'], 'healthy');
    assert.equal(s['upstream.1.errors'], '0');
  });
});

describe('a Redis upstream with a wrong password and a database other than 0', () => {
  it('mcmux check names the refused password (WRONGPASS), not the SELECT it made fail (was: "cannot select the database: NOAUTH")', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis(['--requirepass', 'h14-server-pw']);
    t.after(() => server.stop());
    for (const auth of [':Wr0ngRedisPw', 'default:Wr0ngRedisPw']) {
      const url = `redis://${auth}@127.0.0.1:${server.port}/2`;
      const r = await runMcmux(['check', '--upstream', url], { timeoutMs: 20_000 });
      assert.equal(r.code, 1, `${url}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /^FAILED .*WRONGPASS/m, url);
      assert.doesNotMatch(r.stdout, /NOAUTH/, url);
      assert.ok(!`${r.stdout}${r.stderr}`.includes('Wr0ngRedisPw'), 'the password is printed');
    }
    // holds: no password at all is NOAUTH, named as the SELECT's refusal; the right one is ok.
    const none = await runMcmux(['check', '--upstream', `redis://127.0.0.1:${server.port}/2`], { timeoutMs: 20_000 });
    assert.match(none.stdout, /^FAILED .*NOAUTH/m);
    const good = await runMcmux(['check', '--upstream', `redis://:h14-server-pw@127.0.0.1:${server.port}/2`], { timeoutMs: 20_000 });
    assert.equal(good.code, 0, good.stdout);
  });
});

describe("an upstream at mcmux's own listen address", () => {
  it('is refused: exit 2, one line naming it (was: mcmux proxied to itself, every write SERVER_ERROR "replies out of step", probes healthy)', async () => {
    const port = await freePort();
    const cases: Array<[string[], RegExp]> = [
      [['--listen', `127.0.0.1:${port}`, '--upstream', `memcached://127.0.0.1:${port}`], new RegExp(`own listen address 127\\.0\\.0\\.1:${port}`)],
      // No port is 11211, mcmux's default listen address.
      [['--upstream', 'memcached://localhost'], /own listen address 127\.0\.0\.1:11211 \(memcached:\/\/ without a port is port 11211\)/],
      [['--listen', `0.0.0.0:${port}`, '--upstream', `memcached://127.0.0.2:1,127.0.0.1:${port}?timeout=100`], /own listen address 0\.0\.0\.0:/],
    ];
    for (const [args, expected] of cases) {
      const line = await failsWithOneLine(args);
      assert.match(line, expected, args.join(' '));
    }
  });

  it('holds: another port, another host, or a listen port of 0 is accepted', async () => {
    const port = await freePort();
    const { loadConfig } = await import('../../src/cli');
    for (const args of [
      ['--listen', `127.0.0.1:${port}`, '--upstream', `memcached://127.0.0.1:${port + 1}`],
      ['--listen', `127.0.0.1:${port}`, '--upstream', `memcached://10.0.0.5:${port}`],
      ['--listen', '127.0.0.1:0', '--upstream', 'memcached://127.0.0.1'],
    ]) {
      assert.doesNotThrow(() => loadConfig(args), args.join(' '));
    }
  });
});

describe('mcmux --help', () => {
  it('names the commands the README documents (check, repair) and no "[unexpected...]" argument (was: neither command, an argument named unexpected)', async () => {
    const r = await runMcmux(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^Usage: mcmux \[options\]\n/);
    assert.doesNotMatch(r.stdout, /unexpected/);
    assert.match(r.stdout, /^ {2}mcmux check \[options\] /m);
    assert.match(r.stdout, /^ {2}mcmux repair --metrics HOST:PORT \[--trust N\] /m);
  });

  it('shows the default of --metrics as off, as the README does (was: "(default: )")', async () => {
    const help = (await runMcmux(['--help'])).stdout.replace(/\s+/g, ' ');
    assert.match(help, / --metrics <value> [^]*?host:port, or empty for none \(default: off\)/);
    assert.doesNotMatch(help, /\(default: \)/);
  });
});

describe('the log line of a reload', () => {
  it('names an upstream whose options changed as rebuilt, not as both added and removed (was: the same store in both lists)', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const port = await freePort();
    const file = join(await mkdtemp(join(tmpdir(), 'mcmux-h14-')), 'reload.toml');
    t.after(() => rm(dirname(file), { recursive: true, force: true }));
    await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "${mc.url}"\n`);
    const mux = await startMcmux(['--config', file], { port });
    t.after(() => mux.stop());
    await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "${mc.url}"\ntimeout = 400\n`);
    mux.proc.kill('SIGHUP');
    await eventually('the reload is logged', async () => /configuration reloaded/.test(mux.logs().stdout));
    const line = JSON.parse(mux.logs().stdout.split('\n').find((l) => l.includes('configuration reloaded')) as string) as Record<string, unknown>;
    assert.deepEqual({ added: line.added, removed: line.removed, rebuilt: line.rebuilt }, { added: [], removed: [], rebuilt: [mc.url] });
  });
});

describe('a memcached upstream that refuses connections', () => {
  it('is logged down with the cause (ECONNREFUSED), not only "the connection for this key is not up (reconnecting)"', { timeout: 30_000 }, async (t) => {
    const dead = await freePort(); // nothing listens there
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${dead}`]);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    // The first request may wait for the first connect; the next ones are refused at once.
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 4; i++) assert.equal(await c.ask(`set k${i} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    await eventually('the upstream is logged down', async () => /"msg":"upstream down"/.test(mux.logs().stdout));
    const down = mux.logs().stdout.split('\n').find((l) => l.includes('"msg":"upstream down"'));
    assert.match(String(down), /ECONNREFUSED/, String(down));
  });
});

describe('an upstream mcmux cannot use from the start', () => {
  it('is logged at once, before any client came, with the cause (was: nothing logged, "healthy" everywhere until traffic)', { timeout: 30_000 }, async (t) => {
    const dead = await freePort(); // nothing listens there
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${dead}`]);
    t.after(() => mux.stop());
    await eventually('the failed probe is logged', async () => /fails its probe at start/.test(mux.logs().stdout), 5_000);
    const line = JSON.parse(mux.logs().stdout.split('\n').find((l) => l.includes('fails its probe at start')) as string) as Record<string, unknown>;
    assert.equal(line.upstream, `memcached://127.0.0.1:${dead}`);
    assert.equal(line.level, 40);
    assert.match(String(line.err), /ECONNREFUSED/);
    // holds: the usable one is not named.
    assert.ok(!mux.logs().stdout.split('\n').some((l) => l.includes('fails its probe') && l.includes('"memory://"')));
  });
});

describe('an upstream URL whose password holds a character a URL reserves', () => {
  it('is refused with a hint to percent-encode it, the password masked (was: "is not a URL" alone)', async () => {
    const line = await failsWithOneLine(['--upstream', 'mysql://mcmux:P@ss:w/rd%1@127.0.0.1:3306/sessions']);
    assert.match(line, /is not a URL/);
    assert.match(line, /percent-encoded \(@ %40/);
    assert.ok(!line.includes('ss:w/rd'), line);
    // holds: a malformed URL without credentials gets no such hint.
    assert.doesNotMatch(await failsWithOneLine(['--upstream', 'memcached://127.0.0.1:99999']), /percent/);
  });
});

describe('mcmux repair with no mcmux at the address', () => {
  it('says why (ECONNREFUSED) on one line and exits 1 (was: "fetch failed" alone)', async () => {
    const port = await freePort(); // nothing listens there
    const r = await runMcmux(['repair', '--metrics', `127.0.0.1:${port}`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^mcmux repair: cannot reach http:\/\/127\.0\.0\.1:\d+: fetch failed: ECONNREFUSED \(is mcmux running with --metrics 127\.0\.0\.1:\d+\?\)\n$/);
  });
});

describe('an upstream a reload adds that mcmux cannot use', () => {
  it('is logged right after the reload, with the cause (was: nothing until clients came)', { timeout: 30_000 }, async (t) => {
    const port = await freePort();
    const dead = await freePort(); // nothing listens there
    const file = join(await mkdtemp(join(tmpdir(), 'mcmux-h14-')), 'reload.toml');
    t.after(() => rm(dirname(file), { recursive: true, force: true }));
    await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n`);
    const mux = await startMcmux(['--config', file], { port });
    t.after(() => mux.stop());
    await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n[[upstream]]\nurl = "memcached://127.0.0.1:${dead}"\n`);
    mux.proc.kill('SIGHUP');
    await eventually('the failed probe is logged', async () => /fails its probe after the reload/.test(mux.logs().stdout), 5_000);
    const line = mux.logs().stdout.split('\n').find((l) => l.includes('fails its probe after the reload'));
    assert.match(String(line), new RegExp(`"upstream":"memcached://127\\.0\\.0\\.1:${dead}".*ECONNREFUSED`));
  });
});

describe('/healthz while mcmux drains its clients on SIGTERM', () => {
  it('is 503 saying it is shutting down, not "no usable upstream" (the upstream is fine)', { timeout: 30_000 }, async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const metrics = await freePort();
    const mux = await startMcmux(['--upstream', `${mc.url}?timeout=3000`, '--metrics', `127.0.0.1:${metrics}`, '--shutdown-timeout', '3000']);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    assert.equal(await c.ask('set k 0 0 1\r\nv\r\n'), 'STORED\r\n');
    // A get in flight (the server paused) holds the drain open.
    await mc.pause();
    t.after(() => mc.resume());
    c.send('get k\r\n');
    await new Promise((r) => setTimeout(r, 200));
    mux.proc.kill('SIGTERM');
    await eventually('shutting down is logged', async () => /shutting down/.test(mux.logs().stdout), 5_000);
    const res = await fetch(`http://127.0.0.1:${metrics}/healthz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), 'not listening (shutting down)\n');
    mc.resume();
    assert.equal((await mux.exited).code, 0);
  });
});

describe('SIGUSR1 and SIGUSR2', () => {
  it('are logged and ignored: no Node inspector opened on 127.0.0.1:9229, no unclean exit (was: SIGUSR1 opened the inspector, SIGUSR2 killed mcmux)', { timeout: 30_000 }, async (t) => {
    const mux = await startMcmux(['--upstream', 'memory://']);
    t.after(() => mux.stop());
    for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
      mux.proc.kill(signal);
      await eventually(`${signal} is logged`, async () => mux.logs().stdout.includes(`"msg":"${signal} ignored`), 5_000);
    }
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    assert.equal(await c.ask('version\r\n'), 'VERSION 1.6.21\r\n');
    assert.doesNotMatch(mux.logs().stderr, /inspector|Debugger/i);
    assert.equal((await mux.stop()).code, 0);
  });
});

describe('a listen address other hosts may reach', () => {
  it('is warned about at start (mcmux has no authentication); a loopback one is not (was: no word)', { timeout: 30_000 }, async (t) => {
    const port = await freePort();
    const open = await startMcmux(['--listen', `0.0.0.0:${port}`, '--upstream', 'memory://'], { port });
    t.after(() => open.stop());
    await eventually('the warning', async () => /"msg":"listening on an address other hosts may reach/.test(open.logs().stdout), 5_000);
    assert.match(open.logs().stdout, new RegExp(`"listen":\\["0\\.0\\.0\\.0:${port}"\\],"msg":"listening on an address other hosts may reach`));
    await open.stop();
    const local = await startMcmux(['--upstream', 'memory://']);
    t.after(() => local.stop());
    await eventually('the start-up line', async () => /mcmux listening/.test(local.logs().stdout), 5_000);
    await new Promise((r) => setTimeout(r, 200));
    assert.doesNotMatch(local.logs().stdout, /other hosts may reach/);
  });
});

describe('an open-file limit below max-connections', () => {
  it('is warned about at start: clients past it are reset by libuv with no log line (was: no word)', { timeout: 30_000 }, async (t) => {
    const port = await freePort();
    const state = await mkdtemp(join(tmpdir(), 'mcmux-h14-'));
    t.after(() => rm(state, { recursive: true, force: true }));
    const run = (limit: number, maxConnections: number): Promise<string> =>
      new Promise((resolve) => {
        // ulimit -n sets the hard limit too (Node raises the soft one to the hard one).
        const cmd = `ulimit -n ${limit} && exec "$0" "$@"`;
        const args = [...NODE_FLAGS, MCMUX_BIN, '--listen', `127.0.0.1:${port}`, '--state-dir', state, '--upstream', 'memory://', '--max-connections', String(maxConnections)];
        const p = spawn('sh', ['-c', cmd, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.setEncoding('utf8').on('data', (d: string) => {
          out += d;
          if (out.includes('mcmux listening')) setTimeout(() => p.kill('SIGTERM'), 300);
        });
        p.on('close', () => resolve(out));
      });
    const low = await run(512, 4096);
    assert.match(low, /"maxConnections":4096,"openFileLimit":512,"msg":"max-connections 4096 is above what the open-file limit 512 allows/);
    assert.doesNotMatch(await run(512, 256), /open-file limit/, 'max-connections within the limit: no warning');
  });

  it('holds: the limit is read from /proc/self/limits (a missing file: no warning)', () => {
    const limit = openFileLimit();
    if (existsSync('/proc/self/limits')) assert.ok(typeof limit === 'number' && limit > 0, String(limit));
    assert.equal(openFileLimit('/nonexistent/limits'), undefined);
  });
});
