/**
 * Fuzz seed 301238 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=0.5
 * (helper triage-301238), reduced. Chain [a: memcached, b: memcached (the pool up1 in the fuzz,
 * the key on its server up1b)], journal-max-keys 2 (app.ts: also fenceKeysMax, the keys a fenced
 * upstream remembers as written since its fence began).
 *
 * The fuzz run: up0 (a) restarted empty, overflowed, was flushed by the repair, then restored to
 * a snapshot, distrusted by its marker check, and flushed by the repair again (2035 ms): fenced as
 * come back empty for an hour, repairEmptied. Two client writes taught it s2 and s0, and then it
 * stopped learning (HealthyUpstream.learntAll). #130 `add l1` was decided by up1 (a fenced) and
 * its copy, a set, reached up0: up0 holds l1, but did not learn it. up1b restarted empty (allowed:
 * up0, the other copy, was clean for every key and held l1). #134 `add l1` failed on up1b
 * (UPSTREAM_IO: may have been applied), and decide()'s failed() ran lackedWhereEmptied: emptiedFor
 * had taken up0 for a cache the repair's flush emptied that does not know l1 (knowsKey false: it
 * only stopped learning), so journal.lacks journaled up0 as lacking l1, the least fresh copy. The
 * repair then took up1 (dirty, fresher) for the truth and cleared it; up1b, back empty, fenced as a
 * precaution, answered the final get a miss, up0 (the only copy of l1) skipped as dirty: LOST WRITE.
 *
 * Root: emptiedFor/stillLacks (replicate-write.ts, c8f5e95 for a conditional command and a gat,
 * 9fb71ca for a touch) read "does not know the key" as "no write of the key reached it since the
 * flush", which holds only while the fence still learns (onlyLearnt): past fenceKeysMax it may hold
 * the current state of keys it does not know (README, locks across failover: "one that came back
 * empty but stopped remembering, past journal-max-keys, the keys written to it since" may hold the
 * lock), and the README's lacks rule excepts "a key written to it since".
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command, Reply } from '../../src/command/command';
import { HealthyUpstream, knowsKey, repairEmptied } from '../../src/router/health';
import { FakeUpstream, settle } from '../helpers/fake-upstream';
import { proc } from '../helpers/flushed-cache';

const MAX_KEYS = 2;

const setCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'set', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const addCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'add', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const appendCmd = (key: string, value: string): Command => ({ kind: 'store', mode: 'append', key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
const getCmd = (key: string): Command => ({ kind: 'get', keys: [key], withCas: false, touch: undefined });
const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind);
const valueOf = (r: Reply): string | undefined => (r.kind === 'values' ? r.hits[0]?.value.toString() : `(${status(r)})`);

/**
 * [a: memcached, b: memcached], sess = cart on both; a overflowed and flushed by the repair
 * (fenced as come back empty, lock-fence 60 s), then taught x1 and x2: it stopped learning.
 */
async function stoppedLearning() {
  const fa = new FakeUpstream('memcached://a:11211', 'memcached');
  const fb = new FakeUpstream('memcached://b:11211', 'memcached');
  const s = proc([fa, fb], { maxKeys: MAX_KEYS });
  const [a, b] = s.ups as [HealthyUpstream, HealthyUpstream];
  await s.detector.checkAll();

  // a overflowed, then flushed by the repair: fenced as come back empty (lock-fence 60 s).
  assert.equal(status(await s.exec(setCmd('sess', 'cart'))), 'STORED');
  s.journal.distrust(a);
  for (let n = 0; n < 20 && s.journal.overflowed(a) !== undefined; n++) await s.repairer.tick();
  assert.equal(s.journal.overflowed(a), undefined, 'a flushed by the repair and trusted');
  assert.equal(repairEmptied(a), true, 'a: emptied by the repair');
  assert.equal(a.fenced, true, 'a: fenced');

  // Two client writes: a learns them, and stops learning (journal-max-keys 2).
  assert.equal(status(await s.exec(setCmd('x1', '1'))), 'STORED');
  assert.equal(status(await s.exec(setCmd('x2', '2'))), 'STORED');
  assert.equal(a.learntAll, true, 'a stopped learning');
  return { s, fa, fb, a, b };
}

describe('fuzz seed 301238: a cache the repair flushed that stopped learning is not journaled as lacking a key written to it since', () => {
  it('an add that failed on the store behind leaves the emptied cache that holds the acknowledged add clean, and the add is read', async () => {
    const { s, fa, fb, a, b } = await stoppedLearning();

    // The lock: decided by b (a is fenced), its copy set on a. a holds it, unremembered.
    assert.equal(status(await s.exec(addCmd('lock', 'held'))), 'STORED', 'add lock: decided by b');
    await settle();
    assert.equal((await fa.inner.get(['lock']))[0]?.value.toString(), 'held', "the add's copy reached a");
    assert.equal(knowsKey(a, 'lock'), false, 'a does not know it (stopped learning)');
    assert.equal(s.journal.isDirty(a, 'lock'), false, 'a: clean for the lock, holding it');

    // b restarts empty (a, clean for every key, holds the lock: "at least one upstream holding
    // current data"), and the next add fails there, maybe applied (UPSTREAM_IO).
    fb.mode = 'fail';
    await fb.inner.flush();
    const again = await s.exec(addCmd('lock', 'other'));
    assert.equal(again.kind, 'error', `add while b is down: ${status(again)}`);
    assert.equal(s.journal.isDirty(a, 'lock'), false, 'A, THE ONLY COPY OF AN ACKNOWLEDGED ADD, JOURNALED AS LACKING IT (journal.lacks)');

    // b back, empty: its marker check finds it so, the repair runs, and the lock is read.
    fb.mode = 'ok';
    await s.detector.checkAll();
    assert.equal(b.fenced, true, 'b: fenced, come back empty');
    for (let n = 0; n < 5; n++) await s.repairer.tick();
    await settle();
    assert.equal(valueOf(await s.exec(getCmd('lock'))), 'held', 'LOST WRITE: the acknowledged add read as absent');
    assert.equal((await fa.inner.get(['lock']))[0]?.value.toString(), 'held', 'a still holds the lock');
    const third = await s.exec(addCmd('lock', 'third'));
    assert.notEqual(status(third), 'STORED', 'A LOCK GRANTED TWICE');
    await s.stop();
  });

  // Guard (review-h16 finding 2, c8f5e95, past fenceKeysMax): a key no write reached a since the
  // flush, whose append failed on b (maybe applied there): a has no item, and is journaled as
  // lacking it, so that its absence is neither read nor copied over b at the fence's end.
  it('guard: an append that failed on the store behind still journals the emptied cache that stopped learning as lacking a key it has no item of', async () => {
    const { s, fb, a, b } = await stoppedLearning();
    fb.mode = 'fail';
    const r = await s.exec(appendCmd('sess', '+'));
    assert.equal(r.kind, 'error', `append while b fails: ${status(r)}`);
    assert.ok(s.journal.isDirty(b, 'sess'), 'b: dirty, the append may have been applied there');
    assert.ok(s.journal.isDirty(a, 'sess'), 'a: NOT JOURNALED AS LACKING THE KEY (clean, its absence the truth once its fence ends)');
    await s.stop();
  });
});
