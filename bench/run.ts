/**
 * `npm run bench`: memcached direct vs twemproxy vs mcmux (one and two upstreams), each with and
 * without pipelining, measured by our own load generator (bench/loadgen.ts).
 *
 *   for each target: start private processes on free 127.0.0.1 ports ─► wait for `version`
 *     ─► preload every key
 *   --repeat rounds × each target × each pipeline depth: idle round trips, then the loaded run
 *   stop every process; table on stdout, JSON + SVG in bench/results/ (or beside --json PATH)
 *
 * Every child is killed on exit, on error and on SIGINT/SIGTERM; a watchdog bounds the whole run.
 */

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { measureIdle, preload, runLoad, withTimeout, type LoadResult } from './loadgen';
import { addRatios, emptyRow, formatTable, writeReport, type Report, type Row } from './report';
import { Children, startTarget, stopTarget, TARGETS, Unavailable, type Target, type TargetKind } from './targets';

const REPO = resolve(__dirname, '..', '..'); // dist/bench/run.js -> repo root

interface Settings {
  durationS: number;
  warmupS: number;
  connections: number;
  pipelines: number[];
  valueSize: number;
  gets: number;
  sets: number;
  keys: number;
  targets: TargetKind[];
  threads: number;
  repeat: number;
  idleGets: number;
  quick: boolean;
  json: string;
}

const USAGE = `usage: node dist/bench/run.js [options]
  --duration S        measured seconds per run (default 10; --quick: 2)
  --warmup S          warm-up seconds before each run (default 2; --quick: 0.5)
  --connections N     client connections (default 50)
  --pipeline N        requests in flight per connection; replaces the default pair 1 and 16
  --value-size B      bytes per value (default 1000)
  --ratio GET:SET     request mix (default 10:1)
  --keys N            key space bench:0..N-1, preloaded before measuring (default 100000; --quick: 10000)
  --targets LIST      any of ${TARGETS.join(',')} (default all)
  --threads N         load generator worker threads, 0 = main thread (default 0)
  --repeat N          rounds over all targets; each row keeps its median by ops/s (default 1)
  --quick             short runs, for a smoke test
  --json PATH         where to write the JSON (default bench/results/latest.json); SVG beside it`;

function parseArgs(argv: string[]): Settings {
  const given = new Map<string, string>();
  let quick = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('--') && i + 1 < argv.length) given.set(a.slice(2), argv[++i]!);
    else throw new Error(`unknown or incomplete option '${a}'\n${USAGE}`);
  }
  const known = ['duration', 'warmup', 'connections', 'pipeline', 'value-size', 'ratio', 'keys', 'targets', 'threads', 'repeat', 'json'];
  for (const k of given.keys()) if (!known.includes(k)) throw new Error(`unknown option '--${k}'\n${USAGE}`);
  const num = (k: string, dflt: number, min: number) => {
    const v = given.has(k) ? Number(given.get(k)) : dflt;
    if (!Number.isFinite(v) || v < min) throw new Error(`--${k} must be a number >= ${min}, got '${given.get(k)}'`);
    return v;
  };
  const ratio = (given.get('ratio') ?? '10:1').split(':').map(Number);
  const [gets, sets] = [ratio[0] ?? NaN, ratio[1] ?? NaN];
  if (ratio.length !== 2 || !Number.isInteger(gets) || !Number.isInteger(sets) || gets < 0 || sets < 0 || gets + sets === 0) {
    throw new Error(`--ratio must be GET:SET in whole numbers, like 10:1; got '${given.get('ratio')}'`);
  }
  const targets = (given.get('targets') ?? TARGETS.join(',')).split(',').filter((t) => t !== '');
  for (const t of targets) if (!(TARGETS as readonly string[]).includes(t)) throw new Error(`--targets: unknown '${t}' (known: ${TARGETS.join(',')})`);
  return {
    durationS: num('duration', quick ? 2 : 10, 0.1),
    warmupS: num('warmup', quick ? 0.5 : 2, 0),
    connections: Math.floor(num('connections', 50, 1)),
    pipelines: given.has('pipeline') ? [Math.floor(num('pipeline', 1, 1))] : [1, 16],
    valueSize: Math.floor(num('value-size', 1000, 0)),
    gets,
    sets,
    keys: Math.floor(num('keys', quick ? 10_000 : 100_000, 1)),
    targets: targets as TargetKind[],
    threads: Math.floor(num('threads', 0, 0)),
    repeat: Math.floor(num('repeat', 1, 1)),
    idleGets: 2000,
    quick,
    json: resolve(given.get('json') ?? join(REPO, 'bench', 'results', 'latest.json')),
  };
}

