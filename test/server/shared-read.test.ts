/**
 * Client connections read into one buffer shared by all of them (src/server/shared-read.ts).
 * What a connection keeps past a read (a value on its way to a slow upstream, half a command,
 * commands held back by max-pipeline) must be a copy: another client's next read overwrites the
 * buffer. Each case holds an upstream at a gate, lets another client's read land in the buffer,
 * then checks the bytes that reached the store.
 */

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { Listener } from '../../src/server/listener';
import { FakeUpstream, listenOverFake, settle } from '../helpers/fake-upstream';
import { frame, storeExtras } from '../helpers/binary-frame';
import { connectWire, type Wire } from '../helpers/wire';

const listeners: Listener[] = [];
after(async () => {
  await Promise.all(listeners.map((l) => l.close(true)));
});

async function setup(maxPipeline = 64) {
  const up = new FakeUpstream('fake://0');
  const { listener, port } = await listenOverFake(up, { maxPipeline });
  listeners.push(listener);
  return { up, listener, connect: () => connectWire(port) };
}

/** Another client's read lands in the shared buffer: `n` commands answered by mcmux itself. */
async function overwrite(other: Wire, n = 8): Promise<void> {
  const replies = await other.ask('version\r\n'.repeat(n), (t) => t.split('VERSION').length > n);
  assert.equal(replies.split('VERSION').length, n + 1);
}

async function stored(up: FakeUpstream, key: string): Promise<string | undefined> {
  const [hit] = await up.inner.get([key]);
  return hit?.value.toString('latin1');
}

describe('the shared read buffer', () => {
  it('is what accepted clients read into on this Node (else every read allocates a Buffer)', async () => {
    const { listener, connect } = await setup();
    const w = await connect();
    assert.match(await w.ask('version\r\n', '\r\n'), /^VERSION /);
    const conns = listener.connections();
    assert.equal(conns.length, 1);
    assert.equal(conns[0]?.sharedReads, true);
    w.close();
  });

  it('a value waiting for a slow upstream keeps its bytes while other clients are read', async () => {
    const { up, connect } = await setup();
    const [a, other] = await Promise.all([connect(), connect()]);
    up.close_gate();
    a.send('set sess 0 0 17\r\ncart=3;user=alice\r\n');
    await settle();
    assert.deepEqual(up.calls, ['set sess'], 'the set reached the upstream and waits at its gate');
    await overwrite(other);
    up.open();
    assert.equal(await a.read('\r\n'), 'STORED\r\n');
    assert.equal(await stored(up, 'sess'), 'cart=3;user=alice');
    a.close();
    other.close();
  });

  it('half a command left unparsed survives other clients being read before its rest arrives', async () => {
    const { up, connect } = await setup();
    const [a, other] = await Promise.all([connect(), connect()]);
    a.send('set sess 0 0 10\r\nhello');
    await settle();
    await overwrite(other);
    a.send('world\r\nge');
    await settle();
    await overwrite(other);
    a.send('t sess\r\n');
    assert.equal(await a.read('END\r\n'), 'STORED\r\nVALUE sess 0 10\r\nhelloworld\r\nEND\r\n');
    assert.equal(await stored(up, 'sess'), 'helloworld');
    a.close();
    other.close();
  });

  it('a binary client: its value and the frame it sent half of keep their bytes too', async () => {
    const { up, listener, connect } = await setup();
    const [a, other] = await Promise.all([connect(), connect()]);
    const set = frame({ opcode: 0x01, key: 'sess', extras: storeExtras(0, 0), value: 'cart=3;user=alice', opaque: 7 });
    const next = frame({ opcode: 0x01, key: 'sess2', extras: storeExtras(0, 0), value: 'cart=4;user=bob', opaque: 8 });
    up.close_gate();
    a.send(Buffer.concat([set, next.subarray(0, 30)])); // the second frame cut inside its key
    await settle();
    assert.deepEqual(up.calls, ['set sess'], 'the first set waits at the gate; the second is half a frame');
    assert.ok(listener.connections().every((c) => c.sharedReads), 'binary clients read into the shared buffer too');
    await overwrite(other);
    a.send(next.subarray(30));
    await settle();
    await overwrite(other);
    up.open();
    // Two binary SET responses: magic 0x81, opcode 0x01, status 0, the opaques 7 and 8.
    const replies = Buffer.from(await a.read((t) => t.length >= 48), 'latin1');
    assert.equal(replies.length, 48);
    assert.deepEqual([replies[0], replies[1], replies.readUInt16BE(6), replies.readUInt32BE(12)], [0x81, 0x01, 0, 7]);
    assert.deepEqual([replies[24], replies[25], replies.readUInt16BE(30), replies.readUInt32BE(36)], [0x81, 0x01, 0, 8]);
    assert.equal(await stored(up, 'sess'), 'cart=3;user=alice');
    assert.equal(await stored(up, 'sess2'), 'cart=4;user=bob');
    a.close();
    other.close();
  });

  it('commands held back by max-pipeline are parsed from their own bytes later', async () => {
    const { up, connect } = await setup(2);
    const [a, other] = await Promise.all([connect(), connect()]);
    up.close_gate();
    const sets = ['s1', 's2', 's3', 's4', 's5'].map((k) => `set ${k} 0 0 6\r\nval-${k}\r\n`).join('');
    a.send(sets); // one write: the connection queues two and leaves the rest in its parser
    await settle();
    assert.deepEqual(up.calls, ['set s1'], 'writes go one at a time; the others wait unparsed or queued');
    await overwrite(other);
    up.open();
    assert.equal(await a.read((t) => t.split('STORED').length > 5), 'STORED\r\n'.repeat(5));
    for (const k of ['s1', 's2', 's3', 's4', 's5']) assert.equal(await stored(up, k), `val-${k}`, k);
    a.close();
    other.close();
  });
});
