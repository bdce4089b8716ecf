/**
 * An adversarial client against mcmux's server side (review): inputs that try to make mcmux hold
 * memory beyond its per-client limits, run a value's bytes as commands, or keep a connection
 * mcmux closed. Bounds are checked against what the connection reports (ClientConnection.info)
 * once mcmux has stopped reading the client, with real sockets to an in-process mcmux.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type Socket, connect } from 'node:net';
import { describe, it } from 'node:test';
import type { App } from '../../src/app';
import { frame, parseResponseFrames } from '../helpers/binary-frame';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { connectWire } from '../helpers/wire';

const GAT = 0x1d;

function portOf(app: App): number {
  const b = app.bound[0];
  assert.ok(b && b.kind === 'tcp');
  return b.port;
}

/** Replies mcmux has computed for commands named `name` (router.record: once per request). */
function answered(app: App, name: string): number {
  let n = 0;
  for (const v of app.router.results.get(name)?.values() ?? []) n += v;
  return n;
}

/** Waits until mcmux stopped reading its (only) client, or has answered `n` `name` commands. */
async function settledOn(app: App, name: string, n: number): Promise<void> {
  await eventually(`mcmux paused the client or answered ${n} ${name}`, () => app.listener.connections()[0]?.info().paused === true || answered(app, name) >= n);
}

/** A client socket that counts the bytes it receives (no text kept: the replies are large). */
async function countingClient(port: number): Promise<{ socket: Socket; bytes: () => number; until: (n: number) => Promise<void> }> {
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  let got = 0;
  let waiter: { n: number; resolve: () => void } | undefined;
  socket.on('data', (d: Buffer) => {
    got += d.length;
    if (waiter && got >= waiter.n) waiter.resolve();
  });
  socket.on('error', () => {});
  const until = (n: number): Promise<void> =>
    got >= n
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`got ${got} of ${n} bytes`)), 10_000);
          waiter = { n, resolve: () => (clearTimeout(timer), resolve()) };
        });
  return { socket, bytes: () => got, until };
}

describe('adversarial client: replies mcmux holds for one client', () => {
  const maxOutput = 64 * 1024;
  const maxKeys = 16;
  const size = 16 * 1024; // copied into the reply slab (out-buffer.ts COPY_MAX), not referenced
  const value = 'v'.repeat(size);
  const oneGet = maxKeys * (size + 64) + 64;

  /** The one client's replies not yet written stay within max-output-bytes plus one get's worth. */
  function heldWithinBound(app: App): void {
    const info = app.listener.connections()[0]?.info();
    assert.ok(info);
    assert.ok(info.unsentBytes <= maxOutput + oneGet, `unsent reply bytes ${info.unsentBytes} > ${maxOutput} + ${oneGet}`);
  }

  async function setup(): Promise<{ app: App; port: number }> {
    const app = await inProcessMcmux({ 'max-output-bytes': maxOutput, 'max-keys-per-get': maxKeys });
    const port = portOf(app);
    const w = await connectWire(port);
    assert.equal(await w.ask(`set k 0 0 ${size}\r\n${value}\r\n`), 'STORED\r\n');
    w.close();
    await eventually('the setup client is gone', () => app.listener.connections().length === 0);
    return { app, port };
  }

  it('pipelined text gats of max-keys-per-get keys, never read: unsent replies stay within max-output-bytes plus one get, and all arrive once read', async () => {
    const { app, port } = await setup();
    const n = 200;
    const c = await countingClient(port);
    c.socket.pause(); // reads nothing from now on
    c.socket.write(`gat 0${' k'.repeat(maxKeys)}\r\n`.repeat(n));
    await settledOn(app, 'gat', n);
    heldWithinBound(app);
    c.socket.resume();
    const reply = maxKeys * (`VALUE k 0 ${size}\r\n`.length + size + 2) + 'END\r\n'.length;
    await c.until(n * reply);
    assert.equal(c.bytes(), n * reply);
    c.socket.destroy();
  });

  it('pipelined binary GATs, never read: unsent replies stay within max-output-bytes plus one get, and all arrive once read', async () => {
    const { app, port } = await setup();
    const n = 200;
    const extras = Buffer.alloc(4); // exptime 0
    const c = await countingClient(port);
    c.socket.pause();
    c.socket.write(Buffer.concat(Array.from({ length: n }, (_, i) => frame({ opcode: GAT, key: 'k', extras, opaque: i }))));
    await settledOn(app, 'gats', n);
    heldWithinBound(app);
    c.socket.resume();
    const reply = 24 + 4 + size;
    await c.until(n * reply);
    assert.equal(c.bytes(), n * reply);
    c.socket.destroy();
  });

  it('control: pipelined gets of max-keys-per-get keys stay within the same bound', async () => {
    const { app, port } = await setup();
    const n = 200;
    const c = await countingClient(port);
    c.socket.pause();
    c.socket.write(`get${' k'.repeat(maxKeys)}\r\n`.repeat(n));
    await settledOn(app, 'get', n);
    heldWithinBound(app);
    c.socket.destroy();
  });
});

