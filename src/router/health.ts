/**
 * Health: wraps an upstream with an explicit state, so that a dead store is skipped at once
 * instead of costing every request a timeout (twemproxy's `server_failure()`, ioredis' status).
 *
 *   healthy ──failure──► suspect ──N consecutive failures──► down ──timer──► probing
 *      ▲                    │ success                          ▲              │ probe ok
 *      └────────────────────┴──────────────────────────────────┴─ probe fails ┘──► healthy
 *
 * Every change goes through `setState`, which counts it and tells the listener (logs, metrics,
 * the repair journal's replay). While down or probing, requests fail at once with
 * MCMUX_UPSTREAM_DOWN; the policies treat that like any failure (fall through, journal the miss).
 */

import { createHash, randomBytes } from 'node:crypto';
import { now as clockNow, monotonicMs } from '../clock';
import type { ArithOp, Hit } from '../command/command';
import { ErrorCodes, McmuxError, isTimeout } from '../errors';
import { type ArithResult, type StoreRequest, type StoreResult, type TouchResult, type Upstream, type UpstreamStats, newUpstreamStats } from '../upstream/upstream';

export type HealthState = 'healthy' | 'suspect' | 'down' | 'probing';

export interface HealthOptions {
  /** Consecutive failures (errors or timeouts) that make an upstream down. */
  readonly downAfter: number;
  /** First probe delay after going down, ms; doubles up to `probeMaxMs`. */
  readonly probeMinMs: number;
  readonly probeMaxMs: number;
  /** Keys it remembers as written while fenced (journal-max-keys); default FENCE_KEYS_MAX. */
  readonly fenceKeysMax?: number;
}

export const DEFAULT_HEALTH: HealthOptions = { downAfter: 3, probeMinMs: 200, probeMaxMs: 5000 };

export type StateListener = (u: HealthyUpstream, from: HealthState, to: HealthState, reason: string) => void;

/** Told of every request's outcome and latency (metrics hook in here; nothing else). */
export type RequestObserver = (u: HealthyUpstream, seconds: number, outcome: 'ok' | 'error' | 'timeout' | 'skipped') => void;

const noObserver: RequestObserver = () => {};

/** Failures that say something about the store, not about mcmux's own queue or shutdown. */
function countsAsFailure(error: unknown): boolean {
  // UPSTREAM_DOWN / _PARTIAL from inside mean a pool refusing or failing the keys of one server
  // of its own: that server's health counts it; the pool as a whole is fine. UPSTREAM_REFUSED is
  // the store's own answer to one request (SERVER_ERROR object too large or out of memory for one
  // item, a lock wait on one row): it is up. Counted, three refused items took it down for every
  // key (a lone upstream failed every write) until a probe, which it answers, took it back.
  return !(
    error instanceof McmuxError &&
    (error.code === ErrorCodes.UPSTREAM_BUSY ||
      error.code === ErrorCodes.UPSTREAM_REFUSED ||
      error.code === ErrorCodes.UPSTREAM_CLOSED ||
      error.code === ErrorCodes.UPSTREAM_DOWN ||
      error.code === ErrorCodes.UPSTREAM_PARTIAL)
  );
}

/** The servers inside an upstream that has several (a memcached pool), else none. */
export function membersOf(u: Upstream): readonly HealthyUpstream[] {
  const inner = u instanceof HealthyUpstream ? u.inner : u;
  const m = (inner as { members?: () => readonly HealthyUpstream[] }).members;
  return typeof m === 'function' ? m.call(inner) : [];
}

/**
 * The names of the servers of `u` (a memcached pool) out of its ring (MemcachedPool.outOfRing:
 * ejected, or not back since a pool before it ejected them), else none. They hold no key of the
 * pool until they return, and their return moves the ring.
 */
export function outOfRing(u: Upstream): readonly string[] {
  const inner = u instanceof HealthyUpstream ? u.inner : u;
  return (inner as { outOfRing?: () => readonly string[] }).outOfRing?.() ?? [];
}

