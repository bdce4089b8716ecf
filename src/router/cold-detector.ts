/**
 * Notices an upstream that came back empty — a memcached or a Redis without persistence that
 * restarted, a store someone flushed — by a marker key mcmux keeps in every upstream. When the
 * marker is gone, the upstream is fenced for `lock-fence` ms: it must not decide `add`/`incr`,
 * or a session lock held in the other upstreams would be granted a second time (hazard 2).
 * Reads need no fence: a miss there falls through and is repaired. The cas uniques it handed out
 * before are void from then on (voidUniques): its counter started again.
 *
 * The marker's value names the mcmux process that wrote it (pid, generation, nonce: PID_GEN),
 * or, while the upstream is fenced, `fenced until <epoch ms> <pid gen nonce>`: an mcmux restarted inside that
 * time finds the marker (put
 * back by the process before it), and fences the upstream until then all the same, for at most
 * its own lock-fence (a wrong clock cannot fence for longer). Its flags then name the fence
 * (HealthyUpstream.fenceId): the keys a client wrote to the upstream under it, on journal.log,
 * are known again by the process that inherits it (inherit).
 *
 * Fences run on the monotonic clock (clock.ts): a step of the system clock neither ends one nor
 * stretches it. The marker crosses processes, so it holds a wall-clock time: the fence's end as
 * this process's wall clock reads it when writing (rewritten when that clock has stepped since),
 * and what a marker says is turned into a monotonic end once, as it is read (the time it has left,
 * cut to the lock-fence).
 */

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { RESERVED_KEY_PREFIX } from '../command/command';
import { monotonicMs } from '../clock';
import { ErrorCodes, McmuxError } from '../errors';
import { type Upstream, maskUrl } from '../upstream/upstream';
import { type FenceLog, type HealthyUpstream, isUsable, membersOf, outOfRing } from './health';

const CHECK_MS = 2000;
/**
 * How many marker writes that timed out each store remembers (ColdDetector.late): one found
 * later, landed late, is no rollback. Past that the oldest is forgotten: found, a false alarm.
 */
const LATE_GENS = 32;
/** A marker write that failed is tried again after this (retryMark). */
const RETRY_MS = 100;

/**
 * cold: our marker is gone (or says an earlier process fenced the store); warm: it is there;
 * first: none was written yet, as far as this process and journal.log know (no evidence by
 * itself: judge() calls it cold when another store of the chain holds this host's marker).
 */
type Verdict = 'cold' | 'warm' | 'first' | 'unknown';
const MARKER_TTL_MS = 24 * 3600_000;
/**
 * The marker while the upstream is fenced: the fence's end, then, as PID_GEN, the writer and a
 * generation (absent from the markers of mcmux before review-h9 finding 4: a snapshot taken while
 * fenced could not be told from the marker since).
 */
const FENCED_UNTIL = /^fenced until (\d{1,15})(?: (\d{1,10}) (\d{1,15}) ([0-9a-f]{1,32}))?$/;
/**
 * The marker of a process not fencing the store: its pid, a generation, new at each write, and
 * the process's nonce (ColdDetector.nonce; absent from the markers of mcmux before it).
 */
const PID_GEN = /^(\d{1,10}) (\d{1,15})(?: ([0-9a-f]{1,32}))?$/;

/** What one store's marker says. */
interface Sight {
  verdict: Verdict;
  /**
   * warm, and the marker was there before the upstream's current fence began (not one this
   * process wrote since): only such a marker shows the store kept its data through the fence.
   */
  kept: boolean;
  /** The end (wall-clock ms) of a fence an earlier mcmux process recorded in the marker; 0 if none. */
  fencedUntil: number;
  /** The id of that fence (HealthyUpstream.fenceId: the marker's flags); 0 if none. */
  fenceId: number;
  /** The marker is one this process wrote before its last write there: the store went back in time. */
  rolledBack?: boolean;
  /**
   * No marker where this process's last was acknowledged, and that one's life (MARKER_TTL_MS) is
   * over by the wall clock, as the store expires it: it may have expired (the clock stepped
   * forward, the host resumed after a day suspended), no sign of a store replaced (review-h4
   * finding 6).
   */
  expired?: boolean;
}

interface Look {
  targets: Upstream[];
  sights: Sight[];
  /** How many precautions its upstream had armed when the look began (ColdDetector.arm). */
  gen?: number;
}

/**
 * Whether journal.log keeps that `store` (of `u`) acknowledged this host's marker (markerAcked), so
 * that the next process takes a store without it for one that lost it. Not a store inside mcmux
 * that starts empty with each process (memory://: knownEmpty fences it as mcmux starts), nor the
 * view of one master of a Redis Cluster: its marker keys name the master's replication id, new
 * after a restart with its data as well, and RedisUpstream.markerStores judges those.
 */
function recorded(u: HealthyUpstream, store: Upstream): boolean {
  return store.scheme !== 'memory' && (u.inner.markerStores === undefined || store === u.inner);
}

/**
 * What journal.log keeps `store`'s record under: `u` itself (its storeId, the store identity the
 * rest of the journal follows, without tuning options) when the store is the upstream's own
 * driver, whose name is the whole URL (a `?timeout=` changed while mcmux was down would lose the
 * record: review); a server of a pool by its own name (`memcached://host:port`).
 */
function recordOf(u: HealthyUpstream, store: Upstream): Upstream {
  return store === u.inner ? u : store;
}

/**
 * `store`'s identity (of `u`), as journal.log keeps it (journal.ts idOf of recordOf): the same for
 * the store a reload rebuilt with other options (HealthyUpstream.storeId), and for a pool server.
 */
function storeKey(u: HealthyUpstream, store: Upstream): string {
  const r = recordOf(u, store) as Upstream & { storeId?: string };
  return `${r === store ? 'server' : 'store'} ${r.storeId ?? r.name}`;
}

/** Whether every server of `u` (a pool) is in its ring: none ejected (MemcachedPool.outOfRing). */
function ringWhole(u: HealthyUpstream): boolean {
  return outOfRing(u).length === 0;
}

/** The key of this host's marker in every store (a valid memcached key whatever the host name). */
export function markerKey(): string {
  return `${RESERVED_KEY_PREFIX}${hostname().replace(/[^\x21-\x7e]/g, '_').slice(0, 200)}`;
}

export class ColdDetector {
  /** One key per host, so restarts of mcmux do not leave a trail of markers behind. */
  readonly key = markerKey();
  // Per-store and per-upstream state is kept in weak maps and sets (every one but `retries`, whose
  // timers stop() clears, and `late`, `floors` and `earlier`, kept by the store's identity, one
  // per store configured): an upstream a reload retired, and its driver, are not held here.

