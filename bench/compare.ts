/**
 * The comparison: every target at every pipeline depth, in rounds, then mcmux1's RSS holding idle
 * clients; rows with medians, ratios, gets and sets apart, and for mcmux whether every write
 * reached every upstream.
 *
 *   start each target (targets.ts) ─► preload
 *   round × target × depth: all quiet ─► stats ─► idle round trips ─► loaded run ─► wait until quiet ─► stats
 *   mcmux1: idle connections ─► stop all ─► JSON, SVG, Markdown, tables
 */

import { loadavg } from 'node:os';
import { processCpuSeconds } from './cpu';
import { measureIdleConnectionsBounded } from './idle-connections';
import { measureIdle, preload, runLoad, sleep, withTimeout, type LoadResult } from './loadgen';
import { replication as replicationOf, stats, type Replication } from './mcmux-stats';
import { Unavailable, type Children } from './processes';
import { BASELINE, addRatios, emptyRow, formatBaseline, formatIdle, formatRounds, formatTable, writeReport, type IdleMemory, type Report, type Row } from './report';
import { IDLE_RSS_LIMIT_MB, REPO, command, idleDriverNote, log, machine, type Settings } from './settings';
import { isMcmux, startTarget, stopTarget, targetName, type Target, type TargetKind } from './targets';

type Idle = Awaited<ReturnType<typeof measureIdle>>;
interface Run {
  round: number;
  load: LoadResult;
  idle: Idle;
  /** mcmux targets only: did every write reach every upstream. */
  replication: Replication | null;
  /** Seconds the target and its stores stayed busy after the load stopped. */
  busyAfterS: number;
  /** When writes missed a store: how long mcmux took to repair them, and what it had not. */
  repair: { seconds: number; left: number } | null;
}

/** One measurement: idle round trips, the loaded run, then until the target is quiet again. */
async function measureOnce(s: Settings, t: Target, pipeline: number, round: number): Promise<Run> {
  const before = isMcmux(t.kind) ? await stats(t.host, t.port) : null;
  const idle = await measureIdle(t.host, t.port, s.idleGets, s.keys, s.valueSize, s.idlePauseMs);
  const load = await runLoad({
    host: t.host, port: t.port, connections: s.connections, pipeline,
    gets: s.gets, sets: s.sets, valueSize: s.valueSize, keys: s.keys,
    durationMs: s.durationS * 1000, warmupMs: s.warmupS * 1000, threads: s.threads,
    pids: [t.pid, ...t.backendPids],
  });
  // A proxy that answered writes early (write-wait copies) still owes them to its slower stores:
  // wait for that, so that it neither spills into the next target's run nor hides its failures.
  const busyAfterS = await quiet([t.pid, ...t.backendPids]);
  const replication = before ? replicationOf(before, await stats(t.host, t.port)) : null;
  // Writes that missed a store are replayed into it by mcmux's repair, at --repair-rate keys a
  // second: that work too belongs to this run, not to the next target's.
  const repair = replication && replication.journalKeys > 0 ? await repaired(t) : null;
  return { round, load, idle, replication, busyAfterS, repair };
}

/** Waits (at most REPAIR_MAX_MS) until mcmux's repair journal is empty. */
async function repaired(t: Target): Promise<{ seconds: number; left: number }> {
  const t0 = Date.now();
  let left = Infinity;
  while (left > 0 && Date.now() - t0 < REPAIR_MAX_MS) {
    await sleep(QUIET_STEP_MS);
    left = Number((await stats(t.host, t.port)).get('journal_keys') ?? 0);
  }
  return { seconds: (Date.now() - t0) / 1000, left };
}

/** Waits (at most QUIET_MAX_MS) until `pids` together use under 0.15 of a core; the seconds waited. */
async function quiet(pids: number[]): Promise<number> {
  const t0 = Date.now();
  let cpu0 = pids.map(processCpuSeconds).reduce((a, b) => a + b, 0);
  while (Date.now() - t0 < QUIET_MAX_MS) {
    await sleep(QUIET_STEP_MS);
    const cpu1 = pids.map(processCpuSeconds).reduce((a, b) => a + b, 0);
    if (!Number.isFinite(cpu1) || cpu1 - cpu0 < 0.15 * (QUIET_STEP_MS / 1000)) break;
    cpu0 = cpu1;
  }
  return (Date.now() - t0) / 1000;
}

const QUIET_STEP_MS = 500;
const QUIET_MAX_MS = 30_000;
const REPAIR_MAX_MS = 120_000;

