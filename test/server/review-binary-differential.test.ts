/**
 * Differential review of the binary protocol, the counterpart of review-differential.test.ts:
 * the same seeded random streams of binary request frames sent to (a) a private memcached 1.6,
 * (b) mcmux (a process, --allow-flush) in front of another private memcached, (c) mcmux
 * in-process in front of memory:// only; the response frames compared one by one (magic,
 * opcode, status, key, extras, value, opaque, and the cas as below).
 *
 * A stream is bursts of frames, each burst sent split at random byte boundaries and ended by a
 * NOOP whose answer ends the burst's responses (a burst of quiet commands is then a batch
 * terminated by NOOP, as clients send them). A frame after which the server closes (QUIT, QUITQ,
 * bad magic, a malformed frame) ends its burst; the stream goes on over new connections. About
 * `MCMUX_BIN_DIFF_CMDS` frames a stream.
 *
 * Cas values: mcmux seals the stores' uniques, so numbers differ. Each non-zero cas is named by
 * the order it first appeared in its stream (#0, #1, ...), so what is compared is zero/non-zero
 * and the pattern of equality; a SET/ADD/REPLACE with a cas in its header takes an earlier
 * unique by that name, so each target gets its own number back.
 *
 * Normalised, and why. Documented in README "Protocol support" (or ../shared/PROTOCOL-CASES.md):
 *  - VERSION's body (README: mcmux answers 1.6.21; the memcached under test is 1.6.18);
 *  - a frame whose key and extras are longer than its body: memcached answers 0x81 "unknown
 *    command", mcmux 0x04 (README: "lengths that do not add up are answered invalid arguments
 *    and the connection is closed"); both close: shown as `<bad lengths>`.
 * Not documented there, normalised all the same (say so in any report):
 *  - the error body of a malformed frame (the README fixes its status and the close; mcmux
 *    names what is wrong, memcached says "Invalid arguments"; free text in the binary spec);
 *  - a counter that incr/decr made shorter: memcached pads it with spaces in place, mcmux's
 *    stores keep the bare number (the memcached quirk the text differential normalises too).
 * A TOUCH hit's flags and cas are compared (finding 3, fixed: see the test at the end).
 * Left out of the comparison with memcached (and run in the "strict" streams, compared between
 * (b) and (c) only): a non-zero cas on DELETE, APPEND/PREPEND, INCR/DECR (README: refused with
 * 0x04, memcached checks it); keys with control bytes or spaces (mcmux validates binary keys as
 * text keys; README says so for text only); exptimes of 2^31 and above (mcmux reads a binary
 * exptime as signed, as text does: 0xffffffff is "already expired", to memcached the year 2106;
 * request-parser.ts, not the README); VERBOSITY (memcached 1.6.18 does not serve it in binary,
 * and swallows 4 bytes of the next frame). Never sent: unknown opcodes with a key or extras
 * (memcached 1.6.18 swallows the whole body length after it consumed key and extras, eating
 * into the next frame), or with a body over the item limit (PROTOCOL-CASES B7: mcmux closes,
 * memcached skips it); '-' in values (see VALUES); bad magic with other frames in its burst
 * (memcached then drops the responses to the frames read with it); STAT (mcmux's own stats).
 *
 * MCMUX_BIN_DIFF_SEEDS / MCMUX_BIN_DIFF_SEED / MCMUX_BIN_DIFF_CMDS widen the run.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { skipWithout } from '../helpers/servers';
import { inProcessMcmux } from '../helpers/in-process';
import { type Target, differentialTargets } from '../helpers/differential';
import { type Wire, connectWire } from '../helpers/wire';
import { mulberry32 } from '../helpers/random';
import { type FrameSpec, type ResponseFrame, arithExtras, frame, parseResponseFrames, storeExtras } from '../helpers/binary-frame';
import { OPCODE } from '../../src/protocol/binary/header';

type Rng = () => number;

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
const chance = (r: Rng, p: number): boolean => r() < p;

const OPNAME = new Map<number, string>(Object.entries(OPCODE).map(([name, op]) => [op, name]));
const opName = (op: number): string => OPNAME.get(op) ?? `0x${op.toString(16).padStart(2, '0')}`;

/** A frame to send: `casRef` names an earlier unique (resolved per target), else `spec.cas`. */
interface Cmd {
  readonly spec: FrameSpec;
  readonly casRef?: number;
  /** The server closes the connection after it: it ends the burst (and the connection). */
  readonly closes?: boolean;
  /** Key and extras longer than the body (normalised, see the header). */
  readonly badLengths?: boolean;
  /** A malformed frame: the text of its error body is not compared. */
  readonly malformed?: boolean;
  /** Sent alone in its burst (see bad magic). */
  readonly alone?: boolean;
}

