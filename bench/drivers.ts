/**
 * `--drivers`: what each upstream driver costs mcmux's own thread per request, outside the proxy.
 * A comparison run shows that mcmux3 (memcached + Redis + MariaDB) spends far more CPU a request
 * than mcmux1, but not which driver the time goes to; this mode measures each one alone.
 *
 *   for each driver: its own private server (memcached, redis-server, mariadbd; SQLite a file in
 *   a temporary folder) ─► the driver, built from its URL in this process as mcmux builds it
 *   ─► `requests` sets, `setsPerPass` at a time (a loop pass of the 10:1 mix over 50 clients
 *   sends about 5), then as many gets of the keys just written, `getsPerPass` at a time
 *   ─► this process's CPU (user + system) and the server's, per request, and the wall time
 *
 * The first row, `memory://`, is the in-process store: nearly nothing but this harness's own
 * loop (the promises of a pass), the floor to read the other rows against.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createUpstream } from '../src/upstream/registry';
import type { Upstream } from '../src/upstream/upstream';
import { processCpuSeconds } from './cpu';
import { sleep, withTimeout } from './loadgen';
import { type Children, Unavailable } from './processes';
import type { DriverKind } from './settings';
import { startMariadb, startRedis } from './stores';
import { startMemcached } from './targets';


export interface DriverOptions {
  drivers: readonly DriverKind[];
  /** Sets measured per driver, and as many gets. */
  requests: number;
  setsPerPass: number;
  getsPerPass: number;
  valueSize: number;
}

export interface DriverRow {
  driver: DriverKind;
  op: 'set' | 'get';
  perPass: number;
  requests: number;
  /** CPU µs a request spent by this process (the driver, as in mcmux's thread). */
  cpuUs: number;
  /** CPU µs a request spent by the server process; null for the in-process stores. */
  serverCpuUs: number | null;
  /** Wall µs a request (a pass's requests overlap). */
  wallUs: number;
  errors: number;
  /** Why a driver has no figures (its server is not installed). */
  skipped?: string;
}

const START_TIMEOUT_MS = 30_000;

/** The driver's URL, with a server started for it when it needs one. */
async function serverFor(kind: DriverKind, children: Children, tmp: string): Promise<{ url: string; pid: number | undefined }> {
  switch (kind) {
    case 'memory':
      return { url: 'memory://', pid: undefined };
    case 'sqlite':
      return { url: `sqlite://${join(tmp, 'drivers.db')}`, pid: undefined };
    case 'memcached': {
      const mc = await startMemcached(children);
      return { url: `memcached://127.0.0.1:${mc.port}`, pid: mc.proc.child.pid };
    }
    case 'redis': {
      const r = await startRedis(children, tmp);
      return { url: r.url, pid: r.proc.child.pid };
    }
    case 'mysql': {
      const m = await startMariadb(children, tmp);
      return { url: m.url, pid: m.proc.child.pid };
    }
  }
}

/** Until the driver answers a probe (it connects in the background). */
async function untilReady(u: Upstream): Promise<void> {
  const deadline = performance.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      await u.probe();
      return;
    } catch (err) {
      if (performance.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

/** `n` requests made by `one(i)`, `perPass` at a time, each pass awaited before the next. */
async function passes(n: number, perPass: number, one: (i: number) => Promise<unknown>): Promise<number> {
  let errors = 0;
  const count = (): void => {
    errors++;
  };
  for (let done = 0; done < n; done += perPass) {
    const pass: Array<Promise<unknown>> = [];
    for (let i = done; i < Math.min(n, done + perPass); i++) pass.push(one(i).catch(count));
    await Promise.all(pass);
  }
  return errors;
}

async function measureOne(kind: DriverKind, o: DriverOptions, children: Children, tmp: string): Promise<DriverRow[]> {
  const { url, pid } = await withTimeout(serverFor(kind, children, tmp), START_TIMEOUT_MS * 2, `starting the server for ${kind}`);
  const u = createUpstream(url, new Map(), { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 });
  try {
    await untilReady(u);
    const value = Buffer.alloc(o.valueSize, 0x61);
    const keyOf = (i: number): string => `drivers:${i}`;
    const set = (i: number) => u.store({ mode: 'set', key: keyOf(i), value, flags: 0, deadline: 0, withCas: false });
    const get = (i: number) => u.get([keyOf(i)], undefined, true);
    const run = async (op: 'set' | 'get', perPass: number, one: (i: number) => Promise<unknown>): Promise<DriverRow> => {
      await passes(Math.ceil(o.requests / 4), perPass, one); // warm-up: the code optimized, the connections open
      const cpu0 = process.cpuUsage();
      const server0 = pid === undefined ? NaN : processCpuSeconds(pid);
      const t0 = performance.now();
      const errors = await passes(o.requests, perPass, one);
      const wallUs = ((performance.now() - t0) * 1000) / o.requests;
      const cpu = process.cpuUsage(cpu0);
      const server = pid === undefined ? NaN : processCpuSeconds(pid) - server0;
      return {
        driver: kind, op, perPass, requests: o.requests, errors, wallUs,
        cpuUs: (cpu.user + cpu.system) / o.requests,
        serverCpuUs: Number.isFinite(server) ? (server * 1e6) / o.requests : null,
      };
    };
    return [await run('set', o.setsPerPass, set), await run('get', o.getsPerPass, get)];
  } finally {
    await u.close();
  }
}

export async function measureDrivers(o: DriverOptions, children: Children, tmp: string, log: (msg: string) => void): Promise<DriverRow[]> {
  const rows: DriverRow[] = [];
  for (const kind of o.drivers) {
    try {
      const got = await measureOne(kind, o, children, tmp);
      for (const r of got) log(`${kind} ${r.op}: ${r.cpuUs.toFixed(1)} µs CPU a request here, ${r.serverCpuUs?.toFixed(1) ?? '-'} in the server`);
      rows.push(...got);
    } catch (err) {
      if (!(err instanceof Unavailable)) throw err;
      const skipped = `${kind}: ${err.message}`;
      log(`skipped ${skipped}`);
      for (const op of ['set', 'get'] as const) {
        rows.push({ driver: kind, op, perPass: 0, requests: 0, cpuUs: NaN, serverCpuUs: null, wallUs: NaN, errors: 0, skipped });
      }
    }
  }
  return rows;
}

export function formatDrivers(rows: readonly DriverRow[]): string {
  const head = ['driver', 'op', 'per pass', 'requests', 'CPU µs/req here', 'CPU µs/req server', 'wall µs/req', 'errors'];
  const cell = (n: number | null): string => (n === null || !Number.isFinite(n) ? '-' : n.toFixed(1));
  const body = rows.map((r) =>
    r.skipped !== undefined
      ? [r.driver, r.op, '-', '-', '-', '-', '-', r.skipped]
      : [r.driver, r.op, String(r.perPass), String(r.requests), cell(r.cpuUs), cell(r.serverCpuUs), cell(r.wallUs), String(r.errors)],
  );
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

export function writeDrivers(path: string, header: Record<string, unknown>, rows: readonly DriverRow[]): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify({ ...header, rows }, null, 2) + '\n');
}
