/**
 * Session-like traffic for the fault tests, every operation recorded, and the checker that
 * judges the record against the consistency model of the README.
 *
 *   startWorkload(opts) ─► C clients, one raw socket each, pipelining 1-3 commands at a time:
 *       get / multi-get, set, touch, delete of session keys; lock cycles (add lock.<id>,
 *       the holder reads it and writes its session, delete lock.<id>)
 *   every operation ─► OpRecord { start, end, request, reply, outcome, ... }
 *   checkWorkload(ops, bounds) ─► violations of rules a-f (below) and a summary of the counts
 *   checkHeld(ops, ...) ─► rule a for what one upstream holds, read directly
 *
 * Values say who wrote them: `v|<client>|<seq>|<key>|<padding>`, seq counting the client's
 * writes. Each session key has ONE writer client, whose writes go out one connection in order,
 * so a key's writes are totally ordered by seq and the state any read may see is well defined.
 * Lock keys are shared by every client: that is what mutual exclusion is about.
 *
 * The rules (a write is "acknowledged before a read began" when its reply came before the read
 * was sent, or when it came before the read on the read's own connection: mcmux runs a
 * connection's commands after the writes before them):
 *   a  no acknowledged write lost: a final read (or an upstream read directly) holds the last
 *      acknowledged write of the key, or a later one, or a miss if that was a delete; a touch
 *      answered NOT_FOUND for a key whose last acknowledged write is a set counts here too
 *   b  no read older than the last write acknowledged before the read began
 *   c  no deleted key read (value, or TOUCHED) unless written again after the delete
 *   d  at most one lock holder per lock key at any time: a client certainly holds its lock from
 *      the STORED reply of its add until it sends the delete (or the 30 s TTL); two such
 *      intervals of different clients may not meet; a holder reading its lock must see its own
 *   e  no reply paired with the wrong request: VALUE keys are the keys asked, in order, and each
 *      value names the same key; every reply has the form its command expects
 *   f  no client waited longer than the bound of its command (sum of the upstream timeouts it
 *      may need, plus a margin), counting from when its connection let it start
 */

import { type Socket, connect } from 'node:net';
import { mulberry32 } from './random';

export type OpKind = 'get' | 'set' | 'delete' | 'touch' | 'lock-add' | 'lock-get' | 'lock-delete';
/** ok: a protocol answer; error: an error reply; closed: the connection went first; timeout: ours. */
export type Outcome = 'ok' | 'error' | 'closed' | 'timeout';

export interface ValueHit {
  readonly key: string;
  readonly flags: number;
  readonly value: string;
}

export interface OpRecord {
  readonly id: number;
  /** Client number; manual clients come after the workload's. */
  readonly client: number;
  /** Connection number, unique in the workload, and the op's position on it. */
  readonly conn: number;
  readonly pos: number;
  readonly kind: OpKind;
  readonly keys: readonly string[];
  /** Session writes (set, delete): the writer's sequence number. */
  readonly seq: number | undefined;
  /** What a set or lock-add sent. */
  readonly value: string | undefined;
  /** The command line, without its data block. */
  readonly request: string;
  readonly phase: string;
  /** performance.now() when sent. */
  readonly start: number;
  /** performance.now() when its reply (or the failure) arrived; NaN while pending. */
  end: number;
  outcome: Outcome | undefined;
  /** First word of the reply: STORED, END, SERVER_ERROR, ... ('' when none arrived). */
  status: string;
  /** The reply, shortened. */
  reply: string;
  hits: ValueHit[] | undefined;
  /** Set when the reply does not have the form the command expects. */
  malformed: string | undefined;
}

export interface WorkloadOptions {
  /** mcmux's port; a function when it may change between connects. */
  readonly port: number | (() => number);
  readonly clients: number;
  readonly keysPerClient: number;
  /** Lock ids shared by all clients. */
  readonly lockIds: number;
  /** Prefix of every key, so that scenarios never see each other's data. */
  readonly prefix: string;
  /** Bound on the whole run, ms (the workload stops itself). */
  readonly maxDurationMs: number;
  /** Bound on operations per client. */
  readonly maxOpsPerClient?: number;
  readonly seed?: number;
  /** A reply slower than this is recorded as 'timeout' and the connection dropped (default 10 s). */
  readonly replyTimeoutMs?: number;
}

export interface Workload {
  readonly ops: readonly OpRecord[];
  /** Every session key (the keys the checker follows; manual clients add theirs). */
  readonly keys: readonly string[];
  /** Bytes that arrived with no request waiting (rule e). */
  readonly unsolicited: ReadonlyArray<{ client: number; conn: number; text: string }>;
  /** Label for the operations sent from now on (shows in the summary and in violations). */
  setPhase(name: string): void;
  readonly phase: string;
  /** Resolves once `n` more operations completed (or the workload ended). */
  more(n: number): Promise<void>;
  /** A client driven by the test, recorded like the others. It must write only its own keys. */
  manual(): ManualClient;
  /** Stops sending, waits for the replies still due (bounded by the reply timeout). */
  stop(): Promise<void>;
}

