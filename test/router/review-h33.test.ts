/**
 * Adversarial review h33 of 4733097, 1b4fca7, b0dc48c, b78b283 (DirtyEntry.asks), 055ae79 and
 * 84283a2 (fencesVoided, latestFence), 7a07608 (SIGHUP reload validation), 3cc2fcf and 4e798b6
 * (check).
 *
 * Findings (each test failed on b78b283; fixed by 7edeab8 (2, with a memory:// half), 2114945 (3,
 * for a cache that is down) and the commit after 71a49b5 (3, for one failing the read), d63d74a
 * (4) and bb27afd (5). Finding 1 was left todo a session: keeping the unread copy from the flush as
 * a maybe-only copy left the store behind waiting for a read the overflowed cache never got (its
 * repair is the flush), a deadlock; fixed since by keeping it so and having the repair read those
 * keys there before the flush (Overflow.known asks, repair.ts retrust; tests of both sides and of
 * journal.log after it)):
 * 1. (medium: a lock granted twice, an acknowledged add lost; 4733097 leaves it) the unread cache
 *    (DirtyEntry.asks, the only copy of the lock) overflowing (two more writes miss it at
 *    journal-max-keys 2) loses asks: distrust() drops every entry, and heldAlone() counts only keys
 *    clean there, so nothing keeps the repair from flushing it: the lock is deleted from a, and
 *    `add lock` is STORED by b, back empty. README: "journaled as lacking the key until the
 *    repair has read it there"; its known limit names a failed write of that key only.
 * 2. (low; 7a07608) a reload rejected whole (a SQLite file locked elsewhere) has already set
 *    the new health options (down-after) on the upstreams it keeps (resolveEach sets m.options
 *    before a later spec throws).
 * 3. (medium-low, availability; b0dc48c) while the unread cache is down (or its reads fail), a
 *    key it is unread for is unreadable (SERVER_ERROR) however long that lasts, and the repair
 *    waits too, though the store behind holds the session and is dirty only for a gat that timed
 *    out there (it can hold nothing older than the cache). Passes on e6f9a19.
 * 4. (low-medium; 4e798b6) `mcmux check` says ok ("table not there yet") for an existing SQLite
 *    file without mcmux's table that the service user cannot write; the start exits 2 (EACCES).
 *    Check exited 2 on 3cc2fcf. README: "FAILED where the start could not make it".
 * 5. (low-medium: a session read as absent; 84283a2 leaves it for pools) review-h32 finding 3
 *    over a pool: the late marker naming the voided fence lands on one server, the other names
 *    the fence after the repair's flush; inherit() gives up on the differing ids before it maps
 *    the voided one to latestFence: the next process takes the pool for a precaution fence and
 *    answers a read of a session the flush took with a miss while the store behind fails.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { type HealthyUpstream, repairEmptied } from '../../src/router/health';
import { FakeUpstream, settle } from '../helpers/fake-upstream';
import { proc } from '../helpers/flushed-cache';
import { tempDir } from '../helpers/temp-dir';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { poolProc } from '../helpers/pool-proc';
import { chmodSync, chownSync, existsSync, mkdirSync } from 'node:fs';
import Database from 'better-sqlite3';
import { lockedSqlite } from '../helpers/sqlite-fixture';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { MarkerWrites, addCmd, flushedUnlearnt, getCmd, lockUnreadOnA, overflowedUnread, setCmd, status, valueOf } from '../helpers/unread-rigs';


describe('finding 1: the unread copy\'s overflow drops DirtyEntry.asks, and the repair flushes the only copy of the lock', () => {
  it('a, lacking the lock unread, overflows (two more writes miss it): the lock a alone holds is not flushed, nor the add granted again', async () => {
    const { s, fa, fb, a } = await lockUnreadOnA(400);
    // a is still slow: two sets time out (fail) there, b (fenced, back empty) takes them.
    fa.mode = 'fail';
    assert.equal(status(await s.exec(setCmd('x3', '3'))), 'STORED');
    assert.equal(status(await s.exec(setCmd('x4', '4'))), 'STORED');
    fa.mode = 'ok';
    const over = s.journal.overflowed(a) !== undefined;
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the lock-fences end
    await s.detector.checkAll();
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await settle();
    // a may be flushed once b holds the lock too (copied from a, read first): one of them keeps it.
    const left = [(await fa.inner.get(['lock']))[0]?.value.toString(), (await fb.inner.get(['lock']))[0]?.value.toString()];
    // Nor does it wait for good: b is repaired from a (read first), and a flushed after.
    const flushed = s.journal.overflowed(a) === undefined;
    const got = valueOf(await s.exec(getCmd('lock')));
    const add = status(await s.exec(addCmd('lock', 'third')));
    await s.stop();
    assert.ok(over, 'a overflowed');
    assert.equal(left[1], 'held', 'b holds the lock: copied from a, which the repair read first');
    assert.ok(flushed, 'a, flushed once b held the lock, is trusted again');
    assert.ok(left.includes('held'), `LOST WRITE: the repair flushed a, the only copy of the acknowledged add (a, b hold: ${left.join(', ')}; get lock: ${String(got)}; add lock: ${add})`);
    assert.equal(got, 'held', 'get lock');
    assert.notEqual(add, 'STORED', 'A LOCK GRANTED TWICE');
  });
});

describe('finding 1, more: the overflowed copy lacking the key unread (Overflow.known asks)', () => {
  it('a lacks it indeed (the lock gone from a meanwhile): read, it is dirty as any key, and the repair goes on (a flushed)', async () => {
    const { s, fa, fb, a } = await overflowedUnread();
    await fa.inner.delete('lock');
    const asked = status(await s.exec(addCmd('lock', 'third')));
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the lock-fences end
    await s.detector.checkAll();
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await settle();
    const unread = s.journal.unread(a, 'lock');
    const flushed = s.journal.overflowed(a) === undefined;
    const b = (await fb.inner.get(['lock']))[0]?.value.toString();
    await s.stop();
    assert.match(asked, /^SERVER_ERROR .*may hold its newest state/, 'while unread, the add is decided nowhere');
    assert.equal(unread, false, 'read by the repair: a does lack it');
    assert.ok(flushed, 'a flushed and trusted again: nothing waits for it');
    assert.equal(b, undefined, 'b took no lock from nowhere');
  });

  it('on journal.log: the next process reads a first too, and the lock a alone holds is kept', async (t) => {
    const dir = tempDir(t, 'review-h33-overflow-asks');
    const { s, fa, fb } = await overflowedUnread(dir);
    await s.stop(); // before the repair's next tick
    const s2 = proc([fa, fb], { maxKeys: 2, fenceMs: 400, dir });
    const [a2] = s2.ups as [HealthyUpstream, HealthyUpstream];
    await s2.detector.checkAll();
    const loaded = s2.journal.unread(a2, 'lock');
    for (let n = 0; n < 5; n++) await s2.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the lock-fences end
    await s2.detector.checkAll();
    for (let n = 0; n < 10; n++) await s2.repairer.tick();
    await settle();
    const left = [(await fa.inner.get(['lock']))[0]?.value.toString(), (await fb.inner.get(['lock']))[0]?.value.toString()];
    const got = valueOf(await s2.exec(getCmd('lock')));
    const add = status(await s2.exec(addCmd('lock', 'third')));
    await s2.stop();
    assert.equal(loaded, true, 'journal.log said a lacks the lock unread (H ... a)');
    assert.ok(left.includes('held'), `LOST WRITE across a restart: a, b hold ${left.join(', ')}`);
    assert.equal(got, 'held');
    assert.notEqual(add, 'STORED', 'A LOCK GRANTED TWICE');
  });
});

describe('finding 1 guard: one write that misses the unread copy (no overflow) leaves the lock', () => {
  it('a lacking the lock unread misses one set (no overflow): the repair reads a first, the lock stays and the add is refused', async () => {
    const { s, fa, a } = await lockUnreadOnA(400);
    fa.mode = 'fail';
    assert.equal(status(await s.exec(setCmd('x3', '3'))), 'STORED');
    fa.mode = 'ok';
    assert.equal(s.journal.overflowed(a), undefined);
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await new Promise((r) => setTimeout(r, 450));
    await s.detector.checkAll();
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await settle();
    const left = (await fa.inner.get(['lock']))[0]?.value.toString();
    const add = status(await s.exec(addCmd('lock', 'third')));
    await s.stop();
    assert.equal(left, 'held');
    assert.notEqual(add, 'STORED');
  });
});

describe('finding 2: a reload App.reload cannot build is not rejected whole: the upstreams it keeps take its health options (7a07608)', () => {
  it('a rejected reload (a SQLite file another process holds locked) leaves the running upstream\'s down-after as it was', async (t) => {
    const dir = tempDir(t, 'review-h33-reload');
    const path = join(dir, 'sessions.db');
    lockedSqlite(t, path);
    const app = await inProcessMcmux({ 'state-dir': join(dir, 'state'), 'log-level': 'silent', 'down-after': '3' }, ['memory://a']);
    const [a] = app.upstreams as unknown as HealthyUpstream[];
    const before = (a as HealthyUpstream).options.downAfter;
    assert.throws(() => reloadTo(app, { 'state-dir': join(dir, 'state'), 'down-after': '1000' }, ['memory://a', `sqlite://${path}?timeout=100`]), /SQLITE_BUSY|locked/);
    const after = (a as HealthyUpstream).options.downAfter;
    assert.equal(after, before, `the rejected reload's down-after (${after}) is what the running upstream now goes by`);
  });

  it("nor does it retune a memory:// store it keeps: a smaller max-bytes evicts nothing", async (t) => {
    const dir = tempDir(t, 'review-h33-reload');
    const path = join(dir, 'sessions.db');
    lockedSqlite(t, path);
    const app = await inProcessMcmux({ 'state-dir': join(dir, 'state'), 'log-level': 'silent' }, ['memory://a']);
    const [a] = app.upstreams as unknown as HealthyUpstream[];
    for (let i = 0; i < 1500; i++) await (a as HealthyUpstream).inner.store({ mode: 'set', key: `sess:${i}`, value: Buffer.alloc(1000), flags: 0, deadline: 0 });
    assert.throws(() => reloadTo(app, { 'state-dir': join(dir, 'state') }, ['memory://a?max-bytes=1049600', `sqlite://${path}?timeout=100`]), /SQLITE_BUSY|locked/);
    const kept = (await (a as HealthyUpstream).inner.get(Array.from({ length: 1500 }, (_, i) => `sess:${i}`))).filter((h) => h !== undefined).length;
    assert.equal(kept, 1500, 'the rejected reload evicted sessions from the memory store to its max-bytes');
  });
});

/** A fake whose plain gets (no touch: has(), a get) of `slowKey` fail; a gat of it is served. */
class PlainGetFails extends FakeUpstream {
  slowKey: string | undefined;
  override async get(keys: readonly string[], touch?: number) {
    if (this.slowKey !== undefined && touch === undefined && keys.includes(this.slowKey)) {
      this.calls.push(`get ${keys.join(' ')}`);
      throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: injected timeout of a get`);
    }
    return super.get(keys, touch);
  }
}

describe('finding 3: a session the store behind holds is unreadable for as long as the unread cache is down (b0dc48c)', () => {
  /** Up to a's has() of the session failing as a gat of it times out on b: a lacks it unread. */
  async function sessUnreadOnA() {
    const fa = new PlainGetFails('memcached://a:11211', 'memcached');
    const fb = new FakeUpstream('memcached://b:11211', 'memcached');
    const { s, a, b } = await flushedUnlearnt(fa, fb, 400);
    fb.mode = 'timeout';
    fa.slowKey = 'sess';
    const gat = await s.exec({ kind: 'get', keys: ['sess'], withCas: false, touch: Date.now() + 600_000 } as Command);
    fb.mode = 'ok';
    await settle();
    assert.equal(s.journal.entry(a, 'sess')?.asks, true, `a lacks the session unread (gat: ${status(gat)})`);
    return { s, fa, fb, a, b };
  }

  // The fix's case: a cache that is down (its health), the store behind answering.
  it('with the unread cache down, get sess answers the session the store behind holds', async () => {
    const { s, fa, a } = await sessUnreadOnA();
    fa.mode = 'fail';
    for (let n = 0; n < 200 && a.state !== 'down'; n++) await a.get([`other${n}`]).catch(() => undefined); // down-after 100 (proc)
    assert.equal(a.state, 'down');
    const got = valueOf(await s.exec(getCmd('sess')));
    fa.mode = 'ok';
    await s.stop();
    assert.equal(got, 'cart', 'the session the store behind holds is unreadable while the cache is down');
  });

  it('a gat that times out on b while a (flushed by the repair, unlearnt) cannot be read: with a down, get sess answers the session b holds', async () => {
    const { s, fb, b, a } = await sessUnreadOnA();
    await new Promise((r) => setTimeout(r, 60));
    const asks = s.journal.entry(a, 'sess')?.asks === true;
    // a stays down (its plain gets of the session keep failing); b answers again.
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await new Promise((r) => setTimeout(r, 450)); // the fences end
    for (let n = 0; n < 10; n++) await s.repairer.tick();
    await settle();
    const onB = (await fb.inner.get(['sess']))[0]?.value.toString();
    const got = valueOf(await s.exec(getCmd('sess')));
    const dirtyB = s.journal.isDirty(b, 'sess');
    await s.stop();
    assert.equal(onB, 'cart', 'b holds the session');
    assert.equal(got, 'cart', `the session b holds is unreadable while a is down (a asks: ${asks}; b dirty: ${dirtyB})`);
  });
});

describe('finding 4: mcmux check says ok for an existing SQLite file the start cannot open (4e798b6)', () => {
  it('a database without mcmux\'s table that the service user may not write: check does not say ok (the start exits 2)', (t) => {
    if (process.getuid?.() !== 0 || !existsSync('/usr/bin/setpriv')) return t.skip('needs root and setpriv, to run as nobody');
    const dir = tempDir(t, 'review-h33-sqlite');
    chmodSync(dir, 0o755);
    const state = join(dir, 'state');
    mkdirSync(state);
    chownSync(state, 65534, 65534);
    const path = join(dir, 'app.db');
    const db = new Database(path);
    db.exec('CREATE TABLE other (x)');
    db.close();
    chmodSync(path, 0o644); // root's; nobody (the service user here) may read it only
    const cli = join(__dirname, '..', '..', 'src', 'cli.js');
    const asNobody = (args: string[]) => spawnSync('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, cli, ...args], { encoding: 'utf8', timeout: 20_000 });
    const start = asNobody(['--listen', '127.0.0.1:0', '--upstream', `sqlite://${path}`, '--state-dir', state]);
    assert.notEqual(start.status, 0, `the start as nobody runs: ${start.stderr}`);
    const check = asNobody(['check', '--upstream', `sqlite://${path}`, '--state-dir', state]);
    assert.notEqual(check.status, 0, `check says ok (${check.stdout.trim()}) where the start exits ${String(start.status)}: ${start.stderr.trim()}`);
  });
});

