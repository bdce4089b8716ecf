/**
 * A standalone Redis master with an in-sync replica, behind a TCP forwarder standing for the
 * stable address of a failover (Sentinel behind a virtual IP, a proxy), for the tests of a replica
 * promoted under mcmux. Private servers, removed after the test.
 */

import assert from 'node:assert/strict';
import { type AddressInfo, type Socket, connect, createServer } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { Redis } from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import { startRedis } from '../upstream/targets/redis';
import { inProcessMcmux } from './in-process';
import { eventually } from './poll';
import { sqliteUrl } from './sqlite-fixture';
import { connectWire } from './wire';

export interface Forwarder {
  readonly port: number;
  /**
   * Points the address at `port` and cuts the connections open, as a failover does. With
   * `holdMs`, the first reply to `INFO replication` after that (not ioredis's ready check, a full
   * INFO: it has a Clients section) and what follows it on its connection are held that long (a
   * server slow for a moment).
   */
  retarget(port: number, holdMs?: number): void;
}

/** A TCP forwarder on a free port of 127.0.0.1 to 127.0.0.1:`target`. */
export async function forwarder(t: TestContext, target: number): Promise<Forwarder> {
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
      if (hold > 0 && until === 0 && data.includes('# Replication') && !data.includes('# Clients')) {
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

/**
 * A master, its replica in sync (`replicaArgs`: more options of its redis-server), clients of
 * each (`m`, `r`), and the forwarder (`vip`) pointing at the master.
 */
export async function redisFailover(t: TestContext, replicaArgs: string[] = []) {
  const master = await startRedis();
  t.after(() => master.stop());
  const replica = await startRedis(['--replicaof', '127.0.0.1', String(master.port), ...replicaArgs]);
  t.after(() => replica.stop());
  const m = new Redis({ host: '127.0.0.1', port: master.port, maxRetriesPerRequest: 0, protocol: 2 });
  const r = new Redis({ host: '127.0.0.1', port: replica.port, maxRetriesPerRequest: 0, protocol: 2 });
  for (const c of [m, r]) c.on('error', () => undefined); // the master is killed
  t.after(() => {
    m.disconnect();
    r.disconnect();
  });
  await eventually('the replica is in sync', async () => /master_link_status:up/.test(await r.info('replication')), 15_000);
  const vip = await forwarder(t, master.port);
  return { master, replica, m, r, vip };
}

/**
 * mcmux over the failover address and a sqlite store in `dir` (which the lock's copy reaches: it
 * keeps the lock), its markers written; a lock taken on the master that its replica never gets
 * (asynchronous replication: the replica detached first), then the master killed and the address
 * moved to the replica (`holdMs`: Forwarder.retarget); resolves once mcmux has reconnected.
 */
export async function lockThenFailover(t: TestContext, dir: string, holdMs = 0) {
  const { master, replica, m, r, vip } = await redisFailover(t);
  const app = await inProcessMcmux({ 'probe-interval': '50' }, [`redis://127.0.0.1:${vip.port}`, sqliteUrl(join(dir, 'store.db'))]);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  const redis = app.upstreams[0] as HealthyUpstream;
  await eventually('mcmux has written its markers and redis decides', () => !redis.fenced, 15_000);
  // Everything so far (the marker) reached the replica; the lock will not.
  await m.wait(1, 1000);
  await r.replicaof('NO', 'ONE');
  assert.equal(await w.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n');
  const fences = redis.fencesBegun;
  master.kill('SIGKILL');
  vip.retarget(replica.port, holdMs);
  await eventually('mcmux reconnected to the promoted replica', () => redis.fencesBegun > fences, 15_000);
  return { app, w, redis };
}

/**
 * The same lock, taken through an mcmux on `stateDir` with the sqlite store in `dir`; then that
 * mcmux stops (a deploy) and, while it is down, the master is killed and the address moved to the
 * replica (`replicaArgs`: as redisFailover). Returns the upstream URLs, for the next process.
 */
export async function lockThenFailoverWhileDown(t: TestContext, stateDir: string, dir: string, replicaArgs: string[] = []): Promise<string[]> {
  const { master, replica, m, r, vip } = await redisFailover(t, replicaArgs);
  const upstreams = [`redis://127.0.0.1:${vip.port}`, sqliteUrl(join(dir, 'store.db'))];
  const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
  const w = await connectWire(app.address.port);
  const redis = app.upstreams[0] as HealthyUpstream;
  await eventually('mcmux has written its markers and redis decides', () => !redis.fenced, 15_000);
  await m.wait(1, 1000); // the marker reached the replica; the lock will not
  await r.replicaof('NO', 'ONE');
  assert.equal(await w.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n', 'on the master and sqlite');
  w.close();
  await app.close(); // mcmux stops (a deploy)
  master.kill('SIGKILL'); // meanwhile the master dies; the stable address leads to the promoted replica
  vip.retarget(replica.port);
  return upstreams;
}

/**
 * The next mcmux process over `upstreams` (journal.log in `stateDir`, Redis first), once its
 * marker check of the Redis has answered; `w`: a client connection to it, closed after the test.
 */
export async function nextProcess(t: TestContext, stateDir: string, upstreams: readonly string[]) {
  const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, [...upstreams]);
  const redis = app.upstreams[0] as HealthyUpstream;
  await app.coldDetector.check(redis);
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  return { app, redis, w };
}