const EXPTIMES = [0, 0, 0, 1000, 2592000, 2678400, 2147483647];
const FLAGS = [0, 0, 1, 65535, 4294967295];
const U64 = (1n << 64n) - 1n;
const NUMBERS = [0n, 1n, 10n, U64, U64 - 1n, 9223372036854775807n, 9223372036854775808n, 42n];
/**
 * No '-' in any value: memcached 1.6.18 reads a counter of 2^63 or more as non-numeric when a
 * '-' follows it anywhere in memory up to the next NUL (safe_strtoull's strchr runs past the
 * item, into what earlier items left in its slab chunk), which a memcached upstream does to
 * mcmux as well: an answer that depends on the server's memory, not on the stream.
 */
const VALUES = ['x', 'hello', '', '0', '1', '18446744073709551615', '18446744073709551616', '12 abc', ' 7', '+5', 'abc', 'a\r\nb', '99999999999999999999', '\x00\xff'];
const NO_CREATE = 0xffffffff;

function keysOf(seed: number): { KEYS: string[]; COUNTER: string; K251: string } {
  const p = `b${seed}_`;
  const K250 = p + 'L'.repeat(250 - p.length);
  return { KEYS: [`${p}a`, `${p}b`, `${p}c`, `${p}n`, K250, `${p}\xe9\xc3\xa9\xff`], COUNTER: `${p}n`, K251: `${K250}L` };
}

const QUIET: Readonly<Record<number, number>> = {
  [OPCODE.GET]: OPCODE.GETQ,
  [OPCODE.GETK]: OPCODE.GETKQ,
  [OPCODE.GAT]: OPCODE.GATQ,
  [OPCODE.GATK]: OPCODE.GATKQ,
  [OPCODE.SET]: OPCODE.SETQ,
  [OPCODE.ADD]: OPCODE.ADDQ,
  [OPCODE.REPLACE]: OPCODE.REPLACEQ,
  [OPCODE.DELETE]: OPCODE.DELETEQ,
  [OPCODE.INCREMENT]: OPCODE.INCREMENTQ,
  [OPCODE.DECREMENT]: OPCODE.DECREMENTQ,
  [OPCODE.APPEND]: OPCODE.APPENDQ,
  [OPCODE.PREPEND]: OPCODE.PREPENDQ,
  [OPCODE.FLUSH]: OPCODE.FLUSHQ,
  [OPCODE.QUIT]: OPCODE.QUITQ,
};

/** A generator of one stream's frames; `quietOnly` draws from the commands with a quiet variant. */
class Gen {
  private opaque: number;
  constructor(
    private readonly r: Rng,
    private readonly seed: number,
    private readonly strict: boolean,
  ) {
    this.opaque = Math.floor(r() * 2 ** 31);
  }

  private nextOpaque(): number {
    this.opaque = (this.opaque + 1 + Math.floor(this.r() * 3)) >>> 0;
    return this.opaque;
  }

  noop(): Cmd {
    return { spec: { opcode: OPCODE.NOOP, opaque: this.nextOpaque() } };
  }

