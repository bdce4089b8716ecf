/** The bench's settings: the note on how idle vCPUs wait, and the --baseline option. */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { idleDriverNote, parseArgs } from '../../bench/settings';

it('the idle note names the halting setting, and is empty where idle vCPUs poll first', () => {
  assert.match(idleDriverNote({ cpuidleDriver: 'haltpoll', guestHaltPollNs: 0 }), /guest_halt_poll_ns 0/);
  assert.match(idleDriverNote({ cpuidleDriver: 'none', guestHaltPollNs: 200000 }), /no cpuidle driver/);
  assert.equal(idleDriverNote({ cpuidleDriver: 'haltpoll', guestHaltPollNs: 200000 }), '');
  assert.equal(idleDriverNote({ cpuidleDriver: 'n/a', guestHaltPollNs: 'n/a' }), '');
});

it('--baseline takes another build\'s bin/mcmux, only for the comparison', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mcmux-baseline-'));
  try {
    const bin = join(dir, 'mcmux');
    writeFileSync(bin, '#!/bin/sh\n');
    assert.equal(parseArgs(['--baseline', bin]).baseline, bin);
    assert.equal(parseArgs([]).baseline, undefined);
    assert.throws(() => parseArgs(['--baseline', join(dir, 'absent')]), /--baseline must be the path of another build's bin\/mcmux; '.*absent' is not a file/);
    assert.throws(() => parseArgs(['--baseline', dir]), /is not a file/);
    assert.throws(() => parseArgs(['--baseline', bin, '--soak', '60']), /--baseline is for the comparison, not --soak/);
    assert.throws(() => parseArgs(['--baseline', bin, '--idle']), /--baseline is for the comparison, not --idle/);
    assert.throws(() => parseArgs(['--baseline', bin, '--drivers']), /--baseline is for the comparison, not --drivers/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

it('--drivers runs the per-driver measure alone: every driver, or the ones listed', () => {
  assert.equal(parseArgs([]).drivers, undefined);
  assert.deepEqual(parseArgs(['--drivers']).drivers, ['memory', 'memcached', 'redis', 'mysql', 'sqlite']);
  assert.deepEqual(parseArgs(['--drivers', '--quick']).drivers, ['memory', 'memcached', 'redis', 'mysql', 'sqlite']);
  assert.deepEqual(parseArgs(['--drivers', 'redis,mysql']).drivers, ['redis', 'mysql']);
  assert.equal(parseArgs(['--drivers', '--quick']).driverRequests, 2000);
  assert.equal(parseArgs(['--drivers']).driverRequests, 20000);
  assert.throws(() => parseArgs(['--drivers', 'redis,postgres']), /--drivers: unknown 'postgres' \(known: memory,memcached,redis,mysql,sqlite\)/);
  assert.throws(() => parseArgs(['--drivers', '--idle']), /--idle and --drivers are separate runs: give one/);
  assert.throws(() => parseArgs(['--drivers', '--soak', '60']), /--soak and --drivers are separate runs: give one/);
  assert.throws(() => parseArgs(['--idle', '--soak', '60']), /--idle and --soak are separate runs: give one/);
});
