/**
 * Adversarial review h5 of d4e0c13 (a miss from an upstream known to have come back empty answers
 * only where no upstream failed on the key) and 06b906b (a gat's touches of the other copies are
 * skipped during a client's flush_all only, not during the repair's flush of one overflowed
 * cache). Chains of fakes; tests marked todo fail on the code they were written against (f66281d).
 *
 * Rebased on f66281d, which narrows d4e0c13's rule to a cache the repair's flush emptied
 * (HealthyUpstream.repairEmptied): the tests of that rule flush `a` as repair.ts does (repairFlushed).
 *
 * Finding 4 (fixed): a multi-key gat answered SERVER_ERROR left the other copies of the keys it
 * found (and touched where found) untouched and clean: an item it expired came back.
 * Guards: hedged reads keep the empty-miss rule; gets over several keys; a key deleted since the
 * flush is a miss; a pool's ring move (a fence as come back empty, no repair flush) leaves an
 * unmoved server's miss an answer while the store behind is down; the gat's touch of the cache
 * the repair is about to flush lands before the flush; a client flush_all queued behind the
 * repair's flush keeps the gat's touches journaled.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { bringBack, takeDown } from '../helpers/pool-ring';
import { poolFakes, poolProc } from '../helpers/pool-proc';

const silent = pino({ level: 'silent' });
const FENCE_MS = 60_000;
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const getCmd = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const flushCmd = (): Command => ({ kind: 'flush', delay: 0, noreply: false }) as Command;
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

function chainOf(o: { hedgeMs?: number; fenceMs?: number; allowFlush?: boolean } = {}) {
  const fa = new FakeUpstream('memcached://a:11211', 'memcached');
  const fb = new FakeUpstream('mysql://b:3306/db', 'mysql');
  const ups = [fa, fb].map((f) => new HealthyUpstream(f, HEALTH, () => {}));
  const [a, b] = ups as [HealthyUpstream, HealthyUpstream];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: o.allowFlush ?? false, hedgeMs: o.hedgeMs ?? 0 }, noStats, () => {});
  const detector = new ColdDetector(() => ups, o.fenceMs ?? FENCE_MS, silent, journal);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { fa, fb, a, b, ups, journal, router, detector, exec, close: () => Promise.all(ups.map((u) => u.close())) };
}

/** `u` emptied by the repair's flush, as repair.ts does it: onFlush (knownEmpty), then repairEmptied. */
function repairFlushed(detector: ColdDetector, u: HealthyUpstream): void {
  detector.knownEmpty(u);
  u.repairEmptied = true;
}

describe('review-h5 d4e0c13: a miss from a cache the repair flushed', () => {
  // Guard: with hedge-ms, the first upstream's answer is taken from `prefetched` (the hedge asked
  // the next one meanwhile); absorb still gets `empty` for it, and the hedged request's failure
  // counts: SERVER_ERROR, not END.
  it('a hedged read: the slow first upstream came back empty, the hedged store fails: SERVER_ERROR', async () => {
    const c = chainOf({ hedgeMs: 5 });
    assert.equal(status(await c.exec(setCmd('sess.h', 'cart'))), 'STORED');
    await c.fa.inner.flush(); // the repair's flush
    repairFlushed(c.detector, c.a);
    c.fa.gateOnly = (call) => call === 'get sess.h';
    c.fa.close_gate(); // a slow: the hedge asks b
    c.fb.mode = 'fail';
    const reading = c.exec(getCmd('sess.h'));
    for (let n = 0; n < 200 && !c.fb.calls.includes('get sess.h'); n++) await new Promise((r) => setTimeout(r, 2));
    assert.ok(c.fb.calls.includes('get sess.h'), 'the hedge asked b');
    c.fa.open();
    const reply = await reading;
    assert.equal(reply.kind, 'error', `${status(reply)}: SESSION READ AS ABSENT through the hedge`);
    await c.close();
  });

  // Guard: a multi-key get: one key only the failing store may hold makes the whole read fail;
  // a get of a key a (come back empty) learnt since answers.
  it('gets of several keys: one unanswered key fails the read; known keys alone answer', async () => {
    const c = chainOf();
    assert.equal(status(await c.exec(setCmd('sess.old', 'cart'))), 'STORED');
    await c.fa.inner.flush(); // the repair's flush
    repairFlushed(c.detector, c.a);
    assert.equal(status(await c.exec(setCmd('sess.new', 'v'))), 'STORED');
    c.fb.mode = 'fail';
    const both = await c.exec({ kind: 'get', keys: ['sess.new', 'sess.old'], withCas: true, touch: undefined });
    assert.equal(both.kind, 'error', `${status(both)}: sess.old READ AS ABSENT`);
    const known = await c.exec({ kind: 'get', keys: ['sess.new', 'sess.new'], withCas: true, touch: undefined });
    assert.equal(status(known), 'values');
    await c.close();
  });

  // Guard: a key deleted since the fence began (the delete reached a, b missed it): a knows it,
  // its miss answers; b is not even asked (dirty), so nothing older comes back. The delete itself
  // answers SERVER_ERROR, not NOT_FOUND: only the emptied a answered, and b, which held the
  // session, failed (replicate-write.ts replicateKeyed: eject fuzz seeds 11536 and 11553).
  it('a key deleted since the fence while b missed the delete is a miss, b not read', async () => {
    const c = chainOf();
    assert.equal(status(await c.exec(setCmd('sess.d', 'cart'))), 'STORED');
    await c.fa.inner.flush(); // the repair's flush
    repairFlushed(c.detector, c.a);
    c.fb.mode = 'fail';
    assert.match(status(await c.exec(delCmd('sess.d'))), /^SERVER_ERROR /, 'a had lost it; b, which held it, missed the delete: not NOT_FOUND');
    c.fb.mode = 'ok';
    const r = await c.exec(getCmd('sess.d'));
    assert.equal(status(r), 'values');
    assert.equal(valueOf(r), undefined, 'A DELETED SESSION SERVED from b');
    await c.close();
  });
});

