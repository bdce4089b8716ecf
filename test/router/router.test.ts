import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inspect } from 'node:util';
import { type Command, type Reply, EXPIRED } from '../../src/command/command';
import type { WriteWait } from '../../src/router/context';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { CasSeal, DEFAULT_HEALTH, HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats } from '../helpers/fake-upstream';
import { type Poll, eventually } from '../helpers/poll';

const source = noStats;

function setup(n = 2, opts: { minCopies?: number; writeWait?: WriteWait; allowFlush?: boolean; hedgeMs?: number } = {}) {
  const ups = Array.from({ length: n }, (_, i) => new FakeUpstream(`fake://${i}`));
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router(
    { upstreams: ups, journal, hedgeMs: opts.hedgeMs ?? 0, minCopies: opts.minCopies ?? 1, writeWait: opts.writeWait ?? 'all', allowFlush: opts.allowFlush ?? false },
    source,
    () => {},
  );
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { ups, router, exec, journal };
}

const set = (key: string, value: string, deadline = 0, flags = 0): Command => ({
  kind: 'store', mode: 'set', key, value: Buffer.from(value), flags, deadline, cas: undefined, withCas: true, noreply: false,
});
const store = (mode: 'add' | 'replace' | 'append' | 'prepend' | 'cas', key: string, value: string, cas?: bigint): Command => ({
  kind: 'store', mode, key, value: Buffer.from(value), flags: 7, deadline: 0, cas, withCas: true, noreply: false,
});
const get = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: undefined });
const gets = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: true, touch: undefined });
const del = (key: string): Command => ({ kind: 'delete', key, noreply: false });
const arith = (op: 'incr' | 'decr', key: string, delta: bigint): Command => ({
  kind: 'arith', op, key, delta, initial: undefined, deadline: 0, noreply: false,
});

function values(r: Reply): Array<string | undefined> {
  assert.equal(r.kind, 'values', inspect(r));
  return (r as Extract<Reply, { kind: 'values' }>).hits.map((h) => h?.value.toString());
}

const num = (r: Reply): unknown => (r.kind === 'number' ? r.value : r);

async function direct(u: FakeUpstream, key: string): Promise<string | undefined> {
  const [h] = await u.inner.get([key]);
  return h?.value.toString();
}

/** How `eventually` waits for background work (read repair, replication) here: 200 checks, one setImmediate apart. */
const TURNS: Poll = { checks: 200, every: 'turn' };

describe('router: replicated writes', () => {
  it('set goes to every upstream', async () => {
    const { ups, exec } = setup(3);
    assert.deepEqual(await exec(set('k', 'v')), { kind: 'status', status: 'STORED', cas: 1n });
    for (const u of ups) assert.equal(await direct(u, 'k'), 'v');
  });

  it('a set tells the upstreams whether the client is told its unique (binary) or not (text)', async () => {
    const { ups, exec } = setup(2);
    const asked = () => ups.map((u) => u.storeRequests.at(-1)?.withCas);
    const textSet: Command = { kind: 'store', mode: 'set', key: 'k', value: Buffer.from('v'), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false };
    assert.deepEqual(await exec(textSet), { kind: 'status', status: 'STORED' });
    assert.deepEqual(asked(), [false, false]);
    assert.deepEqual(await exec(set('k', 'w')), { kind: 'status', status: 'STORED', cas: 2n });
    assert.deepEqual(asked(), [true, true]);
    // Conditional commands: the authority's unique is the answer, its copies' are never read.
    const added = await exec(store('add', 'a', 'x'));
    assert.equal(added.kind === 'status' && added.status, 'STORED');
    assert.deepEqual(asked(), [undefined, false]);
    const appended = await exec(store('append', 'a', 'y'));
    assert.equal(appended.kind === 'status' && appended.status, 'STORED');
    assert.deepEqual(asked(), [undefined, false], 'append: the authority, then the value read back and copied');
    await exec(set('n', '5'));
    const incr = await exec(arith('incr', 'n', 2n));
    assert.equal(incr.kind === 'number' && incr.value, 7n);
    assert.deepEqual(asked(), [true, false], 'incr: the number written over the other copy');
  });

  it('min-copies: success only when enough upstreams stored it', async () => {
    const a = setup(2, { minCopies: 2 });
    a.ups[1]!.mode = 'fail';
    const r = await a.exec(set('k', 'v'));
    assert.equal(r.kind, 'error');
    assert.match((r as { message: string }).message, /stored on 1 of 2 upstreams, min-copies is 2/);
    const b = setup(2, { minCopies: 1 });
    b.ups[0]!.mode = 'fail';
    assert.equal((await b.exec(set('k', 'v'))).kind, 'status');
    assert.equal(await direct(b.ups[1]!, 'k'), 'v');
  });

  it('every upstream failing is a SERVER_ERROR, not a crash', async () => {
    const { ups, exec } = setup(2);
    for (const u of ups) u.mode = 'fail';
    for (const c of [set('k', 'v'), get('k'), del('k'), store('add', 'k', 'v'), arith('incr', 'k', 1n)]) {
      const r = await exec(c);
      assert.equal(r.kind, 'error', inspect(c));
      assert.equal((r as { type: string }).type, 'SERVER_ERROR');
    }
  });

  it('write-wait copies answers once min-copies stored, the rest finishes later', async () => {
    const { ups, exec } = setup(2, { writeWait: 'copies' });
    ups[1]!.close_gate();
    assert.equal((await exec(set('k', 'v'))).kind, 'status');
    assert.equal(await direct(ups[1]!, 'k'), undefined, 'the slow upstream has not stored it yet');
    ups[1]!.open();
    await eventually('background write lands', async () => (await direct(ups[1]!, 'k')) === 'v', TURNS);
  });

  it('write-wait all waits for the slow upstream', async () => {
    const { ups, exec } = setup(2, { writeWait: 'all' });
    ups[1]!.close_gate();
    let answered = false;
    const p = exec(set('k', 'v')).then((r) => {
      answered = true;
      return r;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(answered, false);
    ups[1]!.open();
    assert.equal((await p).kind, 'status');
  });

  it('delete: DELETED when any had it, NOT_FOUND only when all answered none, else an error', async () => {
    const { ups, exec } = setup(2);
    await ups[1]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('v'), flags: 0, deadline: 0 });
    assert.deepEqual(await exec(del('k')), { kind: 'status', status: 'DELETED' });
    assert.deepEqual(await exec(del('k')), { kind: 'status', status: 'NOT_FOUND' });
    ups[0]!.mode = 'fail';
    await ups[0]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('v'), flags: 0, deadline: 0 });
    assert.deepEqual(await exec(del('k')), { kind: 'status', status: 'NOT_FOUND' }, 'the miss is journaled');
    ups[0]!.mode = 'ok';
    assert.deepEqual(values(await exec(get('k'))), [undefined], 'the journaled upstream is not read: no resurrection');
    const strict = setup(2, { minCopies: 2 });
    strict.ups[0]!.mode = 'fail';
    const r = await strict.exec(del('k'));
    assert.equal(r.kind, 'error', 'fewer than min-copies answered: an error, never NOT_FOUND');
  });

  it('T5: too_large deletes the old value on every upstream', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'old'));
    const r = await exec({ kind: 'too_large', mode: 'set', key: 'k', noreply: false });
    assert.deepEqual(r, { kind: 'error', type: 'SERVER_ERROR', message: 'object too large for cache' });
    for (const u of ups) assert.equal(await direct(u, 'k'), undefined);
  });

  it('T5: an add, cas, append or replace too large changes nothing (an oversized add must not free a lock held)', async () => {
    const { ups, exec } = setup(2);
    await exec(set('lock.sess', 'held'));
    for (const mode of ['add', 'cas', 'append', 'prepend', 'replace'] as const) {
      const r = await exec({ kind: 'too_large', mode, key: 'lock.sess', noreply: false });
      assert.deepEqual(r, { kind: 'error', type: 'SERVER_ERROR', message: 'object too large for cache' }, mode);
      for (const u of ups) assert.equal(await direct(u, 'lock.sess'), 'held', `${mode}: the lock is still held`);
    }
  });

  it('T9: an item stored already expired is a miss on every upstream', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'old'));
    assert.equal((await exec({ ...(store('add', 'p', '') as object), deadline: EXPIRED } as Command)).kind, 'status');
    await exec(set('k', 'new', EXPIRED));
    assert.deepEqual(values(await exec(get('k', 'p'))), [undefined, undefined]);
    for (const u of ups) assert.equal(await direct(u, 'k'), undefined);
  });

  it('touch reaches every upstream; flush is refused unless allowed', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'v'));
    const deadline = Date.now() + 100_000;
    assert.deepEqual(await exec({ kind: 'touch', key: 'k', deadline, noreply: false }), { kind: 'status', status: 'TOUCHED' });
    for (const u of ups) assert.equal((await u.inner.get(['k']))[0]?.deadline, deadline);
    const r = await exec({ kind: 'flush', delay: 0, noreply: false });
    assert.equal(r.kind, 'error');
    assert.match((r as { message: string }).message, /--allow-flush/);
    assert.equal(await direct(ups[0]!, 'k'), 'v');
    const allowed = setup(2, { allowFlush: true });
    await allowed.exec(set('k', 'v'));
    assert.deepEqual(await allowed.exec({ kind: 'flush', delay: 0, noreply: false }), { kind: 'status', status: 'OK' });
    for (const u of allowed.ups) assert.equal(await direct(u, 'k'), undefined);
  });
});