export interface ManualClient {
  readonly id: number;
  set(key: string, exptime?: number): Promise<OpRecord>;
  get(keys: readonly string[]): Promise<OpRecord>;
  delete(key: string): Promise<OpRecord>;
  touch(key: string, exptime: number): Promise<OpRecord>;
  lockAdd(key: string): Promise<OpRecord>;
  lockDelete(key: string): Promise<OpRecord>;
  close(): void;
}


const SHORT = 200;
/** How long a manual client keeps trying to connect (mcmux restarting). */
const MANUAL_CONNECT_MS = 5000;

export function sessionValue(client: number, seq: number, key: string, pad: number): string {
  return `v|${client}|${seq}|${key}|${'x'.repeat(pad)}`;
}

export function lockValue(client: number, n: number, key: string): string {
  return `l|${client}|${n}|${key}|`;
}

/** What a value says about itself: writer, seq, key; undefined when it is not one of ours. */
export function parseValue(v: string): { type: 'v' | 'l'; client: number; seq: number; key: string } | undefined {
  const f = v.split('|');
  if (f.length < 5 || (f[0] !== 'v' && f[0] !== 'l') || !/^\d+$/.test(f[1] ?? '') || !/^\d+$/.test(f[2] ?? '')) return undefined;
  return { type: f[0], client: Number(f[1]), seq: Number(f[2]), key: f[3] as string };
}

// ---------------------------------------------------------------------------------------------
// The client: one socket, commands pipelined, replies paired first in, first out.

interface Spec {
  readonly kind: OpKind;
  readonly keys: readonly string[];
  readonly line: string;
  readonly data: string | undefined;
  readonly seq: number | undefined;
  readonly value: string | undefined;
}

interface Waiter {
  readonly rec: OpRecord;
  readonly expect: 'values' | 'line';
  readonly done: () => void;
}

interface Parsed {
  readonly consumed: number;
  readonly status: string;
  readonly raw: string;
  readonly hits?: ValueHit[];
  /** The stream cannot be trusted past this reply. */
  readonly malformed?: string;
}

/** One complete reply at the head of `buf`, or undefined when more bytes are needed. */
function parseReply(buf: string, expect: 'values' | 'line'): Parsed | undefined {
  if (expect === 'line') {
    const i = buf.indexOf('\r\n');
    if (i < 0) return undefined;
    const line = buf.slice(0, i);
    const status = line.split(' ')[0] as string;
    if (status === 'VALUE' || status === 'END') return { consumed: i + 2, status, raw: line, malformed: `"${line}" answers a retrieval` };
    return { consumed: i + 2, status, raw: line };
  }
  const hits: ValueHit[] = [];
  let p = 0;
  for (;;) {
    const i = buf.indexOf('\r\n', p);
    if (i < 0) return undefined;
    const line = buf.slice(p, i);
    if (line === 'END') return { consumed: i + 2, status: 'END', raw: buf.slice(0, Math.min(i + 2, SHORT)), hits };
    const m = /^VALUE (\S+) (\d+) (\d+)(?: \d+)?$/.exec(line);
    if (m) {
      const n = Number(m[3]);
      if (buf.length < i + 2 + n + 2) return undefined;
      const value = buf.slice(i + 2, i + 2 + n);
      if (buf.slice(i + 2 + n, i + 4 + n) !== '\r\n') {
        return { consumed: i + 2, status: 'VALUE', raw: line, malformed: `data block of ${m[1]} not ended by CRLF` };
      }
      hits.push({ key: m[1] as string, flags: Number(m[2]), value });
      p = i + 4 + n;
      continue;
    }
    const status = line.split(' ')[0] as string;
    if (hits.length === 0 && /^(SERVER_ERROR|CLIENT_ERROR|ERROR)$/.test(status)) return { consumed: i + 2, status, raw: line };
    return { consumed: i + 2, status, raw: line, malformed: `"${line}" inside a retrieval reply` };
  }
}

function outcomeOf(kind: OpKind, status: string): Outcome {
  const ok: Record<OpKind, readonly string[]> = {
    get: ['END'],
    'lock-get': ['END'],
    set: ['STORED'],
    delete: ['DELETED', 'NOT_FOUND'],
    'lock-delete': ['DELETED', 'NOT_FOUND'],
    touch: ['TOUCHED', 'NOT_FOUND'],
    'lock-add': ['STORED', 'NOT_STORED'],
  };
  return ok[kind].includes(status) ? 'ok' : 'error';
}

