/**
 * The server side of memcached's binary protocol: bytes in, `Command`s out. No sockets.
 *
 *   push(bytes) ─► [24-byte header] ─► magic? ── no ──► close, no reply (B8)
 *                        │
 *                        ├─ lengths: keylen+extlen <= bodylen, keylen <= 250, exact extras,
 *                        │  key present/absent, value allowed ── no ──► 0x04, close (B6, B7)
 *                        ├─ unknown opcode, SASL ─► 0x81, body skipped, stay open (B9)
 *                        ▼
 *                 [extras + key] ─► bad key, unsupported CAS ─► 0x04, body skipped
 *                        │        └─ value over the item limit ─► too_large, body skipped
 *                        ▼
 *                 [whole body] ─► Command (+ BinaryTag: opcode, opaque, quiet)
 *
 * Every length is checked against the header before the parser waits for (or keeps) more than
 * header + extras + key, which is at most 24 + 20 + 250 bytes: a hostile length can never make
 * it buffer (CVE-2016-8704/8705/8706, CVE-2011-4971). Extras lengths are exact per opcode
 * (CVE-2020-10931). A refused body is discarded as it arrives, never held; one over 1 GiB
 * (memcached's ITEM_SIZE_MAX_UPPER_LIMIT) is not worth reading: the connection is closed.
 * Values are slices of the accumulated input, not copies, unless that input is borrowed (a view
 * of the connections' shared read buffer): then values are copied, and detach() copies the rest.
 *
 * Exptime. memcached reads the binary exptime as uint32, so 0xffffffff (a client's -1) means the
 * year 2106. mcmux reads it as a signed int32, as the text protocol does: -1 means "already
 * expired" in both protocols (T10), and a mistaken value fails towards a miss, never towards an
 * item that outlives what the client asked for. Absolute times after 2038 are not expressible,
 * as in text. The one exception is INCR/DECR, where 0xffffffff is the spec's "do not create".
 */

import {
  type Command,
  type StoreMode,
  MAX_KEY_LENGTH,
  RELATIVE_EXPTIME_LIMIT,
  deadlineFromExptime,
} from '../../command/command';
import { isValidKey, type TextLimits } from '../text/request-parser';
import { type BinaryStatus, HEADER_LENGTH, MAGIC, OPCODE, type RequestHeader, STATUS, readRequestHeader } from './header';

/** What the codec needs, besides the command, to answer a request. */
export interface BinaryTag {
  /** The opcode as sent; every response echoes it. */
  readonly opcode: number;
  readonly opaque: number;
  /** The loud opcode this one is a variant of (SETQ -> SET); `opcode` itself otherwise. */
  readonly base: number;
  /** Quiet variant: no answer on success (GETQ, GETKQ, GATQ, GATKQ: no answer on a miss). */
  readonly quiet: boolean;
}

export interface BinaryRequest {
  readonly kind: 'request';
  readonly command: Command;
  readonly tag: BinaryTag;
}

export interface BinaryParseError {
  readonly kind: 'parse_error';
  /** The error status to answer with; undefined: close without a word (bad magic, B8). */
  readonly status: BinaryStatus | undefined;
  readonly message: string;
  readonly opcode: number;
  readonly opaque: number;
  /** The stream cannot be trusted any more: answer, then close. */
  readonly close: boolean;
}

export type BinaryParseResult = BinaryRequest | BinaryParseError;

/** Room for key and extras around the largest value, for opcodes the parser does not know. */
const FRAME_OVERHEAD = MAX_KEY_LENGTH + 32;
/** memcached's ITEM_SIZE_MAX_UPPER_LIMIT: a refused body larger than this closes the connection. */
const MAX_SKIP = 1024 * 1024 * 1024;
const NO_CREATE = 0xffffffff;
const DEL = 0x7f;

type KeyRule = 'required' | 'forbidden' | 'optional';

/** The one legal shape of each opcode's body (proto_bin.c's checks, made exact). */
interface Shape {
  readonly base: number;
  readonly quiet: boolean;
  readonly extras: readonly number[];
  readonly key: KeyRule;
  /** Whether a value may follow the key. */
  readonly value: boolean;
}