describe('router: failover reads and read repair', () => {
  it('reads from the first upstream that has the key, in request order with duplicates (T16)', async () => {
    const { ups, exec } = setup(2);
    await ups[0]!.inner.store({ mode: 'set', key: 'a', value: Buffer.from('A'), flags: 0, deadline: 0 });
    await ups[1]!.inner.store({ mode: 'set', key: 'b', value: Buffer.from('B'), flags: 0, deadline: 0 });
    assert.deepEqual(values(await exec(get('a', 'nokey', 'b', 'a'))), ['A', undefined, 'B', 'A']);
    assert.deepEqual(ups[1]!.calls, ['get nokey b'], 'the second upstream is asked only for what is missing, once per key');
  });

  it('read repair copies a lower hit into the upstreams that missed, with its remaining lifetime', async () => {
    const { ups, exec } = setup(3);
    const deadline = Date.now() + 50_000;
    await ups[2]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('v'), flags: 9, deadline });
    assert.deepEqual(values(await exec(get('k'))), ['v']);
    for (const u of [ups[0]!, ups[1]!]) {
      await eventually('repaired', async () => (await direct(u, 'k')) === 'v', TURNS);
      const [h] = await u.inner.get(['k']);
      assert.equal(h?.deadline, deadline);
      assert.equal(h?.flags, 9);
    }
  });

  it('read repair never overwrites a newer value (add, not set)', async () => {
    const { ups, exec } = setup(2);
    await ups[1]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('old'), flags: 0, deadline: 0 });
    ups[0]!.close_gate();
    const read = exec(get('k'));
    ups[0]!.open();
    assert.deepEqual(values(await read), ['old']);
    await exec(set('k', 'new'));
    await eventually('repair attempted', async () => ups[0]!.calls.includes('add k'), TURNS);
    assert.equal(await direct(ups[0]!, 'k'), 'new');
  });

  it('a read-repair add that fails but was applied anyway never brings back a deleted session (hazard 1)', async () => {
    const { ups, exec, journal } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await second.inner.store({ mode: 'set', key: 'sess', value: Buffer.from('cart'), flags: 0, deadline: 0 });
    // The first upstream lost the session; the read repair's add into it is applied by the
    // server only after a delete, and its reply never comes (a timeout).
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const store = first.store.bind(first);
    first.store = async (req) => {
      if (req.mode !== 'add') return store(req);
      await held;
      await first.inner.store(req);
      throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, 'injected: applied, reply lost');
    };
    assert.deepEqual(values(await exec(get('sess'))), ['cart']);
    assert.deepEqual(await exec(del('sess')), { kind: 'status', status: 'DELETED' });
    release();
    await eventually('the failed add journals its target', async () => journal.isDirty(first, 'sess'), TURNS);
    assert.equal(await direct(first, 'sess'), 'cart', 'the server did apply it');
    assert.deepEqual(values(await exec(get('sess'))), [undefined], 'the deleted session is not served');
  });

  it('a read-repair add answered after a delete of the key reached that upstream journals it: the add may have landed last (hazard 1)', async () => {
    const { ups, exec, journal } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await second.inner.store({ mode: 'set', key: 'sess', value: Buffer.from('cart'), flags: 0, deadline: 0 });
    first.gateOnly = (call) => call === 'add sess'; // the repair's add waits; the delete does not
    first.close_gate();
    assert.deepEqual(values(await exec(get('sess'))), ['cart']);
    await eventually('the read repair sent its add', async () => first.calls.includes('add sess'), TURNS);
    assert.deepEqual(await exec(del('sess')), { kind: 'status', status: 'DELETED' });
    first.open(); // now the add is applied (the key is absent there: it succeeds), and answered
    await eventually('the add landed after the delete', async () => (await direct(first, 'sess')) === 'cart', TURNS);
    await eventually('the add that raced a write journals its target', async () => journal.isDirty(first, 'sess'), TURNS);
    assert.deepEqual(values(await exec(get('sess'))), [undefined], 'the deleted session is not served');
  });

  it('no read repair when a write of the key started while the read was in flight (the value found may be gone)', async () => {
    const { ups, exec } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await second.inner.store({ mode: 'set', key: 'sess', value: Buffer.from('cart'), flags: 0, deadline: 0 });
    // The second upstream reads the value, then answers only once a delete has started.
    let answer!: () => void;
    const answered = new Promise<void>((r) => (answer = r));
    const get0 = second.get.bind(second);
    let found = false;
    second.get = async (keys, touch) => {
      const hits = await get0(keys, touch);
      found = true;
      await answered;
      return hits;
    };
    const read = exec(get('sess'));
    await eventually('the first upstream missed, the second found it', async () => found, TURNS);
    const deleted = exec(del('sess'));
    answer();
    assert.deepEqual(values(await read), ['cart'], 'the read answers what it found');
    assert.deepEqual(await deleted, { kind: 'status', status: 'DELETED' });
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    assert.ok(!first.calls.includes('add sess'), `no add sent: ${first.calls.join(', ')}`);
    assert.deepEqual(values(await exec(get('sess'))), [undefined]);
  });

  it('write-wait copies: the copy of a set landing after a delete that missed the same upstream does not clear it (hazard 1)', async () => {
    const { ups, exec, journal } = setup(2, { writeWait: 'copies' });
    const [, second] = ups as [FakeUpstream, FakeUpstream];
    // The second upstream's copy of the set is slow; the delete after it fails there.
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    second.store = async (req) => {
      await slow;
      return second.inner.store(req);
    };
    assert.equal((await exec(set('sess', 'cart'))).kind, 'status', 'answered once the first has it');
    second.delete = async () => {
      throw new McmuxError(ErrorCodes.UPSTREAM_IO, 'injected');
    };
    assert.deepEqual(await exec(del('sess')), { kind: 'status', status: 'DELETED' });
    assert.ok(journal.isDirty(second, 'sess'));
    release();
    await eventually('the late copy landed', async () => (await direct(second, 'sess')) === 'cart', TURNS);
    assert.ok(journal.isDirty(second, 'sess'), 'the older set does not clear the newer delete it missed');
    assert.deepEqual(values(await exec(get('sess'))), [undefined], 'the deleted session is not served');
  });

  it('write-wait copies: after the answer, a read never takes the old value from an upstream still to answer', async () => {
    const { ups, exec, journal } = setup(2, { writeWait: 'copies' });
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    // A delete the second has not applied yet: the first (which answered) misses the key, and
    // the read must not fall through to the second's old copy.
    await exec(set('sess', 'cart'));
    let releaseDelete!: () => void;
    const slowDelete = new Promise<void>((r) => (releaseDelete = r));
    second.delete = async (key) => {
      await slowDelete;
      return second.inner.delete(key);
    };
    assert.deepEqual(await exec(del('sess')), { kind: 'status', status: 'DELETED' });
    assert.equal(await direct(second, 'sess'), 'cart', 'still there, on its way out');
    assert.deepEqual(values(await exec(get('sess'))), [undefined], 'the deleted session is not read back');
    releaseDelete();
    await eventually('its answer clears the mark', async () => !journal.isDirty(second, 'sess'), TURNS);
    // A set the first has not applied yet: the read goes to the second, which has it.
    await exec(set('s2', 'v1'));
    let releaseSet!: () => void;
    const slowSet = new Promise<void>((r) => (releaseSet = r));
    const storeFirst = first.store.bind(first);
    first.store = async (req) => {
      await slowSet;
      return storeFirst(req);
    };
    assert.equal((await exec(set('s2', 'v2'))).kind, 'status');
    assert.deepEqual(values(await exec(get('s2'))), ['v2'], 'set then get reads the new value');
    releaseSet();
    await eventually('landed, and clean again', async () => (await direct(first, 's2')) === 'v2' && !journal.isDirty(first, 's2'), TURNS);
    assert.equal(journal.size(first) + journal.size(second), 0, 'nothing was written to the journal for it');
  });

  it('an error falls through to the next upstream; all failing is SERVER_ERROR', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'v'));
    ups[0]!.mode = 'timeout';
    assert.deepEqual(values(await exec(get('k'))), ['v']);
    ups[1]!.mode = 'fail';
    const r = await exec(get('k'));
    assert.equal(r.kind, 'error');
  });

  it('gat touches the upstreams below the one that answered and repairs the ones above', async () => {
    const { ups, exec } = setup(3);
    await ups[1]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('v'), flags: 0, deadline: 0 });
    await ups[2]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('v'), flags: 0, deadline: 0 });
    const deadline = Date.now() + 60_000;
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['k'], withCas: false, touch: deadline })), ['v']);
    for (const u of ups) {
      await eventually(`deadline on ${u.name}`, async () => (await u.inner.get(['k']))[0]?.deadline === deadline, TURNS);
    }
  });
});

