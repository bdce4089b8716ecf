import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import { monotonicMs } from '../../src/clock';
import type { Command, Reply } from '../../src/command/command';
import { HealthyUpstream, cameBackAt } from '../../src/router/health';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { MemoryUpstream } from '../../src/upstream/memory';
import type { Upstream } from '../../src/upstream/upstream';
import { TestClocks } from '../helpers/clocks';
import { FakeUpstream, noStats } from '../helpers/fake-upstream';
import { type Poll, eventually } from '../helpers/poll';

const silent = pino({ level: 'silent' });
const source = noStats;
/** A key or store name as journal.log writes it. */
const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

/**
 * lateSettleMs defaults to 0 here: the fake's timeouts are never applied, unless a test holds
 * them with delay_late(), and those tests set it.
 */
function setup(opts: { maxKeys?: number; ups?: Upstream[]; lateSettleMs?: number; allowFlush?: boolean } = {}) {
  const ups = opts.ups ?? [new FakeUpstream('fake://0'), new FakeUpstream('fake://1')];
  const journal = new RepairJournal({ maxKeys: opts.maxKeys ?? 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: opts.allowFlush ?? false }, source, () => {});
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: opts.lateSettleMs ?? 0 }, silent);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { ups, journal, router, repairer, exec };
}

const set = (key: string, value: string, deadline = 0): Command => ({
  kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline, cas: undefined, withCas: true, noreply: false,
});
const get = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: undefined });
const del = (key: string): Command => ({ kind: 'delete', key, noreply: false });
const DELETED: Reply = { kind: 'status', status: 'DELETED' };
const flushAll: Command = { kind: 'flush', delay: 0, noreply: false };

/** How `eventually` waits for background work here: 500 checks, 2 ms apart (counted, not timed: a test mocks Date). */
const SOON: Poll = { checks: 500, every: 2 };
const value = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `<${r.kind}>`);
const held = async (u: Upstream, key: string): Promise<string | undefined> =>
  ((u as FakeUpstream).inner ?? u).get([key]).then(([h]) => h?.value.toString());

