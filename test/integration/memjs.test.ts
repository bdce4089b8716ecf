/**
 * memjs (npm), a real binary-protocol client, against mcmux in front of two private memcached
 * processes; every write is checked on both memcached directly (peekItem). What memjs cannot
 * send — quiet commands, NOOP, a real PREPEND, INCR with exptime 0xffffffff, bad frames — goes
 * out as raw binary frames built here, and the replies are read packet by packet.
 *
 * memjs quirks that shape this file (memjs 1.3):
 * - `prepend` sends the APPEND opcode (0x0e): a memjs bug, so prepend is tested raw;
 * - `set`/`add`/`replace` always send flags 0: flags go in through memjs' own extension point,
 *   a serializer that rewrites the extras;
 * - `flush` reports success whatever the status: a refused flush is checked by what remains;
 * - `decrement` without an options object throws in memjs itself; `increment`/`decrement`
 *   decode the 64-bit result as (high << 8) + low, right only below 2^32 (the counts here are);
 * - on a failed request it retries after 200 ms unless `retries` is 1, and it logs errors
 *   through `logger`: both are set so that a failure is an assertion, not noise.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type McmuxProcess, type PeekedItem, type RawClient, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { type ResponseFrame, arithExtras, frame, parseResponseFrames, storeExtras } from '../helpers/binary-frame';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';

const MAX_ITEM_SIZE = 1024;
const REPLY_MS = 5000;

// ---------------------------------------------------------------------------------------------
// memjs, typed for what this file uses (the package ships no types).

interface MemjsSerializer {
  serialize(opcode: number, value: Buffer | string, extras: Buffer | string): { value: Buffer | string; extras: Buffer | string };
  deserialize(opcode: number, value: Buffer, extras: Buffer): { value: Buffer; extras: Buffer };
}

interface MemjsClient {
  get(key: string): Promise<{ value: Buffer | null; flags: Buffer | null }>;
  set(key: string, value: string | Buffer, options?: { expires?: number }): Promise<boolean>;
  add(key: string, value: string | Buffer, options?: { expires?: number }): Promise<boolean>;
  replace(key: string, value: string | Buffer, options?: { expires?: number }): Promise<boolean>;
  append(key: string, value: string | Buffer): Promise<boolean>;
  delete(key: string): Promise<boolean>;
  increment(key: string, amount: number, options?: { initial?: number; expires?: number }): Promise<{ success: boolean; value: number }>;
  /** `options` is required: memjs' promise form of decrement dereferences it unchecked. */
  decrement(key: string, amount: number, options: { initial?: number; expires?: number }): Promise<{ success: boolean; value: number }>;
  touch(key: string, expires: number): Promise<boolean>;
  flush(): Promise<Record<string, boolean | Error>>;
  stats(callback: (err: Error | null, server: string, stats: Record<string, string> | null) => void): void;
  close(): void;
}

interface MemjsModule {
  Client: { create(servers: string, options: Record<string, unknown>): MemjsClient };
}

const memjs = require('memjs') as MemjsModule;

/** Flags for the next set/add/replace (memjs itself always sends 0). */
let nextFlags = 0;
const SET_LIKE = new Set([0x01, 0x02, 0x03]);
const flagsSerializer: MemjsSerializer = {
  serialize(opcode, value, extras) {
    if (!SET_LIKE.has(opcode) || !Buffer.isBuffer(extras) || extras.length !== 8) return { value, extras };
    const withFlags = Buffer.from(extras);
    withFlags.writeUInt32BE(nextFlags >>> 0, 0);
    return { value, extras: withFlags };
  },
  deserialize: (_opcode, value, extras) => ({ value, extras }),
};

function memjsClient(port: number, log: string[]): MemjsClient {
  return memjs.Client.create(`127.0.0.1:${port}`, {
    retries: 1, // no silent retry: each call is one request
    timeout: REPLY_MS / 1000,
    logger: { log: (...args: unknown[]) => log.push(args.map(String).join(' ')) },
    serializer: flagsSerializer,
  });
}

