import assert from 'node:assert/strict';
import { type AddressInfo, type Socket, createServer } from 'node:net';
import { type TestContext, test } from 'node:test';
import { EXPIRED } from '../../src/command/command';
import { ConfigError, ErrorCodes, McmuxError } from '../../src/errors';
import { createMemcachedUpstream } from '../../src/upstream/memcached';
import type { ArithResult, Upstream } from '../../src/upstream/upstream';

/** The number of an OK arith result (its cas is checked on its own), or the result itself. */
const okValue = (r: ArithResult): unknown => (r.status === 'OK' ? r.value : r);
import { b, codeOf, getOne, retrying, set } from '../helpers/driver-calls';
import { type MemcachedProcess, freePort, requireBinary, startMemcached } from '../helpers/servers';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };

function open(url: string, options: Record<string, string> = {}): Upstream {
  return createMemcachedUpstream(new URL(url), new Map(Object.entries(options)), ctx);
}

test('memcached upstream against a real memcached', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc = await startMemcached();
  const up = open(mc.url);
  t.after(async () => {
    await up.close();
    await mc.stop();
  });

  await t.test('name, scheme, options', () => {
    assert.equal(up.name, mc.url);
    assert.equal(up.scheme, 'memcached');
    assert.equal(up.timeoutMs, 2000);
    assert.throws(() => open(mc.url, { tiemout: '5' }), ConfigError);
    assert.throws(() => open(mc.url, { timeout: '0' }), ConfigError);
    assert.throws(() => open(mc.url, { connections: '65' }), ConfigError);
    assert.throws(() => open(mc.url, { 'max-queue': 'x' }), ConfigError);
    assert.equal(createMemcachedUpstream(new URL(mc.url), new Map(), { defaultTimeoutMs: undefined, maxItemSize: 1 }).timeoutMs, 250);
  });

  await t.test('probe', async () => {
    await up.probe();
  });

  await t.test('get: hit, miss, and a multi-get aligned with its keys, duplicates included', async () => {
    await set(up, 'g:a', 'A');
    await set(up, 'g:b', 'BB');
    assert.equal(await getOne(up, 'g:none'), undefined);
    const hits = await up.get(['g:a', 'g:none', 'g:b', 'g:a', 'g:none2']);
    assert.deepEqual(
      hits.map((h) => h?.value.toString()),
      ['A', undefined, 'BB', 'A', undefined],
    );
    assert.deepEqual(await up.get([]), []);
  });

  await t.test('get valueOnly: value and flags only (no cas, no deadline fetched)', async () => {
    await up.store({ mode: 'set', key: 'vo:k', value: Buffer.from('V'), flags: 7, deadline: Date.now() + 60_000 });
    const [full] = await up.get(['vo:k']);
    assert.ok(full && full.cas > 0n && full.deadline > 0, 'a full get has both');
    const [hit] = await up.get(['vo:k'], undefined, true);
    assert.deepEqual(hit, { value: Buffer.from('V'), flags: 7, cas: 0n, deadline: 0 });
    assert.deepEqual(await up.get(['vo:none'], undefined, true), [undefined]);
  });

  await t.test('flags 0, 65535 and 4294967295 round-trip', async () => {
    for (const flags of [0, 65535, 4294967295]) {
      await set(up, 'f:k', 'v', flags);
      assert.equal((await getOne(up, 'f:k'))?.flags, flags);
    }
  });

  await t.test('binary values, empty values, latin1 keys, large values', async () => {
    const bin = Buffer.from([0x0d, 0x0a, 0x00, 0xff, 0x0d, 0x0a, 0x45, 0x4e, 0x44, 0x0d, 0x0a]);
    await set(up, 'bin', bin);
    assert.deepEqual((await getOne(up, 'bin'))?.value, bin);
    await set(up, 'empty', b(''));
    assert.deepEqual((await getOne(up, 'empty'))?.value, b(''));
    await set(up, 'caf\xe9\xff', 'latin1');
    assert.equal((await getOne(up, 'caf\xe9\xff'))?.value.toString(), 'latin1');
    const big = Buffer.alloc(500_000, 'z');
    big.write('\r\n', 1234);
    await set(up, 'big', big);
    assert.ok((await getOne(up, 'big'))?.value.equals(big));
  });

  await t.test('a value over the item limit is refused, and the connection stays in step', async () => {
    await set(up, 'huge', 'small');
    await assert.rejects(up.store({ mode: 'set', key: 'huge', value: Buffer.alloc(2 * 1024 * 1024), flags: 0, deadline: 0 }), (err) => codeOf(err) === ErrorCodes.UPSTREAM_REFUSED);
    const hits = await Promise.all([getOne(up, 'huge'), getOne(up, 'bin'), getOne(up, 'huge')]);
    assert.equal(hits[1]?.value[3], 0xff);
    assert.ok(hits[0] === undefined || hits[0].value.toString() === 'small');
  });

  await t.test('store modes: set, add, replace, append, prepend', async () => {
    await up.delete('m:k');
    const store = (mode: 'set' | 'add' | 'replace' | 'append' | 'prepend', value: string, flags = 0, deadline = 0) =>
      up.store({ mode, key: 'm:k', value: b(value), flags, deadline });
    assert.equal((await store('replace', 'x')).status, 'NOT_STORED');
    assert.equal((await store('append', 'x')).status, 'NOT_STORED');
    assert.equal((await store('prepend', 'x')).status, 'NOT_STORED');
    assert.equal((await store('add', 'mid', 7, Date.now() + 100_000)).status, 'STORED');
    assert.equal((await store('add', 'again')).status, 'NOT_STORED');
    assert.equal((await store('append', '>', 9, 0)).status, 'STORED');
    assert.equal((await store('prepend', '<', 9, 0)).status, 'STORED');
    const hit = await getOne(up, 'm:k');
    assert.equal(hit?.value.toString(), '<mid>');
    assert.equal(hit?.flags, 7, 'append/prepend keep the flags');
    assert.ok(hit && hit.deadline > Date.now() + 90_000, 'append/prepend keep the ttl');
    assert.equal((await store('replace', 'new', 3)).status, 'STORED');
    assert.deepEqual([(await getOne(up, 'm:k'))?.value.toString(), (await getOne(up, 'm:k'))?.flags], ['new', 3]);
  });

  await t.test('cas: success, EXISTS, NOT_FOUND', async () => {
    await set(up, 'c:k', 'one');
    const cas = (await getOne(up, 'c:k'))?.cas as bigint;
    const ok = await up.store({ mode: 'cas', key: 'c:k', value: b('two'), flags: 0, deadline: 0, cas });
    assert.equal(ok.status, 'STORED');
    assert.notEqual(ok.cas, cas);
    assert.equal((await getOne(up, 'c:k'))?.cas, ok.cas, 'the cas of a store is the cas a get reports');
    const stale = await up.store({ mode: 'cas', key: 'c:k', value: b('three'), flags: 0, deadline: 0, cas });
    assert.equal(stale.status, 'EXISTS');
    const missing = await up.store({ mode: 'cas', key: 'c:none', value: b('x'), flags: 0, deadline: 0, cas });
    assert.equal(missing.status, 'NOT_FOUND');
    assert.equal((await getOne(up, 'c:k'))?.value.toString(), 'two');
  });

  await t.test('a deadline in the past leaves the key absent', async () => {
    for (const deadline of [EXPIRED, Date.now() - 5000]) {
      await set(up, 'x:k', 'live');
      await set(up, 'x:k', 'dead', 0, deadline);
      assert.equal(await getOne(up, 'x:k'), undefined);
    }
  });

  await t.test('get reports the remaining lifetime as a deadline', async () => {
    const deadline = Date.now() + 100_000;
    await set(up, 't:k', 'v', 0, deadline);
    const hit = await getOne(up, 't:k');
    assert.ok(hit && Math.abs(hit.deadline - deadline) <= 2000, `${hit?.deadline} vs ${deadline}`);
    await set(up, 't:never', 'v', 0, 0);
    assert.equal((await getOne(up, 't:never'))?.deadline, 0);
  });

  await t.test('gat replaces the deadline of each hit', async () => {
    await set(up, 'gat:a', 'a', 0, 0);
    await set(up, 'gat:b', 'b', 0, Date.now() + 10_000);
    const touch = Date.now() + 500_000;
    const hits = await up.get(['gat:a', 'gat:none', 'gat:b'], touch);
    assert.deepEqual(
      hits.map((h) => h?.deadline),
      [touch, undefined, touch],
    );
    for (const key of ['gat:a', 'gat:b']) {
      const hit = await getOne(up, key);
      assert.ok(hit && Math.abs(hit.deadline - touch) <= 2000, key);
    }
    const never = await up.get(['gat:a'], 0);
    assert.equal(never[0]?.deadline, 0);
    assert.equal((await getOne(up, 'gat:a'))?.deadline, 0);
    await up.get(['gat:a'], EXPIRED);
    assert.equal(await getOne(up, 'gat:a'), undefined, 'a gat to a past deadline expires the key');
  });

  await t.test('delete', async () => {
    await set(up, 'd:k', 'v');
    assert.equal(await up.delete('d:k'), 'DELETED');
    assert.equal(await up.delete('d:k'), 'NOT_FOUND');
    assert.equal(await getOne(up, 'd:k'), undefined);
  });

  await t.test('touch', async () => {
    await set(up, 'to:k', 'v', 5, 0);
    const deadline = Date.now() + 300_000;
    assert.equal(await up.touch('to:k', deadline), 'TOUCHED');
    const hit = await getOne(up, 'to:k');
    assert.ok(hit && Math.abs(hit.deadline - deadline) <= 2000);
    assert.equal(hit.value.toString(), 'v');
    assert.equal(await up.touch('to:none', deadline), 'NOT_FOUND');
    assert.equal(await up.touch('to:k', EXPIRED), 'TOUCHED');
    assert.equal(await getOne(up, 'to:k'), undefined);
  });

  await t.test('incr and decr', async () => {
    const deadline = Date.now() + 200_000;
    await set(up, 'n:k', '5', 0, deadline);
    assert.deepEqual(okValue(await up.arith('incr', 'n:k', 3n)), 8n);
    assert.deepEqual(okValue(await up.arith('decr', 'n:k', 100n)), 0n, 'decr floors at 0');
    const hit = await getOne(up, 'n:k');
    assert.ok(hit && Math.abs(hit.deadline - deadline) <= 2000, 'expiry kept');
    await set(up, 'n:k', '18446744073709551615');
    assert.deepEqual(okValue(await up.arith('incr', 'n:k', 1n)), 0n, 'incr wraps at 2^64');
    await set(up, 'n:k', '5');
    assert.deepEqual(okValue(await up.arith('incr', 'n:k', 18446744073709551615n)), 4n);
    await set(up, 'n:k', '10');
    assert.deepEqual(okValue(await up.arith('decr', 'n:k', 1n)), 9n);
    assert.deepEqual(okValue(await up.arith('incr', 'n:k', 1n)), 10n, 'after a shortening decr');
    await set(up, 'n:text', 'abc');
    assert.deepEqual(await up.arith('incr', 'n:text', 1n), { status: 'NON_NUMERIC' });
    assert.deepEqual(await up.arith('decr', 'n:none', 1n), { status: 'NOT_FOUND' });
  });

  await t.test('many concurrent requests over two connections are paired correctly', async () => {
    const keys = Array.from({ length: 2000 }, (_, i) => `p:${i}`);
    const value = (k: string) => b(`value of ${k} `.repeat(1 + (k.length % 7)));
    await Promise.all(keys.map((k, i) => up.store({ mode: 'set', key: k, value: value(k), flags: i, deadline: 0 })));
    const singles = await Promise.all(keys.map((k) => getOne(up, k)));
    singles.forEach((hit, i) => {
      assert.deepEqual(hit?.value, value(keys[i] as string));
      assert.equal(hit?.flags, i);
    });
    const [multi, deleted] = await Promise.all([up.get(keys), Promise.all(keys.slice(0, 100).map((k) => up.delete(k)))]);
    assert.equal(multi.length, keys.length);
    multi.forEach((hit, i) => assert.ok(hit === undefined ? i < 100 : hit.value.equals(value(keys[i] as string))));
    assert.ok(deleted.every((d) => d === 'DELETED'));
  });

  await t.test('a key is only ever sent on its own connection: while that one is down, its requests fail at once', async () => {
    const two = open(mc.url, { connections: '2' });
    try {
      await two.probe();
      await Promise.all(Array.from({ length: 32 }, (_, i) => two.get([`home:${i}`]))); // both connections up
      const conns = (two as unknown as { conns: Array<{ status: string }> }).conns;
      assert.deepEqual(conns.map((c) => c.status), ['ready', 'ready']);
      conns[0]!.status = 'down'; // as while it reconnects
      const results = await Promise.allSettled(Array.from({ length: 32 }, (_, i) => set(two, `home:${i}`, 'v')));
      conns[0]!.status = 'ready';
      const failed = results.filter((r) => r.status === 'rejected');
      // Sent on the other connection instead, a set could land after a later delete sent on its own.
      assert.ok(failed.length > 0 && failed.length < 32, `${failed.length} of 32 failed: keys spread over both, and none moved`);
      for (const r of failed) assert.equal(codeOf((r as PromiseRejectedResult).reason), ErrorCodes.UPSTREAM_UNREACHABLE, 'refused unsent');
    } finally {
      await two.close();
    }
  });

  await t.test('flush empties the store', async () => {
    await set(up, 'fl:k', 'v');
    await up.flush();
    assert.equal(await getOne(up, 'fl:k'), undefined);
  });

  await t.test('stats count requests and latencies', () => {
    assert.ok(up.stats.requests > 4000);
    assert.ok(up.stats.latencyCount > 4000);
    assert.ok(up.stats.latencyUsSum > 0);
    assert.equal(up.stats.timeouts, 0);
    assert.equal(up.stats.errors, 1, 'the refused oversized value');
  });

  await t.test('max-queue refuses requests beyond the bound with BUSY', async () => {
    const small = open(mc.url, { connections: '1', 'max-queue': '2' });
    try {
      const results = await Promise.allSettled([small.probe(), small.probe(), small.probe()]);
      assert.deepEqual(
        results.map((r) => (r.status === 'fulfilled' ? 'ok' : codeOf(r.reason))),
        ['ok', 'ok', ErrorCodes.UPSTREAM_BUSY],
      );
    } finally {
      await small.close();
    }
  });

  await t.test('close rejects pending and later requests with CLOSED', async () => {
    const other = open(mc.url);
    const pending = assert.rejects(other.get(['g:a']), (err) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
    await other.close();
    await pending;
    await assert.rejects(other.probe(), (err) => codeOf(err) === ErrorCodes.UPSTREAM_CLOSED);
  });
});

