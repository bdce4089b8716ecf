/**
 * bin/mcmux as an operator meets it: --help, bad flags and values (exit 2, one line naming the
 * value), secrets kept out of every line it prints, a TOML file under flags, the embedded
 * default, signals, the connection limit (T22), and S3: 127.0.0.1 by default and no UDP
 * listener (CVE-2018-1000115).
 */

import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { request } from 'node:http';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../../src/cli';
import { END, answersVersion, eventually, failsWithOneLine, rawClient, runMcmux, startMcmux } from '../helpers/mcmux';
import { freePort, haveBinary, holdingServer, requireBinary, startMemcached } from '../helpers/servers';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-cli-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

/** Collapses commander's wrapping so a help entry can be matched whole. */
const oneLine = (s: string): string => s.replace(/\s+/g, ' ');

/** The text of one flag's entry in (collapsed) --help output: up to the next flag. */
function helpEntry(help: string, flag: string): string {
  const at = help.indexOf(` ${flag} `);
  const next = help.indexOf(' --', at + flag.length + 1);
  return help.slice(at, next < 0 ? undefined : next);
}

/** Every line mcmux wrote to stdout, parsed (pino writes one JSON object a line). */
function jsonLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        assert.fail(`a log line on stdout that is not JSON: ${l}`);
      }
    });
}

describe('mcmux --help', () => {
  it('exits 0 and lists every flag with its default', async () => {
    const r = await runMcmux(['--help']);
    assert.equal(r.code, 0, r.stderr);
    const help = oneLine(r.stdout);
    const defaults: Record<string, string | undefined> = {
      '--listen': '127.0.0.1:11211',
      '--upstream': 'memory://',
      '--config': undefined,
      '--write-wait': 'all',
      '--min-copies': '1',
      '--timeout': undefined, // each driver's own: checked below
      '--max-item-size': '1048576',
      '--max-connections': '4096',
      '--allow-flush': 'false',
      '--log-level': 'info',
      '--max-line-length': '2048',
      '--max-keys-per-get': '256',
      '--max-reads-held': '16',
      '--metrics-max-connections': '64',
      '--max-pipeline': '1024',
      '--max-output-bytes': '4194304',
    };
    for (const [flag, def] of Object.entries(defaults)) {
      const at = help.indexOf(` ${flag} `);
      assert.ok(at >= 0, `--help lists ${flag}`);
      if (def === undefined) continue;
      const entry = helpEntry(help, flag);
      assert.ok(entry.includes(`default: ${def}`) || entry.includes(`default: the embedded ${def}`), `--help shows the default of ${flag}: ${entry}`);
    }
    assert.match(help, / --timeout [^-]*250/, '--help says what the timeout is when unset (memcached: 250 ms)');
  });
});

