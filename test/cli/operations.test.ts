/**
 * An operator's day with bin/mcmux (the spawned binary, private memcached processes):
 *
 *   (a) SIGHUP with a config that adds and reorders upstreams, while clients keep working on
 *       persistent connections: no connection drops, no request fails; an invalid file is
 *       rejected and the running config stays;
 *   (b) /healthz: 200 while an upstream is usable, 503 when none is, 200 again after a probe;
 *   (c) /metrics: requests by command and result, per-upstream requests, latency and state,
 *       connections, read repairs, and `stats` telling the same numbers;
 *   (d) SIGTERM with a request in flight: its reply still goes out, then exit 0 within the grace;
 *       a second SIGTERM exits at once;
 *   (e) `mcmux check --config FILE`: one line per upstream, non-zero when one is unusable;
 *   (f) unix sockets with --listen-mode, both protocols, next to a TCP listener;
 *   (g) `mcmux repair`: the journal, dirty keys while an upstream is dead, `--trust N`;
 *   (h) JSON logs: one line per state change, passwords masked, nothing per request; S7: at
 *       debug, odd and invalid keys leave every line JSON, with no raw control or 8-bit byte.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { type TestContext, after, before, describe, it } from 'node:test';
import { END, type McmuxProcess, type RawClient, type StartOptions, answersVersion, eventually, killAndWait, peekItem, rawClient, runMcmux, startMcmux, testClient } from '../helpers/mcmux';
import { type MemcachedProcess, freePort, requireBinary, startMemcacheds } from '../helpers/servers';
import { connectWire } from '../helpers/wire';

/** Bound on any single reply. */
const REPLY_MS = 5000;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-ops-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

function upstreamsToml(urls: readonly string[]): string {
  return urls.map((u) => `[[upstream]]\nurl = "${u}"\n`).join('\n');
}

/** mcmux with `--metrics` on a free port; stopped (and required to exit 0) after the test. */
async function muxWithMetrics(t: TestContext, args: string[], opts: StartOptions = {}): Promise<{ mux: McmuxProcess; metrics: string }> {
  const metrics = `127.0.0.1:${await freePort()}`;
  const mux = await startMcmux([...args, '--metrics', metrics], opts);
  t.after(async () => {
    const exit = await mux.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `mcmux exits 0 on SIGTERM; stderr: ${mux.logs().stderr}`);
  });
  return { mux, metrics };
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

/** `stats` (or `stats <group>`) as a map. */
async function stats(c: RawClient, group = ''): Promise<Map<string, string>> {
  const text = await c.ask(group ? `stats ${group}\r\n` : 'stats\r\n', END, REPLY_MS);
  const out = new Map<string, string>();
  for (const m of text.matchAll(/^STAT (\S+) (.*)\r$/gm)) out.set(m[1] as string, m[2] as string);
  return out;
}

function num(s: Map<string, string>, name: string): number {
  const v = s.get(name);
  assert.ok(v !== undefined, `stats has ${name}: ${JSON.stringify([...s])}`);
  return Number(v);
}

