/**
 * The comparison's outputs: a text table for the terminal, the same rows as JSON, the tables again
 * as Markdown (what docs/benchmarks.md shows), and a bar chart of ops/s per target as hand-written
 * SVG.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** The suffix of a --baseline twin's row name: `mcmux1@base` is mcmux1 run from the other build. */
export const BASELINE = '@base';

export interface Row {
  target: string;
  pipeline: number;
  /** `ok`, or why there are no figures: the program is absent, or it failed. */
  status: 'ok' | 'unavailable' | 'failed';
  note: string;
  opsPerSec: number | null;
  p50Us: number | null;
  p99Us: number | null;
  idleP50Us: number | null;
  idleP99Us: number | null;
  /** The same with one set at a time: what a write waits for. */
  idleSetP50Us: number | null;
  idleSetP99Us: number | null;
  /** Idle gets again, each after a pause (--idle-pause): null when skipped. */
  pacedP50Us: number | null;
  pacedP99Us: number | null;
  /** CPU µs per op over the measured window: the process clients talk to, the stores behind it
   * (its memcached processes, and Redis and MariaDB for mcmux3; 0 for direct), and this load
   * generator. */
  cpuUsPerOpTarget: number | null;
  cpuUsPerOpBackends: number | null;
  cpuUsPerOpLoadgen: number | null;
  errors: number | null;
  connErrors: number | null;
  misses: number | null;
  /** ops/s over the same-pipeline row of memcached direct, and of twemproxy. */
  ratioToDirect: number | null;
  ratioToTwemproxy: number | null;
  /** Gets and sets of the same run apart: rate and latencies of each kind. */
  getOpsPerSec: number | null;
  getP50Us: number | null;
  getP99Us: number | null;
  setOpsPerSec: number | null;
  setP50Us: number | null;
  setP99Us: number | null;
  /** get ops/s over the same-pipeline row of mcmux1 (one memcached upstream). */
  getRatioToMcmux1: number | null;
  /** mcmux rows: writes some upstream missed, failed upstream requests (over the run, warm-up and
   * the wait for quiet included), and keys still to repair at the end; null for other targets. */
  replicationFailures: number | null;
  upstreamErrors: number | null;
  journalKeys: number | null;
  /** Seconds the target and its stores kept working after the load stopped. */
  busyAfterS: number | null;
  /** Seconds mcmux's repair took to replay `journalKeys` (null: nothing to repair). */
  repairS: number | null;
  /**
   * Every round's figures, in run order (the row's own figures are its median round's). Round i
   * of every row ran within a minute or two of the others, so a ratio within one round is the
   * fairest comparison this shared machine allows: the per-round ratios are in the same order.
   */
  rounds: RoundFigures[];
  roundRatioToDirect: Array<number | null>;
  roundRatioToTwemproxy: Array<number | null>;
  roundGetRatioToMcmux1: Array<number | null>;
  /**
   * With --baseline: this row's ops/s and CPU µs/op (the target's process) over its twin's,
   * `<target>@base` of the same depth, round by round; empty without a twin.
   */
  roundRatioToBaseline: Array<number | null>;
  roundCpuRatioToBaseline: Array<number | null>;
}

export interface RoundFigures {
  round: number;
  opsPerSec: number;
  getOpsPerSec: number;
  idleP50Us: number;
  idleSetP50Us: number;
  pacedP50Us: number | null;
  cpuUsPerOpTarget: number | null;
}

export interface Report {
  date: string;
  machine: Record<string, string | number>;
  settings: Record<string, string | number | boolean | number[]>;
  command: string;
  rows: Row[];
  /** mcmux's resident memory holding many idle client connections, when measured. */
  idle?: IdleMemory;
}

export interface IdleMemory {
  target: string;
  connections: number;
  /** curr_connections that mcmux reported once they were all open (ours plus the stats one). */
  currConnections: number;
  /** VmRSS of the mcmux process, MiB: before opening, with all open, after closing them. */
  rssBeforeMiB: number;
  rssOpenMiB: number;
  rssAfterMiB: number;
  /** (rssOpen - rssBefore) / connections, KiB. */
  kibPerConnection: number;
  /** The goal for the RSS with all of them open, in MB of 10^6 bytes (the stricter reading of "MB"). */
  limitMB: number;
}

