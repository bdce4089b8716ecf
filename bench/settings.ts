/**
 * What a bench run was asked to do (the command line, parsed and checked), and what it ran on.
 */

import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release } from 'node:os';
import { join, resolve } from 'node:path';
import { SOAK_INTERVAL_S } from './soak';
import { TARGETS, type TargetKind } from './targets';

/** The upstream drivers `--drivers` measures (drivers.ts), in the order it runs them. */
export const DRIVERS = ['memory', 'memcached', 'redis', 'mysql', 'sqlite'] as const;
export type DriverKind = (typeof DRIVERS)[number];

export const REPO = resolve(__dirname, '..', '..'); // dist/bench/run.js -> repo root

export interface Settings {
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
  /** Milliseconds before each of the paced idle gets; 0 = skip them. */
  idlePauseMs: number;
  /** Idle client connections to hold open on mcmux1 for the RSS figure; 0 = skip. */
  idleConnections: number;
  /** Run only the idle-connections measure. */
  idleOnly: boolean;
  /** Seconds of soak; 0 = no soak (the comparison runs instead). */
  soakS: number;
  /** Run only the per-driver cost measure (drivers.ts), for these drivers. */
  drivers: DriverKind[] | undefined;
  /** Sets (and gets) per driver in that measure. */
  driverRequests: number;
  quick: boolean;
  json: string;
  /** Another build's bin/mcmux: each mcmux target also runs from it (`<kind>@base`), in the same rounds. */
  baseline: string | undefined;
}

/** The goal for mcmux's RSS with 1000 idle connections. */
export const IDLE_RSS_LIMIT_MB = 150;

export const USAGE = `usage: node dist/bench/run.js [options]
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
  --idle-pause MS     pause before each paced idle get (default 2; 0: skip the paced gets)
  --idle-connections N  after the comparison, RSS of mcmux1 holding N idle clients (default 1000; 0: skip)
  --idle              only that: start mcmux1, preload, measure the RSS with N idle clients
  --soak S            only a soak: load on mcmux1 for S seconds (pipeline 16 unless --pipeline),
                      RSS, ops/s and p99 every ${SOAK_INTERVAL_S} s; writes soak.json beside --json
  --drivers [LIST]    only this: each upstream driver alone in this process against its own server,
                      sets then gets, a 10:1 pass's worth at a time; CPU µs per request here and
                      in the server (LIST: any of ${DRIVERS.join(',')}; default all); drivers.json
  --baseline BIN      an A/B run: every mcmux target also runs from BIN (another build's bin/mcmux)
                      as <target>@base, next to it in every round; prints the ratios round by round
  --quick             short runs, for a smoke test
  --json PATH         where to write the JSON (default bench/results/latest.json); SVG and .md beside it;
                      --idle writes idle.json there, --soak soak.json, --drivers drivers.json`;

export function parseArgs(argv: string[]): Settings {
  const given = new Map<string, string>();
  let quick = false;
  let idleOnly = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--idle') idleOnly = true;
    else if (a === '--drivers') given.set('drivers', i + 1 < argv.length && !argv[i + 1]!.startsWith('--') ? argv[++i]! : DRIVERS.join(','));
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('--') && i + 1 < argv.length) given.set(a.slice(2), argv[++i]!);
    else throw new Error(`unknown or incomplete option '${a}'\n${USAGE}`);
  }
  const known = ['duration', 'warmup', 'connections', 'pipeline', 'value-size', 'ratio', 'keys', 'targets', 'threads', 'repeat', 'json', 'idle-connections', 'idle-pause', 'soak', 'baseline', 'drivers'];
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
  const modes = [idleOnly && '--idle', given.has('soak') && '--soak', given.has('drivers') && '--drivers'].filter((m) => m !== false);
  if (modes.length > 1) throw new Error(`${modes.join(' and ')} are separate runs: give one\n${USAGE}`);
  const drivers = given.get('drivers')?.split(',').filter((d) => d !== '');
  for (const d of drivers ?? []) if (!(DRIVERS as readonly string[]).includes(d)) throw new Error(`--drivers: unknown '${d}' (known: ${DRIVERS.join(',')})`);
  const targets = (given.get('targets') ?? TARGETS.join(',')).split(',').filter((t) => t !== '');
  for (const t of targets) if (!(TARGETS as readonly string[]).includes(t)) throw new Error(`--targets: unknown '${t}' (known: ${TARGETS.join(',')})`);
  const baseline = given.has('baseline') ? resolve(given.get('baseline')!) : undefined;
  if (baseline !== undefined && !isFile(baseline)) throw new Error(`--baseline must be the path of another build's bin/mcmux; '${baseline}' is not a file`);
  if (baseline !== undefined && modes.length > 0) throw new Error(`--baseline is for the comparison, not ${modes[0]}\n${USAGE}`);
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
    idlePauseMs: num('idle-pause', 2, 0),
    idleConnections: Math.floor(num('idle-connections', 1000, 0)),
    idleOnly,
    soakS: given.has('soak') ? num('soak', 0, 1) : 0,
    drivers: drivers as DriverKind[] | undefined,
    driverRequests: quick ? 2000 : 20_000,
    quick,
    json: resolve(given.get('json') ?? join(REPO, 'bench', 'results', 'latest.json')),
    baseline,
  };
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** What the figures were taken on: cores, CPU, kernel, and the versions of every program. */
export function machine(): Record<string, string | number> {
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
    redis: first('redis-server', ['--version']),
    mariadb: first('mariadbd', ['--version']),
    ...idleDriver(),
    // Other work on the machine skews every figure: the 1-minute load average says how much.
    loadavgAtEnd: Number(loadavg()[0]!.toFixed(2)),
  };
}

/**
 * How the machine's idle CPUs wait, which decides the idle round trip more than any proxy does:
 * on a VM whose cpuidle driver is `haltpoll` with `guest_halt_poll_ns` 0, an idle vCPU halts at
 * once and every hop of a round trip pays for waking one (docs/benchmarks.md, "The idle round trip").
 */
export function idleDriver(): { cpuidleDriver: string; guestHaltPollNs: number | string } {
  const read = (path: string) => {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      return 'n/a';
    }
  };
  const ns = read('/sys/module/haltpoll/parameters/guest_halt_poll_ns');
  return {
    cpuidleDriver: read('/sys/devices/system/cpu/cpuidle/current_driver'),
    guestHaltPollNs: /^\d+$/.test(ns) ? Number(ns) : ns,
  };
}

/**
 * A line for under the table when idle vCPUs halt at once (from machine()); '' otherwise. They do
 * with the `haltpoll` driver told not to poll, and with no cpuidle driver at all (`none`: the
 * kernel's default idle loop halts without polling; seen on machines of this kind too).
 */
export function idleDriverNote(d: Record<string, string | number>): string {
  const how =
    d.cpuidleDriver === 'haltpoll' && d.guestHaltPollNs === 0
      ? 'cpuidle haltpoll, guest_halt_poll_ns 0, the kernel default is 200000'
      : d.cpuidleDriver === 'none'
        ? 'no cpuidle driver: the default idle loop halts without polling'
        : '';
  if (how === '') return '';
  return `note: this VM halts an idle vCPU at once (${how}): each hop of an idle round trip wakes one, and a proxy has two hops more than direct`;
}

/** The command line, as it would be typed to rerun this. */
export function command(): string {
  return ['node', 'dist/bench/run.js', ...process.argv.slice(2)].join(' ');
}

export function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}
