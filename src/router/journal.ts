/**
 * The repair journal (hinted handoff): for each upstream, the keys whose last write, delete or
 * touch it missed (down, error, timeout). While a key is dirty for an upstream, reads and
 * conditional commands never use that upstream for that key: no stale read, no resurrected
 * delete (session hazards 1 and 3). repair.ts replays the entries once the upstream is back.
 *
 * Bounded: at most `maxKeys` entries per upstream. On overflow the upstream stops being trusted
 * as a whole ("overflowed"): mcmux keeps writing to it but reads nothing from it until it is
 * known clean — flushed (a cache), or every item mcmux wrote before it came back has expired
 * (mcmux persists the longest deadline it ever wrote), or an operator trusts it again. Except
 * the keys a client's set or delete reached since the overflow (up to `maxKeys` of them, until
 * it misses a write of the key again): it holds their current state, so it is read for them,
 * repairs others from them, and is not flushed while it holds one that nobody else does.
 *
 * flush_all (Router.orderedFlush; the repair's flush of an overflowed cache goes the same way,
 * Router.flushOrdered): while one waits for the writes in flight and runs, no repair
 * or read repair starts (flushBegan, backgroundStarted, quiesce), and a read that began before it
 * does not read-repair after it (flushEnded). A flush that timed out on an upstream may still be
 * applied there (flushTimedOut): until the repair finds it settled, a write reaching that upstream
 * leaves the key dirty there (wipedLater), as a late request of the key would.
 *
 * A process that was killed (or crashed) had requests out that no line of the file tells of: they
 * may still land on any upstream, over what the next process writes there. The file ends with an
 * `E` line when its process closed it cleanly (app.ts close: every request answered, or timed out
 * and journaled); without it, the next process takes every upstream as one where a request of
 * unknown keys may still land, as after a flush that timed out, but one that may store a value
 * too (unknownLate, `sets`), until the repair finds it settled; app.ts waits for that before it
 * listens.
 *
 * Persistent: every change is appended to `<state-dir>/journal.log` (one line, keys in hex) and
 * the file is read back at start, so a proxy restart during an outage keeps its repair work. An
 * entry's line carries its write order (DirtyEntry.firstSeq), and the next process numbers its
 * writes above the largest it loads: with every copy of a key dirty, the copies rank after a
 * restart as they did before it.
 * fsync policy: `always` (fsync after each append), `everysec` (default: at most one second of
 * entries lost on power failure, none on a crash of mcmux alone), `no` (left to the OS).
 *
 * A write to the file that fails (disk full, I/O error) never fails the client's request nor
 * stops mcmux, in the middle of the outage the journal is for: the entry stands in memory, where
 * reads and the repair use it; the error is counted and reported (`onWriteError`), and the file,
 * which may end in half a line, is written afresh from memory at the next change at least a
 * second later (rewrite), so what the disk missed is on it again once it takes writes.
 */

import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { monotonicMs } from '../clock';
import { isExpired } from '../command/command';
import { FileKindError, makeDirs, makeStateDir, readRegularFile } from '../files';
import { type Upstream, inProcess } from '../upstream/upstream';

/** The longest string V8 makes (2^29 - 24 one-byte characters): a longer journal cannot be read. */
const MAX_STRING_BYTES = 0x1fffffe8;

export type DirtyOp = 'write' | 'delete';

export interface JournalOptions {
  readonly maxKeys: number;
  /** Directory of journal.log; undefined keeps the journal in memory only (tests). */
  readonly dir: string | undefined;
  readonly fsync: 'always' | 'everysec' | 'no';
}

export interface DirtyEntry {
  readonly op: DirtyOp;
  /** When the upstream first missed a write of the key (wall-clock ms: journal.log keeps it): of
   * two dirty copies without a sequence to compare (firstSeq), the one that became dirty later is
   * the fresher. */
  readonly since: number;
  /**
   * The write sequence (writeStarted) of the latest write it missed, when it was recorded; 0 for
   * an entry loaded from disk. Only a write started no earlier than that clears the entry: a
   * copy of an older write that lands late says nothing about the newer one it missed.
   */
  readonly seq: number;
  /**
   * The write sequence of the first write it missed (or above that of a write it holds though
   * dirty; see written()): with every copy dirty, the copy with the highest is the freshest
   * (freshest()). On file too, and a process starts its write sequence above the largest it
   * loads: the ranking of copies survives a restart. 0 for an entry loaded from a line written
   * before the field existed (ranked by `since` then).
   */
  readonly firstSeq: number;
  /**
   * When a request of the key to the upstream last timed out (monotonic ms, see clock.ts: never
   * on disk); 0 when none has since the entry began. An entry loaded from disk: when this
   * process loaded it (any may be of a timed-out request still to land). A timed-out request
   * may still be applied, later than newer writes that reached the upstream on another
   * connection (a paused server that resumes): so a client write does not clear such
   * an entry, it only turns it into a copy of the key's current state, which the repair makes
   * once the upstream has been quiet for a while (repair.ts, LATE_SETTLE_MS).
   */
  readonly late: number;
  /**
   * Whether `late` is of a request of this very key (mark), not only a flush that timed out (or
   * an earlier process's requests: wipedLater). Such a request may be a set: landing over a newer
   * write, it leaves an item a read cannot tell from that write's, so the copy never ranks as
   * holding the newest write (HOLDS) for a set while it may land (wipedLater).
   */
  readonly own?: true;
  /**
   * The entry is of touches (or gats) alone, failed here in a way that may have applied them: the
   * copy missed nothing but the item's new deadline, one of these (0: none; at most TOUCHES_KEPT,
   * past which it stands for every deadline between its earliest and latest: touchedAt).
   * Where no other copy holds the item, the repair reads this one's: if it carries none of them
   * the touches never took effect, and the item is the copy's as it was, not an expired one a
   * touch kept alive (review-h22 finding 3). In memory only: loaded from journal.log, an entry is
   * a write.
   */
  readonly touched?: readonly number[];
  /**
   * Journaled as lacking the key (lacks: the least fresh copy) because a read of it failed, not
   * because it was seen to lack it: a cache the repair's flush emptied, asked whether a write
   * since reached it (replicate-write.ts lackedWhereEmptied). The repair reads the copy before it
   * does anything else with the key (asked): holding an item it is clean, the key's state, else a
   * plain least fresh copy; meanwhile no other copy is the truth where none is clean: nothing
   * decides a conditional command of the key, and a read asks that copy first (freshest)
   * (review-h30 finding 1: an add's only copy, in a cache a read timed out on, was repaired from
   * the store behind it, back empty). On journal.log too (review-h32 finding 4). Kept while only
   * the entry's `late` changes, and through a touch it misses (mark); a later miss of any other
   * write of the key there ends it (the copy is then older than that write, whatever it holds: a
   * plain least fresh copy).
   */
  readonly asks?: true;
}

/** A read waiting for the copies of a key on their way to an upstream (whenSettled). */
interface Waiter {
  /** The read's sequence: it waits for the writes acknowledged before it began. */
  readonly readSeq: number;
  readonly wake: () => void;
}

/** A fence that began when the upstream came back empty (fenceEmptied). */
interface Emptied {
  /** Until when it is known empty (epoch ms). */
  readonly until: number;
  /** The repair's flush emptied it (HealthyUpstream.repairEmptied). */
  readonly repair: boolean;
  /** Emptied in part only (HealthyUpstream.partlyEmpty: a server of a pool, a master of a cluster). */
  readonly partly?: boolean;
}

/** journal.log's `B <store> <id> <until>` line of `e`, with ` r` (repair) and ` p` (partly) when so. */
function bLine(store: string, id: number, e: Emptied): string {
  return `B ${hex(store)} ${id} ${e.until}${e.repair ? ' r' : ''}${e.partly === true ? ' p' : ''}`;
}

interface PerUpstream {
  readonly keys: Map<string, DirtyEntry>;
  /** Keys with an acknowledged write still on its way here (write-wait copies), by the latest one's sequence. */
  pending?: Map<string, number>;
  /**
   * The same keys, by when the oldest such write was acknowledged (the sequence its answer took,
   * markPending; or a bound below it, settled): a read that began after that must not take the
   * key from here, whichever write is the latest. One that began before overlaps the write.
   */
  pendingFrom?: Map<string, number>;
  /**
   * Keys with more than one such write on their way, each as [its sequence, its acknowledgement's,
   * whether it removes the item]: as the earlier ones land, `pendingFrom` becomes the oldest
   * acknowledgement of those left.
   */
  onWay?: Map<string, Array<[number, number, boolean]>>;
  /** Reads waiting for the writes of a key acknowledged before they began to land here (whenSettled). */
  waiters?: Map<string, Waiter[]>;
  /** Pending keys whose latest write on its way here removes the item (a delete, or a set or touch whose deadline has passed; onWay tells it per write). */
  pendingRemoves?: Set<string>;
  /** Set on overflow: the upstream is not trusted for reads until cleared. */
  overflow: Overflow | undefined;
  /**
   * Requests of keys mcmux does not know may still land here: a flush of it (a client's
   * flush_all, or the repair's flush of an overflowed cache) that timed out, emptying it under the
   * writes that reach it meanwhile; or, after a process that did not stop cleanly, what that one
   * had sent (`sets`: they may store older values, not only empty it). `at`: when the last of
   * them timed out, or will have (monotonic ms). Until the repair finds them settled
   * (unknownSettled), a write that reaches it leaves the key dirty there, as a late request of
   * the key would (written).
   */
  unknownLate?: UnknownLate;
  /**
   * Keys a client's set or delete reached while the upstream was fenced, by the fence id they
   * were learnt under (HealthyUpstream.fenceId): the last FENCE_IDS ids, oldest first. See
   * fenceLearnt.
   */
  fenced?: Map<number, Set<string>>;
  /**
   * Fences that began when the upstream came back empty, by id: until when (epoch ms) it is known
   * empty under each (the last FENCE_IDS ids, oldest first). See fenceEmptied.
   */
  emptied?: Map<number, Emptied>;
  /**
   * Fence ids of the upstream voided since (fencesVoided: it was seen empty after them), the last
   * VOID_IDS: a marker naming one, found late, is taken for the fence on file last (latestFence).
   */
  voided?: number[];
  /** How often its uniques were voided (HealthyUpstream.uniquesEpoch), as the last process left it. */
  uniquesEpoch?: number;
  /** The history the server at its address last named (serverIdSeen): a Redis replication id and run_id (an older version: the replication id alone). */
  serverId?: string;
}

export interface UnknownLate {
  readonly at: number;
  readonly sets: boolean;
}

export interface Overflow {
  /** When it overflowed (wall-clock ms, as journal.log keeps it). */
  readonly since: number;
  /**
   * The write sequence when it overflowed: only writes started later can tell what it holds (an
   * older one may land after a newer one it missed, whose entry the overflow dropped). Infinity
   * for one loaded from journal.log until the repair finds settled what the earlier process may
   * have sent it (loadedSettled): which keys its timed-out requests were of is not on file, so
   * until then any write of a key may yet be overwritten by one of them.
   */
  afterSeq: number;
  /** Once the wall clock is past this (Unix ms, as item deadlines are), it is trusted again (repair.ts). */
  trustAfter: number | undefined;
  /**
   * Keys a client write reached since the overflow, with that write's sequence (0: loaded from
   * disk). `holds`: it has the key's current state; false once it missed a write of the key
   * again. `late`: when (monotonic ms) a request of the key timed out here since (it may still
   * land, over any write that reaches the upstream after it): it never holds the key again, and
   * a trust keeps the key dirty (see trust()). `maybe`: a write reached it while one loaded from
   * journal.log had not settled (afterSeq Infinity): not read, since a request of the earlier
   * process may land over it, but it may be the only copy of that write, so not flushed while the
   * others are dirty for the key (holdsAlone); on file as an `H` line. A key not here is dirty.
   * `missed`: the sequence of the first write it missed since it last held the key, which ranks
   * the copy as a dirty entry's firstSeq does (fresher): without it, a copy holding a lock the
   * others missed ranked below them once it missed a write too, and the lock was granted again.
   * In memory (a `U` line has none: after a restart it ranks oldest, as an unknown key does).
   * `asks` (with `maybe`): it was journaled as lacking the key unread (DirtyEntry.asks) when it
   * overflowed: it may hold the key's newest state, and is read for it first as that entry would
   * have been (repair.ts retrust), not flushed meanwhile (review-h33 finding 1: the overflow
   * dropped the entry, and the repair's flush took the only copy of an acknowledged add). On file
   * as an `H` line ending in `a`.
   */
  readonly known: Map<string, { seq: number; holds: boolean; late?: number; maybe?: boolean; missed?: number; asks?: true }>;
  /** The keys of `known` that were `asks` (pruned as they stop being so): what retrust reads first. */
  unread?: Set<string>;
  /**
   * More keys were written than `known` may hold: what it holds that no other upstream does is
   * no longer known, so it must not be flushed (it waits for expiry instead).
   */
  full: boolean;
  /** The key holdsAlone() last found, checked first next time (it usually still is). */
  lastAlone?: string;
  /**
   * A pool distrusted because its ring moved: the keys it says did not move (on the same server
   * in every ring since: MemcachedPool.unmovedSince) are read as from an upstream not overflowed,
   * unless `known` says otherwise. For that, each write of such a key it missed is in `known`
   * (not held); when one cannot be (`known` is full, or a request of a key it could not remember
   * timed out: lastLate), this goes, and no key is trusted but those known to be held. In memory
   * only: the next process distrusts the pool whole (journal.log's J line). Review-today finding
   * 6: with the store behind the pool down, a session on a server that never left was refused.
   */
  unmoved?: (key: string) => boolean;
  /**
   * When a request to it last timed out whose key `known` could not take (it was full), in ms:
   * until it has settled, the repair neither flushes it nor trusts it by expiry (it would land
   * in a copy taken as clean, unlike one whose key is remembered, which stays dirty). In memory.
   */
  lastLate?: number;
  /**
   * The repair is flushing it: it holds none of the keys it was known to hold (the flush may
   * have emptied it already), and no write landing meanwhile proves otherwise. In memory.
   */
  flushing?: boolean;
}

