/**
 * PHP's own session handler (php-memcached, text protocol) through mcmux on two memcached
 * processes: a counter kept in $_SESSION must count on, without a reset, while the upstreams
 * die and come back. Each run is a fresh `php` process, as each web request would be.
 *
 * What must hold, and why it is the whole point of mcmux:
 * - one upstream dies (SIGKILL): the session is read from the other, the count continues;
 * - the dead one comes back empty: once mcmux writes to it again, one request puts the session
 *   back (read repair and the replicated write), so that losing the OTHER one afterwards loses
 *   nothing. Killing the other before that is not meaningful: it held the only copy.
 * - the lock key (`add lock.<sid>` with no expiry) never survives a request: a leftover would
 *   make every later request wait for the lock.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { eventually, killAndWait, mcmuxOverTwoMemcached, peekItem, rawClient } from '../helpers/mcmux';
import { newSid, requirePhpExtension, runPhpMemcached, sessionValue } from '../helpers/php-session';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';

const RUNS = 30;
/** One php run: start-up, a lock, a read, a write; bounded far above what it needs. */
const PHP_TIMEOUT_MS = 20_000;

const SCRIPT = `<?php
session_id($argv[1]);
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo $_SESSION['n'], "\\n";
`;

/** php-memcached's default session.save_path key prefix. */
const PREFIX = 'memc.sess.key.';

/** One run over php-memcached's text protocol (memcached.sess_binary_protocol=0). */
const runPhp = (script: string, port: number, sid: string): Promise<string> => runPhpMemcached(script, port, sid, false, PHP_TIMEOUT_MS);

test('PHP sessions (php-memcached, text protocol)', async (t) => {
  if (!requireBinary(t, 'php', 'php-cli php-memcached')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-php-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'count.php');
  await writeFile(script, SCRIPT);

  await t.test('control: the script counts against memcached directly', async (t) => {
    const mc = await startMemcached();
    t.after(() => mc.stop());
    const sid = newSid();
    for (let i = 1; i <= 3; i++) assert.equal(await runPhp(script, mc.port, sid), `${i}\n`);
    assert.equal((await peekItem(mc.port, PREFIX + sid))?.value, sessionValue(3));
    assert.equal(await peekItem(mc.port, `${PREFIX}lock.${sid}`), undefined);
    // Another session id is another counter.
    assert.equal(await runPhp(script, mc.port, newSid()), '1\n');
  });

  await t.test('through mcmux: the count survives losing either upstream', async (t) => {
    const { mc1, mc2, mux } = await mcmuxOverTwoMemcached(t, ['--timeout', '1000']);
    const sid = newSid();
    const key = PREFIX + sid;
    const lock = `${PREFIX}lock.${sid}`;
    let n = 0;
    const run = async (): Promise<void> => {
      n++;
      assert.equal(await runPhp(script, mux.port, sid), `${n}\n`, `run ${n}: the count must continue`);
    };
    const holds = async (mc: MemcachedProcess, which: string): Promise<void> => {
      assert.equal((await peekItem(mc.port, key))?.value, sessionValue(n), `${which} memcached holds the session at ${n}`);
      assert.equal(await peekItem(mc.port, lock), undefined, `${which} memcached holds no leftover lock`);
    };
    /** Waits (bounded) until mcmux writes to `mc` again after it came back. */
    const reconnected = async (mc: MemcachedProcess): Promise<void> => {
      const c = await rawClient(mux.port);
      try {
        await eventually('mcmux writes to the restarted memcached', async () => {
          assert.equal(await c.ask(`set probe.${sid} 0 0 1\r\np\r\n`), 'STORED\r\n');
          return (await peekItem(mc.port, `probe.${sid}`)) !== undefined;
        });
      } finally {
        c.close();
      }
    };

    const third = Math.floor(RUNS / 3);
    while (n < third) await run();
    await holds(mc1, 'the first');
    await holds(mc2, 'the second');

    // The first (read-priority) upstream dies: reads fail over to the second.
    await killAndWait(mc1);
    while (n < 2 * third) await run();
    await holds(mc2, 'the second');

    // It comes back empty; once mcmux uses it again, one request puts the session back into it.
    await mc1.restart();
    assert.equal(await peekItem(mc1.port, key), undefined, 'restarted empty');
    await reconnected(mc1);
    await run();
    await holds(mc1, 'the restarted first');
    await holds(mc2, 'the second');

    // Now the OTHER one dies: the restarted first has the session, the count still continues.
    await killAndWait(mc2);
    while (n < RUNS) await run();
    await holds(mc1, 'the first');
    assert.equal(n, RUNS);
    assert.equal(mux.proc.exitCode, null, `mcmux is still running; stderr: ${mux.logs().stderr}`);
  });
});
