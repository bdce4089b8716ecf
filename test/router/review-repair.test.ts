/**
 * Review of the background repair and the health machinery (repair.ts, health.ts, app.ts close):
 * each test asserts a client-visible effect (or a state the README rules out) found by reading
 * them, and failed before the fix in src/ that came with it. Modelled on fuzz-findings.test.ts.
 */

import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import { startApp } from '../../src/app';
import { buildConfig } from '../../src/config';
import type { Command, Reply } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import type { StoreRequest, Upstream } from '../../src/upstream/upstream';
import { FakeUpstream, noStats } from '../helpers/fake-upstream';
import { startFaultProxy } from '../helpers/fault-proxy';
import { requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';
import { describeReply } from '../helpers/reply-text';

const silent = pino({ level: 'silent' });
const source = noStats;
const noop = (): void => {};
const set = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const get = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const values = (r: Reply): Array<string | undefined> => (r.kind === 'values' ? r.hits.map((h) => h?.value.toString()) : [`<${describeReply(r)}>`]);
const status = (r: Reply): string => describeReply(r);

/** memcached refusing one item (`-I` smaller than mcmux's max-item-size, or out of memory for its slab class). */
function refuseKey(f: FakeUpstream, key: string): void {
  const store = f.store.bind(f);
  f.store = async (req: StoreRequest) => {
    if (req.key === key) {
      f.calls.push(`${req.mode} ${req.key} (refused)`);
      throw new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `${f.name}: SERVER_ERROR object too large for cache`);
    }
    return store(req);
  };
}

function setup(ups: Upstream[], rate = 10_000) {
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, noop);
  const repairer = new Repairer(() => router.context, { rate, flushCaches: true, lateSettleMs: 0 }, silent);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { journal, router, repairer, exec };
}

describe('review: repair', () => {
  it('a key the upstream keeps refusing does not starve the repair of the other keys (repair-rate 10: one key a tick)', async () => {
    const first = new FakeUpstream('fake://0');
    const second = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup([first, second], 10);
    refuseKey(second, 'huge');
    assert.equal(status(await exec(set('huge', 'a big session'))), 'STORED', 'the first upstream took it; the second refused it');
    second.mode = 'fail';
    assert.equal(status(await exec(set('sess', 'cart'))), 'STORED', 'the second upstream was down for it');
    second.mode = 'ok';
    assert.equal(journal.size(second), 2, 'both keys dirty on the second upstream');
    for (let i = 0; i < 20; i++) await repairer.tick(); // two seconds of ticks at 10 keys a second
    assert.equal(
      journal.isDirty(second, 'sess'),
      false,
      `sess is repaired within 20 ticks of one key each, though huge keeps failing (repair attempts: ${second.calls.filter((c) => c.startsWith('set')).join(', ')})`,
    );
    assert.deepEqual(values(await second.get(['sess']).then((hits) => ({ kind: 'values', hits }) as Reply)), ['cart']);
  });
});

describe('review: repair rate', () => {
  it('repair-rate 1 repairs one key a second, not one a tick (10 a second)', async () => {
    const first = new FakeUpstream('fake://0');
    const second = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup([first, second], 1);
    second.mode = 'fail';
    for (let i = 0; i < 20; i++) assert.equal(status(await exec(set(`sess${i}`, 'cart'))), 'STORED');
    second.mode = 'ok';
    assert.equal(journal.size(second), 20);
    for (let i = 0; i < 10; i++) await repairer.tick(); // one second of ticks (TICK_MS 100)
    assert.ok(repairer.repaired <= 1, `repair-rate 1: at most one key repaired in a second of ticks, got ${repairer.repaired}`);
    for (let i = 0; i < 10; i++) await repairer.tick();
    assert.ok(repairer.repaired >= 1, 'and one at least in two seconds');
  });
});

