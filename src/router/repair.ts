/**
 * Replays the repair journal: for every usable upstream with dirty keys, copies each key's current
 * state from an upstream that is clean for it (or deletes it), at a bounded rate, and only then
 * clears the entry. An overflowed upstream is trusted again once it is known clean: a cache is
 * flushed; any other store waits until every item mcmux wrote before it came back has expired.
 */

import type { Logger } from 'pino';
import { monotonicMs } from '../clock';
import type { Hit } from '../command/command';
import type { Upstream } from '../upstream/upstream';
import type { RouterContext } from './context';
import { ErrorCodes, McmuxError, mayLandLate } from '../errors';
import { maskUrl } from '../upstream/upstream';
import { HealthyUpstream, cameBackAt, isFenced, isUsable, knowsKey, membersOf, noteWritten, outOfRing } from './health';
import { type DirtyEntry, type Overflow, type RepairJournal, idOf, touchedAt } from './journal';

/** Stores that only cache: flushing one loses nothing that another upstream does not hold. */
const CACHE_SCHEMES = new Set(['memcached', 'memory']);

export interface RepairOptions {
  /** Keys replayed per second, per upstream. */
  readonly rate: number;
  /** Flush an overflowed cache upstream when it comes back, rather than wait for expiry. */
  readonly flushCaches: boolean;
  /** See LATE_SETTLE_MS (tests shorten it). */
  readonly lateSettleMs?: number;
}

const TICK_MS = 100;

/**
 * A key whose request to an upstream timed out is copied there again only this long (ms) after
 * the timeout, and after the upstream last came back: the timed-out request may still be applied
 * (it waits in a socket of a paused or overloaded server), and a copy made before it lands would
 * be undone by it. A server that resumes works through its old connections within this.
 */
export const LATE_SETTLE_MS = 1000;

/** Entries looked at per tick beyond the budget, skipping those still settling. */
const SCAN_FACTOR = 4;

/**
 * How far an item's deadline read back may be from the one a touch set, and the touch still be
 * taken as applied: memcached keeps whole seconds on a clock of its own phase, and mcmux reads a
 * remaining ttl back (deadlineFromTtl): an applied touch to T reads back between T - 3 s and
 * T + 1 s (review-h28 finding 2 measured T - 2.89 s; 2 s took it for one never applied). A
 * deadline within it of the touch's is taken as the touch's (the safe side).
 */
const TOUCH_SLACK_MS = 3000;

/**
 * A key the upstream refused (an error of its own: an item over memcached's `-I`, a packet over
 * MySQL's max_allowed_packet, a Redis at maxmemory, an account without write permission) is
 * copied there again only after this pause (ms), doubled at each refusal up to REFUSED_MAX_MS:
 * each copy reads the whole item from the source and sends it, and at every tick that was ten
 * times a second for as long as the item lived. The key stays dirty there meanwhile (reads pass
 * over that copy); a client write of the key begins a new entry, copied at once.
 */
const REFUSED_FIRST_MS = 1000;
const REFUSED_MAX_MS = 60_000;
/** An upstream's refusals are said at warn at most this often (ms). */
const REFUSED_SAID_MS = 60_000;

/**
 * Why an upstream is not trusted for reads (journal.overflowed), as the repair's lines say it: the
 * journal does not keep which cause it was (the line that distrusted it said so).
 */
const DISTRUSTED = 'upstream not trusted for reads (its repair journal overflowed, or it may hold older data than mcmux wrote: a store new to the chain, one rolled back, a pool whose ring moved)';

export class Repairer {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  /** An overflowed cache is being flushed (see retrust). */
  private flushing = false;
  private readonly progress = new Map<string, { total: number; done: number; since: number; lastLog: number }>();
  /**
   * The entries whose last copy the upstream refused: how many times in a row, and until when
   * (monotonic ms) the repair leaves them be (REFUSED_FIRST_MS). By the entry: one a client
   * write replaced, or cleared, is forgotten with it.
   */
  private readonly refused = new WeakMap<DirtyEntry, { count: number; until: number }>();
  /** When each upstream's refusals were last said (monotonic ms; REFUSED_SAID_MS). */
  private readonly refusedSaid = new WeakMap<Upstream, number>();
  /** Per upstream: the repair budget carried over from the ticks before (thousandths of a key). */
  private readonly credit = new Map<string, number>();
  repaired = 0;
  repairFailures = 0;
  /**
   * Told just before an overflowed cache is flushed (app.ts: the cold detector fences it). Once
   * flushed it is trusted again, and empty: it must not decide add/incr for a lock or counter the
   * other upstreams hold until its lock-fence ends, as after a restart.
   */
  onFlush: ((u: Upstream) => void) | undefined;
  /** Told once that flush has emptied it (app.ts: the cold detector writes its marker again). */
  onFlushed: ((u: Upstream) => void) | undefined;

