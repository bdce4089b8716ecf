/**
 * `memcached://host:port` — a memcached (>= 1.6) over its meta protocol, through a small pool of
 * persistent, pipelined connections.
 *
 *   get/store/... ──acquire()──► a ready Connection (the key's own) ──► Pending record into its FIFO
 *        │                                                      └──► encode into its OutBuffer
 *        │                                                           (setImmediate: one write)
 *   socket data ──► MetaReplyParser ──► reply ──► head record of the FIFO ──► resolve / reject
 *   one timer per connection ──► head overdue? ──► TIMEOUT to it, IO to the rest, socket destroyed
 *   socket error/close ──► IO to all pending ──► reconnect after 50 ms, doubling to 2 s
 *
 * URL: memcached://host[:11211]?timeout=250&connections=1&max-queue=4096
 */

import { type Socket, connect } from 'node:net';
import { now as clockNow } from '../clock';
import { type ArithOp, type Hit, exptimeFromDeadline, parseCounter } from '../command/command';
import { ConfigError, ErrorCodes, McmuxError } from '../errors';
import { type MetaReply, MetaReplyParser, type MetaStatus, encodeFlushAll, encodeMa } from '../protocol/text/meta-client';
import { encodeMd, encodeMg, encodeMs, encodeVersion } from '../protocol/text/meta-client';
import { OutBuffer, writeChunks } from '../protocol/out-buffer';
import { createMemcachedPool } from './memcached-pool';
import { type HostPort, type UpstreamContext, intOption, rejectUnknownOptions } from './registry';
import { type ArithResult, type StoreRequest, type StoreResult, type TouchResult, type Upstream, type UpstreamStats } from './upstream';
import { maskUrl, newUpstreamStats } from './upstream';

const DEFAULT_PORT = 11211;
const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2000;
/**
 * A connection that has answered and stayed up this long (ms) resets the backoff. Not the first
 * reply alone: a server that answers one request and then closes every connection (or a proxy in
 * front of a dead one) would be reconnected 20 times a second, each reconnect fencing the
 * upstream and making the cold detector read its marker.
 */
const STABLE_MS = 1000;

const Op = { GET: 0, STORE: 1, DELETE: 2, TOUCH: 3, ARITH: 4, FLUSH: 5, PROBE: 6 } as const;
type Op = (typeof Op)[keyof typeof Op];

/** meta `ms` mode flag per store mode; cas is a set guarded by C<cas>. */
const MODE_FLAG = { set: 'S', add: 'E', replace: 'R', append: 'A', prepend: 'P', cas: 'S' } as const;

/** One request on the wire, waiting for `expected` replies (one per key for a multi-get). */
interface Pending {
  readonly op: Op;
  readonly expected: number;
  received: number;
  readonly hits: Array<Hit | undefined> | undefined; // GET: results aligned with keys
  readonly touch: number | undefined; // GET: the gat deadline, reported as each hit's deadline
  failure: McmuxError | undefined; // GET: first error reply, reported once all replies are in
  /** The O token sent with the first reply's request (one per key: opaque + received); undefined for flush_all and version, which echo none. */
  readonly opaque: number | undefined;
  readonly started: number; // clock.now() when queued
  readonly timeoutAt: number;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: McmuxError) => void;
}

/** An array-backed ring: push at the tail, shift from the head, no per-item allocation. */
class Fifo<T> {
  private items: Array<T | undefined> = new Array<T | undefined>(16);
  private head = 0;
  length = 0;

  push(item: T): void {
    if (this.length === this.items.length) {
      const grown = new Array<T | undefined>(this.items.length * 2);
      for (let i = 0; i < this.length; i++) grown[i] = this.items[(this.head + i) & (this.items.length - 1)];
      this.items = grown;
      this.head = 0;
    }
    this.items[(this.head + this.length) & (this.items.length - 1)] = item;
    this.length++;
  }

  peek(): T | undefined {
    return this.length === 0 ? undefined : this.items[this.head];
  }

  shift(): T | undefined {
    if (this.length === 0) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) & (this.items.length - 1);
    this.length--;
    return item;
  }
}