/** The row of a (target, depth): the figures of its median run (`median`), and every run's round by round. */
function toRow(name: string, pipeline: number, median: Run, all: Run[], note: string): Row {
  const { load, idle, replication, busyAfterS, repair } = median;
  const perOp = (cpu: number, l: LoadResult = load) => (l.ops > 0 && Number.isFinite(cpu) ? (cpu / l.ops) * 1e6 : null);
  const notes = note ? [note] : [];
  if (load.misses > 0) notes.push(`${load.misses} gets missed`);
  if (idle.errors > 0) notes.push(`${idle.errors} errors in idle round trips`);
  if (replication && replication.replicationFailures > 0) {
    notes.push(`${replication.replicationFailures} writes missed an upstream (${replication.upstreamErrors} upstream errors, ` +
      `${replication.stateChanges} health changes, ${replication.journalKeys} keys left to repair)`);
  }
  if (busyAfterS > 1) notes.push(`target and stores busy for ${busyAfterS.toFixed(1)} s after the load stopped`);
  if (repair) {
    notes.push(repair.left > 0 ? `${repair.left} keys still to repair ${repair.seconds.toFixed(0)} s later` : `repaired in ${repair.seconds.toFixed(0)} s`);
  }
  return {
    ...emptyRow(name, pipeline, 'ok', notes.join('; ')),
    opsPerSec: load.opsPerSec, p50Us: load.p50Us, p99Us: load.p99Us,
    idleP50Us: idle.p50Us, idleP99Us: idle.p99Us, idleSetP50Us: idle.setP50Us, idleSetP99Us: idle.setP99Us,
    pacedP50Us: idle.pacedP50Us, pacedP99Us: idle.pacedP99Us,
    cpuUsPerOpTarget: perOp(load.pidCpu[0] ?? NaN),
    cpuUsPerOpBackends: perOp(load.pidCpu.slice(1).reduce((a, b) => a + b, 0)),
    cpuUsPerOpLoadgen: perOp(load.loadgenCpu),
    errors: load.errors, connErrors: load.connErrors, misses: load.misses,
    getOpsPerSec: load.get.opsPerSec, getP50Us: load.get.p50Us, getP99Us: load.get.p99Us,
    setOpsPerSec: load.set.opsPerSec, setP50Us: load.set.p50Us, setP99Us: load.set.p99Us,
    replicationFailures: replication?.replicationFailures ?? null,
    upstreamErrors: replication?.upstreamErrors ?? null,
    journalKeys: replication?.journalKeys ?? null,
    busyAfterS,
    repairS: repair ? repair.seconds : null,
    rounds: [...all].sort((a, b) => a.round - b.round).map((r) => ({
      round: r.round, opsPerSec: r.load.opsPerSec, getOpsPerSec: r.load.get.opsPerSec, idleP50Us: r.idle.p50Us, idleSetP50Us: r.idle.setP50Us, pacedP50Us: r.idle.pacedP50Us,
      cpuUsPerOpTarget: perOp(r.load.pidCpu[0] ?? NaN, r.load),
    })),
  };
}

/**
 * `live` with each --baseline twin moved before its target: every other round runs the pair in
 * this order, so that going first or second in a pair (the machine's drift from one run to the
 * next) favours neither build.
 */
export function twinsSwapped<T extends { target: { name: string } }>(live: readonly T[]): T[] {
  const out = [...live];
  for (let i = 1; i < out.length; i++) {
    if (out[i]!.target.name === `${out[i - 1]!.target.name}${BASELINE}`) [out[i - 1], out[i]] = [out[i]!, out[i - 1]!];
  }
  return out;
}

interface Live {
  target: Target;
  note: string; // carried into its rows, e.g. preload trouble
}

/**
 * Starts and preloads one target (from `baselineBin`: its --baseline twin); null (and its rows,
 * failed or unavailable) if it cannot run.
 */
