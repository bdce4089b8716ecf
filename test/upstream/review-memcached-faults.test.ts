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