type ConnStatus = 'connecting' | 'ready' | 'down' | 'closed';

class Connection {
  status: ConnStatus = 'down';
  /** No attempt has failed yet: requests may wait for this first connect instead of failing fast. */
  fresh = true;
  /** Why it last failed (connection refused, timed out, closed), for the requests refused meanwhile. */
  lastFailure: string | undefined;
  readonly pending = new Fifo<Pending>();
  private socket: Socket | undefined;
  private parser: MetaReplyParser;
  private timer: NodeJS.Timeout | undefined; // fires at (or before) the head record's timeoutAt
  private connectTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs = BACKOFF_MIN_MS;
  /** When the current connection was made (clock ms). */
  private connectedAt = 0;
  private readonly outBuffer = new OutBuffer();
  private flushScheduled = false;
  private connectedBefore = false;
  /**
   * The O token of the last meta request sent. Every meta reply echoes its request's, so a reply
   * the server sent too many, lost, or sent before it was asked (a broken or hostile server, or
   * something between) is caught before it answers another key's request.
   */
  private lastOpaque = 0;
  /**
   * The newest requests in `pending` whose bytes are still in outBuffer, not yet handed to the
   * socket: if the connection goes before they are written, they were never sent, and fail as
   * such (UNREACHABLE, which the router fails over) instead of "may have been applied".
   */
  private unsent = 0;

  constructor(private readonly up: MemcachedUpstream) {
    this.parser = new MetaReplyParser(up.maxItemSize);
  }

  connect(): void {
    this.reconnectTimer = undefined;
    const socket = connect({ host: this.up.host, port: this.up.port });
    socket.setNoDelay(true);
    socket.on('connect', this.onConnect).on('data', this.onData).on('end', this.onEnd).on('error', this.onError).on('close', this.onClose);
    this.socket = socket;
    this.parser = new MetaReplyParser(this.up.maxItemSize);
    this.status = 'connecting';
    this.connectTimer = setTimeout(this.onConnectTimeout, this.up.timeoutMs);
  }

  /** The O tokens for `n` replies of the next request: base, base + 1, ... */
  opaques(n: number): number {
    const base = this.lastOpaque + 1;
    this.lastOpaque += n;
    return base;
  }

  enqueue<T>(op: Op, expected: number, touch?: number, opaque?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const now = clockNow();
      this.pending.push({
        op,
        expected,
        received: 0,
        hits: op === Op.GET ? new Array<Hit | undefined>(expected) : undefined,
        touch,
        failure: undefined,
        opaque,
        started: now,
        timeoutAt: now + this.up.timeoutMs,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      this.unsent++;
      if (!this.timer) this.timer = setTimeout(this.checkTimeout, this.up.timeoutMs);
    });
  }

