/**
 * Review of the binary TOUCH's answer through mcmux over real stores (finding 3 of the binary
 * differential review: protocol/binary/reply-writer.ts, router/replicate-write.ts touchedItem,
 * each driver's touch withItem). memcached 1.6 answers a TOUCH hit with the item's flags as 4
 * bytes of extras and the item's cas, which the touch leaves unchanged (proto_bin.c,
 * process_bin_get_or_touch). Before, mcmux answered no extras and cas 0: Upstream.touch answered
 * TOUCHED only. The cas answered must be the one the next gets hands out (the sealed unique of
 * the upstream a cas is checked on), whichever stores are behind mcmux and after a failover.
 * Every test starts its own servers on free ports (mcmux with its own state directory).
 */

import assert from 'node:assert/strict';
import { type TestContext, describe, it } from 'node:test';
import { OPCODE } from '../../src/protocol/binary/header';
import { type ResponseFrame, frame, parseResponseFrames, storeExtras } from '../helpers/binary-frame';
import { startMcmux } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';
import { type Wire, connectWire } from '../helpers/wire';
import { startRedis } from '../upstream/targets/redis';

function touchExtras(exptime: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(exptime >>> 0, 0);
  return b;
}

/** Sends `frames` then a NOOP in one write; the response frames before the NOOP's. */
async function ask(w: Wire, ...frames: Buffer[]): Promise<ResponseFrame[]> {
  const end = 0xe0d;
  const parse = (s: string): ResponseFrame[] => parseResponseFrames(Buffer.from(s, 'latin1')).frames;
  const got = await w.ask(Buffer.concat([...frames, frame({ opcode: OPCODE.NOOP, opaque: end })]), (s) => parse(s).some((f) => f.opaque === end), 5000);
  return parse(got).filter((f) => f.opaque !== end);
}

/** The text protocol's gets: the cas of `key`, as a bigint. */
async function textGetsCas(port: number, key: string): Promise<bigint> {
  const w = await connectWire(port);
  try {
    const got = await w.ask(`gets ${key}\r\n`, /END\r\n$/, 5000);
    const m = /^VALUE \S+ \d+ \d+ (\d+)\r\n/.exec(got);
    assert.ok(m, `gets hit: ${JSON.stringify(got)}`);
    return BigInt(m[1] as string);
  } finally {
    w.close();
  }
}

/**
 * SET `key` (flags 7), TOUCH it, GET it (binary): the TOUCH answers status 0, the flags as
 * extras, no value, and the cas that both the GET and a text gets answer after it.
 */
async function touchThenGets(port: number, key: string, w: Wire): Promise<bigint> {
  const [set, touch, get] = await ask(
    w,
    frame({ opcode: OPCODE.SET, key, extras: storeExtras(7, 0), value: 'v', opaque: 1 }),
    frame({ opcode: OPCODE.TOUCH, key, extras: touchExtras(1000), opaque: 2 }),
    frame({ opcode: OPCODE.GET, key, opaque: 3 }),
  );
  assert.equal(set?.status, 0);
  assert.deepEqual(touch && { status: touch.status, extras: touch.extras.toString('hex'), value: touch.value.length }, { status: 0, extras: '00000007', value: 0 });
  assert.notEqual(touch?.cas, 0n, 'a TOUCH hit carries the cas');
  assert.equal(touch?.cas, set?.cas, 'the cas the SET answered: the touch does not change it');
  assert.equal(get?.cas, touch?.cas, "the next GET's cas");
  assert.equal(await textGetsCas(port, key), touch?.cas, "the next text gets's cas");
  return touch?.cas ?? 0n;
}

async function mcmuxOver(t: TestContext, upstreams: string[]): Promise<{ port: number; w: Wire }> {
  const mux = await startMcmux([...upstreams.flatMap((u) => ['--upstream', u]), '--log-level', 'error']);
  t.after(() => mux.stop());
  const w = await connectWire(mux.port);
  t.after(() => w.close());
  return { port: mux.port, w };
}

describe('review: binary TOUCH answers the flags and the cas of the item, through mcmux', { timeout: 60_000 }, () => {
  it("over two memcached: the TOUCH's cas is the next gets's, before and after the first one fails", async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = await Promise.all([startMemcached(), startMemcached()]);
    t.after(() => Promise.all([mc1.stop(), mc2.stop()]));
    const { port, w } = await mcmuxOver(t, [mc1.url, mc2.url]);
    const before = await touchThenGets(port, 'sess', w);
    // The first upstream gone: the touch fails there (journaled), the answer is the second's,
    // sealed as its own, and so is the gets that reads from it.
    await mc1.stop();
    const after = await touchThenGets(port, 'sess', w);
    assert.notEqual(after, before, "the second store's unique, not the first's");
  });

  it("over memcached and redis, in either order: the TOUCH's cas is the next gets's", async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached') || !requireBinary(t, 'redis-server', 'redis-server')) return;
    const [mc, redis] = await Promise.all([startMemcached(), startRedis()]);
    t.after(() => Promise.all([mc.stop(), redis.stop()]));
    const first = await mcmuxOver(t, [mc.url, redis.url]);
    const fromMemcached = await touchThenGets(first.port, 'sess', first.w);
    const second = await mcmuxOver(t, [redis.url, mc.url]);
    const fromRedis = await touchThenGets(second.port, 'sess', second.w);
    assert.notEqual(fromRedis, fromMemcached, 'each order answers the unique of its first store');
  });
});