describe('mcmux refuses bad flags and values: exit 2, one line naming the value', () => {
  // Node 20's recursive mkdirSync never returns for a path under /proc: mcmux hung at start.
  it('a SQLite file whose directory cannot be made (under /proc)', async () => {
    const line = await failsWithOneLine(['--upstream', 'sqlite:///proc/mcmux-none/items.sqlite', '--state-dir', join(dir, 'proc-sqlite')]);
    assert.match(line, /\/proc\/mcmux-none/);
    assert.match(line, /ENOENT/);
  });

  it('a FIFO where the SQLite file or the repair journal should be stops the start at once', async () => {
    // Opened the plain way, either would wait for a writer or reader for ever.
    const fifoDir = join(dir, 'fifos');
    await mkdir(fifoDir);
    execFileSync('mkfifo', [join(fifoDir, 'items.sqlite'), join(fifoDir, 'journal.log')]);
    const line = await failsWithOneLine(['--upstream', `sqlite://${join(fifoDir, 'items.sqlite')}`, '--state-dir', join(dir, 'fifo-state')]);
    assert.match(line, /cannot open [^ ]*items\.sqlite: not a regular file/);
    const r = await runMcmux(['--state-dir', fifoDir, '--upstream', 'memory://', '--listen', '127.0.0.1:0'], { timeoutMs: 5000 });
    assert.equal(r.timedOut, false, `mcmux did not exit; stderr ${r.stderr}`);
    assert.equal(r.code, 1, `stderr ${r.stderr}`);
    assert.match(r.stderr, /cannot start: [^\n]*journal\.log is not a regular file/);
  });

  it('a state directory that cannot be made (under /proc) stops the start at once, naming it', async () => {
    // Not a malformed value but a failed start, as a port in use is: exit 1, the reason on stderr.
    const r = await runMcmux(['--state-dir', '/proc/mcmux-none/state', '--upstream', 'memory://', '--listen', '127.0.0.1:0'], { timeoutMs: 5000 });
    assert.equal(r.timedOut, false, `mcmux did not exit; stderr ${r.stderr}`);
    assert.equal(r.code, 1, `stderr ${r.stderr}`);
    assert.match(r.stderr, /cannot start: state-dir "\/proc\/mcmux-none\/state" cannot be made \(ENOENT[^\n]*'\/proc\/mcmux-none'/);
  });

  it('a state directory that is a file stops the start at once, naming it', async () => {
    const file = join(dir, 'a-file');
    await writeFile(file, 'not a directory');
    const r = await runMcmux(['--state-dir', file, '--upstream', 'memory://', '--listen', '127.0.0.1:0'], { timeoutMs: 5000 });
    assert.equal(r.timedOut, false, `mcmux did not exit; stderr ${r.stderr}`);
    assert.equal(r.code, 1, `stderr ${r.stderr}`);
    assert.match(r.stderr, /cannot start: state-dir "[^"]*a-file" cannot be made \(EEXIST/);
  });

  it('an unknown flag', async () => {
    assert.match(await failsWithOneLine(['--bogus-flag']), /--bogus-flag/);
  });

  it('a misspelt flag: one line, no suggestion on a second one', async () => {
    assert.match(await failsWithOneLine(['--lissten', '1']), /--lissten/);
  });

  it('an argument that is not an option names it', async () => {
    const line = await failsWithOneLine(['--listen', '127.0.0.1:0', 'foo']);
    assert.match(line, /unexpected argument "foo"/);
  });

  it('an empty state-dir (the journal would live in memory only)', async () => {
    assert.match(await failsWithOneLine(['--listen', '127.0.0.1:0', '--state-dir', '']), /state-dir/);
  });

  it('--listen foo', async () => {
    const line = await failsWithOneLine(['--listen', 'foo']);
    assert.match(line, /listen/);
    assert.match(line, /"foo"/);
  });

  const base = ['--listen', '127.0.0.1:0'];
  const cases: Array<[string[], RegExp[]]> = [
    [['--write-wait', 'maybe'], [/write-wait/, /"maybe"/]],
    [['--min-copies', '0'], [/min-copies/, /"0"/]],
    [['--upstream', 'ftp://x'], [/ftp:\/\/x/, /ftp/]],
    [['--upstream', 'memcached://h:1?bogus=1'], [/memcached:\/\/h:1/, /bogus/]],
    [['--max-item-size', '12abc'], [/max-item-size/, /"12abc"/]],
    [['--allow-flush', 'maybe'], [/allow-flush/, /"maybe"/]],
    [['--max-input-bytes', '12'], [/max-input-bytes/, /"12"/]],
    [['--max-reads-held', '1025'], [/max-reads-held/, /"1025"/, /an integer from 1 to 1024/]],
    [['--metrics-max-connections', '0'], [/metrics-max-connections/, /"0"/, /an integer from 1 to 65536/]],
    [['--probe-interval', '1000', '--probe-interval-max', '500'], [/probe-interval-max/, /"500"/, /at least probe-interval \(1000\)/]],
    [['--metrics', '9150'], [/metrics/, /"9150"/, /host:port/]],
  ];
  for (const [args, patterns] of cases) {
    it(args.join(' '), async () => {
      const line = await failsWithOneLine([...base, ...args]);
      for (const p of patterns) assert.match(line, p);
    });
  }

  it('a config file with an unknown key', async () => {
    const file = await configFile('unknown-key.toml', 'max-item-size = 2048\nfrobnicate = true\n');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.match(line, /frobnicate/);
    assert.ok(line.includes(file), `names the file: ${line}`);
  });

  it('a config file that is not TOML', async () => {
    const file = await configFile('not-toml.toml', '[upstream\nthis is not = = toml\n');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.ok(line.includes(file), `names the file: ${line}`);
    assert.match(line, /TOML/i);
  });

  it('a missing config file', async () => {
    const file = join(dir, 'does-not-exist.toml');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.ok(line.includes(file), `names the file: ${line}`);
  });

  it('a config file that is not a regular file, or too big to be one', async () => {
    // Before: a FIFO blocked mcmux in open(), /dev/zero read until memory ran out.
    const fifo = join(dir, 'config.fifo');
    execFileSync('mkfifo', [fifo]);
    for (const file of [fifo, '/dev/zero', dir]) {
      const line = await failsWithOneLine([...base, '--config', file]);
      assert.ok(line.includes(file), `names the file: ${line}`);
      assert.match(line, /is not a regular file: expected a TOML file/);
    }
    const big = await configFile('big.toml', `# ${'x'.repeat(1024 * 1024)}\n`);
    const line = await failsWithOneLine([...base, '--config', big]);
    assert.match(line, /is more than 1048576 bytes: expected a TOML file of at most 1 MiB/);
  });

  it('a bad value inside the config file', async () => {
    const file = await configFile('bad-value.toml', 'write-wait = "sometimes"\n');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.match(line, /write-wait/);
    assert.match(line, /sometimes/);
  });
});

describe('values as the TOML file and the flags give them (loaded in-process)', () => {
  it('listen-mode: a string of octal digits; a TOML integer is refused (0o644 arrives as 420, and 440 could be either base)', async () => {
    const text = await configFile('mode-text.toml', 'listen-mode = "0660"\n');
    assert.equal(loadConfig(['--upstream', 'memory://', '--config', text]).config.listenMode, 0o660);
    assert.equal(loadConfig(['--upstream', 'memory://', '--listen-mode', '0600']).config.listenMode, 0o600);
    for (const n of ['0o644', '440']) {
      const file = await configFile(`mode-${n}.toml`, `listen-mode = ${n}\n`);
      assert.throws(() => loadConfig(['--upstream', 'memory://', '--config', file]), /invalid listen-mode .*expected a quoted octal file mode such as "0660"/, n);
    }
  });

  it('allow-flush: the flag alone turns it on, and --allow-flush false overrides a file that turns it on', async () => {
    const on = await configFile('flush-on.toml', 'allow-flush = true\n');
    assert.equal(loadConfig(['--upstream', 'memory://', '--config', on]).config.allowFlush, true);
    assert.equal(loadConfig(['--upstream', 'memory://', '--config', on, '--allow-flush', 'false']).config.allowFlush, false);
    assert.equal(loadConfig(['--upstream', 'memory://', '--allow-flush']).config.allowFlush, true);
    assert.equal(loadConfig(['--upstream', 'memory://']).config.allowFlush, false);
  });
});

describe('a password in an upstream URL is never printed', () => {
  const base = ['--listen', '127.0.0.1:0'];
  const refused: string[] = [
    'memcached://user:secret@127.0.0.1:1?bogus=1', // unknown option
    'memcached://user:secret@127.0.0.1:1?timeout=0', // bad option value
    'ftp://user:secret@127.0.0.1:1', // unknown scheme
    'memcached://user:secret@127.0.0.1:99999', // not a URL (port out of range)
    'redis://user:sec#ret@127.0.0.1:6379', // written unencoded: # @ / ? in the password
    'mysql://user:sec/ret@127.0.0.1:3306/test',
    'redis://user:sec?ret@127.0.0.1:6379',
    'ftp://user:sec@ret@127.0.0.1:1',
  ];
  for (const url of refused) {
    it(`refused: ${url}`, async () => {
      const line = await failsWithOneLine([...base, '--upstream', url]);
      const password = url.slice(url.indexOf('user:') + 5, url.lastIndexOf('@'));
      assert.ok(!line.includes(password) && !line.includes('ret@'), `the password is printed: ${line}`);
      assert.ok(line.includes('user'), `the URL is still recognisable: ${line}`);
    });
  }

  it('refused: a user name with an @ in it (user@server), the password after it', async () => {
    const line = await failsWithOneLine([...base, '--upstream', 'mysqll://app@db1:S3cretPw@db1.example.com/sess']);
    assert.ok(!line.includes('S3cretPw'), `the password is printed: ${line}`);
    assert.ok(line.includes('app@db1'), `the URL is still recognisable: ${line}`);
  });

  it('refused from a config file', async () => {
    const file = await configFile('with-password.toml', '[[upstream]]\nurl = "redis://user:secret@127.0.0.1:1"\nbogus = 1\n');
    const line = await failsWithOneLine([...base, '--config', file]);
    assert.match(line, /bogus/);
    assert.ok(!line.includes('secret'), `the password is printed: ${line}`);
  });

  it('a reload (SIGHUP) rejecting a config with a password in it logs no password', async () => {
    const port = await freePort();
    const file = await configFile('reload-with-password.toml', `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "memory://"\n`);
    const mux = await startMcmux(['--config', file], { port });
    try {
      await writeFile(file, `listen = "127.0.0.1:${port}"\n[[upstream]]\nurl = "ftp://user:secret@127.0.0.1:1"\n`);
      mux.proc.kill('SIGHUP');
      await eventually('the rejected reload is logged', async () => /reload rejected/.test(mux.logs().stdout));
      assert.equal(await answersVersion(port), true, 'still serving on the old configuration');
    } finally {
      await mux.stop();
    }
    const { stdout, stderr } = mux.logs();
    assert.ok(!stdout.includes('secret'), `a log line shows the password: ${stdout.split('\n').find((l) => l.includes('secret'))}`);
    assert.ok(!stderr.includes('secret'), `stderr shows the password: ${stderr}`);
  });

  it('running: log lines (debug, with the upstream failing) and stats', async () => {
    const dead = await freePort(); // nothing listens there: every request to it fails and is logged
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `redis://user:secret@127.0.0.1:${dead}`, '--log-level', 'debug']);
    try {
      const c = await rawClient(mux.port);
      assert.equal(await c.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
      assert.equal(await c.ask('get k nokey\r\n', END), 'VALUE k 0 1\r\nx\r\nEND\r\n');
      const stats = await c.ask('stats upstreams\r\n', END);
      assert.ok(stats.includes('user:***@'), `stats names the upstream, masked: ${stats}`);
      assert.ok(!stats.includes('secret'), `stats shows the password: ${stats}`);
      c.close();
      // Wait for the failure of the dead upstream to be logged, so the check below means something.
      await eventually('a log line about the failing upstream', async () => mux.logs().stdout.includes(`127.0.0.1:${dead}`) && mux.logs().stdout.split('\n').length > 3);
    } finally {
      await mux.stop();
    }
    const { stdout, stderr } = mux.logs();
    assert.ok(!stdout.includes('secret'), `a log line shows the password: ${stdout.split('\n').find((l) => l.includes('secret'))}`);
    assert.ok(!stderr.includes('secret'), `stderr shows the password: ${stderr}`);
  });
});

