/**
 * Adversarial review (h3) of 6e6fc72 (a ring move distrusts the keys that moved, not the whole
 * pool: journal Overflow.unmoved from MemcachedPool.unmovedSince), 13293b7 (distrust keeps a
 * prior overflow's lastLate) and b6668c8 (the fenced marker written again over another
 * process's). Router-level, over a real MemcachedPool of fault-injecting fakes, wired as app.ts
 * wires it (a reload rebuilds the pool as app.ts resolveUpstreams does). Tests marked todo fail
 * on the code they were written against (13293b7).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command, Reply } from '../../src/command/command';
import { RepairJournal } from '../../src/router/journal';
import type { Upstream } from '../../src/upstream/upstream';
import { FakeUpstream, settle } from '../helpers/fake-upstream';
import { bringBack, takeDown } from '../helpers/pool-ring';
import { type PoolProcOptions, poolFakes, poolProc } from '../helpers/pool-proc';

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const getCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: undefined });
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

const fakes = (n = 3): ReturnType<typeof poolFakes> => poolFakes(n);
/** One mcmux process over a pool of `sf` (eject=true) and `fb` (then `more`): poolProc, its journal loaded as at a start. */
const proc = (sf: readonly FakeUpstream[], fb: FakeUpstream, o: PoolProcOptions = {}): ReturnType<typeof poolProc> => poolProc(sf, fb, { load: true, ...o });

describe('review-h3: a pool trusted for the keys that did not move (6e6fc72)', () => {
  // Finding 1 (high: stale and destroyed sessions served with every store up). The test a
  // distrust keeps (Overflow.unmoved) is a closure over the MemcachedPool object of the ring move
  // that began it. A reload that rebuilds the pool (a changed timeout or eject: tuning options,
  // the same store and journal state) leaves it on the old pool, whose ring never moves again:
  // every later ring move of the new pool distrusts with `prior.unmoved`, the old pool's frozen
  // answer. sess (home s1) = v1. s2 leaves and returns (the pool distrusted, sess unmoved). A
  // reload. s1 leaves: sess moves to another server, takes v2 there; s1 comes back with v1, and
  // sess with it: the old pool's test still says sess never moved, and v1 is served. Fixed: a
  // pool a reload replaced (inheritRing) or closed says of no key that it did not move
  // (MemcachedPool.superseded): the distrust trusts no unmoved key until the pool is flushed.
  it('a ring move after a reload that rebuilt the pool does not trust a key that moved in the new pool', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb);
    const sess = s.keyOn(1);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED', 'on s1 and b');
    await takeDown(s, sf[2] as FakeUpstream, 2);
    await bringBack(s, sf[2] as FakeUpstream, 2);
    assert.equal(s.journal.isDirty(s.p, sess), false, 'unmoved: trusted');
    await s.reload();
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.notEqual(s.pool.serverFor(sess), s.servers[1], 'sess moved');
    assert.equal(status(await s.exec(setCmd(sess, 'v2'))), 'STORED', 'on the server it moved to, and b');
    await bringBack(s, sf[1] as FakeUpstream, 1);
    assert.equal(s.pool.serverFor(sess), s.servers[1], 'sess back on s1, which holds v1');
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'v2', 'STALE SESSION: the value s1 held before sess moved');
    await s.stop();
  });

  it('the same after a reload: a deleted session is not served from the server it came back to', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb);
    const sess = s.keyOn(1);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED');
    await takeDown(s, sf[2] as FakeUpstream, 2);
    await bringBack(s, sf[2] as FakeUpstream, 2);
    await s.reload();
    await takeDown(s, sf[1] as FakeUpstream, 1);
    await s.exec(delCmd(sess)); // logout: b, and the server sess moved to
    await bringBack(s, sf[1] as FakeUpstream, 1);
    assert.equal(valueOf(await s.exec(getCmd(sess))), undefined, 'DESTROYED SESSION SERVED from s1');
    await s.stop();
  });
});

/**
 * sess (home s0) = v1 on s0 and b. A set v2 reaches s0 while its copy to b is held; the ring moves
 * meanwhile (s2 leaves: the pool distrusted, sess unmoved and trusted); then b fails v2: the pool
 * alone holds v2, acknowledged. A set v3 then fails on s0 (`s0Mode`) and on b: both dirty.
 */
