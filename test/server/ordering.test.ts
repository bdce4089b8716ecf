/**
 * What one client connection guarantees about the order its pipelined commands take effect in,
 * checked by holding an upstream at a gate and looking at what reached it.
 */

import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { after, describe, it } from 'node:test';
import type { Listener } from '../../src/server/listener';
import { FakeUpstream, listenOverFake, settle } from '../helpers/fake-upstream';
import { connectWire } from '../helpers/wire';

const listeners: Listener[] = [];
after(async () => {
  await Promise.all(listeners.map((l) => l.close(true)));
});

async function setup() {
  const up = new FakeUpstream('fake://0');
  await up.inner.store({ mode: 'set', key: 'k', value: Buffer.from('old'), flags: 0, deadline: 0 });
  const { listener, port } = await listenOverFake(up);
  listeners.push(listener);
  const w = await connectWire(port);
  return { up, w };
}

describe('ordering on one connection', () => {
  it('a client that shuts down its side after its commands still gets every reply, then the connection closes', async () => {
    const up = new FakeUpstream('fake://0');
    const { listener, port } = await listenOverFake(up);
    listeners.push(listener);
    up.close_gate(); // the upstream answers after the client's FIN
    const c = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    c.on('data', (d: Buffer) => (got += d.toString('latin1')));
    const closed = new Promise<void>((resolve) => c.on('end', () => resolve()));
    await new Promise<void>((resolve) => c.once('connect', () => resolve()));
    c.end('set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nget a b\r\n'); // as `printf ... | nc -N`
    await settle();
    up.open();
    await closed;
    c.destroy();
    assert.equal(got, 'STORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n');
  });

  it('a set after a get of the same key waits for the get: the get reads the old value', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('get k\r\nset k 0 0 3\r\nnew\r\n');
    await settle();
    assert.deepEqual(up.calls, ['get k'], 'the set is held back');
    up.open();
    assert.equal(await w.read('STORED\r\n'), 'VALUE k 0 3\r\nold\r\nEND\r\nSTORED\r\n');
    w.close();
  });

  it('a get after a set of the same key waits for the set (T17)', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('set k 0 0 3 noreply\r\nnew\r\nget k\r\n');
    await settle();
    assert.deepEqual(up.calls, ['set k']);
    up.open();
    assert.equal(await w.read('END\r\n'), 'VALUE k 0 3\r\nnew\r\nEND\r\n');
    w.close();
  });

  it('a get of another key does not wait for a write in flight', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('set a 0 0 1\r\nx\r\nget b\r\n');
    await settle();
    assert.deepEqual(up.calls, ['set a', 'get b'], 'the get went out while the set was held');
    up.open();
    assert.equal(await w.read('END\r\n'), 'STORED\r\nEND\r\n', 'replies still in request order');
    w.close();
  });

  it('writes are applied one at a time, in order, whatever their keys', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('set sess 0 0 1\r\nx\r\ndelete lock.sess\r\n');
    await settle();
    assert.deepEqual(up.calls, ['set sess'], 'the unlock waits for the session write');
    up.open();
    assert.equal(await w.read((t) => t.includes('NOT_FOUND') || t.includes('DELETED')), 'STORED\r\nNOT_FOUND\r\n');
    w.close();
  });

  it('flush_all waits for everything before it and holds back everything after it', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('get k\r\nflush_all\r\nget k\r\n');
    await settle();
    assert.deepEqual(up.calls, ['get k']);
    up.open();
    assert.equal(await w.read((t) => t.split('END').length === 3), 'VALUE k 0 3\r\nold\r\nEND\r\nOK\r\nEND\r\n');
    w.close();
  });

  // As memcached, which runs one connection's commands in turn: the counters `stats` reports
  // count the commands before it (they were read when it was started, with those still in flight).
  it('stats waits for everything before it: its counters count them; a get after it does not wait for it', async () => {
    const { up, w } = await setup();
    up.close_gate();
    w.send('set a 0 0 1\r\nx\r\nget k\r\nstats\r\nget a\r\n');
    await settle();
    assert.deepEqual(up.calls, ['set a', 'get k'], 'the get of another key went out while the set was held');
    up.open();
    const text = await w.read((t) => t.split('END\r\n').length === 4);
    const stat = (name: string): string | undefined => new RegExp(`^STAT ${name} (\\d+)\r$`, 'm').exec(text)?.[1];
    assert.equal(stat('cmd_set'), '1', text);
    assert.equal(stat('cmd_get'), '1', 'the get after stats is not counted');
    assert.equal(stat('get_hits'), '1', 'the get before it answered before stats was read');
    assert.match(text, /END\r\nVALUE a 0 1\r\nx\r\nEND\r\n$/);
    w.close();
  });
});