describe('router: one authority for conditional commands', () => {
  it('add is decided by the first upstream and replicated to the others', async () => {
    const { ups, exec } = setup(2);
    assert.equal((await exec(store('add', 'lock', '1'))).kind, 'status');
    assert.equal(await direct(ups[1]!, 'lock'), '1');
    assert.deepEqual(await exec(store('add', 'lock', '2')), { kind: 'status', status: 'NOT_STORED' });
    assert.equal(await direct(ups[1]!, 'lock'), '1');
  });

  it('an authority that timed out (it may yet apply the add) is journaled for the key, even when nothing is replicated to it', async () => {
    const { ups, exec, journal } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    // The lock is held, but only the second still has it.
    await second.inner.store({ mode: 'set', key: 'lock', value: Buffer.from('1'), flags: 0, deadline: 0 });
    first.gateOnly = (call) => call === 'add lock';
    first.delay_late();
    assert.deepEqual(await exec(store('add', 'lock', '2')), { kind: 'status', status: 'NOT_STORED' }, 'the second decides: held');
    assert.ok(journal.isDirty(first, 'lock'), 'the first is journaled for the key');
    first.open(); // the first applies the add after all: it holds lock=2
    await eventually('the late add landed', async () => (await direct(first, 'lock')) === '2', TURNS);
    assert.deepEqual(values(await exec(get('lock'))), ['1'], 'the lock holder stays the one the client was told');
    assert.deepEqual(await exec(store('add', 'lock', '3')), { kind: 'status', status: 'NOT_STORED' });
  });

  it('when the first upstream fails, the next one decides', async () => {
    const { ups, exec } = setup(2);
    ups[0]!.mode = 'fail';
    assert.equal(((await exec(store('add', 'lock', '1'))) as { status: string }).status, 'STORED');
    assert.deepEqual(await exec(store('add', 'lock', '2')), { kind: 'status', status: 'NOT_STORED' });
  });

  it('incr replicates the resulting number, never the delta (hazard 7)', async () => {
    const { ups, exec } = setup(2);
    await ups[0]!.inner.store({ mode: 'set', key: 'n', value: Buffer.from('10'), flags: 3, deadline: 0 });
    await ups[1]!.inner.store({ mode: 'set', key: 'n', value: Buffer.from('500'), flags: 3, deadline: 0 });
    assert.equal(num(await exec(arith('incr', 'n', 5n))), 15n);
    assert.equal(await direct(ups[1]!, 'n'), '15');
    assert.equal((await ups[1]!.inner.get(['n']))[0]?.flags, 3);
  });

  it('T12/T14: non-numeric, wrap at 2^64, floor at 0, missing', async () => {
    const { exec } = setup(2);
    await exec(set('s', 'hi'));
    assert.deepEqual(await exec(arith('incr', 's', 1n)), {
      kind: 'error', type: 'CLIENT_ERROR', message: 'cannot increment or decrement non-numeric value',
    });
    await exec(set('n', '18446744073709551615'));
    assert.equal(num(await exec(arith('incr', 'n', 1n))), 0n);
    assert.equal(num(await exec(arith('decr', 'n', 5n))), 0n);
    assert.deepEqual(await exec(arith('incr', 'missing', 1n)), { kind: 'status', status: 'NOT_FOUND' });
  });

  it('binary-style incr with an initial value creates the key once', async () => {
    const { ups, exec } = setup(2);
    const c: Command = { kind: 'arith', op: 'incr', key: 'c', delta: 1n, initial: 10n, deadline: 0, noreply: false };
    assert.equal(num(await exec(c)), 10n);
    assert.equal(num(await exec(c)), 11n);
    assert.equal(await direct(ups[1]!, 'c'), '11');
  });

  it('T15: cas with the authority unique stores once, then EXISTS; missing is NOT_FOUND', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'v'));
    const r = await exec(gets('k'));
    const cas = (r as Extract<Reply, { kind: 'values' }>).hits[0]?.cas;
    assert.ok(cas !== undefined);
    assert.equal(((await exec(store('cas', 'k', 'w', cas))) as { status: string }).status, 'STORED');
    assert.equal(await direct(ups[1]!, 'k'), 'w');
    assert.deepEqual(await exec(store('cas', 'k', 'x', cas)), { kind: 'status', status: 'EXISTS' });
    assert.deepEqual(await exec(store('cas', 'nokey', 'x', 1n)), { kind: 'status', status: 'NOT_FOUND' });
  });

  it('append and prepend replicate the whole resulting value', async () => {
    const { ups, exec } = setup(2);
    await exec(set('k', 'mid'));
    await ups[1]!.inner.store({ mode: 'set', key: 'k', value: Buffer.from('stale'), flags: 0, deadline: 0 });
    await exec(store('append', 'k', '>'));
    await exec(store('prepend', 'k', '<'));
    assert.equal(await direct(ups[1]!, 'k'), '<mid>');
    assert.deepEqual(await exec(store('append', 'none', 'x')), { kind: 'status', status: 'NOT_STORED' });
  });
});

