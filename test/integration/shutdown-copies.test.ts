/**
 * Shutdown with write-wait copies: clients were answered once the first upstream stored their
 * writes; the copies to a slower memcached are still on their way when SIGTERM comes (App.close
 * with a grace period, as cli.ts calls it). They must land, and none may be journaled as missed:
 * after a restart the in-process store is empty, and a repair taking it as the truth for a
 * journaled key would delete the only copy left.
 */

import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { startApp } from '../../src/app';
import { buildConfig } from '../../src/config';
import { startFaultProxy } from '../helpers/fault-proxy';
import { peekItem } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';

test('SIGTERM with write-wait copies: the copies still landing are waited for, and none is journaled as missed', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const mc = await startMemcached();
  const slow = await startFaultProxy(mc.port);
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-shutdown-'));
  t.after(async () => {
    await slow.close();
    await mc.stop();
    await rm(dir, { recursive: true, force: true });
  });
  const config = buildConfig(
    { scalars: {}, listen: [], upstreams: [] },
    {
      scalars: { 'write-wait': 'copies', 'state-dir': dir },
      listen: ['127.0.0.1:0'],
      upstreams: ['memory://', `memcached://127.0.0.1:${slow.port}?timeout=5000`].map((url) => ({ url, options: new Map() })),
    },
  );
  const app = await startApp(config, pino({ level: 'silent' }));
  // Every copy to memcached is held in the proxy until the close has begun: still in flight when
  // the client has its answer (a fixed delay could run out first on a loaded machine).
  slow.stall();
  const w = await connectWire(app.address.port);
  const n = 50;
  let batch = '';
  for (let i = 0; i < n; i++) batch += `set sess${i} 0 0 4\r\nv${String(i).padStart(3, '0')}\r\n`;
  assert.equal(await w.ask(batch, (text) => text.split('STORED').length > n), 'STORED\r\n'.repeat(n));
  assert.ok(app.journal.writesInFlight('sess0') > 0, 'the copies are still on their way');
  w.close();

  const closed = app.close(10_000);
  slow.release();
  await closed;
  assert.equal(app.journal.totalKeys, 0, 'no copy journaled as missed');
  const log = await readFile(join(dir, 'journal.log'), 'latin1');
  assert.equal(log.split('\n').filter((line) => line.startsWith('M ')).length, 0, `journal.log: ${log}`);
  for (const i of [0, 25, n - 1]) {
    const item = await peekItem(mc.port, `sess${i}`, 5000);
    assert.equal(item?.value, `v${String(i).padStart(3, '0')}`, `sess${i} landed on memcached`);
  }
});
