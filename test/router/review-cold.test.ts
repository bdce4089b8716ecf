/**
 * Review of the cold detector against real servers: a store that comes back stale (older data
 * than mcmux last wrote there), not empty.
 */

import assert from 'node:assert/strict';
import { it } from 'node:test';
import { markerKey } from '../../src/router/cold-detector';
import { type McmuxProcess, eventually, rawClient, startMcmux } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';
import { startRedis } from '../upstream/targets/redis';

const REPLY_MS = 5000;
const MARKER = markerKey();

async function ask(mux: McmuxProcess, text: string, until: RegExp = /\r\n$/): Promise<string> {
  const c = await rawClient(mux.port);
  try {
    return await c.ask(text, until, REPLY_MS);
  } finally {
    c.close();
  }
}

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
