/**
 * Adversarial review h36 of ad009b6 (partlyEmpty), 2114945, 74eecf5 and 795f59b (a read passing
 * over a copy lacking the key unread, DirtyEntry.asks: readPast) and 290f309 (the fuzz model: a
 * killed process's flush_all landing late is a restart empty of its store).
 *
 * Findings (each test fails on 878514c). Fixed on this branch: 3 by d017ff1 (cold-detector.ts
 * storesEmptied counts every server in the ring), 1 and 2 by the commit after e750376
 * (journal.passable: a read passes over the unread copy only to one that missed nothing but
 * touches; the miss of such a copy that came back empty is no answer when the cache is down too).
 * 4 and 5 fixed on main after the cherry-pick (storesEmptied judges a cluster by its masters'
 * marker stores; journal.log's B line keeps partlyEmpty, a ` p`, and authority-order.ts puts such
 * an upstream first among those that came back empty; since narrowed: for the keys of its servers
 * that kept their marker only (partlyEmptyFor, fuzz seed 311928), and not past one emptied whole
 * earlier that stopped learning (review-h38 finding 2)):
 * 1. (medium: an acknowledged session write read stale; 2114945 for a cache that is down, 74eecf5
 *    for one failing the read) passing over the unread copy takes the next copy's answer as the
 *    key's state, but the asks entry says nothing of what that copy holds: here the store behind
 *    had missed the newest set (dirty for it), which only the unread cache holds. With the cache
 *    flushed by the repair and unlearnt, `set sess v2` fails on b (a clean: STORED), a gat of sess
 *    while a is down journals a as lacking it unread (lackedWhereEmptied: has() fails), and the
 *    next get answers b's `cart`, the value before the acknowledged v2 (PHP then writes it back
 *    over v2). Before 2114945 the get was SERVER_ERROR until a could be read.
 * 2. (medium-low: a key only the unread copy holds read as absent; 2114945, 74eecf5) the guard
 *    "the miss of a copy that came back empty is no answer" (README) is in readPast alone, and
 *    only while that copy's fence lasts: with the unread cache down, the ranking's next copy is
 *    read and its miss taken, however it came back (lockUnreadOnA: get lock answers a miss from
 *    b, back empty, while a holds the lock); and with a failing the read once b's lock-fence is
 *    over, b's miss is taken too. Same rig as review-h33's "other side" test, which covers only a
 *    failing read inside the fence. And past a cache that is down, to a store behind that missed
 *    only a touch (a gat that timed out there) but restarted empty since: its miss is taken while
 *    the cache holds the session.
 * 3. (medium: a counter decremented from nothing, a lock granted twice; ad009b6 leaves it) a pool
 *    (eject=false) one server of which is found come back empty while its other server is down is
 *    taken as empty whole (storesEmptied judges partlyEmpty from the usable servers: the down one,
 *    still in the ring with its keys, counts as emptied): once it is back and the store before
 *    the pool restarts empty, both onlyLearnt, the chain order decides: decr NOT_FOUND and add
 *    STORED of keys the pool's other server holds. fuzz seed 307917's bug with one server down.
 * 4. (medium: the same for a Redis Cluster; ad009b6 leaves it) storesEmptied sets partlyEmpty
 *    for a memcached pool only: a redis+cluster upstream one master of which lost its marker
 *    (markerStores: a master restarted without its data) is taken as empty whole (onlyLearnt),
 *    though its other masters hold their keys: the store before it restarting empty then decides
 *    by the chain order.
 * 5. (medium-low: the same after an mcmux restart; ad009b6 leaves it) partlyEmpty is in memory
 *    only: b restarts empty, then s1 of the pool (partlyEmpty: the pool decides, b onlyLearnt is
 *    left out); mcmux restarts inside the fences; the next process inherits both fences from
 *    journal.log as come back empty (inheritedEmpty: neither onlyLearnt), and authority-order.ts
 *    lets the one that came back empty first decide first: b, which lost the counter and the lock
 *    s0 holds (decr NOT_FOUND, add STORED). The order "first emptied first" assumes the later one
 *    lost what the earlier one did; a pool emptied in part did not. (In one process too, when b
 *    has stopped learning, learntAll: not tested.)
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream, cameBackEmpty, onlyLearnt } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { poolFakes, poolProc } from '../helpers/pool-proc';
import { bringBack, poolRig, takeDown } from '../helpers/pool-ring';
import { tempDir } from '../helpers/temp-dir';
import { SlowGet, addCmd, flushedUnlearnt, getCmd, lockUnreadOnA, setCmd, status, valueOf } from '../helpers/unread-rigs';

const noop = (): void => {};
const gatCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: Date.now() + 600_000 });
const decrCmd = (key: string, delta: bigint): Command => ({ kind: 'arith', op: 'decr', key, delta, initial: undefined, deadline: 0, noreply: false });
const st = (r: Reply): string => (r.kind === 'number' ? `NUMBER ${r.value}` : status(r));

/** `u` fails until its health says down. */
async function downed(f: FakeUpstream, u: HealthyUpstream): Promise<void> {
  f.mode = 'fail';
  for (let n = 0; n < 200 && u.state !== 'down'; n++) await u.get([`other${n}`]).catch(() => undefined); // down-after 100 (proc)
  assert.equal(u.state, 'down');
}