  /**
   * Where requests are encoded. They are written after the event loop's poll phase
   * (setImmediate), not on the next tick: the requests of every client read in one loop
   * iteration leave in one write, and memcached reads them in one syscall (what makes twemproxy
   * cheap for the server).
   */
  get out(): OutBuffer {
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushOut);
    }
    return this.outBuffer;
  }

  /** Discards the socket and everything pending on it, then reconnects after a backoff. */
  fail(err: McmuxError): void {
    if (this.status === 'closed') return;
    const prefix = `upstream ${this.up.name}: `;
    this.lastFailure = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    this.teardown(err);
    this.status = 'down';
    this.fresh = false;
    this.reconnectTimer = setTimeout(() => this.connect(), this.backoffMs).unref();
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
  }

  close(err: McmuxError): Promise<void> {
    const socket = this.socket;
    const closed = socket && !socket.closed ? new Promise<void>((r) => socket.once('close', () => r())) : undefined;
    this.teardown(err);
    this.status = 'closed';
    clearTimeout(this.reconnectTimer);
    return closed ?? Promise.resolve();
  }

  private teardown(err: McmuxError): void {
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      // A socket once discarded must never deliver a reply: a late one would be paired with a
      // request it does not belong to.
      socket.removeListener('connect', this.onConnect).removeListener('data', this.onData).removeListener('end', this.onEnd);
      socket.removeListener('error', this.onError).removeListener('close', this.onClose);
      socket.on('error', ignore);
      socket.destroy();
    }
    clearTimeout(this.timer);
    clearTimeout(this.connectTimer);
    this.timer = this.connectTimer = undefined;
    this.outBuffer.discard();
    // The unsent are the newest: a head taken off unsent (timed out before the flush) was one.
    let sent = this.pending.length - Math.min(this.unsent, this.pending.length);
    this.unsent = 0;
    const unsent = sent < this.pending.length && err.code === ErrorCodes.UPSTREAM_IO ? this.up.error(ErrorCodes.UPSTREAM_UNREACHABLE, 'the connection went before the request was written') : err;
    for (let rec = this.pending.shift(); rec; rec = this.pending.shift()) this.up.settleError(rec, sent-- > 0 ? err : unsent);
  }

  private readonly flushOut = (): void => {
    this.flushScheduled = false;
    const chunks = this.outBuffer.take();
    if (this.socket) {
      writeChunks(this.socket, chunks);
      this.unsent = 0;
    }
  };

  private readonly onConnect = (): void => {
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.connectedAt = clockNow();
    if (!this.connectedBefore) {
      this.connectedBefore = true;
      this.status = 'ready';
      return;
    }
    // A connection made again after one was lost: the server may have restarted empty, which
    // onReconnect makes the cold detector look into (it fences the store meanwhile and voids its
    // cas tokens). Said once the server answers a `version`, not at connect: a server that hangs
    // while its kernel still accepts connections (SIGSTOP, a stuck process) was "reconnected"
    // after every timeout, fencing the store (a whole pool, for one server) and voiding every
    // token each time. Until then the connection stays 'connecting': acquire() sends nothing on
    // it, and a request for it fails over at once instead of waiting out its timeout.
    const socket = this.socket;
    this.up.stats.requests++;
    this.enqueue<void>(Op.PROBE, 1).then(
      () => {
        if (this.socket !== socket) return;
        this.status = 'ready';
        this.up.onReconnect?.();
      },
      ignore,
    );
    encodeVersion(this.out);
  };

  private readonly onConnectTimeout = (): void => {
    this.fail(this.up.error(ErrorCodes.UPSTREAM_UNREACHABLE, `connect timed out after ${this.up.timeoutMs} ms (option timeout)`));
  };

  private readonly onError = (err: Error): void => {
    // Requests queued on a socket that never connected were never sent: none can be applied.
    this.fail(this.up.error(this.status === 'connecting' ? ErrorCodes.UPSTREAM_UNREACHABLE : ErrorCodes.UPSTREAM_IO, err.message));
  };

  private readonly onClose = (): void => {
    this.fail(this.up.error(ErrorCodes.UPSTREAM_IO, 'connection closed by the server'));
  };

  /**
   * The server closed its side (a FIN: it exited, or closed the connection). Node's 'close' comes
   * only once our side is shut down too, a loop pass or more later: a request taken meanwhile
   * would be written after the FIN, fail as "may have been applied", and a cas answer SERVER_ERROR
   * instead of failing over (cas-failover.test.ts, under load). The connection goes now.
   */
  private readonly onEnd = (): void => {
    this.fail(this.up.error(ErrorCodes.UPSTREAM_IO, 'connection closed by the server'));
  };

  private readonly checkTimeout = (): void => {
    this.timer = undefined;
    const head = this.pending.peek();
    if (!head) return;
    const now = clockNow();
    if (now < head.timeoutAt) {
      // Records are queued in timeout order, so the head's deadline is the next one due.
      this.timer = setTimeout(this.checkTimeout, Math.ceil(head.timeoutAt - now));
      return;
    }
    this.pending.shift();
    this.up.stats.timeouts++;
    this.up.settleError(head, this.up.error(ErrorCodes.UPSTREAM_TIMEOUT, `no reply within ${this.up.timeoutMs} ms (option timeout)`));
    // The requests behind it were sent: the server may still apply them (late), after requests
    // sent later on the new connection.
    this.fail(this.up.error(ErrorCodes.UPSTREAM_IO, 'connection discarded after a request on it timed out', true));
  };

  private readonly onData = (chunk: Buffer): void => {
    if (this.pending.length === 0) {
      // Nothing was asked: buffering it until it parses would let a broken server fill memory.
      this.fail(this.up.error(ErrorCodes.UPSTREAM_PROTOCOL, `${chunk.length} bytes with no request outstanding`));
      return;
    }
    this.parser.push(chunk);
    for (let reply = this.parser.next(); reply; reply = this.parser.next()) {
      const rec = this.pending.peek();
      if (!rec) {
        this.fail(this.up.error(ErrorCodes.UPSTREAM_PROTOCOL, `reply "${reply.kind}" with no request outstanding`));
        return;
      }
      // An error line echoes no token; the next reply will, and is checked. A reply that did not
      // parse is reported as such (decode).
      const k = reply.kind;
      const stray = rec.opaque !== undefined && k !== 'SERVER_ERROR' && k !== 'CLIENT_ERROR' && k !== 'protocol_error' && (reply as MetaStatus).opaque !== rec.opaque + rec.received;
      const outcome = stray ? strayReply(reply as MetaStatus, rec.opaque + rec.received) : decode(rec, reply);
      if (outcome instanceof McmuxError && outcome.code === ErrorCodes.UPSTREAM_PROTOCOL) {
        // The stream no longer lines up with our requests: nothing after this can be trusted.
        this.pending.shift();
        this.up.settleError(rec, this.up.error(outcome.code, outcome.message));
        this.fail(this.up.error(ErrorCodes.UPSTREAM_IO, 'connection discarded after a protocol error', true));
        return;
      }
      // A reply proves the server alive, not just its listen queue; staying up proves it well.
      if (this.backoffMs !== BACKOFF_MIN_MS && clockNow() - this.connectedAt >= STABLE_MS) this.backoffMs = BACKOFF_MIN_MS;
      if (rec.hits) {
        if (outcome instanceof McmuxError) rec.failure ??= outcome;
        else rec.hits[rec.received] = outcome as Hit | undefined;
      }
      if (++rec.received < rec.expected) continue;
      this.pending.shift();
      this.up.settle(rec, rec.failure ?? (rec.hits ? rec.hits : outcome));
    }
    // Every request answered, yet bytes remain (the start of a reply nobody asked for): kept,
    // they would be taken as the reply to the next request sent.
    if (this.pending.length === 0 && this.parser.buffered > 0) {
      this.fail(this.up.error(ErrorCodes.UPSTREAM_PROTOCOL, `${this.parser.buffered} bytes with no request outstanding`));
    }
  };
}

