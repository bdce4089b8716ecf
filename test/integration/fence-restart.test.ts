/**
 * The lock-fence across a restart of mcmux, on two private memcached processes: what a client
 * wrote to a fenced memcached since its fence began is known again by the next mcmux process
 * (journal.log `W` lines, under the fence id the marker carries as its flags). Both memcached
 * restart empty while mcmux runs; a lock is set on both; the first restarts empty once more.
 * After a clean restart of mcmux both are fenced by their markers, neither as "came back empty"
 * (each kept what was written to it since its own fence began): the second, which holds the
 * lock, decides it, not the first, which lost it. (The router-level tests:
 * test/router/cold-detector.test.ts, the last describe block.)
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { markerKey } from '../../src/router/cold-detector';
import { type McmuxProcess, eventually, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';

const REPLY_MS = 5000;
const MARKER = markerKey();
const CAME_BACK_EMPTY = /^upstream came back empty/;

/** Lines of mcmux's log that tell of an upstream come back empty. */
function emptied(mux: McmuxProcess): number {
  return mux
    .logs()
    .stdout.split('\n')
    .filter((l) => l.startsWith('{') && CAME_BACK_EMPTY.test(String((JSON.parse(l) as { msg?: string }).msg))).length;
}

async function ask(mux: McmuxProcess, text: string, until = /\r\n$/): Promise<string> {
  const c = await rawClient(mux.port);
  try {
    return await c.ask(text, until, REPLY_MS);
  } finally {
    c.close();
  }
}

it('a lock written during a lock-fence to the memcached that kept it decides after mcmux restarts, not the one that lost it since', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [a, b] = await Promise.all([startMemcached(), startMemcached()]);
  t.after(() => Promise.all([a.stop(), b.stop()]));
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-fence-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['--upstream', a.url, '--upstream', b.url, '--timeout', '500', '--lock-fence', '600000'];
  const env = { STATE_DIRECTORY: dir };

  const first = await startMcmux(args, { env });
  t.after(() => first.stop());
  await Promise.all([a.restart(), b.restart()]); // both restart empty while mcmux runs
  // Requests make the drivers reconnect; the marker check that follows finds each marker gone.
  await eventually('mcmux saw both memcached come back empty', async () => {
    await ask(first, 'get poke\r\n', /END\r\n$|ERROR.*\r\n$/).catch(() => '');
    return emptied(first) >= 2;
  });
  assert.equal(await ask(first, 'set lock.s 0 0 1\r\nA\r\n'), 'STORED\r\n', 'on both: each holds the lock again');
  await a.restart(); // the first loses it
  await eventually('mcmux saw the first memcached come back empty again', async () => {
    await ask(first, 'get poke\r\n', /END\r\n$|ERROR.*\r\n$/).catch(() => '');
    return emptied(first) >= 3;
  });
  const markers = await Promise.all([peekItem(a.port, MARKER, REPLY_MS), peekItem(b.port, MARKER, REPLY_MS)]);
  assert.ok(markers.every((m) => m?.value.startsWith('fenced until ')), 'both markers tell of a fence');
  assert.ok(markers[0]?.flags !== 0 && markers[1]?.flags !== 0 && markers[0]?.flags !== markers[1]?.flags, 'each names its own fence');
  assert.deepEqual(await first.stop(), { code: 0, signal: null });

  const next = await startMcmux(args, { env });
  t.after(() => next.stop());
  assert.equal(await ask(next, 'add lock.s 0 0 1\r\nB\r\n'), 'NOT_STORED\r\n', 'B is granted the lock A holds, by the memcached that lost it');
  assert.equal(await ask(next, 'get lock.s\r\n', /END\r\n$/), 'VALUE lock.s 0 1\r\nA\r\nEND\r\n');
  assert.equal(emptied(next), 0, 'this process saw neither come back empty: both fenced by their markers');
});

it('memcached restarted empty while mcmux was down, with no marker left anywhere to tell, is fenced by the next mcmux: journal.log says each acknowledged one (a pool server too)', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [a, b, c] = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
  t.after(() => Promise.all([a.stop(), b.stop(), c.stop()]));
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-fence-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const pool = `memcached://127.0.0.1:${b.port},127.0.0.1:${c.port}`;
  const args = ['--upstream', a.url, '--upstream', pool, '--timeout', '500', '--lock-fence', '600000'];
  const env = { STATE_DIRECTORY: dir };
  const fenced = async (mux: McmuxProcess): Promise<string[]> => (await ask(mux, 'stats\r\n', /END\r\n$/)).split('\r\n').filter((l) => /^STAT upstream\.\d+\.fenced /.test(l));

  const first = await startMcmux(args, { env });
  t.after(() => first.stop());
  await eventually('every store holds the marker', async () => (await Promise.all([a, b, c].map((m) => peekItem(m.port, MARKER, REPLY_MS)))).every((m) => m !== undefined));
  assert.deepEqual(await first.stop(), { code: 0, signal: null });
  const warm = await startMcmux(args, { env });
  t.after(() => warm.stop());
  assert.deepEqual(await fenced(warm), ['STAT upstream.0.fenced 0', 'STAT upstream.1.fenced 0'], 'restarted over stores that kept their marker: nothing fenced');
  assert.deepEqual(await warm.stop(), { code: 0, signal: null });

  await Promise.all([a.restart(), c.restart()]); // one memcached and one pool server, while mcmux is down
  await b.restart(); // the last store holding a marker of this host
  const next = await startMcmux(args, { env });
  t.after(() => next.stop());
  assert.deepEqual(await fenced(next), ['STAT upstream.0.fenced 1', 'STAT upstream.1.fenced 1']);
  assert.equal(emptied(next), 2, 'each taken as come back empty, not as a first start');
});