/**
 * Hazard 6, CAS across stores: every store numbers its uniques on its own (memcached from 1, a
 * counter in Redis and SQLite, UUID_SHORT in MySQL), so a unique one store handed out can be a
 * valid unique in another: two memcached that missed a different number of writes are a step
 * apart, and after a failover `cas k ... U` would overwrite a newer value in the next store.
 * So each store's uniques are sealed on the way to the client by a bijection of the low 63 bits
 * keyed by the store's identity (and how often it came back empty), x -> ((x ^ k) * m) mod 2^63
 * with m odd, and unsealed on the way back to the store that decides. A unique sealed by another
 * store (or by this one before it restarted) unseals to a scrambled number, and the cas fails
 * safe: EXISTS or NOT_FOUND. A multiplication, not a plain XOR: a client that takes "unique - 1"
 * as a wrong unique (memccapable does) must not land on the item's next unique, which XOR's
 * low bits would. The top bit is left alone: clients (PHP ints, Java longs) keep uniques in
 * signed 64 bits. The seal is the same in every mcmux process in front of the same store, so a
 * gets through one and a cas through another still work.
 */
export class CasSeal {
  private readonly k: bigint;
  private readonly m: bigint;
  private readonly inverse: bigint;

  constructor(storeId: string, epoch: string) {
    const digest = createHash('sha256').update(`${storeId}\0${epoch}`).digest();
    this.k = digest.readBigUInt64BE(0) & LOW63;
    this.m = (digest.readBigUInt64BE(8) & LOW63) | 1n;
    // m's inverse mod 2^63 by Newton's iteration (each step doubles the correct low bits).
    let inv = this.m;
    for (let i = 0; i < 6; i++) inv = (inv * (2n - this.m * inv)) & LOW63;
    this.inverse = inv;
  }

  seal(x: bigint): bigint {
    return (x & TOP_BIT) | ((((x & LOW63) ^ this.k) * this.m) & LOW63);
  }

  unseal(y: bigint): bigint {
    return (y & TOP_BIT) | ((((y & LOW63) * this.inverse) & LOW63) ^ this.k);
  }
}

const LOW63 = 0x7fffffffffffffffn;
const TOP_BIT = 0x8000000000000000n;

function sealHits(hits: Array<Hit | undefined>, seal: CasSeal): Array<Hit | undefined> {
  return hits.map((h) => (h === undefined ? h : { value: h.value, flags: h.flags, cas: seal.seal(h.cas), deadline: h.deadline }));
}

function sealStored(r: StoreResult, seal: CasSeal): StoreResult {
  return r.cas === undefined ? r : { status: r.status, cas: seal.seal(r.cas) };
}

function sealTouched(r: TouchResult, seal: CasSeal): TouchResult {
  return typeof r === 'string' ? r : { flags: r.flags, cas: seal.seal(r.cas) };
}

function sealArith(r: ArithResult, seal: CasSeal): ArithResult {
  return r.status === 'OK' && r.cas !== undefined ? { status: 'OK', value: r.value, cas: seal.seal(r.cas) } : r;
}

/**
 * Keys a fenced upstream remembers as written since its fence began (about 100 bytes each), unless
 * HealthOptions.fenceKeysMax says otherwise (app.ts: journal-max-keys, whose default this is).
 */
export const FENCE_KEYS_MAX = 100_000;

