/**
 * Second review of the configuration reload (App.reload, SIGHUP): the health state of a rebuilt
 * upstream, commands queued behind a conditional command across a reload, and a touch or read
 * repair still in flight on a replaced upstream's old connections.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { App } from '../../src/app';
import type { Command, Reply } from '../../src/command/command';
import type { HealthyUpstream } from '../../src/router/health';
import { idle, inProcessMcmux, proxiedPair, reloadTo } from '../helpers/in-process';
import { END, eventually, peekItem, testClient } from '../helpers/mcmux';
import { requireBinary } from '../helpers/servers';

const REPLY_MS = 8000;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-review-reload-2-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** Counts the commands the router was handed (a command received, queued or not). */
function countExecuted(app: App): { readonly n: number } {
  const seen = { n: 0 };
  const router = app.router;
  const execute = router.execute.bind(router);
  router.execute = (cmd: Command): Promise<Reply> | Reply => {
    seen.n++;
    return execute(cmd);
  };
  return seen;
}

/** One counter of memcached's `stats`. */
async function memcachedStat(c: { ask: (s: string, until: RegExp, ms: number) => Promise<string> }, name: string): Promise<number> {
  const text = await c.ask('stats\r\n', END, REPLY_MS);
  const m = new RegExp(`^STAT ${name} (\\d+)\r$`, 'm').exec(text);
  assert.ok(m, `no ${name} in stats`);
  return Number(m[1]);
}

