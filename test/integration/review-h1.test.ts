/**
 * Adversarial review h1 of 20bb1d4 (the marker's nonce) and 15428d9 (the replication id kept on
 * journal.log), against private servers (each on a free port in its own temporary directory; a
 * missing binary skips, MCMUX_REQUIRE_SERVERS=1 fails instead). Tests marked todo fail on the
 * code they were written against (15428d9).
 */

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type TestContext, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import type { HealthyUpstream } from '../../src/router/health';
import { inProcessMcmux, reloadTo } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { lockThenFailoverWhileDown, nextProcess } from '../helpers/redis-failover';
import { requireBinary } from '../helpers/servers';
import { sqliteUrl } from '../helpers/sqlite-fixture';
import { connectWire } from '../helpers/wire';
import { redisPair, startRedis } from '../upstream/targets/redis';
import { tempDir as tempDirOf } from '../helpers/temp-dir';

const tempDir = (t: TestContext, kind: string): string => tempDirOf(t, `review-h1-${kind}`);

describe('review-h1 15428d9: a Redis whose replication id changed while mcmux was down', () => {
  // Finding 1 (medium; a regression of 15428d9). Chain [memory://, redis] (the embedded default's
  // shape, memory in front of a durable store). mcmux stops (a deploy) and, meanwhile, Redis
  // restarts with its data (AOF or RDB: a routine restart, an upgrade, the same host rebooting),
  // which gives it a new replication id. The next process fences Redis as come back empty at its
  // first connection (journal.log's I line differs) — but the memory store came back empty too,
  // as that process started, a few ms earlier, and authority-order.ts lets the store that came
  // back empty first decide: the empty memory store decides `add` of a lock Redis holds (taken
  // long before the restart, and kept). Before 15428d9 Redis was judged by its marker (kept) and
  // decided, NOT_STORED. The same holds for a replica promoted while mcmux was down: it holds
  // every lock but the last few ms of the master's, yet the empty memory store decides. Redis's
  // history changed before this process started, not after its memory store came back empty.
  it('memory in front of a redis restarted with its data while mcmux was down: the lock redis kept is not granted again', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis(['--appendonly', 'yes']);
    t.after(() => server.stop());
    const stateDir = tempDir(t, 'state');
    const upstreams = ['memory://', server.url];
    const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const redis1 = app1.upstreams[1] as HealthyUpstream;
    await eventually('mcmux has written its markers and redis decides', () => !redis1.fenced, 15_000);
    const w1 = await connectWire(app1.address.port);
    assert.equal(await w1.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n', 'on memory and redis');
    w1.close();
    await app1.close(); // a deploy
    await server.restart(); // meanwhile Redis restarts, its data kept (AOF): a new replication id

    const app2 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const w2 = await connectWire(app2.address.port);
    t.after(() => w2.close());
    const redis2 = app2.upstreams[1] as HealthyUpstream;
    // (No read of the lock first: its read repair would copy it into the memory store.)
    t.diagnostic(`redis fenced: ${redis2.fenced}, came back empty: ${redis2.cameBackEmpty}`);
    const again = await w2.ask('add lock.sid 0 0 1\r\n2\r\n');
    t.diagnostic(`add answered ${JSON.stringify(again)}; redis holds ${JSON.stringify((await redis2.inner.get(['lock.sid']))[0]?.value.toString())}`);
    assert.notEqual(again, 'STORED\r\n', 'LOCK GRANTED TWICE: the empty memory store decided over the redis that kept the lock');
  });

  // Guard (finding 2's window, end to end; see test/router/review-h1.test.ts): a replica promoted
  // while mcmux was down; the next process fences it as it starts, and is stopped right after (a
  // second deploy, a restart loop): the third process still fences it. Holds: the INFO reply is
  // handled before the first look is judged, so that look's mark already writes `fenced until`
  // before mcmux listens (checked: the diagnostic prints the marker).
  it('a replica promoted while mcmux was down, mcmux stopped again right after it started: the third process still fences it', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const stateDir = tempDir(t, 'state');
    const upstreams = await lockThenFailoverWhileDown(t, stateDir, tempDir(t, 'sqlite'));
    const app2 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const redis2 = app2.upstreams[0] as HealthyUpstream;
    const marker = (await redis2.inner.get([app2.coldDetector.key]))[0]?.value.toString();
    t.diagnostic(`process 2: fenced ${redis2.fenced}, came back empty ${redis2.cameBackEmpty}, marker after its start: ${marker}`);
    assert.equal(redis2.cameBackEmpty, true);
    await app2.close(); // stopped at once

    const app3 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    const w3 = await connectWire(app3.address.port);
    t.after(() => w3.close());
    const redis3 = app3.upstreams[0] as HealthyUpstream;
    t.diagnostic(`process 3: fenced ${redis3.fenced}, came back empty ${redis3.cameBackEmpty}`);
    const again = await w3.ask('add lock.sid 0 0 1\r\n2\r\n');
    assert.notEqual(again, 'STORED\r\n', 'LOCK GRANTED TWICE: the fence of process 2 was not passed on');
  });
});