/**
 * The journal follows the store, not the way it is reached: an upstream's `storeId` (its URL
 * without tuning options such as timeout, set by the app) when it has one, else its name. A
 * reload that only changes a timeout must keep the store's dirty keys.
 */
export function idOf(u: Upstream): string {
  return (u as { storeId?: string }).storeId ?? u.name;
}


/**
 * DirtyEntry.firstSeq of a copy that holds the newest write of its key though it is dirty (a
 * flush that timed out may still wipe it, journal.wipedLater): the freshest of all, until it
 * misses a write (mark dates it by that miss), or a conditional command that failed where it may
 * have been applied was never sent to it (notSent: dated just before that command, below the
 * authorities it failed on). The flush may have emptied it meanwhile: ranked first only while no
 * copy may hold a newer write.
 */
const HOLDS = Number.MAX_SAFE_INTEGER;
/** DirtyEntry.firstSeq of a copy that lost every write before it was flushed (lacks): below any write's sequence (from 1). */
const LEAST_FRESH = 0.5;
/**
 * Fence ids whose keys are kept per store: the one an earlier process's marker may name, loaded
 * from journal.log, and the one this process learns under, should it differ (a fence of its own
 * began before the marker was read: an upstream down as mcmux started).
 */
const FENCE_IDS = 2;
/**
 * How many voided fence ids each store keeps (PerUpstream.voided): a marker write that timed out
 * lands within its timeout, so only the fences of the last moments before an emptying matter.
 */
const VOID_IDS = 8;
/** A marker acknowledged again goes on file only when it lives this much longer than the one there (markerAcked). */
const MARKER_NOTE_MS = 3600_000;
/** Entries pruneWrites looks at per call. */
const PRUNE_STEPS = 4;

/** DirtyEntry.own, left out when false. */
const own = (yes: boolean): { own?: true } => (yes ? { own: true } : {});

const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');
const unhex = (s: string): string => Buffer.from(s, 'hex').toString('latin1');

/**
 * Writes all of `text` (ASCII: one byte a character) to `fd`, or throws. A full disk takes what
 * fits and write(2) returns that count: the rest is written again, which fails with ENOSPC if
 * it does not fit, rather than leaving half a line that the next one is glued to (review).
 */
function writeAll(fd: number, text: string): void {
  while (text.length > 0) {
    const n = writeSync(fd, text);
    if (n <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    text = text.slice(n);
  }
}

/**
 * An entry's line in journal.log: `M <store> <op> <key> <since> <firstSeq>`. The last field (the
 * write order, see DirtyEntry.firstSeq) is left off when 0; a file written before it existed has
 * none, and its entries rank by `since` alone, as they did.
 */
function mLine(name: string, key: string, e: DirtyEntry): string {
  const line = `M ${hex(name)} ${e.op === 'delete' ? 'd' : 'w'} ${hex(key)} ${e.since}`;
  // A trailing `a`: lacking the key unread (DirtyEntry.asks), for the next process too.
  return e.firstSeq > 0 ? `${line} ${e.firstSeq}${e.asks ? ' a' : ''}` : line;
}

/**
 * What a failed touch (or gat) to `deadline` is journaled with (DirtyEntry.touched): its deadline,
 * undefined for one that expires the item (nothing to tell by: the item is to go everywhere).
 */
export function touchedTo(deadline: number, now = Date.now()): number | undefined {
  return isExpired(deadline, now) ? undefined : deadline;
}

/**
 * The most touch deadlines an entry keeps one by one (DirtyEntry.touched). Past that it keeps the
 * earliest and the TOUCHES_KEPT latest, and stands for every deadline between the earliest and the
 * latest (touchedAt): a ninth touch that failed turned the entry into a plain missed write, and the
 * repair copied the cache's absence over the store's session, which none of the touches had
 * reached (review-h30 finding 4).
 */
const TOUCHES_KEPT = 8;

/** `touched` with one more touch's deadline `t` (TOUCHES_KEPT). */
function withTouch(touched: readonly number[], t: number): number[] {
  const all = [...touched, t];
  if (all.length <= TOUCHES_KEPT) return all;
  all.sort((x, y) => x - y);
  return [all[0] as number, ...all.slice(-TOUCHES_KEPT)];
}

/**
 * Whether an item's deadline `deadline` may be one the touches of `touched` set (DirtyEntry.touched),
 * within `slack` ms (memcached's whole seconds): equal to one of them, or, past TOUCHES_KEPT (some
 * dropped), anywhere between the earliest and the latest.
 */
export function touchedAt(touched: readonly number[], deadline: number, slack: number): boolean {
  if (touched.length > TOUCHES_KEPT) return deadline >= Math.min(...touched) - slack && deadline <= Math.max(...touched) + slack;
  return touched.some((t) => Math.abs(deadline - t) <= slack);
}

/** The entry without the deadline of a touch it stood for alone (DirtyEntry.touched). */
function untouched(e: DirtyEntry | undefined): DirtyEntry | undefined {
  if (e?.touched === undefined) return e;
  const { touched: _, ...rest } = e;
  return rest;
}

/** Keys whose request timed out on the upstream and may still land there, with when (monotonic ms). */
function lateKeys(p: PerUpstream): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  for (const [key, e] of p.keys) if (e.late !== 0) out.push([key, e.late]);
  if (p.overflow) for (const [key, k] of p.overflow.known) if (k.late !== undefined) out.push([key, k.late]);
  return out;
}

export class RepairJournal {
  private readonly byName = new Map<string, PerUpstream>();
  /** Longest deadline mcmux has written (ms); `neverExpires` once an item without one was. */
  maxDeadline = 0;
  neverExpires = false;
  private persistedMax = 0;
  private fd: number | undefined;
  private lines = 0;
  private syncTimer: NodeJS.Timeout | undefined;
  private dirtySinceSync = false;
  private closed = false;
  /** Keys a repair is copying right now (`<store> <key>`); true once a client write of the key started. */
  readonly repairing = new Map<string, boolean>();
  private writeSeq = 0;
  /**
   * Keys recently written: the sequence of the last write started and how many are still going,
   * in the order they last started (so in increasing seq). An entry is forgotten once no write of
   * its key is in flight and no read in flight began before it, a few entries per call (pruneWrites):
   * under a steady load, when some read is always in flight, the map holds the writes of about
   * one read's lifetime, never the whole key space, and no call walks it all.
   */
  private readonly writes = new Map<string, { seq: number; inFlight: number }>();
  /** The write sequence each read in flight began at, with how many reads hold it (in increasing seq). */
  private readonly readSeqs = new Map<number, number>();
  /** A read pinned a sequence older than the newest one held: the oldest must be found by a scan. */
  private readSeqsUnordered = false;
  /**
   * Reads that began before this sequence may not read-repair (writtenSince): a write of the key
   * may have been forgotten while they were in flight, or a flush_all was answered since.
   */
  private forgottenUpTo = 0;
  /** Writes to journal.log that failed (stats `journal_write_errors`). */
  writeErrors = 0;
  /** Told of the first failed write to journal.log after one that succeeded (app.ts logs it). */
  onWriteError: ((error: Error) => void) | undefined;
  /** The file failed: not before this time (monotonic ms) is it written afresh (a full disk is not retried per change). */
  private retryAt = 0;
  private failing = false;

  constructor(private readonly options: JournalOptions) {}

  private of(u: Upstream): PerUpstream {
    let p = this.byName.get(idOf(u));
    if (!p) {
      p = { keys: new Map(), overflow: undefined };
      this.byName.set(idOf(u), p);
    }
    return p;
  }

  /**
   * True when `u` must not be read (or decide) for `key`. Hot path: two map lookups at most.
   * `readSeq`: for a read that began at that write sequence (readStarted), a write-wait copy
   * still on its way to `u` of a write acknowledged after the read began does not count: `u`
   * holds the value before that write or the write's, and either answers a read that overlaps it
   * (else a miss from an upstream that lost the key, read before the write reached it, would
   * stand for the answer). Acknowledged, not started: a write that started before the read and
   * was acknowledged while the first upstream answered it a miss (a cache that had evicted the
   * key) kept the read off the only other copy, and the session was served as absent (fuzz seed
   * 41254 of 40501-42000 with MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1).
   */
  isDirty(u: Upstream, key: string, readSeq?: number): boolean {
    const p = this.byName.get(idOf(u));
    if (p === undefined) return false;
    const o = p.overflow;
    if (o !== undefined) {
      if (o.flushing === true) return true;
      const k = o.known.get(key);
      if (k === undefined ? o.unmoved?.(key) !== true : !k.holds) return true;
    }
    if (p.keys.has(key)) return true;
    const pending = p.pending?.get(key);
    return pending !== undefined && (readSeq === undefined || (p.pendingFrom?.get(key) ?? pending) <= readSeq);
  }

  /**
   * write-wait copies answered a write (sequence `seq`) before `u` did: until it does, `u` is
   * dirty for the key in memory (not in the file: a write a second would cost a syscall each),
   * so no read takes the value the write replaced from it. Its answer settles it (`settled`).
   */
  markPending(u: Upstream, key: string, seq: number, removes = false): void {
    const p = this.of(u);
    p.pending ??= new Map();
    p.pendingFrom ??= new Map();
    // Whether the one write on its way so far (if any) removes the item, for onWay below.
    const lastRemoves = p.pendingRemoves?.has(key) === true;
    if (seq >= (p.pending.get(key) ?? 0)) {
      if (removes) (p.pendingRemoves ??= new Set()).add(key);
      else p.pendingRemoves?.delete(key);
    }
    // The answer takes a sequence of its own: reads that begin from now on do not take the key
    // from `u` (isDirty), those that began before may.
    const acked = ++this.writeSeq;
    const last = p.pending.get(key);
    if (last === undefined) {
      p.pending.set(key, seq);
      p.pendingFrom.set(key, acked);
      return;
    }
    // Another write of the key is still on its way: the oldest acknowledgement keeps reads off
    // this copy (seed 23512 of 22501-24000: the mark of a delete acknowledged after a read began
    // replaced that of a set acknowledged before, and the read took the value the set replaced).
    // Each is remembered with its own, for when the earlier ones have landed (settled).
    const ways = (p.onWay ??= new Map());
    let q = ways.get(key);
    if (q === undefined) {
      q = [[last, p.pendingFrom.get(key) ?? acked, lastRemoves]];
      ways.set(key, q);
    }
    q.push([seq, acked, removes]);
    if (last < seq) p.pending.set(key, seq);
  }

  /**
   * `u` answered the write `seq` of `key` (either way), and so every write of the key sent there
   * before it (each driver applies a key's requests in the order sent): its pending mark goes
   * once the latest one's has.
   */
  settled(u: Upstream, key: string, seq: number): void {
    const p = this.byName.get(idOf(u));
    const pending = p?.pending;
    if (pending === undefined || pending.size === 0) return;
    const s = pending.get(key);
    if (s === undefined || p === undefined) return;
    if (s <= seq) {
      pending.delete(key);
      p.pendingRemoves?.delete(key);
      p.pendingFrom?.delete(key);
      p.onWay?.delete(key);
      this.wake(p, key, Infinity);
      return;
    }
    // Later writes are still on its way (one alone began after `seq`: it is not this answer's).
    const q = p.onWay?.get(key);
    if (q === undefined) return;
    let from = Infinity;
    let n = 0;
    for (const w of q) {
      if (w[0] <= seq) continue;
      q[n++] = w;
      from = Math.min(from, w[1]);
    }
    q.length = n;
    if (n < 2) p.onWay?.delete(key);
    // Reads that began before the oldest acknowledgement left may take the key from `u` again.
    p.pendingFrom?.set(key, from);
    this.wake(p, key, from);
  }

  /** Wakes the reads waiting for `key` on `p` that began before `from` (whenSettled). */
  private wake(p: PerUpstream, key: string, from: number): void {
    const waiting = p.waiters?.get(key);
    if (waiting === undefined) return;
    const still = waiting.filter((w) => w.readSeq >= from);
    if (still.length === 0) p.waiters?.delete(key);
    else p.waiters?.set(key, still);
    for (const w of waiting) if (w.readSeq < from) w.wake();
  }

  /**
   * Resolves once `u` has answered the writes of `key` on their way there that were acknowledged
   * before the read `readSeq` began (those that keep it off `u`: isDirty), not the ones after:
   * a set received while the read waits does not hold it (review-h22 finding 2). Undefined when
   * there are none, or when the latest of those removes the item: it can only make `u` miss the
   * key too (a get right after an acknowledged delete, waiting for the delete's copy to a slow
   * store: review-h22 finding 1).
   */
  whenSettled(u: Upstream, key: string, readSeq: number): Promise<void> | undefined {
    const p = this.byName.get(idOf(u));
    if (p?.pending?.has(key) !== true || (p.pendingFrom?.get(key) ?? 0) > readSeq) return undefined;
    // The latest of the writes the read waits for: one that removes the item can only make `u`
    // miss too, whatever was acknowledged after the read began (review-h28 finding 4).
    const q = p.onWay?.get(key);
    let removes = p.pendingRemoves?.has(key) === true;
    if (q !== undefined) {
      let latest = -1;
      for (const w of q) {
        if (w[1] <= readSeq && w[0] > latest) {
          latest = w[0];
          removes = w[2];
        }
      }
    }
    if (removes) return undefined;
    const waiters = (p.waiters ??= new Map());
    return new Promise((resolve) => {
      const w: Waiter = { readSeq, wake: resolve };
      const waiting = waiters.get(key);
      if (waiting === undefined) waiters.set(key, [w]);
      else waiting.push(w);
    });
  }

  overflowed(u: Upstream): Overflow | undefined {
    return this.byName.get(idOf(u))?.overflow;
  }

  size(u: Upstream): number {
    return this.byName.get(idOf(u))?.keys.size ?? 0;
  }

  /** Total entries, for stats and metrics. */
  get totalKeys(): number {
    let n = 0;
    for (const p of this.byName.values()) n += p.keys.size;
    return n;
  }

