/**
 * `--soak S`: full load on mcmux with one memcached upstream, and nothing else, for S seconds,
 * sampled every 10 s, to see whether memory grows or throughput decays over time.
 *
 *   start mcmux1 (its memcached behind it) ─► preload ─► load for S s, no warm-up:
 *     every 10 s: VmRSS of mcmux, ops/s and p99 of the interval, mcmux CPU ─► one line, one sample
 *   ─► stop ─► verdict: mean RSS of the last third of the samples against the first third
 *   ─► bench/results/soak.json (beside --json)
 *
 * The first samples include the start (V8 compiling, heap growing to its working size): that is
 * what the first third is there to absorb. A leak shows as growth that continues into the last
 * third; a heap that reached its size early does not.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { processCpuSeconds } from './cpu';
import { rssMiB } from './idle-connections';
import { type LoadOptions, figures, preload, sleep, startLoad } from './loadgen';
import type { Children } from './processes';
import { startTarget, stopTarget } from './targets';

export const SOAK_INTERVAL_S = 10;
/** Growth of mean RSS, last third over first third, above which the verdict says "grows". */
const GROWTH_LIMIT = 0.1;

/** The load's shape as for a comparison run, and how long to keep it up. */
export type SoakOptions = Pick<LoadOptions, 'connections' | 'pipeline' | 'gets' | 'sets' | 'valueSize' | 'keys' | 'threads'> & {
  seconds: number;
};

export interface SoakSample {
  /** Seconds since the load started, at the end of the interval. */
  atS: number;
  rssMiB: number;
  opsPerSec: number;
  p50Us: number;
  p99Us: number;
  errors: number;
  /** mcmux's CPU over the interval, in cores (1 = one core busy all the time). */
  cpuCores: number;
  /** mcmux's CPU µs per operation: flat when a drop in ops/s comes from other work on the machine. */
  cpuUsPerOp: number;
}

export interface SoakVerdict {
  firstThirdRssMiB: number;
  lastThirdRssMiB: number;
  /** (last - first) / first */
  growth: number;
  grows: boolean;
  firstThirdOps: number;
  lastThirdOps: number;
  firstThirdCpuUsPerOp: number;
  lastThirdCpuUsPerOp: number;
  line: string;
}

export interface SoakResult {
  settings: SoakOptions & { intervalS: number };
  samples: SoakSample[];
  verdict: SoakVerdict;
}

export async function soak(o: SoakOptions, children: Children, repo: string, tmp: string, log: (m: string) => void): Promise<SoakResult> {
  const target = await startTarget('mcmux1', children, repo, tmp);
  try {
    log(`soak: mcmux1 on ${target.host}:${target.port} (pid ${target.pid}); preloading ${o.keys} keys`);
    await preload(target.host, target.port, o.keys, o.valueSize);
    const load = await startLoad({
      host: target.host, port: target.port, connections: o.connections, pipeline: o.pipeline,
      gets: o.gets, sets: o.sets, valueSize: o.valueSize, keys: o.keys,
      durationMs: o.seconds * 1000, warmupMs: 0, threads: o.threads, pids: [target.pid],
    });
    const samples: SoakSample[] = [];
    try {
      load.measure();
      const t0 = performance.now();
      let last = t0;
      let cpu0 = processCpuSeconds(target.pid);
      for (let at = Math.min(SOAK_INTERVAL_S, o.seconds); ; at = Math.min(at + SOAK_INTERVAL_S, o.seconds)) {
        await sleep(Math.max(0, t0 + at * 1000 - performance.now()));
        const end = at >= o.seconds;
        const results = await (end ? load.stop() : load.sample());
        const now = performance.now();
        const cpu1 = processCpuSeconds(target.pid);
        const f = figures(results, (now - last) / 1000);
        const sample: SoakSample = {
          atS: Math.round((now - t0) / 100) / 10, rssMiB: rssMiB(target.pid), opsPerSec: f.opsPerSec,
          p50Us: f.p50Us, p99Us: f.p99Us, errors: f.errors + f.connErrors, cpuCores: (cpu1 - cpu0) / f.seconds,
          cpuUsPerOp: f.ops > 0 ? ((cpu1 - cpu0) / f.ops) * 1e6 : NaN,
        };
        samples.push(sample);
        log(`soak: ${sample.atS.toFixed(0).padStart(5)} s  RSS ${sample.rssMiB.toFixed(1)} MiB  ${Math.round(sample.opsPerSec)} ops/s  ` +
          `p99 ${sample.p99Us} µs  mcmux CPU ${sample.cpuCores.toFixed(2)} cores, ${sample.cpuUsPerOp.toFixed(1)} µs/op  errors ${sample.errors}`);
        last = now;
        cpu0 = cpu1;
        if (end) break;
      }
    } finally {
      load.kill();
    }
    return { settings: { ...o, intervalS: SOAK_INTERVAL_S }, samples, verdict: verdict(samples) };
  } finally {
    await stopTarget(target, children);
  }
}

function verdict(samples: SoakSample[]): SoakVerdict {
  const third = Math.max(1, Math.floor(samples.length / 3));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const first = samples.slice(0, third);
  const lastPart = samples.slice(-third);
  const firstRss = mean(first.map((s) => s.rssMiB));
  const lastRss = mean(lastPart.map((s) => s.rssMiB));
  const growth = (lastRss - firstRss) / firstRss;
  const grows = growth > GROWTH_LIMIT;
  const firstOps = mean(first.map((s) => s.opsPerSec));
  const lastOps = mean(lastPart.map((s) => s.opsPerSec));
  const firstCpu = mean(first.map((s) => s.cpuUsPerOp));
  const lastCpu = mean(lastPart.map((s) => s.cpuUsPerOp));
  const line = `soak verdict: RSS ${grows ? 'GROWS' : 'stable'}: mean ${firstRss.toFixed(1)} MiB over the first ${third} samples, ` +
    `${lastRss.toFixed(1)} MiB over the last ${third} (${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)} %, limit +${GROWTH_LIMIT * 100} %); ` +
    `ops/s ${Math.round(firstOps)} then ${Math.round(lastOps)}; mcmux CPU ${firstCpu.toFixed(1)} then ${lastCpu.toFixed(1)} µs/op`;
  return {
    firstThirdRssMiB: firstRss, lastThirdRssMiB: lastRss, growth, grows, firstThirdOps: firstOps, lastThirdOps: lastOps,
    firstThirdCpuUsPerOp: firstCpu, lastThirdCpuUsPerOp: lastCpu, line,
  };
}

/** soak.json: when, on what, with which command, then the result. */
export function writeSoak(path: string, head: { date: string; machine: Record<string, string | number>; command: string }, result: SoakResult): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify({ ...head, ...result }, null, 2) + '\n');
}