async function v2AloneThenV3Fails(s0Mode: 'fail' | 'timeout') {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb);
    const sess = s.keyOn(0);
    const s0 = sf[0] as FakeUpstream;
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED');
    fb.gateOnly = (call) => call === `set ${sess}`;
    fb.close_gate();
    const v2 = s.exec(setCmd(sess, 'v2'));
    for (let n = 0; n < 50 && (await s0.inner.get([sess]))[0]?.value.toString() !== 'v2'; n++) await settle();
    assert.equal((await s0.inner.get([sess]))[0]?.value.toString(), 'v2', 'v2 reached s0; b holds it at its gate');
    await takeDown(s, sf[2] as FakeUpstream, 2); // the ring moves: sess did not
    fb.kill(); // b fails v2
    assert.equal(status(await v2), 'STORED', 'acknowledged: the pool holds it');
    fb.mode = 'ok';
    assert.ok(s.journal.isDirty(s.b, sess), 'b missed v2');
    assert.equal(s.journal.isDirty(s.p, sess), false, 'the pool holds v2: trusted (unmoved)');
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'v2');
    s0.mode = s0Mode;
    fb.mode = 'fail';
    await s.exec(setCmd(sess, 'v3')); // fails (or times out) on s0, fails on b: both dirty now
    s0.mode = 'ok';
    fb.mode = 'ok';
    assert.ok(s.servers[0]?.usable && s.b.usable, 'one failure each: still up');
  return { sf, fb, s, sess, s0 };
}

describe('review-h3: the rank of a copy trusted as unmoved once it misses a write', () => {
  // Finding 2 (medium: an acknowledged session write lost after two failures). A key the pool
  // is trusted for as unmoved holds the key's current state, as a key Overflow.known says it
  // holds; but its first miss is learnt as {holds: false} without `missed` (learn's unmoved
  // branch), where a held key's records `missed: seq`. With every copy dirty, the pool then ranks
  // oldest (fresher: missedSince 0) and the store behind, which missed an EARLIER write the pool
  // has, is taken as the freshest: its older value is served (and the repair copies it over the
  // pool). sess (home s0) = v1. A set v2 reaches s0; its copy to b is held, and the ring moves
  // meanwhile (s2 leaves: the pool distrusted, sess unmoved and trusted, not in known); then b
  // fails v2 (b dirty since v2; v2 acknowledged from the pool). A set v3 fails on both. Before
  // 6e6fc72 the read after v2 already served v1 (the pool ranked 0); 6e6fc72 serves v2 until the
  // miss of v3, then v1 again. Fixed: learn records `missed` for the first miss (or timeout) of
  // a key trusted as unmoved, as for a key known to hold it.
  it('a miss of an unmoved key ranks the pool by that miss: the acknowledged write it holds is not lost to an older copy', async () => {
    const { s, sess } = await v2AloneThenV3Fails('fail');
    assert.notEqual(valueOf(await s.exec(getCmd(sess))), 'v1', 'LOST WRITE: b, which missed v2, ranked above the pool, which holds it');
    await s.stop();
  });

  // Finding 2b (medium, as 2). The next ring move's distrust carries the pool's misses of the
  // keys it still trusts as unmoved (Overflow.known, not held) without their `missed`: ranked
  // oldest again, though the key is on the same server, which holds what it held. Fixed:
  // distrust keeps `missed` for a key its unmoved test still trusts (a late one's too).
  it('and keeps that rank through the next ring move that leaves the key where it is', async () => {
    const { sf, s, sess } = await v2AloneThenV3Fails('fail');
    await takeDown(s, sf[1] as FakeUpstream, 1); // another ring move: sess stays on s0
    assert.equal(s.pool.serverFor(sess), s.servers[0]);
    assert.notEqual(valueOf(await s.exec(getCmd(sess))), 'v1', 'LOST WRITE: b, which missed v2, ranked above the pool, which holds it');
    await s.stop();
  });

  it('so does a timeout of an unmoved key (a request that may still land)', async () => {
    const { s, sess } = await v2AloneThenV3Fails('timeout');
    assert.ok(s.journal.lateFor(s.p, sess), 'a request of sess may still land on the pool');
    assert.notEqual(valueOf(await s.exec(getCmd(sess))), 'v1', 'LOST WRITE: b, which missed v2, ranked above the pool, which holds it');
    await s.stop();
  });
});