  constructor(
    private readonly ctx: () => RouterContext,
    public options: RepairOptions,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One round: each usable upstream with work gets up to rate/10 keys. Exposed for tests. */
  async tick(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const ctx = this.ctx();
      await Promise.all(ctx.upstreams.map((u) => this.repairOne(ctx, u)));
    } finally {
      this.running = false;
    }
  }

  private async repairOne(ctx: RouterContext, u: Upstream): Promise<void> {
    if (!isUsable(u)) return;
    const { journal } = ctx;
    // A flush_all (or this repair's flush of an overflowed cache) waits for the repairs in
    // flight: none starts until it is answered.
    if (journal.flushing) return;
    // A flush of `u` that timed out may still empty it, or a request of a killed process land
    // there: a copy made now could be undone. Its writes since are dirty there (journal.written);
    // they are copied once it has settled.
    if (this.unknownUntil(u) !== undefined) return;
    const overflow = journal.overflowed(u);
    if (overflow) {
      // A pool is back once every server in its ring is: flushed while one is down, it would miss
      // that server's keys and fail, and be flushed again at every tick (fenced each time) for as
      // long as the server stays down. One out of the ring (eject) holds no key of the pool until
      // its return, which moves the ring and distrusts the pool again: its flush leaves it out.
      const out = outOfRing(u);
      if (membersOf(u).some((m) => !isUsable(m) && !out.includes(m.name))) return;
      await this.retrust(ctx, u, overflow);
      return;
    }
    const total = journal.size(u);
    if (total === 0) {
      this.progress.delete(u.name);
      return;
    }
    // Thousandths of a key each tick adds, so that a rate below 10 a second (one key a tick) is
    // kept too; what one tick leaves unspent carries over up to one key (no burst after a lull).
    const credit = (this.credit.get(u.name) ?? 0) + this.options.rate * TICK_MS;
    const budget = Math.floor(credit / 1000);
    if (budget === 0) {
      this.credit.set(u.name, credit);
      return;
    }
    const batch: Array<[string, 'write' | 'delete']> = [];
    const now = monotonicMs();
    const settling: string[] = [];
    for (const [key, e] of journal.entries(u)) {
      if (this.settling(u, e, now) || (this.refused.get(e)?.until ?? 0) > now) settling.push(key);
      else {
        journal.lateSettled(u, key);
        batch.push([key, e.op]);
      }
      if (batch.length >= budget || settling.length >= budget * SCAN_FACTOR) break;
    }
    // To the back of the line, so the next tick looks at others first.
    for (const key of settling) journal.requeue(u, key);
    this.credit.set(u.name, Math.min(credit - batch.length * 1000, 1000));
    let done = 0;
    await Promise.all(
      batch.map(async ([key, op]) => {
        if (await this.repairKey(ctx, u, key, op)) done++;
        // To the back of the line too: a key that keeps failing (an item the store refuses, a
        // source that is down) must not take every tick's budget, and starve the keys behind it.
        else journal.requeue(u, key);
      }),
    );
    this.report(u, total, done);
  }

  /**
   * Until when (monotonic ms) requests of unknown keys may still land on `u` (journal.unknownLate):
   * a settle time after the last timed out, and after `u` last came back. Undefined when none
   * may: the journal is told once they have settled.
   */
  private unknownUntil(u: Upstream): number | undefined {
    const { journal } = this.ctx();
    const late = journal.unknownLate(u);
    if (late === undefined) return undefined;
    const until = this.settledAt(u, late.at);
    if (monotonicMs() < until) return until;
    journal.unknownSettled(u);
    return undefined;
  }

