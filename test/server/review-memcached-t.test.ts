/**
 * Review: memcached's own protocol tests (t/*.t of memcached/memcached: getset, incrdecr, cas,
 * flags, expirations, noreply, touch, getandtouch, flush-all, binary, issue_*), ported as a
 * differential test. The same bytes go to a private memcached (direct) and to an mcmux
 * (--allow-flush) in front of two other private memcached; the replies must be byte-identical,
 * or differ exactly as README's "Protocol support" documents. Normalised: the `version` text
 * (mcmux answers 1.6.21) and cas uniques (each named by the order it first appeared in its own
 * stream, so equal uniques stay equal and different ones different).
 *
 * Only what test/server/protocol-cases, review-cases, review-*differential and memccapable do
 * not already cover is ported: the .t scripts as whole sequences (their order is the point of
 * most issue_* regressions), flush_all in all its forms (the random differential leaves it out),
 * and the binary cases of binary.t that check one reply against another (incr's cas against a
 * get's, a quiet flush, an initial value's length).
 *
 * Each exchange ends with `version` (text) or NOOP (binary): its reply marks the end of the
 * replies owed. Where memcached's clock is the subject (an exptime, a delayed flush_all), what
 * must happen is polled (bounded); what must NOT happen (a cancelled delayed flush) has no event,
 * and the test waits past the time it named.
 *
 * Four findings failed on the code this was written against (87e730a) and are fixed: (1) a
 * delayed flush_all was a timer no later flush_all cancelled (router.ts flushAt), where memcached
 * keeps one flush time; (2) flush_all's delay was parsed more strictly than memcached's and with
 * another message (text request-parser.ts parseFlush); (3) a binary FLUSH delay was read as
 * signed; (4) an HTTP request line got `ERROR` before the close, where memcached writes nothing.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type McmuxProcess, eventually, startMcmux } from '../helpers/mcmux';
import { type MemcachedProcess, skipWithout, startMemcached } from '../helpers/servers';
import { type Wire, connectWire } from '../helpers/wire';
import { arithExtras, frame, parseResponseFrames, storeExtras } from '../helpers/binary-frame';

const skip = skipWithout('memcached', 'memcached');

interface Side {
  readonly name: string;
  readonly w: Wire;
  /** Every unique seen on this side, in order of first appearance. */
  readonly uniques: string[];
}

/** Names each cas unique by its first appearance in its own stream (u0, u1, ...). */
function nameUnique(side: Side, u: string): string {
  let i = side.uniques.indexOf(u);
  if (i < 0) i = side.uniques.push(u) - 1;
  return `u${i}`;
}

const VERSION_END = /VERSION [^\r\n]*\r\n$/;

function normaliseText(side: Side, text: string): string {
  return text
    .replace(/^(VALUE \S+ \d+ \d+) (\d+)\r\n/gm, (_m, head: string, u: string) => `${head} <${nameUnique(side, u)}>\r\n`)
    .replace(/VERSION [^\r\n]*\r\n/g, 'VERSION <v>\r\n');
}

/** The last unique this side saw for `key` in a gets reply (raw, for its next cas). */
function lastUnique(text: string, key: string): string {
  const all = [...text.matchAll(/^VALUE (\S+) \d+ \d+ (\d+)\r\n/gm)].filter((m) => m[1] === key);
  const m = all[all.length - 1];
  assert.ok(m, `a unique for ${key} in ${JSON.stringify(text)}`);
  return m[2] as string;
}

