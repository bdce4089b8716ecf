/**
 * The targets of a bench run: memcached direct, twemproxy, and mcmux over one, two or three
 * upstreams. Everything listens on 127.0.0.1, on ports found free just before; every child is
 * registered in one `Children` (processes.ts) so that the runner can kill them all on exit,
 * error or signal.
 *
 *   startTarget(kind) ──► its stores: memcached × 1..2, or memcached + redis + mariadb (stores.ts)
 *                     ──► proxy (twemproxy / mcmux), or none for direct
 *                     ──► waitReady: `version\r\n` answered with `VERSION ...`
 */

import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { NODE_FLAGS } from '../src/node-flags';
import { type Children, HOST, type Proc, Unavailable, freePort, which } from './processes';
import { BASELINE } from './report';
import { type Store, startMariadb, startRedis } from './stores';


export const TARGETS = ['direct', 'twemproxy', 'mcmux1', 'mcmux2', 'mcmux3', 'mcmux3-copies'] as const;
export type TargetKind = (typeof TARGETS)[number];

/** What each mcmux target runs over, in read-priority order, and its extra flags. */
const MCMUX: Partial<Record<TargetKind, { memcached: number; durable: boolean; flags: string[] }>> = {
  mcmux1: { memcached: 1, durable: false, flags: [] },
  mcmux2: { memcached: 2, durable: false, flags: [] },
  // memcached first, so that reads are served by it; every write also goes to Redis and MariaDB.
  mcmux3: { memcached: 1, durable: true, flags: [] },
  // The same, answering a write once one upstream (memcached, the fastest) has stored it.
  'mcmux3-copies': { memcached: 1, durable: true, flags: ['--write-wait', 'copies'] },
};

const READY_TIMEOUT_MS = { memcached: 5000, proxy: 15000 } as const;

export interface Target {
  kind: TargetKind;
  /** What its rows are called: the kind, or `<kind>@base` for the --baseline build's twin. */
  name: string;
  host: string;
  port: number;
  /** The process the clients talk to (memcached itself for `direct`). */
  pid: number;
  /** The stores behind a proxy (memcached, redis, mariadb); empty for `direct`. */
  backendPids: number[];
  /** Processes to stop when this target is done with. */
  procs: Proc[];
}

/** One `version` round trip; resolves true if answered `VERSION ...`. */
function probe(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: HOST, port });
    let got = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    s.on('connect', () => s.write('version\r\n'));
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\n')) done(got.startsWith('VERSION '));
    });
    s.on('error', () => done(false));
  });
}