function statsOf(client: MemjsClient): Promise<Record<string, string>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no stats within ${REPLY_MS} ms`)), REPLY_MS);
    client.stats((err, _server, stats) => {
      clearTimeout(timer);
      if (err || !stats) reject(err ?? new Error('no stats'));
      else resolve(stats);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Raw binary frames (protocol_binary.h): 24-byte header, then extras, key, value.

const OP = {
  GET: 0x00, SET: 0x01, ADD: 0x02, INCREMENT: 0x05, FLUSH: 0x08, GETQ: 0x09, NOOP: 0x0a,
  GETKQ: 0x0d, PREPEND: 0x0f, SETQ: 0x11, ADDQ: 0x12, DELETEQ: 0x14, PREPENDQ: 0x1a, SASL_LIST_MECHS: 0x20,
} as const;
const ST = { SUCCESS: 0x00, KEY_NOT_FOUND: 0x01, KEY_EXISTS: 0x02, INVALID_ARGUMENTS: 0x04, INTERNAL_ERROR: 0x84, UNKNOWN_COMMAND: 0x81 } as const;

type Packet = ResponseFrame;

/** Reads exactly `n` response packets (rejects on close or timeout, and on bytes beyond them). */
async function readPackets(c: RawClient, n: number): Promise<Packet[]> {
  const text = await c.readUntil((t) => parseResponseFrames(Buffer.from(t, 'latin1')).frames.length >= n, REPLY_MS);
  const buf = Buffer.from(text, 'latin1');
  const { frames: packets, used } = parseResponseFrames(buf);
  assert.equal(packets.length, n, `expected ${n} packets, got ${packets.length}: ${describe(packets)}`);
  assert.equal(used, buf.length, `bytes after the ${n} packets expected: ${buf.subarray(used).toString('hex')}`);
  for (const p of packets) assert.equal(p.magic, 0x81, 'response magic');
  return packets;
}

function describe(packets: readonly Packet[]): string {
  return packets.map((p) => `{op 0x${p.opcode.toString(16)} status 0x${p.status.toString(16)} opaque ${p.opaque} key ${JSON.stringify(p.key)} value ${JSON.stringify(p.value.toString('latin1'))}}`).join(', ');
}

/** Resolves when the server closed `c`; fails if it sends anything first or stays open. */
async function closesSilently(c: RawClient, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: connection still open after ${REPLY_MS} ms`)), REPLY_MS);
  });
  try {
    await Promise.race([c.closed, timeout]);
  } finally {
    clearTimeout(timer);
  }
  assert.equal(Buffer.from(c.pending, 'latin1').toString('hex'), '', `${what}: bytes sent before closing`);
}

// ---------------------------------------------------------------------------------------------

