/**
 * Wires a validated `Config` into a running proxy: upstreams from the scheme table, each behind
 * health tracking, the router, the listeners. Used by the CLI and, in-process, by the tests.
 * `reload` applies a new config without dropping clients: unchanged upstreams keep their
 * connections, new ones are added, removed ones are closed once their requests had time to end.
 */

import type { Logger } from 'pino';
import { monotonicMs } from './clock';
import { StoreUnavailableError } from './errors';
import { type Config, type ListenSpec, type UpstreamConfig, embeddedDefault, formatListen } from './config';
import { lockDirectory, makeStateDir } from './files';
import { Metrics } from './metrics';
import { ColdDetector } from './router/cold-detector';
import { HealthyUpstream, type StateListener, membersOf } from './router/health';
import { RepairJournal } from './router/journal';
import { Repairer } from './router/repair';
import { Router } from './router/router';
import type { ConnectionLimits } from './server/connection';
import { Listener } from './server/listener';
import { MemcachedPool } from './upstream/memcached-pool';
import { MemoryUpstream } from './upstream/memory';
import { CannotOpen, type Checked, NotThereYet, type UpstreamContext, createUpstream, isDriver, storeIdentity } from './upstream/registry';
import { type Upstream, maskUrl } from './upstream/upstream';

export const MCMUX_VERSION: string = (require('../../package.json') as { version: string }).version;

/** The upstream specs a config stands for (the embedded default when it names none). */
export function upstreamSpecs(config: Config): readonly UpstreamConfig[] {
  return config.upstreams.length > 0
    ? config.upstreams
    : embeddedDefault(config.stateDir).map((url) => ({ url, options: new Map<string, string>() }));
}

/** Builds the raw drivers of a config (no health tracking). */
export function buildUpstreams(config: Config): Upstream[] {
  return build(config, true) as Upstream[];
}

/**
 * For `mcmux check`: the drivers, built as `buildUpstreams` does but making nothing: a file store
 * that is not there stands as `NotThereYet` (mcmux makes it at start), one that cannot be opened
 * for a cause not the config's as `CannotOpen` (check says FAILED and goes on to the others).
 */
export function checkUpstreams(config: Config): Checked[] {
  return build(config, false);
}

function build(config: Config, create: boolean): Checked[] {
  const ctx = { defaultTimeoutMs: config.timeout, maxItemSize: config.maxItemSize, probeIntervalMs: config.health.probeMinMs, create };
  const built: Checked[] = [];
  try {
    for (const s of upstreamSpecs(config)) {
      try {
        built.push(createUpstream(s.url, s.options, ctx));
      } catch (error) {
        if (error instanceof NotThereYet || error instanceof CannotOpen) built.push(error);
        else if (!create && error instanceof StoreUnavailableError) built.push(new CannotOpen(maskUrl(s.url), error.message));
        else throw error;
      }
    }
  } catch (error) {
    // A bad upstream after good ones: those are connecting already (a rejected SIGHUP would
    // leave their connections and reconnect timers behind for ever).
    for (const u of built) if (isDriver(u)) void u.close().catch(() => undefined);
    throw error;
  }
  return built;
}

/** Two specs with the same identity are the same store reached the same way: reuse it on reload. */
function identity(spec: UpstreamConfig, config: Config): string {
  const opts = [...spec.options].sort(([a], [b]) => a.localeCompare(b));
  return JSON.stringify([spec.url, opts, config.timeout ?? null, config.maxItemSize]);
}

function limitsOf(config: Config): ConnectionLimits {
  return {
    maxLineLength: config.maxLineLength,
    maxItemSize: config.maxItemSize,
    maxKeysPerGet: config.maxKeysPerGet,
    maxReadsHeld: config.maxReadsHeld,
    maxPipeline: config.maxPipeline,
    maxOutputBytes: config.maxOutputBytes,
    maxInputBytes: config.maxInputBytes,
  };
}

/** start() ended by a close() (SIGTERM) that came while it ran: what it had opened is closed. */
export class StoppedWhileStarting extends Error {
  constructor() {
    super('stopped while starting');
  }
}

/** Config fields a reload cannot change, with the keys that set them (a reload warns). */
const RESTART_ONLY = [
  ['listen', 'listen'],
  ['listenMode', 'listen-mode'],
  ['metrics', 'metrics'],
  ['stateDir', 'state-dir'],
  ['journal', 'journal-max-keys/journal-fsync'],
] as const;
type RestartOnlyField = (typeof RESTART_ONLY)[number][0];