describe("router: a key's conditional commands run alone among its writes", () => {
  const seed = async (ups: readonly FakeUpstream[], key: string, value: string): Promise<void> => {
    for (const u of ups) await u.inner.store({ mode: 'set', key, value: Buffer.from(value), flags: 768, deadline: 0 });
  };
  const callsOf = (u: FakeUpstream, call: string): number => u.calls.filter((c) => c === call).length;

  it('the authority dies after applying an incr, before its copy lands: a concurrent incr waits for it and counts on', async () => {
    const { ups, exec, router } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'L', '0');
    // The first upstream applies the incr (0 -> 1: "lock acquired"), then hangs while mcmux
    // reads the result back to copy it.
    const applyArith = first.arith.bind(first);
    first.arith = async (op, key, delta) => {
      const r = await applyArith(op, key, delta);
      first.close_gate();
      return r;
    };
    const holder = exec(arith('incr', 'L', 1n));
    await eventually('the read-back is waiting', async () => first.calls.includes('get L'), TURNS);
    const contender = exec(arith('incr', 'L', 1n));
    await new Promise((r) => setImmediate(r));
    assert.equal(callsOf(first, 'incr L'), 1, 'the second incr waits for the first to settle everywhere');
    first.kill();
    const [a, b] = [num(await holder), num(await contender)];
    // The holder's number is the one the dead authority gave; the second upstream counts on from
    // it. Before the fix both heard 1: two PHP requests held one session lock.
    assert.deepEqual([a, b], [1n, 2n]);
    assert.equal(await direct(second, 'L'), '2');
    assert.equal(router.orderedKeys, 0, 'nothing left waiting');
  });

  it('a conditional command starts once a plain write of its key has landed everywhere', async () => {
    const { ups, exec, router } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'L', '1');
    second.close_gate();
    const release = exec(set('L', '0')); // landed on the first, not yet on the second
    const acquire = exec(arith('incr', 'L', 1n));
    await eventually('the release landed on the first upstream', async () => (await direct(first, 'L')) === '0', TURNS);
    await new Promise((r) => setImmediate(r));
    assert.equal(callsOf(first, 'incr L'), 0, 'the incr waits: the second upstream may still say "held"');
    assert.equal(router.orderedKeys, 1);
    second.open();
    assert.equal((await release).kind, 'status');
    assert.equal(num(await acquire), 1n);
    assert.equal(await direct(second, 'L'), '1');
    assert.equal(router.orderedKeys, 0);
  });

  it('a plain write waits for the copies of a conditional command before it', async () => {
    const { ups, exec, router } = setup(3, { writeWait: 'copies' });
    const [first, , third] = ups as [FakeUpstream, FakeUpstream, FakeUpstream];
    await seed(ups, 'L', '0');
    third.close_gate();
    // write-wait copies: the incr is answered once a copy landed; the third copy is in flight.
    assert.equal(num(await exec(arith('incr', 'L', 1n))), 1n);
    const release = exec(set('L', '0'));
    await new Promise((r) => setImmediate(r));
    assert.equal(callsOf(first, 'set L'), 0, 'the set waits for the copy (it could land on the third upstream before it)');
    third.open();
    assert.equal((await release).kind, 'status');
    await eventually('both settled, in order', async () => (await direct(third, 'L')) === '0' && router.orderedKeys === 0, TURNS);
    assert.equal(await direct(first, 'L'), '0');
  });

  it('write-wait copies: a conditional command is answered once the authority has it (min-copies 1)', async () => {
    const { ups, exec, router } = setup(2, { writeWait: 'copies' });
    const [, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'L', '0');
    second.close_gate();
    assert.equal(num(await exec(arith('incr', 'L', 1n))), 1n, 'answered while the copy waits');
    assert.equal((await exec(store('add', 'new', 'v'))).kind, 'status');
    assert.equal(await direct(second, 'L'), '0');
    second.open();
    await eventually('the copies landed', async () => (await direct(second, 'L')) === '1' && (await direct(second, 'new')) === 'v' && router.orderedKeys === 0, TURNS);
  });

  it('a gat\'s background touches are writes of the key: a conditional command after it waits for them', async () => {
    const { ups, exec, router } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'n', '1');
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    second.touch = async (key, deadline) => {
      await held;
      return second.inner.touch(key, deadline);
    };
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['n'], withCas: false, touch: Date.now() + 60_000 })), ['1']);
    const incr = exec(arith('incr', 'n', 1n));
    await new Promise((r) => setImmediate(r));
    assert.equal(callsOf(first, 'incr n'), 0, 'the incr waits for the touch still landing');
    release();
    assert.equal(num(await incr), 2n);
    assert.equal(router.orderedKeys, 0);
  });

  it('gats of several keys holds them all: two in opposite orders and a set of each key all finish, the sets after the touches', async () => {
    const { ups, exec, router } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'a', 'old');
    await seed(ups, 'b', 'old');
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const touch1 = second.touch.bind(second);
    second.touch = async (key, deadline) => {
      await held;
      return touch1(key, deadline);
    };
    const gats = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: Date.now() + 60_000 });
    const one = exec(gats('b', 'a'));
    const two = exec(gats('a', 'b', 'a'));
    const sets = [exec(set('a', 'new')), exec(set('b', 'new'))];
    assert.deepEqual(values(await one), ['old', 'old']);
    await new Promise((r) => setImmediate(r));
    assert.equal(callsOf(first, 'set a') + callsOf(first, 'set b'), 0, "the sets wait for the gats' touches still landing");
    release();
    assert.equal(values(await two)[0], 'old', 'received before the set of a');
    for (const w of sets) assert.equal((await w).kind, 'status');
    await eventually('every key released', async () => router.orderedKeys === 0, TURNS);
    for (const k of ['a', 'b']) {
      const [h0] = await first.inner.get([k]);
      const [h1] = await second.inner.get([k]);
      assert.deepEqual([h1?.value.toString(), h1?.deadline], [h0?.value.toString(), h0?.deadline], `the copies of ${k} agree`);
    }
  });

  it('two gats of the same keys in opposite orders, each waiting for a write of its first key: no deadlock', async () => {
    const { ups, exec, router } = setup(2);
    const [, second] = ups as [FakeUpstream, FakeUpstream];
    second.gateOnly = (call) => call === 'set a' || call === 'set b';
    second.close_gate(); // both sets still landing
    const sets = [exec(set('a', 'x')), exec(set('b', 'x'))];
    await new Promise((r) => setImmediate(r));
    const gats = (...keys: string[]): Command => ({ kind: 'get', keys, withCas: false, touch: Date.now() + 60_000 });
    const both = Promise.all([exec(gats('a', 'b')), exec(gats('b', 'a'))]);
    await new Promise((r) => setImmediate(r));
    second.open();
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('DEADLOCK: each gat holds a key the other waits for')), 2000)));
    const [x, y] = (await Promise.race([both, stuck])) as [Reply, Reply];
    clearTimeout(timer);
    assert.deepEqual([values(x), values(y)], [['x', 'x'], ['x', 'x']]);
    for (const w of sets) assert.equal((await w).kind, 'status');
    await eventually('every key released', async () => router.orderedKeys === 0, TURNS);
  });

  it('gats that end at once (every copy dirty, none usable) release the key: a write after them is not stuck', async () => {
    const fakes = [new FakeUpstream('fake://0'), new FakeUpstream('fake://1')];
    const ups = fakes.map((f) => new HealthyUpstream(f, { downAfter: 1, probeMinMs: 60_000, probeMaxMs: 60_000 }, () => {}));
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    for (const f of fakes) f.mode = 'fail';
    assert.equal((await exec(set('k', 'v'))).kind, 'error');
    assert.ok(ups.every((u) => !u.usable && journal.isDirty(u, 'k')), 'dirty on both, both down: a gat asks nobody');
    const writing = exec(set('k', 'w')); // refused by both, settled a few microtasks later
    const gat: Command = { kind: 'get', keys: ['k'], withCas: false, touch: Date.now() + 60_000 };
    const gats = [exec(gat), exec(gat)]; // wait for it, then start (and end) in one pump of the key
    for (const g of gats) assert.equal((await g).kind, 'error');
    assert.equal((await writing).kind, 'error');
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('STUCK: the key is held by a gat that has ended'), 1000)));
    const last = await Promise.race([exec(set('k', 'x')).then((r) => r.kind), stuck]);
    clearTimeout(timer);
    assert.equal(last, 'error', 'refused as the others');
    assert.equal(router.orderedKeys, 0);
  });

  it('write-wait all: an incr whose item is gone from the authority answers once the others deleted it too', async () => {
    const { ups, exec } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'n', '5');
    // The authority counts, then has nothing to read back (expired in between, say).
    const getFirst = first.get.bind(first);
    first.get = async (keys, touch) => (keys.includes('n') ? keys.map(() => undefined) : getFirst(keys, touch));
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    second.delete = async (key) => {
      await held;
      return second.inner.delete(key);
    };
    let answered = false;
    const incr = exec(arith('incr', 'n', 1n)).then((r) => {
      answered = true;
      return r;
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(answered, false, 'not before the second upstream\'s copy is gone');
    release();
    assert.equal(num(await incr), 6n);
    assert.equal(await direct(second, 'n'), undefined);
  });

  it('plain writes of a key overlap, and other keys never wait', async () => {
    const { ups, exec, router } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await seed(ups, 'L', '0');
    second.close_gate();
    const writes = [exec(set('k', 'a')), exec(set('k', 'b')), exec(arith('incr', 'L', 1n)), exec(set('other', 'x'))];
    await eventually('the other key was written', async () => first.calls.includes('set other'), TURNS);
    assert.equal(callsOf(first, 'set k'), 2, 'both sets of k went out at once');
    assert.equal(callsOf(first, 'incr L'), 1, 'the incr of L did not wait for writes of k');
    second.open();
    for (const r of await Promise.all(writes)) assert.notEqual(r.kind, 'error');
    assert.equal(router.orderedKeys, 0);
  });
});

