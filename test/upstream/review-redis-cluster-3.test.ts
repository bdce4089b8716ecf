/**
 * Third review of the Redis Cluster driver (src/upstream/redis.ts) with the cold detector
 * (src/router/cold-detector.ts), as of f1c3952: a master's marker key names its replication id
 * (INFO replication, read by markersReady before each look), a marker view keeps its slot while
 * its master serves it and, when that slot migrates, reads the old key where it went until it
 * wrote the new one (ClusterMasterStore.move/get/store), and a MOVED to a node that was no master
 * at the last slots refresh is not followed (the handleError override, movedToNewMaster).
 * Tests marked `todo: 'FINDING: ...'` fail on f1c3952 (the comment above each says why, with
 * file:line, and a suggested fix); "holds:" tests are suspicions checked and found correct.
 * Findings:
 * (1) regression: an ACL user without INFO (e.g. `+@all -@dangerous`, which ioredis itself
 *     tolerates) never gets a replication id read: every master's view answers 'unknown' and the
 *     cluster stays fenced for good, silently (passes on f1c3952^, checked);
 * (2) a new replication id alone fences nothing: a master taken over by its replica and taking
 *     over back between two slots refreshes, which lost the last lock in the resync, is judged
 *     'first' (a key never written), not cold, and grants the lock again;
 * (3) the carried-over marker speaks for a master after its marker's slot left it: a FLUSHALL of
 *     that master in that window is unseen (the old key, now on the slot's new master, answers);
 * (4) a master lost for good (no replica) whose slots an operator covers with another master
 *     (`CLUSTER FORGET` + `redis-cli --cluster fix`/ADDSLOTS, no keys moved) is reported as a
 *     failover, but the fence lifts at the first look (every master left kept its own marker):
 *     the new owner grants the locks of the lost master's slots again (not new in f1c3952; the
 *     suggested fix builds on its carry-over);
 * (5) cost: a master restarted with its data (RDB/AOF) fences the cluster for the whole
 *     lock-fence: its new replication id makes its key new ('first'), and (before f1c3952 already)
 *     the reconnect's look rewrites the other masters' markers while it cannot read the restarted
 *     one, so no later look finds every marker kept.
 * Fixed since (tests named "fixed:"): (1) INFO refused (NOPERM): the keys name the address alone,
 * and mcmux warns once (Upstream.onWarning); (2) a master whose replication id changed is reported
 * as a reconnect (fenced), and given a new view when promoted (master_replid2 names another
 * master's id); (3) and (4): two markers per master, in its lowest and its highest slot, read on
 * the master itself (a key whose slot left it is not read, and a read that met MOVED is not
 * counted), no carry-over; the view of a master no longer is read once more where its slots
 * went (a ghost): missing there, its slots came without their keys, 'cold'. (5) in part: the
 * view is kept through a restart (master_replid2 zero or its own id of before) and reads the keys
 * it wrote before on the master: its looks read 'warm'; and (5) in full since: while fenced, a
 * look that could not read every store does not write over the markers kept from before the
 * fence (cold-detector.ts mark), so a later look finds them all kept and lifts it.
 * Holds: ASK to a node added by `--cluster add-node` is followed and the migrated lock is seen;
 * the MOVED that ends the migration to it is refused (unsent) and the cluster fenced once (the
 * documented cost); no lock is granted twice.
 * Private redis-servers only (cluster-enabled, no persistence unless a test asks for an RDB) on
 * 127.0.0.1, free ports, temporary directories, stopped after each test; mcmux in this process,
 * private state-dir.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import { keySlot } from '../../src/upstream/redis';
import { b, codeOf } from '../helpers/driver-calls';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { freePort, startMemcacheds } from '../helpers/servers';
import { makeDir, spawnRedis } from './targets/redis';
import { type Proc, stateDir, client, type Cluster, cli, keyWhere, homeOf, startCluster, behindMcmux, untilMasterOf, holdsKeyStarting, beginMove, endMove, haveServers, lockedThenSlot0Moved, replicatedVictim, ioCluster, untilOk } from '../helpers/redis-cluster';

async function role(c: Cluster, i: number): Promise<string> {
  try {
    return String(((await (c.admin[i] as Redis).call('ROLE')) as unknown[])[0]);
  } catch {
    return 'down';
  }
}


// FINDING (an ACL user without INFO: the cluster fenced for good). markersReady
// (redis.ts:877-888) reads each master's replication id with INFO replication and swallows any
// failure (`.catch(() => undefined)`); a master whose id was never read gets a view that fails
// every request (redis.ts:835-838, 'its replication id is not known yet'), so every look's
// sights are 'unknown'. The first look at start was 'unknown' too (unknownMasters), so the
// cluster is unjudged (cold-detector.ts unread): stillUnread fences it again at every look, for
// good. INFO is in @dangerous: an application user made as `+@all -@dangerous` (a common
// hardening; ioredis skips its own INFO ready check on NOPERM, redis.ts needs nothing else of
// @dangerous but FLUSHDB on a flush_all) worked before f1c3952 and now never decides an add,
// cas or incr, with nothing logged that says why.
// Suggested fix: on NOPERM do not keep the view mute: warn once, naming the missing permission
// (and list INFO among what the cluster's user needs in the README's "Redis Cluster" section),
// and fall back for that master to a key without the replication id (the behaviour of
// f1c3952^, which loses only the promoted-back case), rather than fencing the whole cluster for
// good; a transient failure (timeout) may keep today's rule.
// Fixed: on NOPERM the master's keys name its address alone, and the driver warns once (onWarning,
// logged by app.ts).
test('fixed: ACL without INFO: the cluster is still judged, and unfenced', { timeout: 90_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t);
  for (const a of cluster.admin) await a.call('ACL', 'SETUSER', 'mcmux', 'on', '>s3cret', '~*', '&*', '+@all', '-@dangerous', '+flushdb');
  const probe = new Redis({ host: '127.0.0.1', port: cluster.ports[0], username: 'mcmux', password: 's3cret', maxRetriesPerRequest: 0, enableReadyCheck: false }).on('error', () => {});
  t.after(() => probe.disconnect());
  const info = await probe.info('replication').then(() => 'answered', (e: Error) => e.message);
  assert.match(info, /NOPERM/, 'INFO is refused to the user');
  const [mc] = await startMemcacheds(t, 1);
  const url = cluster.url.replace('redis+cluster://', 'redis+cluster://mcmux:s3cret@');
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': 60_000 }, [`${url}?timeout=2000`, mc?.url as string]);
  const u = app.upstreams[0] as HealthyUpstream;
  const w = await client(t, app);
  const session = keyWhere('sess.', (s) => homeOf(s) === 1);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  assert.ok(await holdsKeyStarting(cluster, 1, session), 'the cluster itself took the write (the user may write)');
  // A fresh cluster and memcached: with INFO allowed, the same set-up is unfenced within a few
  // looks (review-redis-cluster-2's tests wait 20 s for it).
  await eventually('the cluster is judged and unfenced', () => !u.fenced, 20_000);
});

// FINDING (a new replication id alone fences nothing). The replication id in the key
// (redis.ts:841) makes a node promoted back ask for a key never written; but a view that was
// never written has no lastSet entry, so the detector's sight is 'first' (cold-detector.ts:472
// checkStore: `wrote === undefined ? 'first'`), and 'first' fences only when another store held
// a marker of an earlier process (markedElsewhere), which a process that wrote every marker
// itself never has. The fence comes only from the driver's reports: a reconnect or a slot whose
// master changed (mastersChanged, redis.ts:779-795). A master taken over by its replica
// (CLUSTER FAILOVER TAKEOVER: the replica lacked the last lock) and taking over back once it
// resynced from it (which dropped the lock), both between two slots refreshes (every 2 s) with no
// command for its slots meanwhile, leaves the table as it was (same master, same address, the
// connection kept): nothing is reported, and the look after it judges the master 'first' and
// fences nothing. The test holds the driver's slots refresh and the periodic looks still during
// the two takeovers so that the outcome does not depend on where the 2 s ticks fall; the two
// takeovers and the resync took 10-25 ms here, so a 2 s tick rarely falls inside them. (A
// process that found an earlier process's marker in some store at its start takes the 'first'
// for cold, markedElsewhere: the hole is that of a process that wrote every marker itself, e.g.
// the first start, or one after a flush_all of every store.) Not a regression (fails on
// f1c3952^ too, checked: the address-only key came back to M through R, 'warm'), but the case
// f1c3952's replication id is meant to close.
// Suggested fix: in markersReady (redis.ts:886), a master whose replication id differs from
// the one read before (this.replids has another) is a new term: report it (this.onReconnect),
// so the cluster is fenced as after a reconnect and the new key's 'first' keeps the fence; or
// let the new view inherit the old one's 'written' state so the detector reads its miss as
// 'cold' (e.g. markerStores passing the predecessor view, the detector treating a first sight of
// a successor as cold).
// Fixed: markersReady reports a master whose replication id changed as a reconnect (the cluster
// fenced; the marker decides), and a promotion (master_replid2 set, not its own id of before)
// gets a new view.
test('fixed: a master taken over and back between two slots refreshes, lacking the last lock, is fenced', { timeout: 180_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const victim = 1;
  // A short lock-fence: a fence of the set-up (below) must end before the window; the checks after
  // it take a few seconds, far less.
  const { cluster, app, u, w, lock, slot } = await replicatedVictim(t, victim, 15_000, { extra: ['--repl-diskless-sync-delay', '0'] });
  const replica = 3;

  // The driver knows R (a slots refresh since it is online): its first connection is no news later.
  const io = ioCluster(u);
  await eventually('the driver is connected to every node, R included', () => io.nodes('all').filter((n) => n.status === 'ready').length === 4, 20_000);
  // R's first connection, made after a refresh listed it, is reported as a reconnect of a node seen
  // (a seed): the cluster is fenced, at worst for the lock-fence.
  await eventually('unfenced again (R new to the driver was reported)', () => !u.fenced, 40_000);
  // Between two slots refreshes and two looks from here on.
  app.coldDetector.stop();
  const refresh = io.refreshSlotsCache;
  io.refreshSlotsCache = (() => {}) as typeof io.refreshSlotsCache;
  t.after(() => {
    io.refreshSlotsCache = refresh;
  });
  const begun = u.fencesBegun;
  // The lock reaches M, not R (R stopped, its link cut).
  const rProc = cluster.procs[replica] as Proc;
  rProc.kill('SIGSTOP');
  await (cluster.admin[victim] as Redis).call('CLIENT', 'KILL', 'TYPE', 'replica');
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  const started = Date.now();
  // R takes over (it lacks the lock); M follows it, resyncs (dropping the lock), and takes over back.
  const takeover = (cluster.admin[replica] as Redis).call('CLUSTER', 'FAILOVER', 'TAKEOVER');
  rProc.kill('SIGCONT');
  await takeover;
  await eventually('M follows R, in sync', async () => (await role(cluster, victim)) === 'slave' && /master_link_status:up/.test(String(await (cluster.admin[victim] as Redis).info('replication'))), { timeoutMs: 20_000, every: 5 });
  await (cluster.admin[victim] as Redis).call('CLUSTER', 'FAILOVER', 'TAKEOVER');
  await eventually('M is master again', async () => (await role(cluster, victim)) === 'master', { timeoutMs: 20_000, every: 5 });
  const took = Date.now() - started;
  // Every node agrees (a refresh asks any of them), and R follows M again.
  for (const ask of [0, 2, replica, victim]) await untilMasterOf(cluster, slot, victim, ask);
  await eventually('R follows M', async () => (await role(cluster, replica)) === 'slave', 20_000);
  assert.equal(await (cluster.admin[victim] as Redis).get(lock), null, 'M lost the lock in the resync');

  // The refresh and the looks go on as usual.
  io.refreshSlotsCache = refresh;
  let refreshed = false;
  io.once('refresh', () => (refreshed = true));
  await eventually('a slots refresh', () => refreshed, 10_000);
  // Two looks, as the periodic timer makes them: the new replication id's key is a first sight.
  await app.coldDetector.check(u);
  await app.coldDetector.check(u);
  const fenced = u.fenced;
  const reported = u.fencesBegun - begun;
  t.diagnostic(`takeover and back took ${took} ms; fences begun since: ${reported}`);
  const reply = await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`);
  assert.equal(reply, 'NOT_STORED\r\n', `a held lock granted again (fenced: ${fenced}, fences begun: ${reported})`);
});

// FINDING (the carried-over marker speaks for a master after its slot left it). When the slot of
// a master's marker view migrates, the view reads the old key where the slot went until it wrote
// the new one (ClusterMasterStore.get, redis.ts:951-957; move, redis.ts:944-948). That old key
// is evidence about the master only up to the moment the slot left: from then until the view's
// next write (the first look after the driver learns the move: up to ~4 s, and again at every
// step of a reshard that drains the master, which moves its lowest slot each time) the master
// holds no marker of its own. A FLUSHALL (or FLUSHDB) of that master in that window empties it,
// yet the look finds the new key missing, the old one present on the other master: 'warm', no
// fence. The flushed master grants a lock the memcached holds. Without the migration the same
// flush is caught (its marker is gone: 'cold'). Not a regression: on f1c3952^ the test fails
// too (checked), the moved view's new key being a 'first' sight that fences nothing; the
// carry-over made it 'warm'.
// Suggested fix: keep each master's marker in two of its slots far apart (its lowest and its
// highest), read on the master itself; when one slot migrates the other still speaks for the
// master, and the carry-over (the old key where it went) is needed only when both left at once;
// or, on a move, write the new key before the next look trusts the old one and take the first
// look after a move as no evidence (no lift, and 'first' while the new key is missing).
// Fixed: two markers per master (lowest and highest slot), no carry-over; a key whose slot left
// the master is not read, and a read answered after MOVED is not counted (ClusterMasterStore.get).
test('fixed: a master flushed after its marker slot migrated away is fenced', { timeout: 90_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const { cluster, app, u, w, own, lock } = await lockedThenSlot0Moved(t);
  assert.ok(await holdsKeyStarting(cluster, 1, own), "master 1 holds master 0's marker");
  await (cluster.admin[0] as Redis).flushall();
  assert.equal(await (cluster.admin[0] as Redis).get(lock), null, 'master 0 lost the lock');
  // The driver learns the move (a read of slot 0 meets MOVED to master 1, a master already).
  assert.equal(await w.ask(`get ${keyWhere('z.', (s) => s === 0)}\r\n`), 'END\r\n');
  const verdict = await app.coldDetector.check(u);
  const fenced = u.fenced;
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', `a held lock granted again (look: ${verdict}, fenced: ${fenced})`);
});

// FINDING (a lost master's slots covered by another master: the fence lifted at once). A master
// with no replica is lost (host gone); the operator forgets it and covers its slots with another
// master (CLUSTER FORGET on every node, then `redis-cli --cluster fix`, which ADDSLOTS the
// uncovered slots to a master: done here with ADDSLOTSRANGE for a known target). No key moved:
// the new owner lacks every lock of those slots. mastersChanged (redis.ts:779-795) reports it
// (the old master is no master now) and reconnected() fences the cluster, but the check that
// follows reads the markers of the masters left (markerStores, redis.ts:829-850: the lost
// master's view is dropped), which all kept theirs: liftIfKept (cold-detector.ts:210-212) lifts
// the fence at the first look. The new owner grants a lock the memcached holds. Not new in
// f1c3952 (fails on f1c3952^ too, checked).
// Suggested fix: a master that leaves the table keeps being judged once more: its last view
// (key and slot) is read where its slot went (as ClusterMasterStore carries a migrated view's
// key); present there, the slot migrated with its keys (a master drained by a reshard); missing,
// its slots came without their keys: 'cold' (fenced for the lock-fence).
// Fixed: the view of a master no longer is read once more where the slots of its last marker
// went (a ghost, markerStores): missing there, 'cold'.
test('fixed: a lost master (no replica) whose slots another master covers: a lock it held is not granted again', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t, { nodeTimeout: 2000 });
  const { app, u } = await behindMcmux(t, cluster);
  const w = await client(t, app);
  const victim = 1;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const slot = keySlot(b(lock));
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced, a marker on every master', async () => {
    if (u.fenced) return false;
    for (const i of [0, 1, 2]) if (!(await holdsKeyStarting(cluster, i, `${app.coldDetector.key}.`))) return false;
    return true;
  }, 20_000);
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  const lostId = await cluster.id(victim);
  const begun = u.fencesBegun;
  await cluster.kill(victim);
  for (const i of [0, 2]) await (cluster.admin[i] as Redis).call('CLUSTER', 'FORGET', lostId);
  await (cluster.admin[0] as Redis).call('CLUSTER', 'ADDSLOTSRANGE', '5461', '10922');
  await untilMasterOf(cluster, slot, 0, 2);
  await untilOk(cluster, [0, 2]);
  assert.equal(await (cluster.admin[0] as Redis).get(lock), null, 'the new owner lacks the lock');
  await eventually('the change of owner is reported (fenced)', () => u.fencesBegun > begun, 20_000);
  // The check the report started, and one more, as the periodic timer would.
  await eventually('the marker check can read every master', async () => {
    await app.coldDetector.check(u);
    return u.usable;
  }, 20_000);
  const verdict = await app.coldDetector.check(u);
  const fenced = u.fenced;
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`, /\r\n$/, 5000), 'NOT_STORED\r\n', `a held lock granted again (look: ${verdict}, fenced: ${fenced})`);
});

// FINDING (cost: a master restarted with its data fences the cluster for the whole lock-fence).
// With persistence (an RDB saved at shutdown, as here, or AOF), a master restarted keeps its keys,
// the marker among them, yet the cluster decides no add/cas/incr for the whole lock-fence after
// every master restart (a rolling restart or upgrade of N masters: N full fences), and voids its
// uniques, though nothing was lost. Two causes, each enough:
// (a) since f1c3952: the marker key names the replication id (redis.ts:841), and a master gets a
// new one at each start (a master with a replication backlog saves its id in the RDB and loads
// it as master_replid2; one without, as here, starts with none): the key is new, the sight
// 'first', which never lifts a fence (cold-detector.ts verdict: 'first' returns before
// liftIfKept), and the marker this process writes next is not "kept" either;
// (b) before it already (this test fails on f1c3952^ too, checked): the check the reconnect starts
// cannot read the restarted master (its node not reported yet: refuseUnreported, 'unknown'), but
// rewrites the other masters' markers (cold-detector.ts mark), which are then no longer from
// before the fence: no later look finds every marker kept (liftIfKept).
// Suggested fix: (a) in markersReady read master_replid2 too; a master at the same address whose
// master_replid2 is the replication id read before (restarted from its own RDB) or zero (started
// afresh: not a replica since, so not promoted) did not change term: keep its view (key) and let
// the marker and its gen judge it, as for a standalone Redis (empty: the marker is gone, 'cold';
// a rolled-back snapshot: the gen check). A promotion sets replid2 to the id of the master it
// followed (for a node promoted back, that of the other term, not its own): a new view, as now.
// (b) a look that could not read every master of a cluster fenced as a precaution writes no
// marker (or keeps the lastSet entry of before the fence for the "kept" test), so the next look
// that reads them all can lift it.
test('fixed: a master restarted with its data (RDB): the fence is lifted once its marker is found', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t, { extra: ['--save', '3600 1'] });
  const { app, u } = await behindMcmux(t, cluster, { lockFence: 60_000 });
  const w = await client(t, app);
  const victim = 1;
  const session = keyWhere('sess.', (s) => homeOf(s) === victim);
  const own = `${app.coldDetector.key}.127.0.0.1:${cluster.ports[victim]}.`;
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced, the victim holds its marker', async () => !u.fenced && (await holdsKeyStarting(cluster, victim, own)), 20_000);
  const before = /master_replid:(\w+)/.exec(String(await (cluster.admin[victim] as Redis).info('replication')))?.[1];
  const begun = u.fencesBegun;
  await cluster.restart(victim); // SIGTERM: saved at shutdown, loaded at start
  await untilOk(cluster, [0, 1, 2]);
  const info = String(await (cluster.admin[victim] as Redis).info('replication'));
  assert.ok(await holdsKeyStarting(cluster, victim, own), 'the restarted master kept its marker');
  assert.notEqual(await (cluster.admin[victim] as Redis).get(session), null, 'and its data');
  const after = /master_replid:(\w+)/.exec(info)?.[1];
  const replid2 = /master_replid2:(\w+)/.exec(info)?.[1];
  assert.notEqual(after, before, 'a new replication id');
  t.diagnostic(`replication id ${before} -> ${after}, master_replid2 ${replid2} (zero: the master had no replica, so no backlog, and the RDB kept no id)`);
  await eventually('the restart is reported (fenced)', () => u.fencesBegun > begun, 30_000);
  const reported = Date.now();
  const verdicts: string[] = [];
  await eventually('the marker check can read the restarted master', async () => {
    verdicts.push(await app.coldDetector.check(u));
    return u.usable;
  }, 20_000);
  await eventually('the fence is lifted: the master kept its marker', async () => {
    verdicts.push(await app.coldDetector.check(u));
    return !u.fenced;
  }, { timeoutMs: 20_000, every: 2000 }).catch((e: Error) => assert.fail(`${e.message} (looks: ${verdicts.join(', ')})`));
  t.diagnostic(`fenced for ${Date.now() - reported} ms after the report`);
});

// holds: a slot resharded to a master added by `redis-cli --cluster add-node` (no slots, so not a
// master at the last refresh). During the migration ASK sends a command for a migrated key to the
// new node, and it is followed (the handleError override, redis.ts:402-411, only stops MOVED): a
// lock migrated there is seen (add NOT_STORED). Once the slot is the new node's, the first
// command meets a MOVED to it, which is refused as a failover (redis.ts:802-805): it fails unsent
// and the next upstream, which holds the lock, decides; the slots refresh then reports the new
// master and the cluster is fenced once (README: "A node given slots for the first time ... the
// cluster is fenced once (fails safe)"), a documented cost, not a finding. No lock granted twice.
test('holds: a slot resharded to a newly added master: ASK followed, MOVED refused, the lock never granted twice', { timeout: 120_000 }, async (t) => {
  if (!haveServers(t, true)) return;
  const cluster = await startCluster(t);
  const { app, u } = await behindMcmux(t, cluster);
  const w = await client(t, app);
  // A fourth node, added empty (its cleanup is startCluster's: it is pushed to the lists).
  const dir = makeDir('review-cluster-');
  cluster.dirs.push(dir);
  const port = await freePort();
  const args = ['--cluster-enabled', 'yes', '--cluster-port', String(await freePort()), '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '5000'];
  cluster.args.push(args);
  cluster.procs.push(await spawnRedis(port, dir, args));
  cluster.ports.push(port);
  cluster.admin.push(new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, protocol: 2 }).on('error', () => {}));
  const added = cluster.ports.length - 1;
  await cli(['--cluster', 'add-node', `127.0.0.1:${port}`, `127.0.0.1:${cluster.ports[0]}`]);
  await eventually('every node knows the new one', async () => {
    for (const a of cluster.admin) {
      try {
        if (!String(await a.call('CLUSTER', 'INFO')).includes('cluster_known_nodes:4')) return false;
      } catch {
        return false;
      }
    }
    return true;
  }, 30_000);
  await untilOk(cluster, [0, 1, 2, added]);
  const lock = keyWhere('lock.s', (s) => s > 0 && homeOf(s) === 0);
  const slot = keySlot(b(lock));
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced', () => !u.fenced, 20_000);
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  await beginMove(cluster, slot, 0, added);
  assert.equal(Number(await (cluster.admin[0] as Redis).call('CLUSTER', 'COUNTKEYSINSLOT', String(slot))), 0, "the slot's keys left master 0");
  assert.ok(Number(await (cluster.admin[added] as Redis).call('CLUSTER', 'COUNTKEYSINSLOT', String(slot))) > 0, 'the new node holds them');
  // Decided by the cluster through ASK (the slot is still master 0's): the new node has the lock.
  assert.equal(await u.inner.store({ mode: 'add', key: lock, value: b('thief'), flags: 0, deadline: 0, withCas: false }).then((r) => r.status), 'NOT_STORED', 'ASK followed: the new node decided');
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n');
  const begun = u.fencesBegun;
  await endMove(cluster, slot, 0, added);
  // The first command for the slot meets MOVED to a node no master at the last refresh: refused
  // unsent (unless a periodic refresh came first: then the new master is reported already).
  const first = await u.inner.store({ mode: 'add', key: lock, value: b('thief'), flags: 0, deadline: 0, withCas: false }).then((r) => r.status, (e: unknown) => codeOf(e));
  assert.ok(first === 'MCMUX_UPSTREAM_UNREACHABLE' || u.fencesBegun > begun, `the MOVED to the new master was refused (got ${first})`);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n');
  await eventually('the new master is reported (fenced once: the documented cost)', () => u.fencesBegun > begun, 20_000);
  await app.coldDetector.check(u);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n');
  assert.ok((await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'), 'the lock is still the holder');
  t.diagnostic(`fenced after the reshard to the new master: ${u.fenced} (lock-fence 60 s)`);
});