  /**
   * What this process last wrote as each store's marker, once acknowledged: how many fences its
   * upstream had begun then (HealthyUpstream.fencesBegun), its generation, and until when the
   * store keeps it (epoch ms).
   */
  private readonly lastSet = new WeakMap<Upstream, { fence: number; gen: number; deadline: number }>();
  /**
   * Markers are numbered (PID_GEN), a new number at each write, so that a store that comes back
   * holding an older one than this process last wrote there is known to have gone back in time (a
   * Redis restarted from an RDB snapshot older than its last writes): its marker is there, but so
   * are the sessions deleted and the values overwritten since. `late`: the numbers of the last
   * LATE_GENS writes that timed out there (they may still land, after newer ones): such a marker
   * found is no rollback, and those alone are excused. The lowest of them taken for a floor, as
   * before, hid for good every later restore to a copy taken under this process, after one MySQL
   * marker write had waited out `timeout` for a row lock (review-h4 finding 2). Kept by the
   * store's identity (storeKey), not its driver: one a reload rebuilt (other options) is the same
   * store, where a write of the driver it retired may still land (review-h9 finding 2).
   * Each with the generation last handed out when a look first read it there (undefined: not
   * read yet): a write lands once, so once a marker written after that read is acknowledged, the
   * late one found again is a copy taken while it was there, restored (review-h9 finding 3).
   */
  private gen = 0;
  private readonly late = new Map<string, Map<number, number | undefined>>();
  /**
   * The generation of the marker last acknowledged in each store, by its identity (storeKey), as
   * lastSet's by driver: a reload that rebuilt the store's driver keeps the floor. Else the new
   * driver's first check took an older marker of this process (a store restored to a copy taken
   * under this process while it was down) for one kept, and lifted the reload's precaution
   * (review-h11 finding 1).
   */
  private readonly floors = new Map<string, number>();
  /**
   * Per store, the markers of other processes (pid: the highest generation) it held before this
   * process's own marker was acknowledged there, or while this process waited for what a crashed
   * one sent to land (startAfter). A marker of one of them no newer than that, found once this
   * process's own is acknowledged there, is the store gone back to a snapshot taken under the
   * process before this one (a deploy, a reboot of the web host): the generations of this
   * process alone did not tell it (review finding 1, test/integration/review-durable.test.ts).
   * Keyed by the pid and the nonce: a process that reused the pid of one before it (the first
   * process of every container has pid 1) numbers its markers from 1 again, and is no rollback
   * of the one before (review-today finding 4).
   * Kept by the store's identity (storeKey), as `floors`: by driver, a reload that rebuilt the
   * store's driver forgot them, and a restore to such a copy found after it was taken for the
   * marker kept (review-h19 finding 2).
   */
  private readonly earlier = new Map<string, Map<string, number>>();
  /**
   * Names this process in its markers beside the pid, which another process may reuse: a random
   * nonce, new at each start (a restart under the same pid is another process; so is another
   * detector in this process, as tests build them).
   */
  private readonly nonce = randomBytes(6).toString('hex');
  /** `<pid> <nonce>`: the writer of a marker as checkStore tells writers apart. */
  private readonly self = `${process.pid} ${this.nonce}`;
  /** startAfter is waiting for a crashed process's requests (its marker writes too) to land. */
  private settling = false;
  /**
   * Stores in which a check found this host's marker before this process wrote it there (left by
   * an earlier mcmux process on this host): they kept their data since. Forgotten at a flush_all.
   */
  private readonly found = new WeakSet<Upstream>();
  /**
   * Upstreams whose marker no look of this process could read yet, though one tried (the first
   * look, as mcmux starts, found them down, or the read failed): true; false once a look has
   * judged them. See unread.
   */
  private readonly unjudged = new WeakMap<HealthyUpstream, boolean>();
  private timer: NodeJS.Timeout | undefined;
  /**
   * A marker write that failed is tried again after RETRY_MS, not only at the next periodic check
   * (CHECK_MS): until it lands, the store holds no marker of this host (after a flush_all, none at
   * all), and an mcmux that starts meanwhile cannot tell, from it, that another store lost its
   * own (markedElsewhere). Fuzz seed 194187 with MCMUX_FUZZ_RESTART=1: the rewrite after a
   * flush_all refused on up1, up0 restarted empty while down for this process, mcmux restarted,
   * and the next process found no marker anywhere: up0, taken as a first start, granted a lock
   * up1 held.
   */
  private readonly retries = new Map<HealthyUpstream, NodeJS.Timeout>();
  /**
   * Per upstream: how many precautionary fences (reconnects) were armed so far, and how many
   * single-server checks of a pool are in flight. A look lifts a precaution only when no
   * reconnect came after it started, nor another server's check is still out (review).
   */
  private readonly armed = new WeakMap<HealthyUpstream, number>();
  private readonly serverChecks = new WeakMap<HealthyUpstream, number>();
  /**
   * Per pool: its servers whose marker no look has read since they reconnected (or since a look
   * could not read it), with the arm generation from which a look's read speaks for them. While
   * one of them is usable, no look of the others lifts the pool's precaution: a kept marker on
   * s0 says nothing of s1, which may have restarted empty (review: a server unread since mcmux
   * started, or whose reconnect check could not answer, let a blip on another server lift the
   * fence, and the pool decided a lock the restarted server had lost).
   */
  private readonly unverified = new WeakMap<HealthyUpstream, Map<Upstream, number>>();
  /** The history each upstream's server last named (serverId), in this process. */
  private readonly serverIds = new WeakMap<HealthyUpstream, string>();
  /**
   * A new id (serverId) whose fence is not on the marker yet: journal.log keeps the id before it
   * until a marker written since (mark) is acknowledged, which passes the fence on (`fenced
   * until`, and journal.log's B line) or says it is over. Killed in between, the next process
   * compares with the old id and fences again; with the new one on file, it would find no change
   * and the replicated marker, and the promoted replica would decide (review-h1 finding 2).
   */
  private readonly idsUnsaved = new WeakMap<HealthyUpstream, { id: string }>();
  /** When this process last started writing each store's marker (monotonic ms). */
  private readonly writing = new WeakMap<Upstream, number>();
  /** Stores whose last marker write the store itself refused (said once: refusesWrites). */
  private readonly refusing = new WeakSet<Upstream>();
  private arm(u: HealthyUpstream): number {
    const g = (this.armed.get(u) ?? 0) + 1;
    this.armed.set(u, g);
    return g;
  }

  constructor(
    private readonly upstreams: () => readonly HealthyUpstream[],
    public fenceMs: number,
    private readonly log: Logger,
    /** Where the keys an upstream learnt while fenced are kept across processes (the journal). */
    private readonly fenceLog?: FenceLog,
  ) {}

  /**
   * Starts the periodic checks; resolves once the first has judged every upstream, or fenced
   * one whose marker it could not read (see unread) (app.ts takes no client command before: an
   * upstream that came back empty while no mcmux watched would decide an add until then).
   */
  async start(): Promise<void> {
    if (this.timer) return;
    this.timer = setInterval(() => void this.checkAll(), CHECK_MS);
    this.timer.unref();
    await this.checkAll();
  }

  /**
   * start(), then `settled` (the wait for what a process before this one sent to stop landing,
   * true if it waited), then, if it waited, every marker again: a flush_all of that process
   * landing meanwhile empties a store without a reconnect, after the first look had read its
   * marker (fuzz seed 105144 with MCMUX_FUZZ_FLUSH and MCMUX_FUZZ_RESTART: the emptied store,
   * taken as warm, granted a lock another store held). No client command before it resolves.
   */
  async startAfter(settled: () => Promise<boolean>): Promise<void> {
    this.settling = true;
    try {
      await this.start();
      if (await settled()) await this.checkAll();
    } finally {
      this.settling = false;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const t of this.retries.values()) clearTimeout(t);
    this.retries.clear();
  }