class Client {
  private socket: Socket | undefined;
  private connecting: Promise<boolean> | undefined;
  private buf = '';
  private waiting: Waiter[] = [];
  private conn = -1;
  private pos = 0;
  seq = 0;
  lockN = 0;
  /** Operations sent. */
  sent = 0;

  constructor(
    readonly id: number,
    private readonly w: WorkloadImpl,
    /** Driven by the test: connects even after stop(), for at most MANUAL_CONNECT_MS. */
    private readonly manual = false,
  ) {}

  /** Connects (retrying while mcmux is away, as a client library would); false once stopping. */
  private ensure(): Promise<boolean> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(true);
    this.connecting ??= this.open().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(): Promise<boolean> {
    const until = this.manual ? performance.now() + MANUAL_CONNECT_MS : this.w.deadline;
    while ((this.manual || !this.w.stopping) && performance.now() < until) {
      const port = this.w.port();
      const ok = await new Promise<Socket | undefined>((resolve) => {
        const s = connect({ host: '127.0.0.1', port });
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      });
      if (ok) {
        ok.setNoDelay(true);
        ok.on('error', () => {});
        ok.on('data', (d: Buffer) => this.onData(d));
        ok.on('close', () => this.onClose(ok));
        this.socket = ok;
        this.buf = '';
        this.conn = this.w.nextConn++;
        this.pos = 0;
        return true;
      }
      // Refused (mcmux restarting): try again shortly; bounded by the workload's deadline.
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  }

  private onData(d: Buffer): void {
    this.buf += d.toString('latin1');
    while (this.waiting.length > 0) {
      const head = this.waiting[0] as Waiter;
      const r = parseReply(this.buf, head.expect);
      if (!r) return;
      this.buf = this.buf.slice(r.consumed);
      this.waiting.shift();
      const rec = head.rec;
      rec.end = performance.now();
      rec.status = r.status;
      rec.reply = r.raw.slice(0, SHORT);
      rec.hits = r.hits;
      rec.outcome = r.malformed ? 'error' : outcomeOf(rec.kind, r.status);
      rec.malformed = r.malformed;
      head.done();
      if (r.malformed) {
        // Nothing after a reply of the wrong form can be paired with confidence.
        this.socket?.destroy();
        return;
      }
    }
    if (this.buf.length > 0) {
      this.socket?.destroy(); // bytes nobody asked for: recorded below as malformed
      this.w.unsolicited.push({ client: this.id, conn: this.conn, text: this.buf.slice(0, SHORT) });
    }
  }

  private onClose(s: Socket): void {
    if (this.socket === s) this.socket = undefined;
    this.failAll('closed');
  }

  private failAll(outcome: Outcome): void {
    const now = performance.now();
    for (const wt of this.waiting.splice(0)) {
      wt.rec.end = now;
      wt.rec.outcome = outcome;
      wt.done();
    }
  }

  /** Sends `specs` in one write; resolves with their records once each has its outcome. */
  async send(specs: readonly Spec[]): Promise<OpRecord[]> {
    if (!(await this.ensure())) return [];
    const socket = this.socket as Socket;
    const now = performance.now();
    const recs: OpRecord[] = [];
    const waits: Array<Promise<void>> = [];
    let out = '';
    for (const s of specs) {
      const rec: OpRecord = {
        id: this.w.nextOp++,
        client: this.id,
        conn: this.conn,
        pos: this.pos++,
        kind: s.kind,
        keys: s.keys,
        seq: s.seq,
        value: s.value,
        request: s.line,
        phase: this.w.phase,
        start: now,
        end: NaN,
        outcome: undefined,
        status: '',
        reply: '',
        hits: undefined,
        malformed: undefined,
      };
      this.w.record(rec);
      this.sent++;
      recs.push(rec);
      out += s.line + '\r\n' + (s.data !== undefined ? s.data + '\r\n' : '');
      waits.push(
        new Promise<void>((done) =>
          this.waiting.push({ rec, expect: s.kind === 'get' || s.kind === 'lock-get' ? 'values' : 'line', done }),
        ),
      );
    }
    const timer = setTimeout(() => {
      this.failAll('timeout');
      socket.destroy();
    }, this.w.replyTimeoutMs);
    socket.write(Buffer.from(out, 'latin1'));
    await Promise.all(waits);
    clearTimeout(timer);
    for (const r of recs) this.w.completed(r);
    return recs;
  }

  close(): void {
    this.socket?.destroy();
  }

  // -- commands ------------------------------------------------------------------------------

  setSpec(key: string, exptime: number, pad: number): Spec {
    const seq = ++this.seq;
    const value = sessionValue(this.id, seq, key, pad);
    return { kind: 'set', keys: [key], line: `set ${key} ${this.id} ${exptime} ${value.length}`, data: value, seq, value };
  }

  deleteSpec(key: string): Spec {
    return { kind: 'delete', keys: [key], line: `delete ${key}`, data: undefined, seq: ++this.seq, value: undefined };
  }

  getSpec(keys: readonly string[], kind: 'get' | 'lock-get' = 'get'): Spec {
    return { kind, keys, line: `get ${keys.join(' ')}`, data: undefined, seq: undefined, value: undefined };
  }

  touchSpec(key: string, exptime: number): Spec {
    return { kind: 'touch', keys: [key], line: `touch ${key} ${exptime}`, data: undefined, seq: undefined, value: undefined };
  }

  lockAddSpec(key: string): Spec {
    const value = lockValue(this.id, ++this.lockN, key);
    return { kind: 'lock-add', keys: [key], line: `add ${key} 0 30 ${value.length}`, data: value, seq: undefined, value };
  }

  lockDeleteSpec(key: string): Spec {
    return { kind: 'lock-delete', keys: [key], line: `delete ${key}`, data: undefined, seq: undefined, value: undefined };
  }
}

// ---------------------------------------------------------------------------------------------
// The workload: C clients in loops.

class WorkloadImpl implements Workload {
  readonly ops: OpRecord[] = [];
  readonly keys: string[] = [];
  readonly unsolicited: Array<{ client: number; conn: number; text: string }> = [];
  phase = 'start';
  stopping = false;
  nextConn = 0;
  nextOp = 0;
  readonly deadline: number;
  readonly replyTimeoutMs: number;
  private completedCount = 0;
  private waiters: Array<{ at: number; resolve: () => void }> = [];
  private readonly loops: Array<Promise<void>> = [];
  private readonly clients: Client[] = [];
  private readonly lockKeys: string[] = [];
  private ended = false;
  private manualCount = 0;

