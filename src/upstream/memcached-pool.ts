/**
 * `memcached://h1:11211,h2:11211,h3:11211` — ONE upstream whose keys are sharded over several
 * memcached servers exactly as php-memcached / libmemcached shard them (see ketama.ts), so that
 * a farm moving its clients to mcmux keeps every session they wrote.
 *
 *   get([k1,k2,k3]) ──strip namespace──► placer ──► server 0: [k1,k3]  ─┐ in parallel,
 *                                                 └► server 2: [k2]     ─┴► reassembled in
 *   store/delete/touch/arith(k) ──► placer ──► that server only            request order
 *
 * Each server is a MemcachedUpstream wrapped in its own HealthyUpstream: a dead server is
 * skipped at once (MCMUX_UPSTREAM_DOWN for its keys' reads and writes) and probed back. The pool
 * as a whole fails only when none of its servers is up.
 *
 * The servers are hashed by their names as written in the URL ("host:port", or "host" on port
 * 11211), so list them exactly as the clients do, in the same order (modula depends on it).
 *
 * Options (URL query or TOML keys):
 * - `distribution`: `ketama` (default; libmemcached MEMCACHED_BEHAVIOR_KETAMA, what
 *   php-memcached's session handler sets for memcached.sess_consistent_hash=On) |
 *   `ketama-weighted` = `libketama` (MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED: PHP's
 *   sess_consistent_hash_type=ketama_weighted and the class's OPT_LIBKETAMA_COMPATIBLE, MD5) |
 *   `modula` (sess_consistent_hash=Off).
 * - `namespace`: a key prefix that the clients' library adds as a libmemcached NAMESPACE: it is
 *   sent on the wire but left out of the hash. php-memcached sessions: `memc.sess.key.` (the
 *   default memcached.sess_prefix; its lock key `memc.sess.key.lock.<sid>` is placed by
 *   `lock.<sid>`). Keys not starting with it are hashed whole. Default: none.
 * - `weights`: one integer >= 1 per server in URL order, `3,1,1`; only with ketama-weighted /
 *   libketama (libmemcached's ketama and modula ignore weights: refused rather than ignored).
 *   php-memcached's `h1:11211:3` in session.save_path becomes `weights=3,...`.
 * - `eject`: `false` (default): a down server's keys stay on it: reads and writes of them fail
 *   here (the next upstream serves them; the repair journal records the writes); the ring
 *   never moves. `true`: like twemproxy's auto_eject_hosts / libmemcached's
 *   REMOVE_FAILED_SERVERS, the ring is rebuilt over the servers that are up, so a down
 *   server's keys move to the next point. A moved key may find a copy older than its last
 *   write (the server back with its old data; a server that took the key in an earlier
 *   outage): at each ring move the pool is fenced and distrusted (onRingMoved), and read only
 *   for the keys written since until the repair has flushed it. (With modula, eject follows
 *   twemproxy: hash modulo the servers up; libmemcached's modula never ejects.)
 * - `timeout`, `connections`, `max-queue`: passed to each server (see memcached.ts).
 */

import type { ArithOp, Hit } from '../command/command';
import { ConfigError, ErrorCodes, McmuxError, mayLandLate, unapplied } from '../errors';
import { DEFAULT_HEALTH, type HealthState, type HealthOptions, HealthyUpstream, type StateListener } from '../router/health';
import { DISTRIBUTIONS, type Distribution, type RingServer, placer } from './ketama';
import { type HostPort, type UpstreamContext, rejectUnknownOptions } from './registry';
import { type ArithResult, type StoreRequest, type StoreResult, type TouchResult, type Upstream, type UpstreamStats, maskUrl, newUpstreamStats } from './upstream';

const DEFAULT_PORT = 11211;
const MAX_SERVERS = 1024;
const SERVER_OPTIONS = ['timeout', 'connections', 'max-queue'];
const POOL_OPTIONS = ['distribution', 'namespace', 'weights', 'eject'];
/** The placements unmovedSince looks back over (ring moves); a key placed before them counts as moved. */
const MAX_PLACEMENTS = 16;

