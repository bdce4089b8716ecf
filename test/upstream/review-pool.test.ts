/**
 * Review of the memcached pool (memcached-pool.ts, ketama.ts, memcached.ts underneath) under
 * faults. Each test marked FINDING failed on the code it was written against (99c4bee) and passes
 * since its fix (287829d); the tests marked "holds" are guards for suspicions checked and found
 * correct.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import type { App } from '../../src/app';
import type { HealthyUpstream } from '../../src/router/health';
import type { MemcachedPool } from '../../src/upstream/memcached-pool';
import { inProcessMcmux } from '../helpers/in-process';
import { eventually } from '../helpers/poll';
import { poolOf, poolUrl, stateDir } from '../helpers/pool-app';
import { type MemcachedProcess, requireBinary, startMemcacheds } from '../helpers/servers';
import { requirePhpExtension } from '../helpers/php-session';
import { type Wire, connectWire } from '../helpers/wire';

/** SIGKILL, resolving once the process has exited (its port then refuses connections). */
function crash(server: MemcachedProcess): Promise<void> {
  return new Promise((resolve) => {
    server.proc.once('exit', () => resolve());
    server.kill('SIGKILL');
  });
}

async function client(t: TestContext, app: App): Promise<Wire> {
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  return w;
}

/** A pool of three servers (`query` its options) before a memcached; `key`'s server and its process. */
async function ejectPool(t: TestContext, query: string, key: string): Promise<{ app: App; w: Wire; pool: MemcachedPool; victim: HealthyUpstream; proc: MemcachedProcess }> {
  const servers = await startMemcacheds(t, 4);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-') }, [poolUrl(servers.slice(0, 3), query), (servers[3] as MemcachedProcess).url]);
  const w = await client(t, app);
  const pool = poolOf(app);
  const victim = pool.serverFor(key) as HealthyUpstream;
  return { app, w, pool, victim, proc: servers[pool.members().indexOf(victim)] as MemcachedProcess };
}

/** A pool of two servers (timeout 200 ms) before a memcached (`next`); the second server and its process. */
async function pairPool(t: TestContext): Promise<{ w: Wire; pool: MemcachedPool; victim: HealthyUpstream; proc: MemcachedProcess; next: MemcachedProcess }> {
  const servers = await startMemcacheds(t, 3);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-') }, [poolUrl(servers.slice(0, 2), '?timeout=200'), (servers[2] as MemcachedProcess).url]);
  const pool = poolOf(app);
  return { w: await client(t, app), pool, victim: pool.members()[1] as HealthyUpstream, proc: servers[1] as MemcachedProcess, next: servers[2] as MemcachedProcess };
}

/** Reads of `key` fail over (the pool cannot answer for it) until health marks `victim` down. */
async function untilDown(w: Wire, key: string, victim: HealthyUpstream): Promise<void> {
  await eventually('the server is marked down', async () => {
    await w.ask(`get ${key}\r\n`, /END\r\n$|ERROR.*\r\n$/);
    return !victim.usable;
  });
}

// FINDING: eject=true, a server dies: its keys move to the next point of the ring, a server that
// never held them, and the pool (first upstream, warm, clean for the key, not fenced) decides the
// next `add lock.<sid>` there: STORED, and the copy overwrites the holder's lock in the other
// upstreams. A session lock granted twice (two PHP requests of one session run at once and the
// last write wins: lost session data).
// README: "This is what makes session locks safe with one mcmux"; "Locks across failover: ... A
// lock (`add lock.<sid>`) taken before is then still found in the next upstream, which decides
// instead". The eject hazard documented (README, docs/drivers.md) is stale reads when the server
// comes back, not locks granted while it is out. With eject=false the same add fails over
// (UPSTREAM_DOWN) to the next upstream, which answers NOT_STORED.
// Cause: memcached-pool.ts onChange (the `placer(..., live)` rebuild) moves keys to servers that
// never had them without a word to anyone; app.ts onMemberChange fences the pool only when a
// server turns healthy. Fix: a key whose home server (on the full ring) is down is refused for
// conditional commands (add/cas/incr/decr/append/prepend/replace: UPSTREAM_DOWN, so the
// authority fails over), or the pool is fenced as come back empty (coldDetector.knownEmpty) for
// lock-fence each time the ring moves.
test('eject=true: a lock held on a server that dies is not granted again on the server its key moves to', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { w, pool, victim, proc } = await ejectPool(t, '?eject=true', 'lock.s1');
  const lock = 'lock.s1';
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  await crash(proc);
  await untilDown(w, lock, victim);
  assert.notEqual(pool.serverFor(lock), victim, 'ejected: the key moved');
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', 'the held lock is granted a second time');
});