describe('a config file', () => {
  it('with [[upstream]] tables and scalar keys works, and flags override it', async () => {
    const [filePort, flagPort] = [await freePort(), await freePort()];
    const file = await configFile(
      'good.toml',
      [
        `listen = "127.0.0.1:${filePort}"`,
        'max-item-size = 2048',
        'allow-flush = true',
        'log-level = "warn"',
        '',
        '[[upstream]]',
        'url = "memory://first"',
        'max-bytes = 1048576',
        '',
        '[[upstream]]',
        'url = "memory://second"',
        '',
      ].join('\n'),
    );
    const value = 'v'.repeat(3000);

    const fromFile = await startMcmux(['--config', file], { port: filePort });
    try {
      const c = await rawClient(fromFile.port);
      const stats = await c.ask('stats upstreams\r\n', END);
      assert.match(stats, /STAT upstream\.0\.name memory:\/\/first\r\n/);
      assert.match(stats, /STAT upstream\.1\.name memory:\/\/second\r\n/);
      assert.doesNotMatch(stats, /upstream\.2\./);
      assert.equal(await c.ask(`set big 0 0 ${value.length}\r\n${value}\r\n`), 'SERVER_ERROR object too large for cache\r\n', 'max-item-size from the file');
      assert.equal(await c.ask('flush_all\r\n'), 'OK\r\n', 'allow-flush from the file');
      c.close();
    } finally {
      await fromFile.stop();
    }
    assert.equal(jsonLines(fromFile.logs().stdout).filter((l) => l.msg === 'mcmux listening').length, 0, 'log-level warn from the file');

    const overridden = await startMcmux(
      ['--config', file, '--listen', `127.0.0.1:${flagPort}`, '--max-item-size', '4096', '--log-level', 'info', '--upstream', 'memory://flag'],
      { port: flagPort },
    );
    try {
      assert.equal(await answersVersion(filePort), false, 'the --listen flag replaces the file\'s address');
      const c = await rawClient(overridden.port);
      const stats = await c.ask('stats upstreams\r\n', END);
      assert.match(stats, /STAT upstream\.0\.name memory:\/\/flag\r\n/);
      assert.doesNotMatch(stats, /first|second|upstream\.1\./, '--upstream replaces the file\'s upstreams');
      assert.equal(await c.ask(`set big 0 0 ${value.length}\r\n${value}\r\n`), 'STORED\r\n', '--max-item-size overrides the file');
      assert.equal(await c.ask('flush_all\r\n'), 'OK\r\n', 'allow-flush still from the file');
      c.close();
    } finally {
      await overridden.stop();
    }
    const listening = jsonLines(overridden.logs().stdout).find((l) => l.msg === 'mcmux listening');
    assert.ok(listening, '--log-level info overrides the file');
  });
});

