/**
 * Notices an upstream that came back empty — a memcached or a Redis without persistence that
 * restarted, a store someone flushed — by a marker key mcmux keeps in every upstream. When the
 * marker is gone, the upstream is fenced for `lock-fence` ms: it must not decide `add`/`incr`,
 * or a session lock held in the other upstreams would be granted a second time (hazard 2).
 * Reads need no fence: a miss there falls through and is repaired. The cas uniques it handed out
 * before are void from then on (HealthyUpstream.restartedEmpty): its counter started again.
 */

import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Upstream } from '../upstream/upstream';
import { type HealthyUpstream, isUsable, membersOf } from './health';

const CHECK_MS = 2000;

/** cold: our marker is gone; warm: it is there; first: none was written yet (no evidence either way). */
type Verdict = 'cold' | 'warm' | 'first' | 'unknown';
const REFRESH_MS = 3600_000;
const MARKER_TTL_MS = 24 * 3600_000;

export class ColdDetector {
  /** One key per host, so restarts of mcmux do not leave a trail of markers behind. */
  readonly key = `mcmux.sentinel.${hostname().replace(/[^\x21-\x7e]/g, '_').slice(0, 200)}`;
  private readonly lastSet = new Map<Upstream, number>();
  /** Until when each upstream is fenced because its marker was found missing (not a precaution). */
  private readonly coldUntil = new WeakMap<HealthyUpstream, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly upstreams: () => readonly HealthyUpstream[],
    public fenceMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.checkAll(), CHECK_MS);
    this.timer.unref();
    void this.checkAll();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  checkAll(): Promise<void> {
    return Promise.all(this.upstreams().map((u) => this.check(u))).then(() => undefined);
  }

  /**
   * `u` (or a server of it) reconnected after losing a connection: it may have restarted empty
   * without a single request failing. Fence it at once, then look for the marker: if it is still
   * there, lift the fence. Conditional commands are decided elsewhere meanwhile.
   */
  reconnected(u: HealthyUpstream): void {
    u.fence(Date.now() + this.fenceMs);
    void this.check(u); // a warm answer lifts this fence
  }

  /**
   * A fence set as a precaution (a reconnect) is lifted on a warm answer (the marker mcmux wrote
   * is still there), not on a first sight (after a flush_all: nothing to compare); one set
   * because the marker was found missing stays for its whole time. A precautionary fence whose
   * own check could not answer (the upstream was down again) is lifted by a later warm check:
   * the periodic one, or the one made when its health turns healthy.
   */
  private liftIfWarm(u: HealthyUpstream, verdict: Verdict): void {
    if (verdict === 'warm' && u.coldUntil !== 0 && !((this.coldUntil.get(u) ?? 0) > Date.now())) u.unfence();
  }

  /**
   * One server of the pool `u` reconnected (or came back healthy): fence the pool, then ask that
   * server itself — even before its health says it is usable — and lift the fence only on its
   * own answer that the marker is still there.
   */
  serverReconnected(u: HealthyUpstream, server: HealthyUpstream): void {
    u.fence(Date.now() + this.fenceMs);
    void this.checkStore(server.inner).then((verdict) => {
      if (verdict === 'cold') {
        this.fenceCold(u);
        this.log.warn({ upstream: u.name, server: server.name, fenceMs: this.fenceMs }, 'pool server came back empty: the pool decides no add/cas/incr until the fence ends');
      } else {
        this.liftIfWarm(u, verdict);
      }
    });
  }

  /** The marker was gone: fenced for the whole lock-fence, and its old cas uniques void. */
  private fenceCold(u: HealthyUpstream): void {
    this.knownEmpty(u);
    u.restartedEmpty();
  }

  /**
   * `u` is empty for certain (an in-process store as mcmux starts): fenced for the whole
   * lock-fence, as when its marker is found missing. Its own marker, written after the start and
   * found by the next check, says nothing about what it held before.
   */
  knownEmpty(u: HealthyUpstream): void {
    const until = Date.now() + this.fenceMs;
    u.fence(until);
    u.emptyUntil = Math.max(u.emptyUntil, until);
    this.coldUntil.set(u, until);
  }

  /**
   * `u` was emptied on purpose (a client's flush_all): the next check starts afresh. So a restart
   * it had not seen yet (a check in flight, or due) goes unseen: the uniques `u` handed out are
   * voided as after one (no item they named is left anyway). And its marker is written again at
   * once: until it is, a restart would lose none, and the upstream would decide again as soon as
   * a check found the marker it wrote after the restart.
   */
  forget(u: HealthyUpstream): void {
    this.lastSet.delete(u.inner);
    for (const m of membersOf(u)) this.lastSet.delete(m.inner);
    u.voidUniques();
    void this.check(u);
  }

  /**
   * Looks for the marker in `u` — in each server of a pool, since one of them can restart alone —
   * and fences `u` when a marker mcmux wrote has disappeared.
   */
  async check(u: HealthyUpstream): Promise<Verdict> {
    if (!isUsable(u)) return 'unknown';
    const stores = membersOf(u);
    const targets: Upstream[] = stores.length > 0 ? stores.filter(isUsable).map((m) => m.inner) : [u.inner];
    const cold = await Promise.all(targets.map((t) => this.checkStore(t)));
    if (cold.includes('cold')) {
      this.fenceCold(u);
      this.log.warn({ upstream: u.name, fenceMs: this.fenceMs }, 'upstream came back empty: it decides no add/cas/incr until the fence ends');
      return 'cold';
    }
    if (cold.includes('unknown')) return 'unknown';
    if (cold.includes('first')) return 'first';
    this.liftIfWarm(u, 'warm');
    return 'warm';
  }

  /** Whether `store` lost the marker mcmux had written there ('unknown' when it did not answer). */
  private async checkStore(store: Upstream): Promise<Verdict> {
    try {
      // A pool places keys by hash: a marker per server needs a key that lands on that server,
      // so each server is asked directly, through its own driver.
      const [hit] = await store.get([this.key]);
      const now = Date.now();
      const wrote = this.lastSet.get(store);
      if (!hit || wrote === undefined || now - wrote > REFRESH_MS) {
        await store.store({ mode: 'set', key: this.key, value: Buffer.from(String(process.pid)), flags: 0, deadline: now + MARKER_TTL_MS, withCas: false });
        this.lastSet.set(store, now);
      }
      if (hit) return 'warm';
      return wrote === undefined ? 'first' : 'cold';
    } catch {
      // health tracking sees the failures of real requests; the marker is best effort
      return 'unknown';
    }
  }
}
