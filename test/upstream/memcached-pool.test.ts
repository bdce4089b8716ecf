/**
 * The sharded memcached upstream against three private memcached processes, with PHP's own
 * session handler (php-memcached over libmemcached, consistent hashing on) as the ground truth:
 * what PHP wrote by its sharding, the pool finds, and the reverse; the two traps (hashing the
 * namespace, MD5 ketama) measured; multi-gets split and reassembled; a dead server with and
 * without eject.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { ConfigError, ErrorCodes, McmuxError } from '../../src/errors';
import type { HealthState, HealthyUpstream } from '../../src/router/health';
import { createMemcachedUpstream } from '../../src/upstream/memcached';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { createUpstream } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import { startMcmux } from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcacheds } from '../helpers/servers';
import { requirePhpExtension } from '../helpers/php-session';
import { connectWire } from '../helpers/wire';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };
const PHP_TIMEOUT_MS = 60_000;
const STATE_TIMEOUT_MS = 20_000;
const SESSIONS = 200;
/** php-memcached's default memcached.sess_prefix: a libmemcached namespace. */
const NS = 'memc.sess.key.';
const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Writes sessions <prefix>0000.. in ONE php process through PHP's session handler. */
const WRITE_SCRIPT = `<?php
[$_, $prefix, $n] = $argv;
for ($i = 0; $i < (int)$n; $i++) {
  session_id($prefix . sprintf('%04d', $i));
  if (!session_start()) { fwrite(STDERR, "session_start failed at $i\\n"); exit(1); }
  $_SESSION['sid'] = session_id();
  if (!session_write_close()) { fwrite(STDERR, "session_write_close failed at $i\\n"); exit(1); }
}
echo "wrote $n\\n";
`;

/** Reads them back; prints how many held their own id, and how many could not be started (lock). */
const READ_SCRIPT = `<?php
[$_, $prefix, $n] = $argv;
$found = 0; $blocked = 0;
for ($i = 0; $i < (int)$n; $i++) {
  $sid = $prefix . sprintf('%04d', $i);
  session_id($sid);
  if (!@session_start()) { $blocked++; continue; }
  if (($_SESSION['sid'] ?? null) === $sid) $found++;
  session_abort();
}
echo "$found $blocked\\n";
`;


/** Runs `script` with PHP's memcached session handler on the servers at `ports`. */
function runPhp(script: string, ports: readonly number[], args: string[], ini: string[] = []): Promise<string> {
  const argv = [
    '-d', 'session.save_handler=memcached',
    '-d', `session.save_path=${ports.map((p) => `127.0.0.1:${p}`).join(',')}`,
    '-d', 'memcached.sess_consistent_hash=On',
    '-d', 'session.use_strict_mode=0',
    '-d', 'session.use_cookies=0',
    '-d', 'session.cache_limiter=',
    '-d', 'display_errors=stderr',
    '-d', 'error_reporting=-1',
    ...ini.flatMap((s) => ['-d', s]),
    script,
    ...args,
  ];
  return new Promise((resolve, reject) => {
    execFile('php', argv, { timeout: PHP_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`php failed (${err.message}); stdout ${JSON.stringify(stdout)}; stderr ${JSON.stringify(stderr)}`));
      else if (stderr.trim() !== '') reject(new Error(`php wrote to stderr: ${stderr.trim()}`));
      else resolve(stdout.trim());
    });
  });
}

const startThree = (t: TestContext, extra: string[] = []): Promise<MemcachedProcess[]> => startMemcacheds(t, 3, extra);

function poolUrl(servers: readonly MemcachedProcess[], query = ''): string {
  return `memcached://${servers.map((s) => `127.0.0.1:${s.port}`).join(',')}${query}`;
}

function openPool(t: TestContext, servers: readonly MemcachedProcess[], query = ''): MemcachedPool {
  const u = createUpstream(poolUrl(servers, query), new Map(), ctx);
  assert.ok(u instanceof MemcachedPool, 'a multi-host memcached URL is a pool');
  t.after(() => u.close());
  return u;
}

/** A plain client of one server, to see where keys really are. */
function direct(t: TestContext, server: MemcachedProcess): Upstream {
  const u = createMemcachedUpstream(new URL(server.url), new Map(), ctx);
  t.after(() => u.close());
  return u;
}