  /**
   * A ring move fences the pool `u` as come back empty (knownEmpty), but it is not empty: it holds
   * every key that did not move (inheritedEmpty, as for a server replaced), so with every upstream
   * fenced it decides before one that holds nothing but what was written since it came back
   * (authority-order.ts onlyLearnt), and not after it by the chain order: a store that restarted
   * empty within the pool's lock-fence granted a lock the pool held on a server that stayed in
   * the ring (eject fuzz seed 1565; fuzz-pool-findings.test.ts). Unless this fence already found
   * it empty.
   */
  private movedEmpty(u: HealthyUpstream): void {
    const seenEmpty = u.cameBackEmpty && !u.inheritedEmpty;
    // No store of it emptied: should a server lose its marker in this fence, the pool still holds
    // the keys of the others (partlyEmpty).
    this.knownEmpty(u, 0, []);
    if (!seenEmpty) u.inheritedEmpty = true;
  }

  /**
   * Upstreams whose journal.log record of a broken ring this process has looked at (ringBroken),
   * and those it fenced for it, until that fence is over and the ring whole.
   */
  private readonly ringsLooked = new WeakSet<HealthyUpstream>();
  private readonly ringsInherited = new WeakSet<HealthyUpstream>();

  /**
   * The ring of the pool `u` moved (eject=true: a server left it or came back): the keys that
   * moved are on a server that lacks what was written to them meanwhile, or holds what they were
   * when they were last placed there (the server back with its data, or one that took them in an
   * earlier outage: review finding 3), so it is fenced as come back empty and trusted for no key
   * that moved until known clean (distrust: read for the keys written since, and for those on
   * the same server in every ring since this move; the repair flushes its servers in the ring
   * when another upstream holds what it may lack); and journal.log keeps whether the ring is
   * whole, for the next process (ringBroken).
   */
  ringMoved(u: HealthyUpstream): void {
    this.movedEmpty(u);
    const pool = u.inner as { keptPlace?: (key: string) => boolean; ringMoves?: number; unmovedSince?: (since: number, key: string) => boolean };
    const since = (pool.ringMoves ?? 0) - 1;
    const unmoved = pool.unmovedSince === undefined ? undefined : (key: string): boolean => (pool.unmovedSince as (since: number, key: string) => boolean).call(pool, since, key);
    this.fenceLog?.distrust(u, this.upstreams(), pool.keptPlace?.bind(pool), unmoved);
    this.fenceLog?.ringMoved(u, ringWhole(u));
  }

  /**
   * A pool whose ring the process before left broken (journal.log): this one starts with the whole
   * ring, so the ejected server's return is a ring move all the same, though its marker is still
   * there: fenced as come back empty and distrusted, as that process would have (review: a lock
   * taken while the server was out, granted again by it under the next process; a session deleted
   * while it was out, read again from it). The record goes once this fence
   * is over with the ring whole (a kill meanwhile fences it again under the next process).
   */
  private inheritRings(ups: readonly HealthyUpstream[]): void {
    for (const u of ups) {
      if (this.ringsLooked.has(u)) {
        if (this.ringsInherited.has(u) && !u.fenced && ringWhole(u)) {
          this.ringsInherited.delete(u);
          this.fenceLog?.ringMoved(u, true);
        }
        continue;
      }
      this.ringsLooked.add(u);
      if (this.fenceLog?.ringBroken(u) !== true || !ringWhole(u)) continue;
      this.ringsInherited.add(u);
      this.movedEmpty(u);
      this.fenceLog?.distrust(u, ups);
      this.log.warn({ upstream: u.name, fenceMs: this.fenceMs }, 'a server of this pool was out of its ring under the process before: the pool decides no add/cas/incr until the fence ends');
    }
  }

  /** Every upstream, judged once all have answered (see markedElsewhere). */
  async checkAll(): Promise<void> {
    const ups = this.upstreams();
    this.inheritRings(ups);
    for (const u of ups) this.stillUnread(u);
    const gens = ups.map((u) => this.armed.get(u) ?? 0);
    const looks = await Promise.all(ups.map((u) => this.look(u)));
    // Those this look could not read count as unread before any is judged (markedElsewhere).
    ups.forEach((u, i) => this.unread(u, looks[i]));
    const fresh = ups.map((u, i) => (this.armed.get(u) ?? 0) === gens[i]);
    ups.forEach((u, i) => this.judge(u, looks[i], undefined, fresh[i]));
    // A look a reconnect overtook puts no marker back: the store may have restarted since it read.
    await Promise.all(ups.map((u, i) => (fresh[i] ? this.mark(u, looks[i]) : undefined)));
  }

  /**
   * `u` (or a server of it) reconnected after losing a connection: it may have restarted empty
   * without a single request failing. Fence it at once, then look for the marker: if it is still
   * there, lift the fence. Conditional commands are decided elsewhere meanwhile. Its uniques are
   * voided at once too (precautionary), not when the check answers: until it does, `u` may
   * still decide a cas for a key written to it since (when no warm upstream may), and a store
   * that restarted numbers its items from 1 again, so a unique of before could name a newer
   * item. The price, when it did not restart: a cas with a unique read before the reconnect
   * fails (EXISTS) and the client reads again.
   */
  reconnected(u: HealthyUpstream): void {
    // Not one a reload retired (reconnecting in its grace period): it decides nothing, and judged
    // by its own last marker it took the new driver's `fenced until` for its marker kept and wrote
    // a plain one over it (review-h24 finding 4). As serverId.
    if (!this.upstreams().includes(u)) return;
    const at = monotonicMs();
    const forgot = u.fenced ? u.learntKeys() : [];
    // Come back empty before, it held what was learnt since and what read repair copied there: a
    // restart now would have taken all of it, no restart none. Not known to hold nothing but what
    // it learns from now on (onlyLearnt): with every upstream fenced it is not left out for one
    // fenced as a precaution since, which may itself have restarted empty unseen (fuzz seed
    // 208000: that one decided a prepend NOT_STORED of a key this one held).
    if (u.cameBackEmpty) u.inheritedEmpty = true;
    const stores = this.storesOf(u, false);
    const before = stores.map((t) => this.lastSet.get(t));
    u.fence(at + this.fenceMs);
    this.arm(u);
    // Already fenced, it would go on deciding the keys written to it since that fence began,
    // which a restart has taken: they are learnt again from the writes after this one.
    u.emptied();
    this.voidUniques(u);
    // A warm answer lifts this fence; one that finds the marker written before the reconnect
    // (so the store did not restart) makes the keys forgotten just now known again.
    void this.check(u, (verdict, look, fresh) => {
      const kept =
        verdict === 'warm' &&
        fresh &&
        look !== undefined &&
        look.targets.length === stores.length &&
        stores.every((t, i) => before[i] !== undefined && this.lastSet.get(t) === before[i] && (this.writing.get(t) ?? -Infinity) < at);
      if (kept) for (const key of u.relearn(forgot)) this.fenceLog?.fenceLearnt(u, u.fenceId, key);
    });
  }

