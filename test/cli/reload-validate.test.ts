/**
 * A SIGHUP checks the new configuration file without making anything: the embedded store of a
 * state-dir the reload ignores (it changes only on restart) is not made there, and the running
 * one is not opened a second time. The upstreams mcmux keeps running on are the ones App.reload
 * builds.
 */

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import Redis from 'ioredis';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { eventually, startMcmux } from '../helpers/mcmux';
import { lockedSqlite } from '../helpers/sqlite-fixture';
import { freePort, requireBinary } from '../helpers/servers';
import { startRedis } from '../upstream/targets/redis';
import { tempDir } from '../helpers/temp-dir';

test('a reload whose file moves state-dir makes no directory nor store there (state-dir changes only on restart)', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'reload-validate');
  const stateA = join(dir, 'a');
  const stateB = join(dir, 'b');
  const port = await freePort();
  const file = join(dir, 'config.toml');
  // No upstream: the embedded default (memory://, and sqlite:// in the state-dir).
  await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${stateA}"\n`);
  const mux = await startMcmux(['--config', file], { port });
  t.after(() => mux.stop());
  assert.ok(existsSync(join(stateA, 'mcmux.db')), 'the embedded store is in the state-dir');

  await writeFile(file, `listen = "127.0.0.1:${port}"\nstate-dir = "${stateB}"\nlog-level = "info"\n`);
  mux.proc.kill('SIGHUP');
  await eventually('the reload is logged', () => /configuration reloaded|reload rejected/.test(mux.logs().stdout), 10_000);
  assert.match(mux.logs().stdout, /state-dir change only on restart|change only on restart/);
  assert.equal(existsSync(stateB), false, `the reload made ${stateB} (and a store in it) to check the file`);
});

test('a reload App.reload cannot build (a SQLite file another process holds locked) is rejected whole: the running chain stays, and the drivers it had built before are closed', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const dir = tempDir(t, 'reload-validate');
  const redis = await startRedis();
  t.after(() => redis.stop());
  const path = join(dir, 'sessions.db');
  lockedSqlite(t, path);
  const app = await inProcessMcmux({ 'state-dir': join(dir, 'state'), 'log-level': 'silent' }, ['memory://a']);
  const before = app.upstreams;
  const admin = new Redis({ host: '127.0.0.1', port: redis.port, protocol: 2 });
  t.after(() => admin.disconnect());
  const connections = async (): Promise<number> => Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))?.[1]);
  const idle = await connections();
  assert.throws(
    () => reloadTo(app, { 'state-dir': join(dir, 'state') }, ['memory://a', `redis://127.0.0.1:${redis.port}`, `sqlite://${path}?timeout=100`]),
    /SQLITE_BUSY|locked/,
  );
  assert.deepEqual(app.upstreams, before, 'the running chain stays');
  await eventually('the redis driver the rejected reload built is connected', async () => (await connections()) > idle, 5_000).catch(() => undefined);
  await eventually('the redis driver the rejected reload built is closed', async () => (await connections()) === idle, 10_000);
});