describe('review-h5 d4e0c13: a multi-key gat answered SERVER_ERROR', () => {
  // Finding 4 (medium: an expired item comes back; multi-key gat/gats only, which PHP's session
  // handlers do not send, but any client may). gats k1 k2: k1 found on a (the gat touched it
  // there, here expiring it), k2 only missed by a, which the repair flushed, while b fails: since
  // d4e0c13 k2 is unanswered and the read returns SERVER_ERROR before the found keys' touches of
  // the other copies (touchOthers) are sent or journaled. b, asked for k2 alone, keeps k1 with
  // the old deadline, clean in the journal. A read while b still fails answers END (a knows k1,
  // its miss answers), and once b is back k1 is served again from b (and read-repaired into a):
  // the gat's effect seen, then undone. The same where k2 failed on every upstream (a pool's
  // server down and b down), before d4e0c13 too. Fixed: the found keys' touches of the other
  // copies are sent before the SERVER_ERROR (b failing: journaled, repaired from a).
  it("the found keys of a gat that fails on another key still get their touches of the other copies", async () => {
    const c = chainOf();
    assert.equal(status(await c.exec(setCmd('sess.old', 'x'))), 'STORED');
    await c.fa.inner.flush(); // the repair's flush
    repairFlushed(c.detector, c.a); // sess.old only on b now
    assert.equal(status(await c.exec(setCmd('sess.k1', 'cart'))), 'STORED', 'on a (learnt) and b');
    c.fb.mode = 'fail';
    const gat = await c.exec({ kind: 'get', keys: ['sess.k1', 'sess.old'], withCas: false, touch: Date.now() - 1000 });
    assert.equal(gat.kind, 'error', 'sess.old: a came back empty, b failed');
    const during = await c.exec(getCmd('sess.k1'));
    assert.equal(status(during), 'values');
    assert.equal(valueOf(during), undefined, 'the gat expired it on a: a miss');
    c.fb.mode = 'ok';
    for (let n = 0; n < 200 && !c.b.usable; n++) await new Promise((r) => setTimeout(r, 5));
    for (let n = 0; n < 20; n++) await settle();
    const after = await c.exec(getCmd('sess.k1'));
    assert.equal(valueOf(after), undefined, 'EXPIRED BY THE GAT (AND READ AS ABSENT), THEN SERVED AGAIN FROM b');
    await c.close();
  });
});

