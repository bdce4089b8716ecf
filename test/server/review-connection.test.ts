/**
 * Review of the client connection layer (connection.ts, shared-read.ts, out-buffer.ts): each
 * test here failed before the fix that came with it.
 */

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { ConnectionLimits } from '../../src/server/connection';
import type { Listener } from '../../src/server/listener';
import { FakeUpstream, listenOverFake } from '../helpers/fake-upstream';
import { connectWire } from '../helpers/wire';

const listeners: Listener[] = [];
after(async () => {
  await Promise.all(listeners.map((l) => l.close(true)));
});

async function setup(limits: Partial<ConnectionLimits> = {}) {
  const up = new FakeUpstream('fake://0');
  const { listener, port } = await listenOverFake(up, limits);
  listeners.push(listener);
  return { up, listener, w: await connectWire(port) };
}

describe('review: the client connection layer', () => {
  it('max-output-bytes below the socket high-water mark: a paused client is resumed once it reads its replies', async () => {
    // 1024 is the smallest max-output-bytes the config accepts; the socket's write buffer signals
    // 'drain' only once it has passed its high-water mark (16 KiB).
    const { listener, w } = await setup({ maxOutputBytes: 1024, maxPipeline: 1024 });
    const value = 'v'.repeat(100);
    assert.equal(await w.ask(`set k 0 0 ${value.length}\r\n${value}\r\n`), 'STORED\r\n');
    w.socket.pause();
    const reply = `VALUE k 0 ${value.length}\r\n${value}\r\nEND\r\n`;
    // Enough replies to fill the kernel's socket buffers, so mcmux holds some unsent.
    const n = 100_000;
    const batch = 'get k\r\n'.repeat(1000);
    for (let i = 0; i < n / 1000; i++) w.send(batch);
    let info = listener.connections()[0]?.info();
    for (let i = 0; i < 100_000 && !(info?.paused && info.unsentBytes > 1024); i++) {
      await new Promise((r) => setImmediate(r));
      info = listener.connections()[0]?.info();
    }
    assert.ok(info?.paused && info.unsentBytes > 1024, `the connection is held back by its unsent replies: ${JSON.stringify(info)}`);
    let got = 0;
    const total = reply.length * n;
    const done = new Promise<void>((resolve) => {
      w.socket.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= total) resolve();
      });
    });
    w.socket.resume();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise((r) => (timer = setTimeout(r, 20000)))]);
    clearTimeout(timer);
    assert.equal(got, total, `every reply arrives: got ${got} of ${total} bytes; ${JSON.stringify(listener.connections()[0]?.info())}`);
    w.close();
  });
});
