/**
 * One driver conformance suite, run against every driver backed by a real server: the same
 * cases, the same expectations. A driver is conformant when it behaves like memcached here.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EXPIRED } from '../../src/command/command';
import type { Upstream } from '../../src/upstream/upstream';
import { memcachedTarget } from './targets/memcached';
import { memcachedPoolTarget } from './targets/memcached-pool';
import { memoryTarget } from './targets/memory';
import { mysqlTarget } from './targets/mysql';
import { redisTarget } from './targets/redis';
import { sqliteTarget } from './targets/sqlite';
import type { ConformanceTarget, TargetInstance } from './targets/target';

const MAX_ITEM = 1024 * 1024;
const TARGETS: ConformanceTarget[] = [memoryTarget, memcachedTarget, memcachedPoolTarget, redisTarget, mysqlTarget, sqliteTarget];

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const DAY = 24 * 3600 * 1000;

for (const target of TARGETS) {
  describe(`conformance: ${target.name}`, () => {
    let inst: TargetInstance | undefined;
    let u: Upstream;
    let n = 0;
    /** A key no other case uses (the store is shared by the cases of one target). */
    const key = (name: string): string => `${target.name}:${name}:${n++}`;
    const set = (k: string, v: string | Buffer, flags = 0, deadline = 0) =>
      u.store({ mode: 'set', key: k, value: typeof v === 'string' ? b(v) : v, flags, deadline });
    const value = async (k: string): Promise<string | undefined> => (await u.get([k]))[0]?.value.toString('latin1');
    /** An arith result without its cas (stores may or may not report one). */
    const arith = async (op: 'incr' | 'decr', k: string, delta: bigint) => {
      const r = await u.arith(op, k, delta);
      return r.status === 'OK' ? { status: r.status, value: r.value } : r;
    };

    /** Why the target did not start (requireBinary's message names the package to install). */
    let why = `${target.name} server not available`;
    before(async () => {
      // `before` has no skip: the cases below skip themselves, with this reason, when `inst` is undefined.
      const noted = { skip: (message?: string) => void (why = message ?? why) };
      inst = await target.start(noted as never, MAX_ITEM).catch((error: unknown) => {
        if (process.env.MCMUX_REQUIRE_SERVERS === '1') throw error;
        why = `${target.name} did not start: ${error instanceof Error ? error.message : String(error)}`;
        return undefined;
      });
      if (inst) u = inst.upstream;
    });
    after(async () => {
      await inst?.stop();
    });

    const test = (name: string, fn: () => Promise<void>): void => {
      it(name, async (t) => {
        if (!inst) {
          if (process.env.MCMUX_REQUIRE_SERVERS === '1') assert.fail(`${target.name} target did not start`);
          t.skip(why);
          return;
        }
        await fn();
      });
    };

    test('set then get; miss is undefined; multi-get aligned with duplicates', async () => {
      const a = key('a');
      const c = key('c');
      assert.equal((await set(a, 'A')).status, 'STORED');
      await set(c, 'C');
      const hits = await u.get([a, key('none'), c, a]);
      assert.deepEqual(hits.map((h) => h?.value.toString()), ['A', undefined, 'C', 'A']);
    });

    test('flags round trip 0, 65535, 4294967295', async () => {
      for (const flags of [0, 65535, 4294967295]) {
        const k = key('flags');
        await set(k, 'x', flags);
        assert.equal((await u.get([k]))[0]?.flags, flags);
      }
    });

    test('binary-safe values: CR, LF, NUL, high bytes, empty', async () => {
      for (const v of [b('a\r\nb'), Buffer.from([0, 13, 10, 0, 255, 128]), b('\r\n'), Buffer.alloc(0)]) {
        const k = key('bin');
        await set(k, v);
        assert.deepEqual((await u.get([k]))[0]?.value, v);
      }
    });

    test('a value of the item limit stores and reads back whole', async () => {
      const k = key('big');
      const v = Buffer.alloc(MAX_ITEM, 0x61);
      v[0] = 0x62;
      v[MAX_ITEM - 1] = 0x63;
      assert.equal((await set(k, v)).status, 'STORED');
      assert.ok((await u.get([k]))[0]?.value.equals(v));
    });

    test('expiry: 0 never, past absent, relative and absolute deadlines kept', async () => {
      const now = Date.now();
      const never = key('never');
      const past = key('past');
      const rel = key('rel');
      const abs = key('abs');
      await set(never, 'v', 0, 0);
      await set(past, 'v', 0, EXPIRED);
      await set(rel, 'v', 0, now + 30 * DAY);
      await set(abs, 'v', 0, now + 40 * DAY);
      const [h0, h1, h2, h3] = await u.get([never, past, rel, abs]);
      assert.equal(h0?.deadline, 0);
      assert.equal(h1, undefined, 'an item stored already expired is absent');
      assert.ok(h2 && Math.abs(h2.deadline - (now + 30 * DAY)) < 3000, `30 days relative: ${h2?.deadline}`);
      assert.ok(h3 && Math.abs(h3.deadline - (now + 40 * DAY)) < 3000, `absolute: ${h3?.deadline}`);
    });

    test('a set with a past deadline removes the old value (T9, hazard 5)', async () => {
      const k = key('old');
      await set(k, 'old');
      await u.store({ mode: 'add', key: key('probe'), value: b(''), flags: 0, deadline: EXPIRED });
      assert.equal(await value(key('probe')), undefined, 'an add already expired leaves the key absent');
      await set(k, 'new', 0, EXPIRED);
      assert.equal(await value(k), undefined);
    });

    test('an item whose deadline passes is gone', async () => {
      const k = key('short');
      await set(k, 'v', 0, Date.now() + 1000);
      assert.equal(await value(k), 'v');
      for (let i = 0; i < 40 && (await value(k)) !== undefined; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(await value(k), undefined);
    });

    test('add, replace', async () => {
      const k = key('ar');
      assert.equal((await u.store({ mode: 'replace', key: k, value: b('r'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
      assert.equal((await u.store({ mode: 'add', key: k, value: b('a'), flags: 0, deadline: 0 })).status, 'STORED');
      assert.equal((await u.store({ mode: 'add', key: k, value: b('b'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
      assert.equal((await u.store({ mode: 'replace', key: k, value: b('r'), flags: 0, deadline: 0 })).status, 'STORED');
      assert.equal(await value(k), 'r');
    });

    test('append and prepend keep flags and deadline; missing is NOT_STORED', async () => {
      const k = key('ap');
      const deadline = Date.now() + DAY;
      await set(k, 'mid', 77, deadline);
      assert.equal((await u.store({ mode: 'append', key: k, value: b('>'), flags: 1, deadline: 0 })).status, 'STORED');
      assert.equal((await u.store({ mode: 'prepend', key: k, value: b('<'), flags: 1, deadline: 0 })).status, 'STORED');
      const [h] = await u.get([k]);
      assert.equal(h?.value.toString(), '<mid>');
      assert.equal(h?.flags, 77);
      assert.ok(h && Math.abs(h.deadline - deadline) < 3000);
      assert.equal((await u.store({ mode: 'append', key: key('none'), value: b('x'), flags: 0, deadline: 0 })).status, 'NOT_STORED');
    });

    // memcached 1.6 answers NOT_STORED to an append or prepend past its item size limit (its own
    // -I, which the memcached targets set above MAX_ITEM) and leaves the item as it was. The
    // other stores hold max-item-size: a longer item would be copied by a set no store takes.
    if (!target.name.startsWith('memcached')) {
      test('append and prepend past max-item-size are NOT_STORED, the item left as it was', async () => {
        const k = key('big');
        assert.equal((await set(k, b('a'.repeat(MAX_ITEM - 10)), 7)).status, 'STORED');
        for (const mode of ['append', 'prepend'] as const) {
          const r = await u.store({ mode, key: k, value: b('b'.repeat(20)), flags: 0, deadline: 0 });
          assert.equal(r.status, 'NOT_STORED', `${mode} of 20 bytes to an item of ${MAX_ITEM - 10} bytes (max-item-size ${MAX_ITEM})`);
          assert.equal((await u.get([k]))[0]?.value.length, MAX_ITEM - 10, `${mode}: the item is as it was`);
        }
        assert.equal((await u.store({ mode: 'append', key: k, value: b('c'.repeat(10)), flags: 0, deadline: 0 })).status, 'STORED', 'up to the limit exactly');
        const [h] = await u.get([k]);
        assert.equal(h?.value.length, MAX_ITEM);
        assert.equal(h?.flags, 7);
      });
    }

    // A binary INCREMENT/DECREMENT answers the item's unique (memcached 1.6 does; memccapable -b
    // checks it): the one the store gave the item, which a get then returns.
    test('incr and decr answer the unique they gave the item', async () => {
      const k = key('arith-cas');
      await set(k, '10');
      const before = (await u.get([k]))[0]?.cas;
      for (const op of ['incr', 'decr'] as const) {
        const r = await u.arith(op, k, 1n);
        const now = (await u.get([k]))[0]?.cas;
        assert.notEqual(now, before, `${op}: a new unique`);
        assert.equal(r.status === 'OK' ? r.cas : undefined, now, `${op} answers the unique it made`);
      }
    });

    test('cas: the unique from get stores once, then EXISTS; missing NOT_FOUND', async () => {
      const k = key('cas');
      await set(k, 'v');
      const cas = (await u.get([k]))[0]?.cas;
      assert.ok(cas !== undefined && cas > 0n);
      assert.equal((await u.store({ mode: 'cas', key: k, value: b('w'), flags: 0, deadline: 0, cas })).status, 'STORED');
      assert.equal((await u.store({ mode: 'cas', key: k, value: b('x'), flags: 0, deadline: 0, cas })).status, 'EXISTS');
      assert.equal(await value(k), 'w');
      assert.equal((await u.store({ mode: 'cas', key: key('none'), value: b('x'), flags: 0, deadline: 0, cas: 1n })).status, 'NOT_FOUND');
    });

    test('sets whose unique the caller does not want still make new ones (withCas false)', async () => {
      const keys = [key('nocas'), key('nocas'), key('nocas')];
      await Promise.all(keys.map((k) => set(k, 'old')));
      const before = (await u.get(keys)).map((h) => h?.cas);
      // In one pass, as a batch would gather them.
      const results = await Promise.all(keys.map((k) => u.store({ mode: 'set', key: k, value: b('new'), flags: 3, deadline: 0, withCas: false })));
      assert.deepEqual(results.map((r) => r.status), ['STORED', 'STORED', 'STORED']);
      const after = await u.get(keys);
      assert.deepEqual(after.map((h) => [h?.value.toString(), h?.flags]), [['new', 3], ['new', 3], ['new', 3]]);
      const uniques = after.map((h) => h?.cas as bigint);
      assert.equal(new Set(uniques).size, 3, 'each set its own unique');
      uniques.forEach((c, i) => assert.notEqual(c, before[i], 'a new unique, not the old one'));
      // What a store did report is the unique a get reports.
      results.forEach((r, i) => r.cas === undefined || assert.equal(r.cas, uniques[i]));
      const k = keys[0] as string;
      assert.equal((await u.store({ mode: 'cas', key: k, value: b('x'), flags: 0, deadline: 0, cas: before[0] as bigint })).status, 'EXISTS');
      assert.equal((await u.store({ mode: 'cas', key: k, value: b('y'), flags: 0, deadline: 0, cas: uniques[0] as bigint })).status, 'STORED');
    });

    test('incr/decr: wrap at 2^64, floor at 0, non-numeric, missing', async () => {
      const k = key('n');
      await set(k, '18446744073709551615', 5);
      assert.deepEqual(await arith('incr', k, 1n), { status: 'OK', value: 0n });
      assert.deepEqual(await arith('incr', k, 10n), { status: 'OK', value: 10n });
      assert.deepEqual(await arith('decr', k, 3n), { status: 'OK', value: 7n });
      assert.deepEqual(await arith('decr', k, 100n), { status: 'OK', value: 0n });
      assert.equal((await u.get([k]))[0]?.flags, 5);
      assert.deepEqual(await arith('incr', k, 18446744073709551615n), { status: 'OK', value: 18446744073709551615n });
      const s = key('s');
      await set(s, 'hi');
      assert.deepEqual(await arith('incr', s, 1n), { status: 'NON_NUMERIC' });
      assert.deepEqual(await arith('incr', key('none'), 1n), { status: 'NOT_FOUND' });
    });

    test('delete, touch, gat', async () => {
      const k = key('d');
      await set(k, 'v');
      const deadline = Date.now() + 2 * DAY;
      assert.equal(await u.touch(k, deadline), 'TOUCHED');
      assert.ok(Math.abs(((await u.get([k]))[0]?.deadline ?? 0) - deadline) < 3000);
      const later = Date.now() + 3 * DAY;
      const [g] = await u.get([k], later);
      assert.equal(g?.value.toString(), 'v');
      assert.ok(Math.abs(((await u.get([k]))[0]?.deadline ?? 0) - later) < 3000, 'gat set the new deadline');
      assert.equal(await u.touch(key('none'), deadline), 'NOT_FOUND');
      assert.equal(await u.delete(k), 'DELETED');
      assert.equal(await u.delete(k), 'NOT_FOUND');
      assert.equal(await value(k), undefined);
      const t = key('t');
      await set(t, 'v');
      assert.equal(await u.touch(t, EXPIRED), 'TOUCHED');
      assert.equal(await value(t), undefined, 'touch -1 expires it');
    });

    test('touch withItem answers the flags and unique the item had, which the touch leaves as they were', async () => {
      // A binary TOUCH answers them (memcached's proto_bin.c); before, touch answered TOUCHED only.
      const k = key('touch-item');
      const cas = (await set(k, 'v', 4294967295)).cas ?? (await u.get([k]))[0]?.cas;
      const deadline = Date.now() + 2 * DAY;
      const got = await u.touch(k, deadline, true);
      assert.deepEqual(got, { flags: 4294967295, cas });
      const [hit] = await u.get([k]);
      assert.equal(hit?.cas, cas, 'the unique a get reads after the touch is the one it answered');
      assert.ok(Math.abs((hit?.deadline ?? 0) - deadline) < 3000, 'touched');
      assert.deepEqual(await u.touch(k, deadline, true), got, 'the same deadline again: the same answer');
      assert.equal(await u.touch(key('none'), deadline, true), 'NOT_FOUND');
      assert.equal(await u.touch(k, deadline), 'TOUCHED', 'without withItem: TOUCHED as before');
      // A deadline in the past expires the item: the answer is the item's all the same (memcached).
      assert.deepEqual(await u.touch(k, EXPIRED, true), { flags: 4294967295, cas });
      assert.equal(await value(k), undefined);
    });

    test("a key's writes land in the order they were sent, whatever each costs the store (hazard 1)", async () => {
      // The router sends a key's writes one after another without waiting (write-wait copies
      // answers before a slow store has), and counts on each store applying them in that order.
      const k = key('order');
      // set, then delete, in one pass: a delete that overtook the set would leave the set's value.
      const [stored, deleted] = await Promise.all([set(k, 'v1'), u.delete(k)]);
      assert.equal(stored.status, 'STORED');
      assert.equal(deleted, 'DELETED');
      assert.equal(await value(k), undefined);
      // delete, then set: the set stands.
      await set(k, 'v0');
      const [gone, again] = await Promise.all([u.delete(k), set(k, 'v2')]);
      assert.deepEqual([gone, again.status], ['DELETED', 'STORED']);
      assert.equal(await value(k), 'v2');
      // set, set, incr, append, touch: each sees the one before.
      const results = await Promise.all([
        set(k, '10'),
        set(k, '20'),
        arith('incr', k, 1n),
        u.store({ mode: 'append', key: k, value: b('5'), flags: 0, deadline: 0 }),
        u.touch(k, Date.now() + DAY),
      ]);
      assert.deepEqual(results.slice(2).map((r) => (typeof r === 'string' || !('status' in r) ? r : r.status)), ['OK', 'STORED', 'TOUCHED']);
      assert.deepEqual(results[2], { status: 'OK', value: 21n });
      assert.equal(await value(k), '215');
    });

    test('two clients racing add on one key: exactly one wins', async () => {
      const second = inst!.second();
      for (let round = 0; round < 20; round++) {
        const k = key('race');
        const rs = await Promise.all([u, second, u, second].map((c, i) =>
          c.store({ mode: 'add', key: k, value: b(`c${i}`), flags: 0, deadline: 0 })));
        assert.equal(rs.filter((r) => r.status === 'STORED').length, 1, `round ${round}: ${rs.map((r) => r.status)}`);
      }
    });

    test('two clients racing cas with one unique: exactly one wins', async () => {
      const second = inst!.second();
      for (let round = 0; round < 20; round++) {
        const k = key('casrace');
        await set(k, 'v');
        const cas = (await u.get([k]))[0]?.cas;
        const rs = await Promise.all([u, second, u, second].map((c, i) =>
          c.store({ mode: 'cas', key: k, value: b(`c${i}`), flags: 0, deadline: 0, cas })));
        assert.equal(rs.filter((r) => r.status === 'STORED').length, 1, `round ${round}: ${rs.map((r) => r.status)}`);
      }
    });

    test('probe answers; flush empties the store', async () => {
      await u.probe();
      const k = key('f');
      await set(k, 'v');
      await u.flush();
      assert.equal(await value(k), undefined);
    });
  });
}