function ignore(): void {}

/**
 * The deadline (Unix ms) of an item memcached says has `ttl` whole seconds left: its exptime minus
 * its clock, a second that ticks at its own phase and may be one behind the wall clock's. The item
 * ends at the start of a wall second between now's + ttl - 1 and now's + ttl: the copies mcmux
 * makes of it (read repair, an incr's or append's result) take the earlier, so that none outlives
 * it (`now + ttl * 1000` made them up to 2 s later than the deadline the client set: the expiry
 * review, test/server/review-expiry.test.ts).
 */
export function deadlineFromTtl(ttl: number, now: number): number {
  return (Math.floor(now / 1000) + ttl - 1) * 1000;
}

/** FNV-1a over the key's code units: which connection a key's requests go on. */
function keyHash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** What one reply means for the request at the head; a McmuxError for an error reply. */
function decode(rec: Pending, r: MetaReply): unknown {
  if (r.kind === 'SERVER_ERROR') {
    // An ms memcached cannot allocate the item for (too large, out of memory) unlinks the key's
    // item before it is refused, in every mode: the copy there is gone (dropped).
    return new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `SERVER_ERROR ${r.message}`, false, ErrorCodes.UPSTREAM_REFUSED, rec.op === Op.STORE);
  }
  switch (rec.op) {
    case Op.GET:
      if (r.kind === 'EN') return undefined;
      if (r.kind === 'VA') {
        // t is the remaining lifetime in whole seconds, -1 for none; a gat reports what it set.
        const deadline = rec.touch ?? (r.ttl === undefined || r.ttl === -1 ? 0 : deadlineFromTtl(r.ttl, Date.now()));
        const hit: Hit = { value: r.value, flags: r.flags ?? 0, cas: r.cas ?? 0n, deadline };
        return hit;
      }
      break;
    case Op.STORE:
      if (r.kind === 'HD') return r.cas === undefined ? { status: 'STORED' } : { status: 'STORED', cas: r.cas };
      if (r.kind === 'NS') return { status: 'NOT_STORED' };
      if (r.kind === 'EX') return { status: 'EXISTS' };
      if (r.kind === 'NF') return { status: 'NOT_FOUND' };
      break;
    case Op.DELETE:
      return r.kind === 'HD' ? 'DELETED' : r.kind === 'NF' ? 'NOT_FOUND' : unexpected(r);
    case Op.TOUCH:
      // With f c asked (withItem): the item's flags and unique, which the touch leaves as they were.
      if (r.kind === 'HD') return r.cas === undefined ? 'TOUCHED' : { flags: r.flags ?? 0, cas: r.cas };
      return r.kind === 'EN' ? 'NOT_FOUND' : unexpected(r);
    case Op.ARITH:
      if (r.kind === 'NF') return { status: 'NOT_FOUND' };
      if (r.kind === 'CLIENT_ERROR' && r.message.includes('non-numeric')) return { status: 'NON_NUMERIC' };
      if (r.kind === 'VA') {
        const value = parseCounter(r.value);
        if (value !== undefined) return r.cas === undefined ? { status: 'OK', value } : { status: 'OK', value, cas: r.cas };
        return new McmuxError(ErrorCodes.UPSTREAM_PROTOCOL, 'ma returned a value that is not a number');
      }
      break;
    case Op.FLUSH:
      return r.kind === 'OK' ? undefined : unexpected(r);
    case Op.PROBE:
      return r.kind === 'VERSION' ? undefined : unexpected(r);
  }
  return unexpected(r);
}