describe('repair journal', () => {
  it('a delete one upstream missed never comes back (hazard 1), and the repair deletes it there', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a] = ups as FakeUpstream[];
    await exec(set('sess', 'cart'));
    a!.mode = 'fail';
    assert.deepEqual(await exec({ kind: 'delete', key: 'sess', noreply: false }), { kind: 'status', status: 'DELETED' });
    assert.ok(journal.isDirty(a!, 'sess'));
    a!.mode = 'ok';
    assert.equal(await held(a!, 'sess'), 'cart', 'the old value is still on the upstream that missed the delete');
    assert.equal(value(await exec(get('sess'))), undefined, 'but it is never served');
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), undefined);
    assert.equal(journal.isDirty(a!, 'sess'), false);
  });

  it('a write one upstream missed is not read from it until repaired (hazard 3)', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a] = ups as FakeUpstream[];
    await exec(set('k', 'v1'));
    a!.mode = 'timeout';
    await exec(set('k', 'v2'));
    a!.mode = 'ok';
    assert.equal(await held(a!, 'k'), 'v1');
    assert.equal(value(await exec(get('k'))), 'v2');
    await repairer.tick();
    assert.equal(await held(a!, 'k'), 'v2');
    assert.equal(journal.size(a!), 0);
    assert.equal(repairer.repaired, 1);
  });

  it('a client write during a repair makes the repair copy again', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a, b] = ups as FakeUpstream[];
    a!.mode = 'fail';
    await exec(set('k', 'old'));
    a!.mode = 'ok';
    b!.close_gate(); // the repair's read of the source waits here
    const repair = repairer.tick();
    await new Promise((r) => setImmediate(r));
    b!.open();
    await exec(set('k', 'new'));
    await repair;
    await repairer.tick();
    assert.equal(await held(a!, 'k'), 'new');
    assert.equal(journal.size(a!), 0);
  });

  it('a client set that lands behind a repair\'s delete is kept, and read, even when another upstream missed it (hazard 1 the other way)', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a, b] = ups as FakeUpstream[];
    await exec(set('sess', 'old'));
    a!.mode = 'fail';
    await exec({ kind: 'delete', key: 'sess', noreply: false }); // a misses the delete
    assert.equal(journal.entry(a!, 'sess')?.op, 'delete');
    // a is back. The repair's delete is applied at once, its answer is late (a slow link), and
    // meanwhile a client's set reaches a (behind the delete) and misses b.
    a!.mode = 'ok';
    let answer!: () => void;
    const answered = new Promise<void>((r) => (answer = r));
    const applyDelete = a!.delete.bind(a!);
    a!.delete = async (key: string) => {
      const r = await applyDelete(key);
      await answered;
      return r;
    };
    const repair = repairer.tick();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(a!.calls, ['set sess', 'delete sess', 'delete sess'], 'the client\'s delete (missed), then the repair\'s');
    assert.equal(await held(a!, 'sess'), undefined);
    b!.mode = 'fail';
    assert.equal((await exec(set('sess', 'new')) as { status?: string }).status, 'STORED');
    answer();
    await repair;
    b!.mode = 'ok';
    assert.equal(await held(a!, 'sess'), 'new');
    assert.equal(journal.isDirty(a!, 'sess'), false, 'a holds the newest write');
    assert.equal(value(await exec(get('sess'))), 'new', 'an acknowledged set is read back');
    await repairer.tick();
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), 'new', 'no repair replays the old delete over it');
    assert.equal(await held(b!, 'sess'), 'new', 'b is repaired from a');
    assert.equal(value(await exec(get('sess'))), 'new');
  });

  it('a repair that read its source before a client write sends nothing after it (the write stands)', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a, b] = ups as FakeUpstream[];
    a!.mode = 'fail';
    await exec(set('k', 'old')); // a misses it
    a!.mode = 'ok';
    // The repair reads 'old' from b at once; the answer comes back late.
    let answer!: () => void;
    const answered = new Promise<void>((r) => (answer = r));
    const read = b!.get.bind(b!);
    b!.get = async (keys: readonly string[], touch?: number) => {
      const r = await read(keys, touch);
      await answered;
      return r;
    };
    const repair = repairer.tick();
    await new Promise((r) => setImmediate(r));
    assert.equal((await exec(set('k', 'new')) as { status?: string }).status, 'STORED');
    answer();
    await repair;
    assert.equal(await held(a!, 'k'), 'new', 'the copy of the older value was not sent after the write');
    assert.equal(journal.isDirty(a!, 'k'), false);
    assert.equal(value(await exec(get('k'))), 'new');
  });

  it('conditional commands are decided by an upstream that is clean for the key', async () => {
    const { ups, journal, exec } = setup();
    const [a, b] = ups as FakeUpstream[];
    await a!.inner.store({ mode: 'set', key: 'lock.s', value: Buffer.from('stale'), flags: 0, deadline: 0 });
    journal.mark(a!, 'lock.s', 'delete'); // a missed the unlock
    const r = await exec({ kind: 'store', mode: 'add', key: 'lock.s', value: Buffer.from('me'), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false });
    assert.equal((r as { status?: string }).status, 'STORED', 'the stale lock on a does not block');
    assert.equal(await held(b!, 'lock.s'), 'me');
    assert.equal(await held(a!, 'lock.s'), 'me', 'and the result is replicated over it');
    assert.equal(journal.isDirty(a!, 'lock.s'), false);
  });

  it('an upstream that came back empty (fenced) does not grant a lock held elsewhere (hazard 2)', async () => {
    const a = new HealthyUpstream(new FakeUpstream('fake://0'), { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
    const b = new FakeUpstream('fake://1');
    const { exec } = setup({ ups: [a, b] });
    await b.inner.store({ mode: 'set', key: 'lock.s', value: Buffer.from('holder'), flags: 0, deadline: 0 });
    a.coldUntil = monotonicMs() + 60_000;
    const add = { kind: 'store', mode: 'add', key: 'lock.s', value: Buffer.from('me'), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false } as const;
    assert.deepEqual(await exec(add), { kind: 'status', status: 'NOT_STORED' });
    a.coldUntil = 0;
    await (a.inner as FakeUpstream).inner.flush();
    assert.equal(((await exec(add)) as { status?: string }).status, 'STORED', 'unfenced, the empty upstream decides (the fence is what prevented it)');
    await a.close();
  });

  it('a fenced upstream never decides in place of a warm one that fails or is dirty (hazard 2)', async () => {
    const a = new HealthyUpstream(new FakeUpstream('fake://0'), { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
    const b = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup({ ups: [a, b] });
    const add = (who: string): Command => ({ kind: 'store', mode: 'add', key: 'lock.s', value: Buffer.from(who), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false });
    assert.equal(((await exec(add('A'))) as { status?: string }).status, 'STORED');
    // a restarts empty and is fenced; b, which holds A's lock, has a blip.
    await (a.inner as FakeUpstream).inner.flush();
    a.coldUntil = monotonicMs() + 60_000;
    b.mode = 'fail';
    assert.equal((await exec(add('B'))).kind, 'error', 'no upstream may decide: refused, not granted');
    assert.equal(await held(a, 'lock.s'), undefined, 'the fenced upstream did not take the lock');
    b.mode = 'ok';
    // b answers again but is journaled for the key (the failed add may have applied there).
    assert.ok(journal.isDirty(b, 'lock.s'));
    assert.equal((await exec(add('C'))).kind, 'error', 'still nobody to decide while the fence lasts');
    // Nor may the repair copy "no lock" from the empty, fenced upstream over b's held lock.
    await repairer.tick();
    assert.equal(await held(b, 'lock.s'), 'A', 'the held lock survives the repair');
    assert.ok(journal.isDirty(b, 'lock.s'), 'the repair waits for the fence to end');
    await a.close();
  });

  it('a fenced upstream decides for the keys written to it since it came back, and only those', async () => {
    const a = new HealthyUpstream(new FakeUpstream('fake://0'), { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
    const b = new FakeUpstream('fake://1');
    const { exec } = setup({ ups: [a, b] });
    const add = (key: string, who: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(who), flags: 0, deadline: 0, cas: undefined, withCas: true, noreply: false });
    const status = async (c: Command): Promise<string> => {
      const r = await exec(c);
      return r.kind === 'status' ? r.status : r.kind;
    };
    a.fence(monotonicMs() + 60_000); // came back empty
    assert.equal(await status(add('lock.s', 'A')), 'STORED', 'decided by the warm upstream, copied into the fenced one');
    b.mode = 'fail';
    assert.equal(await status(add('lock.s', 'B')), 'NOT_STORED', 'the fenced one holds the lock taken since: it decides, correctly');
    assert.equal(await status({ kind: 'delete', key: 'lock.s', noreply: false }), 'DELETED');
    assert.equal(await status(add('lock.s', 'C')), 'STORED', 'released since: it grants it');
    assert.equal(await status(add('lock.t', 'D')), 'error', 'a key not written since it came back: nobody may decide');
    await a.close();
  });

  it('the repair leaves a key alone while a client write of it is still landing', async () => {
    const { ups, journal, repairer, exec } = setup();
    const [a, b] = ups as FakeUpstream[];
    await exec(set('k', 'v1'));
    // set k v2: a misses it at once (journaled); its copy to b is still on the way.
    a!.mode = 'fail';
    b!.close_gate();
    const write = exec(set('k', 'v2'));
    await new Promise((r) => setImmediate(r));
    a!.mode = 'ok';
    assert.ok(journal.isDirty(a!, 'k'));
    await repairer.tick(); // b still holds v1: copying now would clear a's entry with v1
    assert.ok(journal.isDirty(a!, 'k'), 'not repaired while the write is in flight');
    b!.open();
    await write;
    await repairer.tick();
    assert.equal(await held(a!, 'k'), 'v2');
    assert.equal(journal.isDirty(a!, 'k'), false);
  });

  it('overflow: the upstream is not read at all until every item written before it came back has expired', async () => {
    const { ups, journal, repairer, exec } = setup({ maxKeys: 2 });
    const [a] = ups as FakeUpstream[];
    const soon = Date.now() + 300;
    a!.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v', soon));
    assert.ok(journal.overflowed(a!));
    assert.equal(journal.size(a!), 0, 'the per-key entries are dropped: memory stays bounded');
    a!.mode = 'ok';
    await a!.inner.store({ mode: 'set', key: 'other', value: Buffer.from('stale'), flags: 0, deadline: 0 });
    await exec(set('other', 'fresh', soon));
    await repairer.tick();
    assert.ok(journal.overflowed(a!), 'still untrusted before the deadline');
    assert.equal(value(await exec(get('other'))), 'fresh');
    for (let i = 0; i < 100 && journal.overflowed(a!); i++) {
      await new Promise((r) => setTimeout(r, 20));
      await repairer.tick();
    }
    assert.equal(journal.overflowed(a!), undefined, 'trusted again once everything expired');
  });

  it('overflow on a cache upstream: flushed when it comes back, then trusted', async () => {
    const a = new MemoryUpstream('memory://a', 1 << 20);
    const b = new MemoryUpstream('memory://b', 1 << 20);
    const { journal, repairer } = setup({ ups: [a, b], maxKeys: 1 });
    await a.store({ mode: 'set', key: 'x', value: Buffer.from('stale'), flags: 0, deadline: 0 });
    journal.mark(a, 'k1', 'write');
    journal.mark(a, 'k2', 'write');
    assert.ok(journal.overflowed(a));
    await repairer.tick();
    assert.equal(journal.overflowed(a), undefined);
    assert.equal((await a.get(['x']))[0], undefined, 'flushed');
  });

  // An upstream overflows while down (a), comes back, and then b misses a write that a took: a
  // holds the only current copy of that key. Before, a counted as dirty for every key since time
  // 0, so b's stale copy looked the fresher and was served and repaired into the truth.
  function overflowThenMiss(opts: { cache: boolean }) {
    const a = new FakeUpstream('fake://0', opts.cache ? 'memory' : 'fake');
    const b = new FakeUpstream('fake://1');
    const t = setup({ ups: [a, b], maxKeys: 2 });
    return { ...t, a, b };
  }

  it('overflow: a key written to the overflowed upstream since is read from it, and repaired from it', async () => {
    const { a, b, journal, repairer, exec } = overflowThenMiss({ cache: false });
    await exec(set('sess', 'v1'));
    a.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
    assert.ok(journal.overflowed(a));
    a.mode = 'ok';
    b.mode = 'fail';
    const stored = await exec(set('sess', 'v2'));
    assert.equal(stored.kind === 'status' && stored.status, 'STORED');
    b.mode = 'ok';
    assert.equal(journal.isDirty(a, 'sess'), false, 'a took the last write of sess: it holds its current state');
    assert.equal(journal.isDirty(a, 'k1'), true, 'a key a missed while down is still not read from it');
    assert.equal(value(await exec(get('sess'))), 'v2');
    await repairer.tick();
    assert.equal(await held(b, 'sess'), 'v2', 'b is repaired from a, not taken as the truth');
    assert.equal(journal.isDirty(b, 'sess'), false);
    // A write a misses again makes it dirty for the key again.
    a.mode = 'fail';
    await exec(set('sess', 'v3'));
    a.mode = 'ok';
    assert.equal(journal.isDirty(a, 'sess'), true);
    assert.equal(value(await exec(get('sess'))), 'v3');
  });

  it('overflow: a set that timed out there and lands after a later delete is never read from it', async () => {
    const { a, journal, exec } = overflowThenMiss({ cache: false });
    a.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
    assert.ok(journal.overflowed(a));
    a.gateOnly = (call) => call === 'set sess';
    a.delay_late();
    await exec(set('sess', 'cart')); // times out on a, which may yet apply it
    assert.deepEqual(await exec(del('sess')), DELETED, 'reaches a (and b)');
    assert.equal(journal.isDirty(a, 'sess'), true, 'the delete reached a, but the timed-out set may land after it');
    a.open();
    await eventually('the late set landed on a', async () => (await held(a, 'sess')) === 'cart', SOON);
    assert.equal(value(await exec(get('sess'))), undefined, 'the destroyed session stays destroyed');
    await exec(set('sess', 'again'));
    assert.equal(journal.isDirty(a, 'sess'), true, 'no later write makes a trusted for it before a is');
  });

  it('overflow on a cache: not flushed while it holds the only current copy of a key', async () => {
    const { a, b, journal, repairer, exec } = overflowThenMiss({ cache: true });
    a.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
    a.mode = 'ok';
    b.mode = 'fail';
    await exec(set('cart', 'three items'));
    await repairer.tick(); // b still failing: its copy of cart cannot be repaired
    assert.ok(journal.overflowed(a), 'not flushed: the flush would lose the acknowledged write');
    assert.equal(await held(a, 'cart'), 'three items');
    assert.equal(value(await exec(get('cart'))), 'three items');
    b.mode = 'ok';
    await repairer.tick(); // b gets cart from a
    assert.equal(await held(b, 'cart'), 'three items');
    await repairer.tick(); // now the flush loses nothing
    assert.equal(journal.overflowed(a), undefined, 'flushed and trusted');
    assert.equal(await held(a, 'k1'), undefined, 'flushed');
    assert.equal(value(await exec(get('cart'))), 'three items');
  });

  it('overflow on the only upstream, a cache: what it took since is never flushed away', async () => {
    const a = new FakeUpstream('fake://0', 'memory');
    const { journal, repairer, exec } = setup({ ups: [a], maxKeys: 1 });
    a.mode = 'fail';
    for (const k of ['k1', 'k2']) await exec(set(k, 'v'));
    assert.ok(journal.overflowed(a));
    a.mode = 'ok';
    await exec(set('cart', 'one item'));
    await repairer.tick();
    assert.equal(await held(a, 'cart'), 'one item');
    assert.ok(!a.calls.includes('flush'));
  });

  it('overflow on a cache: a write received during the flush waits for it, and lands after it', async () => {
    const { a, b, journal, repairer, exec } = overflowThenMiss({ cache: true });
    a.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
    a.close_gate();
    const tick = repairer.tick(); // the flush waits at a's gate
    for (let i = 0; i < 100 && !a.calls.includes('flush'); i++) await new Promise(setImmediate);
    const write = exec(set('w', 'x'));
    for (let i = 0; i < 20; i++) await new Promise(setImmediate);
    assert.ok(!a.calls.includes('set w') && !b.calls.includes('set w'), 'the write waits until the flush is answered');
    a.open();
    await Promise.all([tick, write]);
    assert.equal(journal.overflowed(a), undefined);
    assert.deepEqual(a.calls.slice(-2), ['flush', 'set w']);
    assert.equal(journal.isDirty(a, 'w'), false, 'it landed after the flush');
    assert.equal(await held(a, 'w'), 'x');
  });

  // A flush that timed out may still be applied (a paused server resumes), over the writes that
  // reach the upstream meanwhile: until it can no longer land (the settle time after its timeout
  // and after the upstream last came back), those keys stay dirty there, and the repair leaves
  // the upstream alone (a copy it made would be wiped as well).
  it('a flush_all that timed out: the keys written since stay dirty on that upstream, and it is not repaired, until the flush can no longer land', async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000, allowFlush: true });
    const [a, b] = ups as FakeUpstream[];
    b!.gateOnly = (call) => call === 'flush';
    b!.delay_late();
    assert.equal((await exec(flushAll)).kind, 'error', 'timed out on b');
    assert.notEqual(journal.unknownLate(b!)?.at, undefined, 'b may still flush');
    assert.equal(journal.unknownLates, 1);
    assert.equal(journal.unknownLate(a!)?.at, undefined);
    await exec(set('sess', 'cart')); // reaches both
    b!.mode = 'fail';
    await exec(set('miss', 'v')); // refused by b (never applied there): dirty as usual
    b!.mode = 'late';
    assert.ok(journal.isDirty(b!, 'sess'), 'the late flush may wipe it');
    assert.equal(journal.isDirty(a!, 'sess'), false);
    await repairer.tick();
    assert.ok(journal.isDirty(b!, 'sess') && journal.isDirty(b!, 'miss'), 'nothing is copied to b while its flush may land');
    b!.open(); // the flush lands
    await eventually('the late flush emptied b', async () => (await held(b!, 'sess')) === undefined, SOON);
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick();
    assert.equal(journal.unknownLate(b!)?.at, undefined, 'settled');
    assert.equal(journal.unknownLates, 0);
    for (const [key, v] of [['sess', 'cart'], ['miss', 'v']]) {
      assert.equal(journal.isDirty(b!, key!), false);
      assert.equal(await held(b!, key!), v, `${key} copied again once the flush could no longer land`);
    }
    await exec(set('after', 'x'));
    assert.equal(journal.isDirty(b!, 'after'), false, 'a write after that is trusted as usual');
  });

  it('while a flush may land, a copy written there holds the newest write (the freshest copy) until it misses one', () => {
    const journal = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    const a = { name: 'fake://a' } as Upstream;
    const b = { name: 'fake://b' } as Upstream;
    journal.flushTimedOut(a);
    journal.written(a, 'k', 1); // a holds write 1, dirty (the flush may still wipe it)
    journal.mark(b, 'k', 'write', 2); // b missed it (its copy, a later sequence)
    assert.deepEqual(journal.freshest([a, b], [a, b], 'k'), [a]);
    journal.mark(a, 'k', 'write', 3); // a misses write 3 ...
    journal.mark(b, 'k', 'write', 3, true); // ... which timed out on b (it may have landed)
    journal.written(b, 'k', 4); // and b holds write 4 (still dirty: late)
    assert.deepEqual(journal.freshest([a, b], [a, b], 'k'), [b], 'a is dated by its miss of write 3');
  });

  it('while a flush may land, a copy where a set of the key itself timed out does not rank as holding the newest write: that set may land over it (fuzz seed 20779 with initial)', () => {
    const journal = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    const [a, b, c] = ['a', 'b', 'c'].map((n) => ({ name: `fake://${n}` }) as Upstream) as [Upstream, Upstream, Upstream];
    journal.mark(a, 'k', 'write', 1, true); // set 1 timed out on a: it may land there later
    journal.flushTimedOut(a);
    journal.written(a, 'k', 2); // set 2 reaches a; set 1, landing after it, would leave an item just the same
    journal.mark(c, 'k', 'write', 2); // c missed set 2
    journal.mark(b, 'k', 'write', 3); // b holds set 2 and missed only a touch (3) that reached a
    assert.deepEqual(journal.freshest([a, b, c], [a, b, c], 'k'), [b], 'not a: its item may be set 1\'s');
    assert.deepEqual(journal.freshest([a, c], [a, c], 'k'), [a], 'above a copy that missed set 2');
    assert.equal(journal.mayBeUndone(a, 'k'), false);
    // A delete there keeps the rank of the newest write: an item found says set 1 landed (undone).
    journal.written(a, 'k', 4, 'delete');
    journal.mark(b, 'k', 'delete', 4);
    assert.deepEqual(journal.freshest([a, b], [a, b], 'k'), [a]);
    assert.equal(journal.undone(a, 'k', true), true, 'an item after the delete: set 1 landed');
    assert.equal(journal.mayBeUndone(a, 'k'), false, 'ranked below the delete from then on');
  });

  it('while a flush may land, a copy holding the newest write where an older request of the key then times out: as if that request had timed out first', () => {
    const journal = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    const [a, b, c] = ['a', 'b', 'c'].map((n) => ({ name: `fake://${n}` }) as Upstream) as [Upstream, Upstream, Upstream];
    journal.flushTimedOut(a);
    journal.written(a, 'k', 2); // set 2 reaches a: it holds the newest write
    journal.mark(a, 'k', 'write', 1, true); // set 1, sent before it (another connection), times out there now
    journal.mark(b, 'k', 'write', 3); // b holds set 2 and missed only a touch (3)
    journal.mark(c, 'k', 'write', 2); // c missed set 2
    assert.deepEqual(journal.freshest([a, b], [a, b], 'k'), [b], 'not a: set 1 may land over set 2 there');
    assert.deepEqual(journal.freshest([a, c], [a, c], 'k'), [a], 'above a copy that missed set 2');
    // A delete held: an item found there later says the older set landed.
    journal.written(a, 'd', 2, 'delete');
    journal.mark(a, 'd', 'write', 1, true);
    journal.mark(b, 'd', 'delete', 2);
    assert.deepEqual(journal.freshest([a, b], [a, b], 'd'), [a]);
    assert.equal(journal.entry(a, 'd')?.op, 'delete', 'the repair still deletes it there');
    assert.equal(journal.undone(a, 'd', true), true, 'an item after the delete: set 1 landed');
  });

  it('finished writes remembered for a read in flight are at most journal-max-keys: beyond, that read takes any key as maybe written', () => {
    for (const [maxKeys, forgotten] of [[2, true], [3, false]] as const) {
      const journal = new RepairJournal({ maxKeys, dir: undefined, fsync: 'no' });
      const read = journal.readStarted();
      for (const k of ['a', 'b', 'c']) {
        journal.writeStarted(k);
        journal.writeFinished(k);
      }
      assert.equal(journal.writtenSince('z', read), forgotten, `journal-max-keys ${maxKeys}: three writes since the read began`);
      assert.equal(journal.writtenSince('c', read), true);
      journal.readFinished(read);
    }
  });

  it('a store that leaves the chain with a flush that may still land is forgotten: writes need no copy elsewhere for it any more', () => {
    const journal = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    const a = { name: 'fake://a' } as Upstream;
    const b = { name: 'fake://b' } as Upstream;
    journal.setChain([a, b]);
    journal.flushTimedOut(b);
    journal.flushTimedOut(b);
    assert.equal(journal.unknownLates, 1);
    journal.setChain([a]); // b leaves the chain (a reload): the repair, which settles it, no longer looks at it
    assert.equal(journal.unknownLates, 0);
    assert.equal(journal.unknownLate(b)?.at, undefined);
  });

  it('overflow on a cache whose flush timed out: a key written to it since is not taken as held until that flush can no longer land', async () => {
    const { a, journal, repairer, exec } = overflowThenMiss({ cache: true });
    repairer.options = { ...repairer.options, lateSettleMs: 60_000 };
    a.mode = 'fail';
    for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
    assert.ok(journal.overflowed(a));
    a.gateOnly = (call) => call === 'flush';
    a.delay_late();
    await repairer.tick(); // the repair's flush of the overflowed cache times out
    assert.ok(journal.overflowed(a), 'not trusted: the flush failed');
    await exec(set('w', 'x')); // reaches a
    assert.ok(journal.isDirty(a, 'w'), 'the flush may yet land over it: not read from a');
    a.open(); // it does
    await eventually('the late flush emptied a', async () => (await held(a, 'w')) === undefined, SOON);
    assert.equal(value(await exec(get('w'))), 'x');
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick(); // settled: flushed again, and trusted
    await repairer.tick(); // then w is copied again
    assert.equal(journal.overflowed(a), undefined);
    assert.equal(journal.isDirty(a, 'w'), false);
    assert.equal(await held(a, 'w'), 'x');
  });

  it('a store new to the chain (reload, or a restart with another config) is distrusted; a first start trusts all', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const v = { name: 'memcached://127.0.0.1:2' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 10, dir, fsync: 'always' });
      j1.load([u, v]);
      assert.deepEqual([j1.overflowed(u), j1.overflowed(v)], [undefined, undefined], 'a first start: nothing to distrust');
      j1.setChain([u]); // v leaves the chain (a reload) ...
      j1.setChain([u, v]); // ... and comes back: it missed whatever was written meanwhile
      assert.deepEqual([j1.overflowed(u) !== undefined, j1.overflowed(v) !== undefined], [false, true]);
      j1.trust(v);
      j1.setChain([u]); // v leaves again, and mcmux stops
      j1.close();
      const j2 = new RepairJournal({ maxKeys: 10, dir, fsync: 'always' });
      j2.load([u, v]); // restarted with v back in the config
      assert.deepEqual([j2.overflowed(u) !== undefined, j2.overflowed(v) !== undefined], [false, true]);
      j2.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('overflow: two caches that hold the same key are flushed one at a time, and the key survives', async () => {
    const a = new FakeUpstream('fake://0', 'memory');
    const b = new FakeUpstream('fake://1', 'memory');
    const { journal, repairer, exec } = setup({ ups: [a, b], maxKeys: 2 });
    for (const u of [a, b]) for (const k of ['x1', 'x2', 'x3']) journal.mark(u, k, 'write');
    assert.ok(journal.overflowed(a) && journal.overflowed(b), 'both distrusted (as after a reload that added both)');
    await exec(set('sess', 'logged-in'));
    for (let i = 0; i < 6 && (journal.overflowed(a) || journal.overflowed(b)); i++) {
      await repairer.tick();
      assert.equal(value(await exec(get('sess'))), 'logged-in', `after tick ${i + 1}`);
      assert.ok((await held(a, 'sess')) !== undefined || (await held(b, 'sess')) !== undefined, 'some cache keeps it');
    }
    assert.deepEqual([journal.overflowed(a), journal.overflowed(b)], [undefined, undefined], 'both trusted in the end');
    assert.equal(a.calls.filter((c) => c === 'flush').length + b.calls.filter((c) => c === 'flush').length, 2);
  });

  it('overflow on a cache that took more keys than it can remember: never flushed', async () => {
    const a = new FakeUpstream('fake://0', 'memory');
    const b = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup({ ups: [a, b], maxKeys: 2 });
    for (const k of ['x1', 'x2', 'x3']) journal.mark(a, k, 'write');
    for (const k of ['s1', 's2', 's3']) await exec(set(k, 'v'));
    await repairer.tick();
    assert.ok(journal.overflowed(a), 'what it holds alone is no longer known: no flush');
    assert.ok(!a.calls.includes('flush'));
    assert.equal(await held(a, 's3'), 'v');
  });

  it('a journal.log that is there but cannot be read stops the start (it is never taken as empty)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const file = join(dir, 'journal.log');
      mkdirSync(file); // a directory where the file should be
      assert.throws(() => new RepairJournal({ maxKeys: 10, dir, fsync: 'no' }).load([u]), /journal\.log is not a regular file/);
      // A FIFO there (which a plain read would wait on for ever): test/cli/cli.test.ts, in a process of its own.
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('overflow: the keys the overflowed upstream holds survive a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 1, dir, fsync: 'always' });
      j1.mark(u, 'k1', 'write');
      j1.mark(u, 'k2', 'write');
      assert.ok(j1.overflowed(u));
      j1.written(u, 'held', 5);
      j1.written(u, 'lost', 6);
      j1.mark(u, 'lost', 'write', 7);
      assert.deepEqual([j1.isDirty(u, 'held'), j1.isDirty(u, 'lost'), j1.isDirty(u, 'k1')], [false, true, true]);
      j1.close();
      const j2 = new RepairJournal({ maxKeys: 1, dir, fsync: 'always' });
      j2.load([u]);
      assert.ok(j2.overflowed(u));
      assert.deepEqual([j2.isDirty(u, 'held'), j2.isDirty(u, 'lost'), j2.isDirty(u, 'k1')], [false, true, true]);
      j2.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('overflow: the keys it holds are bounded by journal-max-keys, and a late copy of an older write does not count', () => {
    const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
    const j = new RepairJournal({ maxKeys: 2, dir: undefined, fsync: 'no' });
    for (const k of ['k1', 'k2', 'k3']) j.mark(u, k, 'write');
    assert.ok(j.overflowed(u));
    j.written(u, 'a', 10);
    j.written(u, 'b', 11);
    j.written(u, 'c', 12);
    assert.deepEqual([j.isDirty(u, 'a'), j.isDirty(u, 'b'), j.isDirty(u, 'c')], [false, false, true], 'the third is not learnt');
    j.mark(u, 'a', 'write', 20);
    j.written(u, 'a', 15); // a copy of a write older than the one it missed
    assert.equal(j.isDirty(u, 'a'), true);
    j.written(u, 'a', 21);
    assert.equal(j.isDirty(u, 'a'), false);
    // A miss of an OLDER write than the one it holds (a timed-out set that may still land after
    // the newer delete): it may hold the older value now.
    j.mark(u, 'a', 'write', 19);
    assert.equal(j.isDirty(u, 'a'), true);
  });

  it('a disk that refuses journal.log fails no request: the entries stay in memory and reach the file once it takes writes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    // The module object journal.ts calls into: ENOSPC on demand, for journal.log's descriptor only.
    const fs: typeof import('node:fs') = require('node:fs');
    const realWrite = fs.writeSync;
    const clocks = new TestClocks();
    try {
      const ups = [new FakeUpstream('fake://0'), new FakeUpstream('fake://1')];
      const journal = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      journal.load(ups);
      const errors: Error[] = [];
      journal.onWriteError = (e) => errors.push(e);
      const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
      const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
      const status = async (c: Command): Promise<string | undefined> => ((await exec(c)) as { status?: string }).status;
      const [a] = ups;
      a!.mode = 'fail';
      assert.equal(await status(set('k1', 'v1')), 'STORED'); // journaled: journal.log is open
      const fd = (journal as unknown as { fd: number }).fd;
      let full = true;
      fs.writeSync = ((f: number, ...rest: unknown[]) => {
        if (full && f === fd) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        return (realWrite as (...args: unknown[]) => number)(f, ...rest);
      }) as typeof fs.writeSync;
      assert.equal(await status(set('k2', 'v2')), 'STORED', 'the client is answered');
      assert.ok(journal.isDirty(a!, 'k2'), 'and the miss is kept, in memory');
      assert.equal(value(await exec(get('k2'))), 'v2');
      assert.equal(journal.writeErrors, 1);
      assert.deepEqual(errors.map((e) => e.message), ['ENOSPC: no space left on device, write']);
      // Within the second: not tried again (a full disk is not retried per change), not reported again.
      assert.equal(await status(set('k3', 'v3')), 'STORED');
      assert.equal(journal.writeErrors, 1);
      // The disk takes writes again; a change a second later writes the whole file afresh.
      full = false;
      clocks.advance(1500);
      assert.equal(await status(set('k4', 'v4')), 'STORED');
      journal.close();
      const back = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      back.load(ups);
      assert.deepEqual([...back.entries(a!)].map(([k]) => k).sort(), ['k1', 'k2', 'k3', 'k4']);
      assert.equal(errors.length, 1);
      back.close();
    } finally {
      fs.writeSync = realWrite;
      clocks.restore();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('dirty everywhere: the upstream that started missing writes last is the truth, also within one millisecond', () => {
    const u = { name: 'fake://0' } as Upstream;
    const v = { name: 'fake://1' } as Upstream;
    const realNow = Date.now;
    Date.now = () => 1_800_000_000_000; // every first miss in the same millisecond
    try {
      for (const [firstToMiss, truth] of [[u, v], [v, u]] as const) {
        const j = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
        j.mark(firstToMiss, 'k', 'write', j.writeStarted('k'));
        j.mark(truth, 'k', 'write', j.writeStarted('k'));
        j.mark(firstToMiss, 'k', 'write', j.writeStarted('k')); // a later miss does not re-date the first
        assert.deepEqual(j.freshest([u, v], [u, v], 'k'), [truth]);
        assert.deepEqual(j.freshest([u, v], [firstToMiss], 'k'), [], 'an older copy never stands in for it');
      }
    } finally {
      Date.now = realNow;
    }
  });

  it('dirty everywhere: after a restart the copies rank as they did (journal.log keeps the write order), and newer misses above them', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    const u = { name: 'fake://0' } as Upstream;
    const v = { name: 'fake://1' } as Upstream;
    const realNow = Date.now;
    let now = 1_800_000_000_000;
    Date.now = () => now;
    try {
      const j1 = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
      j1.load([u, v]);
      // v misses the first write but is dated later than u's miss of the second (a timeout is
      // dated when it is noticed): by date alone v would rank first.
      j1.mark(v, 'k', 'write', j1.writeStarted('k'));
      now -= 10;
      j1.mark(u, 'k', 'write', j1.writeStarted('k'));
      assert.deepEqual(j1.freshest([u, v], [u, v], 'k'), [u], 'in memory: by write order');
      j1.mark(u, 'k2', 'write', j1.writeStarted('k2'));
      j1.close();
      const line = readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').find((l) => l.startsWith('M ') && l.includes(Buffer.from('k2').toString('hex')));
      for (let i = 0; i < 2; i++) {
        // twice: the second loads the file the first compacted as it started
        const j2 = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
        j2.load([u, v]);
        assert.deepEqual(j2.freshest([u, v], [u, v], 'k'), [u], `after restart ${i + 1}: as before it`);
        assert.ok(j2.nextWriteSeq() > 3, 'the sequence goes on above the largest loaded');
        if (i === 1) {
          // v misses a write of k2 in this process, dated before u's loaded entry: v still has
          // every write before it, u has been missing them since an older one
          now -= 1000;
          j2.mark(v, 'k2', 'write', j2.writeStarted('k2'));
          assert.deepEqual(j2.freshest([u, v], [u, v], 'k2'), [v], 'v started missing writes last');
        }
        j2.close();
      }
      assert.match(line ?? '', /^M [0-9a-f]+ w [0-9a-f]+ \d+ 3$/, 'the entry line ends with its write order');
    } finally {
      Date.now = realNow;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a journal.log written before entries kept their write order still loads: those copies rank by when they were dated', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'fake://0' } as Upstream;
      const v = { name: 'fake://1' } as Upstream;
      const t = 1_800_000_000_000;
      writeFileSync(join(dir, 'journal.log'), [`S ${hex(u.name)}`, `S ${hex(v.name)}`, `M ${hex(u.name)} w ${hex('k')} ${t}`, `M ${hex(v.name)} d ${hex('k')} ${t + 5}`, ''].join('\n'));
      const j = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
      j.load([u, v]);
      assert.deepEqual([j.entry(u, 'k')?.op, j.entry(v, 'k')?.op], ['write', 'delete']);
      assert.equal(j.entry(v, 'k')?.firstSeq, 0, 'no write order on the line: none taken');
      assert.deepEqual(j.freshest([u, v], [u, v], 'k'), [v], 'dated later');
      j.close();
      const lines = readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('M '));
      assert.deepEqual(lines, [`M ${hex(u.name)} w ${hex('k')} ${t}`, `M ${hex(v.name)} d ${hex('k')} ${t + 5}`], 'compacted as they were: no order made up');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an overflow loaded from journal.log learns nothing until settled, yet a write meanwhile keeps it from being flushed as the only copy', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'fake://0' } as Upstream;
      const v = { name: 'fake://1' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
      j1.load([u, v]);
      j1.distrust(v);
      j1.close();
      const j2 = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
      j2.load([u, v]);
      const s1 = j2.writeStarted('k');
      j2.written(v, 'k', s1); // a request of the earlier process may still land over it
      j2.mark(u, 'k', 'write', s1);
      j2.writeFinished('k');
      assert.equal(j2.isDirty(v, 'k'), true, 'not read before what the earlier process sent has settled');
      assert.equal(j2.holdsAlone(v, [u, v]), true, 'but maybe the only copy of the write: not flushed (fuzz seed 2792)');
      j2.trust(v); // a flush_all emptied it: overflowed afresh, and still unsettled (fuzz seed 114)
      const s2 = j2.writeStarted('k2');
      j2.written(v, 'k2', s2);
      j2.writeFinished('k2');
      assert.equal(j2.isDirty(v, 'k2'), true, 'a flush_all does not settle what the earlier process sent');
      j2.close();
      const j3 = new RepairJournal({ maxKeys: 10, dir, fsync: 'no' });
      j3.load([u, v]);
      j3.mark(u, 'k2', 'write', j3.writeStarted('k2'));
      j3.writeFinished('k2');
      assert.equal(j3.holdsAlone(v, [u, v]), true, 'the maybe-copy is on file');
      j3.loadedSettled(v); // the repair found it settled
      const s3 = j3.writeStarted('k3');
      j3.written(v, 'k3', s3);
      j3.writeFinished('k3');
      assert.equal(j3.isDirty(v, 'k3'), false, 'a write started after the settle proves it holds the key');
      assert.equal(j3.isDirty(v, 'k2'), true, 'not one from before');
      j3.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('survives a restart: entries are appended to journal.log and loaded back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const v = { name: 'memcached://127.0.0.1:2' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.mark(u, 'a b\r\n', 'delete');
      j1.mark(u, 'k2', 'write');
      j1.mark(v, 'k3', 'write');
      j1.clear(u, 'k2');
      j1.noteDeadline(Date.now() + 1000);
      j1.close();
      assert.ok(readFileSync(join(dir, 'journal.log'), 'latin1').length > 0);
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([u]);
      assert.deepEqual([...j2.entries(u)].map(([k, e]) => [k, e.op]), [['a b\r\n', 'delete']]);
      assert.ok((j2.entry(u, 'a b\r\n')?.since ?? 0) > Date.now() - 60_000, 'when it first missed a write survives too');
      assert.equal(j2.size(v), 0, 'entries of an upstream no longer configured are dropped');
      assert.ok(j2.maxDeadline > Date.now());
      j2.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("each store's timeout is on file (R lines), and a reload that changes it writes it again", () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1', timeoutMs: 400 } as Upstream;
      const j = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j.load([u]);
      const rLines = (): string[] => readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('R '));
      assert.deepEqual(rLines(), [`R ${hex(u.name)} 400`]);
      j.setChain([{ name: u.name, timeoutMs: 50 } as Upstream]); // a reload: the same store, another timeout
      assert.deepEqual(rLines(), [`R ${hex(u.name)} 50`]);
      j.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keys learnt by a fenced upstream survive a restart by fence id, for the last two ids of each store', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const v = { name: 'memcached://127.0.0.1:2' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([u, v]);
      j1.fenceLearnt(u, 7, 'lock a\r\n');
      j1.fenceLearnt(u, 7, 'lock a\r\n'); // once on file
      j1.fenceLearnt(u, 9, 'cart');
      j1.fenceLearnt(v, 7, 'other');
      j1.close();
      assert.equal(readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('W ')).length, 3);
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([u]); // v left the config
      assert.deepEqual([...j2.fenceKeys(u, 7)], ['lock a\r\n']);
      assert.deepEqual([...j2.fenceKeys(u, 9)], ['cart']);
      assert.deepEqual([...j2.fenceKeys(u, 8)], [], 'a fence no key was learnt under');
      assert.deepEqual([...j2.fenceKeys(v, 7)], [], 'a store no longer configured');
      j2.fenceLearnt(u, 11, 'new'); // a third id: the oldest is dropped
      j2.close();
      const j3 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j3.load([u]); // from the file load() wrote afresh, and the line appended since
      assert.deepEqual([...j3.fenceKeys(u, 7)], []);
      assert.deepEqual([...j3.fenceKeys(u, 9)], ['cart']);
      assert.deepEqual([...j3.fenceKeys(u, 11)], ['new']);
      j3.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a pool whose ring was not whole survives a restart (J lines), until it is told whole again', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const pool = { name: 'memcached://127.0.0.1:1,127.0.0.1:2' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([pool]);
      j1.ringMoved(pool, false);
      j1.ringMoved(pool, false); // once on file
      j1.close();
      const jLines = (): string[] => readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('J '));
      assert.deepEqual(jLines(), [`J ${hex(pool.name)} 1`]);
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([pool]);
      assert.equal(j2.ringBroken(pool), true);
      assert.deepEqual(jLines(), [`J ${hex(pool.name)} 1`], 'kept as the file is compacted');
      j2.ringMoved(pool, true);
      j2.close();
      const j3 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j3.load([pool]);
      assert.equal(j3.ringBroken(pool), false);
      assert.deepEqual(jLines(), []);
      j3.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // Fuzz seed 2828 (MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1): a pool's
  // overflow loaded from journal.log waits for what the process before may have sent (lastLate);
  // a ring move right after the start distrusted it afresh and dropped that wait: the repair
  // flushed it at once, and a set of the process before landed after the flush, over a delete.
  it('an overflow loaded from journal.log and distrusted again still waits for what the process before sent', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const pool = { name: 'memcached://127.0.0.1:1,127.0.0.1:2' } as Upstream;
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([pool]);
      j1.distrust(pool);
      j1.close();
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([pool]);
      const loaded = j2.overflowed(pool)?.lastLate;
      assert.notEqual(loaded, undefined, 'loaded: waits for the requests of the process before');
      j2.distrust(pool, [pool], () => true, () => true); // a ring move
      assert.equal(j2.overflowed(pool)?.lastLate, loaded, 'THE WAIT DROPPED: the repair may flush it before they land');
      assert.equal(j2.overflowed(pool)?.unmoved, undefined, 'no key trusted as unmoved while they may land');
      j2.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the id a server last named survives a restart (I lines), once per change, and is dropped with its store', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    try {
      const redis = { name: 'redis://127.0.0.1:6379' } as Upstream;
      const other = { name: 'redis://127.0.0.1:6380' } as Upstream;
      const iLines = (): string[] => readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('I '));
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([redis, other]);
      assert.equal(j1.serverIdOf(redis), undefined);
      j1.serverIdSeen(redis, 'a'.repeat(40));
      j1.serverIdSeen(redis, 'a'.repeat(40)); // once on file
      j1.serverIdSeen(other, 'c'.repeat(40));
      j1.close();
      assert.deepEqual(iLines(), [`I ${hex(redis.name)} ${hex('a'.repeat(40))}`, `I ${hex(other.name)} ${hex('c'.repeat(40))}`]);
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([redis]); // other is no longer in the config
      assert.equal(j2.serverIdOf(redis), 'a'.repeat(40));
      assert.deepEqual(iLines(), [`I ${hex(redis.name)} ${hex('a'.repeat(40))}`], 'kept as the file is compacted; the removed store dropped');
      j2.serverIdSeen(redis, 'b'.repeat(40));
      j2.close();
      const j3 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j3.load([redis]);
      assert.equal(j3.serverIdOf(redis), 'b'.repeat(40), 'the last one told');
      j3.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("where this host's marker was acknowledged survives a restart (A lines), for any store, until a flush took it or it expired", (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'mcmux-journal-'));
    const clocks = new TestClocks();
    t.after(() => clocks.restore());
    try {
      const u = { name: 'memcached://127.0.0.1:1' } as Upstream;
      const server = { name: '127.0.0.1:2' } as Upstream; // a server of a pool: not in the chain itself
      const flushed = { name: 'memcached://127.0.0.1:3' } as Upstream;
      const day = 24 * 3600_000;
      const j1 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j1.load([u, flushed]);
      j1.markerAcked(u, clocks.wall + day);
      j1.markerAcked(u, clocks.wall + day + 2000); // written again a few seconds later: not on file again
      j1.markerAcked(server, clocks.wall + 2 * 3600_000);
      j1.markerAcked(flushed, clocks.wall + day);
      j1.markerGone(flushed);
      j1.close();
      const aLines = (): string[] => readFileSync(join(dir, 'journal.log'), 'latin1').split('\n').filter((l) => l.startsWith('A '));
      assert.deepEqual(aLines(), [`A ${hex(u.name)} ${clocks.wall + day}`, `A ${hex(server.name)} ${clocks.wall + 2 * 3600_000}`, `A ${hex(flushed.name)} ${clocks.wall + day}`, `A ${hex(flushed.name)} 0`]);
      clocks.advance(3600_000);
      const j2 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j2.load([u, flushed]);
      assert.equal(j2.markerUntil(u), clocks.wall - 3600_000 + day);
      assert.equal(j2.markerUntil(server), clocks.wall + 3600_000, 'a server of a pool is kept though not in the chain');
      assert.equal(j2.markerUntil(flushed), 0, 'flushed since it acknowledged the marker');
      assert.deepEqual(aLines(), [`A ${hex(u.name)} ${clocks.wall - 3600_000 + day}`, `A ${hex(server.name)} ${clocks.wall + 3600_000}`], 'compacted as loaded');
      j2.close();
      clocks.advance(2 * 3600_000); // the server's marker has expired
      const j3 = new RepairJournal({ maxKeys: 100, dir, fsync: 'always' });
      j3.load([u]);
      assert.equal(j3.markerUntil(server), 0, 'expired with the marker');
      assert.equal(aLines().length, 1);
      j3.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('timed-out requests that are applied late (a paused server that resumes)', () => {
  it('a set that timed out and lands after a later delete does not bring the session back', async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000 });
    const [a, b] = ups as FakeUpstream[];
    await exec(set('sess', 'v0'));
    a!.gateOnly = (call) => call === 'set sess';
    a!.delay_late();
    assert.equal((await exec(set('sess', 'cart')) as { status?: string }).status, 'STORED', 'b stored it; a timed out');
    assert.ok(journal.entry(a!, 'sess')?.late, 'a timeout: the entry is late');
    assert.deepEqual(await exec(del('sess')), DELETED, 'the session is destroyed, on a too');
    a!.open(); // a resumes, and applies the set that waited in its old connection
    await eventually('the late set landed on a', async () => (await held(a!, 'sess')) === 'cart', SOON);
    assert.equal(value(await exec(get('sess'))), undefined, 'the destroyed session stays destroyed');
    assert.ok(journal.isDirty(a!, 'sess'), 'the delete did not clear the late entry');
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), 'cart', 'no copy before the timed-out request may have landed');
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), undefined, 'the repair copied the current state: absent');
    assert.equal(journal.isDirty(a!, 'sess'), false);
    assert.equal(await held(b!, 'sess'), undefined);
    assert.equal(value(await exec(get('sess'))), undefined);
  });

  it('a read repair add that timed out and lands after a delete does not bring the session back', async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000 });
    const [a, b] = ups as FakeUpstream[];
    await b!.inner.store({ mode: 'set', key: 'sess', value: Buffer.from('cart'), flags: 0, deadline: 0 });
    a!.gateOnly = (call) => call === 'add sess';
    a!.delay_late();
    assert.equal(value(await exec(get('sess'))), 'cart', 'a missed, b had it: read repair adds it to a');
    await eventually('the add timed out', () => journal.entry(a!, 'sess')?.late !== undefined && journal.entry(a!, 'sess')?.late !== 0, SOON);
    assert.deepEqual(await exec(del('sess')), DELETED);
    a!.open();
    await eventually('the late add landed on a', async () => (await held(a!, 'sess')) === 'cart', SOON);
    assert.equal(value(await exec(get('sess'))), undefined, 'the destroyed session stays destroyed');
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), undefined);
    assert.equal(journal.isDirty(a!, 'sess'), false);
  });

  it("a repair's copy that timed out and lands after a client delete is copied over again", async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000 });
    const [a] = ups as FakeUpstream[];
    a!.mode = 'fail';
    await exec(set('sess', 'cart')); // a missed it (refused: nothing late)
    assert.equal(journal.entry(a!, 'sess')?.late, 0);
    a!.gateOnly = (call) => call === 'set sess';
    a!.delay_late();
    await repairer.tick(); // copies 'cart' to a: times out
    assert.ok(journal.entry(a!, 'sess')?.late, "the repair's timeout makes the entry late");
    assert.deepEqual(await exec(del('sess')), DELETED);
    a!.open();
    await eventually("the repair's copy landed late", async () => (await held(a!, 'sess')) === 'cart', SOON);
    assert.equal(value(await exec(get('sess'))), undefined);
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), undefined);
    assert.equal(journal.isDirty(a!, 'sess'), false);
  });

  it('the copy also waits a while after the upstream came back from down (it works through its old sockets then)', async (t) => {
    const fake = new FakeUpstream('fake://0');
    const a = new HealthyUpstream(fake, { downAfter: 1, probeMinMs: 5, probeMaxMs: 5 }, () => {});
    const b = new FakeUpstream('fake://1');
    const { journal, repairer, exec } = setup({ ups: [a, b], lateSettleMs: 1000 });
    const clocks = new TestClocks();
    t.after(() => {
      clocks.restore();
      return a.close();
    });
    const t0 = clocks.mono;
    fake.gateOnly = (call) => call === 'set sess';
    fake.delay_late();
    await exec(set('sess', 'cart')); // times out on a: late entry, a goes down
    assert.equal(journal.entry(a, 'sess')?.late, t0);
    assert.equal(a.state === 'down' || a.state === 'probing', true);
    fake.mode = 'fail'; // stays down: the probes fail
    clocks.advance(5000); // long after the timeout
    fake.open(); // resumes: the probe succeeds, and the old set lands
    await eventually('a is back', () => a.state === 'healthy', SOON);
    assert.equal(a.backAt, t0 + 5000);
    await repairer.tick();
    assert.equal(journal.isDirty(a, 'sess'), true, 'not copied right after it came back');
    clocks.stepWall(3_600_000); // the system clock is set an hour ahead: the wait is not cut short
    await repairer.tick();
    assert.equal(journal.isDirty(a, 'sess'), true, 'a wall-clock step does not end the wait');
    clocks.advance(1001);
    await repairer.tick();
    assert.equal(journal.isDirty(a, 'sess'), false, 'copied once it has been back a while');
    assert.equal(await held(a, 'sess'), 'cart');
  });

  it('a flush that trusts an upstream again keeps the keys whose requests may still land there (overflowed cache, and flush_all)', async () => {
    for (const how of ['overflow', 'flush_all'] as const) {
      const a = new FakeUpstream('fake://0', 'memory');
      const b = new FakeUpstream('fake://1');
      const { journal, repairer, exec } = setup({ ups: [a, b], maxKeys: 2, lateSettleMs: 60_000 });
      a.gateOnly = (call) => call === 'set sess';
      a.delay_late();
      await exec(set('sess', 'cart')); // times out on a: late
      assert.deepEqual(await exec(del('sess')), DELETED);
      if (how === 'overflow') {
        a.mode = 'fail';
        for (const k of ['k1', 'k2', 'k3']) await exec(set(k, 'v'));
        a.mode = 'late'; // still holding the set, for the keys it filters; the rest pass
        assert.ok(journal.overflowed(a));
        await repairer.tick(); // a cache that overflowed is flushed, then trusted
        assert.equal(journal.overflowed(a), undefined, `${how}: trusted again`);
      } else {
        journal.trust(a); // what a successful flush_all does
      }
      assert.ok(journal.isDirty(a, 'sess'), `${how}: the key whose set may still land stays dirty`);
      a.open(); // the old set lands after the flush
      await eventually(`${how}: the late set landed`, async () => (await held(a, 'sess')) === 'cart', SOON);
      assert.equal(value(await exec(get('sess'))), undefined, `${how}: the destroyed session stays destroyed`);
      repairer.options = { ...repairer.options, lateSettleMs: 0 };
      await repairer.tick();
      assert.equal(await held(a, 'sess'), undefined, `${how}: copied again once settled`);
      assert.equal(journal.isDirty(a, 'sess'), false);
    }
  });

  it('a pool whose flush failed on one server and timed out on another fails with the timeout (it may still land)', async () => {
    const fakes = [new FakeUpstream('fake://s0'), new FakeUpstream('fake://s1')];
    const servers = fakes.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream }));
    const pool = new MemcachedPool('memcached://s0,s1', servers, { distribution: 'ketama', namespace: '', eject: false });
    fakes[0]!.mode = 'fail';
    fakes[1]!.mode = 'timeout';
    await assert.rejects(pool.flush(), (e) => (e as { late?: boolean }).late === true);
  });

  it('the came-back wait looks at the servers of a pool too (a server comes back; the pool never went down)', () => {
    const servers = [new FakeUpstream('fake://s0'), new FakeUpstream('fake://s1')].map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream }));
    const pool = new MemcachedPool('memcached://s0,s1', servers, { distribution: 'ketama', namespace: '', eject: false });
    const wrapper = new HealthyUpstream(pool, { downAfter: 3, probeMinMs: 10, probeMaxMs: 20 }, () => {});
    assert.equal(cameBackAt(wrapper), 0);
    (pool.members()[1] as HealthyUpstream).backAt = 5000;
    assert.equal(cameBackAt(wrapper), 5000);
  });

  it('a copy with a late entry that a later write reached is fresher than one that missed that write (set, delete, lock)', async (t) => {
    // Each write below reaches b only, where the request that timed out may still land over it:
    // not acknowledged (a maybe), but b holds it, and ranks so.
    const onLateCopyOnly = (r: Reply): boolean => r.kind === 'error' && /may still land over it/.test(r.message);
    for (const last of ['set', 'delete'] as const) {
      const { ups, exec } = setup({ lateSettleMs: 60_000 });
      const [a, b] = ups as FakeUpstream[];
      await exec(set('c', 'v1'));
      b!.mode = 'timeout';
      await exec(set('c', 'v2')); // b: late entry
      b!.mode = 'ok';
      a!.mode = 'fail';
      const r = last === 'set' ? await exec(set('c', 'v3')) : await exec(del('c')); // reaches b only
      assert.ok(onLateCopyOnly(r), `${last} stored on b only: ${JSON.stringify(r)}`);
      a!.mode = 'ok';
      // Both are dirty for c now: b holds the newest write, a missed it.
      assert.equal(value(await exec(get('c'))), last === 'set' ? 'v3' : undefined, `after the ${last}, never a's v2`);
    }
    {
      // The same when the copy that missed the write says so a millisecond later than the other
      // took it: the order of the answers must not decide which is fresher.
      const { ups, exec, journal } = setup({ lateSettleMs: 60_000 });
      const [a, b] = ups as FakeUpstream[];
      await exec(set('c', 'v1'));
      b!.mode = 'timeout';
      await exec(set('c', 'v2'));
      b!.mode = 'ok';
      t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
      a!.close_gate();
      const written = exec(set('c', 'v3'));
      // b took the set: its late entry now ranks just above that write's sequence (x.5).
      await eventually('b took the set', () => a!.calls.at(-1) === 'set c' && (journal.entry(b!, 'c')?.firstSeq ?? 0) % 1 !== 0, SOON);
      t.mock.timers.tick(5);
      a!.kill(); // a fails 5 ms after b stored
      assert.ok(onLateCopyOnly(await written));
      a!.mode = 'ok';
      assert.equal(value(await exec(get('c'))), 'v3', 'b holds the newest write');
      t.mock.timers.reset();
    }
    const { ups, exec } = setup({ lateSettleMs: 60_000 });
    const [a, b] = ups as FakeUpstream[];
    b!.mode = 'timeout';
    await exec(del('lock'));
    b!.mode = 'ok';
    a!.mode = 'fail';
    assert.ok(onLateCopyOnly(await exec(set('lock', 'held'))), 'the lock is taken (b only), a maybe for the client');
    a!.mode = 'ok';
    const add: Command = { kind: 'store', mode: 'add', key: 'lock', value: Buffer.from('mine'), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false };
    const r = await exec(add);
    assert.ok(r.kind === 'error' || (r.kind === 'status' && r.status === 'NOT_STORED'), `a held lock is never granted again: ${JSON.stringify(r)}`);
  });

  it("a repair's delete that timed out is copied again as the current state, not replayed over a set that came after it", async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000 });
    const [a, b] = ups as FakeUpstream[];
    a!.mode = 'fail';
    await exec(set('sess', 'v1'));
    await exec(del('sess')); // a journaled 'delete'
    a!.gateOnly = (call) => call === 'delete sess';
    a!.delay_late();
    const repair = repairer.tick(); // its delete waits in a's socket
    await eventually('the repair sent its delete', () => a!.calls.filter((c) => c === 'delete sess').length === 2, SOON);
    a!.open(); // a resumes: the repair's delete is applied now; its answer is lost (a timeout)
    assert.equal((await exec(set('sess', 'v2')) as { status?: string }).status, 'STORED', 'on both');
    await repair;
    assert.equal(journal.entry(a!, 'sess')?.op, 'write', 'journaled as a copy of the current state');
    repairer.options = { ...repairer.options, lateSettleMs: 0 };
    await repairer.tick();
    assert.equal(await held(a!, 'sess'), 'v2', 'the acknowledged set is on a');
    b!.mode = 'fail';
    assert.equal(value(await exec(get('sess'))), 'v2');
  });

  it('a delete that times out after the set behind it reached that upstream is journaled as a copy, not replayed over the set', async () => {
    const a = new FakeUpstream('fake://0');
    const b = new FakeUpstream('fake://1');
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: [a, b], journal, minCopies: 1, writeWait: 'copies', allowFlush: false }, source, () => {});
    const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    await exec(set('sess', 'v1'));
    a.gateOnly = (call) => call === 'delete sess';
    a.delay_late();
    assert.deepEqual(await exec(del('sess')), DELETED, 'answered by b (write-wait copies)');
    assert.equal((await exec(set('sess', 'v2')) as { status?: string }).status, 'STORED');
    await eventually('the delete timed out on a', () => (journal.entry(a, 'sess')?.late ?? 0) !== 0, SOON);
    assert.equal(journal.entry(a, 'sess')?.op, 'write');
    a.open(); // the old delete lands on a, after the set
    await eventually('the late delete landed', async () => (await held(a, 'sess')) === undefined, SOON);
    await repairer.tick();
    assert.equal(await held(a, 'sess'), 'v2', 'the current state copied back');
    b.mode = 'fail';
    assert.equal(value(await exec(get('sess'))), 'v2');
  });

  it('a delete whose only current copy timed out is SERVER_ERROR, not NOT_FOUND from an upstream that missed the set', async () => {
    const { ups, exec } = setup({ lateSettleMs: 60_000 });
    const [a, b] = ups as FakeUpstream[];
    b!.mode = 'fail';
    await exec(set('k', 'v')); // a only
    b!.mode = 'ok';
    a!.mode = 'timeout';
    const r = await exec(del('k'));
    assert.equal(r.kind, 'error', `not NOT_FOUND: ${JSON.stringify(r)}`);
  });

  it('a write refused outright (never sent) is cleared by the next write, as before', async () => {
    const { ups, journal, exec } = setup({ lateSettleMs: 60_000 });
    const [a] = ups as FakeUpstream[];
    a!.mode = 'fail';
    await exec(set('sess', 'cart'));
    a!.mode = 'ok';
    await exec(set('sess', 'cart2'));
    assert.equal(journal.isDirty(a!, 'sess'), false);
    assert.equal(value(await exec(get('sess'))), 'cart2');
  });

  it('settling entries do not hold back the repair of the others', async () => {
    const { ups, journal, repairer, exec } = setup({ lateSettleMs: 60_000 });
    const [a] = ups as FakeUpstream[];
    a!.gateOnly = (call) => call.startsWith('set late');
    a!.delay_late();
    await Promise.all(Array.from({ length: 50 }, (_, i) => exec(set(`late${i}`, 'x'))));
    a!.mode = 'fail';
    await exec(set('plain', 'y'));
    a!.open();
    assert.equal(journal.size(a!), 51);
    repairer.options = { ...repairer.options, rate: 20 }; // 2 keys a tick, 8 looked at
    for (let i = 0; i < 20 && journal.isDirty(a!, 'plain'); i++) await repairer.tick();
    assert.equal(journal.isDirty(a!, 'plain'), false, 'the plain entry was repaired while the late ones settle');
    assert.equal(journal.size(a!), 50);
  });
});