describe('review: memcached t/*.t, text protocol, memcached vs mcmux over two memcached', { skip }, () => {
  let direct: MemcachedProcess | undefined;
  let ups: MemcachedProcess[] = [];
  let mux: McmuxProcess | undefined;
  const open: Wire[] = [];

  before(async () => {
    [direct, ...ups] = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
    mux = await startMcmux(['--upstream', (ups[0] as MemcachedProcess).url, '--upstream', (ups[1] as MemcachedProcess).url, '--log-level', 'warn', '--lock-fence', '0', '--allow-flush']);
  });
  after(async () => {
    for (const w of open) w.close();
    await mux?.stop();
    await Promise.all([direct?.stop(), ...ups.map((u) => u.stop())]);
  });

  async function pair(): Promise<[Side, Side]> {
    const [a, b] = await Promise.all([connectWire((direct as MemcachedProcess).port), connectWire((mux as McmuxProcess).port)]);
    open.push(a, b);
    return [
      { name: 'memcached', w: a, uniques: [] },
      { name: 'mcmux', w: b, uniques: [] },
    ];
  }

  /** Sends `bytes` (or what `bytes(side)` makes) then `version` to each side; the raw replies before the version. */
  async function exchangeRaw(sides: readonly Side[], bytes: string | ((s: Side) => string)): Promise<string[]> {
    return Promise.all(
      sides.map(async (s) => {
        const text = await s.w.ask(`${typeof bytes === 'string' ? bytes : bytes(s)}version\r\n`, VERSION_END, 5000);
        return text.replace(VERSION_END, '');
      }),
    );
  }

  /** The same, normalised, asserted identical on both sides; returns the common reply. */
  async function same(sides: readonly Side[], bytes: string | ((s: Side) => string), what: string): Promise<string> {
    const raw = await exchangeRaw(sides, bytes);
    const [a, b] = sides.map((s, i) => normaliseText(s, raw[i] as string));
    assert.equal(b, a, `${what}: mcmux answers as memcached does`);
    return a as string;
  }

  /**
   * Polls each side (bounded) until `get key` is a miss there: for what memcached's clock decides
   * (an exptime, a delayed flush), which ticks in whole seconds and has no event to wait on.
   */
  async function untilMiss(sides: readonly Side[], key: string): Promise<void> {
    for (const side of sides) {
      await eventually(`${side.name}: ${key} is gone`, async () => (await side.w.ask(`get ${key}\r\n`, /END\r\n$/, 5000)) === 'END\r\n', 6000);
    }
  }

  /** Raw gets reply text of each side (for its uniques). */
  async function gets(sides: readonly Side[], keys: string): Promise<string[]> {
    const raw = await exchangeRaw(sides, `gets ${keys}\r\n`);
    const norm = sides.map((s, i) => normaliseText(s, raw[i] as string));
    assert.equal(norm[1], norm[0], `gets ${keys}`);
    return raw;
  }

  it('getset.t: set, add, replace, delete, cas with a bad and a good unique, a pipelined set/delete, answered alike', async () => {
    const s = await pair();
    await same(s, 'set gs_foo 0 0 6\r\nfooval\r\nget gs_foo\r\nadd gs_bar 0 0 6\r\nbarval\r\nget gs_bar\r\nadd gs_foo 0 0 5\r\nfoov2\r\nget gs_foo\r\n', 'set/add');
    await same(s, 'replace gs_bar 0 0 6\r\nbarva2\r\nreplace gs_notexist 0 0 6\r\nbarva2\r\ndelete gs_foo\r\ndelete gs_foo\r\n', 'replace/delete');
    await same(s, 'add gs_moo 0 0 6\r\nmooval\r\nget gs_moo\r\ncas gs_moo 0 0 6 0\r\nMOOVAL\r\n', 'cas with unique 0');
    const g = await gets(s, 'gs_moo');
    await same(s, (side) => `cas gs_moo 0 0 6 ${lastUnique(g[s.indexOf(side)] as string, 'gs_moo')}\r\nMOOVAL\r\nget gs_moo\r\n`, 'cas with the gets unique');
    const reply = await same(s, 'set gs_foo 0 0 6\r\nfooval\r\ndelete gs_foo\r\nset gs_foo 0 0 6\r\nfooval\r\ndelete gs_foo\r\n', 'pipelined set/delete');
    assert.equal(reply, 'STORED\r\nDELETED\r\nSTORED\r\nDELETED\r\n');
  });

  it('getset.t: values from 1 KiB to just under 1 MiB (every 74 KiB) round-trip alike', async () => {
    const s = await pair();
    // memcached's own limit (-I 1m, item header included) is a little under mcmux's
    // max-item-size (1 MiB of value): compare only sizes memcached stores.
    for (let len = 1024; len < 1024 * 1024 - 1024; len += 2048 * 37) {
      const v = 'B'.repeat(len);
      const reply = await same(s, `set gs_big_${len} 0 0 ${len}\r\n${v}\r\nget gs_big_${len}\r\n`, `size ${len}`);
      assert.equal(reply, `STORED\r\nVALUE gs_big_${len} 0 ${len}\r\n${v}\r\nEND\r\n`);
    }
  });

  it('incrdecr.t: past 2^63, wrap at 2^64, floor 0, a missing key, a non-numeric value', async () => {
    const s = await pair();
    await same(s, 'set id_bug21 0 0 19\r\n9223372036854775807\r\nincr id_bug21 1\r\nincr id_bug21 1\r\ndecr id_bug21 1\r\n', 'bug21');
    await same(s, 'set id_num 0 0 1\r\n1\r\nget id_num\r\nincr id_num 1\r\nget id_num\r\nincr id_num 8\r\nget id_num\r\ndecr id_num 1\r\ndecr id_num 9\r\ndecr id_num 5\r\n', 'num');
    await same(s, 'set id_num 0 0 10\r\n4294967296\r\nincr id_num 1\r\nset id_num 0 0 20\r\n18446744073709551615\r\nincr id_num 1\r\n', '2^32, 2^64-1');
    await same(s, 'decr id_bogus 5\r\ndecr incr 5\r\nset id_bigincr 0 0 1\r\n0\r\nincr id_bigincr 18446744073709551610\r\n', 'missing, big delta');
    await same(s, 'set id_text 0 0 2\r\nhi\r\nincr id_text 1\r\ndecr id_text 1\r\n', 'non-numeric');
  });

  it('issue_68.t: incr that makes a number longer (9 -> 10) reads back the longer number', async () => {
    const s = await pair();
    for (let i = 0; i < 10; i++) {
      const reply = await same(s, `set i68_${i} 0 0 1\r\n9\r\nget i68_${i}\r\nincr i68_${i} 1\r\nget i68_${i}\r\n`, `key ${i}`);
      assert.equal(reply, `STORED\r\nVALUE i68_${i} 0 1\r\n9\r\nEND\r\n10\r\nVALUE i68_${i} 0 2\r\n10\r\nEND\r\n`);
    }
  });

  it('cas.t: EXISTS for a foreign unique and a reused one, NOT_FOUND after delete, distinct uniques in a multi-gets, incr changes the unique', async () => {
    const s = await pair();
    await same(s, 'gets cas_foo\r\nset cas_foo 0 0 6\r\nbarval\r\ncas cas_foo 0 0 6 123\r\nbarva2\r\n', 'foreign unique');
    const g = await gets(s, 'cas_foo');
    const u = (side: Side): string => lastUnique(g[s.indexOf(side)] as string, 'cas_foo');
    await same(s, (side) => `cas cas_foo 0 0 6 ${u(side)}\r\nbarva2\r\ncas cas_foo 0 0 6 ${u(side)}\r\nbarva2\r\ndelete cas_foo\r\ncas cas_foo 0 0 6 ${u(side)}\r\nbarva2\r\n`, 'reuse, delete');
    await same(s, 'set cas_foo1 0 0 1\r\n1\r\nset cas_foo2 0 0 1\r\n2\r\ngets cas_foo1\r\ngets cas_foo2\r\ngets cas_foo1 cas_foo2\r\n', 'multi-gets');
    await same(s, 'set cas_bug15 0 0 1\r\n0\r\ngets cas_bug15\r\nincr cas_bug15 1\r\ngets cas_bug15\r\n', 'bug15: incr changes the unique');
  });

  it('cas.t: two connections cas with the same unique: one STORED, the other EXISTS', async () => {
    const s1 = await pair();
    const s2 = await pair();
    await same(s1, 'set cas_race 0 0 1\r\nx\r\n', 'set');
    const g1 = await gets(s1, 'cas_race');
    const g2 = await gets(s2, 'cas_race');
    for (let i = 0; i < 2; i++) {
      const u1 = lastUnique(g1[i] as string, 'cas_race');
      const u2 = lastUnique(g2[i] as string, 'cas_race');
      const [r1, r2] = await Promise.all([
        (s1[i] as Side).w.ask(`cas cas_race 0 0 6 ${u1}\r\nbarva2\r\n`),
        (s2[i] as Side).w.ask(`cas cas_race 0 0 5 ${u2}\r\napple\r\n`),
      ]);
      assert.deepEqual([r1, r2].sort(), ['EXISTS\r\n', 'STORED\r\n'], `${(s1[i] as Side).name}: one cas wins`);
    }
  });

  it('cas.t: a bad flags, exptime or unique is CLIENT_ERROR; memcached then runs the empty block line as a command (ERROR), mcmux swallows it (documented)', async () => {
    for (const line of ['cas cas_bad blah 0 0 0', 'cas cas_bad 0 blah 0 0', 'cas cas_bad 0 0 0 blah']) {
      const s = await pair();
      const [a, b] = await exchangeRaw(s, `${line}\r\n\r\n`);
      assert.equal(a, 'CLIENT_ERROR bad command line format\r\nERROR\r\n', `memcached, ${line}`);
      assert.equal(b, 'CLIENT_ERROR bad command line format\r\n', `mcmux, ${line}`);
    }
  });

  it('flags.t: flags 0, 123, 2^16-1, 2^31 and 2^32-1 come back as stored', async () => {
    const s = await pair();
    for (const f of [0, 123, 2 ** 16 - 1, 2 ** 31, 2 ** 32 - 1]) {
      const reply = await same(s, `set fl_foo ${f} 0 6\r\nfooval\r\nget fl_foo\r\n`, `flags ${f}`);
      assert.equal(reply, `STORED\r\nVALUE fl_foo ${f} 6\r\nfooval\r\nEND\r\n`);
    }
  });

  it('noreply.t: every command with noreply answers nothing and takes effect', async () => {
    const s = await pair();
    await same(s, 'verbosity 0 noreply\r\nadd nr_foo 0 0 1 noreply\r\n1\r\nget nr_foo\r\nset nr_foo 0 0 1 noreply\r\n2\r\nget nr_foo\r\nreplace nr_foo 0 0 1 noreply\r\n3\r\nget nr_foo\r\nappend nr_foo 0 0 1 noreply\r\n4\r\nget nr_foo\r\nprepend nr_foo 0 0 1 noreply\r\n5\r\n', 'stores');
    const g = await gets(s, 'nr_foo');
    const reply = await same(s, (side) => `cas nr_foo 0 0 1 ${lastUnique(g[s.indexOf(side)] as string, 'nr_foo')} noreply\r\n6\r\nget nr_foo\r\nincr nr_foo 3 noreply\r\nget nr_foo\r\ndecr nr_foo 2 noreply\r\nget nr_foo\r\ndelete nr_foo noreply\r\nget nr_foo\r\n`, 'cas, arith, delete');
    assert.equal(reply, 'VALUE nr_foo 0 1\r\n6\r\nEND\r\nVALUE nr_foo 0 1\r\n9\r\nEND\r\nVALUE nr_foo 0 1\r\n7\r\nEND\r\nEND\r\n');
  });

  it('issue_3.t, issue_108.t: delete with a time is an error (silent with noreply); delete k 0 is a delete', async () => {
    const s = await pair();
    const reply = await same(s, 'delete i3_k\r\nadd i3_k 0 0 1\r\nx\r\ndelete i3_k 10 noreply\r\ndelete i3_k 10\r\ndelete i3_k noreply\r\nget i3_k\r\nset i3_k 0 0 1\r\nx\r\ndelete i3_k\r\nadd i3_k 0 0 1\r\nx\r\ndelete i3_k 0\r\nadd i3_k 0 0 1\r\nx\r\ndelete i3_k 0 noreply\r\nadd i3_k 0 0 1\r\nx\r\n', 'deletes');
    assert.equal(reply, 'NOT_FOUND\r\nSTORED\r\nCLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\nEND\r\nSTORED\r\nDELETED\r\nSTORED\r\nDELETED\r\nSTORED\r\nSTORED\r\n');
  });

  it('issue_29.t, issue_61.t, issue_152.t: an empty value, six sets in one packet, a get with a 251-byte key', async () => {
    const s = await pair();
    await same(s, 'set i29 0 0 0\r\n\r\nget i29\r\nset i29_b 0 0 0\r\n\r\n', 'empty value');
    await same(s, 'set i61 0 0 5\r\nBubba\r\n'.repeat(6), 'six sets');
    await same(s, 'set i152 1 0 1\r\na\r\n', 'set');
    // Alone: memcached 1.6.18 drops the replies of the commands read with such a get (see
    // review-differential.test.ts), a quirk of its own.
    await same(s, `get i152 ${'a'.repeat(251)}\r\n`, '251-byte key');
  });

  it('binary-get.t, bogus-commands.t: values holding NUL and CR bytes round-trip; an unknown command is ERROR', async () => {
    const s = await pair();
    const blobs = ['mooo\0', 'mumble\0\0\0\0\r\rblarg', '\0', '\r'];
    const reply = await same(s, blobs.map((b, i) => `set bg_foo${i} 0 0 ${b.length}\r\n${b}\r\nget bg_foo${i}\r\n`).join('') + 'boguscommand slkdsldkfjsd\r\n', 'blobs');
    assert.equal(reply, blobs.map((b, i) => `STORED\r\nVALUE bg_foo${i} 0 ${b.length}\r\n${b}\r\nEND\r\n`).join('') + 'ERROR\r\n');
  });

  /** Sends `line` to each side and waits (bounded) for it to close; what each wrote before. */
  async function closesAfter(s: readonly Side[], line: string): Promise<string[]> {
    return Promise.all(
      s.map(async (side) => {
        side.w.send(`${line}\r\n`);
        await Promise.race([side.w.closed, new Promise((_r, rej) => setTimeout(() => rej(new Error(`${side.name} did not close after ${line}`)), 5000).unref())]);
        return side.w.received;
      }),
    );
  }

  it('quit.t: quit closes the connection with nothing written', async () => {
    assert.deepEqual(await closesAfter(await pair(), 'quit'), ['', '']);
  });

  // memcached (proto_text.c, process_command_ascii: a line ending in HTTP/ is closed on without
  // a reply, so nothing is reflected to a browser) writes nothing; README says only that mcmux
  // closes. Before: request-parser.ts:325 returns fatal(err('ERROR')), so `ERROR\r\n` is
  // written before the close.
  for (const line of ['GET / HTTP/1.0', 'PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1', 'DELETE HTTP/1.1']) {
    it(`malicious-commands.t: '${line}' closes the connection with nothing written, as memcached does`, async () => {
      assert.deepEqual(await closesAfter(await pair(), line), ['', '']);
    });
  }

  it('touch.t, getandtouch.t: touch, gat and gats of a miss and of hits, with and without uniques', async () => {
    const s = await pair();
    await same(s, 'gat 10 gt_foo1\r\nset gt_foo1 0 2 7\r\nfooval1\r\nset gt_foo2 0 2 7\r\nfooval2\r\ngats 10 gt_foo1 gt_foo2\r\ngat 10 gt_foo1 gt_foo2\r\ntouch gt_foo1 10\r\ntouch gt_nope 10\r\n', 'gat/gats/touch');
  });

  it('expirations.t: a negative or past absolute exptime stores and expires at once, in set, add and touch', async () => {
    const s = await pair();
    const past = Math.floor(Date.now() / 1000) - 1;
    const reply = await same(s, `set ex_foo 0 ${past} 6\r\nfooval\r\nget ex_foo\r\nset ex_boo 0 -1 6\r\nbooval\r\nget ex_boo\r\nadd ex_boo 0 -1 6\r\nbooval\r\nadd ex_boo 0 0 6\r\nbooval\r\nget ex_boo\r\nset ex_tch 0 0 8\r\ntouchval\r\ntouch ex_tch ${past}\r\nget ex_tch\r\nset ex_tch 0 0 8\r\ntouchval\r\ntouch ex_tch -1\r\nget ex_tch\r\n`, 'expired at once');
    assert.equal(reply, 'STORED\r\nEND\r\nSTORED\r\nEND\r\nSTORED\r\nSTORED\r\nVALUE ex_boo 0 6\r\nbooval\r\nEND\r\nSTORED\r\nTOUCHED\r\nEND\r\nSTORED\r\nTOUCHED\r\nEND\r\n');
  });

  it('touch.t, getandtouch.t, expirations.t: touch and gat extend a 2 s item past its exptime; an add after an item expired is STORED', async () => {
    const s = await pair();
    await same(s, 'set te_touch 0 2 6\r\nfooval\r\nset te_gat 0 2 7\r\nfooval1\r\nset te_gats 0 2 7\r\nfooval2\r\nadd te_add 0 2 6\r\naddval\r\nadd te_add 0 2 7\r\naddval2\r\ntouch te_touch 10\r\ngat 10 te_gat\r\ngats 10 te_gats\r\n', 'set, touch, gat');
    // te_add was not touched: once it is gone (memcached's clock has passed the 2 s), the others
    // must still be there, and an add of te_add stores.
    await untilMiss(s, 'te_add');
    const reply = await same(s, 'get te_touch te_gat te_gats\r\nadd te_add 0 2 7\r\naddval3\r\nget te_add\r\n', 'after 2 s');
    assert.equal(reply, 'VALUE te_touch 0 6\r\nfooval\r\nVALUE te_gat 0 7\r\nfooval1\r\nVALUE te_gats 0 7\r\nfooval2\r\nEND\r\nSTORED\r\nVALUE te_add 0 7\r\naddval3\r\nEND\r\n');
  });

  it('flush-all.t: flush_all, flush_all 0, noreply, and a bad delay, answered alike', async () => {
    const s = await pair();
    await same(s, 'set fa_foo 0 0 6\r\nfooval\r\nget fa_foo\r\nflush_all\r\nget fa_foo\r\nset fa_foo 0 0 6\r\nfooval\r\nflush_all 0\r\nget fa_foo\r\n', 'flush_all, flush_all 0');
    await same(s, 'set fa_foo 0 0 3\r\nnew\r\nflush_all noreply\r\nget fa_foo\r\nset fa_foo 0 0 3\r\nnew\r\nflush_all 0 noreply\r\nget fa_foo\r\n', 'noreply');
  });

  // memcached (proto_text.c, process_flush_all_command) reads the delay with safe_strtol: a bad
  // one is `CLIENT_ERROR invalid exptime argument`, as for touch and gat; a negative one is a
  // flush now; a token after the delay is ignored. None is among README's documented
  // strictnesses. Before: request-parser.ts parseFlush answered `bad command line format`, refused
  // a negative delay, and answered ERROR to a token too many.
  for (const [name, bytes, label, expected] of [
    ['flush-all.t: flush_all invalid is CLIENT_ERROR invalid exptime argument, as for touch and gat', 'flush_all invalid\r\n', 'bad delay', 'CLIENT_ERROR invalid exptime argument\r\n'],
    ['flush_all -1 flushes now, as memcached does with a delay that is not positive', 'set fneg 0 0 1\r\nx\r\nflush_all -1\r\nget fneg\r\n', 'negative delay', 'STORED\r\nOK\r\nEND\r\n'],
    ['flush_all 0 x takes the delay and ignores the token after it, as memcached does', 'set fextra 0 0 1\r\nx\r\nflush_all 0 x\r\nget fextra\r\n', 'a token too many', 'STORED\r\nOK\r\nEND\r\n'],
  ] as const) {
    it(name, async () => {
      assert.equal(await same(await pair(), bytes, label), expected);
    });
  }

  it('flush-all.t, issue_140.t, issue_183.t: items set after a flush_all live; one with exptime 1 expires', async () => {
    const s = await pair();
    await same(s, 'set i183 0 0 1\r\n1\r\nflush_all\r\nset i183 0 0 1\r\n1\r\nget i183\r\nset i140 0 0 1\r\na\r\nflush_all\r\nset i140 0 1 1\r\na\r\nget i140\r\n', 'set after flush');
    await untilMiss(s, 'i140');
    await same(s, 'get i140\r\nget i183\r\n', 'after the exptime');
  });

  it('flush-all.t: flush_all 86400 answers OK and leaves the items (and those set after it) readable', async () => {
    const s = await pair();
    const reply = await same(s, 'set fd_foo 0 0 5\r\n12345\r\nflush_all 86400\r\nget fd_foo\r\nset fd_foo2 0 0 5\r\n54321\r\nget fd_foo fd_foo2\r\nflush_all 0\r\nget fd_foo fd_foo2\r\n', 'far flush');
    assert.equal(reply, 'STORED\r\nOK\r\nVALUE fd_foo 0 5\r\n12345\r\nEND\r\nSTORED\r\nVALUE fd_foo 0 5\r\n12345\r\nVALUE fd_foo2 0 5\r\n54321\r\nEND\r\nOK\r\nEND\r\n');
  });

  it('flush-all.t: flush_all 2 empties the items stored before it once its time has come', async () => {
    const s = await pair();
    await same(s, 'set fdl_foo 0 0 4\r\n1234\r\nflush_all 2\r\nget fdl_foo\r\n', 'before the time');
    await untilMiss(s, 'fdl_foo');
  });

  it('flush-all.t: a later flush_all replaces a delayed one still pending, as memcached keeps one flush time', async () => {
    // memcached (memcached.c, process_flush_all / settings.oldest_live) keeps ONE flush time:
    // `flush_all 2` then `flush_all 0` empties the cache now, and items stored after that live on.
    // Before: mcmux armed a timer for the delayed flush (router.ts flushAt) that no later
    // flush_all cancels, so two seconds later it empties every upstream again.
    const s = await pair();
    await same(s, 'flush_all 2\r\nflush_all 0\r\nset fsup_foo 0 0 4\r\nkeep\r\nget fsup_foo\r\n', 'flush 2, flush 0, set');
    // What must NOT happen has no event: wait past the time the delayed flush named (mcmux's
    // timer is at +2 s; memcached's clock ticks in whole seconds), with a second to spare.
    await new Promise((r) => setTimeout(r, 3100));
    const reply = await same(s, 'get fsup_foo\r\n', 'after the first flush time');
    assert.equal(reply, 'VALUE fsup_foo 0 4\r\nkeep\r\nEND\r\n');
  });

  it('flush-all.t: flush_all 86400 then flush_all 2: the later, nearer time is the one kept', async () => {
    const s = await pair();
    await same(s, 'set fnear 0 0 1\r\nx\r\nflush_all 86400\r\nflush_all 2\r\nget fnear\r\n', 'two delays');
    await untilMiss(s, 'fnear');
  });
});

