/**
 * Review h11 of the history a standalone Redis names (src/upstream/redis.ts historyOf: `<master_replid>
 * <run_id>`, and what continues an earlier id: f4c48d7, 05a8223), against what a real
 * redis-server does. Guards only: the case left open (the same process demoted, resynced,
 * promoted back, then its backlog freed) is review-h1's todo (test/integration/review-h1.test.ts).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { historyOf } from '../../src/upstream/redis';
import { eventually } from '../helpers/poll';
import { requireBinary } from '../helpers/servers';
import { redisPair } from './targets/redis';

const args = ['--repl-backlog-ttl', '1', '--repl-diskless-sync', 'no'];

async function history(c: Redis) {
  const h = historyOf(`${await c.info('server')}\r\n${await c.info('replication')}`);
  assert.ok(h !== undefined);
  return h;
}

test('guard: on a real redis-server, what continues a history and what does not', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { a, ca, cb } = await redisPair(t, args);
  const a0 = await history(ca);
  await cb.replicaof('127.0.0.1', String(a.port));
  await eventually('b follows a', async () => /master_link_status:up/.test(await cb.info('replication')), 15_000);
  // Its first replica: a master makes its backlog and takes a new replication id (zeros for replid2).
  const a1 = await history(ca);
  assert.notEqual(a1.id, a0.id, 'the first replica gave the master a new replication id');
  assert.equal(a1.continues(a0.id), true, 'A MASTER THAT GOT ITS FIRST REPLICA TAKEN FOR ANOTHER SERVER');
  await cb.replicaof('NO', 'ONE');
  const b1 = await history(cb);
  assert.equal(b1.continues(a1.id), false, 'A PROMOTED REPLICA TAKEN FOR THE MASTER');
  await eventually('a frees its backlog', async () => (await history(ca)).id !== a1.id, 15_000);
  const a2 = await history(ca);
  assert.equal(a2.continues(a1.id), true, 'A MASTER THAT FREED ITS BACKLOG TAKEN FOR ANOTHER SERVER');
  await eventually('b frees its backlog', async () => (await history(cb)).id !== b1.id, 15_000);
  const b2 = await history(cb);
  assert.match(await cb.info('replication'), /master_replid2:0{40}/);
  assert.equal(b2.continues(a2.id), false, 'A PROMOTED REPLICA THAT FREED ITS BACKLOG TAKEN FOR THE MASTER');
  assert.equal(b2.continues(a1.id), false);
  assert.equal(b2.continues(b1.id), true, 'the promoted replica, its backlog freed, continues its own history since the promotion');
  await a.restart();
  await eventually('a answers again', async () => (await ca.ping().catch(() => '')) === 'PONG', 15_000);
  const a3 = await history(ca);
  assert.equal(a3.continues(a2.id), false, 'A RESTARTED SERVER TAKEN FOR THE SAME PROCESS');
});