/**
 * [a, b], a flushed by the repair and unlearnt (flushedUnlearnt: sess = cart on both); `set sess
 * v2` fails on b (STORED: a is clean); a goes down and a gat of sess journals it as lacking the
 * session unread (its has() fails). a holds v2, b the older cart, dirty for the set it missed.
 */
async function newestOnUnread(fa: FakeUpstream) {
  const fb = new FakeUpstream('memcached://b:11211', 'memcached');
  const { s, a, b } = await flushedUnlearnt(fa, fb);
  fb.mode = 'fail';
  assert.equal(status(await s.exec(setCmd('sess', 'v2'))), 'STORED', 'set sess v2: a (clean) took it');
  fb.mode = 'ok';
  assert.equal(s.journal.isDirty(b, 'sess'), true, 'b missed v2');
  await downed(fa, a);
  const gat = await s.exec(gatCmd('sess'));
  await settle();
  assert.equal(s.journal.entry(a, 'sess')?.asks, true, `a: lacking sess unread (gat: ${status(gat)})`);
  assert.equal((await fa.inner.get(['sess']))[0]?.value.toString(), 'v2', 'a holds the acknowledged v2');
  assert.equal((await fb.inner.get(['sess']))[0]?.value.toString(), 'cart', 'b holds the older value');
  return { s, a, b, fb };
}

describe('finding 1: passing over the unread copy reads a copy older than it (2114945, 74eecf5)', () => {
  it('with the unread cache down, get sess does not answer the value before the acknowledged set', async () => {
    const fa = new FakeUpstream('memcached://a:11211', 'memcached');
    const { s } = await newestOnUnread(fa);
    const got = valueOf(await s.exec(getCmd('sess')));
    fa.mode = 'ok';
    await s.stop();
    assert.notEqual(got, 'cart', 'STALE READ: the value before the acknowledged set v2 (a, down, holds v2; b missed it)');
  });

  it('with the unread cache up but failing the read, get sess does not answer the value before the acknowledged set', async () => {
    const fa = new SlowGet('memcached://a:11211', 'memcached');
    const { s, a } = await newestOnUnread(fa);
    fa.mode = 'ok';
    for (let n = 0; n < 100 && a.state === 'down'; n++) await new Promise((r) => setTimeout(r, 10));
    assert.notEqual(a.state, 'down', 'a is back');
    fa.slowKey = 'sess';
    const got = valueOf(await s.exec(getCmd('sess')));
    fa.slowKey = undefined;
    await s.stop();
    assert.notEqual(got, 'cart', 'STALE READ: the value before the acknowledged set v2 (a failed the read; b missed v2)');
  });
});

describe('finding 2: the key the unread copy alone holds read as absent (2114945, 74eecf5)', () => {
  it('with the unread cache down, get lock is SERVER_ERROR, not the miss of b, back empty', async () => {
    const { s, fa, a, b } = await lockUnreadOnA();
    await downed(fa, a);
    assert.equal(cameBackEmpty(b), true, 'b came back empty');
    const got = valueOf(await s.exec(getCmd('lock')));
    fa.mode = 'ok';
    await s.stop();
    assert.ok(got?.startsWith('(SERVER_ERROR'), `READ AS ABSENT: the lock a alone holds, read from b (back empty) as ${String(got)}`);
  });

  it("once b's lock-fence is over, a failing the read: get lock is SERVER_ERROR, not b's miss", async () => {
    const { s, fa, a, b } = await lockUnreadOnA(300);
    await new Promise((r) => setTimeout(r, 350));
    await s.detector.checkAll();
    assert.equal(b.fenced, false, "b's fence is over");
    assert.equal(s.journal.entry(a, 'lock')?.asks, true, 'a still lacks the lock unread');
    fa.slowKey = 'lock';
    const got = valueOf(await s.exec(getCmd('lock')));
    fa.slowKey = undefined;
    const onA = (await fa.inner.get(['lock']))[0]?.value.toString();
    await s.stop();
    assert.equal(onA, 'held');
    assert.ok(got?.startsWith('(SERVER_ERROR'), `READ AS ABSENT: the lock a alone holds, read from b as ${String(got)}`);
  });
});