export class HealthyUpstream implements Upstream {
  private current: HealthState = 'healthy';
  private failures = 0;
  private probeDelay: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** State changes so far, by target state (for stats and metrics). */
  readonly transitions: Record<HealthState, number> = { healthy: 0, suspect: 0, down: 0, probing: 0 };
  observer: RequestObserver = noObserver;
  /**
   * Until this time the upstream is known to have come back empty (a fresh memory store, a
   * restarted memcached): it must not decide conditional commands, or a lock held elsewhere
   * would be granted again (hazard 2). Reads and writes use it as usual. In monotonicMs(), as
   * every time below: a step of the system clock neither ends a fence nor stretches it.
   */
  coldUntil = 0;
  /**
   * Until this time it is known to have come back empty (its marker was gone, or an in-process
   * store as mcmux starts); a fence without it is a precaution (a reconnect, a reload) and the
   * store may well hold what the others lost (authority-order.ts). The cold detector lifts a
   * precautionary fence only while this is past. A fence inherited from an earlier process's
   * marker sets it too when journal.log says that process saw the store come back empty under it
   * (inheritEmpty): the order in which stores came back empty outlives mcmux.
   */
  emptyUntil = 0;
  /**
   * emptyUntil was inherited (inheritEmpty), not seen: what the store holds beyond the keys on
   * file is taken as unknown, as for a fence inherited as a precaution (authority-order.ts
   * onlyLearnt). Cleared when the fence ends, and when this process finds the store empty
   * (cold-detector.ts knownEmpty); not by a reconnect (emptied: a precaution).
   */
  inheritedEmpty = false;
  /**
   * Came back empty in part: a store of it (a server of a pool) lost its marker in this fence, and
   * another it reads from did not, so it still holds every key placed there: not known to hold
   * nothing but the keys written to it since (authority-order.ts onlyLearnt), as a pool whose ring
   * moved (inheritedEmpty). Set by the cold detector (knownEmpty); cleared when a new fence begins,
   * and when it ends.
   */
  partlyEmpty = false;
  /**
   * The stores of a pool (its servers' drivers) seen come back empty in this fence, when partlyEmpty
   * was so judged by this process (cold-detector.ts storesEmptied): the pool holds nothing more of
   * a key placed on one of them than a store that came back empty whole (partlyEmptyFor). Undefined
   * when not known (inherited from journal.log, which does not say which): partlyEmpty then holds
   * for every key. Cleared with partlyEmpty.
   */
  emptiedStores: ReadonlySet<Upstream> | undefined = undefined;
  /**
   * The repair's flush emptied it (an overflowed cache) in this fence: mcmux's own doing, on the
   * word that the other upstreams hold what it held. While one of them fails, its miss is no
   * answer (failover-read.ts absorb). Cleared when a new fence begins, and when it ends. A next
   * process that inherits the fence inherits this too (journal.log's B line, cold-detector.ts
   * inherit).
   */
  repairEmptied = false;
  /**
   * When it last came back (a probe succeeded after it was down), in ms; 0 if never. A server that
   * was paused applies what waited in its old connections as it resumes: the repair of a key
   * whose request timed out waits a while after this too (repair.ts, LATE_SETTLE_MS).
   */
  backAt = 0;
  /**
   * Keys a client write (a set or a delete, a copy included) reached while fenced: for these it
   * holds the current state again, and may decide (authority-order.ts). Bounded: beyond
   * fenceKeysMax it stops learning, and decides only for the keys it already knows.
   */
  private readonly fenceKeys = new Set<string>();
  private get fenceKeysMax(): number {
    return this.options.fenceKeysMax ?? FENCE_KEYS_MAX;
  }
  /**
   * Names what it has learnt in fenceKeys since it last started afresh (a new fence, a restart,
   * a flush): written with the `fenced until` marker (as its flags) and with each key on
   * journal.log, so that a later mcmux that inherits the fence from the marker knows those keys
   * again (cold-detector.ts inherit). Random, never 0.
   */
  fenceId = newFenceId();
  /** See CasSeal. An in-process store is born empty with each mcmux process: its own epoch. */
  private casEpoch = 0;
  private readonly casBase: string;
  private casSeal: CasSeal;

  private opts: HealthOptions;

  constructor(
    readonly inner: Upstream,
    options: HealthOptions,
    private readonly onChange: StateListener,
    /** Which store this is, whatever the tuning options (the repair journal's key). */
    readonly storeId: string = inner.name,
  ) {
    this.opts = options;
    this.probeDelay = options.probeMinMs;
    this.casBase = inner.scheme === 'memory' ? randomBytes(8).toString('hex') : '';
    this.casSeal = new CasSeal(storeId, this.casBase);
  }

  get options(): HealthOptions {
    return this.opts;
  }

  /**
   * New tuning (a reload; a pool's servers, built with the defaults before the config is known):
   * the delay of the next probe is kept within the new probe-interval .. probe-interval-max.
   */
  set options(o: HealthOptions) {
    this.opts = o;
    // Up: the next outage starts at probe-interval. Down: its back-off goes on, within the new bounds.
    const up = this.current === 'healthy' || this.current === 'suspect';
    this.probeDelay = up ? o.probeMinMs : Math.min(Math.max(this.probeDelay, o.probeMinMs), o.probeMaxMs);
  }

