/**
 * Closed-loop load generator for the memcached text protocol: preload, idle round trips, and
 * the timed run with its CPU accounting.
 *
 *   runLoad ──► parts: the main thread, or N worker threads running this same file
 *                 └─ Group of Conns (connection.ts): C connections × P requests in flight
 *   main thread: warm-up ─► snapshot CPU (/proc/<pid>/stat, process.cpuUsage) ─► measure
 *                ─► stop ─► snapshot CPU ─► merge histograms and counters of every part
 *
 * Threads, measured on the 2-core bench machine against memcached -t 1 (50 connections, 5 s runs,
 * median of 3, ops/s): pipeline 1: main thread 96k, 1 worker 99k, 2 workers 81k;
 * pipeline 16: main thread 163k, 1 worker 143k, 2 workers 127k. The generator needs about one
 * core and the target the other; a second generator thread only adds contention for them.
 * So `threads` defaults to 0 (everything on the main thread); run.ts --threads N changes it.
 */

import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { DRAIN_TIMEOUT_MS, Group, openGroup, type PartResult, type Source } from './connection';
import { processCpuSeconds, selfCpuSeconds } from './cpu';
import { Histogram } from './histogram';
import { Workload } from './workload';

export interface LoadOptions {
  host: string;
  port: number;
  /** Client connections. Default 50. */
  connections: number;
  /** Requests kept in flight per connection. Default 1. */
  pipeline: number;
  /** get:set mix, as counts in a cycle. Default 10:1. */
  gets: number;
  sets: number;
  /** Bytes per value. Default 1000. */
  valueSize: number;
  /** Keys `bench:0` .. `bench:<keys-1>`. Default 100000. */
  keys: number;
  /** Measured time, after the warm-up. Default 10000 / 2000 ms. */
  durationMs: number;
  warmupMs: number;
  /** Worker threads to spread connections over; 0 runs them on the main thread. Default 0. */
  threads: number;
  /** Processes whose CPU time to measure over the window (the target first). */
  pids: number[];
}

export interface LoadResult {
  seconds: number;
  ops: number;
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
  /** Replies other than VALUE..END to a get or STORED to a set. */
  errors: number;
  /** Connections lost or refused, and reply streams that could not be parsed. */
  connErrors: number;
  /** Gets answered with END alone: after a preload, a sign of eviction or a proxy dropping data. */
  misses: number;
  /** CPU seconds over the window: this process (all threads), and each of `pids` (NaN if unreadable). */
  loadgenCpu: number;
  pidCpu: number[];
}

/** The mix source: `gets` gets then `sets` sets per cycle, keys uniformly at random. */
function mixSource(gets: number, sets: number, keys: number): Source {
  const cycle = gets + sets;
  let n = 0;
  return () => {
    const set = n >= gets ? 1 : 0;
    n = n + 1 === cycle ? 0 : n + 1;
    return ((Math.random() * keys) | 0) * 2 + set;
  };
}

/**
 * Stores every key once (pipelined sets over a few connections) so that measured gets hit.
 * Returns the number of sets not answered STORED.
 */
export async function preload(host: string, port: number, keys: number, valueSize: number): Promise<number> {
  let k = 0;
  const g = new Group(Workload.get(keys, valueSize), () => (k < keys ? k++ * 2 + 1 : -1));
  await openGroup(host, port, 4, 64, g);
  g.measuring = true;
  for (const c of g.conns) c.start();
  const settled = await g.settle(10_000 + keys);
  await g.stop();
  if (!settled) throw new Error(`preload: ${keys} sets not answered in ${10_000 + keys} ms`);
  return g.errors + (keys - g.ops);
}

/** Round trip with nothing else in flight: one connection, one get at a time. */
export async function measureIdle(host: string, port: number, count: number, keys: number, valueSize: number) {
  let left = count;
  const g = new Group(Workload.get(keys, valueSize), () => (left-- > 0 ? ((Math.random() * keys) | 0) * 2 : -1));
  await openGroup(host, port, 1, 1, g);
  g.measuring = true;
  g.conns[0]!.start();
  const settled = await g.settle(30_000);
  await g.stop();
  if (!settled) throw new Error(`idle round trips: ${count} gets not answered in 30 s`);
  return { p50Us: g.hist.quantile(0.5), p99Us: g.hist.quantile(0.99), errors: g.errors + g.connErrors };
}

