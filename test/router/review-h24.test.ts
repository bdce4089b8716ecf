/**
 * Adversarial review h24 of the router changes of the session before: c00ba53 (emptiedFor /
 * stillLacks), fba5343 (ColdDetector.earlier by store identity, judged with floor), a839b62 +
 * ed349ba (a read that found the key nowhere waits for the copy it left out; not for a delete:
 * pendingRemoves), ec38342 (a touch/gat refused unsent is not journaled when no copy answered with
 * the item), 0b9b6fa (ColdDetector.excuse: a marker acknowledged after a newer one is late) and
 * 1eeee94 (ColdDetector.inherit accepts pool servers that name no fence).
 *
 * Findings (each test below FAILS on main at 5a4b24c; each passes with the commit it names undone,
 * or with the fix in the report):
 * 1. (medium: a lock granted twice; 1eeee94) inherit takes a pool server whose marker read failed
 *    ('unknown', fenceId 0) for one naming no fence: the next process adopts the keys the fence
 *    learnt though that server may have restarted empty, and the pool decides them.
 * 2. (low: a read waits up to the slow store's timeout for nothing; ed349ba's gap) pendingRemoves is
 *    set for a delete only: a get right after a touch that expired the item (or a set of an item
 *    already expired, or a gat's touches that expire it) waits for that copy to land.
 * 3. (low-medium: an expired item served again, fuzz seed 1533's class; ec38342) a multi-key gat on
 *    a pool whose servers fail differently is judged by the pool's first failure: a key whose gat
 *    may have been applied (connection closed by the server) is left unjournaled because another
 *    server refused the gat unsent.
 * 4. (medium, narrow window; reload, pre-existing) ColdDetector.reconnected (and serverReconnected)
 *    judge and mark an upstream a reload retired: its driver, reconnecting in its grace period
 *    after the store restarted empty, takes the rebuilt driver's `fenced until` for a marker kept
 *    (lastSet is by driver) and writes a plain marker over it: an mcmux restarted before the next
 *    check does not fence the store that just came back empty.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { Hit } from '../../src/command/command';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { wirePool } from '../helpers/pool-ring';

const silent = pino({ level: 'silent' });
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };
const FENCE_MS = 3_600_000;

const set = (key: string, v: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(v), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const add = (key: string, v: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(v), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const show = (r: Reply): string => (r.kind === 'number' ? String(r.value) : r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);

/** One process over [pool(s0, s1), b] (eject off) with journal.log in `dir`, wired as app.ts wires a pool. */
function poolFirst(sf: readonly FakeUpstream[], fb: FakeUpstream, dir: string) {
  const pool = new MemcachedPool(
    'memcached://s0,s1',
    sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })),
    { distribution: 'ketama', namespace: '', eject: false },
    HEALTH,
  );
  const p = new HealthyUpstream(pool, HEALTH, () => {});
  const b = new HealthyUpstream(fb, HEALTH, () => {});
  const ups = [p, b];
  const journal = new RepairJournal({ maxKeys: 1000, dir, fsync: 'no' });
  journal.load(ups);
  for (const u of ups) u.resumeUniques(journal.uniquesEpochOf(u));
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  wirePool(pool, p, detector);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const keyOn = (i: number): string => {
    for (let n = 0; n < 1000; n++) if (pool.serverFor(`lock.${n}`) === pool.members()[i]) return `lock.${n}`;
    throw new Error('no key');
  };
  const servers = pool.members() as readonly HealthyUpstream[];
  const stop = async (): Promise<void> => {
    detector.stop();
    journal.close();
    await Promise.all(ups.map((u) => u.close()));
  };
  return { p, b, pool, journal, detector, exec, keyOn, servers, stop };
}