  /**
   * How many fences began so far (one extended is the same fence): the cold detector tells a
   * marker written before the current fence from one it wrote since.
   */
  fencesBegun = 0;

  /** Fenced until `until` (monotonic ms), at least; what it learnt in an earlier fence is forgotten. */
  fence(until: number): void {
    if (!this.fenced) {
      this.forgetFenceKeys();
      this.fencesBegun++;
      this.inheritedEmpty = false;
      this.partlyEmpty = false;
      this.emptiedStores = undefined;
      this.repairEmptied = false;
    }
    this.coldUntil = Math.max(this.coldUntil, until);
  }

  /**
   * Stands for `prev`, the same store reached with other options (a reload rebuilt it): what is
   * known of the store goes on. A fence that began when it came back empty is not to end with
   * the connections (every upstream fenced, a precaution decides before it: a lock granted twice).
   */
  takeOver(prev: HealthyUpstream): void {
    this.coldUntil = prev.coldUntil;
    this.emptyUntil = prev.emptyUntil;
    this.inheritedEmpty = prev.inheritedEmpty;
    this.partlyEmpty = prev.partlyEmpty;
    this.emptiedStores = prev.emptiedStores;
    // Emptied by the repair's flush in this fence: its misses stay no answer while another
    // upstream fails (failover-read.ts absorb; review-h12 finding 1).
    this.repairEmptied = prev.repairEmptied;
    this.backAt = prev.backAt;
    this.fencesBegun = prev.fencesBegun;
    this.fenceId = prev.fenceId;
    for (const key of prev.fenceKeys) this.fenceKeys.add(key);
  }

  /**
   * Stands for `prev`, the same server or store a reload rebuilt, in health too: one that is down
   * (or suspect) stays so, and requests keep failing over at once instead of each waiting out a
   * timeout on a store that does not answer until `downAfter` of them made it down again. Its
   * first probe goes out after `probeMinMs` (the new options may be what it needed). The state
   * changes and requests so far go on counting (stats, metrics: a counter that never goes back).
   */
  inheritHealth(prev: HealthyUpstream): void {
    if (prev.current !== 'healthy' && !this.closed) {
      this.failures = prev.failures;
      const to: HealthState = prev.current === 'suspect' ? 'suspect' : 'down';
      this.setState(to, `rebuilt by a reload while ${prev.current}`);
      if (to === 'down') {
        this.probeDelay = this.options.probeMinMs;
        this.scheduleProbe();
      }
    }
    Object.assign(this.transitions, prev.transitions);
    // So do its request counts (`stats upstreams`, as the metrics do by name): those that ended.
    // One still in flight on the old connections ends there, uncounted here.
    const s = prev.stats;
    this.stats.requests += s.latencyCount + s.errors;
    this.stats.errors += s.errors;
    this.stats.timeouts += s.timeouts;
    this.stats.latencyUsSum += s.latencyUsSum;
    this.stats.latencyCount += s.latencyCount;
  }

  unfence(): void {
    this.coldUntil = 0;
    this.emptyUntil = 0;
    this.inheritedEmpty = false;
    this.partlyEmpty = false;
    this.emptiedStores = undefined;
    this.repairEmptied = false;
    this.forgetFenceKeys();
  }

  private forgetFenceKeys(): void {
    this.fenceKeys.clear();
    this.fenceId = newFenceId();
  }

  /**
   * Fenced by an earlier process's marker, whose fence began when that process (or one before it)
   * saw the store come back empty, known so until `until` (monotonic ms; journal.log,
   * FenceLog.emptiedUntil): known to have come back empty here too, so that with every upstream
   * fenced the one that came back empty first decides first (authority-order.ts), whichever
   * process saw it.
   */
  inheritEmpty(until: number): void {
    if (!this.fenced || until <= monotonicMs()) return;
    if (!this.cameBackEmpty) this.inheritedEmpty = true;
    this.emptyUntil = Math.max(this.emptyUntil, until);
  }

