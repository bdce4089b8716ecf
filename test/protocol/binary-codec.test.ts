import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Command, EXPIRED, type Reply } from '../../src/command/command';
import type { Decoded, Request } from '../../src/protocol/codec';
import { BinaryCodec, binaryCodecFactory } from '../../src/protocol/binary/binary-codec';
import { OPCODE as OP } from '../../src/protocol/binary/header';
import { BinaryRequestParser } from '../../src/protocol/binary/request-parser';
import { TextCodec } from '../../src/protocol/text/text-codec';
import { COPY_MAX, OutBuffer } from '../../src/protocol/out-buffer';
import { arithExtras, frame as binaryFrame } from '../helpers/binary-frame';
import { mulberry32 } from '../helpers/random';

const NOW = 1_700_000_000_000;
const LIMITS = { maxLineLength: 2048, maxItemSize: 1024, maxKeysPerGet: 8 };
const OPAQUE = 0xdeadbeef;

// ─── wire helpers ────────────────────────────────────────────────────────────────────────────

interface FrameSpec {
  op: number;
  key?: string;
  extras?: Buffer;
  value?: string | Buffer;
  cas?: bigint;
  opaque?: number;
  magic?: number;
  /** Override the lengths the header declares (hostile frames). */
  keyLength?: number;
  extrasLength?: number;
  bodyLength?: number;
}

/** One request frame; with a length override, only the bytes given are appended. */
function frame(f: FrameSpec): Buffer {
  return binaryFrame({ ...f, opcode: f.op, opaque: f.opaque ?? OPAQUE });
}

function u32(...values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, i * 4));
  return b;
}

/** SET-family extras: flags, exptime (written as the client's 32 bits). */
const setExtras = (flags: number, exptime: number): Buffer => u32(flags, exptime);

const hex = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

/** Renders response packets compactly; checks magic and that the opaque is echoed. */
function responses(bytes: Buffer, opaque = OPAQUE): string[] {
  const out: string[] = [];
  let at = 0;
  while (at < bytes.length) {
    assert.ok(bytes.length - at >= 24, 'a whole header');
    assert.equal(bytes[at], 0x81, 'response magic');
    const op = bytes.readUInt8(at + 1);
    const keyLength = bytes.readUInt16BE(at + 2);
    const extrasLength = bytes.readUInt8(at + 4);
    const status = bytes.readUInt16BE(at + 6);
    const bodyLength = bytes.readUInt32BE(at + 8);
    assert.equal(bytes.readUInt32BE(at + 12), opaque, 'opaque echoed');
    const cas = bytes.readBigUInt64BE(at + 16);
    const body = bytes.subarray(at + 24, at + 24 + bodyLength);
    assert.equal(body.length, bodyLength, 'a whole body');
    const extras = body.subarray(0, extrasLength);
    const key = body.subarray(extrasLength, extrasLength + keyLength).toString('latin1');
    const value = body.subarray(extrasLength + keyLength);
    let s = `${hex(op)} s=${hex(status)} cas=${cas}`;
    if (extrasLength) s += ` x=${extras.toString('hex')}`;
    if (keyLength) s += ` k=${key}`;
    if (value.length) s += ` v=${JSON.stringify(value.toString('latin1'))}`;
    out.push(s);
    at += 24 + bodyLength;
  }
  return out;
}

const ms = (deadline: number): string => (deadline === 0 ? '0' : deadline === EXPIRED ? 'expired' : String(deadline - NOW));

function showCommand(c: Command): string {
  switch (c.kind) {
    case 'get':
      return `get${c.touch !== undefined ? `@${ms(c.touch)}` : ''} ${c.keys.join(',')}`;
    case 'store':
      return `${c.mode} ${c.key} f=${c.flags} d=${ms(c.deadline)} v=${JSON.stringify(c.value.toString('latin1'))}${c.cas !== undefined ? ` cas=${c.cas}` : ''}${c.noreply ? ' noreply' : ''}`;
    case 'too_large':
      return `too_large${c.mode === 'set' ? '' : ` ${c.mode}`} ${c.key}${c.noreply ? ' noreply' : ''}`;
    case 'delete':
      return `delete ${c.key}${c.noreply ? ' noreply' : ''}`;
    case 'touch':
      return `touch ${c.key} d=${ms(c.deadline)}`;
    case 'arith':
      return `${c.op} ${c.key} ${c.delta} init=${c.initial ?? 'none'} d=${ms(c.deadline)}${c.noreply ? ' noreply' : ''}`;
    case 'flush':
      return `flush ${c.delay}${c.noreply ? ' noreply' : ''}`;
    case 'stats':
      return `stats '${c.group}'`;
    default:
      return c.kind;
  }
}

/** A decoded result as one line: the command and its opcode, or the error answer. */
function show(d: Decoded): string {
  if (d.kind === 'request') {
    const tag = d.request.tag as { opcode: number; opaque: number; quiet: boolean };
    assert.equal(tag.opaque, OPAQUE);
    return `${showCommand(d.request.command)} [${hex(tag.opcode)}${tag.quiet ? ' q' : ''}]`;
  }
  const close = d.close ? ' [close]' : '';
  if (d.bytes.length === 0) return `silent${close}`;
  const [r] = responses(d.bytes);
  return `${r}${close}`;
}

function codec(limits = LIMITS): BinaryCodec {
  return new BinaryCodec(limits, () => NOW);
}

function run(chunks: Buffer[], limits = LIMITS): string[] {
  const c = codec(limits);
  const out: string[] = [];
  for (const chunk of chunks) {
    c.push(chunk);
    for (let d = c.next(); d !== undefined; d = c.next()) out.push(show(d));
  }
  return out;
}

/** Feeds `input` whole, byte by byte, and split in two at every offset: all must agree (B12). */
function check(input: Buffer, expected: string[], limits = LIMITS): void {
  assert.deepEqual(run([input], limits), expected, 'whole');
  const bytes: Buffer[] = [];
  for (let i = 0; i < input.length; i++) bytes.push(input.subarray(i, i + 1));
  assert.deepEqual(run(bytes, limits), expected, 'byte by byte');
  for (let i = 1; i < input.length; i++) {
    assert.deepEqual(run([input.subarray(0, i), input.subarray(i)], limits), expected, `split at ${i}`);
  }
}

const cat = (...frames: Buffer[]): Buffer => Buffer.concat(frames);
const NOOP = frame({ op: OP.NOOP });
const EINVAL_CLOSE = (op: number, msg: string): string => `${hex(op)} s=0x04 cas=0 v=${JSON.stringify(msg)} [close]`;
const EINVAL = (op: number, msg: string): string => `${hex(op)} s=0x04 cas=0 v=${JSON.stringify(msg)}`;
const k250 = 'k'.repeat(250);