export interface PoolSettings {
  readonly distribution: Distribution;
  readonly namespace: string;
  readonly eject: boolean;
}

/** One server of the pool as given to the constructor. */
export interface PoolServer extends RingServer {
  readonly upstream: Upstream;
}

export class MemcachedPool implements Upstream {
  readonly scheme = 'memcached';
  readonly timeoutMs: number;
  /** Told of every state change of a server (logs); the pool's own bookkeeping runs first. */
  onMemberChange: StateListener | undefined;
  /**
   * With eject: told when the ring moved (a server left it or came back). The keys that moved
   * are on a server that does not hold them (or holds what they were when last placed there):
   * the pool cannot decide a conditional command of them (a lock held may be granted again)
   * until the lock fence has passed, as a store come back empty, nor serve them until flushed
   * (ColdDetector.ringMoved).
   */
  onRingMoved: (() => void) | undefined;
  private readonly nodes: HealthyUpstream[];
  private readonly ring: RingServer[];
  private place: (key: string) => number;
  /** The placement before the last ring move (eject), for keptPlace; undefined before any. */
  private placedBefore: ((key: string) => number) | undefined;
  private live: boolean[];
  /** How often the ring moved (eject): a write answered after a move went to a server the key left. */
  private moves = 0;
  /**
   * The placements of the last ring moves, oldest first: `placements[i]` was the ring after move
   * `placementsFrom + i` (unmovedSince). Started afresh by a move whose ring before is not known
   * here (a server returning that a pool before this one ejected: inheritRing).
   */
  private placements: Array<(key: string) => number> = [];
  private placementsFrom = 0;
  /**
   * A reload built another pool of the same store in its place (inheritRing), or it was closed:
   * its ring no longer follows the servers, so unmovedSince says of no key that it did not move.
   * A distrust begun on this pool keeps this pool's test (journal Overflow.unmoved), and the ring
   * moves of the new one distrust with it: frozen, it trusted a key that moved in the new pool and
   * came back to a server holding an older value (review-h3 finding 1: a stale and a destroyed
   * session served).
   */
  private superseded = false;
  /**
   * eject=false, built by a reload over a pool that ejected these servers (down, out of its ring):
   * their keys were written to other servers meanwhile, so their return is a ring move as well
   * (inheritRing).
   */
  private readonly returning = new Set<HealthyUpstream>();
  private closed = false;

  constructor(
    readonly name: string,
    servers: readonly PoolServer[],
    readonly settings: PoolSettings,
    health: HealthOptions = DEFAULT_HEALTH,
  ) {
    this.ring = servers.map(({ host, port, weight }) => ({ host, port, weight }));
    this.nodes = servers.map((s) => new HealthyUpstream(s.upstream, health, this.onChange));
    this.timeoutMs = Math.max(...servers.map((s) => s.upstream.timeoutMs));
    this.live = this.nodes.map(() => true);
    this.place = placer(this.ring, settings.distribution);
    this.placements = [this.place];
  }

  /** The servers in URL order, each with its health state, transitions and stats. */
  members(): readonly HealthyUpstream[] {
    return this.nodes;
  }

  /** The server `key` goes to now (the full key, namespace included), or undefined if none is up. */
  serverFor(key: string): HealthyUpstream | undefined {
    return this.nodes[this.place(this.hashKey(key))];
  }

  /**
   * Whether the last ring move left `key` on the server it was on (eject): what the pool holds of
   * it is still where it is read. False when not known (no move seen in this process).
   */
  keptPlace(key: string): boolean {
    const h = this.hashKey(key);
    return this.placedBefore !== undefined && this.placedBefore(h) === this.place(h);
  }

  /** How many times the ring has moved (eject): what unmovedSince counts from. */
  get ringMoves(): number {
    return this.moves;
  }