describe('router: flush_all is ordered with the writes', () => {
  const flushAll: Command = { kind: 'flush', delay: 0, noreply: false };
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  };

  it('writes and conditional commands received while a flush_all waits or runs start once it is answered, in the order received', async () => {
    const { ups, exec, router } = setup(2, { allowFlush: true, writeWait: 'copies' });
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    second.gateOnly = (call) => call === 'set before';
    second.close_gate(); // a copy still landing: the flush waits for it
    assert.equal((await exec(set('before', 'x'))).kind, 'status');
    const flushing = exec(flushAll);
    const after = [exec(set('k', 'v')), exec(store('add', 'lock', 'A')), exec(arith('incr', 'n', 1n)), exec(del('gone'))];
    await settle();
    assert.deepEqual(first.calls, ['set before'], 'nothing else goes out before the flush');
    second.open();
    assert.deepEqual(await flushing, { kind: 'status', status: 'OK' });
    const replies = await Promise.all(after);
    assert.deepEqual(replies.map((r) => (r.kind === 'status' ? r.status : r.kind)), ['STORED', 'STORED', 'NOT_FOUND', 'NOT_FOUND']);
    assert.deepEqual(first.calls.slice(0, 2), ['set before', 'flush']);
    assert.deepEqual(values(await exec(get('before', 'k', 'lock'))), [undefined, 'v', 'A']);
    assert.equal(router.orderedKeys, 0);
  });

  it('a set and then an add of one key, both received while a flush_all waits: the add starts once the set has landed everywhere, and finds it', async () => {
    const { ups, exec, router } = setup(2, { allowFlush: true });
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    // The flush waits on the second; once it is answered, the set is slow to land on the first.
    second.gateOnly = (call) => call === 'flush';
    second.close_gate();
    const flushing = exec(flushAll);
    await settle();
    const [setting, adding] = [exec(set('lock', 'A')), exec(store('add', 'lock', 'B'))];
    first.gateOnly = (call) => call === 'set lock';
    first.close_gate();
    second.open();
    assert.deepEqual(await flushing, { kind: 'status', status: 'OK' });
    await settle();
    assert.ok(!first.calls.includes('add lock'), 'the add waits for the set received before it');
    first.open();
    assert.equal(((await setting) as { status?: string }).status, 'STORED');
    assert.equal(((await adding) as { status?: string }).status, 'NOT_STORED', 'the lock was set first');
    assert.deepEqual([await direct(first, 'lock'), await direct(second, 'lock')], ['A', 'A'], 'both copies hold the set');
    assert.equal(router.orderedKeys, 0);
  });

  it('a gat while a flush_all waits touches no other upstream (the flush empties the key after it), so it does not hold the flush back', async () => {
    const { ups, exec } = setup(2, { allowFlush: true, writeWait: 'copies' });
    const [, second] = ups as [FakeUpstream, FakeUpstream];
    await exec(set('sess', 'cart'));
    second.gateOnly = (call) => call === 'set before';
    second.close_gate();
    await exec(set('before', 'x'));
    const flushing = exec(flushAll);
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['sess'], withCas: false, touch: 0 })), ['cart']);
    await settle();
    assert.ok(!second.calls.includes('touch sess'), 'no background touch while the flush waits');
    second.open();
    assert.deepEqual(await flushing, { kind: 'status', status: 'OK' });
    assert.deepEqual(values(await exec(get('sess'))), [undefined]);
  });
});