export function emptyRow(target: string, pipeline: number, status: Row['status'], note: string): Row {
  return {
    target, pipeline, status, note,
    opsPerSec: null, p50Us: null, p99Us: null, idleP50Us: null, idleP99Us: null, idleSetP50Us: null, idleSetP99Us: null, pacedP50Us: null, pacedP99Us: null,
    cpuUsPerOpTarget: null, cpuUsPerOpBackends: null, cpuUsPerOpLoadgen: null,
    errors: null, connErrors: null, misses: null, ratioToDirect: null, ratioToTwemproxy: null,
    getOpsPerSec: null, getP50Us: null, getP99Us: null, setOpsPerSec: null, setP50Us: null, setP99Us: null,
    getRatioToMcmux1: null, replicationFailures: null, upstreamErrors: null, journalKeys: null, busyAfterS: null, repairS: null,
    rounds: [], roundRatioToDirect: [], roundRatioToTwemproxy: [], roundGetRatioToMcmux1: [],
    roundRatioToBaseline: [], roundCpuRatioToBaseline: [],
  };
}

/**
 * Fills in the ratio columns: each row against the row of the same pipeline depth, and each of
 * its rounds against the same round of that row.
 */
export function addRatios(rows: Row[]): void {
  const find = (target: string, pipeline: number) => rows.find((r) => r.target === target && r.pipeline === pipeline && r.opsPerSec !== null);
  const ratio = (a: number | null, b: number | null | undefined) => (a !== null && b ? a / b : null);
  const perRound = (r: Row, base: Row | undefined, pick: (f: RoundFigures) => number | null) =>
    r.rounds.map((f) => {
      const b = base?.rounds.find((x) => x.round === f.round);
      return b ? ratio(pick(f), pick(b)) : null;
    });
  for (const r of rows) {
    if (r.opsPerSec === null) continue;
    const d = find('direct', r.pipeline);
    const t = find('twemproxy', r.pipeline);
    const m = find('mcmux1', r.pipeline);
    r.ratioToDirect = ratio(r.opsPerSec, d?.opsPerSec);
    r.ratioToTwemproxy = ratio(r.opsPerSec, t?.opsPerSec);
    r.getRatioToMcmux1 = ratio(r.getOpsPerSec, m?.getOpsPerSec);
    r.roundRatioToDirect = perRound(r, d, (f) => f.opsPerSec);
    r.roundRatioToTwemproxy = perRound(r, t, (f) => f.opsPerSec);
    r.roundGetRatioToMcmux1 = perRound(r, m, (f) => f.getOpsPerSec);
    const base = find(`${r.target}${BASELINE}`, r.pipeline);
    if (base) {
      r.roundRatioToBaseline = perRound(r, base, (f) => f.opsPerSec);
      r.roundCpuRatioToBaseline = perRound(r, base, (f) => f.cpuUsPerOpTarget);
    }
  }
}

/**
 * One line per row that has a --baseline twin: the medians of its per-round ratios (a paired
 * comparison: each round's two runs were back to back) and their range.
 */
