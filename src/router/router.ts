/**
 * The multiplexer: one protocol-neutral command in, one reply out.
 *
 *   Command ─► reads (get/gets/gat/gats) ───────► failover-read.ts   (priority order, read repair)
 *          ├─► set / delete / touch / flush ─────► replicate-write.ts (every upstream, min-copies)
 *          ├─► add/replace/cas/append/prepend,
 *          │   incr/decr ────────────────────────► authority.ts       (first answering upstream decides)
 *          └─► version / stats / verbosity ──────► answered here, never forwarded (T24)
 *
 * Failures come back as error replies; nothing thrown here reaches a client connection.
 */

import { type Command, type Reply, type StoreMode, deadlineFromExptime, isExpired } from '../command/command';
import type { Upstream } from '../upstream/upstream';
import { conditionalArith, conditionalStore, existenceProbe } from './authority';
import { type RouterContext, type RouterCounters, type WriteWait, serverError, tooLargeReply } from './context';
import { failoverRead } from './failover-read';
import type { RepairJournal } from './journal';
import { KeyOrder } from './key-order';
import { replicateFlush, replicateKeyed, replicateSet } from './replicate-write';
import { type StatsSource, statsLines, upstreamStatsLines } from './stats';

export interface RouterOptions {
  readonly upstreams: readonly Upstream[];
  readonly journal: RepairJournal;
  readonly onFlushed?: (u: Upstream) => void;
  readonly hedgeMs?: number;
  readonly minCopies: number;
  readonly writeWait: WriteWait;
  readonly allowFlush: boolean;
}

/** Runs `fn` at `at` (Unix ms), in steps: setTimeout cannot wait longer than 2^31-1 ms. */
function flushAt(at: number, fn: () => void): void {
  const wait = at - Date.now();
  if (wait <= 0) return fn();
  setTimeout(() => flushAt(at, fn), Math.min(wait, 2 ** 31 - 1)).unref();
}

const noop = (): void => {};

const lowered = new Map<string, string>();
/** `s` in lower case, computed once per distinct (few, constant) status name. */
function lower(s: string): string {
  let l = lowered.get(s);
  if (l === undefined) lowered.set(s, (l = s.toLowerCase()));
  return l;
}

/** The memcached name of a command, for metrics. */
export function commandName(cmd: Command): string {
  switch (cmd.kind) {
    case 'get':
      return cmd.touch === undefined ? (cmd.withCas ? 'gets' : 'get') : cmd.withCas ? 'gats' : 'gat';
    case 'store':
      return cmd.mode;
    case 'too_large':
      return 'set';
    case 'arith':
      return cmd.op;
    default:
      return cmd.kind;
  }
}

/** What `version` answers: memcached-compatible (clients parse major.minor.patch), then ours. */
export const MEMCACHED_COMPAT_VERSION = '1.6.21';

export class Router {
  private ctx: RouterContext;
  private allowFlush: boolean;
  /** flush_all commands run: a delayed one runs only if none came after it. */
  private flushes = 0;
  /** Orders each key's writes around its conditional commands; lives as long as the journal. */
  private order: KeyOrder;
  readonly counters: RouterCounters = {
    getHits: 0,
    getMisses: 0,
    readRepairs: 0,
    readRepairFailures: 0,
    replicationFailures: 0,
    hedges: 0,
    hedgeWins: 0,
  };
  readonly commands = new Map<string, number>();
  /** Answers given, by command then result (for example `add` then `not_stored`), for metrics. */
  readonly results = new Map<string, Map<string, number>>();

  constructor(
    options: RouterOptions,
    private readonly source: StatsSource,
    private readonly onBackgroundError: RouterContext['onBackgroundError'],
  ) {
    this.ctx = this.makeContext(options);
    this.allowFlush = options.allowFlush;
    this.order = new KeyOrder(options.journal);
  }

  /** Keys with a conditional command or a gat running or waiting (key-order.ts). */
  get orderedKeys(): number {
    return this.order.busyKeys;
  }

  get upstreams(): readonly Upstream[] {
    return this.ctx.upstreams;
  }

  /** Set by the app: what the repairer has done (for `stats`). */
  repairStats: () => { repaired: number; failures: number } = () => ({ repaired: 0, failures: 0 });

  /** The routing context in force (the repairer works on the same one). */
  get context(): RouterContext {
    return this.ctx;
  }

  /** Swaps the routing configuration at once (reload); requests in flight keep the old one. */
  reconfigure(options: RouterOptions): void {
    if (options.journal !== this.ctx.journal) this.order = new KeyOrder(options.journal);
    this.ctx = this.makeContext(options);
    this.allowFlush = options.allowFlush;
  }