describe('router: cas uniques are sealed per store (hazard 6)', () => {
  /** Fakes behind the health wrapper, as the app runs them: the wrapper seals the uniques. */
  function sealedSetup() {
    const fakes = [new FakeUpstream('fake://0'), new FakeUpstream('fake://1')];
    const ups = fakes.map((f, i) => new HealthyUpstream(f, DEFAULT_HEALTH, () => {}, `store-${i}`));
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: ups, journal, hedgeMs: 0, minCopies: 1, writeWait: 'all', allowFlush: false }, source, () => {});
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    return { fakes, ups, exec };
  }
  const uniqueOf = (r: Reply): bigint => {
    const cas = (r as Extract<Reply, { kind: 'values' }>).hits[0]?.cas;
    assert.ok(cas !== undefined, inspect(r));
    return cas;
  };

  it('the seal: a bijection of the low 63 bits, top bit kept, per store; a neighbour of a sealed unique is far from the item\'s', () => {
    const a = new CasSeal('memcached://127.0.0.1:11211', '');
    const b = new CasSeal('memcached://127.0.0.1:11212', '');
    for (const x of [0n, 1n, 2n, 41n, 12_345_678n, 2n ** 62n + 5n, 2n ** 63n + 7n, 2n ** 64n - 1n]) {
      const y = a.seal(x);
      assert.equal(a.unseal(y), x);
      assert.equal(y >= 2n ** 63n, x >= 2n ** 63n, 'the top bit is left as it is');
      const far = (v: bigint): boolean => v - x > 1_000_000n || x - v > 1_000_000n;
      assert.ok(far(b.unseal(y)), 'another store cannot read it');
      // memccapable takes "unique - 1" as a wrong unique: it must not become the next unique.
      assert.ok(far(a.unseal(y - 1n)) && far(a.unseal(y + 1n)), `neighbours of the seal of ${x}`);
    }
  });

  it('gets then cas through the same store: STORED, then EXISTS', async () => {
    const { fakes, exec } = sealedSetup();
    await exec(set('k', 'v'));
    const cas = uniqueOf(await exec(gets('k')));
    const [raw] = await fakes[0]!.inner.get(['k']);
    assert.notEqual(cas, raw?.cas, 'the client sees a sealed unique, not the store\'s own number');
    assert.ok(cas < 2n ** 63n, 'it fits a signed 64-bit integer');
    assert.equal(((await exec(store('cas', 'k', 'w', cas))) as { status: string }).status, 'STORED');
    assert.equal(await direct(fakes[1]!, 'k'), 'w');
    assert.deepEqual(await exec(store('cas', 'k', 'x', cas)), { kind: 'status', status: 'EXISTS' });
  });

  it('a unique from the first store never matches in the second after a failover, even when the numbers coincide', async () => {
    const { fakes, exec } = sealedSetup();
    const [first, second] = fakes as [FakeUpstream, FakeUpstream];
    // The second store misses one write: its counter runs one behind the first's from now on.
    second.mode = 'fail';
    await exec(set('other', 'x'));
    second.mode = 'ok';
    await exec(set('k', 'A0'));
    const cas = uniqueOf(await exec(gets('k'))); // from the first store
    // The first store dies; another client writes k, which the second store numbers with the
    // very number the first gave the unique above.
    first.mode = 'fail';
    await exec(set('k', 'B'));
    const [onFirst] = await first.inner.get(['k']);
    const [onSecond] = await second.inner.get(['k']);
    assert.equal(onSecond?.cas, onFirst?.cas, 'the raw numbers coincide: without sealing the cas would succeed');
    // The stale cas is decided by the second store: it must fail safe, and B's value stays.
    assert.deepEqual(await exec(store('cas', 'k', 'A1', cas)), { kind: 'status', status: 'EXISTS' });
    assert.equal(await direct(second, 'k'), 'B');
  });

  it('a store that came back empty voids the uniques it handed out before', async () => {
    const { fakes, ups, exec } = sealedSetup();
    await exec(set('k', 'v'));
    const cas = uniqueOf(await exec(gets('k')));
    // Restarted empty with its counter from the start, and given the same item number again.
    for (const f of fakes) {
      const [h] = await f.inner.get(['k']);
      await f.inner.flush();
      (f.inner as unknown as { nextCas: bigint }).nextCas = h!.cas;
      await f.inner.store({ mode: 'set', key: 'k', value: Buffer.from('new'), flags: 0, deadline: 0 });
    }
    for (const u of ups) {
      u.emptied(); // the store came back empty, as the cold detector takes it
      u.voidUniques();
    }
    assert.deepEqual(await exec(store('cas', 'k', 'stale', cas)), { kind: 'status', status: 'EXISTS' });
    assert.equal(await direct(fakes[0]!, 'k'), 'new');
  });

  it('binary-style answers carry sealed uniques a later cas accepts: set, add, incr', async () => {
    const { exec } = sealedSetup();
    const stored = (await exec(set('k', 'v'))) as { cas?: bigint };
    assert.ok(stored.cas !== undefined);
    assert.equal(((await exec(store('cas', 'k', 'w', stored.cas))) as { status: string }).status, 'STORED');
    const added = (await exec(store('add', 'a', '1'))) as { cas?: bigint };
    assert.equal(((await exec(store('cas', 'a', '2', added.cas))) as { status: string }).status, 'STORED');
    await exec(set('n', '1'));
    const incr = (await exec(arith('incr', 'n', 1n))) as { value: bigint; cas?: bigint };
    assert.equal(incr.value, 2n);
    if (incr.cas !== undefined) assert.equal(((await exec(store('cas', 'n', '9', incr.cas))) as { status: string }).status, 'STORED');
  });
});

