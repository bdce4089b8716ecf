/**
 * One counter, many clients, two real memcached behind mcmux, the first (the authority) killed
 * while increments are in flight. This is the lock counter of pecl-memcache's session handler
 * (`incr <sid>.lock 1`: whoever gets 1 holds the lock) without PHP in the way, at a rate that
 * makes the races show:
 *
 * - before the kill, each increment's copy lands on the second memcached before the next
 *   increment of the key is decided (key-order.ts): the copies travel on several connections,
 *   and out of order the second would end below the first;
 * - at the kill, an increment applied on the first and not yet copied makes the next one
 *   decided by the second wait for that copy, and count on from it.
 *
 * What must hold: every number is handed out exactly once and they are 1..n without a gap
 * (a repeat is two lock holders; a gap a lost increment), no request fails, and afterwards the
 * surviving memcached and mcmux both say n.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { END, type RawClient, killAndWait, mcmuxOverTwoMemcached, peekItem, rawClient } from '../helpers/mcmux';
import { requireBinary } from '../helpers/servers';

const CLIENTS = 16;
/** Increments each client keeps in flight (pipelined on its connection). */
const DEPTH = 4;
const BEFORE_KILL = 2000;
const AFTER_KILL = 2000;
const REPLY_MS = 5000;

/** Sends DEPTH increments, returns their replies (numbers, or the error line). */
async function incrBatch(c: RawClient): Promise<string[]> {
  const text = await c.ask('incr ctr 1\r\n'.repeat(DEPTH), (s) => s.split('\r\n').length > DEPTH, REPLY_MS);
  return text.split('\r\n').slice(0, DEPTH);
}

/** Every client increments until `until()` says stop; returns every reply. */
async function hammer(clients: readonly RawClient[], until: (done: number) => boolean, replies: string[]): Promise<void> {
  await Promise.all(
    clients.map(async (c) => {
      while (!until(replies.length)) replies.push(...(await incrBatch(c)));
    }),
  );
}

test('one counter, concurrent incr through mcmux, the first memcached killed midway', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { mc1, mc2, mux } = await mcmuxOverTwoMemcached(t, ['--timeout', '1000']);
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => rawClient(mux.port)));
  t.after(() => clients.forEach((c) => c.close()));
  assert.equal(await clients[0]!.ask('set ctr 0 0 1\r\n0\r\n'), 'STORED\r\n');

  const replies: string[] = [];
  await hammer(clients, (n) => n >= BEFORE_KILL, replies);
  const [one, two] = [await peekItem(mc1.port, 'ctr'), await peekItem(mc2.port, 'ctr')];
  assert.equal(one?.value, String(replies.length), 'the first memcached counted every increment');
  assert.equal(two?.value, one?.value, 'the second memcached holds the same count (no copy landed out of order)');

  // The kill lands while every client has increments in flight.
  const killAt = replies.length + CLIENTS * DEPTH;
  let killed: Promise<void> | undefined;
  await hammer(clients, (n) => {
    if (killed === undefined && n >= killAt) killed = killAndWait(mc1);
    return n >= killAt + AFTER_KILL;
  }, replies);
  await killed;

  const failed = replies.filter((r) => !/^\d+$/.test(r));
  assert.deepEqual(failed.slice(0, 5), [], `${failed.length} increments failed`);
  const numbers = replies.map(Number).sort((a, b) => a - b);
  const repeated = numbers.filter((x, i) => i > 0 && numbers[i - 1] === x);
  assert.deepEqual(repeated.slice(0, 10), [], 'a number handed out twice: two lock holders');
  assert.deepEqual(numbers, Array.from({ length: numbers.length }, (_, i) => i + 1), 'the numbers are 1..n, none lost');
  assert.equal((await peekItem(mc2.port, 'ctr'))?.value, String(numbers.length), 'the surviving memcached counted every increment');
  assert.equal(await clients[0]!.ask('get ctr\r\n', END), `VALUE ctr 0 ${String(numbers.length).length}\r\n${numbers.length}\r\nEND\r\n`);
  assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
});