  /**
   * Fenced, and it stopped learning (fenceKeysMax): it may hold the current state of keys it does
   * not know, so it is no longer known to hold nothing but the keys it learnt.
   */
  get learntAll(): boolean {
    return this.fenced && this.fenceKeys.size >= this.fenceKeysMax;
  }

  /**
   * A client's set or delete of `key` reached it: while fenced, it holds that key's state. True
   * when it learnt the key just now (noteWritten puts it on journal.log).
   */
  written(key: string): boolean {
    if (this.coldUntil === 0 || !this.fenced || this.fenceKeys.size >= this.fenceKeysMax || this.fenceKeys.has(key)) return false;
    this.fenceKeys.add(key);
    return true;
  }

  /**
   * Fenced by an earlier mcmux process whose marker names `id`: what that process learnt under
   * it (`keys`, from journal.log) is known again, beside what this one learnt since its own fence
   * began, and what it learns from now on goes under `id`. Returns the keys this process had
   * learnt, for the journal to put under `id` too.
   */
  adoptFence(id: number, keys: Iterable<string>): string[] {
    if (!this.fenced) return [];
    const mine = [...this.fenceKeys];
    this.fenceId = id;
    for (const key of keys) {
      if (this.fenceKeys.size >= this.fenceKeysMax) break;
      this.fenceKeys.add(key);
    }
    return mine;
  }

  /** The keys it learnt in this fence so far. */
  learntKeys(): string[] {
    return [...this.fenceKeys];
  }

  /**
   * Keys forgotten at a reconnect that turned out not to be a restart (the marker written before
   * it is still there): known again. Returns those it learnt anew, for the journal.
   */
  relearn(keys: Iterable<string>): string[] {
    if (!this.fenced) return [];
    const added: string[] = [];
    for (const key of keys) {
      if (this.fenceKeys.size >= this.fenceKeysMax) break;
      if (this.fenceKeys.has(key)) continue;
      this.fenceKeys.add(key);
      added.push(key);
    }
    return added;
  }

  /** Whether it may decide for `key`: not fenced, or written since the fence began. */
  knows(key: string): boolean {
    return !this.fenced || this.fenceKeys.has(key);
  }

  /** It is empty now (a flush, a restart): the keys written to it before are not held any more. */
  emptied(): void {
    this.forgetFenceKeys();
  }

  /**
   * The uniques handed out so far are to name no item of the store any more: it came back empty
   * (its counter started again), or a flush_all emptied it (a restart just before may have gone
   * unseen: the marker check that would have found it gone finds nothing to compare after a flush).
   */
  voidUniques(): void {
    this.casSeal = new CasSeal(this.storeId, `${this.casBase}/${++this.casEpoch}`);
  }

  /** How often its uniques were voided (journal.log keeps it: ColdDetector.voided). */
  get uniquesEpoch(): number {
    return this.casEpoch;
  }

  /**
   * Seals as the mcmux process before this one last did (`epoch`, from journal.log): a unique it
   * voided stays void (the store may have restarted, numbering its items from 1 again), one it
   * handed out since still works. Called once, before any void of this process.
   */
  resumeUniques(epoch: number): void {
    if (epoch <= this.casEpoch) return;
    this.casEpoch = epoch;
    this.casSeal = new CasSeal(this.storeId, `${this.casBase}/${epoch}`);
  }

  get name(): string {
    return this.inner.name;
  }
  get scheme(): string {
    return this.inner.scheme;
  }
  get timeoutMs(): number {
    return this.inner.timeoutMs;
  }
  /**
   * Client-driven requests only (the cold detector's marker checks go to `inner` directly), so
   * `stats` and the metrics count the same thing.
   */
  readonly stats: UpstreamStats = newUpstreamStats();
  get state(): HealthState {
    return this.current;
  }
  get fenced(): boolean {
    // Never fenced, or unfenced (the usual case, asked once or more per request): no clock read.
    return this.coldUntil !== 0 && monotonicMs() < this.coldUntil;
  }
  /** Fenced because it is known to have come back empty (not only as a precaution). */
  get cameBackEmpty(): boolean {
    return this.fenced && monotonicMs() < this.emptyUntil;
  }