  /**
   * Whether `key` has been on the same server in every ring since the ring after move `since`
   * (ringMoves as it was then): every write of it since went to that server, which holds its
   * current state as far as the ring goes (what it missed, the journal knows). False when not
   * known: more moves since than are kept (MAX_PLACEMENTS), or a server returned that a pool
   * before this one had ejected. A read of a distrusted pool trusts such a key (journal.distrust:
   * `unmoved`): a session on a server that never left is served while the store behind is down
   * (review-today finding 6).
   */
  unmovedSince(since: number, key: string): boolean {
    if (this.superseded) return false;
    const first = since - this.placementsFrom;
    if (first < 0 || first >= this.placements.length) return false;
    const h = this.hashKey(key);
    const at = (this.placements[first] as (key: string) => number)(h);
    for (let i = first + 1; i < this.placements.length; i++) if ((this.placements[i] as (key: string) => number)(h) !== at) return false;
    return true;
  }

  /** The names of the servers out of the ring: ejected (down, eject=true), or not back since a pool before this one ejected them. */
  outOfRing(): string[] {
    return this.nodes.filter((n, i) => (this.settings.eject ? !this.live[i] : this.returning.has(n))).map((n) => n.name);
  }

  /**
   * A reload built this pool in place of `prev` (the same store): a server `prev` had ejected
   * returns with what it held before its keys moved, whatever this pool's eject says, and its
   * return is told as a ring move (onRingMoved: the pool is fenced as come back empty). Without
   * it, with eject turned off by the reload, the server's kept marker lifted the precaution its
   * return set, and the pool decided a lock taken while it was out on it, which lacked it (review).
   * And `prev`, whose ring stays as it was, no longer tells which keys did not move (superseded).
   */
  inheritRing(prev: MemcachedPool): void {
    prev.superseded = true;
    if (this.settings.eject) return;
    const out = new Set(prev.outOfRing());
    for (const n of this.nodes) if (out.has(n.name)) this.returning.add(n);
  }

  /** The sum over the servers (each member has its own). */
  get stats(): UpstreamStats {
    const sum = newUpstreamStats();
    for (const n of this.nodes) {
      const s = n.stats;
      sum.requests += s.requests;
      sum.errors += s.errors;
      sum.timeouts += s.timeouts;
      sum.latencyUsSum += s.latencyUsSum;
      sum.latencyCount += s.latencyCount;
    }
    return sum;
  }

  /**
   * A server that fails (down, timeout, refused) fails the get, as MCMUX_UPSTREAM_PARTIAL while
   * another server is up (which the pool's own health does not count). Its keys must not read
   * as misses: a miss from the last upstream is a logged-out user where the client should have
   * heard SERVER_ERROR, and a repair taking this pool as its source would copy "absent" over a
   * session another upstream holds. The router asks the next upstream for those keys instead;
   * the other servers' answers ride on the error (McmuxError.partial) and are taken as given.
   */
  async get(keys: readonly string[], touch?: number, valueOnly?: boolean): Promise<Array<Hit | undefined>> {
    this.checkUsable();
    const n = keys.length;
    if (n === 0) return [];
    if (n === 1) return this.getFrom(this.placed(keys[0] as string), keys, touch, valueOnly);
    // Group by server; positions remember where each key (duplicates too) goes back.
    const groups = new Map<HealthyUpstream, { keys: string[]; at: number[] }>();
    for (let i = 0; i < n; i++) {
      const key = keys[i] as string;
      const node = this.placed(key);
      const g = groups.get(node);
      if (g) {
        g.keys.push(key);
        g.at.push(i);
      } else {
        groups.set(node, { keys: [key], at: [i] });
      }
    }
    const out = new Array<Hit | undefined>(n);
    const failed: number[] = [];
    let failure: unknown;
    await Promise.all(
      [...groups].map(([node, g]) =>
        this.getFrom(node, g.keys, touch, valueOnly).then(
          (hits) => {
            for (let j = 0; j < g.at.length; j++) out[g.at[j] as number] = hits[j];
          },
          (error: unknown) => {
            // Every group is awaited: the hits of the servers that answered are kept. The error
            // told is the worst of them, for all the failed keys: one that may land late, else one
            // that may have been applied over one refused unsent (a gat: its keys must be journaled
            // where it may have touched the item; review-h24 finding 3).
            failed.push(...g.at);
            if (failure === undefined || mayLandLate(error) || (unapplied(failure) && !unapplied(error) && !mayLandLate(failure))) failure = error;
          },
        ),
      ),
    );
    if (failure === undefined) return out;
    // Some servers answered: their keys are answered (a session on a server that is up is
    // served even when the next upstream lacks it), the failed server's keys are not misses.
    // A server marked down fails its keys with MCMUX_UPSTREAM_DOWN (nothing sent there), not
    // _PARTIAL: the others' hits ride on it all the same (fuzz-pool-findings.test.ts).
    const code = failure instanceof McmuxError ? failure.code : undefined;
    if (failure instanceof McmuxError && (code === ErrorCodes.UPSTREAM_PARTIAL || code === ErrorCodes.UPSTREAM_DOWN) && failed.length < n) failure.partial = { hits: out, failed };
    throw failure;
  }

