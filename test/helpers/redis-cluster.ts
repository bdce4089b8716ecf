/**
 * What the Redis Cluster reviews share (test/upstream/review-redis-cluster*.test.ts): the driver
 * and in-process mcmux around a private cluster, the cluster's handle, redis-cli, and key
 * placement by slot. Each review starts its cluster its own way.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { Redis } from 'ioredis';
import type { App } from '../../src/app';
import { keySlot } from '../../src/upstream/redis';
import { createUpstream } from '../../src/upstream/registry';
import type { Upstream } from '../../src/upstream/upstream';
import type { spawnRedis } from '../upstream/targets/redis';
import { b, codeOf } from './driver-calls';
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