test('an unreachable memcached fails as unreachable: nothing was sent', async () => {
  const up = open(`memcached://127.0.0.1:${await freePort()}`);
  try {
    await assert.rejects(up.probe(), (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE);
    await assert.rejects(up.get(['k']), (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE);
  } finally {
    await up.close();
  }
});

/** A private memcached (resumed and stopped after the test) and the driver on it, timeout 100 ms. */
async function pausable(t: TestContext): Promise<{ mc: MemcachedProcess; up: Upstream } | undefined> {
  if (!requireBinary(t, 'memcached', 'memcached')) return undefined;
  const mc = await startMemcached();
  const up = open(mc.url, { timeout: '100' });
  t.after(async () => {
    mc.resume();
    await up.close();
    await mc.stop();
  });
  return { mc, up };
}

test('a timeout discards the connection: a late reply is never paired with a later request', async (t) => {
  const started = await pausable(t);
  if (!started) return;
  const { mc, up } = started;
  const keys = Array.from({ length: 20 }, (_, i) => `k${i + 1}`);
  await Promise.all(keys.map((k) => set(up, k, `value of ${k}`)));

  await mc.pause();
  const results = await Promise.allSettled(keys.map((k) => getOne(up, k)));
  const codes = results.map((r) => (r.status === 'rejected' ? codeOf(r.reason) : 'fulfilled'));
  assert.ok(codes.every((c) => c === ErrorCodes.UPSTREAM_TIMEOUT || c === ErrorCodes.UPSTREAM_IO), codes.join());
  assert.ok(codes.includes(ErrorCodes.UPSTREAM_TIMEOUT));
  assert.ok(up.stats.timeouts >= 1);
  mc.resume();

  const hit = await retrying(
    () => getOne(up, 'k1'),
    (err) => assert.ok([ErrorCodes.UPSTREAM_UNREACHABLE, ErrorCodes.UPSTREAM_TIMEOUT].includes(codeOf(err) as 'MCMUX_UPSTREAM_TIMEOUT')),
  );
  assert.equal(hit?.value.toString(), 'value of k1');
  for (let round = 0; round < 5; round++) {
    const hits = await Promise.all(keys.map((k) => getOne(up, k)));
    hits.forEach((h, i) => assert.equal(h?.value.toString(), `value of ${keys[i]}`));
  }
});

test('requests sent behind one that timed out fail as late: the paused server applies them when it resumes', async (t) => {
  const started = await pausable(t);
  if (!started) return;
  const { mc, up } = started;
  await set(up, 'probe', 'x');
  await mc.pause();
  const keys = ['s1', 's2', 's3', 's4'];
  const results = await Promise.allSettled(keys.map((k) => set(up, k, `late ${k}`)));
  const errors = results.map((r) => (r.status === 'rejected' ? (r.reason as McmuxError) : undefined));
  assert.equal(errors[0]?.code, ErrorCodes.UPSTREAM_TIMEOUT);
  for (const e of errors.slice(1)) assert.equal(e?.code, ErrorCodes.UPSTREAM_IO, 'discarded with the connection');
  assert.deepEqual(errors.map((e) => e?.late), [true, true, true, true], 'every one of them may still be applied');
  mc.resume();
  // They were in the server's socket: it applies them, after mcmux gave up on them.
  for (const k of keys) {
    const hit = await retrying(() => getOne(up, k).then((h) => (h ? h : Promise.reject(new Error('not yet')))));
    assert.equal(hit.value.toString(), `late ${k}`);
  }
});

/** A TCP server on a free port that runs `onConnection` for each client; closed by the test. */
async function fakeServer(t: TestContext, onConnection: (socket: Socket) => void): Promise<{ port: number; closed: Promise<number> }> {
  let closedBytes!: (n: number) => void;
  const closed = new Promise<number>((r) => (closedBytes = r));
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    let written = 0;
    const write = socket.write.bind(socket);
    socket.write = ((chunk: Buffer) => {
      written += chunk.length;
      return write(chunk);
    }) as typeof socket.write;
    socket.on('close', () => closedBytes(written));
    onConnection(socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port, closed };
}

/** A server streaming without end, bounded for the test: it gives up (ends) after STREAM_BYTES. */
const STREAM_BYTES = 16 * 1024 * 1024;

/** Writes `bytes` over and over until the socket closes, or STREAM_BYTES have gone. */
function stream(socket: Socket, bytes: Buffer): void {
  let left = STREAM_BYTES;
  const pump = (): void => {
    while (!socket.destroyed && left > 0) {
      left -= bytes.length;
      if (!socket.write(bytes)) break;
    }
    if (socket.destroyed) return;
    if (left <= 0) socket.end();
    else socket.once('drain', pump);
  };
  pump();
}

test('a server sending a huge value nobody asked for is dropped, not buffered', async (t) => {
  const junk = Buffer.alloc(64 * 1024, 0x61);
  const fake = await fakeServer(t, (socket) => {
    socket.write(b('VA 999999999999999\r\n'));
    stream(socket, junk);
  });
  const up = open(`memcached://127.0.0.1:${fake.port}`, { timeout: '5000' });
  t.after(() => up.close());
  const sent = await fake.closed;
  assert.ok(sent < STREAM_BYTES, `mcmux closed the connection after ${sent} bytes`);
});

test('a VA over max-item-size in answer to a get fails it at once, without reading the value', async (t) => {
  const junk = Buffer.alloc(64 * 1024, 0x61);
  const fake = await fakeServer(t, (socket) => {
    socket.once('data', () => {
      socket.write(b(`VA ${ctx.maxItemSize * 1000} f0\r\n`));
      stream(socket, junk);
    });
  });
  const up = open(`memcached://127.0.0.1:${fake.port}`, { timeout: '60000' });
  t.after(() => up.close());
  await assert.rejects(getOne(up, 'k'), (err) => codeOf(err) === ErrorCodes.UPSTREAM_PROTOCOL && /over max-item-size/.test((err as Error).message));
  const sent = await fake.closed;
  assert.ok(sent < STREAM_BYTES, `mcmux closed the connection after ${sent} bytes`);
});

test('a server that answers and then drops every connection is reconnected ever more slowly (no reconnect storm)', async (t) => {
  const accepted: number[] = [];
  let nextAccept: () => void = () => {};
  const fake = await fakeServer(t, (socket) => {
    accepted.push(performance.now());
    nextAccept();
    socket.once('data', () => socket.end(b('VERSION 1.6.21\r\n'))); // answers, then closes
  });
  const up = open(`memcached://127.0.0.1:${fake.port}`, { timeout: '5000' });
  t.after(() => up.close());
  await retrying(() => up.probe()); // the first connection's reply
  // Each connection made again asks `version` itself before it is used (the reconnect is
  // reported once the server answers): a reply on each.
  while (accepted.length < 6) await new Promise<void>((r) => (nextAccept = r));
  const gaps = accepted.slice(1).map((at, i) => at - (accepted[i] as number));
  // The backoff doubles (50, 100, 200, 400, 800 ms) instead of going back to 50 ms at each reply.
  assert.ok((gaps[4] as number) > 3 * (gaps[1] as number), `gaps between reconnects: ${gaps.map((g) => Math.round(g)).join(', ')} ms`);
});

test('a killed memcached gives fast unsent errors, and is used again after a restart', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc = await startMemcached();
  // A long timeout: a request that waited for the dead server instead of failing fast would
  // outlive the subtest's timeout below.
  const up = open(mc.url, { timeout: '60000' });
  t.after(async () => {
    await up.close();
    await mc.stop();
  });
  await set(up, 'k', 'before');

  mc.kill('SIGKILL');
  await mc.stop();
  await t.test('requests fail unsent while it is down', { timeout: 10_000 }, async () => {
    for (let i = 0; i < 20; i++) {
      // Nothing was sent to a dead server: nothing of it can land later. The first may have
      // been written before the close was seen (IO: it may have been sent); once it has, each
      // is refused unsent.
      const expected = i === 0 ? [ErrorCodes.UPSTREAM_UNREACHABLE, ErrorCodes.UPSTREAM_IO] : [ErrorCodes.UPSTREAM_UNREACHABLE];
      await assert.rejects(getOne(up, 'k'), (err) => expected.includes(codeOf(err) as 'MCMUX_UPSTREAM_IO') && !(err as McmuxError).late);
    }
  });

  await mc.restart();
  const hit = await retrying(
    () => getOne(up, 'k'),
    (err) => assert.equal(codeOf(err), ErrorCodes.UPSTREAM_UNREACHABLE),
  );
  assert.equal(hit, undefined, 'the restarted memcached is empty');
  await set(up, 'k', 'after');
  assert.equal((await getOne(up, 'k'))?.value.toString(), 'after');
});

// The server's FIN is read a loop pass or more before Node's 'close': a request taken in between
// was written after it and failed as "may have been applied" (UPSTREAM_IO), so a cas answered
// SERVER_ERROR instead of failing over to the next store (cas-failover.test.ts failed so in a CI
// run under load). One taken in the same pass, before the FIN was read but not yet written, was
// never sent either.
test('memcached: requests not yet written when the server closes the connection fail unsent; the one it was sent fails as may-have-been-applied', async (t) => {
  const fake = await fakeServer(t, (socket) => socket.once('data', () => socket.end()));
  const up = open(`memcached://127.0.0.1:${fake.port}`, { timeout: '60000' });
  t.after(() => up.close());
  // The driver's socket (its only connection): the test sees the FIN around the driver.
  const socket = (up as unknown as { conns: Array<{ socket: Socket }> }).conns[0]?.socket as Socket;
  let before: Promise<unknown> | undefined;
  let after: Promise<unknown> | undefined;
  socket.prependListener('end', () => (before = getOne(up, 'before')));
  socket.on('end', () => (after = getOne(up, 'after')));

  await assert.rejects(getOne(up, 'sent'), (err) => codeOf(err) === ErrorCodes.UPSTREAM_IO, 'written before the FIN: the server may have run it');
  assert.ok(before && after, 'the FIN was seen');
  await assert.rejects(before, (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE && !(err as McmuxError).late, 'taken just before the FIN was read, not yet written');
  await assert.rejects(after, (err) => codeOf(err) === ErrorCodes.UPSTREAM_UNREACHABLE, 'taken after the FIN, before the close');
});

// A reply nobody asked for, begun in the chunk that ends the last outstanding one: it stayed in the
// parser, and the next request sent took it as its answer once the rest arrived (found by a
// review; docs/drivers.md: such bytes are a protocol error at once).
test('memcached: bytes left over after the last outstanding reply are never paired with a later request', async (t) => {
  let request = 0;
  const fake = await fakeServer(t, (socket) => {
    socket.on('data', (data: Buffer) => {
      request++;
      const o = / (O\d+)/.exec(data.toString('latin1'))?.[1] ?? ''; // echoed, as memcached does
      // 1st request (mg a): its miss, then the start of a reply nobody asked for.
      if (request === 1) socket.write(b(`EN ${o}\r\nVA 5 f0\r\nWRONG`));
      // 2nd request (mg b): the rest of that stray reply, then b's own miss.
      else socket.write(b(`\r\nEN ${o}\r\n`));
    });
  });
  const up: Upstream = createMemcachedUpstream(new URL(`memcached://127.0.0.1:${fake.port}`), new Map([['timeout', '2000']]), ctx);
  t.after(() => up.close());
  assert.equal(await getOne(up, 'a'), undefined);
  let second: string | undefined;
  try {
    second = (await getOne(up, 'b'))?.value.toString();
  } catch {
    second = undefined; // failing b (connection dropped as desynchronised) is right
  }
  assert.notEqual(second, 'WRONG', 'b was answered with the value of a reply sent before b was asked');
});