  /** True when requests go to the store (healthy or suspect). */
  get usable(): boolean {
    return this.current === 'healthy' || this.current === 'suspect';
  }

  private setState(to: HealthState, reason: string): void {
    const from = this.current;
    if (from === to) return;
    this.current = to;
    this.transitions[to]++;
    this.onChange(this, from, to, reason);
  }

  private guard<R>(run: () => Promise<R>, seal?: (r: R, s: CasSeal) => R): Promise<R> {
    if (!this.usable) {
      this.observer(this, 0, 'skipped');
      return Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_DOWN, `${this.name} is ${this.current}`));
    }
    const t0 = clockNow();
    this.stats.requests++;
    return run().then(
      (r) => {
        const seconds = (clockNow() - t0) / 1000;
        this.stats.latencyUsSum += seconds * 1e6;
        this.stats.latencyCount++;
        this.observer(this, seconds, 'ok');
        this.failures = 0;
        if (this.current === 'suspect') this.setState('healthy', 'request succeeded');
        return seal === undefined ? r : seal(r, this.casSeal);
      },
      (error: unknown) => {
        const timedOut = isTimeout(error);
        this.stats.errors++;
        if (timedOut) this.stats.timeouts++;
        this.observer(this, (clockNow() - t0) / 1000, timedOut ? 'timeout' : 'error');
        if (countsAsFailure(error)) this.fail(error);
        // A pool's partial read: the hits it carries are handed out as this upstream's.
        if (seal !== undefined && error instanceof McmuxError && error.partial !== undefined) {
          error.partial = { hits: seal(error.partial.hits as R, this.casSeal) as Array<Hit | undefined>, failed: error.partial.failed };
        }
        throw error;
      },
    );
  }

  private fail(error: unknown): void {
    if (!this.usable) return;
    this.failures++;
    const why = error instanceof Error ? error.message : String(error);
    if (this.failures >= this.options.downAfter) {
      this.setState('down', `${this.failures} consecutive failures, last: ${why}`);
      this.scheduleProbe();
    } else {
      this.setState('suspect', why);
    }
  }

  private scheduleProbe(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.probeNow();
    }, this.probeDelay);
    this.timer.unref();
    this.probeDelay = Math.min(this.probeDelay * 2, this.options.probeMaxMs);
  }

  private async probeNow(): Promise<void> {
    if (this.closed || this.current !== 'down') return;
    this.setState('probing', 'probe sent');
    try {
      await this.inner.probe();
    } catch (error) {
      if (this.closed) return;
      this.setState('down', `probe failed: ${error instanceof Error ? error.message : String(error)}`);
      this.scheduleProbe();
      return;
    }
    if (this.closed) return;
    this.failures = 0;
    this.probeDelay = this.options.probeMinMs;
    this.backAt = monotonicMs();
    this.setState('healthy', 'probe succeeded');
  }

  get(keys: readonly string[], touch?: number, valueOnly?: boolean) {
    // A value-only read hands out no unique (it may not even have fetched one).
    return this.guard(() => this.inner.get(keys, touch, valueOnly), valueOnly ? undefined : sealHits);
  }
  store(req: StoreRequest) {
    const sent = req.mode === 'cas' && req.cas !== undefined ? { ...req, cas: this.casSeal.unseal(req.cas) } : req;
    return this.guard(() => this.inner.store(sent), sealStored);
  }
  delete(key: string) {
    return this.guard(() => this.inner.delete(key));
  }
  touch(key: string, deadline: number, withItem?: boolean) {
    // The unique a touch answers is handed out as a gets's is: sealed the same way.
    return this.guard(() => this.inner.touch(key, deadline, withItem), withItem ? sealTouched : undefined);
  }
  arith(op: ArithOp, key: string, delta: bigint) {
    return this.guard(() => this.inner.arith(op, key, delta), sealArith);
  }
  flush() {
    return this.guard(() => this.inner.flush());
  }
  /** The repair's flush: a memcached pool's servers in its ring (MemcachedPool.flushRing), any other store's flush. */
  flushRing() {
    const inner = this.inner as Upstream & { flushRing?: () => Promise<void> };
    return this.guard(() => (inner.flushRing === undefined ? inner.flush() : inner.flushRing()));
  }
  probe() {
    return this.inner.probe();
  }
  close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    return this.inner.close();
  }
}