  /**
   * Resolves once no request of unknown keys may still land on an upstream that is usable (see
   * unknownUntil): after a process that did not stop cleanly, every upstream is one where what it
   * had sent may land, and a write acknowledged only by such copies fails (replicate-write.ts
   * lasting), so app.ts waits for this before it listens. One that is down is not waited for (it
   * stays so until it has settled after it comes back); one that comes back meanwhile is, once:
   * the wait ends at the latest a settle time after the first estimate. `onWait` is told how long
   * it expects to wait (ms), unless there is nothing to wait for.
   */
  untilUnknownSettled(onWait?: (ms: number) => void): Promise<boolean> {
    const pending = (): number => {
      let until = 0;
      for (const u of this.ctx().upstreams) if (isUsable(u)) until = Math.max(until, this.unknownUntil(u) ?? 0);
      return until;
    };
    const first = pending();
    if (first === 0) return Promise.resolve(false);
    onWait?.(first - monotonicMs());
    const end = first + this.settleMs();
    return new Promise((resolve) => {
      const check = (): void => {
        const until = Math.min(pending(), end);
        const now = monotonicMs();
        if (until === 0 || now >= until) resolve(true);
        else setTimeout(check, until - now);
      };
      check();
    });
  }

  /** The settle time: the option (tests shorten it), else LATE_SETTLE_MS. */
  private settleMs(): number {
    return this.options.lateSettleMs ?? LATE_SETTLE_MS;
  }

  /**
   * Until when (monotonic ms) a request that timed out on `u` at `at` may still land: a settle
   * time after that, and after `u` last came back (a server that resumes works through its old
   * connections within it). The one rule behind every wait for late requests here.
   */
  private settledAt(u: Upstream, at: number): number {
    return Math.max(at, cameBackAt(u)) + this.settleMs();
  }

  /** A request of a key the overflow of `u` could not remember timed out there and may still land. */
  private lateMayLand(overflow: Overflow, u: Upstream): boolean {
    return overflow.lastLate !== undefined && monotonicMs() < this.settledAt(u, overflow.lastLate);
  }

  /** Whether a request of the entry's key timed out too recently for a copy to be sure to land last. */
  private settling(u: Upstream, e: DirtyEntry, now: number): boolean {
    return e.late !== 0 && now < this.settledAt(u, e.late);
  }

  /** Copies the current state of `key` into `u`; true when the entry could be cleared. */
  private async repairKey(ctx: RouterContext, u: Upstream, key: string, op: 'write' | 'delete'): Promise<boolean> {
    const { journal } = ctx;
    // A client write of the key still landing: the sources may not have it yet (a redo flag only
    // catches writes that start during the copy). Next tick.
    if (journal.writesInFlight(key) > 0) return false;
    // A flush_all came in (it waits for this copy to land before it is sent, see quiesce).
    if (!journal.backgroundStarted()) return false;
    const rk = `${idOf(u)} ${key}`;
    journal.repairing.set(rk, false);
    try {
      // Journaled as lacking the key unread (DirtyEntry.asks, or overflowed since): read first.
      if (journal.unread(u, key)) {
        const own = await this.readFor(journal, u, key, rk);
        if (own === undefined) return false;
        journal.asked(u, key, own.hit !== undefined);
        return own.hit !== undefined;
      }
      const clean = ctx.upstreams.filter((s) => s !== u && isUsable(s) && !journal.isDirty(s, key));
      // A fenced upstream came back empty: its miss says nothing about what was written before.
      // Copying "absent" from it would delete a lock or a session the dirty one still holds.
      const source = clean.find((s) => !isFenced(s)) ?? clean.find((s) => knowsKey(s, key));
      // No clean copy to take the key from, and one not yet read may hold its newest state
      // (DirtyEntry.asks): neither a replayed delete nor the freshest dirty copy until it is read.
      if (!source && ctx.upstreams.some((s) => s !== u && journal.unread(s, key))) return false;
      // A missed delete is copied as the key's current state too where an upstream holds it: the
      // entry may be older than a write that reached `u` since without a word on file (a copy of a
      // write-wait = copies write still on its way when mcmux was killed, applied after), and
      // replaying it would delete that write. Replayed only where no upstream can tell, now or
      // later: one that may hold a newer state (clean for the key, or dirty since a later write)
      // but is down is waited for, as for a missed write (fuzz seed 30555 with
      // MCMUX_FUZZ_RESTART=1: the set's other copy was down, and the replayed delete left none).
      // Or where it is the last write of the key, sent by this process (missedDeleteIsLatest):
      // nothing newer can be anywhere, and the clean copies may be fenced as come back empty.
      if (op === 'delete' && !source && (!journal.outranked(ctx.upstreams, u, key) || journal.missedDeleteIsLatest(ctx.upstreams, u, key))) {
        await u.delete(key);
      } else {
        if (clean.length > 0 && !source) return false; // wait for the fence to end
        if (!source) {
          // Dirty everywhere (every copy of a write failed): the freshest usable copy is taken as
          // the truth, as reads and the authority take it, and the others copy from it. When a
          // clean upstream exists but is down, wait for it: it alone has the right value.
          const truth = journal.freshest(ctx.upstreams, ctx.upstreams.filter(isUsable), key)?.[0];
          if (truth !== u) return false;
          // The freshest only for a write a late request may have undone: if it was, the next
          // copy is the truth (journal.undone), and this one is copied from it at a later pass.
          if (journal.mayBeUndone(u, key)) {
            const read = await this.readFor(journal, u, key, rk);
            if (read === undefined || journal.undone(u, key, read.hit !== undefined)) return false;
          }
          journal.clear(u, key);
          return true;
        }
        const read = await this.readFor(journal, source, key, rk);
        if (read === undefined) return false;
        // Looked at again right before sending: a client write that started in the microtasks
        // since readFor looked was sent here first, and this copy (older) would land after it.
        if (journal.repairing.get(rk)) return false;
        const { hit } = read;
        if (hit) await u.store({ mode: 'set', key, value: hit.value, flags: hit.flags, deadline: hit.deadline, withCas: false });
        else {
          const kept = await this.touchNotApplied(journal, u, key, rk);
          if (kept === undefined) return false;
          if (!kept) await u.delete(key);
        }
      }
      // A client wrote it meanwhile: its outcome settled the entry (cleared, or marked again).
      if (journal.repairing.get(rk)) return false;
      journal.clear(u, key);
      noteWritten(journal, u, key);
      this.repaired++;
      return true;
    } catch (error) {
      // The copy may still be applied, after a client write that clears the entry meanwhile: the
      // key is copied again once settled. As 'write' (copy the current state), not `op`: a client
      // set may have reached the upstream since, and replaying an old delete would drop it.
      if (mayLandLate(error)) journal.mark(u, key, 'write', 0, true);
      else if (error instanceof McmuxError && error.origin === ErrorCodes.UPSTREAM_REFUSED) this.pause(u, journal.entry(u, key), error);
      this.repairFailures++;
      this.log.debug({ upstream: u.name, err: error instanceof Error ? error.message : String(error) }, 'repair of a key failed');
      return false;
    } finally {
      journal.repairing.delete(rk);
      journal.backgroundFinished();
    }
  }