describe('review-h24 finding 1 (1eeee94): a pool server whose marker could not be read is taken as naming no fence', () => {
  // Chain [pool(s0, s1), b: the durable store]. Process 1: s0 restarts empty, the pool is fenced
  // as come back empty, its `fenced until` marker written to s0 only (the reconnect check's look
  // is s0 alone). A lock is taken (decided by b) and copied to the pool, on s1: journal.log keeps
  // it as learnt under the pool's fence. Process 1 stops. While no mcmux runs, s1 restarts empty:
  // the lock is gone from it. Process 2 starts; s1's marker read fails (it is still coming up: a
  // connect error, a timeout; the marker read is best effort and does not count against health).
  // The look: s0 names the fence, s1 is 'unknown' (fenceId 0). Since 1eeee94 the unknown server
  // counts as one naming no fence, so the pool inherits the fence and the keys written under it:
  // it "knows" the lock, which s1 no longer holds. With b failing the next add, the pool decides
  // it alone (authority-order: a fenced upstream that knows the key decides after the warm ones)
  // and grants the lock that b holds: a lock granted twice. Before 1eeee94 the differing ids
  // (X and 0) inherited nothing, and the add was SERVER_ERROR (nobody may decide).
  it('the next process does not adopt the keys of a fence named by s0 while s1 could not be read (a lock granted twice)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-h24-inherit-'));
    try {
      const sf = [new FakeUpstream('memcached://s0:11211', 'memcached'), new FakeUpstream('memcached://s1:11211', 'memcached')] as const;
      const fb = new FakeUpstream('mysql://b:3306/db', 'mysql');
      const p1 = poolFirst(sf, fb, dir);
      await p1.detector.checkAll();
      await p1.detector.checkAll();
      const lock = p1.keyOn(1);
      // s0 restarts empty: its reconnect check finds the marker gone.
      await sf[0].inner.flush();
      p1.detector.serverReconnected(p1.p, p1.servers[0] as HealthyUpstream);
      await settle();
      await settle();
      assert.equal(p1.p.cameBackEmpty, true, 'process 1: the pool fenced as come back empty');
      assert.match((await sf[0].inner.get([p1.detector.key]))[0]?.value.toString() ?? '', /^fenced until /, 's0 names the fence');
      assert.equal(show(await p1.exec(add(lock, 'held-by-1'))), 'STORED', 'the lock taken (decided by b, copied to the pool: s1)');
      assert.equal((await sf[1].inner.get([lock]))[0]?.value.toString(), 'held-by-1');
      await p1.stop();

      // While no mcmux runs, s1 restarts empty.
      await sf[1].inner.flush();
      // Process 2 starts; s1 is still coming up: its marker read fails.
      sf[1].mode = 'fail';
      const p2 = poolFirst(sf, fb, dir);
      await p2.detector.checkAll();
      sf[1].mode = 'ok'; // s1 answers again
      assert.equal(p2.p.fenced, true, 'the pool is fenced');
      // b fails the next request (a timeout, a connection lost): the pool is asked next.
      fb.mode = 'fail';
      const r = await p2.exec(add(lock, 'held-by-2'));
      fb.mode = 'ok';
      assert.notEqual(show(r), 'STORED', `A LOCK GRANTED TWICE: b holds ${String((await fb.inner.get([lock]))[0]?.value)}, the pool (s1 restarted empty) decided the add since it adopted the fence's keys`);
      await p2.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A fake whose requests matching `gateOnly` wait at the gate (FakeUpstream), with a timeout of `timeoutMs`. */
function copiesChain(secondTimeoutMs: number) {
  const first = new FakeUpstream('fake://0');
  const second = new FakeUpstream('fake://1');
  Object.defineProperty(second, 'timeoutMs', { value: secondTimeoutMs });
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: [first, second], journal, minCopies: 1, writeWait: 'copies', allowFlush: false }, noStats, () => {});
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { first, second, journal, router, exec };
}

/** Resolves with `p`'s value, or with `late` once `ms` have passed. */
function within<T, L>(p: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<L>((resolve) => (timer = setTimeout(() => resolve(late), ms)))]).finally(() => clearTimeout(timer));
}

const values = (r: Reply): Array<string | undefined> => (r.kind === 'values' ? r.hits.map((h) => h?.value.toString()) : [`<${show(r)}>`]);

