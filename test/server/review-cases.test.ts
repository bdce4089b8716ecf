/**
 * Review of PROTOCOL-CASES.md: rows whose existing tests were unit-level only (the parser, not a
 * socket and the stores behind it), and the cases found to differ from memcached 1.6. mcmux runs
 * in-process on memory upstreams, or on a private redis-server; a private memcached is the
 * reference where a row says "as memcached does".
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';
import { inProcessMcmux, memory, recordCalls } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { frame, storeExtras } from '../helpers/binary-frame';
import { startRedis } from '../upstream/targets/redis';

const stops: Array<() => Promise<void>> = [];
after(async () => {
  await Promise.all(stops.map((s) => s()));
});

const mcmux = inProcessMcmux;


/** One incr on a key holding `value`: the incr's answer line. */
async function incrOn(port: number, key: string, value: string): Promise<string> {
  const w = await connectWire(port);
  try {
    assert.equal(await w.ask(`set ${key} 0 0 ${Buffer.byteLength(value, 'latin1')}\r\n${value}\r\n`), 'STORED\r\n');
    return await w.ask(`incr ${key} 1\r\n`);
  } finally {
    w.close();
  }
}

/**
 * Stored values memcached 1.6 reads as a number for incr/decr (safe_strtoull: strtoull skips
 * leading white space and takes a sign; the number may be followed by white space and anything
 * after it), and values it refuses. Leading zeros make no number longer than 20 digits.
 */
const COUNTER_VALUES = [' 12', '\t12', '+5', '12 abc', '12\nx', '0000000000000000000000012', '7', '12 ', '12abc', '-5', 'hi', '18446744073709551616', '',
  '-0', '-18446744073709551615', '-9223372036854775808', '-9223372036854775809', '000000000000000000000000', '18446744073709551615 ',
  '12\0x', '7\0']; // strtoull stops at a NUL: the end of memcached's C string (found by the Redis review)

