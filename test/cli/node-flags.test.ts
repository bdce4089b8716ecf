/**
 * The node flags mcmux needs (src/node-flags.ts) reach it from every launcher, and mcmux says so
 * when they did not.
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { NODE_FLAGS, missingNodeFlags } from '../../src/node-flags';
import { MCMUX_BIN, answersVersion, eventually, startMcmux } from '../helpers/mcmux';
import { freePort } from '../helpers/servers';

const REPO = resolve(MCMUX_BIN, '../..');

test('every launcher passes the node flags', async () => {
  const shebang = (await readFile(MCMUX_BIN, 'utf8')).split('\n')[0] ?? '';
  const start = JSON.parse(await readFile(inRepo('package.json'), 'utf8')).scripts.start as string;
  const execStart = (await readFile(inRepo('systemd/mcmux.service'), 'utf8')).split('\n').find((l) => l.startsWith('ExecStart=')) ?? '';
  for (const flag of NODE_FLAGS) {
    assert.match(shebang, new RegExp(`^#!/usr/bin/env -S node( \\S+)* ${flag}( |$)`), 'bin/mcmux');
    assert.match(start, new RegExp(`^node( \\S+)* ${flag} `), 'npm start');
    assert.match(execStart, new RegExp(`node( \\S+)* ${flag} /opt/mcmux/bin/mcmux `), 'systemd unit');
  }
});

test('bin/mcmux run as a program gets the flags from its #! line', async () => {
  assert.deepEqual(missingNodeFlags(['--no-memory-reducer']), []);
  assert.deepEqual(missingNodeFlags([]), [...NODE_FLAGS]);
  // Executed directly: env -S must split the #! line and node take the flags, or mcmux warns.
  const port = await freePort();
  const proc = spawn(MCMUX_BIN, ['--listen', `127.0.0.1:${port}`, '--upstream', 'memory://'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, STATE_DIRECTORY: await mkdtemp(join(tmpdir(), 'mcmux-state-')) },
  });
  let out = '';
  proc.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  try {
    await eventually('bin/mcmux answers version', () => answersVersion(port));
  } finally {
    proc.kill('SIGTERM');
    await once(proc, 'close');
  }
  assert.ok(!out.includes('node started without'), out);
});

test('mcmux started without the flags warns, once, naming them', async () => {
  const without = await startMcmux(['--upstream', 'memory://'], { nodeFlags: [] });
  const withFlags = await startMcmux(['--upstream', 'memory://']);
  try {
    await without.stop();
    await withFlags.stop();
    const warned = without.logs().stdout.split('\n').filter((l) => l.includes('node started without'));
    assert.equal(warned.length, 1, without.logs().stdout);
    for (const flag of NODE_FLAGS) assert.ok(warned[0]?.includes(flag));
    assert.ok(!withFlags.logs().stdout.includes('node started without'), withFlags.logs().stdout);
  } finally {
    await without.stop();
    await withFlags.stop();
  }
});

function inRepo(path: string): string {
  return resolve(REPO, path);
}
