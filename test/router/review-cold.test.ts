/**
 * Review of the cold detector against real servers: a store that comes back stale (older data
 * than mcmux last wrote there), not empty.
 */

import assert from 'node:assert/strict';
import { it } from 'node:test';
import { markerKey } from '../../src/router/cold-detector';
import { type McmuxProcess, eventually, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';
import { startRedis } from '../upstream/targets/redis';

const REPLY_MS = 5000;
const MARKER = markerKey();

/** One command to what listens on `port` (mcmux, or a store straight), on a connection of its own. */
async function askAt(port: number, text: string, until: RegExp = /\r\n$/): Promise<string> {
  const c = await rawClient(port);
  try {
    return await c.ask(text, until, REPLY_MS);
  } finally {
    c.close();
  }
}

const ask = (mux: McmuxProcess, text: string, until?: RegExp): Promise<string> => askAt(mux.port, text, until);

/** One inline command to the redis-server on `port`, straight (not through mcmux); its reply line(s). */
async function redis(port: number, command: string): Promise<string> {
  const c = await connectWire(port);
  try {
    return await c.ask(`${command}\r\n`, (t) => /^[+\-:]/.test(t) ? t.endsWith('\r\n') : /^\$-1\r\n$|^\$\d+\r\n[\s\S]*\r\n$/.test(t), REPLY_MS);
  } finally {
    c.close();
  }
}

it('a redis restarted from a snapshot older than its last writes does not bring back a session deleted since', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached') || !requireBinary(t, 'redis-server', 'redis-server')) return;
  const [mc, r] = await Promise.all([startMemcached(), startRedis()]);
  t.after(() => Promise.all([mc.stop(), r.stop()]));
  const mux = await startMcmux(['--upstream', mc.url, '--upstream', r.url, '--lock-fence', '600000', '--log-level', 'info']);
  t.after(() => mux.stop());

  assert.equal(await ask(mux, 'set sess.1 0 0 5\r\nalice\r\n'), 'STORED\r\n');
  assert.equal(await redis(r.port, 'SAVE'), '+OK\r\n', 'the snapshot holds the session');
  // mcmux's marker in redis as the snapshot has it; the store is written more after the snapshot.
  const atSnapshot = await redis(r.port, `GET ${MARKER}`);
  await eventually('mcmux wrote its marker again after the snapshot', async () => (await redis(r.port, `GET ${MARKER}`)) !== atSnapshot);
  assert.equal(await ask(mux, 'delete sess.1\r\n'), 'DELETED\r\n', 'the user logs out');

  await r.restart(); // no save at shutdown: it comes back from the older snapshot
  assert.equal(await redis(r.port, 'EXISTS sess.1'), ':1\r\n', 'redis holds the deleted session again');
  // A request reconnects the driver; the marker check that follows looks at redis.
  await eventually('mcmux checked redis after its restart', async () => {
    await ask(mux, 'get other\r\n', /END\r\n$|ERROR.*\r\n$/).catch(() => '');
    // Rewritten once the check has judged what it read.
    return (await redis(r.port, `GET ${MARKER}`)) !== atSnapshot;
  });
  assert.equal(await ask(mux, 'get sess.1\r\n', /END\r\n$|ERROR.*\r\n$/), 'END\r\n', 'the session deleted before the restart is not served');
});

it('a client cannot read or write the marker key: a store flushed behind mcmux is still fenced, and a lock it lost is not granted again', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [mc0, mc1] = await Promise.all([startMemcached(), startMemcached()]);
  t.after(() => Promise.all([mc0.stop(), mc1.stop()]));
  const mux = await startMcmux(['--upstream', mc0.url, '--upstream', mc1.url, '--lock-fence', '600000', '--log-level', 'warn']);
  t.after(() => mux.stop());

  assert.equal(await ask(mux, 'add lock.1 0 0 1\r\nx\r\n'), 'STORED\r\n', 'a session lock is taken');
  assert.ok(await peekItem(mc0.port, MARKER), 'mcmux keeps its marker in the first memcached');
  // Someone flushes the first memcached behind mcmux's back: the lock and the marker are gone there.
  assert.equal(await askAt(mc0.port, 'flush_all\r\n'), 'OK\r\n');
  // A client (by mistake or on purpose) reads the marker key through mcmux: were it served, the
  // read repair would put the marker back into the flushed store, and the check would find it.
  assert.match(await ask(mux, `get ${MARKER}\r\n`, /END\r\n$|ERROR.*\r\n$/), /^CLIENT_ERROR /, 'the marker key is refused to a client');
  assert.match(await ask(mux, `set ${MARKER} 0 0 1\r\nx\r\n`), /^CLIENT_ERROR /, 'a client cannot write the marker');
  assert.match(await ask(mux, `delete mcmux.sentinel.other-host\r\n`), /^CLIENT_ERROR /, 'nor delete another host\'s');
  assert.equal(await ask(mux, 'get sess.1\r\n', /END\r\n$/), 'END\r\n', 'the connection is still in sync');
  await eventually('the flushed memcached is fenced as come back empty', async () => /^STAT upstream\.0\.fenced 1\r$/m.test(await ask(mux, 'stats upstreams\r\n', /END\r\n$/)), 6000);
  assert.equal(await ask(mux, 'add lock.1 0 0 1\r\ny\r\n'), 'NOT_STORED\r\n', 'the lock held is not granted again');
});