  private getFrom(node: HealthyUpstream, keys: readonly string[], touch: number | undefined, valueOnly?: boolean): Promise<Array<Hit | undefined>> {
    return this.one(node, node.get(keys, touch, valueOnly));
  }

  // Writes go to the key's server only and are never retried elsewhere: an incr or append
  // sent twice would apply twice, and a set placed off its server would be read by nobody.
  // A down server's write rejects (MCMUX_UPSTREAM_DOWN): the router journals the key for this
  // pool, and the repair replays it when the server is back.
  async store(req: StoreRequest): Promise<StoreResult> {
    return this.write(req.key, (n) => n.store(req));
  }

  async delete(key: string): Promise<'DELETED' | 'NOT_FOUND'> {
    return this.write(key, (n) => n.delete(key));
  }

  async touch(key: string, deadline: number, withItem?: boolean): Promise<TouchResult> {
    return this.write(key, (n) => n.touch(key, deadline, withItem));
  }

  async arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult> {
    return this.write(key, (n) => n.arith(op, key, delta));
  }

  /**
   * `key`'s request on its server. With eject, one answered after the ring moved (a server left it
   * or came back) and the key with it reached a server that no longer holds the key for the pool: taken as a success,
   * the pool would count as holding what it wrote (the router tells a fenced pool it learnt the
   * key, and lets it decide the key on the server the key moved to, which lacks it: a lock granted
   * twice; review). It fails as one that may have been applied: the key is journaled for the pool.
   */
  private write<R>(key: string, run: (n: HealthyUpstream) => Promise<R>): Promise<R> {
    const n = this.node(key);
    const at = this.moves;
    return this.one(
      n,
      run(n).then((r) => {
        if (this.moves !== at && this.placed(key) !== n) throw new McmuxError(ErrorCodes.UPSTREAM_IO, `upstream ${this.name}: the ring moved while a request of ${key} was on ${n.name}: the key is placed elsewhere now`, true);
        return r;
      }),
    );
  }

  /**
   * A failure of one server while another is up fails that request, not the pool: it is
   * re-raised as MCMUX_UPSTREAM_PARTIAL, which the pool's own health does not count (the
   * server's does).
   */
  private one<R>(node: HealthyUpstream, request: Promise<R>): Promise<R> {
    return request.catch((error: unknown) => {
      throw this.partial(node, error);
    });
  }

  private partial(node: HealthyUpstream, error: unknown): unknown {
    const passOn = error instanceof McmuxError && (error.code === ErrorCodes.UPSTREAM_CLOSED || error.code === ErrorCodes.UPSTREAM_DOWN);
    if (error instanceof McmuxError && !passOn && this.nodes.some((n) => n !== node && n.usable)) {
      // Keeping the server's code: the router must still tell a request that changed nothing
      // there (busy, refused by memcached) from one that may have been applied.
      return new McmuxError(ErrorCodes.UPSTREAM_PARTIAL, error.message, error.late, error.origin, error.dropped);
    }
    return error;
  }

  /**
   * Flushes every server (a client's flush_all); fails if any failed (after all have answered),
   * with a failure that may still land when there is one (the router then takes the pool as
   * possibly emptying itself), as UPSTREAM_PARTIAL while another server is up. A server out of
   * the ring (eject) is not left out: it fails the flush, which the client hears (SERVER_ERROR),
   * rather than coming back later with what the acknowledged flush_all was to remove
   * (review-today finding 2).
   */
  async flush(): Promise<void> {
    this.checkUsable();
    await this.flushNodes(this.nodes);
  }