/** Resolves when `member` is in `state` (now or by a later transition); bounded. */
function reaches(pool: MemcachedPool, member: HealthyUpstream, state: HealthState): Promise<void> {
  if (member.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const prev = pool.onMemberChange;
    const timer = setTimeout(() => {
      pool.onMemberChange = prev;
      reject(new Error(`${member.name} did not become ${state} within ${STATE_TIMEOUT_MS} ms (is ${member.state})`));
    }, STATE_TIMEOUT_MS);
    pool.onMemberChange = (u, from, to, reason) => {
      prev?.(u, from, to, reason);
      if (u === member && to === state) {
        clearTimeout(timer);
        pool.onMemberChange = prev;
        resolve();
      }
    };
  });
}

/**
 * SIGKILL, resolving on the exit. The bound's timer also keeps the event loop alive: the child
 * is unref'd, and once its sockets close nothing else may hold the loop open.
 */
function crash(server: MemcachedProcess): Promise<void> {
  const proc = server.proc;
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`memcached on ${server.port} did not exit after SIGKILL`)), STATE_TIMEOUT_MS);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    server.kill('SIGKILL');
  });
}

/** Sends writes for `member`'s keys (each fails at once) until health marks it down. */
async function driveDown(pool: MemcachedPool, member: HealthyUpstream, keys: readonly string[]): Promise<void> {
  const down = reaches(pool, member, 'down');
  const key = keys.find((k) => pool.serverFor(k) === member) as string;
  for (let i = 0; i < 20 && member.usable; i++) {
    await pool.store({ mode: 'set', key, value: b('x'), flags: 0, deadline: 0 }).catch(() => undefined);
  }
  await down;
}

function codeOf(error: unknown): string {
  return error instanceof McmuxError ? error.code : String(error);
}

