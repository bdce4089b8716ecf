import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  MAX_REPLY_LINE,
  type MetaReply,
  MetaReplyParser,
  encodeFlushAll,
  encodeMa,
  encodeMd,
  encodeMg,
  encodeMn,
  encodeMs,
  encodeVersion,
} from '../../src/protocol/text/meta-client';
import { COPY_MAX, OutBuffer } from '../../src/protocol/out-buffer';

const none = { flags: undefined, cas: undefined, ttl: undefined, opaque: undefined };
const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Wire bytes and the replies they hold, in order. */
const cases: Array<[string, string, MetaReply[]]> = [
  ['HD', 'HD\r\n', [{ kind: 'HD', ...none }]],
  ['HD with cas', 'HD c123\r\n', [{ kind: 'HD', ...none, cas: 123n }]],
  ['NS', 'NS\r\n', [{ kind: 'NS', ...none }]],
  ['EX with cas 0', 'EX c0\r\n', [{ kind: 'EX', ...none, cas: 0n }]],
  ['NF', 'NF\r\n', [{ kind: 'NF', ...none }]],
  ['EN', 'EN\r\n', [{ kind: 'EN', ...none }]],
  ['MN', 'MN\r\n', [{ kind: 'MN', ...none }]],
  ['HD with ttl', 'HD t100\r\n', [{ kind: 'HD', ...none, ttl: 100 }]],
  ['VA with flags, cas, no ttl', 'VA 2 f5 c4 t-1\r\nhi\r\n', [{ kind: 'VA', value: b('hi'), flags: 5, cas: 4n, ttl: -1, opaque: undefined }]],
  ['VA empty', 'VA 0\r\n\r\n', [{ kind: 'VA', value: b(''), ...none }]],
  [
    'VA binary, extreme flags and cas',
    'VA 6 f4294967295 c18446744073709551615 t2592000\r\n\r\n\0\xff\r\n\r\n',
    [{ kind: 'VA', value: b('\r\n\0\xff\r\n'), flags: 4294967295, cas: 18446744073709551615n, ttl: 2592000, opaque: undefined }],
  ],
  ['VA with flags we do not use', 'VA 2 t7 kfoo b s2\r\nhi\r\n', [{ kind: 'VA', value: b('hi'), ...none, ttl: 7 }]],
  ['VA and EN with an opaque token', 'VA 2 t7 O123\r\nhi\r\nEN O124\r\n', [{ kind: 'VA', value: b('hi'), ...none, ttl: 7, opaque: 123 }, { kind: 'EN', ...none, opaque: 124 }]],
  ['an opaque token that is not a number answers no request', 'HD Oabc\r\n', [{ kind: 'HD', ...none }]],
  ['VERSION', 'VERSION 1.6.18\r\n', [{ kind: 'VERSION', version: '1.6.18' }]],
  ['OK', 'OK\r\n', [{ kind: 'OK' }]],
  ['ERROR', 'ERROR\r\n', [{ kind: 'ERROR' }]],
  ['CLIENT_ERROR', 'CLIENT_ERROR bad data chunk\r\n', [{ kind: 'CLIENT_ERROR', message: 'bad data chunk' }]],
  ['SERVER_ERROR', 'SERVER_ERROR out of memory storing object\r\n', [{ kind: 'SERVER_ERROR', message: 'out of memory storing object' }]],
  [
    'a pipelined sequence',
    'HD c1\r\nVA 1 f0\r\nx\r\nEN\r\nVA 3\r\nVA \r\nNF\r\n',
    [
      { kind: 'HD', ...none, cas: 1n },
      { kind: 'VA', value: b('x'), ...none, flags: 0 },
      { kind: 'EN', ...none },
      { kind: 'VA', value: b('VA '), ...none },
      { kind: 'NF', ...none },
    ],
  ],
];

const malformed: Array<[string, string]> = [
  ['unknown reply', 'XX\r\n'],
  ['no CR', 'HD\n'],
  ['bare LF', '\n'],
  ['VA without size', 'VA\r\n'],
  ['VA bad size', 'VA x1\r\nx\r\n'],
  ['VA data not terminated', 'VA 2\r\nhiXY'],
  ['bad flags', 'HD fabc\r\n'],
  ['flags over 32 bits', 'HD f4294967296\r\n'],
  ['cas over 64 bits', 'HD c18446744073709551616\r\n'],
  ['bad ttl', 'HD t-2\r\n'],
  ['double space', 'HD  c1\r\n'],
  ['text after OK', 'OK then\r\n'],
];

