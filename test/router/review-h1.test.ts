/**
 * Adversarial review h1 of 20bb1d4 (the marker's nonce) and 15428d9 (the replication id kept on
 * journal.log, ColdDetector.serverId), router side: the cold detector and journal.log driven by
 * hand over fakes, each "process" a detector and a journal on the same state directory, the
 * store (a FakeUpstream) outliving them. No timer of the detector runs. Tests marked todo fail on
 * the code they were written against (15428d9).
 */

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, describe, it } from 'node:test';
import pino from 'pino';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream, onlyLearnt } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { FakeUpstream } from '../helpers/fake-upstream';

const silent = pino({ level: 'silent' });
const HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };
const FENCE_MS = 60_000;
/** What the journal keys the store under (HealthyUpstream.storeId: its URL without tuning options). */
const STORE = 'redis://10.0.0.5:6379';
const X = 'a'.repeat(40); // the master's replication id
const Y = 'b'.repeat(40); // the promoted replica's (or the restarted server's)

function stateDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-h1-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * One mcmux process over `store` (which outlives it), its journal on `dir`. `crash` leaves
 * journal.log without its E line and writes no marker; `stop` closes it cleanly.
 */
function processOver(store: FakeUpstream, dir: string) {
  const up = new HealthyUpstream(store, HEALTH, () => {}, STORE);
  const journal = new RepairJournal({ maxKeys: 1000, dir, fsync: 'no' });
  journal.load([up]);
  const detector = new ColdDetector(() => [up], FENCE_MS, silent, journal);
  return {
    up,
    journal,
    detector,
    stop: (): void => {
      detector.stop();
      journal.close();
    },
    crash: (): void => {
      detector.stop();
      journal.close(false);
    },
  };
}