export class App {
  readonly router: Router;
  readonly listener: Listener;
  /** What the listeners are bound to (real ports for port 0). */
  bound: ListenSpec[] = [];
  /** Where metrics are served, when enabled. */
  metricsAddress: { host: string; port: number } | undefined;
  listening = false;
  private metrics: Metrics | undefined;
  readonly journal: RepairJournal;
  readonly repairer: Repairer;
  readonly coldDetector: ColdDetector;
  private members = new Map<string, HealthyUpstream>();
  /** Releases the state directory's lock (files.ts lockDirectory). */
  private readonly unlock: () => void;
  private config: Config;
  /** start() while it runs: a close() meanwhile ends it (stopStarting) and waits for it. */
  private starting: Promise<void> | undefined;
  /** A close() came while start() ran: start() stops at its next step. */
  private stopWhileStarting = false;
  /** Ends start()'s wait for the upstreams' first look (and for a crashed process's requests). */
  private stopStarting: (() => void) | undefined;

  /** The ms clients get to finish on SIGTERM, as last configured (a reload changes it). */
  get shutdownTimeout(): number {
    return this.config.shutdownTimeout;
  }

  constructor(
    config: Config,
    private readonly log: Logger,
  ) {
    this.config = config;
    // Before journal.log is read: another mcmux on this directory would have it rewritten under it.
    makeStateDir(config.stateDir);
    this.unlock = lockDirectory(config.stateDir);
    this.journal = new RepairJournal({ maxKeys: config.journal.maxKeys, fsync: config.journal.fsync, dir: config.stateDir });
    this.coldDetector = new ColdDetector(() => this.upstreams, config.lockFence, log, this.journal);
    this.journal.onWriteError = (error) =>
      log.error({ err: error.message }, 'cannot write the repair journal (journal.log): its entries are kept in memory and written again once the disk takes them; a restart before then loses them');
    const upstreams = this.resolveUpstreams(config);
    // A proxy restarted during an outage picks up the repair work it had journaled.
    this.journal.load(upstreams);
    // Sealed as the process before left it: the uniques it voided stay void (journal.log).
    for (const u of upstreams) u.resumeUniques(this.journal.uniquesEpochOf(u));
    // The limits object is shared with every connection and updated in place on reload.
    this.listener = new Listener(() => this.router, { ...limitsOf(config) }, config.maxConnections, MCMUX_VERSION);
    this.listener.onAcceptError = (error) => log.warn({ err: error.message }, 'accepting a client failed: the listener goes on');
    this.listener.onBug = (error) => log.error({ err: error instanceof Error ? error.stack : String(error) }, 'bug on a client connection: closed it');
    this.router = new Router(
      { upstreams, journal: this.journal, onFlushed: this.onFlushed, hedgeMs: config.hedgeMs, minCopies: config.minCopies, writeWait: config.writeWait, allowFlush: config.allowFlush },
      this.listener,
      (what, u, error) => log.debug({ upstream: u.name, err: error instanceof Error ? error.message : String(error) }, `${what} failed`),
    );
    this.repairer = new Repairer(() => this.router.context, config.repair, log);
    // An overflowed cache the repair flushes comes back empty: fenced, as after a restart.
    this.repairer.onFlush = (u) => this.coldDetector.knownEmpty(u as HealthyUpstream);
    this.repairer.onFlushed = (u) => this.coldDetector.flushed(u as HealthyUpstream);
    this.router.repairStats = () => ({ repaired: this.repairer.repaired, failures: this.repairer.repairFailures });
  }

  private readonly onFlushed = (u: Upstream): void => this.coldDetector.forget(u as HealthyUpstream);

  /** The first TCP address listened on (tests connect there). */
  get address(): { host: string; port: number } {
    const tcp = this.bound.find((l) => l.kind === 'tcp');
    return tcp && tcp.kind === 'tcp' ? { host: tcp.host, port: tcp.port } : { host: '', port: 0 };
  }

  get upstreams(): readonly HealthyUpstream[] {
    return this.router.upstreams as readonly HealthyUpstream[];
  }

  /** Health-wrapped upstreams for `config`, reusing the current ones that did not change. */
  private resolveUpstreams(config: Config, reloading = false): HealthyUpstream[] {
    const ctx = { defaultTimeoutMs: config.timeout, maxItemSize: config.maxItemSize, probeIntervalMs: config.health.probeMinMs };
    const next = new Map<string, HealthyUpstream>();
    // Built by this call: closed if a later one fails to build (a reload is rejected whole, and
    // their connections and reconnect timers would stay behind for ever).
    const built: HealthyUpstream[] = [];
    try {
      return this.resolveEach(config, ctx, next, built, reloading);
    } catch (error) {
      for (const u of built) void u.close().catch(() => undefined);
      throw error;
    }
  }