interface Part {
  go(): void;
  measure(): void;
  stop(): Promise<PartResult>;
  kill(): void;
}

async function localPart(o: LoadOptions, connections: number): Promise<Part> {
  const g = new Group(Workload.get(o.keys, o.valueSize), mixSource(o.gets, o.sets, o.keys));
  await openGroup(o.host, o.port, connections, o.pipeline, g);
  return {
    go: () => g.conns.forEach((c) => c.start()),
    measure: () => (g.measuring = true),
    stop: async () => {
      await g.stop();
      return g.result();
    },
    kill: () => g.conns.forEach((c) => c.socket.destroy()),
  };
}

interface WorkerInit {
  role: 'mcmux-bench-loadgen';
  options: LoadOptions;
  connections: number;
}

function workerPart(o: LoadOptions, connections: number): Promise<Part> {
  const init: WorkerInit = { role: 'mcmux-bench-loadgen', options: o, connections };
  const w = new Worker(__filename, { workerData: init });
  let onResult: ((r: PartResult) => void) | null = null;
  return new Promise((resolve, reject) => {
    w.on('error', reject);
    w.on('message', (m: { type: string; error?: string; result?: PartResult }) => {
      if (m.type === 'ready') {
        resolve({
          go: () => w.postMessage('go'),
          measure: () => w.postMessage('measure'),
          stop: () => {
            w.postMessage('stop');
            return new Promise((res) => (onResult = res));
          },
          kill: () => void w.terminate(),
        });
      } else if (m.type === 'failed') reject(new Error(m.error));
      else if (m.type === 'result' && m.result && onResult) {
        onResult(m.result);
        void w.terminate();
      }
    });
  });
}

function runWorker(init: WorkerInit): void {
  const port = parentPort!;
  localPart(init.options, init.connections).then(
    (part) => {
      port.on('message', (m: string) => {
        if (m === 'go') part.go();
        else if (m === 'measure') part.measure();
        else if (m === 'stop') void part.stop().then((result) => port.postMessage({ type: 'result', result }));
      });
      port.postMessage({ type: 'ready' });
    },
    (err: Error) => port.postMessage({ type: 'failed', error: err.message }),
  );
}

/** Connects, warms up, measures for `durationMs`, drains, and reports. Bounded in time. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const shares = o.threads > 0 ? split(o.connections, o.threads) : [o.connections];
  const parts: Part[] = [];
  try {
    const made = await Promise.allSettled(shares.map((n) => (o.threads > 0 ? workerPart(o, n) : localPart(o, n))));
    for (const m of made) if (m.status === 'fulfilled') parts.push(m.value);
    const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
    if (failed) throw failed.reason;

    for (const p of parts) p.go();
    await sleep(o.warmupMs);
    const pid0 = o.pids.map(processCpuSeconds);
    const self0 = selfCpuSeconds();
    const t0 = performance.now();
    for (const p of parts) p.measure();
    await sleep(o.durationMs);
    const stopped = parts.map((p) => p.stop());
    const seconds = (performance.now() - t0) / 1000;
    const self1 = selfCpuSeconds();
    const pid1 = o.pids.map(processCpuSeconds);
    const results = await withTimeout(Promise.all(stopped), DRAIN_TIMEOUT_MS + 2000, 'drain');

    const hist = new Histogram();
    const sum = { ops: 0, errors: 0, connErrors: 0, misses: 0 };
    for (const r of results) {
      hist.add(r.counts);
      sum.ops += r.ops;
      sum.errors += r.errors;
      sum.connErrors += r.connErrors;
      sum.misses += r.misses;
    }
    return {
      seconds,
      ...sum,
      opsPerSec: sum.ops / seconds,
      p50Us: hist.quantile(0.5),
      p99Us: hist.quantile(0.99),
      loadgenCpu: self1 - self0,
      pidCpu: pid1.map((c, i) => c - pid0[i]!),
    };
  } finally {
    for (const p of parts) p.kill();
  }
}

function split(total: number, ways: number): number[] {
  return Array.from({ length: ways }, (_, i) => Math.floor(total / ways) + (i < total % ways ? 1 : 0)).filter((n) => n > 0);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done in ${ms} ms`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

if (!isMainThread && (workerData as WorkerInit | null)?.role === 'mcmux-bench-loadgen') {
  runWorker(workerData as WorkerInit);
}
