/**
 * Review of the Redis driver (src/upstream/redis.ts) under faults and hostile conditions.
 * Tests marked FINDING failed on the code they were written against (99c4bee; fixed in 2fd126c); tests marked
 * HOLDS are guards for suspicions that were checked and found correct. Private redis-servers
 * only, each on a free port in its own temporary directory.
 */

import assert from 'node:assert/strict';
import { type Socket, createServer } from 'node:net';
import { type TestContext, test } from 'node:test';
import { Redis } from 'ioredis';
import { applyArith, parseCounter } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { createUpstream } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import { b, codeOf, getOne, set } from '../helpers/driver-calls';
import { startFaultProxy } from '../helpers/fault-proxy';
import { eventually } from '../helpers/poll';
import { requireBinary } from '../helpers/servers';
import { type RedisProcess, startRedis } from './targets/redis';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };

function open(url: string, options: Record<string, string> = {}): Upstream {
  return createUpstream(url, new Map(Object.entries(options)), ctx);
}

/** A plain ioredis client, to look at (and play the other application on) the server. */
function raw(server: RedisProcess, db = 0): Redis {
  return new Redis({ host: '127.0.0.1', port: server.port, db, maxRetriesPerRequest: 0, protocol: 2 });
}

/**
 * A private redis-server (`args`), a plain client on its database 0 and the upstream at
 * `url(server)`, all stopped after the test.
 */
async function redisRig(t: TestContext, url: (s: RedisProcess) => string, args: string[] = []): Promise<{ raw: Redis; up: Upstream }> {
  const server = await startRedis(args);
  const other = raw(server);
  const up = open(url(server));
  t.after(async () => {
    await up.close();
    other.disconnect();
    await server.stop();
  });
  return { raw: other, up };
}

const settle = (p: Promise<unknown>): Promise<string> =>
  p.then(
    () => 'ok',
    (e: unknown) => codeOf(e),
  );

// FINDING 1. The database of the URL (`redis://host:port/7`) is selected by ioredis during its
// connection handshake, and ioredis only *emits* a failed SELECT as an 'error' event
// (event_handler.js getHandshakeCommands: errorHandler silentEmit) and goes on to 'ready' with
// the connection still on database 0. The driver's 'error' listener (redis.ts:343-348) only
// records the message, so every request runs on database 0: a probe says ok (`mcmux check`
// passes), sessions are written into another application's database 0, and a `flush_all`
// (redis.ts flush(): FLUSHDB ASYNC) wipes that other database. Happens for an index beyond the
// server's `databases` (a typo, or a Redis restarted with a smaller `databases`) and for an ACL
// user not allowed SELECT (NOPERM). Harm: sessions land where the operator did not put them, and
// flush_all destroys unrelated data; no error anywhere says so.
// Suggested fix: treat a SELECT failure as a failed connection: in the 'error' listener (or a
// check of the selected db before 'ready', e.g. select the db from the driver's own ready
// handler before loading the scripts and destroy the stream if it fails), destroy the stream and
// keep the server's message as lastError, so requests fail UNREACHABLE "ERR DB index is out of
// range" and the first connection rejects firstReady.
test('FINDING: a database the server refuses (/7 of 4) must not fall back to database 0: no writes there, flush_all must not wipe it', async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { raw: other, up } = await redisRig(t, (s) => `${s.url}/7`, ['--databases', '4']);
  await other.set('other-app:data', 'precious');
  const probe = await settle(up.probe());
  const stored = await settle(set(up, 'sess1', 'v'));
  const flushed = await settle(up.flush());
  assert.deepEqual(await other.keys('*'), ['other-app:data'], `database 0 of another application is untouched (probe ${probe}, set ${stored}, flush ${flushed})`);
  assert.notEqual(probe, 'ok', 'a database the server refuses is not a usable upstream (mcmux check)');
});

test('FINDING: an ACL user not allowed SELECT (/3) must not fall back to database 0', async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { raw: other, up } = await redisRig(t, (s) => `redis://sess:sesspw@127.0.0.1:${s.port}/3`, ['--user', 'sess', 'on', '>sesspw', '~*', '&*', '+@all', '-select']);
  await other.set('other-app:data', 'precious');
  const stored = await settle(set(up, 'sess1', 'v'));
  const flushed = await settle(up.flush());
  assert.deepEqual(await other.keys('*'), ['other-app:data'], `database 0 is untouched (set ${stored}, flush ${flushed})`);
});