async function http(address: string, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${address}${path}`, { method, signal: AbortSignal.timeout(REPLY_MS) });
  return { status: res.status, body: await res.text() };
}

/** One Prometheus sample: `name{labels} value`, the labels as an object. */
interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

async function scrape(address: string): Promise<Sample[]> {
  const { status, body } = await http(address, '/metrics');
  assert.equal(status, 200, `/metrics answers 200: ${body.slice(0, 200)}`);
  const out: Sample[] = [];
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one sample named `name` whose labels include `labels` (undefined: none). */
function sample(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(found.length <= 1, `one sample ${name}${JSON.stringify(labels)}, found ${found.length}`);
  return found[0]?.value;
}

function sum(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

/** Sends requests until every upstream's `stats upstreams` state satisfies `ok` (bounded). */
async function driveUntilStates(c: RawClient, what: string, ok: (states: string[]) => boolean): Promise<void> {
  await eventually(what, async () => {
    await c.ask('get drive.key\r\n', /END\r\n$|SERVER_ERROR[^\r\n]*\r\n$/, REPLY_MS);
    const s = await stats(c, 'upstreams');
    const states = [...s].filter(([k]) => /^upstream\.\d+\.state$/.test(k)).map(([, v]) => v);
    return ok(states);
  }, 15_000);
}

const unusable = (s: string): boolean => s === 'down' || s === 'probing';

// ---------------------------------------------------------------------------------------------

describe('(a) SIGHUP reloads the config file without dropping a client', () => {
  it('adds and reorders upstreams under a steady load; an invalid file is rejected and changes nothing', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const file = await configFile('reload.toml', `timeout = 1000\n\n${upstreamsToml([mc1.url])}`);
    const { mux, metrics } = await muxWithMetrics(t, ['--config', file]);
    const admin = await testClient(t, mux.port);

    // Clients on persistent connections, each in a set/get loop; any failure is recorded.
    const CLIENTS = 4;
    const loops = await Promise.all(Array.from({ length: CLIENTS }, () => testClient(t, mux.port)));
    for (const c of loops) assert.match(await c.ask('version\r\n', undefined, REPLY_MS), /^VERSION /);
    const connectionsBefore = num(await stats(admin), 'total_connections');
    const done = Array.from({ length: CLIENTS }, () => 0);
    const failures: string[] = [];
    let stop = false;
    const running = loops.map(async (c, id) => {
      while (!stop) {
        const n = done[id] ?? 0;
        const key = `loop.${id}.${n % 64}`;
        const value = `${id}-${n}`;
        try {
          const stored = await c.ask(`set ${key} 0 0 ${value.length}\r\n${value}\r\n`, undefined, REPLY_MS);
          if (stored !== 'STORED\r\n') failures.push(`client ${id}: set ${key} answered ${JSON.stringify(stored)}`);
          const got = await c.ask(`get ${key}\r\n`, /END\r\n$|ERROR[^\r\n]*\r\n$/, REPLY_MS);
          if (got !== `VALUE ${key} 0 ${value.length}\r\n${value}\r\nEND\r\n`) failures.push(`client ${id}: get ${key} answered ${JSON.stringify(got)}`);
        } catch (error) {
          failures.push(`client ${id}: ${String(error)}`);
          return;
        }
        done[id] = n + 1;
      }
    });
    /** Waits until every client has made `n` more round trips. */
    const progress = async (n: number, what: string): Promise<void> => {
      const from = [...done];
      await eventually(`every client makes ${n} more round trips (${what})`, async () => {
        assert.deepEqual(failures, [], 'no request fails');
        return done.every((d, i) => d >= (from[i] as number) + n);
      });
    };
    try {
      await progress(20, 'before the reload');

      // A second memcached, added FIRST: the read order changes too.
      await writeFile(file, `timeout = 1000\n\n${upstreamsToml([mc2.url, mc1.url])}`);
      mux.proc.kill('SIGHUP');
      await eventually('the reload is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'configuration reloaded'));
      const line = jsonLines(mux.logs().stdout).find((l) => l.msg === 'configuration reloaded');
      assert.deepEqual(line?.added, [mc2.url], `the reload line names what was added: ${JSON.stringify(line)}`);
      assert.deepEqual(line?.removed, []);
      assert.deepEqual(line?.upstreams, [mc2.url, mc1.url], 'in the new order');
      await progress(20, 'after the reload');

      const s = await stats(admin, 'upstreams');
      assert.equal(s.get('upstream.0.name'), mc2.url, 'stats upstreams: the new one first');
      assert.equal(s.get('upstream.1.name'), mc1.url);
      assert.equal(s.get('upstream.0.state'), 'healthy');
      const m = await scrape(metrics);
      assert.equal(sample(m, 'mcmux_upstream_state', { upstream: mc2.url, state: 'healthy' }), 1, '/metrics shows the new upstream');
      assert.ok((sample(m, 'mcmux_upstream_requests_total', { upstream: mc2.url, outcome: 'ok' }) ?? 0) > 0, '/metrics counts its requests');
      // The new upstream receives the writes: a key written now is in it (once it has been
      // flushed: a store added by a reload is not trusted for what it held before, see g3).
      await eventually('the added memcached is trusted', async () => (await stats(admin, 'upstreams')).get('upstream.0.overflowed') === '0');
      assert.equal(await admin.ask('set after.reload 0 0 2\r\nok\r\n', undefined, REPLY_MS), 'STORED\r\n');
      assert.equal((await peekItem(mc2.port, 'after.reload'))?.value, 'ok', 'the added memcached gets the writes');

      // An invalid file: logged as rejected, the running configuration stays.
      await writeFile(file, `timeout = 1000\n\n${upstreamsToml([mc1.url])}\n[[upstream]]\nurl = "memcached://127.0.0.1:1"\nno-such-option = 1\n`);
      mux.proc.kill('SIGHUP');
      await eventually('the rejected reload is logged', async () => jsonLines(mux.logs().stdout).some((l) => /reload rejected/.test(String(l.msg))));
      const rejected = jsonLines(mux.logs().stdout).find((l) => /reload rejected/.test(String(l.msg)));
      assert.match(String(rejected?.err), /no-such-option/, `the rejection names the problem: ${JSON.stringify(rejected)}`);
      assert.equal(rejected?.level, 50, 'logged as an error');
      await progress(20, 'after the rejected reload');
      const kept = await stats(admin, 'upstreams');
      assert.equal(kept.get('upstream.0.name'), mc2.url, 'the running config stays');
      assert.equal(kept.get('upstream.1.name'), mc1.url);
      assert.equal(kept.has('upstream.2.name'), false);
      assert.equal(jsonLines(mux.logs().stdout).filter((l) => l.msg === 'configuration reloaded').length, 1, 'no second reload happened');
    } finally {
      stop = true;
      await Promise.all(running);
    }
    assert.deepEqual(failures, [], 'no request failed');
    for (const [i, c] of loops.entries()) {
      assert.equal(c.socket.destroyed, false, `client ${i} still connected`);
      assert.match(await c.ask('version\r\n', undefined, REPLY_MS), /^VERSION /, `client ${i} still served`);
    }
    assert.equal(num(await stats(admin), 'total_connections'), connectionsBefore, 'no client had to reconnect');
  });
});

describe('(b) /healthz', () => {
  it('is 200 while an upstream is usable, 503 when every upstream is down, 200 again once one is back', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const { mux, metrics } = await muxWithMetrics(t, ['--upstream', mc1.url, '--upstream', mc2.url, '--probe-interval', '100', '--probe-interval-max', '500']);
    const c = await testClient(t, mux.port);
    assert.deepEqual(await http(metrics, '/healthz'), { status: 200, body: 'ok\n' });

    await killAndWait(mc1);
    await driveUntilStates(c, 'the first upstream is down', (s) => unusable(s[0] as string));
    assert.equal((await http(metrics, '/healthz')).status, 200, 'one upstream is still usable');

    await killAndWait(mc2);
    await driveUntilStates(c, 'both upstreams are down', (s) => s.every(unusable));
    const down = await http(metrics, '/healthz');
    assert.equal(down.status, 503, `503 with no usable upstream: ${down.body}`);
    const m = await scrape(metrics);
    for (const mc of [mc1, mc2]) {
      const notUsable = (sample(m, 'mcmux_upstream_state', { upstream: mc.url, state: 'down' }) ?? 0) + (sample(m, 'mcmux_upstream_state', { upstream: mc.url, state: 'probing' }) ?? 0);
      assert.equal(notUsable, 1, `/metrics shows ${mc.url} down`);
    }
    // Clients are told, and keep their connection.
    assert.match(await c.ask('get any\r\n', undefined, REPLY_MS), /^SERVER_ERROR /);
    assert.match(await c.ask('version\r\n', undefined, REPLY_MS), /^VERSION /);

    // One comes back: a probe finds it, with no client request needed.
    await mc2.restart();
    await eventually('/healthz is 200 again', async () => (await http(metrics, '/healthz')).status === 200, 10_000);
  });
});

describe('(c) /metrics and stats', () => {
  it('count requests by command and result, per upstream, connections and read repairs, as stats does', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const { mux, metrics } = await muxWithMetrics(t, ['--upstream', mc1.url, '--upstream', mc2.url]);
    const c = await testClient(t, mux.port);
    for (let i = 0; i < 3; i++) assert.equal(await c.ask(`set m.${i} 0 0 1\r\n${i}\r\n`, undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('get m.0 m.1\r\n', END, REPLY_MS), 'VALUE m.0 0 1\r\n0\r\nVALUE m.1 0 1\r\n1\r\nEND\r\n');
    assert.equal(await c.ask('get nothing.here\r\n', END, REPLY_MS), 'END\r\n');
    assert.equal(await c.ask('add m.0 0 0 1\r\nx\r\n', undefined, REPLY_MS), 'NOT_STORED\r\n');
    assert.equal(await c.ask('delete nothing.here\r\n', undefined, REPLY_MS), 'NOT_FOUND\r\n');
    // A key only the second memcached has: read from it, and repaired into the first.
    const direct = await rawClient(mc2.port);
    assert.equal(await direct.ask('set only.second 0 0 3\r\nabc\r\n', undefined, REPLY_MS), 'STORED\r\n');
    direct.close();
    assert.equal(await c.ask('get only.second\r\n', END, REPLY_MS), 'VALUE only.second 0 3\r\nabc\r\nEND\r\n');
    await eventually('the read repair lands in the first memcached', async () => (await peekItem(mc1.port, 'only.second')) !== undefined);

    const s = await stats(c);
    const m = await scrape(metrics);
    // Requests by command and result.
    assert.equal(sample(m, 'mcmux_requests_total', { command: 'set', result: 'stored' }), 3);
    assert.equal(sample(m, 'mcmux_requests_total', { command: 'get', result: 'ok' }), 3);
    assert.equal(sample(m, 'mcmux_requests_total', { command: 'add', result: 'not_stored' }), 1);
    assert.equal(sample(m, 'mcmux_requests_total', { command: 'delete', result: 'not_found' }), 1);
    // The same numbers as stats.
    // cmd_get counts keys, as memcached does (the 3 gets read 4 keys); the metric counts requests.
    assert.equal(num(s, 'cmd_get'), num(s, 'get_hits') + num(s, 'get_misses'), 'cmd_get: the keys read');
    assert.equal(num(s, 'cmd_get'), 4);
    assert.equal(sum(m, 'mcmux_requests_total', { command: 'delete' }), num(s, 'delete_cmds'), 'deletes: metrics and stats agree');
    assert.equal(sample(m, 'mcmux_get_hits_total'), num(s, 'get_hits'));
    assert.equal(num(s, 'get_hits'), 3);
    assert.equal(sample(m, 'mcmux_get_misses_total'), num(s, 'get_misses'));
    assert.equal(num(s, 'get_misses'), 1);
    assert.equal(sample(m, 'mcmux_read_repairs_total'), num(s, 'read_repairs'));
    assert.equal(num(s, 'read_repairs'), 1, 'one read repair');
    assert.equal(sample(m, 'mcmux_connections'), num(s, 'curr_connections'));
    assert.equal(num(s, 'curr_connections'), 1);
    assert.equal(sample(m, 'mcmux_connections_total'), num(s, 'total_connections'));
    // Per upstream: requests by outcome, a latency histogram, the state.
    for (const [i, mc] of [mc1, mc2].entries()) {
      const ok = sample(m, 'mcmux_upstream_requests_total', { upstream: mc.url, outcome: 'ok' }) ?? 0;
      // At least the 3 sets, the delete and a read each reached both.
      assert.ok(ok >= 5, `${mc.url}: its requests are counted (${ok})`);
      const count = sample(m, 'mcmux_upstream_request_seconds_count', { upstream: mc.url });
      assert.equal(count, sum(m, 'mcmux_upstream_requests_total', { upstream: mc.url }) - sum(m, 'mcmux_upstream_requests_total', { upstream: mc.url, outcome: 'skipped' }), 'one latency observation per request');
      const buckets = m.filter((x) => x.name === 'mcmux_upstream_request_seconds_bucket' && x.labels.upstream === mc.url);
      assert.ok(buckets.length > 3, 'a histogram with buckets');
      assert.equal(buckets.find((b) => b.labels.le === '+Inf')?.value, count);
      assert.equal(sample(m, 'mcmux_upstream_state', { upstream: mc.url, state: 'healthy' }), 1);
      assert.equal(s.get(`upstream.${i}.state`), 'healthy');
      // stats counts the requests the driver sent, mcmux's own marker key (cold detection) too,
      // which /metrics leaves out: it can only be higher.
      assert.ok(num(s, `upstream.${i}.requests`) >= ok, `stats upstream.${i}.requests ${num(s, `upstream.${i}.requests`)} >= /metrics ${ok}`);
    }
  });
});

describe('(d) SIGTERM', () => {
  it('lets a request in flight get its reply, then exits 0 within shutdown-timeout', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc] = (await startMemcacheds(t, 1)) as [MemcachedProcess];
    const UPSTREAM_TIMEOUT = 2000;
    const GRACE = 5000;
    const mux = await startMcmux(['--upstream', `${mc.url}?timeout=${UPSTREAM_TIMEOUT}`, '--shutdown-timeout', String(GRACE)]);
    t.after(() => mux.stop('SIGKILL'));
    const c = await testClient(t, mux.port);
    assert.equal(await c.ask('set slow 0 0 1\r\nx\r\n', undefined, REPLY_MS), 'STORED\r\n');

    await mc.pause();
    t.after(() => mc.resume());
    // One write: `version` is answered at once and proves the get behind it was read and started.
    c.send('version\r\nget slow\r\n');
    assert.match(await c.readUntil('\r\n', REPLY_MS), /^VERSION /);
    const t0 = performance.now();
    mux.proc.kill('SIGTERM');
    const reply = await c.readUntil(/^(SERVER_ERROR[^\r\n]*\r\n|VALUE slow 0 1\r\nx\r\nEND\r\n)$/, GRACE + 2000);
    const replied = performance.now() - t0;
    await c.closed;
    const exit = await mux.exited;
    const exited = performance.now() - t0;
    assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM; stderr ${mux.logs().stderr}`);
    assert.match(reply, /^SERVER_ERROR /, 'the frozen upstream timed out: the client is told');
    assert.ok(replied > UPSTREAM_TIMEOUT - 500, `the reply came when the upstream timed out (${Math.round(replied)} ms), not cut short`);
    assert.ok(exited < GRACE + 1500, `exited within the shutdown-timeout (${Math.round(exited)} ms)`);
    const lines = jsonLines(mux.logs().stdout);
    assert.ok(lines.some((l) => l.msg === 'shutting down' && l.signal === 'SIGTERM'));
    assert.ok(lines.some((l) => l.msg === 'stopped'));
  });

  it('stops accepting at once, and a second SIGTERM during the grace period exits at once', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc] = (await startMemcacheds(t, 1)) as [MemcachedProcess];
    const mux = await startMcmux(['--upstream', `${mc.url}?timeout=20000`, '--shutdown-timeout', '30000']);
    t.after(() => mux.stop('SIGKILL'));
    const c = await testClient(t, mux.port);
    assert.equal(await c.ask('set slow 0 0 1\r\nx\r\n', undefined, REPLY_MS), 'STORED\r\n');
    await mc.pause();
    t.after(() => mc.resume());
    c.send('version\r\nget slow\r\n');
    assert.match(await c.readUntil('\r\n', REPLY_MS), /^VERSION /);

    mux.proc.kill('SIGTERM');
    await eventually('the shutdown is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'shutting down'));
    assert.equal(await answersVersion(mux.port), false, 'no new client is accepted during the grace period');
    assert.equal(mux.proc.exitCode, null, 'still waiting for the request in flight');
    const t0 = performance.now();
    mux.proc.kill('SIGTERM');
    const exit = await mux.exited;
    const took = performance.now() - t0;
    assert.ok(took < 1500, `the second SIGTERM exits at once (${Math.round(took)} ms)`);
    assert.equal(exit.signal, null, 'exits by itself, not killed');
    assert.notEqual(exit.code, null);
    assert.ok(jsonLines(mux.logs().stdout).some((l) => /second signal/.test(String(l.msg))), 'the second signal is logged');
    await c.closed;
  });
});