describe('running', () => {
  it('with no upstream, logs the embedded default (a JSON line on stdout), and --help names it', async () => {
    const stateDir = join(dir, 'state-default');
    await mkdir(stateDir);
    const mux = await startMcmux([], { env: { STATE_DIRECTORY: stateDir } });
    try {
      const c = await rawClient(mux.port);
      assert.equal(await c.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
      assert.equal(await c.ask('get k\r\n', END), 'VALUE k 0 1\r\nx\r\nEND\r\n');
      c.close();
      await eventually('the embedded-default warning', async () => jsonLines(mux.logs().stdout).some((l) => /embedded default/.test(String(l.msg))));
    } finally {
      await mux.stop();
    }
    const line = jsonLines(mux.logs().stdout).find((l) => /embedded default/.test(String(l.msg)));
    assert.equal(line?.level, 40, 'logged as a warning');
    const upstreams = line?.upstreams;
    assert.ok(Array.isArray(upstreams) && upstreams.length > 0, `the line lists the upstreams: ${JSON.stringify(line)}`);
    assert.ok(upstreams.includes('memory://'), `the embedded default starts with memory://: ${JSON.stringify(upstreams)}`);
    for (const u of upstreams as string[]) {
      const url = new URL(u);
      // A durable embedded store lives in the state directory (systemd's StateDirectory).
      if (url.pathname.length > 1) assert.ok(decodeURIComponent(url.pathname).startsWith(stateDir), `${u} is outside STATE_DIRECTORY ${stateDir}`);
    }
    // What --help says the default is must be what runs.
    const help = oneLine((await runMcmux(['--help'])).stdout);
    const entry = helpEntry(help, '--upstream');
    const shown = entry.slice(entry.indexOf('default:'));
    for (const u of upstreams as string[]) {
      const scheme = new URL(u).protocol;
      assert.ok(shown.includes(`${scheme}//`), `--help gives the --upstream default as "${shown}", but mcmux runs on ${JSON.stringify(upstreams)}`);
    }
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} exits 0, also with a client connected`, async () => {
      const mux = await startMcmux(['--upstream', 'memory://']);
      const c = await rawClient(mux.port);
      assert.match(await c.ask('version\r\n'), /^VERSION \d+\.\d+\.\d+/);
      const exit = await mux.stop(signal);
      assert.deepEqual(exit, { code: 0, signal: null }, `exit after ${signal}; stderr ${mux.logs().stderr}`);
      await c.closed; // the idle client is let go, not left hanging
      assert.ok(jsonLines(mux.logs().stdout).some((l) => l.msg === 'shutting down' && l.signal === signal), 'the shutdown is logged');
    });
  }

  it('T22: --max-connections 2: the third client gets ERROR Too many open connections and is closed', async () => {
    const mux = await startMcmux(['--upstream', 'memory://', '--max-connections', '2']);
    try {
      const a = await rawClient(mux.port);
      const b = await rawClient(mux.port);
      // Both are accepted and served (and so counted) before the third arrives.
      assert.match(await a.ask('version\r\n'), /^VERSION /);
      assert.match(await b.ask('version\r\n'), /^VERSION /);
      const third = await rawClient(mux.port);
      assert.equal(await third.readUntil('\r\n'), 'ERROR Too many open connections\r\n');
      await third.closed;
      // The two first are untouched.
      assert.equal(await a.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
      assert.equal(await b.ask('get k\r\n', END), 'VALUE k 0 1\r\nx\r\nEND\r\n');
      // One leaves: a new client is served again.
      a.close();
      await eventually('a slot frees up once a client has left', async () => {
        const d = await rawClient(mux.port);
        try {
          return /^VERSION /.test(await d.ask('version\r\n'));
        } catch {
          return false;
        } finally {
          d.close();
        }
      });
      b.close();
    } finally {
      await mux.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// S3: no UDP listener, 127.0.0.1 by default (CVE-2018-1000115: memcached's UDP port amplified
// reflection attacks).

/** How long a UDP request may go unanswered before "no reply" is concluded (an absence check). */
const NO_REPLY_MS = 300;
/** Bound on a reply that must come. */
const UDP_REPLY_MS = 5000;

/** A memcached UDP request: the 8-byte frame header (request id, sequence 0, 1 datagram, reserved 0), then the command. */
function udpFrame(requestId: number, command: string): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(requestId, 0);
  h.writeUInt16BE(0, 2);
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(0, 6);
  return Buffer.concat([h, Buffer.from(command, 'latin1')]);
}

/** Sends `frame` to 127.0.0.1:`port` over UDP: the first datagram back, or undefined if none came within `waitMs`. */
async function udpAsk(port: number, frame: Buffer, waitMs: number): Promise<Buffer | undefined> {
  const sock = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, '127.0.0.1', () => resolve());
    });
    return await new Promise<Buffer | undefined>((resolve, reject) => {
      const timer = setTimeout(() => resolve(undefined), waitMs);
      sock.once('message', (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
      sock.send(frame, port, '127.0.0.1', (err) => {
        if (err) {
          clearTimeout(timer);
          reject(err);
        }
      });
    });
  } finally {
    sock.close();
  }
}

/** A UDP port free on 127.0.0.1 right now. */
function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: UDP_REPLY_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed (${err.message}): ${stderr}`));
      else resolve(stdout);
    });
  });
}

