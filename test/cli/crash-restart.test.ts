/**
 * bin/mcmux killed (SIGKILL), then started again on the same state directory: requests the dead
 * process had sent may still land on the upstreams, and journal.log, which its process did not
 * close, tells the next one so. That one logs that it waits, and for how long, and listens only
 * after; one started after a clean stop (SIGTERM) does not wait. (The router-level tests of what
 * the wait is for: test/router/fuzz-findings.test.ts, the last describe block.)
 */

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, it } from 'node:test';
import { killAndWait, rawClient, runMcmux, startMcmux } from '../helpers/mcmux';
import { requireBinary, startMemcached } from '../helpers/servers';

type LogLine = { msg?: string; time?: number; waitMs?: number };
const lines = (stdout: string): LogLine[] =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
const WAITS = /did not stop cleanly last time/;

/** A state directory of the test's own, removed after it. */
function stateDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-crash-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

it('mcmux killed: the next process logs that it waits for what the dead one sent and listens only after; after a clean stop it does not wait', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await Promise.all([startMemcached(), startMemcached()]);
  t.after(() => Promise.all(servers.map((m) => m.stop())));
  const args = servers.flatMap((m) => ['--upstream', `${m.url}?timeout=200`]);
  const env = { STATE_DIRECTORY: stateDir(t) };

  const first = await startMcmux(args, { env });
  assert.ok(!lines(first.logs().stdout).some((l) => WAITS.test(String(l.msg))), 'a first start does not wait');
  await first.stop('SIGKILL');

  const second = await startMcmux(args, { env }); // resolves once it answers
  await second.stop(); // SIGTERM: a clean stop
  const log = lines(second.logs().stdout);
  const wait = log.findIndex((l) => WAITS.test(String(l.msg)));
  const listening = log.findIndex((l) => l.msg === 'mcmux listening');
  assert.ok(wait >= 0, `the wait is logged: ${second.logs().stdout}`);
  const waitMs = log[wait]?.waitMs ?? 0;
  assert.ok(waitMs > 1000 && waitMs <= 1200, `for the upstreams' timeout and the settle time since it started: ${waitMs} ms`);
  assert.ok(listening > wait, 'it listens after the wait began');
  // Logged by the same process, by a clock read a millisecond at a time.
  assert.ok((log[listening]?.time ?? 0) - (log[wait]?.time ?? 0) >= waitMs - 1, 'and after it ended');

  const third = await startMcmux(args, { env });
  await third.stop();
  assert.ok(!lines(third.logs().stdout).some((l) => WAITS.test(String(l.msg))), 'after a clean stop it does not wait');
});

it('mcmux killed with only stores inside it (memory://, sqlite://): nothing it sent outlives it, the next one does not wait', async (t) => {
  const dir = stateDir(t);
  const args = ['--upstream', 'memory://', '--upstream', `sqlite://${join(dir, 'sessions.db')}`];
  const env = { STATE_DIRECTORY: dir };
  const first = await startMcmux(args, { env });
  await first.stop('SIGKILL');
  const second = await startMcmux(args, { env });
  await second.stop();
  const log = second.logs().stdout;
  assert.ok(!lines(log).some((l) => WAITS.test(String(l.msg))), `no wait: ${log}`);
  assert.ok(lines(log).some((l) => l.msg === 'mcmux listening'), 'it started');
});

it('a second mcmux started on a state directory in use refuses to start, and leaves the running one\'s journal.log alone', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [up, gone] = await Promise.all([startMemcached(), startMemcached()]);
  t.after(() => Promise.all([up.stop(), gone.stop()]));
  const dir = stateDir(t);
  const args = ['--upstream', `${up.url}?timeout=200`, '--upstream', `${gone.url}?timeout=200`];
  const env = { STATE_DIRECTORY: dir };
  const first = await startMcmux(args, { env });
  t.after(() => first.stop('SIGKILL'));

  // Started again by mistake (by hand beside the service, say), on the same port: it cannot listen.
  const second = await runMcmux(['--listen', `127.0.0.1:${first.port}`, ...args], { env, cwd: dir });
  assert.equal(second.code, 1, `it does not run: ${second.stderr}`);
  assert.match(second.stderr, /state-dir .* is in use by mcmux pid \d+/);

  // The first goes on: a write the second upstream misses is journaled, on file.
  await killAndWait(gone);
  const c = await rawClient(first.port);
  t.after(() => c.close());
  assert.equal(await c.ask('set sess 0 0 1\r\nx\r\n'), 'STORED\r\n');
  assert.equal(await c.ask('delete sess\r\n'), 'DELETED\r\n');
  await first.stop('SIGKILL');
  const log = readFileSync(join(dir, 'journal.log'), 'latin1');
  const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');
  // Had the second compacted journal.log under it (and closed it cleanly), the first would have
  // gone on appending to the file it replaced, and the delete the second upstream missed would
  // be lost with it: after a restart, that upstream would serve the logged-out session again.
  assert.match(log, new RegExp(`^M ${hex(gone.url)} d ${hex('sess')} `, 'm'), log);
  assert.doesNotMatch(log, /^E$/m, 'no clean stop is on file: the first was killed');
});