  /** `seen`: the uniques named so far, each with the key of the request that first returned it. */
  next(seen: readonly Unique[], quietOnly: boolean): Cmd {
    const casSeen = seen.length;
    const r = this.r;
    const { KEYS, COUNTER, K251 } = keysOf(this.seed);
    const key = (): string => {
      if (this.strict && chance(r, 0.05)) return `${KEYS[0]}${pick(r, ['\x01', ' ', '\x7f', '\n'])}z`;
      return pick(r, KEYS);
    };
    const notCounter = (): string => pick(r, KEYS.filter((k) => k !== COUNTER));
    const opaque = this.nextOpaque();
    const q = (op: number): number => (quietOnly || chance(r, 0.35) ? (QUIET[op] ?? op) : op);
    const exptime = (): number => (this.strict && chance(r, 0.1) ? pick(r, [NO_CREATE, 0x80000000, 0xfffffff0]) : pick(r, EXPTIMES));
    const casRef = (): { casRef?: number; cas?: bigint } => {
      // Mostly one of the last few uniques seen, which may still be the item's (a cas that matches).
      if (casSeen > 0 && chance(r, 0.5)) return { casRef: Math.max(0, casSeen - 1 - Math.floor(r() * 3)) };
      if (casSeen > 0 && chance(r, 0.6)) return { casRef: Math.floor(r() * casSeen) };
      return { cas: pick(r, [1n, 999999n, U64]) };
    };
    /** DELETE, APPEND/PREPEND, INCR/DECR with a cas: only in the strict streams (README: refused). */
    const strictCas = (): { casRef?: number; cas?: bigint } => (this.strict && chance(r, 0.15) ? casRef() : {});

    const x = r();
    if (quietOnly || x < 0.85) {
      const y = r();
      if (y < 0.22) return { spec: { opcode: q(pick(r, [OPCODE.GET, OPCODE.GETK])), key: key(), opaque } };
      // 2678400 is in 1970: the item expires (a GAT still answers it, as memcached does).
      const touchTimes = [0, 1000, 2592000, 2147483647, 2678400, ...(this.strict ? [NO_CREATE] : [])];
      if (y < 0.28) return { spec: { opcode: q(pick(r, [OPCODE.GAT, OPCODE.GATK])), key: key(), extras: touchExtras(pick(r, touchTimes)), opaque } };
      if (y < 0.32 && !quietOnly) return { spec: { opcode: OPCODE.TOUCH, key: key(), extras: touchExtras(pick(r, touchTimes)), opaque } };
      if (y < 0.58) {
        const op = q(pick(r, [OPCODE.SET, OPCODE.SET, OPCODE.ADD, OPCODE.REPLACE]));
        let k = key();
        let withCas: { casRef?: number; cas?: bigint } = {};
        const latest = seen.length - 1 - Math.floor(r() * 4);
        if (chance(r, 0.15) && seen[latest]?.key !== undefined) {
          // The unique a get or a store of this key returned (still the item's, or not any more).
          withCas = { casRef: latest };
          k = seen[latest]?.key as string;
        } else if (chance(r, 0.2)) {
          withCas = casRef();
        }
        const big = chance(r, 0.004);
        const value = big ? Buffer.alloc(1024 * 1024 + 4096, 0x61) : pick(r, VALUES);
        return { spec: { opcode: op, key: k, extras: storeExtras(pick(r, FLAGS), exptime()), value, opaque, cas: withCas.cas }, casRef: withCas.casRef };
      }
      if (y < 0.64) {
        const c = strictCas();
        return { spec: { opcode: q(OPCODE.DELETE), key: key(), opaque, cas: c.cas }, casRef: c.casRef };
      }
      if (y < 0.8) {
        const c = strictCas();
        const exp = chance(r, 0.3) ? NO_CREATE : exptime();
        const extras = arithExtras(pick(r, NUMBERS), pick(r, NUMBERS), exp);
        return { spec: { opcode: q(pick(r, [OPCODE.INCREMENT, OPCODE.DECREMENT])), key: COUNTER, extras, opaque, cas: c.cas }, casRef: c.casRef };
      }
      if (y < 0.9) {
        const c = strictCas();
        const value = chance(r, 0.01) ? Buffer.alloc(1024 * 1024 + 4096, 0x62) : pick(r, VALUES);
        return { spec: { opcode: q(pick(r, [OPCODE.APPEND, OPCODE.PREPEND])), key: notCounter(), value, opaque, cas: c.cas }, casRef: c.casRef };
      }
      if (y < 0.92) return { spec: { opcode: q(OPCODE.FLUSH), extras: chance(r, 0.5) ? touchExtras(0) : undefined, opaque } };
      if (quietOnly) return { spec: { opcode: q(OPCODE.DELETE), key: key(), opaque } };
      if (y < 0.95) return this.noop();
      return { spec: { opcode: OPCODE.VERSION, opaque } };
    }
    // The odd frames: unknown opcodes (no key, no extras: see the header), SASL, QUIT.
    if (x < 0.9) {
      const bodies = ['', 'zz', 'x'.repeat(40)];
      const op = pick(r, [0x1f, 0x25, 0x30, 0x40, 0x83, 0xfe, OPCODE.SASL_LIST_MECHS, OPCODE.SASL_AUTH, ...(this.strict ? [OPCODE.VERBOSITY] : [])]);
      if (op === OPCODE.SASL_LIST_MECHS) return { spec: { opcode: op, opaque } };
      if (op === OPCODE.SASL_AUTH) return { spec: { opcode: op, key: 'PLAIN', value: '\x00u\x00p', opaque } };
      if (op === OPCODE.VERBOSITY) return { spec: { opcode: op, extras: touchExtras(1), opaque } };
      return { spec: { opcode: op, value: pick(r, bodies), opaque } };
    }
    if (x < 0.92) return { spec: { opcode: pick(r, [OPCODE.QUIT, OPCODE.QUITQ]), opaque }, closes: true };
    // Malformed frames: the server answers (or not) and closes.
    const bad = (spec: FrameSpec, more: Partial<Cmd> = {}): Cmd => ({ spec: { ...spec, opaque }, closes: true, malformed: true, ...more });
    const k = notCounter();
    const malformed: Array<() => Cmd> = [
      // memcached closes at a bad magic without sending the responses to the frames read with
      // it (mcmux sends them): alone in its burst, so the comparison does not see that.
      () => bad({ opcode: OPCODE.GET, key: k, magic: pick(r, [0x81, 0x00, 0x7f, 0xff]) }, { alone: true }),
      () => bad({ opcode: OPCODE.SET, key: k, extras: Buffer.alloc(pick(r, [0, 4, 12])), value: 'v' }),
      () => bad({ opcode: pick(r, [OPCODE.GET, OPCODE.DELETE]), key: k, extras: Buffer.alloc(4) }),
      () => bad({ opcode: pick(r, [OPCODE.INCREMENT, OPCODE.DECREMENTQ]), key: COUNTER, extras: Buffer.alloc(pick(r, [0, 8, 16])) }),
      () => bad({ opcode: pick(r, [OPCODE.TOUCH, OPCODE.GAT]), key: k }),
      () => bad({ opcode: pick(r, [OPCODE.GET, OPCODE.SET, OPCODE.DELETE, OPCODE.GATK]), key: K251, extras: Buffer.alloc(0) }),
      () => bad({ opcode: OPCODE.GET, key: k, value: 'extra' }),
      () => bad({ opcode: pick(r, [OPCODE.NOOP, OPCODE.VERSION]), value: 'x' }),
      () => bad({ opcode: pick(r, [OPCODE.GET, OPCODE.DELETE]) }),
      () => bad({ opcode: OPCODE.SET, key: k, extras: storeExtras(0, 0), bodyLength: 8 + k.length - 1 }, { badLengths: true }),
      () => bad({ opcode: OPCODE.GET, key: k, bodyLength: 0 }, { badLengths: true }),
      () => bad({ opcode: pick(r, [OPCODE.FLUSH, OPCODE.FLUSHQ]), extras: Buffer.alloc(pick(r, [1, 8])) }),
      () => bad({ opcode: pick(r, [OPCODE.VERSION, OPCODE.QUIT, OPCODE.NOOP]), extras: Buffer.alloc(4) }),
      () => bad({ opcode: pick(r, [OPCODE.APPEND, OPCODE.PREPENDQ]), key: k, extras: storeExtras(0, 0), value: 'v' }),
      () => bad({ opcode: pick(r, [OPCODE.TOUCH, OPCODE.GATKQ]), key: k, extras: Buffer.alloc(8) }),
      () => bad({ opcode: pick(r, [OPCODE.GAT, OPCODE.TOUCH]), extras: touchExtras(0) }),
      () => bad({ opcode: pick(r, [OPCODE.QUIT, OPCODE.VERSION, OPCODE.FLUSH]), key: k }),
      () => bad({ opcode: pick(r, [OPCODE.INCREMENT, OPCODE.DELETE]), key: COUNTER, extras: arithExtras(1n, 0n, 0), value: 'v' }),
    ];
    return pick(r, malformed)();
  }
}

