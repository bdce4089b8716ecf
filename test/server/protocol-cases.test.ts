/**
 * The connection-level rows of PROTOCOL-CASES.md, end to end over a socket, against mcmux
 * in-process on two memory upstreams (the real-server versions live in test/integration).
 */

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { buildConfig } from '../../src/config';
import type { HealthyUpstream } from '../../src/router/health';
import { frame as binaryFrame } from '../helpers/binary-frame';
import { connectWire } from '../helpers/wire';
import { inProcessMcmux, memory, recordCalls } from '../helpers/in-process';

const mcmux = inProcessMcmux;


function frame(f: { op: number; key?: string; extras?: Buffer; value?: string }): Buffer {
  return binaryFrame({ ...f, opcode: f.op, opaque: 0xdeadbeef });
}

/** Binary responses as `<opcode> s=<status>`, the cas marked `cas` when non-zero; checks magic, opaque, lengths. */
function responses(text: string): string[] {
  const bytes = Buffer.from(text, 'latin1');
  const out: string[] = [];
  for (let at = 0; at < bytes.length; ) {
    assert.ok(bytes.length - at >= 24, `a whole header at ${at}`);
    assert.equal(bytes[at], 0x81, 'response magic');
    assert.equal(bytes.readUInt32BE(at + 12), 0xdeadbeef, 'opaque echoed');
    const bodyLength = bytes.readUInt32BE(at + 8);
    assert.ok(bytes.length - at - 24 >= bodyLength, 'a whole body');
    const hex = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;
    out.push(`${hex(bytes.readUInt8(at + 1))} s=${hex(bytes.readUInt16BE(at + 6))}${bytes.readBigUInt64BE(at + 16) !== 0n ? ' cas' : ''}`);
    at += 24 + bodyLength;
  }
  return out;
}

/** How many whole binary responses `text` holds (never throws: safe as a read condition). */
function wholeResponses(text: string): number {
  const bytes = Buffer.from(text, 'latin1');
  let n = 0;
  for (let at = 0; bytes.length - at >= 24 && bytes.length - at - 24 >= bytes.readUInt32BE(at + 8); at += 24 + bytes.readUInt32BE(at + 8)) n++;
  return n;
}

const SET_K = frame({ op: 0x01, key: 'k', extras: Buffer.alloc(8), value: 'x' });
const GET_K = frame({ op: 0x00, key: 'k' });