  private makeContext(o: RouterOptions): RouterContext {
    return {
      upstreams: o.upstreams,
      minCopies: o.minCopies,
      writeWait: o.writeWait,
      counters: this.counters,
      journal: o.journal,
      onFlushed: o.onFlushed ?? (() => {}),
      hedgeMs: o.hedgeMs ?? 0,
      onBackgroundError: this.onBackgroundError,
      flushOrdered: (send) => this.flushOrdered(send, false),
    };
  }

  /** Counts the reply a client got for `cmd` (called by the connection once per request). */
  record(cmd: Command, reply: Reply): void {
    const name = commandName(cmd);
    const result = reply.kind === 'status' ? lower(reply.status) : reply.kind === 'error' ? lower(reply.type) : 'ok';
    // Two lookups with constant strings: no key string is built per request.
    let byResult = this.results.get(name);
    if (!byResult) this.results.set(name, (byResult = new Map()));
    byResult.set(result, (byResult.get(result) ?? 0) + 1);
  }

  private count(name: string, n = 1): void {
    this.commands.set(name, (this.commands.get(name) ?? 0) + n);
  }

  execute(cmd: Command): Promise<Reply> | Reply {
    const ctx = this.ctx;
    if (!('key' in cmd)) {
      // A gat/gats writes its keys' deadlines, on the other copies after it answered: ordered
      // with their writes as a conditional command is (key-order.ts touching).
      if (cmd.kind === 'get' && cmd.touch !== undefined) return this.order.touching(cmd.keys, () => this.run(this.ctx, cmd));
      return this.run(ctx, cmd);
    }
    // A conditional command of a key runs alone among that key's writes (key-order.ts). One that
    // waited (here, or behind a flush_all) runs on the configuration in force when it starts: a
    // reload meanwhile may have replaced or removed the upstreams of the one it was received
    // under (their connections closing, a write sent on them taken as one that may land late).
    // Nothing of its key is in flight by then, so nothing orders it with the old ones.
    if ((cmd.kind === 'store' && cmd.mode !== 'set') || cmd.kind === 'arith') {
      return this.order.conditional(cmd.key, () => this.runConditional(this.ctx, cmd));
    }
    // set, delete, touch and a too-large set: replicate-write.ts tells the journal of the write
    // itself, before any upstream sees it and until every copy has landed.
    if (this.order.busyKeys === 0 && this.flushGate === undefined) return this.run(ctx, cmd); // no closure on the hot path
    return this.order.plain(cmd.key, () => this.afterFlush(cmd.key, () => this.run(this.ctx, cmd)));
  }

  /**
   * Settles once the flush_all received last is answered; undefined when none is pending. A
   * write (of any key) received meanwhile starts after it: flush_all is ordered with every write.
   */
  private flushGate: Promise<void> | undefined;

  /**
   * Runs `start` (a plain write of `key`) now, or once the pending flush_all is answered; until
   * then it counts as a write of the key in flight (key-order.ts held): a conditional command
   * received after it waits for it, as for any earlier write of its key.
   */
  private afterFlush<T>(key: string, start: () => T): T | Promise<Awaited<T>> {
    const gate = this.flushGate;
    return gate === undefined ? start() : this.order.held(key, gate, start);
  }

  /**
   * A flush_all, ordered with everything that writes: it is sent once every write received
   * before it (its copies still landing with write-wait copies included), repair and read repair
   * in flight has landed or failed (each within its upstream's timeout: one that timed out is
   * journaled as late and stays dirty through the flush), none of these starts meanwhile, and
   * client writes received after it wait until it is answered. Nothing sent before the flush can
   * then land after it and bring back a value it emptied. flush_all commands run one at a time.
   */
  private orderedFlush(): Promise<Reply> {
    return this.flushOrdered(() => replicateFlush(this.ctx));
  }

  /**
   * Runs `send` (a flush: a client's flush_all, `all`, or the repair's of an overflowed cache) alone
   * among the writes: once every write, repair and read repair in flight has settled, with none
   * starting until it is done (client writes received meanwhile wait for it). One at a time.
   */
  private flushOrdered<T>(send: () => Promise<T>, all = true): Promise<T> {
    const journal = this.ctx.journal;
    journal.flushBegan(all);
    const before = this.flushGate ?? Promise.resolve();
    const answered = before
      .then(async () => {
        await journal.quiesce();
        return send();
      })
      .finally(() => journal.flushEnded(all));
    // Writes queued behind the flush run after this (registered first) has cleared the gate.
    const gate = answered.then(noop, noop);
    this.flushGate = gate;
    void gate.then(() => {
      if (this.flushGate === gate) this.flushGate = undefined;
    });
    return answered;
  }

  /**
   * A conditional command, before any upstream sees it: repairs and read repairs of its key in
   * flight must know, until the command is answered. Its copies to the other upstreams are
   * tracked by replicate-write (they may land after the answer); the authority's own request is
   * covered only by this.
   */
  private runConditional(ctx: RouterContext, cmd: Extract<Command, { key: string }>): Promise<Reply> {
    // Its turn came while a flush_all is pending: after it (it holds its key meanwhile).
    const gate = this.flushGate;
    if (gate !== undefined) return gate.then(() => this.conditionalNow(this.ctx, cmd));
    return this.conditionalNow(ctx, cmd);
  }

