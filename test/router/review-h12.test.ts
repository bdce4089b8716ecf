/**
 * Adversarial review h12 of eb89fe4 (the repair's flush fences the cache again once the flush is
 * answered, repairEmptied set again) and 2a959ea (a delete's or touch's NOT_FOUND from a cache the
 * repair's flush emptied, for a key not written to it since, is no answer while another upstream
 * failed), with f66281d (a read's miss from such a cache, failover-read.ts absorb) for context.
 * Chains of fakes, driven by hand; the repair's flush is the Repairer's own (tick), wired as
 * app.ts wires it (onFlush: knownEmpty, onFlushed: flushed).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream, knowsKey, repairEmptied } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { poolFakes, poolProc } from '../helpers/pool-proc';

const silent = pino({ level: 'silent' });
const FENCE_MS = 60_000;
const HEALTH = { downAfter: 100, probeMinMs: 10, probeMaxMs: 10 };

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const touchCmd = (key: string): Command => ({ kind: 'touch', key, deadline: 0, noreply: false }) as Command;
const getCmd = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const flushCmd = (): Command => ({ kind: 'flush', delay: 0, noreply: false }) as Command;
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

/** A fake whose get reads the store at once but answers only once `release()` is called. */
class AnswerLate extends FakeUpstream {
  private hold: Promise<void> | undefined;
  private releaseHold: () => void = () => {};
  holdAnswers(): void {
    this.hold = new Promise((r) => (this.releaseHold = r));
  }
  release(): void {
    this.hold = undefined;
    this.releaseHold();
  }
  override async get(keys: readonly string[], touch?: number) {
    const hold = this.hold;
    const hits = await super.get(keys, touch);
    if (hold !== undefined) await hold;
    return hits;
  }
}

/** [a: a memcached cache, b: a durable store], a repairer wired as app.ts wires it. */
function rig(o: { allowFlush?: boolean } = {}) {
  const fa = new AnswerLate('memcached://a:11211', 'memcached');
  const fb = new FakeUpstream('mysql://b:3306/db', 'mysql');
  const ups = [fa, fb].map((f) => new HealthyUpstream(f, HEALTH, () => {}));
  const [a, b] = ups as [HealthyUpstream, HealthyUpstream];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: o.allowFlush ?? false }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  repairer.onFlush = (u) => detector.knownEmpty(u as HealthyUpstream);
  repairer.onFlushed = (u) => detector.flushed(u as HealthyUpstream);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  /** a overflowed, then flushed by the repair (b holds what it held). */
  const repairFlush = async (): Promise<void> => {
    journal.distrust(a);
    for (let n = 0; n < 20 && journal.overflowed(a) !== undefined; n++) await repairer.tick();
    assert.equal(journal.overflowed(a), undefined, 'a flushed by the repair and trusted');
    assert.ok(fa.calls.includes('flush'), 'the repair flushed a');
    assert.equal(repairEmptied(a), true, 'a: emptied by the repair');
  };
  return { fa, fb, a, b, ups, journal, router, detector, repairer, exec, repairFlush, close: () => Promise.all(ups.map((u) => u.close())) };
}

describe("review-h12: a reload's takeOver and the repair's flush", () => {
  // Finding 1 (medium: a session read as absent, the failure 2a959ea and f66281d are about, after
  // a reload). app.ts resolveUpstreams rebuilds a memcached upstream whose tuning options changed
  // (a timeout) and hands it what was known of the store (takeOver): its fence, emptyUntil,
  // inheritedEmpty, the keys it learnt. Not repairEmptied: the rebuilt upstream is still fenced
  // as come back empty (emptyUntil copied), but no longer "emptied by the repair's flush", so its
  // miss of a key only the store behind holds answers while that store fails: END for a get,
  // NOT_FOUND for a delete and a touch, for the rest of the fence.
  it("a reload that rebuilds the cache the repair flushed keeps its misses from answering while the store behind fails", async () => {
    const { sf, fb } = poolFakes(2);
    const s = poolProc(sf, fb, { wireFlush: true, eject: false, load: true });
    await s.detector.checkAll();
    const sess = s.keyOn(0);
    const sess2 = s.keyOn(1);
    assert.equal(status(await s.exec(setCmd(sess, 'cart'))), 'STORED', 'on the pool and b');
    assert.equal(status(await s.exec(setCmd(sess2, 'cart'))), 'STORED', 'on the pool and b');
    s.journal.distrust(s.p); // the pool's journal overflowed
    for (let n = 0; n < 20 && s.journal.overflowed(s.p) !== undefined; n++) await s.repairer.tick();
    assert.equal(s.journal.overflowed(s.p), undefined, 'the pool flushed by the repair and trusted');
    assert.equal(repairEmptied(s.p), true, 'emptied by the repair');
    await s.reload(); // a changed timeout: the same store, a new driver
    s.fb.mode = 'fail';
    assert.equal(s.journal.isDirty(s.p, sess) || s.journal.isDirty(s.b, sess), false, 'the reload distrusted nothing');
    const got = await s.exec(getCmd(sess));
    assert.equal(got.kind, 'error', `${status(got)}: A SESSION b HOLDS READ AS ABSENT after the reload`);
    const deleted = await s.exec(delCmd(sess2));
    assert.notEqual(status(deleted), 'NOT_FOUND', 'A SESSION b HOLDS DELETED AS ABSENT after the reload');
    await s.stop();
  });
});