describe('review-h5 06b906b: a gat while a flush is pending', () => {
  function rig(allowFlush = false) {
    const fc = new FakeUpstream('memcached://c:11211', 'memcached');
    const fb = new FakeUpstream('mysql://b:3306/db', 'mysql');
    const ups = [fc, fb].map((f) => new HealthyUpstream(f, HEALTH, () => {}));
    const [c, b] = ups as [HealthyUpstream, HealthyUpstream];
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush }, noStats, () => {});
    const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
    const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
    repairer.onFlush = (u) => detector.knownEmpty(u as HealthyUpstream);
    const exec = (cmd: Command): Promise<Reply> => Promise.resolve(router.execute(cmd));
    return { fc, fb, c, b, ups, journal, router, repairer, exec, close: () => Promise.all(ups.map((u) => u.close())) };
  }

  // Guard: the gat reads b (c is distrusted, not read for a key it does not know) and touches c,
  // whose flush by the repair is pending (waiting for a write in flight on b). The touch is a
  // write in flight: the flush waits for it, so it lands on c before the flush, never after.
  it("the gat's touch of the cache being flushed lands before the repair's flush of it", async () => {
    const r = rig();
    assert.equal(status(await r.exec(setCmd('sess.g', 'cart'))), 'STORED');
    r.journal.distrust(r.c); // c overflowed: sess.g not read from it
    r.fb.gateOnly = (call) => call === 'set other';
    r.fb.close_gate();
    const other = r.exec(setCmd('other', 'x'));
    for (let n = 0; n < 50 && !r.fb.calls.includes('set other'); n++) await settle();
    r.fc.gateOnly = (call) => call === 'touch sess.g';
    r.fc.close_gate(); // the touch of c is held
    const flushing = r.repairer.tick();
    for (let n = 0; n < 50 && !r.journal.flushing; n++) await settle();
    assert.equal(r.journal.flushing, true);
    const deadline = Date.now() + 3600_000;
    assert.equal(valueOf(await r.exec({ kind: 'get', keys: ['sess.g'], withCas: false, touch: deadline })), 'cart', 'read from b');
    for (let n = 0; n < 50 && !r.fc.calls.includes('touch sess.g'); n++) await settle();
    assert.ok(r.fc.calls.includes('touch sess.g'), 'c touched (the repair flush of c is no client flush_all)');
    r.fb.gateOnly = undefined;
    r.fb.open();
    await other;
    for (let n = 0; n < 20; n++) await settle();
    assert.equal(r.fc.calls.includes('flush'), false, 'THE FLUSH WENT OUT BEFORE THE TOUCH LANDED');
    r.fc.gateOnly = undefined;
    r.fc.open();
    await flushing;
    const calls = r.fc.calls;
    assert.ok(calls.includes('flush'), `the repair flushed c: ${calls.join(', ')}`);
    assert.ok(calls.indexOf('touch sess.g') < calls.indexOf('flush'), `touch after flush: ${calls.join(', ')}`);
    assert.equal((await r.fb.inner.get(['sess.g']))[0]?.deadline, deadline);
    await r.close();
  });

  // Guard: a client's flush_all received while the repair's flush is pending waits behind it;
  // from the moment it is received (flushingAll), a gat's touches are journaled only, as in
  // seed 1228; once both flushes are done nothing holds the key.
  it('a client flush_all queued behind the repair flush: the gat between them serves nothing after', async () => {
    const r = rig(true);
    assert.equal(status(await r.exec(setCmd('sess.f', 'cart'))), 'STORED');
    r.journal.distrust(r.c);
    assert.equal(status(await r.exec(setCmd('sess.f', 'cart2'))), 'STORED', 'c knows it now');
    r.fb.gateOnly = (call) => call === 'set other';
    r.fb.close_gate();
    const other = r.exec(setCmd('other', 'x'));
    for (let n = 0; n < 50 && !r.fb.calls.includes('set other'); n++) await settle();
    const flushing = r.repairer.tick();
    for (let n = 0; n < 50 && !r.journal.flushing; n++) await settle();
    const all = r.exec(flushCmd());
    await settle();
    assert.equal(r.journal.flushingAll, true);
    const deadline = Date.now() + 3600_000;
    const g = await r.exec({ kind: 'get', keys: ['sess.f'], withCas: false, touch: deadline });
    assert.equal(valueOf(g), 'cart2');
    assert.equal(r.fb.calls.includes('touch sess.f'), false, 'touches journaled only during a client flush_all');
    r.fb.gateOnly = undefined;
    r.fb.open();
    await other;
    await flushing;
    assert.equal(status(await all), 'OK');
    for (let n = 0; n < 50 && (r.journal.isDirty(r.b, 'sess.f') || r.journal.isDirty(r.c, 'sess.f')); n++) await r.repairer.tick();
    const after = await r.exec(getCmd('sess.f'));
    assert.equal(valueOf(after), undefined, 'A FLUSHED SESSION SERVED');
    await r.close();
  });
});

describe('review-h5: a pool whose ring moved, the upstream behind it down', () => {
  /** [pool of s0 s1 (eject), b], with a repairer whose flush of a cache fences it, as app.ts wires it. */
  const proc = (): ReturnType<typeof poolProc> => {
    const { sf, fb } = poolFakes(2);
    return poolProc(sf, fb, { wireFlush: true });
  };

  // Guard (was a finding against d4e0c13, where ringMoved's knownEmpty made s0's miss no answer:
  // SERVER_ERROR for every new session id while b was down, for a lock-fence after each blip;
  // f66281d takes only a repair flush's misses so, and the repair flushes no cache while another
  // upstream is down). Review-today finding 6's scene: [pool, b], eject=true, b down, a pool
  // server blips (two ring moves); s0, a server that never left, is trusted for its keys: its
  // miss of a key on no upstream (a new visitor's session id) is a miss.
  it('a new session id on a server that never left is a miss, not SERVER_ERROR, while b is down after a blip', async () => {
    const s = proc();
    const sess = s.keyOn(0);
    const fresh = s.keyOn(0, 'new.');
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'cart'))), 'STORED', 'on s0 and b');
    s.fb.mode = 'fail';
    for (let n = 0; n < 20 && s.b.usable; n++) await s.exec(getCmd('nowhere'));
    assert.equal(s.b.usable, false, 'b is down');
    assert.equal(status(await s.exec(getCmd(fresh))), 'values', 'before the blip: a miss (s0 is a plain cache)');
    await takeDown(s, s.sf[1] as FakeUpstream, 1);
    await bringBack(s, s.sf[1] as FakeUpstream, 1);
    await s.repairer.tick();
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'cart', 'served by s0 (unmoved)');
    const reply = await s.exec(getCmd(fresh));
    assert.equal(status(reply), 'values', `${status(reply)}: A NEW SESSION CANNOT START (s0 trusted for the key, its miss not taken)`);
    await s.stop();
  });
});