  /**
   * The server at `u`'s address names its history `id` (Upstream.onServerId, at each connection:
   * a Redis replication id). Another id than the last one seen, by this process or one before it
   * (journal.log: a failover while mcmux was down, review-today finding 5), is another server;
   * unless `continues` (the driver's word, Upstream.onServerId) says the new id names the same
   * history as that one (a Redis master that freed its replication backlog: review-h1 finding 5).
   */
  serverId(u: HealthyUpstream, id: string, continues?: (before: string) => boolean): void {
    // Not one a reload retired (open for its grace period, reconnecting): it decides nothing, and
    // its id on file would stand for the store's to the upstream that replaced it, not connected
    // yet (review-h1 finding 3).
    if (!this.upstreams().includes(u)) return;
    const before = this.serverIds.get(u) ?? this.fenceLog?.serverIdOf(u);
    this.serverIds.set(u, id);
    if (before !== undefined && before !== id && continues?.(before) !== true) {
      this.replaced(u);
      this.idsUnsaved.set(u, { id });
    } else if (this.idsUnsaved.has(u)) this.idsUnsaved.set(u, { id });
    else this.fenceLog?.serverIdSeen(u, id);
  }

  /**
   * `u` answers at its address as another server than before (serverId: a Redis replica promoted
   * behind a stable address, or a restart): it may lack writes it acknowledged, a lock among
   * them, though its marker is there (replicated, or in a snapshot). Fenced as come back empty,
   * which its marker does not lift (review-durable finding 3). But not empty: it holds all but
   * the last writes (inheritedEmpty, as the next process takes that fence from journal.log), so
   * with every upstream fenced it decides before one that holds nothing but what was written
   * since it came back (authority-order.ts onlyLearnt): a memory:// store emptied as mcmux started
   * decided `add` of a lock a Redis restarted with its data while mcmux was down held (review-h1
   * finding 1). Unless this fence already found it empty (its marker gone): then it is.
   */
  private replaced(u: HealthyUpstream): void {
    const seenEmpty = u.cameBackEmpty && !u.inheritedEmpty;
    this.knownEmpty(u);
    if (!seenEmpty) u.inheritedEmpty = true;
    this.voidUniques(u);
    this.log.warn({ upstream: u.name, fenceMs: this.fenceMs }, 'upstream answers as another server than before (a replica promoted, or a restart): it decides no add/cas/incr until the fence ends');
  }

  /**
   * A fence set as a precaution (a reconnect, a reload) is lifted on a warm answer whose marker
   * was there before the fence began, not on a first sight (after a flush_all: nothing to
   * compare) nor on a marker this process wrote since (it would be there whatever the store
   * lost); one set because the marker was found missing stays for its whole time. A
   * precautionary fence whose own check could not answer (the upstream was down again) is lifted
   * by a later such check: the periodic one, or the one made when its health turns healthy.
   */
  private liftIfKept(u: HealthyUpstream, sights: readonly Sight[]): void {
    const unverified = this.unverified.get(u);
    // A usable server of a pool whose marker was not read since it reconnected may have come back empty.
    if (unverified !== undefined && membersOf(u).some((m) => isUsable(m) && unverified.has(m.inner))) return;
    if (sights.every((s) => s.kept) && u.coldUntil !== 0 && !(u.emptyUntil > monotonicMs())) u.unfence();
  }

  private pending(u: HealthyUpstream): Map<Upstream, number> {
    let m = this.unverified.get(u);
    if (m === undefined) this.unverified.set(u, (m = new Map()));
    return m;
  }

  /**
   * What `look` read of a pool's servers: one it read, for a reconnect no later than the look
   * began, is verified; one it could not read is not (unverified).
   */
  private noteRead(u: HealthyUpstream, look: Look): void {
    if (membersOf(u).length === 0) return;
    const m = this.pending(u);
    const gen = look.gen ?? 0;
    look.targets.forEach((t, i) => {
      if (look.sights[i]?.verdict === 'unknown') {
        if (!m.has(t)) m.set(t, gen);
      } else if ((m.get(t) ?? Infinity) <= gen) m.delete(t);
    });
  }

  /**
   * One server of the pool `u` reconnected (or came back healthy): fence the pool, then ask that
   * server itself — even before its health says it is usable — and lift the fence only on its
   * own answer that the marker is still there. Its uniques are voided at once, as in reconnected.
   */
  serverReconnected(u: HealthyUpstream, server: HealthyUpstream): void {
    if (!this.upstreams().includes(u)) return; // a pool a reload retired: as reconnected
    const at = monotonicMs();
    const forgot = u.fenced ? u.learntKeys() : [];
    const before = this.lastSet.get(server.inner);
    u.fence(at + this.fenceMs);
    // As in reconnected: the server may have restarted, taking the keys written to the pool since.
    u.emptied();
    this.voidUniques(u);
    const g = this.arm(u);
    this.pending(u).set(server.inner, g);
    this.serverChecks.set(u, (this.serverChecks.get(u) ?? 0) + 1);
    void this.checkStore(u, server.inner).then(async (sight) => {
      const look = { targets: [server.inner], sights: [sight], gen: g };
      const alone = this.serverChecks.get(u) === 1;
      this.serverChecks.set(u, (this.serverChecks.get(u) ?? 1) - 1);
      const fresh = alone && this.armed.get(u) === g;
      const verdict = this.judge(u, look, server.name, fresh);
      // As in reconnected: the marker written before the reconnect is still there (the server did
      // not restart, and no other reconnect came since), so the keys the fenced pool had learnt,
      // forgotten just now, are known again (review: with every upstream fenced, the one that had
      // lost a lock decided it before the pool, which held it).
      const kept =
        verdict === 'warm' && fresh && before !== undefined && this.lastSet.get(server.inner) === before && (this.writing.get(server.inner) ?? -Infinity) < at;
      if (kept) for (const key of u.relearn(forgot)) this.fenceLog?.fenceLearnt(u, u.fenceId, key);
      if (this.armed.get(u) === g) await this.mark(u, look);
    });
  }

  /**
   * The marker was gone: fenced for the whole lock-fence (or until `until`, monotonic, the end of
   * the fence an earlier process recorded in it), and its old cas uniques void.
   */
  private fenceCold(u: HealthyUpstream, until = 0, stores?: readonly Upstream[]): void {
    this.knownEmpty(u, until, stores);
    u.emptied();
    this.voidUniques(u);
  }

  /**
   * `u`'s uniques are void from now on, in the next mcmux process too (journal.log): without it,
   * that one sealed as this one did before the void, and a unique handed out then named an item
   * of the store after it restarted (fuzz seed 25356 of 24001-25500 with MCMUX_FUZZ_RESTART=1:
   * cas STORED over a newer add).
   */
  voidUniques(u: HealthyUpstream): void {
    u.voidUniques();
    this.fenceLog?.uniquesVoided(u, u.uniquesEpoch);
  }

  /**
   * `u` is empty for certain (an in-process store as mcmux starts, a cache the repair flushes):
   * fenced for the whole lock-fence, as when its marker is found missing. Its own marker, written
   * after that and found by the next check, says nothing about what it held before.
   */
  knownEmpty(u: HealthyUpstream, until = 0, stores?: readonly Upstream[]): void {
    const end = until > 0 ? until : monotonicMs() + this.fenceMs;
    u.fence(end);
    // Already fenced, it would keep the keys written to it since that fence began: gone now.
    u.emptied();
    u.emptyUntil = Math.max(u.emptyUntil, end);
    // Seen empty: it holds nothing but what is written to it from now on, whatever it inherited.
    u.inheritedEmpty = false;
    this.storesEmptied(u, stores ?? this.storesOf(u, false));
    this.fenceLog?.fencesVoided(u, u.fenceId);
  }