  /** Keys overflowed upstreams are known to hold, and fenced ones learnt (they are written to journal.log as well). */
  private knownKeys(): number {
    let n = 0;
    for (const p of this.byName.values()) {
      n += p.overflow?.known.size ?? 0;
      for (const keys of p.fenced?.values() ?? []) n += keys.size;
    }
    return n;
  }

  /**
   * A client's set or delete of `key` reached `u` while fenced, under fence `id` (health.ts
   * noteWritten): on file as `W <store> <id> <key>`, so that a later process that inherits the
   * fence from the upstream's marker knows the key there again (fenceKeys). The new id of an
   * upstream that started afresh (a restart, a flush) has no keys: what it learnt before is
   * named by an id no marker carries any more.
   */
  fenceLearnt(u: Upstream, id: number, key: string): void {
    if (this.learnFenced(this.of(u), id, key)) this.append(`W ${hex(idOf(u))} ${id} ${hex(key)}`);
  }

  private learnFenced(p: PerUpstream, id: number, key: string): boolean {
    const known = (p.fenced ??= new Map());
    let keys = known.get(id);
    if (keys === undefined) {
      keys = new Set();
      known.set(id, keys);
      if (known.size > FENCE_IDS) known.delete(known.keys().next().value as number);
    }
    if (keys.has(key)) return false;
    keys.add(key);
    return true;
  }

  /**
   * `u` came back empty and is fenced under `id`, known so until `wallUntil` (epoch ms): on file
   * as `B <store> <id> <until>`, so that a later process that inherits the fence from the
   * upstream's marker knows it came back empty, and when (emptiedUntil): with every upstream
   * fenced, the one that came back empty first decides first, and one fenced only as a
   * precaution before it (authority-order.ts), whichever process saw them come back (fuzz seed
   * 186930 with MCMUX_FUZZ_RESTART=1). Written again only when it moved by more than a second,
   * or `repair` changed. `repair`: the repair's flush emptied it (HealthyUpstream.repairEmptied),
   * on file as a trailing `r`: that process's own doing, on the word that the other upstreams
   * hold what it held, so that the next process, too, takes its miss for no answer while one of
   * them fails (emptiedByRepair; eject fuzz seed 11553 of 10501-12000 with MCMUX_FUZZ_RESTART=1).
   */
  fenceEmptied(u: Upstream, id: number, wallUntil: number, repair = false, partly = false): void {
    if (this.setEmptied(this.of(u), id, { until: wallUntil, repair, partly })) this.append(bLine(idOf(u), id, { until: wallUntil, repair, partly }));
  }

  private setEmptied(p: PerUpstream, id: number, e: Emptied): boolean {
    const known = (p.emptied ??= new Map());
    const was = known.get(id);
    if (was !== undefined && Math.abs(was.until - e.until) <= 1000 && was.repair === e.repair && was.partly === e.partly) return false;
    known.delete(id);
    known.set(id, e);
    if (known.size > FENCE_IDS) known.delete(known.keys().next().value as number);
    return true;
  }

  /** What fenceEmptied kept for `u`'s fence `id` (epoch ms; 0: none), by this process or one before it. */
  emptiedUntil(u: Upstream, id: number): number {
    return this.byName.get(idOf(u))?.emptied?.get(id)?.until ?? 0;
  }

  /**
   * `u` was seen empty (a marker found gone, the repair's flush, a ring move, another server at
   * its address) and fenced anew under `keep`: the keys its earlier fences learnt are gone from
   * it (the process forgot them: HealthyUpstream.emptied). On file as `Z <store> <id>` for each,
   * so that no process inherits one of them from a marker that names it, a write of that marker
   * which timed out before the emptying and landed after it (review-h30 findings 2 and 3: the
   * cache the repair flushed knew a lock it had lost, and decided its add): such a marker stands
   * for the fence on file last (latestFence; review-h32 finding 3).
   */
  fencesVoided(u: Upstream, keep: number): void {
    const p = this.of(u);
    const ids = new Set([...(p.fenced?.keys() ?? []), ...(p.emptied?.keys() ?? [])]);
    ids.delete(keep);
    for (const id of ids) if (this.voidFence(p, id)) this.append(`Z ${hex(idOf(u))} ${id}`);
  }

  private voidFence(p: PerUpstream, id: number): boolean {
    p.fenced?.delete(id);
    p.emptied?.delete(id);
    const voided = (p.voided ??= []);
    if (voided.includes(id)) return false;
    voided.push(id);
    if (voided.length > VOID_IDS) voided.shift();
    return true;
  }

  fenceVoid(u: Upstream, id: number): boolean {
    return this.byName.get(idOf(u))?.voided?.includes(id) === true;
  }

  latestFence(u: Upstream): number | undefined {
    const p = this.byName.get(idOf(u));
    // Voided ids are gone from both maps (voidFence); each map keeps its ids in the order begun.
    const emptied = p?.emptied === undefined ? undefined : [...p.emptied.keys()].at(-1);
    return emptied ?? (p?.fenced === undefined ? undefined : [...p.fenced.keys()].at(-1));
  }

  /** Whether fenceEmptied kept, for `u`'s fence `id`, that the repair's flush emptied it. */
  emptiedByRepair(u: Upstream, id: number): boolean {
    return this.byName.get(idOf(u))?.emptied?.get(id)?.repair === true;
  }

  /** Whether fenceEmptied kept, for `u`'s fence `id`, that it came back empty in part only (partlyEmpty). */
  emptiedPartly(u: Upstream, id: number): boolean {
    return this.byName.get(idOf(u))?.emptied?.get(id)?.partly === true;
  }

  /**
   * `u`'s uniques were voided, `epoch` times so far (cold-detector.ts voidUniques): on file as
   * `V <store> <epoch>`, so that the next process seals as this one does (uniquesEpochOf).
   */
  uniquesVoided(u: Upstream, epoch: number): void {
    const p = this.of(u);
    if (epoch <= Math.max(p.uniquesEpoch ?? 0, this.otherEpochs.get(idOf(u)) ?? 0)) return;
    p.uniquesEpoch = epoch;
    this.append(`V ${hex(idOf(u))} ${epoch}`);
  }

  /**
   * `u` named the history of the server at its address `id` (Upstream.onServerId: a Redis
   * replication id and run_id), on file as `I <store> <id>` when it changed: a process started after a
   * failover while mcmux was down tells the promoted replica from the master it knew
   * (ColdDetector.serverId; review-today finding 5).
   */
  serverIdSeen(u: Upstream, id: string): void {
    const p = this.of(u);
    if (p.serverId === id) return;
    p.serverId = id;
    this.append(`I ${hex(idOf(u))} ${hex(id)}`);
  }

  /** The id `u` last named (serverIdSeen), by this process or the one before it. */
  serverIdOf(u: Upstream): string | undefined {
    return this.byName.get(idOf(u))?.serverId;
  }

  /** What uniquesVoided last kept for `u` (0: never), to resume from (HealthyUpstream.resumeUniques). */
  uniquesEpochOf(u: Upstream): number {
    return Math.max(this.byName.get(idOf(u))?.uniquesEpoch ?? 0, this.otherEpochs.get(idOf(u)) ?? 0);
  }

  /**
   * Where this host's marker was acknowledged (cold-detector.ts), by store (idOf: a server of a
   * pool too), with until when it lives there (epoch ms): on file as `A <store> <until>` (`A
   * <store> 0` once a flush took it). A store that holds no marker of this host though one was
   * acknowledged there, and not flushed since, lost it: it restarted empty (or was flushed by
   * someone else) while mcmux did not watch, even when no other store holds a marker to tell so
   * (markedElsewhere: a rewrite after a flush_all refused there, fuzz seed 194187 with
   * MCMUX_FUZZ_RESTART=1; or a single upstream). Kept for any store, in the config or not, until
   * the marker's own expiry.
   */
  private readonly markers = new Map<string, number>();

  /**
   * `store` acknowledged this host's marker, living there until `wallUntil`: on file when new, or
   * when it lives more than MARKER_NOTE_MS longer than the one on file (the marker is written again
   * every few seconds; a record that ends sooner than the marker only tells less).
   */
  markerAcked(store: Upstream, wallUntil: number): void {
    const id = idOf(store);
    if (wallUntil <= (this.markers.get(id) ?? 0) + MARKER_NOTE_MS) return;
    this.markers.set(id, wallUntil);
    this.append(`A ${hex(id)} ${wallUntil}`);
  }

  /** `store` was flushed: its marker went with the rest (markerAcked). */
  markerGone(store: Upstream): void {
    const id = idOf(store);
    if (!this.markers.delete(id)) return;
    this.append(`A ${hex(id)} 0`);
  }

  /** Until when the marker `store` last acknowledged lives (epoch ms; 0: none since its last flush). */
  markerUntil(store: Upstream): number {
    return this.markers.get(idOf(store)) ?? 0;
  }

  /**
   * Pools whose ring was not whole (a server ejected, eject=true) as last told (ringMoved): on file
   * as `J <store> 1`, `J <store> 0` once whole again. The next process starts with the whole ring:
   * the ejected server's keys go back to it, which lacks what was written to them while it was out
   * (a lock), though its marker is still there. Its return is a ring move all the same: the pool
   * is fenced as come back empty (cold-detector.ts, ringBroken).
   */
  private readonly ringsBroken = new Set<string>();

  /** `u`'s ring moved: `whole`, every server of it is in the ring now. */
  ringMoved(u: Upstream, whole: boolean): void {
    const id = idOf(u);
    if (whole !== this.ringsBroken.has(id)) return;
    if (whole) this.ringsBroken.delete(id);
    else this.ringsBroken.add(id);
    this.append(`J ${hex(id)} ${whole ? 0 : 1}`);
  }

  /** Whether `u`'s ring was not whole as this process or the one before last told (ringMoved). */
  ringBroken(u: Upstream): boolean {
    return this.ringsBroken.has(idOf(u));
  }

  /** Uniques epochs of stores not in the config as journal.log was loaded (V lines kept). */
  private readonly otherEpochs = new Map<string, number>();

  /** The keys `u` learnt under fence `id` (fenceLearnt), by this process or one before it. */
  fenceKeys(u: Upstream, id: number): Iterable<string> {
    return this.byName.get(idOf(u))?.fenced?.get(id) ?? [];
  }

  entries(u: Upstream): IterableIterator<[string, DirtyEntry]> {
    return this.of(u).keys.entries();
  }

  /** Moves the entry of `key` to the end of `entries(u)` (the repair's order); nothing else changes. */
  requeue(u: Upstream, key: string): void {
    const keys = this.byName.get(idOf(u))?.keys;
    const e = keys?.get(key);
    if (keys === undefined || e === undefined) return;
    keys.delete(key);
    keys.set(key, e);
  }

  /**
   * The request of `key` that timed out on `u` can no longer land (repair.ts found it settled):
   * a copy a write makes there counts for the client again (lateFor), and the next write to reach
   * it clears the entry, before the repair has copied the key (which needs a source that may be
   * down meanwhile). In memory, as `late` is.
   */
  lateSettled(u: Upstream, key: string): void {
    const p = this.byName.get(idOf(u));
    const e = p?.keys.get(key);
    // The touch deadlines stay: the repair, now that the touches cannot land any more, reads the
    // copy to tell whether they took effect (review-h28 finding 1: a touch that timed out on the
    // store lost them here, and the session was deleted there).
    if (p !== undefined && e !== undefined && e.late !== 0) this.setKey(p, key, { op: e.op, since: e.since, seq: e.seq, firstSeq: e.firstSeq, late: 0, ...(e.touched === undefined ? {} : { touched: e.touched }), ...(e.asks ? { asks: e.asks } : {}) });
  }

  entry(u: Upstream, key: string): DirtyEntry | undefined {
    return this.byName.get(idOf(u))?.keys.get(key);
  }

  /**
   * Whether `u` is journaled as lacking `key` unread: its entry's DirtyEntry.asks, or, overflowed
   * since, Overflow.known's `asks`.
   */
  unread(u: Upstream, key: string): boolean {
    const p = this.byName.get(idOf(u));
    if (p === undefined) return false;
    return p.keys.get(key)?.asks === true || p.overflow?.known.get(key)?.asks === true;
  }

  /** To the back of Overflow.unread, while `u` still lacks `key` unread (its read failed). */
  requeueUnread(u: Upstream, key: string): void {
    const o = this.byName.get(idOf(u))?.overflow;
    if (o?.unread?.delete(key) === true && o.known.get(key)?.asks === true) o.unread.add(key);
  }

  /** The keys overflowed `u` still lacks unread (Overflow.unread), for the repair to read first. */
  unreadKeys(u: Upstream): string[] {
    const o = this.byName.get(idOf(u))?.overflow;
    if (o?.unread === undefined) return [];
    for (const key of o.unread) if (o.known.get(key)?.asks !== true) o.unread.delete(key);
    return [...o.unread];
  }

  /**
   * Every client write calls this as it starts (before any upstream sees it). A repair copying
   * the key right now must copy again (its source may be older than this write), and a read
   * that began before it must not read-repair the key (the value it found may be gone).
   * Returns the write's sequence, for `mark` and `written` of its outcomes.
   */
  writeStarted(key: string): number {
    const seq = ++this.writeSeq;
    this.writesGoing++;
    const w = this.writes.get(key);
    // Re-inserted at the end: the Map's order is the order writes last started in.
    this.writes.delete(key);
    this.writes.set(key, { seq, inFlight: (w?.inFlight ?? 0) + 1 });
    // Finished writes remembered for reads still in flight: at most maxKeys (journal-max-keys);
    // beyond, the oldest are forgotten, and reads older than them are told "maybe written",
    // which only skips a read repair.
    if (this.writes.size > this.options.maxKeys) {
      // A read stuck for long: forget the oldest finished write, and remember that we did.
      for (const [k, x] of this.writes) {
        if (x.inFlight > 0) continue;
        this.writes.delete(k);
        this.forgottenUpTo = Math.max(this.forgottenUpTo, x.seq);
        break;
      }
    }
    if (this.repairing.size !== 0) {
      for (const rk of this.repairing.keys()) if (rk.slice(rk.lastIndexOf(' ') + 1) === key) this.repairing.set(rk, true);
    }
    return seq;
  }