  private conditionalNow(ctx: RouterContext, cmd: Extract<Command, { key: string }>): Promise<Reply> {
    const key = cmd.key;
    const seq = ctx.journal.writeStarted(key);
    let r: Promise<Reply> | Reply;
    try {
      r = this.run(ctx, cmd, seq);
    } catch (error) {
      ctx.journal.writeFinished(key);
      throw error;
    }
    return Promise.resolve(r).finally(() => ctx.journal.writeFinished(key));
  }


  /** `seq`: a conditional command's write sequence (runConditional). */
  private run(ctx: RouterContext, cmd: Command, seq?: number): Promise<Reply> | Reply {
    switch (cmd.kind) {
      case 'get':
        // Per key, as memcached counts cmd_get and cmd_touch: get_hits and get_misses count the
        // keys of every read, a gat's too, so a gat's keys count as gets as well as touches (the
        // hit ratio get_hits / cmd_get stays one; memcached counts a gat's hits as touch hits).
        this.count('get', cmd.keys.length);
        if (cmd.touch !== undefined) {
          this.count('touch', cmd.keys.length);
          ctx.journal.noteDeadline(cmd.touch);
        }
        return failoverRead(ctx, cmd);
      case 'store':
        // cmd_set counts every storage command, cas too (memcached); cas_cmds the cas alone.
        this.count('set');
        if (cmd.mode === 'cas') this.count('cas');
        ctx.journal.noteDeadline(cmd.deadline);
        if (cmd.mode === 'set') {
          return replicateSet(ctx, { mode: 'set', key: cmd.key, value: cmd.value, flags: cmd.flags, deadline: cmd.deadline, withCas: cmd.withCas });
        }
        if (cmd.mode === 'add' && isExpired(cmd.deadline, Date.now())) return existenceProbe(ctx, cmd, seq);
        return conditionalStore(ctx, cmd, seq);
      case 'too_large':
        this.count('set');
        return this.tooLarge(ctx, cmd.mode, cmd.key);
      case 'delete':
        this.count('delete');
        return replicateKeyed(ctx, 'delete', cmd.key, (u) => u.delete(cmd.key), 'DELETED');
      case 'touch':
        this.count('touch');
        ctx.journal.noteDeadline(cmd.deadline);
        return replicateKeyed(ctx, 'touch', cmd.key, (u) => u.touch(cmd.key, cmd.deadline, cmd.withItem), 'TOUCHED', cmd.deadline);
      case 'arith':
        this.count(cmd.op);
        if (cmd.initial !== undefined) ctx.journal.noteDeadline(cmd.deadline);
        return conditionalArith(ctx, cmd, seq);
      case 'flush':
        this.count('flush');
        return this.flush(cmd.delay);
      case 'version':
        return { kind: 'version', version: MEMCACHED_COMPAT_VERSION };
      case 'verbosity':
        return { kind: 'status', status: 'OK' };
      case 'stats':
        if (cmd.group === '') return { kind: 'stats', lines: statsLines(this, this.source) };
        if (cmd.group === 'upstreams') return { kind: 'stats', lines: upstreamStatsLines(ctx.upstreams, ctx.journal) };
        return { kind: 'error', type: 'ERROR', message: '' };
      case 'quit':
      case 'noop':
        return { kind: 'none' };
      default: {
        const never: never = cmd;
        throw new Error(`unhandled command ${String(never)}`);
      }
    }
  }

  /**
   * T5: a set too large deletes the old value, so that a client never reads back the value it
   * meant to replace; memcached does so for a set only, and so does mcmux: an oversized `add`,
   * `cas` or `append` changes nothing (an `add` of someone else's lock must not free it).
   */
  private async tooLarge(ctx: RouterContext, mode: StoreMode, key: string): Promise<Reply> {
    if (mode === 'set') await replicateKeyed(ctx, 'delete', key, (u) => u.delete(key), 'DELETED');
    return tooLargeReply();
  }

  private async flush(delay: number): Promise<Reply> {
    if (!this.allowFlush) {
      // T23: flush_all would wipe every session in the durable stores too.
      return serverError('flush_all is disabled: start mcmux with --allow-flush (config: allow-flush = true) to enable it');
    }
    // memcached keeps one flush time: a flush_all replaces (cancels) a delayed one still pending.
    const flush = ++this.flushes;
    if (delay > 0) {
      // memcached reads the delay like an exptime: up to 30 days relative, else a Unix time.
      const at = deadlineFromExptime(delay, Date.now());
      flushAt(at, () => {
        if (flush === this.flushes) void this.orderedFlush();
      });
      return { kind: 'status', status: 'OK' };
    }
    return this.orderedFlush();
  }
}