  /** Per pool: its stores (servers) seen come back empty in its current fence (HealthyUpstream.fencesBegun). */
  private readonly emptiedStores = new WeakMap<HealthyUpstream, { fence: number; stores: Set<Upstream> }>();

  /**
   * `stores` of `u` came back empty (by default, in knownEmpty, every one). A pool a server of
   * which lost its marker, while another in its ring has not in this fence, still holds every key
   * placed on that one: fenced as come back empty, but not known to hold nothing but what is
   * written to it since (partlyEmpty, authority-order.ts onlyLearnt), so with every upstream
   * fenced it decides before a store that did, not after it by the chain order (fuzz seed 307917
   * with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1: one
   * server of the pool restarted empty, then the store before it in the chain; that one decided a
   * decr of a counter the pool's other server held: NOT_FOUND; fuzz-seed-307917.test.ts).
   */
  private storesEmptied(u: HealthyUpstream, stores: readonly Upstream[]): void {
    const members = membersOf(u);
    // A Redis Cluster: one store per master (markerStores), as a pool has one per server.
    const masters = members.length === 0 ? u.inner.markerStores?.() : undefined;
    // The stores just found emptied count too: a ghost (the view of a master no more, read once
    // where its slots went: RedisUpstream.markerStores) has left the list by now. Without it a
    // cluster of two masters, one lost for good, was one master, empty whole (review-h38 finding 4).
    if (members.length === 0 && (masters === undefined || new Set([...masters, ...stores]).size < 2)) {
      u.partlyEmpty = false;
      return;
    }
    let e = this.emptiedStores.get(u);
    if (e === undefined || e.fence !== u.fencesBegun) this.emptiedStores.set(u, (e = { fence: u.fencesBegun, stores: new Set() }));
    for (const t of stores) e.stores.add(t);
    const seen = e.stores;
    if (masters !== undefined) {
      // Another master that did not lose its marker holds its keys (review-h36 finding 4).
      u.partlyEmpty = masters.some((t) => !seen.has(t));
      return;
    }
    // Every server in its ring, not only the usable ones: one down (eject=false keeps it in the
    // ring) still holds its keys, and returns with them (review-h36 finding 3: taken as emptied,
    // the pool was onlyLearnt once it was back, and a store that restarted empty after it decided
    // keys that server held by the chain order).
    const out = outOfRing(u);
    u.partlyEmpty = members.some((m) => !out.includes(m.name) && !seen.has(m.inner));
    // Which: a key placed on one of them the pool holds no more than a store emptied whole does
    // (health.ts partlyEmptyFor; fuzz seed 311928).
    u.emptiedStores = seen;
  }

  /**
   * The repair flushed `u` (an overflowed cache), fenced by knownEmpty just before: the flush took
   * the marker too. It is written again at once, naming that fence, so that neither the next check
   * of this process nor the first look of the next one takes the missing marker for a restart:
   * that would forget the keys a client wrote to `u` since the flush, and fence it afresh as
   * knowing none of them (fuzz seed 47081 of 46501-48000 with MCMUX_FUZZ_RESTART=1: mcmux killed
   * before its next check, the next process fenced the flushed cache as come back empty, and a
   * cas was decided by the other store, which had lost the key unseen: NOT_FOUND).
   * A pool flushed with its ring whole holds nothing of a broken ring any more: journal.log's
   * record of one goes (a next process would distrust it again, and forget which keys it alone
   * holds since: fuzz seed 79 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1).
   */
  flushed(u: HealthyUpstream): void {
    if (membersOf(u).length > 0 && ringWhole(u) && this.fenceLog?.ringBroken(u) === true) {
      this.ringsInherited.delete(u);
      this.fenceLog.ringMoved(u, true);
    }
    for (const s of [u.inner, ...this.storesOf(u, false)]) {
      this.lastSet.delete(s);
      this.floors.delete(storeKey(u, s));
      // Not `late`: a marker write that timed out before the flush may still land after it, and
      // after the marker written since (review-h9 finding 1).
      this.found.delete(s);
      this.fenceLog?.markerGone(recordOf(u, s));
    }
    const targets = this.storesOf(u, true);
    void this.mark(u, { targets, sights: targets.map((): Sight => ({ verdict: 'first', kept: false, fencedUntil: 0, fenceId: 0 })) });
  }

  /**
   * The latest end of a fence that an earlier mcmux process recorded in these markers and that is
   * still to come, cut to this process's own lock-fence, as a monotonic time; 0 if none. The one
   * place a wall-clock fence end becomes an in-process one: by the time it has left.
   */
  private inheritedFence(sights: readonly Sight[]): number {
    const left = Math.min(Math.max(0, ...sights.map((s) => s.fencedUntil)) - Date.now(), this.fenceMs);
    return left > 0 ? monotonicMs() + left : 0;
  }

  /**
   * `u` was emptied on purpose (a client's flush_all): the next check starts afresh. So a restart
   * it had not seen yet (a check in flight, or due) goes unseen: the uniques `u` handed out are
   * voided as after one (no item they named is left anyway). And its marker is written again at
   * once, as after the repair's flush (flushed): until it is, a restart would lose none, and the
   * upstream would decide again as soon as a check found the marker it wrote after the restart.
   * Not judged first: with the flush failed elsewhere, a store that kept its marker made this one
   * look as if it had lost its own, fenced as come back empty after the writes that followed the
   * flush reached it, and those keys were forgotten; with every upstream so fenced, one that had
   * missed them decided (fuzz seed 58939 of 57501-59000 with MCMUX_FUZZ_RESTART=1: a lock granted
   * twice).
   */
  forget(u: HealthyUpstream): void {
    this.voidUniques(u);
    this.flushed(u);
  }

  /**
   * Whether a store of the chain other than `stores` held this host's marker from before. A store
   * seen for the first time without one, while another has one, lost it: it restarted or was
   * flushed while mcmux was not watching (mcmux itself restarted, or the store was unreachable
   * since mcmux started), or it missed everything mcmux wrote. Either way it may lack a lock the
   * others hold. Only when no store has a marker (the first start, a flush_all of all) does a
   * first sight say nothing; and not while the marker of an upstream other than `u` is still
   * unread (see unread): it may hold one.
   */
  private markedElsewhere(stores: readonly Upstream[], u: HealthyUpstream): boolean {
    for (const v of this.upstreams()) {
      // Its marker not read yet: it may hold one (see unread).
      if (v !== u && this.unjudged.get(v) === true) return true;
      for (const s of this.storesOf(v, false)) {
        if (!stores.includes(s) && this.found.has(s)) return true;
      }
    }
    return false;
  }

  /**
   * Looks for the marker in `u` — in each server of a pool, since one of them can restart alone —
   * and fences `u` when a marker mcmux wrote has disappeared. `judged` is told what the look found
   * (and whether no reconnect came since it began) before the marker is written again.
   */
  async check(u: HealthyUpstream, judged?: (verdict: Verdict, look: Look | undefined, fresh: boolean) => void): Promise<Verdict> {
    this.stillUnread(u);
    const g = this.armed.get(u) ?? 0;
    const look = await this.look(u);
    // A reconnect since the look began: what it read may be from before a restart.
    const fresh = (this.armed.get(u) ?? 0) === g;
    const verdict = this.judge(u, look, undefined, fresh);
    judged?.(verdict, look, fresh);
    if (fresh) await this.mark(u, look);
    return verdict;
  }