test('memjs (binary protocol) against mcmux on two memcached', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc1 = await startMemcached();
  const mc2 = await startMemcached();
  const mcs: readonly MemcachedProcess[] = [mc1, mc2];
  t.after(() => Promise.all([mc1.stop(), mc2.stop()]));
  const upstreams = ['--upstream', mc1.url, '--upstream', mc2.url];
  const mux: McmuxProcess = await startMcmux([...upstreams, '--max-item-size', String(MAX_ITEM_SIZE), '--log-level', 'warn']);
  t.after(() => mux.stop());
  const memjsLog: string[] = [];
  const client = memjsClient(mux.port, memjsLog);
  t.after(() => client.close());
  const raws: RawClient[] = [];
  t.after(() => raws.forEach((c) => c.close()));
  const raw = async (): Promise<RawClient> => {
    const c = await rawClient(mux.port, REPLY_MS);
    raws.push(c);
    return c;
  };

  const peekAll = (key: string): Promise<Array<PeekedItem | undefined>> => Promise.all(mcs.map((mc) => peekItem(mc.port, key, REPLY_MS)));
  /** Both memcached hold `value` under `key`; returns the two items. */
  async function onBoth(key: string, value: string, flags?: number): Promise<PeekedItem[]> {
    const items = await peekAll(key);
    return items.map((item, i) => {
      assert.ok(item, `memcached #${i + 1} has no ${key}`);
      assert.equal(item.value, value, `memcached #${i + 1}: value of ${key}`);
      if (flags !== undefined) assert.equal(item.flags, flags, `memcached #${i + 1}: flags of ${key}`);
      return item;
    });
  }
  async function onNeither(key: string): Promise<void> {
    const items = await peekAll(key);
    items.forEach((item, i) => assert.equal(item, undefined, `memcached #${i + 1} still has ${key}: ${JSON.stringify(item)}`));
  }
  const value = async (key: string): Promise<string | undefined> => (await client.get(key)).value?.toString('latin1');

  await t.test('set/get with flags and expiry', async () => {
    nextFlags = 0xfedcba98; // above 2^31: unsigned all the way
    try {
      assert.equal(await client.set('mj:flags', 'hello', { expires: 300 }), true);
    } finally {
      nextFlags = 0;
    }
    const got = await client.get('mj:flags');
    assert.equal(got.value?.toString(), 'hello');
    assert.equal(got.flags?.readUInt32BE(0), 0xfedcba98, 'flags come back unchanged');
    for (const item of await onBoth('mj:flags', 'hello', 0xfedcba98)) {
      assert.ok(item.ttl > 290 && item.ttl <= 301, `ttl ${item.ttl}, expected about 300`);
    }
    // No expiry.
    assert.equal(await client.set('mj:forever', 'v'), true);
    for (const item of await onBoth('mj:forever', 'v', 0)) assert.equal(item.ttl, -1);
    // T9 through binary: 2678400 is above 30 days, an absolute time in 1970: stored, then a miss everywhere.
    assert.equal(await client.set('mj:1970', 'gone', { expires: 2678400 }), true);
    assert.equal(await value('mj:1970'), undefined);
    await onNeither('mj:1970');
    // A miss is a null value, not an error.
    assert.deepEqual(await client.get('mj:nothing'), { value: null, flags: null });
  });

  await t.test('add: stores once, then "exists" (false)', async () => {
    assert.equal(await client.add('mj:add', 'first'), true);
    assert.equal(await client.add('mj:add', 'second'), false, 'add on an existing key answers 0x02, which memjs reports as false');
    assert.equal(await value('mj:add'), 'first');
    await onBoth('mj:add', 'first');
  });

  await t.test('replace: false on a miss, replaces on both otherwise', async () => {
    assert.equal(await client.replace('mj:repl', 'x'), false);
    await onNeither('mj:repl');
    assert.equal(await client.set('mj:repl', 'old'), true);
    assert.equal(await client.replace('mj:repl', 'new'), true);
    await onBoth('mj:repl', 'new');
  });

  await t.test('append (memjs) and prepend (raw frame: memjs sends APPEND for prepend)', async () => {
    assert.equal(await client.set('mj:cat', 'middle'), true);
    assert.equal(await client.append('mj:cat', '>end'), true);
    await onBoth('mj:cat', 'middle>end');
    // Append on a missing key: memcached answers 0x05 "not stored", which memjs reports as an error.
    await assert.rejects(client.append('mj:cat-missing', 'x'), /Item not stored/);
    await onNeither('mj:cat-missing');

    const c = await raw();
    c.send(frame({ opcode: OP.PREPEND, key: 'mj:cat', value: 'start<', opaque: 7 }));
    const [p] = await readPackets(c, 1);
    assert.deepEqual([p?.opcode, p?.status, p?.opaque], [OP.PREPEND, ST.SUCCESS, 7], describe(p ? [p] : []));
    assert.equal(await value('mj:cat'), 'start<middle>end');
    await onBoth('mj:cat', 'start<middle>end');
    // PREPENDQ: silent on success; NOOP proves it ran.
    c.send(Buffer.concat([frame({ opcode: OP.PREPENDQ, key: 'mj:cat', value: '^' }), frame({ opcode: OP.NOOP, opaque: 8 })]));
    const [noop] = await readPackets(c, 1);
    assert.deepEqual([noop?.opcode, noop?.status, noop?.opaque], [OP.NOOP, ST.SUCCESS, 8]);
    await onBoth('mj:cat', '^start<middle>end');
  });

  await t.test('increment/decrement with initial values; non-numeric is an error', async () => {
    // A miss creates the key with `initial` (and answers it, not initial + delta).
    assert.deepEqual(await client.increment('mj:ctr', 5, { initial: 10 }), { success: true, value: 10 });
    await onBoth('mj:ctr', '10');
    assert.deepEqual(await client.increment('mj:ctr', 5), { success: true, value: 15 });
    await onBoth('mj:ctr', '15');
    assert.deepEqual(await client.decrement('mj:ctr', 4, {}), { success: true, value: 11 });
    await onBoth('mj:ctr', '11', 0);
    // decr floors at 0.
    assert.deepEqual(await client.decrement('mj:ctr', 100, {}), { success: true, value: 0 });
    // memcached decrements in place and pads a shorter number with spaces ("11" -> "0 "); mcmux
    // copies the authority's item as it is, so both hold the very same bytes.
    await onBoth('mj:ctr', '0 ');
    assert.deepEqual(await client.decrement('mj:dctr', 1, { initial: 7 }), { success: true, value: 7 });
    await onBoth('mj:dctr', '7');
    // B5: a non-numeric value answers 0x06.
    assert.equal(await client.set('mj:text', 'abc'), true);
    await assert.rejects(client.increment('mj:text', 1), /non-numeric/);
    await onBoth('mj:text', 'abc');
  });

  await t.test('B4: INCR on a miss with exptime 0xffffffff does not create (raw frame)', async () => {
    const c = await raw();
    c.send(frame({ opcode: OP.INCREMENT, key: 'mj:nocreate', extras: arithExtras(1n, 42n, 0xffffffff), opaque: 11 }));
    const [miss] = await readPackets(c, 1);
    assert.deepEqual([miss?.opcode, miss?.status, miss?.opaque], [OP.INCREMENT, ST.KEY_NOT_FOUND, 11], describe(miss ? [miss] : []));
    await onNeither('mj:nocreate');
    assert.equal(await value('mj:nocreate'), undefined);
    // Any other exptime creates it with `initial`; the 8-byte value is the new count.
    c.send(frame({ opcode: OP.INCREMENT, key: 'mj:nocreate', extras: arithExtras(1n, 42n, 0), opaque: 12 }));
    const [made] = await readPackets(c, 1);
    assert.deepEqual([made?.status, made?.value.readBigUInt64BE(0)], [ST.SUCCESS, 42n]);
    await onBoth('mj:nocreate', '42');
    // Then 0xffffffff only matters on a miss: an existing counter counts.
    c.send(frame({ opcode: OP.INCREMENT, key: 'mj:nocreate', extras: arithExtras(8n, 0n, 0xffffffff), opaque: 13 }));
    const [inc] = await readPackets(c, 1);
    assert.deepEqual([inc?.status, inc?.value.readBigUInt64BE(0)], [ST.SUCCESS, 50n]);
    await onBoth('mj:nocreate', '50');
  });

  await t.test('delete', async () => {
    assert.equal(await client.set('mj:del', 'v'), true);
    assert.equal(await client.delete('mj:del'), true);
    await onNeither('mj:del');
    assert.equal(await value('mj:del'), undefined);
    assert.equal(await client.delete('mj:del'), false, 'a second delete is "not found"');
  });

  await t.test('touch', async () => {
    assert.equal(await client.set('mj:touch', 'v'), true);
    for (const item of await onBoth('mj:touch', 'v')) assert.equal(item.ttl, -1);
    assert.equal(await client.touch('mj:touch', 600), true);
    for (const item of await onBoth('mj:touch', 'v')) assert.ok(item.ttl > 590 && item.ttl <= 601, `ttl ${item.ttl}, expected about 600`);
    assert.equal(await client.touch('mj:touch-missing', 600), false);
  });

  await t.test('stats: mcmux answers with its own', async () => {
    const stats = await statsOf(client);
    assert.match(stats.pid ?? '', /^\d+$/);
    assert.equal(stats.pid, String(mux.proc.pid));
    assert.equal(stats.upstreams, '2');
    assert.equal(stats['upstream.0.name'], mc1.url);
    assert.equal(stats['upstream.1.name'], mc2.url);
  });

  await t.test(`a value over --max-item-size (${MAX_ITEM_SIZE}) is refused and the old value deleted on both memcached`, async () => {
    assert.equal(await client.set('mj:big', 'small'), true);
    await onBoth('mj:big', 'small');
    await assert.rejects(client.set('mj:big', 'x'.repeat(MAX_ITEM_SIZE + 1)), /Value too large/);
    await onNeither('mj:big');
    assert.equal(await value('mj:big'), undefined);
    // The connection is still in step: the next request gets its own answer.
    assert.equal(await client.set('mj:after-big', 'ok'), true);
    assert.equal(await value('mj:after-big'), 'ok');
    // A value of exactly the limit is fine.
    assert.equal(await client.set('mj:big', 'y'.repeat(MAX_ITEM_SIZE)), true);
    await onBoth('mj:big', 'y'.repeat(MAX_ITEM_SIZE));
  });

  await t.test('B1, B2: quiet commands answer only failures; NOOP answers', async () => {
    const c = await raw();
    // B1: GETQ and GETKQ misses say nothing; a GETKQ hit answers with its key; NOOP answers.
    assert.equal(await client.set('mj:q-hit', 'here'), true);
    c.send(Buffer.concat([
      frame({ opcode: OP.GETQ, key: 'mj:q-miss1', opaque: 1 }),
      frame({ opcode: OP.GETKQ, key: 'mj:q-miss2', opaque: 2 }),
      frame({ opcode: OP.GETKQ, key: 'mj:q-hit', opaque: 3 }),
      frame({ opcode: OP.NOOP, opaque: 4 }),
    ]));
    const [hit, noop] = await readPackets(c, 2);
    assert.deepEqual([hit?.opcode, hit?.status, hit?.opaque, hit?.key, hit?.value.toString()], [OP.GETKQ, ST.SUCCESS, 3, 'mj:q-hit', 'here']);
    assert.deepEqual([noop?.opcode, noop?.status, noop?.opaque, noop?.cas], [OP.NOOP, ST.SUCCESS, 4, 0n]);

    // B2: SETQ succeeds silently; SETQ with a wrong CAS and ADDQ on an existing key answer 0x02.
    c.send(frame({ opcode: OP.SET, key: 'mj:q', extras: storeExtras(0, 0), value: 'v1', opaque: 10 }));
    const [set] = await readPackets(c, 1);
    assert.equal(set?.status, ST.SUCCESS);
    assert.notEqual(set?.cas, 0n, 'B10: a SET answer carries a cas');
    c.send(Buffer.concat([
      frame({ opcode: OP.SETQ, key: 'mj:q', extras: storeExtras(0, 0), value: 'v2', opaque: 11 }),
      frame({ opcode: OP.SETQ, key: 'mj:q', extras: storeExtras(0, 0), value: 'v3', opaque: 12, cas: (set?.cas ?? 0n) + 1000n }),
      frame({ opcode: OP.ADDQ, key: 'mj:q', extras: storeExtras(0, 0), value: 'v4', opaque: 13 }),
      frame({ opcode: OP.SETQ, key: 'mj:q-missing', extras: storeExtras(0, 0), value: 'v5', opaque: 14, cas: 12345n }),
      frame({ opcode: OP.DELETEQ, key: 'mj:q-missing', opaque: 15 }),
      frame({ opcode: OP.NOOP, opaque: 16 }),
    ]));
    const replies = await readPackets(c, 5);
    assert.deepEqual(
      replies.map((p) => [p.opcode, p.status, p.opaque]),
      [
        [OP.SETQ, ST.KEY_EXISTS, 12], // wrong cas
        [OP.ADDQ, ST.KEY_EXISTS, 13], // add on an existing key
        [OP.SETQ, ST.KEY_NOT_FOUND, 14], // B3: cas on a missing key
        [OP.DELETEQ, ST.KEY_NOT_FOUND, 15], // "not found" is a failure: sent
        [OP.NOOP, ST.SUCCESS, 16],
      ],
      describe(replies),
    );
    await onBoth('mj:q', 'v2');
    await onNeither('mj:q-missing');
  });

  await t.test('B9: an unknown opcode (and SASL) answers 0x81 and the connection stays open', async () => {
    const c = await raw();
    c.send(Buffer.concat([
      frame({ opcode: 0x5a, key: 'k', value: 'some body', opaque: 21 }),
      frame({ opcode: OP.SASL_LIST_MECHS, opaque: 22 }),
      frame({ opcode: OP.GET, key: 'mj:flags', opaque: 23 }),
    ]));
    const [unknown, sasl, get] = await readPackets(c, 3);
    assert.deepEqual([unknown?.opcode, unknown?.status, unknown?.opaque], [0x5a, ST.UNKNOWN_COMMAND, 21]);
    assert.deepEqual([sasl?.opcode, sasl?.status, sasl?.opaque], [OP.SASL_LIST_MECHS, ST.UNKNOWN_COMMAND, 22]);
    assert.deepEqual([get?.opcode, get?.status, get?.opaque, get?.value.toString()], [OP.GET, ST.SUCCESS, 23, 'hello']);
  });

  await t.test('B6: a key of 251 bytes answers 0x04, then the connection closes', async () => {
    const c = await raw();
    c.send(frame({ opcode: OP.GET, key: 'k'.repeat(251), opaque: 31 }));
    const [p] = await readPackets(c, 1);
    assert.deepEqual([p?.opcode, p?.status, p?.opaque], [OP.GET, ST.INVALID_ARGUMENTS, 31], describe(p ? [p] : []));
    await closesSilently(c, 'after the 0x04');
    // 250 bytes is a key like any other.
    assert.equal(await client.set('k'.repeat(250), 'long'), true);
    await onBoth('k'.repeat(250), 'long');
  });

  await t.test('B8: bad magic closes the connection without a reply', async () => {
    const c = await raw();
    c.send(frame({ opcode: OP.NOOP, opaque: 41 })); // the first byte, 0x80, makes it a binary connection
    const [noop] = await readPackets(c, 1);
    assert.equal(noop?.opaque, 41);
    c.send(frame({ opcode: OP.NOOP, opaque: 42, magic: 0x81 }));
    await closesSilently(c, 'after a frame with magic 0x81');
  });

  await t.test('flush: refused without --allow-flush, allowed with it', async (t) => {
    assert.equal(await client.set('mj:flush', 'keep'), true);
    // memjs reports success whatever the status: the reply is read raw, the effect on both memcached.
    const c = await raw();
    c.send(frame({ opcode: OP.FLUSH, opaque: 51 }));
    const [refused] = await readPackets(c, 1);
    assert.deepEqual([refused?.opcode, refused?.status, refused?.opaque], [OP.FLUSH, ST.INTERNAL_ERROR, 51], describe(refused ? [refused] : []));
    assert.match(refused?.value.toString() ?? '', /allow-flush/, 'the refusal names the setting');
    await client.flush();
    await onBoth('mj:flush', 'keep');
    assert.equal(await value('mj:flush'), 'keep');

    // The same upstreams behind an mcmux started with --allow-flush.
    const flushing = await startMcmux([...upstreams, '--allow-flush', '--log-level', 'warn']);
    t.after(() => flushing.stop());
    const flushLog: string[] = [];
    const fc = memjsClient(flushing.port, flushLog);
    t.after(() => fc.close());
    const results = await fc.flush();
    assert.deepEqual(Object.values(results), [true], `flush results: ${JSON.stringify(results)}; memjs log: ${flushLog.join('; ')}`);
    await onNeither('mj:flush');
    assert.equal((await fc.get('mj:flush')).value, null);
    const c2 = await rawClient(flushing.port, REPLY_MS);
    t.after(() => c2.close());
    c2.send(frame({ opcode: OP.FLUSH, opaque: 52 }));
    const [allowed] = await readPackets(c2, 1);
    assert.deepEqual([allowed?.opcode, allowed?.status, allowed?.opaque, allowed?.cas], [OP.FLUSH, ST.SUCCESS, 52, 0n]);
  });

  assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  t.diagnostic(`memjs logged: ${memjsLog.length ? memjsLog.join(' | ') : 'nothing'}`);
});