describe('review-h24 finding 2 (ed349ba): the wait for a copy left out is skipped for a delete only, not for the other writes that remove the item', () => {
  // write-wait = copies, the durable store slow (timeout 3 s). A touch with an exptime in the past
  // (memcached expires the item: `touch k -1`) is acknowledged TOUCHED from the cache, its copy to
  // the store on its way. A get right after finds the key nowhere (the cache expired it), skips
  // the store (pending) and waits for the touch's copy to land there, up to the store's timeout,
  // though its landing can only make the store miss too: markPending is told `removes` for a
  // delete only (replicateKeyed: what === 'delete'), not for a touch whose deadline has passed
  // (nor a set of an item already expired, nor a gat's touches that expire it: touchOthers).
  it('a get right after a touch that expired the item does not wait for the touch\'s copy to the slow store', async () => {
    const { second, exec } = copiesChain(3000);
    assert.equal(show(await exec(set('sess', 'cart'))), 'STORED');
    second.gateOnly = (call) => call === 'touch sess';
    second.close_gate();
    const expired = Date.now() - 1000;
    assert.equal(show(await exec({ kind: 'touch', key: 'sess', deadline: expired, noreply: false } as Command)), 'TOUCHED', 'acknowledged from the first (write-wait copies)');
    const started = Date.now();
    const r = await within(exec({ kind: 'get', keys: ['sess'], withCas: false, touch: undefined }), 500, 'still waiting' as const);
    const took = Date.now() - started;
    second.open();
    await settle();
    assert.notEqual(r, 'still waiting', `THE GET OF AN EXPIRED KEY WAITED FOR THE SLOW STORE'S TOUCH (${took} ms and counting)`);
    assert.deepEqual(values(r as Reply), [undefined]);
  });
});