describe('review-h3: a pool distrusted again keeps what the overflow could not remember', () => {
  // Finding 3 (medium: an acknowledged session write lost; pre-existing, 71ca2e2 drops it the
  // same way). Overflow.full says the pool took a write `known` could not remember (journal-max-
  // keys keys known already): it may hold the only copy of a key no list names, so the repair
  // must not flush it. The next ring move's distrust builds a new overflow with full false
  // (heldAlone finds only keys `known` named), and the repair flushes the pool at once: sess,
  // whose only copy of v1 the pool took while b missed it, is lost (read as absent). 71ca2e2
  // answered SERVER_ERROR to that set (the pool not read for sess); 6e6fc72 acknowledges it.
  // Fixed: distrust keeps a prior overflow's `full`.
  it('the next ring move does not forget that the pool took writes it could not remember', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb, { maxKeys: 4 });
    const sess = s.keyOn(0);
    await s.detector.checkAll();
    await takeDown(s, sf[2] as FakeUpstream, 2);
    const o = s.journal.overflowed(s.p);
    for (let n = 0; o !== undefined && o.known.size < 4; n++) assert.equal(status(await s.exec(setCmd(s.keyOn(0, `fill${n}.`), 'x'))), 'STORED');
    assert.equal(s.journal.overflowed(s.p), o);
    fb.mode = 'fail';
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED', 'acknowledged: the pool took it, b missed it');
    fb.mode = 'ok';
    assert.equal(o?.full, true, 'the pool could not remember it');
    await bringBack(s, sf[2] as FakeUpstream, 2); // the ring moves again: sess stays on s0
    assert.equal(s.pool.serverFor(sess), s.servers[0]);
    await s.repairer.tick();
    await s.repairer.tick();
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'v1', 'LOST WRITE: the repair flushed the only copy');
    await s.stop();
  });
});

describe('review-h3: a write acknowledged from a key trusted as unmoved is not flushed away', () => {
  // Finding 3b (medium: an acknowledged session write lost; new in 6e6fc72, which acknowledges
  // it: 71ca2e2 answered SERVER_ERROR, the pool not read for the key). A set started before the
  // ring move reaches the pool's server after it (the key did not move) and misses b: acknowledged,
  // the pool being read for the key (unmoved). But learn takes no write started before the
  // overflow as held (seq <= afterSeq), so Overflow.known does not name it, holdsAlone does not see
  // that the pool holds its only copy, and the repair flushes the pool at once. Fixed: learn takes
  // such a write as held for a key trusted as unmoved (none of its misses went with the overflow).
  it('a write started before the ring move, acknowledged from the pool alone, survives the repair', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb);
    const sess = s.keyOn(0);
    const s0 = sf[0] as FakeUpstream;
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED');
    const held = (call: string): boolean => call === `set ${sess}`;
    s0.gateOnly = held;
    fb.gateOnly = held;
    s0.close_gate();
    fb.close_gate();
    const v2 = s.exec(setCmd(sess, 'v2'));
    for (let n = 0; n < 50 && !(s0.calls.includes(`set ${sess}`) && fb.calls.filter(held).length >= 2); n++) await settle();
    await takeDown(s, sf[2] as FakeUpstream, 2); // the ring moves: sess did not
    fb.kill(); // b fails v2
    s0.open(); // the pool takes it
    assert.equal(status(await v2), 'STORED', 'acknowledged: the pool holds it, and is read for it');
    fb.mode = 'ok';
    await s.repairer.tick();
    await s.repairer.tick();
    assert.equal(valueOf(await s.exec(getCmd(sess))), 'v2', 'LOST WRITE: the repair flushed its only copy');
    await s.stop();
  });
});