describe("review-h12: a client's flush_all after the repair's flush", () => {
  // Finding 2 (low: a false SERVER_ERROR, for the rest of lock-fence, with --allow-flush only).
  // The repair flushed a (repairEmptied: its miss is no answer while b fails, b holding what a
  // held). A client's flush_all then empties a and b, both answering OK: nothing is held anywhere
  // any more, a's miss of a key not written since is the truth. repairEmptied stays set
  // (replicateFlush tells the cold detector, forget, which leaves it): while b fails, a get of
  // any such key is SERVER_ERROR, and so are a delete and a touch, until a's fence ends.
  it('a flush_all every upstream answered ends the repair flush\'s hold on the cache\'s misses', async () => {
    const r = rig({ allowFlush: true });
    await r.detector.checkAll();
    assert.equal(status(await r.exec(setCmd('sess.f', 'cart'))), 'STORED');
    await r.repairFlush();
    assert.equal(status(await r.exec(flushCmd())), 'OK', 'flush_all: a and b flushed');
    assert.equal(valueOf(await r.exec(getCmd('sess.f'))), undefined, 'gone everywhere');
    r.fb.mode = 'fail';
    const got = await r.exec(getCmd('sess.f'));
    assert.equal(status(got), 'values', `${status(got)}: A KEY THE FLUSH_ALL TOOK FROM EVERY STORE IS SERVER_ERROR, not a miss`);
    const deleted = await r.exec(delCmd('sess.f'));
    assert.equal(status(deleted), 'NOT_FOUND', `${status(deleted)}: the delete of a key flushed everywhere`);
    await r.close();
  });

  // Guard: a flush_all that failed on b (b may still hold what a held): a's miss still no answer.
  it('a flush_all that failed on b leaves the cache the repair flushed so', async () => {
    const r = rig({ allowFlush: true });
    await r.detector.checkAll();
    assert.equal(status(await r.exec(setCmd('sess.g', 'cart'))), 'STORED');
    await r.repairFlush();
    r.fb.mode = 'fail';
    assert.match(status(await r.exec(flushCmd())), /^SERVER_ERROR /, 'b failed the flush');
    const got = await r.exec(getCmd('sess.g'));
    assert.equal(got.kind, 'error', `${status(got)}: A SESSION b MAY HOLD READ AS ABSENT`);
    await r.close();
  });
});

describe("review-h12: a read overlapping a set, the cache the repair flushed answering late", () => {
  // Finding 3 (medium: a session read as absent, neither the value before nor the one after; the
  // read path of f66281d). absorb asks knowsKey when the cache's answer arrives, not when the
  // request went out (replicateKeyed takes its snapshot before the fan-out). A get of sess.r
  // (held by b only: a was flushed by the repair) reaches a and misses; a set of sess.r, sent
  // meanwhile on another connection, lands on a and is answered first (a learns the key); b,
  // paused, times out on both. The get's miss from a is then taken as an answer ("a knows the
  // key"), though it was read before the set reached a: END, where the read could only have
  // been 'old' (b) or 'new' (the set), or SERVER_ERROR (b failed).
  it("a miss the cache read before a set of the key reached it is no answer while the store behind fails", async () => {
    const r = rig();
    await r.detector.checkAll();
    assert.equal(status(await r.exec(setCmd('sess.r', 'old'))), 'STORED');
    await r.repairFlush();
    r.fa.holdAnswers();
    const reading = r.exec(getCmd('sess.r')); // a misses it now; the answer waits
    for (let n = 0; n < 50 && !r.fa.calls.includes('get sess.r'); n++) await settle();
    assert.ok(r.fa.calls.includes('get sess.r'), 'the read reached a');
    r.fb.mode = 'timeout'; // b pauses: the set and the read's get of b time out
    const setting = r.exec(setCmd('sess.r', 'new'));
    for (let n = 0; n < 50 && !knowsKey(r.a, 'sess.r'); n++) await settle();
    assert.equal(knowsKey(r.a, 'sess.r'), true, 'the set landed on a (answered) before the read\'s answer');
    r.fa.release();
    const got = await reading;
    assert.notEqual(valueOf(got), undefined, `${status(got)}: A SESSION READ AS ABSENT (neither 'old' nor 'new')`);
    await setting;
    await r.close();
  });

  // Guard: a delete that reached a and b (a learns the key): once b fails, the key is a miss and
  // its delete NOT_FOUND, not SERVER_ERROR (no false error for a key that really is gone).
  it('a key a delete took from every store is a miss while b fails after', async () => {
    const r = rig();
    await r.detector.checkAll();
    assert.equal(status(await r.exec(setCmd('sess.d', 'old'))), 'STORED');
    await r.repairFlush();
    assert.equal(status(await r.exec(delCmd('sess.d'))), 'DELETED', 'b had it');
    r.fb.mode = 'fail';
    const got = await r.exec(getCmd('sess.d'));
    assert.equal(status(got), 'values');
    assert.equal(valueOf(got), undefined);
    assert.equal(status(await r.exec(delCmd('sess.d'))), 'NOT_FOUND');
    await r.close();
  });
});