// ─── decoding ────────────────────────────────────────────────────────────────────────────────

const DECODE: Array<[string, Buffer, string[]]> = [
  ['GET family: one key a frame', cat(
    frame({ op: OP.GET, key: 'a' }), frame({ op: OP.GETQ, key: 'b' }), frame({ op: OP.GETK, key: 'c' }), frame({ op: OP.GETKQ, key: 'd' }),
  ), ['get a [0x00]', 'get b [0x09 q]', 'get c [0x0c]', 'get d [0x0d q]']],
  ['key of 250 bytes', frame({ op: OP.GET, key: k250 }), [`get ${k250} [0x00]`]],
  ['GAT family touches with a deadline', cat(
    frame({ op: OP.GAT, key: 'a', extras: u32(100) }), frame({ op: OP.GATQ, key: 'b', extras: u32(0) }),
    frame({ op: OP.GATK, key: 'c', extras: u32(100) }), frame({ op: OP.GATKQ, key: 'd', extras: u32(100) }),
  ), ['get@100000 a [0x1d]', 'get@0 b [0x1e q]', 'get@100000 c [0x23]', 'get@100000 d [0x24 q]']],
  ['exptime is signed: GAT/TOUCH -1 means already expired (T10)', cat(
    frame({ op: OP.GAT, key: 'a', extras: u32(-1) }), frame({ op: OP.TOUCH, key: 'b', extras: u32(-1) }), frame({ op: OP.TOUCH, key: 'c', extras: u32(60) }),
  ), ['get@expired a [0x1d]', 'touch b d=expired [0x1c]', 'touch c d=60000 [0x1c]']],
  ['SET family with flags and exptime', cat(
    frame({ op: OP.SET, key: 'k', extras: setExtras(0xffffffff, 0), value: 'abc' }),
    frame({ op: OP.ADDQ, key: 'k', extras: setExtras(7, 2592000), value: '' }),
    frame({ op: OP.REPLACEQ, key: 'k', extras: setExtras(0, -1), value: 'r' }),
  ), [
    'set k f=4294967295 d=0 v="abc" [0x01]', `add k f=7 d=${2592000 * 1000} v="" noreply [0x12 q]`, 'replace k f=0 d=expired v="r" noreply [0x13 q]',
  ]],
  ['exptime rules as in text: 2592001 and the 2678400 probe are 1970 (T8, T9), future absolute', cat(
    frame({ op: OP.SET, key: 'a', extras: setExtras(0, 2592001), value: 'a' }),
    frame({ op: OP.ADD, key: 'b', extras: setExtras(0, 2678400), value: '' }),
    frame({ op: OP.SET, key: 'c', extras: setExtras(0, NOW / 1000 + 3600), value: 'c' }),
  ), ['set a f=0 d=expired v="a" [0x01]', 'add b f=0 d=expired v="" [0x02]', 'set c f=0 d=3600000 v="c" [0x01]']],
  ['B3 a CAS in the header makes SET, REPLACE (and ADD, as proto_bin.c) a cas store', cat(
    frame({ op: OP.SET, key: 'k', extras: setExtras(1, 0), value: 'v', cas: 42n }),
    frame({ op: OP.REPLACEQ, key: 'k', extras: setExtras(1, 0), value: 'v', cas: 0xffffffffffffffffn }),
    frame({ op: OP.ADD, key: 'k', extras: setExtras(1, 0), value: 'v', cas: 7n }),
  ), ['cas k f=1 d=0 v="v" cas=42 [0x01]', 'cas k f=1 d=0 v="v" cas=18446744073709551615 noreply [0x13 q]', 'cas k f=1 d=0 v="v" cas=7 [0x02]']],
  ['APPEND / PREPEND: no extras, value kept whole', cat(
    frame({ op: OP.APPEND, key: 'k', value: ' world' }), frame({ op: OP.PREPENDQ, key: 'k', value: Buffer.from([0, 0x0d, 0x0a]) }),
  ), ['append k f=0 d=0 v=" world" [0x0e]', 'prepend k f=0 d=0 v="\\u0000\\r\\n" noreply [0x1a q]']],
  ['DELETE / DELETEQ', cat(frame({ op: OP.DELETE, key: 'k' }), frame({ op: OP.DELETEQ, key: 'k' })), ['delete k [0x04]', 'delete k noreply [0x14 q]']],
  ['B4 INCR / DECR: exptime 0xffffffff never creates; any other creates with initial', cat(
    frame({ op: OP.INCREMENT, key: 'n', extras: arithExtras(5n, 10n, 0) }),
    frame({ op: OP.INCREMENT, key: 'n', extras: arithExtras(1n, 0n, 0xffffffff) }),
    frame({ op: OP.DECREMENTQ, key: 'n', extras: arithExtras(0xffffffffffffffffn, 0xffffffffffffffffn, 60) }),
  ), [
    'incr n 5 init=10 d=0 [0x05]', 'incr n 1 init=none d=0 [0x05]', 'decr n 18446744073709551615 init=18446744073709551615 d=60000 noreply [0x16 q]',
  ]],
  ['QUIT / QUITQ (B11)', cat(frame({ op: OP.QUIT }), frame({ op: OP.QUITQ })), ['quit [0x07]', 'quit [0x17 q]']],
  ['FLUSH: no delay, a delay, an absolute time (passed as an exptime: the router converts), quiet', cat(
    frame({ op: OP.FLUSH }), frame({ op: OP.FLUSH, extras: u32(0) }), frame({ op: OP.FLUSH, extras: u32(10) }),
    frame({ op: OP.FLUSHQ, extras: u32(NOW / 1000 + 50) }), frame({ op: OP.FLUSH, extras: u32(NOW / 1000 - 50) }),
  ), ['flush 0 [0x08]', 'flush 0 [0x08]', 'flush 10 [0x08]', `flush ${NOW / 1000 + 50} noreply [0x18 q]`, `flush ${NOW / 1000 - 50} [0x08]`]],
  ['FLUSH delay 0xffffffff: unsigned, as memcached reads it (a time far off), not refused', cat(frame({ op: OP.FLUSH, extras: u32(-1) }), NOOP), [
    'flush 4294967295 [0x08]', 'noop [0x0a]',
  ]],
  ['NOOP, VERSION, STAT, VERBOSITY', cat(
    NOOP, frame({ op: OP.VERSION }), frame({ op: OP.STAT }), frame({ op: OP.STAT, key: 'upstreams' }), frame({ op: OP.STAT, key: 'detail dump' }),
    frame({ op: OP.VERBOSITY, extras: u32(1) }),
  ), ['noop [0x0a]', 'version [0x0b]', "stats '' [0x10]", "stats 'upstreams' [0x10]", "stats 'detail dump' [0x10]", 'verbosity [0x1b]']],
  ['value of exactly the item limit', frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), value: 'v'.repeat(1024) }), [
    `set k f=0 d=0 v="${'v'.repeat(1024)}" [0x01]`,
  ]],
  ['datatype and vbucket are ignored', (() => {
    const f = frame({ op: OP.GET, key: 'k' });
    f.writeUInt8(0x01, 5);
    f.writeUInt16BE(7, 6);
    return f;
  })(), ['get k [0x00]']],

  // B6: malformed frames: 0x04 invalid arguments, then close; nothing after them is decoded.
  ['B6 GET with key length 0', cat(frame({ op: OP.GET }), NOOP), [EINVAL_CLOSE(OP.GET, 'a key is required')]],
  ['B6 key length 251', cat(frame({ op: OP.GET, key: 'k'.repeat(251) }), NOOP), [EINVAL_CLOSE(OP.GET, 'key longer than 250 bytes')]],
  ['B6 key length 65535 decided on the header alone', frame({ op: OP.SET, extras: setExtras(0, 0), keyLength: 65535, bodyLength: 65535 + 8 }).subarray(0, 24), [
    EINVAL_CLOSE(OP.SET, 'key longer than 250 bytes'),
  ]],
  ['B6 wrong extras length (CVE-2020-10931): SET without extras', cat(frame({ op: OP.SET, key: 'k', value: 'v' }), NOOP), [
    EINVAL_CLOSE(OP.SET, 'wrong extras length for the opcode'),
  ]],
  ['B6 wrong extras length: INCR with 8', frame({ op: OP.INCREMENT, key: 'n', extras: Buffer.alloc(8) }), [
    EINVAL_CLOSE(OP.INCREMENT, 'wrong extras length for the opcode'),
  ]],
  ['B6 GET with extras', frame({ op: OP.GET, key: 'k', extras: Buffer.alloc(4) }), [EINVAL_CLOSE(OP.GET, 'wrong extras length for the opcode')]],
  ['B6 FLUSH with 8 bytes of extras', frame({ op: OP.FLUSH, extras: Buffer.alloc(8) }), [EINVAL_CLOSE(OP.FLUSH, 'wrong extras length for the opcode')]],
  ['B6 GAT without extras', frame({ op: OP.GAT, key: 'k' }), [EINVAL_CLOSE(OP.GAT, 'wrong extras length for the opcode')]],
  ['B6 NOOP with a key', frame({ op: OP.NOOP, key: 'k' }), [EINVAL_CLOSE(OP.NOOP, 'no key allowed')]],
  ['B6 GET with a value', frame({ op: OP.GET, key: 'k', value: 'x' }), [EINVAL_CLOSE(OP.GET, 'no value allowed')]],
  ['B6 DELETE with a value', frame({ op: OP.DELETE, key: 'k', value: 'x' }), [EINVAL_CLOSE(OP.DELETE, 'no value allowed')]],

  // Keys are validated as in text (T3): 0x04, but the frame is intact, so the connection stays.
  ['control byte in a key: 0x04, connection kept', cat(frame({ op: OP.GET, key: 'a\x00b' }), frame({ op: OP.GETQ, key: 'a b' }), NOOP), [
    EINVAL(OP.GET, 'invalid key'), EINVAL(OP.GETQ, 'invalid key'), 'noop [0x0a]',
  ]],
  ['CR LF in a key can never become two commands', cat(frame({ op: OP.DELETE, key: 'a\r\nflush_all' }), NOOP), [EINVAL(OP.DELETE, 'invalid key'), 'noop [0x0a]']],
  ['mcmux\'s own keys (the cold detector\'s markers) are refused as invalid, the value skipped', cat(frame({ op: OP.GET, key: 'mcmux.sentinel.h' }), frame({ op: OP.SET, key: 'mcmux.sentinel.h', extras: setExtras(0, 0), value: NOOP }), frame({ op: OP.DELETE, key: 'mcmux.sentinel.x' }), NOOP), [
    EINVAL(OP.GET, 'invalid key'), EINVAL(OP.SET, 'invalid key'), EINVAL(OP.DELETE, 'invalid key'), 'noop [0x0a]',
  ]],
  ['bad key on SET: the value is skipped, never run', cat(frame({ op: OP.SET, key: 'a\x7f', extras: setExtras(0, 0), value: NOOP }), NOOP), [
    EINVAL(OP.SET, 'invalid key'), 'noop [0x0a]',
  ]],
  ['a CAS where mcmux cannot check it is refused, never ignored', cat(
    frame({ op: OP.DELETE, key: 'k', cas: 5n }), frame({ op: OP.APPENDQ, key: 'k', value: 'xyz', cas: 5n }),
    frame({ op: OP.INCREMENT, key: 'k', extras: arithExtras(1n, 0n, 0), cas: 5n }), NOOP,
  ), [
    EINVAL(OP.DELETE, 'mcmux does not support a CAS on this command'), EINVAL(OP.APPENDQ, 'mcmux does not support a CAS on this command'),
    EINVAL(OP.INCREMENT, 'mcmux does not support a CAS on this command'), 'noop [0x0a]',
  ]],
  ['a CAS on GET is ignored, as memcached does', frame({ op: OP.GET, key: 'k', cas: 5n }), ['get k [0x00]']],

  // B7: lengths that do not add up; bodies over the limit.
  ['B7 key + extras longer than the body', cat(frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), bodyLength: 8 }), NOOP), [
    EINVAL_CLOSE(OP.SET, 'key and extras longer than the body'),
  ]],
  ['B7 SET body over 1 GiB: too_large (the old value deleted, hazard 8), then close; the body is never awaited', frame({
    op: OP.SET, key: 'big', extras: setExtras(0, 0), bodyLength: 0xffffffff,
  }), ['too_large big [0x01]', 'silent [close]']],
  ['T5 SETQ value one byte over the limit: too_large, the body skipped (never run), the connection kept', cat(
    frame({ op: OP.SETQ, key: 'big', extras: setExtras(0, 0), value: cat(frame({ op: OP.FLUSH }), Buffer.alloc(1025, 0x61)) }), NOOP,
  ), ['too_large big [0x11 q]', 'noop [0x0a]']],
  ['T5 APPEND one byte over the limit', cat(frame({ op: OP.APPEND, key: 'big', value: 'v'.repeat(1025) }), NOOP), ['too_large append big [0x0e]', 'noop [0x0a]']],
  ['B7 a bad key with a body over 1 GiB closes rather than skip it', frame({ op: OP.SET, key: 'a b', extras: setExtras(0, 0), bodyLength: 11 + 2 ** 30 + 1 }), [
    EINVAL_CLOSE(OP.SET, 'invalid key'),
  ]],
  ['B7 unknown opcode with a body over the limit', frame({ op: 0x50, bodyLength: 1024 + 250 + 33 }), [
    `0x50 s=0x04 cas=0 v="body too long" [close]`,
  ]],
  ['a bad key with a body over the item limit: 0x04, the body skipped', cat(frame({ op: OP.SET, key: 'a b', extras: setExtras(0, 0), value: Buffer.alloc(5000) }), NOOP), [
    EINVAL(OP.SET, 'invalid key'), 'noop [0x0a]',
  ]],

  // B8: bad magic, even after good frames: close without a word.
  ['B8 bad magic closes silently', cat(NOOP, frame({ op: OP.NOOP, magic: 0x81 }), NOOP), ['noop [0x0a]', 'silent [close]']],
  ['B8 text after binary closes silently', cat(NOOP, Buffer.from('get k\r\n'.repeat(4))), ['noop [0x0a]', 'silent [close]']],

  // B9: unknown opcodes and SASL: 0x81, body skipped, connection kept.
  ['B9 unknown opcode', cat(frame({ op: 0x50, key: 'k', extras: Buffer.alloc(3), value: 'junk' }), NOOP), [
    '0x50 s=0x81 cas=0 v="Unknown command"', 'noop [0x0a]',
  ]],
  ['B9 SASL opcodes', cat(
    frame({ op: OP.SASL_LIST_MECHS }), frame({ op: OP.SASL_AUTH, key: 'PLAIN', value: '\0user\0password' }), frame({ op: OP.SASL_STEP, key: 'PLAIN', value: 'x' }), NOOP,
  ), ['0x20 s=0x81 cas=0 v="Unknown command"', '0x21 s=0x81 cas=0 v="Unknown command"', '0x22 s=0x81 cas=0 v="Unknown command"', 'noop [0x0a]']],
  ['B9 an unknown opcode whose body holds frames: they are skipped', cat(frame({ op: 0x99, value: cat(frame({ op: OP.FLUSH }), NOOP) }), NOOP), [
    '0x99 s=0x81 cas=0 v="Unknown command"', 'noop [0x0a]',
  ]],

  ['B12 pipelined frames of every size', cat(
    frame({ op: OP.SET, key: 'a', extras: setExtras(1, 0), value: 'x'.repeat(300) }), frame({ op: OP.GETKQ, key: 'a' }),
    frame({ op: OP.INCREMENTQ, key: 'n', extras: arithExtras(1n, 0n, 0) }), NOOP,
  ), [`set a f=1 d=0 v="${'x'.repeat(300)}" [0x01]`, 'get a [0x0d q]', 'incr n 1 init=0 d=0 noreply [0x15 q]', 'noop [0x0a]']],
];

