/**
 * Adversarial review of the fixes of 2026-11-29, against private servers (each on a free port in
 * its own temporary directory; a missing binary skips, MCMUX_REQUIRE_SERVERS=1 fails instead).
 * Tests marked todo fail on the code they were written against.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { requireBinary } from '../helpers/servers';
import { sqliteUrl } from '../helpers/sqlite-fixture';
import { connectWire } from '../helpers/wire';
import { startRedis } from '../upstream/targets/redis';

function tempDir(t: TestContext, kind: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mcmux-review-today-${kind}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * A TCP forwarder standing for a stable address (a VIP, Sentinel's): `retarget` moves it. With
 * `holdMs`, the first reply to `INFO replication` after that (not ioredis's ready check, a full
 * INFO) and what follows it on its connection are held that long (a server slow for a moment).
 */
async function forwarder(t: TestContext, target: number): Promise<{ port: number; retarget(port: number, holdMs?: number): void }> {
  let to = target;
  let hold = 0;
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const up = connect({ host: '127.0.0.1', port: to });
    let until = 0;
    for (const s of [client, up]) {
      open.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        open.delete(s);
        client.destroy();
        up.destroy();
      });
    }
    client.pipe(up);
    up.on('data', (data: Buffer) => {
      // Once: the reply to INFO replication (not ioredis's ready check, a full INFO), and what follows it.
      if (hold > 0 && until === 0 && data.includes('# Replication') && !data.includes('# Server')) {
        until = Date.now() + hold;
        hold = 0;
      }
      const wait = until - Date.now();
      if (wait <= 0) client.write(data);
      else setTimeout(() => client.write(data), wait);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of open) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port: (server.address() as AddressInfo).port,
    retarget(port: number, holdMs = 0): void {
      to = port;
      hold = holdMs;
      for (const s of open) s.destroy();
    },
  };
}

describe('review-today 4059186: a standalone redis failed over behind a stable address', () => {
  // Finding 5. 4059186 tells a promoted replica by its replication id only against the id read at
  // the connection before, in the same process. A failover while mcmux is down (a deploy, a
  // reboot of the web host, or mcmux restarted by the very incident that killed the master): the
  // new process reads the promoted replica's id for the first time, compares it with nothing,
  // finds the marker (replicated from the master) and takes the store as kept: it decides `add`
  // of a lock the dead master granted and never shipped, though the store behind it (sqlite)
  // holds it. journal.log could keep the id, as it keeps the markers acknowledged (A lines).
  it('a replica promoted while mcmux was down does not grant a lock the dead master had granted', { todo: 'finding 5: the replication id is compared only within one process (not kept on journal.log)', timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const master = await startRedis();
    t.after(() => master.stop());
    const replica = await startRedis(['--replicaof', '127.0.0.1', String(master.port)]);
    t.after(() => replica.stop());
    const m = new Redis({ host: '127.0.0.1', port: master.port, maxRetriesPerRequest: 0, protocol: 2 });
    const r = new Redis({ host: '127.0.0.1', port: replica.port, maxRetriesPerRequest: 0, protocol: 2 });
    for (const c of [m, r]) c.on('error', () => undefined);
    t.after(() => {
      m.disconnect();
      r.disconnect();
    });
    await eventually('the replica is in sync', async () => /master_link_status:up/.test(await r.info('replication')), 15_000);
    const vip = await forwarder(t, master.port);
    const stateDir = tempDir(t, 'state');
    const file = join(tempDir(t, 'sqlite'), 'store.db');
    const upstreams = [`redis://127.0.0.1:${vip.port}`, sqliteUrl(file)];
    const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const w1 = await connectWire(app1.address.port);
    const redis1 = app1.upstreams[0] as HealthyUpstream;
    await eventually('mcmux has written its markers and redis decides', () => !redis1.fenced, 15_000);
    await m.wait(1, 1000); // the marker reached the replica; the lock will not
    await r.replicaof('NO', 'ONE');
    assert.equal(await w1.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n', 'on the master and sqlite');
    w1.close();
    await app1.close(); // mcmux stops (a deploy)
    master.kill('SIGKILL'); // meanwhile the master dies; the stable address leads to the promoted replica
    vip.retarget(replica.port);

    const app2 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const w2 = await connectWire(app2.address.port);
    t.after(() => w2.close());
    const redis2 = app2.upstreams[0] as HealthyUpstream;
    await app2.coldDetector.check(redis2);
    t.diagnostic(`redis fenced: ${redis2.fenced}, came back empty: ${redis2.cameBackEmpty}`);
    const again = await w2.ask('add lock.sid 0 0 1\r\n2\r\n');
    assert.notEqual(again, 'STORED\r\n', 'LOCK GRANTED TWICE: the promoted replica, which never got it, decided');
  });

  // Holds (checked for finding 8): the replication id is read once per connection, within the
  // request timeout, and a read that times out is not retried. But replies come in order: an INFO
  // that is late holds every request behind it on the connection, the reconnect's marker read
  // among them, whose timeout drops the connection (redis.ts failure): the next connection reads
  // the id again, against the master's, kept. (Left open: an INFO just past the timeout with the
  // marker read sent late enough to be answered within its own.)
  it('a promoted replica slow to answer INFO on the reconnect is still told from the master', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const master = await startRedis();
    t.after(() => master.stop());
    const replica = await startRedis(['--replicaof', '127.0.0.1', String(master.port)]);
    t.after(() => replica.stop());
    const m = new Redis({ host: '127.0.0.1', port: master.port, maxRetriesPerRequest: 0, protocol: 2 });
    const r = new Redis({ host: '127.0.0.1', port: replica.port, maxRetriesPerRequest: 0, protocol: 2 });
    for (const c of [m, r]) c.on('error', () => undefined);
    t.after(() => {
      m.disconnect();
      r.disconnect();
    });
    await eventually('the replica is in sync', async () => /master_link_status:up/.test(await r.info('replication')), 15_000);
    const vip = await forwarder(t, master.port);
    const file = join(tempDir(t, 'sqlite'), 'store.db');
    const app = await inProcessMcmux({ 'probe-interval': '50' }, [`redis://127.0.0.1:${vip.port}`, sqliteUrl(file)]);
    const w = await connectWire(app.address.port);
    t.after(() => w.close());
    const redis = app.upstreams[0] as HealthyUpstream;
    await eventually('mcmux has written its markers and redis decides', () => !redis.fenced, 15_000);
    await m.wait(1, 1000);
    await r.replicaof('NO', 'ONE');
    assert.equal(await w.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n');
    const fences = redis.fencesBegun;
    master.kill('SIGKILL');
    vip.retarget(replica.port, 700); // the promoted replica answers INFO replication late (700 ms)
    await eventually('mcmux reconnected to the promoted replica', () => redis.fencesBegun > fences, 15_000);
    await new Promise((resolve) => setTimeout(resolve, 900)); // the slow moment is over
    await app.coldDetector.check(redis);
    t.diagnostic(`redis fenced: ${redis.fenced}, came back empty: ${redis.cameBackEmpty}`);
    const again = await w.ask('add lock.sid 0 0 1\r\n2\r\n');
    assert.notEqual(again, 'STORED\r\n', 'LOCK GRANTED TWICE: the promoted replica, whose replication id was not read, decided');
  });
});
