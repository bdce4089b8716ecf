/**
 * How long the sqlite driver stalls the event loop, and at what rate it writes: the driver
 * (every turn's operations in one transaction) against a naive driver (one transaction per
 * write, with the same statements), at synchronous=normal and full.
 *
 *   for synchronous in normal, full:
 *     for each scenario (burst: N sets called in one turn; clients: C clients in a closed loop,
 *     each waiting one loop turn between requests, as a network round trip would):
 *       for each mode (driver; naive-inline: the write runs inside the call; naive-turn: each
 *       write runs in its own setImmediate): fresh database ─► measure ─► remove it
 *
 * Loop delay is perf_hooks.monitorEventLoopDelay at 1 ms resolution: its max is the longest
 * stretch the loop could not answer a socket.
 *
 * Run: npx tsc -p tsconfig.json && node dist/bench/sqlite-stall.js [--n 5000] [--clients 64]
 *      [--value-size 256] [--repeat 3] [--dir DIR]   (DIR: where the database goes; default the
 *      temp dir). Each row is the median of `repeat` runs by ops/s, after one unreported warm-up.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { type SqliteUpstream, createSqliteUpstream } from '../src/upstream/sqlite';

interface Settings {
  n: number;
  clients: number;
  valueSize: number;
  repeat: number;
  dir: string;
}

type Sync = 'normal' | 'full';
type Mode = 'driver' | 'naive-inline' | 'naive-turn';
type Scenario = 'burst' | 'clients';

interface Figures {
  sync: Sync;
  scenario: Scenario;
  mode: Mode;
  ms: number;
  opsPerSec: number;
  loopMaxMs: number;
  loopP99Ms: number;
  loopMeanMs: number;
  transactions: number;
}

/** A store call: what the client waits for. */
type SetFn = (i: number) => Promise<unknown>;

const immediate = (): Promise<void> => new Promise((r) => setImmediate(r));

function parseArgs(argv: string[]): Settings {
  const s: Settings = { n: 5000, clients: 64, valueSize: 256, repeat: 3, dir: tmpdir() };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name}: missing value`);
    if (name === '--dir') s.dir = value;
    else if (name === '--n') s.n = Number(value);
    else if (name === '--clients') s.clients = Number(value);
    else if (name === '--value-size') s.valueSize = Number(value);
    else if (name === '--repeat') s.repeat = Number(value);
    else throw new Error(`unknown option ${name}: expected --n, --clients, --value-size, --repeat, --dir`);
  }
  return s;
}

/**
 * The naive driver: per write, one transaction with the statements the driver runs for a set
 * (reserve a cas unique, read the row, upsert), executed synchronously in the call.
 */
function naiveWriter(file: string, sync: Sync, value: Buffer): { write: (i: number) => void; close: () => void; count: () => number } {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${sync.toUpperCase()}`);
  const begin = db.prepare('BEGIN IMMEDIATE');
  const commit = db.prepare('COMMIT');
  const reserve = db.prepare(`UPDATE mcmux_items_meta SET value = value + 1 WHERE name = 'cas' RETURNING value`).safeIntegers(true);
  const select = db.prepare('SELECT value, flags, cas, exp FROM mcmux_items WHERE key = ?').safeIntegers(true);
  const upsert = db.prepare(
    'INSERT INTO mcmux_items (key, value, flags, cas, exp) VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE ' +
      'SET value = excluded.value, flags = excluded.flags, cas = excluded.cas, exp = excluded.exp',
  );
  let transactions = 0;
  return {
    write(i) {
      const key = Buffer.from(`key:${i}`, 'latin1');
      begin.run();
      const cas = (reserve.get() as { value: bigint }).value;
      select.get(key);
      upsert.run(key, value, 0, cas, 0);
      commit.run();
      transactions++;
    },
    close: () => db.close(),
    count: () => transactions,
  };
}

/** naive-turn: writes queue up, and each runs alone in its own turn (setImmediate chained). */
function oneWritePerTurn(write: (i: number) => void): SetFn {
  const queue: Array<{ i: number; done: () => void }> = [];
  const run = (): void => {
    const head = queue.shift();
    if (!head) return;
    write(head.i);
    head.done();
    if (queue.length > 0) setImmediate(run);
  };
  return (i) =>
    new Promise<void>((done) => {
      if (queue.push({ i, done }) === 1) setImmediate(run);
    });
}