describe('binary codec: decoding', () => {
  for (const [name, input, expected] of DECODE) {
    it(name, () => check(input, expected));
  }

  it('B7 nothing is buffered for a refused body: an unknown opcode skips it as it arrives', () => {
    const c = codec();
    c.push(frame({ op: 0x50, bodyLength: 1000 }));
    assert.match(show(c.next() as Decoded), /s=0x81/);
    for (let i = 0; i < 10; i++) c.push(Buffer.alloc(100, 0x80));
    assert.equal(c.buffered, 0);
    c.push(NOOP);
    assert.equal(show(c.next() as Decoded), 'noop [0x0a]');
  });

  it('T5 a too-large value is skipped as it arrives, never buffered', () => {
    const c = codec();
    c.push(frame({ op: OP.SET, key: 'big', extras: setExtras(0, 0), bodyLength: 11 + 10_000_000 }));
    assert.equal(show(c.next() as Decoded), 'too_large big [0x01]');
    for (let i = 0; i < 152; i++) c.push(Buffer.alloc(65536, 0x80));
    assert.equal(c.buffered, 0);
    assert.equal(c.next(), undefined);
    c.push(cat(Buffer.alloc(10_000_000 - 152 * 65536, 0x80), NOOP));
    assert.equal(show(c.next() as Decoded), 'noop [0x0a]');
  });

  it('B7 a SET of 4 GiB is decided on header + extras + key, with nothing more buffered', () => {
    const p = new BinaryRequestParser(LIMITS, () => NOW);
    p.push(frame({ op: OP.SET, key: 'big', extras: setExtras(0, 0), bodyLength: 0xffffffff }));
    const r = p.next();
    assert.ok(r && r.kind === 'request' && r.command.kind === 'too_large');
    p.push(Buffer.alloc(65536));
    assert.ok(p.next()?.kind === 'parse_error');
    p.push(Buffer.alloc(65536));
    assert.equal(p.buffered, 0, 'a closed parser keeps nothing');
    assert.equal(p.next(), undefined);
  });

  it('a body trickled a byte a read, from a reused buffer, is held in few buffers and arrives whole', () => {
    const p = new BinaryRequestParser({ ...LIMITS, maxItemSize: 1 << 20 }, () => NOW);
    const value = Buffer.alloc(64 * 1024, 'abcdefgh');
    const input = frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), value });
    const shared = Buffer.alloc(1); // as the connections' shared read buffer: overwritten each read
    for (let i = 0; i < input.length; i++) {
      shared[0] = input[i] as number;
      p.push(shared, true);
      p.detach();
      if (i < input.length - 1) assert.equal(p.next(), undefined);
    }
    const chunks = (p as unknown as { chunks: Buffer[] }).chunks.length;
    assert.ok(chunks <= 6, `${chunks} buffers for ${input.length} one-byte reads`);
    const r = p.next();
    assert.ok(r && r.kind === 'request' && r.command.kind === 'store');
    assert.deepEqual((r.command as { value: Buffer }).value, value);
    assert.equal(p.buffered, 0);
  });

  it('waits for the whole body before yielding a store', () => {
    const c = codec();
    const f = frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), value: 'hello' });
    c.push(f.subarray(0, f.length - 1));
    assert.equal(c.next(), undefined);
    assert.equal(c.buffered, f.length - 1);
    c.push(f.subarray(f.length - 1));
    assert.equal(show(c.next() as Decoded), 'set k f=0 d=0 v="hello" [0x01]');
    assert.equal(c.buffered, 0);
  });

  it('values are slices of the input, not copies', () => {
    const p = new BinaryRequestParser(LIMITS, () => NOW);
    const input = frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), value: 'hello' });
    p.push(input);
    const r = p.next();
    assert.ok(r && r.kind === 'request' && r.command.kind === 'store');
    assert.equal(r.command.value.buffer, input.buffer);
  });

  it('a store says whether its response carries the unique: a quiet one sends no success response', () => {
    const p = new BinaryRequestParser(LIMITS, () => NOW);
    const frames = [
      frame({ op: OP.SET, key: 'a', extras: setExtras(0, 0), value: 'v' }),
      frame({ op: OP.SETQ, key: 'b', extras: setExtras(0, 0), value: 'v' }),
      frame({ op: OP.APPEND, key: 'c', value: 'v' }),
      frame({ op: OP.APPENDQ, key: 'd', value: 'v' }),
    ];
    p.push(Buffer.concat(frames));
    const seen: Array<[string, boolean]> = [];
    for (let r = p.next(); r !== undefined; r = p.next()) {
      assert.ok(r.kind === 'request' && r.command.kind === 'store');
      seen.push([r.command.key, r.command.withCas]);
    }
    assert.deepEqual(seen, [['a', true], ['b', false], ['c', true], ['d', false]]);
  });

  it('the codec factory picks binary on 0x80 and text otherwise', () => {
    const limits = { ...LIMITS, maxReadsHeld: 16, maxPipeline: 16, maxOutputBytes: 1 << 20, maxInputBytes: 1 << 20 };
    assert.ok(binaryCodecFactory(0x80, limits) instanceof BinaryCodec);
    assert.ok(binaryCodecFactory(0x67, limits) instanceof TextCodec);
    assert.ok(binaryCodecFactory(0x81, limits) instanceof TextCodec);
  });
});

