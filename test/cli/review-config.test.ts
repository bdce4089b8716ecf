/**
 * Review of the configuration, CLI, reload, shutdown and metrics paths: each test is a bug
 * found by review (it failed before its fix).
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runMcmux, startMcmux } from '../helpers/mcmux';
import { freePort } from '../helpers/servers';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-review-config-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

/** Runs mcmux expecting a configuration error: exit 2, nothing on stdout, one line on stderr. */
async function failsWithOneLine(args: string[]): Promise<string> {
  const r = await runMcmux(args, { timeoutMs: 5000 });
  assert.equal(r.timedOut, false, `mcmux ${args.join(' ')} did not exit (it should refuse the value); stdout ${r.stdout}`);
  assert.equal(r.code, 2, `exit status of mcmux ${args.join(' ')}; stderr ${JSON.stringify(r.stderr)}`);
  assert.equal(r.stdout, '', `nothing on stdout for mcmux ${args.join(' ')}`);
  assert.match(r.stderr, /^[^\n]+\n$/, `exactly one line on stderr for mcmux ${args.join(' ')}`);
  return r.stderr;
}

/** A TCP server that accepts and holds connections (a stand-in memcached that never answers). */
async function holdingServer(): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const a = server.address();
  assert.ok(a && typeof a === 'object');
  return { server, port: a.port, sockets };
}

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
      for (const s of held.sockets) s.destroy();
      held.server.close();
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
