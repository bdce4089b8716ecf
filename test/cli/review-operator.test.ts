/**
 * A review of the operator-facing surface (flags, the TOML file, upstream URL options, the
 * environment, `mcmux repair`, SIGHUP): a bad value exits with status 2 and one line naming it
 * and the expected form, no secret is printed, the docs list what the code takes. Each test
 * here failed before its fix, except those marked "holds" (suspicions refuted, kept as guards).
 */

import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../../src/cli';
import { createUpstream } from '../../src/upstream/registry';
import { eventually, failsWithOneLine, runMcmux, startMcmux } from '../helpers/mcmux';
import { freePort } from '../helpers/servers';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-review-op-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function tomlFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

const base = ['--listen', '127.0.0.1:0'];

describe('an upstream URL', () => {
  it('with an empty host in a server list (memcached://h:1,) is refused, not a TypeError stack trace with exit 1', async () => {
    for (const url of ['memcached://127.0.0.1:1,', 'memcached://127.0.0.1:1,,127.0.0.1:2', 'memcached://,127.0.0.1:2']) {
      const line = await failsWithOneLine([...base, '--upstream', url]);
      assert.ok(line.includes(url), `names the URL: ${line}`);
      assert.match(line, /expected/);
    }
  });

  it('memory:// with a host and port (memcached:// mistyped) is refused, not run as an in-process store', async () => {
    for (const url of ['memory://10.0.0.5:11211', 'memory://user:secret@sessions', 'memory://sessions/0']) {
      const line = await failsWithOneLine([...base, '--upstream', url]);
      assert.match(line, /memory:\/\/\[name\]/, `names the expected form: ${line}`);
      assert.ok(!line.includes('secret'), `the password is printed: ${line}`);
    }
    // A name alone stays valid (two memory stores side by side).
    assert.equal(loadConfig(['--upstream', 'memory://a', '--upstream', 'memory://b?max-bytes=33554432']).config.upstreams.length, 2);
  });
});

