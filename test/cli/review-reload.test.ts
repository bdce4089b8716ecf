/**
 * Review of the configuration reload (App.reload, SIGHUP) against traffic in flight and the
 * journal it keeps: each test is one finding, failing before its fix.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, after, before, describe, it } from 'node:test';
import type { HealthyUpstream } from '../../src/router/health';
import { idle, inProcessMcmux, proxiedPair, reloadTo } from '../helpers/in-process';
import { END, eventually, killAndWait, peekItem, testClient } from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcacheds } from '../helpers/servers';

const REPLY_MS = 5000;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mcmux-review-reload-'));
});
after(() => rm(dir, { recursive: true, force: true }));

describe('a reload that replaces an upstream (a tuning option changed) while a copy is in flight on the old one', () => {
  it('a later set of the key, through the new one, is not overwritten unseen by that copy: the next get reads the later value', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const { mc1, mc2, proxy, first } = await proxiedPair(t, '?timeout=5000');
    const scalars = { 'write-wait': 'copies', 'state-dir': join(dir, 'replaced'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [first, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');
    await eventually('v0 landed on both stores', () => app.upstreams.every((u) => idle(u as HealthyUpstream)));

    // v1's copy to the first upstream is slow (held in the proxy until released, well within its
    // timeout: a fixed delay could be outlived by the steps below on a loaded machine); the
    // second answers.
    proxy.stall();
    assert.equal(await c.ask('set sess 0 0 2\r\nv1\r\n', undefined, REPLY_MS), 'STORED\r\n');
    const old = app.upstreams[0] as HealthyUpstream;
    assert.equal(idle(old), false, 'the copy of v1 is still on its way');

    // The operator changes a tuning option of the first upstream: it is built anew.
    reloadTo(app, scalars, [`${first}&max-queue=100`, mc2.url]);
    assert.notEqual(app.upstreams[0], old, 'the first upstream was rebuilt');
    assert.equal(await c.ask('set sess 0 0 2\r\nv2\r\n', undefined, REPLY_MS), 'STORED\r\n');
    await eventually('v2 reached the first memcached', async () => (await peekItem(mc1.port, 'sess'))?.value === 'v2');
    // The old connection's v1 lands after it, and is answered.
    proxy.release();
    await eventually('the copy of v1 was answered', () => idle(old));
    assert.equal((await peekItem(mc1.port, 'sess'))?.value, 'v1', 'v1 landed over v2 on the first memcached');

    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv2\r\nEND\r\n', 'the acknowledged later set is read, not v1');
  });
});

/** The raw cas unique memcached at `port` holds for `key` (read straight from it, meta get). */
async function rawCas(t: TestContext, port: number, key: string): Promise<number> {
  const direct = await testClient(t, port);
  const reply = await direct.ask(`mg ${key} c\r\n`, undefined, REPLY_MS);
  const m = /^HD c(\d+)\r\n$/.exec(reply);
  assert.ok(m, `mg ${key} c on :${port} answered ${JSON.stringify(reply)}`);
  return Number(m[1]);
}

/** Writes straight to memcached at `port` until the next item it stores gets unique `next`. */
async function advanceCas(t: TestContext, port: number, next: number): Promise<void> {
  const direct = await testClient(t, port);
  assert.equal(await direct.ask('set review.pad 0 0 1\r\nx\r\n', undefined, REPLY_MS), 'STORED\r\n');
  const at = await rawCas(t, port, 'review.pad');
  assert.ok(at < next, `memcached :${port} is at unique ${at} already, before ${next}`);
  const pads = Array.from({ length: next - 1 - at }, (_, i) => `set review.pad.${i} 0 0 1 noreply\r\nx\r\n`).join('');
  assert.equal(await direct.ask(`${pads}mn\r\n`, undefined, REPLY_MS), 'MN\r\n');
}