  constructor(private readonly opts: WorkloadOptions) {
    this.deadline = performance.now() + opts.maxDurationMs;
    this.replyTimeoutMs = opts.replyTimeoutMs ?? 10_000;
    for (let l = 0; l < opts.lockIds; l++) this.lockKeys.push(`${opts.prefix}lock.${l}`);
    for (let c = 0; c < opts.clients; c++) {
      this.clients.push(new Client(c, this));
      for (let k = 0; k < opts.keysPerClient; k++) this.keys.push(ownKey(opts.prefix, c, k));
    }
  }

  port(): number {
    return typeof this.opts.port === 'number' ? this.opts.port : this.opts.port();
  }

  record(rec: OpRecord): void {
    this.ops.push(rec);
  }

  completed(_rec: OpRecord): void {
    this.completedCount++;
    this.wake();
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (this.ended || this.completedCount >= w.at) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }

  start(): void {
    const seed = this.opts.seed ?? 1;
    for (const c of this.clients) this.loops.push(this.loop(c, mulberry32(seed * 1000 + c.id)));
    void Promise.all(this.loops).then(() => {
      this.ended = true;
      this.wake();
    });
  }

  setPhase(name: string): void {
    this.phase = name;
  }

  more(n: number): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiters.push({ at: this.completedCount + n, resolve });
    });
  }

  manual(): ManualClient {
    const c = new Client(this.opts.clients + this.manualCount++, this, true);
    const one = async (s: Spec): Promise<OpRecord> => {
      const [r] = await c.send([s]);
      if (!r) throw new Error('manual client could not connect to mcmux');
      return r;
    };
    return {
      id: c.id,
      set: (key, exptime = 0) => {
        if (!this.keys.includes(key)) this.keys.push(key);
        return one(c.setSpec(key, exptime, 8));
      },
      get: (keys) => one(c.getSpec(keys)),
      delete: (key) => one(c.deleteSpec(key)),
      touch: (key, exptime) => one(c.touchSpec(key, exptime)),
      lockAdd: (key) => one(c.lockAddSpec(key)),
      lockDelete: (key) => one(c.lockDeleteSpec(key)),
      close: () => c.close(),
    };
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
    for (const c of this.clients) c.close();
    this.ended = true;
    this.wake();
  }

  private running(c: Client): boolean {
    return !this.stopping && performance.now() < this.deadline && (this.opts.maxOpsPerClient === undefined || c.sent < this.opts.maxOpsPerClient);
  }

  private async loop(c: Client, r: () => number): Promise<void> {
    const own = (): string => ownKey(this.opts.prefix, c.id, Math.floor(r() * this.opts.keysPerClient));
    const any = (): string => this.keys[Math.floor(r() * this.opts.clients * this.opts.keysPerClient)] as string;
    const pad = (): number => Math.floor(r() * r() * 1500);
    const exptime = (): number => (r() < 0.8 ? 0 : 3600);
    while (this.running(c)) {
      const x = r();
      const k = own();
      if (x < 0.1 && this.lockKeys.length > 0) {
        await this.lockCycle(c, this.lockKeys[Math.floor(r() * this.lockKeys.length)] as string, k, pad());
        continue;
      }
      let batch: Spec[];
      if (x < 0.35) batch = [c.getSpec(r() < 0.3 ? [k, ...distinct(any, 1 + Math.floor(r() * 3), k)] : [k])];
      else if (x < 0.45) batch = [c.getSpec(distinct(any, 1 + Math.floor(r() * 4)))];
      else if (x < 0.62) batch = [c.setSpec(k, exptime(), pad())];
      else if (x < 0.68) batch = [c.setSpec(k, exptime(), pad()), c.getSpec([k])];
      else if (x < 0.73) batch = [c.deleteSpec(k)];
      // A read then a delete in one pipeline: a read repair of the read must not outlive the delete.
      else if (x < 0.78) batch = [c.getSpec([k]), c.deleteSpec(k)];
      else if (x < 0.81) batch = [c.deleteSpec(k), c.getSpec([k])];
      else if (x < 0.84) batch = [c.setSpec(k, exptime(), pad()), c.deleteSpec(k), c.getSpec([k])];
      else if (x < 0.93) batch = [c.touchSpec(k, 3600)];
      else batch = [c.touchSpec(k, 3600), c.getSpec([k])];
      if (r() < 0.1) batch.push(c.getSpec([any()]));
      await c.send(batch);
    }
  }

  /** PHP's session lock: add, then (holding it) read it and write the session, then delete. */
  private async lockCycle(c: Client, lock: string, session: string, pad: number): Promise<void> {
    const add = c.lockAddSpec(lock);
    const [rec] = await c.send([add]);
    if (!rec) return;
    if (rec.status === 'STORED') {
      await c.send([c.getSpec([lock], 'lock-get')]);
      await c.send([c.setSpec(session, 0, pad)]);
      await this.release(c, lock, add.value as string);
    } else if (rec.outcome !== 'ok') {
      // Unknown outcome: the lock may be ours. Take it back only if it is (nobody else can
      // take it while it holds our value).
      await this.release(c, lock, add.value as string, true);
    }
  }

  private async release(c: Client, lock: string, mine: string, checkFirst = false): Promise<void> {
    for (let attempt = 0; attempt < 3 && !this.stopping; attempt++) {
      if (checkFirst || attempt > 0) {
        const [g] = await c.send([c.getSpec([lock], 'lock-get')]);
        if (!g || g.outcome !== 'ok') continue;
        if (g.hits?.[0]?.value !== mine) return;
      }
      const [d] = await c.send([c.lockDeleteSpec(lock)]);
      if (d?.outcome === 'ok') return;
    }
  }
}