describe('a secret is never printed', () => {
  it('a password given as ?password= in the query string (refused as an unknown option) is masked', async () => {
    for (const url of ['redis://127.0.0.1:1?password=hunter2', 'mysql://u@127.0.0.1/test?timeout=5&password=hunter2']) {
      const line = await failsWithOneLine([...base, '--upstream', url]);
      assert.match(line, /unknown option "password"/);
      assert.ok(!line.includes('hunter2'), `the password is printed: ${line}`);
    }
  });

  it('a misspelt flag written --flag=URL (commander names the whole argument) is masked', async () => {
    const line = await failsWithOneLine([...base, '--upstreams=redis://u:hunter2@127.0.0.1:1']);
    assert.match(line, /--upstreams/);
    assert.ok(!line.includes('hunter2'), `the password is printed: ${line}`);
    const repair = await failsWithOneLine(['repair', '--metrics', '127.0.0.1:1', '--bogus=redis://u:hunter2@127.0.0.1:1']);
    assert.ok(!repair.includes('hunter2'), `the password is printed: ${repair}`);
  });

  it('a rejected reload (SIGHUP) of an upstream with ?password= logs no password', async () => {
    const port = await freePort();
    const file = await tomlFile('reload-pw.toml', `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n`);
    const mux = await startMcmux(['--config', file], { port });
    try {
      await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "redis://127.0.0.1:1?password=hunter2"\n`);
      mux.proc.kill('SIGHUP');
      await eventually('the rejected reload is logged', async () => /reload rejected/.test(mux.logs().stdout));
    } finally {
      await mux.stop();
    }
    const line = mux.logs().stdout.split('\n').find((l) => l.includes('reload rejected'));
    assert.ok(line !== undefined && !line.includes('hunter2'), `the reload log shows the password: ${line}`);
  });
});

describe('one line, naming the value', () => {
  it('a value holding a newline (flag, TOML, URL option) is printed escaped on one line', async () => {
    const flag = await failsWithOneLine([...base, '--write-wait', 'a\nb']);
    assert.match(flag, /write-wait "a\\nb"/);
    const file = await tomlFile('newline.toml', 'log-level = "in\\nfo"\n');
    assert.match(await failsWithOneLine([...base, '--config', file]), /log-level/);
    assert.match(await failsWithOneLine([...base, '--upstream', 'memcached://127.0.0.1:1,127.0.0.1:2?namespace=a%0Ab']), /namespace="a\\nb"/);
  });

  it('a TOML syntax error (a key defined twice) names the line and the key', async () => {
    const file = await tomlFile('dup.toml', 'max-item-size = 2048\nwrite-wait = "all"\nmax-item-size = 4096\n');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.ok(line.includes(file), `names the file: ${line}`);
    assert.match(line, /line 3/, `names the line: ${line}`);
    assert.match(line, /max-item-size/, `names the key: ${line}`);
  });

  it('mcmux repair: a misspelt flag is one line (no "Did you mean" line), a bad --metrics exits 2 naming host:port', async () => {
    assert.match(await failsWithOneLine(['repair', '--metrics', '127.0.0.1:1', '--trst', '0']), /--trst/);
    const line = await failsWithOneLine(['repair', '--metrics', 'a b']);
    assert.match(line, /metrics "a b"/);
    assert.match(line, /host:port/);
  });
});

describe('TOML values of the wrong shape are refused', () => {
  it('listen = [] (no address) is refused, not replaced by the default 127.0.0.1:11211', async () => {
    const file = await tomlFile('listen-empty.toml', 'listen = []\n[[upstream]]\nurl = "memory://"\n');
    assert.match(await failsWithOneLine(['--config', file]), /listen/);
  });

  it('state-dir = true or 5 (not a string) is refused, not made a directory named "true"', async () => {
    for (const v of ['true', '5']) {
      const file = await tomlFile(`state-dir-${v}.toml`, `state-dir = ${v}\n[[upstream]]\nurl = "memory://"\n`);
      const line = await failsWithOneLine([...base, '--config', file]);
      assert.match(line, new RegExp(`state-dir "${v}"`));
      assert.match(line, /quoted/);
    }
  });

  it('(holds) a float where an integer is meant is refused unless it is whole; a huge integer is refused', async () => {
    const whole = await tomlFile('float-whole.toml', 'max-item-size = 2048.0\n');
    assert.equal(loadConfig(['--upstream', 'memory://', '--config', whole]).config.maxItemSize, 2048);
    const half = await tomlFile('float-half.toml', 'max-item-size = 2048.5\n');
    assert.throws(() => loadConfig(['--upstream', 'memory://', '--config', half]), /invalid max-item-size "2048.5": expected bytes/);
    const huge = await tomlFile('huge.toml', 'max-item-size = 99999999999999999999\n');
    assert.throws(() => loadConfig(['--upstream', 'memory://', '--config', huge]), /not valid TOML/);
  });

  it('a number or a boolean in quotes (min-copies = "1") is refused, naming the file and the key', () => {
    // Before: String(value) made "1" pass as 1 and "true" as true; TOML tells them apart.
    for (const [key, v, form] of [
      ['min-copies', '"1"', /as a TOML integer \(without quotes\)/],
      ['timeout', '"250"', /as a TOML integer \(without quotes\)/],
      ['allow-flush', '"true"', /true or false, without quotes/],
      ['repair-flush-caches', '"false"', /true or false, without quotes/],
    ] as const) {
      const file = join(dir, `quoted-${key}.toml`);
      writeFileSync(file, `${key} = ${v}\n[[upstream]]\nurl = "memory://"\n`);
      assert.throws(
        () => loadConfig(['--config', file]),
        (e: Error) => e.message.startsWith(`${file}: invalid ${key} ${v}: expected `) && form.test(e.message),
        `${key} = ${v}`,
      );
    }
    // The same values unquoted, and as flags (where every value is a string), still load.
    const plain = join(dir, 'unquoted.toml');
    writeFileSync(plain, 'min-copies = 1\ntimeout = 250\nallow-flush = true\nrepair-flush-caches = false\n[[upstream]]\nurl = "memory://"\n');
    const { config } = loadConfig(['--config', plain, '--state-dir', join(dir, 'unquoted-state')]);
    assert.deepEqual([config.minCopies, config.timeout, config.allowFlush, config.repair.flushCaches], [1, 250, true, false]);
    assert.equal(loadConfig(['--upstream', 'memory://', '--min-copies', '1', '--allow-flush', 'true']).config.allowFlush, true);
  });

  it('a bad value the file gave names the file; the same value from a flag, or a file value a flag replaced, does not', async () => {
    // Before: 'invalid min-copies "0": expected ...' with no word of where it was written.
    const cases: Array<[string, RegExp]> = [
      ['min-copies = 0\n', /invalid min-copies "0": expected an integer from 1 to 64/],
      ['min-copies = 3\n', /invalid min-copies "3": expected at most the number of upstreams \(1\)/],
      ['log-level = "loud"\n', /invalid log-level "loud"/],
      ['listen-mode = "999"\n', /invalid listen-mode "999"/],
      ['listen = ["127.0.0.1:1", "127.0.0.1:1"]\n', /listen "127.0.0.1:1" is listed twice/],
      ['listen = "nowhere"\n', /invalid listen "nowhere"/],
    ];
    for (const [text, pattern] of cases) {
      const file = await tomlFile(`from-file-${cases.findIndex((c) => c[0] === text)}.toml`, `${text}[[upstream]]\nurl = "memory://"\n`);
      const line = await failsWithOneLine(['--config', file]);
      assert.ok(line.startsWith(`mcmux: ${file}: `), `names the file first: ${line}`);
      assert.match(line, pattern);
    }
    const flag = await failsWithOneLine([...base, '--upstream', 'memory://', '--min-copies', '0']);
    assert.match(flag, /^mcmux: invalid min-copies "0"/, 'a flag: no file to name');
    const overridden = await tomlFile('overridden.toml', 'min-copies = 1\nlog-level = "loud"\n[[upstream]]\nurl = "memory://"\n');
    const line = await failsWithOneLine(['--config', overridden, '--min-copies', '0', '--log-level', 'info']);
    assert.equal(line.includes(overridden), false, `the flag's value is not the file's: ${line}`);
    assert.match(line, /invalid min-copies "0"/);
    assert.equal(loadConfig(['--config', overridden, '--log-level', 'warn', '--state-dir', join(dir, 'overridden-state')]).config.logLevel, 'warn');
  });
});

describe('listen addresses', () => {
  it('the same address twice is refused with exit 2 (was exit 1 at bind; a unix path was "in use by another process")', async () => {
    const port = await freePort();
    const tcp = await failsWithOneLine(['--upstream', 'memory://', '--listen', `127.0.0.1:${port}`, '--listen', `127.0.0.1:${port}`]);
    assert.match(tcp, new RegExp(`listen "127.0.0.1:${port}" is listed twice`));
    const sock = join(dir, 'twice.sock');
    const unix = await failsWithOneLine(['--upstream', 'memory://', '--listen', `unix:${sock}`, '--listen', `unix:${sock}`]);
    assert.match(unix, /is listed twice/);
    const metrics = await failsWithOneLine(['--upstream', 'memory://', '--listen', `127.0.0.1:${port}`, '--metrics', `127.0.0.1:${port}`]);
    assert.match(metrics, /metrics/);
    // Port 0 twice is two ephemeral ports: fine.
    assert.equal(loadConfig(['--upstream', 'memory://', '--listen', '127.0.0.1:0', '--listen', '127.0.0.1:0']).config.listen.length, 2);
  });
});

describe('the environment', () => {
  it('STATE_DIRECTORY holding several directories (systemd joins several StateDirectory= with ":") uses the first', async () => {
    const first = join(dir, 'state-a');
    const second = join(dir, 'state-b');
    const r = await runMcmux(['check'], { timeoutMs: 10_000, env: { STATE_DIRECTORY: `${first}:${second}` }, cwd: dir });
    assert.equal(r.code, 0, `mcmux check on the embedded default: ${r.stderr} ${r.stdout}`);
    assert.match(r.stdout, new RegExp(`^state-dir ${first}\n`), 'the first directory');
    assert.ok(r.stdout.includes(`sqlite://${join(first, 'mcmux.db')}: not there yet`), `the embedded SQLite file is in the first directory: ${r.stdout}`);
    assert.ok(!existsSync(`${first}:${second}`), 'no directory named after the whole list');
    // mcmux itself makes it there.
    const { config } = loadConfig(['--state-dir', first]);
    assert.equal(config.stateDir, first);
    assert.ok(existsSync(join(first, 'mcmux.db')), 'made by a start (loadConfig builds the upstreams)');
  });

  it('mcmux check makes nothing: a sqlite file (and its directory) not there is said so, exit 0; from a shell it says the state-dir is relative', async () => {
    // Before: check made ./data/mcmux.db wherever it was run, and named no state directory: from
    // a shell, without the unit's $STATE_DIRECTORY, it checked ./data, not /var/lib/mcmux.
    const cwd = join(dir, 'check-cwd');
    await mkdir(cwd);
    const r = await runMcmux(['check'], { timeoutMs: 10_000, cwd, env: { STATE_DIRECTORY: undefined } });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] as string, new RegExp(`^state-dir ${join(cwd, 'data')} \\(relative to ${cwd}; .*--state-dir`));
    assert.match(lines[1] as string, /^ok\s+memory:\/\/$/);
    assert.equal(lines[2], `ok     sqlite://${join(cwd, 'data', 'mcmux.db')}: not there yet (mcmux makes it, and its directory, at start): ${join(cwd, 'data', 'mcmux.db')}`);
    assert.match(lines[3] as string, /^config ok, 1 upstreams answer \(1 not made yet\)$/);
    assert.deepEqual(await readdir(cwd), [], 'nothing made');

    // A bad option of a file not there is still a configuration error (exit 2).
    const bad = await runMcmux(['check', '--upstream', `sqlite://${join(cwd, 'x', 'y.db')}?table=1x`], { timeoutMs: 10_000, cwd });
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /table="1x"/);
    // A file that is there is opened and probed.
    const there = join(dir, 'check-there.db');
    loadConfig(['--upstream', `sqlite://${there}`]);
    const ok = await runMcmux(['check', '--upstream', `sqlite://${there}`, '--state-dir', join(dir, 'check-state')], { timeoutMs: 10_000, cwd });
    assert.equal(ok.code, 0, ok.stdout);
    assert.match(ok.stdout, new RegExp(`^state-dir ${join(dir, 'check-state')}\nok\\s+sqlite://${there}\nconfig ok, 1 upstreams answer\n$`));
    assert.ok(!existsSync(join(dir, 'check-state')), 'check makes no state directory either');
  });
});