describe('health', () => {
  it('down after N consecutive failures: skipped at once, probed, back when the probe succeeds', async () => {
    const changes: string[] = [];
    const fake = new FakeUpstream('fake://0');
    const u = new HealthyUpstream(fake, { downAfter: 2, probeMinMs: 10, probeMaxMs: 20 }, (_u, from, to) => changes.push(`${from}->${to}`));
    fake.mode = 'fail';
    await assert.rejects(u.get(['k']));
    assert.equal(u.state, 'suspect');
    await assert.rejects(u.get(['k']));
    assert.equal(u.state, 'down');
    const calls = fake.calls.length;
    await assert.rejects(u.get(['k']), /is (down|probing)/);
    assert.equal(fake.calls.length, calls, 'a down upstream is not asked');
    fake.mode = 'ok';
    for (let i = 0; i < 200 && u.state !== 'healthy'; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(u.state, 'healthy');
    assert.deepEqual(await u.get(['k']), [undefined]);
    assert.deepEqual(changes.slice(0, 3), ['healthy->suspect', 'suspect->down', 'down->probing']);
    assert.equal(changes[changes.length - 1], 'probing->healthy');
    await u.close();
  });

  it('a success resets the failure count', async () => {
    const fake = new FakeUpstream('fake://0');
    const u = new HealthyUpstream(fake, { downAfter: 2, probeMinMs: 10, probeMaxMs: 20 }, () => {});
    fake.mode = 'fail';
    await assert.rejects(u.get(['k']));
    fake.mode = 'ok';
    await u.get(['k']);
    assert.equal(u.state, 'healthy');
    fake.mode = 'fail';
    await assert.rejects(u.get(['k']));
    assert.equal(u.state, 'suspect');
    await u.close();
  });
});

describe('cold detector', () => {
  it('fences an upstream whose marker disappeared (restarted or flushed), not one seen for the first time', async () => {
    const { ColdDetector } = await import('../../src/router/cold-detector');
    const mem = new MemoryUpstream('memory://a', 1 << 20);
    const u = new HealthyUpstream(mem, { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 }, () => {});
    const d = new ColdDetector(() => [u], 30_000, silent);
    await d.check(u);
    assert.equal(u.fenced, false, 'first sight: nothing known, nothing fenced');
    assert.ok((await mem.get([d.key]))[0], 'the marker is written');
    await d.check(u);
    assert.equal(u.fenced, false);
    await mem.flush(); // the store came back empty
    await d.check(u);
    assert.equal(u.fenced, true);
    assert.ok(u.coldUntil > monotonicMs() + 20_000);
    await d.check(u); // the marker is back (written by the check above): the fence still holds
    assert.equal(u.fenced, true, 'a fence for a missing marker lasts its whole time');
    await u.close();
  });

  it('a fence set as a precaution (a reconnect) is lifted by the next check that finds the marker', async () => {
    const { ColdDetector } = await import('../../src/router/cold-detector');
    const fake = new FakeUpstream('fake://a');
    let healthy = (): void => {};
    const u = new HealthyUpstream(fake, { downAfter: 1, probeMinMs: 10, probeMaxMs: 10 }, (_u, _from, to) => {
      if (to === 'healthy') healthy();
    });
    const d = new ColdDetector(() => [u], 30_000, silent);
    await d.check(u); // the marker is written
    // Reconnected while still unreachable: fenced at once, and the check cannot answer.
    fake.mode = 'fail';
    await assert.rejects(u.get(['x'])); // down (down-after 1): the check sees it unusable
    d.reconnected(u);
    assert.equal(u.fenced, true);
    await d.check(u);
    assert.equal(u.fenced, true, 'no answer: the fence stays');
    // Reachable again (without a new reconnect): the periodic check finds the marker.
    const back = new Promise<void>((r) => (healthy = r));
    fake.mode = 'ok';
    // Its probe succeeds (the health timer is unref'd: a bounded timer keeps the test alive).
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([back, new Promise((_, reject) => (bound = setTimeout(() => reject(new Error('no probe within 5 s')), 5000)))]);
    clearTimeout(bound);
    await d.check(u);
    assert.equal(u.fenced, false, 'the marker is there: it did not restart, the fence is lifted');
    await u.close();
  });
});

describe('writes remembered for reads in flight', () => {
  const journal = (): RepairJournal => new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });

  it('a write that starts after a read began is seen by it until the read is over', () => {
    const j = journal();
    const seq = j.readStarted();
    j.writeStarted('k');
    assert.equal(j.writtenSince('k', seq), true, 'in flight');
    j.writeFinished('k');
    assert.equal(j.writtenSince('k', seq), true, 'finished, but after the read began');
    assert.equal(j.writtenSince('other', seq), false);
    j.readFinished(seq);
    assert.equal(j.writesRemembered, 0, 'no read left to ask: forgotten');
  });

  it('a read repair pinning the same sequence keeps the writes remembered after the read', () => {
    const j = journal();
    const seq = j.readStarted();
    j.readStarted(seq); // the read repair's add, sent before the read answers
    j.writeStarted('k');
    j.writeFinished('k');
    j.readFinished(seq); // the read answers
    assert.equal(j.writtenSince('k', seq), true, 'the add still in flight must learn of the write');
    j.readFinished(seq);
    assert.equal(j.writesRemembered, 0);
  });

  it('under a steady load, with some read always in flight, holds only the writes since the oldest read', () => {
    const j = journal();
    const reads: number[] = [j.readStarted()];
    let most = 0;
    for (let i = 0; i < 50_000; i++) {
      const key = `k${i % 20_000}`;
      j.writeStarted(key);
      j.writeFinished(key);
      if (i % 100 === 99) {
        // Reads overlap: a new one starts before the oldest ends, so one is always in flight.
        reads.push(j.readStarted());
        j.readFinished(reads.shift() as number);
      }
      most = Math.max(most, j.writesRemembered);
    }
    // About one read's lifetime of writes (100), plus what pruning a few per call leaves behind;
    // before, nothing was forgotten until no read at all was in flight: here, all 20,000 keys.
    assert.ok(most <= 400, `at most ${most} writes remembered`);
  });

  it('beyond its bound it forgets the oldest, and reads older than them are told "maybe written"', () => {
    const j = journal();
    const old = j.readStarted(); // a read that never ends
    for (let i = 0; i < 100_001; i++) {
      j.writeStarted(`w${i}`);
      j.writeFinished(`w${i}`);
    }
    assert.ok(j.writesRemembered <= 100_000);
    assert.equal(j.writtenSince('w0', old), true, 'forgotten, so maybe written');
    assert.equal(j.writtenSince('never-written', old), true, 'a read this old cannot know');
    const fresh = j.readStarted();
    assert.equal(j.writtenSince('never-written', fresh), false, 'a read that began after is told the truth');
  });
});