  /**
   * The repair's flush of the pool distrusted as a whole (ColdDetector.ringMoved): every server in
   * the ring. One out of it (outOfRing) holds no key of the pool now, and its return is a ring
   * move, after which the pool is trusted for no key until flushed again.
   */
  async flushRing(): Promise<void> {
    this.checkUsable();
    const out = this.outOfRing();
    await this.flushNodes(out.length === 0 ? this.nodes : this.nodes.filter((n) => !out.includes(n.name)));
  }

  private async flushNodes(nodes: readonly HealthyUpstream[]): Promise<void> {
    const results = await Promise.allSettled(nodes.map((n) => n.flush()));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ node: nodes[i] as HealthyUpstream, error: r.reason as unknown }] : []));
    const worst = failed.find((f) => mayLandLate(f.error)) ?? failed[0];
    // One server's failure is that server's (its health counts it), as for a key's request.
    if (worst) throw this.partial(worst.node, worst.error);
  }

  /**
   * Succeeds when any server that is up answers `version`. A server marked down is left to its
   * own probes: if an answer from it made the pool healthy before its own state did, every
   * request would still find no server up and the pool would flap down and up again.
   */
  async probe(): Promise<void> {
    this.checkUsable();
    try {
      await Promise.any(this.nodes.filter((n) => n.usable).map((n) => n.probe()));
    } catch (error) {
      const first = error instanceof AggregateError ? (error.errors[0] as unknown) : error;
      throw first instanceof McmuxError ? first : new McmuxError(ErrorCodes.UPSTREAM_IO, `upstream ${this.name}: ${String(first)}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.superseded = true;
    await Promise.all(this.nodes.map((n) => n.close()));
  }

  private hashKey(key: string): string {
    const ns = this.settings.namespace;
    return ns !== '' && key.startsWith(ns) ? key.slice(ns.length) : key;
  }

  /**
   * The key's server, or throws when the pool is closed or no server is up. With eject=false
   * the server may be down: its health guard then rejects at once.
   */
  private node(key: string): HealthyUpstream {
    this.checkUsable();
    return this.placed(key);
  }

  /** After checkUsable: some server is up, so (eject or not) the placer finds one. */
  private placed(key: string): HealthyUpstream {
    return this.nodes[this.place(this.hashKey(key))] as HealthyUpstream;
  }

  /**
   * Throws when the pool is closed or none of its servers is up. The latter is
   * MCMUX_UPSTREAM_UNREACHABLE, not _DOWN: it is the pool's own failure, which its health wrapper must count, whereas a
   * _DOWN from one server only says that server's keys cannot be served now.
   */
  private checkUsable(): void {
    if (this.closed) throw new McmuxError(ErrorCodes.UPSTREAM_CLOSED, `upstream ${this.name}: closed`);
    if (!this.nodes.some((n) => n.usable)) {
      throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `upstream ${this.name}: none of its ${this.nodes.length} servers is up (each is probed on its own)`);
    }
  }

  private readonly onChange = (u: HealthyUpstream, from: HealthState, to: HealthState, reason: string): void => {
    if (this.settings.eject) {
      const live = this.nodes.map((n) => n.usable);
      if (live.some((v, i) => v !== this.live[i])) {
        this.live = live;
        this.moves++;
        // libmemcached's auto-eject rebuilds the continuum over the live servers only.
        this.placedBefore = this.place;
        this.place = placer(this.ring, this.settings.distribution, live);
        this.placements.push(this.place);
        if (this.placements.length > MAX_PLACEMENTS) {
          this.placements.shift();
          this.placementsFrom++;
        }
        this.onMemberChange?.(u, from, to, reason);
        this.onRingMoved?.();
        return;
      }
    } else if (this.returning.has(u) && u.usable) {
      this.returning.delete(u);
      this.moves++;
      // Where its keys were under the pool before this one is not known here.
      this.placements = [this.place];
      this.placementsFrom = this.moves;
      this.onMemberChange?.(u, from, to, reason);
      this.onRingMoved?.();
      return;
    }
    this.onMemberChange?.(u, from, to, reason);
  };
}

/** Builds one server from its own URL and the per-server options (memcached.ts's factory). */
export type ServerFactory = (url: URL, options: Map<string, string>, ctx: UpstreamContext) => Upstream;

/** The factory for a multi-host memcached URL; `hosts` lists every host (`url` the first). */
export function createMemcachedPool(
  url: URL,
  options: Map<string, string>,
  ctx: UpstreamContext,
  hosts: readonly HostPort[],
  makeServer: ServerFactory,
): MemcachedPool {
  const name = maskUrl(poolHref(url, hosts));
  const where = `upstream ${name}`;
  const take = (key: string): string | undefined => {
    const v = options.get(key);
    options.delete(key);
    return v;
  };
  const distribution = (take('distribution') ?? 'ketama') as Distribution;
  if (!DISTRIBUTIONS.includes(distribution)) {
    throw new ConfigError(`${where}: option distribution="${distribution}" is invalid: expected one of ${DISTRIBUTIONS.join(', ')}`);
  }
  const namespace = take('namespace') ?? '';
  if (namespace.length > 200 || /[\x00-\x20\x7f]/.test(namespace)) {
    throw new ConfigError(`${where}: option namespace="${namespace}" is invalid: expected a key prefix of at most 200 characters, no spaces or control characters (php-memcached sessions: memc.sess.key.)`);
  }
  const ejectText = take('eject') ?? 'false';
  if (ejectText !== 'true' && ejectText !== 'false') {
    throw new ConfigError(`${where}: option eject="${ejectText}" is invalid: expected true or false`);
  }
  if (hosts.length > MAX_SERVERS) throw new ConfigError(`${where}: ${hosts.length} servers: at most ${MAX_SERVERS}`);
  const weights = parseWeights(take('weights'), hosts.length, distribution, where);
  rejectUnknownOptions(
    new Map([...options].filter(([k]) => !SERVER_OPTIONS.includes(k))),
    where,
    [...POOL_OPTIONS, ...SERVER_OPTIONS],
  );

  const seen = new Set<string>();
  const specs = hosts.map((h, i) => {
    const port = h.port ?? DEFAULT_PORT;
    const id = `${h.host}:${port}`;
    if (seen.has(id)) throw new ConfigError(`${where}: server ${id} is listed twice: list each server once`);
    seen.add(id);
    return { host: h.host, port, weight: weights[i] ?? 1 };
  });
  const servers: PoolServer[] = [];
  try {
    for (const s of specs) {
      const host = s.host.includes(':') ? `[${s.host}]` : s.host;
      servers.push({ ...s, upstream: makeServer(new URL(`memcached://${host}:${s.port}`), new Map(options), ctx) });
    }
  } catch (error) {
    for (const s of servers) void s.upstream.close();
    throw error;
  }
  return new MemcachedPool(name, servers, { distribution, namespace, eject: ejectText === 'true' });
}

function parseWeights(text: string | undefined, count: number, d: Distribution, where: string): number[] {
  if (text === undefined) return [];
  if (d !== 'ketama-weighted' && d !== 'libketama') {
    throw new ConfigError(
      `${where}: option weights has no effect with distribution=${d} (libmemcached ignores server weights there, as php-memcached's session handler does): remove it, or set distribution=ketama-weighted`,
    );
  }
  const parts = text.split(',');
  if (parts.length !== count || parts.some((p) => !/^[0-9]{1,6}$/.test(p.trim()) || Number(p) < 1)) {
    throw new ConfigError(`${where}: option weights="${text}" is invalid: expected ${count} integers from 1 to 999999, one per server in URL order, like 3,1,1`);
  }
  return parts.map(Number);
}

/** The URL with all its hosts (`url` holds only the first). */
function poolHref(url: URL, hosts: readonly HostPort[]): string {
  const list = hosts.map((h) => (h.host.includes(':') ? `[${h.host}]` : h.host) + (h.port === undefined ? '' : `:${h.port}`)).join(',');
  return `${url.protocol}//${list || url.host}${url.pathname}${url.search}`;
}