describe('S3: 127.0.0.1 by default, no UDP listener', () => {
  it('with no --listen, the loaded config listens on 127.0.0.1:11211 only (no flags, and a config file without listen)', async () => {
    const expected = [{ kind: 'tcp', host: '127.0.0.1', port: 11211 }];
    // No flags at all but a state directory of our own (the embedded default creates its SQLite file there).
    const stateDir = join(dir, 'state-s3');
    await mkdir(stateDir);
    assert.deepEqual(loadConfig(['--state-dir', stateDir]).config.listen, expected, 'no flags');
    assert.deepEqual(loadConfig(['--upstream', 'memory://']).config.listen, expected, 'an upstream flag, no --listen');
    const file = await configFile('no-listen.toml', 'max-item-size = 2048\n\n[[upstream]]\nurl = "memory://"\n');
    const fromFile = loadConfig(['--config', file]).config;
    assert.equal(fromFile.maxItemSize, 2048, 'the file was read');
    assert.deepEqual(fromFile.listen, expected, 'a config file without listen');
    // The loader does honour an address when one is given: the default above is not a constant.
    assert.deepEqual(loadConfig(['--upstream', 'memory://', '--listen', '127.0.0.2:1234']).config.listen, [{ kind: 'tcp', host: '127.0.0.2', port: 1234 }]);
  });

  it('the UDP frame used below is answered by memcached -U (so silence from mcmux means no UDP listener)', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const udpPort = await freeUdpPort();
    const mc = await startMemcached(['-U', String(udpPort)]);
    t.after(() => mc.stop());
    const reply = await udpAsk(udpPort, udpFrame(0x4d43, 'get k\r\n'), UDP_REPLY_MS);
    assert.ok(reply, `memcached -U ${udpPort} answers the frame within ${UDP_REPLY_MS} ms`);
    assert.equal(reply.readUInt16BE(0), 0x4d43, 'the request id is echoed');
    assert.equal(reply.subarray(8).toString('latin1'), 'END\r\n', 'a miss');
  });

  it('a running mcmux has no UDP socket: a memcached UDP frame to its port gets no reply, and ss -uapn lists no UDP socket of its pid', async (t) => {
    const mux = await startMcmux(['--upstream', 'memory://']);
    t.after(() => mux.stop());
    const c = await rawClient(mux.port);
    t.after(() => c.close());
    // A key that exists: a UDP listener would answer with its value.
    assert.equal(await c.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
    const reply = await udpAsk(mux.port, udpFrame(0x4d43, 'get k\r\n'), NO_REPLY_MS);
    assert.equal(reply, undefined, `a UDP reply came from 127.0.0.1:${mux.port}: ${reply?.toString('latin1')}`);
    assert.match(await c.ask('version\r\n'), /^VERSION /, 'mcmux is running (on TCP) all along');

    if (!haveBinary('ss')) {
      t.diagnostic('ss not installed (apt-get install iproute2): its socket table was not read');
      return;
    }
    const pid = mux.proc.pid;
    assert.ok(pid !== undefined);
    const owned = (table: string): string[] => table.split('\n').filter((l) => l.includes(`pid=${pid},`));
    // ss sees this process's sockets (its TCP listener), so an empty UDP list means something.
    const tcp = owned(await run('ss', ['-tlpn']));
    assert.ok(tcp.some((l) => l.includes(`:${mux.port} `)), `ss -tlpn shows mcmux (pid ${pid}) listening on ${mux.port}: ${JSON.stringify(tcp)}`);
    assert.deepEqual(owned(await run('ss', ['-uapn'])), [], `UDP sockets of mcmux (pid ${pid})`);
  });
});