// ─── S2: the extras length of every opcode ───────────────────────────────────────────────────

/**
 * Request extras lengths as memcached documents them, written down from the documents, not from
 * the parser: doc/protocol-binary.xml and the wiki's BinaryProtocolRevamped ("MUST NOT have
 * extras" = 0; set/add/replace: 4-byte flags + 4-byte expiration = 8; incr/decr: 8 + 8 + 4 = 20;
 * Flush "MAY have extras", a 4-byte expiration = 0 or 4; Verbosity, Touch, GAT, GATQ: 4), and
 * protocol_binary.h for GATK/GATKQ (`typedef protocol_binary_request_gat ..._gatk`: 4).
 * Key: 'key' MUST have one, 'none' MUST NOT (Stat MAY: sent without). Value: MUST have one.
 */
const SPEC_EXTRAS: ReadonlyArray<readonly [name: string, op: number, extras: readonly number[], key: 'key' | 'none', value: boolean]> = [
  ['Get', 0x00, [0], 'key', false], ['GetQ', 0x09, [0], 'key', false], ['GetK', 0x0c, [0], 'key', false], ['GetKQ', 0x0d, [0], 'key', false],
  ['Set', 0x01, [8], 'key', true], ['SetQ', 0x11, [8], 'key', true], ['Add', 0x02, [8], 'key', true], ['AddQ', 0x12, [8], 'key', true],
  ['Replace', 0x03, [8], 'key', true], ['ReplaceQ', 0x13, [8], 'key', true],
  ['Delete', 0x04, [0], 'key', false], ['DeleteQ', 0x14, [0], 'key', false],
  ['Increment', 0x05, [20], 'key', false], ['IncrementQ', 0x15, [20], 'key', false],
  ['Decrement', 0x06, [20], 'key', false], ['DecrementQ', 0x16, [20], 'key', false],
  ['Quit', 0x07, [0], 'none', false], ['QuitQ', 0x17, [0], 'none', false],
  ['Flush', 0x08, [0, 4], 'none', false], ['FlushQ', 0x18, [0, 4], 'none', false],
  ['No-op', 0x0a, [0], 'none', false], ['Version', 0x0b, [0], 'none', false],
  ['Append', 0x0e, [0], 'key', true], ['AppendQ', 0x19, [0], 'key', true], ['Prepend', 0x0f, [0], 'key', true], ['PrependQ', 0x1a, [0], 'key', true],
  ['Stat', 0x10, [0], 'none', false], ['Verbosity', 0x1b, [4], 'none', false],
  ['Touch', 0x1c, [4], 'key', false], ['GAT', 0x1d, [4], 'key', false], ['GATQ', 0x1e, [4], 'key', false],
  ['GATK', 0x23, [4], 'key', false], ['GATKQ', 0x24, [4], 'key', false],
];
const EXTRAS_TRIED = [0, 3, 4, 8, 20];

