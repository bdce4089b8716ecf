/**
 * Review of the `redis+cluster://` upstream (src/upstream/redis.ts, with the cold detector,
 * src/router/cold-detector.ts) under the faults a Redis Cluster operator meets: slot migration
 * (resharding) with ASK redirections, a master restarted empty, a master killed and its replica
 * promoted, and CLUSTERDOWN. Tests marked FINDING fail on the code they were written against
 * (47cc993); tests marked "holds:" are guards for suspicions checked and found correct. Fixed: a
 * set retried by ioredis after its timeout (TRYAGAIN) landing after the delete that followed it;
 * a restarted master without the marker not fenced, nor the first command it gets, and a promoted
 * replica that missed the last writes not fenced (a marker per master whose key names the master,
 * redis.ts markerStores; writes to a node not sent until its reconnect is reported,
 * refuseUnreported; slot master changes reported, mastersChanged).
 * Writes failing during a slot migration (TRYAGAIN: the scripts named the item and its slot's
 * cas counter) are fixed too: in a cluster the scripts name the item alone.
 * Private redis-servers only (cluster-enabled, no persistence), each on free data and bus ports in
 * its own temporary directory; mcmux in this process with a private state-dir.
 */

import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { Redis } from 'ioredis';
import type { App } from '../../src/app';
import type { HealthyUpstream } from '../../src/router/health';
import { keySlot } from '../../src/upstream/redis';
import { b, getOne, retrying, set } from '../helpers/driver-calls';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { freePort } from '../helpers/servers';
import { type Wire } from '../helpers/wire';
import { makeDir, spawnRedis } from './targets/redis';
import { type Proc, stateDir, client, type Cluster, cli, keyWhere, homeOf, settle, startCluster, behindMcmux, untilMasterOf, untilReplicating, haveServers, clusterDriver } from '../helpers/redis-cluster';

/**
 * A cluster (first) and a memcached behind an in-process mcmux (lock-fence 60 s), a client, and
 * `add <lock>` STORED on both, the lock on a master that does not hold the marker (`victim`).
 */
async function lockOffTheMarker(t: TestContext): Promise<{ cluster: Cluster; app: App; u: HealthyUpstream; victim: number; lock: string; w: Wire } | undefined> {
  if (!haveServers(t, true)) return undefined;
  const cluster = await startCluster(t);
  const { app, u } = await behindMcmux(t, cluster);
  const victim = (homeOf(keySlot(b(app.coldDetector.key))) + 1) % 3;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  // A marker on every master (its own key: markerStores), read on each node itself.
  await eventually('a marker is written to every master', async () => {
    for (const a of cluster.admin) {
      const keys = (await a.call('KEYS', `${app.coldDetector.key}.*`)) as string[];
      if (keys.length === 0) return false;
    }
    return true;
  });
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  return { cluster, app, u, victim, lock, w };
}

