/**
 * Closed-loop load generator for the memcached text protocol: preload, idle round trips, and
 * the timed run with its CPU accounting.
 *
 *   runLoad ──► parts: the main thread, or N worker threads running this same file
 *                 └─ Group of Conns (connection.ts): C connections × P requests in flight
 *   main thread: warm-up ─► snapshot CPU (/proc/<pid>/stat, process.cpuUsage) ─► measure
 *                ─► stop ─► snapshot CPU ─► merge histograms and counters of every part
 *   (soak.ts instead takes a sample of every part's counters at each interval: startLoad, sample)
 *
 * Gets and sets are counted in histograms of their own, so a row can show reads and writes apart
 * (a proxy whose writes wait for a slow store answers gets at memcached speed but sets slower).
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

/** One command kind's share of a run: its own rate and latencies. */
export interface KindResult {
  ops: number;
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
}

/** Figures of a stretch of load: the whole run, or one soak interval. */
export interface LoadFigures {
  seconds: number;
  ops: number;
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
  get: KindResult;
  set: KindResult;
  /** Replies other than VALUE..END to a get or STORED to a set. */
  errors: number;
  /** Connections lost or refused, and reply streams that could not be parsed. */
  connErrors: number;
  /** Gets answered with END alone: after a preload, a sign of eviction or a proxy dropping data. */
  misses: number;
}