  /**
   * The stores that hold `u`'s marker: each server of a pool (`usable`: those usable now), each
   * master of a Redis Cluster (markerStores), or `u` itself.
   */
  private storesOf(u: HealthyUpstream, usable: boolean): Upstream[] {
    const members = membersOf(u);
    if (members.length === 0) return u.inner.markerStores ? [...u.inner.markerStores()] : [u.inner];
    return (usable ? members.filter(isUsable) : members).map((m) => m.inner);
  }

  /** What the marker says in each store of `u` (each usable server of a pool); undefined when `u` is not usable. */
  private async look(u: HealthyUpstream): Promise<Look | undefined> {
    if (!isUsable(u)) return undefined;
    const gen = this.armed.get(u) ?? 0;
    // A cluster names a store per master once its slots are known: the first look as mcmux starts
    // waits for them (the marker read as any key would stand for one master only).
    if (u.inner.markersReady) await u.inner.markersReady();
    const targets = this.storesOf(u, true);
    return { targets, sights: await Promise.all(targets.map((t) => this.checkStore(u, t))), gen };
  }

  /**
   * `look` could not read `u`'s marker, and no look of this process has yet: it may have come
   * back empty while mcmux was down or could not see it, as the first look tells of others, and
   * decides no add or incr until a look can tell (hazard 2). Fenced as a precaution, as after a
   * reconnect (a marker from before lifts it, not a first sight), and fenced again by each look
   * that starts while it is still unread: a fence that ran out while it was unreachable is back
   * before it is usable again (a memcached driver reports no reconnect for its first
   * connection). Meanwhile a store of another upstream seen for the first time without a marker
   * is taken as one that lost it (markedElsewhere): this one may hold the marker.
   */
  private unread(u: HealthyUpstream, look: Look | undefined): void {
    if (look !== undefined && look.sights.every((s) => s.verdict !== 'unknown')) return;
    if (this.unjudged.get(u) === false) return;
    this.unjudged.set(u, true);
    u.fence(monotonicMs() + this.fenceMs);
  }

  private stillUnread(u: HealthyUpstream): void {
    if (this.unjudged.get(u) === true) this.unread(u, undefined);
  }

  /** Fences `u` or lifts its fence on what `look` found; `server`: the one pool server looked at. */
  private judge(u: HealthyUpstream, look: Look | undefined, server?: string, mayLift = true): Verdict {
    if (server !== undefined) return this.verdict(u, look, server, mayLift);
    this.unread(u, look);
    const verdict = this.verdict(u, look, undefined, mayLift);
    if (verdict !== 'unknown') this.unjudged.set(u, false);
    return verdict;
  }

  private verdict(u: HealthyUpstream, look: Look | undefined, server?: string, mayLift = true): Verdict {
    if (look === undefined) return 'unknown';
    this.noteRead(u, look);
    const cold = look.sights.map((s) => s.verdict);
    const firsts = look.targets.filter((_, i) => cold[i] === 'first');
    const until = this.inheritedFence(look.sights);
    if (look.sights.some((s) => s.rolledBack)) {
      // Not empty but stale: a read would serve what was deleted or overwritten since, and read
      // repair copy it back above; it may hold a lock released since, or lack one taken. Untrusted
      // as a whole, as after a journal overflow, and fenced as come back empty.
      this.fenceCold(u);
      this.fenceLog?.distrust(u);
      this.log.warn({ upstream: u.name, server }, 'upstream came back with older data than mcmux last wrote there: no reads from it until it is known clean');
      return 'cold';
    }
    if (cold.includes('cold') || (firsts.length > 0 && this.markedElsewhere(firsts, u))) {
      // For the whole lock-fence from now: a store of `u` lost its marker, which no earlier
      // process knew of. Not until the end of a fence an earlier process wrote into the marker of
      // another store of `u` (a pool server, a cluster master), seconds away maybe (review).
      // Those stores alone came back empty (a pool's other servers hold their keys: partlyEmpty).
      this.fenceCold(u, 0, look.targets.filter((_, i) => cold[i] === 'cold' || cold[i] === 'first'));
      // A durable store (sqlite, MySQL) does not lose its marker by a restart: the one found
      // gone is a file or table replaced, maybe by a backup (a session destroyed since is in
      // it). Read for no key written before, as after a rollback (review-durable finding 2). Not
      // one whose marker's life is over: it expired there (Sight.expired, review-h4 finding 6).
      if (look.targets.some((t, i) => cold[i] === 'cold' && t.durable === true && look.sights[i]?.expired !== true)) {
        this.fenceLog?.distrust(u);
        this.log.warn({ upstream: u.name }, 'a durable upstream lost the marker mcmux wrote there (replaced, or restored from a backup): no reads from it of what was written before, until it is known clean');
        return 'cold';
      }
      if (server === undefined) this.log.warn({ upstream: u.name, fenceMs: this.fenceMs }, 'upstream came back empty: it decides no add/cas/incr until the fence ends');
      else this.log.warn({ upstream: u.name, server, fenceMs: this.fenceMs }, 'pool server came back empty: the pool decides no add/cas/incr until the fence ends');
      return 'cold';
    }
    if (until > 0) {
      // An earlier mcmux fenced it, and the marker that says so is still there: it may lack a lock
      // taken before that fence began, but it kept what was written to it since (which this
      // process cannot know). Fenced until then, not as come back empty: when every upstream is
      // fenced, it decides before one this process saw come back empty (seed 7393 of 6001-7500
      // with MCMUX_FUZZ_RESTART=1: two upstreams fenced so by a marker, the third restarted empty
      // meanwhile, and the one that had lost a lock granted it again). Unless journal.log says that
      // fence began as the store came back empty (inherit): then it is known so here too, from
      // when it was, and still taken as one that may hold keys not on file.
      u.fence(until);
      this.voidUniques(u);
      this.inherit(u, look.sights);
      if (server === undefined) this.log.warn({ upstream: u.name, fenceMs: this.fenceMs }, 'upstream fenced by an earlier mcmux process: it decides no add/cas/incr until the fence ends');
      else this.log.warn({ upstream: u.name, server, fenceMs: this.fenceMs }, 'pool server fenced by an earlier mcmux process: the pool decides no add/cas/incr until the fence ends');
      return 'cold';
    }
    if (cold.includes('unknown')) return 'unknown';
    if (cold.includes('first')) return 'first';
    if (mayLift) this.liftIfKept(u, look.sights);
    return 'warm';
  }

