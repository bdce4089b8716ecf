/**
 * Hazard 6 against real memcached: two memcached whose cas counters are one apart (the first
 * took one write the second did not), a `gets` through mcmux, the first killed, another client
 * writing the key (the second numbers it with the very number the first had given), then the
 * stale `cas`: it must answer EXISTS and leave the other client's value in place.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { END, killAndWait, mcmuxOverTwoMemcached, peekItem, rawClient } from '../helpers/mcmux';
import { requireBinary } from '../helpers/servers';

/** The unique a `gets` reply carries. */
function uniqueOf(reply: string): string {
  const m = /^VALUE \S+ \d+ \d+ (\d+)\r\n/.exec(reply);
  assert.ok(m, `not a gets reply: ${JSON.stringify(reply)}`);
  return m[1] as string;
}

test('a cas unique from the first memcached does not match in the second after a failover', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { mc1, mc2, mux } = await mcmuxOverTwoMemcached(t, ['--timeout', '1000']);

  // One write straight into the first memcached: its counter runs one ahead from now on.
  const direct1 = await rawClient(mc1.port);
  t.after(() => direct1.close());
  assert.equal(await direct1.ask('set elsewhere 0 0 1\r\nx\r\n'), 'STORED\r\n');

  const a = await rawClient(mux.port);
  const b = await rawClient(mux.port);
  t.after(() => [a, b].forEach((c) => c.close()));
  assert.equal(await a.ask('set k 0 0 2\r\nA0\r\n'), 'STORED\r\n');
  const unique = uniqueOf(await a.ask('gets k\r\n', END));
  const raw1 = uniqueOf(await direct1.ask('gets k\r\n', END));
  assert.notEqual(unique, raw1, 'mcmux hands out a sealed unique, not memcached\'s number');
  assert.ok(BigInt(unique) < 2n ** 63n, 'it fits a signed 64-bit integer');

  await killAndWait(mc1);
  assert.equal(await b.ask('set k 0 0 1\r\nB\r\n'), 'STORED\r\n');
  const direct2 = await rawClient(mc2.port);
  t.after(() => direct2.close());
  assert.equal(uniqueOf(await direct2.ask('gets k\r\n', END)), raw1, 'the second memcached gave B the number the first gave A0');

  assert.equal(await a.ask(`cas k 0 0 2 ${unique}\r\nA1\r\n`), 'EXISTS\r\n');
  assert.equal((await peekItem(mc2.port, 'k'))?.value, 'B', 'the other client\'s value stays');
  // A fresh gets through mcmux hands out a unique the second memcached accepts.
  const fresh = uniqueOf(await a.ask('gets k\r\n', END));
  assert.equal(await a.ask(`cas k 0 0 2 ${fresh}\r\nA1\r\n`), 'STORED\r\n');
  assert.equal((await peekItem(mc2.port, 'k'))?.value, 'A1');
});

test('a cas refused unsent by a reconnecting memcached fails over instead of answering "may have been applied"', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { mc1, mc2, mux } = await mcmuxOverTwoMemcached(t, ['--timeout', '1000']);
  const a = await rawClient(mux.port);
  t.after(() => a.close());
  assert.equal(await a.ask('set k 0 0 2\r\nA0\r\n'), 'STORED\r\n');
  const unique = uniqueOf(await a.ask('gets k\r\n', END));

  // Its connection is gone and not yet back: the cas is refused before it is sent. The second
  // memcached decides it; the unique was sealed for the first, so it cannot match there.
  await killAndWait(mc1);
  assert.equal(await a.ask(`cas k 0 0 2 ${unique}\r\nA1\r\n`), 'EXISTS\r\n');
  assert.equal((await peekItem(mc2.port, 'k'))?.value, 'A0');
  // A lock taken while it is away is granted once, by the second.
  assert.equal(await a.ask('add lock.k 0 0 1\r\n1\r\n'), 'STORED\r\n');
  assert.equal(await a.ask('add lock.k 0 0 1\r\n1\r\n'), 'NOT_STORED\r\n');
});
