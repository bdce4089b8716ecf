/**
 * Review of the cold detector's pool paths (a memcached pool: each server its own store with its
 * own marker): each test builds a real MemcachedPool over fault-injecting fakes, beside a plain
 * upstream, and asserts what a client must never see. Tests marked todo fail on the code they were
 * written against (bbdc31d).
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { clocksFor } from '../helpers/clocks';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';
import { bringBack, takeDown } from '../helpers/pool-ring';
import { poolFakes, poolProc } from '../helpers/pool-proc';

const silent = pino({ level: 'silent' });
const FENCE_MS = 60_000;
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const addCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false });
const delCmd = (key: string): Command => ({ kind: 'delete', key, noreply: false }) as Command;
const getCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: undefined });
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

/**
 * One mcmux process over a pool of the servers behind `sf` (a MemcachedPool, as app.ts builds it,
 * its members' health as the fakes' health) and the plain upstream `fb`; the fakes outlive it.
 */
const proc = (sf: readonly FakeUpstream[], fb: FakeUpstream, eject = false, dir?: string): ReturnType<typeof poolProc> => poolProc(sf, fb, { eject, dir, keyPrefix: 'lock.s' });
const fakes = poolFakes;

/** A process over fresh fakes (no eject) whose first look has written every marker, and `lock` on server `i`, taken by A. */
async function lockedOn(i: number) {
  const { sf, fb } = fakes();
  const s = proc(sf, fb);
  const lock = s.keyOn(i);
  await s.detector.checkAll();
  assert.equal(status(await s.exec(addCmd(lock, 'A'))), 'STORED');
  return { sf, fb, s, lock };
}

/** The server behind `f` restarts empty (its marker and the items on it gone). */
const restart = (f: FakeUpstream): Promise<void> => f.inner.flush();