describe('a reload that rebuilds an upstream that is down (only the global timeout changed)', () => {
  it('keeps it down: requests after the reload are not sent to the dead store (no timeout before failing over)', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t);
    // Probes far apart: the store stays down for the whole test.
    const scalars = { timeout: '200', 'probe-interval': '600000', 'probe-interval-max': '600000', 'state-dir': join(dir, 'down'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');

    // The first store stops answering: three reads time out on it, and it is down.
    proxy.blackhole();
    const old = app.upstreams[0] as HealthyUpstream;
    for (let i = 0; i < 3 && old.state !== 'down'; i++) {
      assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv0\r\nEND\r\n');
    }
    assert.equal(old.state, 'down');

    // The operator raises the global timeout: every upstream is rebuilt.
    reloadTo(app, { ...scalars, timeout: '300' }, [first, mc2.url]);
    const rebuilt = app.upstreams[0] as HealthyUpstream;
    assert.notEqual(rebuilt, old, 'the first upstream was rebuilt');
    // Its request count goes on from the old one's (stats upstreams): none is to be added.
    const sent = rebuilt.stats.requests;
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv0\r\nEND\r\n');
    assert.equal(rebuilt.stats.requests, sent, 'the read after the reload was sent to the store that is down (it waited out its timeout)');
    assert.equal(rebuilt.state, 'down', 'the rebuilt upstream of a store that is down is down');
    assert.ok(rebuilt.transitions.down >= 1, 'its state changes so far are kept');
  });

  it('a store that was down and missed writes neither serves them stale nor decides a lock once reachable again after the reload', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t);
    const scalars = { timeout: '200', 'probe-interval': '600000', 'probe-interval-max': '600000', 'state-dir': join(dir, 'missed'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');

    proxy.blackhole();
    const old = app.upstreams[0] as HealthyUpstream;
    for (let i = 0; i < 3 && old.state !== 'down'; i++) await c.ask('get sess\r\n', END, REPLY_MS);
    assert.equal(old.state, 'down');
    // Missed by the first store (down): a newer session value and a lock.
    assert.equal(await c.ask('set sess 0 0 2\r\nv1\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('add lock.sess 0 0 1\r\n1\r\n', undefined, REPLY_MS), 'STORED\r\n');

    // The store answers again (new connections) and a reload rebuilds every upstream.
    proxy.pass();
    reloadTo(app, { ...scalars, timeout: '300', 'probe-interval': '50' }, [first, mc2.url]);
    await eventually('the rebuilt upstream takes requests', () => (app.upstreams[0] as HealthyUpstream).usable);
    assert.equal((await peekItem(mc1.port, 'sess'))?.value, 'v0', 'the first memcached still holds the old value');
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv1\r\nEND\r\n', 'the newer value, not the one the store that was down holds');
    // Not granted again: NOT_STORED, or a SERVER_ERROR while the reload's precautionary fence of
    // the second store lasts (the first, dirty for the lock, may not decide; authority-order.ts).
    assert.match(await c.ask('add lock.sess 0 0 1\r\n2\r\n', undefined, REPLY_MS), /^(NOT_STORED|SERVER_ERROR .*)\r\n$/, 'the lock is held');
  });
});

describe('a reload that replaces an upstream while a set is in flight on the old one (write-wait all, a store never dirty so far)', () => {
  // Held by the proxy (stall) rather than delayed a fixed time: the test's own steps (a reload, the
  // marker check that lifts its fence, another set) took longer than a 6 s latency on a loaded
  // machine, and it failed in about half of the full runs of one session (then a todo).
  it('the set landing there after a later set through the new one is journaled: both stores end up agreeing, and a read does not change its answer once the first leaves', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t, '?timeout=5000');
    const scalars = { 'state-dir': join(dir, 'inflight-all'), 'log-level': 'silent' };
    const slow = `memcached://127.0.0.1:${proxy.port}?timeout=20000`;
    const app = await inProcessMcmux(scalars, [slow, mc2.url]);
    const a = await testClient(t, app.address.port);
    const b = await testClient(t, app.address.port);
    assert.equal(await a.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');

    // Client a's set is slow to reach the first store (held in the proxy, within its timeout).
    proxy.stall();
    const old = app.upstreams[0] as HealthyUpstream;
    const since = performance.now();
    const onTheWay = (): string => `v1 is still on its way to the first store (${Math.round(performance.now() - since)} ms in; the old upstream's stats ${JSON.stringify(old.stats)})`;
    const first1 = a.ask('set sess 0 0 2\r\nv1\r\n', undefined, 20_000);
    await eventually('v1 reached the second memcached', async () => (await peekItem(mc2.port, 'sess'))?.value === 'v1');
    assert.equal(idle(old), false, onTheWay());

    reloadTo(app, scalars, [`${slow}&max-queue=100`, mc2.url]);
    // The reload's precautionary fence is lifted by the marker check (within 2 s).
    await eventually('the rebuilt upstream is no longer fenced', () => !(app.upstreams[0] as HealthyUpstream).fenced);
    assert.equal(idle(old), false, onTheWay());
    // Client b's set goes through the new upstream and lands first there; then v1 goes on.
    assert.equal(await b.ask('set sess 0 0 2\r\nv2\r\n', undefined, REPLY_MS), 'STORED\r\n');
    proxy.release();
    assert.equal(await first1, 'STORED\r\n', 'v1 answered');
    assert.equal((await peekItem(mc1.port, 'sess'))?.value, 'v1', 'v1 landed over v2 on the first memcached');
    assert.equal((await peekItem(mc2.port, 'sess'))?.value, 'v2');

    const read = await b.ask('get sess\r\n', END, REPLY_MS);
    reloadTo(app, scalars, [mc2.url]);
    assert.equal(await b.ask('get sess\r\n', END, REPLY_MS), read, 'with no write in between, the read answers the same once the first store is gone');
  });
});

describe('a reload while a write of a key waits behind a conditional command of the key', () => {
  it('the queued write goes to the upstreams of the new config: STORED, and read back', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t);
    const scalars = { timeout: '5000', 'state-dir': join(dir, 'queued'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const executed = countExecuted(app);
    const a = await testClient(t, app.address.port);
    const b = await testClient(t, app.address.port);
    // An earlier reload, and a write since: the journal has met both stores (as in any process
    // that has run a while: a key missed, a fence, journal.log loaded).
    reloadTo(app, { ...scalars, timeout: '4000' }, [first, mc2.url]);
    assert.equal(await a.ask('set warm 0 0 1\r\nw\r\n', undefined, REPLY_MS), 'STORED\r\n');

    const sent = app.upstreams.map((u) => u.stats.requests);
    // The add is decided by the first store, whose answer the proxy holds back.
    proxy.hold();
    const added = a.ask('add k 0 0 2\r\na1\r\n', undefined, REPLY_MS);
    await eventually('the add reached the router', () => executed.n === 2);
    // A set of the key waits for it (key-order.ts).
    const stored = b.ask('set k 0 0 2\r\nv1\r\n', undefined, REPLY_MS);
    await eventually('the set reached the router', () => executed.n === 3);
    assert.equal(app.router.orderedKeys, 1);

    // A reload that rebuilds every upstream (the global timeout changed), then the add answers.
    const olds = [...app.upstreams] as HealthyUpstream[];
    reloadTo(app, { ...scalars, timeout: '5000' }, [first, mc2.url]);
    proxy.pass();
    assert.equal(await added, 'STORED\r\n');
    assert.equal(await stored, 'STORED\r\n', 'the set received before the reload, run after it, stored on every store');
    assert.equal(await b.ask('get k\r\n', END, REPLY_MS), 'VALUE k 0 2\r\nv1\r\nEND\r\n');
    assert.deepEqual(olds.map((u, i) => u.stats.requests - (sent[i] as number)), [1, 1], 'the old upstreams had only the add and its copy');
  });
});

describe('a reload that replaces an upstream while a touch of a key is in flight on the old one', () => {
  it('a set of the key after it, through the new one, keeps its own deadline: not served once it expired', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t, '?timeout=5000');
    const scalars = { 'write-wait': 'copies', 'state-dir': join(dir, 'touch'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');
    // write-wait copies answered at the first copy: the second is dirty for the key until its copy
    // lands, and its TOUCHED would not count (the touch would wait for the first, held below).
    await eventually('v0 landed on both stores', () => app.upstreams.every((u) => idle(u as HealthyUpstream)));

    // The touch to the first store is slow (held in the proxy, within its timeout); the second
    // answers. (A 1.5 s latency here was outlived by the touch's own round trip on a loaded machine.)
    proxy.stall();
    assert.equal(await c.ask('touch sess 3600\r\n', undefined, REPLY_MS), 'TOUCHED\r\n');
    const old = app.upstreams[0] as HealthyUpstream;
    assert.equal(idle(old), false, 'the touch is still on its way to the first store');

    // A tuning option of the first upstream changes: it is built anew.
    reloadTo(app, scalars, [`${first}&max-queue=100`, mc2.url]);
    assert.notEqual(app.upstreams[0], old);
    // A short-lived value of the key, set after the touch.
    assert.equal(await c.ask('set sess 0 2 2\r\nv2\r\n', undefined, REPLY_MS), 'STORED\r\n');
    // (write-wait copies: the STORED may be the second's; the set is on the first once it answered.)
    await eventually('the first upstream answered the set', () => idle(app.upstreams[0] as HealthyUpstream));
    proxy.release();
    await eventually('the touch was answered', () => idle(old));
    // The touch landed after the set on the first memcached: v2 lives there for an hour.
    const landed = await peekItem(mc1.port, 'sess');
    assert.equal(landed?.value, 'v2');
    assert.ok((landed?.ttl ?? 0) > 2, `v2 has the touch's deadline on the first memcached (ttl ${landed?.ttl})`);

    // v2 expires: the second memcached no longer has it.
    await eventually('v2 expired on the second memcached', async () => (await peekItem(mc2.port, 'sess')) === undefined);
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'END\r\n', 'the set expired; the old touch landed over it on the first store must not keep it alive');
  });
});