describe('(e) mcmux check --config FILE', () => {
  it('prints ok for every upstream and exits 0 when all answer', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const file = await configFile('check-ok.toml', upstreamsToml([mc1.url, mc2.url, 'memory://']));
    const r = await runMcmux(['check', '--config', file], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, `exit 0; stdout ${r.stdout}; stderr ${r.stderr}`);
    const [stateDir, ...lines] = r.stdout.trimEnd().split('\n');
    assert.match(stateDir as string, /^state-dir \//, 'first, the state directory it would use');
    assert.equal(lines.length, 4, `one line per upstream and a summary: ${r.stdout}`);
    assert.match(lines[0] as string, new RegExp(`^ok\\s+${mc1.url}$`));
    assert.match(lines[1] as string, new RegExp(`^ok\\s+${mc2.url}$`));
    assert.match(lines[2] as string, /^ok\s+memory:\/\//);
    assert.match(lines[3] as string, /3 upstreams/);
  });

  it('names the unusable upstream (password masked) and exits non-zero', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc] = (await startMemcacheds(t, 1)) as [MemcachedProcess];
    const dead = await freePort(); // nothing listens there
    const file = await configFile('check-dead.toml', upstreamsToml([mc.url, `redis://user:secret@127.0.0.1:${dead}`]));
    const started = performance.now();
    const r = await runMcmux(['check', '--config', file], { timeoutMs: 10_000 });
    assert.equal(r.timedOut, false);
    assert.ok(performance.now() - started < 8000, 'a dead port does not hang the check');
    assert.notEqual(r.code, 0, `non-zero exit with a dead upstream; stdout ${r.stdout}`);
    const lines = r.stdout.trimEnd().split('\n').slice(1); // after the state-dir line
    assert.equal(lines.length, 3, `one line per upstream and a summary: ${r.stdout}`);
    assert.match(lines[0] as string, new RegExp(`^ok\\s+${mc.url}$`));
    assert.match(lines[1] as string, new RegExp(`^FAILED\\s+redis://user:\\*\\*\\*@127\\.0\\.0\\.1:${dead}: \\S`), 'names the dead one and why');
    assert.match(lines[2] as string, /1 of 2/);
    assert.ok(!r.stdout.includes('secret') && !r.stderr.includes('secret'), `no password printed: ${r.stdout}${r.stderr}`);
  });

  it('a frozen upstream (SIGSTOP: connects, never answers) is FAILED within a bound, not a hang', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc, frozen] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    await frozen.pause();
    t.after(() => frozen.resume());
    const file = await configFile('check-frozen.toml', upstreamsToml([mc.url, frozen.url]));
    const started = performance.now();
    const r = await runMcmux(['check', '--config', file], { timeoutMs: 10_000 });
    assert.equal(r.timedOut, false);
    assert.ok(performance.now() - started < 8000, 'a frozen upstream does not hang the check');
    assert.equal(r.code, 1, `exit 1; stdout ${r.stdout}`);
    const lines = r.stdout.trimEnd().split('\n').slice(1); // after the state-dir line
    assert.match(lines[0] as string, new RegExp(`^ok\\s+${mc.url}$`));
    assert.match(lines[1] as string, new RegExp(`^FAILED\\s+${frozen.url}: \\S`));
  });

  it('a bad config file is a configuration error: exit 2, one line', async () => {
    const file = await configFile('check-bad.toml', '[[upstream]]\nurl = "memcached://127.0.0.1:1"\nno-such-option = 1\n');
    const r = await runMcmux(['check', '--config', file], { timeoutMs: 10_000 });
    assert.equal(r.code, 2, `exit 2; stdout ${r.stdout}; stderr ${r.stderr}`);
    assert.match(r.stderr, /^[^\n]*no-such-option[^\n]*\n$/);
  });
});