// Found by a review of the configuration, CLI, reload, shutdown and metrics paths (each test
// failed before its fix).

describe('the same store listed twice', () => {
  // The same memcached twice counted as two copies: `--min-copies 2` was met by one store, so a
  // write the operator asked to keep on two machines lived on one.
  for (const [what, second] of [
    ['the same URL', (port: number) => `memcached://127.0.0.1:${port}`],
    ['the same store with another timeout', (port: number) => `memcached://127.0.0.1:${port}?timeout=300`],
  ] as const) {
    it(`is refused (${what}): exit 2, one line naming it`, async () => {
      const port = await freePort();
      const line = await failsWithOneLine(['--listen', '127.0.0.1:0', '--upstream', `memcached://127.0.0.1:${port}`, '--upstream', second(port), '--min-copies', '2']);
      assert.ok(line.includes(`memcached://127.0.0.1:${port}`), `names the upstream: ${line}`);
      assert.match(line, /twice|duplicate|more than once/i);
    });
  }

  it('is refused from a config file too', async () => {
    const port = await freePort();
    const file = await configFile('dup.toml', `[[upstream]]\nurl = "memcached://127.0.0.1:${port}"\n[[upstream]]\nurl = "memcached://127.0.0.1:${port}"\n`);
    const line = await failsWithOneLine(['--listen', '127.0.0.1:0', '--config', file]);
    assert.match(line, /twice|duplicate|more than once/i);
  });
});