describe('review: health', () => {
  it('a store that refuses one item (SERVER_ERROR object too large) is not marked down: the writes of other keys still succeed', async () => {
    const fake = new FakeUpstream('fake://0');
    const up = new HealthyUpstream(fake, { downAfter: 3, probeMinMs: 60_000, probeMaxMs: 60_000 }, noop);
    const { exec } = setup([up]);
    refuseKey(fake, 'huge');
    for (let i = 0; i < 3; i++) assert.equal((await exec(set('huge', 'a big session'))).kind, 'error', 'the store refused the item');
    assert.equal(up.state === 'down' || up.state === 'probing', false, `the store answered every request, yet it is ${up.state}`);
    assert.equal(status(await exec(set('sess', 'cart'))), 'STORED', "another client's session write");
    assert.deepEqual(values(await exec(get('sess'))), ['cart']);
  });
});

describe('review: repair and a client write', () => {
  it('a client delete that starts after the repair read its source, before it sent the copy, is not undone by the copy', async () => {
    const first = new FakeUpstream('fake://0');
    const second = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup([first, second]);
    second.mode = 'fail';
    assert.equal(status(await exec(set('sess', 'cart'))), 'STORED', 'on the first upstream; the second missed it');
    second.mode = 'ok';
    // The repair reads sess from the first upstream; the reply comes with others (one socket
    // read answers several requests), and a logout's delete starts in a microtask of that read:
    // after the repair looked for a client write (readFor), before it sent its copy.
    const get1 = first.get.bind(first);
    let armed = true;
    let deleted: Promise<Reply> | undefined;
    first.get = async (keys, touch) => {
      const hits = await get1(keys, touch);
      if (armed && keys.includes('sess')) {
        armed = false;
        queueMicrotask(() => queueMicrotask(() => (deleted = exec({ kind: 'delete', key: 'sess', noreply: false }))));
      }
      return hits;
    };
    await repairer.tick();
    first.get = get1;
    assert.ok(deleted !== undefined);
    assert.equal(status(await deleted), 'DELETED', 'logout');
    for (let i = 0; i < 3; i++) await repairer.tick();
    assert.deepEqual(
      values(await exec(get('sess'))),
      [undefined],
      `the deleted session is gone (requests to the second upstream: ${second.calls.join(', ')}; dirty there: ${journal.isDirty(second, 'sess')})`,
    );
  });
});

describe('review: App.close', () => {
  it('SIGTERM with a read repair still unanswered does not mark journal.log closed cleanly', async (t) => {
    if (!requireBinary(t, 'memcached', 'memcached')) return;
    const mc = await startMemcached();
    const slow = await startFaultProxy(mc.port);
    const dir = await mkdtemp(join(tmpdir(), 'mcmux-review-repair-'));
    t.after(async () => {
      await slow.close();
      await mc.stop();
      await rm(dir, { recursive: true, force: true });
    });
    const config = buildConfig(
      { scalars: {}, listen: [], upstreams: [] },
      {
        scalars: { 'state-dir': dir },
        listen: ['127.0.0.1:0'],
        upstreams: [`memcached://127.0.0.1:${slow.port}?timeout=5000`, 'memory://'].map((url) => ({ url, options: new Map() })),
      },
    );
    const app = await startApp(config, pino({ level: 'silent' }));
    const w = await connectWire(app.address.port);
    assert.equal(await w.ask('set sess 0 0 4\r\ncart\r\n'), 'STORED\r\n');
    // memcached evicts it: a read finds it in the memory store only, and adds it back to memcached.
    const direct = await connectWire(mc.port);
    assert.equal(await direct.ask('delete sess\r\n'), 'DELETED\r\n');
    direct.close();
    slow.latency(200); // the read's miss comes back; its read repair is then on its way...
    assert.equal(await w.ask('get sess\r\n', /END\r\n$/), 'VALUE sess 0 4\r\ncart\r\nEND\r\n');
    slow.hold(); // ...and memcached's answer to it never comes back
    w.close();
    assert.equal(app.router.context.journal.quiescent, false, 'the read repair is in flight');
    await app.close(300); // SIGTERM: clients gone, grace runs out, the upstreams are closed under it
    const log = await readFile(join(dir, 'journal.log'), 'latin1');
    const journaled = log.split('\n').some((line) => line.split(' ')[0] === 'M' && line.split(' ')[3] === Buffer.from('sess').toString('hex'));
    assert.ok(
      journaled || !log.endsWith('\nE\n'),
      `an add mcmux sent and never heard back of may still land (after the next process deleted the session): journal.log must not say every request was answered, nor leave the key unjournaled:\n${log}`,
    );
  });
});
