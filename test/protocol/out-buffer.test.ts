import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { COPY_MAX, OutBuffer } from '../../src/protocol/out-buffer';

describe('OutBuffer', () => {
  it('gathers lines and small values into one contiguous chunk, in order', () => {
    const out = new OutBuffer();
    out.latin1('VALUE k 0 3\r\n');
    out.append(Buffer.from('abc'));
    out.push(Buffer.from('\r\n'), Buffer.from('END\r\n'));
    assert.equal(out.length, 23);
    const chunks = out.take();
    assert.equal(chunks.length, 1);
    assert.equal(chunks[0]?.toString('latin1'), 'VALUE k 0 3\r\nabc\r\nEND\r\n');
    assert.equal(out.length, 0);
    assert.deepEqual(out.take(), []);
  });

  it('writes latin1 one byte per character', () => {
    const out = new OutBuffer();
    out.latin1('k\xe9\xff');
    assert.deepEqual([...Buffer.concat(out.take())], [0x6b, 0xe9, 0xff]);
  });

  it('keeps a value over COPY_MAX by reference, between the copied pieces', () => {
    const out = new OutBuffer();
    const big = Buffer.alloc(COPY_MAX + 1, 0x61);
    out.latin1('head\r\n');
    out.append(big);
    out.latin1('\r\nEND\r\n');
    const chunks = out.take();
    assert.equal(chunks.length, 3);
    assert.equal(chunks[1], big, 'the large value itself, not a copy');
    assert.equal(Buffer.concat(chunks).toString('latin1'), `head\r\n${'a'.repeat(COPY_MAX + 1)}\r\nEND\r\n`);
  });

  it('take(own): the slab\'s bytes as copies of their own (a slow socket keeps no shared slab alive), large values still by reference', () => {
    const out = new OutBuffer();
    out.latin1('before\r\n'); // another connection's reply, taken as a view
    const [other] = out.take();
    const big = Buffer.alloc(COPY_MAX + 1, 0x62);
    out.latin1('VALUE k 0 1\r\n');
    out.append(big);
    out.latin1('\r\nEND\r\n');
    const owned = out.take(true);
    assert.equal(owned.length, 3);
    assert.notEqual(owned[0]?.buffer, other?.buffer, 'not a view of the slab');
    assert.equal(owned[0]?.buffer.byteLength, owned[0]?.length, 'a buffer of its own size');
    assert.equal(owned[1], big);
    assert.notEqual(owned[2]?.buffer, other?.buffer);
    assert.equal(Buffer.concat(owned).toString('latin1'), `VALUE k 0 1\r\n${'b'.repeat(COPY_MAX + 1)}\r\nEND\r\n`);
    // The default stays a view: the fast path copies nothing.
    out.latin1('after');
    assert.equal(out.take()[0]?.buffer, other?.buffer);
  });

  it('never writes again into bytes it handed out (one OutBuffer serves many sockets)', () => {
    const out = new OutBuffer();
    out.latin1('first');
    const [a] = out.take();
    for (let i = 0; i < 1000; i++) out.latin1('x'.repeat(200)); // fills and replaces the slab
    out.take();
    assert.equal(a?.toString('latin1'), 'first');
  });

  it('grows past its slab for a piece larger than a slab', () => {
    const out = new OutBuffer();
    const line = 'y'.repeat(100_000);
    out.latin1(line);
    assert.equal(Buffer.concat(out.take()).toString('latin1'), line);
  });

  it('discard() drops what was gathered', () => {
    const out = new OutBuffer();
    out.latin1('lost');
    out.append(Buffer.alloc(COPY_MAX + 1));
    out.discard();
    assert.equal(out.length, 0);
    out.latin1('kept');
    assert.equal(Buffer.concat(out.take()).toString('latin1'), 'kept');
  });
});
