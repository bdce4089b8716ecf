/** The bench's per-round figures: ratios are taken within a round, never across rounds. */

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { type Report, type RoundFigures, type Row, addRatios, emptyRow, formatBaseline, formatMarkdown, formatRounds, writeReport } from '../../bench/report';

/** A row from its rounds: [round, thousands of ops/s, thousands of gets/s]. */
function row(target: string, rounds: Array<[number, number, number]>): Row {
  const figures: RoundFigures[] = rounds.map(([round, kops, kgets]) => ({ round, opsPerSec: kops * 1000, getOpsPerSec: kgets * 1000, idleP50Us: 100 + round, idleSetP50Us: 200 + round, pacedP50Us: 300 + round, cpuUsPerOpTarget: 10 + round }));
  // As the comparison makes it: the row's own figures are its median round's.
  const median = [...figures].sort((a, b) => a.opsPerSec - b.opsPerSec)[Math.floor(figures.length / 2)]!;
  return { ...emptyRow(target, 1, 'ok', ''), opsPerSec: median.opsPerSec, getOpsPerSec: median.getOpsPerSec, rounds: figures };
}

it('each round is compared with the same round of twemproxy, direct and mcmux1', () => {
  const rows = [
    row('direct', [[1, 100, 90], [2, 80, 72], [3, 120, 108]]),
    row('twemproxy', [[1, 50, 45], [2, 40, 36], [3, 60, 54]]),
    row('mcmux1', [[1, 60, 54], [2, 40, 36], [3, 30, 27]]),
    // A row that lost its second round (the target failed): its rounds stay matched by number.
    row('mcmux3', [[1, 30, 27], [3, 15, 13.5]]),
  ];
  addRatios(rows);
  const m1 = rows[2]!;
  assert.deepEqual(m1.roundRatioToTwemproxy, [1.2, 1, 0.5]);
  assert.deepEqual(m1.roundRatioToDirect, [0.6, 0.5, 0.25]);
  assert.deepEqual(m1.roundGetRatioToMcmux1, [1, 1, 1]);
  // The median row's ratio (40 / 50) is not any round's: what the per-round figures are for.
  assert.equal(m1.ratioToTwemproxy, 0.8);
  assert.equal(m1.opsPerSec, 40_000);
  const m3 = rows[3]!;
  assert.deepEqual(m3.roundRatioToTwemproxy, [0.6, 0.25]);
  assert.deepEqual(m3.roundGetRatioToMcmux1, [0.5, 0.5]);

  const text = formatRounds(rows)!;
  // No --baseline: no columns for it, and no summary.
  assert.doesNotMatch(text, /× base/);
  assert.deepEqual(formatBaseline(rows), []);
  // mcmux3 lost round 2: its columns still line up by round.
  const m3line = text.split('\n').find((l) => l.startsWith('mcmux3 '))!;
  assert.match(m3line, /30\.0 - 15\.0/);
  assert.match(m3line, /0\.60 - 0\.25/);
  const line = text.split('\n').find((l) => l.startsWith('mcmux1 '))!;
  assert.match(line, /60\.0 40\.0 30\.0/); // ops/s in thousands, in run order
  assert.match(line, /1\.20 1\.00 0\.50/);
  assert.match(line, /101 102 103/);
  assert.match(line, /201 202 203/);
  assert.match(line, /301 302 303/);
});

it('no round-by-round table for a single round, nor a twemproxy ratio without twemproxy', () => {
  const one = [row('direct', [[1, 100, 90]]), row('mcmux1', [[1, 60, 54]])];
  addRatios(one);
  assert.equal(formatRounds(one), undefined);
  assert.deepEqual(one[1]!.roundRatioToTwemproxy, [null]);
  const two = [row('direct', [[1, 100, 90], [2, 100, 90]]), row('mcmux1', [[1, 60, 54], [2, 50, 45]])];
  addRatios(two);
  const line = formatRounds(two)!.split('\n').find((l) => l.startsWith('mcmux1 '))!;
  assert.match(line, /0\.60 0\.50/);
  assert.doesNotMatch(line, /- -/);
});

/** A report of the rows above, as the comparison writes it. */
function report(rows: Row[]): Report {
  return { date: '2026-11-27T04:00:00.000Z', machine: { cpu: 'Test CPU', cores: 2 }, settings: {}, command: 'node dist/bench/run.js --repeat 3', rows };
}

