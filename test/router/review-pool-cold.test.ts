/**
 * Review of the cold detector's pool paths (a memcached pool: each server its own store with its
 * own marker): each test builds a real MemcachedPool over fault-injecting fakes, beside a plain
 * upstream, and asserts what a client must never see. Tests marked todo fail on the code they were
 * written against (bbdc31d).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { FakeUpstream, noStats, settle } from '../helpers/fake-upstream';

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
function proc(sf: readonly FakeUpstream[], fb: FakeUpstream, eject = false) {
  const pool = new MemcachedPool(
    `memcached://${sf.map((_, i) => `s${i}`).join(',')}`,
    sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })),
    { distribution: 'ketama', namespace: '', eject },
    HEALTH,
  );
  const p = new HealthyUpstream(pool, HEALTH, () => {});
  const b = new HealthyUpstream(fb, HEALTH, () => {});
  const ups = [p, b];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  // As app.ts wires a pool (resolveUpstreams).
  for (const member of pool.members()) member.inner.onReconnect = (): void => detector.serverReconnected(p, member);
  pool.onRingMoved = (): void => detector.knownEmpty(p);
  pool.onMemberChange = (u, _from, to): void => {
    if (to === 'healthy') detector.serverReconnected(p, u);
  };
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const servers = pool.members() as readonly HealthyUpstream[];
  /** A key of the form `${prefix}N` that the pool places on server `i`. */
  const keyOn = (i: number, prefix = 'lock.s'): string => {
    for (let n = 0; n < 1000; n++) if (pool.serverFor(`${prefix}${n}`) === servers[i]) return `${prefix}${n}`;
    throw new Error(`no key on server ${i}`);
  };
  const stop = (): Promise<unknown> => Promise.all(ups.map((u) => u.close()));
  return { pool, p, b, servers, journal, router, detector, exec, keyOn, stop };
}

const fakes = (n = 2): { sf: FakeUpstream[]; fb: FakeUpstream } => ({
  sf: Array.from({ length: n }, (_, i) => new FakeUpstream(`memcached://s${i}:11211`, 'memcached')),
  fb: new FakeUpstream('memcached://b:11211', 'memcached'),
});

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
    const { sf, fb } = fakes();
    const p1 = proc(sf, fb);
    const lock = p1.keyOn(1);
    await p1.detector.checkAll();
    assert.equal(status(await p1.exec(addCmd(lock, 'A'))), 'STORED');
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
    const { sf, fb } = fakes();
    const s = proc(sf, fb);
    const lock = s.keyOn(0);
    await s.detector.checkAll();
    assert.equal(status(await s.exec(addCmd(lock, 'A'))), 'STORED');
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