describe('review-h3 guards: which keys a ring move leaves trusted', () => {
  // Checked: the unmoved test follows the placement the pool uses, whatever the distribution
  // (modula moves most keys when a server leaves) and with a namespace (left out of the hash).
  for (const o of [{ distribution: 'modula' as const }, { namespace: 'memc.sess.key.' }, {}]) {
    it(`trusted exactly for the keys still on their server (${JSON.stringify(o)})`, async () => {
      const { sf, fb } = fakes(4);
      const s = proc(sf, fb, o);
      await s.detector.checkAll();
      const keys = Array.from({ length: 60 }, (_, n) => `${o.namespace ?? ''}g.${n}`);
      const before = keys.map((k) => s.pool.serverFor(k));
      await takeDown(s, sf[2] as FakeUpstream, 2);
      const moved = keys.filter((k, i) => s.pool.serverFor(k) !== before[i]);
      assert.ok(moved.length > 0 && moved.length < keys.length, 'some keys moved, some did not');
      for (const k of keys) assert.equal(s.journal.isDirty(s.p, k), moved.includes(k), k);
      await bringBack(s, sf[2] as FakeUpstream, 2);
      for (const k of keys) assert.equal(s.journal.isDirty(s.p, k), moved.includes(k), `${k}, the ring whole again`);
      await s.stop();
    });
  }

  // Checked: a server flapping more often than the placements kept (16: the ring before the first
  // move and 15 after) leaves no key trusted.
  it('a server that flaps more than the placements kept leaves no key trusted as unmoved', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb);
    await s.detector.checkAll();
    const sess = s.keyOn(0);
    for (let n = 0; n < 7; n++) {
      await takeDown(s, sf[2] as FakeUpstream, 2);
      await bringBack(s, sf[2] as FakeUpstream, 2);
    }
    await takeDown(s, sf[2] as FakeUpstream, 2);
    assert.equal(s.pool.ringMoves, 15);
    assert.equal(s.journal.isDirty(s.p, sess), false, 'within the placements kept: trusted');
    await bringBack(s, sf[2] as FakeUpstream, 2);
    assert.equal(s.journal.isDirty(s.p, sess), true, 'the ring before the first move is no longer known');
    await s.stop();
  });
});

describe('review-h3: full is kept only while it means something', () => {
  // The fix of finding 3 keeps a prior overflow's `full` through distrust. trust() of an upstream
  // a request of an unremembered key may still land on (lastLate) distrusts it afresh, emptied by
  // a flush_all (or the repair's flush, expiry, an operator): nothing it held is left, and kept,
  // `full` would bar the repair's flush of it until every item expired.
  it('a flush_all that empties an overflowed store with a late request out does not keep its full', () => {
    const j = new RepairJournal({ maxKeys: 1, dir: undefined, fsync: 'no' });
    const u = { name: 'memcached://x:11211', scheme: 'memcached', timeoutMs: 50 } as unknown as Upstream;
    j.load([u]);
    j.distrust(u);
    j.mark(u, 'a', 'write', j.writeStarted('a'), true); // remembered, late
    j.mark(u, 'b', 'write', j.writeStarted('b'), true); // not remembered: lastLate
    j.written(u, 'c', j.writeStarted('c')); // held, not remembered: full
    assert.notEqual(j.overflowed(u)?.lastLate, undefined);
    assert.equal(j.overflowed(u)?.full, true);
    j.trust(u, 'flush_all');
    assert.ok(j.overflowed(u), 'overflowed afresh: the late request may still land');
    assert.equal(j.overflowed(u)?.full, false, 'emptied: nothing of it is an unremembered only copy');
    j.close();
  });
});

describe('review-h3: a copy the ring moved away from is not the freshest', () => {
  // Finding 4 (medium: an acknowledged session read as absent, or an older value served; found by
  // the fuzz, seed 1455 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_SMALL_JOURNAL=1 on
  // review-h3's e560d42, whose schedule it is; the path is older). write-wait=copies: sess=v2 is
  // acknowledged by the pool (s1), its copy to b still on its way (pending). s1 leaves the ring:
  // sess moves to a server that lacks it; the distrust keeps sess as `maybe` (maybe the only copy,
  // not read). A read: the pool is dirty for sess (moved), b too (the pending copy): every copy
  // dirty, and freshest() ranks both 0 (no entry, no `missed`) and takes the first in the chain,
  // the pool, which is read on the server sess moved to: absent. Fixed: a copy dirty only by a
  // write-wait copy on its way ranks by that write (just above a copy that missed it), so it is the
  // top here, and nobody is the truth until it lands (notYet).
  it('a read while every copy is dirty does not take the pool whose copy is on a server the key left', async () => {
    const { sf, fb } = fakes(3);
    const s = proc(sf, fb, { writeWait: 'copies' });
    const sess = s.keyOn(1);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED');
    fb.gateOnly = (call) => call === `set ${sess}`;
    fb.close_gate();
    assert.equal(status(await s.exec(setCmd(sess, 'v2'))), 'STORED', 'acknowledged by s1; its copy to b held');
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.notEqual(s.pool.serverFor(sess), s.servers[1], 'sess moved to a server without it');
    const r = valueOf(await s.exec(getCmd(sess)));
    fb.open();
    assert.ok(r === 'v2' || (r ?? '').startsWith('(SERVER_ERROR'), `LOST WRITE: ${String(r)} served for an acknowledged v2`);
    await s.stop();
  });
});