describe('router: own answers', () => {
  it('version, verbosity and stats are answered by mcmux, unknown stats groups are ERROR', async () => {
    const { exec } = setup(2);
    assert.deepEqual(await exec({ kind: 'version' }), { kind: 'version', version: '1.6.21' });
    assert.deepEqual(await exec({ kind: 'verbosity', noreply: false }), { kind: 'status', status: 'OK' });
    await exec(get('x'));
    const s = await exec({ kind: 'stats', group: '' });
    assert.equal(s.kind, 'stats');
    const lines = new Map((s as Extract<Reply, { kind: 'stats' }>).lines.map(([k, v]) => [k, String(v)]));
    assert.equal(lines.get('cmd_get'), '1');
    assert.equal(lines.get('get_misses'), '1');
    assert.equal(lines.get('upstream.1.name'), 'fake://1');
    assert.equal((await exec({ kind: 'stats', group: 'slabs' })).kind, 'error');
  });
});

describe('router: hedged reads', () => {

  it('a key the hedge left out (dirty there then) but cleaned since is asked, not taken as a miss', async () => {
    const { ups, exec, journal } = setup(2, { hedgeMs: 5 });
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await exec(set('a', 'A'));
    second.mode = 'fail';
    await exec(set('k', 'v1')); // the second missed it: dirty for k
    second.mode = 'ok';
    assert.ok(journal.isDirty(second, 'k'));
    // The first is slow to read: after hedge-ms the second is asked, for a only.
    let fail!: () => void;
    const slow = new Promise<void>((r) => (fail = r));
    const getFirst = first.get.bind(first);
    first.get = async (keys, touch) => {
      if (keys.includes('k')) {
        await slow;
        throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, 'injected');
      }
      return getFirst(keys, touch);
    };
    // The hedge's request to the second (for a only) is the event to wait for.
    let hedged!: () => void;
    const hedgeSent = new Promise<void>((r) => (hedged = r));
    const getSecond = second.get.bind(second);
    second.get = (keys, touch) => {
      if (keys.join() === 'a') hedged();
      return getSecond(keys, touch);
    };
    const read = exec(get('a', 'k'));
    await hedgeSent;
    // A write of k lands on both: the second is clean for k again. Then the first fails.
    first.get = getFirst;
    assert.equal((await exec(set('k', 'v2'))).kind, 'status');
    assert.equal(journal.isDirty(second, 'k'), false);
    fail();
    assert.deepEqual(values(await read), ['A', 'v2'], 'k is asked of the second, not reported missing');
  });
  it('a hedged gat: its request to the slow first upstream, still unanswered, holds the key for a set after it', async () => {
    const { ups, exec, router } = setup(2, { hedgeMs: 5 });
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    await exec(set('k', 'old'));
    first.gateOnly = (call) => call === 'get k';
    first.close_gate(); // the gat's request to the first upstream is slow: the hedge answers
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['k'], withCas: false, touch: Date.now() + 60_000 })), ['old']);
    const writing = exec(set('k', 'new', Date.now() + 30_000));
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    first.open(); // the gat lands on the first upstream now
    assert.equal((await writing).kind, 'status');
    await eventually('the key released', async () => router.orderedKeys === 0, TURNS);
    const [h0] = await first.inner.get(['k']);
    const [h1] = await second.inner.get(['k']);
    assert.deepEqual([h0?.value.toString(), h0?.deadline], [h1?.value.toString(), h1?.deadline], "the copies agree (the gat's late request gave the set's value the gat's deadline on the first)");
  });

  it('with hedge-ms, a slow first upstream does not hold the read: the next one answers', async () => {
    const { ups, exec, router } = setup(2, { hedgeMs: 10 });
    await exec(set('k', 'v'));
    ups[0]!.close_gate();
    assert.deepEqual(values(await exec(get('k'))), ['v'], 'answered while the first upstream is still held');
    assert.equal(router.counters.hedges, 1);
    assert.equal(router.counters.hedgeWins, 1);
    ups[0]!.open();
  });

  it('keys the hedge missed still wait for the first upstream', async () => {
    const { ups, exec } = setup(2, { hedgeMs: 10 });
    await ups[0]!.inner.store({ mode: 'set', key: 'only0', value: Buffer.from('A'), flags: 0, deadline: 0 });
    await ups[1]!.inner.store({ mode: 'set', key: 'only1', value: Buffer.from('B'), flags: 0, deadline: 0 });
    ups[0]!.close_gate();
    let hedged!: () => void;
    const secondAsked = new Promise<void>((r) => (hedged = r));
    const get1 = ups[1]!.get.bind(ups[1]!);
    ups[1]!.get = (keys, touch) => {
      hedged();
      return get1(keys, touch);
    };
    const read = exec(get('only0', 'only1'));
    await secondAsked; // the hedge fired while the first is held
    ups[0]!.open();
    assert.deepEqual(values(await read), ['A', 'B']);
    assert.equal(ups[1]!.calls.filter((c) => c.startsWith('get')).length, 1, 'the second upstream is asked once');
  });

  it('without hedge-ms the read waits for the first upstream', async () => {
    const { ups, exec, router } = setup(2);
    await exec(set('k', 'v'));
    ups[0]!.close_gate();
    let done = false;
    const read = exec(get('k')).then((r) => {
      done = true;
      return r;
    });
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(done, false);
    assert.ok(!ups[1]!.calls.some((c) => c.startsWith('get')), 'the second upstream is not asked');
    ups[0]!.open();
    assert.deepEqual(values(await read), ['v']);
    assert.equal(router.counters.hedges, 0);
  });
});