async function startOne(s: Settings, kind: TargetKind, children: Children, tmp: string, rows: Row[], baselineBin?: string): Promise<Live | null> {
  let target: Target;
  const name = targetName(kind, baselineBin);
  try {
    target = await startTarget(kind, children, REPO, tmp, baselineBin);
  } catch (err) {
    const msg = (err as Error).message;
    log(`${name}: ${msg}`);
    for (const p of s.pipelines) rows.push(emptyRow(name, p, err instanceof Unavailable ? 'unavailable' : 'failed', msg));
    return null;
  }
  try {
    log(`${name}: listening on ${target.host}:${target.port} (pid ${target.pid}); preloading ${s.keys} keys`);
    const before = isMcmux(kind) ? await stats(target.host, target.port) : null;
    const unstored = await preload(target.host, target.port, s.keys, s.valueSize);
    const notes = unstored > 0 ? [`${unstored} preload sets not STORED`] : [];
    const missed = before ? replicationOf(before, await stats(target.host, target.port)) : null;
    if (missed && missed.journalKeys > 0) {
      // Measuring while mcmux repairs the preload would charge that work to the first rounds.
      const repair = await repaired(target);
      notes.push(`preload: ${missed.replicationFailures} writes missed an upstream, ` +
        (repair.left > 0 ? `${repair.left} keys still to repair ${repair.seconds.toFixed(0)} s later` : `repaired in ${repair.seconds.toFixed(0)} s`));
    }
    for (const n of notes) log(`${name}: ${n}`);
    return { target, note: notes.join('; ') };
  } catch (err) {
    const msg = `failed: ${(err as Error).message}`;
    log(`${name}: ${msg}`);
    for (const p of s.pipelines) rows.push(emptyRow(name, p, 'failed', msg));
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
  // Every process the bench started, all targets': a store of another target still flushing
  // (MariaDB after a preload of 100k rows) must not eat the CPU of the run being measured.
  const everyPid = live.flatMap(({ target }) => [target.pid, ...target.backendPids]);
  for (let round = 1; round <= s.repeat; round++) {
    for (const { target } of round % 2 === 0 ? twinsSwapped(live) : live) {
      for (const p of s.pipelines) {
        const key = `${target.name}/${p}`;
        if (failures.has(key)) continue;
        const tag = `${target.name} pipeline ${p}${s.repeat > 1 ? ` round ${round}/${s.repeat}` : ''}`;
        try {
          const waited = await quiet(everyPid);
          if (waited > 5) log(`${tag}: waited ${waited.toFixed(0)} s for every process the bench started to be quiet`);
          const run = await measureOnce(s, target, p, round);
          runs.set(key, [...(runs.get(key) ?? []), run]);
          const { load } = run;
          log(`${tag}: ${Math.round(load.opsPerSec)} ops/s, p50 ${load.p50Us} µs, p99 ${load.p99Us} µs, errors ${load.errors + load.connErrors}` +
            ` (get ${Math.round(load.get.opsPerSec)}/s p99 ${load.get.p99Us} µs; set ${Math.round(load.set.opsPerSec)}/s p99 ${load.set.p99Us} µs)`);
        } catch (err) {
          log(`${tag}: ${(err as Error).message}`);
          failures.set(key, `failed: ${(err as Error).message}`);
        }
      }
    }
  }
  for (const { target, note } of live) {
    for (const p of s.pipelines) {
      const key = `${target.name}/${p}`;
      const got = [...(runs.get(key) ?? [])].sort((a, b) => a.load.opsPerSec - b.load.opsPerSec);
      const median = got[Math.floor(got.length / 2)];
      if (median) rows.push(toRow(target.name, p, median, got, note));
      else rows.push(emptyRow(target.name, p, 'failed', failures.get(key) ?? 'failed: no run'));
    }
  }
}

/** The comparison mode: see the top of this file. Writes the JSON and SVG, prints the tables. */
export async function comparison(s: Settings, children: Children, tmp: string): Promise<void> {
  const loadAtStart = Number(loadavg()[0]!.toFixed(2));
  const rows: Row[] = [];
  const live: Live[] = [];
  let idle: IdleMemory | undefined;
  try {
    for (const kind of s.targets) {
      // A --baseline twin next to its target: the two run back to back in every round (twinsSwapped).
      for (const bin of s.baseline !== undefined && isMcmux(kind) ? [undefined, s.baseline] : [undefined]) {
        const l = await withTimeout(startOne(s, kind, children, tmp, rows, bin), 60_000 + s.keys + REPAIR_MAX_MS, `starting ${kind}`);
        if (l) live.push(l);
      }
    }
    await measureAll(s, live, rows);
    const m1 = live.find((l) => l.target.name === 'mcmux1');
    if (m1 && s.idleConnections > 0) {
      // After the loaded runs: the RSS of a process that has served load, as a sidecar would have.
      idle = await measureIdleConnectionsBounded(m1.target, s.idleConnections, IDLE_RSS_LIMIT_MB).catch((err: Error) => {
        log(`idle connections: ${err.message}`);
        return undefined;
      });
    }
  } finally {
    await Promise.all(live.map((l) => stopTarget(l.target, children)));
  }
  // Targets in the order asked, each --baseline twin after its own.
  const order = (name: string) => 2 * s.targets.indexOf(name.replace(BASELINE, '') as TargetKind) + (name.endsWith(BASELINE) ? 1 : 0);
  rows.sort((a, b) => order(a.target) - order(b.target) || a.pipeline - b.pipeline);
  addRatios(rows);

  const report: Report = {
    date: new Date().toISOString(),
    machine: { ...machine(), loadavgAtStart: loadAtStart },
    settings: {
      durationS: s.durationS, warmupS: s.warmupS, connections: s.connections, pipelines: s.pipelines,
      valueSize: s.valueSize, ratio: `${s.gets}:${s.sets}`, keys: s.keys, threads: s.threads,
      repeat: s.repeat, idleGets: s.idleGets, idleConnections: s.idleConnections, quick: s.quick,
    },
    command: command(),
    rows,
    ...(idle ? { idle } : {}),
  };
  const halts = idleDriverNote(report.machine);
  const { svg, md } = writeReport(report, s.json, halts ? [halts] : []);
  console.log(formatTable(rows));
  const byRound = formatRounds(rows);
  if (byRound) console.log(`\n${byRound}`);
  const ab = formatBaseline(rows);
  if (ab.length > 0) console.log(`\n${ab.join('\n')}`);
  if (halts) console.log(`\n${halts}`);
  if (idle) console.log(`\n${formatIdle(idle)}`);
  log(`wrote ${s.json}, ${svg} and ${md}`);
}