function ownKey(prefix: string, client: number, k: number): string {
  return `${prefix}s.${client}.${k}`;
}

function distinct(pick: () => string, n: number, not?: string): string[] {
  const out = new Set<string>();
  for (let i = 0; i < n * 4 && out.size < n; i++) {
    const k = pick();
    if (k !== not) out.add(k);
  }
  return [...out];
}

export function startWorkload(opts: WorkloadOptions): Workload {
  const w = new WorkloadImpl(opts);
  w.start();
  return w;
}

// ---------------------------------------------------------------------------------------------
// The checker.

export type Rule = 'a' | 'b' | 'c' | 'd' | 'e' | 'f';

export interface Violation {
  readonly rule: Rule;
  readonly detail: string;
  readonly op?: OpRecord;
  /** The key judged, and the seq of the value seen there (undefined for a miss). */
  readonly key?: string;
  readonly seq?: number;
  /** Where it was seen: an upstream label for checkHeld, else mcmux. */
  readonly where?: string;
  /** Rule f: by how much the wait exceeded its bound, ms. */
  readonly excess?: number;
}

export interface WaitBounds {
  /** get: every upstream in turn (a read falls through). */
  readonly read: number;
  /** set, delete, touch: every upstream in parallel. */
  readonly write: number;
  /** add: the authority candidates in turn, then the copy to the others. */
  readonly conditional: number;
}


function isAcked(w: OpRecord): boolean {
  return w.kind === 'set' ? w.status === 'STORED' : w.kind === 'delete' && (w.status === 'DELETED' || w.status === 'NOT_FOUND');
}

/** Where a read sits: its connection position, and the interval within which it took effect. */
interface ReadPoint {
  readonly conn: number;
  readonly pos: number;
  /**
   * Sent. (Not the reply to the write before it on its connection: mcmux starts the read when
   * that write is done, a moment before the client reads its reply; `last` covers those writes.)
   */
  readonly t0: number;
  readonly t1: number;
}

const FINAL: ReadPoint = { conn: -1, pos: -1, t0: Infinity, t1: Infinity };

