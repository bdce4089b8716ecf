/**
 * Second review of the Redis Cluster driver (src/upstream/redis.ts) and the cold detector's
 * marker per master (src/router/cold-detector.ts), as of dfc1036: a marker per master through
 * ClusterMasterStore views (markerStores), node connections re-made in the background, writes
 * to a node whose reconnect is not reported refused (refuseUnreported), slot master changes
 * reported (mastersChanged), and single-key scripts whose unique is max(server TIME µs, the
 * item's unique + 1).
 * Tests marked `todo: 'FINDING: ...'` fail on dfc1036 (the comment above each says why, with
 * file:line, and a suggested fix); "holds:" tests are suspicions checked and found correct.
 * Fixed since (tests named "fixed:"): the first look at start (markerStores answers nothing
 * while the slots are unknown: the cluster is fenced as unread); NOSCRIPT after a master restart
 * (a node's requests are refused until its scripts are loaded again); a master down at start
 * (a node whose connection failed before its first 'ready' is reported on it); a graceful
 * migration (mastersChanged reports only a failover; since fa356b6 a master's marker is in its
 * lowest and its highest slot, and the one left after a migration speaks for it); a node promoted back
 * (the marker key names the master's replication id, new at each promotion and restart); a
 * failover learnt by MOVED (a MOVED to a node that was no master at the last refresh is not
 * followed: the command fails unsent and the slots are refreshed, which reports the failover).
 * Findings: (1) the first marker look at start reads one marker for the whole cluster (slots not
 * known yet), so a master that restarted empty while mcmux was down grants a held lock; (2) a
 * node promoted back to master finds its own pre-failover marker (it came back through its
 * replica) and the fence is lifted; (3) a restarted master gets no SCRIPT LOAD: NOSCRIPT on the
 * first command; (4) a failover whose old master stays reachable is learnt by MOVED, which ioredis
 * follows before the refresh reports it: the promoted replica decides unfenced; (5, cost) a
 * graceful slot migration voids every unique and can fence for the whole lock-fence; (6) a master
 * down at mcmux start and back empty later is neither refused nor reported (same root as 1).
 * Private redis-servers only (cluster-enabled, no persistence) on 127.0.0.1, free ports,
 * temporary directories, stopped after each test; mcmux in this process, private state-dir.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import { keySlot } from '../../src/upstream/redis';
import type { Upstream } from '../../src/upstream/upstream';
import { b, getOne, retrying, set } from '../helpers/driver-calls';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { startMemcacheds } from '../helpers/servers';
import { type Proc, open, stateDir, client, keyWhere, homeOf, settle, startCluster, behindMcmux, untilMasterOf, haveServers, holdsKeyStarting, countKeysStarting, untilReplicating, moveSlot, lockedThenSlot0Moved, replicatedVictim, ioCluster, clusterDriver, lockedByAnEarlierProcess, untilOk, untilMarkedEverywhere } from '../helpers/redis-cluster';

// FINDING (mcmux start): the first marker look of a new mcmux process reads ONE marker for the
// whole cluster. ColdDetector.start() -> checkAll -> look -> storesOf (cold-detector.ts:356-359, from look at :363)
// calls markerStores() synchronously, right after the Cluster client was constructed, before it
// has fetched the slots: client.slots is empty, and markerStores (redis.ts:737-744) falls back to
// `[this]` ("slots not known yet: the marker as any key"). That look reads the plain marker key
// (the one the previous process wrote the same way at its own start, 24 h TTL) from the one master
// that holds its slot, finds it ('warm', found), judges the cluster, and app.start() begins to
// listen. A master that restarted empty while mcmux was down (host reboot, no persistence) is
// not fenced until the next periodic look (CHECK_MS = 2 s later, per-master views): an `add
// lock.<sid>` in that window is decided by the restarted master: STORED, while the memcached
// still holds the lock (granted twice).
// Suggested fix: never judge a cluster on the whole-cluster marker. Either have the cold detector
// wait for the upstream's first connection before asking markerStores() (e.g. an optional
// `ready(): Promise<void>` on Upstream, RedisUpstream resolving it with firstReady), or let
// markerStores() return, while the slots are unknown, a view whose get fails (UNREACHABLE): the
// sight is 'unknown', the cluster fenced as unread (cold-detector.ts unread) until a look with
// the per-master views judges it.
test('fixed: mcmux start: a cluster master that restarted empty while mcmux was down is fenced before the first client command', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const { cluster, dir, upstreams, key, victim, lock } = await lockedByAnEarlierProcess(t);
  const plainHome = homeOf(keySlot(b(key)));
  assert.ok(await holdsKeyStarting(cluster, plainHome, key), 'the plain marker written at start');

  // The lock's master restarts empty (nodes.conf kept: master of its slots again) while no mcmux runs.
  await cluster.restart(victim);
  await eventually('the restarted master serves its slots', async () => {
    try {
      return String(await (cluster.admin[victim] as Redis).call('CLUSTER', 'INFO')).includes('cluster_state:ok') && (await cluster.masterOf(keySlot(b(lock)), plainHome)) === victim;
    } catch {
      return false;
    }
  }, 30_000);
  const app2 = await inProcessMcmux({ 'state-dir': dir, 'lock-fence': 60_000 }, upstreams);
  const u = app2.upstreams[0] as HealthyUpstream;
  const fenced = u.fenced;
  const w2 = await client(t, app2);
  assert.equal(await w2.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (cluster fenced at start: ${fenced})`);
});

// FINDING (failover back): master M fails over to its replica R; M restarts (empty) and rejoins
// as R's replica, resyncing from R everything R holds, the marker key named after M
// (`<marker>.<M host:port>.{tag}`, replicated from M to R before the first failover, 24 h TTL)
// among it. Then R fails before the last lock it acknowledged reached M, and M is promoted again.
// mastersChanged (redis.ts:368 'refresh', :721) reports it and reconnected() fences the cluster, but the check
// that follows asks M through the SAME ClusterMasterStore view as before the first failover
// (redis.ts:748 markerViews: same master, same lowest slot, same suffix), whose lastSet entry
// (cold-detector.ts lastSet) is the one of M's last marker write before that failover: M holds
// exactly that value again (it came back through R), so the sight is 'warm' and 'kept', the
// rollback check passes (its gen is not below lastSet's), reconnected() finds every store as it
// was (cold-detector.ts:192-197) and liftIfKept (cold-detector.ts:210) lifts the fence. M, lacking the lock, grants it
// again.
// Suggested fix: a view must not outlive its master's term. In markerStores, drop the view (and
// have the cold detector forget its lastSet, or give the new view a new identity) of a master
// that is no longer a master, and make the key name the master's term, not only its address:
// e.g. its node id and the configEpoch it serves its slots under (CLUSTER NODES / CLUSTER SHARDS;
// a failover always raises it), so a node promoted again asks for a key it was never written
// ('first', which keeps the precautionary fence) instead of the one it inherited.
// Fixed (f1c3952): the key names the master's replication id (INFO replication, read before each
// look), not its config epoch: a promotion and a restart change it, a slot migration does not
// (SETSLOT bumps the importing master's epoch). A replication id not read yet: the view answers
// nothing ('unknown').
test('fixed: failover and back: a master promoted again, lacking the last lock, stays fenced', { timeout: 180_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const victim = 1;
  const lockFence = 15_000;
  const { cluster, app, u, w, key, lock, session, slot } = await replicatedVictim(t, victim, lockFence, { nodeTimeout: 1000 });
  const replica = 3;
  const ownMarker = `${key}.127.0.0.1:${cluster.ports[victim]}.`;

  // Failover 1: M killed, R promoted; M restarted empty, it rejoins as R's replica and resyncs.
  await cluster.kill(victim);
  await untilMasterOf(cluster, slot, replica, 0);
  await cluster.restart(victim);
  await untilReplicating(cluster, replica);
  assert.ok(await holdsKeyStarting(cluster, victim, ownMarker), 'M got its own marker back from R');
  await eventually('mcmux uses the cluster, unfenced, again', async () => u.usable && !u.fenced && (await w.ask(`set ${session} 0 0 5\r\ndata2\r\n`)) === 'STORED\r\n', 60_000);

  // The lock reaches R, not M (M stopped, its link cut); then R dies and M is promoted back.
  const mProc = cluster.procs[victim] as Proc;
  mProc.kill('SIGSTOP');
  await (cluster.admin[replica] as Redis).call('CLIENT', 'KILL', 'TYPE', 'replica');
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  const begun = u.fencesBegun;
  await cluster.kill(replica);
  mProc.kill('SIGCONT');
  await untilMasterOf(cluster, slot, victim, 0);
  await eventually('the failover is reported (fenced)', () => u.fencesBegun > begun, 20_000);
  const fencedAt = Date.now();
  await eventually('the driver reaches M', async () => (await settle(u.inner.get([session]))).includes('"value":"data2"'), 20_000);
  assert.equal(await getOne(u.inner, lock), undefined, 'M lacks the lock');
  await eventually('mcmux takes the cluster as usable', () => u.usable, 20_000);
  await app.coldDetector.check(u);
  const elapsed = Date.now() - fencedAt;
  assert.ok(elapsed < lockFence - 2000, `the steps took ${elapsed} ms: too long to tell`);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (fenced: ${u.fenced}, ${elapsed} ms after the report)`);
});

// FINDING (scripts lost by a restarted master): since 6c474f2 a cluster node's connection is
// made again by the node itself (clusterNodeRetryStrategy, redis.ts:978): the
// same ioredis node object reconnects, so '+node' (redis.ts:348, which loads the scripts on a new
// node) does not fire, and the node's 'ready' handler (redis.ts:355-359) only reports the
// reconnect; the Cluster's own 'ready' (redis.ts:339) does not fire either, and evalsha (redis.ts:454) reloads only after a NOSCRIPT (the cluster stayed
// ready). A master that restarted has an empty script cache: the first EVALSHA routed to it
// answers NOSCRIPT, which fails the request (UPSTREAM_IO, redis.ts evalsha) and only then loads
// the scripts. Every restart of a master so costs a failed request (a get: SERVER_ERROR with the
// cluster alone, a write failed over or journaled), and the cold detector's first marker read
// of that master after the reconnect is one of them ('unknown').
// Suggested fix: load the scripts on the node as part of its reconnect, before anything else is
// sent on it: e.g. node.on('connect') (emitted before the ready check, ahead of the offline
// queue) -> loadScripts([node]); or keep the node in `unreported` until its SCRIPT LOADs answered
// and refuse reads too meanwhile (UNREACHABLE: never sent).
test('fixed: a master restarted: once its reconnect is reported, the first get and set on it work (no NOSCRIPT)', { timeout: 90_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { cluster, up } = r;
  let reported = 0;
  up.onReconnect = () => reported++;
  const victim = 1;
  const k = keyWhere('k.', (s) => homeOf(s) === victim);
  await set(up, 'warm', 'x');
  await set(up, k, 'v');
  await cluster.restart(victim);
  await eventually('the restart is reported', () => reported > 0, 30_000);
  await untilOk(cluster, [victim]);
  const outcomes = [await settle(up.get([k])), await settle(up.store({ mode: 'set', key: k, value: b('w'), flags: 0, deadline: 0 })), await settle(up.arith('incr', k, 1n))];
  assert.deepEqual(outcomes.map((o) => o.replace(/"cas":"\d+"/, '').replace(/127\.0\.0\.1:\d+/g, 'node')), ['ok [null]', 'ok {"status":"STORED",}', 'ok {"status":"NON_NUMERIC"}']);
});


// holds: the cluster's uniques (max(server TIME µs, the item's unique + 1), redis.ts LUA_LIB
// next_cas). Every write (set, append, prepend, incr, a cas) gives the item a new, larger unique and
// a cas with any earlier one fails; touch and gat keep it (as memcached does); an item written by
// the OLD scheme (a per-slot counter that started at the server clock and went up by one per
// write, so below the clock) takes a cas with its unique once, and the next write is above it;
// two drivers (two mcmux processes) writing one key interleaved never hand out a unique twice; a
// delete and an add sent together, 200 times, never give the new item a unique seen before.
test('holds: cluster uniques: every write a larger unique, touch keeps it, old-scheme items, two drivers, delete+add', { timeout: 90_000 }, async (t) => {
  const r = await clusterDriver(t, '2000');
  if (!r) return;
  const { cluster, up } = r;
  const up2 = open(cluster.url, { timeout: '2000' });
  t.after(() => up2.close());
  await retrying(() => up2.probe());
  const k = 'uq.k';
  const store = (d: Upstream, mode: 'set' | 'add' | 'append' | 'prepend' | 'cas', v: string, cas?: bigint) => d.store({ mode, key: k, value: b(v), flags: 0, deadline: 0, cas });
  const seen: bigint[] = [await set(up, k, '1')];
  const next = (c: bigint | undefined): void => {
    assert.ok(c !== undefined && c > (seen[seen.length - 1] as bigint), `unique ${c} above ${seen[seen.length - 1]}`);
    seen.push(c);
  };
  next((await store(up, 'append', '2')).cas);
  next((await store(up, 'prepend', '0')).cas);
  const inc = await up.arith('incr', k, 5n);
  assert.equal(inc.status, 'OK');
  next(inc.status === 'OK' ? inc.cas : undefined);
  const touched = await up.touch(k, Date.now() + 60_000, true);
  assert.deepEqual(touched, { flags: 0, cas: seen[seen.length - 1] }, 'touch keeps the unique');
  assert.equal((await up.get([k], Date.now() + 60_000))[0]?.cas, seen[seen.length - 1], 'gat keeps it');
  for (const old of seen.slice(0, -1)) assert.equal((await store(up2, 'cas', 'x', old)).status, 'EXISTS');
  next((await store(up2, 'cas', 'y', seen[seen.length - 1])).cas);
  // Two drivers, interleaved.
  const both = await Promise.all(Array.from({ length: 40 }, (_, i) => store(i % 2 ? up : up2, 'set', `v${i}`)));
  const uniques = both.map((s) => s.cas as bigint);
  assert.equal(new Set(uniques.map(String)).size, uniques.length, 'no unique twice');
  assert.ok(uniques.every((u) => u > (seen[seen.length - 1] as bigint)));
  // An item of the old scheme: a unique from a counter below the server clock.
  const slot = keySlot(b('uq.old'));
  const admin = cluster.admin[homeOf(slot)] as Redis;
  const [sec, usec] = (await admin.call('TIME')) as [string, string];
  const oldUnique = BigInt(sec) * 1_000_000n + BigInt(usec) - 5_000_000n;
  const head = Buffer.alloc(12);
  head.writeBigUInt64BE(oldUnique, 4);
  await admin.set('uq.old', Buffer.concat([head, b('old')]));
  assert.equal((await up.get(['uq.old']))[0]?.cas, oldUnique);
  const taken = await up.store({ mode: 'cas', key: 'uq.old', value: b('new'), flags: 0, deadline: 0, cas: oldUnique });
  assert.equal(taken.status, 'STORED');
  assert.ok((taken.cas as bigint) > oldUnique);
  assert.equal((await up2.store({ mode: 'cas', key: 'uq.old', value: b('again'), flags: 0, deadline: 0, cas: oldUnique })).status, 'EXISTS');
  // Delete and add sent together.
  const all = new Set<string>(seen.concat(uniques).map(String));
  for (let i = 0; i < 200; i++) {
    const [, added] = await Promise.all([up.delete(k), store(up2, 'add', `a${i}`)]);
    if (added.status !== 'STORED') continue;
    assert.ok(!all.has(String(added.cas)), `unique ${added.cas} handed out twice`);
    all.add(String(added.cas));
  }
});

// holds: a standalone Redis (markerStores returns [this], the scripts keep the counter key)
// restarted empty, second upstream a memcached: the restart is reported, the marker found
// missing, and a lock it lost is not granted again.
test('holds: a standalone Redis restarted empty is fenced: a lock it lost is not granted again', { timeout: 60_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const { startRedis } = await import('./targets/redis');
  const redis = await startRedis();
  t.after(() => redis.stop());
  const [mc] = await startMemcacheds(t, 1);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': 60_000 }, [`${redis.url}?timeout=1000`, mc?.url as string]);
  const u = app.upstreams[0] as HealthyUpstream;
  assert.deepEqual(u.inner.markerStores?.(), [u.inner]);
  const w = await client(t, app);
  await eventually('mcmux answers', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('the marker is written', async () => (await getOne(u.inner, app.coldDetector.key)) !== undefined);
  const gets = await w.ask(`gets warm\r\n`, /END\r\n$/);
  assert.equal(await w.ask(`add lock.s 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get lock.s\r\n`, /END\r\n$/)).includes('holder'));
  await redis.restart();
  await eventually('mcmux reaches the restarted Redis', async () => (await w.ask(`set warm 0 0 1\r\n2\r\n`)) === 'STORED\r\n' && (await settle(getOne(u.inner, 'warm'))).includes('"value"'), 20_000);
  await app.coldDetector.check(u);
  assert.equal(await w.ask(`add lock.s 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `fenced: ${u.fenced}`);
  const token = /VALUE \S+ 0 1 (\d+)\r\n/.exec(gets)?.[1];
  assert.equal(await w.ask(`cas warm 0 0 1 ${token}\r\n3\r\n`), 'EXISTS\r\n', 'a unique of before the restart does not match');
});

// holds: every master restarted at once (SIGKILL and started again at once, empty, nodes.conf
// kept), the cluster first upstream, a memcached second: each node's reconnect is reported, the
// per-master markers are all found missing, and a lock the cluster lost is not granted again.
test('holds: all masters restarted empty at once: fenced, a lock they lost is not granted again', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t);
  const { app, u } = await behindMcmux(t, cluster);
  const key = app.coldDetector.key;
  const locks = [0, 1, 2].map((m) => keyWhere(`lock${m}.s`, (s) => homeOf(s) === m));
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await untilMarkedEverywhere(cluster, key);
  await eventually('unfenced', () => !u.fenced, 20_000);
  for (const lock of locks) assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the locks reached the memcached', async () => (await w.ask(`get ${locks.join(' ')}\r\n`, /END\r\n$/)).split('holder').length === 4);
  await Promise.all([0, 1, 2].map((i) => cluster.kill(i)));
  await Promise.all([0, 1, 2].map((i) => cluster.restart(i)));
  await eventually('the cluster is ok again', async () => {
    try {
      for (const a of cluster.admin) if (!String(await a.call('CLUSTER', 'INFO')).includes('cluster_state:ok')) return false;
      return true;
    } catch {
      return false;
    }
  }, 30_000);
  await eventually('mcmux writes to every master again', async () => {
    for (const m of [0, 1, 2]) if ((await w.ask(`set ${keyWhere('k.', (s) => homeOf(s) === m)} 0 0 1\r\n1\r\n`, /\r\n$/, 5000)) !== 'STORED\r\n') return false;
    return true;
  }, 30_000);
  await app.coldDetector.check(u);
  for (const lock of locks) assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `${lock} granted again (fenced: ${u.fenced})`);
});

// FINDING (failover learnt by MOVED): a replica promoted while its old master stays up and
// reachable (CLUSTER FAILOVER TAKEOVER or FORCE by an operator or a failover tool; a partition of
// the cluster bus only): the driver's connection to the old master never closes, so nothing is
// `unreported`, and the slots table still names the old master until the next refresh (every
// 2 s). The first write to those slots reaches the old master, now a replica, which answers MOVED;
// ioredis follows it AT ONCE to the new master (node_modules/ioredis/built/cluster/index.js:441-470,
// handleError :665-681: slots[slot][0] = new master, tryConnection(), and only then
// refreshSlotsCache()). The 'refresh' that calls mastersChanged (redis.ts:368) and so fences the
// cluster comes after that write was decided: an `add lock.<sid>` the promoted replica never got
// (asynchronous replication) is STORED by it, unfenced, while the memcached holds the lock. The
// fence that follows protects only the next commands. refuseUnreported (redis.ts:708) does not
// apply (the node is not reconnecting), and mastersChanged runs on 'refresh' only.
// Suggested fix: never let ioredis follow a MOVED for a write: wrap the Cluster's handleError
// (a subclass of Cluster overriding handleError, or a wrapper installed on the instance) so that
// MOVED for any command but the get script rejects it (it did not run: map to UNREACHABLE, the
// router fails it over as never sent) after asking refreshSlotsCache(); the refresh's
// mastersChanged reports the failover before a write reaches the new master. ASK (a migration
// under way) can still be followed. Gets may keep following MOVED.
// Fixed (f1c3952): a MOVED to a node that served no slot at the last slots refresh is not
// followed, for any command (a get included: the promoted replica may serve an older value); a
// MOVED to a node that was a master already (a migration) is.
test('fixed: failover with the old master reachable: the first add after it, redirected by MOVED, is not decided by the promoted replica unfenced', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const victim = 1;
  const replica = 3;
  const cluster = await startCluster(t, { replicaFor: [victim], extra: ['--cluster-replica-validity-factor', '0'] });
  const { app, u } = await behindMcmux(t, cluster, { timeout: 1000 });
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const session = keyWhere('sess.', (s) => homeOf(s) === victim);
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced', () => !u.fenced, 20_000);
  await untilReplicating(cluster, victim);
  assert.equal(String(await (cluster.admin[victim] as Redis).call('WAIT', '1', '5000')), '1');
  const rProc = cluster.procs[replica] as Proc;
  rProc.kill('SIGSTOP');
  await (cluster.admin[victim] as Redis).call('CLIENT', 'KILL', 'TYPE', 'replica');
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  // The driver's slots refresh held still until the delete below: its table names the old master.
  const io = ioCluster(u);
  const refresh = io.refreshSlotsCache;
  io.refreshSlotsCache = (() => {}) as typeof io.refreshSlotsCache;
  t.after(() => {
    io.refreshSlotsCache = refresh;
  });
  // Queued while it is stopped: run as it resumes, before it reconnects to its master.
  const takeover = (cluster.admin[replica] as Redis).call('CLUSTER', 'FAILOVER', 'TAKEOVER');
  rProc.kill('SIGCONT');
  await takeover;
  const old = cluster.admin[victim] as Redis;
  await eventually('the old master steps down', async () => String(((await old.call('ROLE')) as unknown[])[0]) === 'slave', { timeoutMs: 10_000, every: 5 });
  assert.equal(await (cluster.admin[replica] as Redis).get(lock), null, 'the new master lacks the lock');
  // Not the scripts alone: a delete (UNLINK) that meets the MOVED fails unsent too.
  assert.match(await settle(u.inner.delete(session)), /^failed MCMUX_UPSTREAM_UNREACHABLE: .*: slot moved to /);
  io.refreshSlotsCache = refresh;
  const fenced = u.fenced;
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (fenced when sent: ${fenced}, now: ${u.fenced})`);
});

// FINDING (cost: a routine reshard voids every unique and fences the cluster for the whole
// lock-fence): one slot migrated with its keys, as `redis-cli --cluster reshard` does slot after
// slot; nothing is lost. mastersChanged (redis.ts:721-729) takes any slot whose master differs as
// a failover and calls onReconnect (redis.ts:368-370): reconnected() (cold-detector.ts:178-188)
// fences the cluster and voids its uniques at once, so a client's cas with a unique read before
// the migration answers EXISTS although nothing changed (every key of the cluster, not only the
// moved slot's). When the moved slot was the source's lowest or becomes the target's lowest (here
// slot 0 from master 0 to master 1: both; slot 100 to master 1 does the same, checked), markerStores
// (redis.ts:737-755) names that master's marker in another slot: a new view, a key never written,
// sight 'first', which never lifts the fence (cold-detector.ts verdict: 'first' returns before
// liftIfKept): the cluster decides no add/cas/incr for the whole lock-fence (60 s here), and a
// reshard that drains a master moves its lowest slot at every step, so the fence lasts the whole
// reshard plus lock-fence.
// Suggested fix: report only a real change of owner: a slot whose new master was not a master at
// the previous refresh (a promoted replica) or whose old master is no longer one; a slot moved
// between two masters that both still serve slots is a migration, whose keys moved with it (MIGRATE).
// For the marker, keep a master's view on the same slot while it still owns it, and on a move
// carry the sight over (write the new view's key before the old one's slot leaves, or read the old
// key where its slot went) instead of starting 'first'.
// Fixed (f1c3952): the view keeps its slot while its master serves it; when that slot migrates,
// the view moves to the master's lowest slot and, until it has written the marker there, a read
// that misses reads the old key where it went (the migration moved it). A restart since gives
// the master a new replication id, so a new view: nothing is carried over (the holds: test below).
// Since fa356b6 (third review): no carry-over (it spoke for a master flushed after the move); each
// master keeps its marker in its lowest and its highest slot, and the one left speaks for it.
test('fixed: a slot migrated gracefully: the cluster is not fenced for long, and a cas with a unique read before it succeeds', { timeout: 90_000 }, async (t) => {
  if (!haveServers(t)) return;
  const cluster = await startCluster(t);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': 60_000 }, [`${cluster.url}?timeout=2000`]);
  const u = app.upstreams[0] as HealthyUpstream;
  const w = await client(t, app);
  const session = keyWhere('sess.', (s) => homeOf(s) === 2);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced', () => !u.fenced, 20_000);
  const token = /VALUE \S+ 0 4 (\d+)\r\n/.exec(await w.ask(`gets ${session}\r\n`, /END\r\n$/))?.[1];
  const begun = u.fencesBegun;
  const marker = app.coldDetector.key;
  const own = `${marker}.127.0.0.1:${cluster.ports[0]}.`;
  assert.equal(await countKeysStarting(cluster, 0, own), 2, 'master 0 holds its marker in its lowest and its highest slot');
  // Master 0's lowest slot (its marker's) to master 1, with the marker.
  await moveSlot(cluster, 0, 0, 1);
  assert.equal(await countKeysStarting(cluster, 0, own), 1, "master 0's marker in slot 0 went with it");
  assert.ok(await holdsKeyStarting(cluster, 1, own), "master 1 holds master 0's marker");
  // A read of a key in slot 0 meets MOVED: the driver learns the slot's new master.
  const inZero = keyWhere('z.', (s) => s === 0);
  assert.equal(await w.ask(`get ${inZero}\r\n`), 'END\r\n');
  // Two marker looks that see the move: the marker is read where slot 0 went, then written in
  // another slot of master 0.
  await app.coldDetector.check(u);
  await app.coldDetector.check(u);
  assert.equal(await countKeysStarting(cluster, 0, own), 2, 'master 0 holds its marker in two slots again');
  assert.equal(u.fencesBegun, begun, 'no fence began');
  const fenced = u.fenced;
  const lock = await w.ask(`add lock.${session} 0 0 1\r\nx\r\n`, /\r\n$/, 5000);
  const cas = await w.ask(`cas ${session} 0 0 3 ${token}\r\nnew\r\n`);
  assert.deepEqual({ fenced, lock, cas }, { fenced: false, lock: 'STORED\r\n', cas: 'STORED\r\n' });
});

// holds: a marker that moved with its slot (above) does not speak for a master that restarted since:
// slot 0 (master 0's marker) migrated to master 1, then master 0 restarted empty (it keeps slots
// 1-5460: nodes.conf) before the driver saw the move. Two things keep it fenced, each enough: the
// restart is reported (and the key whose slot left master 0 is not read), and the first
// look after the reconnect cannot read master 0 (its node not reported yet) while it rewrites the
// other masters' markers, which are then no longer from before the fence (liftIfKept wants every
// master's). Checked: with the replication id taken out of the key, it still passes.
test('holds: a slot migrated, then its old master restarted empty before the driver saw the move: a lock it lost is not granted again', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const { cluster, app, u, w, own, lock } = await lockedThenSlot0Moved(t);
  assert.ok(await holdsKeyStarting(cluster, 1, own), "master 1 holds master 0's marker");
  const begun = u.fencesBegun;
  await cluster.restart(0);
  await eventually('the restart is reported', () => u.fencesBegun > begun, 30_000);
  await eventually('the driver reads from the restarted master', async () => (await settle(u.inner.get([lock]))) === 'ok [null]', { timeoutMs: 30_000, every: 10 });
  // The driver learns the move (a read of slot 0 meets MOVED), then looks for the marker.
  assert.equal(await w.ask(`get ${keyWhere('z.', (s) => s === 0)}\r\n`), 'END\r\n');
  await app.coldDetector.check(u);
  await app.coldDetector.check(u);
  const fenced = u.fenced;
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (fenced: ${fenced})`);
  assert.equal(fenced, true, 'fenced as come back empty');
});

// FINDING (a master never seen ready): refuseUnreported and the reconnect report (redis.ts:348-363)
// only cover a node seen ready before by THIS driver (`seen`). A master that is down when mcmux
// starts (or reloads the cluster's upstream: a new driver) and comes back empty later (a host
// that rebooted with mcmux's, no persistence, nodes.conf kept) makes its first connection:
// 'ready' with `seen` empty, so no onReconnect and nothing refused; the looks made while it was
// down read its marker as 'unknown', which fences nothing once the cluster was judged
// (cold-detector.ts unread: unjudged is false after the first look, which at start read the
// plain marker from a live master: the first finding's cause, so fixing that one closes this at
// mcmux start; a reload that builds a new driver was not checked). Until the next periodic look
// (CHECK_MS, 2 s) finds its marker missing, the empty master decides: `add lock.<sid>` STORED
// while the memcached holds the lock.
// Suggested fix: in the driver, a node that becomes ready for the first time after the cluster's
// first 'ready' is reported as a reconnect too (a master this driver could not see may have
// restarted), and is `unreported` (writes refused) from its '+node' until that report; or the
// cold detector keeps fencing while any master's marker view reads 'unknown' (as it does for an
// upstream never read: unread), instead of only before the first judgement.
test('fixed: a master down when mcmux starts and back empty later: a lock it lost is not granted again', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const { cluster, dir, upstreams, victim, lock } = await lockedByAnEarlierProcess(t);
  const live = (victim + 1) % 3;
  await cluster.kill(victim);
  const app2 = await inProcessMcmux({ 'state-dir': dir, 'lock-fence': 60_000 }, upstreams);
  const u = app2.upstreams[0] as HealthyUpstream;
  const w2 = await client(t, app2);
  await eventually('mcmux2 writes to a live master', async () => (await w2.ask(`set ${keyWhere('k.', (s) => homeOf(s) === live)} 0 0 1\r\n1\r\n`, /\r\n$/, 5000)) === 'STORED\r\n', 20_000);
  await new Promise((r) => setTimeout(r, 4500)); // two marker looks with the master down
  const fencedBefore = u.fenced;
  // Since the fix, the first look never reads the plain marker (the slots unknown: 'unknown'), so
  // the cluster stays fenced as unread while the master's marker cannot be read: the safe path.
  // Before, about 1 run in 3 took it. Either way the add below must not be granted.
  t.diagnostic(`fenced while the master was down: ${fencedBefore}`);
  // The periodic look (CHECK_MS, 2 s) is what bounds the window: with it running, this test
  // failed in 3 of 5 runs (the look caught the empty master before the add in the others).
  // Stopped here so that the window the driver leaves open is seen every time.
  app2.coldDetector.stop();
  await cluster.restart(victim);
  await untilOk(cluster, [victim]);
  // The driver's connection to it made (a read: nothing decided).
  await eventually('the driver reads from the restarted master', async () => (await settle(u.inner.get([lock]))) === 'ok [null]', { timeoutMs: 20_000, every: 10 });
  const fenced = u.fenced;
  const reply = await w2.ask(`add ${lock} 0 0 5\r\nthief\r\n`);
  assert.equal(reply, 'NOT_STORED\r\n', `a held lock granted again (fenced before the restart: ${fencedBefore}, when sent: ${fenced})`);
});
