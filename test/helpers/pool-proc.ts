/**
 * One mcmux process, router-level, over a real MemcachedPool of fault-injecting fakes and plain
 * fakes behind it, wired as app.ts wires a pool (resolveUpstreams): the rig of the pool reviews
 * (review-pool-cold, review-today, review-h3, review-h5). The fakes outlive it, so that a test can
 * start another process over the same stores.
 */

import pino from 'pino';
import type { Command, Reply } from '../../src/command/command';
import { ColdDetector } from '../../src/router/cold-detector';
import type { WriteWait } from '../../src/router/context';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import type { Upstream } from '../../src/upstream/upstream';
import { FakeUpstream, noStats } from './fake-upstream';
import { wirePool } from './pool-ring';

const silent = pino({ level: 'silent' });
export const POOL_FENCE_MS = 60_000;
export const POOL_HEALTH = { downAfter: 3, probeMinMs: 10, probeMaxMs: 10 };

/** The servers of a pool (`sf`, memcached://sN) and one plain memcached upstream behind it (`fb`). */
export const poolFakes = (n = 2): { sf: FakeUpstream[]; fb: FakeUpstream } => ({
  sf: Array.from({ length: n }, (_, i) => new FakeUpstream(`memcached://s${i}:11211`, 'memcached')),
  fb: new FakeUpstream('memcached://b:11211', 'memcached'),
});

export interface PoolProcOptions {
  /** The pool ejects a server that is down (each a ring move); default true. */
  eject?: boolean;
  distribution?: 'ketama' | 'modula';
  namespace?: string;
  /** No upstream behind the pool (`fb` is not in the chain). */
  alone?: boolean;
  /** Upstreams behind `fb` (after it in the chain). */
  more?: readonly FakeUpstream[];
  writeWait?: WriteWait;
  allowFlush?: boolean;
  maxKeys?: number;
  /** Where journal.log is kept (loaded at the start); in memory without. */
  dir?: string;
  /** Load the journal (the chain it compares a reload with) though it has no `dir`, as app.ts does at start. */
  load?: boolean;
  /** The repairer's flush of a cache fences it as come back empty (repairer.onFlush), as app.ts wires it. */
  wireFlush?: boolean;
  /** keyOn's default prefix ('sess.'). */
  keyPrefix?: string;
}

/**
 * The process over `sf` (the pool, first) and `fb` (then `more`), with its journal, router, cold
 * detector and a repairer (no settle wait). `reload()` rebuilds the pool over the same servers as
 * app.ts does for a reload that changes a tuning option (timeout): the same store, so the same
 * journal state; `pool`, `p` and `servers` are then the new ones.
 */
export function poolProc(sf: readonly FakeUpstream[], fb: FakeUpstream, o: PoolProcOptions = {}) {
  const makePool = (): MemcachedPool =>
    new MemcachedPool(
      `memcached://${sf.map((_, i) => `s${i}`).join(',')}`,
      sf.map((upstream, i) => ({ host: `s${i}`, port: 11211, weight: 1, upstream })),
      { distribution: o.distribution ?? 'ketama', namespace: o.namespace ?? '', eject: o.eject ?? true },
      POOL_HEALTH,
    );
  let pool = makePool();
  let p = new HealthyUpstream(pool, POOL_HEALTH, () => {});
  const b = new HealthyUpstream(fb, POOL_HEALTH, () => {});
  const rest = (o.more ?? []).map((f) => new HealthyUpstream(f, POOL_HEALTH, () => {}));
  const chain = (): Upstream[] => (o.alone === true ? [p] : [p, b, ...rest]);
  let ups = chain();
  const journal = new RepairJournal({ maxKeys: o.maxKeys ?? 1000, dir: o.dir, fsync: 'no' });
  if (o.dir !== undefined || o.load === true) journal.load(ups);
  const options = { journal, minCopies: 1, writeWait: o.writeWait ?? ('all' as const), allowFlush: o.allowFlush ?? false };
  const router = new Router({ upstreams: ups, ...options }, noStats, () => {});
  const detector = new ColdDetector(() => ups as HealthyUpstream[], POOL_FENCE_MS, silent, journal);
  const repairer = new Repairer(() => router.context, { rate: 10_000, flushCaches: true, lateSettleMs: 0 }, silent);
  if (o.wireFlush === true) repairer.onFlush = (u) => detector.knownEmpty(u as HealthyUpstream);
  wirePool(pool, p, detector);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return {
    sf,
    fb,
    get pool() {
      return pool;
    },
    get p() {
      return p;
    },
    get servers() {
      return pool.members() as readonly HealthyUpstream[];
    },
    b,
    rest,
    journal,
    router,
    detector,
    repairer,
    exec,
    /** A key of the form `${prefix}N` that the pool places on server `i`. */
    keyOn(i: number, prefix = o.keyPrefix ?? 'sess.'): string {
      for (let n = 0; n < 1000; n++) if (pool.serverFor(`${prefix}${n}`) === pool.members()[i]) return `${prefix}${n}`;
      throw new Error(`no key on server ${i}`);
    },
    /** A reload rebuilds the pool (a changed timeout): app.ts resolveUpstreams and reload. */
    async reload(): Promise<void> {
      const prevPool = pool;
      const prev = p;
      pool = makePool();
      p = new HealthyUpstream(pool, POOL_HEALTH, () => {});
      wirePool(pool, p, detector);
      p.takeOver(prev);
      p.inheritHealth(prev);
      pool.inheritRing(prevPool);
      const before = new Map(prevPool.members().map((m) => [m.name, m]));
      for (const m of pool.members()) {
        const was = before.get(m.name);
        if (was !== undefined) m.inheritHealth(was);
      }
      journal.retire(prev);
      ups = chain();
      journal.setChain(ups);
      router.reconfigure({ upstreams: ups, ...options });
      await prev.close(); // its requests have all been answered here
    },
    stop(): Promise<unknown> {
      journal.close();
      return Promise.all(ups.map((u) => u.close()));
    },
  };
}