// FINDING 2 (minor). A key of another Redis type under an item's name (another application
// sharing the database without a prefix, or an operator's HSET) reads as a miss (LUA_GET uses
// redis.pcall) and is NOT_FOUND to touch, but add/replace/cas/append/prepend/incr run
// redis.call('GETRANGE'/'GET') on it and fail with WRONGTYPE, which the driver reports as
// UPSTREAM_REFUSED (redis.ts:121 and :173). So the key that every read reports absent can never
// be locked on this store: `add lock.<sid>` is a SERVER_ERROR for as long as the foreign key is
// there when this Redis is the only upstream (or the only one clean for the key), and incr
// answers an error instead of NOT_FOUND. memcached answers add STORED / incr NOT_FOUND for a key
// a get misses, and the driver already applies that rule to a foreign string shorter than the
// header (docs/drivers.md: "no item to any command, as to a read").
// Suggested fix: in LUA_STORE and LUA_ARITH read with redis.pcall (or check TYPE) and treat a
// non-string as no item, as LUA_GET and LUA_TOUCH do (add/set then overwrite it with SET).
test('FINDING: a key of another type, which a get reads as a miss, is a miss to add and incr too (not WRONGTYPE)', async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { raw: other, up } = await redisRig(t, (s) => s.url);
  await other.hset('lock.s1', 'owner', 'another app');
  await other.hset('counter', 'n', '1');
  assert.equal(await getOne(up, 'lock.s1'), undefined, 'a get reads it as a miss');
  assert.equal(await up.touch('lock.s1', 0), 'NOT_FOUND', 'touch too');
  const added = await up.store({ mode: 'add', key: 'lock.s1', value: b('holder'), flags: 0, deadline: 0 }).then(
    (r) => r.status,
    (e: unknown) => codeOf(e),
  );
  const incr = await up.arith('incr', 'counter', 1n).then(
    (r) => r.status,
    (e: unknown) => codeOf(e),
  );
  assert.deepEqual({ added, incr }, { added: 'STORED', incr: 'NOT_FOUND' });
});