function touchExtras(exptime: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(exptime >>> 0, 0);
  return b;
}

type Response = ResponseFrame;

/** The complete response frames at the start of `buf`, and the bytes after them. */
function parseResponses(buf: Buffer): { frames: Response[]; rest: Buffer } {
  const { frames, used } = parseResponseFrames(buf);
  return { frames, rest: buf.subarray(used) };
}

const show = (b: Buffer): string => {
  const s = b.toString('latin1');
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 24)}...(${s.length})...${s.slice(-8)}` : s);
};

/** A non-zero cas seen in a stream, and the key of the request it answered (if it had one). */
interface Unique {
  readonly cas: bigint;
  readonly key: string | undefined;
}

/** Response frames as text, with the normalisations of the header; uniques named by first appearance. */
class Normaliser {
  readonly uniques: Unique[] = [];
  normalise(frames: readonly Response[], sent: ReadonlyMap<number, Cmd>): string[] {
    return frames.map((f) => {
      const cmd = sent.get(f.opaque);
      let status = `0x${f.status.toString(16).padStart(2, '0')}`;
      let value = show(f.value);
      if (f.opcode === OPCODE.VERSION && f.status === 0) value = '<version>';
      if (cmd?.badLengths && (f.status === 0x81 || f.status === 0x04)) {
        status = '<bad lengths>';
        value = '';
      } else if (cmd?.malformed && f.status !== 0) {
        value = '<message>';
      }
      // memcached pads a counter that incr/decr made shorter (see the header).
      const text = f.value.toString('latin1');
      if (f.status === 0 && f.extras.length === 4 && /^\d+ +$/.test(text)) value = show(Buffer.from(text.trimEnd(), 'latin1'));
      const extras = f.extras.toString('hex');
      let cas = '0';
      if (f.cas !== 0n) {
        let i = this.uniques.findIndex((u) => u.cas === f.cas);
        if (i < 0) i = this.uniques.push({ cas: f.cas, key: cmd?.spec.key }) - 1;
        cas = `#${i}`;
      }
      const magic = f.magic === 0x81 ? '' : `magic=0x${f.magic.toString(16)} `;
      return `${magic}${opName(f.opcode)} ${status} key=${show(Buffer.from(f.key, 'latin1'))} ext=${extras} val=${value} opaque=${f.opaque} cas=${cas}`;
    });
  }
}