describe('review-h1 15428d9: a replication id that changes with no restart nor failover', () => {
  // Finding 5 (low; a false alarm). A Redis master frees its replication backlog once it has had
  // no replica for `repl-backlog-ttl` (3600 s by default), and takes a new replication id as it
  // does (replication.c replicationCron: changeReplicationId; checked on 7.0: run_id unchanged,
  // master_replid new, master_replid2 zeros). The same server, the same process, every write
  // kept: a master whose replica was taken away (decommissioned, down for maintenance over an
  // hour). The next mcmux process compares it with journal.log's I line and fences it as another
  // server (come back empty: lock-fence without deciding, its cas uniques void, and a warning
  // that a replica was promoted or Redis restarted); so does a running one at its next reconnect.
  // The run_id (INFO server) tells a restart or another server from the same process; only a
  // server demoted, resynced and promoted again unseen keeps its run_id too.
  // Fixed: the driver names `<master_replid> <run_id>`, and a new replication id continues the
  // history before it when the run_id is the same and the server is a master whose
  // master_replid2 is all zeros (redis.ts historyOf); the real detections hold (the tests below).
  it('a master that freed its backlog (its replica gone) is not taken for another server by the next mcmux', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const master = await startRedis(['--repl-backlog-ttl', '1']);
    t.after(() => master.stop());
    const replica = await startRedis(['--replicaof', '127.0.0.1', String(master.port)]);
    t.after(() => replica.stop());
    const m = new Redis({ host: '127.0.0.1', port: master.port, maxRetriesPerRequest: 0, protocol: 2 });
    t.after(() => m.disconnect());
    const replid = async (): Promise<string> => /^master_replid:(\w+)/m.exec(await m.info('replication'))?.[1] ?? '';
    const runId = async (): Promise<string> => /^run_id:(\w+)/m.exec(await m.info('server'))?.[1] ?? '';
    await eventually('the replica is attached', async () => /connected_slaves:1/.test(await m.info('replication')), 15_000);
    const [id1, run1] = [await replid(), await runId()];
    const stateDir = tempDir(t, 'state');
    const upstreams = [master.url, sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'))];
    const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    await eventually('redis decides', () => !(app1.upstreams[0] as HealthyUpstream).fenced, 15_000);
    await app1.close();
    await replica.stop(); // the replica goes away; the master frees its backlog a second later
    await eventually('the master took a new replication id', async () => (await replid()) !== id1, 15_000);
    assert.equal(await runId(), run1, 'the same server process');

    const { redis: redis2 } = await nextProcess(t, stateDir, upstreams);
    assert.equal(redis2.cameBackEmpty, false, 'THE SAME REDIS, EVERY WRITE KEPT, TAKEN FOR ANOTHER SERVER');
  });

  // Upgrade: journal.log's I line of the version before names the replication id alone. The same
  // id is the same server (no fence); another one is another server, fenced once: the id then on
  // file names the run_id too.
  it('an I line of the version before (the replication id alone) is compared as before', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis();
    t.after(() => server.stop());
    const stateDir = tempDir(t, 'state');
    const journal = join(stateDir, 'journal.log');
    const upstreams = [server.url, sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'))];
    const newLine = /^(I [0-9a-f]+ )([0-9a-f]{80})20[0-9a-f]{80}$/m;
    for (const other of [false, true]) {
      const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
      await eventually('redis decides', () => !(app1.upstreams[0] as HealthyUpstream).fenced, 15_000);
      await app1.close();
      const text = readFileSync(journal, 'latin1');
      assert.match(text, newLine);
      // As the version before wrote it: the replication id alone (`other`: another one).
      writeFileSync(journal, text.replace(newLine, (_, head: string, id: string) => `${head}${other ? Buffer.from('f'.repeat(40)).toString('hex') : id}`));
      const { app: app2, redis: redis2 } = await nextProcess(t, stateDir, upstreams);
      assert.equal(redis2.cameBackEmpty, other, other ? 'another replication id: another server' : 'THE SAME REPLICATION ID TAKEN FOR ANOTHER SERVER');
      await eventually('the id on file names the run_id', () => newLine.test(readFileSync(journal, 'latin1')), 15_000);
      await app2.close();
    }
  });

  // Guards of the fix: a new replication id with a master_replid2 of zeros is no continuation by
  // itself. A replica promoted while mcmux was down, which then had no replica of its own for
  // `repl-backlog-ttl`, frees its backlog too: a new id, master_replid2 zeros, but not the run_id
  // of the master journal.log knows.
  it('a replica promoted while mcmux was down that then freed its backlog is still another server', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const stateDir = tempDir(t, 'state');
    const upstreams = await lockThenFailoverWhileDown(t, stateDir, tempDir(t, 'sqlite'), ['--repl-backlog-ttl', '1']);
    const port = Number(new URL(upstreams[0] as string).port);
    const r = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, protocol: 2 });
    t.after(() => r.disconnect());
    await eventually('the promoted replica freed its backlog', async () => /^master_replid2:0{40}\r?$/m.test(await r.info('replication')), 15_000);
    assert.match(await r.info('replication'), /^role:master\r?$/m);
    const { redis: redis2, w: w2 } = await nextProcess(t, stateDir, upstreams);
    assert.equal(redis2.cameBackEmpty, true, 'the promoted replica taken for the master');
    assert.notEqual(await w2.ask('add lock.sid 0 0 1\r\n2\r\n'), 'STORED\r\n', 'LOCK GRANTED TWICE: the promoted replica, which never got it, decided');
  });

  // A Redis restarted from its RDB while mcmux was down (a new run_id; its master_replid2 the id
  // of before the restart): fenced once, as before the fix, though it kept every write here (a
  // snapshot may be older than the last writes: mcmux cannot tell).
  it('a master restarted from its RDB while mcmux was down is fenced as another server', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis(['--repl-backlog-ttl', '1']);
    t.after(() => server.stop());
    const admin = new Redis({ host: '127.0.0.1', port: server.port, maxRetriesPerRequest: 0, protocol: 2, lazyConnect: true });
    admin.on('error', () => undefined);
    t.after(() => admin.disconnect());
    const stateDir = tempDir(t, 'state');
    const upstreams = [server.url, sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'))];
    const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
    await eventually('redis decides', () => !(app1.upstreams[0] as HealthyUpstream).fenced, 15_000);
    const w1 = await connectWire(app1.address.port);
    assert.equal(await w1.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n');
    w1.close();
    await app1.close();
    await admin.connect();
    await admin.save(); // the snapshot the restart loads
    const run1 = /^run_id:(\w+)/m.exec(await admin.info('server'))?.[1];
    await server.restart();
    const run2 = /^run_id:(\w+)/m.exec(await admin.info('server'))?.[1];
    assert.notEqual(run2, run1, 'a new process');
    assert.equal(await admin.exists('lock.sid'), 1, 'it loaded its data');

    const { redis: redis2 } = await nextProcess(t, stateDir, upstreams);
    assert.equal(redis2.cameBackEmpty, true, 'A RESTART TAKEN FOR THE SAME SERVER');
  });

  // The same process (its run_id kept) demoted while mcmux was down, resynced in full from
  // another master that lacks the last lock (a replica detached before it got it, the marker
  // already on it), then promoted back: its data replaced, its master_replid2 names the master
  // it followed. Fenced as another server: the lock is not granted again.
  it('the same redis demoted, resynced from another master and promoted back while mcmux was down is another server', { timeout: 60_000 }, async (t) => {
    await demotedResyncedPromoted(t, false);
  });

  // Left open (the cost of the fix): the same, and then the server has no replica for
  // `repl-backlog-ttl` before any mcmux reads its id: it frees its backlog, master_replid2 goes
  // back to zeros, and its history passes for a continuation of the one journal.log knows (the
  // same run_id, a master). Before the fix any new id was another server. Nothing INFO shows then
  // tells a resync from a kept history (master_repl_offset may be higher or lower either way).
  it('the same redis demoted, resynced, promoted back and then freed its backlog while mcmux was down is another server', { timeout: 60_000, todo: 'a resync unseen, then the backlog freed: master_replid2 zeros, the run_id kept' }, async (t) => {
    await demotedResyncedPromoted(t, true);
  });
});