function machine(): Record<string, string | number> {
  // First line a program prints about its version, on stdout or (nutcracker) stderr.
  const first = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
    if (r.error) return 'not installed';
    return `${r.stdout}${r.stderr}`.split('\n')[0]!.trim();
  };
  return {
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model ?? 'unknown',
    kernel: release(),
    node: process.version,
    memcached: first('memcached', ['-V']),
    twemproxy: first('nutcracker', ['-V']),
    // Other work on the machine skews every figure: the 1-minute load average says how much.
    loadavgAtEnd: Number(loadavg()[0]!.toFixed(2)),
  };
}

type Idle = Awaited<ReturnType<typeof measureIdle>>;
interface Run {
  load: LoadResult;
  idle: Idle;
}

/** One measurement: idle round trips, then the loaded run. */
async function measureOnce(s: Settings, t: Target, pipeline: number): Promise<Run> {
  const idle = await measureIdle(t.host, t.port, s.idleGets, s.keys, s.valueSize);
  const load = await runLoad({
    host: t.host, port: t.port, connections: s.connections, pipeline,
    gets: s.gets, sets: s.sets, valueSize: s.valueSize, keys: s.keys,
    durationMs: s.durationS * 1000, warmupMs: s.warmupS * 1000, threads: s.threads,
    pids: [t.pid, ...t.backendPids],
  });
  return { load, idle };
}

function toRow(kind: TargetKind, pipeline: number, { load, idle }: Run, note: string): Row {
  const perOp = (cpu: number) => (load.ops > 0 && Number.isFinite(cpu) ? (cpu / load.ops) * 1e6 : null);
  const notes = note ? [note] : [];
  if (load.misses > 0) notes.push(`${load.misses} gets missed`);
  if (idle.errors > 0) notes.push(`${idle.errors} errors in idle round trips`);
  return {
    ...emptyRow(kind, pipeline, 'ok', notes.join('; ')),
    opsPerSec: load.opsPerSec, p50Us: load.p50Us, p99Us: load.p99Us,
    idleP50Us: idle.p50Us, idleP99Us: idle.p99Us,
    cpuUsPerOpTarget: perOp(load.pidCpu[0] ?? NaN),
    cpuUsPerOpBackends: perOp(load.pidCpu.slice(1).reduce((a, b) => a + b, 0)),
    cpuUsPerOpLoadgen: perOp(load.loadgenCpu),
    errors: load.errors, connErrors: load.connErrors, misses: load.misses,
  };
}

interface Live {
  target: Target;
  note: string; // carried into its rows, e.g. preload trouble
}

/** Starts and preloads one target; null (and its rows, failed or unavailable) if it cannot run. */
async function startOne(s: Settings, kind: TargetKind, children: Children, tmp: string, rows: Row[]): Promise<Live | null> {
  let target: Target;
  try {
    target = await startTarget(kind, children, REPO, tmp);
  } catch (err) {
    const msg = (err as Error).message;
    log(`${kind}: ${msg}`);
    for (const p of s.pipelines) rows.push(emptyRow(kind, p, err instanceof Unavailable ? 'unavailable' : 'failed', msg));
    return null;
  }
  try {
    log(`${kind}: listening on ${target.host}:${target.port} (pid ${target.pid}); preloading ${s.keys} keys`);
    const unstored = await preload(target.host, target.port, s.keys, s.valueSize);
    if (unstored > 0) log(`${kind}: ${unstored} preload sets not STORED`);
    return { target, note: unstored > 0 ? `${unstored} preload sets not STORED` : '' };
  } catch (err) {
    const msg = `failed: ${(err as Error).message}`;
    log(`${kind}: ${msg}`);
    for (const p of s.pipelines) rows.push(emptyRow(kind, p, 'failed', msg));
    await stopTarget(target, children);
    return null;
  }
}

/**
 * Measures every live target at every depth, in rounds: each round visits each (target, depth)
 * once, so that load from outside (the bench machine is shared) falls on all targets alike
 * rather than on whichever happened to be running. A row keeps the median of its rounds by ops/s.
 */