  private resolveEach(config: Config, ctx: UpstreamContext, next: Map<string, HealthyUpstream>, built: HealthyUpstream[], reloading: boolean): HealthyUpstream[] {
    const kept: HealthyUpstream[] = [];
    const retunes: Array<() => void> = [];
    const adopt: Array<() => void> = [];
    const list = upstreamSpecs(config).map((spec) => {
      const id = identity(spec, config);
      let m = this.members.get(id) ?? next.get(id) ?? this.sameMemory(spec, ctx, retunes);
      if (m) {
        // Kept: retuned once every upstream is built (below), not by a reload rejected later.
        kept.push(m);
      } else {
        const inner = createUpstream(spec.url, spec.options, ctx);
        m = new HealthyUpstream(inner, config.health, (u, from, to, reason) => {
          // Each probe of a down upstream goes down -> probing -> down: keep those at debug.
          const routine = to === 'probing' || (from === 'probing' && to === 'down');
          this.log[to === 'healthy' ? 'info' : routine ? 'debug' : 'warn']({ upstream: u.name, from, to, reason }, `upstream ${to}`);
          if (to === 'healthy') void this.coldDetector.check(u);
        }, storeIdentity(spec.url, spec.options));
        built.push(m);
        for (const member of membersOf(inner)) member.options = config.health;
        inner.onReconnect = (): void => this.coldDetector.reconnected(m as HealthyUpstream);
        inner.onServerId = (serverId: string, continues?: (before: string) => boolean): void => this.coldDetector.serverId(m as HealthyUpstream, serverId, continues);
        inner.onWarning = (message: string): void => this.log.warn({ upstream: inner.name }, message);
        for (const member of membersOf(inner)) {
          member.inner.onReconnect = (): void => this.coldDetector.serverReconnected(m as HealthyUpstream, member);
        }
        const pool = inner as { onMemberChange?: StateListener; onRingMoved?: () => void };
        if ('onRingMoved' in pool) pool.onRingMoved = (): void => this.coldDetector.ringMoved(m as HealthyUpstream);
        if ('onMemberChange' in pool) {
          pool.onMemberChange = (u, from, to, reason) => {
            if (to === 'healthy') this.coldDetector.serverReconnected(m as HealthyUpstream, u);
            const routine = to === 'probing' || (from === 'probing' && to === 'down');
            this.log[to === 'healthy' ? 'info' : routine ? 'debug' : 'warn']({ upstream: m?.name, server: u.name, from, to, reason }, `pool server ${to}`);
          };
        }
        // What it takes from the running chain (and what journal.log says of it) is done once
        // every upstream is built: a reload rejected after it leaves the running ones as they were
        // (inheritRing marks the pool it replaces superseded: review-h37 finding 3).
        const u = m;
        adopt.push(() => this.adopt(u, inner, config, reloading));
      }
      next.set(id, m);
      return m;
    });
    for (const retune of retunes) retune();
    for (const a of adopt) a();
    for (const m of kept) {
      m.options = config.health;
      for (const member of membersOf(m)) member.options = config.health;
    }
    this.members = next;
    return list;
  }

  /** A new upstream `m` (driver `inner`) joins: fenced as empty, or takes over the store it rebuilds. */
  private adopt(m: HealthyUpstream, inner: Upstream, config: Config, reloading: boolean): void {
    // An in-process store starts empty: locks taken before this start live only elsewhere,
    // for the whole fence. One added by a reload may be too, as far as mcmux knows (a check
    // that finds a marker of ours there lifts that fence).
    if (inner.scheme === 'memory') this.coldDetector.knownEmpty(m);
    else if (reloading) {
      m.resumeUniques(this.journal.uniquesEpochOf(m));
      const store = m.storeId;
      const prev = [...this.members.values()].find((o) => o.storeId === store);
      if (prev !== undefined) {
        m.takeOver(prev);
        // The store, and each server of a pool, is as healthy as it was a moment ago.
        m.inheritHealth(prev);
        // A server the pool before had ejected comes back as a ring move, eject or not.
        if (inner instanceof MemcachedPool && prev.inner instanceof MemcachedPool) inner.inheritRing(prev.inner);
        const before = new Map(membersOf(prev).map((o) => [o.name, o]));
        for (const member of membersOf(m)) {
          const was = before.get(member.name);
          if (was !== undefined) member.inheritHealth(was);
        }
      }
      // New to the chain, or back in it: it may have restarted while out of it, numbering its
      // items from 1 again, and the marker check takes a first sight as no evidence. Its
      // uniques of before are void, as after a reconnect.
      else this.coldDetector.voidUniques(m);
      m.fence(monotonicMs() + config.lockFence);
    }
  }

