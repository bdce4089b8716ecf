/**
 * What the Redis Cluster reviews share (test/upstream/review-redis-cluster*.test.ts): the driver
 * and in-process mcmux around a private cluster, the cluster itself (startCluster) and its handle,
 * redis-cli, and key placement by slot.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { Redis } from 'ioredis';
import type { Cluster as IoCluster } from 'ioredis';
import type { App } from '../../src/app';
import type { HealthyUpstream } from '../../src/router/health';
import { keySlot } from '../../src/upstream/redis';
import { createUpstream } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import { makeDir, removeDir, spawnRedis, stopProcess } from '../upstream/targets/redis';
import { b, codeOf, retrying } from './driver-calls';
import { inProcessMcmux } from './in-process';
import { eventually } from './poll';
import { freePort, requireBinary, startMemcacheds } from './servers';
import { type Wire, connectWire } from './wire';

export const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };
export type Proc = Awaited<ReturnType<typeof spawnRedis>>;

export function open(url: string, options: Record<string, string> = {}): Upstream {
  return createUpstream(url, new Map(Object.entries(options)), ctx);
}

export function stateDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-review-cluster-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function client(t: TestContext, app: App): Promise<Wire> {
  const w = await connectWire(app.address.port);
  t.after(() => w.close());
  return w;
}

export interface Cluster {
  ports: number[];
  dirs: string[];
  procs: Proc[];
  args: string[][];
  admin: Redis[];
  /** redis+cluster:// URL naming every node. */
  url: string;
  /** Node id of node i. */
  id(i: number): Promise<string>;
  /** Index of the node that serves `slot` as master now (CLUSTER SLOTS as node `ask` sees it). */
  masterOf(slot: number, ask?: number): Promise<number>;
  restart(i: number): Promise<void>;
  kill(i: number): Promise<void>;
}