/** A reply that echoes another request's O token, or none: the stream is out of step. */
function strayReply(r: MetaStatus, expected: number): McmuxError {
  const got = r.opaque === undefined ? 'no opaque token' : `opaque O${r.opaque}`;
  return new McmuxError(ErrorCodes.UPSTREAM_PROTOCOL, `reply ${r.kind} with ${got} where O${expected} was sent: replies out of step with requests`);
}

function unexpected(r: MetaReply): McmuxError {
  // memcached swallows the data of a refused ms, so CLIENT_ERROR keeps the stream in step;
  // ERROR (an unknown command: memcached < 1.6?) or a mismatched reply does not.
  if (r.kind === 'CLIENT_ERROR') return new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `CLIENT_ERROR ${r.message}`);
  const detail = r.kind === 'protocol_error' ? r.message : `unexpected reply ${r.kind}`;
  return new McmuxError(ErrorCodes.UPSTREAM_PROTOCOL, `${detail} (is it memcached >= 1.6?)`);
}

export class MemcachedUpstream implements Upstream {
  readonly scheme = 'memcached';
  readonly stats: UpstreamStats = newUpstreamStats();
  onReconnect: (() => void) | undefined;
  private readonly conns: Connection[];
  private closed = false;

  constructor(
    readonly name: string,
    readonly host: string,
    readonly port: number,
    readonly timeoutMs: number,
    connections: number,
    readonly maxQueue: number,
    /** The largest value a reply may carry (max-item-size); a larger one is a protocol error. */
    readonly maxItemSize = Number.POSITIVE_INFINITY,
  ) {
    this.conns = Array.from({ length: connections }, () => new Connection(this));
    for (const c of this.conns) c.connect();
  }