/** The writes (set, delete) of one key, in seq order. */
class KeyHistory {
  readonly writes: OpRecord[] = [];
  private readonly bySeq = new Map<number, OpRecord>();

  add(w: OpRecord): void {
    this.writes.push(w);
    this.bySeq.set(w.seq as number, w);
  }

  sort(): void {
    this.writes.sort((x, y) => (x.seq as number) - (y.seq as number));
  }

  /** Could `w` have taken effect before the read ended? (never a later command of its connection) */
  private eligible(w: OpRecord, at: ReadPoint): boolean {
    return w.start < at.t1 && !(w.conn === at.conn && w.pos >= at.pos);
  }

  /**
   * The last acknowledged write certainly applied before the read began: its reply came before
   * the read was sent, or it came before the read on the read's own connection (mcmux starts a
   * read only once the writes before it on its connection are done).
   */
  last(at: ReadPoint): OpRecord | undefined {
    let l: OpRecord | undefined;
    for (const w of this.writes) {
      if (isAcked(w) && this.eligible(w, at) && (w.end < at.t0 || (w.conn === at.conn && w.pos < at.pos))) l = w;
    }
    return l;
  }

  /** undefined when a miss is allowed, else why not. */
  judgeMiss(at: ReadPoint): string | undefined {
    const l = this.last(at);
    if (!l || l.kind === 'delete') return undefined;
    for (const w of this.writes) if (w.kind === 'delete' && (w.seq as number) > (l.seq as number) && this.eligible(w, at)) return undefined;
    return `miss, but the set seq ${l.seq as number} was acknowledged (${fmt(l)}) before the read began`;
  }

  /** undefined when reading the value of write `seq` is allowed, else [rule, why]. */
  judgeValue(seq: number, at: ReadPoint): [Rule, string] | undefined {
    const w = this.bySeq.get(seq);
    if (!w || w.kind !== 'set') return ['e', `value seq ${seq} was never written to this key`];
    if (!this.eligible(w, at)) return ['b', `value seq ${seq} of a write sent after the read (${fmt(w)})`];
    const l = this.last(at);
    if (!l || (l.seq as number) < seq || (l.seq === seq && l.kind === 'set')) return undefined;
    const deleted = this.writes.find((d) => d.kind === 'delete' && isAcked(d) && (d.seq as number) > seq && (d.seq as number) <= (l.seq as number));
    if (deleted) return ['c', `value seq ${seq}, deleted by seq ${deleted.seq as number} (${fmt(deleted)}) before the read began`];
    return ['b', `value seq ${seq} is older than seq ${l.seq as number} (${fmt(l)}), acknowledged before the read began`];
  }

  /** TOUCHED: allowed when the key may exist. */
  judgeExists(at: ReadPoint): string | undefined {
    const l = this.last(at);
    if (l?.kind === 'set') return undefined;
    const later = this.writes.find((w) => w.kind === 'set' && (!l || (w.seq as number) > (l.seq as number)) && this.eligible(w, at));
    if (later) return undefined;
    return l ? `TOUCHED, but deleted by seq ${l.seq as number} (${fmt(l)}) before it began` : 'TOUCHED a key never written';
  }
}

function fmt(op: OpRecord): string {
  const t = Number.isNaN(op.end) ? `${op.start.toFixed(1)}-?` : `${op.start.toFixed(1)}-${op.end.toFixed(1)}`;
  return `#${op.id} c${op.client} ${op.request} -> ${op.status || op.outcome} @${t} [${op.phase}]`;
}

export function describeOp(op: OpRecord): string {
  return fmt(op);
}

function histories(ops: readonly OpRecord[]): { keys: Map<string, KeyHistory>; violations: Violation[] } {
  const keys = new Map<string, KeyHistory>();
  const writer = new Map<string, number>();
  const violations: Violation[] = [];
  for (const op of ops) {
    if (op.kind !== 'set' && op.kind !== 'delete') continue;
    const key = op.keys[0] as string;
    const first = writer.get(key);
    if (first === undefined) writer.set(key, op.client);
    else if (first !== op.client) violations.push({ rule: 'e', detail: `test bug: key ${key} has two writers (c${first}, c${op.client})`, op });
    let h = keys.get(key);
    if (!h) keys.set(key, (h = new KeyHistory()));
    h.add(op);
  }
  for (const h of keys.values()) h.sort();
  return { keys, violations };
}

/** For each op, when the reply to the op before it on its connection came (its wait starts then). */
function previousReplies(ops: readonly OpRecord[]): Map<number, number> {
  const byConn = new Map<number, OpRecord[]>();
  for (const op of ops) {
    let l = byConn.get(op.conn);
    if (!l) byConn.set(op.conn, (l = []));
    l.push(op);
  }
  const out = new Map<number, number>();
  for (const list of byConn.values()) {
    list.sort((x, y) => x.pos - y.pos);
    let prevEnd = -Infinity;
    for (const op of list) {
      out.set(op.id, prevEnd);
      if (!Number.isNaN(op.end)) prevEnd = Math.max(prevEnd, op.end);
    }
  }
  return out;
}