export interface LoadResult extends LoadFigures {
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

/**
 * Round trips with nothing else in flight: one connection, one request at a time; `count` gets,
 * then a quarter as many sets. The sets show what a write waits for: through mcmux, every store
 * (`write-wait all`) or the first copies (`write-wait copies`). Then, unless `pauseMs` is 0, a
 * quarter as many gets with a pause of `pauseMs` before each: after a pause every process on the
 * path has gone to sleep and its caches have cooled, which back-to-back round trips never show.
 */
export async function measureIdle(host: string, port: number, count: number, keys: number, valueSize: number, pauseMs = 0) {
  const gets = await idleRoundTrips(host, port, count, keys, valueSize, 0);
  const sets = await idleRoundTrips(host, port, Math.ceil(count / 4), keys, valueSize, 1);
  const paced = pauseMs > 0 ? await idleRoundTrips(host, port, Math.ceil(count / 4), keys, valueSize, 0, pauseMs) : undefined;
  return {
    p50Us: gets.getHist.quantile(0.5), p99Us: gets.getHist.quantile(0.99),
    setP50Us: sets.setHist.quantile(0.5), setP99Us: sets.setHist.quantile(0.99),
    pacedP50Us: paced ? paced.getHist.quantile(0.5) : null, pacedP99Us: paced ? paced.getHist.quantile(0.99) : null,
    errors: [gets, sets, paced].reduce((n, g) => n + (g ? g.errors + g.connErrors : 0), 0),
  };
}

/** `count` round trips, one at a time, gets or sets; `pauseMs` before each but the first. */
export async function idleRoundTrips(host: string, port: number, count: number, keys: number, valueSize: number, set: 0 | 1, pauseMs = 0): Promise<Group> {
  let left = count;
  const g = new Group(Workload.get(keys, valueSize), () => (left-- > 0 ? ((Math.random() * keys) | 0) * 2 + set : -1));
  g.pauseMs = pauseMs;
  await openGroup(host, port, 1, 1, g);
  g.measuring = true;
  g.conns[0]!.start();
  const limitMs = 30_000 + count * pauseMs;
  const settled = await g.settle(limitMs);
  await g.stop();
  if (!settled) throw new Error(`idle round trips: ${count} ${set ? 'sets' : 'gets'} not answered in ${limitMs / 1000} s`);
  return g;
}

interface Part {
  go(): void;
  measure(): void;
  /** Counters since the last sample (or since measure()), reset for the next one. */
  sample(): Promise<PartResult>;
  stop(): Promise<PartResult>;
  kill(): void;
}

async function localPart(o: LoadOptions, connections: number): Promise<Part> {
  const g = new Group(Workload.get(o.keys, o.valueSize), mixSource(o.gets, o.sets, o.keys));
  await openGroup(o.host, o.port, connections, o.pipeline, g);
  return {
    go: () => g.conns.forEach((c) => c.start()),
    measure: () => (g.measuring = true),
    sample: () => Promise.resolve(g.take()),
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
  let onSample: ((r: PartResult) => void) | null = null;
  return new Promise((resolve, reject) => {
    w.on('error', reject);
    w.on('message', (m: { type: string; error?: string; result?: PartResult }) => {
      if (m.type === 'ready') {
        resolve({
          go: () => w.postMessage('go'),
          measure: () => w.postMessage('measure'),
          sample: () => {
            w.postMessage('sample');
            return new Promise((res) => (onSample = res));
          },
          stop: () => {
            w.postMessage('stop');
            return new Promise((res) => (onResult = res));
          },
          kill: () => void w.terminate(),
        });
      } else if (m.type === 'failed') reject(new Error(m.error));
      else if (m.type === 'sample' && m.result && onSample) onSample(m.result);
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
        else if (m === 'sample') void part.sample().then((result) => port.postMessage({ type: 'sample', result }));
        else if (m === 'stop') void part.stop().then((result) => port.postMessage({ type: 'result', result }));
      });
      port.postMessage({ type: 'ready' });
    },
    (err: Error) => port.postMessage({ type: 'failed', error: err.message }),
  );
}

/** A load running on every part: start measuring, take interval samples, stop. */
export interface Running {
  measure(): void;
  /** Each part's counters since the last sample (or measure()); they restart from zero. */
  sample(): Promise<PartResult[]>;
  /** Stops issuing, drains (bounded), closes: each part's counters since the last sample. */
  stop(): Promise<PartResult[]>;
  /** Closes every connection at once (after an error). */
  kill(): void;
}

/** Opens the connections (over `threads` workers, or on this thread) and starts the load. */
export async function startLoad(o: LoadOptions): Promise<Running> {
  const shares = o.threads > 0 ? split(o.connections, o.threads) : [o.connections];
  const parts: Part[] = [];
  const made = await Promise.allSettled(shares.map((n) => (o.threads > 0 ? workerPart(o, n) : localPart(o, n))));
  for (const m of made) if (m.status === 'fulfilled') parts.push(m.value);
  const kill = () => parts.forEach((p) => p.kill());
  const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
  if (failed) {
    kill();
    throw failed.reason;
  }
  for (const p of parts) p.go();
  return {
    measure: () => parts.forEach((p) => p.measure()),
    sample: () => withTimeout(Promise.all(parts.map((p) => p.sample())), 5000, 'sample'),
    stop: () => withTimeout(Promise.all(parts.map((p) => p.stop())), DRAIN_TIMEOUT_MS + 2000, 'drain'),
    kill,
  };
}

/** Merges the parts' counters over a stretch of `seconds` into rates and quantiles. */
export function figures(results: PartResult[], seconds: number): LoadFigures {
  const all = new Histogram();
  const gets = new Histogram();
  const sets = new Histogram();
  const sum = { getOps: 0, setOps: 0, errors: 0, connErrors: 0, misses: 0 };
  for (const r of results) {
    gets.add(r.getCounts);
    sets.add(r.setCounts);
    sum.getOps += r.getOps;
    sum.setOps += r.setOps;
    sum.errors += r.errors;
    sum.connErrors += r.connErrors;
    sum.misses += r.misses;
  }
  all.add(gets.counts);
  all.add(sets.counts);
  const kind = (h: Histogram, ops: number): KindResult => ({
    ops, opsPerSec: ops / seconds, p50Us: h.quantile(0.5), p99Us: h.quantile(0.99),
  });
  const ops = sum.getOps + sum.setOps;
  return {
    seconds, ops, opsPerSec: ops / seconds, p50Us: all.quantile(0.5), p99Us: all.quantile(0.99),
    get: kind(gets, sum.getOps), set: kind(sets, sum.setOps),
    errors: sum.errors, connErrors: sum.connErrors, misses: sum.misses,
  };
}

/** Connects, warms up, measures for `durationMs`, drains, and reports. Bounded in time. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const load = await startLoad(o);
  try {
    await sleep(o.warmupMs);
    const pid0 = o.pids.map(processCpuSeconds);
    const self0 = selfCpuSeconds();
    const t0 = performance.now();
    load.measure();
    await sleep(o.durationMs);
    const stopped = load.stop();
    const seconds = (performance.now() - t0) / 1000;
    const self1 = selfCpuSeconds();
    const pid1 = o.pids.map(processCpuSeconds);
    const results = await stopped;
    return { ...figures(results, seconds), loadgenCpu: self1 - self0, pidCpu: pid1.map((c, i) => c - pid0[i]!) };
  } finally {
    load.kill();
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
