/**
 * Two (or `n`) fault-injecting fakes behind health tracking, a router, a cold detector (lock-fence
 * 60 s) and a repairer, driven by hand: the rig of the delete-replay reviews
 * (test/router/review-delete-replay*.test.ts). Commands answer their status as text.
 */

import assert from 'node:assert/strict';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats, settle } from './fake-upstream';

const silent = pino({ level: 'silent' });
export const FENCE_MS = 60_000;

export function replayRig(n = 2, opts: { writeWait?: 'all' | 'copies'; maxKeys?: number } = {}) {
  const fakes = Array.from({ length: n }, (_, i) => new FakeUpstream(`fake://${i}`));
  const ups = fakes.map((f) => new HealthyUpstream(f, { downAfter: 100, probeMinMs: 10, probeMaxMs: 10 }, () => {}));
  const journal = new RepairJournal({ maxKeys: opts.maxKeys ?? 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: opts.writeWait ?? 'all', allowFlush: true }, noStats, () => {});
  const detector = new ColdDetector(() => ups, FENCE_MS, silent, journal);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const status = (r: Reply): string => (r.kind === 'status' ? r.status : r.kind === 'error' ? `${r.type} ${r.message}` : r.kind === 'number' ? String(r.value) : r.kind);
  const store = async (mode: 'add' | 'set' | 'replace' | 'append' | 'prepend', key: string, value: string): Promise<string> =>
    status(await exec({ kind: 'store', mode, key, value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: mode !== 'set', noreply: false }));
  const add = (key: string, who: string): Promise<string> => store('add', key, who);
  const set = (key: string, value: string): Promise<string> => store('set', key, value);
  const del = async (key: string): Promise<string> => status(await exec({ kind: 'delete', key, noreply: false }));
  const touch = async (key: string): Promise<string> => status(await exec({ kind: 'touch', key, deadline: 0, noreply: false, withItem: false } as Command));
  const incr = async (key: string, delta: bigint): Promise<string> => status(await exec({ kind: 'arith', op: 'incr', key, delta, noreply: false } as Command));
  const get = async (key: string): Promise<string | undefined> => {
    const r = await exec({ kind: 'get', keys: [key], withCas: false, touch: undefined });
    return r.kind === 'values' ? r.hits[0]?.value.toString() : `<${status(r)}>`;
  };
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  const close = (): Promise<unknown> => Promise.all(ups.map((u) => u.close()));
  const inner = async (f: FakeUpstream, key: string): Promise<string | undefined> => (await f.inner.get([key]))[0]?.value.toString();
  /**
   * Markers written, `set lock.s old` on both, then `delete lock.s` missed by the second (failed
   * there, not applied), and `whileDown` run before it answers again.
   */
  const missDelete = async (whileDown: () => Promise<unknown> = async () => {}): Promise<void> => {
    const fb = fakes[1] as FakeUpstream;
    await detector.checkAll();
    assert.equal(await set('lock.s', 'old'), 'STORED');
    fb.mode = 'fail';
    assert.equal(await del('lock.s'), 'DELETED');
    await whileDown();
    fb.mode = 'ok';
  };
  /** The first reconnects: fenced as a precaution, its marker check held (it did not restart: it keeps its data). */
  const reconnectFirst = async (): Promise<void> => {
    const fa = fakes[0] as FakeUpstream;
    fa.gateOnly = (call) => call.includes(detector.key);
    fa.close_gate();
    detector.reconnected(ups[0] as HealthyUpstream);
    await settle();
  };
  /**
   * The second is on file for a write of `lock.s` (not for the delete it missed, which is not the
   * latest); the first reconnects (a precaution fence): the repair waits for it, the second grants
   * no lock, and reads answer `held`.
   */
  const waitsForFirst = async (held: string): Promise<void> => {
    const b = ups[1] as HealthyUpstream;
    assert.equal(journal.entry(b, 'lock.s')?.op, 'write', 'on file for the later write');
    assert.equal(journal.missedDeleteIsLatest(ups, b, 'lock.s'), false);
    await reconnectFirst();
    await repairer.tick();
    assert.equal(journal.isDirty(b, 'lock.s'), true, 'waits for the first');
    assert.notEqual(await add('lock.s', 'B'), 'STORED');
    assert.equal(await get('lock.s'), held);
    (fakes[0] as FakeUpstream).open();
  };
  /** After a repair tick, the store behind `f` still holds `held` for `lock.s`, grants no lock of it, and reads answer `held`. */
  const repairKeeps = async (f: FakeUpstream, held: string): Promise<void> => {
    await repairer.tick();
    const left = await inner(f, 'lock.s');
    assert.notEqual(await add('lock.s', 'B'), 'STORED', `LOCK GRANTED TWICE after the repair left ${f.name} with ${left ?? 'nothing'}`);
    assert.equal(left, held, 'the acknowledged write is still there');
    assert.equal(await get('lock.s'), held, 'and a read answers it');
  };
  return { fakes, ups, journal, router, repairer, detector, exec, add, set, del, touch, incr, store, get, inner, close, missDelete, reconnectFirst, waitsForFirst, repairKeeps };
}