describe('adversarial client: a refused noreply storage command leaves the replies in step', () => {
  // memcached 1.6 answers nothing to a command that ended in noreply, its errors included
  // (out_string with noreply set), and mcmux says so for incr, decr, touch, delete, flush_all and
  // verbosity. A storage line mcmux refuses (its block swallowed) must be silent too: a
  // client that sent noreply reads no reply for it, and would take a stray CLIENT_ERROR as the
  // reply to its next command, and every reply after it as the one before's.
  const K251 = 'L'.repeat(251);
  for (const line of [
    'set a\x01b 0 0 1 noreply',
    `set ${K251} 0 0 1 noreply`,
    'set mcmux.sentinel.x 0 0 1 noreply',
    'set a 4294967296 0 1 noreply',
    'add a 0 99999999999 1 noreply',
    'cas a 0 0 1 abc noreply',
  ]) {
    it(`'${JSON.stringify(line).slice(1, -1).replace(K251, '<251 bytes>')}' answers nothing; the get after it reads its own reply`, async () => {
      const app = await inProcessMcmux();
      const w = await connectWire(portOf(app));
      assert.equal(await w.ask('set v 0 0 2\r\nok\r\n'), 'STORED\r\n');
      assert.equal(await w.ask(`${line}\r\nz\r\nget v\r\n`, 'END\r\n'), 'VALUE v 0 2\r\nok\r\nEND\r\n');
      assert.equal(await w.ask('version\r\n'), 'VERSION 1.6.21\r\n');
      w.close();
    });
  }
});

describe('adversarial client: refuted suspicions, kept as checks', () => {
  it('a deep pipeline past max-pipeline, then a half-close: every reply, in order, then mcmux closes', async () => {
    const app = await inProcessMcmux({ 'max-pipeline': 8 });
    const w = await connectWire(portOf(app));
    assert.equal(await w.ask('set v 0 0 1\r\n1\r\n'), 'STORED\r\n');
    const n = 3000;
    let batch = '';
    for (let i = 0; i < n; i++) batch += i % 3 === 0 ? `incr v 1\r\n` : i % 3 === 1 ? `bogus ${i}\r\n` : 'get v\r\n';
    w.socket.end(batch);
    await w.closed;
    let expect = '';
    let v = 1;
    for (let i = 0; i < n; i++) {
      if (i % 3 === 0) expect += `${++v}\r\n`;
      else if (i % 3 === 1) expect += 'ERROR\r\n';
      else expect += `VALUE v 0 ${String(v).length}\r\n${v}\r\nEND\r\n`;
    }
    assert.equal(w.received, expect);
  });

  it('binary frames refused with their body skipped never run the body, whole or a byte per write', async () => {
    const SET = 0x01;
    const DELETE = 0x04;
    const APPEND = 0x0e;
    const GET = 0x00;
    const NOOP = 0x0a;
    const inject = Buffer.concat([frame({ opcode: DELETE, key: 'victim' }), Buffer.from('delete victim\r\n')]);
    const extras = Buffer.alloc(8);
    const refused = [
      frame({ opcode: SET, key: 'bad\x01key', extras, value: inject }), // invalid key: 0x04, body skipped
      frame({ opcode: APPEND, key: 'victim', value: inject, cas: 5n }), // CAS on APPEND: 0x04, body skipped
      frame({ opcode: SET, key: 'victim2', extras, value: Buffer.concat([inject, Buffer.alloc(2048)]) }), // too large
      frame({ opcode: 0x55, value: inject }), // unknown opcode: 0x81, body skipped
    ];
    for (const split of [false, true]) {
      const app = await inProcessMcmux({ 'max-item-size': 1024 });
      const w = await connectWire(portOf(app));
      w.send(frame({ opcode: SET, key: 'victim', extras, value: 'alive', opaque: 1 }));
      await w.read((t) => t.length >= 24);
      const stream = Buffer.concat([...refused, frame({ opcode: GET, key: 'victim', opaque: 7 }), frame({ opcode: NOOP, opaque: 9 })]);
      if (split) {
        for (const b of stream) {
          w.send(Buffer.from([b]));
          await new Promise((r) => setImmediate(r));
        }
      } else w.send(stream);
      // Four errors, the GET hit with 'alive', the NOOP.
      const done = (t: string): boolean => parseResponseFrames(Buffer.from(t, 'latin1')).frames.some((f) => f.opcode === NOOP && f.opaque === 9);
      const { frames } = parseResponseFrames(Buffer.from(await w.read(done), 'latin1'));
      assert.deepEqual(frames.map((f) => f.status), [0x04, 0x04, 0x03, 0x81, 0x00, 0x00], `split ${split}`);
      assert.equal(frames.find((f) => f.opcode === GET)?.value.toString(), 'alive');
      w.close();
    }
  });
});