/** A binary-protocol request frame (24-byte header, extras, key, value). */
function binFrame(opcode: number, key: string, extras: Buffer = Buffer.alloc(0), value = ''): Buffer {
  const k = Buffer.from(key, 'latin1');
  const v = Buffer.from(value, 'latin1');
  const h = Buffer.alloc(24);
  h[0] = 0x80;
  h[1] = opcode;
  h.writeUInt16BE(k.length, 2);
  h[4] = extras.length;
  h.writeUInt32BE(extras.length + k.length + v.length, 8);
  h.writeUInt32BE(0x1234, 12);
  return Buffer.concat([h, extras, k, v]);
}

/** A complete binary response in `text` (latin1). */
function binComplete(text: string): boolean {
  return text.length >= 24 && text.length >= 24 + Buffer.from(text.slice(0, 24), 'latin1').readUInt32BE(8);
}

function binParse(text: string): { status: number; extras: Buffer; value: string } {
  const b = Buffer.from(text, 'latin1');
  assert.equal(b[0], 0x81, `a binary response: ${JSON.stringify(text)}`);
  const extLen = b[4] as number;
  const keyLen = b.readUInt16BE(2);
  return { status: b.readUInt16BE(6), extras: b.subarray(24, 24 + extLen), value: b.subarray(24 + extLen + keyLen).toString('latin1') };
}

