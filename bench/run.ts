/**
 * `npm run bench`: memcached direct vs twemproxy vs mcmux (one and two memcached upstreams; one
 * memcached + Redis + MariaDB, answering writes after all or after one copy), each with and
 * without pipelining, measured by our own load generator (bench/loadgen.ts); see compare.ts.
 * Two other modes: `--idle` (mcmux's RSS holding idle clients alone, idle-connections.ts) and
 * `--soak S` (soak.ts), and `--drivers` (each upstream driver's CPU a request, drivers.ts). `--help` lists the options (settings.ts).
 *
 * Every child is killed on exit, on error and on SIGINT/SIGTERM; a watchdog bounds the whole run.
 */

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { comparison } from './compare';
import { formatDrivers, measureDrivers, writeDrivers } from './drivers';
import { measureIdleConnectionsBounded } from './idle-connections';
import { preload, withTimeout } from './loadgen';
import { Children } from './processes';
import { formatIdle } from './report';
import { IDLE_RSS_LIMIT_MB, REPO, command, log, machine, parseArgs, type Settings } from './settings';
import { soak, writeSoak } from './soak';
import { isMcmux, startTarget, stopTarget } from './targets';

/** An upper bound on the whole run: past it, something hangs, and the watchdog ends the run. */
function budgetMs(s: Settings): number {
  const start = 60_000 /* start, stop */ + 10_000 + s.keys /* preload */ + 120_000 /* repair after it */;
  const idle = 70_000 + s.idleConnections * 50;
  if (s.soakS > 0) return start + s.soakS * 1000 + 30_000;
  if (s.drivers !== undefined) return start + s.drivers.length * (90_000 + s.driverRequests * 5);
  if (s.idleOnly) return start + idle;
  const perRun = (s.warmupS + s.durationS) * 1000 + 60_000 /* idle, connect, drain, wait for quiet */ + 120_000 /* repair */;
  const targets = s.targets.length + (s.baseline === undefined ? 0 : s.targets.filter(isMcmux).length);
  return (start + perRun * s.repeat * s.pipelines.length) * targets + idle + 10_000;
}

/** Where a mode writes its JSON: `name` in the directory of --json. */
function beside(s: Settings, name: string): string {
  return join(dirname(s.json), name);
}

/** `--idle`: a fresh mcmux1, preloaded, holding `idleConnections` idle clients. */
async function idleOnly(s: Settings, children: Children, tmp: string): Promise<void> {
  const target = await withTimeout(startTarget('mcmux1', children, REPO, tmp), 60_000, 'starting mcmux1');
  try {
    log(`idle: mcmux1 on ${target.host}:${target.port} (pid ${target.pid}); preloading ${s.keys} keys`);
    await preload(target.host, target.port, s.keys, s.valueSize);
    const idle = await measureIdleConnectionsBounded(target, s.idleConnections, IDLE_RSS_LIMIT_MB);
    const path = beside(s, 'idle.json');
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, JSON.stringify({ date: new Date().toISOString(), machine: machine(), command: command(), keys: s.keys, idle }, null, 2) + '\n');
    console.log(formatIdle(idle));
    log(`wrote ${path}`);
  } finally {
    await stopTarget(target, children);
  }
}

/** `--soak S`: see soak.ts. */
async function soakOnly(s: Settings, children: Children, tmp: string): Promise<void> {
  const result = await soak({
    seconds: s.soakS, connections: s.connections, pipeline: s.pipelines.length === 1 ? s.pipelines[0]! : 16,
    gets: s.gets, sets: s.sets, valueSize: s.valueSize, keys: s.keys, threads: s.threads,
  }, children, REPO, tmp, log);
  const path = beside(s, 'soak.json');
  writeSoak(path, { date: new Date().toISOString(), machine: machine(), command: command() }, result);
  console.log(result.verdict.line);
  log(`wrote ${path}`);
}

/** `--drivers`: see drivers.ts. */
async function driversOnly(s: Settings, drivers: NonNullable<Settings['drivers']>, children: Children, tmp: string): Promise<void> {
  const total = s.gets + s.sets;
  const rows = await measureDrivers({
    drivers, requests: s.driverRequests, valueSize: s.valueSize,
    // One loop pass of the comparison's load: a request from each client, in the mix's shares.
    setsPerPass: Math.max(1, Math.round((s.connections * s.sets) / total)),
    getsPerPass: Math.max(1, Math.round((s.connections * s.gets) / total)),
  }, children, tmp, log);
  const path = beside(s, 'drivers.json');
  writeDrivers(path, { date: new Date().toISOString(), machine: machine(), command: command() }, rows);
  console.log(formatDrivers(rows));
  log(`wrote ${path}`);
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

  if (s.soakS > 0) await soakOnly(s, children, tmp);
  else if (s.idleOnly) await idleOnly(s, children, tmp);
  else if (s.drivers !== undefined) await driversOnly(s, s.drivers, children, tmp);
  else await comparison(s, children, tmp);
  clearTimeout(watchdog);
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    log(err.message);
    process.exit(1);
  },
);