/** One target through a stream: connections opened as needed, each burst sent in random pieces. */
class Session {
  readonly norm = new Normaliser();
  private wire: Wire | undefined;
  /** `tally`: counts of request (with its kind of cas) and response status, for the diagnostic. */
  constructor(
    private readonly port: number,
    private readonly tally?: Map<string, number>,
  ) {}

  get connected(): boolean {
    return this.wire !== undefined;
  }

  async connect(): Promise<void> {
    this.wire = await connectWire(this.port);
    this.wire.socket.setNoDelay(true);
  }

  /** Sends `cmds` (the last one may close), returns the normalised responses. */
  async burst(cmds: readonly Cmd[], cuts: Rng): Promise<string[]> {
    const w = this.wire;
    if (!w) throw new Error('not connected');
    const sent = new Map<number, Cmd>();
    const parts = cmds.map((c) => {
      if (c.spec.opaque !== undefined) sent.set(c.spec.opaque, c);
      const cas = c.casRef !== undefined ? (this.norm.uniques[c.casRef]?.cas ?? 1n) : c.spec.cas;
      return frame({ ...c.spec, cas });
    });
    const last = cmds[cmds.length - 1];
    const closes = last?.closes === true;
    // A frame that closes goes in one write of its own: bytes arriving after the server closed
    // would make its close a reset, which may discard the response in flight.
    const lead = Buffer.concat(closes ? parts.slice(0, -1) : parts);
    for (let at = 0; at < lead.length; ) {
      const n = chance(cuts, 0.3) ? lead.length - at : 1 + Math.floor(cuts() * 16);
      const piece = lead.subarray(at, at + n);
      at += piece.length;
      await new Promise<void>((res) => w.socket.write(piece, () => res()));
    }
    let received: string;
    if (closes) {
      w.socket.write(parts[parts.length - 1] as Buffer);
      await w.closed;
      received = w.received;
      this.wire = undefined;
    } else {
      const endOpaque = last?.spec.opaque;
      const done = (s: string): boolean => parseResponses(Buffer.from(s, 'latin1')).frames.some((f) => f.opcode === OPCODE.NOOP && f.opaque === endOpaque);
      received = await w.read(done, 5000);
    }
    const { frames, rest } = parseResponses(Buffer.from(received, 'latin1'));
    if (this.tally) {
      for (const f of frames) {
        const c = sent.get(f.opaque);
        const k = `${opName(f.opcode)}${c?.casRef !== undefined ? ' (cas of a get)' : c?.spec.cas ? ' (cas)' : ''} -> 0x${f.status.toString(16)}`;
        this.tally.set(k, (this.tally.get(k) ?? 0) + 1);
      }
    }
    const out = this.norm.normalise(frames, sent);
    if (rest.length > 0) out.push(`<${rest.length} bytes of a partial frame>`);
    if (closes) out.push('<closed>');
    return out;
  }