const sids = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, '0')}`);

test('PHP sessions sharded by php-memcached are found by the pool, and the reverse', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!requireBinary(t, 'php', 'php-cli php-memcached') || !(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-pool-php-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const writer = join(dir, 'write.php');
  const reader = join(dir, 'read.php');
  await writeFile(writer, WRITE_SCRIPT);
  await writeFile(reader, READ_SCRIPT);
  const servers = await startThree(t);
  const ports = servers.map((s) => s.port);

  /** The share of `keys` a pool opened with `query` finds (each must hold its own id). */
  const hitRate = async (t: TestContext, query: string, ids: readonly string[]): Promise<number> => {
    const pool = openPool(t, servers, query);
    const hits = await pool.get(ids.map((id) => NS + id));
    let found = 0;
    hits.forEach((h, i) => {
      if (h) {
        assert.ok(h.value.toString('latin1').includes(`"${ids[i]}"`), `the value of ${ids[i]} is its own session`);
        found++;
      }
    });
    return found / ids.length;
  };

  const prefix = `w${randomBytes(6).toString('hex')}`;
  const written = sids(prefix, SESSIONS);
  assert.equal(await runPhp(writer, ports, [prefix, String(SESSIONS)]), `wrote ${SESSIONS}`);

  await t.test('PHP used all three servers (the control)', async (t) => {
    const perServer = await Promise.all(servers.map(async (s) => (await direct(t, s).get(written.map((id) => NS + id))).filter(Boolean).length));
    t.diagnostic(`sessions per server: ${perServer.join(', ')}`);
    assert.equal(perServer.reduce((a, c) => a + c, 0), SESSIONS, 'each session is on exactly one server');
    for (const n of perServer) assert.ok(n > SESSIONS / 10, `every server got a share: ${perServer}`);
  });

  await t.test('namespace=memc.sess.key. (ketama by default) finds 100%', async (t) => {
    assert.equal(await hitRate(t, `?namespace=${NS}`, written), 1);
  });

  await t.test('trap 1: hashing the whole key (no namespace option) finds far fewer', async (t) => {
    const rate = await hitRate(t, '', written);
    t.diagnostic(`hit rate without the namespace option: ${(rate * 100).toFixed(1)}%`);
    assert.ok(rate < 0.6, `hit rate ${rate}`);
  });

  await t.test('trap 2: distribution=libketama (MD5, OPT_LIBKETAMA_COMPATIBLE) finds far fewer', async (t) => {
    const rate = await hitRate(t, `?namespace=${NS}&distribution=libketama`, written);
    t.diagnostic(`hit rate with distribution=libketama: ${(rate * 100).toFixed(1)}%`);
    assert.ok(rate < 0.6, `hit rate ${rate}`);
  });

  await t.test('trap 3: distribution=modula finds far fewer', async (t) => {
    const rate = await hitRate(t, `?namespace=${NS}&distribution=modula`, written);
    t.diagnostic(`hit rate with distribution=modula: ${(rate * 100).toFixed(1)}%`);
    assert.ok(rate < 0.6, `hit rate ${rate}`);
  });

  await t.test('the reverse: sessions written through the pool are all read by PHP', async (t) => {
    const pool = openPool(t, servers, `?namespace=${NS}`);
    const p2 = `r${randomBytes(6).toString('hex')}`;
    const ids = sids(p2, SESSIONS);
    const deadline = Date.now() + 3600_000;
    for (const id of ids) {
      const r = await pool.store({ mode: 'set', key: NS + id, value: b(`sid|s:${id.length}:"${id}";`), flags: 0, deadline });
      assert.equal(r.status, 'STORED');
    }
    assert.equal(await runPhp(reader, ports, [p2, String(SESSIONS)]), `${SESSIONS} 0`);
  });

  await t.test('the lock key memc.sess.key.lock.<sid> is placed by lock.<sid>: PHP sees the pool\'s locks', async (t) => {
    const pool = openPool(t, servers, `?namespace=${NS}`);
    const p3 = `l${randomBytes(6).toString('hex')}`;
    const ids = sids(p3, 30);
    for (const id of ids) {
      assert.equal((await pool.store({ mode: 'add', key: `${NS}lock.${id}`, value: b('1'), flags: 0, deadline: Date.now() + 600_000 })).status, 'STORED');
    }
    // One attempt at the lock, no waiting: every session_start must find it taken.
    const quick = ['memcached.sess_lock_retries=0', 'memcached.sess_lock_wait_min=1', 'memcached.sess_lock_wait_max=1'];
    assert.equal(await runPhp(reader, ports, [p3, String(ids.length)], quick), `0 ${ids.length}`);
  });

  await t.test('the day of the switch: PHP pointed at mcmux alone reads every session it sharded before', async (t) => {
    const mux = await startMcmux(['--upstream', poolUrl(servers, `?namespace=${NS}`), '--log-level', 'warn']);
    t.after(() => mux.stop());
    // One server in save_path: PHP hashes nothing, mcmux places every key (binary protocol, the
    // session handler's default, with its lock add and delete).
    assert.equal(await runPhp(reader, [mux.port], [prefix, String(SESSIONS)]), `${SESSIONS} 0`);
  });
});

test('multi-get: split by server, issued once per server, reassembled in request order', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startThree(t);
  const pool = openPool(t, servers);
  const keys = Array.from({ length: 30 }, (_, i) => `mg:${i}`);
  for (const k of keys) assert.equal((await pool.store({ mode: 'set', key: k, value: b(`v-${k}`), flags: 7, deadline: 0 })).status, 'STORED');

  // Each key is on the server the pool names, and only there.
  const members = pool.members();
  const owner = keys.map((k) => members.indexOf(pool.serverFor(k) as HealthyUpstream));
  assert.deepEqual([...new Set(owner)].sort(), [0, 1, 2], 'the keys span the three servers');
  const clients = servers.map((s) => direct(t, s));
  for (let s = 0; s < 3; s++) {
    const hits = await (clients[s] as Upstream).get(keys);
    hits.forEach((h, i) => assert.equal(h !== undefined, owner[i] === s, `${keys[i]} on server ${s}`));
  }

  const asked = ['mg:3', 'absent:1', 'mg:0', 'mg:3', 'mg:17', 'absent:2', 'mg:0', 'mg:29'];
  const before = members.map((m) => m.stats.requests);
  const hits = await pool.get(asked);
  assert.deepEqual(hits.map((h) => h?.value.toString()), asked.map((k) => (k.startsWith('mg:') ? `v-${k}` : undefined)));
  assert.ok(hits.every((h) => h === undefined || h.flags === 7));
  const involved = new Set(asked.map((k) => pool.serverFor(k)));
  const sent = members.map((m, i) => m.stats.requests - (before[i] as number));
  assert.deepEqual(sent, members.map((m) => (involved.has(m) ? 1 : 0)), 'one request per server involved');
  assert.deepEqual(await pool.get([]), []);

  // gat through the pool: each server touches its own keys.
  const later = Date.now() + 7 * 24 * 3600_000;
  const touched = await pool.get(['mg:1', 'mg:2', 'mg:4'], later);
  assert.ok(touched.every((h) => h !== undefined));
  for (const h of await pool.get(['mg:1', 'mg:2', 'mg:4'])) assert.ok(h && Math.abs(h.deadline - later) < 3000);
});

test('a dead server, eject=false: its keys fail to read and write (never misses), the ring does not move', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startThree(t);
  const pool = openPool(t, servers);
  const members = pool.members();
  const keys = Array.from({ length: 60 }, (_, i) => `ej0:${i}`);
  for (const k of keys) await pool.store({ mode: 'set', key: k, value: b(k), flags: 0, deadline: 0 });
  const victim = members[1] as HealthyUpstream;
  const onVictim = (k: string): boolean => pool.serverFor(k) === victim;
  assert.ok(keys.some(onVictim) && !keys.every(onVictim));

  await crash(servers[1] as MemcachedProcess); // a crash
  // Before and after the server is marked down, the answer is the same.
  const partialOrDown = (e: unknown): boolean => [ErrorCodes.UPSTREAM_PARTIAL, ErrorCodes.UPSTREAM_DOWN].includes(codeOf(e) as never);
  for (const phase of ['failing', 'down']) {
    // A miss would tell the client (from the last upstream) that the session is gone.
    for (const k of keys.filter(onVictim).slice(0, 3)) await assert.rejects(pool.get([k]), partialOrDown, `${phase}: reading ${k} fails`);
    await assert.rejects(pool.get(keys), partialOrDown, `${phase}: a multi-get with its keys fails`);
    const others = keys.filter((k) => !onVictim(k));
    assert.deepEqual((await pool.get(others)).map((h) => h?.value.toString()), others, `${phase}: the other servers' keys are read`);
    for (const k of keys) {
      const w = pool.store({ mode: 'set', key: k, value: b(k), flags: 0, deadline: 0 });
      if (onVictim(k)) await assert.rejects(w, partialOrDown, `${phase}: writing ${k} fails`);
      else assert.equal((await w).status, 'STORED');
    }
    if (phase === 'failing') await reaches(pool, victim, 'down');
  }
  // Down: refused at once, without touching the network, and the ring is unchanged.
  await assert.rejects(pool.delete(keys.find(onVictim) as string), (e) => codeOf(e) === ErrorCodes.UPSTREAM_DOWN);
  assert.ok(keys.filter(onVictim).every((k) => pool.serverFor(k) === victim));
  await pool.probe(); // any live server answers
  await assert.rejects(pool.flush(), (e) => codeOf(e) === ErrorCodes.UPSTREAM_DOWN, 'a flush that missed a server fails');

  // All servers down: now the pool itself fails (and its health wrapper must count that).
  await Promise.all([crash(servers[0] as MemcachedProcess), crash(servers[2] as MemcachedProcess)]);
  for (const i of [0, 2]) await driveDown(pool, members[i] as HealthyUpstream, keys);
  const io = (e: unknown): boolean => codeOf(e) === ErrorCodes.UPSTREAM_UNREACHABLE;
  await assert.rejects(pool.get(keys), io);
  await assert.rejects(pool.store({ mode: 'set', key: 'x', value: b('x'), flags: 0, deadline: 0 }), io);
  await assert.rejects(pool.probe(), io);
  // One comes back: once its own probe finds it, the pool answers again.
  const healthy = reaches(pool, members[0] as HealthyUpstream, 'healthy');
  await (servers[0] as MemcachedProcess).restart();
  await healthy;
  await pool.probe();
  const k0 = keys.find((k) => pool.serverFor(k) === members[0]) as string;
  assert.equal((await pool.store({ mode: 'set', key: k0, value: b('back'), flags: 0, deadline: 0 })).status, 'STORED');
  assert.equal((await pool.get([k0]))[0]?.value.toString(), 'back');
});