/** A memcached fake whose gats, once `arm`ed, fail as the test says: `unsent` at once, or applied then lost with the connection. */
class GatFault extends FakeUpstream {
  private gatFault: 'unsent' | 'applied' | undefined;
  private releaseGat: () => void = () => {};
  private gatGate: Promise<void> = Promise.resolve();
  arm(fault: 'unsent' | 'applied'): void {
    this.gatFault = fault;
    this.gatGate = new Promise((r) => (this.releaseGat = r));
  }
  /** The applied gat's failure reaches mcmux now. */
  openGat(): void {
    this.releaseGat();
  }
  override async get(keys: readonly string[], touch?: number): Promise<Array<Hit | undefined>> {
    if (touch === undefined || this.gatFault === undefined) return super.get(keys, touch);
    const fault = this.gatFault;
    this.gatFault = undefined;
    this.calls.push(`gat ${keys.join(' ')}`);
    if (fault === 'unsent') throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `${this.name}: not connected (injected): not sent`);
    await this.inner.get(keys, touch); // the server applied the touch...
    await this.gatGate;
    // ...and closed the connection before its reply was read: it may have been applied, and will not land later.
    throw new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: connection closed by the server (injected)`);
  }
}

describe('review-h24 finding 3 (ec38342): a multi-key gat on a pool takes the first server\'s failure for every server\'s keys', () => {
  // Chain [pool(s0, s1), b]. A gat of two keys, k0 on s0 and k1 on s1: s1 refuses it unsent (not
  // connected), s0 applies it and then its connection is closed by the server (UPSTREAM_IO, not
  // late: it may have been applied). MemcachedPool.get throws the first failure (s1's, origin
  // UNREACHABLE) for both servers' keys (a later one replaces it only when it may land late), and
  // gatFailed (ec38342) reads unapplied() off that one error for k0 too: s0's copy of k0, touched
  // with the gat's lifetime, is left clean. b had lost k0 (it expired there: the gat's touch reached
  // s0 just before the item's deadline, b just after, fuzz seed 1533's class): the client is
  // answered a miss for k0, and the next get serves k0 from s0, with the lifetime of a gat that
  // answered it absent. Before ec38342 every key of a failed gat was journaled for the pool.
  it('a key whose gat may have been applied on its server is journaled, though another server of the pool refused the gat unsent', async () => {
    const sf = [new GatFault('memcached://s0:11211', 'memcached'), new GatFault('memcached://s1:11211', 'memcached')] as const;
    const fb = new FakeUpstream('mysql://b:3306/db', 'mysql');
    const pool = new MemcachedPool('memcached://s0,s1', sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })), { distribution: 'ketama', namespace: '', eject: false }, HEALTH);
    const p = new HealthyUpstream(pool, HEALTH, () => {});
    const b = new HealthyUpstream(fb, HEALTH, () => {});
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: [p, b], journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    const keyOn = (i: number): string => {
      for (let n = 0; n < 1000; n++) if (pool.serverFor(`sess.${n}`) === pool.members()[i]) return `sess.${n}`;
      throw new Error('no key');
    };
    const k0 = keyOn(0);
    const k1 = keyOn(1);
    assert.equal(show(await exec(set(k0, 'cart0'))), 'STORED');
    assert.equal(show(await exec(set(k1, 'cart1'))), 'STORED');
    await fb.inner.delete(k0); // expired in b (its deadline passed there first)
    sf[1].arm('unsent');
    sf[0].arm('applied');
    const gat = exec({ kind: 'get', keys: [k0, k1], withCas: false, touch: Date.now() + 3600_000 });
    await eventuallyTurns(() => sf[1].calls.includes(`gat ${k1}`) && sf[0].calls.includes(`gat ${k0}`));
    await settle(); // s1's refusal is in
    sf[0].openGat(); // then s0's connection closes
    const r = await gat;
    assert.deepEqual(values(r), [undefined, 'cart1'], 'k0 answered absent (b, clean, missed it), k1 from b');
    await settle();
    const dirty = journal.isDirty(p, k0);
    const after = values(await exec({ kind: 'get', keys: [k0], withCas: false, touch: undefined }));
    assert.ok(dirty, `THE POOL LEFT CLEAN FOR ${k0}, WHOSE GAT MAY HAVE BEEN APPLIED ON s0 (UPSTREAM_IO): the next get serves ${JSON.stringify(after)} with the lifetime of a gat that answered it absent`);
    await p.close();
    await b.close();
  });
});

async function eventuallyTurns(cond: () => boolean): Promise<void> {
  for (let n = 0; n < 200 && !cond(); n++) await new Promise((r) => setImmediate(r));
  assert.ok(cond(), 'not within 200 turns');
}

describe('review-h24 finding 4 (reload): a reconnect of the driver a reload retired is judged and marked as the store\'s', () => {
  // app.ts wires inner.onReconnect to coldDetector.reconnected(m) for the HealthyUpstream m it
  // built; a reload that rebuilds the store (a changed timeout) retires m but leaves it open for
  // its grace period (2 x timeout, at least 1 s), and the memcached driver re-makes a lost
  // connection by itself (50 ms backoff). ColdDetector.serverId ignores an upstream no longer in
  // the chain (review-h1 finding 3); reconnected (and serverReconnected) do not. The store
  // restarts empty within the grace period: the rebuilt driver's check finds the marker gone,
  // fences the store as come back empty and writes `fenced until`. The retired driver's check,
  // a moment later, reads that marker: a marker of this process found after the retired driver's
  // own last write (lastSet is by driver; fba5343 moved floors and earlier to the store's
  // identity, not `kept`), so "kept through its reconnect": it lifts the retired upstream's
  // precaution and writes a plain marker over `fenced until`. Until the rebuilt driver's next
  // check (2 s), an mcmux restarted (a deploy, a crash) finds the marker plain and the store not
  // fenced: it decides add/incr at once, on a store that lost every lock it held (hazard 2).
  it('after a reload, a reconnect of the retired driver does not write the store out of the fence it came back empty under', async () => {
    const { markerRig } = await import('../helpers/marker-rig');
    const s = markerRig();
    await s.detector.checkAll();
    await s.detector.checkAll();
    const next = s.reload();
    await s.detector.checkAll(); // the rebuilt driver's first check lifts the reload's precaution
    assert.equal(next.fenced, false, 'the rebuilt upstream is trusted, unfenced');
    await s.fake.inner.flush(); // the store restarts empty within the retired driver's grace period
    s.detector.reconnected(next); // both drivers re-make their connection: the rebuilt one first
    for (let n = 0; n < 10; n++) await settle();
    assert.equal(next.cameBackEmpty, true, 'the rebuilt upstream fenced as come back empty');
    assert.match(await s.current(), /^fenced until /, 'its marker says so');
    s.detector.reconnected(s.up); // the retired one a moment later
    for (let n = 0; n < 10; n++) await settle();
    const marker = await s.current();
    s.detector.stop();
    await s.up.close();
    await next.close();
    // mcmux restarts now (before the rebuilt driver's next check): what does it make of the store?
    const again = markerRig();
    Object.defineProperty(again.fake, 'inner', { value: s.fake.inner });
    await again.detector.checkAll();
    const fenced = again.up.fenced;
    again.detector.stop();
    await again.close();
    assert.ok(fenced, `THE STORE, COME BACK EMPTY A MOMENT AGO, IS NOT FENCED BY THE NEXT PROCESS: the retired driver's check wrote its marker plain (${marker}) over \`fenced until\``);
  });
});