describe('a reload that replaces an upstream while a read repair add is in flight on the old one', () => {
  it('a delete of the key after it, through the new one, is not undone by the add landing later', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t, '?timeout=5000');
    const scalars = { 'state-dir': join(dir, 'repair'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const c = await testClient(t, app.address.port);
    // Only the second memcached has the session (as after an eviction from the first).
    const direct = await testClient(t, mc2.port);
    assert.equal(await direct.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');

    // The read finds it on the second; its repair add to the first is slow (within its timeout):
    // delayed, then held in the proxy as soon as the read is answered (the add leaves mcmux as the
    // reply does), so that the steps below cannot outlive the delay on a loaded machine.
    const old = app.upstreams[0] as HealthyUpstream;
    proxy.latency(1500);
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv0\r\nEND\r\n');
    proxy.stall();
    await eventually('the read repair add was sent', () => app.router.counters.readRepairs === 1);
    proxy.pass();
    assert.equal(idle(old), false, 'the add is still on its way to the first store');

    reloadTo(app, scalars, [`${first}&max-queue=100`, mc2.url]);
    assert.equal(await c.ask('delete sess\r\n', undefined, REPLY_MS), 'DELETED\r\n');
    proxy.release();
    await eventually('the read repair add was answered', () => idle(old));
    // The delete found nothing on the first memcached; the add landed after it, and the repair
    // deleted what it had put back.
    const direct1 = await testClient(t, mc1.port);
    assert.equal(await memcachedStat(direct1, 'delete_misses'), 1, 'the delete reached the first memcached before the add');
    await eventually('the repair deleted the item the add put back', async () => (await memcachedStat(direct1, 'delete_hits')) === 1);
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'END\r\n', 'the deleted session is not served again');
  });
});