export function formatBaseline(rows: Row[]): string[] {
  const out: string[] = [];
  for (const r of rows) {
    const ops = r.roundRatioToBaseline.filter((x): x is number => x !== null);
    if (ops.length === 0) continue;
    const cpu = r.roundCpuRatioToBaseline.filter((x): x is number => x !== null);
    const range = (xs: number[]) => `${fixed(Math.min(...xs), 2)}–${fixed(Math.max(...xs), 2)}`;
    const cpuPart = cpu.length > 0 ? `, CPU µs/op ×${fixed(median(cpu), 2)} (${range(cpu)})` : '';
    out.push(`${r.target} pipe ${r.pipeline} against ${r.target}${BASELINE}, median of ${ops.length} rounds: ops/s ×${fixed(median(ops), 2)} (${range(ops)})${cpuPart}`);
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const COLUMNS: Column[] = [
  ['target', (r) => r.target],
  ['pipe', (r) => String(r.pipeline)],
  ['ops/s', (r) => int(r.opsPerSec)],
  ['p50 µs', (r) => int(r.p50Us)],
  ['p99 µs', (r) => int(r.p99Us)],
  ['idle p50 µs', (r) => int(r.idleP50Us)],
  ['paced p50 µs', (r) => int(r.pacedP50Us)],
  ['CPU µs/op target', (r) => fixed(r.cpuUsPerOpTarget, 2)],
  ['CPU µs/op stores', (r) => fixed(r.cpuUsPerOpBackends, 2)],
  ['CPU µs/op loadgen', (r) => fixed(r.cpuUsPerOpLoadgen, 2)],
  ['× direct', (r) => fixed(r.ratioToDirect, 2)],
  ['× twemproxy', (r) => fixed(r.ratioToTwemproxy, 2)],
  ['errors', (r) => (r.errors === null ? '' : String(r.errors + (r.connErrors ?? 0)))],
];

/** The same runs, gets and sets apart. */
const KIND_COLUMNS: Column[] = [
  ['target', (r) => r.target],
  ['pipe', (r) => String(r.pipeline)],
  ['get ops/s', (r) => int(r.getOpsPerSec)],
  ['get p50 µs', (r) => int(r.getP50Us)],
  ['get p99 µs', (r) => int(r.getP99Us)],
  ['set ops/s', (r) => int(r.setOpsPerSec)],
  ['set p50 µs', (r) => int(r.setP50Us)],
  ['set p99 µs', (r) => int(r.setP99Us)],
  ['idle set p50 µs', (r) => int(r.idleSetP50Us)],
  ['get × mcmux1', (r) => fixed(r.getRatioToMcmux1, 2)],
  ['writes missed', (r) => int(r.replicationFailures)],
  ['upstream errors', (r) => int(r.upstreamErrors)],
  ['left to repair', (r) => int(r.journalKeys)],
  ['busy after s', (r) => fixed(r.busyAfterS, 1)],
];

type Column = [string, (r: Row) => string];

/** Both tables as aligned text (first column left, figures right); notes after them. */
export function formatTable(rows: Row[]): string {
  const notes = rows.filter((r) => r.status === 'ok' && r.note).map((r) => `${r.target} pipe ${r.pipeline}: ${r.note}`);
  return [textTable(COLUMNS, rows, true), '', textTable(KIND_COLUMNS, rows, false), ...notes].join('\n');
}

function textTable(columns: Column[], rows: Row[], withWhy: boolean): string {
  const cells = rows.map((r) => columns.map(([, f], i) => (r.status === 'ok' || i < 2 ? f(r) : '')));
  const widths = columns.map(([h], i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  const out = [line(columns.map(([h]) => h)), widths.map((w) => '-'.repeat(w)).join('  ')];
  rows.forEach((r, i) => {
    if (r.status === 'ok') out.push(line(cells[i]!));
    else out.push(`${line(cells[i]!.slice(0, 2))}  ${withWhy ? r.note : r.status}`);
  });
  return out.join('\n');
}

/**
 * The same rows round by round (run order), when there was more than one round. A round a row
 * lacks (its target failed then) shows as `-`, so that every column lines up by round.
 */
export function formatRounds(rows: Row[]): string | undefined {
  const r = roundTable(rows);
  return r && `${ROUNDS_TITLE}:\n${textTable(r.columns, r.rows, false)}`;
}

const ROUNDS_TITLE = "Round by round, in run order (each row's figures above are its median round's)";

function roundTable(rows: Row[]): { columns: Column[]; rows: Row[] } | undefined {
  const many = rows.filter((r) => r.status === 'ok' && r.rounds.length > 1);
  if (many.length === 0) return undefined;
  const last = Math.max(...many.flatMap((r) => r.rounds.map((f) => f.round)));
  const numbers = Array.from({ length: last }, (_, i) => i + 1);
  const byRound = (r: Row, cell: (i: number) => string): string =>
    numbers.map((n) => {
      const i = r.rounds.findIndex((f) => f.round === n);
      return i < 0 ? '-' : cell(i);
    }).join(' ');
  const ratios = (r: Row, xs: Array<number | null>): string => (xs.every((x) => x === null) ? '' : byRound(r, (i) => fixed(xs[i] ?? null, 2) || '-'));
  const columns: Column[] = [
    ['target', (r) => r.target],
    ['pipe', (r) => String(r.pipeline)],
    ['ops/s by round (k)', (r) => byRound(r, (i) => (r.rounds[i]!.opsPerSec / 1000).toFixed(1))],
    ['× twemproxy', (r) => ratios(r, r.roundRatioToTwemproxy)],
    ['× direct', (r) => ratios(r, r.roundRatioToDirect)],
    ['get × mcmux1', (r) => ratios(r, r.roundGetRatioToMcmux1)],
    ['idle p50 µs', (r) => byRound(r, (i) => int(r.rounds[i]!.idleP50Us))],
    ['idle set p50 µs', (r) => byRound(r, (i) => int(r.rounds[i]!.idleSetP50Us))],
    ['paced p50 µs', (r) => byRound(r, (i) => int(r.rounds[i]!.pacedP50Us) || '-')],
  ];
  if (many.some((r) => r.roundRatioToBaseline.length > 0)) {
    columns.push(['× base', (r) => ratios(r, r.roundRatioToBaseline)], ['CPU × base', (r) => ratios(r, r.roundCpuRatioToBaseline)]);
  }
  return { columns, rows: many };
}

/**
 * The run as Markdown, for docs/benchmarks.md: when, what machine and which command, then the
 * tables the terminal shows (per round too) and the notes under them.
 */
export function formatMarkdown(report: Report, notes: readonly string[] = []): string {
  const m = report.machine;
  const machine = Object.entries(m).map(([k, v]) => `${k} ${v}`).join(', ');
  const out = [
    `Run ${report.date}: \`${report.command}\``,
    '',
    `Machine: ${machine}`,
    '',
    markdownTable(COLUMNS, report.rows),
    '',
    markdownTable(KIND_COLUMNS, report.rows),
  ];
  const r = roundTable(report.rows);
  if (r) out.push('', `${ROUNDS_TITLE}:`, '', markdownTable(r.columns, r.rows));
  const rowNotes = report.rows.filter((x) => x.status === 'ok' && x.note).map((x) => `${x.target} pipe ${x.pipeline}: ${x.note}`);
  const all = [...formatBaseline(report.rows), ...rowNotes, ...notes, ...(report.idle ? [formatIdle(report.idle)] : [])];
  if (all.length > 0) out.push('', ...all.map((n) => `- ${n}`));
  return out.join('\n') + '\n';
}

function markdownTable(columns: Column[], rows: Row[]): string {
  const head = `| ${columns.map(([h]) => h).join(' | ')} |`;
  const rule = `|${columns.map((_, i) => (i < 2 ? ' --- ' : ' ---: ')).join('|')}|`;
  const body = rows.map((r) => {
    const c = columns.map(([, f], i) => (r.status === 'ok' || i < 2 ? f(r) : i === 2 ? r.note : ''));
    return `| ${c.join(' | ')} |`;
  });
  return [head, rule, ...body].join('\n');
}

/** One line about mcmux's memory with idle connections open. */
export function formatIdle(m: IdleMemory): string {
  const bytes = m.rssOpenMiB * 1024 * 1024;
  const verdict = bytes <= m.limitMB * 1e6 ? `under the ${m.limitMB} MB goal` : `OVER the ${m.limitMB} MB goal`;
  return `${m.target} with ${m.connections} idle connections (curr_connections ${m.currConnections}): ` +
    `RSS ${m.rssOpenMiB.toFixed(1)} MiB (${m.rssBeforeMiB.toFixed(1)} MiB before, ${m.kibPerConnection.toFixed(1)} KiB a connection; ` +
    `${m.rssAfterMiB.toFixed(1)} MiB after closing them): ${verdict}`;
}

/** The JSON at `jsonPath`; the SVG and the Markdown beside it (`x.json` → `x.svg`, `x.md`). */
export function writeReport(report: Report, jsonPath: string, notes: readonly string[] = []): { svg: string; md: string } {
  const base = jsonPath.endsWith('.json') ? jsonPath.slice(0, -5) : jsonPath;
  const paths = { svg: `${base}.svg`, md: `${base}.md` };
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, JSON.stringify(report, null, 2) + '\n');
  writeFileSync(paths.svg, barChart(report.rows, report.settings));
  writeFileSync(paths.md, formatMarkdown(report, notes));
  return paths;
}

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759'];

/** Grouped bars: one group per target, one bar per pipeline depth, height = ops/s. */
export function barChart(rows: Row[], settings: Report['settings']): string {
  const targets = [...new Set(rows.map((r) => r.target))];
  const depths = [...new Set(rows.map((r) => r.pipeline))];
  const max = niceCeil(Math.max(1, ...rows.map((r) => r.opsPerSec ?? 0)));
  const W = Math.max(720, 90 + targets.length * 110), H = 360, left = 70, right = 20, top = 50, bottom = 60;
  const plotW = W - left - right, plotH = H - top - bottom;
  const groupW = plotW / Math.max(1, targets.length);
  const barW = Math.min(60, (groupW * 0.8) / Math.max(1, depths.length));
  const y = (v: number) => top + plotH - (v / max) * plotH;
  const s: string[] = [];
  s.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  s.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  const sub = `${settings['connections']} connections, get:set ${settings['ratio']}, ${settings['valueSize']} B values, ${settings['durationS']} s`;
  s.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">ops/s by target (higher is better)</text>`);
  s.push(`<text x="${W / 2}" y="38" text-anchor="middle" fill="#555">${esc(sub)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    s.push(`<line x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    s.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${esc(kilo(v))}</text>`);
  }
  targets.forEach((t, ti) => {
    const gx = left + ti * groupW + (groupW - barW * depths.length) / 2;
    depths.forEach((d, di) => {
      const r = rows.find((x) => x.target === t && x.pipeline === d);
      const x = gx + di * barW;
      if (r?.opsPerSec == null) {
        s.push(`<text x="${x + barW / 2}" y="${top + plotH - 6}" text-anchor="middle" fill="#999">n/a</text>`);
        return;
      }
      const h = top + plotH - y(r.opsPerSec);
      s.push(`<rect x="${x + 2}" y="${y(r.opsPerSec)}" width="${barW - 4}" height="${h}" fill="${COLORS[di % COLORS.length]}"/>`);
      s.push(`<text x="${x + barW / 2}" y="${y(r.opsPerSec) - 4}" text-anchor="middle">${esc(kilo(r.opsPerSec))}</text>`);
    });
    s.push(`<text x="${left + ti * groupW + groupW / 2}" y="${top + plotH + 20}" text-anchor="middle">${esc(t)}</text>`);
  });
  s.push(`<line x1="${left}" x2="${W - right}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  depths.forEach((d, di) => {
    const x = left + di * 130;
    s.push(`<rect x="${x}" y="${H - 22}" width="12" height="12" fill="${COLORS[di % COLORS.length]}"/>`);
    s.push(`<text x="${x + 18}" y="${H - 12}">pipeline ${d}</text>`);
  });
  s.push('</svg>', '');
  // Two decimals are plenty for a pixel; full doubles only make the file noisy to diff.
  return s.join('\n').replace(/(\d+\.\d{2})\d+/g, '$1');
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function kilo(v: number): string {
  return v >= 1000 ? `${(v / 1000).toFixed(v >= 100_000 ? 0 : 1)}k` : String(Math.round(v));
}

function int(v: number | null): string {
  return v === null ? '' : String(Math.round(v));
}

function fixed(v: number | null, digits: number): string {
  return v === null || !Number.isFinite(v) ? '' : v.toFixed(digits);
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
