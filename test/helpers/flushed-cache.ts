/**
 * One mcmux process over fake upstreams, wired as app.ts wires them (a repairer, a cold detector,
 * a client flush_all), and the chain the review tests of the repair's flush start from: a memcached
 * cache in front of a durable store, the cache overflowed and flushed by the repair (review-h16,
 * review-h19, review-h22).
 */

import assert from 'node:assert/strict';
import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import { HealthyUpstream, repairEmptied } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { FakeUpstream, noStats } from './fake-upstream';

const silent = pino({ level: 'silent' });
const HEALTH = { downAfter: 100, probeMinMs: 10, probeMaxMs: 10 };

export interface ProcOptions {
  /** journal.log's directory (loaded at once); none keeps the journal in memory. */
  readonly dir?: string;
  /** journal-max-keys; as app.ts, also the keys a fenced upstream remembers as written since (fenceKeysMax). */
  readonly maxKeys?: number;
  readonly writeWait?: 'all' | 'copies';
  /** lock-fence, ms (default 60 000). */
  readonly fenceMs?: number;
}

/** One mcmux process over `fakes`: a repairer and a client flush_all wired as app.ts wires them. */
export function proc(fakes: readonly FakeUpstream[], o: ProcOptions = {}) {
  const health = o.maxKeys === undefined ? HEALTH : { ...HEALTH, fenceKeysMax: o.maxKeys };
  const ups = fakes.map((f) => new HealthyUpstream(f, health, () => {}));
  const journal = new RepairJournal({ maxKeys: o.maxKeys ?? 1000, dir: o.dir, fsync: 'no' });
  if (o.dir !== undefined) journal.load(ups);
  for (const u of ups) u.resumeUniques(journal.uniquesEpochOf(u));
  let detector: ColdDetector | undefined;
  const router = new Router(
    { upstreams: ups, journal, minCopies: 1, writeWait: o.writeWait ?? 'all', allowFlush: true, onFlushed: (u) => detector?.forget(u as HealthyUpstream) },
    noStats,
    () => {},
  );
  detector = new ColdDetector(() => ups, o.fenceMs ?? 60_000, silent, journal);
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  repairer.onFlush = (u) => detector?.knownEmpty(u as HealthyUpstream);
  repairer.onFlushed = (u) => detector?.flushed(u as HealthyUpstream);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  const stop = async (): Promise<void> => {
    detector?.stop();
    journal.close();
    await Promise.all(ups.map((u) => u.close()));
  };
  return { ups, journal, router, detector: detector as ColdDetector, repairer, exec, stop };
}

export type Proc = ReturnType<typeof proc>;

/** a (the cache, first) overflowed, then flushed by the repair: b holds what it held. */
export async function repairFlush(s: Proc): Promise<void> {
  const a = s.ups[0] as HealthyUpstream;
  s.journal.distrust(a);
  for (let n = 0; n < 20 && s.journal.overflowed(a) !== undefined; n++) await s.repairer.tick();
  assert.equal(s.journal.overflowed(a), undefined, 'a flushed by the repair and trusted');
  assert.equal(repairEmptied(a), true, 'a: emptied by the repair');
}

/** [a: a memcached cache, b: a durable store] holding sess = `value`, a flushed by the repair, with a lock-fence of `fenceMs`. */
export async function flushedCache(value: string, fenceMs: number, writeWait: 'all' | 'copies' = 'all') {
  const fakes = [new FakeUpstream('memcached://a:11211', 'memcached'), new FakeUpstream('mysql://b:3306/db', 'mysql')] as const;
  const s = proc(fakes, { fenceMs, writeWait });
  await s.detector.checkAll();
  const stored = await s.exec({ kind: 'store', mode: 'set', key: 'sess', value: Buffer.from(value), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
  assert.ok(stored.kind === 'status' && stored.status === 'STORED', 'sess stored');
  await repairFlush(s);
  return { ...s, fa: fakes[0], fb: fakes[1], a: s.ups[0] as HealthyUpstream, b: s.ups[1] as HealthyUpstream };
}