  /**
   * The running memory:// upstream that `spec` names with other tuning options (max-bytes, or the
   * global timeout and max-item-size), retuned to them. An in-process store is its data: built
   * anew it would be empty, while the journal, which follows the store, takes it as clean for
   * every key (a session only it held, another upstream down, would be lost).
   */
  private sameMemory(spec: UpstreamConfig, ctx: UpstreamContext, retunes: Array<() => void>): HealthyUpstream | undefined {
    const store = storeIdentity(spec.url, spec.options);
    const same = [...this.members.values()].find((o) => o.inner instanceof MemoryUpstream && o.storeId === store);
    if (same === undefined) return undefined;
    const tuned = createUpstream(spec.url, spec.options, ctx) as MemoryUpstream;
    // Once every upstream is built: a reload rejected after it evicts nothing (review-h33 finding 2).
    retunes.push(() => (same.inner as MemoryUpstream).retune(tuned));
    return same;
  }

  /**
   * Looks at the upstreams, then listens. A close() that comes meanwhile (SIGTERM while mcmux
   * starts) ends it at its next step, rejecting with StoppedWhileStarting once what it had opened
   * is closed (journal.log as at any stop: marked clean unless what a process before sent may
   * still land); a wait for the upstreams is cut short, a listen in progress is let finish first.
   */
  async start(): Promise<void> {
    const starting = this.begin();
    this.starting = starting;
    try {
      await starting;
    } finally {
      this.starting = undefined;
    }
  }

  private async begin(): Promise<void> {
    const stopped = new Promise<never>((_, reject) => {
      this.stopStarting = () => reject(new StoppedWhileStarting());
    });
    stopped.catch(() => undefined);
    const going = (): void => {
      if (this.stopWhileStarting) throw new StoppedWhileStarting();
    };
    if (this.config.upstreams.length === 0) {
      this.log.warn({ upstreams: embeddedDefault(this.config.stateDir) }, 'no upstream configured: running on the embedded default');
    }
    try {
      // The first look at every upstream's marker comes before any client command: one that came
      // back empty while mcmux was down (a host reboot) is fenced before it may decide an add.
      // A process before this one that did not stop cleanly (killed, crashed: journal.log tells)
      // may have had requests out that still land on the upstreams, over what this one writes
      // (their keys are on no file). Until they can no longer, a write that only such copies
      // took fails: no client command before then, on the upstreams that are up (repair.ts);
      // and the markers are looked at again once they can no longer (startAfter).
      const looked = this.coldDetector.startAfter(() =>
        this.stopWhileStarting
          ? Promise.resolve(false)
          : this.repairer.untilUnknownSettled((ms) =>
              this.log.warn(
                { waitMs: Math.ceil(ms) },
                'mcmux did not stop cleanly last time (killed or crashed): requests it had sent may still reach the upstreams; not listening until they can no longer land',
              ),
            ),
      );
      looked.catch(() => undefined);
      await Promise.race([looked, stopped]);
      // Each listen is let finish (its socket is then closed with the others), not raced.
      for (const spec of this.config.listen) {
        going();
        this.bound.push(await this.listener.listen(spec, this.config.listenMode));
      }
      going();
      if (this.config.metrics) {
        this.metrics = new Metrics(this);
        this.metrics.onError = (error) => this.log.warn({ err: error.message }, 'metrics: accepting a client failed: the listener goes on');
        this.metricsAddress = await this.metrics.listen(this.config.metrics.host, this.config.metrics.port, this.config.metricsMaxConnections);
      }
      going();
      this.listening = true;
      this.repairer.start();
    } catch (error) {
      await this.shut(0);
      throw error;
    } finally {
      this.stopStarting = undefined;
    }
    this.log.info(
      {
        listen: this.bound.map(formatListen),
        upstreams: this.upstreams.map((u) => u.name),
        writeWait: this.config.writeWait,
        minCopies: this.config.minCopies,
        version: MCMUX_VERSION,
        metrics: this.metricsAddress ? `${this.metricsAddress.host}:${this.metricsAddress.port}` : undefined,
      },
      'mcmux listening',
    );
  }