/** Whether requests go to `u` now; an upstream without health tracking always takes them. */
export function isUsable(u: Upstream): boolean {
  return !(u instanceof HealthyUpstream) || u.usable;
}

/**
 * When `u` last came back after being down (monotonic ms), or one server of it (a pool's servers
 * come back on their own, the pool never going down); 0 if never, or without health tracking.
 */
export function cameBackAt(u: Upstream): number {
  if (!(u instanceof HealthyUpstream)) return 0;
  let at = u.backAt;
  for (const m of membersOf(u)) at = Math.max(at, m.backAt);
  return at;
}

/** Whether `u` is fenced from deciding conditional commands (came back empty). */
export function isFenced(u: Upstream): boolean {
  return u instanceof HealthyUpstream && u.fenced;
}

/** Whether `u` is fenced because it is known to have come back empty (see HealthyUpstream.emptyUntil). */
export function cameBackEmpty(u: Upstream): boolean {
  return u instanceof HealthyUpstream && u.cameBackEmpty;
}

/** Whether `u` came back empty by the repair's flush (HealthyUpstream.repairEmptied), in this fence. */
export function repairEmptied(u: Upstream): boolean {
  return u instanceof HealthyUpstream && u.cameBackEmpty && u.repairEmptied;
}

/**
 * A client's flush_all emptied every upstream: what the repair's flush of `u` left to the others
 * is gone from them too, and its miss is an answer again (repairEmptied; review-h12 finding 2).
 */
export function flushedWithAll(u: Upstream): void {
  if (u instanceof HealthyUpstream) u.repairEmptied = false;
}

/** Until when `u` is known to have come back empty (monotonic ms; 0 if not): a later end, a later emptying. */
export function emptyUntil(u: Upstream): number {
  return u instanceof HealthyUpstream ? u.emptyUntil : 0;
}

/** Whether `u` stopped learning the keys written to it since its fence began (HealthyUpstream.learntAll). */
export function stoppedLearning(u: Upstream): boolean {
  return u instanceof HealthyUpstream && u.learntAll;
}

/**
 * Until when `u` is fenced (monotonic ms; 0 if never): each fence or extension of one runs a whole
 * lock-fence from the event that set it (a reconnect, a look that could not read the marker, a
 * reload), so a later end, a later moment at which it may have lost what it held.
 */
export function fencedUntil(u: Upstream): number {
  return u instanceof HealthyUpstream ? u.coldUntil : 0;
}

/**
 * Whether `u` came back empty and holds nothing but the keys it learnt since (a set or delete of
 * them reached it): not when it stopped learning (HealthyUpstream.learntAll), nor when it came
 * back empty in part only (HealthyUpstream.partlyEmpty: a pool one server of which lost its marker).
 */
export function onlyLearnt(u: Upstream): boolean {
  return u instanceof HealthyUpstream && u.cameBackEmpty && !u.learntAll && !u.inheritedEmpty && !u.partlyEmpty;
}

/**
 * Whether `u` came back empty in part only as far as `key` goes (partlyEmpty): not when the server
 * of the pool `key` is placed on is one this process saw come back empty in this fence
 * (HealthyUpstream.emptiedStores): the others hold their keys, not that one's, so for it the pool
 * holds no more than a store that came back empty whole (fuzz seed 311928 with
 * MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1: every
 * upstream fenced as come back empty, the pool, taken as one that may hold what the other lost,
 * decided an incr on the server that had lost the counter: NOT_FOUND; fuzz-seed-311928.test.ts).
 * Where the key goes is not known (a Redis Cluster), nor which servers (a fence inherited from
 * journal.log): partlyEmpty as for any key.
 */
export function partlyEmptyFor(u: Upstream, key: string): boolean {
  if (!(u instanceof HealthyUpstream) || !u.partlyEmpty) return false;
  const emptied = u.emptiedStores;
  const serverFor = (u.inner as { serverFor?: (key: string) => HealthyUpstream | undefined }).serverFor;
  if (emptied === undefined || typeof serverFor !== 'function') return true;
  const server = serverFor.call(u.inner, key);
  return server === undefined || !emptied.has(server.inner);
}