  /** `u` refused the copy of the entry `e`: it is left be for a while (REFUSED_FIRST_MS), and the refusal said. */
  private pause(u: Upstream, e: DirtyEntry | undefined, error: McmuxError): void {
    if (e === undefined) return;
    const now = monotonicMs();
    const count = (this.refused.get(e)?.count ?? 0) + 1;
    this.refused.set(e, { count, until: now + Math.min(REFUSED_FIRST_MS * 2 ** (count - 1), REFUSED_MAX_MS) });
    const said = this.refusedSaid.get(u);
    if (said !== undefined && now - said < REFUSED_SAID_MS) return;
    this.refusedSaid.set(u, now);
    // Not the key: a session id is a credential.
    this.log.warn(
      { upstream: u.name, err: maskUrl(error.message) },
      'repair: the upstream refused the copy of a key (an error of its own: an item over its size limit, out of memory, no write permission); the key stays dirty there, and is tried again after a pause that grows to 60 s (said at most once a minute)',
    );
  }

  /**
   * Whether `u`, dirty for `key` by a touch alone (DirtyEntry.touched) where the clean copy holds
   * no item, holds the item as it was before the touch: its deadline is not the touch's (beyond
   * what memcached's whole seconds may shift it by), so the touch never took effect (a MySQL
   * statement killed at its timeout, a request lost unsent). Then the others' absence is an
   * eviction (or the repair's flush of a cache), not an expiry the touch outlived, and the copy
   * keeps its item: copied as absent, the session was deleted from the durable store for a
   * touch that failed (review-h22 finding 3). One that carries a touch's deadline is deleted: the item
   * may have expired everywhere else before the touch reached it (fuzz seed 1533's class).
   * Undefined: the read failed, or a client write of the key began meanwhile.
   */
  private async touchNotApplied(journal: RepairJournal, u: Upstream, key: string, rk: string): Promise<boolean | undefined> {
    const touched = journal.entry(u, key)?.touched;
    if (touched === undefined) return false;
    const own = await this.readFor(journal, u, key, rk);
    if (own === undefined) return undefined; // the read failed, or a client write began: next tick
    const deadline = own.hit?.deadline;
    return deadline !== undefined && !touchedAt(touched, deadline, TOUCH_SLACK_MS);
  }