  /** Applies a new config (SIGHUP). Listen addresses are not changed by a reload. */
  reload(config: Config): void {
    // journal-max-keys changes only on restart (RESTART_ONLY): the fence keys it bounds too, not
    // half of it while the log says it was kept (review-h37 finding 4).
    config = { ...config, health: { ...config.health, fenceKeysMax: this.config.health.fenceKeysMax } };
    const before = new Set(this.members.values());
    // The embedded default lives in the state directory, which a reload does not move.
    const upstreams = this.resolveUpstreams({ ...config, stateDir: this.config.stateDir }, true);
    const kept = new Set(upstreams);
    const removed = [...before].filter((u) => !kept.has(u));
    for (const u of removed) this.journal.retire(u);
    // A store new to the chain may have left it earlier and missed every write since: none of
    // what it holds is trusted until it is known clean, as after a journal overflow.
    this.journal.setChain(upstreams);
    this.router.reconfigure({ upstreams, journal: this.journal, onFlushed: this.onFlushed, hedgeMs: config.hedgeMs, minCopies: config.minCopies, writeWait: config.writeWait, allowFlush: config.allowFlush });
    this.repairer.options = config.repair;
    this.coldDetector.fenceMs = config.lockFence;
    Object.assign(this.listener.limits, limitsOf(config));
    this.listener.maxConnections = config.maxConnections;
    this.log.level = config.logLevel;
    // What only a restart changes: the sockets mcmux listens on and the journal's file.
    const fixed = Object.fromEntries(RESTART_ONLY.map(([field]) => [field, this.config[field]])) as Pick<Config, RestartOnlyField>;
    const ignored = RESTART_ONLY.filter(([field]) => JSON.stringify(config[field]) !== JSON.stringify(fixed[field])).map(([, key]) => key);
    if (ignored.length > 0) this.log.warn({ keys: ignored }, `${ignored.join(', ')} change only on restart; kept the current values`);
    this.config = { ...config, ...fixed };
    this.metrics?.attach();
    this.metrics?.limit(config.metricsMaxConnections);
    // Requests in flight on a removed upstream still hold it: close it once they have timed out.
    const grace = Math.max(1000, ...removed.map((u) => u.timeoutMs * 2));
    setTimeout(() => void Promise.all(removed.map((u) => u.close())), grace).unref();
    this.log.info(
      {
        upstreams: upstreams.map((u) => u.name),
        // A store whose options changed is built anew but stays the same store: rebuilt, not
        // added and removed (it keeps its journal, fence and health state).
        added: upstreams.filter((u) => !before.has(u) && !removed.some((r) => r.storeId === u.storeId)).map((u) => u.name),
        removed: removed.filter((r) => !upstreams.some((u) => u.storeId === r.storeId)).map((u) => u.name),
        rebuilt: upstreams.filter((u) => !before.has(u) && removed.some((r) => r.storeId === u.storeId)).map((u) => u.name),
        writeWait: config.writeWait,
        minCopies: config.minCopies,
      },
      'configuration reloaded',
    );
  }

  /**
   * Stops accepting, lets clients finish the requests they sent and the copies of their writes
   * land (up to `graceMs` in all), then closes every connection and upstream. While start() runs:
   * ends it (StoppedWhileStarting) and resolves once it has closed what it had opened.
   */
  async close(graceMs = 0): Promise<void> {
    const starting = this.starting;
    if (starting !== undefined) {
      this.stopWhileStarting = true;
      this.stopStarting?.();
      await starting.catch(() => undefined);
      // It got through every step before it saw the stop: it runs, and is closed as such.
      if (this.listening) await this.shut(graceMs);
      return;
    }
    await this.shut(graceMs);
  }

  private async shut(graceMs: number): Promise<void> {
    this.listening = false;
    const closed = this.listener.close(false);
    this.listener.drain();
    // No repair starts from now on; those in flight are waited for with the writes.
    this.repairer.stop();
    if (graceMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise((res) => (timer = setTimeout(res, graceMs).unref()));
      await Promise.race([closed, grace]);
      // write-wait copies: writes answered before every upstream had them are still landing; and
      // the repairs and read repairs in flight.
      await Promise.race([this.journal.quiesce(), grace]);
      clearTimeout(timer);
    }
    await this.listener.close(true);
    this.coldDetector.stop();
    await this.metrics?.close();
    // A request still unanswered now is cut by the close, but may yet land (a read repair's add is
    // journaled nowhere): journal.log is then not closed cleanly, and the next process waits.
    const quiet = this.journal.quiescent;
    await Promise.all([...this.members.values()].map((u) => u.close()));
    // Last: requests failing while the upstreams close may still journal a miss.
    this.journal.close(quiet);
    this.unlock();
  }
}

export async function startApp(config: Config, log: Logger): Promise<App> {
  const app = new App(config, log);
  await app.start();
  return app;
}