describe('copies on their way (write-wait copies): markPending, settled, whenSettled', () => {
  const journal = (): RepairJournal => new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const u = new FakeUpstream('fake://slow');
  const landed = (p: Promise<void> | undefined): Promise<boolean> => (p === undefined ? Promise.resolve(false) : Promise.race([p.then(() => true), new Promise<boolean>((r) => setImmediate(() => r(false)))]));

  it('a read waits for the copies acknowledged before it began, not for a later one: once they land it may take the key there again (review-h22 finding 2)', async () => {
    const j = journal();
    const s1 = j.writeStarted('k');
    j.markPending(u, 'k', s1);
    const read = j.readStarted();
    const s2 = j.writeStarted('k');
    j.markPending(u, 'k', s2); // acknowledged after the read began
    assert.equal(j.isDirty(u, 'k', read), true, 'the copy of s1 keeps the read off u');
    const waited = j.whenSettled(u, 'k', read);
    assert.ok(waited, 'the read waits for s1');
    assert.equal(await landed(waited), false, 'not before s1 lands');
    j.settled(u, 'k', s1);
    assert.equal(await landed(waited), true, 'woken once s1 landed, though s2 is still on its way');
    assert.equal(j.isDirty(u, 'k', read), false, 'the read may take the key from u (s2 overlaps it)');
    assert.equal(j.isDirty(u, 'k', j.readStarted()), true, 'a read begun after s2 was acknowledged may not');
    assert.equal(j.whenSettled(u, 'k', read), undefined, 'nothing left for the first read to wait for');
    j.settled(u, 'k', s2);
    assert.equal(j.isDirty(u, 'k'), false);
  });

  it('acknowledged out of order: the earlier write landing leaves the reads the later one was acknowledged before waiting', async () => {
    const j = journal();
    const s1 = j.writeStarted('k');
    const s2 = j.writeStarted('k');
    j.markPending(u, 'k', s2); // s2 acknowledged first
    const read = j.readStarted();
    j.markPending(u, 'k', s1); // s1 after the read began
    const waited = j.whenSettled(u, 'k', read);
    assert.ok(waited);
    j.settled(u, 'k', s1);
    assert.equal(j.isDirty(u, 'k', read), true, 's2, acknowledged before the read, is still on its way');
    assert.equal(await landed(waited), false, 'still waiting for s2');
    j.settled(u, 'k', s2);
    assert.equal(await landed(waited), true);
    assert.equal(j.isDirty(u, 'k', read), false);
  });

  it('a delete on its way last: no wait (it can only make u miss too)', () => {
    const j = journal();
    const s1 = j.writeStarted('k');
    j.markPending(u, 'k', s1);
    const s2 = j.writeStarted('k');
    j.markPending(u, 'k', s2, true);
    assert.equal(j.whenSettled(u, 'k', j.readStarted()), undefined);
  });
});