// FINDING (master restarted empty): mcmux fences an upstream that came back empty by looking for
// ONE marker key (cold-detector.ts markerKey(), read through the upstream as any key): in a
// cluster that key lives in one slot, on one master. A master that restarts empty (no
// persistence, its nodes.conf kept: it rejoins as master of its slots) is reported
// (redis.ts:313-318, a node seen ready before, ready again) and fenced as a precaution, but the check
// that follows reads the marker from the master that holds the marker's slot, which kept it, and
// lifts the fence (cold-detector.ts liftIfKept, via reconnected()). The restarted master decides
// the next `add lock.<sid>` for a key it lost: STORED while the next upstream still holds the lock.
// The same goes for the periodic checks: no check ever reads the restarted master.
// Cause: cold-detector.ts:355 storesOf() returns [u.inner] for a cluster, and checkStore
// (cold-detector.ts:459) reads this.key through the cluster client, which routes it to one master.
// Fixed so: a marker per master (RedisUpstream.markerStores), as suggested here. Suggested: one marker per master (a key
// whose hash tag lands in a slot that master serves, e.g. `{<slotTag(slot)>}mcmux.sentinel.<host>`
// for one slot of each master, re-chosen when slots move), and a node reported ready again is
// judged by the marker on that node alone (as serverReconnected does for a memcached pool).
test('fixed: a cluster master restarted empty (not the one holding the marker) is fenced: a lock it lost is not granted again', { timeout: 90_000 }, async (t) => {
  const r = await lockOffTheMarker(t);
  if (!r) return;
  const { cluster, app, u, victim, lock, w } = r;
  const begun = u.fencesBegun;
  await cluster.restart(victim);
  // ioredis reaches the node again only when a request is routed to it (see the next test): a read.
  await eventually('the restarted master serves its slots again', async () => {
    try {
      await u.inner.get([lock]);
      return true;
    } catch {
      return false;
    }
  }, 30_000);
  // A node seen ready before, ready again: onReconnect, fenced as a precaution.
  await eventually('the restart is reported to the cold detector', () => u.fencesBegun > begun, 10_000);
  // The check a reconnect starts, and one more, as the periodic timer would: what they decide stands.
  await app.coldDetector.check(u);
  assert.equal(await getOne(u.inner, lock), undefined, 'the restarted master lost the lock');
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (upstream fenced: ${u.fenced})`);
});

// FINDING (a restart seen only by the request it decides): ioredis drops a cluster node whose
// connection ended (ConnectionPool 'end' -> '-node') and makes a new one only when a command is
// routed to its slots again (MOVED from another node -> findOrCreate -> '+node'); this driver
// sets no slotsRefreshInterval and no clusterNodeRetryStrategy, so nothing reconnects in the
// background. The first request for a restarted (empty) master's slots is therefore what makes
// the connection, it waits in that node's offline queue, and ioredis sends it as the connection
// becomes ready, before it emits 'ready' (ioredis setStatus emits on process.nextTick, after the
// offline queue is flushed): the router chose the cluster as authority for that `add` long before,
// and the fence that redis.ts:316-318 (node.once('ready') -> onReconnect) sets comes after the
// empty master has decided it: STORED, a held lock granted again. Here the restarted master is
// not the marker's, so the next test's cause adds to it; but even with a marker per master, the
// request that reaches the node first is decided unfenced.
// Cause: redis.ts:797-815 (the Cluster options: no slotsRefreshInterval, no
// clusterNodeRetryStrategy) and redis.ts:313-318 (a restart is noticed only on 'ready' of a
// node re-created for a request).
// Fixed so (the next test pins the refusal): clusterNodeRetryStrategy, slotsRefreshInterval, and
// refuseUnreported. Suggested: keep node connections up in the background (clusterNodeRetryStrategy with the same
// back-off, and slotsRefreshInterval ~1 s), listening to every 'ready' of a node (not once), so a
// restart is reported while no request waits; and fail (UPSTREAM_UNREACHABLE, not run) a request
// routed to a node at an address seen before until that node's 'ready' has been reported.
test('fixed: the first add for a restarted (empty) cluster master is not decided by it before the restart is noticed', { timeout: 90_000 }, async (t) => {
  const r = await lockOffTheMarker(t);
  if (!r) return;
  const { cluster, u, victim, lock, w } = r;
  const begun = u.fencesBegun;
  await cluster.restart(victim);
  // The restarted master is back in the cluster, serving its slots (as its peers see it).
  const admin = cluster.admin[victim] as Redis;
  await eventually('the restarted master is up and the cluster ok', async () => {
    try {
      return String(await admin.call('CLUSTER', 'INFO')).includes('cluster_state:ok') && (await cluster.masterOf(keySlot(b(lock)), (victim + 1) % 3)) === victim;
    } catch {
      return false;
    }
  }, 30_000);
  const reportedBefore = u.fencesBegun > begun;
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (restart reported before the add: ${reportedBefore})`);
});