test('a dead server, eject=true: its keys move to the next point, and back when it returns', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startThree(t);
  const pool = openPool(t, servers, '?eject=true');
  const members = pool.members();
  const keys = Array.from({ length: 60 }, (_, i) => `ej1:${i}`);
  for (const k of keys) await pool.store({ mode: 'set', key: k, value: b(k), flags: 0, deadline: 0 });
  const victim = members[2] as HealthyUpstream;
  const home = new Map(keys.map((k) => [k, pool.serverFor(k)]));
  const moved = keys.filter((k) => home.get(k) === victim);
  assert.ok(moved.length > 0 && moved.length < keys.length);

  await crash(servers[2] as MemcachedProcess);
  // Requests to its keys fail until health marks it down (3 consecutive failures).
  await driveDown(pool, victim, moved);
  for (const k of keys) {
    if (home.get(k) === victim) assert.notEqual(pool.serverFor(k), victim, `${k} moved off the dead server`);
    else assert.equal(pool.serverFor(k), home.get(k), `${k} stayed (consistent hashing)`);
  }
  const hits = await pool.get(keys);
  hits.forEach((h, i) => assert.equal(h?.value.toString(), moved.includes(keys[i] as string) ? undefined : keys[i]));
  for (const k of moved) assert.equal((await pool.store({ mode: 'set', key: k, value: b(`moved-${k}`), flags: 0, deadline: 0 })).status, 'STORED');
  assert.deepEqual((await pool.get(moved)).map((h) => h?.value.toString()), moved.map((k) => `moved-${k}`));

  // It comes back (empty): probed healthy, the ring is whole again, its keys go home.
  const healthy = reaches(pool, victim, 'healthy');
  await (servers[2] as MemcachedProcess).restart();
  await healthy;
  for (const k of keys) assert.equal(pool.serverFor(k), home.get(k));
  assert.deepEqual((await pool.get(moved)).map((h) => h?.value), moved.map(() => undefined), 'home again, and empty');
});