async function measureAll(s: Settings, live: Live[], rows: Row[]): Promise<void> {
  const runs = new Map<string, Run[]>();
  const failures = new Map<string, string>();
  for (let round = 1; round <= s.repeat; round++) {
    for (const { target } of live) {
      for (const p of s.pipelines) {
        const key = `${target.kind}/${p}`;
        if (failures.has(key)) continue;
        const tag = `${target.kind} pipeline ${p}${s.repeat > 1 ? ` round ${round}/${s.repeat}` : ''}`;
        try {
          const run = await measureOnce(s, target, p);
          runs.set(key, [...(runs.get(key) ?? []), run]);
          const { load } = run;
          log(`${tag}: ${Math.round(load.opsPerSec)} ops/s, p50 ${load.p50Us} µs, p99 ${load.p99Us} µs, errors ${load.errors + load.connErrors}`);
        } catch (err) {
          log(`${tag}: ${(err as Error).message}`);
          failures.set(key, `failed: ${(err as Error).message}`);
        }
      }
    }
  }
  for (const { target, note } of live) {
    for (const p of s.pipelines) {
      const key = `${target.kind}/${p}`;
      const got = (runs.get(key) ?? []).sort((a, b) => a.load.opsPerSec - b.load.opsPerSec);
      const median = got[Math.floor(got.length / 2)];
      if (median) rows.push(toRow(target.kind, p, median, note));
      else rows.push(emptyRow(target.kind, p, 'failed', failures.get(key) ?? 'failed: no run'));
    }
  }
}

/** An upper bound on the whole run: past it, something hangs, and the watchdog ends the run. */
function budgetMs(s: Settings): number {
  const perRun = (s.warmupS + s.durationS) * 1000 + 30_000 /* idle, connect, drain */;
  const perTarget = 30_000 /* start, stop */ + 10_000 + s.keys /* preload */ + perRun * s.repeat * s.pipelines.length;
  return perTarget * s.targets.length + 10_000;
}

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

async function main(): Promise<void> {
  const s = parseArgs(process.argv.slice(2));
  const children = new Children();
  const tmp = mkdtempSync(join(tmpdir(), 'mcmux-bench-'));
  const cleanup = () => {
    children.killAll();
    rmSync(tmp, { recursive: true, force: true });
  };
  process.on('exit', cleanup);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(sig, () => {
      log(`${sig}: stopping every process started`);
      void children.killAllAndWait(1000).then(() => process.exit(code)); // 'exit' runs cleanup
    });
  }
  const watchdog = setTimeout(() => {
    log(`the run took longer than ${Math.round(budgetMs(s) / 1000)} s; stopping`);
    void children.killAllAndWait(1000).then(() => process.exit(1));
  }, budgetMs(s));
  watchdog.unref();

  const loadAtStart = Number(loadavg()[0]!.toFixed(2));
  const rows: Row[] = [];
  const live: Live[] = [];
  try {
    for (const kind of s.targets) {
      const l = await withTimeout(startOne(s, kind, children, tmp, rows), 60_000 + s.keys, `starting ${kind}`);
      if (l) live.push(l);
    }
    await measureAll(s, live, rows);
  } finally {
    await Promise.all(live.map((l) => stopTarget(l.target, children)));
  }
  rows.sort((a, b) => s.targets.indexOf(a.target as TargetKind) - s.targets.indexOf(b.target as TargetKind) || a.pipeline - b.pipeline);
  addRatios(rows);

  const report: Report = {
    date: new Date().toISOString(),
    machine: { ...machine(), loadavgAtStart: loadAtStart },
    settings: {
      durationS: s.durationS, warmupS: s.warmupS, connections: s.connections, pipelines: s.pipelines,
      valueSize: s.valueSize, ratio: `${s.gets}:${s.sets}`, keys: s.keys, threads: s.threads,
      repeat: s.repeat, idleGets: s.idleGets, quick: s.quick,
    },
    command: ['node', 'dist/bench/run.js', ...process.argv.slice(2)].join(' '),
    rows,
  };
  const svg = s.json.endsWith('.json') ? s.json.slice(0, -5) + '.svg' : s.json + '.svg';
  writeReport(report, s.json, svg);
  console.log(formatTable(rows));
  log(`wrote ${s.json} and ${svg}`);
  clearTimeout(watchdog);
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    log(err.message);
    process.exit(1);
  },
);
