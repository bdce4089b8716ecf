/**
 * Review of the memcached driver under faults: each test here failed on the code it was written
 * against. (The review's Redis Cluster finding is in redis.test.ts.)
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { inProcessMcmux } from '../helpers/in-process';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';
import { frame, parseResponseFrames, storeExtras } from '../helpers/binary-frame';
import { type Wire, connectWire } from '../helpers/wire';

// memcached answers SERVER_ERROR to an `ms` it cannot allocate the item for (out of memory under
// -M, object too large), in every mode, and unlinks the key's item first ("avoid stale data").
// The driver reported it as a refusal, which the authority takes as "changed nothing there"
// (authority.ts unapplied): memcached stayed clean for a key it no longer held, and decided the
// next add on it alone: a held lock was taken a second time.

/** mcmux over `mc` (first, the authority) and a memory store; a client on it. */
async function lockSetup(t: TestContext, mc: MemcachedProcess): Promise<Wire> {
  t.after(() => mc.stop());
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-mc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const app = await inProcessMcmux({ 'state-dir': dir }, [mc.url, 'memory://b']);
  t.after(() => app.close());
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  assert.equal(await w.ask('set lock.s1 0 0 6\r\nholder\r\n'), 'STORED\r\n');
  return w;
}

test('memcached authority, out of memory (-M): an add it refuses deletes the held lock there; the next add is still NOT_STORED', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  // A session store that must not evict: full, it refuses stores instead.
  const mc = await startMemcached(['-M', '-m', '2', '-I', '1m']);
  const w = await lockSetup(t, mc);
  const direct = await connectWire(mc.port);
  t.after(() => direct.close());
  let fill = '';
  for (let i = 0; i < 40_000; i++) fill += `ms fill${i} 6 T0 MS q\r\nfiller\r\n`; // q: only errors answered
  direct.send(`${fill}mn\r\n`);
  assert.match(await direct.read(/MN\r\n$/), /SERVER_ERROR out of memory storing object/, 'memcached is full');

  assert.equal(await w.ask('add lock.s1 0 0 6\r\nthief1\r\n'), 'NOT_STORED\r\n', 'the lock is held');
  // Room again (sessions expire, are deleted): memcached can store, and decides first.
  direct.send(`${Array.from({ length: 100 }, (_, i) => `md fill${i} q\r\n`).join('')}mn\r\n`);
  await direct.read(/MN\r\n$/);
  assert.equal(await w.ask('add lock.s1 0 0 6\r\nthief2\r\n'), 'NOT_STORED\r\n', 'the lock is still held');
  assert.equal(await w.ask('get lock.s1\r\n', 'END\r\n'), 'VALUE lock.s1 0 6\r\nholder\r\nEND\r\n');
});

test('memcached authority, object too large: an add it refuses deletes the held lock there; the next add is still NOT_STORED', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const w = await lockSetup(t, await startMemcached());
  // Within max-item-size (1 MiB, as memcached's default -I), over memcached's item limit (its
  // item header counts): SERVER_ERROR object too large for cache.
  const big = 'x'.repeat(1 << 20);
  assert.equal(await w.ask(`add lock.s1 0 0 ${big.length}\r\n${big}\r\n`), 'NOT_STORED\r\n', 'the lock is held');
  assert.equal(await w.ask('add lock.s1 0 0 6\r\nthief2\r\n'), 'NOT_STORED\r\n', 'the lock is still held');
  assert.equal(await w.ask('get lock.s1\r\n', 'END\r\n'), 'VALUE lock.s1 0 6\r\nholder\r\nEND\r\n');
});

// Found by the Python clients review (test/integration/python-clients.test.ts): a value mcmux's
// max-item-size lets through (1 MiB, the default) that every memcached refuses (its default -I
// 1m counts the item header) came back as "SERVER_ERROR stored on 0 of 2 upstreams ..." and, in
// binary, status 0x84: libmemcached (php-memcached, pylibmc) tells a too-large item by
// memcached's own text and status 0x03 (MEMCACHED_E2BIG).
test('every memcached refusing an item as too large: set and add are answered as memcached answers them, in text and in binary', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [mc1, mc2] = [await startMemcached(), await startMemcached()];
  t.after(() => Promise.all([mc1.stop(), mc2.stop()]));
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-mc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const app = await inProcessMcmux({ 'state-dir': dir }, [mc1.url, mc2.url]);
  t.after(() => app.close());
  const big = 'v'.repeat(1024 * 1024);
  for (const target of [mc1.port, app.address.port]) {
    const w = await connectWire(target);
    t.after(() => w.close());
    const who = target === mc1.port ? 'memcached' : 'mcmux';
    assert.equal(await w.ask(`set s 0 0 ${big.length}\r\n${big}\r\n`), 'SERVER_ERROR object too large for cache\r\n', `${who}: set`);
    assert.equal(await w.ask(`add s2 0 0 ${big.length}\r\n${big}\r\n`), 'SERVER_ERROR object too large for cache\r\n', `${who}: add`);
    // A connection speaks one protocol, told by its first byte: binary on another.
    const bin = await connectWire(target);
    t.after(() => bin.close());
    const set = frame({ opcode: 0x01, key: 's3', extras: storeExtras(0, 0), value: big, opaque: 7 });
    const reply = Buffer.from(await bin.ask(set, (text) => text.length >= 24 && text.length >= 24 + Buffer.from(text, 'latin1').readUInt32BE(8)), 'latin1');
    const [f] = parseResponseFrames(reply).frames;
    assert.equal(f?.status, 0x03, `${who}: binary SET, status "value too large"`);
    assert.equal(f?.opaque, 7);
  }
});
