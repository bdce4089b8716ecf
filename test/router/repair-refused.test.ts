/**
 * A key a store keeps refusing (its own error: an item over memcached's `-I`, a MySQL packet over
 * max_allowed_packet, a Redis at maxmemory) is tried again with a growing pause, not at every tick
 * of the repair: each try read the whole item from the source and sent it again, ten times a
 * second for as long as the session lived. Real memcached with a 1 KiB item limit behind a memory
 * store that takes the item; the repair's ticks are run by hand on hand-moved clocks.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { Command, Reply } from '../../src/command/command';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { createMemcachedUpstream } from '../../src/upstream/memcached';
import { MemoryUpstream } from '../../src/upstream/memory';
import type { Upstream } from '../../src/upstream/upstream';
import { clocksFor } from '../helpers/clocks';
import { noStats } from '../helpers/fake-upstream';
import { describeReply } from '../helpers/reply-text';
import { requireBinary, startMemcached } from '../helpers/servers';

/** memcached with a 1 KiB item limit: a 2000-byte value is refused (SERVER_ERROR object too large for cache). */
const SMALL_ITEMS = ['-I', '1k', '-o', 'slab_chunk_max=512'];
const set = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });

/** A logger whose lines (parsed) land in `lines`. */
function captured(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  return { log: pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) }), lines };
}

/** Counts the stores `u` is asked for. */
function counted(u: Upstream): { u: Upstream; stores: () => number } {
  let n = 0;
  const store = u.store.bind(u);
  u.store = (req) => {
    n++;
    return store(req);
  };
  return { u, stores: () => n };
}

test('a key the store keeps refusing is tried again after a pause that grows, not at every tick; it stays dirty there, and a write it takes clears it', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc = await startMemcached(SMALL_ITEMS);
  t.after(() => mc.stop());
  const clocks = clocksFor(t);
  const memory = new MemoryUpstream('memory://refused-a', 1 << 24);
  const { u: cache, stores } = counted(createMemcachedUpstream(new URL(mc.url), new Map(), { defaultTimeoutMs: 2000, maxItemSize: 1 << 20 }));
  t.after(() => cache.close());
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: [memory, cache], journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
  const { log, lines } = captured();
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, log);
  const exec = async (c: Command): Promise<Reply> => router.execute(c);

  assert.equal(describeReply(await exec(set('sess:big', 'x'.repeat(2000)))), 'STORED', 'the memory store took it; memcached refused it');
  assert.equal(journal.isDirty(cache, 'sess:big'), true);
  const before = stores();
  // A minute of ticks (TICK_MS 100).
  for (let i = 0; i < 600; i++) {
    await repairer.tick();
    clocks.advance(100);
  }
  const tries = stores() - before;
  assert.ok(tries >= 3, `the key is still tried now and then (${tries} tries in a minute)`);
  assert.ok(tries <= 10, `a refused key was copied again ${tries} times in a minute of repair ticks (one a tick: 600)`);
  assert.equal(journal.isDirty(cache, 'sess:big'), true, 'still dirty there: nothing is given up');
  // Said at warn, at most once a minute for the upstream, without the key (a session id is a
  // credential): the store's own words say why.
  const warned = lines.filter((l) => l.level === 40);
  assert.equal(warned.length, 1, JSON.stringify(warned));
  assert.match(String(warned[0]?.msg), /refused/);
  assert.match(String(warned[0]?.err), /object too large/);
  assert.doesNotMatch(JSON.stringify(lines), /sess:big/);

  // The session shrinks: the client's write lands on both, and the entry is gone.
  assert.equal(describeReply(await exec(set('sess:big', 'small now'))), 'STORED');
  assert.equal(journal.isDirty(cache, 'sess:big'), false);
  assert.equal((await cache.get(['sess:big']))[0]?.value.toString(), 'small now');
});

test('a key refused once, which the store takes when next tried, is copied at the first try after the pause', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc = await startMemcached();
  t.after(() => mc.stop());
  const clocks = clocksFor(t);
  const memory = new MemoryUpstream('memory://refused-b', 1 << 24);
  const cache = createMemcachedUpstream(new URL(mc.url), new Map(), { defaultTimeoutMs: 2000, maxItemSize: 1 << 20 });
  t.after(() => cache.close());
  const store = cache.store.bind(cache);
  // The client's write, and the repair's first copy: memcached out of memory for the slab class.
  let refusals = 2;
  cache.store = async (req) => {
    if (refusals > 0) {
      refusals--;
      throw new McmuxError(ErrorCodes.UPSTREAM_REFUSED, 'SERVER_ERROR out of memory storing object');
    }
    return store(req);
  };
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: [memory, cache], journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, pino({ level: 'silent' }));
  assert.equal(describeReply(await router.execute(set('sess:oom', 'cart'))), 'STORED');
  assert.equal(journal.isDirty(cache, 'sess:oom'), true, 'memcached was out of memory for it');
  let ticks = 0;
  for (; ticks < 30 && journal.isDirty(cache, 'sess:oom'); ticks++) {
    await repairer.tick();
    clocks.advance(100);
  }
  assert.equal(refusals, 0, 'the repair tried it, and was refused');
  assert.equal(journal.isDirty(cache, 'sess:oom'), false, 'copied within three seconds of ticks');
  assert.ok(ticks > 5, `not at the next tick after the refusal (copied at tick ${ticks})`);
  assert.equal((await cache.get(['sess:oom']))[0]?.value.toString(), 'cart');
});