describe("finding 2's rest: past the unread copy to one that missed only a touch, but came back empty since", () => {
  it('a down holding the session, b (touch missed) restarted empty: get sess is SERVER_ERROR, not b\'s miss', async () => {
    const fa = new FakeUpstream('memcached://a:11211', 'memcached');
    const fb = new FakeUpstream('memcached://b:11211', 'memcached');
    const { s, a, b } = await flushedUnlearnt(fa, fb);
    assert.equal(status(await s.exec(setCmd('sess', 'v2'))), 'STORED', 'set sess v2: on both (a does not remember it)');
    await downed(fa, a);
    // A gat while a is down: it times out on b (journaled with its deadline: a touch missed), and
    // a, whose has() fails, is journaled as lacking the session unread.
    fb.mode = 'timeout';
    const gat = await s.exec(gatCmd('sess'));
    fb.mode = 'ok';
    await settle();
    assert.equal(s.journal.entry(a, 'sess')?.asks, true, `a: lacking sess unread (gat: ${status(gat)})`);
    assert.notEqual(s.journal.entry(b, 'sess')?.touched, undefined, 'b: missed a touch only');
    // b restarts empty and is found so.
    await fb.inner.flush();
    await s.detector.checkAll();
    assert.equal(cameBackEmpty(b), true, 'b came back empty');
    const onA = (await fa.inner.get(['sess']))[0]?.value.toString();
    const got = valueOf(await s.exec(getCmd('sess')));
    fa.mode = 'ok';
    await s.stop();
    assert.equal(onA, 'v2', 'a holds the session');
    assert.ok(got?.startsWith('(SERVER_ERROR'), `READ AS ABSENT: the session a (down) alone holds, read from b, back empty, as ${String(got)}`);
  });
});


describe("finding 3: a pool one server of which came back empty while the other was down is taken as empty whole (ad009b6)", () => {
  it('s0 down as s1 is found come back empty; s0 back, then b restarts empty: b decides neither the counter nor the lock s0 holds', async () => {
    const s = poolRig(false);
    await s.detector.checkAll();
    const counter = s.keyOn(0, 'c');
    const lock = s.keyOn(0, 'lock.');
    assert.equal(st(await s.exec(setCmd(counter, '100'))), 'STORED');
    assert.equal(st(await s.exec(decrCmd(counter, 4n))), 'NUMBER 96', 'acknowledged');
    assert.equal(st(await s.exec(addCmd(lock, 'A'))), 'STORED', 'the lock, taken');
    await settle();
    // s0 down (not ejected: eject=false); s1 restarts empty and is found so.
    await takeDown(s, s.sf[0] as FakeUpstream, 0);
    await (s.sf[1] as FakeUpstream).inner.flush();
    s.detector.serverReconnected(s.p, s.servers[1] as HealthyUpstream);
    await settle();
    assert.equal(s.p.cameBackEmpty, true, 'the pool: come back empty (s1)');
    // s0 back with its keys; then b restarts empty and is found so.
    await bringBack(s, s.sf[0] as FakeUpstream, 0);
    await new Promise((r) => setTimeout(r, 20));
    await s.fb.inner.flush();
    assert.equal(await s.detector.check(s.b), 'cold');
    assert.equal((await (s.sf[0] as FakeUpstream).inner.get([counter]))[0]?.value.toString(), '96', 's0 holds the counter');
    const info = `pool partlyEmpty ${s.p.partlyEmpty}, onlyLearnt ${onlyLearnt(s.p)}`;
    const decr = st(await s.exec(decrCmd(counter, 2n)));
    const add = st(await s.exec(addCmd(lock, 'B')));
    await s.close();
    assert.ok(decr !== 'NOT_FOUND' && add !== 'STORED', `b, back empty, decided keys s0 holds: decr of the counter (96) ${decr} (LOST WRITE if NOT_FOUND), add of the lock ${add} (GRANTED TWICE if STORED) (${info})`);
  });
});

/**
 * A Redis Cluster of two masters as the cold detector sees it (RedisUpstream.markerStores: one
 * view per master, which keeps its view across a restart of the master): the data in the fake's
 * own store, the marker of each master in a store of its own.
 */
class ClusterFake extends FakeUpstream {
  readonly masters = [new FakeUpstream('redis://m0:6379', 'redis'), new FakeUpstream('redis://m1:6379', 'redis')];
  markerStores(): readonly FakeUpstream[] {
    return this.masters;
  }
}