async function drive(scenario: Scenario, s: Settings, set: SetFn): Promise<void> {
  if (scenario === 'burst') {
    await Promise.all(Array.from({ length: s.n }, (_, i) => set(i)));
    return;
  }
  let next = 0;
  await Promise.all(
    Array.from({ length: s.clients }, async () => {
      while (next < s.n) {
        await set(next++);
        await immediate(); // the client's round trip: its next request arrives on a later turn
      }
    }),
  );
}

async function measureOne(sync: Sync, scenario: Scenario, mode: Mode, s: Settings): Promise<Figures> {
  const dir = mkdtempSync(join(s.dir, 'mcmux-sqlite-stall-'));
  const file = join(dir, 'bench.db');
  const value = Buffer.alloc(s.valueSize, 0x61);
  let upstream: SqliteUpstream | undefined;
  let naive: ReturnType<typeof naiveWriter> | undefined;
  try {
    upstream = createSqliteUpstream(new URL(pathToFileURL(file).href.replace(/^file:/, 'sqlite:')), new Map([['synchronous', sync]]), {
      defaultTimeoutMs: 10_000,
      maxItemSize: 1024 * 1024,
    });
    await upstream.probe();
    let set: SetFn;
    if (mode === 'driver') {
      const u = upstream;
      set = (i) => u.store({ mode: 'set', key: `key:${i}`, value, flags: 0, deadline: 0 });
    } else {
      const w = (naive = naiveWriter(file, sync, value));
      set = mode === 'naive-inline' ? async (i) => w.write(i) : oneWritePerTurn(w.write);
    }
    const before = upstream.transactions;
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    await new Promise((r) => setTimeout(r, 20));
    h.reset();
    // reset() drops the monitor's previous tick: let it tick once, or the first stall is lost.
    await new Promise((r) => setTimeout(r, 3));
    const t0 = performance.now();
    await drive(scenario, s, set);
    const ms = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 5)); // lets the monitor record the last stall
    h.disable();
    return {
      sync, scenario, mode, ms,
      opsPerSec: (s.n / ms) * 1000,
      loopMaxMs: h.max / 1e6,
      loopP99Ms: h.percentile(99) / 1e6,
      loopMeanMs: h.mean / 1e6,
      transactions: naive ? naive.count() : upstream.transactions - before,
    };
  } finally {
    naive?.close();
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function format(rows: Figures[]): string {
  const head = ['synchronous', 'scenario', 'mode', 'txns', 'time ms', 'ops/s', 'loop max ms', 'p99 ms', 'mean ms'];
  const body = rows.map((r) => [
    r.sync, r.scenario, r.mode, String(r.transactions), r.ms.toFixed(0), r.opsPerSec.toFixed(0),
    r.loopMaxMs.toFixed(1), r.loopP99Ms.toFixed(1), r.loopMeanMs.toFixed(2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  return [head, ...body].map((cells) => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ')).join('\n');
}

async function main(): Promise<void> {
  const s = parseArgs(process.argv.slice(2));
  console.log(
    `sqlite stall: ${s.n} sets of ${s.valueSize} B; clients scenario: ${s.clients} clients; ` +
      `median of ${s.repeat}; database in ${s.dir}`,
  );
  // Warm-up (JIT, page cache), not reported.
  for (const mode of ['driver', 'naive-inline'] as const) await measureOne('normal', 'clients', mode, { ...s, n: Math.min(s.n, 1000) });
  const rows: Figures[] = [];
  for (const sync of ['normal', 'full'] as const) {
    for (const scenario of ['burst', 'clients'] as const) {
      for (const mode of ['driver', 'naive-inline', 'naive-turn'] as const) {
        const runs: Figures[] = [];
        for (let r = 0; r < s.repeat; r++) runs.push(await measureOne(sync, scenario, mode, s));
        runs.sort((a, b) => a.opsPerSec - b.opsPerSec);
        rows.push(runs[Math.floor(runs.length / 2)] as Figures); // the median run by ops/s

      }
    }
  }
  console.log(format(rows));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