test('options, name and members', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startThree(t);
  const url = poolUrl(servers);
  const pool = openPool(t, servers, '?namespace=memc.sess.key.&timeout=500&connections=1');
  assert.equal(pool.name, `${url}?namespace=memc.sess.key.&timeout=500&connections=1`);
  assert.equal(pool.scheme, 'memcached');
  assert.equal(pool.timeoutMs, 500);
  assert.deepEqual(pool.members().map((m) => m.name), servers.map((s) => s.url));
  assert.deepEqual(pool.settings, { distribution: 'ketama', namespace: 'memc.sess.key.', eject: false });
  // The namespace is left out of the hash only: the full key goes to the server.
  const sid = 'abc123';
  await pool.store({ mode: 'set', key: NS + sid, value: b('s'), flags: 0, deadline: 0 });
  const m = pool.members().indexOf(pool.serverFor(NS + sid) as HealthyUpstream);
  assert.equal(pool.serverFor(sid), pool.serverFor(NS + sid));
  assert.equal((await direct(t, servers[m] as MemcachedProcess).get([NS + sid]))[0]?.value.toString(), 's');
  assert.equal(pool.stats.requests, pool.members().reduce((a, x) => a + x.stats.requests, 0));

  const bad: Array<[string, RegExp]> = [
    ['?distribution=ketama2', /option distribution="ketama2" is invalid/],
    ['?weights=3,1,1', /weights has no effect with distribution=ketama/],
    ['?distribution=ketama-weighted&weights=3,1', /expected 3 integers/],
    ['?distribution=libketama&weights=3,0,1', /expected 3 integers/],
    ['?eject=yes', /option eject="yes" is invalid/],
    ['?namespace=a%20b', /option namespace/],
    ['?nmespace=x', /unknown option "nmespace"/],
    ['?timeout=0', /option timeout="0" is invalid/],
  ];
  for (const [query, message] of bad) {
    assert.throws(() => createUpstream(url + query, new Map(), ctx), (e) => e instanceof ConfigError && message.test(e.message), query);
  }
  const dup = `memcached://127.0.0.1:${servers[0]?.port},127.0.0.1:${servers[0]?.port}`;
  assert.throws(() => createUpstream(dup, new Map(), ctx), /listed twice/);
  // TOML keys arrive as extra options and win over the query string.
  const weighted = createUpstream(url, new Map([['distribution', 'ketama-weighted'], ['weights', '3,1,1']]), ctx) as MemcachedPool;
  t.after(() => weighted.close());
  assert.equal(weighted.settings.distribution, 'ketama-weighted');
  // A single host stays a plain memcached upstream.
  const single = createUpstream(servers[0]?.url as string, new Map(), ctx);
  t.after(() => single.close());
  assert.ok(!(single instanceof MemcachedPool));
});

// Found by a review of the memcached driver and pool.

/** memcached with a 1 KiB item limit: a 2000-byte value is refused (SERVER_ERROR object too large for cache). */
const SMALL_ITEMS = ['-I', '1k', '-o', 'slab_chunk_max=512'];
const BIG = 'x'.repeat(2000);

function errorOf(p: Promise<unknown>): Promise<McmuxError> {
  return p.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => {
      assert.ok(e instanceof McmuxError, String(e));
      return e;
    },
  );
}