describe('review-h1 15428d9: the replication id on journal.log and the fence it starts', () => {
  // Finding 2 (low-medium). serverId writes the new id to journal.log (`I` line) at once, but the
  // fence it starts reaches the next process only through the `fenced until` marker, written by
  // the next mark that lands (the reconnect's or the first look's check, a few ms later when the
  // store answers; 100 ms later, again and again, while the marker write fails or times out: a
  // promoted replica still loading, a store under load; none while every look is overtaken by
  // another reconnect). mcmux killed in between (OOM, SIGKILL at the end of a deploy's grace, a
  // crash): the next process finds the new id already on file (no change) and the marker the
  // promoted replica holds (the master's, replicated): warm, not fenced. The evidence of the
  // failover is gone, and the promoted replica decides `add` of a lock the dead master granted
  // and never shipped. A missing marker has no such window: that evidence stays in the store
  // until the `fenced until` marker replaces it.
  it('mcmux killed after reading a new replication id, before the fence reached the marker: the next process still fences', async (t) => {
    const dir = stateDir(t);
    const store = new FakeUpstream(STORE, 'redis');
    // Process 1 over the master (id X): its marker written, X on file, stopped cleanly.
    const p1 = processOver(store, dir);
    p1.detector.serverId(p1.up, X);
    await p1.detector.startAfter(async () => false);
    assert.equal(p1.up.fenced, false);
    p1.stop();
    // Meanwhile the master failed over: the address leads to the promoted replica (id Y), which
    // holds the master's marker, replicated. Process 2 reads Y (INFO comes first on the
    // connection) and fences, then is killed before any mark.
    const p2 = processOver(store, dir);
    p2.detector.serverId(p2.up, Y);
    assert.equal(p2.up.cameBackEmpty, true, 'process 2 took it for another server');
    p2.crash();
    // Process 3: the same server (Y), the same marker.
    const p3 = processOver(store, dir);
    p3.detector.serverId(p3.up, Y);
    await p3.detector.startAfter(async () => false);
    t.diagnostic(`journal.log I lines: ${readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('I ')).length}`);
    assert.equal(p3.up.cameBackEmpty, true, 'FENCE LOST: the promoted replica decides add/cas/incr though no process saw its fence through');
    p3.stop();
    await p3.up.close();
  });

  // Guard of the fix of finding 2: once the `fenced until` marker is acknowledged, the new id is
  // on file, and the next process inherits the fence from the marker (and, from the B line, that
  // it began as the store came back empty) without taking the server for another one again.
  it('once the fence is on the marker, the next process inherits it from the marker, and takes the id as known', async (t) => {
    const dir = stateDir(t);
    const store = new FakeUpstream(STORE, 'redis');
    const p1 = processOver(store, dir);
    p1.detector.serverId(p1.up, X);
    await p1.detector.startAfter(async () => false);
    p1.stop();
    const p2 = processOver(store, dir);
    p2.detector.serverId(p2.up, Y);
    await p2.detector.startAfter(async () => false);
    const marker = (await store.get([p2.detector.key]))[0]?.value.toString() ?? '';
    assert.match(marker, /^fenced until \d+ \d+ \d+ [0-9a-f]+$/);
    p2.crash();
    const p3 = processOver(store, dir);
    assert.equal(p3.journal.serverIdOf(p3.up), Y, 'the new id is on file once its fence is');
    p3.detector.serverId(p3.up, Y);
    await p3.detector.startAfter(async () => false);
    assert.equal(p3.up.fenced, true, 'the fence goes on under the next process');
    assert.equal(p3.up.cameBackEmpty, true, 'as come back empty (journal.log B line)');
    p3.stop();
    await p3.up.close();
  });

  // Finding 3 (low). A reload that rebuilds a Redis upstream (a tuning option changed:
  // `?timeout=`) keeps the old one open for its grace period (app.ts reload: 2 x timeout, 1 s at
  // least), and its onServerId is still wired to the cold detector. A failover in that window
  // (or a reload made during the incident, the master already gone): the retired upstream's
  // connection reconnects first, to the promoted replica, and its id (Y) goes on journal.log
  // under the store's id, which the new upstream shares (at once before the fix of finding 2;
  // since, once the retired upstream's reconnect check has marked). The new upstream, not
  // connected before, then reads Y at its first connection, compares it with journal.log (Y:
  // no change) and is not fenced; its reload precaution is lifted by the (replicated) marker,
  // and the promoted replica decides a lock the master granted. The replaced() fence went to the
  // retired upstream, which decides nothing any more.
  it('after a reload rebuilt the upstream, the retired one reconnecting to a promoted replica does not make the new one take it for the same server', async (t) => {
    const dir = stateDir(t);
    const j1 = new RepairJournal({ maxKeys: 1000, dir, fsync: 'no' });
    const before = new HealthyUpstream(new FakeUpstream(`${STORE}?timeout=100`, 'redis'), HEALTH, () => {}, STORE);
    j1.load([before]);
    j1.serverIdSeen(before, X); // the master, seen by this process before the reload
    const after = new HealthyUpstream(new FakeUpstream(`${STORE}?timeout=500`, 'redis'), HEALTH, () => {}, STORE);
    // The reload: `after` is the chain now; `before` is retired, still open for its grace period.
    const detector = new ColdDetector(() => [after], FENCE_MS, silent, j1);
    detector.serverId(before, Y); // the retired connection, reconnected first to the promoted replica
    await detector.check(before); // and its reconnect's marker check (ColdDetector.reconnected), which marks
    detector.serverId(after, Y); // the new upstream's first connection
    assert.equal(after.cameBackEmpty, true, 'PROMOTED REPLICA TAKEN FOR THE MASTER: the retired upstream wrote its id to journal.log');
    detector.stop();
    j1.close();
    await Promise.all([before.close(), after.close()]);
  });

  // Guard of the fix of finding 1 (test/integration/review-h1.test.ts): a server that answers as
  // another one is fenced as come back empty, but not taken as holding nothing but what was
  // written since (authority-order.ts onlyLearnt): it holds all but the last writes. One whose
  // marker check found it empty in the same fence (a Redis without persistence that restarted)
  // is empty, whichever came first.
  it('a replaced server is fenced as come back empty, not as empty; one found without its marker stays empty', async (t) => {
    const dir = stateDir(t);
    const store = new FakeUpstream(STORE, 'redis');
    const p = processOver(store, dir);
    p.detector.serverId(p.up, X);
    await p.detector.startAfter(async () => false);
    p.detector.serverId(p.up, Y); // a replica promoted, or a restart with the data
    assert.equal(p.up.cameBackEmpty, true);
    assert.equal(onlyLearnt(p.up), false, 'it holds what was written before, all but the last writes');
    await store.inner.flush(); // then it restarts empty
    await p.detector.check(p.up);
    assert.equal(onlyLearnt(p.up), true, 'found empty');
    p.detector.serverId(p.up, X); // and names another history again
    assert.equal(onlyLearnt(p.up), true, 'still empty');
    p.stop();
    await p.up.close();
  });

  // Guard: an upgrade from a journal.log without I lines (mcmux before 15428d9) takes the first
  // id as the server's, not as another server's: no fence for a Redis that did not change.
  it('a journal.log from before I lines: the first id is no replacement', (t) => {
    const dir = stateDir(t);
    const store = new FakeUpstream(STORE, 'redis');
    const p1 = processOver(store, dir);
    p1.stop(); // a journal.log with S/R lines, no I line
    assert.doesNotMatch(readFileSync(join(dir, 'journal.log'), 'latin1'), /^I /m);
    const p2 = processOver(store, dir);
    p2.detector.serverId(p2.up, X);
    assert.equal(p2.up.fenced, false);
    p2.detector.serverId(p2.up, X); // a reconnect to the same server
    assert.equal(p2.up.cameBackEmpty, false);
    p2.detector.serverId(p2.up, Y); // a failover under this process
    assert.equal(p2.up.cameBackEmpty, true);
    p2.stop();
  });
});