describe('an overflowed cache lacking keys unread (Overflow.known asks)', () => {
  it('keeps them through the overflow, in order, a failed read to the back, each gone once read', () => {
    const a = new FakeUpstream('memcached://a:11211', 'memcached');
    const b = new FakeUpstream('memcached://b:11211', 'memcached');
    const j = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    for (const k of ['k1', 'k2', 'k3']) j.lacks(a, k, j.writeStarted(k), true);
    j.distrust(a, [a, b]);
    assert.notEqual(j.overflowed(a), undefined);
    assert.deepEqual(j.unreadKeys(a), ['k1', 'k2', 'k3']);
    j.requeueUnread(a, 'k1');
    assert.deepEqual(j.unreadKeys(a), ['k2', 'k3', 'k1'], 'a failed read: to the back');
    j.asked(a, 'k2', false);
    j.asked(a, 'k3', true);
    assert.deepEqual(j.unreadKeys(a), ['k1']);
    assert.equal(j.isDirty(a, 'k2'), true, 'lacks k2: dirty as any key it was not told of');
    assert.equal(j.isDirty(a, 'k3'), false, 'holds k3: read there, as a key written since the overflow');
    j.requeueUnread(a, 'k2');
    assert.deepEqual(j.unreadKeys(a), ['k1'], 'a key read is not put back');
  });

  it('the repair reads them at repair-rate a tick (10 a second: one), not all at once', async () => {
    const a = new FakeUpstream('memcached://a:11211', 'memcached');
    const b = new FakeUpstream('memcached://b:11211', 'memcached');
    const journal = new RepairJournal({ maxKeys: 10, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: [a, b], journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
    const repairer = new Repairer(() => router.context, { rate: 10, flushCaches: true, lateSettleMs: 0 }, silent);
    // An item mcmux wrote lives an hour: a is not trusted by expiry within the test.
    assert.equal((await router.execute(set('other', 'v', Date.now() + 3_600_000))).kind, 'status');
    for (const k of ['k1', 'k2', 'k3']) {
      const seq = journal.writeStarted(k);
      journal.lacks(a, k, seq, true);
      journal.mark(b, k, 'write', seq); // b missed it: a may hold the only copy
      journal.writeFinished(k);
    }
    journal.distrust(a, [a, b]);
    await repairer.tick();
    const reads = a.calls.filter((c) => c.startsWith('get '));
    assert.deepEqual(reads, ['get k1'], `one read a tick: ${a.calls.join(', ')}`);
    assert.deepEqual(journal.unreadKeys(a), ['k2', 'k3']);
  });
});