it('the Markdown holds the run, the machine, both tables and the per-round one, lined up', () => {
  const rows = [
    row('direct', [[1, 100, 90], [2, 80, 72], [3, 120, 108]]),
    row('twemproxy', [[1, 50, 45], [2, 40, 36], [3, 60, 54]]),
    { ...row('mcmux1', [[1, 60, 54], [2, 40, 36], [3, 30, 27]]), cpuUsPerOpTarget: 20, cpuUsPerOpBackends: 7.5, cpuUsPerOpLoadgen: 16 },
    row('mcmux3', [[1, 30, 27], [3, 15, 13.5]]),
    emptyRow('mcmux2', 1, 'unavailable', 'not installed'),
  ];
  addRatios(rows);
  const md = formatMarkdown(report(rows), ['an idle note']);
  assert.match(md, /^Run 2026-11-27T04:00:00\.000Z: `node dist\/bench\/run\.js --repeat 3`/);
  assert.match(md, /Machine: cpu Test CPU, cores 2/);
  const lines = md.split('\n');
  // Three tables: a header, a rule, then one line per row; every line has its header's cells.
  const headers = lines.filter((l) => l.startsWith('| target |'));
  assert.equal(headers.length, 3);
  for (const h of headers) {
    const start = lines.indexOf(h);
    const cells = h.split('|').length;
    const end = lines.findIndex((l, i) => i > start && !l.startsWith('|'));
    const table = lines.slice(start, end < 0 ? undefined : end);
    assert.ok(table.length >= 4, `rows under ${h}`);
    for (const l of table) assert.equal(l.split('|').length, cells, l);
  }
  assert.match(headers[0]!, /\| CPU µs\/op target \| CPU µs\/op stores \| CPU µs\/op loadgen \|/);
  assert.ok(lines.includes('| mcmux1 | 1 | 40000 |  |  |  |  | 20.00 | 7.50 | 16.00 | 0.40 | 0.80 |  |'), md);
  // A target without figures says why.
  assert.ok(lines.includes('| mcmux2 | 1 | not installed |  |  |  |  |  |  |  |  |  |  |'), md);
  // Per round: in run order, a missing round as `-`.
  assert.ok(lines.some((l) => l.startsWith('| mcmux3 | 1 | 30.0 - 15.0 | 0.60 - 0.25 |')), md);
  assert.ok(lines.some((l) => l.startsWith('| mcmux1 | 1 | 60.0 40.0 30.0 | 1.20 1.00 0.50 | 0.60 0.50 0.25 |')), md);
  assert.ok(lines.includes('- an idle note'), md);
});

it('writeReport puts the SVG and the Markdown beside the JSON', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-report-'));
  try {
    const rows = [row('direct', [[1, 100, 90]]), row('mcmux1', [[1, 60, 54]])];
    addRatios(rows);
    const paths = writeReport(report(rows), join(dir, 'run.json'));
    assert.deepEqual(paths, { svg: join(dir, 'run.svg'), md: join(dir, 'run.md') });
    assert.equal(JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8')).rows.length, 2);
    assert.match(readFileSync(paths.svg, 'utf8'), /^<svg/);
    const md = readFileSync(paths.md, 'utf8');
    assert.match(md, /\| mcmux1 \| 1 \| 60000 \|/);
    // One round: no per-round table.
    assert.equal(md.split('\n').filter((l) => l.startsWith('| target |')).length, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

it('with --baseline, each round is compared with the same round of the other build', () => {
  const base = row('mcmux1@base', [[1, 50, 45], [2, 40, 36], [3, 60, 54]]);
  // The other build spent twice the CPU a request in every round.
  base.rounds = base.rounds.map((f) => ({ ...f, cpuUsPerOpTarget: 2 * f.cpuUsPerOpTarget! }));
  const rows = [row('mcmux1', [[1, 60, 54], [2, 40, 36], [3, 30, 27]]), base];
  addRatios(rows);
  assert.deepEqual(rows[0]!.roundRatioToBaseline, [1.2, 1, 0.5]);
  assert.deepEqual(rows[0]!.roundCpuRatioToBaseline, [0.5, 0.5, 0.5]);
  // The twin has no twin of its own.
  assert.deepEqual(rows[1]!.roundRatioToBaseline, []);
  // The summary takes the median of the per-round ratios (1.00), not the ratio of the medians (40 / 50).
  assert.deepEqual(formatBaseline(rows), ['mcmux1 pipe 1 against mcmux1@base, median of 3 rounds: ops/s ×1.00 (0.50–1.20), CPU µs/op ×0.50 (0.50–0.50)']);
  const text = formatRounds(rows)!;
  assert.match(text.split('\n')[1]!, /× base +CPU × base$/);
  const line = text.split('\n').find((l) => l.startsWith('mcmux1 '))!;
  assert.match(line, /1\.20 1\.00 0\.50 +0\.50 0\.50 0\.50$/);
  assert.ok(formatMarkdown(report(rows)).includes('- mcmux1 pipe 1 against mcmux1@base, median of 3 rounds'));
});