/** Every reply the parser yields, stopping at the first error (errors are sticky). */
function feed(chunks: Buffer[]): { replies: MetaReply[]; parser: MetaReplyParser } {
  const parser = new MetaReplyParser();
  const replies: MetaReply[] = [];
  for (const chunk of chunks) {
    parser.push(chunk);
    for (let r = parser.next(); r; r = parser.next()) {
      replies.push(r);
      if (r.kind === 'protocol_error') return { replies, parser };
    }
  }
  return { replies, parser };
}

function splits(wire: Buffer): Array<[string, Buffer[]]> {
  const out: Array<[string, Buffer[]]> = [['whole', [wire]]];
  out.push(['byte by byte', [...wire].map((_, i) => wire.subarray(i, i + 1))]);
  for (let i = 1; i < wire.length; i++) out.push([`split at ${i}`, [wire.subarray(0, i), wire.subarray(i)]]);
  return out;
}

test('replies parse the same whole, byte by byte and split at every offset', () => {
  for (const [name, wire, expected] of cases) {
    for (const [how, chunks] of splits(b(wire))) {
      const { replies, parser } = feed(chunks);
      assert.deepEqual(replies, expected, `${name}, ${how}`);
      assert.equal(parser.buffered, 0, `${name}, ${how}: nothing left over`);
      assert.equal(parser.next(), undefined);
    }
  }
});

test('a partial reply is kept until the rest arrives', () => {
  const parser = new MetaReplyParser();
  parser.push(b('HD\r\nVA 5 f1\r\nab'));
  assert.equal(parser.next()?.kind, 'HD');
  assert.equal(parser.next(), undefined);
  assert.equal(parser.buffered, 'VA 5 f1\r\nab'.length);
  parser.push(b('cde\r'));
  assert.equal(parser.next(), undefined);
  parser.push(b('\nEN\r\n'));
  assert.deepEqual(parser.next(), { kind: 'VA', value: b('abcde'), ...none, flags: 1 });
  assert.equal(parser.next()?.kind, 'EN');
  assert.equal(parser.next(), undefined);
});

test('a VA declaring more than the largest value is a protocol error before its bytes are buffered', () => {
  const parser = new MetaReplyParser(1000);
  parser.push(b('VA 1000 f1\r\n'));
  assert.equal(parser.next(), undefined, 'at the limit: waits for the value');
  const over = new MetaReplyParser(1000);
  over.push(b('VA 1001 f1\r\nabc'));
  const r = over.next();
  assert.equal(r?.kind, 'protocol_error');
  assert.match((r as { message: string }).message, /VA of 1001 bytes, over max-item-size \(1000\)/);
  const huge = new MetaReplyParser(1000);
  huge.push(b('VA 999999999999999 \r\n'));
  assert.equal(huge.next()?.kind, 'protocol_error');
});

test('a value is a slice of the received bytes, not a copy', () => {
  const wire = b('VA 3\r\nabc\r\n');
  const parser = new MetaReplyParser();
  parser.push(wire);
  const r = parser.next();
  assert.ok(r?.kind === 'VA');
  assert.equal(r.value.buffer, wire.buffer);
  assert.equal(r.value.byteOffset, wire.byteOffset + 6);
});

test('a large value in many chunks', () => {
  const value = Buffer.alloc(300_000, 'v');
  value.write('\r\n', 1000, 'latin1');
  const wire = Buffer.concat([b(`VA ${value.length} f9\r\n`), value, b('\r\nHD\r\n')]);
  const chunks: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 1400) chunks.push(wire.subarray(i, i + 1400));
  const { replies, parser } = feed(chunks);
  assert.equal(replies.length, 2);
  const r = replies[0];
  assert.ok(r?.kind === 'VA');
  assert.ok(r.value.equals(value));
  assert.equal(r.flags, 9);
  assert.equal(replies[1]?.kind, 'HD');
  assert.equal(parser.buffered, 0);
});

test('malformed replies are error values, never thrown, and the parser stays failed', () => {
  for (const [name, wire] of malformed) {
    for (const [how, chunks] of splits(b(wire))) {
      const { replies, parser } = feed(chunks);
      assert.equal(replies.length, 1, `${name}, ${how}: ${JSON.stringify(replies)}`);
      assert.equal(replies[0]?.kind, 'protocol_error', `${name}, ${how}`);
      parser.push(b('HD\r\n'));
      assert.equal(parser.next()?.kind, 'protocol_error', `${name}, ${how}: sticky`);
    }
  }
});