/** The opcodes the parser takes as commands: those not answered 0x81 unknown command. */
function acceptedOpcodes(): number[] {
  const out: number[] = [];
  for (let op = 0; op <= 0xff; op++) {
    const [first] = run([frame({ op })]);
    if (!/^0x[0-9a-f]{2} s=0x81 /.test(first ?? '')) out.push(op);
  }
  return out;
}

describe('binary codec: S2 extras length per opcode, against the spec', () => {
  it('S2 the opcodes the parser accepts are exactly the documented ones memcached implements (no SASL)', () => {
    assert.deepEqual(acceptedOpcodes().map(hex), SPEC_EXTRAS.map(([, op]) => op).sort((a, b) => a - b).map(hex));
  });

  for (const op of acceptedOpcodes()) {
    const spec = SPEC_EXTRAS.find(([, o]) => o === op);
    const name = spec ? `${spec[0]} (${hex(op)})` : hex(op);
    it(`S2 ${name}: only extras of ${spec ? spec[2].join(' or ') : '?'} bytes decode; ${EXTRAS_TRIED.join(', ')} tried, any other is 0x04 and close`, () => {
      assert.ok(spec, `opcode ${hex(op)} is accepted but the spec documents no request shape for it`);
      const [, , documented, key, value] = spec;
      const want: Record<number, string> = {};
      const got: Record<number, string> = {};
      for (const n of EXTRAS_TRIED) {
        const input = cat(frame({ op, key: key === 'key' ? 'k' : undefined, extras: Buffer.alloc(n), value: value ? 'v' : undefined }), NOOP);
        const out = run([input]);
        want[n] = documented.includes(n) ? 'decoded, then the NOOP' : '0x04, close';
        const decoded = out.length === 2 && new RegExp(`\\[${hex(op)}( q)?\\]$`).test(out[0] ?? '') && out[1] === 'noop [0x0a]';
        const refused = out.length === 1 && new RegExp(`^${hex(op)} s=0x04 .*\\[close\\]$`).test(out[0] ?? '');
        got[n] = decoded ? 'decoded, then the NOOP' : refused ? '0x04, close' : JSON.stringify(out);
        check(input, out); // and the same however the frame is split (B12)
      }
      assert.deepEqual(got, want);
    });
  }
});

