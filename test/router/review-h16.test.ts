/**
 * Adversarial review h16 of 9fb71ca (lacks; journal.log's B line `r`), f8ea783 (a ring move's
 * fence as inheritedEmpty), 0fcbc45 (`fenced until <ms> <pid> <gen> <nonce>`), 197839e (a key
 * skipped as dirty counts as failed there), ffed1a3 (reask of a copy left out as dirty) and
 * 9acb7cc (a fenced authority learns the key). Chains of fakes driven by hand, wired as app.ts
 * wires them (onFlush: knownEmpty, onFlushed: flushed / forget).
 *
 * Findings:
 * 1. a client's flush_all every upstream answered clears repairEmptied in memory only after the
 *    marker rewrite it triggers (forget) had put the B line on journal.log with its `r`: an
 *    mcmux restarted before its next check (2 s) inherits "emptied by the repair" for a cache
 *    the flush_all emptied with everything else: SERVER_ERROR for keys absent everywhere while
 *    another upstream fails, for the rest of lock-fence (review-h12 finding 2, across a restart).
 * 2. 9fb71ca journals the cache the repair's flush emptied as lacking the key for a touch only: a
 *    gat, or a conditional command (incr, append...) the store behind alone could decide, that
 *    failed there leaves the store dirty and the cache clean: once the cache's fence ends its miss
 *    is read as the session, and the repair copies its "absent" over the store (a session or lock
 *    deleted from the durable store).
 * 3. 9fb71ca's lacks for a touch takes "the cache does not know the key" as the touch goes out: a
 *    set that reached the cache after the touch's NOT_FOUND, acknowledged from it while the store
 *    behind failed, leaves the cache holding the newest write ranked least fresh, below the store
 *    that missed it: the value before the acknowledged set is read, and repaired over the cache.
 * Guards: a touch's lacks (9fb71ca's own case, in finding 2's rig); a key whose delete is still on
 * its way to b (write-wait copies) reads as a miss, not SERVER_ERROR, and b is not asked again.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Command, Reply } from '../../src/command/command';
import { repairEmptied } from '../../src/router/health';
import { FakeUpstream, settle } from '../helpers/fake-upstream';
import { flushedCache, proc, repairFlush } from '../helpers/flushed-cache';

const FENCE_MS = 60_000;

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const getCmd = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const flushCmd = (): Command => ({ kind: 'flush', delay: 0, noreply: false }) as Command;
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);

describe('review-h16: journal.log\'s `r` (9fb71ca)', () => {
  // Finding 1 (low-medium: SERVER_ERROR for every get/delete/touch of a key absent everywhere
  // while the store behind fails, for the rest of the cache's lock-fence, after a restart within
  // 2 s of a client's flush_all). replicate-write.ts flush: onFlushed (forget, then flushed, then
  // mark) runs for each upstream before flushedWithAll clears repairEmptied, and mark's first,
  // synchronous step appends the B line with the `r` of the repairEmptied still set.
  it("a flush_all every upstream answered does not leave journal.log's `r` for a restarted mcmux to inherit", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-h16-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fakes = [new FakeUpstream('memcached://a:11211', 'memcached'), new FakeUpstream('mysql://b:3306/db', 'mysql')];
    const first = proc(fakes, { dir });
    await first.detector!.checkAll();
    assert.equal(status(await first.exec(setCmd('sess', 'cart'))), 'STORED');
    await repairFlush(first);
    assert.equal(status(await first.exec(flushCmd())), 'OK', 'flush_all: a and b flushed');
    await settle();
    assert.equal(repairEmptied(first.ups[0]!), false, 'this process: the flush_all ended it');
    // Killed before its next check (CHECK_MS) rewrote the B line.
    await first.stop();
    const next = proc(fakes, { dir });
    await next.detector!.checkAll();
    assert.equal(next.ups[0]!.fenced, true, 'the fence is inherited from the marker');
    (fakes[1] as FakeUpstream).mode = 'fail';
    assert.equal(repairEmptied(next.ups[0]!), false, 'INHERITED "EMPTIED BY THE REPAIR" AFTER THE FLUSH_ALL THAT ENDED IT');
    const read = await next.exec(getCmd('sess'));
    assert.equal(read.kind, 'values', `${status(read)}: a key the flush_all emptied everywhere, read as no answer`);
    assert.equal(read.kind === 'values' ? read.hits[0] : 'x', undefined);
    await next.stop();
  });
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("review-h16: a command the store behind failed, after the repair's flush of the cache", () => {
  // Finding 2: 9fb71ca journals the emptied cache as lacking the key for a touch it alone answered
  // NOT_FOUND, but not for the other commands that leave the store behind dirty and the cache
  // clean without a word from it: a gat (read miss on the cache, failed on the store), and a
  // conditional command the store alone may decide (the cache is fenced) that failed there.
  // The cache, clean, is then the repair's source for the key once its fence ends
  // (repair.ts: clean.find((s) => !isFenced(s))): its "absent" is copied over the store.
  const cases: Array<[string, string, Command]> = [
    ['touch', 'cart', { kind: 'touch', key: 'sess', deadline: 0, noreply: false } as Command], // 9fb71ca's case: a guard
    ['gat', 'cart', { kind: 'get', keys: ['sess'], withCas: false, touch: 0 } as Command],
    ['incr', '5', { kind: 'arith', op: 'incr', key: 'sess', delta: 1n, noreply: false } as unknown as Command],
    ['append', 'cart', { kind: 'store', mode: 'append', key: 'sess', value: Buffer.from('+'), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false } as Command],
  ];
  for (const [name, value, cmd] of cases) {
    it(`a ${name} that failed on the store behind leaves the cache no source to read or repair the session from at the fence's end`, async () => {
      const s = await flushedCache(value, 300);
      s.fb.mode = 'fail';
      const r = await s.exec(cmd);
      assert.equal(r.kind, 'error', `${name}: ${status(r)}`);
      assert.ok(s.journal.isDirty(s.b, 'sess'), `b: dirty, the ${name} may have been applied there`);
      s.fb.mode = 'ok';
      await sleep(350); // a's lock-fence ends
      assert.equal(s.a.fenced, false, "a's fence is over");
      const read = await s.exec(getCmd('sess'));
      assert.ok(read.kind !== 'values' || read.hits[0] !== undefined, 'A SESSION b HOLDS READ AS ABSENT (the emptied cache clean, b dirty)');
      for (let n = 0; n < 5; n++) await s.repairer.tick();
      const held = (await s.fb.inner.get(['sess']))[0]?.value.toString();
      assert.ok(held !== undefined && held.startsWith(value), `b holds ${held}: A SESSION DELETED BY THE REPAIR (the emptied cache's absence copied over it)`);
      await s.stop();
    });
  }
});

describe("review-h16: lacks (9fb71ca) and a write that reached the cache after the touch", () => {
  // Finding 3 (high: an acknowledged session write lost). replicate-write.ts replicateKeyed takes
  // `emptied` (the cache does not know the key) as the touch goes out, and journals the cache as
  // lacking the key when the touch settles: a set of the key that reached the cache after the
  // touch's NOT_FOUND, acknowledged from it while the store behind failed, leaves the cache
  // holding the newest write yet ranked least fresh (firstSeq 0.5), below the store that missed
  // that set: once the store is back it is the freshest copy, read, and repaired over the cache.
  it('a touch NOT_FOUND from the emptied cache does not rank it least fresh once a set of the key reached it', async () => {
    const s = await flushedCache('cart', FENCE_MS);
    s.fb.close_gate(); // b holds every request: the touch's and the set's
    const touch = s.exec({ kind: 'touch', key: 'sess', deadline: 0, noreply: false } as Command);
    await settle();
    const set = s.exec(setCmd('sess', 'new'));
    await settle();
    assert.ok(s.fa.calls.includes('touch sess') && s.fa.calls.some((c) => c.startsWith('set sess')), 'a answered the touch (NOT_FOUND), then the set');
    s.fb.kill(); // b fails both
    assert.equal((await touch).kind, 'error', 'the touch: no current copy answered');
    assert.equal(status(await set), 'STORED', 'the set is acknowledged: a holds it');
    assert.equal((await s.fa.inner.get(['sess']))[0]?.value.toString(), 'new');
    s.fb.mode = 'ok'; // b back, holding the value before the set
    const read = await s.exec(getCmd('sess'));
    assert.ok(read.kind !== 'values' || read.hits[0]?.value.toString() !== 'cart', 'THE VALUE BEFORE AN ACKNOWLEDGED SET READ (b ranked fresher than a)');
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    assert.equal((await s.fa.inner.get(['sess']))[0]?.value.toString(), 'new', 'AN ACKNOWLEDGED SET REPAIRED OVER on a');
    assert.equal((await s.fb.inner.get(['sess']))[0]?.value.toString(), 'new', 'b repaired from a');
    await s.stop();
  });
});

describe('review-h16 guards: a copy left out as dirty (197839e, ffed1a3)', () => {
  // No cache the repair flushed: a key skipped on b for a delete still on its way there (write-wait
  // copies) is a miss on a, not SERVER_ERROR, and b is not asked again while the delete is pending.
  it('a get of a key whose delete is still on its way to b answers a miss from a, without asking b', async () => {
    const fakes = [new FakeUpstream('fake://a', 'fake'), new FakeUpstream('fake://b', 'fake')] as const;
    const s = proc(fakes, { writeWait: 'copies' });
    await s.detector!.checkAll();
    assert.equal(status(await s.exec(setCmd('k', 'v'))), 'STORED');
    fakes[1].close_gate();
    assert.equal(status(await s.exec(delCmd('k'))), 'DELETED', 'acknowledged from a');
    const gets = fakes[1].calls.filter((c) => c.startsWith('get')).length;
    const read = await s.exec(getCmd('k'));
    assert.equal(read.kind, 'values', status(read));
    assert.equal(read.kind === 'values' ? read.hits[0] : 'x', undefined, 'a miss');
    assert.equal(fakes[1].calls.filter((c) => c.startsWith('get')).length, gets, 'b not asked');
    fakes[1].open();
    await settle();
    await s.stop();
  });
});
