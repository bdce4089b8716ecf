/**
 * One key's writes, in the order mcmux received them, around its conditional commands.
 *
 * A conditional command (add, cas, incr, ...) is decided by the authority and then COPIED to the
 * others. Two things go wrong if it overlaps another write of the same key:
 *
 * - the copies land out of order: the upstream connections are several and memcached serves
 *   them on different threads, so `set lock 0` (a release) sent to the second upstream before
 *   the next holder's copy `set lock 1` may land after it. The second upstream then says "free"
 *   while the first says "held";
 * - the authority dies mid-command: an incr applied on it whose result is still being copied
 *   (or read back) leaves the next upstream one step behind, and a concurrent incr decided there
 *   meanwhile takes a lock that is already held.
 *
 * Either way, once the first upstream is gone two PHP requests hold one session lock and one of
 * them overwrites the other's update. So a conditional command of a key runs alone: it starts
 * once every earlier write of the key has settled on every upstream (its copies landed, or
 * failed and journaled), and later writes of the key wait until its own copies have settled.
 * Plain writes (set, delete, touch) of a key still overlap each other, as they do in memcached.
 *
 * A gat/gats is held the same way (`touching`): it answers from one upstream and touches the
 * others after it answered. A set received while it is in flight lands after it on the copy it
 * read (the gat answered the old value), and without this could land before its touch on
 * another copy, which would give the new value the gat's deadline there.
 *
 * "Settled" is the repair journal's count of writes in flight per key (`writeStarted` /
 * `writeFinished`), which already brackets every upstream request of a client write, copies
 * included: the journal tells this gate when a key's count drops to zero.
 *
 * This orders the writes that pass through ONE mcmux process. Several mcmux processes in front
 * of the same upstreams (one per web server) are not ordered with each other; a session is
 * normally served by one web server at a time (sticky), and across processes the authority
 * still decides every conditional command.
 *
 * Cost on the hot path: a plain write checks one Map size while no conditional command or gat
 * is in flight anywhere (else it pays a closure, and a lookup); a plain get nothing.
 */

import type { RepairJournal } from './journal';

type Run = () => void;

interface Lane {
  /** A conditional command holds the key: everything else waits. */
  held: boolean;
  /** Waiting, in arrival order. */
  readonly queue: Array<{ readonly exclusive: boolean; readonly run: Run }>;
  /** A pump is queued (a microtask): arrivals queue behind it. */
  pumping: boolean;
}

export class KeyOrder {
  /** Keys with a conditional command or a gat running or waiting. */
  private readonly lanes = new Map<string, Lane>();
  /** Per key: plain writes a pending flush_all holds back, received but not started yet (held). */
  private readonly waiting = new Map<string, number>();

  constructor(private readonly journal: RepairJournal) {
    journal.onWritesSettled = (key) => this.settled(key);
  }

  /** Keys with a conditional command or a gat running or waiting (for tests and stats). */
  get busyKeys(): number {
    return this.lanes.size;
  }

  /**
   * A plain write of `key`: runs `start` now (its result returned) unless a conditional command
   * of the key runs or waits; then later, and the returned promise settles with it.
   */
  plain<T>(key: string, start: () => T): T | Promise<Awaited<T>> {
    if (this.lanes.size === 0) return start();
    const lane = this.lanes.get(key);
    if (lane === undefined || (!lane.held && !lane.pumping && lane.queue.length === 0)) return start();
    return this.wait(lane, false, start);
  }

  /** A conditional command of `key`: runs `start` once no other write of the key is in flight. */
  conditional<T>(key: string, start: () => Promise<T>): Promise<T> {
    const lane = this.claim(key);
    return lane === undefined ? start() : this.wait(lane, true, start);
  }