describe('(holds) docs and code agree on every upstream option', () => {
  const root = join(__dirname, '..', '..', '..');
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const example = readFileSync(join(root, 'config.example.toml'), 'utf8');
  const ctx = { defaultTimeoutMs: undefined, maxItemSize: 1024 * 1024 };
  /** The options a driver takes, as its unknown-option error lists them. */
  function optionsOf(url: string): string[] {
    try {
      const u = createUpstream(`${url}${url.includes('?') ? '&' : '?'}zz-none=1`, new Map(), ctx);
      void u.close();
    } catch (error) {
      const m = /expected one of (.*)$/.exec(String((error as Error).message));
      assert.ok(m, `unknown-option error of ${url}: ${String(error)}`);
      return (m[1] as string).split(', ');
    }
    assert.fail(`${url}?zz-none=1 was accepted`);
  }
  const drivers: Array<[string, string, string]> = [
    // URL to build, README row start, config.example.toml section marker
    ['memory://', '| `memory://`', 'url = "memory://"'],
    ['memcached://127.0.0.1:1', '| `memcached://host:port`', 'url = "memcached://127.0.0.1:11212"'],
    ['memcached://127.0.0.1:1,127.0.0.1:2', '| `memcached://h1:p1,h2:p2,h3:p3`', 'url = "memcached://10.0.0.1:11211,'],
    ['redis://127.0.0.1:1', '| `redis://', 'url = "redis://'],
    ['rediss://127.0.0.1:1', '| `redis://', 'url = "redis://'],
    ['mysql://u@127.0.0.1:1/db', '| `mysql://', 'url = "mysql://'],
    [`sqlite://${join(tmpdir(), 'mcmux-review-op-docs.db')}`, '| `sqlite://', 'url = "sqlite://'],
  ];
  for (const [url, row, section] of drivers) {
    it(`${url.replace(/\/tmp.*$/, '...')}: each option is in the README row and in config.example.toml`, () => {
      const line = readme.split('\n').find((l) => l.startsWith(row));
      assert.ok(line, `README has a row ${row}`);
      const at = example.indexOf(section);
      assert.ok(at >= 0, `config.example.toml has ${section}`);
      const next = example.indexOf('[[upstream]]', at);
      const block = example.slice(at, next < 0 ? undefined : next);
      for (const opt of optionsOf(url)) {
        // A pool row says "and the memcached options per server".
        const inRow = line.includes(`\`${opt}\``) || (row.includes('h1:p1') && ['timeout', 'connections', 'max-queue'].includes(opt));
        assert.ok(inRow, `README's ${row} row lacks ${opt}: ${line}`);
        const inBlock = new RegExp(`^#? ?${opt} = `, 'm').test(block) || (url.includes(',') && ['timeout', 'connections', 'max-queue'].includes(opt));
        assert.ok(inBlock, `config.example.toml's ${section} block lacks ${opt}`);
      }
    });
  }
});