// The router decides a conditional command on the first upstream that answers, and fails over
// past one only when its error shows nothing was applied there (authority.ts `unapplied`:
// UPSTREAM_DOWN, _BUSY, _REFUSED). README: "A `cas` fails over only past an authority that cannot
// have applied it (down, busy, or its answer an error of the store)", and such an authority "is
// not journaled at all". A pool re-raised a server's BUSY and REFUSED as UPSTREAM_PARTIAL, which
// reads as "may have been applied".
test('a pool server that is busy or refuses a store: the pool keeps the code that says nothing was applied', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 2, SMALL_ITEMS);
  const pool = openPool(t, servers, '?max-queue=1');
  const members = pool.members();
  const key = Array.from({ length: 50 }, (_, i) => `busy:${i}`).find((k) => pool.serverFor(k) === members[0]) as string;

  // Two requests for one server in one synchronous run: the second finds max-queue=1 taken.
  const first = pool.store({ mode: 'set', key, value: b('a'), flags: 0, deadline: 0 });
  const busy = await errorOf(pool.store({ mode: 'set', key, value: b('b'), flags: 0, deadline: 0 }));
  assert.equal((await first).status, 'STORED');
  assert.equal(busy.late, false);
  assert.equal(busy.origin, ErrorCodes.UPSTREAM_BUSY, `a busy server's refusal (nothing sent) came back as ${busy.code}, which the router takes as "may have been applied"`);

  // memcached's own refusal (SERVER_ERROR object too large for cache): nothing was stored.
  const refused = await errorOf(pool.store({ mode: 'cas', key, value: b(BIG), flags: 0, deadline: 0, cas: 1n }));
  assert.equal(refused.late, false);
  assert.match(refused.message, /SERVER_ERROR object too large/);
  assert.equal(refused.origin, ErrorCodes.UPSTREAM_REFUSED, `a server's SERVER_ERROR came back as ${refused.code}, which the router takes as "may have been applied"`);
  // It still does not count against the pool as a whole: the other server is fine.
  assert.ok((members[1] as HealthyUpstream).usable);
});

test('a flush that one server of the pool fails (a timeout) fails as PARTIAL: not a failure of the pool as a whole', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 2);
  const pool = openPool(t, servers, '?timeout=200');
  // Each server answered, not only the first to: a probe of the paused one still in flight would
  // time out before the flush behind it, which then fails as discarded (IO), not as a timeout.
  await Promise.all(pool.members().map((m) => m.probe()));
  await (servers[0] as MemcachedProcess).pause();
  t.after(() => (servers[0] as MemcachedProcess).resume());
  const failed = await errorOf(pool.flush());
  // Raw, the timeout counted against the pool's own health too: three flush_all while one server
  // hung took the pool down for every key, the other server's included.
  assert.equal(failed.code, ErrorCodes.UPSTREAM_PARTIAL, failed.message);
  assert.equal(failed.origin, ErrorCodes.UPSTREAM_TIMEOUT);
  assert.equal(failed.late, true, 'the flush may still land there');
});

/** set, gets, then a cas too large for memcached's -I through mcmux; returns the cas reply line. */
async function casTooLarge(t: TestContext, url: string): Promise<string> {
  const mux = await startMcmux(['--upstream', url, '--upstream', 'memory://', '--log-level', 'error']);
  t.after(() => mux.stop());
  const wire = await connectWire(mux.port);
  t.after(() => wire.close());
  assert.equal(await wire.ask('set sess 0 0 1\r\na\r\n'), 'STORED\r\n');
  const gets = await wire.ask('gets sess\r\n', /END\r\n$/);
  const unique = /^VALUE sess 0 1 (\d+)\r\n/.exec(gets)?.[1];
  assert.ok(unique !== undefined, gets);
  return wire.ask(`cas sess 0 0 ${BIG.length} ${unique}\r\n${BIG}\r\n`);
}

test('a cas refused by the pool server of its key fails over as with one memcached (EXISTS), not SERVER_ERROR "may have been applied"', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [one] = await startMemcacheds(t, 1, SMALL_ITEMS);
  const single = await casTooLarge(t, (one as MemcachedProcess).url);
  // The control: memcached refused it (nothing applied), the next upstream cannot check the
  // unique and fails safe.
  assert.equal(single, 'EXISTS\r\n', 'one memcached upstream');
  const pair = await startMemcacheds(t, 2, SMALL_ITEMS);
  const pooled = await casTooLarge(t, poolUrl(pair));
  assert.equal(pooled, single, 'a pool of two memcached answers the same cas differently');
});