describe('a store removed by a reload, restarted empty meanwhile, and added back by the next', () => {
  it('does not take a cas unique it handed out before it left: EXISTS, not STORED over the later writes', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const scalars = { 'state-dir': join(dir, 'readded'), 'lock-fence': '300', 'log-level': 'silent' };
    // mc1 has numbered a few items already when mcmux starts (its unique counter is not at 1).
    await advanceCas(t, mc1.port, 40);
    const app = await inProcessMcmux(scalars, [mc1.url, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('set sess 0 0 2\r\nv0\r\n', undefined, REPLY_MS), 'STORED\r\n');
    const got = /^VALUE sess 0 2 (\d+)\r\nv0\r\nEND\r\n$/.exec(await c.ask('gets sess\r\n', END, REPLY_MS));
    assert.ok(got, 'gets answers from the first upstream');
    const unique = got[1] as string;
    const before = await rawCas(t, mc1.port, 'sess');

    // The first memcached leaves the chain; the session is written meanwhile (the client's unique
    // is stale from now on); the memcached restarts empty, and a later reload puts it back first.
    reloadTo(app, scalars, [mc2.url]);
    assert.equal(await c.ask('set sess 0 0 2\r\nv1\r\n', undefined, REPLY_MS), 'STORED\r\n');
    await mc1.restart();
    reloadTo(app, scalars, [mc1.url, mc2.url]);
    await eventually('the memcached added back is flushed and trusted', () => app.journal.overflowed(app.upstreams[0] as HealthyUpstream) === undefined);
    // Its fence (the repair flushed it) ends, and the marker says so: it decides again.
    await eventually('the fence of the memcached added back has ended', async () => new RegExp(`^${process.pid} \\d+ [0-9a-f]{12}$`).test((await peekItem(mc1.port, app.coldDetector.key))?.value ?? ''));
    // The marker alone may be a late write of the upstream the first reload retired (a check of it
    // in flight then), landing after the restart: the fence is looked at on its own.
    await eventually('the memcached added back decides again', () => !(app.upstreams[0] as HealthyUpstream).fenced);

    // Its counter numbers items from 1 again: the next write of the session there gets the
    // unique the session had there before it left.
    await advanceCas(t, mc1.port, before);
    assert.equal(await c.ask('set sess 0 0 2\r\nv2\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await rawCas(t, mc1.port, 'sess'), before, 'the restarted memcached gave the session its old number');

    assert.equal(await c.ask(`cas sess 0 0 4 ${unique}\r\nlost\r\n`, undefined, REPLY_MS), 'EXISTS\r\n', 'a unique from before v1 and v2 is stale');
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 2\r\nv2\r\nEND\r\n');
  });
});

describe('a reload that changes a tuning option of a memory:// upstream (max-bytes)', () => {
  it('keeps what it holds: a session only it has (the other upstream is down) is still served', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1] = (await startMemcacheds(t, 1)) as [MemcachedProcess];
    const scalars = { 'state-dir': join(dir, 'memory'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, ['memory://sessions', mc1.url]);
    const c = await testClient(t, app.address.port);
    await killAndWait(mc1);
    assert.equal(await c.ask('set sess 0 0 4\r\nlive\r\n', undefined, REPLY_MS), 'STORED\r\n', 'stored in memory; the memcached missed it');
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 4\r\nlive\r\nEND\r\n');

    reloadTo(app, scalars, ['memory://sessions?max-bytes=33554432', mc1.url]);
    assert.equal(await c.ask('get sess\r\n', END, REPLY_MS), 'VALUE sess 0 4\r\nlive\r\nEND\r\n', 'the acknowledged session is not lost');
  });
});

describe('a reload that rebuilds every upstream (max-item-size changed) while one is fenced as come back empty', () => {
  it('does not let the emptied one grant a session lock the other still holds', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
    const scalars = { 'state-dir': join(dir, 'fenced'), 'log-level': 'silent' };
    const app = await inProcessMcmux(scalars, [mc1.url, mc2.url]);
    const c = await testClient(t, app.address.port);
    assert.equal(await c.ask('add lock.sid 0 0 1\r\n1\r\n', undefined, REPLY_MS), 'STORED\r\n', 'the lock is taken');
    // The first memcached restarts empty: fenced, the lock is decided by the second.
    await mc1.restart();
    await eventually('the restarted memcached is fenced as come back empty', () => (app.upstreams[0] as HealthyUpstream).cameBackEmpty);
    assert.equal(await c.ask('add lock.sid 0 0 1\r\n2\r\n', undefined, REPLY_MS), 'NOT_STORED\r\n', 'the lock is held');

    reloadTo(app, { ...scalars, 'max-item-size': '2097152' }, [mc1.url, mc2.url]);
    assert.equal(await c.ask('add lock.sid 0 0 1\r\n2\r\n', undefined, REPLY_MS), 'NOT_STORED\r\n', 'still held after the reload');
  });
});