/** review-h32 finding 3's rig over a pool [s0, s1] in front of b; `stuck`: s0's rewrite of the marker naming F0 lands after the repair's flush. */
async function poolFlushedNextProcess(t: import('node:test').TestContext, stuck: boolean) {
    const dir = tempDir(t, 'review-h33-pool');
    const s0 = new MarkerWrites('memcached://s0:11211', 'memcached');
    const s1 = new FakeUpstream('memcached://s1:11211', 'memcached');
    const fb = new FakeUpstream('memcached://b:11211', 'memcached');
    const s = poolProc([s0, s1], fb, { dir, wireFlush: true });
    s.repairer.onFlushed = (u) => s.detector.flushed(u as HealthyUpstream);
    await s.detector.checkAll();
    // The pool restarts empty (both servers): fence F0, come back empty.
    await s0.inner.flush();
    await s1.inner.flush();
    await s.detector.checkAll();
    assert.equal(s.p.cameBackEmpty, true, 'the pool came back empty');
    const f0 = s.p.fenceId;
    // A rewrite of s0's marker naming F0 is stuck (applied later).
    s0.hold = stuck;
    await s.detector.checkAll();
    s0.hold = false;
    const sess = s.keyOn(0);
    assert.equal(status(await s.exec(setCmd(sess, 'cart'))), 'STORED');
    // The pool overflows and the repair flushes it (F1; markers naming F1 written to both servers).
    s.journal.distrust(s.p);
    for (let n = 0; n < 20 && s.journal.overflowed(s.p) !== undefined; n++) await s.repairer.tick();
    await settle();
    assert.equal(s.journal.overflowed(s.p), undefined, 'the pool flushed by the repair and trusted');
    assert.equal(repairEmptied(s.p), true, 'the pool: emptied by the repair');
    assert.notEqual(s.p.fenceId, f0);
    assert.equal((await s0.inner.get([sess]))[0], undefined, 'the session is gone from the pool');
    await s0.release();
    const marks = [(await s0.inner.get([s.detector.key]))[0]?.flags, (await s1.inner.get([s.detector.key]))[0]?.flags];
    await s.stop();
    const s2 = poolProc([s0, s1], fb, { dir, wireFlush: true });
    await s2.detector.checkAll();
    const state = `fenced ${s2.p.fenced}, cameBackEmpty ${s2.p.cameBackEmpty}, repairEmptied ${repairEmptied(s2.p)}; markers name ${marks.join(', ')} (F0 ${f0})`;
    fb.mode = 'fail';
    const got = valueOf(await s2.exec(getCmd(sess)));
    fb.mode = 'ok';
    await s2.stop();
    return { got, state };
}