  close(): void {
    this.wire?.close();
    this.wire = undefined;
  }
}

const describeCmd = (c: Cmd): string => {
  const s = c.spec;
  const parts = [opName(s.opcode)];
  if (s.magic !== undefined) parts.push(`magic=0x${s.magic.toString(16)}`);
  if (s.key !== undefined) parts.push(`key=${show(Buffer.from(s.key, 'latin1'))}`);
  if (s.extras?.length) parts.push(`ext=${s.extras.toString('hex')}`);
  if (s.value !== undefined) parts.push(`val=${show(typeof s.value === 'string' ? Buffer.from(s.value, 'latin1') : s.value)}`);
  if (s.bodyLength !== undefined) parts.push(`bodylen=${s.bodyLength}`);
  if (c.casRef !== undefined) parts.push(`cas=#${c.casRef}`);
  else if (s.cas) parts.push(`cas=${s.cas}`);
  parts.push(`opaque=${s.opaque}`);
  return parts.join(' ');
};

/**
 * Runs about `commands` frames of the seed's stream against every target; returns the first
 * burst whose normalised responses differ (with the bursts before it and every target's frames),
 * or undefined. `counted` receives the number of frames sent.
 */
async function differ(
  targets: readonly Target[],
  seed: number,
  commands: number,
  strict: boolean,
  counted: (n: number) => void,
  tally?: Map<string, number>,
  flaked?: (what: string) => void,
): Promise<string | undefined> {
  const r = mulberry32(seed);
  const gen = new Gen(r, seed, strict);
  const sessions = targets.map((t, i) => new Session(t.port, i === 0 ? tally : undefined));
  const history: string[] = [];
  let sentCount = 0;
  try {
    let held: Cmd | undefined; // a frame to be sent alone, in the next burst
    for (let b = 0; sentCount < commands; b++) {
      const cmds: Cmd[] = [];
      if (!sessions[0]?.connected) {
        await Promise.all(sessions.map((s) => s.connect()));
        // The first byte decides the protocol: a binary frame first, so a bad magic later is one.
        cmds.push(gen.noop());
      }
      if (held && cmds.length === 0) {
        cmds.push(held);
        held = undefined;
      }
      // Mostly short bursts; some quiet batches; some long pipelined bursts.
      const kind = r();
      const quietOnly = kind < 0.15;
      const n = cmds.length > 0 && cmds[0]?.alone ? 0 : kind > 0.9 ? 20 + Math.floor(r() * 60) : 1 + Math.floor(r() * 8);
      for (let i = 0; i < n && !held; i++) {
        const c = gen.next(sessions[0]?.norm.uniques ?? [], quietOnly);
        if (c.alone) held = c;
        else cmds.push(c);
        if (c.closes) break;
      }
      if (!cmds[cmds.length - 1]?.closes) cmds.push(gen.noop());
      sentCount += cmds.length;
      const cutSeed = Math.floor(r() * 2 ** 32);
      const replies = await Promise.all(sessions.map((s) => s.burst(cmds, mulberry32(cutSeed)).catch((e: Error) => [`<${e.message.slice(0, 300)}>`])));
      history.push(`burst ${b}:\n    ${cmds.map(describeCmd).join('\n    ')}`);
      const texts = replies.map((x) => x.join('\n    '));
      if (texts.some((x) => x !== texts[0])) {
        if (flaked && memcachedArithFlake(targets, replies)) {
          flaked(`seed ${seed} burst ${b}: memcached answered an INCREMENT/DECREMENT 0x06 (non-numeric) where another target gave the number; the seed ends here (see memcachedArithFlake)`);
          return undefined;
        }
        return [
          `seed ${seed} burst ${b}: the last bursts sent:`,
          ...history.slice(-4),
          ...targets.map((t, i) => `${t.name}:\n    ${texts[i]}`),
        ].join('\n');
      }
      if (sessions.some((s) => !s.connected)) for (const s of sessions) s.close();
    }
    return undefined;
  } finally {
    counted(sentCount);
    for (const s of sessions) s.close();
  }
}

