/**
 * Review of the lock fence, the markers and the cas seals: each test asserts a client-visible
 * violation (or a state the README rules out) found by reading cold-detector.ts, health.ts,
 * authority-order.ts, app.ts and journal.ts. Modelled on cold-detector.test.ts.
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
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { MemoryUpstream } from '../../src/upstream/memory';
import { clocksFor } from '../helpers/clocks';
import { FakeUpstream, settle, noStats } from '../helpers/fake-upstream';

const silent = pino({ level: 'silent' });
const source = noStats;
const FENCE_MS = 60_000;

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const addCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false });
const casCmd = (key: string, value: string, unique: bigint | undefined): Command => ({ kind: 'store', mode: 'cas', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: unique, withCas: false, noreply: false });
const gets = (key: string): Command => ({ kind: 'get', keys: [key], withCas: true, touch: undefined });
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);

/** One mcmux process over `fakes` (they outlive it); with `dir`, journal.log is loaded as app.ts does. */
function proc(fakes: readonly FakeUpstream[], dir?: string) {
  const ups = fakes.map((f) => new HealthyUpstream(f, { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {}));
  const journal = new RepairJournal({ maxKeys: 1000, dir, fsync: 'no' });
  if (dir !== undefined) journal.load(ups);
  for (const u of ups) u.resumeUniques(journal.uniquesEpochOf(u)); // as app.ts
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  repairer.onFlush = (u) => detector.knownEmpty(u as HealthyUpstream);
  repairer.onFlushed = (u) => detector.flushed(u as HealthyUpstream);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const stop = async (): Promise<void> => {
    journal.close();
    await Promise.all(ups.map((u) => u.close()));
  };
  return { ups, journal, router, detector, repairer, exec, stop };
}

/** The store behind `f` restarts: empty, and numbering its items from 1 again (as memcached does). */
function restartStore(f: FakeUpstream): void {
  (f as unknown as { inner: MemoryUpstream }).inner = new MemoryUpstream(f.name, 64 * 1024 * 1024);
}

describe('review: cas seals', () => {
  it('a store removed from the config and added back later does not seal with an epoch it used before its restart', async (t) => {
    const clocks = clocksFor(t);
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fa = new FakeUpstream('fake://0');
    const fb = new FakeUpstream('fake://1');

    // Process 1 over [a, b]: a restarts once (seen: its uniques voided, epoch 1); after its fence
    // a client reads sess from a.
    const p1 = proc([fa, fb], dir);
    await p1.detector.checkAll();
    restartStore(fa);
    await p1.detector.check(p1.ups[0] as HealthyUpstream);
    assert.equal(p1.ups[0]!.cameBackEmpty, true);
    clocks.advance(FENCE_MS + 1);
    await p1.detector.checkAll();
    assert.equal(status(await p1.exec(setCmd('sess', 'v1'))), 'STORED');
    const r1 = await p1.exec(gets('sess'));
    const old = r1.kind === 'values' ? r1.hits[0]?.cas : undefined;
    assert.ok(old !== undefined);
    const raw = (await fa.inner.get(['sess']))[0]!.cas;
    await p1.stop();

    // Process 2: the config no longer names a (taken out for maintenance).
    const p2 = proc([fb], dir);
    await p2.detector.checkAll();
    await p2.stop();
    restartStore(fa); // a restarts while out of the chain

    // Process 3: a is back in the config. It lost its marker (b holds one): came back empty.
    const p3 = proc([fa, fb], dir);
    await p3.detector.checkAll();
    assert.equal(p3.ups[0]!.cameBackEmpty, true, 'a came back empty');
    clocks.advance(FENCE_MS + 1);
    await p3.detector.checkAll();
    // Clients write sess again (acknowledged), until a numbers it as it numbered v1 before its restart.
    for (let i = 0; i < 20 && (await fa.inner.get(['sess']))[0]?.cas !== raw; i++) {
      assert.equal(status(await p3.exec(setCmd('sess', `v2.${i}`))), 'STORED');
    }
    assert.equal((await fa.inner.get(['sess']))[0]?.cas, raw, 'a numbers the newer sess as it numbered v1 before it restarted');
    const now = await p3.exec(gets('sess'));
    assert.equal(now.kind === 'values' && now.hits[0]?.value.toString().startsWith('v2'), true);
    assert.notEqual(status(await p3.exec(casCmd('sess', 'stale', old))), 'STORED', 'CAS STORED WRONGLY: a unique read before a restarted validates again after it was re-added');
    await p3.stop();
  });
});

/** A pool of two servers, as the memcached pool driver exposes them (membersOf); its data in its own store. */
class PoolFake extends FakeUpstream {
  constructor(private readonly servers: readonly HealthyUpstream[]) {
    super('fake://pool');
  }
  members(): readonly HealthyUpstream[] {
    return this.servers;
  }
}

/** Chain [pool of s0 and s1, b]; `lock.s` lives on s1 in the pool. */
function poolChain() {
  const sf = [new FakeUpstream('fake://s0'), new FakeUpstream('fake://s1')] as [FakeUpstream, FakeUpstream];
  const servers = sf.map((f) => new HealthyUpstream(f, { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {})) as [HealthyUpstream, HealthyUpstream];
  const pf = new PoolFake(servers);
  const fb = new FakeUpstream('fake://b');
  const p = new HealthyUpstream(pf, { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
  const b = new HealthyUpstream(fb, { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
  const ups = [p, b];
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  /** s1 restarts empty: its marker and the pool's keys that live on it are gone. */
  const restartS1 = async (): Promise<void> => {
    await sf[1].inner.flush();
    await pf.inner.delete('lock.s');
  };
  /** s1's marker check is not answered until `sf[1].open()`. */
  const holdS1Check = (): void => {
    sf[1].gateOnly = (call) => call.startsWith(`get ${detector.key}`);
    sf[1].close_gate();
  };
  return { sf, servers, pf, fb, p, b, journal, router, detector, exec, restartS1, holdS1Check };
}

describe('review: a pool whose servers reconnect', () => {
  it("one server's marker kept does not lift the pool's fence while another server that reconnected is unchecked", async () => {
    const { sf, servers, p, detector: d, exec, restartS1, holdS1Check } = poolChain();
    await d.checkAll();
    assert.equal(status(await exec(addCmd('lock.s', 'A'))), 'STORED');
    // A network blip: both servers' connections drop and reconnect; s1 had restarted.
    await restartS1();
    holdS1Check();
    d.serverReconnected(p, servers[0]);
    d.serverReconnected(p, servers[1]);
    await settle(); // s0's check answers: its marker is there
    assert.notEqual(status(await exec(addCmd('lock.s', 'B'))), 'STORED', 'LOCK GRANTED TWICE: b holds lock.s, the pool lost it with s1');
    assert.equal(p.fenced, true, "s1's check has not answered: it may have come back empty");
    sf[1].open();
    await settle();
  });

  it('a server reconnecting in a pool already fenced forgets the keys written to the pool since: until its check answers, the pool decides none', async () => {
    const { sf, servers, fb, p, detector: d, exec, restartS1, holdS1Check } = poolChain();
    await d.checkAll();
    await sf[0].inner.flush(); // s0 restarted empty: the pool is fenced for the whole lock-fence
    d.serverReconnected(p, servers[0]);
    await settle();
    assert.equal(p.cameBackEmpty, true);
    assert.equal(status(await exec(setCmd('lock.s', 'A'))), 'STORED', 'on both: the pool holds the lock again (on s1), and may decide it');
    assert.equal(p.knows('lock.s'), true);
    await restartS1(); // s1 restarts: the lock is gone from the pool
    holdS1Check();
    d.serverReconnected(p, servers[1]);
    fb.mode = 'fail'; // the warm b cannot decide
    assert.notEqual(status(await exec(addCmd('lock.s', 'B'))), 'STORED', 'LOCK GRANTED TWICE: the pool lost lock.s with s1 and decided it');
    fb.mode = 'ok';
    sf[1].open();
    await settle();
  });
});

describe('review: keys a reconnect forgot', () => {
  it('the keys written to a fenced upstream are known again when its check after a reconnect finds the marker still there', async () => {
    const fa = new FakeUpstream('fake://0');
    const fb = new FakeUpstream('fake://1');
    const { ups, detector: d, exec, stop } = proc([fa, fb]);
    const [a, b] = ups as [HealthyUpstream, HealthyUpstream];
    await d.checkAll();
    await fa.inner.flush(); // both restart empty
    await fb.inner.flush();
    await d.checkAll();
    assert.ok(a.cameBackEmpty && b.cameBackEmpty);
    assert.equal(status(await exec(setCmd('lock.s', 'A'))), 'STORED', 'on both: both hold the lock again');
    d.reconnected(b); // b's connection drops and reconnects; b did not restart
    await settle();
    assert.equal((await fb.inner.get([d.key]))[0] !== undefined && (await fb.inner.get(['lock.s']))[0] !== undefined, true, 'b kept its marker and the lock');
    await fa.inner.flush(); // a restarts empty again
    assert.equal(await d.check(a), 'cold');
    assert.equal(status(await exec(addCmd('lock.s', 'B'))), 'NOT_STORED', 'LOCK GRANTED TWICE: a, which lost lock.s, decided it before b, which holds it');
    assert.equal(b.knows('lock.s'), true, 'README: "if its marker turns out to be still there, they are known again"');
    await stop();
  });
});

describe('review: a marker check answered after a later reconnect', () => {
  it('the check of a first reconnect, answered after a second reconnect (the store restarted between), does not lift the fence the second set', async () => {
    const fa = new FakeUpstream('fake://0');
    const fb = new FakeUpstream('fake://1');
    const { ups, detector: d, exec, stop } = proc([fa, fb]);
    const [a] = ups as [HealthyUpstream];
    await d.checkAll();
    assert.equal(status(await exec(addCmd('lock.s', 'A'))), 'STORED');
    // The first check's read is served at once (the marker is there), its answer held back; the
    // second check's read waits until released.
    const releases: Array<() => void> = [];
    const realGet = fa.get.bind(fa);
    let n = 0;
    fa.get = async (keys, touch) => {
      if (keys[0] !== d.key) return realGet(keys, touch);
      const i = n++;
      if (i === 0) {
        const hits = await realGet(keys, touch);
        await new Promise<void>((r) => releases.push(r));
        return hits;
      }
      await new Promise<void>((r) => releases.push(r));
      return realGet(keys, touch);
    };
    d.reconnected(a); // first reconnect: the store did not restart; its check read the marker
    await settle();
    await fa.inner.flush(); // then it restarts: lock.s and the marker are gone
    d.reconnected(a); // second reconnect
    await settle();
    releases[0]!(); // the first check's answer arrives now
    await settle();
    assert.notEqual(status(await exec(addCmd('lock.s', 'B'))), 'STORED', 'LOCK GRANTED TWICE: b holds lock.s, a lost it in its restart');
    assert.equal(a.fenced, true, "the second reconnect's check has not answered");
    releases[1]!();
    await settle();
    assert.equal(a.cameBackEmpty, true);
    await stop();
  });
});
