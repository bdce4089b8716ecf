/**
 * What one client can make mcmux hold while an upstream is slow: the values of the commands it
 * pipelined (max-input-bytes) and the replies of reads waiting behind a slow write
 * (max-keys-per-get keys among the reads held). The upstream is held at a gate, so the bounds
 * are hit for certain; then it is let go and every command must still be answered, in order.
 */

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { ConnectionLimits } from '../../src/server/connection';
import type { Listener } from '../../src/server/listener';
import { FakeUpstream, listenOverFake, settle } from '../helpers/fake-upstream';
import { connectWire } from '../helpers/wire';

const listeners: Listener[] = [];
after(async () => {
  await Promise.all(listeners.map((l) => l.close(true)));
});

/** mcmux's front end over a fake upstream with these limits, and a client connected to it. */
async function setup(limits: Partial<ConnectionLimits>) {
  const up = new FakeUpstream('fake://0');
  const { listener, port } = await listenOverFake(up, limits);
  listeners.push(listener);
  return { up, listener, w: await connectWire(port) };
}

describe('per-client byte bounds', () => {
  it('max-input-bytes: pipelined values behind a slow upstream stop mcmux reading, and all land in order', async () => {
    const limit = 32 * 1024;
    const { up, listener, w } = await setup({ maxInputBytes: limit, maxPipeline: 1024 });
    up.close_gate();
    const n = 100;
    const size = 10_000;
    let batch = '';
    for (let i = 0; i < n; i++) batch += `set k${i} 0 0 ${size}\r\n${String(i % 10).repeat(size)}\r\n`;
    w.send(batch); // 1 MB: 30 times the limit
    // Wait until mcmux has stopped reading: the parser has what it read, and nothing more comes.
    let info = listener.connections()[0]?.info();
    for (let i = 0; i < 200 && !info?.paused; i++) {
      await settle();
      info = listener.connections()[0]?.info();
    }
    assert.ok(info?.paused, 'the connection stopped reading');
    assert.ok(info.queuedValueBytes <= limit + size, `queued values ${info.queuedValueBytes}`);
    assert.ok(info.queued <= Math.ceil(limit / size) + 1, `queued commands ${info.queued}`);
    // What the parser still holds is one read's worth, not the megabyte sent.
    assert.ok(info.bufferedInput <= 128 * 1024, `buffered input ${info.bufferedInput}`);
    up.open();
    const replies = await w.read((t) => t.split('\r\n').length > n, 20000);
    assert.equal(replies, 'STORED\r\n'.repeat(n));
    for (const i of [0, 57, n - 1]) {
      const [hit] = await up.inner.get([`k${i}`]);
      assert.equal(hit?.value.toString(), String(i % 10).repeat(size), `k${i} stored whole`);
    }
    assert.equal(listener.connections()[0]?.info().queuedValueBytes, 0, 'the count returns to 0');
    w.close();
  });

  it('one value larger than max-input-bytes is still taken (the bound holds back the commands after it)', async () => {
    const { w } = await setup({ maxInputBytes: 1024 });
    const value = 'x'.repeat(5000);
    assert.equal(await w.ask(`set big 0 0 5000\r\n${value}\r\nset big2 0 0 5000\r\n${value}\r\nget big\r\n`, 'END\r\n'), `STORED\r\nSTORED\r\nVALUE big 0 5000\r\n${value}\r\nEND\r\n`);
    w.close();
  });

  it('reads behind a slow write fetch at most max-keys-per-get keys, then the rest in order', async () => {
    const { up, w } = await setup({ maxKeysPerGet: 4, maxPipeline: 1024 });
    const value = 'v'.repeat(50_000);
    assert.equal(await w.ask(`set big 0 0 ${value.length}\r\n${value}\r\n`), 'STORED\r\n');
    up.gateOnly = (call) => call === 'set slow';
    up.close_gate();
    const n = 40;
    w.send(`set slow 0 0 1\r\nx\r\n${'get big\r\n'.repeat(n)}`);
    // The reads start while the set waits (other key), and their replies wait behind its reply.
    for (let i = 0; i < 20; i++) await settle();
    assert.equal(up.calls.filter((c) => c === 'get big').length, 4, 'four gets fetched, no more');
    up.open();
    const reply = `VALUE big 0 ${value.length}\r\n${value}\r\nEND\r\n`;
    const all = await w.read((t) => t.length >= 'STORED\r\n'.length + reply.length * n, 20000);
    assert.equal(all, `STORED\r\n${reply.repeat(n)}`);
    assert.equal(up.calls.filter((c) => c === 'get big').length, n);
    w.close();
  });

  it('max-reads-held: reads behind a slow write start at most that many, then the rest in order', async () => {
    const { up, w } = await setup({ maxReadsHeld: 3, maxKeysPerGet: 256, maxPipeline: 1024 });
    assert.equal(await w.ask('set k 0 0 1\r\nv\r\n'), 'STORED\r\n');
    up.gateOnly = (call) => call === 'set slow';
    up.close_gate();
    const n = 40;
    w.send(`set slow 0 0 1\r\nx\r\n${'get k\r\n'.repeat(n)}`);
    for (let i = 0; i < 20; i++) await settle();
    assert.equal(up.calls.filter((c) => c === 'get k').length, 3, 'three reads fetched, no more');
    up.open();
    const replies = await w.read((t) => t.split('END\r\n').length > n, 20000);
    assert.equal(replies, `STORED\r\n${'VALUE k 0 1\r\nv\r\nEND\r\n'.repeat(n)}`);
    w.close();
  });

  it('a get of more keys than are free waits for the reads before it, then runs whole', async () => {
    const { up, w } = await setup({ maxKeysPerGet: 4 });
    assert.equal(await w.ask('set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n', 'STORED\r\nSTORED\r\n'), 'STORED\r\nSTORED\r\n');
    up.gateOnly = (call) => call === 'get a';
    up.close_gate();
    w.send('get a\r\nget a b b a\r\n');
    for (let i = 0; i < 20; i++) await settle();
    assert.deepEqual(up.calls.slice(-1), ['get a'], 'the four-key get waits: one key is held');
    up.open();
    assert.equal(
      await w.read('END\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n'),
      'VALUE a 0 1\r\n1\r\nEND\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n',
    );
    w.close();
  });
});