/**
 * Now and then (4 runs of this file in about 30 here) memcached 1.6.18 itself answered an
 * INCREMENT/DECREMENT of a counter just set to "18446744073709551615" with 0x06 (non-numeric)
 * where the same stream in other runs, and mcmux over memory, gave the number: once both memcached
 * processes (the reference and the one behind mcmux), once only the one behind mcmux. Their
 * states then differ, so the seed's stream ends there, told as a diagnostic, not a failure. The
 * cause was not found: not the value, the command, the exptime nor a frame cut at any byte (each
 * tried on a private memcached, hundreds of thousands of times, always the number); it depends on
 * the run. Any other difference, and this one from mcmux over memory, fails the test.
 */
function memcachedArithFlake(targets: readonly Target[], replies: readonly string[][]): boolean {
  // By opaque (a quiet command that succeeded has no response frame), in the order sent: the
  // first difference decides; those after it may follow from it (a cas the decrement changed).
  const opaqueOf = (l: string): number => Number(/opaque=(\d+)/.exec(l)?.[1] ?? -1);
  const byOpaque = replies.map((r) => new Map(r.map((l) => [opaqueOf(l), l])));
  const opaques = [...new Set(byOpaque.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  for (const o of opaques) {
    const lines = byOpaque.map((m) => m.get(o));
    if (lines.every((l) => l === lines[0])) continue;
    // Every answer an arithmetic one (or none: a quiet one that succeeded), 0x06 only from a
    // memcached-backed target, and some target with the number.
    const arith = lines.every((l) => l === undefined || /^(IN|DE)CREMENTQ? 0x0[06] /.test(l));
    const flakes = lines.every((l, j) => !(l?.includes(' 0x06 ') ?? false) || (targets[j]?.name.includes('memcached') ?? false));
    return o >= 0 && arith && flakes && lines.some((l) => l === undefined || l.includes(' 0x00 '));
  }
  return false;
}

const envInt = (name: string, dflt: number): number => (process.env[name] ? Number(process.env[name]) : dflt);
const SEEDS = envInt('MCMUX_BIN_DIFF_SEEDS', 3);
const FIRST = envInt('MCMUX_BIN_DIFF_SEED', 1);
const COMMANDS = envInt('MCMUX_BIN_DIFF_CMDS', 1000);
/** MCMUX_BIN_DIFF_VERBOSE=1: the responses of the first target counted by request and status. */
const VERBOSE = process.env.MCMUX_BIN_DIFF_VERBOSE === '1';
const showTally = (t: { diagnostic(s: string): void }, tally: Map<string, number>): void => {
  if (VERBOSE) for (const [k, n] of [...tally].sort()) t.diagnostic(`${k}: ${n}`);
};

describe('review: binary protocol, differential against memcached 1.6', { skip: skipWithout('memcached', 'memcached') }, () => {
  const targets = differentialTargets(true);

  // Each burst's read is bounded (5 s); the whole run too, generously (about 0.5 ms a frame here).
  const timeout = 30_000 + SEEDS * COMMANDS * 10;

  it(`${SEEDS} seeded streams of ~${COMMANDS} frames answer as memcached does`, { timeout }, async (t) => {
    const failures: string[] = [];
    let frames = 0;
    const tally = new Map<string, number>();
    for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
      const d = await differ(targets, seed, COMMANDS, false, (n) => (frames += n), tally, (s) => t.diagnostic(s));
      if (d) failures.push(d);
    }
    t.diagnostic(`${frames} frames sent to each target`);
    showTally(t, tally);
    assert.deepEqual(failures, []);
  });

  it(`${SEEDS} seeded streams with mcmux's documented differences answer the same through either upstream`, { timeout }, async (t) => {
    const failures: string[] = [];
    let frames = 0;
    const tally = new Map<string, number>();
    for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
      const d = await differ(targets.slice(1), 1000 + seed, COMMANDS, true, (n) => (frames += n), tally, (s) => t.diagnostic(s));
      if (d) failures.push(d);
    }
    t.diagnostic(`${frames} frames sent to each target`);
    showTally(t, tally);
    assert.deepEqual(failures, []);
  });
});

