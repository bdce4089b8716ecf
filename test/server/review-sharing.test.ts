/**
 * Review of the request path's sharing and ordering (server/connection.ts, server/shared-read.ts,
 * router/fan-out.ts, router/replicate-write.ts, upstream/read-batch.ts). No bug was found in this
 * area; these are the "holds" guards kept from the checks made (see each comment). Every test
 * starts its own servers on free ports and skips when a binary is missing.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, after, describe, it } from 'node:test';
import type { App } from '../../src/app';
import type { Listener } from '../../src/server/listener';
import { FakeUpstream, listenOverFake } from '../helpers/fake-upstream';
import { startFaultProxy } from '../helpers/fault-proxy';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { requireBinary, startMemcached } from '../helpers/servers';
import { type Wire, connectWire } from '../helpers/wire';
import { startRedis } from '../upstream/targets/redis';

const listeners: Listener[] = [];
after(async () => {
  await Promise.all(listeners.map((l) => l.close(true)));
});

function stateDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-sharing-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function wires(t: TestContext, app: App, n: number): Promise<Wire[]> {
  const ws = await Promise.all(Array.from({ length: n }, () => connectWire(app.address.port)));
  t.after(() => ws.forEach((w) => w.close()));
  return ws;
}

/** A small deterministic PRNG (xorshift-multiply), so a failing seed can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
    s ^= s >>> 13;
    return (s >>> 0) / 4294967296;
  };
}

describe('review: sharing and ordering on the request path', () => {
  // holds: Redis gathers the gets of one event-loop pass into one script call (read-batch.ts),
  // one Hit object shared by every caller of a key. Checked: a `gets` gathered with a plain `get`
  // of the same key still gets its cas; `get k nokey k` gathered with another client's read of k
  // repeats k; and a client's pipelined `set k noreply` + `get k` reads its own value even when
  // another client's get of k went out in the same pass (the connection holds the get until the
  // set is answered, and the gathered read is sent after the set).
  it('holds: reads gathered across clients on Redis keep each client\'s cas, duplicates and read-your-writes', async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const redis = await startRedis();
    t.after(() => redis.stop());
    const app = await inProcessMcmux({ 'state-dir': stateDir(t) }, [`${redis.url}?timeout=5000`, 'memory://b']);
    const [a, b, c] = (await wires(t, app, 3)) as [Wire, Wire, Wire];
    assert.equal(await c.ask('set k 5 0 2\r\nv1\r\n'), 'STORED\r\n');
    a.send('get k nokey k\r\n');
    b.send('gets k nokey k\r\n');
    assert.equal(await a.read('END\r\n'), 'VALUE k 5 2\r\nv1\r\nVALUE k 5 2\r\nv1\r\nEND\r\n');
    assert.match(await b.read('END\r\n'), /^VALUE k 5 2 (\d+)\r\nv1\r\nVALUE k 5 2 \1\r\nv1\r\nEND\r\n$/);
    for (let i = 0; i < 20; i++) {
      const v = `n${String(i).padStart(2, '0')}`;
      a.send('get k\r\n');
      b.send(`set k 0 0 3 noreply\r\n${v}\r\nget k\r\n`);
      await a.read('END\r\n');
      assert.equal(await b.read('END\r\n'), `VALUE k 0 3\r\n${v}\r\nEND\r\n`, `round ${i}`);
    }
  });

  // holds: the memcached driver pipelines the gets of one pass on one connection; when that
  // connection is cut with the replies held, every pending get fails together and each client's
  // read falls through to the next upstream, which answers every key of every client.
  it('holds: the first upstream cut with a batch of gets on the wire: every client is answered by the next', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const proxy = await startFaultProxy(mc.port);
    t.after(() => proxy.close());
    const app = await inProcessMcmux({ 'state-dir': stateDir(t) }, [`memcached://127.0.0.1:${proxy.port}?timeout=5000`, 'memory://b']);
    const ws = await wires(t, app, 20);
    const val = (i: number): string => `v${String(i).padStart(2, '0')}`;
    for (const [i, w] of ws.entries()) assert.equal(await w.ask(`set k${i} ${i} 0 3\r\n${val(i)}\r\n`), 'STORED\r\n');
    proxy.hold();
    const before = proxy.stats.bytesForwarded;
    for (const [i, w] of ws.entries()) w.send(`get k${i} k${(i + 1) % 20}\r\n`);
    await eventually('the gets reached memcached', () => proxy.stats.bytesForwarded > before, 5000);
    proxy.cut();
    for (const [i, w] of ws.entries()) {
      const j = (i + 1) % 20;
      assert.equal(await w.read('END\r\n'), `VALUE k${i} ${i} 3\r\n${val(i)}\r\nVALUE k${j} ${j} 3\r\n${val(j)}\r\nEND\r\n`);
    }
  });

  // holds: a client that does not read its replies (200 KB values, max-output-bytes 1 KiB) is
  // paused without holding back another client reading the same key through the same upstream
  // connection.
  it('holds: a client that reads nothing is paused and does not hold back another on the same upstream', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'max-output-bytes': '1024' }, [`${mc.url}?timeout=5000`, 'memory://b']);
    const [slow, fast] = (await wires(t, app, 2)) as [Wire, Wire];
    const big = 'x'.repeat(200_000);
    assert.equal(await fast.ask(`set big 0 0 ${big.length}\r\n${big}\r\n`), 'STORED\r\n');
    slow.socket.pause();
    slow.send('get big\r\n'.repeat(500));
    await eventually('the client that reads nothing is paused', () => app.listener.connections().some((c) => c.info().paused), 10_000);
    const reply = `VALUE big 0 ${big.length}\r\n${big}\r\nEND\r\n`;
    for (let i = 0; i < 20; i++) assert.equal(await fast.ask('get big\r\n', 'END\r\n'), reply);
  });

  // holds: one connection behaves like one memcached connection whatever the timing. Random
  // pipelines (set/get/delete/append/prepend/incr/add/replace/gat/touch/flush_all, noreply mixed
  // in, bad lines, multi-key gets with repeats) are sent in random packets through mcmux over an
  // upstream whose every call answers after 0-3 event-loop turns, with tiny limits (max-reads-held
  // 1-3, max-keys-per-get 2-4, max-pipeline 1-8, max-input-bytes 1-64, max-output-bytes 1 KiB), and
  // the reply stream must equal a private memcached's for the same bytes. 2500 seeds passed in the
  // review (and 2500 of a binary-protocol version, decr aside: memcached space-pads a decr that
  // loses digits, protocol.txt allows it); a few are kept here.
  it('holds: random pipelines over a jittery upstream with tiny limits answer as memcached does', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    t.after(() => mc.stop());
    for (let seed = 1; seed <= 30; seed++) {
      const r = rng(seed);
      const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)] as T;
      const up = new FakeUpstream('fake://0');
      const store = up.inner as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
      for (const op of ['get', 'store', 'delete', 'touch', 'arith'] as const) {
        const original = (store[op] as (...args: unknown[]) => Promise<unknown>).bind(up.inner);
        store[op] = async (...args: unknown[]) => {
          for (let n = Math.floor(r() * 4); n > 0; n--) await new Promise((res) => setImmediate(res));
          return original(...args);
        };
      }
      const limits = { maxReadsHeld: 1 + Math.floor(r() * 3), maxKeysPerGet: 2 + Math.floor(r() * 3), maxPipeline: 1 + Math.floor(r() * 8), maxOutputBytes: 1024, maxInputBytes: 1 + Math.floor(r() * 64) };
      const { listener, port } = await listenOverFake(up, limits);
      listeners.push(listener);
      const keys = ['a', 'b', 'c'];
      let cmds = '';
      for (let i = 5 + Math.floor(r() * 40); i > 0; i--) {
        const k = pick(keys);
        const nr = r() < 0.3 ? ' noreply' : '';
        const v = String(Math.floor(r() * 100));
        switch (Math.floor(r() * 11)) {
          case 0:
          case 1:
            cmds += `set ${k} ${Math.floor(r() * 3)} 0 ${v.length}${nr}\r\n${v}\r\n`;
            break;
          case 2:
          case 3:
            cmds += `get ${Array.from({ length: 1 + Math.floor(r() * Math.min(3, limits.maxKeysPerGet)) }, () => pick(keys)).join(' ')}\r\n`;
            break;
          case 4:
            cmds += `delete ${k}${nr}\r\n`;
            break;
          case 5:
            cmds += `append ${k} 0 0 1${nr}\r\nx\r\n`;
            break;
          case 6:
            cmds += `incr ${k} 3${nr}\r\n`;
            break;
          case 7:
            cmds += `gat ${pick(['0', '100', '-1'])} ${k}\r\n`;
            break;
          case 8:
            cmds += `touch ${k} ${pick(['0', '100', '-1'])}${nr}\r\n`;
            break;
          case 9:
            cmds += pick(['version\r\n', 'bogus\r\n', 'verbosity 1\r\n', 'flush_all\r\n', 'flush_all noreply\r\n', 'prepend b 0 0 1\r\nz\r\n', 'replace a 0 0 1\r\nq\r\n']);
            break;
          default:
            cmds += `add ${k} 0 0 1${nr}\r\ny\r\n`;
        }
      }
      cmds += 'get a\r\nget b\r\nget c\r\nversion\r\n';
      const version = /VERSION [^\r]*/g;
      const ref = await connectWire(mc.port);
      await ref.ask('flush_all\r\n');
      const want = (await ref.ask(cmds, /VERSION [^\r]*\r\n$/, 10_000)).replace(version, 'VERSION x');
      ref.close();
      const w = await connectWire(port);
      const bytes = Buffer.from(cmds, 'latin1');
      for (let at = 0; at < bytes.length; ) {
        const len = 1 + Math.floor(r() * 40);
        w.send(bytes.subarray(at, at + len));
        at += len;
        if (r() < 0.3) await new Promise((res) => setImmediate(res));
      }
      const got = (await w.read((s) => s.replace(version, 'VERSION x').length >= want.length && /VERSION [^\r]*\r\n$/.test(s), 10_000)).replace(version, 'VERSION x');
      w.close();
      assert.equal(got, want, `seed ${seed}, limits ${JSON.stringify(limits)}, pipeline ${JSON.stringify(cmds)}`);
    }
  });
});
