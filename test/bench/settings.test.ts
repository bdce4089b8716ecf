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
    assert.throws(() => parseArgs(['--baseline', bin, '--soak', '60']), /not --idle or --soak/);
    assert.throws(() => parseArgs(['--baseline', bin, '--idle']), /not --idle or --soak/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