  /**
   * Reads `key` from `from` for the repair of the entry `rk`; undefined when the repair is to stop
   * there: the read failed (nothing was sent to the copy being repaired, whose entry stands as it
   * is: the catch of repairKey would mark it late, and with the first sequence of all, though a
   * client write may have reached it since), or a client write of the key started meanwhile (what
   * was read may be older than it, and a copy sent now would land after it: the write settles the
   * entry, journal.written).
   */
  private async readFor(journal: RepairJournal, from: Upstream, key: string, rk: string): Promise<{ hit: Hit | undefined } | undefined> {
    let hit;
    try {
      [hit] = await from.get([key]);
    } catch {
      this.repairFailures++;
      return undefined;
    }
    return journal.repairing.get(rk) ? undefined : { hit };
  }

  private async retrust(ctx: RouterContext, u: Upstream, overflow: Overflow): Promise<void> {
    const { journal } = ctx;
    // A request that timed out here may still land (a paused server working through its old
    // connections) on a key the overflow could not remember (it was full): a flush before it
    // lands, or a trust by expiry, would take as clean a copy it then overwrites. Wait until it
    // has settled (a remembered key stays dirty after the trust instead).
    if (this.lateMayLand(overflow, u)) return;
    // Loaded from journal.log: the requests of the earlier process have settled too (lastLate is
    // no earlier than the start), so the writes from now on may teach which keys it holds; as
    // they may once the requests of keys it could not remember (lastLate) have.
    journal.loadedSettled(u);
    // The keys it lacked unread when it overflowed (Overflow.known asks) are read there first, as
    // their entries would have been: it holds the only copy of one (the others wait for it), or
    // lacks it. Until then it is not flushed (holdsAlone: they are `maybe`). As many a tick as the
    // repair copies (repair-rate, one at least), one whose read failed to the back of the line.
    const unread = journal.unreadKeys(u).slice(0, Math.max(1, Math.floor((this.options.rate * TICK_MS) / 1000)));
    await Promise.all(
      unread.map(async (key) => {
        if (journal.unread(u, key) && !(await this.repairKey(ctx, u, key, 'write'))) journal.requeueUnread(u, key);
      }),
    );
    // A session written here since the overflow that every other upstream missed: a flush would
    // lose it. The other upstreams' repair copies it from here first; meanwhile (and for good
    // when there is no other upstream) it may be trusted by expiry, as any other store. One
    // cache is flushed at a time: two that hold the same key must not both drop it at once.
    // Never the only upstream: every key it held before the overflow has no other copy (a pool
    // alone in the chain distrusted by a ring move held every session: review-today finding 3).
    // Nor while another upstream is down: the copies of what it held before are there, out of
    // reach, and once flushed and trusted its misses would be answers (a session read as absent;
    // review-today finding 6: a pool distrusted by a ring move while the store behind it was down).
    const othersUp = ctx.upstreams.length > 1 && ctx.upstreams.every((x) => x === u || isUsable(x));
    if (CACHE_SCHEMES.has(u.scheme) && this.options.flushCaches && !this.flushing && othersUp && !journal.holdsAlone(u, ctx.upstreams)) {
      this.flushing = true;
      try {
        // Ordered as a flush_all is: sent once every write in flight has settled (a conditional
        // command it decides is applied before it, a copy that reaches it is not wiped unseen),
        // with the writes received meanwhile held until it is answered (they land after it).
        await ctx.flushOrdered(() => this.flushOverflowed(ctx, u, overflow));
      } finally {
        this.flushing = false;
      }
      return;
    }
    if (overflow.trustAfter === undefined) {
      // It is back: whatever it holds was written before now, with a deadline mcmux knows. On the
      // wall clock, unlike the settle window above: item deadlines are Unix times, and the store
      // expires them by its own clock.
      overflow.trustAfter = ctx.journal.neverExpires ? Infinity : Math.max(ctx.journal.maxDeadline, Date.now());
      this.log.warn(
        { upstream: u.name, trustAfter: Number.isFinite(overflow.trustAfter) ? new Date(overflow.trustAfter).toISOString() : 'never (items without expiry): run mcmux repair' },
        `${DISTRUSTED}: the upstream takes writes but serves no reads until what it may hold stale has expired`,
      );
    }
    if (Date.now() > overflow.trustAfter) {
      overflow.lastLate = undefined; // settled (at the top)
      ctx.journal.trust(u, 'expiry');
      this.log.info({ upstream: u.name }, 'every item written before the outage has expired: reads use the upstream again');
    }
  }