const SHAPES = new Map<number, Shape>();
function shape(loud: number, quiet: number | undefined, extras: readonly number[], key: KeyRule, value: boolean): void {
  SHAPES.set(loud, { base: loud, quiet: false, extras, key, value });
  if (quiet !== undefined) SHAPES.set(quiet, { base: loud, quiet: true, extras, key, value });
}
shape(OPCODE.GET, OPCODE.GETQ, [0], 'required', false);
shape(OPCODE.GETK, OPCODE.GETKQ, [0], 'required', false);
shape(OPCODE.GAT, OPCODE.GATQ, [4], 'required', false);
shape(OPCODE.GATK, OPCODE.GATKQ, [4], 'required', false);
shape(OPCODE.TOUCH, undefined, [4], 'required', false);
shape(OPCODE.SET, OPCODE.SETQ, [8], 'required', true);
shape(OPCODE.ADD, OPCODE.ADDQ, [8], 'required', true);
shape(OPCODE.REPLACE, OPCODE.REPLACEQ, [8], 'required', true);
shape(OPCODE.APPEND, OPCODE.APPENDQ, [0], 'required', true);
shape(OPCODE.PREPEND, OPCODE.PREPENDQ, [0], 'required', true);
shape(OPCODE.DELETE, OPCODE.DELETEQ, [0], 'required', false);
shape(OPCODE.INCREMENT, OPCODE.INCREMENTQ, [20], 'required', false);
shape(OPCODE.DECREMENT, OPCODE.DECREMENTQ, [20], 'required', false);
shape(OPCODE.QUIT, OPCODE.QUITQ, [0], 'forbidden', false);
shape(OPCODE.FLUSH, OPCODE.FLUSHQ, [0, 4], 'forbidden', false);
shape(OPCODE.NOOP, undefined, [0], 'forbidden', false);
shape(OPCODE.VERSION, undefined, [0], 'forbidden', false);
shape(OPCODE.STAT, undefined, [0], 'optional', false);
shape(OPCODE.VERBOSITY, undefined, [4], 'forbidden', false);
// SASL (0x20-0x22) is deliberately absent: answered "unknown command" (CVE-2016-8706, CVE-2013-7239).

const STORE_MODES: ReadonlyMap<number, StoreMode> = new Map([
  [OPCODE.SET, 'set'],
  [OPCODE.ADD, 'add'],
  [OPCODE.REPLACE, 'replace'],
  [OPCODE.APPEND, 'append'],
  [OPCODE.PREPEND, 'prepend'],
]);

/**
 * Opcodes on which memcached checks a CAS from the header but mcmux cannot: the upstream
 * interface has no cas for delete, append/prepend or incr/decr. Ignoring it would turn a
 * guarded write into an unguarded one, so such a request is refused instead.
 */
const CAS_UNSUPPORTED = new Set<number>([OPCODE.DELETE, OPCODE.APPEND, OPCODE.PREPEND, OPCODE.INCREMENT, OPCODE.DECREMENT]);

/** A stat group ('' = general) is free text like the text protocol's `stats <args>`: no control bytes. */
function isValidStatGroup(group: string): boolean {
  for (let i = 0; i < group.length; i++) {
    const c = group.charCodeAt(i);
    if (c < 0x20 || c === DEL) return false;
  }
  return true;
}

/** Reads shorter than this are copied into a gathering buffer (`tail`) rather than kept each. */
const SMALL_READ = 4096;
const TAIL_SIZE = 16 * 1024;

export class BinaryRequestParser {
  /** Input not yet consumed: chunks[0] from `head` on, then the other chunks whole. */
  private chunks: Buffer[] = [];
  private head = 0;
  private total = 0;
  /**
   * The chunk among `chunks` that is a view of a buffer its owner reuses (the connections' shared
   * read buffer), if any: a value sliced from it is copied, and detach() copies what is left of it.
   */
  private borrowed: Buffer | undefined;
  /**
   * Small reads are copied one after another into a buffer of TAIL_SIZE of their own; this is its
   * used part while it is the last of `chunks`. A body trickled a byte a read then costs its
   * bytes, not a Buffer object per read (about 60 times the bytes). Only ever appended to: views
   * handed out stay valid.
   */
  private tailChunk: Buffer | undefined;
  /** Bytes of a refused body still to discard as they arrive (never held in memory). */
  private skipLeft = 0;
  /** A too_large request with a body not worth skipping was handed out: the next result closes. */
  private closeNext = false;
  private dead = false;