test('good replies before a malformed one are returned first', () => {
  const { replies } = feed([b('HD\r\nEN\r\nZZ top\r\nHD\r\n')]);
  assert.deepEqual(
    replies.map((r) => r.kind),
    ['HD', 'EN', 'protocol_error'],
  );
});

test('a reply line over the bound without a newline is a protocol error', () => {
  const parser = new MetaReplyParser();
  parser.push(b('SERVER_ERROR ' + 'x'.repeat(MAX_REPLY_LINE - 13)));
  assert.equal(parser.next(), undefined, 'exactly at the bound: still waiting');
  parser.push(b('x'));
  const r = parser.next();
  assert.equal(r?.kind, 'protocol_error');

  const bytewise = new MetaReplyParser();
  let got: MetaReply | undefined;
  for (let i = 0; i <= MAX_REPLY_LINE && !got; i++) {
    bytewise.push(b('a'));
    got = bytewise.next();
  }
  assert.equal(got?.kind, 'protocol_error');
});

test('requests encode keys as latin1 and flags as given', () => {
  const bytes = (write: (out: OutBuffer) => void): Buffer => {
    const out = new OutBuffer();
    write(out);
    return Buffer.concat(out.take());
  };
  assert.deepEqual(bytes((o) => encodeMg(o, 'k\xe9', 'v f c t T30')), b('mg k\xe9 v f c t T30\r\n'));
  assert.deepEqual(bytes((o) => encodeMg(o, 'k', '')), b('mg k\r\n'));
  assert.equal(bytes((o) => encodeMg(o, '\xff', 'v'))[3], 0xff);
  const value = b('a\r\nb');
  assert.deepEqual(bytes((o) => encodeMs(o, 'key', value, 'F1 T0 MS c')), b('ms key 4 F1 T0 MS c\r\na\r\nb\r\n'));
  const large = Buffer.alloc(COPY_MAX + 1, 0x61);
  const out = new OutBuffer();
  encodeMs(out, 'key', large, '');
  assert.ok(out.take().includes(large), 'a large value is not copied');
  assert.deepEqual(bytes((o) => encodeMs(o, 'key', b(''), '')), b('ms key 0\r\n\r\n'));
  assert.deepEqual(bytes((o) => encodeMd(o, 'key')), b('md key\r\n'));
  assert.deepEqual(bytes((o) => encodeMd(o, 'key', 'q')), b('md key q\r\n'));
  assert.deepEqual(bytes((o) => encodeMa(o, 'n', 'MI D18446744073709551615 v')), b('ma n MI D18446744073709551615 v\r\n'));
  assert.deepEqual(bytes(encodeMn), b('mn\r\n'));
  assert.deepEqual(bytes(encodeVersion), b('version\r\n'));
  assert.deepEqual(bytes(encodeFlushAll), b('flush_all\r\n'));
});

test('a batch of replies in large reads: a reply spanning a boundary copies only itself', () => {
  // What a pipelined batch looks like: many replies, 64 KiB reads, one reply across each boundary.
  const values = Array.from({ length: 300 }, (_, i) => Buffer.alloc(1000, 97 + (i % 26)));
  const wire = Buffer.concat(values.map((v, i) => b(`VA ${v.length} f${i}\r\n${v.toString('latin1')}\r\n`)));
  const reads: Buffer[] = [];
  for (let at = 0; at < wire.length; at += 65536) reads.push(wire.subarray(at, at + 65536));
  for (const drainEach of [true, false]) {
    const parser = new MetaReplyParser();
    const replies: MetaReply[] = [];
    const drain = (): void => {
      for (let r = parser.next(); r; r = parser.next()) replies.push(r);
    };
    for (const chunk of reads) {
      parser.push(chunk);
      if (drainEach) drain();
    }
    drain();
    assert.equal(replies.length, values.length, `drained after each read: ${drainEach}`);
    replies.forEach((r, i) => {
      assert.ok(r.kind === 'VA');
      assert.deepEqual(r.value, values[i]);
      assert.equal(r.flags, i);
    });
    // Outside the replies that span a boundary, values are slices of the reads themselves.
    const copied = replies.filter((r) => r.kind === 'VA' && !reads.some((c) => c.buffer === r.value.buffer));
    assert.ok(copied.length <= reads.length - 1, `${copied.length} values copied for ${reads.length} reads`);
    assert.equal(parser.buffered, 0);
  }
});