describe('a config rejected for a bad upstream', () => {
  // SIGHUP validates the new file by building its upstreams; when one of them was bad, those
  // built before it were never closed: each rejected reload left a connection (and its
  // reconnect timer) to the upstreams listed before the bad one, for ever.
  it('leaves no connection open to the upstreams listed before the bad one', async () => {
    const held = await holdingServer();
    try {
      const file = await configFile('bad-second.toml', `[[upstream]]\nurl = "memcached://127.0.0.1:${held.port}"\n[[upstream]]\nurl = "ftp://127.0.0.1:1"\n`);
      // What the SIGHUP handler does (loadConfig, rejected), in a process that has nothing else
      // to do: it exits by itself only if the rejected config left nothing open.
      const script = `
        const { loadConfig } = require(${JSON.stringify(join(__dirname, '../../src/cli'))});
        try { loadConfig(['--config', ${JSON.stringify(file)}]); console.log('accepted'); }
        catch (e) { console.log('rejected: ' + e.message); }`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      const exited = once(child, 'exit').then(() => true);
      const bound = new Promise<boolean>((res) => setTimeout(() => res(false), 5000).unref());
      const done = await Promise.race([exited, bound]);
      if (!done) child.kill('SIGKILL');
      assert.match(out, /rejected: .*ftp/, 'the config is rejected for its second upstream');
      assert.ok(done, `the rejected config left ${held.sockets.size} connection(s) open to the first upstream (the process could not exit)`);
    } finally {
      held.close();
    }
  });
});