/**
 * Redis `a` under an mcmux on a state directory, its marker copied to `b` (a replica detached),
 * a lock taken on `a` alone, mcmux stopped; then `a` demoted to a replica of `b` (a full resync:
 * the lock lost), promoted back (and, `freed`, left without a replica until it frees its
 * backlog). The next mcmux must not grant the lock again.
 */
async function demotedResyncedPromoted(t: TestContext, freed: boolean): Promise<void> {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return;
  const { a, b, ca, cb } = await redisPair(t, freed ? ['--repl-backlog-ttl', '1'] : [], []);
  const run1 = /^run_id:(\w+)/m.exec(await ca.info('server'))?.[1];
  const stateDir = tempDir(t, 'state');
  const upstreams = [a.url, sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'))];
  const app1 = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
  const redis1 = app1.upstreams[0] as HealthyUpstream;
  await eventually('mcmux has written its markers and redis decides', () => !redis1.fenced, 15_000);
  await cb.replicaof('127.0.0.1', String(a.port));
  await eventually('b follows a', async () => /master_link_status:up/.test(await cb.info('replication')), 15_000);
  await ca.wait(1, 1000); // the marker reached b; the lock will not
  await cb.replicaof('NO', 'ONE');
  const w1 = await connectWire(app1.address.port);
  assert.equal(await w1.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n', 'on a and sqlite');
  w1.close();
  await app1.close();

  await ca.replicaof('127.0.0.1', String(b.port)); // a demoted: a full resync from b
  await eventually('a resynced from b', async () => /master_link_status:up/.test(await ca.info('replication')), 15_000);
  await ca.replicaof('NO', 'ONE'); // and promoted back
  const info = `${await ca.info('server')}${await ca.info('replication')}`;
  assert.equal(/^run_id:(\w+)/m.exec(info)?.[1], run1, 'the same process');
  assert.match(info, /^role:master\r?$/m);
  assert.equal(await ca.exists('lock.sid'), 0, 'the lock was lost with the resync');
  if (freed) await eventually('a freed its backlog', async () => /^master_replid2:0{40}\r?$/m.test(await ca.info('replication')), 15_000);
  else assert.doesNotMatch(info, /^master_replid2:0{40}\r?$/m, 'it names the master it followed');

  const { redis: redis2, w: w2 } = await nextProcess(t, stateDir, upstreams);
  t.diagnostic(`redis fenced: ${redis2.fenced}, came back empty: ${redis2.cameBackEmpty}`);
  assert.notEqual(await w2.ask('add lock.sid 0 0 1\r\n2\r\n'), 'STORED\r\n', 'LOCK GRANTED TWICE: a redis resynced from a master without the lock decided');
  assert.equal(redis2.cameBackEmpty, true);
}

describe('review-h1 15428d9: reload and the replication id', () => {
  // Guard: a reload that changes a tuning option of a Redis upstream (`?timeout=`) builds it anew
  // (app.ts identity) but it stays the same store (storeId): the new upstream's first connection
  // reads the id journal.log has for the store, the same: no fence as come back empty, and the
  // reload's precaution is lifted by the marker, as before 15428d9.
  it('a redis upstream rebuilt by a reload (timeout changed) is not taken for another server', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis();
    t.after(() => server.stop());
    const sqlite = sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'));
    const stateDir = tempDir(t, 'state');
    const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, [server.url, sqlite]);
    const before = app.upstreams[0] as HealthyUpstream;
    await eventually('redis decides', () => !before.fenced, 15_000);
    reloadTo(app, { 'probe-interval': '50', 'state-dir': stateDir }, [`${server.url}?timeout=700`, sqlite]);
    const after = app.upstreams[0] as HealthyUpstream;
    assert.notEqual(after, before, 'rebuilt');
    assert.equal(after.storeId, before.storeId, 'the same store');
    await eventually('the reload precaution is lifted by the marker', () => !after.fenced, 15_000);
    assert.equal(after.cameBackEmpty, false);
    const w = await connectWire(app.address.port);
    t.after(() => w.close());
    assert.equal(await w.ask('add lock.sid 0 0 1\r\n1\r\n'), 'STORED\r\n');
  });
});

