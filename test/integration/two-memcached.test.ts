/**
 * mcmux (the real binary) in front of two private memcached processes: every text command
 * through mcmux, from a raw socket and from a real client library (`memcached` on npm), with
 * each memcached checked directly; then the failures: an upstream killed (SIGKILL) or frozen
 * (SIGSTOP), and the first one restarted empty and refilled by read repair.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import Memcached from 'memcached';
import {
  END,
  type McmuxProcess,
  type PeekedItem as Item,
  type RawClient,
  eventually,
  killAndWait,
  peekItem,
  rawClient,
  startMcmux,
} from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';

/** Bound on any single reply: generous against a loaded CI machine, far from "forever". */
const REPLY_MS = 5000;
/** Upstream timeout given to mcmux: a frozen memcached costs this much per request. */
const UPSTREAM_TIMEOUT_MS = 1000;
const MAX_ITEM_SIZE = 4096;

/** Reads `key` straight from one memcached, bypassing mcmux. */
const peek = (mc: MemcachedProcess, key: string): Promise<Item | undefined> => peekItem(mc.port, key, REPLY_MS);

function valueReply(key: string, flags: number, value: string): string {
  return `VALUE ${key} ${flags} ${value.length}\r\n${value}\r\nEND\r\n`;
}

test('mcmux in front of two memcached processes', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc1 = await startMemcached();
  const mc2 = await startMemcached();
  const mcs = [mc1, mc2];
  t.after(() => Promise.all([mc1.stop(), mc2.stop()]));
  const clients: RawClient[] = [];
  t.after(() => clients.forEach((c) => c.close()));
  const mux: McmuxProcess = await startMcmux([
    '--upstream', mc1.url,
    '--upstream', mc2.url,
    '--timeout', String(UPSTREAM_TIMEOUT_MS),
    '--max-item-size', String(MAX_ITEM_SIZE),
    '--log-level', 'warn',
  ]);
  t.after(async () => {
    const exit = await mux.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `mcmux did not exit cleanly on SIGTERM; stderr: ${mux.logs().stderr}`);
  });
  const client = async (): Promise<RawClient> => {
    const c = await rawClient(mux.port);
    clients.push(c);
    return c;
  };

  /** Both memcached processes hold exactly `value` (and `flags`) under `key`. */
  async function onBoth(key: string, value: string, flags?: number): Promise<Item[]> {
    const items: Item[] = [];
    for (const [i, mc] of mcs.entries()) {
      const item = await peek(mc, key);
      assert.ok(item, `memcached #${i + 1} has no ${key}`);
      assert.equal(item.value, value, `memcached #${i + 1}, ${key}`);
      if (flags !== undefined) assert.equal(item.flags, flags, `memcached #${i + 1}, flags of ${key}`);
      items.push(item);
    }
    return items;
  }

  async function onNeither(key: string): Promise<void> {
    for (const [i, mc] of mcs.entries()) assert.equal(await peek(mc, key), undefined, `memcached #${i + 1} still has ${key}`);
  }

  await t.test('raw socket: set, get, gets, cas land on both memcached', async () => {
    const c = await client();
    assert.equal(await c.ask('set k1 5 0 5\r\nhello\r\n'), 'STORED\r\n');
    await onBoth('k1', 'hello', 5);
    assert.equal(await c.ask('get k1\r\n', END), valueReply('k1', 5, 'hello'));
    const gets = await c.ask('gets k1\r\n', END);
    const m = /^VALUE k1 5 5 (\d+)\r\nhello\r\nEND\r\n$/.exec(gets);
    assert.ok(m, `gets: ${JSON.stringify(gets)}`);
    const unique = m[1] as string;
    assert.equal(await c.ask(`cas k1 6 0 5 ${unique}\r\nworld\r\n`), 'STORED\r\n');
    await onBoth('k1', 'world', 6);
    // T15: the unique is spent.
    assert.equal(await c.ask(`cas k1 7 0 5 ${unique}\r\nagain\r\n`), 'EXISTS\r\n');
    await onBoth('k1', 'world', 6);
    assert.equal(await c.ask('cas nokey1 0 0 1 1\r\nx\r\n'), 'NOT_FOUND\r\n');
    await onNeither('nokey1');
    // T16: request order, duplicates repeated, misses omitted.
    assert.equal(await c.ask('set k2 0 0 2\r\nbb\r\n'), 'STORED\r\n');
    assert.equal(
      await c.ask('get k1 nokey k2 k1\r\n', END),
      'VALUE k1 6 5\r\nworld\r\nVALUE k2 0 2\r\nbb\r\nVALUE k1 6 5\r\nworld\r\nEND\r\n',
    );
  });

  await t.test('raw socket: add, replace, append, prepend', async () => {
    const c = await client();
    assert.equal(await c.ask('add a1 1 0 3\r\none\r\n'), 'STORED\r\n');
    await onBoth('a1', 'one', 1);
    assert.equal(await c.ask('add a1 2 0 3\r\ntwo\r\n'), 'NOT_STORED\r\n');
    await onBoth('a1', 'one', 1);
    assert.equal(await c.ask('replace nokey2 0 0 1\r\nx\r\n'), 'NOT_STORED\r\n');
    await onNeither('nokey2');
    assert.equal(await c.ask('replace a1 3 0 3\r\nthr\r\n'), 'STORED\r\n');
    await onBoth('a1', 'thr', 3);
    assert.equal(await c.ask('append a1 0 0 2\r\n->\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('prepend a1 0 0 2\r\n<-\r\n'), 'STORED\r\n');
    // append/prepend keep the item's flags.
    await onBoth('a1', '<-thr->', 3);
    assert.equal(await c.ask('get a1\r\n', END), valueReply('a1', 3, '<-thr->'));
    assert.equal(await c.ask('append nokey3 0 0 1\r\nx\r\n'), 'NOT_STORED\r\n');
    await onNeither('nokey3');
  });

  await t.test('raw socket: incr and decr replicate the resulting value', async () => {
    const c = await client();
    assert.equal(await c.ask('set n1 0 0 2\r\n10\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('incr n1 5\r\n'), '15\r\n');
    await onBoth('n1', '15');
    assert.equal(await c.ask('decr n1 20\r\n'), '0\r\n');
    const [a, b] = await Promise.all(mcs.map((mc) => peek(mc, 'n1')));
    // memcached may leave a shortened number padded with spaces; both must hold the same bytes.
    assert.equal(a?.value.trimEnd(), '0');
    assert.equal(b?.value, a?.value);
    // T14: 64-bit wrap.
    assert.equal(await c.ask('set n2 0 0 20\r\n18446744073709551615\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('incr n2 1\r\n'), '0\r\n');
    const [w1, w2] = await Promise.all(mcs.map((mc) => peek(mc, 'n2')));
    assert.equal(w1?.value.trimEnd(), '0');
    assert.equal(w2?.value, w1?.value);
    assert.equal(await c.ask('incr nokey4 1\r\n'), 'NOT_FOUND\r\n');
    await onNeither('nokey4');
    // T12
    assert.equal(await c.ask('set s1 0 0 2\r\nhi\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('incr s1 1\r\n'), 'CLIENT_ERROR cannot increment or decrement non-numeric value\r\n');
    await onBoth('s1', 'hi');
  });

  await t.test('raw socket: touch, gat and gats set the lifetime on both', async () => {
    const c = await client();
    assert.equal(await c.ask('set t1 0 0 1\r\nx\r\n'), 'STORED\r\n');
    for (const item of await onBoth('t1', 'x')) assert.equal(item.ttl, -1, 'stored with exptime 0: no lifetime');
    assert.equal(await c.ask('touch t1 100\r\n'), 'TOUCHED\r\n');
    for (const item of await onBoth('t1', 'x')) assert.ok(item.ttl > 90 && item.ttl <= 100, `ttl after touch 100: ${item.ttl}`);
    assert.equal(await c.ask('touch nokey5 100\r\n'), 'NOT_FOUND\r\n');

    assert.equal(await c.ask('gat 200 t1\r\n', END), valueReply('t1', 0, 'x'));
    // The upstream that answered is touched in the same operation, the others in the background.
    await eventually('gat 200 reaches both memcached', async () => {
      const items = await Promise.all(mcs.map((mc) => peek(mc, 't1')));
      return items.every((i) => i !== undefined && i.ttl > 190 && i.ttl <= 200);
    });
    const gats = await c.ask('gats 300 t1\r\n', END);
    assert.match(gats, /^VALUE t1 0 1 \d+\r\nx\r\nEND\r\n$/);
    await eventually('gats 300 reaches both memcached', async () => {
      const items = await Promise.all(mcs.map((mc) => peek(mc, 't1')));
      return items.every((i) => i !== undefined && i.ttl > 290 && i.ttl <= 300);
    });
    assert.equal(await c.ask('gat 100 nokey6\r\n', END), 'END\r\n');
  });

  await t.test('concurrent writes of one key from many clients: both memcached end with the same value', async () => {
    // mcmux keeps two connections to each memcached, served there by different threads: writes
    // of one key must travel on one of them, or the two copies can land in opposite orders.
    const writers = await Promise.all(Array.from({ length: 16 }, () => client()));
    for (let round = 0; round < 5; round++) {
      const key = `contended.${round}`;
      await Promise.all(
        writers.map((c, i) => {
          let batch = '';
          for (let j = 0; j < 20; j++) batch += `set ${key} 0 0 ${`${i}.${j}`.length}\r\n${i}.${j}\r\n`;
          return c.ask(batch, (text) => text.split('STORED\r\n').length > 20, REPLY_MS);
        }),
      );
      const [one, two] = [await peek(mc1, key), await peek(mc2, key)];
      assert.ok(one && two);
      assert.equal(two.value, one.value, `round ${round}: the two copies of ${key} differ`);
    }
  });

  await t.test('raw socket: delete removes the key from both', async () => {
    const c = await client();
    assert.equal(await c.ask('set d1 0 0 1\r\nx\r\n'), 'STORED\r\n');
    await onBoth('d1', 'x');
    assert.equal(await c.ask('delete d1\r\n'), 'DELETED\r\n');
    await onNeither('d1');
    assert.equal(await c.ask('get d1\r\n', END), 'END\r\n');
    assert.equal(await c.ask('delete d1\r\n'), 'NOT_FOUND\r\n');
    // T17: noreply, pipelined with a read on the same connection.
    assert.equal(await c.ask('set d2 0 0 1 noreply\r\nx\r\nget d2\r\n', END), valueReply('d2', 0, 'x'));
    assert.equal(await c.ask('delete d2 noreply\r\nget d2\r\n', END), 'END\r\n');
    await onNeither('d2');
  });

  await t.test('T9: add with exptime 2678400 (1970) stores nothing on either memcached', async () => {
    const c = await client();
    assert.equal(await c.ask('add t9 0 2678400 0\r\n\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('get t9\r\n', END), 'END\r\n');
    await onNeither('t9');
    // The same for a set, and a set over an existing session must remove it.
    assert.equal(await c.ask('set t9b 0 0 3\r\nold\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('set t9b 0 2678400 3\r\nnew\r\n'), 'STORED\r\n');
    assert.equal(await c.ask('get t9b\r\n', END), 'END\r\n');
    await onNeither('t9b');
  });

  await t.test('T5: a value over --max-item-size deletes the old value on both memcached', async () => {
    const c = await client();
    assert.equal(await c.ask('set big 0 0 3\r\nold\r\n'), 'STORED\r\n');
    await onBoth('big', 'old');
    // The refused block is full of command lines: swallowed, never executed.
    const block = 'version\r\n'.repeat(Math.ceil((MAX_ITEM_SIZE + 1000) / 9));
    c.send(`set big 0 0 ${block.length}\r\n${block}\r\n`);
    assert.equal(await c.readUntil('\r\n', REPLY_MS), 'SERVER_ERROR object too large for cache\r\n');
    assert.equal(await c.ask('get big\r\n', END), 'END\r\n');
    await onNeither('big');
    // The largest accepted value still goes through.
    const max = 'v'.repeat(MAX_ITEM_SIZE);
    assert.equal(await c.ask(`set big 0 0 ${max.length}\r\n${max}\r\n`), 'STORED\r\n');
    await onBoth('big', max);
  });

  await t.test('T23: flush_all is refused without --allow-flush and wipes nothing', async () => {
    const c = await client();
    assert.equal(await c.ask('set keep 0 0 4\r\nkeep\r\n'), 'STORED\r\n');
    const reply = await c.ask('flush_all\r\n');
    assert.match(reply, /^SERVER_ERROR [^\r\n]*--allow-flush[^\r\n]*\r\n$/);
    assert.match(await c.ask('flush_all 0\r\n'), /^SERVER_ERROR /);
    await onBoth('keep', 'keep');
  });

  await t.test('the memcached npm client, every command', async () => {
    const mcl = new Memcached(`127.0.0.1:${mux.port}`, { retries: 0, timeout: REPLY_MS, poolSize: 2, idle: 1000 });
    try {
      /** Runs one callback-style call with a bound; resolves with [err, result]. */
      const call = <R>(f: (cb: (err: unknown, r: R) => void) => void): Promise<[unknown, R | undefined]> =>
        new Promise((res, rej) => {
          const timer = setTimeout(() => rej(new Error(`memcached client: no answer within ${REPLY_MS} ms`)), REPLY_MS);
          f((err, r) => {
            clearTimeout(timer);
            res([err, r]);
          });
        });
      const ok = async <R>(f: (cb: (err: unknown, r: R) => void) => void): Promise<R | undefined> => {
        const [err, r] = await call(f);
        assert.ifError(err);
        return r;
      };

      assert.equal(await ok<boolean>((cb) => mcl.set('npm:s', 'hello', 300, cb)), true);
      assert.equal(await ok<unknown>((cb) => mcl.get('npm:s', cb)), 'hello');
      for (const item of await onBoth('npm:s', 'hello', 0)) assert.ok(item.ttl > 290 && item.ttl <= 300, `ttl ${item.ttl}`);

      assert.equal(await ok<boolean>((cb) => mcl.set('npm:o', { a: 1, b: [2] }, 300, cb)), true);
      assert.deepEqual(await ok<unknown>((cb) => mcl.get('npm:o', cb)), { a: 1, b: [2] });
      await onBoth('npm:o', '{"a":1,"b":[2]}', 2); // the client's JSON flag survives the trip

      const gets = await ok<{ cas: string } & Record<string, unknown>>((cb) => mcl.gets('npm:s', cb));
      assert.equal(gets?.['npm:s'], 'hello');
      assert.match(String(gets?.cas), /^\d+$/);
      assert.equal(await ok<boolean>((cb) => mcl.cas('npm:s', 'world', String(gets?.cas), 300, cb)), true);
      await onBoth('npm:s', 'world');
      assert.equal(await ok<boolean>((cb) => mcl.cas('npm:s', 'stale', String(gets?.cas), 300, cb)), false, 'second cas with a spent unique');
      await onBoth('npm:s', 'world');

      const [addErr] = await call<boolean>((cb) => mcl.add('npm:s', 'other', 300, cb));
      assert.ok(addErr instanceof Error && (addErr as Error & { notStored?: boolean }).notStored, `add on an existing key: ${String(addErr)}`);
      assert.equal(await ok<boolean>((cb) => mcl.add('npm:new', 'fresh', 300, cb)), true);
      await onBoth('npm:new', 'fresh');
      const [replErr] = await call<boolean>((cb) => mcl.replace('npm:none', 'x', 300, cb));
      assert.ok(replErr instanceof Error, 'replace on a missing key must fail');
      assert.equal(await ok<boolean>((cb) => mcl.replace('npm:new', 'newer', 300, cb)), true);
      assert.equal(await ok<boolean>((cb) => mcl.append('npm:new', '-end', cb)), true);
      assert.equal(await ok<boolean>((cb) => mcl.prepend('npm:new', 'start-', cb)), true);
      assert.equal(await ok<unknown>((cb) => mcl.get('npm:new', cb)), 'start-newer-end');
      await onBoth('npm:new', 'start-newer-end');

      assert.equal(await ok<boolean>((cb) => mcl.set('npm:n', '10', 300, cb)), true);
      assert.equal(await ok<number | boolean>((cb) => mcl.incr('npm:n', 5, cb)), 15);
      await onBoth('npm:n', '15');
      assert.equal(await ok<number | boolean>((cb) => mcl.decr('npm:n', 3, cb)), 12);
      await onBoth('npm:n', '12');
      assert.equal(await ok<number | boolean>((cb) => mcl.incr('npm:nokey', 1, cb)), false);

      assert.equal(await ok<boolean>((cb) => mcl.touch('npm:new', 100, cb as (err: unknown) => void)), true);
      for (const item of await onBoth('npm:new', 'start-newer-end')) assert.ok(item.ttl > 90 && item.ttl <= 100, `ttl ${item.ttl}`);

      assert.deepEqual(await ok<Record<string, unknown>>((cb) => mcl.getMulti(['npm:s', 'npm:missing', 'npm:new'], cb)), {
        'npm:s': 'world',
        'npm:new': 'start-newer-end',
      });

      assert.equal(await ok<boolean>((cb) => mcl.del('npm:new', cb)), true);
      assert.equal(await ok<unknown>((cb) => mcl.get('npm:new', cb)), undefined);
      await onNeither('npm:new');
    } finally {
      mcl.end();
    }
  });

  await t.test('SIGKILL of the second memcached: reads and writes keep working from the first', async () => {
    const c = await client();
    assert.equal(await c.ask('set before2 0 0 6\r\nbefore\r\n'), 'STORED\r\n');
    await killAndWait(mc2);
    // Every reply arrives within REPLY_MS: nobody waits for the dead upstream.
    assert.equal(await c.ask('get before2\r\n', END, REPLY_MS), valueReply('before2', 0, 'before'));
    assert.equal(await c.ask('set during2 3 0 6\r\nduring\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.deepEqual(await peek(mc1, 'during2'), { value: 'during', flags: 3, ttl: -1 });
    assert.equal(await c.ask('get during2 before2\r\n', END, REPLY_MS), 'VALUE during2 3 6\r\nduring\r\nVALUE before2 0 6\r\nbefore\r\nEND\r\n');
    assert.equal(await c.ask('add lock.x 0 0 1\r\n1\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('add lock.x 0 0 1\r\n1\r\n', undefined, REPLY_MS), 'NOT_STORED\r\n');
    assert.equal(await c.ask('delete lock.x\r\n', undefined, REPLY_MS), 'DELETED\r\n');
    assert.equal(await c.ask('set cnt2 0 0 1\r\n1\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal(await c.ask('incr cnt2 1\r\n', undefined, REPLY_MS), '2\r\n');
    assert.equal(await c.ask('touch cnt2 100\r\n', undefined, REPLY_MS), 'TOUCHED\r\n');
    assert.equal(await c.ask('gat 100 cnt2\r\n', END, REPLY_MS), valueReply('cnt2', 0, '2'));
    // A fresh connection is served too.
    const c2 = await client();
    assert.equal(await c2.ask('get during2\r\n', END, REPLY_MS), valueReply('during2', 3, 'during'));

    // Back, empty: mcmux reconnects on its own and replicates to it again.
    await mc2.restart();
    await eventually('mcmux writes to the restarted second memcached', async () => {
      assert.equal(await c.ask('set probe2 0 0 1\r\np\r\n', undefined, REPLY_MS), 'STORED\r\n');
      return (await peek(mc2, 'probe2')) !== undefined;
    });
  });

  await t.test('SIGKILL of the first memcached, restarted empty: served by the second, then read repair', async () => {
    const c = await client();
    assert.equal(await c.ask('set rr 42 600 9\r\nrepair-me\r\n'), 'STORED\r\n');
    await onBoth('rr', 'repair-me', 42);
    await killAndWait(mc1);
    assert.equal(await c.ask('get rr\r\n', END, REPLY_MS), valueReply('rr', 42, 'repair-me'));
    assert.equal(await c.ask('set during1 0 300 6\r\nduring\r\n', undefined, REPLY_MS), 'STORED\r\n');
    assert.equal((await peek(mc2, 'during1'))?.value, 'during');
    // The second memcached restarted empty in the test before and is still fenced (lock-fence):
    // with the first dead, nobody may decide a conditional command (hazard 2).
    assert.match(await c.ask('incr nokey7 1\r\n', undefined, REPLY_MS), /^SERVER_ERROR no upstream answered: .* came back empty and may not decide until its lock-fence ends\r\n$/);
    assert.equal(await c.ask('delete during1\r\n', undefined, REPLY_MS), 'DELETED\r\n');
    assert.equal(await c.ask('get during1\r\n', END, REPLY_MS), 'END\r\n');

    await mc1.restart();
    assert.equal(await peek(mc1, 'rr'), undefined, 'the first memcached restarted empty');
    let reads = 0;
    await eventually('read repair puts rr back into the first memcached', async () => {
      // Every read in the meantime is a hit: the empty first upstream never answers a miss for it.
      assert.equal(await c.ask('get rr\r\n', END, REPLY_MS), valueReply('rr', 42, 'repair-me'));
      reads++;
      return (await peek(mc1, 'rr')) !== undefined;
    });
    assert.ok(reads >= 1);
    const [first, second] = await Promise.all([peek(mc1, 'rr'), peek(mc2, 'rr')]);
    assert.equal(first?.value, 'repair-me');
    assert.equal(first?.flags, 42);
    assert.ok(second && second.ttl > 0 && second.ttl <= 600, `ttl on the second: ${second?.ttl}`);
    // Repaired with its remaining lifetime: not forever, not a fresh 600 s beyond what the second has.
    assert.ok(first && first.ttl > 0, `the repaired copy must expire; ttl ${first?.ttl}`);
    assert.ok(Math.abs(first.ttl - second.ttl) <= 2, `ttl on the first ${first.ttl} vs the second ${second.ttl}`);
    // The deleted key was not resurrected anywhere.
    await onNeither('during1');
  });

  await t.test('SIGSTOP of the second memcached: replies still come, bounded by the upstream timeout', async () => {
    const c = await client();
    assert.equal(await c.ask('set frozen 0 0 6\r\nbefore\r\n'), 'STORED\r\n');
    await mc2.pause();
    try {
      assert.equal(await c.ask('get frozen\r\n', END, REPLY_MS), valueReply('frozen', 0, 'before'));
      // write-wait all: the answer waits for the frozen upstream's timeout, then one copy is enough.
      assert.equal(await c.ask('set frozen 0 0 5\r\nafter\r\n', undefined, REPLY_MS), 'STORED\r\n');
      assert.equal(await c.ask('get frozen\r\n', END, REPLY_MS), valueReply('frozen', 0, 'after'));
      assert.equal((await peek(mc1, 'frozen'))?.value, 'after');
      assert.equal(mux.proc.exitCode, null, 'mcmux is still running');
    } finally {
      mc2.resume();
    }
    await eventually('mcmux writes to the resumed second memcached', async () => {
      assert.equal(await c.ask('set probe3 0 0 1\r\nq\r\n', undefined, REPLY_MS), 'STORED\r\n');
      return (await peek(mc2, 'probe3')) !== undefined;
    });
  });
});