describe('SIGTERM with a metrics client', () => {
  // The metrics server was closed with server.close(), which waits for every HTTP request in
  // progress: one whose headers had not all arrived (a slow or stuck scraper, any local process)
  // held the shutdown until Node's 60 s headers timeout, past systemd's TimeoutStopSec (30 s):
  // SIGKILL, the journal not closed cleanly, upstream connections not closed.
  it('exits 0 within the shutdown-timeout although a metrics request is half sent', async () => {
    const metricsPort = await freePort();
    const mux = await startMcmux(['--upstream', 'memory://', '--metrics', `127.0.0.1:${metricsPort}`, '--shutdown-timeout', '200', '--log-level', 'warn']);
    try {
      const c = connect(metricsPort, '127.0.0.1');
      c.on('error', () => undefined);
      await once(c, 'connect');
      // The start of a request, its headers not finished.
      await new Promise<void>((res) => c.write('GET /metrics HTTP/1.1\r\nHost: x\r\n', () => res()));
      // A whole request on a second connection, made after those bytes were sent: once it is
      // answered, the server has read them too (they were readable before it connected).
      const res = await fetch(`http://127.0.0.1:${metricsPort}/healthz`, { signal: AbortSignal.timeout(5000) });
      assert.equal(await res.text(), 'ok\n');
      mux.proc.kill('SIGTERM');
      const bound = new Promise<'hung'>((res) => setTimeout(() => res('hung'), 10_000).unref());
      const exit = await Promise.race([mux.exited, bound]);
      c.destroy();
      assert.notEqual(exit, 'hung', 'mcmux did not exit within 10 s of SIGTERM (shutdown-timeout 200 ms): the half-sent metrics request holds it');
      assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM; stderr ${mux.logs().stderr}`);
    } finally {
      await mux.stop('SIGKILL');
    }
  });
});

describe('a password in a malformed upstream URL', () => {
  // maskUrl stopped the password at a space or a double quote: an unencoded password holding one
  // was printed whole in the "is not a URL" error (README: masked in every log line and error).
  for (const url of ['memcached://user:my secret@127.0.0.1:99999', 'redis://user:se"cret@127.0.0.1:99999', 'mysql://user:pass word"xq@yzw@127.0.0.1:99999/test']) {
    it(`is masked: ${url}`, async () => {
      const line = await failsWithOneLine(['--listen', '127.0.0.1:0', '--upstream', url]);
      const password = url.slice(url.indexOf('user:') + 5, url.lastIndexOf('@'));
      for (const part of password.split(/[ "@]/).filter((p) => p.length > 2)) {
        assert.ok(!line.includes(part), `the password (${JSON.stringify(part)}) is printed: ${line}`);
      }
      assert.ok(line.includes('user'), `the URL is still recognisable: ${line}`);
    });
  }
});

describe('the admin endpoints and a web page open on the same host', () => {
  /** One HTTP request with the headers given (fetch would set Host and Origin itself). */
  const ask = (port: number, method: string, path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method, path, headers, timeout: 5000 }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject).on('timeout', () => req.destroy(new Error('no answer')));
      req.end();
    });

  // Loopback only was the whole check: a page in a browser on the host (a cross-site form POST,
  // which needs no preflight) or a DNS-rebound name reached it from 127.0.0.1, and could declare
  // a store clean: its journal dropped, it would serve the stale and deleted sessions it held.
  it('refuses a browser\'s cross-site request (Origin) and a name that is not loopback (Host); mcmux repair still works', async () => {
    const metricsPort = await freePort();
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', 'memory://b', '--metrics', `127.0.0.1:${metricsPort}`, '--log-level', 'warn']);
    try {
      const local = { host: `127.0.0.1:${metricsPort}` };
      const crossSite = await ask(metricsPort, 'POST', '/admin/trust?upstream=1', { ...local, origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' });
      assert.equal(crossSite.status, 403, crossSite.body);
      for (const name of ['evil.example', '127.0.0.1.evil.example']) {
        const rebound = await ask(metricsPort, 'GET', '/admin/journal', { host: `${name}:${metricsPort}` });
        assert.equal(rebound.status, 403, `${name}: ${rebound.body}`);
      }
      for (const host of [`127.0.0.1:${metricsPort}`, `localhost:${metricsPort}`, `[::1]:${metricsPort}`, 'localhost']) {
        assert.equal((await ask(metricsPort, 'GET', '/admin/journal', { host })).status, 200, host);
      }
      // Metrics and health are for anyone who can reach them, as before.
      assert.equal((await ask(metricsPort, 'GET', '/healthz', { host: `evil.example:${metricsPort}` })).status, 200);
      const trust = await runMcmux(['repair', '--metrics', `127.0.0.1:${metricsPort}`, '--trust', '1'], { timeoutMs: 10_000 });
      assert.equal(trust.code, 0, trust.stderr + trust.stdout);
    } finally {
      await mux.stop();
    }
  });
});