describe('(f) unix sockets', () => {
  it('--listen unix:PATH --listen-mode 0660 next to a TCP listener: both protocols on both', async (t) => {
    const sockDir = await mkdtemp('/tmp/mcmux-sock-');
    t.after(() => rm(sockDir, { recursive: true, force: true }));
    const path = join(sockDir, 'mcmux.sock');
    const port = await freePort();
    const mux = await startMcmux(['--listen', `unix:${path}`, '--listen', `127.0.0.1:${port}`, '--listen-mode', '0660', '--upstream', 'memory://'], { port });
    t.after(() => mux.stop());
    const st = await stat(path);
    assert.ok(st.isSocket(), `${path} is a socket`);
    assert.equal((st.mode & 0o777).toString(8), '660', 'its mode is --listen-mode');

    const unixText = await connectWire(path);
    t.after(() => unixText.close());
    assert.equal(await unixText.ask('set u.text 7 0 5\r\nhello\r\n'), 'STORED\r\n');
    assert.equal(await unixText.ask('get u.text\r\n', /END\r\n$/), 'VALUE u.text 7 5\r\nhello\r\nEND\r\n');

    // Binary protocol on the unix socket: read what the text client wrote, write one more.
    const unixBin = await connectWire(path);
    t.after(() => unixBin.close());
    unixBin.send(binFrame(0x00, 'u.text'));
    const got = binParse(await unixBin.read(binComplete));
    assert.equal(got.status, 0, 'GET found the key');
    assert.equal(got.extras.readUInt32BE(0), 7, 'flags');
    assert.equal(got.value, 'hello');
    const extras = Buffer.alloc(8);
    extras.writeUInt32BE(42, 0);
    unixBin.send(binFrame(0x01, 'u.bin', extras, 'binary!'));
    assert.equal(binParse(await unixBin.read(binComplete)).status, 0, 'SET stored');

    // The TCP listener serves the same store, in both protocols.
    const tcp = await rawClient(port);
    t.after(() => tcp.close());
    assert.equal(await tcp.ask('get u.bin\r\n', END, REPLY_MS), 'VALUE u.bin 42 7\r\nbinary!\r\nEND\r\n');
    const tcpBin = await connectWire(port);
    t.after(() => tcpBin.close());
    tcpBin.send(binFrame(0x00, 'u.text'));
    assert.equal(binParse(await tcpBin.read(binComplete)).value, 'hello');

    for (const w of [unixText, unixBin, tcpBin]) w.close();
    tcp.close();
    const exit = await mux.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    await assert.rejects(stat(path), { code: 'ENOENT' }, 'the socket file is removed on a clean stop');
  });
  it('a second mcmux given the socket path of a running one does not take it over', async (t) => {
    const sockDir = await mkdtemp('/tmp/mcmux-sock-');
    t.after(() => rm(sockDir, { recursive: true, force: true }));
    const path = join(sockDir, 'mcmux.sock');
    const [port1, port2] = [await freePort(), await freePort()];
    const first = await startMcmux(['--listen', `unix:${path}`, '--listen', `127.0.0.1:${port1}`, '--upstream', 'memory://'], { port: port1 });
    t.after(() => first.stop());
    const w = await connectWire(path);
    assert.equal(await w.ask('set owner 0 0 5\r\nfirst\r\n'), 'STORED\r\n');
    w.close();
    const second = await runMcmux(['--listen', `unix:${path}`, '--listen', `127.0.0.1:${port2}`, '--upstream', 'memory://'], { timeoutMs: 3000 });
    assert.equal(second.timedOut, false, 'the second mcmux refuses to start instead of serving on the path of the first');
    assert.equal(second.code, 1, `a bind failure exits 1; stderr ${second.stderr}`);
    const again = await connectWire(path);
    t.after(() => again.close());
    assert.equal(await again.ask('get owner\r\n', /END\r\n$/), 'VALUE owner 0 5\r\nfirst\r\nEND\r\n', 'the path still reaches the first mcmux');
  });
});