describe('finding 4: a Redis Cluster one master of which came back empty is taken as empty whole (ad009b6 fixes pools only)', () => {
  it('master m1 restarts empty, then b: b decides neither the counter nor the lock the cluster holds on m0', async () => {
    const health = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };
    const fb = new FakeUpstream('memcached://b:11211', 'memcached');
    const fc = new ClusterFake('redis+cluster://m0:6379,m1:6379', 'redis');
    const b = new HealthyUpstream(fb, health, noop);
    const c = new HealthyUpstream(fc, health, noop);
    const ups = [b, c];
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, noop);
    const detector = new ColdDetector(() => ups, 60_000, pino({ level: 'silent' }), journal);
    const exec = (cmd: Command): Promise<Reply> => Promise.resolve(router.execute(cmd));
    await detector.checkAll();
    assert.equal(st(await exec(setCmd('c0', '100'))), 'STORED');
    assert.equal(st(await exec(decrCmd('c0', 4n))), 'NUMBER 96', 'acknowledged');
    assert.equal(st(await exec(addCmd('lock.0', 'A'))), 'STORED', 'the lock, taken');
    await settle();
    // Master m1 restarts empty (c0 and lock.0 live on m0: the cluster still holds them).
    await (fc.masters[1] as FakeUpstream).inner.flush();
    await detector.checkAll();
    assert.equal(c.cameBackEmpty, true, 'the cluster: come back empty (m1)');
    await fb.inner.flush();
    assert.equal(await detector.check(b), 'cold');
    const info = `cluster partlyEmpty ${c.partlyEmpty}, onlyLearnt ${onlyLearnt(c)}`;
    const decr = st(await exec(decrCmd('c0', 2n)));
    const add = st(await exec(addCmd('lock.0', 'B')));
    detector.stop();
    journal.close();
    assert.ok(decr !== 'NOT_FOUND' && add !== 'STORED', `b, back empty, decided keys the cluster holds on m0: decr of the counter (96) ${decr} (LOST WRITE if NOT_FOUND), add of the lock ${add} (GRANTED TWICE if STORED) (${info})`);
  });
});


describe('finding 5: partlyEmpty is not on file: the next process orders the pool by when it came back empty (ad009b6 leaves it)', () => {
  it('b restarts empty, then s1 of the pool; mcmux restarts: the next process lets b decide neither the counter nor the lock s0 holds', async (t) => {
    const dir = tempDir(t, 'review-h36-restart');
    const { sf, fb } = poolFakes();
    const s = poolProc(sf, fb, { dir, eject: false });
    await s.detector.checkAll();
    const counter = s.keyOn(0, 'c');
    const lock = s.keyOn(0, 'lock.');
    assert.equal(st(await s.exec(setCmd(counter, '100'))), 'STORED');
    assert.equal(st(await s.exec(decrCmd(counter, 4n))), 'NUMBER 96');
    assert.equal(st(await s.exec(addCmd(lock, 'A'))), 'STORED');
    await settle();
    await fb.inner.flush();
    assert.equal(await s.detector.check(s.b), 'cold');
    await new Promise((r) => setTimeout(r, 50));
    await (sf[1] as FakeUpstream).inner.flush();
    s.detector.serverReconnected(s.p, s.servers[1] as HealthyUpstream);
    await settle();
    await s.detector.checkAll();
    const before = `process 1: pool partlyEmpty ${s.p.partlyEmpty} onlyLearnt ${onlyLearnt(s.p)}, b onlyLearnt ${onlyLearnt(s.b)}`;
    s.detector.stop();
    await s.stop();
    const s2 = poolProc(sf, fb, { dir, eject: false });
    await s2.detector.checkAll();
    const after = `process 2: pool fenced ${s2.p.fenced} cameBackEmpty ${s2.p.cameBackEmpty} inheritedEmpty ${s2.p.inheritedEmpty} partlyEmpty ${s2.p.partlyEmpty}; b fenced ${s2.b.fenced} cameBackEmpty ${s2.b.cameBackEmpty} inheritedEmpty ${s2.b.inheritedEmpty}`;
    const decr = st(await s2.exec(decrCmd(counter, 2n)));
    const add = st(await s2.exec(addCmd(lock, 'B')));
    s2.detector.stop();
    await s2.stop();
    assert.ok(decr !== 'NOT_FOUND' && add !== 'STORED', `b, back empty before s1, decided keys s0 holds: decr of the counter (96) ${decr} (LOST WRITE if NOT_FOUND), add of the lock ${add} (GRANTED TWICE if STORED); ${before}; ${after}`);
  });
});