  // Not async functions: each async layer costs a promise and a microtask per request. A refusal
  // from acquire() is still a rejected promise, never a throw.
  get(keys: readonly string[], touch?: number, valueOnly = false): Promise<Array<Hit | undefined>> {
    const conn = this.acquire(keys[0] ?? '');
    if (conn instanceof McmuxError) return Promise.reject(conn);
    if (keys.length === 0) return Promise.resolve([]);
    // Without c and t memcached formats less and we parse less (no BigInt, no clock).
    const flags = touch === undefined ? (valueOnly ? 'v f' : 'v f c t') : `v f c t T${exptimeFromDeadline(touch, Date.now())}`;
    const o = conn.opaques(keys.length);
    const p = conn.enqueue<Array<Hit | undefined>>(Op.GET, keys.length, touch, o);
    const out = conn.out;
    for (let i = 0; i < keys.length; i++) encodeMg(out, keys[i] as string, `${flags} O${o + i}`);
    return p;
  }

  store(req: StoreRequest): Promise<StoreResult> {
    const conn = this.acquire(req.key);
    if (conn instanceof McmuxError) return Promise.reject(conn);
    // c: return the new unique, unless the caller said it has no use for it (no BigInt to parse).
    let flags = req.withCas === false ? `M${MODE_FLAG[req.mode]}` : `M${MODE_FLAG[req.mode]} c`;
    // append/prepend keep the existing item's flags and ttl: send neither.
    if (req.mode !== 'append' && req.mode !== 'prepend') {
      // A past deadline becomes T-1, which memcached stores as already expired: the key is absent.
      flags = `F${req.flags} T${exptimeFromDeadline(req.deadline, Date.now())} ${flags}`;
    }
    if (req.mode === 'cas') flags += ` C${req.cas ?? 0n}`; // C0 never matches: EXISTS or NOT_FOUND
    const o = conn.opaques(1);
    const p = conn.enqueue<StoreResult>(Op.STORE, 1, undefined, o);
    encodeMs(conn.out, req.key, req.value, `${flags} O${o}`);
    return p;
  }

  delete(key: string): Promise<'DELETED' | 'NOT_FOUND'> {
    return this.send(Op.DELETE, key, (out, o) => encodeMd(out, key, `O${o}`));
  }

  /**
   * memcached 1.6.18 has no `mt`: a `mg` with T and no v touches without fetching (HD / EN).
   * withItem adds f c: the same request answers the item's flags and unique (HD f.. c..).
   */
  touch(key: string, deadline: number, withItem = false): Promise<TouchResult> {
    const fc = withItem ? ' f c' : '';
    return this.send(Op.TOUCH, key, (out, o) => encodeMg(out, key, `T${exptimeFromDeadline(deadline, Date.now())}${fc} O${o}`));
  }

  arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult> {
    return this.send(Op.ARITH, key, (out, o) => encodeMa(out, key, `M${op === 'incr' ? 'I' : 'D'} D${delta} v c O${o}`));
  }

  flush(): Promise<void> {
    return this.send(Op.FLUSH, '', encodeFlushAll, false);
  }

