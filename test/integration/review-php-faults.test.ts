/**
 * Real PHP session clients through mcmux (two memcached and a SQLite store behind it) under
 * faults. This file holds the case the review found; the kills, pauses, destroys, regenerated
 * ids, lock contention and short lifetimes it also ran held their invariants.
 *
 * session.use_strict_mode = 1 (what PHP's manual asks for) makes session_start() ask the handler
 * whether the id exists before it reads: php-memcached calls libmemcached's memcached_exist,
 * which sends `add <key> 0 2678400 0` (a 1970 deadline: stored and at once expired, so it changes
 * nothing in memcached) and takes NOT_STORED as "exists". An unknown id is replaced by a new, empty
 * session: the user is logged out.
 *
 * The first memcached lost the session (it restarted empty and its fence has ended, or it evicted
 * the item) while the second and SQLite still hold it. Decided by that memcached as an authority,
 * the probe was STORED, and its copy, an expired set, deleted the session from the second
 * memcached and from SQLite. What must hold: the probe finds the session where a get finds it,
 * and deletes nothing; the count goes on.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { END, type McmuxProcess, eventually, killAndWait, peekItem, rawClient, startMcmux } from '../helpers/mcmux';
import { getThrough, newSid, phpOutcome, request, requirePhpExtension, sessionValue } from '../helpers/php-session';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';

/** One php run: start-up, the probe, a lock, a read, a write; bounded far above what it needs. */
const PHP_TIMEOUT_MS = 15_000;
/** php-memcached's default session key prefix (memcached.sess_prefix). */
const PREFIX = 'memc.sess.key.';

const SCRIPT = `<?php
session_id($argv[1]);
if (!session_start()) { fwrite(STDERR, "session_start failed\\n"); exit(3); }
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo $_SESSION['n'], "\\n";
`;

type Protocol = 'binary' | 'text';

interface Rig {
  readonly mcs: readonly [MemcachedProcess, MemcachedProcess];
  readonly mux: McmuxProcess;
  /** One request of `sid`; `strict` sets session.use_strict_mode=1. Its printed count, or why none. */
  count(sid: string, strict: boolean): Promise<{ count: number | undefined; problem: string | undefined }>;
  /** A line of mcmux's `stats`. */
  stat(name: string): Promise<string | undefined>;
}

async function rig(t: TestContext, dir: string, script: string, protocol: Protocol, args: string[]): Promise<Rig> {
  const mcs = [await startMemcached(), await startMemcached()] as const;
  t.after(() => Promise.all(mcs.map((mc) => mc.stop())));
  // A file of its own: the marker an earlier mcmux left in a shared one would fence both memcached.
  const sqlite = pathToFileURL(await mkdtemp(join(dir, 'store-'))).href.replace(/^file:/, 'sqlite:') + '/store.db';
  const mux = await startMcmux(['--upstream', mcs[0].url, '--upstream', mcs[1].url, '--upstream', sqlite, '--log-level', 'warn', ...args]);
  t.after(() => mux.stop());
  const settings = (port: number, strict: boolean): string[] =>
    Object.entries({
      'session.save_handler': 'memcached',
      'session.save_path': `127.0.0.1:${port}`,
      'memcached.sess_locking': '1',
      'memcached.sess_binary_protocol': protocol === 'binary' ? '1' : '0',
      'session.use_strict_mode': strict ? '1' : '0',
      display_errors: 'stderr',
      error_reporting: '-1',
    }).flatMap(([k, v]) => ['-d', `${k}=${v}`]);
  return {
    mcs,
    mux,
    count: async (sid, strict) => {
      const { count, problem } = await request(() => phpOutcome([...settings(mux.port, strict), script, sid], PHP_TIMEOUT_MS), 0, false);
      return { count, problem };
    },
    stat: async (name) => {
      const c = await rawClient(mux.port);
      try {
        return new RegExp(`STAT ${name.replace(/\./g, '\\.')} (\\S+)\\r\\n`).exec(await c.ask('stats\r\n', END))?.[1];
      } finally {
        c.close();
      }
    },
  };
}

test('PHP strict-mode sessions through mcmux: a first memcached that lost the session does not log the user out', async (t) => {
  if (!requireBinary(t, 'php', 'php-cli php-memcached')) return;
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  if (!(await requirePhpExtension(t, 'memcached', PHP_TIMEOUT_MS))) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-review-php-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'count.php');
  await writeFile(script, SCRIPT);

  /** Two requests (strict mode refuses an id it did not create: the first is not strict). */
  const begin = async (r: Rig, sid: string): Promise<void> => {
    assert.deepEqual(await r.count(sid, false), { count: 1, problem: undefined });
    assert.deepEqual(await r.count(sid, true), { count: 2, problem: undefined });
  };
  /** The next strict request continues at 3, and every store but the first still has the session. */
  const continues = async (r: Rig, sid: string): Promise<void> => {
    assert.deepEqual(await r.count(sid, true), { count: 3, problem: undefined }, 'strict mode finds the session: the user is not logged out');
    assert.equal(await getThrough(r.mux.port, PREFIX + sid), sessionValue(3), 'mcmux serves the session');
    assert.equal((await peekItem(r.mcs[1].port, PREFIX + sid))?.value, sessionValue(3), 'the second memcached holds it');
  };

  for (const protocol of ['binary', 'text'] as const) {
    await t.test(`${protocol}: the first memcached restarted empty, its lock-fence ended`, async (t) => {
      const r = await rig(t, dir, script, protocol, ['--lock-fence', '500']);
      const sid = newSid();
      await begin(r, sid);
      await killAndWait(r.mcs[0]);
      await r.mcs[0].restart();
      await eventually('the restarted memcached is fenced', async () => (await r.stat('upstream.0.fenced')) === '1');
      await eventually('its lock-fence ended', async () => (await r.stat('upstream.0.fenced')) === '0');
      await continues(r, sid);
    });

    await t.test(`${protocol}: the first memcached dropped the session (evicted)`, async (t) => {
      const r = await rig(t, dir, script, protocol, []);
      const sid = newSid();
      await begin(r, sid);
      // As an eviction does: the item leaves the first memcached, mcmux is not told.
      const direct = await rawClient(r.mcs[0].port);
      try {
        assert.equal(await direct.ask(`md ${PREFIX}${sid}\r\n`), 'HD\r\n');
      } finally {
        direct.close();
      }
      await continues(r, sid);
    });
  }
});