/** Polls until `port` answers `version`; fails early if the process exits. */
export async function waitReady(proc: Proc, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exited) throw new Error(`${proc.name} exited: ${proc.output.slice(-3).join(' | ') || 'no output'}`);
    if (await probe(port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${proc.name} did not answer 'version' on ${HOST}:${port} within ${timeoutMs} ms`);
}

export async function startMemcached(children: Children): Promise<{ proc: Proc; port: number }> {
  const port = await freePort();
  const args = ['-l', HOST, '-p', String(port), '-U', '0', '-m', '1024', '-t', '1'];
  // memcached refuses to run as root unless told which user to become.
  if (process.getuid?.() === 0) args.push('-u', 'nobody');
  const proc = children.spawn(`memcached:${port}`, 'memcached', args);
  await waitReady(proc, port, READY_TIMEOUT_MS.memcached);
  return { proc, port };
}

function twemproxyConfig(listen: number, backend: number): string {
  return [
    'bench:',
    `  listen: ${HOST}:${listen}`,
    '  hash: fnv1a_64',
    '  distribution: ketama',
    '  timeout: 2000',
    '  auto_eject_hosts: false',
    '  servers:',
    `   - ${HOST}:${backend}:1`,
    '',
  ].join('\n');
}

export function isMcmux(kind: TargetKind): boolean {
  return MCMUX[kind] !== undefined;
}

/** A target's row name: its kind, or `<kind>@base` when it runs from the --baseline build. */
export function targetName(kind: TargetKind, baselineBin: string | undefined): string {
  return baselineBin === undefined ? kind : `${kind}${BASELINE}`;
}

/**
 * Starts a target and what it needs behind it; stops what it started if it fails.
 * Throws `Unavailable` when a program is absent, another Error when it fails to start.
 * `baselineBin`: start the mcmux at that path instead, as the twin `<kind>@base`.
 */
export async function startTarget(kind: TargetKind, children: Children, repo: string, tmp: string, baselineBin?: string): Promise<Target> {
  if (kind === 'twemproxy' && !which('nutcracker')) throw new Unavailable('not installed (nutcracker not on PATH)');
  // MCMUX_BENCH_BIN: another mcmux to measure (a build of an older commit, for an A/B run).
  const mcmux = baselineBin ?? process.env.MCMUX_BENCH_BIN ?? join(repo, 'bin', 'mcmux');
  const name = targetName(kind, baselineBin);
  const plan = MCMUX[kind];
  if (plan && !existsSync(mcmux)) throw new Error(`failed to start: ${mcmux} not found`);

  const procs: Proc[] = [];
  try {
    const mcs: { proc: Proc; port: number }[] = [];
    for (let i = 0; i < (plan?.memcached ?? 1); i++) {
      const mc = await startMemcached(children);
      procs.push(mc.proc);
      mcs.push(mc);
    }
    const first = mcs[0]!;
    if (kind === 'direct') {
      return { kind, name, host: HOST, port: first.port, pid: first.proc.child.pid!, backendPids: [], procs };
    }
    const durable: Store[] = [];
    if (plan?.durable) {
      for (const start of [startRedis, startMariadb]) {
        const store = await start(children, tmp);
        procs.push(store.proc);
        durable.push(store);
      }
    }

    const port = await freePort();
    let proc: Proc;
    if (kind === 'twemproxy') {
      const conf = join(tmp, `nutcracker-${port}.yml`);
      writeFileSync(conf, twemproxyConfig(port, first.port));
      const stats = await freePort();
      const args = ['-c', conf, '-s', String(stats), '-a', HOST, '-o', join(tmp, `nutcracker-${port}.log`)];
      args.push('-p', join(tmp, `nutcracker-${port}.pid`), '-v', '4');
      proc = children.spawn('nutcracker', 'nutcracker', args);
    } else {
      // A state dir of its own: mcmux keeps its repair journal there, and targets run side by side.
      const state = join(tmp, `mcmux-${port}`);
      mkdirSync(state);
      const args = [mcmux, '--listen', `${HOST}:${port}`, '--state-dir', state];
      for (const mc of mcs) args.push('--upstream', `memcached://${HOST}:${mc.port}`);
      for (const store of durable) args.push('--upstream', store.url);
      args.push(...(plan?.flags ?? []), '--log-level', 'warn');
      // MCMUX_BENCH_NODE_ARGS: node flags for mcmux only, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
      const nodeArgs = (process.env.MCMUX_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
      // As deployed: with the node flags the unit and bin/mcmux pass (src/node-flags.ts).
      proc = children.spawn(name, process.execPath, [...NODE_FLAGS, ...nodeArgs, ...args]);
    }
    procs.push(proc);
    try {
      await waitReady(proc, port, READY_TIMEOUT_MS.proxy);
    } catch (err) {
      throw new Error(`failed to start: ${(err as Error).message}`);
    }
    const backendPids = [...mcs, ...durable].map((b) => b.proc.child.pid!);
    return { kind, name, host: HOST, port, pid: proc.child.pid!, backendPids, procs };
  } catch (err) {
    await Promise.all(procs.map((p) => children.stop(p)));
    throw err;
  }
}

export async function stopTarget(t: Target, children: Children): Promise<void> {
  await Promise.all(t.procs.map((p) => children.stop(p)));
}