// ─── encoding ────────────────────────────────────────────────────────────────────────────────

/** Decodes the one request in `f` and encodes `reply` to it. */
function answer(f: Buffer, reply: Reply): string[] {
  const c = codec();
  c.push(f);
  const d = c.next();
  assert.ok(d && d.kind === 'request', `a request: ${d ? show(d) : 'none'}`);
  const out = new OutBuffer();
  c.encode(reply, d.request, out);
  return responses(Buffer.concat(out.take()));
}

const hit = (value: string, flags = 0, cas = 9n) => ({ value: Buffer.from(value, 'latin1'), flags, cas, deadline: 0 });
const values = (...hits: Array<ReturnType<typeof hit> | undefined>): Reply => ({ kind: 'values', hits });
const status = (s: Extract<Reply, { kind: 'status' }>['status'], cas?: bigint): Reply => (cas === undefined ? { kind: 'status', status: s } : { kind: 'status', status: s, cas });
const err = (type: 'ERROR' | 'CLIENT_ERROR' | 'SERVER_ERROR', message: string): Reply => ({ kind: 'error', type, message });
const NONE: Reply = { kind: 'none' };

const GET = frame({ op: OP.GET, key: 'key' });
const GETQ = frame({ op: OP.GETQ, key: 'key' });
const GETK = frame({ op: OP.GETK, key: 'key' });
const GETKQ = frame({ op: OP.GETKQ, key: 'key' });
const GAT = frame({ op: OP.GAT, key: 'key', extras: u32(10) });
const GATQ = frame({ op: OP.GATQ, key: 'key', extras: u32(10) });
const GATKQ = frame({ op: OP.GATKQ, key: 'key', extras: u32(10) });
const set = (op: number, cas = 0n): Buffer => frame({ op, key: 'k', extras: setExtras(0, 0), value: 'v', cas });
const arith = (op: number, exptime = 0): Buffer => frame({ op, key: 'n', extras: arithExtras(1n, 0n, exptime) });
const SERVER_DOWN = 'no upstream answered: connect ECONNREFUSED';