export interface CheckResult {
  readonly violations: Violation[];
  readonly summary: string;
}

/**
 * Judges every recorded operation. `final` ops (phase 'final') stand for the state after the
 * scenario: their violations are rule a (an acknowledged write lost) rather than b.
 */
export function checkWorkload(ops: readonly OpRecord[], bounds: WaitBounds, unsolicited: readonly unknown[] = []): CheckResult {
  const { keys, violations } = histories(ops);
  const prevReply = previousReplies(ops);
  for (const u of unsolicited) violations.push({ rule: 'e', detail: `bytes no request asked for: ${JSON.stringify(u)}` });

  for (const op of ops) {
    if (op.outcome === undefined) continue; // never sent (stopped while connecting)
    const at: ReadPoint = { conn: op.conn, pos: op.pos, t0: op.start, t1: op.end };
    const finalRead = op.phase === 'final';

    // e: the form of the reply, and VALUEs of the keys asked, in order, naming their own key.
    if (op.malformed) violations.push({ rule: 'e', detail: `${op.malformed}: ${fmt(op)}`, op });
    if (op.hits) {
      let i = 0;
      for (const hit of op.hits) {
        while (i < op.keys.length && op.keys[i] !== hit.key) i++;
        if (i === op.keys.length) {
          violations.push({ rule: 'e', detail: `VALUE ${hit.key} not asked for (or out of order): ${fmt(op)}`, op });
          break;
        }
        i++;
        const v = parseValue(hit.value);
        if (!v || v.key !== hit.key) {
          violations.push({ rule: 'e', detail: `VALUE ${hit.key} holds ${JSON.stringify(hit.value.slice(0, 60))}: ${fmt(op)}`, op });
        } else if (v.type === 'v' && hit.flags !== v.client) {
          violations.push({ rule: 'e', detail: `VALUE ${hit.key} has flags ${hit.flags}, written with ${v.client}: ${fmt(op)}`, op });
        }
      }
    }

    // f: the wait, from when the connection let the command start.
    if (op.outcome === 'timeout') {
      violations.push({ rule: 'f', detail: `no reply within the client's timeout: ${fmt(op)}`, op });
    } else if (op.outcome !== 'closed') {
      const bound = op.kind === 'get' || op.kind === 'lock-get' ? bounds.read : op.kind === 'lock-add' ? bounds.conditional : bounds.write;
      const waited = op.end - Math.max(op.start, prevReply.get(op.id) ?? -Infinity);
      if (waited > bound) violations.push({ rule: 'f', detail: `waited ${waited.toFixed(0)} ms, bound ${bound} ms: ${fmt(op)}`, op, excess: waited - bound });
    }

    if (op.outcome !== 'ok') continue;
    // b, c (a for the final reads): what a read saw against the history of each key.
    if (op.kind === 'get') {
      const found = new Map((op.hits ?? []).map((h) => [h.key, h]));
      for (const key of op.keys) {
        const h = keys.get(key) ?? new KeyHistory();
        const hit = found.get(key);
        const v = hit ? parseValue(hit.value) : undefined;
        if (hit && !v) continue; // reported under e
        const verdict: [Rule, string] | undefined = v ? h.judgeValue(v.seq, at) : ((m) => (m ? (['b', m] as [Rule, string]) : undefined))(h.judgeMiss(at));
        if (verdict) violations.push({ rule: finalRead ? 'a' : verdict[0], detail: `${key}: ${verdict[1]}: ${fmt(op)}`, op, key, seq: v?.seq });
      }
    } else if (op.kind === 'touch') {
      const h = keys.get(op.keys[0] as string) ?? new KeyHistory();
      const why = op.status === 'TOUCHED' ? h.judgeExists(at) : h.judgeMiss(at);
      if (why) violations.push({ rule: op.status === 'TOUCHED' ? 'c' : 'a', detail: `${op.keys[0] as string}: ${why}: ${fmt(op)}`, op, key: op.keys[0] });
    }
    // A delete answered NOT_FOUND for a live key is not judged: the README allows it when an
    // upstream failed and its miss is journaled, and the state it leaves is the same.
  }

  violations.push(...checkLocks(ops));
  return { violations, summary: summarize(ops) };
}