describe('SIGHUP', () => {
  it('(holds) a reload changing a restart-only key says so; a file rejected for a TOML error names the line (failed before: no line)', async () => {
    const port = await freePort();
    const file = await tomlFile('reload.toml', `listen = "127.0.0.1:${port}"\nlisten-mode = "0666"\nmax-keys-per-get = 256\n[[upstream]]\nurl = "memory://"\n`);
    const mux = await startMcmux(['--config', file], { port });
    try {
      await writeFile(file, `listen = "127.0.0.1:${port}"\nlisten-mode = "0600"\nmax-keys-per-get = 2\n[[upstream]]\nurl = "memory://"\n`);
      mux.proc.kill('SIGHUP');
      await eventually('the reload is logged', async () => /configuration reloaded/.test(mux.logs().stdout));
      const warn = mux.logs().stdout.split('\n').find((l) => l.includes('only on restart'));
      assert.ok(warn?.includes('listen-mode'), `the reload names the restart-only key it kept: ${warn}`);
      await writeFile(file, `listen = "127.0.0.1:${port}"\nmax-keys-per-get = 2\nmax-keys-per-get = 3\n`);
      mux.proc.kill('SIGHUP');
      await eventually('the rejected reload is logged', async () => /reload rejected/.test(mux.logs().stdout));
      const line = mux.logs().stdout.split('\n').find((l) => l.includes('reload rejected'));
      assert.match(String(line), /line 3/, `the rejection names where: ${line}`);
    } finally {
      await mux.stop();
    }
  });
});

describe('credentials mcmux cannot use', () => {
  it('memcached:// with a user and password (mcmux speaks no SASL) is refused, not run without them (failed before: it listened)', async () => {
    for (const url of ['memcached://user:secret@127.0.0.1:1', 'memcached://user@127.0.0.1:1', 'memcached://:secret@h1:1,h2:2']) {
      const line = await failsWithOneLine([...base, '--upstream', url]);
      assert.match(line, /user or password/, url);
      assert.ok(!line.includes('secret'), `the password is printed: ${line}`);
    }
  });
});