  /**
   * `u` is fenced by an earlier process's marker: the keys that process (or one before it) saw a
   * client write reach `u` under that fence are known again, from journal.log, when the stores of
   * `u` that name a fence name the same one. Without them, with every upstream so fenced, the
   * first would decide for a key it lost, before one that was written it since (fuzz seed 9912 of
   * 9001-10500 with MCMUX_FUZZ_EXPIRY=1 MCMUX_FUZZ_SMALL_JOURNAL=1: cas NOT_FOUND for an
   * acknowledged set). A pool server that names none is no other fence: a fence a server's
   * reconnect began is written to that server only, and a server whose marker was kept keeps it
   * (fuzz seed 4369 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
   * MCMUX_FUZZ_RESTART=1, helper-123's triage: the pool neither knew the counter it was written
   * nor was known as come back empty, and an emptied store decided the incr: NOT_FOUND). A server
   * whose marker could not be read names nothing either way: it may have restarted empty since,
   * losing what that fence learnt there, so nothing is inherited (review-h24 finding 1: the pool
   * adopted a lock its unreadable server had lost, and decided an add on it: a lock granted twice).
   */
  private inherit(u: HealthyUpstream, sights: readonly Sight[]): void {
    const log = this.fenceLog;
    if (log === undefined) return;
    // A fence from before the store was seen empty, named by a marker write that timed out then
    // and landed after (review-h30 findings 2 and 3): what it learnt is gone (fencesVoided). The
    // fence begun by that emptying is the store's, as journal.log has it last: the keys learnt
    // since, and that the repair's flush emptied it (review-h32 finding 3: the next process took
    // the flushed cache for one fenced as a precaution, and answered a read with its miss). So for
    // each server of a pool, one of which may hold the late marker (review-h33 finding 5).
    const ids = sights.map((s) => (s.fenceId === 0 ? 0 : log.fenceVoid(u, s.fenceId) ? (log.latestFence(u) ?? -1) : s.fenceId));
    const id = ids.find((i) => i !== 0) ?? 0;
    if (id <= 0 || sights.some((s) => s.verdict === 'unknown') || ids.some((i) => i !== 0 && i !== id)) return;
    // Seen come back empty by this process since (its own look, or the repair's flush): what that
    // fence learnt was written before, and is gone with the rest. Fuzz seed 1593 with
    // MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1 (a server
    // of the pool restarted empty, the marker of the process before found again on the other, its
    // keys adopted again: add STORED of a key the pool had lost), and seed 4500 (this process's own
    // `fenced until`, found after the repair's flush had forgotten writing it, taken for an earlier
    // process's: replace NOT_STORED of an acknowledged session; fuzz-seed-4500.test.ts). Both
    // helper-126's triage.
    if (u.cameBackEmpty && !u.inheritedEmpty) return;
    for (const key of u.adoptFence(id, log.fenceKeys(u, id))) log.fenceLearnt(u, id, key);
    // That fence began when the store came back empty (journal.log): so it is known here too,
    // and since when, for the order in which fenced upstreams decide (fuzz seed 186930 with
    // MCMUX_FUZZ_RESTART=1: two stores came back empty in turn, in two processes before this one;
    // this one took both for fenced as a precaution, and the one emptied last decided a cas,
    // NOT_FOUND, of a counter the other held).
    const left = Math.min(log.emptiedUntil(u, id) - Date.now(), this.fenceMs);
    if (left <= 0) return;
    u.inheritEmpty(monotonicMs() + left);
    // Emptied by that process's repair, on the word that the other upstreams hold what it held:
    // its miss is no answer while one of them fails, here too (eject fuzz seed 11553 of
    // 10501-12000 with MCMUX_FUZZ_RESTART=1: the next process read a session as absent from the
    // flushed pool while the stores behind it failed).
    if (log.emptiedByRepair(u, id)) u.repairEmptied = true;
    // Emptied in part only (a server of the pool, a master of the cluster): the others hold their
    // keys, here too (review-h36 finding 5).
    if (log.emptiedPartly(u, id)) {
      u.partlyEmpty = true;
      // Which servers, journal.log does not say: partly empty for every key (partlyEmptyFor).
      u.emptiedStores = undefined;
    }
  }

  /**
   * This process's marker of generation `gen` may be found in `store` after a newer one was
   * acknowledged there (it may still land, or landed after it): no rollback when found (`late`,
   * by the store's identity; the last LATE_GENS of them).
   */
  private excuse(u: HealthyUpstream, store: Upstream, gen: number): void {
    const gens = this.late.get(storeKey(u, store)) ?? new Map<number, number | undefined>();
    gens.set(gen, undefined);
    if (gens.size > LATE_GENS) gens.delete(gens.keys().next().value as number);
    this.late.set(storeKey(u, store), gens);
  }

  /** Whether `store` (of `u`) lost the marker mcmux had written there ('unknown' when it did not answer). */
  private async checkStore(u: HealthyUpstream, store: Upstream): Promise<Sight> {
    let hit;
    // Taken before the read: a marker write acknowledged while it is out (another connection, a
    // pooled database) may not be in what it reads.
    const floor = Math.max(this.lastSet.get(store)?.gen ?? 0, this.floors.get(storeKey(u, store)) ?? 0);
    const settling = this.settling;
    try {
      // A pool places keys by hash: a marker per server needs a key that lands on that server,
      // so each server is asked directly, through its own driver.
      [hit] = await store.get([this.key]);
    } catch (err) {
      // health tracking sees the failures of real requests; the marker is best effort. A read the
      // store itself refused (a Redis ACL user limited to the sessions' keys, NOPERM) is said once,
      // as a refused write is: the marker write is never tried, and the client writes failing
      // there the same way were at debug only (review-h31 finding 6).
      if (err instanceof McmuxError && err.origin === ErrorCodes.UPSTREAM_REFUSED) this.refusesWrites(u, store, err, true);
      return { verdict: 'unknown', kept: false, fencedUntil: 0, fenceId: 0 };
    }
    const wrote = this.lastSet.get(store);
    // The read decides, whatever becomes of the rewrite (mark): a rewrite that fails may still
    // land (a timeout), and the marker it puts back must not pass for one the store kept. A store
    // this process has not written yet lost the marker an earlier one saw it acknowledge, unless
    // it was flushed since or the marker expired (journal.log: markerAcked, flushed).
    const verdict: Verdict = hit ? 'warm' : wrote !== undefined || (this.fenceLog?.markerUntil(recordOf(u, store)) ?? 0) > Date.now() ? 'cold' : 'first';
    if (hit && wrote === undefined) this.found.add(store);
    // Only a marker another process wrote tells of a fence this one does not know.
    const text = hit?.value.toString('latin1');
    const fencedMarker = text === undefined ? null : FENCED_UNTIL.exec(text);
    const fenced = wrote === undefined ? fencedMarker : null;
    // pid, generation and nonce: of a `fenced until` marker too, so that a copy holding one of
    // this process's is a rollback as any (review-h9 finding 4).
    const pidGen = text === undefined ? null : PID_GEN.exec(text);
    const marker = pidGen !== null ? pidGen.slice(1) : fencedMarker?.[2] !== undefined ? fencedMarker.slice(2) : null;
    const writer = marker === null ? undefined : `${marker[0]} ${marker[2] ?? ''}`;
    const gen = marker === null ? 0 : Number(marker[1]);
    const late = writer === this.self ? this.late.get(storeKey(u, store)) : undefined;
    const seenAt = late?.get(gen);
    const excused = late?.has(gen) === true && (seenAt === undefined || floor <= seenAt);
    if (late?.has(gen) === true && seenAt === undefined) late.set(gen, this.gen);
    // floor > 0: a marker of this process was acknowledged there (by this driver, or by the one a
    // reload retired).
    let rolledBack = writer === this.self && floor > 0 && gen < floor && !excused;
    if (writer !== undefined && writer !== this.self) {
      // floor, not wrote: a marker of this process acknowledged by the driver a reload retired
      // counts too (the rebuilt one has written none yet).
      let seen = this.earlier.get(storeKey(u, store));
      if (floor === 0 || settling) {
        if (seen === undefined) this.earlier.set(storeKey(u, store), (seen = new Map()));
        seen.set(writer, Math.max(seen.get(writer) ?? 0, gen));
      } else if (seen !== undefined && gen <= (seen.get(writer) ?? -1)) {
        rolledBack = true;
      }
    }
    return {
      verdict,
      kept: verdict === 'warm' && !rolledBack && (wrote === undefined || wrote.fence < u.fencesBegun),
      fencedUntil: fenced ? Number(fenced[1]) : 0,
      fenceId: fenced ? (hit?.flags ?? 0) : 0,
      rolledBack,
      expired: !hit && wrote !== undefined && Date.now() >= wrote.deadline,
    };
  }

