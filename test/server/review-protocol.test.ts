/**
 * Protocol cases found by a review of the client side, each compared live with memcached 1.6.18:
 * every test here failed before the fix that came with it (request-parser.ts, text-codec.ts,
 * connection.ts).
 */

import assert from 'node:assert/strict';
import { type Server, connect as netConnect } from 'node:net';
import { describe, it } from 'node:test';
import { FakeUpstream, listenOverFake, settle } from '../helpers/fake-upstream';
import { connectWire } from '../helpers/wire';

async function front(overrides = {}) {
  const up = new FakeUpstream('fake://0');
  const { listener, port } = await listenOverFake(up, overrides);
  const w = await connectWire(port);
  return { up, listener, w, done: async () => { w.close(); await listener.close(true); } };
}

describe('review: text command names that are Object.prototype members', () => {
  for (const name of ['toString', 'constructor', '__proto__', 'valueOf', 'hasOwnProperty']) {
    it(`'${name} k 0 0 5' is an unknown command, not a store`, async () => {
      const { up, w, done } = await front();
      try {
        w.send(`${name} k 0 0 5\r\nhello\r\nget k\r\n`);
        const got = await w.read(/END\r\n$/, 2000).catch((e: Error) => e.message);
        await settle();
        assert.deepEqual(up.storeRequests.map((r) => `${String(r.mode)} ${r.key}`), [], 'nothing stored upstream');
        assert.equal(got, 'ERROR\r\nERROR\r\nEND\r\n');
      } finally {
        await done();
      }
    });
  }
});

describe('review: noreply errors (memcached 1.6.18 sends nothing)', () => {
  const cases = [
    'incr k abc noreply',
    'decr k -1 noreply',
    'touch k abc noreply',
    'delete k 5 noreply',
    'flush_all abc noreply',
  ];
  for (const line of cases) {
    it(`'${line}' then 'get x' answers only END`, async () => {
      const { w, done } = await front();
      try {
        w.send(`${line}\r\nget x\r\n`);
        const got = await w.read(/END\r\n$/, 2000);
        assert.equal(got, 'END\r\n');
      } finally {
        await done();
      }
    });
  }
});

describe('review: verbosity', () => {
  it("'verbosity abc' is CLIENT_ERROR bad command line format (memcached 1.6.18)", async () => {
    const { w, done } = await front();
    try {
      assert.equal(await w.ask('verbosity abc\r\n'), 'CLIENT_ERROR bad command line format\r\n');
    } finally {
      await done();
    }
  });
});

describe('review: a connection mcmux closes is really closed', () => {
  for (const [what, input] of [
    ['quit', 'quit\r\n'],
    ['an HTTP request', 'GET / HTTP/1.1\r\n'],
    ['a bad data chunk', 'set k 0 0 1\r\nab\r\n'],
    ['a line too long', 'x'.repeat(5000)],
  ] as const) {
    it(`after ${what}, the socket is released although the client never closes its side`, async () => {
      const up = new FakeUpstream('fake://0');
      const { listener, port } = await listenOverFake(up);
      // A client that keeps its side open after mcmux's FIN (allowHalfOpen: it never answers with its own).
      const s = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
      s.on('error', () => {});
      try {
        await new Promise((r) => s.once('connect', r));
        let sawEnd = false;
        s.on('end', () => (sawEnd = true));
        s.resume();
        s.write(input);
        await new Promise((r) => setTimeout(r, 500));
        assert.ok(sawEnd, 'the client was sent FIN');
        assert.equal(listener.currConnections(), 0, 'mcmux still holds the connection (half-closed)');
      } finally {
        s.destroy();
        await listener.close(true);
      }
    });
  }
});

describe('review: meta commands with a data block', () => {
  it("'ms k 8' (unsupported) must not run its data block as a command", async () => {
    const { up, w, done } = await front();
    try {
      assert.equal(await w.ask('set victim 0 0 1\r\nv\r\n'), 'STORED\r\n');
      // memcached 1.6: HD (the value "delete victim" stored under k); mcmux answers ERROR for ms, then
      // runs the value as a command.
      w.send('ms k 13\r\ndelete victim\r\nget victim\r\n');
      const got = await w.read(/END\r\n$/, 2000).catch((e: Error) => e.message);
      await settle();
      assert.ok(!up.calls.includes('delete victim'), `the value reached the upstream as a delete: ${JSON.stringify(up.calls)}; got ${JSON.stringify(got)}`);
    } finally {
      await done();
    }
  });
});

describe('review: an error of a listening socket', () => {
  // accept() can fail for reasons libuv does not absorb (ENOBUFS, ENOMEM): Node emits it on the
  // server, and with no listener there (it was removed once listen() succeeded) throws it: the
  // whole proxy exited. It is reported, and the listener goes on accepting.
  it('is reported, and clients are still accepted', async () => {
    const { listener, w, done } = await front();
    try {
      const seen: string[] = [];
      listener.onAcceptError = (error) => seen.push(error.message);
      const [server] = (listener as unknown as { servers: Server[] }).servers;
      assert.ok(server);
      server.emit('error', new Error('accept ENOBUFS (injected)'));
      assert.deepEqual(seen, ['accept ENOBUFS (injected)']);
      assert.match(await w.ask('version\r\n', /\r\n$/), /^VERSION /, 'the connection before it still served');
      const a = server.address();
      assert.ok(a && typeof a === 'object');
      const next = await connectWire(a.port);
      assert.match(await next.ask('version\r\n', /\r\n$/), /^VERSION /, 'a new client accepted');
      next.close();
    } finally {
      await done();
    }
  });
});