describe('(g) mcmux repair', () => {
  it('shows the journal, the keys a dead upstream missed (also after a restart of mcmux), and --trust N clears them', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    // A state directory of our own, so that a second mcmux finds the journal of the first.
    const stateDir = await mkdtemp(join(tmpdir(), 'mcmux-ops-state-'));
    t.after(() => rm(stateDir, { recursive: true, force: true }));
    const upstreams = ['--upstream', mc1.url, '--upstream', mc2.url];
    const env = { env: { STATE_DIRECTORY: stateDir }, cwd: stateDir };
    type Entry = { index: number; upstream: string; state: string; dirtyKeys: number; overflowed: boolean; fenced: boolean };
    const repair = async (metrics: string, ...extra: string[]): Promise<{ code: number | null; entries: Entry[]; stdout: string; stderr: string }> => {
      const r = await runMcmux(['repair', '--metrics', metrics, ...extra], { timeoutMs: 10_000 });
      let entries: Entry[] = [];
      try {
        entries = JSON.parse(r.stdout) as Entry[];
      } catch {
        // left empty: the caller asserts on stdout
      }
      return { code: r.code, entries, stdout: r.stdout, stderr: r.stderr };
    };

    const first = await muxWithMetrics(t, upstreams, env);
    const clean = await repair(first.metrics);
    assert.equal(clean.code, 0, clean.stderr);
    assert.deepEqual(clean.entries.map((e) => [e.index, e.upstream, e.dirtyKeys, e.overflowed]), [[0, mc1.url, 0, false], [1, mc2.url, 0, false]]);

    await killAndWait(mc2);
    const c = await rawClient(first.mux.port);
    const KEYS = 5;
    for (let i = 0; i < KEYS; i++) assert.equal(await c.ask(`set dirty.${i} 0 0 1\r\n${i}\r\n`, undefined, REPLY_MS), 'STORED\r\n', 'min-copies 1: stored on the live one');
    const dirty = await repair(first.metrics);
    assert.equal(dirty.code, 0, dirty.stderr);
    assert.equal(dirty.entries[0]?.dirtyKeys, 0, `the live upstream missed nothing: ${dirty.stdout}`);
    assert.equal(dirty.entries[1]?.dirtyKeys, KEYS, `the dead upstream missed every write: ${dirty.stdout}`);
    assert.equal(num(await stats(c, 'upstreams'), 'upstream.1.dirty_keys'), KEYS, 'stats upstreams agrees');
    c.close();

    // mcmux restarts while the upstream is still dead: the repair work is still known.
    assert.deepEqual(await first.mux.stop(), { code: 0, signal: null });
    const second = await muxWithMetrics(t, upstreams, env);
    const kept = await repair(second.metrics);
    assert.equal(kept.entries[1]?.dirtyKeys, KEYS, `the journal survives a restart of mcmux: ${kept.stdout}`);

    const trusted = await repair(second.metrics, '--trust', '1');
    assert.equal(trusted.code, 0, trusted.stderr);
    assert.equal(trusted.entries[1]?.dirtyKeys, 0, `--trust 1 clears its journal: ${trusted.stdout}`);
    assert.equal((await repair(second.metrics)).entries[1]?.dirtyKeys, 0);
    const c2 = await testClient(t, second.mux.port);
    assert.equal(num(await stats(c2, 'upstreams'), 'upstream.1.dirty_keys'), 0);

    const unknown = await repair(second.metrics, '--trust', '7');
    assert.notEqual(unknown.code, 0, 'an unknown upstream is an error');
    assert.match(String((JSON.parse(unknown.stdout) as { error?: unknown }).error), /no upstream "7"/, `names the index: ${unknown.stdout}`);
    const unreachable = await runMcmux(['repair', '--metrics', `127.0.0.1:${await freePort()}`], { timeoutMs: 10_000 });
    assert.equal(unreachable.code, 1, `cannot reach: exit 1; stderr ${unreachable.stderr}`);
    assert.match(unreachable.stderr, /cannot reach/);
  });
});

describe('(g2) the journal follows the store, not its URL options', () => {
  it('a reload that only adds ?timeout= to a dead upstream keeps its dirty keys', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const file = await configFile('journal-name.toml', upstreamsToml([mc1.url, mc2.url]));
    const { mux, metrics } = await muxWithMetrics(t, ['--config', file]);
    await killAndWait(mc2);
    const c = await testClient(t, mux.port);
    for (let i = 0; i < 3; i++) assert.equal(await c.ask(`set orphan.${i} 0 0 1\r\n${i}\r\n`, undefined, REPLY_MS), 'STORED\r\n');
    const dirtyOf = async (): Promise<number[]> =>
      (JSON.parse((await http(metrics, '/admin/journal')).body) as Array<{ dirtyKeys: number }>).map((e) => e.dirtyKeys);
    assert.deepEqual(await dirtyOf(), [0, 3]);
    await writeFile(file, upstreamsToml([mc1.url, `${mc2.url}?timeout=300`]));
    mux.proc.kill('SIGHUP');
    await eventually('the reload is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'configuration reloaded'));
    assert.deepEqual(await dirtyOf(), [0, 3], 'the same store still missed the same 3 writes');
    assert.equal(num(await stats(c), 'journal_keys'), 3);
  });
});