  private retryMark(u: HealthyUpstream): void {
    if (this.timer === undefined || this.retries.has(u)) return;
    const t = setTimeout(() => {
      this.retries.delete(u);
      if (this.timer !== undefined) void this.check(u);
    }, RETRY_MS);
    t.unref();
    this.retries.set(u, t);
  }

  /**
   * The store refused the marker write itself (it answered: a Redis replica's READONLY, an ACL
   * user's NOPERM, a MySQL account without INSERT, 1142), or its read (`read`: an ACL user limited
   * to some keys): every client write there fails the same way while the upstream stays healthy
   * (it answers), each at debug only. Said once, until a marker write lands there again
   * (review-h25 finding 1: the durable copy never written, nothing logged).
   */
  private refusesWrites(u: HealthyUpstream, store: Upstream, err: McmuxError, read = false): void {
    if (this.refusing.has(store)) return;
    this.refusing.add(store);
    const said = read
      ? `upstream refuses mcmux's marker read: client requests likely fail there the same way while it stays healthy (it answers), and whether it came back empty cannot be told; ${refusalCause(err.message, 'an account limited to some keys or commands?')}`
      : `upstream refuses writes (it refused mcmux's marker): every write to it fails while it answers reads; ${refusalCause(err.message, 'a read-only replica, or an account without write permission?')}`;
    this.log.warn({ upstream: u.name, ...(store === u.inner ? {} : { server: store.name }), err: maskUrl(err.message) }, said);
  }

  /**
   * Writes the marker, once judged, with a new generation: `fenced until <ms>` while `u` is fenced
   * (an mcmux that restarts meanwhile keeps the fence), the pid alone otherwise. The fence's end is
   * written as a wall-clock time (what another process can read), at each write as the wall clock
   * says then (stepped since, the fence ends elsewhere now).
   */
  private async mark(u: HealthyUpstream, look: Look | undefined): Promise<void> {
    if (look === undefined) return;
    const at = monotonicMs();
    const wall = Date.now();
    const until = u.fenced ? u.coldUntil : 0;
    const wallUntil = until === 0 ? 0 : Math.ceil(wall + (until - at));
    const gen = ++this.gen;
    const value = `${until === 0 ? '' : `fenced until ${wallUntil} `}${process.pid} ${gen} ${this.nonce}`;
    const id = until === 0 ? 0 : u.fenceId;
    // Before the marker that names the fence: a process that inherits it knows it came back empty.
    if (until !== 0 && u.cameBackEmpty) this.fenceLog?.fenceEmptied(u, id, Math.ceil(wall + (u.emptyUntil - at)), u.repairEmptied, u.partlyEmpty);
    const partial = look.sights.some((s) => s.verdict === 'unknown');
    // Told before this mark began: what it writes passes that fence on (idsUnsaved).
    const unsaved = this.idsUnsaved.get(u);
    let landed = !partial;
    await Promise.all(
      look.targets.map(async (store, i) => {
        const sight = look.sights[i] as Sight;
        if (sight.verdict === 'unknown') return;
        // Fenced, and another store of `u` could not be read: one that kept its marker from before
        // the fence keeps it, so that a look that reads them all can still find every marker kept
        // and lift the fence (liftIfKept). Written over, it would speak for the time since only,
        // and a master of a Redis Cluster that restarted with its data (its node unreadable for
        // the look its reconnect starts) would fence the cluster for the whole lock-fence.
        if (partial && until !== 0 && sight.kept) return;
        // A `fenced until` this process wrote for the same fence is written again too, with a new
        // generation, as the pid marker is at every check: left as it was (until an hour passed, or
        // the wall clock stepped), a copy of the store taken during the fence and restored during
        // it held the marker last acknowledged there, and was never told from the store (review-h15
        // finding 1; since 0fcbc45 the fenced marker carries a generation, so it can be).
        this.writing.set(store, at);
        try {
          await store.store({ mode: 'set', key: this.key, value: Buffer.from(value), flags: id, deadline: wall + MARKER_TTL_MS, withCas: false });
          this.lastSet.set(store, { fence: u.fencesBegun, gen, deadline: wall + MARKER_TTL_MS });
          // Acknowledged after a newer one (a write of the driver a reload retired, slow, landing
          // after the rebuilt driver's): the store holds this older marker, which is no rollback
          // (review-h22 finding 4): excused as a late one, the floor kept.
          if ((this.floors.get(storeKey(u, store)) ?? 0) > gen) this.excuse(u, store, gen);
          else this.floors.set(storeKey(u, store), gen);
          if (recorded(u, store)) this.fenceLog?.markerAcked(recordOf(u, store), wall + MARKER_TTL_MS);
          this.refusing.delete(store);
        } catch (err) {
          landed = false;
          if (err instanceof McmuxError && err.code === ErrorCodes.UPSTREAM_REFUSED) this.refusesWrites(u, store, err);
          // Only a write that may still land, after those sent since (McmuxError.late: a timeout),
          // is excused when found: one failed unapplied (the sqlite driver's wait for a lock held
          // elsewhere, a rolled-back transaction) never lands (review-h4 finding 1).
          if (!(err instanceof McmuxError) || err.late) this.excuse(u, store, gen);
          // Written again soon (retryMark), not only by the next periodic check.
          this.retryMark(u);
        }
      }),
    );
    if (landed && unsaved !== undefined && this.idsUnsaved.get(u) === unsaved) {
      this.idsUnsaved.delete(u);
      this.fenceLog?.serverIdSeen(u, unsaved.id);
    }
  }
}

/**
 * The likely cause of a refusal, from its text, for the warning that says it: a full store (Redis
 * at maxmemory with noeviction: OOM; memcached -M: out of memory) is not sent to the replication
 * and the ACLs (review-h37 finding 5). `otherwise`: the guess when the text tells nothing.
 */
export function refusalCause(message: string, otherwise: string): string {
  if (/\bOOM\b|out of memory|maxmemory/i.test(message)) return 'the store is full (Redis maxmemory with noeviction, memcached -M): free memory there, or let it evict';
  if (/\bREADONLY\b|read[- ]only (replica|slave)|--read-only|super_read_only/i.test(message)) return 'a read-only replica: expected the master, or an address that follows it';
  if (/NOPERM|no permissions|can't run this command|command denied|access denied/i.test(message)) return 'an account without the permission it needs (its ACL or grants)';
  return otherwise;
}