const ENCODE: Array<[string, Buffer, Reply, string[]]> = [
  ['GET hit: flags extras, item cas, value, no key', GET, values(hit('hello', 7, 9n)), ['0x00 s=0x00 cas=9 x=00000007 v="hello"']],
  ['GET hit with an empty value', GET, values(hit('', 0xffffffff)), ['0x00 s=0x00 cas=9 x=ffffffff']],
  ['GETK hit carries the key', GETK, values(hit('hello')), ['0x0c s=0x00 cas=9 x=00000000 k=key v="hello"']],
  ['GETQ hit is sent', GETQ, values(hit('hello')), ['0x09 s=0x00 cas=9 x=00000000 v="hello"']],
  ['GETKQ hit is sent with the key', GETKQ, values(hit('hello')), ['0x0d s=0x00 cas=9 x=00000000 k=key v="hello"']],
  ['GET miss: 0x01 "Not found", cas 0', GET, values(undefined), ['0x00 s=0x01 cas=0 v="Not found"']],
  ['GETK miss: 0x01 with the key', GETK, values(undefined), ['0x0c s=0x01 cas=0 k=key']],
  ['B1 GETQ miss: nothing', GETQ, values(undefined), []],
  ['B1 GETKQ miss: nothing', GETKQ, values(undefined), []],
  ['GAT hit', GAT, values(hit('v')), ['0x1d s=0x00 cas=9 x=00000000 v="v"']],
  ['GATQ miss: nothing', GATQ, values(undefined), []],
  ['GATKQ hit with the key', GATKQ, values(hit('v')), ['0x24 s=0x00 cas=9 x=00000000 k=key v="v"']],
  ['GET when no upstream answered: 0x84 with the message', GET, err('SERVER_ERROR', SERVER_DOWN), [`0x00 s=0x84 cas=0 v="${SERVER_DOWN}"`]],
  ['GETQ failure is sent', GETQ, err('SERVER_ERROR', SERVER_DOWN), [`0x09 s=0x84 cas=0 v="${SERVER_DOWN}"`]],

  ['B10 SET answer carries the cas the router gives', set(OP.SET), status('STORED', 42n), ['0x01 s=0x00 cas=42']],
  ['SET answer without a known cas', set(OP.SET), status('STORED'), ['0x01 s=0x00 cas=0']],
  ['SETQ success: nothing', set(OP.SETQ), status('STORED', 42n), []],
  ['B2 SETQ with a wrong CAS: 0x02 is sent', set(OP.SETQ, 5n), status('EXISTS'), ['0x11 s=0x02 cas=0 v="Data exists for key."']],
  ['B2 ADDQ on an existing key: 0x02 (proto_bin.c), not 0x05', set(OP.ADDQ), status('NOT_STORED'), ['0x12 s=0x02 cas=0 v="Data exists for key."']],
  ['ADD on an existing key: 0x02', set(OP.ADD), status('NOT_STORED'), ['0x02 s=0x02 cas=0 v="Data exists for key."']],
  ['REPLACE on a missing key: 0x01 (proto_bin.c)', set(OP.REPLACE), status('NOT_STORED'), ['0x03 s=0x01 cas=0 v="Not found"']],
  ['B3 SET with a CAS on a missing key: 0x01', set(OP.SET, 5n), status('NOT_FOUND'), ['0x01 s=0x01 cas=0 v="Not found"']],
  ['APPEND on a missing key: 0x05', frame({ op: OP.APPEND, key: 'k', value: 'x' }), status('NOT_STORED'), ['0x0e s=0x05 cas=0 v="Not stored."']],
  ['APPENDQ success: nothing', frame({ op: OP.APPENDQ, key: 'k', value: 'x' }), status('STORED', 3n), []],
  ['PREPEND success carries the cas', frame({ op: OP.PREPEND, key: 'k', value: 'x' }), status('STORED', 3n), ['0x0f s=0x00 cas=3']],
  ['SET refused by the router: CLIENT_ERROR is 0x04 with the message', set(OP.SET), err('CLIENT_ERROR', 'bad'), ['0x01 s=0x04 cas=0 v="bad"']],
  ['SET that failed on the upstreams: 0x84', set(OP.SET), err('SERVER_ERROR', 'stored on 0 of 2 upstreams'), ['0x01 s=0x84 cas=0 v="stored on 0 of 2 upstreams"']],
  ['SETQ that failed on the upstreams is sent', set(OP.SETQ), err('SERVER_ERROR', 'x'), ['0x11 s=0x84 cas=0 v="x"']],
  // memcached's binary body for the status, not the text protocol's SERVER_ERROR line (review-binary-differential).
  ['too large: 0x03 with memcached\'s message', frame({ op: OP.SET, key: 'k', extras: setExtras(0, 0), value: 'v'.repeat(1025) }), err('SERVER_ERROR', 'object too large for cache'), [
    '0x01 s=0x03 cas=0 v="Too large."',
  ]],
  ['SETQ too large is sent', frame({ op: OP.SETQ, key: 'k', extras: setExtras(0, 0), bodyLength: 1e6 }), err('SERVER_ERROR', 'object too large for cache'), [
    '0x11 s=0x03 cas=0 v="Too large."',
  ]],

  ['B10 DELETE answer: cas 0', frame({ op: OP.DELETE, key: 'k' }), status('DELETED'), ['0x04 s=0x00 cas=0']],
  ['DELETEQ success: nothing', frame({ op: OP.DELETEQ, key: 'k' }), status('DELETED'), []],
  ['DELETE miss: 0x01', frame({ op: OP.DELETE, key: 'k' }), status('NOT_FOUND'), ['0x04 s=0x01 cas=0 v="Not found"']],
  ['DELETEQ miss is sent', frame({ op: OP.DELETEQ, key: 'k' }), status('NOT_FOUND'), ['0x14 s=0x01 cas=0 v="Not found"']],

  ['INCR: the 8-byte value', arith(OP.INCREMENT), { kind: 'number', value: 11n }, ['0x05 s=0x00 cas=0 v="\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u000b"']],
  ['INCR: the value and a cas when the router has one', arith(OP.INCREMENT), { kind: 'number', value: 0xffffffffffffffffn, cas: 4n }, [
    `0x05 s=0x00 cas=4 v="${'ÿ'.repeat(8)}"`,
  ]],
  ['INCRQ success: nothing', arith(OP.INCREMENTQ), { kind: 'number', value: 1n }, []],
  ['B4 INCR miss without create: 0x01', arith(OP.INCREMENT, 0xffffffff), status('NOT_FOUND'), ['0x05 s=0x01 cas=0 v="Not found"']],
  // memcached's binary body for 0x06, not the text protocol's CLIENT_ERROR line (review-binary-differential).
  ['B5 INCR on a non-numeric value: 0x06', arith(OP.INCREMENT), err('CLIENT_ERROR', 'cannot increment or decrement non-numeric value'), [
    '0x05 s=0x06 cas=0 v="Non-numeric server-side value for incr or decr"',
  ]],
  ['B5 DECRQ on a non-numeric value is sent', arith(OP.DECREMENTQ), err('CLIENT_ERROR', 'cannot increment or decrement non-numeric value'), [
    '0x16 s=0x06 cas=0 v="Non-numeric server-side value for incr or decr"',
  ]],
  ['INCR create raced and failed: 0x05', arith(OP.INCREMENT), status('NOT_STORED'), ['0x05 s=0x05 cas=0 v="Not stored."']],

  ['TOUCH hit', frame({ op: OP.TOUCH, key: 'k', extras: u32(10) }), status('TOUCHED'), ['0x1c s=0x00 cas=0']],
  ['TOUCH miss', frame({ op: OP.TOUCH, key: 'k', extras: u32(10) }), status('NOT_FOUND'), ['0x1c s=0x01 cas=0 v="Not found"']],

  ['B10 FLUSH answer: cas 0', frame({ op: OP.FLUSH }), status('OK'), ['0x08 s=0x00 cas=0']],
  ['FLUSHQ success: nothing', frame({ op: OP.FLUSHQ }), status('OK'), []],
  ['FLUSH refused (no --allow-flush): 0x84 with the message naming the setting', frame({ op: OP.FLUSH }), err('SERVER_ERROR', 'flush_all is disabled: start mcmux with --allow-flush'), [
    '0x08 s=0x84 cas=0 v="flush_all is disabled: start mcmux with --allow-flush"',
  ]],
  ['FLUSHQ refused is sent', frame({ op: OP.FLUSHQ }), err('SERVER_ERROR', 'disabled'), ['0x18 s=0x84 cas=0 v="disabled"']],

  ['B10 NOOP: empty success, cas 0', NOOP, NONE, ['0x0a s=0x00 cas=0']],
  ['B11 QUIT: answered', frame({ op: OP.QUIT }), NONE, ['0x07 s=0x00 cas=0']],
  ['B11 QUITQ: nothing', frame({ op: OP.QUITQ }), NONE, []],
  ['VERSION: the version as the body', frame({ op: OP.VERSION }), { kind: 'version', version: '1.6.21' }, ['0x0b s=0x00 cas=0 v="1.6.21"']],
  ['VERBOSITY: empty success', frame({ op: OP.VERBOSITY, extras: u32(1) }), status('OK'), ['0x1b s=0x00 cas=0']],
  ['STAT: one packet per line, then an empty terminator', frame({ op: OP.STAT }), { kind: 'stats', lines: [['pid', 42], ['version', '1.6.21'], ['bytes', 10n]] }, [
    '0x10 s=0x00 cas=0 k=pid v="42"', '0x10 s=0x00 cas=0 k=version v="1.6.21"', '0x10 s=0x00 cas=0 k=bytes v="10"', '0x10 s=0x00 cas=0',
  ]],
  ['STAT of an unknown group: 0x01, as memcached', frame({ op: OP.STAT, key: 'slabs' }), err('ERROR', ''), ['0x10 s=0x01 cas=0 v="Not found"']],
  ['ERROR on anything else: 0x81', frame({ op: OP.VERSION }), err('ERROR', ''), ['0x0b s=0x81 cas=0 v="Unknown command"']],
];