describe('review-h1 finding 5: an id the driver says continues the one before', () => {
  // A Redis master that freed its replication backlog takes a new replication id, the same
  // process, every write kept (test/integration/review-h1.test.ts): the driver tells the new id
  // with `continues`, asked about the id seen last (this process's, or journal.log's), and the
  // detector takes it as the same server. One it does not continue is another server, as before.
  it('a continued id is no replacement and goes on file; one not continued is', (t) => {
    const dir = stateDir(t);
    const store = new FakeUpstream(STORE, 'redis');
    const p1 = processOver(store, dir);
    p1.detector.serverId(p1.up, X);
    const asked: string[] = [];
    p1.detector.serverId(p1.up, Y, (before) => (asked.push(before), before === X)); // in this process
    assert.deepEqual(asked, [X]);
    assert.equal(p1.up.cameBackEmpty, false);
    assert.equal(p1.journal.serverIdOf(p1.up), Y, 'the new id on file at once');
    p1.stop();
    const Z = 'c'.repeat(40);
    const p2 = processOver(store, dir);
    p2.detector.serverId(p2.up, Z, (before) => (asked.push(before), before === Y)); // against journal.log
    assert.deepEqual(asked, [X, Y]);
    assert.equal(p2.up.cameBackEmpty, false);
    assert.equal(p2.up.fenced, false);
    assert.equal(p2.journal.serverIdOf(p2.up), Z);
    p2.detector.serverId(p2.up, X, () => false); // another server
    assert.equal(p2.up.cameBackEmpty, true);
    assert.equal(p2.journal.serverIdOf(p2.up), Z, 'the old id kept until the fence is on the marker');
    p2.stop();
  });

  // The same id again is the same server whatever `continues` says (not asked).
  it('the same id again: continues is not asked', (t) => {
    const p = processOver(new FakeUpstream(STORE, 'redis'), stateDir(t));
    p.detector.serverId(p.up, X);
    p.detector.serverId(p.up, X, () => assert.fail('asked'));
    assert.equal(p.up.cameBackEmpty, false);
    p.stop();
  });
});

describe('review-h1 20bb1d4: markers of mcmux before the nonce', () => {
  // Finding 4 (docs; guard): README said a marker written by an mcmux before the nonce "of this
  // process's own pid is then not told". It is: its writer is `<pid> ` (no nonce), never this
  // process (`<pid> <nonce>`), so it is remembered as an earlier process's marker, and a store
  // restored to a snapshot taken under that older mcmux (same pid: pid 1 in a container) is
  // caught, as for any other pid.
  it('an old-format marker of this very pid, found again after this process wrote its own: the store went back in time', async () => {
    const fake = new FakeUpstream('fake://store', 'fake');
    const up = new HealthyUpstream(fake, HEALTH, () => {});
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const detector = new ColdDetector(() => [up], FENCE_MS, silent, journal);
    const marker = (text: string): Promise<unknown> =>
      fake.inner.store({ mode: 'set', key: detector.key, value: Buffer.from(text), flags: 0, deadline: Date.now() + 3600_000, withCas: false });
    await marker(`${process.pid} 7`); // an mcmux before 20bb1d4, same pid, upgraded since
    await detector.startAfter(async () => false);
    await detector.checkAll();
    assert.equal(journal.isDirty(up, 'any.key'), false, 'a store that kept its data is trusted');
    await marker(`${process.pid} 6`); // restored from a snapshot taken under that older mcmux
    await detector.checkAll();
    assert.equal(journal.isDirty(up, 'any.key'), true, 'the rollback is told');
    detector.stop();
    await up.close();
  });
});