  /**
   * Flushes the overflowed cache `u` and trusts it, alone among the writes (retrust): nothing
   * else is in flight, and nothing starts until this returns.
   */
  private async flushOverflowed(ctx: RouterContext, u: Upstream, overflow: Overflow): Promise<void> {
    const { journal } = ctx;
    // Checked again now that the writes in flight have settled: one may have timed out here (on
    // a key the overflow could not remember), or reached only this cache.
    if (this.lateMayLand(overflow, u)) return;
    if (journal.overflowed(u) !== overflow || journal.holdsAlone(u, ctx.upstreams)) return;
    // Before the flush is sent: one that times out may still be applied. Nor is it read
    // meanwhile for the keys it was known to hold (the flush may have emptied it already).
    this.onFlush?.(u);
    // After onFlush (which fences it as come back empty): emptied by this flush (failover-read.ts absorb).
    if (u instanceof HealthyUpstream) u.repairEmptied = true;
    journal.flushingOverflowed(u, true);
    try {
      // A pool's servers in its ring only (HealthyUpstream.flushRing; a client's flush_all takes them all).
      await (u instanceof HealthyUpstream ? u.flushRing() : u.flush());
    } catch (error) {
      journal.flushingOverflowed(u, false);
      // Still overflowed, so the keys written since are trusted one by one (Overflow.known):
      // not while this flush may yet land and empty it under them.
      if (mayLandLate(error)) journal.flushTimedOut(u);
      return;
    }
    // Fenced again from now: the flush emptied it at some moment before its answer, and the lock
    // fence runs from when the store came back empty (onFlush fenced it from before the flush was
    // sent, after the writes in flight: that much shorter from the emptying; rollback fuzz seed
    // 1742 of 1501-2000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=0.5, lock-fence 150 ms: the
    // flushed pool decided an add of a lock the other stores held 118 ms after it was emptied).
    // On the upstream in the chain now for this store: a reload meanwhile rebuilt it (takeOver took
    // the fence begun as the flush was sent), and fencing the retired one left the chain's fenced
    // until lock-fence after the flush was sent (review-h12 finding 4).
    const live = this.ctx().upstreams.find((x) => idOf(x) === idOf(u)) ?? u;
    this.onFlush?.(live);
    if (live instanceof HealthyUpstream) live.repairEmptied = true;
    this.onFlushed?.(live);
    // A request of a key it could not remember timed out while the flush was in flight (none
    // should be: no write runs meanwhile): it may land after the flush. Not trusted yet:
    // flushed again once that has settled. Nor when it was distrusted afresh meanwhile (a pool's
    // ring moved: a server back in it, which this flush left out, holds what it held before it
    // left; review-today finding 1): the next tick flushes it again.
    if (this.lateMayLand(overflow, u) || journal.overflowed(u) !== overflow) {
      journal.flushingOverflowed(u, false);
      return;
    }
    overflow.lastLate = undefined; // settled (above): trust() would keep it overflowed
    journal.trust(u, 'repair');
    // What another overflowed upstream holds, or is the freshest copy of, is copied here before
    // that one may be flushed too (journal.lacksAfterFlush).
    for (const [key, seq] of journal.lacksAfterFlush(u, ctx.upstreams)) journal.mark(u, key, 'write', seq);
    this.log.warn({ upstream: u.name }, `${DISTRUSTED}: flushed the cache upstream; reads use it again`);
  }

  private report(u: Upstream, remaining: number, done: number): void {
    const now = monotonicMs();
    let p = this.progress.get(u.name);
    if (!p) {
      p = { total: remaining, done: 0, since: now, lastLog: now };
      this.progress.set(u.name, p);
    }
    p.done += done;
    if (now - p.lastLog >= 5000) {
      p.lastLog = now;
      const rate = Math.round((p.done * 1000) / Math.max(1, now - p.since));
      this.log.info({ upstream: u.name, done: p.done, total: p.total, remaining: remaining - done, keysPerSecond: rate }, 'repair in progress');
    }
    if (remaining - done <= 0) {
      this.log.info({ upstream: u.name, repaired: p.done, seconds: (now - p.since) / 1000 }, 'repair finished');
      this.progress.delete(u.name);
    }
  }

  /** Keys repaired so far and to go, per upstream (stats and metrics). */
  status(): Array<{ upstream: string; done: number; total: number }> {
    return [...this.progress].map(([upstream, p]) => ({ upstream, done: p.done, total: p.total }));
  }
}