describe('review: PROTOCOL-CASES rows over a socket', () => {
  it('T12: incr reads a stored number as memcached 1.6 does, whichever kind of upstream decides (memory, redis, sqlite)', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached') || !requireBinary(t, 'redis-server', 'redis-server')) return;
    const reference = await startMemcached();
    stops.push(() => reference.stop());
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const onMemory = await mcmux();
    // A timeout far above the drivers' defaults (250 ms for Redis, which also bounds the first
    // request's wait for the connection and its SCRIPT LOADs): this test is about the incr's
    // answer, not the timing. (A CI run failed this test once, its message not kept; a stall
    // past those defaults is the one cause found that could.)
    const onRedis = await mcmux({}, [`${redis.url}?timeout=5000`]);
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-'));
    stops.push(async () => rmSync(dir, { recursive: true, force: true }));
    const onSqlite = await mcmux({}, [`sqlite://${join(dir, 'c.db')}?timeout=5000`]);
    for (const [i, value] of COUNTER_VALUES.entries()) {
      const expected = await incrOn(reference.port, `c${i}`, value);
      assert.equal(await incrOn(onMemory.address.port, `c${i}`, value), expected, `memory upstream: incr on ${JSON.stringify(value)}`);
      assert.equal(await incrOn(onRedis.address.port, `c${i}`, value), expected, `redis upstream: incr on ${JSON.stringify(value)}`);
      assert.equal(await incrOn(onSqlite.address.port, `c${i}`, value), expected, `sqlite upstream: incr on ${JSON.stringify(value)}`);
    }
  });

  it('T1: a 250-byte key is stored on every upstream; a 251-byte key fails the whole multi-get and a set', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    const k250 = 'k'.repeat(250);
    assert.equal(await w.ask(`set ${k250} 0 0 1\r\nx\r\n`), 'STORED\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get([k250]))[0]?.value.toString(), 'x', `upstream ${i}`);
    assert.equal(await w.ask(`get ${k250}\r\n`, 'END\r\n'), `VALUE ${k250} 0 1\r\nx\r\nEND\r\n`);
    assert.equal(await w.ask(`get ${k250} ${'k'.repeat(251)} ${k250}\r\n`), 'CLIENT_ERROR bad command line format\r\n');
    assert.equal(await w.ask(`set ${'k'.repeat(251)} 0 0 1\r\nx\r\n`), 'CLIENT_ERROR bad command line format\r\n');
    assert.equal(await w.ask('version\r\n'), 'VERSION 1.6.21\r\n', 'the connection is still in step');
    w.close();
  });

  it('T2: a storage line with a bad key, flags or exptime has its data block swallowed, never run as commands', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set victim 0 0 1\r\nv\r\n'), 'STORED\r\n');
    const calls = recordCalls(app);
    const block = 'delete victim'; // 13 bytes: if run as a command it would delete the key
    for (const line of [`set bad\x01key 0 0 13`, 'set k 4294967296 0 13', 'set k -1 0 13', 'set k 0 2147483648 13', 'set k 0 1x 13', 'cas k 0 0 13 -1']) {
      assert.equal(await w.ask(`${line}\r\n${block}\r\n`), 'CLIENT_ERROR bad command line format\r\n', JSON.stringify(line));
    }
    assert.equal(await w.ask('get victim\r\n', 'END\r\n'), 'VALUE victim 0 1\r\nv\r\nEND\r\n');
    assert.deepEqual(calls.filter((c) => c !== '0 get victim'), [], 'nothing but the read reached a store');
    // <bytes> that cannot be parsed: the stream is lost, the connection closed.
    w.send(`set k 0 0 12abc\r\n${block}\r\n`);
    assert.equal(await w.read('\r\n'), 'CLIENT_ERROR bad command line format\r\n');
    await w.closed;
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['victim']))[0]?.value.toString(), 'v', `upstream ${i}`);
  });

  it('T3: keys with control bytes are refused in every command and never reach an upstream', async () => {
    const app = await mcmux();
    const calls = recordCalls(app);
    const w = await connectWire(app.address.port);
    for (const c of ['\x00', '\x01', '\x1f', '\x7f']) {
      const key = `a${c}b`;
      assert.equal(await w.ask(`set ${key} 0 0 1\r\nx\r\n`), 'CLIENT_ERROR bad command line format\r\n');
      assert.equal(await w.ask(`get ${key}\r\n`), 'CLIENT_ERROR bad command line format\r\n');
      assert.equal(await w.ask(`delete ${key}\r\n`), 'CLIENT_ERROR bad command line format\r\n');
      assert.equal(await w.ask(`incr ${key} 1\r\n`), 'CLIENT_ERROR bad command line format\r\n');
      assert.equal(await w.ask(`touch ${key} 1\r\n`), 'CLIENT_ERROR bad command line format\r\n');
    }
    assert.deepEqual(calls, [], 'nothing reached a store');
    w.close();
  });

  it('T8: exptime 2592001 and over is absolute: a past one is STORED then a miss everywhere; 2592000 is relative', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set old 0 0 1\r\nx\r\n'), 'STORED\r\n');
    assert.equal(await w.ask('set old 0 2592001 1\r\ny\r\n'), 'STORED\r\n');
    assert.equal(await w.ask('get old\r\n', 'END\r\n'), 'END\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['old']))[0], undefined, `upstream ${i} keeps old`);
    const future = Math.floor(Date.now() / 1000) + 3600;
    assert.equal(await w.ask(`set abs 0 ${future} 1\r\nz\r\nset rel 0 2592000 1\r\nr\r\n`, 'STORED\r\nSTORED\r\n'), 'STORED\r\nSTORED\r\n');
    assert.equal(await w.ask('get abs rel\r\n', 'END\r\n'), 'VALUE abs 0 1\r\nz\r\nVALUE rel 0 1\r\nr\r\nEND\r\n');
    w.close();
  });

  it('T19: bare \\n line endings, also before a data block', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 1\nx\r\nget k\n', 'END\r\n'), 'STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\n');
    w.close();
  });

  it('B10, B12: SET answers a non-zero cas; DELETE, FLUSH and NOOP cas 0, opaque echoed; the same frames a byte per write', async () => {
    const app = await mcmux({ 'allow-flush': 'true' });
    const frames = Buffer.concat([
      frame({ opcode: 0x01, key: 'b10', extras: storeExtras(0, 0), value: 'x', opaque: 1 }),
      frame({ opcode: 0x04, key: 'b10', opaque: 2 }),
      frame({ opcode: 0x08, opaque: 3 }),
      frame({ opcode: 0x0a, opaque: 4 }),
    ]);
    const summary = (text: string): string[] => {
      const b = Buffer.from(text, 'latin1');
      const out: string[] = [];
      for (let at = 0; b.length - at >= 24; at += 24 + b.readUInt32BE(at + 8)) {
        assert.equal(b[at], 0x81, 'response magic');
        out.push(`op=${b[at + 1]} status=${b.readUInt16BE(at + 6)} opaque=${b.readUInt32BE(at + 12)} cas=${b.readBigUInt64BE(at + 16) === 0n ? '0' : 'set'}`);
      }
      return out;
    };
    const expected = ['op=1 status=0 opaque=1 cas=set', 'op=4 status=0 opaque=2 cas=0', 'op=8 status=0 opaque=3 cas=0', 'op=10 status=0 opaque=4 cas=0'];
    const done = (t: string): boolean => summary(t).length >= 4;
    const whole = await connectWire(app.address.port);
    whole.send(frames);
    assert.deepEqual(summary(await whole.read(done)), expected);
    whole.close();
    const split = await connectWire(app.address.port);
    for (const byte of frames) {
      split.socket.write(Buffer.from([byte]));
      await new Promise((r) => setImmediate(r));
    }
    assert.deepEqual(summary(await split.read(done)), expected);
    split.close();
  });

  it('hazard 4: touch and gat give every upstream the same deadline; touch 0 makes the item never expire everywhere', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 100 1\r\nx\r\n'), 'STORED\r\n');
    const deadlines = async (): Promise<Array<number | undefined>> =>
      Promise.all([0, 1].map(async (i) => (await memory(app, i).get(['k']))[0]?.deadline));
    const [a0, a1] = await deadlines();
    assert.ok(a0 !== undefined && a0 > Date.now(), 'a deadline on upstream 0');
    assert.equal(a1, a0, 'the same deadline on upstream 1');
    assert.equal(await w.ask('touch k 5000\r\n'), 'TOUCHED\r\n');
    const [b0, b1] = await deadlines();
    assert.ok(b0 !== undefined && b0 > Date.now() + 4000_000, `touched on upstream 0: ${b0}`);
    assert.equal(b1, b0, 'touched alike on upstream 1');
    assert.equal(await w.ask('gat 700 k\r\n', 'END\r\n'), 'VALUE k 0 1\r\nx\r\nEND\r\n');
    const [c0, c1] = await deadlines();
    assert.ok(c0 !== undefined && c0 < Date.now() + 701_000 && c0 > Date.now() + 600_000, `gat on upstream 0: ${c0}`);
    assert.equal(c1, c0, 'gat alike on upstream 1');
    assert.equal(await w.ask('touch k 0\r\n'), 'TOUCHED\r\n');
    assert.deepEqual(await deadlines(), [0, 0], 'never expires on either upstream');
    w.close();
  });

  it('T5: the old value is deleted on every upstream once the too-large command line is read, as memcached does, even if the client never sends the whole block', async () => {
    const app = await mcmux({ 'max-item-size': 1024 });
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
    // The line and a first part of the block; the client then dies (a PHP worker killed mid-write).
    w.send(`set sess 0 0 5000\r\n${'x'.repeat(1000)}`);
    w.socket.destroy();
    await eventually('the old value is deleted on every upstream', async () => {
      for (const i of [0, 1]) if ((await memory(app, i).get(['sess']))[0] !== undefined) return false;
      return true;
    }, 3000);
    const r = await connectWire(app.address.port);
    assert.equal(await r.ask('get sess\r\n', 'END\r\n'), 'END\r\n');
    r.close();
  });

  it('T5: a too-large block trickled in pieces is still swallowed whole and the connection stays in step', async () => {
    const app = await mcmux({ 'max-item-size': 1024 });
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set sess 0 0 3\r\nold\r\n'), 'STORED\r\n');
    w.send('set sess 0 0 5000\r\n');
    for (let i = 0; i < 5; i++) {
      w.send('get sess\r\n'.repeat(100)); // 1000 bytes of block that look like commands
      await new Promise((r) => setImmediate(r));
    }
    w.send('\r\nget sess\r\n');
    assert.equal(await w.read('END\r\n'), 'SERVER_ERROR object too large for cache\r\nEND\r\n');
    w.close();
  });
});