/** onlyLearnt, as far as `key` goes (partlyEmptyFor). */
export function onlyLearntFor(u: Upstream, key: string): boolean {
  return u instanceof HealthyUpstream && u.cameBackEmpty && !u.learntAll && !u.inheritedEmpty && !partlyEmptyFor(u, key);
}

/** Whether `u`, fenced or not, holds the current state of `key` as far as mcmux knows. */
export function knowsKey(u: Upstream, key: string): boolean {
  return !(u instanceof HealthyUpstream) || u.knows(key);
}

/**
 * What the cold detector keeps for the next mcmux process (journal.log): the keys a fenced
 * upstream learnt, and how often each store's uniques were voided.
 */
export interface FenceLog {
  fenceLearnt(u: Upstream, id: number, key: string): void;
  fenceKeys(u: Upstream, id: number): Iterable<string>;
  /** `u` is known to have come back empty under fence `id`, until `wallUntil` (epoch ms); `repair`: emptied by the repair's flush. */
  fenceEmptied(u: Upstream, id: number, wallUntil: number, repair?: boolean, partly?: boolean): void;
  /** What fenceEmptied kept for `u`'s fence `id` (epoch ms; 0: none), by this process or one before it. */
  emptiedUntil(u: Upstream, id: number): number;
  /** Whether fenceEmptied kept, for `u`'s fence `id`, that the repair's flush emptied it. */
  emptiedByRepair(u: Upstream, id: number): boolean;
  /** Whether fenceEmptied kept, for `u`'s fence `id`, that it came back empty in part only. */
  emptiedPartly(u: Upstream, id: number): boolean;
  /** `u` was seen empty, under its new fence `keep`: every earlier fence of it is void (fenceVoid), what it learnt gone. */
  fencesVoided(u: Upstream, keep: number): void;
  /** Whether `u`'s fence `id` was voided (fencesVoided), by this process or one before it. */
  fenceVoid(u: Upstream, id: number): boolean;
  /** The fence of `u` recorded last (learnt keys or emptied), not voided; undefined if none. */
  latestFence(u: Upstream): number | undefined;
  uniquesVoided(u: Upstream, epoch: number): void;
  /**
   * `u` holds older data than mcmux wrote there, or its keys moved (a pool's ring): trusted for no
   * key until known clean; with `chain`, not flushed while it may hold a key's only copy there
   * (`stayed`: the keys whose place in it did not move, the freshest copies); with `unmoved`, still
   * read for the keys it says did not move (a pool's ring, since the move that distrusted it).
   */
  distrust(u: Upstream, chain?: readonly Upstream[], stayed?: (key: string) => boolean, unmoved?: (key: string) => boolean): void;
  /** `store` acknowledged this host's marker, which lives there until `wallUntil` (epoch ms). */
  markerAcked(store: Upstream, wallUntil: number): void;
  /** `store` was flushed: the marker it acknowledged before is gone with the rest. */
  markerGone(store: Upstream): void;
  /** Until when (epoch ms) the last marker `store` acknowledged lives, as this process or one before it saw (0: none). */
  markerUntil(store: Upstream): number;
  /** `u` named the history of the server at its address `id` (Upstream.onServerId). */
  serverIdSeen(u: Upstream, id: string): void;
  /** The id `u` last named (serverIdSeen), by this process or one before it; undefined: none. */
  serverIdOf(u: Upstream): string | undefined;
  /** `u`'s ring moved (a pool with eject): `whole`, every server of it is in the ring now. */
  ringMoved(u: Upstream, whole: boolean): void;
  /** Whether `u`'s ring was not whole when last told, by this process or the one before. */
  ringBroken(u: Upstream): boolean;
}

/** Tells a fenced upstream that a client's set or delete of `key` reached it, and `log` what it learnt. */
export function noteWritten(log: FenceLog, u: Upstream, key: string): void {
  if (u instanceof HealthyUpstream && u.coldUntil !== 0 && u.written(key)) log.fenceLearnt(u, u.fenceId, key);
}

function newFenceId(): number {
  return randomBytes(4).readUInt32BE(0) || 1;
}