  /** Every upstream request of a write that `writeStarted` announced has settled. */
  writeFinished(key: string): void {
    const w = this.writes.get(key);
    if (!w) return;
    w.inFlight--;
    if (--this.writesGoing === 0 && this.idleWaiters.length > 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
    if (this.writesGoing === 0 && this.background === 0 && this.quietWaiters.length > 0) for (const resolve of this.quietWaiters.splice(0)) resolve();
    this.pruneWrites();
    if (w.inFlight === 0 && this.onWritesSettled !== undefined) this.onWritesSettled(key);
  }

  /** Client writes started and not yet settled on every upstream, all keys together. */
  private writesGoing = 0;
  private idleWaiters: Array<() => void> = [];

  /**
   * Resolves once no client write is in flight on any upstream. Shutdown waits for it: with
   * write-wait copies the client was answered before every copy landed, and an upstream closed
   * under a copy would journal it as missed though the server applied it.
   */
  writesSettled(): Promise<void> {
    return this.writesGoing === 0 ? Promise.resolve() : new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** flush_all commands received and not yet answered (Router: they run one at a time). */
  private flushes = 0;
  /** Repairs and read repairs in flight (backgroundStarted). */
  private background = 0;
  private quietWaiters: Array<() => void> = [];

  /**
   * How many flushes of an overflowed cache the repair has sent (flushingOverflowed). A read that
   * sees it change after it began takes no miss answered since as an answer: the key may have
   * been there when the read began, and only the repair's flush took it (a client's flush_all
   * racing a read is the client's race; this one is mcmux's own: failover-read.ts, fuzz seed
   * 211229).
   */
  repairFlushes = 0;
  /** Per upstream, the value of repairFlushes its last flush by the repair began at (flushedSince). */
  private readonly flushedAt = new Map<string, number>();

  /** Whether the repair began a flush of `u` once repairFlushes was past `since`. */
  flushedSince(u: Upstream, since: number): boolean {
    return (this.flushedAt.get(idOf(u)) ?? 0) > since;
  }

  /** A flush (flush_all, or the repair's of an overflowed cache) is waiting for the writes in flight, or running: no repair or read repair starts. */
  get flushing(): boolean {
    return this.flushes > 0;
  }

  /** Of those, a client's flush_all, which empties every upstream (not the repair's flush of one). */
  private flushAlls = 0;
  get flushingAll(): boolean {
    return this.flushAlls > 0;
  }

  /**
   * A flush_all was received (`all`; else the repair flushes one overflowed cache): from now until
   * it is answered (flushEnded), no repair or read repair starts (backgroundStarted says no), so
   * none sent before the flush lands after it.
   */
  flushBegan(all = true): void {
    this.flushes++;
    if (all) this.flushAlls++;
  }

  /**
   * The flush_all is answered. A read that began before cannot tell whether the value it found
   * was there before the flush: it does not read-repair it (writtenSince says "written").
   */
  flushEnded(all = true): void {
    this.flushes--;
    if (all) this.flushAlls--;
    this.forgottenUpTo = Math.max(this.forgottenUpTo, ++this.writeSeq);
  }

  /**
   * A repair or read repair is about to write to an upstream: false while a flush_all is
   * pending or running (it must not start); else it counts as in flight until
   * backgroundFinished, and a flush_all waits for it (quiesce).
   */
  backgroundStarted(): boolean {
    if (this.flushes > 0) return false;
    this.background++;
    return true;
  }

  /** No client write, repair or read repair is in flight on any upstream (what quiesce waits for). */
  get quiescent(): boolean {
    return this.writesGoing === 0 && this.background === 0;
  }

  backgroundFinished(): void {
    if (--this.background === 0 && this.writesGoing === 0 && this.quietWaiters.length > 0) for (const resolve of this.quietWaiters.splice(0)) resolve();
  }

  /**
   * Resolves once no client write, repair or read repair is in flight on any upstream: what a
   * flush_all waits for before it is sent (Router), so that nothing sent before it lands after
   * it. Each request settles within its upstream's timeout (one that timed out is journaled as
   * late, and stays dirty through the flush: trust()); the router starts no client write
   * meanwhile, and flushBegan() stops repairs and read repairs from starting.
   */
  quiesce(): Promise<void> {
    return this.writesGoing === 0 && this.background === 0 ? Promise.resolve() : new Promise((resolve) => this.quietWaiters.push(resolve));
  }

  /**
   * A flush of `u` timed out: it may still be applied, later than writes that reach `u` on other
   * connections. Until unknownSettled, each write that reaches `u` leaves its key dirty there, as
   * a late request of the key would: copied again once settled (repair.ts).
   */
  flushTimedOut(u: Upstream): void {
    this.mayLandUnknown(u, monotonicMs(), false);
  }

  /**
   * Requests of unknown keys may land on `u` until `at` (monotonic ms) and a settle time after;
   * `sets`: they may store values (an earlier process's), not only empty it (a flush).
   */
  private mayLandUnknown(u: Upstream, at: number, sets: boolean): void {
    const p = this.of(u);
    if (p.unknownLate === undefined) this.unknownLates++;
    p.unknownLate = { at: Math.max(at, p.unknownLate?.at ?? 0), sets: sets || p.unknownLate?.sets === true };
  }

  /** Upstreams where requests of unknown keys may still land (unknownLate): 0 but for a moment after a flush timed out or a start after a kill. */
  unknownLates = 0;

  /** Upstreams overflowed (distrusted as a whole) now. */
  private overflows = 0;

  /** Entries (of upstreams not overflowed) with `late`: a request of the key may still land there (setKey keeps it). */
  private lateEntries = 0;

  /**
   * False while no upstream is overflowed, no flush may still land, and no entry is of a request
   * that may still land: every copy a write makes is then read for its key, and keeps what the
   * write stored (clean there, or ranked the freshest; see replicate-write.ts lasting), and a
   * write need not ask which do. A field check, for the hot path.
   */
  get untrusting(): boolean {
    return this.overflows !== 0 || this.unknownLates !== 0 || this.lateEntries !== 0;
  }

  /**
   * Whether a request of `key` that timed out on `u` may still land there, over any write that
   * reaches it (its entry's `late`, until the repair finds it settled: lateSettled).
   */
  lateFor(u: Upstream, key: string): boolean {
    const p = this.byName.get(idOf(u));
    // An overflowed one remembers its late keys in `known` (it may rank the freshest by `missed`).
    return (p?.keys.get(key)?.late ?? 0) !== 0 || (p?.overflow?.known.get(key)?.late ?? 0) !== 0;
  }

  /** Sets `key`'s entry in `p` (undefined: removes it), and with it the count `untrusting` reads. Returns whether there was one. */
  private setKey(p: PerUpstream, key: string, e: DirtyEntry | undefined): boolean {
    const old = p.keys.get(key);
    this.lateEntries += (e !== undefined && e.late !== 0 ? 1 : 0) - (old !== undefined && old.late !== 0 ? 1 : 0);
    if (e === undefined) return p.keys.delete(key);
    p.keys.set(key, e);
    return old !== undefined;
  }

  /** Removes every entry of `p`, keeping the count `untrusting` reads. */
  private dropKeys(p: PerUpstream): void {
    for (const e of p.keys.values()) if (e.late !== 0) this.lateEntries--;
    p.keys.clear();
  }

  /** Sets (or clears) an upstream's overflow, and with it the count `untrusting` reads. */
  private setOverflow(p: PerUpstream, o: Overflow | undefined): void {
    this.overflows += (o === undefined ? 0 : 1) - (p.overflow === undefined ? 0 : 1);
    p.overflow = o;
  }

  /** What requests of unknown keys may still land on `u` (see PerUpstream.unknownLate); undefined when none may. */
  unknownLate(u: Upstream): UnknownLate | undefined {
    return this.byName.get(idOf(u))?.unknownLate;
  }

  /** The requests of unknown keys can no longer land on `u` (repair.ts: settled): writes reaching it count again. */
  unknownSettled(u: Upstream): void {
    const p = this.byName.get(idOf(u));
    if (p?.unknownLate === undefined) return;
    const timeout = this.timeoutOnFile(idOf(u), p);
    p.unknownLate = undefined;
    this.unknownLates--;
    // What the process before sent has settled: a process after this one waits for this one's.
    if (this.timeoutOnFile(idOf(u), p) !== timeout) this.append(`R ${hex(idOf(u))} ${this.timeoutOnFile(idOf(u), p)}`);
  }

  /**
   * The timeout to put on file for store `id` (R lines): as configured, or the one of the process
   * before, when longer and what it sent may still land (it was killed): a process that starts
   * after this one is killed too must wait for that as well.
   */
  private timeoutOnFile(id: string, p: PerUpstream | undefined): number {
    const own = this.timeouts.get(id) ?? 0;
    return p?.unknownLate?.sets === true ? Math.max(own, this.loadedTimeouts.get(id) ?? 0) : own;
  }

  /** Told when the last write of a key in flight has settled (KeyOrder). */
  onWritesSettled: ((key: string) => void) | undefined;

  /** Writes of `key` started and not yet settled on every upstream. */
  writesInFlight(key: string): number {
    return this.writes.get(key)?.inFlight ?? 0;
  }

  /**
   * The sequence of the last write of `key` started (0: none remembered). Exact while a write of
   * the key is in flight: a key with one is never forgotten (writeStarted, pruneWrites).
   */
  lastWrite(key: string): number {
    return this.writes.get(key)?.seq ?? 0;
  }

  /**
   * A read begins: returns the write sequence to compare against (writtenSince), to hand back to
   * readFinished. A read repair passes the sequence of the read it repairs for, to keep the
   * writes since then remembered until its `add` is done.
   */
  readStarted(seq = this.writeSeq): number {
    const n = this.readSeqs.get(seq);
    if (n === undefined && this.readSeqs.size > 0 && seq < this.newestReadSeq) this.readSeqsUnordered = true;
    this.readSeqs.set(seq, (n ?? 0) + 1);
    if (n === undefined) this.newestReadSeq = Math.max(this.newestReadSeq, seq);
    return seq;
  }

  readFinished(seq: number): void {
    const n = this.readSeqs.get(seq);
    if (n === undefined) return;
    if (n > 1) {
      this.readSeqs.set(seq, n - 1);
      return;
    }
    this.readSeqs.delete(seq);
    if (this.readSeqs.size === 0) this.readSeqsUnordered = false;
    this.pruneWrites();
  }

  private newestReadSeq = 0;

  /** Writes remembered for reads in flight (for tests and stats). */
  get writesRemembered(): number {
    return this.writes.size;
  }

  /** The write sequence the oldest read in flight began at; Infinity when none is in flight. */
  private oldestReadSeq(): number {
    if (this.readSeqs.size === 0) return Infinity;
    if (this.readSeqsUnordered) return Math.min(...this.readSeqs.keys());
    for (const seq of this.readSeqs.keys()) return seq;
    return Infinity;
  }

  /**
   * Forgets up to PRUNE_STEPS of the oldest writes that no read in flight can ask about (finished,
   * and started no later than the oldest read began). Called on every write and read finished,
   * so the map shrinks as fast as it grows, at a bounded cost per call.
   */
  private pruneWrites(): void {
    const oldest = this.oldestReadSeq();
    let steps = 0;
    for (const [k, w] of this.writes) {
      if (w.seq > oldest || ++steps > PRUNE_STEPS) return;
      if (w.inFlight <= 0) this.writes.delete(k);
    }
  }

  /**
   * True when a write of `key` is in flight on some upstream, or started after the read that got
   * `seq` began: a value the read found elsewhere may already be gone (a delete racing the read
   * must not be undone by read repair). `own`: writes of the key in flight that are the reader's
   * own (a gat's, announced before `seq`), not counted.
   */
  writtenSince(key: string, seq: number, own = 0): boolean {
    if (seq < this.forgottenUpTo) return true; // a write of the key may have been forgotten
    const w = this.writes.get(key);
    return w !== undefined && (w.inFlight > own || w.seq > seq);
  }

  /**
   * True when a write of `key` started after sequence `seq` (or may have been forgotten): as
   * writtenSince, but the writes already in flight at `seq` do not count.
   */
  startedSince(key: string, seq: number): boolean {
    if (seq < this.forgottenUpTo) return true;
    const w = this.writes.get(key);
    return w !== undefined && w.seq > seq;
  }

  /**
   * When `key` is dirty on every one of `all`: the upstream to take as the truth — the one that
   * started missing writes last, so the freshest copy — as a one-element list when it is usable
   * now, empty when it is not (nothing older may stand in for it). Undefined when some upstream
   * is clean for the key: then only a clean one may be the truth, even a down one.
   */
  freshest(all: readonly Upstream[], usable: readonly Upstream[], key: string, reading = false): Upstream[] | undefined {
    if (!all.every((u) => this.isDirty(u, key))) return undefined;
    // A copy lacking the key unread (DirtyEntry.asks) may hold its newest state: no copy is the
    // truth until it is read (a conditional command is decided nowhere, the repair waits). A read
    // (`reading`) asks that copy first: its hit is the key's state, its miss that it does lack it
    // (undone), and the next is read (review-h32 finding 1: the held lock read as absent from the
    // store behind, back empty, and granted again).
    // One that cannot be read now: the read goes by the ranking, that copy the least fresh (a
    // session the store behind holds stays readable while the cache is down: review-h33 finding
    // 3); a conditional command still waits for it.
    const unread = all.find((u) => this.unread(u, key));
    if (unread !== undefined && !reading) return [];
    if (unread !== undefined && usable.includes(unread)) return [unread];
    const top = [...all].sort((a, b) => this.fresher(b, a, key))[0];
    // Past it only to a copy that missed nothing but touches (passable): one that missed a write
    // may hold an older state than the unread copy, which may hold that write (review-h36 finding
    // 1: the value before an acknowledged set, read from the store behind that missed it).
    if (unread !== undefined && (top === undefined || !this.passable(top, key))) return [];
    return top !== undefined && usable.includes(top) && !this.notYet(top, key) ? [top] : [];
  }

  /**
   * Whether a read may pass over a copy of `key` lacking it unread (DirtyEntry.asks) to `u`: `u`
   * missed nothing of the key but touches (DirtyEntry.touched), so it holds every write the unread
   * copy may hold. In memory only: an entry loaded from journal.log is a write, and passes for none.
   */
  passable(u: Upstream, key: string): boolean {
    const e = this.entry(u, key);
    return e !== undefined && e.touched !== undefined && e.asks !== true;
  }

  /**
   * Whether some other upstream of `all` holds a newer state of `key` than `u` may: one clean for
   * it, or, with every copy dirty, one that ranks above `u` as freshest() ranks them (a tie is
   * not above). A missed delete is replayed only where none does (repair.ts): its entry may be
   * older than a write that reached `u` without a word on file, and such a copy has that write.
   */
  outranked(all: readonly Upstream[], u: Upstream, key: string): boolean {
    return all.some((o) => o !== u && (!this.isDirty(o, key) || this.fresher(o, u, key) > 0));
  }

  /**
   * Whether the write `u` last missed of `key` is a delete this process sent, and no later write
   * of the key can be anywhere: none started since (the writes in flight), and no other store of
   * `all` missed a later one (a finished write reached `u` or missed it: either changed `u`'s
   * entry, or had started when this delete's failure was recorded, which mark then took as a
   * write; one never sent to `u` is a conditional command that failed on its authorities, which
   * were marked with it). Then no store holds a newer state than "absent", and the delete may be
   * replayed on `u` whatever the others hold or have lost. Else, with the only clean copy come back
   * empty (it cannot tell a delete from a lost write), nobody decided the key for a whole
   * lock-fence (a destroyed session's lock: test/integration/review-php-memcache-faults.test.ts).
   * A delete loaded from journal.log (seq 0, the process before) is not: its late requests and
   * writes are not all known here.
   */
  missedDeleteIsLatest(all: readonly Upstream[], u: Upstream, key: string): boolean {
    const e = this.entry(u, key);
    if (e === undefined || e.op !== 'delete' || e.seq <= 0 || e.late !== 0 || this.startedSince(key, e.seq)) return false;
    return !all.some((o) => o !== u && (this.entry(o, key)?.seq ?? 0) > e.seq);
  }

  /** Above 0 when `a`'s copy of `key` ranks as fresher than `b`'s (both dirty), below 0 when older. */
  private fresher(a: Upstream, b: Upstream, key: string): number {
    const since = (u: Upstream): number => this.entry(u, key)?.since ?? 0; // overflowed: oldest but by `missed`
    // Dirty only until a write-wait copy on its way lands (notYet): it holds that write then, so it
    // ranks just above a copy that missed it (as written() ranks a copy holding a write), not as
    // the oldest: ranked 0, a copy the ring had moved away from (a pool's `maybe`, 0 too) came
    // first in the chain and was read on the key's new server, which lacked it (review-h3
    // finding 4). Ranked so, it is the top only to say that nobody is the truth until it lands.
    const first = (u: Upstream): number => this.entry(u, key)?.firstSeq ?? (this.missedSince(u, key) || this.pendingRank(u, key));
    // By write sequence when both have one (exact, whatever order the answers came in), else by
    // time (entries loaded from disk have no sequence).
    const bySeq = first(a) > 0 && first(b) > 0 ? first(a) - first(b) : 0;
    return bySeq || since(a) - since(b) || first(a) - first(b);
  }

  /** Just above the write-wait copy of `key` on its way to `u` (not overflowed, no entry); 0 when none. */
  private pendingRank(u: Upstream, key: string): number {
    const p = this.byName.get(idOf(u));
    const seq = p === undefined || p.overflow !== undefined ? undefined : p.pending?.get(key);
    return seq === undefined ? 0 : seq + 0.5;
  }

  /** An overflowed `u`'s first miss of `key` since it held it (Overflow.known `missed`); 0 when unknown, or while the repair flushes it. */
  private missedSince(u: Upstream, key: string): number {
    const o = this.byName.get(idOf(u))?.overflow;
    return o === undefined || o.flushing === true ? 0 : (o.known.get(key)?.missed ?? 0);
  }

  /**
   * `u` is dirty for `key` only until a write on its way lands (write-wait copies), or it is an
   * overflowed cache the repair is flushing: not a copy to take as the truth now (the old state,
   * or nothing), though it ranks first. Nobody is, until it settles.
   */
  private notYet(u: Upstream, key: string): boolean {
    const p = this.byName.get(idOf(u));
    if (p === undefined) return false;
    if (p.overflow !== undefined) return p.overflow.flushing === true;
    return !p.keys.has(key) && p.pending?.has(key) === true;
  }

  /**
   * Records that `u` missed a write (or delete) of `key`; `late`: the request timed out, and may
   * still be applied (see DirtyEntry.late).
   */
  mark(u: Upstream, key: string, op: DirtyOp, seq: number = this.writeSeq, late = false, touched?: number): void {
    const p = this.of(u);
    // A late request may be older than a write that has reached the upstream since (a delete
    // answered after the set behind it): what to copy there is the key's current state, never a
    // replay of this op.
    if (late) op = 'write';
    // So where a later write of the key had started when this delete's failure came in: it may
    // have reached the upstream already (plain writes of a key overlap, key-order.ts; a reload
    // retires the connection the delete waited on), with nothing on file to say so (written()
    // found no entry to keep). Replayed, the delete would undo it (review-delete-replay-2).
    if (op === 'delete' && (this.writes.get(key)?.seq ?? 0) > seq) op = 'write';
    if (p.overflow) {
      // Missed writes while waiting to be trusted again restart the wait.
      p.overflow.trustAfter = undefined;
      // A touch changes no value: lacking the key unread since before the overflow (Overflow.known
      // asks), it still holds whatever it held, which the repair's read answers, as mark keeps
      // DirtyEntry.asks below (review-h38 finding 1: learn dropped it, and the repair flushed the
      // only copy of the lock).
      if (touched !== undefined && p.overflow.known.get(key)?.asks === true) return;
      this.learn(u, p.overflow, key, seq, false, late);
      return;
    }
    if (!p.keys.has(key) && p.keys.size >= this.options.maxKeys) {
      // Overflowed now: this miss is learnt as the overflow learns one, a late request of the key
      // remembered as distrust remembers the late entries (fuzz seed 31012 with
      // MCMUX_FUZZ_RESTART=1: the set that overflowed it timed out, was forgotten, and landed
      // after the repair had flushed the cache and trusted it).
      this.distrust(u);
      this.mark(u, key, op, seq, late);
      return;
    }
    // The first miss is what dates the copy; later misses of the same key do not refresh it.
    // Touch deadlines stand for misses of those touches alone: any other miss ends them, another
    // touch's adds its own (two requests of a session, each touch failing: review-h28 finding 3).
    const prev = p.keys.get(key);
    const dates = touched === undefined ? undefined : prev === undefined ? [touched] : prev.touched !== undefined ? withTouch(prev.touched, touched) : undefined;
    const e = untouched(prev);
    const at = late ? monotonicMs() : 0;
    if (!e) this.put(u, p, key, { op, since: Date.now(), seq, firstSeq: seq, late: at, ...own(late) });
    // One that held the newest write (HOLDS) is dated by this miss, its first.
    else if (e.firstSeq === HOLDS && late && seq <= e.seq) {
      // An older request of the key timed out there, after the newest write reached it: it may
      // land over that write. As wipedLater ranks such a copy: a set held is dated by it (what the
      // request may leave reads as the set's own item); a delete held keeps its rank (an item
      // found says it landed: undone), and stays a delete for the repair, the key's state.
      this.put(u, p, key, e.op === 'delete' ? { ...e, late: at, own: true } : { op: 'write', since: e.since, seq: e.seq, firstSeq: e.seq + 0.5, late: at, own: true });
    } else if (op !== e.op || seq > e.seq || late) {
      // The op is the newest write's (a late one's is always 'write', above): plain writes of a key
      // overlap (key-order.ts), and a delete's failure may be recorded after that of the set sent
      // behind it; the repair must not replay the older delete over the set (review-delete-replay).
      const newest = late || seq >= e.seq ? op : e.op;
      this.put(u, p, key, { op: newest, since: e.since, seq: Math.max(e.seq, seq), firstSeq: e.firstSeq === HOLDS && seq > e.seq ? seq : e.firstSeq, late: late ? at : e.late, ...own(late || e.own === true) });
    } else this.put(u, p, key, e); // unchanged, but on file again (as before)
    if (dates !== undefined) {
      const now = p.keys.get(key);
      if (now !== undefined) this.setKey(p, key, { ...now, touched: dates });
    }
    // A touch changes no value: a copy lacking the key unread (asks) still holds whatever it held,
    // the question the repair's read answers (review-h32 finding 2: a touch that timed out there
    // dropped it, and the store behind, back empty, became the truth copied over the only copy).
    if (touched !== undefined && prev?.asks === true) {
      const now = p.keys.get(key);
      if (now !== undefined && now.asks !== true) this.put(u, p, key, { ...now, asks: true });
    }
  }

  /**
   * `u`, journaled with a touch's deadline (mark's `touched`), missed the touch of an item another
   * copy holds (answered TOUCHED, or found by the gat): that copy is the key's state, the item with
   * the touch's deadline, and once that has passed its absence there is the item's expiry. A miss
   * like any other then (in memory: the deadline is not on file).
   */
  untouch(u: Upstream, key: string): void {
    const p = this.byName.get(idOf(u));
    const e = p?.keys.get(key);
    if (p !== undefined && e?.touched !== undefined) this.setKey(p, key, untouched(e));
  }

  /**
   * A conditional command (write `seq`) failed on every authority it tried, one of which may have
   * applied it (they were marked, dated by it or later), and was never sent to `u`: `u` lacks
   * whatever result it had. A copy that ranked as holding the newest write (HOLDS, see wipedLater)
   * ranks below those authorities from then on: dated just before `seq`, as a copy holding the
   * write before it (it holds every write before this one, and maybe not even those: a flush
   * that timed out may have emptied it since, while an authority holds the key's state as the
   * client was told, the command's result or not). A copy dirty since an older write already
   * ranks below them, and is left as it is.
   */
  notSent(u: Upstream, key: string, seq: number): void {
    if (this.entry(u, key)?.firstSeq === HOLDS) this.mark(u, key, 'write', seq - 0.5);
  }

  /**
   * `u` answered write `seq` of `key` (a touch) as not holding it, but it is a cache the repair's
   * flush emptied, not written the key since, while a copy that may hold it failed: its "none" is
   * no answer (replicate-write.ts replicateKeyed). Dirty as the least fresh copy of all (it lost
   * every write before the flush): not read for the key, and never the truth while another copy
   * is dirty too, until the repair copies the key's state there. Clean, it would be the only clean
   * copy once the others had missed the touch: read as absent, and copied as absent over them at
   * the fence's end (eject fuzz seed 11553 of 10501-12000 with MCMUX_FUZZ_RESTART=1).
   */
  lacks(u: Upstream, key: string, seq: number, asks = false): void {
    const p = this.of(u);
    if (p.overflow !== undefined || p.keys.has(key) || p.keys.size >= this.options.maxKeys) {
      this.mark(u, key, 'write', seq);
      return;
    }
    this.put(u, p, key, { op: 'write', since: 0, seq, firstSeq: LEAST_FRESH, late: 0, ...(asks ? { asks: true as const } : {}) });
  }

  /**
   * The repair read `u`'s copy of `key`, journaled as lacking it unread (DirtyEntry.asks): holding
   * an item (a write since the flush reached it), it is clean; else it does lack it.
   */
  asked(u: Upstream, key: string, holds: boolean): void {
    const p = this.byName.get(idOf(u));
    const o = p?.overflow;
    const k = o?.known.get(key);
    if (o !== undefined && k?.asks === true) {
      // Overflowed since (Overflow.known asks): holding an item, it holds the key as from a write
      // since the overflow (read there, the others repaired from it, flushed only after); else it
      // is dirty for it as for any key it was not told of.
      o.unread?.delete(key);
      if (holds) o.known.set(key, { seq: k.seq, holds: true });
      else o.known.delete(key);
      this.append(`${holds ? 'K' : 'U'} ${hex(idOf(u))} ${hex(key)}`);
      return;
    }
    const e = p?.keys.get(key);
    if (p === undefined || e?.asks !== true) return;
    if (holds) this.clear(u, key);
    else {
      const { asks: _, ...rest } = e;
      this.setKey(p, key, rest);
    }
  }

  /** Sets `u`'s entry for `key`, and appends it to journal.log. */
  private put(u: Upstream, p: PerUpstream, key: string, e: DirtyEntry): void {
    this.setKey(p, key, e);
    this.append(mLine(idOf(u), key, e));
  }

  /**
   * `u` now holds the current state of `key` (a client's set or delete reached it, or a repair
   * did). `seq`: the sequence of the client write that reached it (see DirtyEntry.seq).
   *
   * A repair of the key running on `u` is told that a client wrote it (so that it neither clears
   * the entry nor counts a repair), and the entry goes now: the repair's own request was sent
   * before this write started (repair.ts checks for one right before sending), every driver
   * applies a key's requests in the order sent, so this write landed after it. Keeping the entry
   * would have the next repair replay its old op over this write (a delete: the write is lost).
   */
  written(u: Upstream, key: string, seq?: number, op: DirtyOp = 'write'): void {
    // Before the store's entries are looked up: a store nothing was ever journaled for has none
    // yet (a fresh process, write-wait all), and what landed there unordered must still be.
    if (this.landedRetired(u, key)) {
      // Sent on a connection a reload retired, while a later write of the key went to the same
      // store on another one (its new upstream): nothing orders the two there, and this one may
      // have landed over the later write. As a late request: copied again once settled.
      this.mark(u, key, op, seq, true);
      return;
    }
    const p = this.byName.get(idOf(u));
    if (p === undefined) return;
    if (p.unknownLate !== undefined) {
      // A flush that timed out, or a request of the process before, may yet land over this write:
      // as a late request of the key.
      this.wipedLater(u, p, key, seq, p.unknownLate.at, op);
      return;
    }
    if (p.overflow !== undefined) {
      this.learn(u, p.overflow, key, seq ?? Number.MAX_SAFE_INTEGER, true);
      return;
    }
    const e = p.keys.get(key);
    if (!e) return;
    if (seq !== undefined && seq < e.seq) {
      // An older write: the newer miss stands. But the upstream holds this write, which a copy
      // dirty since before it missed: ranked above such a copy, for freshest() when every copy is
      // dirty (its first miss may date from long before, and this may be the only copy of it).
      if (seq + 0.5 > e.firstSeq) this.put(u, p, key, { op: e.op, since: Date.now(), seq: e.seq, firstSeq: seq + 0.5, late: e.late, ...own(e.own === true) });
      return;
    }
    const rk = `${idOf(u)} ${key}`;
    if (this.repairing.has(rk)) this.repairing.set(rk, true);
    if (e.late !== 0) {
      // A timed-out request may yet land over this write: the repair copies the key again later.
      // Meanwhile it holds this write: dated now, and ranked above a copy that missed this very
      // write (firstSeq just above its sequence), for freshest() when every copy is dirty.
      const held = seq ?? this.writeSeq;
      this.put(u, p, key, { op: 'write', since: Date.now(), seq: e.seq, firstSeq: held + 0.5, late: e.late, ...own(e.own === true) });
      return;
    }
    this.clear(u, key);
  }

  /**
   * The write `seq` of `key` (a set, or a delete: `op`) reached `u`, but a flush of `u` that timed
   * out at `at` may still be applied after it: `u` holds the write for now (ranked so, for
   * freshest(), as written() ranks a copy with a late entry; the entry's op is the write's, see
   * wiped), and the key stays dirty there, copied again once settled.
   */
  private wipedLater(u: Upstream, p: PerUpstream, key: string, seq: number | undefined, at: number, op: DirtyOp = 'write'): void {
    if (p.overflow !== undefined) {
      // It may lose this write to the flush, as a write it missed: the wait for expiry starts
      // again (learn cannot remember the key once the overflow is full).
      p.overflow.trustAfter = undefined;
      this.learn(u, p.overflow, key, seq ?? this.writeSeq, false, true);
      return;
    }
    const rk = `${idOf(u)} ${key}`;
    if (this.repairing.has(rk)) this.repairing.set(rk, true);
    const e = p.keys.get(key);
    const held = seq ?? this.writeSeq;
    if (e === undefined && p.keys.size >= this.options.maxKeys) {
      this.distrust(u);
      this.wipedLater(u, p, key, seq, at, op); // overflowed now: remembered as late
      return;
    }
    // It holds the newest write of the key (it missed none since), unless this one is older than
    // a write it missed: then ranked as written() ranks such a copy. Not `held + 0.5`: the
    // copies of a conditional command's result (to the others, which may miss them) have
    // sequences above that of the command its authority is written with. Nor while a request of
    // this key may land (own), for a set: if that request was an older set, the item it leaves
    // reads as this write's would (undone cannot tell), so the copy ranks as written() ranks one
    // with a late request (fuzz seed 20779 with initial: a late `set` landed over a newer one
    // under a flush that timed out, and the copy, ranked first, served the old value). A delete
    // keeps HOLDS: an item found there says that such a set landed (undone).
    const ownSet = e?.own === true && op === 'write';
    const firstSeq = e !== undefined && held < e.seq ? Math.max(e.firstSeq, held + 0.5) : ownSet ? held + 0.5 : HOLDS;
    this.put(u, p, key, { op: firstSeq === HOLDS ? op : 'write', since: Date.now(), seq: Math.max(e?.seq ?? 0, held), firstSeq, late: Math.max(e?.late ?? 0, at), ...own(e?.own === true) });
  }

  /**
   * `u` ranked as the freshest copy of `key` because it holds the newest write of the key where a
   * late request may still land (wipedLater), and what it has now says that request landed: a set
   * it lacks (a flush that timed out, or a request of a killed process, wiped it, or the item
   * expired), or a delete it has an item for (a set that timed out before the delete put its
   * older value back: seed 90224, a deleted session served). `found`: whether `u` has an item for
   * the key now. Either way `u` lacks that write, which no client was told of if a set (a write
   * whose only copy may be wiped is not acknowledged), and ranks as a copy that missed it, as
   * notSent ranks one: below a copy that holds the state before it. True if so; the caller reads
   * the next copy.
   */
  undone(u: Upstream, key: string, found: boolean): boolean {
    // Lacking the key unread, read first (freshest, reading): a miss says it does lack it.
    if (this.unread(u, key)) {
      if (!found) this.asked(u, key, false);
      return !found;
    }
    if (!this.mayBeUndone(u, key)) return false;
    const p = this.of(u);
    const e = p.keys.get(key) as DirtyEntry;
    if ((e.op === 'write') === found) return false;
    // An entry loaded from journal.log has no sequence (seq 0): below every copy that has one.
    this.put(u, p, key, { op: 'write', since: e.since, seq: e.seq, firstSeq: e.seq > 0 ? e.seq - 0.5 : 0.5, late: e.late, ...own(e.own === true) });
    return true;
  }

  /**
   * Whether `u` ranks as the freshest copy of `key` for a write a late request may undo there (see
   * undone): a set a late flush may wipe, or a delete a late set may put a value back over.
   */
  mayBeUndone(u: Upstream, key: string): boolean {
    const e = this.entry(u, key);
    return e !== undefined && e.firstSeq === HOLDS && (e.op === 'write' || e.late !== 0);
  }

  /**
   * Stops trusting `u` as a whole, as on overflow: its journal overflowed, or it was added by a
   * reload (it may be a store that left the chain earlier and missed every write since). But for
   * the keys `unmoved` says did not move, when a pool's ring moved (Overflow.unmoved).
   */
  distrust(u: Upstream, chain?: readonly Upstream[], stayed?: (key: string) => boolean, unmoved?: (key: string) => boolean): void {
    const p = this.of(u);
    const late = lateKeys(p);
    // Before its entries are dropped: those lacking the key unread (DirtyEntry.asks), and, distrusted
    // again, those it still lacked unread from the overflow before.
    const unread = [...(p.overflow === undefined ? [] : this.unreadKeys(u))];
    for (const [key, e] of p.keys) if (e.asks === true) unread.push(key);
    // Before what `u` was told is dropped: the keys only it may hold (see heldAlone).
    const alone = chain === undefined ? [] : this.heldAlone(u, chain);
    // Trusted for the keys that did not move (Overflow.unmoved: a pool whose ring moved), it must
    // remember the writes of them it missed: those it was dirty for (entries, or, distrusted
    // before, misses it knew). Distrusted before, it keeps the first move's test (since then), or
    // none if it had none (distrusted for another cause). Any other cause trusts no key.
    const prior = p.overflow;
    const missed: Array<[string, number, number | undefined]> = [];
    let trusts = unmoved === undefined ? undefined : prior === undefined ? unmoved : prior.lastLate === undefined ? prior.unmoved : undefined;
    if (trusts !== undefined) {
      for (const [key, e] of p.keys) if (e.late === 0) missed.push([key, e.seq, undefined]);
      for (const [key, k] of prior?.known ?? []) if (!k.holds && !k.maybe && k.late === undefined) missed.push([key, k.seq, k.missed]);
      if (late.length + missed.length > this.options.maxKeys) trusts = undefined;
    }
    this.dropKeys(p);
    // One loaded from journal.log stays unsettled (a flush_all that emptied it may be followed by
    // a request the earlier process sent): it learns nothing until the repair finds it settled.
    const afterSeq = prior?.afterSeq === Infinity ? Infinity : this.writeSeq;
    const o: Overflow = { since: Date.now(), afterSeq, trustAfter: undefined, known: new Map(), full: false };
    // Requests of keys it could not remember may still land (loaded from journal.log: the earlier
    // process's timed-out ones): distrusted again, it is not flushed before they have settled
    // (fuzz seed 2828 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1: a ring
    // move just after a restart dropped it, the repair flushed the pool at once, and a set the
    // process before had sent landed after the flush, over a delete: a destroyed session back).
    if (prior?.lastLate !== undefined) o.lastLate = prior.lastLate;
    // It took writes the overflow before could not remember, maybe their only copies (full): not
    // flushed now either (review-h3 finding 3: the next ring move dropped it, and the repair
    // flushed an acknowledged session only the pool held).
    if (prior?.full === true) o.full = true;
    if (trusts !== undefined) {
      o.unmoved = trusts;
      // A key still on the same server keeps its rank there (`missed`: it holds what it held
      // before that miss; review-h3 finding 2b); one that moved is ranked oldest, as any it lacks.
      const rank = (key: string, m: number | undefined): { missed?: number } => (m !== undefined && trusts?.(key) === true ? { missed: m } : {});
      for (const [key, seq, m] of missed) o.known.set(key, { seq, holds: false, ...rank(key, m) });
    }
    this.setOverflow(p, o);
    // What may still land here is remembered (up to maxKeys): no later write makes it held.
    for (const [key, at] of late) {
      const m = prior?.known.get(key)?.missed;
      if (o.known.size < this.options.maxKeys) o.known.set(key, { seq: this.writeSeq, holds: false, late: at, ...(m !== undefined && o.unmoved?.(key) === true ? { missed: m } : {}) });
      else {
        o.lastLate = Math.max(o.lastLate ?? 0, at);
        o.unmoved = undefined;
      }
    }
    this.append(`O ${hex(idOf(u))} ${o.since}`);
    if (o.full) this.append(`F ${hex(idOf(u))}`);
    // Lacking the key unread: maybe its only copy, read there first (Overflow.known asks). Past
    // maxKeys it is not flushed at all (full): the copy stays, though no longer read first.
    for (const key of unread) if (!this.keepHeld(u, o, key, false, true)) return;
    // Maybe their only copy: not flushed while so (holdsAlone); or, when which keys those are is
    // not known, not at all. One whose place in `u` is known to be the same as before (`stayed`: a
    // pool's ring moved others) is held there as before: read and repaired from (once its fence
    // ends); one that moved is not read there (its server may lack it).
    if (alone === undefined) {
      o.full = true;
      this.append(`F ${hex(idOf(u))}`);
      return;
    }
    for (const key of alone) if (!this.keepHeld(u, o, key, stayed?.(key) === true)) return;
  }

  /**
   * distrust: `u` may hold the only copy of `key` (`holds`: read there; else `maybe`, and `asks`
   * when it lacked it unread). False once `known` is full: `u` is then `full`, never flushed.
   */
  private keepHeld(u: Upstream, o: Overflow, key: string, holds: boolean, asks = false): boolean {
    const k = o.known.get(key);
    if (k !== undefined) {
      // Taken already (a late key, or one trusted as unmoved that it missed): lacking it unread, it
      // is read there first all the same, and not flushed meanwhile (review-h38 findings 1b, 1c:
      // skipped here, `asks` was lost, and the repair flushed the only copy of the lock).
      if (asks && !k.holds && k.asks !== true) {
        o.known.set(key, { ...k, maybe: true, asks: true });
        (o.unread ??= new Set()).add(key);
        this.append(`H ${hex(idOf(u))} ${hex(key)} a`);
      }
      return true;
    }
    if (o.known.size >= this.options.maxKeys) {
      o.full = true;
      this.append(`F ${hex(idOf(u))}`);
      return false;
    }
    o.known.set(key, { seq: this.writeSeq, holds, maybe: !holds, ...(asks ? { asks: true as const } : {}) });
    if (asks) (o.unread ??= new Set()).add(key);
    this.append(`${holds ? 'K' : 'H'} ${hex(idOf(u))} ${hex(key)}${asks ? ' a' : ''}`);
    return true;
  }

  /**
   * The keys `u` may hold the only current copy of: every other store of `chain` is dirty for them
   * (a write it missed, or one on its way there) and `u` is not. Undefined when that cannot be
   * told: `u` is alone in the chain, or another store is overflowed (dirty for keys on no list).
   * distrust keeps them, for a pool whose ring moved: dropped, the repair would flush their only
   * copy (fuzz seed 79 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1).
   */
  private heldAlone(u: Upstream, chain: readonly Upstream[]): string[] | undefined {
    const self = this.byName.get(idOf(u));
    const others: PerUpstream[] = [];
    for (const x of chain) {
      if (idOf(x) === idOf(u)) continue;
      const p = this.byName.get(idOf(x));
      if (p === undefined) return []; // clean for every key
      if (p.overflow !== undefined) return undefined;
      others.push(p);
    }
    if (others.length === 0) return undefined;
    const dirtyThere = (p: PerUpstream, key: string): boolean => p.keys.has(key) || p.pending?.has(key) === true;
    const cleanHere = (key: string): boolean => self === undefined || (!self.keys.has(key) && (self.overflow === undefined || self.overflow.known.get(key)?.holds === true || self.overflow.known.get(key)?.maybe === true));
    const fewest = others.reduce((a, b) => (a.keys.size + (a.pending?.size ?? 0) <= b.keys.size + (b.pending?.size ?? 0) ? a : b));
    const out: string[] = [];
    for (const key of new Set([...fewest.keys.keys(), ...(fewest.pending?.keys() ?? [])])) {
      if (others.every((p) => dirtyThere(p, key)) && cleanHere(key)) out.push(key);
    }
    return out;
  }

  /**
   * While overflowed: the write `seq` of `key` reached `u` (`holds`) or missed it. It holds the
   * key only after the newest write of it started (an older one landing late proves nothing) and
   * started after the overflow; any miss, even of an older write (a timed-out one may still land
   * later), undoes that. Beyond maxKeys keys nothing more is learnt and the upstream is `full`.
   * Persisted: `K` (holds), `H` (maybe, see Overflow.known), `U` (neither any more), `F` (full) lines.
   */
  private learn(u: Upstream, o: Overflow, key: string, seq: number, holds: boolean, late = false): void {
    const k = o.known.get(key);
    if (!holds) {
      // Trusted as unmoved (Overflow.unmoved), it held the key's current state until this miss, as
      // a key known to hold it did: its copy ranks by this miss (`missed`, see fresher). Without
      // it, it ranked oldest, and a copy that had missed an earlier write it holds was taken as
      // the freshest (review-h3 finding 2: an acknowledged session write lost).
      const held = k?.holds === true || (k === undefined && o.unmoved?.(key) === true);
      if (late) {
        // Remembered even when not known to hold it, so that no later write makes it hold it.
        // Beyond maxKeys nothing new is learnt (full) and it stays dirty anyway, but not once the
        // upstream is trusted again: that waits until the request has settled (lastLate). A key
        // that timed out before is dated by this timeout, the last (it kept the first: review).
        if (k !== undefined || o.known.size < this.options.maxKeys) o.known.set(key, { seq: Math.max(seq, k?.seq ?? 0), holds: false, late: monotonicMs(), missed: held ? seq : k?.missed });
        else {
          o.lastLate = monotonicMs();
          o.unmoved = undefined; // the key may be one it trusts: it trusts none
        }
        if (k?.holds || k?.maybe) this.append(`U ${hex(idOf(u))} ${hex(key)}`);
        return;
      }
      if (k === undefined && o.unmoved?.(key) === true) {
        // Trusted as unmoved: dirty from now on, or, when that cannot be remembered, trust none.
        if (o.known.size < this.options.maxKeys) o.known.set(key, { seq, holds: false, missed: seq });
        else o.unmoved = undefined;
        return;
      }
      if (k === undefined || (!k.holds && !k.maybe)) return; // not known to hold it: dirty already
      o.known.set(key, { seq: Math.max(seq, k.seq), holds: false, missed: k.holds ? seq : k.missed });
      this.append(`U ${hex(idOf(u))} ${hex(key)}`);
      return;
    }
    if (k?.late) return; // a timed-out request may land over this write
    if (o.flushing) return; // it may land before the flush
    // Loaded from journal.log and not settled yet: a request of the earlier process may land over it.
    const unsettled = o.afterSeq === Infinity;
    // A write started before the overflow may be older than one it missed, whose entry went with
    // it; not one of a key trusted as unmoved, whose misses are all in `known`: read for the key,
    // the pool was acknowledged as holding this write, and unnamed here, its only copy was flushed
    // (review-h3 finding 3b).
    const before = !unsettled && seq <= o.afterSeq && !(k === undefined && o.unmoved?.(key) === true);
    if (before || (k !== undefined && seq < k.seq)) return;
    if (seq < (this.writes.get(key)?.seq ?? seq)) return; // a newer write of the key is under way
    if (k === undefined && o.known.size >= this.options.maxKeys) {
      const first = !o.full;
      o.full = true; // before the append: a rewrite it makes writes the state as it is now
      if (first) this.append(`F ${hex(idOf(u))}`);
      return;
    }
    // A request of a key it could not remember (lastLate) may still land: that key may be this
    // one (a flush_all's trust overflowed it afresh, remembering none: fuzz seed 171867 with
    // MCMUX_FUZZ_INITIAL=1 MCMUX_FUZZ_FLUSH=1, a copy that timed out landed over the set after
    // it, and was read). A key it knew before is not that one.
    if (unsettled || (k === undefined && o.lastLate !== undefined)) {
      // Not read for the key, but maybe its only copy of this write: not flushed for now (holdsAlone).
      if (k?.holds === true || k?.maybe === true) return;
      o.known.set(key, { seq, holds: false, maybe: true });
      this.append(`H ${hex(idOf(u))} ${hex(key)}`);
      return;
    }
    o.known.set(key, { seq, holds: true });
    if (k?.holds !== true) this.append(`K ${hex(idOf(u))} ${hex(key)}`);
  }

  /**
   * Whether flushing the overflowed cache `u` could lose an acknowledged write: it holds a key
   * every other upstream is dirty for (its only current copy), or it took more keys than it could
   * remember. Checks the key found last time first, so a wait for one key costs one lookup a tick.
   */
  /**
   * The repair sends (`true`) the flush of overflowed `u`, or it failed (`false`): from the
   * moment it may be applied, `u` holds none of the keys it was known to hold. A failed one may
   * still have been applied: they are not held any more.
   */
  flushingOverflowed(u: Upstream, on: boolean): void {
    const o = this.byName.get(idOf(u))?.overflow;
    if (!o) return;
    o.flushing = on;
    if (on) {
      this.repairFlushes++;
      this.flushedAt.set(idOf(u), this.repairFlushes);
      return;
    }
    for (const [key, k] of o.known) {
      if (!k.holds && !k.maybe) continue;
      o.known.set(key, k.late === undefined ? { seq: k.seq, holds: false } : { seq: k.seq, holds: false, late: k.late });
      this.append(`U ${hex(idOf(u))} ${hex(key)}`);
    }
  }

  holdsAlone(u: Upstream, all: readonly Upstream[]): boolean {
    const o = this.byName.get(idOf(u))?.overflow;
    if (!o) return false;
    if (o.full) return true;
    const others = all.filter((x) => idOf(x) !== idOf(u));
    const alone = (key: string): boolean => {
      const k = o.known.get(key);
      if (k?.holds === true || k?.maybe === true) return others.every((x) => this.isDirty(x, key));
      // It missed a write of the key since, and every other copy an older one: the freshest
      // copy (fresher, `missed`), which the others are repaired from.
      return k?.missed !== undefined && !this.outranked(all, u, key);
    };
    if (o.lastAlone !== undefined && alone(o.lastAlone)) return true;
    o.lastAlone = undefined;
    for (const key of o.known.keys()) {
      if (alone(key)) {
        o.lastAlone = key;
        return true;
      }
    }
    return false;
  }

  /**
   * What `u`, an overflowed cache the repair has just flushed and trusted, lacks of what another
   * overflowed upstream has, as the keys to journal for `u` and the sequence to date each by: it
   * is repaired with them before that one may be flushed too. A key that one holds (its current
   * state, maybe the only copy) is dated by the next write (only a write started from now on
   * proves the key is here again). A key that one is the freshest copy of, though it missed a
   * write of it since (Overflow.known `missed`), is dated just below that miss: `u` ranks below
   * it. Without these, `u`, clean and empty, decided such a key as absent (a lock held there was
   * granted again).
   */
  lacksAfterFlush(u: Upstream, all: readonly Upstream[]): Array<[string, number]> {
    const next = this.nextWriteSeq();
    const others = all.filter((x) => idOf(x) !== idOf(u));
    const out: Array<[string, number]> = [];
    for (const x of others) {
      const o = this.byName.get(idOf(x))?.overflow;
      if (!o) continue;
      for (const [key, k] of o.known) {
        if (k.holds || k.maybe) out.push([key, next]);
        else if (k.missed !== undefined && !this.outranked(others, x, key)) out.push([key, k.missed - 0.5]);
      }
    }
    return out;
  }

  /**
   * What the earlier process may have sent to overflowed `u` (loaded from journal.log) can no
   * longer land, nor a request of this process whose key it could not remember (lastLate)
   * (repair.ts: their settle time, and since `u` last came back, has passed): the writes started
   * from now on tell which keys it holds again.
   */
  loadedSettled(u: Upstream): void {
    const o = this.byName.get(idOf(u))?.overflow;
    if (o === undefined) return;
    if (o.afterSeq === Infinity) o.afterSeq = this.writeSeq;
    // Nor can a request of a key it could not remember (learn: until then it holds no new key).
    o.lastLate = undefined;
  }

  /** The sequence the next write to start will have. */
  nextWriteSeq(): number {
    return this.writeSeq + 1;
  }

  clear(u: Upstream, key: string): void {
    const p = this.byName.get(idOf(u));
    if (p !== undefined && this.setKey(p, key, undefined)) this.append(`C ${hex(idOf(u))} ${hex(key)}`);
  }

  /**
   * `u` is known clean: forget everything about it. `by`: a client's flush_all emptied it (the
   * newest write of every key), the repair's flush of an overflowed cache did, every item written
   * before its overflow has expired, or an operator (`mcmux repair --trust`) vouches for it, past
   * what journal.log only may have been (each entry loaded is taken as a timeout, see parse), not
   * past a timeout this process saw.
   */
  trust(u: Upstream, by: 'flush_all' | 'repair' | 'expiry' | 'operator' = 'flush_all'): void {
    const operator = by === 'operator';
    const p = this.byName.get(idOf(u));
    if (!p) return;
    const lastLate = p.overflow?.lastLate;
    if (lastLate !== undefined && !(operator && lastLate === this.loadedAt)) {
      // One of a key the overflow could not remember may land too, anywhere, after the flush as
      // well as before: emptied (a client's flush_all), it is overflowed afresh (its late keys
      // remembered, as distrust does), and trusted as any overflowed upstream is, once that has
      // settled: a cache flushed again by the repair, a store once what it may hold has expired
      // (repair.ts retrust). Found by the fuzz: seed 1428, a set that timed out landed after a
      // flush_all, in an upstream taken as clean, and brought the value back; seed 69878, the
      // same once its lateness had settled (it was trusted then, as emptied by the flush).
      // Emptied (or vouched for), it holds no copy the overflow before could not remember: that
      // one's `full`, which distrust keeps, is moot.
      (p.overflow as Overflow).full = false;
      this.distrust(u);
      const o = p.overflow as Overflow;
      o.lastLate = Math.max(o.lastLate ?? 0, lastLate);
      return;
    }
    // A request that timed out before the flush may land after it: those keys stay dirty, to be
    // copied again once settled (repair.ts), as any late entry.
    const late = lateKeys(p).filter(([, at]) => !operator || at !== this.loadedAt);
    this.dropKeys(p);
    // Not the pending marks: a write acknowledged with write-wait copies may still be on its way
    // here (a trust by expiry or by the operator comes at any moment; a flush, after every write
    // in flight has landed, finds none), and until it lands a read must not take the value it
    // replaces from here. Its answer clears the mark (settled).
    this.setOverflow(p, undefined);
    this.append(`T ${hex(idOf(u))}`);
    // Ranked as holding the newest write (a flush_all's: empty) where that is what emptied it;
    // emptied by the repair, below every copy that holds a write (firstSeq 0.5, below the first
    // write's 1): it holds nothing a client wrote, as it ranked while overflowed (review: ranked
    // the freshest, a flushed cache's miss was read, and repaired over the acknowledged value).
    const [since, firstSeq] = by === 'repair' ? [0, LEAST_FRESH] : [Date.now(), this.writeSeq];
    for (const [key, at] of late) this.put(u, p, key, { op: 'write', since, seq: this.writeSeq, firstSeq, late: at });
  }

  /** Every write passes its deadline here, so an overflowed upstream knows how long to wait. */
  noteDeadline(deadline: number): void {
    if (deadline === 0) {
      if (!this.neverExpires) {
        this.neverExpires = true;
        this.append('N');
      }
      return;
    }
    if (deadline > this.maxDeadline) {
      this.maxDeadline = deadline;
      // Persist in steps of a minute: a restart may wait up to a minute longer, never shorter.
      if (deadline > this.persistedMax) {
        this.persistedMax = deadline + 60_000;
        this.append(`X ${this.persistedMax}`);
      }
    }
  }

  /**
   * The stores in the chain now (start, reload). One that was not in it before may have left it
   * earlier and missed every write since: it is distrusted. Persisted as `S` lines, so that this
   * holds across a restart too; a journal file written before S lines existed trusts them all.
   */
  setChain(upstreams: readonly Upstream[]): void {
    const next = new Set(upstreams.map(idOf));
    const timeouts = new Map(upstreams.map((u) => [idOf(u), u.timeoutMs]));
    const sameTimeouts = timeouts.size === this.timeouts.size && [...timeouts].every(([id, ms]) => this.timeouts.get(id) === ms);
    this.timeouts = timeouts;
    if (next.size === this.chain.size && [...next].every((id) => this.chain.has(id))) {
      if (!sameTimeouts) this.rewriteNow();
      return;
    }
    for (const u of upstreams) {
      if (this.chain.has(idOf(u))) continue;
      this.distrust(u);
      // Back in the chain: what may still land there (set aside while it was out) counts again.
      const parked = this.leftLate.get(idOf(u));
      if (parked !== undefined) {
        this.leftLate.delete(idOf(u));
        this.mayLandUnknown(u, parked.at, parked.sets);
      }
    }
    // A store that left the chain is not repaired any more: nothing settles what may land late.
    // Set aside, should a reload put it back before it has landed (review).
    for (const [id, p] of this.byName) {
      if (next.has(id) || p.unknownLate === undefined) continue;
      this.leftLate.set(id, p.unknownLate);
      p.unknownLate = undefined;
      this.unknownLates--;
    }
    this.chain = next;
    this.rewriteNow();
  }

  /**
   * The file rewritten from memory (a reload changed what it says), or, when the disk refuses
   * it, a write failure as any other: memory is already changed, and thrown out of a reload it
   * would have the reload rejected half applied. The next write tries again.
   */
  private rewriteNow(): void {
    if (this.fd === undefined) return;
    try {
      this.rewrite();
    } catch (error) {
      this.writeFailed(error);
    }
  }

  /**
   * Upstreams a reload replaced or removed, with the write sequence as it did (retire). A store
   * applies a key's requests in the order sent on one upstream's connections only: a request
   * still out on a retired one is not ordered with the writes sent to its replacement since.
   */
  private readonly retired = new WeakMap<Upstream, number>();

  /** A reload took `u` out of the chain (removed, or rebuilt with other options): see written(). */
  retire(u: Upstream): void {
    this.retired.set(u, this.writeSeq);
  }

  /**
   * Whether a request of `key` that `u` answered just now was sent on connections a reload
   * retired while a write of the key may have gone to the same store on other ones since (its
   * replacement): nothing orders the two there, and it may have landed over that write. A set or
   * delete (written()), and a touch (replicate-write.ts), which would give the later write its
   * deadline, are then taken as late requests.
   */
  landedRetired(u: Upstream, key: string): boolean {
    const retiredAt = this.retired.get(u);
    return retiredAt !== undefined && (retiredAt < this.forgottenUpTo || (this.writes.get(key)?.seq ?? 0) > retiredAt);
  }

  /** What may still land on stores that left the chain (PerUpstream.unknownLate as they left). */
  private readonly leftLate = new Map<string, UnknownLate>();

  /** journal.log was there and its process had not closed it cleanly (load). */
  uncleanStop = false;

  /** When journal.log was loaded (monotonic ms): the `late` of every entry it had (see trust). */
  private loadedAt = -1;

  /** Stores in the chain (setChain); empty before the first call: every store is new then. */
  private chain = new Set<string>();
  /**
   * Each store's request timeout as configured now (setChain), on file as `R` lines (see
   * timeoutOnFile): a process that starts after this one was killed waits for what it sent for
   * this long at least.
   */
  private timeouts = new Map<string, number>();
  /** The timeouts journal.log had (R lines) as it was loaded. */
  private readonly loadedTimeouts = new Map<string, number>();

  /** Loads journal.log (if any) and rewrites it compacted. Call once at start. */
  load(upstreams: readonly Upstream[]): void {
    const dir = this.options.dir;
    const configured = new Set(upstreams.map(idOf));
    let text: string | undefined;
    const file = dir ? join(dir, 'journal.log') : undefined;
    if (dir) makeStateDir(dir);
    // No journal yet is a first start, with nothing to distrust. One that is there but cannot be
    // read is not: taking it as empty would serve the keys it holds from upstreams that missed
    // them (stale sessions, destroyed ones back). So that stops the start, as a FIFO there would
    // have blocked it.
    try {
      if (file) text = readRegularFile(file, MAX_STRING_BYTES).toString('latin1');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new Error(`${file} is ${error instanceof FileKindError ? error.message : `unreadable (${String(error)})`}: the repair journal must be a readable file`);
      }
    }
    // Without a record of the chain (a first start, or a file from before S lines), every
    // configured store is taken as having been in it.
    const chain = new Set<string>();
    // A last line without its newline is one the disk took only part of (full, or a crash): a
    // field cut short would name another key or store (a clear of `sess.lock` cut to one of
    // `sess`): it is left out, as if never written (review).
    const lines = text?.split('\n') ?? [];
    lines.pop();
    for (const line of lines) if (line.startsWith('S ')) chain.add(unhex(line.slice(2)));
    this.chain = chain.size > 0 ? chain : configured;
    this.parse(lines, configured);
    this.setChain(upstreams);
    // The process before did not close the file (no `E` line last: killed, crashed, or a file of a
    // version before E lines, which cannot tell, so taken as such): what it had sent may still land
    // on any upstream, each request within its timeout from now: that process's (R lines), or this
    // one's as configured if longer (or the file has none). A file that was not there is a first
    // start, with nothing sent before. A store inside mcmux (memory://, sqlite://) took nothing
    // that outlived the process.
    this.uncleanStop = text !== undefined && !/(^|\n)E\n$/.test(text);
    if (this.uncleanStop) {
      for (const u of upstreams) {
        if (!inProcess(u)) this.mayLandUnknown(u, this.loadedAt + Math.max(u.timeoutMs, this.loadedTimeouts.get(idOf(u)) ?? 0), true);
      }
    }
    // Written even with nothing to repair: the next start must know this chain.
    if (dir) this.rewrite();
  }

  private parse(lines: readonly string[], known: ReadonlySet<string>): void {
    // The file does not say which misses were timeouts: any may be a request the earlier process
    // sent that still lands (a paused server working through its old connections), so each is
    // taken as one that timed out as this process starts (DirtyEntry.late, Overflow.lastLate).
    const loadedAt = monotonicMs();
    this.loadedAt = loadedAt;
    let maxSeq = 0;
    for (const line of lines) {
      const f = line.split(' ');
      const name = f[1] !== undefined && f[0] !== 'X' ? unhex(f[1]) : '';
      if (f[0] === 'X') this.persistedMax = this.maxDeadline = Math.max(this.maxDeadline, Number(f[1]) || 0);
      else if (f[0] === 'N') this.neverExpires = true;
      // A store removed from the config keeps its uniques epoch: should it come back, it must not
      // seal again as it did before a restart (review).
      if (f[0] === 'V' && f[2] !== undefined && !known.has(name)) this.otherEpochs.set(name, Math.max(this.otherEpochs.get(name) ?? 0, Number(f[2]) || 0));
      // Any store's, a server of a pool as well (not in `known`): see markers.
      if (f[0] === 'A' && f[2] !== undefined) {
        const until = Number(f[2]) || 0;
        if (until > 0) this.markers.set(name, until);
        else this.markers.delete(name);
        continue;
      }
      if (!known.has(name)) continue; // an upstream removed from the config: nothing to repair
      const p = this.of({ name, storeId: name } as Upstream & { storeId: string });
      if (f[0] === 'M' && f[3] !== undefined && !p.overflow) {
        const key = unhex(f[3]);
        // The last line's date: each line has the entry as it stood in memory (mark keeps the date
        // of the first miss, written() dates a copy that holds a newer write by that write).
        const since = Number(f[4]) || (p.keys.get(key)?.since ?? 0);
        // The write order (firstSeq) as the earlier process ranked the copy; none on a line from
        // before it was kept (ranked by `since` then, as before). This process's sequence starts
        // above the largest, so a copy dirty since one of its writes ranks above every loaded one.
        const rank = Number(f[5]);
        const firstSeq = Number.isFinite(rank) && rank > 0 ? Math.min(rank, HOLDS) : 0;
        if (firstSeq !== HOLDS) maxSeq = Math.max(maxSeq, firstSeq);
        this.setKey(p, key, { op: f[2] === 'd' ? 'delete' : 'write', since, seq: 0, firstSeq, late: loadedAt, ...(f[6] === 'a' ? { asks: true as const } : {}) });
      }
      else if (f[0] === 'C' && f[2] !== undefined) this.setKey(p, unhex(f[2]), undefined);
      else if (f[0] === 'O') {
        this.dropKeys(p);
        this.setOverflow(p, { since: Number(f[2]) || Date.now(), afterSeq: Infinity, trustAfter: undefined, known: new Map(), full: false, lastLate: loadedAt });
      } else if ((f[0] === 'K' || f[0] === 'H' || f[0] === 'U') && f[2] !== undefined && p.overflow) {
        if (f[0] === 'K') p.overflow.known.set(unhex(f[2]), { seq: 0, holds: true });
        else if (f[0] === 'H' && f[3] === 'a') {
          p.overflow.known.set(unhex(f[2]), { seq: 0, holds: false, maybe: true, asks: true });
          (p.overflow.unread ??= new Set()).add(unhex(f[2]));
        } else if (f[0] === 'H') p.overflow.known.set(unhex(f[2]), { seq: 0, holds: false, maybe: true });
        else p.overflow.known.delete(unhex(f[2]));
      } else if (f[0] === 'F' && p.overflow) {
        p.overflow.full = true;
      } else if (f[0] === 'V' && f[2] !== undefined) {
        p.uniquesEpoch = Math.max(p.uniquesEpoch ?? 0, Number(f[2]) || 0);
      } else if (f[0] === 'R' && f[2] !== undefined) {
        this.loadedTimeouts.set(name, Number(f[2]) || 0);
      } else if (f[0] === 'W' && f[3] !== undefined) {
        this.learnFenced(p, Number(f[2]), unhex(f[3]));
      } else if (f[0] === 'I' && f[2] !== undefined) {
        p.serverId = unhex(f[2]);
      } else if (f[0] === 'J' && f[2] !== undefined) {
        if (f[2] === '1') this.ringsBroken.add(name);
        else this.ringsBroken.delete(name);
      } else if (f[0] === 'Z' && f[2] !== undefined) {
        this.voidFence(p, Number(f[2]));
      } else if (f[0] === 'B' && f[3] !== undefined) {
        const flags = f.slice(4);
        this.setEmptied(p, Number(f[2]), { until: Number(f[3]) || 0, repair: flags.includes('r'), partly: flags.includes('p') });
      } else if (f[0] === 'T') {
        this.dropKeys(p);
        this.setOverflow(p, undefined);
      }
    }
    this.writeSeq = Math.max(this.writeSeq, Math.ceil(maxSeq));
  }

  /** Writes the live state as a fresh file and continues appending to it. */
  private rewrite(): void {
    const dir = this.options.dir;
    if (!dir) return;
    makeDirs(dir, 0o700);
    const file = join(dir, 'journal.log');
    const tmp = `${file}.tmp`;
    const out: string[] = [];
    if (this.persistedMax) out.push(`X ${this.persistedMax}`);
    if (this.neverExpires) out.push('N');
    for (const id of this.chain) out.push(`S ${hex(id)}`);
    for (const id of this.timeouts.keys()) out.push(`R ${hex(id)} ${this.timeoutOnFile(id, this.byName.get(id))}`);
    for (const [name, epoch] of this.otherEpochs) if ((this.byName.get(name)?.uniquesEpoch ?? 0) < epoch) out.push(`V ${hex(name)} ${epoch}`);
    const now = Date.now();
    for (const [id, until] of this.markers) {
      if (until > now) out.push(`A ${hex(id)} ${until}`);
      else this.markers.delete(id); // expired with the marker itself
    }
    for (const id of this.ringsBroken) out.push(`J ${hex(id)} 1`);
    for (const [name, p] of this.byName) {
      if (p.overflow) {
        out.push(`O ${hex(name)} ${p.overflow.since}`);
        if (p.overflow.full) out.push(`F ${hex(name)}`);
        for (const [key, k] of p.overflow.known) if (k.holds || k.maybe) out.push(`${k.holds ? 'K' : 'H'} ${hex(name)} ${hex(key)}${k.asks ? ' a' : ''}`);
      }
      for (const [key, e] of p.keys) out.push(mLine(name, key, e));
      for (const id of p.voided ?? []) out.push(`Z ${hex(name)} ${id}`);
      for (const [id, keys] of p.fenced ?? []) for (const key of keys) out.push(`W ${hex(name)} ${id} ${hex(key)}`);
      for (const [id, e] of p.emptied ?? []) if (e.until > Date.now()) out.push(bLine(name, id, e));
      if (p.uniquesEpoch !== undefined) out.push(`V ${hex(name)} ${p.uniquesEpoch}`);
      if (p.serverId !== undefined) out.push(`I ${hex(name)} ${hex(p.serverId)}`);
    }
    const fd = openSync(tmp, 'w', 0o600);
    try {
      // All of it, or no rename: a file the disk took half of must not replace the one there.
      writeAll(fd, out.length ? out.join('\n') + '\n' : '');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    // The rename is in the directory: until it is on disk a power cut can bring back the old
    // file, and with it lose what is appended (and fsynced) to the new one from now on.
    const dirFd = openSync(dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = openSync(file, 'a', 0o600);
    this.lines = out.length;
  }

  private append(line: string): void {
    if (!this.options.dir || this.closed) return;
    try {
      if (this.fd === undefined) {
        // After a failure, once a second at most (the state in memory has what is skipped).
        if (this.failing && monotonicMs() < this.retryAt) return;
        this.rewrite();
      }
      writeAll(this.fd as number, line + '\n');
      this.lines++;
      if (this.options.fsync === 'always') fsyncSync(this.fd as number);
      else if (this.options.fsync === 'everysec') this.scheduleSync();
      // Clears pile up behind marks: compact when the file is mostly history. Not after the `E`
      // line: the file written from memory would lack it.
      if (line !== 'E' && this.lines > 10_000 && this.lines > 4 * (this.totalKeys + this.knownKeys() + 1)) this.rewrite();
      this.failing = false;
    } catch (error) {
      this.writeFailed(error);
    }
  }

  private writeFailed(error: unknown): void {
    this.writeErrors++;
    this.retryAt = monotonicMs() + 1000;
    // Half a line may be on it: the next write starts a fresh file from memory.
    if (this.fd !== undefined) {
      try {
        closeSync(this.fd);
      } catch {
        // closed, or the disk is gone: either way it is not written again
      }
      this.fd = undefined;
    }
    if (this.failing) return;
    this.failing = true;
    this.onWriteError?.(error instanceof Error ? error : new Error(String(error)));
  }

  private scheduleSync(): void {
    this.dirtySinceSync = true;
    if (this.syncTimer) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      try {
        if (this.dirtySinceSync && this.fd !== undefined) fsyncSync(this.fd);
      } catch (error) {
        this.writeFailed(error);
      }
      this.dirtySinceSync = false;
    }, 1000);
    this.syncTimer.unref();
  }

  /**
   * Persists and closes (shutdown). `clean`: every request mcmux sent was answered or timed out,
   * and its miss journaled (app.ts close), so that the next process need not wait for any (the
   * `E` line); false stands for a kill in tests. Not clean either while requests of unknown keys
   * may still land somewhere (a flush that timed out, or what a process before this one sent, not
   * settled yet): the next process waits for those too.
   */
  close(clean = true): void {
    if (!this.closed && this.fd === undefined && this.failing) {
      // A write failed less than a second ago (append waits that long to try again): the file
      // lacks entries memory has. One more try now, or a restart after the disk took writes again
      // would lose them (review).
      try {
        this.rewrite();
        this.failing = false;
      } catch (error) {
        this.writeFailed(error);
      }
    }
    if (clean && this.unknownLates === 0 && !this.closed) this.append('E');
    this.closed = true;
    if (this.syncTimer) clearTimeout(this.syncTimer);
    this.syncTimer = undefined;
    if (this.fd !== undefined) {
      try {
        fsyncSync(this.fd);
        closeSync(this.fd);
      } catch (error) {
        this.writeFailed(error);
      }
      this.fd = undefined;
    }
  }
}