/** redis-cli with `args`, bounded (20 s); its output. */
export async function cli(args: string[]): Promise<string> {
  const p = spawn('redis-cli', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const killer = setTimeout(() => p.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => p.once('exit', resolve));
  clearTimeout(killer);
  if (code !== 0) throw new Error(`redis-cli ${args.join(' ')} failed (${code}): ${out.slice(-500)}`);
  return out;
}

/** The first key `<stem><i>` (i = 0, 1, ...) whose item key (`prefix` + key) is in a slot `ok` accepts. */
export function keyWhere(stem: string, ok: (slot: number) => boolean, prefix = '', skip: string[] = []): string {
  for (let i = 0; ; i++) {
    const k = `${stem}${i}`;
    if (!skip.includes(k) && ok(keySlot(b(prefix + k)))) return k;
  }
}

/** The master index (0..2) of the initial 3-master layout that holds `slot`. */
export const homeOf = (slot: number): number => (slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2);

/** A Buffer as JSON.stringify hands it to a replacer (Buffer.toJSON runs first). */
export const isBufferJson = (x: unknown): x is { data: number[] } => typeof x === 'object' && x !== null && (x as { type?: unknown }).type === 'Buffer' && Array.isArray((x as { data?: unknown }).data);

export const settle = (p: Promise<unknown>): Promise<string> =>
  p.then(
    (v) => `ok ${JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : isBufferJson(x) ? Buffer.from(x.data).toString('latin1') : x))}`,
    (e: unknown) => `failed ${codeOf(e)}: ${String((e as Error).message).slice(0, 120)}`,
  );


/**
 * `masters` masters (+ `replicas` each) joined by `redis-cli --cluster create`, then one replica
 * added for each master listed in `replicaFor`; no persistence, `--cluster-node-timeout
 * nodeTimeout`. Slots: 0-5460, 5461-10922, 10923-16383 for 3 masters (nodes 0, 1, 2); the
 * replicas are the nodes after. Everything stopped (a stopped one continued first) and removed
 * after the test.
 */
export async function startCluster(t: TestContext, opts: { masters?: number; replicas?: number; replicaFor?: number[]; nodeTimeout?: number; extra?: string[] } = {}): Promise<Cluster> {
  const { masters = 3, replicas = 0, replicaFor = [], nodeTimeout = 5000, extra = [] } = opts;
  const alive = (p: Proc): boolean => p.exitCode === null && p.signalCode === null;
  const c: Cluster = {
    ports: [],
    dirs: [],
    procs: [],
    args: [],
    admin: [],
    url: '',
    id: async (i) => String(await (c.admin[i] as Redis).call('CLUSTER', 'MYID')),
    masterOf: async (slot, ask = 0) => {
      const slots = (await (c.admin[ask] as Redis).call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number]]>;
      const range = slots.find(([lo, hi]) => lo <= slot && slot <= hi);
      return range ? c.ports.indexOf(Number(range[2][1])) : -1;
    },
    restart: async (i) => {
      const p = c.procs[i] as Proc;
      if (alive(p)) await stopProcess(p);
      c.procs[i] = await spawnRedis(c.ports[i] as number, c.dirs[i] as string, c.args[i] as string[]);
    },
    kill: async (i) => {
      const p = c.procs[i] as Proc;
      if (alive(p)) {
        const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
        p.kill('SIGKILL');
        await gone;
      }
    },
  };
  t.after(async () => {
    for (const a of c.admin) a.disconnect();
    for (const p of c.procs) if (alive(p)) p.kill('SIGCONT');
    await Promise.all(c.procs.map((p) => (alive(p) ? stopProcess(p) : undefined)));
    for (const d of c.dirs) removeDir(d);
  });
  const addNode = async (): Promise<number> => {
    const dir = makeDir('review-cluster-');
    c.dirs.push(dir);
    // A port freePort found free may be taken (an outgoing connection's ephemeral port) before
    // redis-server binds it, or the two ports be one: tried again with others.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const bus = await freePort();
      const a = ['--cluster-enabled', 'yes', '--cluster-port', String(bus), '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', String(nodeTimeout), ...extra];
      try {
        if (bus === port) continue;
        const proc = await spawnRedis(port, dir, a);
        c.args.push(a);
        c.procs.push(proc);
        c.ports.push(port);
        break;
      } catch (err) {
        if (attempt >= 3 || !String((err as Error).message).includes('Address already in use')) throw err;
      }
    }
    // Its errors (the node killed or restarting) are seen by the calls that fail.
    c.admin.push(new Redis({ host: '127.0.0.1', port: c.ports[c.ports.length - 1] as number, maxRetriesPerRequest: 0, protocol: 2 }).on('error', () => {}));
    return c.ports.length - 1;
  };
  for (let i = 0; i < masters * (1 + replicas); i++) await addNode();
  const out = await cli(['--cluster', 'create', ...c.ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes']);
  if (!out.includes('All 16384 slots covered')) throw new Error(`redis-cli --cluster create failed: ${out.slice(-500)}`);
  for (const m of replicaFor) {
    const r = await addNode();
    await cli(['--cluster', 'add-node', `127.0.0.1:${c.ports[r]}`, `127.0.0.1:${c.ports[0]}`, '--cluster-slave', '--cluster-master-id', await c.id(m)]);
  }
  const n = c.ports.length;
  for (const a of c.admin) {
    await retrying(async () => {
      const info = String(await a.call('CLUSTER', 'INFO'));
      if (!info.includes('cluster_state:ok') || !info.includes(`cluster_known_nodes:${n}`)) throw new Error(info);
    });
  }
  c.url = `redis+cluster://${c.ports.map((p) => `127.0.0.1:${p}`).join(',')}`;
  return c;
}

/** `cluster` first and a private memcached second behind an in-process mcmux (private state-dir); its first upstream. */
export async function behindMcmux(t: TestContext, cluster: Cluster, opts: { lockFence?: number; timeout?: number } = {}): Promise<{ app: App; u: HealthyUpstream }> {
  const [mc] = await startMemcacheds(t, 1);
  const app = await inProcessMcmux({ 'state-dir': stateDir(t), 'lock-fence': opts.lockFence ?? 60_000 }, [`${cluster.url}?timeout=${opts.timeout ?? 2000}`, mc?.url as string]);
  return { app, u: app.upstreams[0] as HealthyUpstream };
}

/** Until node `ask` sees node `i` as master of `slot`. */
export async function untilMasterOf(c: Cluster, slot: number, i: number, ask: number): Promise<void> {
  await eventually(`node ${i} serves slot ${slot}`, async () => {
    try {
      return (await c.masterOf(slot, ask)) === i;
    } catch {
      return false;
    }
  }, 30_000);
}

/** Whether redis-server and redis-cli (and memcached, if asked) are installed; a test reports itself skipped, naming the package, if not. */
export function haveServers(t: TestContext, memcached = false): boolean {
  if (!requireBinary(t, 'redis-server', 'redis-server')) return false;
  if (!requireBinary(t, 'redis-cli', 'redis-tools')) return false;
  if (memcached && !requireBinary(t, 'memcached', 'memcached')) return false;
  return true;
}

/** How many keys node `i` holds that start with `prefix` (0 if it does not answer). */
export async function countKeysStarting(c: Cluster, i: number, prefix: string): Promise<number> {
  try {
    const keys = (await (c.admin[i] as Redis).call('KEYS', '*')) as string[];
    return keys.filter((k) => k.startsWith(prefix)).length;
  } catch {
    return 0;
  }
}

/** Whether node `i` holds a key that starts with `prefix`. */
export async function holdsKeyStarting(c: Cluster, i: number, prefix: string): Promise<boolean> {
  return (await countKeysStarting(c, i, prefix)) > 0;
}

/** Until master `m`'s replica is online (initial sync done): WAIT can count it. */
export async function untilReplicating(c: Cluster, m: number): Promise<void> {
  await eventually(`node ${m}'s replica is online`, async () => {
    try {
      return /slave0:.*state=online/.test(String(await (c.admin[m] as Redis).info('replication')));
    } catch {
      return false;
    }
  }, 30_000);
}

/** Slot `slot` from master `from` to master `to` with its keys, as redis-cli --cluster reshard does it. */
export async function moveSlot(c: Cluster, slot: number, from: number, to: number): Promise<void> {
  await beginMove(c, slot, from, to);
  await endMove(c, slot, from, to);
}

/** IMPORTING / MIGRATING set, every key of the slot migrated: the slot still `from`'s (ASK phase). */
export async function beginMove(c: Cluster, slot: number, from: number, to: number): Promise<void> {
  const src = c.admin[from] as Redis;
  const dst = c.admin[to] as Redis;
  await dst.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', await c.id(from));
  await src.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', await c.id(to));
  for (;;) {
    const keys = (await src.callBuffer('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as Buffer[];
    if (keys.length === 0) break;
    await src.call('MIGRATE', '127.0.0.1', String(c.ports[to]), '', '0', '5000', 'KEYS', ...keys);
  }
}

/** SETSLOT NODE on every node: the slot is `to`'s. */
export async function endMove(c: Cluster, slot: number, from: number, to: number): Promise<void> {
  const toId = await c.id(to);
  await (c.admin[to] as Redis).call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
  await (c.admin[from] as Redis).call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
  for (const [i, a] of c.admin.entries()) if (i !== from && i !== to) await a.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
}

/**
 * A 3-master cluster behind mcmux with a memcached; `add <lock>` STORED on both, the lock on
 * master 0 outside slot 0; then the cold detector stopped (the test makes its own looks) and slot
 * 0, with master 0's marker in it, moved to master 1. `own`: the prefix of master 0's marker keys.
 */
export async function lockedThenSlot0Moved(t: TestContext): Promise<{ cluster: Cluster; app: App; u: HealthyUpstream; w: Wire; own: string; lock: string }> {
  const cluster = await startCluster(t);
  const { app, u } = await behindMcmux(t, cluster);
  const w = await client(t, app);
  const own = `${app.coldDetector.key}.127.0.0.1:${cluster.ports[0]}.`;
  const lock = keyWhere('lock.s', (s) => s > 0 && homeOf(s) === 0);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced, master 0 holds its marker', async () => !u.fenced && (await holdsKeyStarting(cluster, 0, own)), 20_000);
  if ((await w.ask(`add ${lock} 0 0 6\r\nholder\r\n`)) !== 'STORED\r\n') throw new Error('the lock was not taken');
  await eventually('the lock reached the memcached', async () => (await w.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  app.coldDetector.stop();
  await moveSlot(cluster, 0, 0, 1);
  return { cluster, app, u, w, own, lock };
}

/**
 * A cluster whose master `victim` has a replica (node 3), behind mcmux with a memcached (timeout
 * 1000 ms, lock-fence `lockFence`); a session written on the victim, the victim's marker there and
 * replicated (WAIT). `lock` and `session` are keys of the victim's, `slot` the lock's.
 */
export async function replicatedVictim(t: TestContext, victim: number, lockFence: number, opts: { nodeTimeout?: number; extra?: string[] } = {}): Promise<{ cluster: Cluster; app: App; u: HealthyUpstream; w: Wire; key: string; lock: string; session: string; slot: number }> {
  const cluster = await startCluster(t, { replicaFor: [victim], nodeTimeout: opts.nodeTimeout ?? 5000, extra: ['--cluster-replica-validity-factor', '0', ...(opts.extra ?? [])] });
  const { app, u } = await behindMcmux(t, cluster, { lockFence, timeout: 1000 });
  const key = app.coldDetector.key;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const session = keyWhere('sess.', (s) => homeOf(s) === victim);
  const w = await client(t, app);
  await eventually('the cluster answers through mcmux', async () => (await w.ask(`set ${session} 0 0 4\r\ndata\r\n`)) === 'STORED\r\n', 20_000);
  await eventually('unfenced, the victim holds its marker', async () => !u.fenced && (await holdsKeyStarting(cluster, victim, `${key}.127.0.0.1:${cluster.ports[victim]}.`)), 20_000);
  await untilReplicating(cluster, victim);
  const acked = String(await (cluster.admin[victim] as Redis).call('WAIT', '1', '5000'));
  if (acked !== '1') throw new Error(`WAIT: ${acked} replicas acknowledged`);
  return { cluster, app, u, w, key, lock, session, slot: keySlot(b(lock)) };
}

/** The ioredis Cluster inside the driver of `u` (a test holds its slots refresh still through it). */
export function ioCluster(u: HealthyUpstream): IoCluster {
  return (u.inner as unknown as { client: IoCluster }).client;
}

/** A cluster (startCluster `opts`) and the driver on it (`timeout` its option), answering; closed after the test. Undefined when the servers are missing. */
export async function clusterDriver(t: TestContext, timeout: string, opts: Parameters<typeof startCluster>[1] = {}): Promise<{ cluster: Cluster; up: Upstream } | undefined> {
  if (!haveServers(t)) return undefined;
  const cluster = await startCluster(t, opts);
  const up = open(cluster.url, { timeout });
  t.after(() => up.close());
  await retrying(() => up.probe());
  return { cluster, up };
}

/**
 * A cluster, a memcached and a first mcmux process on them (state-dir `dir`, lock-fence 60 s):
 * a marker on every master, `add <lock>` STORED on both, the lock on a master (`victim`) other
 * than the one the plain marker key lands on; then that process closed.
 */
export async function lockedByAnEarlierProcess(t: TestContext): Promise<{ cluster: Cluster; dir: string; upstreams: string[]; key: string; victim: number; lock: string }> {
  const cluster = await startCluster(t);
  const [mc] = await startMemcacheds(t, 1);
  const dir = stateDir(t);
  const upstreams = [`${cluster.url}?timeout=2000`, mc?.url as string];
  const app1 = await inProcessMcmux({ 'state-dir': dir, 'lock-fence': 60_000 }, upstreams);
  const key = app1.coldDetector.key;
  const victim = (homeOf(keySlot(b(key))) + 1) % 3;
  const lock = keyWhere('lock.s', (s) => homeOf(s) === victim);
  const w1 = await client(t, app1);
  await eventually('the cluster answers through mcmux', async () => (await w1.ask(`set warm 0 0 1\r\n1\r\n`)) === 'STORED\r\n', 20_000);
  await untilMarkedEverywhere(cluster, key);
  if ((await w1.ask(`add ${lock} 0 0 6\r\nholder\r\n`)) !== 'STORED\r\n') throw new Error('the lock was not taken');
  await eventually('the lock reached the memcached', async () => (await w1.ask(`get ${lock}\r\n`, /END\r\n$/)).includes('holder'));
  w1.close();
  await app1.close();
  return { cluster, dir, upstreams, key, victim, lock };
}

/** Until every node listed in `ask` reports cluster_state:ok. */
export async function untilOk(c: Cluster, ask: number[]): Promise<void> {
  await eventually('the cluster is ok', async () => {
    for (const i of ask) {
      try {
        if (!String(await (c.admin[i] as Redis).call('CLUSTER', 'INFO')).includes('cluster_state:ok')) return false;
      } catch {
        return false;
      }
    }
    return true;
  }, 30_000);
}

/** Until each of the three masters holds a key of this host's marker (`key` its name). */
export async function untilMarkedEverywhere(c: Cluster, key: string): Promise<void> {
  await eventually('a marker on every master', async () => {
    for (const i of [0, 1, 2]) if (!(await holdsKeyStarting(c, i, `${key}.`))) return false;
    return true;
  }, 20_000);
}