// FINDING: eject=true, a server paused past the timeout is ejected, a lock is taken meanwhile (on
// the server its key moved to), then the server resumes: its keys go home to a server that missed
// every write made to them while it was out, and the pool decides the next `add` there: the lock
// is granted a second time. The fence set when the server turns healthy is lifted by its own
// marker check, which finds the marker it kept (it was paused, not restarted).
// Arguably next to the documented eject hazard ("a server that comes back with its data then
// serves what it held before"), which speaks of stale reads; a lock granted twice is what the
// fence (README "Locks across failover") exists to prevent, and a fix of the finding above alone
// (fence on eject) does not cover it.
// Cause: cold-detector.ts serverReconnected/liftIfKept judge the returning server by its marker
// only; memcached-pool.ts onChange restores the ring. Fix: with eject=true, a server that comes
// back after it was ejected is treated as gone back in time (as a rolled-back marker:
// fenceCold + distrust, so the repair flushes it before it is read or decides), or the pool is
// fenced for lock-fence (not lifted by a marker) whenever the ring changes.
test('eject=true: a server that comes back after its keys moved does not grant a lock taken meanwhile', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { app, w, pool, victim, proc } = await ejectPool(t, '?eject=true&timeout=200', 'lock.s2');
  const lock = 'lock.s2';
  assert.equal(await w.ask(`get ${lock}\r\n`), 'END\r\n');
  await proc.pause();
  t.after(() => proc.resume());
  await untilDown(w, lock, victim);
  // Taken while the server is out: decided by the server its key moved to.
  assert.equal(await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`), 'STORED\r\n');
  proc.resume();
  await eventually('the server is back in the ring', () => victim.usable && pool.serverFor(lock) === victim, 15_000);
  const u = app.upstreams[0] as HealthyUpstream;
  for (let i = 0; i < 20 && u.fenced; i++) await app.coldDetector.check(u);
  t.diagnostic(`pool fenced after the checks: ${u.fenced}`);
  assert.equal(await w.ask(`add ${lock} 0 0 5\r\nthief\r\n`), 'NOT_STORED\r\n', 'the lock taken while the server was out is granted a second time');
});

// FINDING: a multi-get whose keys span the servers of a pool, one server paused (or down): the
// pool fails the whole get (memcached-pool.ts get: Promise.all over the servers, one rejection
// rejects all), so the keys of the servers that answered are asked of the next upstream too, and
// where that one lacks them (sessions the farm wrote to its servers before it moved to mcmux, the
// migration the README and docs/drivers.md describe; an item the next store evicted) the client
// hears a miss for a session a live server holds: a logged-out user.
// docs/drivers.md: with eject=false "reads and writes of a down server's keys fail on this
// upstream (the next upstream serves them...)": a down server's keys, not every key of the get;
// README: every read "is answered by the first one that has the key".
// Fix: the pool answers per server: Promise.allSettled, and a failure carries the hits of the
// servers that answered (e.g. a McmuxError UPSTREAM_PARTIAL with the answered positions), which
// failover-read.ts absorb() takes as answered, asking the next upstream only for the failed
// server's keys.
test('multi-get with one pool server paused: the other servers\' hits are answered', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 3);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-') }, [poolUrl(servers.slice(0, 2), '?timeout=200'), (servers[2] as MemcachedProcess).url]);
  const w = await client(t, app);
  const pool = poolOf(app);
  const [a, b] = pool.members() as [HealthyUpstream, HealthyUpstream];
  const keys = Array.from({ length: 40 }, (_, i) => `sess${i}`);
  const onA = keys.find((k) => pool.serverFor(k) === a) as string;
  const onB = keys.find((k) => pool.serverFor(k) === b) as string;
  // Sessions the farm wrote to its servers before it moved to mcmux (README, farm migration):
  // on their pool server only.
  for (const [k, s] of [[onA, servers[0]], [onB, servers[1]]] as const) {
    const d = await connectWire((s as MemcachedProcess).port);
    assert.equal(await d.ask(`set ${k} 0 0 3\r\nold\r\n`), 'STORED\r\n');
    d.close();
  }
  assert.equal(await w.ask(`get ${onA} ${onB}\r\n`, /END\r\n$/), `VALUE ${onA} 0 3\r\nold\r\nVALUE ${onB} 0 3\r\nold\r\nEND\r\n`, 'the control');
  await (servers[1] as MemcachedProcess).pause();
  t.after(() => (servers[1] as MemcachedProcess).resume());
  const reply = await w.ask(`get ${onA} ${onB}\r\n`, /END\r\n$|ERROR.*\r\n$/, 10_000);
  assert.match(reply, new RegExp(`^VALUE ${onA} 0 3\\r\\nold\\r\\n`), `${onA} is on a server that answers; got ${JSON.stringify(reply)}`);
});

// FINDING: `probe-interval` is ignored for the servers of a pool: the first probe of a server
// that went down goes out after 200 ms (DEFAULT_HEALTH), then doubles, whatever the operator set.
// README: "it is probed (memcached `version`) after `probe-interval` ms, doubling up to
// `probe-interval-max`". An operator who raised it (a flapping server, probes that are costly
// through a firewall or fence the whole pool at each reconnect) gets 200 ms.
// Cause: memcached-pool.ts constructor builds each server's HealthyUpstream with DEFAULT_HEALTH
// (createMemcachedPool passes none); app.ts then assigns `member.options = config.health`, but
// health.ts's constructor already copied probeMinMs into probeDelay, which is reset from the
// options only after a probe succeeds. Fix: pass the health options to the pool's factory
// (UpstreamContext), or have the options setter reset probeDelay.
test('a pool server that goes down is first probed after probe-interval, as any upstream', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 2);
  const interval = 3000;
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-'), 'probe-interval': interval, 'probe-interval-max': 4 * interval }, [poolUrl(servers)]);
  const w = await client(t, app);
  const pool = poolOf(app);
  const victim = pool.members()[1] as HealthyUpstream;
  const key = Array.from({ length: 40 }, (_, i) => `k${i}`).find((k) => pool.serverFor(k) === victim) as string;
  const times: Record<string, number> = {};
  const prev = pool.onMemberChange;
  pool.onMemberChange = (u, from, to, reason) => {
    prev?.(u, from, to, reason);
    if (u === victim) times[to] ??= performance.now();
  };
  await crash(servers[1] as MemcachedProcess);
  await eventually('the dead server is marked down', async () => {
    await w.ask(`get ${key}\r\n`, /END\r\n$|ERROR.*\r\n$/);
    return !victim.usable;
  });
  await eventually('the dead server is probed', () => times.probing !== undefined, 2 * interval + 5000);
  const waited = (times.probing as number) - (times.down as number);
  assert.ok(waited >= interval - 50, `first probe ${Math.round(waited)} ms after it went down; probe-interval is ${interval} ms`);
});

// FINDING: a pool whose repair journal overflowed while one of its servers is down is flushed by
// the repair at every tick (100 ms), for as long as that server stays down.
// What is wrong: repair.ts repairOne/retrust take the pool as "back" because it is usable (one
// server up is enough: repair.ts `if (!isUsable(u)) return`), and flush it (retrust ->
// flushOverflowed). The flush fails on the down server (UPSTREAM_DOWN, nothing sent there) but
// empties every other server; the failure is not remembered, so the next tick does it again.
// README: "A cache upstream ... is flushed when it comes back"; "The price, once per overflow:
// writes pause for the slowest write in flight and the flush". Here it is ten times a second for
// the whole outage: every client write of every key pauses behind each flush (flushOrdered), the
// healthy servers lose every session written to them since the overflow at the next tick (each
// read falls through to the next upstream: a durable store takes all the read load), and
// onFlush (app.ts: coldDetector.knownEmpty) fences the whole pool again at each attempt, so it
// decides no add/incr/cas for any key until lock-fence after the server is back.
// Fix: do not retrust/flush a pool while any of its servers is not usable (it has not "come
// back"), and do not fence it before a flush that can reach every server; after a failed flush,
// wait for the server to come back instead of retrying every tick.
test('a pool that overflowed with one server down is not flushed again and again while it is down', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startMemcacheds(t, 3);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-'), 'journal-max-keys': 5 }, [poolUrl(servers.slice(0, 2)), (servers[2] as MemcachedProcess).url]);
  const w = await client(t, app);
  const pool = poolOf(app);
  const [a, b] = pool.members() as [HealthyUpstream, HealthyUpstream];
  const keys = Array.from({ length: 200 }, (_, i) => `k${i}`);
  const onA = keys.filter((k) => pool.serverFor(k) === a);
  const onB = keys.filter((k) => pool.serverFor(k) === b);
  await crash(servers[1] as MemcachedProcess);
  await eventually('the dead server is marked down', async () => {
    await w.ask(`get ${onB[0]}\r\n`, /END\r\n$|ERROR.*\r\n$/);
    return !b.usable;
  });
  // An outage longer than the journal: more keys of the dead server written than it keeps.
  for (const k of onB.slice(0, 10)) assert.equal(await w.ask(`set ${k} 0 0 1\r\nx\r\n`), 'STORED\r\n');
  assert.ok(app.router.context.journal.overflowed(app.upstreams[0] as HealthyUpstream), 'the pool overflowed');
  assert.equal(await w.ask(`set ${onA[0]} 0 0 1\r\ny\r\n`), 'STORED\r\n');
  const direct = await connectWire((servers[0] as MemcachedProcess).port);
  t.after(() => direct.close());
  const flushes = async (): Promise<number> => Number(/STAT cmd_flush (\d+)/.exec(await direct.ask('stats\r\n', /END\r\n$/))?.[1]);
  const before = await flushes();
  // Ten rounds of the repair (it also runs on its own timer meanwhile), the server still down.
  for (let i = 0; i < 10; i++) await app.repairer.tick();
  const sent = (await flushes()) - before;
  t.diagnostic(`flush_all received by the live server: ${sent}; it still holds ${onA[0]}: ${(await direct.ask(`get ${onA[0]}\r\n`, /END\r\n$/)).startsWith('VALUE')}`);
  assert.ok(sent <= 1, `the live server of the pool was flushed ${sent} times while the other is down`);
});

// Holds (a guard): eject=false, one server paused past the timeout while its keys are written and
// deleted through the other upstream, then resumed with its old data: reads never serve that old
// data (the pool is journaled for those keys), and the repair puts the server right.
test('holds: eject=false, a server that comes back with stale data serves none of it', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { w, pool, victim, proc } = await pairPool(t);
  const [kSet, kDel] = Array.from({ length: 60 }, (_, i) => `s${i}`).filter((k) => pool.serverFor(k) === victim) as [string, string];
  for (const k of [kSet, kDel]) assert.equal(await w.ask(`set ${k} 0 0 3\r\nold\r\n`), 'STORED\r\n');
  await proc.pause();
  t.after(() => proc.resume());
  await eventually('the paused server is marked down', async () => {
    assert.equal(await w.ask(`get ${kSet}\r\n`, /END\r\n$/), `VALUE ${kSet} 0 3\r\nold\r\nEND\r\n`, 'read from the other upstream meanwhile');
    return !victim.usable;
  });
  assert.equal(await w.ask(`set ${kSet} 0 0 3\r\nnew\r\n`), 'STORED\r\n');
  assert.equal(await w.ask(`delete ${kDel}\r\n`), 'DELETED\r\n');
  proc.resume();
  await eventually('the server is back', () => victim.usable, 15_000);
  assert.equal(await w.ask(`get ${kSet} ${kDel}\r\n`, /END\r\n$/), `VALUE ${kSet} 0 3\r\nnew\r\nEND\r\n`, 'neither the old value nor the deleted session');
  const direct = await connectWire(proc.port);
  t.after(() => direct.close());
  await eventually('the repair put the server right', async () => (await direct.ask(`get ${kSet} ${kDel}\r\n`, /END\r\n$/)) === `VALUE ${kSet} 0 3\r\nnew\r\nEND\r\n`, 15_000);
  assert.equal(await w.ask(`get ${kSet} ${kDel}\r\n`, /END\r\n$/), `VALUE ${kSet} 0 3\r\nnew\r\nEND\r\n`);
});

// Holds (a guard): a counter on a pool server that pauses past the timeout: decided by the next
// upstream while the server is down, and the server repaired to that value when it resumes
// (its late incr, applied as it resumes, is overwritten): the counter never goes back.
test('holds: incr on a key of a paused pool server fails over, and counts on after it resumes', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { w, pool, victim, proc, next } = await pairPool(t);
  const ctr = Array.from({ length: 60 }, (_, i) => `ctr${i}`).find((k) => pool.serverFor(k) === victim) as string;
  assert.equal(await w.ask(`set ${ctr} 0 0 2\r\n10\r\n`), 'STORED\r\n');
  await proc.pause();
  t.after(() => proc.resume());
  // Sent to the paused server: it times out (and lands when it resumes); the next upstream decides.
  assert.equal(await w.ask(`incr ${ctr} 1\r\n`), '11\r\n');
  await eventually('the paused server is marked down', async () => {
    await w.ask(`get ${ctr}\r\n`, /END\r\n$/);
    return !victim.usable;
  });
  const v = Number(await w.ask(`incr ${ctr} 1\r\n`));
  assert.equal(v, 12, 'decided by the next upstream');
  proc.resume();
  await eventually('the server is back', () => victim.usable, 15_000);
  const direct = await connectWire(proc.port);
  t.after(() => direct.close());
  await eventually('the repair copied the counter over the late incr', async () => (await direct.ask(`get ${ctr}\r\n`, /END\r\n$/)) === `VALUE ${ctr} 0 ${String(v).length}\r\n${v}\r\nEND\r\n`, 15_000);
  assert.equal(await w.ask(`incr ${ctr} 1\r\n`), `${v + 1}\r\n`);
  const other = await connectWire(next.port);
  t.after(() => other.close());
  assert.equal(await other.ask(`get ${ctr}\r\n`, /END\r\n$/), `VALUE ${ctr} 0 2\r\n${v + 1}\r\nEND\r\n`);
  assert.equal(await direct.ask(`get ${ctr}\r\n`, /END\r\n$/), `VALUE ${ctr} 0 2\r\n${v + 1}\r\nEND\r\n`);
});

// The pool reviewer's observation (last session), fixed since: a server that hangs while its
// kernel still accepts connections (SIGSTOP here; a stuck process) was "reconnected" after every
// timeout, the connect itself succeeding: each reconnect fenced the whole pool (the other
// server's keys too) and voided every cas token of it, 73 % of the time in the reviewer's run.
// A reconnect is now reported once the server answers (memcached.ts onConnect: a `version` first).
test('a pool server that hangs (its kernel accepting connections) is not taken for one that restarted at each reconnect', { timeout: 30_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { w, pool, victim, proc } = await pairPool(t);
  let reconnects = 0;
  const wired = victim.inner.onReconnect;
  victim.inner.onReconnect = () => {
    reconnects++;
    wired?.();
  };
  const live = Array.from({ length: 60 }, (_, i) => `s${i}`).find((k) => pool.serverFor(k) !== victim) as string;
  assert.equal(await w.ask(`set ${live} 0 0 4\r\ncart\r\n`), 'STORED\r\n');
  await proc.pause();
  t.after(() => proc.resume());
  // Probes of the hung server time out (200 ms), its connection is cut and made again: a few times.
  await eventually('several timeouts on the hung server', () => victim.inner.stats.timeouts >= 4, 15_000);
  assert.equal(reconnects, 0, 'a connection the server never answered on is no reconnect');
  const token = /^VALUE \S+ 0 4 (\d+)\r\n/.exec(await w.ask(`gets ${live}\r\n`, /END\r\n$/))?.[1];
  assert.ok(token);
  assert.equal(await w.ask(`cas ${live} 0 0 5 ${token}\r\ncart2\r\n`), 'STORED\r\n', 'the other server\'s keys keep their tokens');
  proc.resume();
  // Once it answers, the reconnect is reported: it may have restarted meanwhile.
  await eventually('the reconnect is reported', () => reconnects >= 1, 15_000);
  const mine = Array.from({ length: 60 }, (_, i) => `s${i}`).find((k) => pool.serverFor(k) === victim) as string;
  await eventually('the server is back', async () => (await w.ask(`set ${mine} 0 0 1\r\nx\r\n`)) === 'STORED\r\n' && victim.usable, 15_000);
});

/** Runs a PHP script (argv after it), resolving with its stdout; skips when php-memcached is missing. */
function php(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('php', ['-d', 'display_errors=stderr', '-r', script, '--', ...args], { timeout: 60_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err || stderr.trim() !== '') reject(new Error(`php failed: ${err?.message ?? ''} ${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

// Holds (a guard): distribution=libketama with weights, end to end: what mcmux wrote through the
// pool, php-memcached (OPT_LIBKETAMA_COMPATIBLE, the same weights) finds on the server it reads.
test('holds: libketama with weights: keys written through the pool are where php-memcached reads them', { timeout: 60_000 }, async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached') || !requireBinary(t, 'php', 'php-cli php-memcached')) return;
  if (!(await requirePhpExtension(t, 'memcached', 60_000))) return;
  const servers = await startMemcacheds(t, 3);
  const weights = [3, 1, 2];
  const app = await inProcessMcmux({ 'state-dir': stateDir(t, 'mcmux-review-pool-') }, [poolUrl(servers, `?distribution=libketama&weights=${weights.join(',')}`)]);
  const w = await client(t, app);
  const keys = Array.from({ length: 300 }, (_, i) => `wk${i}`);
  w.send(keys.map((k) => `set ${k} 0 0 ${k.length}\r\n${k}\r\n`).join(''));
  await w.read((s) => s.split('STORED\r\n').length - 1 === keys.length);
  const list = servers.map((s, i) => `127.0.0.1:${s.port}:${weights[i]}`).join(',');
  const found = await php(
    `$m = new Memcached(); foreach (explode(',', $argv[1]) as $s) { [$h, $p, $w] = explode(':', $s); $m->addServer($h, (int)$p, (int)$w); }
     $m->setOption(Memcached::OPT_LIBKETAMA_COMPATIBLE, true);
     $n = 0; for ($i = 0; $i < (int)$argv[2]; $i++) { if ($m->get("wk$i") === "wk$i") $n++; } echo $n;`,
    [list, String(keys.length)],
  );
  assert.equal(found, String(keys.length));
  // And the keys did spread over all three servers.
  const per = await Promise.all(servers.map(async (s) => {
    const d = await connectWire(s.port);
    const r = await d.ask(`get ${keys.join(' ')}\r\n`, /END\r\n$/);
    d.close();
    return r.split('VALUE ').length - 1;
  }));
  assert.ok(per.every((n) => n > 0), `per server: ${per.join(', ')}`);
});