/**
 * The differences the differential found, one test each: the expected responses are memcached
 * 1.6.18's to the same frames (checked live), against mcmux in-process on memory://.
 */
describe('review: differential findings (binary protocol)', () => {
  /** Sends `frames` then a NOOP in one write; the response frames up to the NOOP's. */
  async function ask(...frames: Buffer[]): Promise<Response[]> {
    const app = await inProcessMcmux({ 'lock-fence': 0 }, ['memory://a']);
    const w = await connectWire(app.address.port);
    try {
      const end = frame({ opcode: OPCODE.NOOP, opaque: 0xe0d });
      const got = await w.ask(Buffer.concat([...frames, end]), (s) => parseResponses(Buffer.from(s, 'latin1')).frames.some((f) => f.opaque === 0xe0d), 3000);
      return parseResponses(Buffer.from(got, 'latin1')).frames;
    } finally {
      w.close();
    }
  }
  const brief = (f: Response | undefined): unknown =>
    f && { op: opName(f.opcode), status: f.status, extras: f.extras.toString('hex'), value: f.value.toString('latin1'), cas: f.cas !== 0n };

  it("INCREMENT/DECREMENT of a non-numeric value answer 0x06 with memcached's body, not the text protocol's line", async () => {
    const got = await ask(
      frame({ opcode: OPCODE.SET, key: 'k', extras: storeExtras(0, 0), value: 'abc', opaque: 1 }),
      frame({ opcode: OPCODE.INCREMENT, key: 'k', extras: arithExtras(1n, 0n, 0), opaque: 2 }),
      frame({ opcode: OPCODE.DECREMENTQ, key: 'k', extras: arithExtras(1n, 0n, 0), opaque: 3 }),
    );
    const body = 'Non-numeric server-side value for incr or decr';
    assert.deepEqual(got.slice(1, 3).map(brief), [
      { op: 'INCREMENT', status: 0x06, extras: '', value: body, cas: false },
      { op: 'DECREMENTQ', status: 0x06, extras: '', value: body, cas: false },
    ]);
  });

  it("a value over the item limit answers 0x03 with memcached's body, and the connection goes on", async () => {
    const big = Buffer.alloc(1024 * 1024 + 1, 0x61);
    const got = await ask(
      frame({ opcode: OPCODE.SET, key: 'k', extras: storeExtras(0, 0), value: big, opaque: 1 }),
      frame({ opcode: OPCODE.APPENDQ, key: 'k', value: big, opaque: 2 }),
    );
    assert.deepEqual(got.map(brief), [
      { op: 'SET', status: 0x03, extras: '', value: 'Too large.', cas: false },
      { op: 'APPENDQ', status: 0x03, extras: '', value: 'Too large.', cas: false },
      { op: 'NOOP', status: 0, extras: '', value: '', cas: false },
    ]);
  });

  // Finding 3: mcmux answered a TOUCH hit with no extras and cas 0 (Upstream.touch answered
  // TOUCHED only). Each driver's touch now reads the flags and unique in the same operation
  // (withItem), and the router answers those of the copy a gets would read next.
  it('TOUCH of an item answers its flags (extras) and its cas, as memcached 1.6 does', async () => {
    const got = await ask(
      frame({ opcode: OPCODE.SET, key: 'k', extras: storeExtras(7, 0), value: 'v', opaque: 1 }),
      frame({ opcode: OPCODE.TOUCH, key: 'k', extras: touchExtras(1000), opaque: 2 }),
    );
    assert.deepEqual(brief(got[1]), { op: 'TOUCH', status: 0, extras: '00000007', value: '', cas: true });
    assert.equal(got[1]?.cas, got[0]?.cas, "the item's cas, unchanged by the touch");
  });
});
