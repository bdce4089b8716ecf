/**
 * The client side of a load run: connections that each keep up to `depth` requests in flight,
 * grouped so that they share one request source, one histogram and one set of counters.
 *
 *   Group: source of ops, counters, histogram, measuring/issuing switches
 *     └─ Conn × C: socket ─► ReplyReader ─► reply() pairs each reply with the oldest request
 *
 * Every reply that completes is replaced by a new request, and all requests made while handling
 * one 'data' event go out in one write. Latency runs from that write to the parsed reply; both
 * ends share the event's timestamp, so a reply costs one histogram increment, not a clock read.
 */

import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Histogram } from './histogram';
import { Reply, ReplyReader, type ReplySink } from './reply-reader';
import type { Workload } from './workload';

export interface PartResult {
  /** Latency histograms (Histogram.counts) of gets and of sets. */
  getCounts: Uint32Array;
  setCounts: Uint32Array;
  getOps: number;
  setOps: number;
  errors: number;
  connErrors: number;
  misses: number;
}

const CONNECT_TIMEOUT_MS = 5000;
export const DRAIN_TIMEOUT_MS = 3000;

/** Where a Group takes its next request from: an op (key * 2 + isSet), or -1 for none now. */
export type Source = () => number;

/** Connections sharing one request source, one histogram per command kind and one set of counters. */
export class Group {
  readonly getHist = new Histogram();
  readonly setHist = new Histogram();
  readonly conns: Conn[] = [];
  getOps = 0;
  setOps = 0;
  errors = 0;
  connErrors = 0;
  misses = 0;
  measuring = false;
  issuing = true;
  inflight = 0;
  /**
   * Milliseconds a connection with nothing in flight waits after a reply before its next request:
   * paced round trips, as a sidecar sees them between one page's requests and the next. 0: at once.
   */
  pauseMs = 0;
  private onSettled: (() => void) | null = null;

  constructor(readonly work: Workload, readonly next: Source) {}

  get ops(): number {
    return this.getOps + this.setOps;
  }

  done(latencyUs: number, set: boolean, ok: boolean, miss: boolean): void {
    if (!this.measuring) return;
    if (set) {
      this.setHist.record(latencyUs);
      this.setOps++;
    } else {
      this.getHist.record(latencyUs);
      this.getOps++;
    }
    if (!ok) this.errors++;
    if (miss) this.misses++;
  }

  /**
   * Resolves true once nothing is in flight (every reply in, or its socket gone): after `stop()`,
   * or when the source runs dry. Resolves false if that takes longer than `ms`.
   */
  settle(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      this.onSettled = () => {
        clearTimeout(timer);
        this.onSettled = null;
        resolve(true);
      };
      this.checkSettled();
    });
  }

  checkSettled(): void {
    if (this.inflight === 0 && this.onSettled) this.onSettled();
  }

  /** Stops issuing, waits (bounded) for the replies still due, closes every socket. */
  async stop(): Promise<void> {
    this.measuring = false;
    this.issuing = false;
    await this.settle(DRAIN_TIMEOUT_MS);
    for (const c of this.conns) c.socket.destroy();
  }

  result(): PartResult {
    const { getOps, setOps, errors, connErrors, misses } = this;
    return { getCounts: this.getHist.counts, setCounts: this.setHist.counts, getOps, setOps, errors, connErrors, misses };
  }

  /** What was counted since the last take (or the start), as copies; then starts counting afresh. */
  take(): PartResult {
    const r = this.result();
    const copy = { ...r, getCounts: r.getCounts.slice(), setCounts: r.setCounts.slice() };
    this.getHist.reset();
    this.setHist.reset();
    this.getOps = this.setOps = this.errors = this.connErrors = this.misses = 0;
    return copy;
  }
}

/** One socket with up to `depth` requests in flight, answered in order (memcached never reorders). */
class Conn implements ReplySink {
  private readonly reader = new ReplyReader(this);
  private readonly starts: Float64Array; // ring: when each in-flight request was written
  private readonly isSet: Uint8Array; // ring: 1 if that request is a set
  private head = 0;
  private inflight = 0;
  private readonly batch: Int32Array; // ops made during this event, written at its end
  private batchLen = 0;
  private now = 0;
  private dead = false;

  constructor(readonly socket: Socket, private readonly group: Group, private readonly depth: number) {
    this.starts = new Float64Array(depth);
    this.isSet = new Uint8Array(depth);
    this.batch = new Int32Array(depth);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.fail());
    socket.on('close', () => this.fail());
  }

  start(): void {
    this.now = performance.now();
    this.fill();
    this.flush();
  }

  private onData(chunk: Buffer): void {
    this.now = performance.now();
    this.reader.feed(chunk);
    if (this.reader.broken) return this.fail();
    if (this.group.pauseMs > 0 && this.inflight === 0 && this.group.issuing) {
      // Not settled yet: the source may still have requests for after the pause.
      setTimeout(this.resume, this.group.pauseMs);
      return;
    }
    this.fill();
    this.flush();
    if (this.inflight === 0) this.group.checkSettled();
  }

  private readonly resume = (): void => {
    if (this.dead) return;
    this.start();
    if (this.inflight === 0) this.group.checkSettled();
  };

  reply(kind: Reply, hadValue: boolean): void {
    if (this.inflight === 0) {
      // A reply with no request: the stream is out of step, nothing after it can be paired.
      this.reader.broken = 'reply without a request';
      return;
    }
    const i = this.head;
    const set = this.isSet[i] === 1;
    this.head = i + 1 === this.depth ? 0 : i + 1;
    this.inflight--;
    this.group.inflight--;
    const ok = set ? kind === Reply.stored : kind === Reply.end;
    this.group.done((this.now - this.starts[i]!) * 1000, set, ok, !set && ok && !hadValue);
  }

  private fill(): void {
    const g = this.group;
    while (g.issuing && this.inflight < this.depth) {
      const op = g.next();
      if (op < 0) break;
      let i = this.head + this.inflight;
      if (i >= this.depth) i -= this.depth;
      this.starts[i] = this.now;
      this.isSet[i] = op & 1;
      this.inflight++;
      g.inflight++;
      this.batch[this.batchLen++] = op;
    }
  }

  private flush(): void {
    if (this.batchLen === 0 || this.dead) return;
    const w = this.group.work;
    let len = 0;
    for (let b = 0; b < this.batchLen; b++) len += w.requestLength(this.batch[b]!);
    const out = Buffer.allocUnsafe(len);
    let at = 0;
    for (let b = 0; b < this.batchLen; b++) at = w.writeRequest(this.batch[b]!, out, at);
    this.batchLen = 0;
    this.socket.write(out);
  }

  private fail(): void {
    if (this.dead) return;
    this.dead = true;
    if (this.group.issuing || this.inflight > 0) this.group.connErrors++;
    this.group.inflight -= this.inflight;
    this.inflight = 0;
    this.socket.destroy();
    this.group.checkSettled();
  }
}

function openSocket(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect ${host}:${port}: no answer in ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function openGroup(host: string, port: number, n: number, depth: number, g: Group): Promise<Group> {
  const sockets = await Promise.allSettled(Array.from({ length: n }, () => openSocket(host, port)));
  for (const s of sockets) {
    if (s.status === 'fulfilled') g.conns.push(new Conn(s.value, g, depth));
    else g.connErrors++;
  }
  if (g.conns.length === 0) throw new Error(`could not connect to ${host}:${port}`);
  return g;
}