/** Binary: a frame list out, the responses (up to and including a NOOP's) back, normalised. */
describe('review: memcached t/binary.t, memcached vs mcmux over two memcached', { skip }, () => {
  let direct: MemcachedProcess | undefined;
  let ups: MemcachedProcess[] = [];
  let mux: McmuxProcess | undefined;
  const open: Wire[] = [];
  const NOOP = 0x0a;

  before(async () => {
    [direct, ...ups] = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
    mux = await startMcmux(['--upstream', (ups[0] as MemcachedProcess).url, '--upstream', (ups[1] as MemcachedProcess).url, '--log-level', 'warn', '--lock-fence', '0', '--allow-flush']);
  });
  after(async () => {
    for (const w of open) w.close();
    await mux?.stop();
    await Promise.all([direct?.stop(), ...ups.map((u) => u.stop())]);
  });

  async function sides(): Promise<Wire[]> {
    const ws = await Promise.all([connectWire((direct as MemcachedProcess).port), connectWire((mux as McmuxProcess).port)]);
    open.push(...ws);
    return ws;
  }

  /** Sends the frames and a NOOP; returns each side's responses (the NOOP's left out) as lines. */
  async function exchange(ws: Wire[], frames: Buffer[]): Promise<Array<ReturnType<typeof parseResponseFrames>['frames']>> {
    return Promise.all(
      ws.map(async (w) => {
        const text = await w.ask(Buffer.concat([...frames, frame({ opcode: NOOP, opaque: 0xfeed })]), (t) => parseResponseFrames(Buffer.from(t, 'latin1')).frames.some((f) => f.opcode === NOOP && f.opaque === 0xfeed), 5000);
        return parseResponseFrames(Buffer.from(text, 'latin1')).frames.filter((f) => f.opcode !== NOOP);
      }),
    );
  }

  function show(frames: ReturnType<typeof parseResponseFrames>['frames']): string[] {
    const names: bigint[] = [];
    return frames.map((f) => {
      let cas = 'cas0';
      if (f.cas !== 0n) {
        let i = names.indexOf(f.cas);
        if (i < 0) i = names.push(f.cas) - 1;
        cas = `u${i}`;
      }
      return `op=${f.opcode.toString(16)} st=${f.status} opaque=${f.opaque} ${cas} extras=${f.extras.toString('hex')} key=${f.key} value=${JSON.stringify(f.value.toString('latin1'))}`;
    });
  }

  it('binary.t: incr creates 0, adds, crosses 2^32; bug220: the unique an INCREMENT answers is the one a GET then reads', async () => {
    const ws = await sides();
    const [a, b] = await exchange(ws, [
      frame({ opcode: 0x05, key: 'bx', extras: arithExtras(1n, 0n, 0), opaque: 1 }),
      frame({ opcode: 0x05, key: 'bx', extras: arithExtras(1n, 0n, 0), opaque: 2 }),
      frame({ opcode: 0x05, key: 'bx', extras: arithExtras(211n, 0n, 0), opaque: 3 }),
      frame({ opcode: 0x05, key: 'bx', extras: arithExtras(2n ** 33n, 0n, 0), opaque: 4 }),
      frame({ opcode: 0x01, key: 'b220', extras: storeExtras(0, 0), value: '100', opaque: 5 }),
      frame({ opcode: 0x05, key: 'b220', extras: arithExtras(999n, 0n, 0), opaque: 6 }),
      frame({ opcode: 0x00, key: 'b220', opaque: 7 }),
      frame({ opcode: 0x05, key: 'b220', extras: arithExtras(999n, 0n, 0), opaque: 8 }),
      frame({ opcode: 0x00, key: 'b220', opaque: 9 }),
    ]);
    assert.deepEqual(show(b ?? []), show(a ?? []));
  });

  it('binary.t issue 48, issue 320, decrement: incr of text is 0x06 and leaves it; an initial value is stored bare; decr floors at 0', async () => {
    const ws = await sides();
    const [a, b] = await exchange(ws, [
      frame({ opcode: 0x01, key: 'bi48', extras: storeExtras(0, 0), value: 'text', opaque: 1 }),
      frame({ opcode: 0x05, key: 'bi48', extras: arithExtras(1n, 0n, 0), opaque: 2 }),
      frame({ opcode: 0x06, key: 'bi48', extras: arithExtras(1n, 0n, 0), opaque: 3 }),
      frame({ opcode: 0x00, key: 'bi48', opaque: 4 }),
      frame({ opcode: 0x05, key: 'bi320', extras: arithExtras(1n, 1n, 0), opaque: 5 }),
      frame({ opcode: 0x00, key: 'bi320', opaque: 6 }),
      frame({ opcode: 0x05, key: 'bdec', extras: arithExtras(1n, 5n, 0), opaque: 7 }),
      frame({ opcode: 0x06, key: 'bdec', extras: arithExtras(1n, 0n, 0), opaque: 8 }),
      frame({ opcode: 0x06, key: 'bdec', extras: arithExtras(211n, 0n, 0), opaque: 9 }),
    ]);
    assert.deepEqual(show(b ?? []), show(a ?? []));
  });

  it('binary.t protocol boundary overruns: two SETQ frames around 2 KiB, split at byte offsets near the 2048-byte read buffer, store both', async () => {
    const ws = await sides();
    for (let i = 1990; i < 2010; i += 3) {
      const data = Buffer.concat([
        frame({ opcode: 0x11, key: `test_key_${i}`, extras: storeExtras(82, 0), value: 'x'.repeat(i) }),
        frame({ opcode: 0x11, key: `alt_test_key_${i}`, extras: storeExtras(82, 0), value: 'blah' }),
      ]);
      for (let j = 2024; j < Math.min(2096, data.length); j += 9) {
        for (const w of ws) {
          w.send(data.subarray(0, j));
          w.send(data.subarray(j));
        }
      }
      const [a, b] = await exchange(ws, [frame({ opcode: 0x00, key: `test_key_${i}`, opaque: 1 }), frame({ opcode: 0x00, key: `alt_test_key_${i}`, opaque: 2 })]);
      assert.equal(a?.length, 2, `memcached answers both gets (${i})`);
      assert.deepEqual(show(b ?? []), show(a ?? []), `size ${i}`);
    }
  });

  it('binary.t silent flush: FLUSHQ answers nothing and empties; FLUSH with a far delay leaves the items', async () => {
    const ws = await sides();
    const delay = (n: number): Buffer => {
      const e = Buffer.alloc(4);
      e.writeUInt32BE(n, 0);
      return e;
    };
    const [a, b] = await exchange(ws, [
      frame({ opcode: 0x01, key: 'bfx', extras: storeExtras(5, 19), value: 'somevaluex', opaque: 1 }),
      frame({ opcode: 0x01, key: 'bfy', extras: storeExtras(5, 17), value: 'somevaluey', opaque: 2 }),
      frame({ opcode: 0x18, opaque: 3 }),
      frame({ opcode: 0x00, key: 'bfx', opaque: 4 }),
      frame({ opcode: 0x00, key: 'bfy', opaque: 5 }),
      frame({ opcode: 0x01, key: 'bfz', extras: storeExtras(0, 0), value: 'z', opaque: 6 }),
      frame({ opcode: 0x08, extras: delay(86400), opaque: 7 }),
      frame({ opcode: 0x00, key: 'bfz', opaque: 8 }),
      frame({ opcode: 0x08, opaque: 9 }),
      frame({ opcode: 0x00, key: 'bfz', opaque: 10 }),
    ]);
    assert.deepEqual(show(b ?? []), show(a ?? []));
  });

  it('binary.t: a FLUSH delay is an unsigned 32-bit number: 0xffffffff is a time far off, answered as success, nothing flushed now', async () => {
    // memcached (proto_bin.c, process_bin_flush) reads the expiration with ntohl into a time_t:
    // never negative, so 0xffffffff is an absolute time in 2106 and the FLUSH succeeds.
    // Before: request-parser.ts read it with readInt32BE and refused it as a negative delay
    // (flushDelay), answering 0x04 invalid arguments.
    const ws = await sides();
    const far = Buffer.alloc(4);
    far.writeUInt32BE(0xffffffff, 0);
    const [a, b] = await exchange(ws, [
      frame({ opcode: 0x01, key: 'bffar', extras: storeExtras(0, 0), value: 'v', opaque: 1 }),
      frame({ opcode: 0x08, extras: far, opaque: 2 }),
      frame({ opcode: 0x00, key: 'bffar', opaque: 3 }),
    ]);
    assert.equal(a?.[1]?.status, 0, 'memcached takes the FLUSH');
    assert.deepEqual(show(b ?? []), show(a ?? []));
  });

  it('binary.t: a FLUSH with no delay cancels a delayed FLUSH still pending, as memcached keeps one flush time', async () => {
    // Before: the delayed FLUSH armed a timer in mcmux (router.ts flushAt) that the later FLUSH
    // does not cancel: the item set after both is wiped when the first one's time comes.
    const ws = await sides();
    const d2 = Buffer.alloc(4);
    d2.writeUInt32BE(2, 0);
    await exchange(ws, [
      frame({ opcode: 0x08, extras: d2, opaque: 1 }),
      frame({ opcode: 0x08, opaque: 2 }),
      frame({ opcode: 0x01, key: 'bfkeep', extras: storeExtras(0, 0), value: 'keep', opaque: 3 }),
    ]);
    // The clock is the subject: wait past the second the delayed flush named.
    await new Promise((r) => setTimeout(r, 3100));
    const [a, b] = await exchange(ws, [frame({ opcode: 0x00, key: 'bfkeep', opaque: 4 })]);
    assert.equal(a?.[0]?.status, 0, 'memcached still has the item');
    assert.deepEqual(show(b ?? []), show(a ?? []));
  });
});