  constructor(
    private readonly limits: TextLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Bytes buffered but not yet consumed (bounded by the limits). */
  get buffered(): number {
    return this.total;
  }

  /** `borrowed`: `chunk` is reused by its owner once parsing stops; detach() must be called then. */
  push(chunk: Buffer, borrowed = false): void {
    if (this.dead) return;
    if (this.skipLeft > 0) {
      const n = Math.min(this.skipLeft, chunk.length);
      this.skipLeft -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return;
    this.detach(); // one borrowed chunk at a time (the caller detaches after each read anyway)
    this.total += chunk.length;
    // A small read after bytes still waiting (a frame arriving in pieces): gathered. Otherwise
    // (whole frames, the usual case) kept as it is, and values are slices of it.
    if (chunk.length < SMALL_READ && this.chunks.length > 0) {
      this.gather(chunk); // a copy: nothing borrowed is kept
      return;
    }
    this.chunks.push(chunk);
    if (borrowed) this.borrowed = chunk;
  }

  private gather(chunk: Buffer): void {
    const last = this.chunks.length - 1;
    const t = this.tailChunk;
    // The tail's own ArrayBuffer (allocUnsafeSlow: not shared) has room after the used part.
    if (t !== undefined && last >= 0 && this.chunks[last] === t && t.byteOffset + t.length + chunk.length <= t.buffer.byteLength) {
      const grown = Buffer.from(t.buffer, t.byteOffset, t.length + chunk.length);
      chunk.copy(grown, t.length);
      this.tailChunk = grown;
      this.chunks[last] = grown;
      return;
    }
    const fresh = Buffer.allocUnsafeSlow(TAIL_SIZE);
    chunk.copy(fresh, 0);
    this.tailChunk = fresh.subarray(0, chunk.length);
    this.chunks.push(this.tailChunk);
  }

  /** Copies the unconsumed bytes of the borrowed chunk, if one is still held. */
  detach(): void {
    const b = this.borrowed;
    if (b === undefined) return;
    this.borrowed = undefined;
    // It is the last chunk (push() detaches the one before), unless consumed or joined meanwhile.
    const last = this.chunks.length - 1;
    if (last < 0 || this.chunks[last] !== b) return;
    if (last === 0) {
      this.chunks[0] = Buffer.from(b.subarray(this.head));
      this.head = 0;
    } else {
      this.chunks[last] = Buffer.from(b);
    }
  }

  next(): BinaryParseResult | undefined {
    if (this.dead || this.skipLeft > 0) return undefined;
    if (this.closeNext) return this.fatal(undefined, 0, 0, '');
    if (!this.ensure(HEADER_LENGTH)) return undefined;
    const h = readRequestHeader(this.first(), this.head);
    if (h.magic !== MAGIC.REQUEST) return this.fatal(undefined, h.opcode, h.opaque, '');
    return this.checkFrame(h);
  }

  /** The checks that need nothing but the header: lengths and shape (B6, B7, B9). */
  private checkFrame(h: RequestHeader): BinaryParseResult | undefined {
    const bad = STATUS.INVALID_ARGUMENTS;
    if (h.keyLength + h.extrasLength > h.bodyLength) return this.fatal(bad, h.opcode, h.opaque, 'key and extras longer than the body');
    const s = SHAPES.get(h.opcode);
    if (!s) {
      if (h.bodyLength > this.limits.maxItemSize + FRAME_OVERHEAD) return this.fatal(bad, h.opcode, h.opaque, 'body too long');
      this.consume(HEADER_LENGTH);
      this.skip(h.bodyLength);
      return this.error(STATUS.UNKNOWN_COMMAND, h, 'Unknown command', false);
    }
    if (h.keyLength > MAX_KEY_LENGTH) return this.fatal(bad, h.opcode, h.opaque, `key longer than ${MAX_KEY_LENGTH} bytes`);
    if (!s.extras.includes(h.extrasLength)) return this.fatal(bad, h.opcode, h.opaque, 'wrong extras length for the opcode');
    if (s.key === 'required' && h.keyLength === 0) return this.fatal(bad, h.opcode, h.opaque, 'a key is required');
    if (s.key === 'forbidden' && h.keyLength > 0) return this.fatal(bad, h.opcode, h.opaque, 'no key allowed');
    const valueLength = h.bodyLength - h.keyLength - h.extrasLength;
    if (!s.value && valueLength > 0) return this.fatal(bad, h.opcode, h.opaque, 'no value allowed');
    if (!this.ensure(HEADER_LENGTH + h.extrasLength + h.keyLength)) return undefined;
    return this.checkKey(h, s, valueLength);
  }

  /** The checks on extras and key, before waiting for the value. */
  private checkKey(h: RequestHeader, s: Shape, valueLength: number): BinaryParseResult | undefined {
    const buf = this.first();
    const extrasAt = this.head + HEADER_LENGTH;
    const keyAt = extrasAt + h.extrasLength;
    const key = buf.toString('latin1', keyAt, keyAt + h.keyLength);
    // Keys are validated exactly as in text (T1, T3): no control bytes, no spaces.
    const keyOk = s.key === 'optional' ? isValidStatGroup(key) : s.key === 'forbidden' || isValidKey(key);
    if (!keyOk) return this.refuse(h, valueLength, 'invalid key');
    if (h.cas !== 0n && CAS_UNSUPPORTED.has(s.base)) {
      return this.refuse(h, valueLength, 'mcmux does not support a CAS on this command');
    }
    const mode = STORE_MODES.get(s.base);
    if (mode && valueLength > this.limits.maxItemSize) {
      // T5, hazard 8: refuse whatever the size; for a SET the router deletes the old value everywhere.
      // The body is skipped, not awaited, and the connection kept, as memcached does (E2BIG):
      // clients such as memjs lose the next request if the server closes here.
      this.consume(HEADER_LENGTH + h.extrasLength + h.keyLength);
      if (valueLength > MAX_SKIP) this.closeNext = true;
      else this.skip(valueLength);
      return this.request({ kind: 'too_large', mode, key, noreply: false }, h, s);
    }
    // FLUSH's optional delay: unsigned, in exptime form (the router reads it as one), as memcached
    // reads it (0xffffffff is a time far off, not a negative delay).
    const delay = s.base === OPCODE.FLUSH && h.extrasLength === 4 ? buf.readUInt32BE(extrasAt) : 0;
    if (!this.ensure(HEADER_LENGTH + h.bodyLength)) return undefined;
    const cmd = this.build(h, s, key, delay);
    this.consume(HEADER_LENGTH + h.bodyLength);
    return this.request(cmd, h, s);
  }

  /** Builds the command of a complete frame at `head`. */
  private build(h: RequestHeader, s: Shape, key: string, delay: number): Command {
    const buf = this.first();
    const x = this.head + HEADER_LENGTH;
    const noreply = s.quiet;
    switch (s.base) {
      // A binary hit always carries its cas in the response header: withCas, so that the router
      // fetches it (a plain text get may skip it) and reads the authority's copy first.
      case OPCODE.GET:
      case OPCODE.GETK:
        return { kind: 'get', keys: [key], withCas: true, touch: undefined };
      case OPCODE.GAT:
      case OPCODE.GATK:
        return { kind: 'get', keys: [key], withCas: true, touch: this.deadline(buf.readInt32BE(x)) };
      case OPCODE.TOUCH:
        // memcached answers a TOUCH hit with the item's flags (extras) and cas: withItem.
        return { kind: 'touch', key, deadline: this.deadline(buf.readInt32BE(x)), noreply: false, withItem: true };
      case OPCODE.DELETE:
        return { kind: 'delete', key, noreply };
      case OPCODE.INCREMENT:
      case OPCODE.DECREMENT: {
        const exptime = buf.readUInt32BE(x + 16);
        const create = exptime !== NO_CREATE;
        return {
          kind: 'arith',
          op: s.base === OPCODE.INCREMENT ? 'incr' : 'decr',
          key,
          delta: buf.readBigUInt64BE(x),
          initial: create ? buf.readBigUInt64BE(x + 8) : undefined,
          deadline: create ? this.deadline(buf.readInt32BE(x + 16)) : 0,
          noreply,
        };
      }
      case OPCODE.QUIT:
        return { kind: 'quit' };
      case OPCODE.FLUSH:
        return { kind: 'flush', delay, noreply };
      case OPCODE.NOOP:
        return { kind: 'noop' };
      case OPCODE.VERSION:
        return { kind: 'version' };
      case OPCODE.STAT:
        return { kind: 'stats', group: key };
      case OPCODE.VERBOSITY:
        return { kind: 'verbosity', noreply: false };
      default:
        return this.buildStore(h, s, key);
    }
  }

  private buildStore(h: RequestHeader, s: Shape, key: string): Command {
    const mode = STORE_MODES.get(s.base);
    if (mode === undefined) throw new Error(`no command for opcode ${s.base}`); // a bug: SHAPES and build disagree
    const buf = this.first();
    const x = this.head + HEADER_LENGTH;
    const valueAt = x + h.extrasLength + h.keyLength;
    const view = buf.subarray(valueAt, this.head + HEADER_LENGTH + h.bodyLength);
    // A value outlives this read (it waits for the upstreams): never a view of a borrowed buffer.
    const value = buf === this.borrowed ? Buffer.from(view) : view;
    if (mode === 'append' || mode === 'prepend') {
      // protocol.txt: append/prepend keep the item's flags and exptime.
      return { kind: 'store', mode, key, flags: 0, deadline: 0, value, cas: undefined, withCas: !s.quiet, noreply: s.quiet };
    }
    // proto_bin.c: a non-zero CAS turns SET, ADD and REPLACE into a compare-and-swap (B3).
    const cas = h.cas !== 0n ? h.cas : undefined;
    return {
      kind: 'store',
      mode: cas !== undefined ? 'cas' : mode,
      key,
      flags: buf.readUInt32BE(x),
      deadline: this.deadline(buf.readInt32BE(x + 4)),
      value,
      cas,
      withCas: !s.quiet, // a binary success response carries the item's unique; a quiet one is not sent
      noreply: s.quiet,
    };
  }

  private deadline(exptime: number): number {
    return deadlineFromExptime(exptime, this.now());
  }

  private request(command: Command, h: RequestHeader, s: Shape): BinaryRequest {
    return { kind: 'request', command, tag: { opcode: h.opcode, opaque: h.opaque, base: s.base, quiet: s.quiet } };
  }

  private error(status: BinaryStatus | undefined, h: { opcode: number; opaque: number }, message: string, close: boolean): BinaryParseError {
    return { kind: 'parse_error', status, message, opcode: h.opcode, opaque: h.opaque, close };
  }

  /** A frame that cannot be trusted: answer (or not), decode nothing more, close. */
  private fatal(status: BinaryStatus | undefined, opcode: number, opaque: number, message: string): BinaryParseError {
    this.dead = true;
    this.chunks = [];
    this.total = 0;
    return this.error(status, { opcode, opaque }, message, true);
  }

  /** A well-formed frame that cannot be run: 0x04, the body skipped, the connection kept. */
  private refuse(h: RequestHeader, valueLength: number, message: string): BinaryParseError {
    if (valueLength > MAX_SKIP) return this.fatal(STATUS.INVALID_ARGUMENTS, h.opcode, h.opaque, message);
    this.consume(HEADER_LENGTH + h.extrasLength + h.keyLength);
    this.skip(valueLength);
    return this.error(STATUS.INVALID_ARGUMENTS, h, message, false);
  }

  private first(): Buffer {
    return this.chunks[0] as Buffer;
  }

  /**
   * Makes the first `n` unconsumed bytes contiguous in chunks[0]; false when fewer are buffered.
   * Only those `n` bytes are joined: what follows them stays a view of the chunk it arrived in,
   * so a read of many pipelined frames is not copied whole because its first frame began in the
   * read before (and a borrowed read's rest is still copied by detach() alone).
   */
  private ensure(n: number): boolean {
    if (this.total < n) return false;
    const first = this.first();
    if (first.length - this.head >= n) return true;
    const joined = Buffer.allocUnsafe(n);
    let filled = first.copy(joined, 0, this.head);
    let used = 1; // chunks taken whole into `joined`, the first included
    for (;;) {
      const c = this.chunks[used] as Buffer;
      const take = Math.min(c.length, n - filled);
      c.copy(joined, filled, 0, take);
      filled += take;
      if (take < c.length) {
        const rest = c.subarray(take);
        if (c === this.borrowed) this.borrowed = rest;
        this.chunks.splice(0, used + 1, joined, rest);
        break;
      }
      used++;
      if (filled === n) {
        this.chunks.splice(0, used, joined);
        break;
      }
    }
    this.head = 0;
    return true;
  }

  private consume(n: number): void {
    this.total -= n;
    this.head += n;
    while (this.chunks.length > 0 && this.head >= (this.chunks[0] as Buffer).length) {
      this.head -= (this.chunks.shift() as Buffer).length;
    }
  }

  /** Discards `n` bytes: those buffered now, the rest as they arrive. */
  private skip(n: number): void {
    const now = Math.min(n, this.total);
    this.consume(now);
    this.skipLeft = n - now;
  }
}