  /**
   * A plain write of `key` held back by a pending flush_all (`gate`): it starts once the flush is
   * answered, and counts as in flight until then. It has told the journal nothing yet (`start`
   * does, at once, as every write does): without this, a conditional command received after it
   * found the key idle, waited for the same flush, and then ran beside it (a set and then an add
   * of a lock, both received while a flush waited: the add was decided before the set landed).
   */
  held<T>(key: string, gate: Promise<void>, start: () => T): Promise<Awaited<T>> {
    this.waiting.set(key, (this.waiting.get(key) ?? 0) + 1);
    return gate.then(() => {
      try {
        return start();
      } finally {
        const left = (this.waiting.get(key) ?? 1) - 1;
        if (left === 0) this.waiting.delete(key);
        else this.waiting.set(key, left);
        // It may have started no write (it threw first): the key may be idle now.
        if (this.inFlight(key) === 0) this.settled(key);
      }
    }) as Promise<Awaited<T>>;
  }

  /** Writes of `key` in flight, or held back to start after a flush (held). */
  private inFlight(key: string): number {
    return this.journal.writesInFlight(key) + (this.waiting.get(key) ?? 0);
  }

  /** Holds `key` at once when nothing of it is queued or in flight (undefined); else its lane to wait in. */
  private claim(key: string): Lane | undefined {
    let lane = this.lanes.get(key);
    if (lane === undefined) {
      lane = { held: false, queue: [], pumping: false };
      this.lanes.set(key, lane);
      if (this.inFlight(key) === 0) {
        lane.held = true;
        return undefined;
      }
    }
    return lane;
  }

  /**
   * A gat/gats of `keys`: runs `start` once no other write of any of them is in flight, and holds
   * them as a conditional command holds its key, until every write `start` announced has settled
   * (journal.writeStarted: the gat itself, then its touches of the other copies, which it sends
   * before its own write ends). A write of a key received meanwhile waits: it lands after the
   * touches on every copy, as it does after the gat on the copy the gat read. Several keys are
   * taken one at a time in sorted order, so two gats never each hold a key the other waits for.
   */
  touching<T>(keys: readonly string[], start: () => T): T | Promise<Awaited<T>> {
    return this.take(keys.length === 1 ? keys : [...new Set(keys)].sort(), 0, start);
  }

  private take<T>(keys: readonly string[], from: number, start: () => T): T | Promise<Awaited<T>> {
    for (let i = from; i < keys.length; i++) {
      const lane = this.claim(keys[i] as string);
      if (lane === undefined) continue;
      return this.wait(lane, true, () => this.take(keys, i + 1, start));
    }
    try {
      return start();
    } finally {
      // A key `start` announced no write of (it threw first) would be held for good.
      for (const key of keys) if (this.inFlight(key) === 0) this.settled(key);
    }
  }

  private wait<T>(lane: Lane, exclusive: boolean, start: () => T): Promise<Awaited<T>> {
    return new Promise<Awaited<T>>((resolve, reject) => {
      lane.queue.push({
        exclusive,
        run: () => {
          try {
            Promise.resolve(start()).then(resolve, reject);
          } catch (error) {
            reject(error);
          }
        },
      });
    });
  }

  /** Every write of `key` in flight has settled (called by the journal). */
  private settled(key: string): void {
    const lane = this.lanes.get(key);
    if (lane === undefined) return;
    // Released even when a pump is queued: a gat that asked nothing (every copy dirty, none
    // usable) settles inside the pump that started it, which goes on to the next command, and
    // the holder after it may settle so too.
    lane.held = false;
    if (lane.pumping) return;
    // Not from inside the journal's bookkeeping: the next command starts its own writes.
    lane.pumping = true;
    queueMicrotask(() => this.pump(key, lane));
  }

  /** Starts what may start now: the plain writes at the head of the queue, or one conditional. */
  private pump(key: string, lane: Lane): void {
    lane.pumping = false;
    while (!lane.held) {
      const next = lane.queue[0];
      if (next === undefined) break;
      if (next.exclusive) {
        // It starts once the plain writes just started (or any other write) have settled too.
        if (this.inFlight(key) > 0) return;
        lane.held = true;
      }
      lane.queue.shift();
      next.run();
    }
    // A pump queued before the lane emptied (and was dropped) must not drop a newer one.
    if (!lane.held && lane.queue.length === 0 && this.lanes.get(key) === lane) this.lanes.delete(key);
  }
}