describe('review-h1 15428d9: INFO refused', () => {
  // Guard: a user refused INFO (an ACL without +info) names no id: nothing goes on journal.log,
  // and a restart over the same server is no replacement (a refusal is not another server).
  it('a user refused INFO: no I line, no fence as another server, across a restart', { timeout: 60_000 }, async (t) => {
    if (!requireBinary(t, 'redis-server', 'redis-server')) return;
    const server = await startRedis();
    t.after(() => server.stop());
    const admin = new Redis({ host: '127.0.0.1', port: server.port, maxRetriesPerRequest: 0, protocol: 2 });
    t.after(() => admin.disconnect());
    await admin.call('ACL', 'SETUSER', 'mc', 'on', '>pw', '~*', '&*', '+@all', '-info');
    const stateDir = tempDir(t, 'state');
    const upstreams = [`redis://mc:pw@127.0.0.1:${server.port}`, sqliteUrl(join(tempDir(t, 'sqlite'), 'store.db'))];
    for (let run = 1; run <= 2; run++) {
      const app = await inProcessMcmux({ 'probe-interval': '50', 'state-dir': stateDir }, upstreams);
      const redis = app.upstreams[0] as HealthyUpstream;
      await eventually(`run ${run}: redis decides`, () => !redis.fenced, 15_000);
      assert.equal(redis.cameBackEmpty, false);
      await app.close();
      assert.doesNotMatch(readFileSync(join(stateDir, 'journal.log'), 'latin1'), /^I /m, 'no id on file');
    }
  });
});