  probe(): Promise<void> {
    return this.send(Op.PROBE, '', encodeVersion, false);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.conns.map((c) => c.close(this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed'))));
  }

  /** A request of one line and one reply; `meta`: a meta command, sent with an O token (`encode`'s second argument) that its reply must echo. */
  private send<T>(op: Op, key: string, encode: (out: OutBuffer, opaque: number) => void, meta = true): Promise<T> {
    const conn = this.acquire(key);
    if (conn instanceof McmuxError) return Promise.reject(conn);
    const o = meta ? conn.opaques(1) : 0;
    const p = conn.enqueue<T>(op, 1, undefined, meta ? o : undefined);
    encode(conn.out, o);
    return p;
  }

  /** A connection to send on, or the error to fail the request with at once (never wait for a reconnect). */
  private acquire(key: string): Connection | McmuxError {
    this.stats.requests++;
    if (this.closed) return this.refuse(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed');
    const n = this.conns.length;
    // One connection per key, and only that one: memcached serves its connections on several
    // threads, so two writes of a key sent on two connections could land in either order (a set
    // sent on another while the key's own reconnects, then a delete on its own once it is back),
    // and two upstreams would end up holding different values of one session. A read repair's
    // add and a delete racing it are ordered the same way. While it is down the key's requests
    // fail at once (the router journals a write), as with a single connection.
    const conn = this.conns[n === 1 ? 0 : keyHash(key) % n] as Connection;
    // Right after start-up its first connect is still under way: it carries the requests (they
    // wait in its socket, in order), bounded by the request timeout.
    if (conn.status !== 'ready' && !(conn.status === 'connecting' && conn.fresh)) {
      const why = conn.lastFailure === undefined ? '' : `; it failed: ${conn.lastFailure}`;
      return this.refuse(ErrorCodes.UPSTREAM_UNREACHABLE, `the connection for this key is not up (reconnecting${why})`);
    }
    if (conn.pending.length >= this.maxQueue) {
      return this.refuse(ErrorCodes.UPSTREAM_BUSY, `${this.maxQueue} requests already queued on a connection (option max-queue)`);
    }
    return conn;
  }

  error(code: McmuxError['code'], message: string, late = false, dropped = false): McmuxError {
    return new McmuxError(code, `upstream ${this.name}: ${message}`, late, code, dropped);
  }

  private refuse(code: McmuxError['code'], message: string): McmuxError {
    this.stats.errors++;
    return this.error(code, message);
  }

  /** `outcome` is the value to resolve with, or a McmuxError (an error reply from the server). */
  settle(rec: Pending, outcome: unknown): void {
    this.stats.latencyUsSum += Math.round((clockNow() - rec.started) * 1000);
    this.stats.latencyCount++;
    if (outcome instanceof McmuxError) this.settleError(rec, this.error(outcome.code, outcome.message, false, outcome.dropped));
    else rec.resolve(outcome);
  }

  settleError(rec: Pending, err: McmuxError): void {
    this.stats.errors++;
    rec.reject(err);
  }
}

/**
 * Options (URL query or TOML keys):
 * - `timeout`: ms a request (and a connect) may take; default `--timeout`, else 250.
 * - `connections`: persistent connections in the pool; default 1, as twemproxy's
 *   `server_connections`. Every connection is written and read once per loop pass that has
 *   requests for it: one connection gives memcached the largest batches and mcmux the fewest
 *   syscalls (two upstreams, unpipelined: 5 % less CPU per request and 13 % more requests a
 *   second than with 2; docs/benchmarks.md). More spread one mcmux's load over several of a
 *   multi-threaded memcached's worker threads.
 * - `max-queue`: requests waiting or in flight per connection before new ones are refused
 *   with MCMUX_UPSTREAM_BUSY; default 4096.
 * Several hosts (`memcached://h1:p1,h2:p2`) make one sharded upstream: see memcached-pool.ts.
 */
export function createMemcachedUpstream(url: URL, options: Map<string, string>, ctx: UpstreamContext, hosts: HostPort[] = []): Upstream {
  // mcmux speaks no SASL: credentials would be dropped, and an operator who wrote them believes
  // the store is reached with them (review).
  if (url.username !== '' || url.password !== '') {
    throw new ConfigError(`upstream ${maskUrl(url.href)}: a user or password, but mcmux speaks no SASL to memcached and would connect without them: expected memcached://host:port`);
  }
  if (hosts.length > 1) return createMemcachedPool(url, options, ctx, hosts, createMemcachedUpstream);
  const name = maskUrl(url.href);
  const where = `upstream ${name}`;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new ConfigError(`${where}: no host: expected memcached://host:port`);
  const port = url.port === '' ? DEFAULT_PORT : Number(url.port);
  const timeoutMs = intOption(options, 'timeout', ctx.defaultTimeoutMs ?? 250, 1, 600_000, where);
  const connections = intOption(options, 'connections', 1, 1, 64, where);
  const maxQueue = intOption(options, 'max-queue', 4096, 1, 1_000_000, where);
  rejectUnknownOptions(options, where, ['timeout', 'connections', 'max-queue']);
  return new MemcachedUpstream(name, host, port, timeoutMs, connections, maxQueue, ctx.maxItemSize);
}