// HOLDS. Redis at maxmemory with noeviction: a script without flags is refused at its first
// write (INCR of the cas counter, before anything else is written), so a refusal is truly "not
// applied" (UPSTREAM_REFUSED, not late), unlike memcached, which drops the item of an ms it
// cannot store (review-memcached-faults.test.ts). A held lock still answers NOT_STORED (decided
// before any write), a refused add leaves no item, and a refused set keeps the old value, which
// is what the router's journal assumes of a refused write.
test('HOLDS: redis out of memory (noeviction): refused writes changed nothing; a held lock is still NOT_STORED', async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { raw: admin, up } = await redisRig(t, (s) => s.url, ['--maxmemory-policy', 'noeviction']);
  await set(up, 'lock.s1', 'holder');
  await set(up, 'sess', 'old');
  await set(up, 'n', '5');
  await admin.config('SET', 'maxmemory', '1'); // far below what it uses: every write is refused
  assert.equal((await up.store({ mode: 'add', key: 'lock.s1', value: b('thief'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
  const refused = async (p: Promise<unknown>): Promise<void> => {
    const err = await p.then(() => assert.fail('refused'), (e: unknown) => e);
    assert.ok(err instanceof McmuxError && err.code === ErrorCodes.UPSTREAM_REFUSED && !err.late, String(err));
    assert.match(err.message, /OOM/);
  };
  await refused(up.store({ mode: 'add', key: 'lock.s2', value: b('x'), flags: 0, deadline: 0 }));
  await refused(up.store({ mode: 'set', key: 'sess', value: b('new'), flags: 0, deadline: 0 }));
  await refused(up.store({ mode: 'set', key: 'sess', value: b('new'), flags: 0, deadline: 1 })); // an expired set
  await refused(up.arith('incr', 'n', 1n));
  assert.equal(await up.delete('n'), 'DELETED', 'a delete frees memory: allowed');
  await admin.config('SET', 'maxmemory', '0');
  const [lock, lock2, sess] = await up.get(['lock.s1', 'lock.s2', 'sess']);
  assert.deepEqual([lock?.value.toString(), lock2, sess?.value.toString()], ['holder', undefined, 'old']);
});

// HOLDS. A connection cut while many replies are still on their way (replies trickling through
// a proxy): every promise settles, no request gets another's reply, no incr result repeats.
test('HOLDS: a connection cut in the middle of 3000 pipelined requests: all settle, none paired with another reply', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const server = await startRedis();
  const proxy = await startFaultProxy(server.port);
  const up = open(`redis://127.0.0.1:${proxy.port}`, { timeout: '5000' });
  t.after(async () => {
    await up.close();
    await proxy.close();
    await server.stop();
  });
  await Promise.all(Array.from({ length: 200 }, (_, i) => set(up, `k${i}`, `value of k${i}`)));
  await Promise.all(Array.from({ length: 7 }, (_, i) => set(up, `c${i}`, '0')));
  proxy.slice(50);
  let settled = 0;
  const count = (): void => {
    if (++settled === 300) proxy.cut();
  };
  const incrs: Array<Promise<bigint>> = [];
  const gets: Array<Promise<void>> = [];
  for (let i = 0; i < 3000; i++) {
    if (i % 3 === 0) {
      const p = up.arith('incr', `c${i % 7}`, 1n).then((r) => {
        assert.equal(r.status, 'OK'); // every counter exists: anything else is another request's reply
        return r.status === 'OK' ? BigInt(i % 7) * 1_000_000n + r.value : -1n;
      });
      incrs.push(p);
      p.then(count, count);
    } else {
      const k = `k${i % 200}`;
      const p = up.get([k]).then((h) => assert.equal(h[0]?.value.toString(), `value of ${k}`));
      gets.push(p);
      p.then(count, count);
    }
  }
  const results = await Promise.allSettled([...incrs, ...gets]);
  for (const r of results) {
    if (r.status === 'rejected') assert.ok(r.reason instanceof McmuxError, `a driver error, not a mismatch: ${String(r.reason)}`);
  }
  const values = (await Promise.allSettled(incrs)).flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  assert.equal(new Set(values).size, values.length, 'no incr result twice');
  assert.ok(results.some((r) => r.status === 'rejected'), 'the cut failed some requests');
});

// HOLDS. Redis restarted empty (its script cache gone) under steady load: the scripts are loaded
// on the new connection before any request on it runs, so no request fails with NOSCRIPT; the
// reconnect is reported once (the cold detector's cue).
test('HOLDS: a redis restarted empty under load: no request fails for missing scripts, the reconnect is reported', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const server = await startRedis();
  const up = open(server.url, { timeout: '1000' });
  let reconnects = 0;
  up.onReconnect = () => reconnects++;
  t.after(async () => {
    await up.close();
    await server.stop();
  });
  await set(up, 'k', 'v');
  const messages: string[] = [];
  let stop = false;
  let oks = 0;
  const loop = async (): Promise<void> => {
    while (!stop) {
      try {
        await up.store({ mode: 'set', key: 'k', value: b('v'), flags: 0, deadline: 0 });
        oks++;
      } catch (err) {
        messages.push(String(err));
        await new Promise((r) => setImmediate(r));
      }
    }
  };
  const loops = Array.from({ length: 8 }, loop);
  await server.restart();
  const before = oks;
  try {
    await eventually('200 writes run after the restart', () => oks >= before + 200, { timeoutMs: 15_000, every: 5 });
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  assert.deepEqual(messages.filter((m) => /lost the scripts|NOSCRIPT/.test(m)), []);
  assert.equal(reconnects, 1);
});

// HOLDS. incr/decr read the value as memcached's safe_strtoull does (command.ts parseCounter):
// every C white space, NUL after the digits, the 2^63 edge of "-n", 2^64-1 with leading zeros.
// The Redis reviewer's note of last session: a request that waited for the very first connection
// (a server that accepts and never answers the ready check: a hung redis, a wrong port behind a
// proxy) and timed out was reported as TIMEOUT, which the router takes as "sent, may land late"
// (it journals the key as unknown and holds it for the late window). It was never sent: it is
// UNREACHABLE now.
test('a request that times out waiting for the first connection is UNREACHABLE (never sent), not a late TIMEOUT', async (t) => {
  const sockets: Socket[] = [];
  const silent = createServer((s) => sockets.push(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const port = (silent.address() as { port: number }).port;
  const up = createUpstream(`redis://127.0.0.1:${port}`, new Map([['timeout', '200']]), ctx);
  t.after(() => up.close());
  const err = await getOne(up, 'k').then(
    () => assert.fail('answered by a server that says nothing'),
    (e: unknown) => e,
  );
  assert.equal(codeOf(err), ErrorCodes.UPSTREAM_UNREACHABLE, String(err));
  assert.equal((err as McmuxError).late, false);
  assert.ok(sockets.length > 0, 'it did connect: the wait was for the ready check');
});

test('HOLDS: incr/decr on odd values agree with parseCounter/applyArith', async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const server = await startRedis();
  const up = open(server.url);
  t.after(async () => {
    await up.close();
    await server.stop();
  });
  const values = ['-', '+', ' - 5', '\v5', '\f5', '\r5', '\n5', '\t5\t', '5\0abc', '-18446744073709551615', '-9223372036854775808', '-9223372036854775809', '-0', '+-5', '0000000000000000000000000000000000000000000018446744073709551615', ' ', '\xa05', '5\xa0', '123456789012345678901', '-10000000000'];
  const show = (x: unknown): string => JSON.stringify(x, (_, y: unknown) => (typeof y === 'bigint' ? String(y) : y));
  const wrong: string[] = [];
  for (const v of values) {
    for (const [op, delta] of [['incr', 1n], ['decr', 1n], ['incr', 18446744073709551615n], ['decr', 10000000000n]] as const) {
      await set(up, 'n', b(v));
      const got = await up.arith(op, 'n', delta);
      const n = parseCounter(b(v));
      const want = n === undefined ? { status: 'NON_NUMERIC' } : applyArith(op, n, delta);
      const g = got.status === 'OK' ? got.value : got;
      if (show(g) !== show(want)) wrong.push(`${show(v)} ${op} ${delta}: ${show(g)} != ${show(want)}`);
    }
  }
  assert.deepEqual(wrong, []);
});