// The driver alone, without the cold detector's checks (which also reach the restarted master,
// and may be what reports it first in the test above). While a master is down, an add routed to
// it fails as never sent (UNREACHABLE: the router takes the next authority, nothing is journaled
// as maybe applied), and once it is back (restarted empty) no add is decided there before the
// driver reported the reconnect (onReconnect: the cluster is fenced then). Before the fix, an add
// waiting in the node's offline queue was sent as the connection came back, before ioredis
// emitted the node's 'ready' (so before the report), and one that waited while the node was
// down failed as an IO error (maybe applied).
test('fixed: an add routed to a master that is down or reconnecting is not sent until its reconnect is reported', { timeout: 90_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { cluster, up } = r;
  let reported = 0;
  up.onReconnect = () => reported++;
  const victim = 1;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const add = (v: string): Promise<string> => settle(up.store({ mode: 'add', key: lock, value: b(v), flags: 0, deadline: 0, withCas: false }));
  await set(up, 'warm', 'x'); // every master's connection made
  await retrying(() => up.store({ mode: 'add', key: lock, value: b('holder'), flags: 0, deadline: 0, withCas: false }));
  await cluster.kill(victim);
  const down: string[] = [];
  await eventually('an add to the killed master fails as never sent', async () => {
    const o = await add('thief');
    down.push(o);
    return o.includes('MCMUX_UPSTREAM_UNREACHABLE');
  }, 15_000);
  assert.deepEqual(down.filter((o) => o.startsWith('ok')), [], 'nothing decided by a killed master');
  const restarting = spawnRedis(cluster.ports[victim] as number, cluster.dirs[victim] as string, cluster.args[victim] as string[]).then((p) => {
    cluster.procs[victim] = p;
  });
  const outcomes: string[] = [];
  await eventually('an add reaches the restarted master', async () => {
    const reportedWhenSent = reported > 0;
    const o = await add('thief');
    outcomes.push(`${reportedWhenSent ? 'after' : 'before'} the report: ${o}`);
    return o.startsWith('ok');
  }, 30_000);
  await restarting;
  assert.deepEqual(outcomes.filter((o) => o.startsWith('before') && o.includes(': ok')), [], 'an add decided by the restarted master before its reconnect was reported');
  assert.equal(reported, 1, 'the restart reported once');
});

/** `n` keys `<stem><i>` whose item keys all hash to `slot`. */
function keysInSlot(stem: string, slot: number, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) if (keySlot(b(`${stem}${i}`)) === slot) out.push(`${stem}${i}`);
  return out;
}