describe('finding 5: a pool\'s late marker naming a voided fence on one server, the fence after the repair\'s flush on the other: the next process inherits nothing (84283a2 looks at one id only)', () => {
  it('the next process answers a read of a session the repair\'s flush took from the pool with SERVER_ERROR while the store behind fails, not a miss', async (t) => {
    const { got, state } = await poolFlushedNextProcess(t, true);
    assert.ok(got?.startsWith('(SERVER_ERROR'), `A SESSION READ AS ABSENT: the pool the repair flushed answered its miss while the store holding the session failed (${state}; got ${String(got)})`);
  });
});

describe("finding 5's guard: no late marker (both servers name the fence after the flush)", () => {
  it('the next process knows the pool was emptied by the repair: SERVER_ERROR while the store behind fails', async (t) => {
    const { got, state } = await poolFlushedNextProcess(t, false);
    assert.ok(got?.startsWith('(SERVER_ERROR'), `${state}; got ${String(got)}`);
  });
});

describe("finding 3's fix, the other side: the copy after an unreadable unread one came back empty", () => {
  it('a read of the lock while a (holding it, unread) fails the read, b back empty: SERVER_ERROR, not a miss', async () => {
    const { s, fa } = await lockUnreadOnA();
    fa.slowKey = 'lock';
    const got = valueOf(await s.exec(getCmd('lock')));
    fa.slowKey = undefined;
    await s.stop();
    assert.ok(got?.startsWith('(SERVER_ERROR'), `the lock a alone holds read as ${String(got)} from b, back empty`);
  });
});