describe('protocol cases over a socket', () => {
  it('T5: a value over the item limit is refused, swallowed, and the old value deleted everywhere', async () => {
    const app = await mcmux({ 'max-item-size': 1024 });
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 3\r\nold\r\n'), 'STORED\r\n');
    const big = 'x'.repeat(5000);
    assert.equal(await w.ask(`set k 0 0 ${big.length}\r\n${big}\r\n`), 'SERVER_ERROR object too large for cache\r\n');
    assert.equal(await w.ask('get k\r\n', 'END\r\n'), 'END\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0], undefined);
    w.close();
  });

  it('T5: an add (or append) over the item limit is refused and changes nothing: a lock held stays held', async () => {
    const app = await mcmux({ 'max-item-size': 1024 });
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set lock.s 0 0 4\r\nheld\r\n'), 'STORED\r\n');
    const big = 'x'.repeat(5000);
    for (const verb of ['add', 'append']) {
      assert.equal(await w.ask(`${verb} lock.s 0 0 ${big.length}\r\n${big}\r\n`), 'SERVER_ERROR object too large for cache\r\n', verb);
    }
    assert.equal(await w.ask('get lock.s\r\n', 'END\r\n'), 'VALUE lock.s 0 4\r\nheld\r\nEND\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['lock.s']))[0]?.value.toString(), 'held');
    w.close();
  });

  it('T5: an append or prepend whose result would pass the item limit is NOT_STORED, as memcached answers, the item as it was', async () => {
    const app = await mcmux({ 'max-item-size': 1024 });
    const w = await connectWire(app.address.port);
    const base = 'a'.repeat(1000);
    assert.equal(await w.ask(`set sess 0 0 1000\r\n${base}\r\n`), 'STORED\r\n');
    for (const verb of ['append', 'prepend']) assert.equal(await w.ask(`${verb} sess 0 0 100\r\n${'b'.repeat(100)}\r\n`), 'NOT_STORED\r\n', verb);
    assert.equal(await w.ask('get sess\r\n', 'END\r\n'), `VALUE sess 0 1000\r\n${base}\r\nEND\r\n`);
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['sess']))[0]?.value.length, 1000);
    w.close();
  });

  it('a reload that changes state-dir keeps the embedded store where it is (the directory changes only on restart)', async () => {
    const dirA = mkdtempSync(join(tmpdir(), 'mcmux-sd-a-'));
    const dirB = mkdtempSync(join(tmpdir(), 'mcmux-sd-b-'));
    const app = await mcmux({ 'state-dir': dirA }, []);
    const before = app.upstreams.map((u) => u.name);
    assert.ok(before.some((n) => n.includes(dirA)), before.join(' '));
    app.reload(buildConfig({ scalars: {}, listen: [], upstreams: [] }, { scalars: { 'state-dir': dirB }, listen: ['127.0.0.1:0'], upstreams: [] }));
    assert.deepEqual(app.upstreams.map((u) => u.name), before);
    assert.ok(!existsSync(join(dirB, 'mcmux.db')), 'no store made in the new directory');
  });

  it('an in-process memory:// store is fenced for the whole lock-fence after a start, whatever its marker says', async () => {
    const app = await mcmux();
    const u = app.upstreams[0] as HealthyUpstream;
    assert.ok(u.fenced, 'fenced at start');
    // The first check writes the marker, the second finds it: "warm", which lifts a precautionary
    // fence; not this one (the store was empty before this start, marker or not).
    await app.coldDetector.check(u);
    assert.equal(await app.coldDetector.check(u), 'warm');
    assert.ok(u.fenced, 'still fenced');
  });

  it('T10: touch k -1 answers TOUCHED and the key is gone on every upstream', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0]?.value.toString(), 'x', `upstream ${i} holds k first`);
    assert.equal(await w.ask('touch k -1\r\n'), 'TOUCHED\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0], undefined, `upstream ${i} still holds k`);
    assert.equal(await w.ask('get k\r\n', 'END\r\n'), 'END\r\n');
    w.close();
  });

  it('T10: gat -1 k returns the value once, then the key is a miss and gone on every upstream', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0]?.value.toString(), 'x', `upstream ${i} holds k first`);
    assert.equal(await w.ask('gat -1 k\r\n', 'END\r\n'), 'VALUE k 0 1\r\nx\r\nEND\r\n');
    assert.equal(await w.ask('get k\r\n', 'END\r\n'), 'END\r\n');
    assert.equal(await w.ask('gat -1 k\r\n', 'END\r\n'), 'END\r\n', 'a second gat misses too');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0], undefined, `upstream ${i} still holds k`);
    w.close();
  });

  it('T4: a block longer than declared is a bad data chunk, nothing stored, connection closed', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send('set k 0 0 3\r\nabcd\r\nget k\r\n');
    assert.equal(await w.read('\r\n'), 'CLIENT_ERROR bad data chunk\r\n');
    await w.closed;
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0], undefined, `upstream ${i} holds nothing`);
  });

  it('T6: a line over max-line-length without a newline closes the connection', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send('get ' + 'a'.repeat(3000));
    await w.closed;
  });

  it('T17: set noreply then get, pipelined, reads the new value', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 1 noreply\r\nx\r\nget k\r\n', 'END\r\n'), 'VALUE k 0 1\r\nx\r\nEND\r\n');
    w.close();
  });

  it('T18: many commands in one packet, and one command in 1-byte packets, all answered in order', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    let batch = '';
    let expected = '';
    for (let i = 0; i < 200; i++) {
      batch += `set k${i} 0 0 ${String(i).length}\r\n${i}\r\nget k${i}\r\n`;
      expected += `STORED\r\nVALUE k${i} 0 ${String(i).length}\r\n${i}\r\nEND\r\n`;
    }
    w.send(batch);
    assert.equal(await w.read((t) => t.length >= expected.length), expected);
    const cmd = 'set split 0 0 5\r\nhello\r\nget split\r\n';
    for (const ch of cmd) {
      w.socket.write(ch);
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(await w.read('END\r\n'), 'STORED\r\nVALUE split 0 5\r\nhello\r\nEND\r\n');
    w.close();
  });

  it('pipelined writes of one key are applied in order on every upstream', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    let batch = '';
    for (let i = 0; i < 50; i++) batch += `set k 0 0 ${String(i).length} noreply\r\n${i}\r\n`;
    assert.equal(await w.ask(batch + 'get k\r\n', 'END\r\n'), 'VALUE k 0 2\r\n49\r\nEND\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0]?.value.toString(), '49');
    w.close();
  });

  it('T20: unknown command is ERROR and the connection stays; an HTTP request closes it', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('frobnicate\r\n'), 'ERROR\r\n');
    assert.equal(await w.ask('version\r\n'), 'VERSION 1.6.21\r\n');
    w.send('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await w.closed;
  });

  it('T21: delete k 0 answers DELETED, delete k 0 noreply is silent, both delete everywhere', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
    assert.equal(await w.ask('delete k 0\r\n'), 'DELETED\r\n');
    assert.equal(await w.ask('delete k 0\r\n'), 'NOT_FOUND\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0], undefined, `upstream ${i} still holds k`);
    assert.equal(await w.ask('set j 0 0 1\r\ny\r\n'), 'STORED\r\n');
    // The version after it proves the noreply delete was answered with nothing at all.
    assert.equal(await w.ask('delete j 0 noreply\r\nversion\r\n'), 'VERSION 1.6.21\r\n');
    assert.equal(await w.ask('get j\r\n', 'END\r\n'), 'END\r\n');
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['j']))[0], undefined, `upstream ${i} still holds j`);
    assert.equal(await w.ask('delete k 10\r\n'), 'CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n');
    w.close();
  });

  it('a reply ready at once followed by a fatal error in one packet closes the connection, not the proxy', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send('version\r\nGET / HTTP/1.1\r\n\r\n');
    await w.closed;
    assert.equal(w.received, 'VERSION 1.6.21\r\n', 'the HTTP request closes it with nothing written, as memcached does');
    const again = await connectWire(app.address.port);
    assert.equal(await again.ask('version\r\n'), 'VERSION 1.6.21\r\n', 'the proxy is still serving');
    again.close();
  });

  it('T22: the connection over max-connections gets ERROR Too many open connections and is closed', async () => {
    const app = await mcmux({ 'max-connections': '2' });
    const a = await connectWire(app.address.port);
    const b = await connectWire(app.address.port);
    assert.equal(await a.ask('version\r\n'), 'VERSION 1.6.21\r\n');
    assert.equal(await b.ask('version\r\n'), 'VERSION 1.6.21\r\n');
    const c = await connectWire(app.address.port);
    assert.equal(await c.read('\r\n'), 'ERROR Too many open connections\r\n');
    await c.closed;
    a.close();
    await a.closed;
    for (let i = 0; i < 100 && app.listener.currConnections() > 1; i++) await new Promise((r) => setTimeout(r, 10));
    const d = await connectWire(app.address.port);
    assert.equal(await d.ask('version\r\n'), 'VERSION 1.6.21\r\n', 'a freed slot is usable again');
    b.close();
    d.close();
  });

  it('T22: a refused client that never closes its side does not keep the connection open', async () => {
    const app = await mcmux({ 'max-connections': '1' });
    const a = await connectWire(app.address.port);
    assert.equal(await a.ask('version\r\n'), 'VERSION 1.6.21\r\n');
    const c = netConnect({ port: app.address.port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    c.on('data', (d: Buffer) => (got += d.toString('latin1')));
    const gone = new Promise<void>((resolve) => {
      c.on('error', () => resolve()); // reset: mcmux closed its socket
      c.on('close', () => resolve());
    });
    await new Promise<void>((resolve) => c.once('end', () => resolve()));
    assert.equal(got, 'ERROR Too many open connections\r\n');
    // mcmux has closed, not only half-closed: what the client sends now is reset.
    let closed = false;
    void gone.then(() => (closed = true));
    try {
      for (let i = 0; i < 200 && !closed; i++) {
        c.write('version\r\n');
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(closed, 'the refused connection was left open');
    } finally {
      c.destroy();
      a.close();
    }
  });

  it('T23/T24: flush_all refused by default, admin commands never forwarded, stats answered by mcmux', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    assert.match(await w.ask('flush_all\r\n'), /^SERVER_ERROR flush_all is disabled: start mcmux with --allow-flush/);
    for (const c of ['lru_crawler metadump all', 'slabs automove 1', 'watch', 'shutdown', 'debug', 'lru mode flat', 'stats items']) {
      assert.equal(await w.ask(c + '\r\n'), 'ERROR\r\n', c);
    }
    const stats = await w.ask('stats\r\n', 'END\r\n');
    assert.match(stats, /STAT curr_connections 1\r\n/);
    assert.match(stats, /STAT upstream\.1\.name memory:\/\/b\r\n/);
    assert.match(await w.ask('stats upstreams\r\n', 'END\r\n'), /STAT upstream\.0\.state healthy\r\n/);
    w.close();
  });

  it('T24: admin commands, text and binary, never reach an upstream', async () => {
    const app = await mcmux();
    const calls = recordCalls(app);
    const w = await connectWire(app.address.port);
    const admin = [
      'lru_crawler metadump all', 'lru_crawler crawl all', 'slabs automove 1', 'slabs reassign 1 2', 'watch', 'shutdown', 'shutdown graceful',
      'debug', 'lru mode flat', 'lru tune 10 25 0.1 2', 'stats items', 'stats slabs', 'stats sizes', 'stats cachedump 1 1',
      'stats detail dump', 'stats conns', 'stats settings', 'stats reset',
    ];
    for (const c of admin) assert.equal(await w.ask(c + '\r\n'), 'ERROR\r\n', c);
    assert.match(await w.ask('stats\r\n', 'END\r\n'), /STAT curr_connections 1\r\n/);
    assert.match(await w.ask('stats upstreams\r\n', 'END\r\n'), /STAT upstream\.0\.state healthy\r\n/);
    assert.match(await w.ask('flush_all\r\n'), /^SERVER_ERROR flush_all is disabled/);
    assert.equal(await w.ask('verbosity 1\r\n'), 'OK\r\n');
    w.close();
    const b = await connectWire(app.address.port);
    // STAT items, STAT slabs, VERBOSITY, then NOOP to know every answer is in.
    b.send(Buffer.concat([frame({ op: 0x10, key: 'items' }), frame({ op: 0x10, key: 'slabs' }), frame({ op: 0x1b, extras: Buffer.alloc(4) }), frame({ op: 0x0a })]));
    assert.deepEqual(responses(await b.read((t) => wholeResponses(t) >= 4)), [
      '0x10 s=0x01', '0x10 s=0x01', '0x1b s=0x00', '0x0a s=0x00',
    ]);
    b.close();
    assert.deepEqual(calls, [], 'no admin command reached a store');
    // The recorder does see traffic: a get through the same proxy shows up.
    const c = await connectWire(app.address.port);
    assert.equal(await c.ask('get probe\r\n', 'END\r\n'), 'END\r\n');
    assert.ok(calls.some((x) => / get probe$/.test(x)), `a get recorded: ${JSON.stringify(calls)}`);
    c.close();
  });

  it('quit closes after the replies before it', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send('set k 0 0 1\r\nx\r\nquit\r\nget k\r\n');
    await w.closed;
    assert.equal(w.received, 'STORED\r\n');
  });

  it('B11: binary SET, QUIT, GET in one write: the SET answer, the QUIT answer, then close; the GET unanswered', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send(Buffer.concat([SET_K, frame({ op: 0x07 }), GET_K]));
    await w.closed;
    assert.deepEqual(responses(w.received), ['0x01 s=0x00 cas', '0x07 s=0x00']);
    for (const i of [0, 1]) assert.equal((await memory(app, i).get(['k']))[0]?.value.toString(), 'x', `the SET before QUIT ran on upstream ${i}`);
  });

  it('B11: binary SET, QUITQ, GET in one write: only the SET answer, then close', async () => {
    const app = await mcmux();
    const w = await connectWire(app.address.port);
    w.send(Buffer.concat([SET_K, frame({ op: 0x17 }), GET_K]));
    await w.closed;
    assert.deepEqual(responses(w.received), ['0x01 s=0x00 cas']);
  });

  it('max-pipeline: a deep pipeline is answered whole and in order without unbounded queueing', async () => {
    const app = await mcmux({ 'max-pipeline': '4' });
    const w = await connectWire(app.address.port);
    await w.ask('set k 0 0 1\r\nv\r\n');
    let expected = '';
    let batch = '';
    for (let i = 0; i < 500; i++) {
      batch += 'get k\r\nversion\r\n';
      expected += 'VALUE k 0 1\r\nv\r\nEND\r\nVERSION 1.6.21\r\n';
    }
    w.send(batch);
    assert.equal(await w.read((t) => t.length >= expected.length), expected);
    w.close();
  });

  it('max-output-bytes: a client that does not read its replies is paused, and loses nothing once it reads', async () => {
    const app = await mcmux({ 'max-output-bytes': '65536', 'max-reads-held': '16' });
    const w = await connectWire(app.address.port);
    const value = 'v'.repeat(100_000);
    await w.ask(`set big 0 0 ${value.length}\r\n${value}\r\n`);
    w.socket.pause();
    const n = 400; // 40 MB of replies if nothing held back
    w.send('get big\r\n'.repeat(n));
    let info = app.listener.connections()[0]?.info();
    for (let i = 0; i < 500 && !info?.paused; i++) {
      await new Promise((r) => setTimeout(r, 10));
      info = app.listener.connections()[0]?.info();
    }
    assert.ok(info?.paused, 'the connection stopped reading');
    // The bound: max-output-bytes plus the replies of the reads already started (max-reads-held, 16).
    assert.ok((info?.unsentBytes ?? 0) <= 65536 + 16 * (value.length + 64), `unsent ${info?.unsentBytes}`);
    assert.ok((info?.unsentBytes ?? 0) < (n / 2) * value.length, 'far less than everything asked for');
    assert.ok((info?.queued ?? 0) <= 1024);
    w.socket.resume();
    const reply = `VALUE big 0 ${value.length}\r\n${value}\r\nEND\r\n`;
    const all = await w.read((t) => t.length >= reply.length * n, 20000);
    assert.equal(all.length, reply.length * n);
    assert.ok(all.startsWith(reply) && all.endsWith(reply));
    w.close();
  });

  it('listens on a unix socket beside TCP', async () => {
    const path = `/tmp/mcmux-test-${process.pid}.sock`;
    const app = await mcmux({}, [], ['127.0.0.1:0', `unix:${path}`]);
    const w = await connectWire(path);
    assert.equal(await w.ask('set u 0 0 1\r\nx\r\n'), 'STORED\r\n');
    const t = await connectWire(app.address.port);
    assert.equal(await t.ask('get u\r\n', 'END\r\n'), 'VALUE u 0 1\r\nx\r\nEND\r\n');
    // Both kinds of socket read into the shared buffer (server/shared-read.ts).
    assert.deepEqual(app.listener.connections().map((c) => c.sharedReads), [true, true]);
    w.close();
    t.close();
  });

  // Node throws an error a listening server emits when nothing listens for it: an accept() that
  // fails for a reason libuv does not absorb (ENOBUFS) would end the proxy (review-protocol has
  // the client listener's case).
  it('an error of the metrics socket once it listens is logged, and metrics are still served', async () => {
    const app = await mcmux({ metrics: '127.0.0.1:0' });
    const server = (app as unknown as { metrics: { server: import('node:net').Server } }).metrics.server;
    for (let i = 0; i < 2; i++) server.emit('error', new Error('accept ENOBUFS (injected)'));
    const address = app.metricsAddress;
    assert.ok(address);
    const res = await fetch(`http://127.0.0.1:${address.port}/healthz`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
  });
});