/** Slot `slot` from master `from` to master `to`, by hand as redis-cli --cluster reshard does it. */
function migration(c: Cluster, slot: number, from: number, to: number) {
  const src = c.admin[from] as Redis;
  const dst = c.admin[to] as Redis;
  return {
    begin: async () => {
      await dst.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', await c.id(from));
      await src.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', await c.id(to));
    },
    /** The keys of the slot still on the source, as Buffers. */
    left: async (): Promise<Buffer[]> => (await src.callBuffer('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as Buffer[],
    move: async (keys: Buffer[]) => {
      if (keys.length > 0) await src.call('MIGRATE', '127.0.0.1', String(c.ports[to]), '', '0', '5000', 'KEYS', ...keys);
    },
    end: async () => {
      const toId = await c.id(to);
      await dst.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
      await src.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
      for (const a of c.admin) if (a !== src && a !== dst) await a.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
    },
  };
}

const isCounter = (k: Buffer): boolean => k.toString('latin1').includes('mcmux cas:');

// FINDING (resharding): while a slot migrates (MIGRATING on the source, IMPORTING on the target,
// its keys moving by MIGRATE, as `redis-cli --cluster reshard` does slot by slot), Redis runs a
// command naming several keys only where it has them all; otherwise it answers -TRYAGAIN (cluster.c
// getNodeByQuery: "Multiple keys request during rehashing of slot"). Every store and arith script
// names two keys, the item and its slot's cas counter (redis.ts:428 store(), redis.ts:450 arith():
// `this.counterFor(item)`), which MIGRATE moves separately: a `set`/`add` of a key not yet stored
// (the counter is there, the item is not), and every store/incr/append of an item moved before
// (or after) the counter, get TRYAGAIN for as long as the slot migrates; ioredis retries it
// (16 x 100 ms), then it fails (TIMEOUT or "Too many Cluster redirections"): SERVER_ERROR to the
// client, a lock (`add lock.<sid>`) that cannot be taken. A multi-get of keys of one slot, some
// moved and some not (or not stored), fails as a whole the same way (redis.ts:520 doGet, one
// script per slot). Single-key commands (get, touch, gat, delete) follow ASK and work.
// Fixed so (in a cluster the scripts name the item alone; a multi-get is one script per key). Suggested: make the write scripts single-key: no shared counter key (e.g. the new unique =
// max(old unique + 1, server TIME in µs) read from the item itself, with a floor a flush raises
// kept per item or per prefix elsewhere); and get a multi-get's keys of a migrating slot one
// script per key when a grouped call answers TRYAGAIN.
test('fixed: during a slot migration, set/add/incr/append/cas and a multi-get of the slot give memcached answers', { timeout: 120_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { cluster, up } = r;
  const slot = keySlot(b('m0'));
  const from = homeOf(slot);
  const to = (from + 1) % 3;
  const [a, cnt, app, tch, casKey, fresh1, fresh2, lockA, lockC, missing] = keysInSlot('m', slot, 10) as [string, string, string, string, string, string, string, string, string, string];
  await set(up, a, 'a0');
  await set(up, cnt, '5');
  await set(up, app, 'x');
  await set(up, tch, 't');
  const token = await set(up, casKey, 'c0');
  const m = migration(cluster, slot, from, to);
  await m.begin();
  const outcomes: string[] = [];
  const expected: string[] = [];
  const step = async (what: string, p: Promise<unknown>, want: string): Promise<void> => {
    const got = await settle(p);
    outcomes.push(`${what}: ${got.startsWith(want) ? 'as memcached' : got}`);
    expected.push(`${what}: as memcached`);
  };
  const store = (mode: 'set' | 'add' | 'append' | 'cas', key: string, value: string, cas?: bigint) => up.store({ mode, key, value: b(value), flags: 0, deadline: 0, cas });

  // Phase 1: nothing moved yet.
  await step('1 set of a new key', store('set', fresh1, 'n1'), 'ok {"status":"STORED"');
  await step('1 add lock', store('add', lockA, 'held'), 'ok {"status":"STORED"');
  await step('1 get a + a key never stored', up.get([a, missing]), 'ok [{"value":"a0"');
  // Phase 2: the items moved, the cas counter not yet.
  const items = (await m.left()).filter((k) => !isCounter(k));
  await m.move(items);
  await step('2 set of a moved key', store('set', a, 'a1'), 'ok {"status":"STORED"');
  await step('2 incr', up.arith('incr', cnt, 1n), 'ok {"status":"OK","value":"6"');
  await step('2 append', store('append', app, 'y'), 'ok {"status":"STORED"');
  await step('2 touch', up.touch(tch, Date.now() + 60_000), 'ok "TOUCHED"');
  await step('2 get of moved keys', up.get([a, cnt]), 'ok [{"value"');
  // Phase 3: the counter moved too (the slot's keys all on the target, not yet its owner).
  await m.move(await m.left());
  await step('3 cas with the token of before', store('cas', casKey, 'c1', token), 'ok {"status":"STORED"');
  await step('3 set of a new key', store('set', fresh2, 'n2'), 'ok {"status":"STORED"');
  await step('3 add lock', store('add', lockC, 'held'), 'ok {"status":"STORED"');
  await m.end();
  // Afterwards: every write that was answered applied once.
  const after = await retrying(() => up.get([a, cnt, app, casKey]));
  outcomes.push(`after: ${after.map((h) => h?.value.toString()).join(',')}`);
  expected.push(`after: ${['a1', '6', 'xy', 'c1'].join(',')}`);
  assert.deepEqual(outcomes, expected);
});

// FINDING, fixed twice: a set answered TRYAGAIN during a slot migration (the item moved, its slot's
// cas counter not yet: a script naming both) timed out, and ioredis went on retrying it on its
// own timer (retryDelayOnTryAgain 100 ms x 16): it landed after the delete that followed it.
// First fixed by spacing those retries within the timeout (retryDelayOnTryAgain); since the
// cluster's scripts name the item alone (no counter), such a set does not meet TRYAGAIN at all:
// it follows ASK to where the item is, and is stored; the delete after it stands.
test('fixed: a set during a slot migration (the item moved) is stored there, and the delete that follows it stands', { timeout: 120_000 }, async (t) => {
  const r = await clusterDriver(t, '250');
  if (!r) return;
  const { cluster, up } = r;
  const slot = keySlot(b('m0'));
  const from = homeOf(slot);
  const [k] = keysInSlot('m', slot, 1) as [string];
  await set(up, k, 'before');
  const m = migration(cluster, slot, from, (from + 1) % 3);
  await m.begin();
  await m.move(await m.left());
  assert.match(await settle(up.store({ mode: 'set', key: k, value: b('during'), flags: 0, deadline: 0 })), /^ok \{"status":"STORED"/);
  assert.equal((await getOne(up, k))?.value.toString(), 'during');
  assert.equal(await up.delete(k), 'DELETED');
  await m.end();
  assert.equal(await settle(getOne(up, k)), 'ok undefined', 'the delete stands once the slot has moved');
});

// The cluster's uniques come from the server clock and the item's own unique (no counter key):
// a key's unique only grows, across a delete and a flush too, so a unique read before never
// matches the item written after it; and each write of a key gets a new one.
test('holds: in a cluster, a cas with a unique read before a delete (or a flush) and a new add fails', { timeout: 60_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { up } = r;
  const k = 'uniq.k';
  const cas = (unique: bigint, v: string) => up.store({ mode: 'cas', key: k, value: b(v), flags: 0, deadline: 0, cas: unique });
  const u1 = await set(up, k, 'one');
  const u2 = await set(up, k, 'two');
  assert.ok(u2 > u1, `each write a new, larger unique (${u1}, ${u2})`);
  assert.equal((await cas(u1, 'x')).status, 'EXISTS');
  assert.equal(await up.delete(k), 'DELETED');
  const added = await up.store({ mode: 'add', key: k, value: b('three'), flags: 0, deadline: 0 });
  assert.equal(added.status, 'STORED');
  assert.ok((added.cas ?? 0n) > u2, 'above the unique before the delete');
  assert.equal((await cas(u2, 'x')).status, 'EXISTS', 'the unique of before the delete does not match');
  await up.flush();
  const u4 = await set(up, k, 'four');
  assert.ok(u4 > (added.cas ?? 0n), 'above the unique before the flush');
  const incr = await up.arith('incr', 'uniq.n', 1n);
  assert.equal(incr.status, 'NOT_FOUND');
  await set(up, 'uniq.n', '1');
  const n = await up.arith('incr', 'uniq.n', 1n);
  assert.equal(n.status === 'OK' && n.value, 2n);
});

/**
 * The index of the replica of master `m` (CLUSTER NODES: "slave <master id>"), once the master's
 * view shows one: the cluster's gossip may not have told it yet (CI, the 2 cores loaded: "no
 * replica of node 2" once, on a cluster made a moment before).
 */
async function replicaOf(c: Cluster, m: number): Promise<number> {
  const id = await c.id(m);
  let found = -1;
  await eventually(`a replica of node ${m} in its CLUSTER NODES`, async () => {
    const nodes = String(await (c.admin[m] as Redis).call('CLUSTER', 'NODES'));
    for (let i = 0; i < c.ports.length && found < 0; i++) {
      const line = nodes.split('\n').find((l) => l.includes(`:${c.ports[i]}@`));
      if (line && line.includes('slave') && line.includes(id)) found = i;
    }
    return found >= 0;
  }, 15_000);
  return found;
}

// FINDING (failover loses the last lock): replication in Redis Cluster is asynchronous, so a
// replica promoted after its master was killed may lack the writes acknowledged just before: a
// lock `add lock.<sid>` the master answered STORED. The promoted replica keeps everything else
// (the marker, the sessions), so neither the cold detector (marker still there: warm) nor the
// rollback check (its generation is written hourly) notices, and redis.ts reports no reconnect for
// it (the replica's connection was made before, ioredis only flips its role: ConnectionPool
// findOrCreate "Change role", no '+node'). The cluster, first upstream, decides the next `add` of
// that lock from the promoted replica: STORED while the memcached still holds the lock.
// Here the replica misses the write because it is stopped (SIGSTOP) and its link cut (CLIENT KILL
// TYPE replica) while the lock is taken; on a loaded cluster the replication lag does the same.
// Cause: redis.ts:313-318 reports only a node re-created at an address seen before; nothing
// watches a slot's master change (a failover).
// Fixed: the marker key of a master names its address, so the promoted replica lacks its marker
// ('first', which keeps the fence a reconnect or a slot master change, mastersChanged, begins).
// Suggested: in redis.ts, on each slots refresh (the Cluster 'refresh' event) compare each slot's
// master with the one before; a slot whose master changed (a promotion, not a migration the driver
// followed by MOVED/ASK) calls a hook the cold detector takes as "came back with older data"
// (fence for lock-fence as knownEmpty/rolledBack does, not lifted by a warm marker).
test('fixed: a replica promoted after its master was killed, lacking the last lock, does not grant that lock again', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t, { replicas: 1, nodeTimeout: 1000, extra: ['--cluster-replica-validity-factor', '0'] });
  const { app, u } = await behindMcmux(t, cluster, { timeout: 1000 });
  const victim = (homeOf(keySlot(b(app.coldDetector.key))) + 1) % 3;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const session = keyWhere('sess.', (s) => homeOf(s) === victim);
  const replica = await replicaOf(cluster, victim);
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  assert.equal(await w.ask(`set ${session} 0 0 4\r\ndata\r\n`), 'STORED\r\n');
  await untilReplicating(cluster, victim);
  assert.equal(String(await (cluster.admin[victim] as Redis).call('WAIT', '1', '5000')), '1', 'the replica has the session');

  const replicaProc = cluster.procs[replica] as Proc;
  replicaProc.kill('SIGSTOP');
  t.after(() => void replicaProc.kill('SIGCONT'));
  // Its replication link cut while it cannot reconnect: what the master writes now stays there.
  await (cluster.admin[victim] as Redis).call('CLIENT', 'KILL', 'TYPE', 'replica');
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  await cluster.kill(victim);
  replicaProc.kill('SIGCONT');
  await untilMasterOf(cluster, keySlot(b(lock)), replica, (victim + 1) % 3);
  // mcmux reads the session from the promoted replica (through the cluster) again.
  await eventually('the driver reaches the promoted replica', async () => (await settle(u.inner.get([session]))).includes('"value":"data"'), 30_000);
  assert.equal(await getOne(u.inner, lock), undefined, 'the promoted replica lacks the lock');
  // Health may have marked the cluster down meanwhile: until mcmux uses it again, the memcached decides.
  await eventually('mcmux takes the cluster as usable again', () => u.usable, 30_000);
  // A write through mcmux on the promoted replica first: any connection ioredis re-makes for it
  // (and the reconnect it reports) comes now, not with the add below. Then the marker check such
  // a reconnect (or the cluster's health coming back) starts, once more: what it decides stands.
  await eventually('mcmux writes to the promoted replica', async () => (await w.ask(`set ${session} 0 0 5\r\ndata2\r\n`)) === 'STORED\r\n', 30_000);
  await app.coldDetector.check(u);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (upstream fenced: ${u.fenced})`);
});

// holds: a master killed (SIGKILL), its replica promoted (node timeout 1 s): with the cluster as
// mcmux's only upstream, a client reading and writing a session on that master's slots meanwhile
// gets SERVER_ERROR (never a miss, which a session handler takes for a logged-out user, nor a
// hang), and once the replica serves the slots every command works there (the scripts were loaded
// on the replica when ioredis connected to it: no NOSCRIPT), with the data the replica held.
test('holds: a master killed, its replica promoted: SERVER_ERROR meanwhile, never a miss, then the replica serves the data', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t)) return;
  const cluster = await startCluster(t, { replicas: 1, nodeTimeout: 1000 });
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': 60_000 }, [`${cluster.url}?timeout=500`]);
  const victim = 1;
  const session = keyWhere('sess.', (s) => homeOf(s) === victim);
  const counter = keyWhere('n.', (s) => homeOf(s) === victim);
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  assert.equal(await w.ask(`set ${counter} 0 0 1\r\n5\r\n`), 'STORED\r\n');
  await untilReplicating(cluster, victim);
  assert.equal(String(await (cluster.admin[victim] as Redis).call('WAIT', '1', '5000')), '1', 'the replica has them');
  const replica = await replicaOf(cluster, victim);

  await cluster.kill(victim);
  const seen = new Set<string>();
  await eventually('the session is served again', async () => {
    const r = await w.ask(`get ${session}\r\n`, /END\r\n$|ERROR.*\r\n$/, 5000);
    seen.add(r.startsWith('SERVER_ERROR') ? 'SERVER_ERROR' : r);
    return r.includes('data');
  }, 30_000);
  assert.ok(seen.has('SERVER_ERROR'), 'the get right after the kill fails');
  assert.deepEqual([...seen].filter((r) => r !== 'SERVER_ERROR' && !r.includes('data')), [], 'only SERVER_ERROR while the master is down');
  await untilMasterOf(cluster, keySlot(b(session)), replica, 0);
  assert.equal(await w.ask(`incr ${counter} 1\r\n`), '6\r\n');
  assert.equal(await w.ask(`append ${session} 0 0 1\r\n!\r\n`), 'STORED\r\n');
  const gets = await w.ask(`gets ${session}\r\n`, /END\r\n$/);
  const token = /VALUE \S+ 0 5 (\d+)\r\n/.exec(gets)?.[1];
  assert.ok(token, gets);
  assert.equal(await w.ask(`cas ${session} 0 0 3 ${token}\r\nnew\r\n`), 'STORED\r\n');
  assert.equal(await w.ask(`add ${session} 0 0 1\r\nx\r\n`), 'NOT_STORED\r\n');
});

// holds: `redis-cli --cluster add-node` then `--cluster reshard` of 100 slots to the new (empty)
// master while the driver increments counters and writes new keys in those slots. The new master
// is reached through MOVED/ASK, and its scripts are loaded as ioredis makes its connection
// ('+node', before any command on it): no NOSCRIPT. Every increment answered OK was applied once
// and none that failed was (timeout 2 s is above ioredis's TRYAGAIN retries: a failure there is
// "Too many Cluster redirections", never run), and every set answered STORED is read back after.
// (Writes failing during the move is the TRYAGAIN finding above.)
test('holds: slots resharded to a newly added master under load: no NOSCRIPT, no write lost or applied twice', { timeout: 120_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { cluster, up } = r;
  // A fourth node, empty, joined as a master without slots.
  const dir = makeDir('review-cluster-');
  cluster.dirs.push(dir);
  const [port, bus] = [await freePort(), await freePort()];
  const args = ['--cluster-enabled', 'yes', '--cluster-port', String(bus), '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '5000'];
  cluster.procs.push(await spawnRedis(port, dir, args));
  cluster.ports.push(port);
  cluster.admin.push(new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, protocol: 2 }).on('error', () => {}));
  await cli(['--cluster', 'add-node', `127.0.0.1:${port}`, `127.0.0.1:${cluster.ports[0]}`]);
  for (const admin of cluster.admin) {
    await retrying(async () => {
      const info = String(await admin.call('CLUSTER', 'INFO'));
      if (!info.includes('cluster_state:ok') || !info.includes('cluster_known_nodes:4')) throw new Error(info);
    });
  }
  const counters = Array.from({ length: 8 }, (_, i) => keyWhere(`c${i}.`, (s) => s < 100));
  await Promise.all(counters.map((k) => set(up, k, '0')));

  let stop = false;
  t.after(() => {
    stop = true;
  });
  const ok = new Map<string, number>(counters.map((k) => [k, 0]));
  const stored: string[] = [];
  const errors = new Set<string>();
  const load = (async () => {
    for (let i = 0; !stop; i++) {
      // A failure at once settles in microtasks only: let timers and I/O run between rounds.
      await new Promise((r) => setImmediate(r));
      await Promise.all(
        counters.map(async (k) => {
          const r = await settle(up.arith('incr', k, 1n));
          if (r.startsWith('ok')) ok.set(k, (ok.get(k) ?? 0) + 1);
          else errors.add(r.replace(/127\.0\.0\.1:\d+/g, 'node').slice(0, 200));
        }),
      );
      const fresh = keyWhere(`f${i}.`, (s) => s < 100);
      if ((await settle(up.store({ mode: 'set', key: fresh, value: b(fresh), flags: 0, deadline: 0 }))).startsWith('ok')) stored.push(fresh);
    }
  })();
  const out = await cli(['--cluster', 'reshard', `127.0.0.1:${cluster.ports[0]}`, '--cluster-from', await cluster.id(0), '--cluster-to', await cluster.id(3), '--cluster-slots', '100', '--cluster-yes']);
  await untilMasterOf(cluster, keySlot(b(counters[0] as string)), 3, 0);
  // A few more rounds on the new master.
  const rounds = ok.get(counters[0] as string) ?? 0;
  await eventually('traffic runs on the new master', () => (ok.get(counters[0] as string) ?? 0) >= rounds + 5);
  stop = true;
  await load;
  assert.ok(!out.includes('ERR'), out.slice(-300));
  assert.deepEqual([...errors].filter((e) => /NOSCRIPT|lost the scripts/.test(e)), []);
  const values = await up.get(counters);
  assert.deepEqual(values.map((h) => Number(h?.value.toString())), counters.map((k) => ok.get(k)), `errors seen: ${[...errors].join(' | ')}`);
  const back = await up.get(stored);
  assert.deepEqual(stored.filter((_, i) => back[i]?.value.toString() !== stored[i]), []);
});

// holds: CLUSTERDOWN. Two of three masters killed (no replicas): the third answers -CLUSTERDOWN
// for its own slots once it sees them fail; through mcmux (the cluster its only upstream) every
// command answers SERVER_ERROR within the wire's bound (no hang, no miss for a session the live
// master holds), and once the two restart (empty, nodes.conf kept) and the cluster is ok again,
// commands on every master's slots work and the live master's session is still there.
test('holds: CLUSTERDOWN (two of three masters down): SERVER_ERROR, never a miss, and recovery once they are back', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t)) return;
  const cluster = await startCluster(t, { nodeTimeout: 1000 });
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': 60_000 }, [`${cluster.url}?timeout=500`]);
  const w = await client(t, app);
  const onLive = keyWhere('sess.', (s) => homeOf(s) === 0);
  const onEach = [0, 1, 2].map((m) => keyWhere('k.', (s) => homeOf(s) === m));
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${onLive} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  await Promise.all([cluster.kill(1), cluster.kill(2)]);
  const live = cluster.admin[0] as Redis;
  await eventually('the live master says the cluster is down', async () => String(await live.call('CLUSTER', 'INFO')).includes('cluster_state:fail'), 20_000);
  const replies = [
    await w.ask(`get ${onLive}\r\n`, /END\r\n$|ERROR.*\r\n$/, 5000),
    await w.ask(`set ${onEach[0]} 0 0 1\r\nx\r\n`, /\r\n$/, 5000),
    await w.ask(`add lock.${onLive} 0 0 1\r\nx\r\n`, /\r\n$/, 5000),
    await w.ask(`get ${onEach.join(' ')}\r\n`, /END\r\n$|ERROR.*\r\n$/, 5000),
  ];
  assert.deepEqual(replies.map((r) => r.split(' ')[0]), ['SERVER_ERROR', 'SERVER_ERROR', 'SERVER_ERROR', 'SERVER_ERROR'], replies.join(''));

  await Promise.all([cluster.restart(1), cluster.restart(2)]);
  await eventually('the cluster is ok again', async () => String(await live.call('CLUSTER', 'INFO')).includes('cluster_state:ok'), 30_000);
  for (const k of onEach) {
    await eventually(`a set on ${k}'s master works`, async () => (await w.ask(`set ${k} 0 0 1\r\ny\r\n`, /\r\n$/, 5000)) === 'STORED\r\n', 30_000);
  }
  assert.equal(await w.ask(`get ${onLive}\r\n`, /END\r\n$/), `VALUE ${onLive} 0 4\r\ndata\r\nEND\r\n`);
  assert.equal(await w.ask(`get ${onEach.join(' ')}\r\n`, /END\r\n$/), `${onEach.map((k) => `VALUE ${k} 0 1\r\ny\r\n`).join('')}END\r\n`);
});
