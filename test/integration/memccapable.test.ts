/**
 * libmemcached's protocol conformance checker, `memccapable` (Debian: libmemcached-tools),
 * against mcmux in front of two private, throwaway memcached processes. It runs 27 binary and
 * 27 ascii tests (memcached 1.6 itself passes all 54), flushing the server as it goes: hence
 * `--allow-flush`, which mcmux refuses by default.
 *
 * Each run's output is one line per test, `<protocol> <name> [pass|fail|skip]`; every line is
 * parsed and the failures are listed in the assertion message, so a regression names the test.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { markerKey } from '../../src/router/cold-detector';
import { END, type McmuxProcess, eventually, mcmuxOverTwoMemcached, peekItem, rawClient } from '../helpers/mcmux';
import { requireBinary } from '../helpers/servers';

const TESTS_PER_PROTOCOL = 27;
/** One memccapable run takes well under a second against memcached; bounded far above. */
const RUN_TIMEOUT_MS = 30_000;
/** memccapable's own per-operation I/O timeout, seconds (-t). */
const IO_TIMEOUT_S = 5;

interface Result {
  readonly protocol: 'ascii' | 'binary';
  readonly name: string;
  readonly outcome: string;
}

interface Run {
  readonly results: Result[];
  /** Exit code (null when killed), and everything it printed. */
  readonly code: number | null;
  readonly output: string;
}

/**
 * A test's name, padded to 40 columns (memcapable.cc: `%-40s`, flushed before the test runs).
 * Its outcome follows: `[pass]` on stdout, `[FAIL]` on stderr, possibly after what the failed
 * check printed. Hence both streams go through ONE pipe (`2>&1`), which keeps them in order.
 */
const NAME = /^(ascii|binary) (\S+(?: \S+)*?) {2,}/gm;
const OUTCOME = /\[(pass|fail|skip)\]/gi;

/** One result per test name in `output`: the last [outcome] between it and the next name. */
function parse(output: string): Result[] {
  const names = [...output.matchAll(NAME)];
  return names.map((m, i) => {
    const from = (m.index ?? 0) + m[0].length;
    const to = names[i + 1]?.index ?? output.length;
    const outcomes = [...output.slice(from, to).matchAll(OUTCOME)];
    const last = outcomes[outcomes.length - 1];
    return { protocol: m[1] as Result['protocol'], name: m[2] as string, outcome: last ? (last[1] as string).toLowerCase() : 'no outcome printed' };
  });
}

function memccapable(port: number, mode: string[]): Promise<Run> {
  const args = ['-h', '127.0.0.1', '-p', String(port), '-t', String(IO_TIMEOUT_S), ...mode];
  return new Promise((resolve) => {
    execFile('sh', ['-c', 'exec memccapable "$@" 2>&1', 'memccapable', ...args], { timeout: RUN_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err, stdout) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ results: parse(stdout), code, output: stdout });
    });
  });
}

/** Every expected test ran and passed; otherwise the failures (and what did not run) are named. */
function assertAllPass(run: Run, protocols: ReadonlyArray<Result['protocol']>, mux: McmuxProcess): void {
  const expected = protocols.length * TESTS_PER_PROTOCOL;
  const failures = run.results.filter((r) => r.outcome !== 'pass').map((r) => `${r.protocol} ${r.name}: ${r.outcome}`);
  const context = `memccapable output:\n${run.output}\nmcmux stderr (tail): ${mux.logs().stderr.slice(-2000)}`;
  assert.deepEqual(failures, [], `failed tests:\n  ${failures.join('\n  ')}\n${context}`);
  for (const p of protocols) {
    const ran = run.results.filter((r) => r.protocol === p).length;
    assert.equal(ran, TESTS_PER_PROTOCOL, `${p}: ${ran} tests reported, expected ${TESTS_PER_PROTOCOL}\n${context}`);
  }
  assert.equal(run.results.length, expected, `${run.results.length} tests reported, expected ${expected}\n${context}`);
  assert.equal(run.code, 0, `memccapable exit status\n${context}`);
  assert.match(run.output, /All tests passed/, context);
}

test('memccapable against mcmux on two memcached (--allow-flush)', async (t) => {
  if (!requireBinary(t, 'memccapable', 'libmemcached-tools')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const { mc1, mux } = await mcmuxOverTwoMemcached(t, ['--allow-flush']);

  const passed: string[] = [];
  await t.test(`binary (-b): ${TESTS_PER_PROTOCOL} of ${TESTS_PER_PROTOCOL}`, async () => {
    const run = await memccapable(mux.port, ['-b']);
    assertAllPass(run, ['binary'], mux);
    passed.push(`-b ${run.results.length}/${TESTS_PER_PROTOCOL}`);
  });
  await t.test(`ascii (-a): ${TESTS_PER_PROTOCOL} of ${TESTS_PER_PROTOCOL}`, async () => {
    const run = await memccapable(mux.port, ['-a']);
    assertAllPass(run, ['ascii'], mux);
    passed.push(`-a ${run.results.length}/${TESTS_PER_PROTOCOL}`);
  });
  await t.test(`default run (both): ${2 * TESTS_PER_PROTOCOL} of ${2 * TESTS_PER_PROTOCOL}`, async () => {
    const run = await memccapable(mux.port, []);
    assertAllPass(run, ['ascii', 'binary'], mux);
    passed.push(`default ${run.results.length}/${2 * TESTS_PER_PROTOCOL}`);
  });
  t.diagnostic(`passed: ${passed.join(', ')}`);
  assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);

  // The first upstream restarts empty: mcmux fences it (lock-fence, 60 s), so add/cas/incr are
  // decided by the second; `set` replies and `gets` must then carry the second one's cas unique,
  // or every cas fails with EXISTS for the whole fence (memccapable's `binary set`, `binary
  // setq` and `ascii cas` caught that).
  await t.test(
    `after the first upstream restarted empty (fenced): ${2 * TESTS_PER_PROTOCOL} of ${2 * TESTS_PER_PROTOCOL}`,
    async () => {
      // memccapable's flushes make mcmux forget its marker (README: `mcmux.sentinel.<host>`);
      // once it has written it again, losing it means "came back empty".
      const marker = markerKey();
      await eventually('mcmux rewrites its marker after the flushes', async () => (await peekItem(mc1.port, marker)) !== undefined);
      await mc1.restart();
      const c = await rawClient(mux.port);
      try {
        // Writes make mcmux reconnect to it; its marker key is gone, which fences it.
        await eventually('mcmux fences the restarted first upstream', async () => {
          assert.equal(await c.ask('set memccapable.probe 0 0 1\r\np\r\n'), 'STORED\r\n');
          return /^STAT upstream\.0\.fenced 1\r$/m.test(await c.ask('stats upstreams\r\n', END));
        });
      } finally {
        c.close();
      }
      const run = await memccapable(mux.port, []);
      assertAllPass(run, ['ascii', 'binary'], mux);
    },
  );
});