describe('binary codec: encoding', () => {
  for (const [name, f, reply, expected] of ENCODE) {
    it(name, () => assert.deepEqual(answer(f, reply), expected));
  }

  it('B1 GETQ and GETKQ misses then NOOP: only the NOOP answer', () => {
    const c = codec();
    c.push(cat(GETQ, GETKQ, frame({ op: OP.GATKQ, key: 'x', extras: u32(0) }), NOOP));
    const out = new OutBuffer();
    for (let d = c.next(); d !== undefined; d = c.next()) {
      assert.equal(d.kind, 'request');
      const req = (d as { request: Request }).request;
      c.encode(req.command.kind === 'noop' ? NONE : values(undefined), req, out);
    }
    assert.deepEqual(responses(Buffer.concat(out.take())), ['0x0a s=0x00 cas=0']);
  });

  it('every response echoes the opaque of its own request', () => {
    const c = codec();
    c.push(cat(frame({ op: OP.GET, key: 'a', opaque: 1 }), frame({ op: OP.NOOP, opaque: 0xffffffff })));
    const a = c.next();
    const b = c.next();
    assert.ok(a?.kind === 'request' && b?.kind === 'request');
    const out1 = new OutBuffer();
    c.encode(values(undefined), a.request, out1);
    assert.deepEqual(responses(Buffer.concat(out1.take()), 1), ['0x00 s=0x01 cas=0 v="Not found"']);
    const out2 = new OutBuffer();
    c.encode(NONE, b.request, out2);
    assert.deepEqual(responses(Buffer.concat(out2.take()), 0xffffffff), ['0x0a s=0x00 cas=0']);
  });

  it('a large hit value is pushed as the Buffer itself, not copied', () => {
    const c = codec();
    c.push(GET);
    const d = c.next();
    assert.ok(d?.kind === 'request');
    const value = Buffer.alloc(COPY_MAX + 1, 0x61);
    const out = new OutBuffer();
    c.encode({ kind: 'values', hits: [{ value, flags: 0, cas: 1n, deadline: 0 }] }, d.request, out);
    assert.ok(out.take().includes(value));
  });
});

describe('binary codec: borrowed input (the connections\' shared read buffer)', () => {
  /**
   * Every chunk goes through one scratch buffer, as client reads do: pushed as borrowed, parsed,
   * detached, then overwritten. What was decoded is shown only at the end, so a value or an
   * unparsed rest left pointing into the scratch buffer shows up as the bytes written over it.
   */
  function runBorrowed(chunks: Buffer[]): string[] {
    const c = codec();
    const scratch = Buffer.alloc(64 * 1024);
    const decoded: Decoded[] = [];
    for (const chunk of chunks) {
      chunk.copy(scratch);
      c.push(scratch.subarray(0, chunk.length), true);
      for (let d = c.next(); d !== undefined; d = c.next()) decoded.push(d);
      c.detach();
      scratch.fill(0xee);
    }
    return decoded.map(show);
  }

  const input = cat(
    frame({ op: OP.SET, key: 'sess:a', extras: setExtras(7, 0), value: 'cart=3;user=alice' }),
    frame({ op: OP.GET, key: 'sess:a' }),
    frame({ op: OP.APPEND, key: 'sess:a', value: ';x=1' }),
    frame({ op: OP.SETQ, key: 'sess:b', extras: setExtras(0, 60), value: 'v'.repeat(300) }),
    NOOP,
  );

  it('values and the unparsed rest keep their bytes, however the input is split', () => {
    const expected = run([input]);
    assert.equal(expected.length, 5);
    assert.deepEqual(runBorrowed([input]), expected, 'whole');
    const bytes: Buffer[] = [];
    for (let i = 0; i < input.length; i++) bytes.push(input.subarray(i, i + 1));
    assert.deepEqual(runBorrowed(bytes), expected, 'byte by byte');
    for (let i = 1; i < input.length; i++) {
      assert.deepEqual(runBorrowed([input.subarray(0, i), input.subarray(i)]), expected, `split at ${i}`);
    }
  });

  it('seeded fuzz: random frames (refused and skipped ones too) in random reads decode as from owned input', () => {
    const rand = mulberry32(0xb1a5);
    const int = (n: number): number => Math.floor(rand() * n);
    const value = (): Buffer => Buffer.from(Array.from({ length: int(3) === 0 ? 1000 + int(100) : int(40) }, () => int(256)));
    const one = (): Buffer => {
      const key = `k${int(5)}`;
      switch (int(9)) {
        case 0:
        case 1:
          return frame({ op: OP.SET, key, extras: setExtras(int(9), int(2) ? 0 : 60), value: value() }); // some over the 1024-byte limit
        case 2:
          return frame({ op: OP.APPENDQ, key, value: value() });
        case 3:
          return frame({ op: OP.GETK, key });
        case 4:
          return frame({ op: 0x55, key, value: value() }); // unknown: answered, body skipped
        case 5:
          return frame({ op: OP.SET, key: 'bad key', extras: setExtras(0, 0), value: value() }); // refused, body skipped
        case 7:
          return frame({ op: OP.DELETE, key, cas: 1n + BigInt(int(9)) }); // a delete with a cas: refused
        case 6:
          return frame({ op: OP.DELETE, key });
        default:
          return NOOP;
      }
    };
    const kinds = new Set<string>();
    for (let round = 0; round < 150; round++) {
      const input = Buffer.concat(Array.from({ length: 1 + int(12) }, one));
      const chunks: Buffer[] = [];
      for (let at = 0; at < input.length; ) {
        const n = 1 + int(int(4) === 0 ? 2000 : 60);
        chunks.push(input.subarray(at, at + n));
        at += n;
      }
      const owned = run([input]);
      assert.deepEqual(runBorrowed(chunks), owned, `round ${round}`);
      for (const line of owned) kinds.add(line.includes('s=0x04') ? (line.includes('[close]') ? 'closed' : 'refused') : line.split(' ')[0]!);
    }
    // The rounds went through the paths that matter: refused frames (body skipped), too large ones, values.
    for (const k of ['refused', 'too_large', 'set', 'append']) assert.ok(kinds.has(k), `some round decoded a ${k}: ${[...kinds].join(' ')}`);
  });

  it('an owned chunk before a borrowed one: a frame spanning both is parsed from a copy', () => {
    const c = codec();
    const at = 30; // inside the first frame's value
    c.push(Buffer.from(input.subarray(0, at)));
    assert.equal(c.next(), undefined);
    const scratch = Buffer.from(input.subarray(at));
    c.push(scratch, true);
    const first = c.next();
    c.detach();
    scratch.fill(0xee);
    const rest: Decoded[] = [];
    for (let d = c.next(); d !== undefined; d = c.next()) rest.push(d);
    assert.deepEqual([first!, ...rest].map(show), run([input]));
  });
});
