/** The bench's note on how idle vCPUs wait: printed only when they halt without polling. */

import assert from 'node:assert/strict';
import { it } from 'node:test';
import { idleDriverNote } from '../../bench/settings';

it('the idle note names the halting setting, and is empty where idle vCPUs poll first', () => {
  assert.match(idleDriverNote({ cpuidleDriver: 'haltpoll', guestHaltPollNs: 0 }), /guest_halt_poll_ns 0/);
  assert.match(idleDriverNote({ cpuidleDriver: 'none', guestHaltPollNs: 200000 }), /no cpuidle driver/);
  assert.equal(idleDriverNote({ cpuidleDriver: 'haltpoll', guestHaltPollNs: 200000 }), '');
  assert.equal(idleDriverNote({ cpuidleDriver: 'n/a', guestHaltPollNs: 'n/a' }), '');
});