/** d: holdings of one lock key that certainly overlap; and a holder that reads someone else's lock. */
function checkLocks(ops: readonly OpRecord[]): Violation[] {
  const out: Violation[] = [];
  const byClient = new Map<number, OpRecord[]>();
  for (const op of ops) {
    if (op.kind !== 'lock-add' && op.kind !== 'lock-delete' && op.kind !== 'lock-get') continue;
    let l = byClient.get(op.client);
    if (!l) byClient.set(op.client, (l = []));
    l.push(op);
  }
  interface Holding {
    readonly add: OpRecord;
    /** Certainly held from the add's reply until the first delete of it was sent (or the TTL). */
    readonly from: number;
    to: number;
  }
  const holdings = new Map<string, Holding[]>();
  for (const list of byClient.values()) {
    list.sort((x, y) => x.id - y.id);
    let open: Holding | undefined;
    for (const op of list) {
      const key = op.keys[0] as string;
      if (op.kind === 'lock-add' && op.status === 'STORED') {
        open = { add: op, from: op.end, to: op.start + 30_000 };
        let h = holdings.get(key);
        if (!h) holdings.set(key, (h = []));
        h.push(open);
      } else if (op.kind === 'lock-add') {
        open = undefined;
      } else if (open && op.kind === 'lock-delete' && key === open.add.keys[0]) {
        open.to = Math.min(open.to, op.start);
        open = undefined;
      } else if (open && op.kind === 'lock-get' && op.outcome === 'ok' && op.start > open.from && op.end < open.to) {
        const v = op.hits?.[0]?.value;
        if (v !== open.add.value) {
          out.push({ rule: 'd', detail: `the holder read ${v === undefined ? 'a miss' : JSON.stringify(v)} for its lock ${key}: ${fmt(op)}`, op, key });
        }
      }
    }
  }
  for (const [key, list] of holdings) {
    list.sort((x, y) => x.from - y.from);
    for (let i = 0; i < list.length; i++) {
      const x = list[i] as Holding;
      for (let j = i + 1; j < list.length; j++) {
        const y = list[j] as Holding;
        if (y.from > x.to) break;
        if (y.add.client === x.add.client) continue;
        out.push({ rule: 'd', detail: `${key} held by two clients at once: ${fmt(x.add)} (until ${x.to.toFixed(1)}) and ${fmt(y.add)}`, op: y.add, key });
      }
    }
  }
  return out;
}

/**
 * Rule a for one upstream read directly after the scenario: every key it holds is the last
 * acknowledged write or a later one; a key whose last acknowledged write is a set must be
 * there unless `absentOk` (an upstream that lost its data and was refilled only by repair).
 */
export function checkHeld(
  ops: readonly OpRecord[],
  upstream: string,
  held: ReadonlyMap<string, string | undefined>,
  absentOk: boolean,
): Violation[] {
  const { keys } = histories(ops);
  const out: Violation[] = [];
  for (const [key, value] of held) {
    const h = keys.get(key);
    if (!h) continue;
    if (value === undefined) {
      const why = h.judgeMiss(FINAL);
      if (why && !absentOk) out.push({ rule: 'a', detail: `${upstream} ${key}: ${why}`, key, where: upstream });
      continue;
    }
    const v = parseValue(value);
    if (!v || v.key !== key) {
      out.push({ rule: 'e', detail: `${upstream} ${key} holds ${JSON.stringify(value.slice(0, 60))}` });
      continue;
    }
    const verdict = h.judgeValue(v.seq, FINAL);
    if (verdict) out.push({ rule: 'a', detail: `${upstream} ${key}: ${verdict[1]}`, key, seq: v.seq, where: upstream });
  }
  return out;
}

/** Operation counts by kind and reply, and by phase. */
export function summarize(ops: readonly OpRecord[]): string {
  const byKind = new Map<string, Map<string, number>>();
  const byPhase = new Map<string, number>();
  for (const op of ops) {
    const status = op.status || op.outcome || 'unsent';
    let m = byKind.get(op.kind);
    if (!m) byKind.set(op.kind, (m = new Map()));
    m.set(status, (m.get(status) ?? 0) + 1);
    byPhase.set(op.phase, (byPhase.get(op.phase) ?? 0) + 1);
  }
  const kinds = [...byKind].map(([k, m]) => `${k} ${[...m].map(([s, n]) => `${s}:${n}`).join(',')}`).join('; ');
  const phases = [...byPhase].map(([p, n]) => `${p}:${n}`).join(' ');
  return `${ops.length} ops [${phases}] ${kinds}`;
}

/** A few lines per rule, for an assertion message. */
export function formatViolations(vs: readonly Violation[], perRule = 5): string {
  const byRule = new Map<Rule, Violation[]>();
  for (const v of vs) {
    let l = byRule.get(v.rule);
    if (!l) byRule.set(v.rule, (l = []));
    l.push(v);
  }
  const lines: string[] = [];
  for (const [rule, list] of [...byRule].sort()) {
    lines.push(`rule ${rule}: ${list.length} violation(s)`);
    for (const v of list.slice(0, perRule)) lines.push(`  ${v.detail}`);
  }
  return lines.join('\n');
}