describe('(g3) a store added by a reload is not trusted for what it held before', () => {
  it('a memcached that left the chain earlier and comes back first serves no stale or deleted session', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const file = await configFile('re-added.toml', upstreamsToml([mc1.url]));
    const { mux } = await muxWithMetrics(t, ['--config', file]);
    const c = await testClient(t, mux.port);
    assert.equal(await c.ask('set sess.live 0 0 3\r\nnew\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('set sess.gone 0 0 1\r\nx\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('delete sess.gone\r\n', undefined, REPLY_MS), 'DELETED\r\n');
    // What mc2 kept from its earlier time in the chain: it missed the set and the delete above.
    const direct = await testClient(t, mc2.port);
    assert.equal(await direct.ask('set sess.live 0 0 5\r\nstale\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await direct.ask('set sess.gone 0 0 11\r\nresurrected\r\n', undefined, REPLY_MS), 'STORED\r\n');

    await writeFile(file, upstreamsToml([mc2.url, mc1.url]));
    mux.proc.kill('SIGHUP');
    await eventually('the reload is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'configuration reloaded'));
    assert.equal(await c.ask('get sess.live\r\n', END, REPLY_MS), 'VALUE sess.live 0 3\r\nnew\r\nEND\r\n');
    assert.equal(await c.ask('get sess.gone\r\n', END, REPLY_MS), 'END\r\n', 'a destroyed session stays destroyed');
    // Once known clean (a cache: flushed), it is trusted again and serves what it is given.
    await eventually('the added memcached is flushed and trusted', async () => (await stats(c, 'upstreams')).get('upstream.0.overflowed') === '0');
    assert.equal(await peekItem(mc2.port, 'sess.gone'), undefined, 'flushed');
    assert.equal(await c.ask('set sess.live 0 0 4\r\nnewr\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal((await peekItem(mc2.port, 'sess.live'))?.value, 'newr');
    assert.equal(await c.ask('get sess.gone\r\n', END, REPLY_MS), 'END\r\n');
  });
});

describe('(h) JSON logs', () => {
  // Passwords masked in these lines: cli.test.ts ('a password in an upstream URL is never
  // printed'), over a Redis URL (a memcached:// one takes none).
  it('one line per upstream state change, nothing per request at the default level', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const name = mc1.url;
    const { mux, metrics } = await muxWithMetrics(t, ['--upstream', mc1.url, '--upstream', mc2.url, '--probe-interval', '100', '--probe-interval-max', '400']);
    const c = await testClient(t, mux.port);
    await eventually('the start-up line', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'mcmux listening'));

    const hundredRoundTrips = async (): Promise<void> => {
      for (let i = 0; i < 100; i++) {
        const v = String(i);
        assert.match(await c.ask(`set log.${i} 0 0 ${v.length}\r\n${v}\r\n`, undefined, REPLY_MS), /^STORED\r\n$/);
        await c.ask(`get log.${i}\r\n`, END, REPLY_MS);
      }
    };
    let lines = jsonLines(mux.logs().stdout).length;
    await hundredRoundTrips();
    assert.equal(jsonLines(mux.logs().stdout).length, lines, `no log line for 200 requests: ${mux.logs().stdout}`);

    // The first upstream dies: its state changes are logged.
    await killAndWait(mc1);
    await driveUntilStates(c, 'the first upstream is down', (s) => unusable(s[0] as string));
    // The log pipe is not the client socket: wait for the line before counting from it.
    await eventually('the down line is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'upstream down'));
    lines = jsonLines(mux.logs().stdout).length;
    await hundredRoundTrips();
    assert.equal(jsonLines(mux.logs().stdout).length, lines, 'no log line for 200 requests while an upstream is down either');

    await mc1.restart();
    await eventually('the first upstream is healthy again', async () => (await stats(c, 'upstreams')).get('upstream.0.state') === 'healthy', 10_000);

    await eventually('the healthy line is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.msg === 'upstream healthy'));
    const m = await scrape(metrics);
    const changes = (state: string): number => sample(m, 'mcmux_upstream_state_changes_total', { upstream: name, state }) ?? -1;
    const stateLines = jsonLines(mux.logs().stdout).filter((l) => /^upstream (healthy|suspect|down|probing)$/.test(String(l.msg)));
    for (const l of stateLines) {
      assert.equal(l.upstream, name, `a state line names the upstream: ${JSON.stringify(l)}`);
      assert.equal(l.msg, `upstream ${String(l.to)}`);
      assert.ok(typeof l.from === 'string' && l.from !== l.to && typeof l.reason === 'string' && l.reason !== '', `from, to, reason: ${JSON.stringify(l)}`);
    }
    const count = (to: string): number => stateLines.filter((l) => l.to === to).length;
    assert.ok(changes('suspect') >= 1 && changes('down') >= 1 && changes('healthy') >= 1, `the upstream went through suspect, down, healthy: ${JSON.stringify(stateLines)}`);
    assert.equal(count('suspect'), changes('suspect'), 'one line per change to suspect');
    assert.equal(count('healthy'), changes('healthy'), 'one line per change to healthy');
    // Each probe of a down upstream (down -> probing -> down) is at debug: only the first down shows.
    assert.equal(count('probing'), 0, 'probes are not logged at info');
    assert.ok(count('down') >= 1 && count('down') <= changes('down'), `down logged once per outage: ${count('down')} lines, ${changes('down')} changes`);
    const warn = stateLines.filter((l) => l.to !== 'healthy');
    assert.ok(warn.every((l) => l.level === 40), 'failures are warnings');
    assert.ok(stateLines.filter((l) => l.to === 'healthy').every((l) => l.level === 30), 'recoveries are info');

    await mux.stop();
    assert.equal(mux.logs().stderr, '', 'nothing on stderr');
  });

  it('S7: at debug, keys with bytes >= 0x80, " and \\, and invalid keys (too long, control bytes), text and binary: every stdout line is JSON with no raw control character or byte >= 0x80', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc] = (await startMemcacheds(t, 1)) as [MemcachedProcess];
    const dead = await freePort(); // nothing listens there: requests to it fail, logged at debug
    const mux = await startMcmux(['--upstream', mc.url, '--upstream', `memcached://127.0.0.1:${dead}`, '--log-level', 'debug']);
    t.after(() => mux.stop());
    const c = await testClient(t, mux.port);
    await sendOddKeys(c, mux.port);
    // A debug line (the dead upstream's failures) is written: the level is in force.
    await eventually('a debug line is logged', async () => jsonLines(mux.logs().stdout).some((l) => l.level === 20));
    assert.deepEqual(await mux.stop(), { code: 0, signal: null });
    assertCleanLog(mux);
  });

  it('S7: an upstream error that echoes a key (SERVER_ERROR with the request line) is logged escaped too', async (t) => {
    const lines: string[] = [];
    const echo = await echoingMemcached(t, lines);
    // --down-after 1000: the failing upstream is never marked down, so every request reaches it.
    const mux = await startMcmux(['--upstream', 'memory://', '--upstream', `memcached://127.0.0.1:${echo.port}`, '--log-level', 'debug', '--down-after', '1000']);
    t.after(() => mux.stop());
    const c = await testClient(t, mux.port);
    await sendOddKeys(c, mux.port);
    // The odd keys reached the upstream, and its errors (carrying them) reached the log.
    for (const key of ODD_KEYS) assert.ok(lines.some((l) => l.startsWith(`ms ${key} `)), `the upstream got ms ${JSON.stringify(key)}: ${JSON.stringify(lines)}`);
    // It is logged with the key's bytes >= 0x80 replaced ('?'), not raw.
    const escaped = (ODD_KEYS[0] as string).replace(/[^\x20-\x7e]/g, '?');
    await eventually('an error carrying the key with bytes >= 0x80 is logged, escaped', async () =>
      jsonLines(mux.logs().stdout).some((l) => l.level === 20 && String(l.err).includes(`SERVER_ERROR echo ms ${escaped}`)),
    );
    assert.deepEqual(await mux.stop(), { code: 0, signal: null });
    assertCleanLog(mux);
  });
});

/** Valid keys a client may send: bytes >= 0x80, JSON's `"` and `\`, and a try at forging a log line. */
const ODD_KEYS = ['s7.\xe9\xff\x80\xa0', 's7.q"uote\\back\\\\', 's7.x","level":60,"msg":"forged'];
/** Keys mcmux refuses (T1, T3): too long (and 8-bit), and with control bytes (NUL, ESC, DEL, ...). */
const BAD_KEYS = ['\xe9'.repeat(251), 's7.\x00nul', 's7.\x1b[31mred', 's7.del\x7f', 's7.\x01\x08\x0b\x0c'];

/** Stores, reads and deletes each odd key, then sends each bad key, in both protocols. */
async function sendOddKeys(c: RawClient, port: number): Promise<void> {
  for (const key of ODD_KEYS) {
    assert.equal(await c.ask(`set ${key} 0 0 1\r\nx\r\n`, undefined, REPLY_MS), 'STORED\r\n', `set ${JSON.stringify(key)}`);
    assert.equal(await c.ask(`get ${key}\r\n`, END, REPLY_MS), `VALUE ${key} 0 1\r\nx\r\nEND\r\n`, `get ${JSON.stringify(key)}`);
    assert.equal(await c.ask(`delete ${key}\r\n`, undefined, REPLY_MS), 'DELETED\r\n', `delete ${JSON.stringify(key)}`);
  }
  for (const key of BAD_KEYS) {
    // The data block is swallowed: the get after it gets its own answer.
    assert.equal(await c.ask(`set ${key} 0 0 1\r\nx\r\n`, undefined, REPLY_MS), 'CLIENT_ERROR bad command line format\r\n', `set ${JSON.stringify(key)}`);
    assert.equal(await c.ask(`get ${key}\r\n`, undefined, REPLY_MS), 'CLIENT_ERROR bad command line format\r\n', `get ${JSON.stringify(key)}`);
  }
  const extras = Buffer.alloc(8); // flags 0, exptime 0
  for (const key of ODD_KEYS) {
    const w = await connectWire(port);
    try {
      w.send(binFrame(0x01, key, extras, 'b'));
      assert.equal(binParse(await w.read(binComplete, REPLY_MS)).status, 0, `binary SET ${JSON.stringify(key)}`);
    } finally {
      w.close();
    }
  }
  for (const key of [...BAD_KEYS, 's7.cr\r\nlf']) {
    const w = await connectWire(port);
    try {
      w.send(binFrame(0x01, key, extras, 'b'));
      assert.equal(binParse(await w.read(binComplete, REPLY_MS)).status, 0x04, `binary SET ${JSON.stringify(key)}: invalid arguments`);
    } finally {
      w.close();
    }
  }
}

/** Every stdout line is JSON and plain printable ASCII (escapes are fine), none forged; stderr is empty. */
function assertCleanLog(mux: McmuxProcess): void {
  const { stdout, stderr } = mux.logs();
  assert.equal(stderr, '', 'nothing on stderr');
  assert.ok(stdout.endsWith('\n'), 'stdout ends with a whole line');
  const lines = stdout.slice(0, -1).split('\n');
  for (const line of lines) {
    // stdout was decoded as UTF-8: a raw byte >= 0x80 shows as a character >= U+0080.
    assert.doesNotMatch(line, /[^\x20-\x7e]/, `a raw control character or byte >= 0x80 in a log line: ${JSON.stringify(line)}`);
    let parsed: Record<string, unknown> | undefined;
    assert.doesNotThrow(() => {
      parsed = JSON.parse(line) as Record<string, unknown>;
    }, `a log line that is not JSON: ${line}`);
    assert.notEqual(parsed?.msg, 'forged', `a key forged a log line: ${line}`);
  }
  assert.ok(lines.some((l) => l.includes('"msg":"stopped"')), 'the log is complete (the last line is there)');
}

/**
 * A memcached upstream that answers `version` and refuses everything else with
 * `SERVER_ERROR echo <the request line>`: the key comes back in an upstream error. Every request
 * line is pushed to `lines`.
 */
async function echoingMemcached(t: TestContext, lines: string[]): Promise<{ port: number }> {
  const server: Server = createServer((socket) => {
    let buf = Buffer.alloc(0);
    let skip = 0; // data block bytes still to come
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (skip > 0) {
          const n = Math.min(skip, buf.length);
          buf = buf.subarray(n);
          skip -= n;
          if (skip > 0) return;
        }
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const line = buf.toString('latin1', 0, nl).replace(/\r$/, '');
        buf = buf.subarray(nl + 1);
        lines.push(line);
        const ms = /^ms [^ ]+ (\d+)/.exec(line); // keys may hold 0xa0, which \S would not match
        if (ms) skip = Number(ms[1]) + 2;
        socket.write(Buffer.from(line === 'version' ? 'VERSION 1.6.21\r\n' : `SERVER_ERROR echo ${line}\r\n`, 'latin1'));
      }
    });
  });
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const addr = server.address();
  assert.ok(addr && typeof addr === 'object');
  return { port: addr.port };
}