describe('review: a precaution on a pool lifted while one of its servers is unverified', () => {
  // Finding 1. mcmux starts while s1 does not answer (its marker unread: the pool is fenced as a
  // precaution, README "One whose marker it could not read ... is fenced ... again at each check
  // until one reads it"). s1 restarted empty while mcmux was down, losing lock.<sid> which b still
  // holds. s0's connection drops and comes back: serverReconnected reads s0 alone, finds the
  // marker it kept, and liftIfKept lifts the pool's fence. s1 then answers (a memcached driver
  // reports no reconnect for its first connection, and its health never went down: marker reads
  // are not client requests): until the next periodic check (up to 2 s) the pool, warm and first,
  // decides `add lock.<sid>` on the empty s1: STORED, and the copy overwrites the holder's lock in b.
  it('a server unread since mcmux started: another server\'s kept marker does not lift the pool\'s fence', async () => {
    const { sf, fb, s: p1, lock } = await lockedOn(1);
    await p1.stop();
    await restart(sf[1] as FakeUpstream); // while no mcmux runs

    const p2 = proc(sf, fb);
    (sf[1] as FakeUpstream).mode = 'fail'; // unreachable as mcmux starts
    await p2.detector.checkAll();
    assert.equal(p2.p.fenced, true, 'fenced as a precaution: s1 unread');
    p2.detector.serverReconnected(p2.p, p2.servers[0] as HealthyUpstream); // a blip on s0
    await settle();
    (sf[1] as FakeUpstream).mode = 'ok'; // s1 answers again, before the next periodic check
    assert.equal(p2.servers[1]?.usable, true, 'its health never went down');
    assert.equal(status(await p2.exec(addCmd(lock, 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE: s1, never read since it restarted empty, decided');
    await p2.detector.checkAll();
    assert.equal(p2.p.cameBackEmpty, true, 'the next check does find s1 came back empty');
    await p2.stop();
  });

  // Finding 1 (the same hole, a reconnect's check that could not answer). s0 restarts empty; its
  // reconnect fences the pool, but the marker read of that check fails (a timeout: the server
  // is up, its health stays usable). s1's connection then blips: its own check finds s1's marker
  // kept and lifts the pool's fence (serverChecks is back to 1: s0's check is over, unanswered).
  // README / liftIfKept: a precaution whose own check could not answer is lifted "by a later such
  // check: the periodic one, or the one made when its health turns healthy", not by a read of
  // another server. Until the next periodic check the pool decides s0's keys: a lock granted twice.
  it("a server whose reconnect check could not answer: another server's reconnect does not lift the pool's fence", async () => {
    const { sf, s, lock } = await lockedOn(0);
    await restart(sf[0] as FakeUpstream);
    (sf[0] as FakeUpstream).mode = 'fail'; // the reconnect's marker read fails
    s.detector.serverReconnected(s.p, s.servers[0] as HealthyUpstream);
    (sf[0] as FakeUpstream).mode = 'ok';
    await settle();
    assert.equal(s.p.fenced, true);
    s.detector.serverReconnected(s.p, s.servers[1] as HealthyUpstream); // a blip on s1, which kept everything
    await settle();
    assert.equal(status(await s.exec(addCmd(lock, 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE: s0 restarted empty and decided');
    await s.stop();
  });
});



describe('review: eject=true, a write in flight while the ring moves', () => {
  // Finding 2. eject=true, s1 is out: lock.<sid> (home s1) is placed on s0, and the pool is fenced
  // (knownEmpty at the ring move). A client takes the lock: b decides (STORED), and the copy goes to
  // the pool, i.e. to s0. s1 comes back while that copy is still on its way: the ring moves back
  // (lock.<sid> is s1's again, which never had it) and the pool forgets what it learnt (knownEmpty
  // -> emptied). Then the copy lands on s0 and the router tells the pool it was written
  // (noteWritten -> HealthyUpstream.written): the pool "knows" lock.<sid> again, though the server
  // that now holds the key for it is s1, which lacks it. The next `add lock.<sid>` is decided by
  // the fenced pool that knows the key: STORED on s1. A lock granted twice, within the lock-fence
  // the ring move began, once b (the holder, the warm upstream that goes first) is down: the
  // client must get SERVER_ERROR (nobody may decide). (The same with a write that reaches s1
  // just as it is ejected.)
  it('a copy that lands on the server a key was moved away from does not let the pool decide the key', async () => {
    const { sf, fb } = fakes();
    const s = proc(sf, fb, true);
    const lock = s.keyOn(1);
    await s.detector.checkAll();
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.equal(s.pool.serverFor(lock), s.servers[0], 'ejected: the lock key is placed on s0');
    assert.equal(s.p.cameBackEmpty, true, 'the ring moved: the pool is fenced');
    const s0 = sf[0] as FakeUpstream;
    s0.gateOnly = (call) => call === `set ${lock}`;
    s0.close_gate();
    const taken = s.exec(addCmd(lock, 'A')); // decided by b; its copy to the pool waits at s0
    await settle();
    await bringBack(s, sf[1] as FakeUpstream, 1);
    assert.equal(s.pool.serverFor(lock), s.servers[1], 'the ring moved back');
    s0.open(); // the copy lands on s0
    assert.equal(status(await taken), 'STORED');
    assert.equal(s.p.fenced, true);
    // b, the lock's holder, goes down: a fenced pool that knows the key is next in line.
    fb.mode = 'fail';
    for (let n = 0; n < 20 && s.b.usable; n++) await s.exec(getCmd('nowhere'));
    assert.equal(s.b.usable, false);
    assert.notEqual(status(await s.exec(addCmd(lock, 'B'))), 'STORED', 'LOCK GRANTED TWICE: the pool decided on s1, which never had the lock');
    await s.stop();
  });
});

describe('review: eject=true, a key moved to a server that held it before', () => {
  // Finding 3. eject=true. s1 is out a first time: sess (home s1) is written on s0 (v1). s1 comes
  // back: sess is s1's again, written there (v2), then the user logs out (delete: s1 and b,
  // DELETED). s1 goes out a second time: sess is placed on s0 again, which still holds v1 from the
  // first outage (nobody deleted it there: the delete went to s1). `get sess`: the pool answers v1,
  // a destroyed session served, and older than the last write acknowledged. Not the documented
  // eject hazard (docs/drivers.md: "a server that comes back with its data then serves what it held
  // before"): here the server never left; the key came back to it. The pool's fence at each ring
  // move covers conditional commands only; a read takes s0's hit.
  it('a session destroyed after the first outage is not served by the server it moves to in the second', async () => {
    const { sf, fb } = fakes();
    const s = proc(sf, fb, true);
    const sess = s.keyOn(1, 'sess.');
    await s.detector.checkAll();
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.equal(status(await s.exec(setCmd(sess, 'v1'))), 'STORED', 'on s0 and b');
    await bringBack(s, sf[1] as FakeUpstream, 1);
    assert.equal(status(await s.exec(setCmd(sess, 'v2'))), 'STORED', 'on s1 and b');
    assert.equal(status(await s.exec(delCmd(sess))), 'DELETED', 'logout');
    await takeDown(s, sf[1] as FakeUpstream, 1);
    assert.equal(s.pool.serverFor(sess), s.servers[0]);
    assert.equal(valueOf(await s.exec(getCmd(sess))), undefined, 'DESTROYED SESSION SERVED: s0 still holds v1 of the first outage');
    await s.stop();
  });
});

describe('review: keys a pool server\'s reconnect forgot', () => {
  // README "Locks across failover": "A reconnect of an upstream already fenced forgets the keys
  // written to it during the fence (it may have restarted); if its marker turns out to be still
  // there, they are known again." reconnected() does so (review-fence.test.ts, 'keys a reconnect
  // forgot'); serverReconnected, a pool server's reconnect, forgets them and never learns them
  // back. Chain [a, pool]: both came back empty, lock.<sid> is written to both (each learns it);
  // a blip on the pool's server s1 (which kept its marker and the lock); a restarts empty again.
  // Every upstream fenced, neither knowing the key: a, which lost the lock, decides (STORED).
  it('the keys written to a fenced pool are known again when its server\'s reconnect check finds the marker still there', async () => {
    const { sf, fb } = fakes();
    // The plain upstream first: fb stands for `a`.
    const pool = new MemcachedPool('memcached://s0,s1', sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })), { distribution: 'ketama', namespace: '', eject: false }, HEALTH);
    const p = new HealthyUpstream(pool, HEALTH, () => {});
    const a = new HealthyUpstream(fb, HEALTH, () => {});
    const ups = [a, p];
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
    const d = new ColdDetector(() => ups, FENCE_MS, silent, journal);
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    const servers = pool.members();
    let lock = '';
    for (let n = 0; lock === ''; n++) if (pool.serverFor(`lock.s${n}`) === servers[1]) lock = `lock.s${n}`;
    await d.checkAll();
    for (const f of [fb, ...sf]) await restart(f); // all restart empty
    await d.checkAll();
    assert.ok(a.cameBackEmpty && p.cameBackEmpty);
    assert.equal(status(await exec(setCmd(lock, 'A'))), 'STORED', 'on both: both hold the lock again');
    d.serverReconnected(p, servers[1] as HealthyUpstream); // a blip: s1 did not restart
    await settle();
    assert.ok((await (sf[1] as FakeUpstream).inner.get([lock]))[0] !== undefined, 's1 kept the lock');
    await restart(fb); // a restarts empty again
    assert.equal(await d.check(a), 'cold');
    assert.equal(status(await exec(addCmd(lock, 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE: a, which lost the lock, decided before the pool, which holds it');
    assert.equal(p.knows(lock), true, 'README: "if its marker turns out to be still there, they are known again"');
    await Promise.all(ups.map((u) => u.close()));
  });
});

describe('review: eject=true across a restart of mcmux', () => {
  // Finding 6. eject=true, s1 is out (a partition, a paused VM) for longer than lock-fence: the
  // pool's fence at the ring move has ended, and a lock taken since is decided by the pool on s0
  // (the key's place while s1 is out) and copied to b. mcmux restarts (a deploy) as s1 answers
  // again: the new process has never seen s1 out; its ring is the full one, the key is s1's, and
  // s1 kept its marker (it did not restart): warm, nothing fenced. The pool decides `add
  // lock.<sid>` on s1, which never had the lock: STORED. In one process the same return moves
  // the ring and fences the pool for lock-fence (knownEmpty), so b decides (NOT_STORED). Nothing
  // on journal.log or in the markers said a server was ejected. Fixed: journal.log keeps whether
  // a pool's ring is whole (J lines), and the next process fences the pool as come back empty.
  it('a server ejected under the process before does not grant, once back, a lock taken while it was out (journal.log J lines)', async (t) => {
    const clocks = clocksFor(t);
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-pool-ring-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const { sf, fb } = fakes();
    const p1 = proc(sf, fb, true, dir);
    const lock = p1.keyOn(1);
    await p1.detector.checkAll();
    await takeDown(p1, sf[1] as FakeUpstream, 1);
    clocks.advance(FENCE_MS + 1); // s1 stays out past the fence its ejection began
    await p1.detector.checkAll();
    assert.equal(p1.p.fenced, false);
    assert.equal(status(await p1.exec(addCmd(lock, 'A'))), 'STORED', 'decided on s0, copied to b');
    await p1.stop();

    (sf[1] as FakeUpstream).mode = 'ok'; // s1 answers again, with what it held
    const p2 = proc(sf, fb, true, dir);
    await p2.detector.checkAll();
    assert.equal(p2.pool.serverFor(lock), p2.servers[1]);
    assert.equal(p2.p.cameBackEmpty, true, 'fenced as come back empty: its ring moved back');
    assert.equal(status(await p2.exec(addCmd(lock, 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE: s1, back, decided without the lock taken while it was out');
    await p2.stop();
  });

  // The same restart, with a session destroyed while s1 was out: s1, back under the next process
  // with what it held, must not serve it. The first process's repair had flushed s0 and trusted
  // the pool again during the outage (journal.log: trusted, the ring broken), so only the J line
  // says the pool's keys moved: the next process distrusts it as the ring move would have.
  it('a session destroyed while a server was out under the process before is not served by it once back (journal.log J lines)', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-pool-ring-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const { sf, fb } = fakes();
    const p1 = proc(sf, fb, true, dir);
    const sess = p1.keyOn(1, 'sess.');
    await p1.detector.checkAll();
    assert.equal(status(await p1.exec(setCmd(sess, 'v1'))), 'STORED', 'on s1 and b');
    await takeDown(p1, sf[1] as FakeUpstream, 1);
    p1.journal.trust(p1.p, 'repair'); // as the repair does once it has flushed s0
    assert.equal(status(await p1.exec(delCmd(sess))), 'DELETED', 'logout: b (s0 had no copy)');
    await p1.stop();

    (sf[1] as FakeUpstream).mode = 'ok'; // s1 answers again, with what it held
    const p2 = proc(sf, fb, true, dir);
    await p2.detector.checkAll();
    assert.equal(p2.pool.serverFor(sess), p2.servers[1]);
    assert.equal(valueOf(await p2.exec(getCmd(sess))), undefined, 'DESTROYED SESSION SERVED by s1, back with what it held');
    await p2.stop();
  });
});

describe('review: holds (guards)', () => {
  const getsCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: true, touch: undefined });
  const casCmd = (key: string, value: string, unique: bigint): Command => ({ kind: 'store', mode: 'cas', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: unique, withCas: false, noreply: false });

  // Holds: eject=true, a unique s1 handed out for a key is checked by s0 once the key moved there,
  // where the same raw number names a newer item. Each server's own seal (the pool's members are
  // HealthyUpstreams, keyed by the server's name) scrambles it: EXISTS, never STORED.
  it('a cas unique of the server a key left does not validate on the server it moved to', async () => {
    const { sf, fb } = fakes();
    const s = proc(sf, fb, true);
    const key = s.keyOn(1, 'sess.');
    await s.detector.checkAll();
    for (let i = 0; i < 10; i++) await (sf[1] as FakeUpstream).inner.store({ mode: 'set', key: 'filler', value: Buffer.from('x'), flags: 0, deadline: 0, withCas: true });
    assert.equal(status(await s.exec(setCmd(key, 'v1'))), 'STORED');
    const read = await s.exec(getsCmd(key));
    const unique = read.kind === 'values' ? read.hits[0]?.cas : undefined;
    assert.ok(unique !== undefined);
    const raw = (await (sf[1] as FakeUpstream).inner.get([key]))[0]?.cas as bigint;
    await takeDown(s, sf[1] as FakeUpstream, 1);
    // s0 numbers its items up to just below s1's number for v1.
    const s0 = (sf[0] as FakeUpstream).inner;
    for (let i = 0; i < 100; i++) {
      const r = await s0.store({ mode: 'set', key: 'filler', value: Buffer.from('x'), flags: 0, deadline: 0, withCas: true });
      if ((r.cas as bigint) >= raw - 1n) break;
    }
    assert.equal(status(await s.exec(setCmd(key, 'v2'))), 'STORED', 'v2 on s0 (and b)');
    assert.equal((await s0.get([key]))[0]?.cas, raw, 's0 numbers v2 as s1 numbered v1');
    fb.mode = 'fail'; // b down: the fenced pool, which knows the key (v2 reached it), decides
    for (let n = 0; n < 20 && s.b.usable; n++) await s.exec(getCmd('nowhere'));
    assert.equal(status(await s.exec(casCmd(key, 'stale', unique))), 'EXISTS', 'CAS STORED WRONGLY: a unique of v1 overwrote v2 (EXISTS: the pool decided, and failed it safe)');
    assert.equal((await s0.get([key]))[0]?.value.toString(), 'v2');
    await s.stop();
  });

  // Holds: a server down (its health too) when mcmux starts, which restarted empty while mcmux was
  // down: the pool's precaution may be lifted by the others' markers while it is down (its keys
  // fail over), but its return (probe: healthy) fences the pool again, and its check finds it cold.
  it('a server down as mcmux starts, restarted meanwhile, fences the pool as come back empty when it returns', async () => {
    const { sf, fb, s: p1, lock } = await lockedOn(1);
    await p1.stop();
    await restart(sf[1] as FakeUpstream);

    const p2 = proc(sf, fb);
    (sf[1] as FakeUpstream).mode = 'fail';
    await p2.detector.checkAll();
    await takeDown(p2, sf[1] as FakeUpstream, 1);
    await p2.detector.checkAll(); // reads s0 only
    assert.equal(status(await p2.exec(addCmd(lock, 'B'))), 'NOT_STORED', 'decided by b while s1 is down');
    await bringBack(p2, sf[1] as FakeUpstream, 1);
    assert.equal(p2.p.cameBackEmpty, true, 'its return found it without its marker');
    assert.equal(status(await p2.exec(addCmd(lock, 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE');
    await p2.stop();
  });
});
