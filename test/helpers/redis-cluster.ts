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
import type { App } from '../../src/app';
import type { HealthyUpstream } from '../../src/router/health';
import { keySlot } from '../../src/upstream/redis';
import { createUpstream } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import { makeDir, removeDir, spawnRedis, stopProcess } from '../upstream/targets/redis';
import { b, codeOf, retrying } from './driver-calls';
import { inProcessMcmux } from './in-process';
import { eventually } from './poll';
import { freePort, startMemcacheds } from './servers';
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
