/**
 * The server side of memcached's text protocol: bytes in, `Command`s out. No sockets.
 *
 *   push(bytes) ─► [line state] ── line found ──► parseLine ─► Command
 *                        │                           │
 *                        │                           └─ storage command ─► [data state] ─► StoreCommand
 *                        │                                               └─ [swallow state] (bad args, too large)
 *                        └─ no '\n' within max-line-length ─► fatal error (close)
 *
 * `next()` returns one result at a time: a Command, a `ParseError` (a reply to send, and whether
 * the connection must then be closed), or undefined when more bytes are needed. Values are
 * slices of the accumulated input, not copies, unless that input is borrowed (a view of the
 * connections' shared read buffer, server/shared-read.ts): then values are copied, and detach()
 * copies the unparsed rest before the buffer is read into again.
 */

import {
  type Command,
  type StoreMode,
  MAX_KEY_LENGTH,
  RESERVED_KEY_PREFIX,
  U64_MASK,
  deadlineFromExptime,
  parseUnsigned,
  parseUnsignedNumber,
} from '../../command/command';

export interface TextLimits {
  /** Longest command line accepted, without its line ending (default 2048). */
  readonly maxLineLength: number;
  /** Largest value accepted (default 1 MiB). */
  readonly maxItemSize: number;
  /** Most keys in one get/gets/gat/gats. */
  readonly maxKeysPerGet: number;
}

export interface ParseError {
  readonly kind: 'parse_error';
  readonly type: 'ERROR' | 'CLIENT_ERROR' | 'SERVER_ERROR';
  readonly message: string;
  /** The stream cannot be resynchronised (or is hostile): reply, then close. */
  readonly close: boolean;
  /** The command line ended in noreply: memcached sends nothing, and neither may mcmux. */
  readonly noreply?: boolean;
  /** Closed with nothing written (a cross-protocol request: memcached answers it nothing). */
  readonly silent?: boolean;
}

export type ParseResult = Command | ParseError;

const BAD_FORMAT = 'bad command line format';
const NL = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const INT32_MAX = 2 ** 31 - 1;

const STORE_MODES: Readonly<Record<string, StoreMode>> = {
  set: 'set',
  add: 'add',
  replace: 'replace',
  append: 'append',
  prepend: 'prepend',
  cas: 'cas',
};

/** Commands memcached has but mcmux never forwards (T24): answered ERROR. */
const HTTP_METHODS = new Set(['GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'CONNECT', 'PATCH', 'TRACE']);

interface PendingStore {
  mode: StoreMode;
  key: string;
  flags: number;
  deadline: number;
  cas: bigint | undefined;
  noreply: boolean;
  /** Bytes of the data block including its "\r\n". */
  need: number;
}

function err(type: ParseError['type'], message: string, close = false): ParseError {
  return { kind: 'parse_error', type, message, close };
}

/** An error for a command that asked for no reply (memcached 1.6 answers nothing). */
function quiet(e: ParseError, noreply: boolean): ParseError {
  return noreply ? { ...e, noreply: true } : e;
}

/**
 * protocol.txt: keys are up to 250 bytes with no control characters or whitespace (T1, T3). And
 * none of mcmux's own (RESERVED_KEY_PREFIX).
 */
export function isValidKey(key: string): boolean {
  if (key.length === 0 || key.length > MAX_KEY_LENGTH) return false;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    if (c <= SPACE || c === 0x7f) return false;
  }
  return key.charCodeAt(0) !== 0x6d || !key.startsWith(RESERVED_KEY_PREFIX);
}

/** Signed 32-bit exptime, digits only (T7). */
function parseExptime(text: string): number | undefined {
  const neg = text.charCodeAt(0) === 0x2d;
  const n = parseUnsignedNumber(neg ? text.slice(1) : text, INT32_MAX + (neg ? 1 : 0));
  if (n === undefined) return undefined;
  return neg ? -n : n;
}

const EMPTY = Buffer.alloc(0);

/** Smallest buffer of our own that input split across reads is gathered into. */
const MIN_GATHER = 4096;

export class TextRequestParser {
  private buf: Buffer = EMPTY;
  private pos = 0;
  /**
   * When defined, buf is its first buf.length bytes and the rest is free: input split across
   * reads is appended there (values already handed out are views of the part before).
   */
  private store: Buffer | undefined;
  /** buf is a view of a buffer its owner reuses: what outlives next() must be copied. */
  private borrowed = false;
  private pending: PendingStore | undefined;
  /** Bytes still to discard (a refused data block), and what to answer once they are gone. */
  private swallowLeft = 0;
  private afterSwallow: ParseResult | undefined;
  private dead = false;

  constructor(
    private readonly limits: TextLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Bytes buffered but not yet consumed (bounded by the limits). */
  get buffered(): number {
    return this.buf.length - this.pos;
  }

  /** Copies the unconsumed bytes out of a borrowed buffer (before its owner reuses it). */
  detach(): void {
    if (!this.borrowed) return;
    this.borrowed = false;
    this.buf = this.pos >= this.buf.length ? EMPTY : Buffer.from(this.buf.subarray(this.pos));
    this.store = undefined;
    this.pos = 0;
  }

  push(chunk: Buffer, borrowed = false): void {
    if (this.dead) return;
    if (this.swallowLeft > 0) {
      // A refused block is discarded as it arrives: it is never held in memory.
      const n = Math.min(this.swallowLeft, chunk.length);
      this.swallowLeft -= n;
      chunk = chunk.subarray(n);
      if (chunk.length === 0) return;
    }
    if (this.pos >= this.buf.length) {
      this.buf = chunk;
      this.borrowed = borrowed;
      this.store = undefined;
      this.pos = 0;
    } else {
      this.append(chunk);
    }
  }

  /**
   * Adds a read to the unconsumed rest, in a buffer of our own: a value or a line trickled in
   * small reads is copied a bounded number of times, not once per read (a copy of everything so
   * far per read made a 1 MiB value sent a byte at a time cost about 500 GB of copying).
   */
  private append(chunk: Buffer): void {
    const end = this.buf.length;
    const store = this.store;
    if (store !== undefined && end + chunk.length <= store.length) {
      chunk.copy(store, end);
      this.buf = store.subarray(0, end + chunk.length);
      return;
    }
    const have = end - this.pos;
    const total = have + chunk.length;
    // Room for twice what was held (so `have` is copied a bounded number of times in all), or
    // for the whole data block awaited; a large read is copied once whatever the size.
    const next = Buffer.allocUnsafe(Math.max(total, 2 * have, this.pending?.need ?? 0, MIN_GATHER));
    this.buf.copy(next, 0, this.pos);
    chunk.copy(next, have);
    this.store = next;
    this.buf = next.subarray(0, total);
    this.borrowed = false;
    this.pos = 0;
  }

  next(): ParseResult | undefined {
    if (this.dead) return undefined;
    if (this.swallowLeft > 0) return undefined;
    if (this.afterSwallow) {
      const r = this.afterSwallow;
      this.afterSwallow = undefined;
      return r;
    }
    if (this.pending) return this.readData(this.pending);
    const nl = this.buf.indexOf(NL, this.pos);
    if (nl < 0) {
      // +1: a line of the limit and its CR, the LF still to come in the next read.
      if (this.buf.length - this.pos > this.limits.maxLineLength + 1) return this.fatal(err('CLIENT_ERROR', 'line too long'));
      return undefined;
    }
    let end = nl;
    if (end > this.pos && this.buf[end - 1] === CR) end--;
    const start = this.pos;
    this.pos = nl + 1;
    if (end - start > this.limits.maxLineLength) return this.fatal(err('CLIENT_ERROR', 'line too long'));
    return this.getOneKey(start, end) ?? this.parseLine(this.buf.toString('latin1', start, end));
  }

  /**
   * The commonest line, `get <key>` with one valid key, read without splitting the line into
   * words; anything else (more keys, extra spaces, a bad key) is left to parseLine.
   */
  private getOneKey(start: number, end: number): ParseResult | undefined {
    const b = this.buf;
    if (end - start < 5 || b[start] !== 0x67 || b[start + 1] !== 0x65 || b[start + 2] !== 0x74 || b[start + 3] !== SPACE) {
      return undefined;
    }
    const sp = b.indexOf(SPACE, start + 4);
    if (sp >= 0 && sp < end) return undefined;
    const key = b.toString('latin1', start + 4, end);
    if (!isValidKey(key) || this.limits.maxKeysPerGet < 1) return undefined;
    return { kind: 'get', keys: [key], withCas: false, touch: undefined };
  }

  private fatal(e: ParseError): ParseError {
    this.dead = true;
    return e.close ? e : { ...e, close: true };
  }

  /** Discards `n` bytes of input (a data block that will not be stored), then yields `then`. */
  private swallow(n: number, then: ParseResult): ParseResult | undefined {
    this.discard(n);
    if (this.swallowLeft === 0) return then;
    this.afterSwallow = then;
    return undefined;
  }

  /** Discards `n` bytes of input: those buffered now, the rest as they arrive (never held). */
  private discard(n: number): void {
    const have = this.buf.length - this.pos;
    const now = Math.min(n, have);
    this.pos += now;
    this.swallowLeft = n - now;
  }

  private readData(p: PendingStore): ParseResult | undefined {
    if (this.buf.length - this.pos < p.need) return undefined;
    const start = this.pos;
    const valueEnd = start + p.need - 2;
    this.pos += p.need;
    this.pending = undefined;
    if (this.buf[valueEnd] !== CR || this.buf[valueEnd + 1] !== NL) {
      // T4: the block is longer (or other) than declared; what follows cannot be trusted as commands.
      return this.fatal(err('CLIENT_ERROR', 'bad data chunk'));
    }
    return {
      kind: 'store',
      mode: p.mode,
      key: p.key,
      flags: p.flags,
      deadline: p.deadline,
      value: this.borrowed ? Buffer.from(this.buf.subarray(start, valueEnd)) : this.buf.subarray(start, valueEnd),
      cas: p.cas,
      withCas: false, // a text STORED carries no unique
      noreply: p.noreply,
    };
  }

  private parseLine(line: string): ParseResult | undefined {
    const t = line.split(' ').filter((s) => s.length > 0);
    const name = t[0];
    if (name === undefined) return err('ERROR', '');
    const mode = Object.hasOwn(STORE_MODES, name) ? STORE_MODES[name] : undefined;
    if (mode) return this.parseStorage(mode, t);
    switch (name) {
      case 'get':
      case 'gets':
        return this.parseGet(t, 1, name === 'gets', undefined);
      case 'gat':
      case 'gats': {
        // memcached 1.6 answers `gat <exptime>` with no key END (a get of nothing), not ERROR.
        if (t.length < 2) return err('ERROR', '');
        const exptime = parseExptime(t[1] ?? '');
        if (exptime === undefined) return err('CLIENT_ERROR', 'invalid exptime argument');
        return this.parseGet(t, 2, name === 'gats', deadlineFromExptime(exptime, this.now()));
      }
      case 'delete':
        return this.parseDelete(t);
      case 'incr':
      case 'decr':
        return this.parseArith(name, t);
      case 'touch':
        return this.parseTouch(t);
      case 'flush_all':
        return this.parseFlush(t);
      case 'version':
        return { kind: 'version' };
      case 'quit':
        return { kind: 'quit' };
      case 'verbosity': {
        if (t.length < 2 || t.length > 3) return err('ERROR', '');
        const noreply = t[t.length - 1] === 'noreply';
        if (!(noreply && t.length === 2) && parseUnsignedNumber(t[1] ?? '', 0xffffffff) === undefined) {
          return quiet(err('CLIENT_ERROR', BAD_FORMAT), noreply);
        }
        return { kind: 'verbosity', noreply };
      }
      case 'ms': {
        // meta set (not served): its data block must be discarded, never run as commands (T2).
        const bytes = parseUnsignedNumber(t[2] ?? '', INT32_MAX);
        if (bytes === undefined) return this.fatal(err('CLIENT_ERROR', BAD_FORMAT));
        return this.swallow(bytes + 2, err('ERROR', ''));
      }
      case 'stats':
        return { kind: 'stats', group: t.slice(1).join(' ') };
      default:
        // A cross-protocol request (an HTTP request sent to the memcached port) is hostile: close (T20).
        if (HTTP_METHODS.has(name) || /HTTP\/\d/.test(line)) return this.fatal({ ...err('ERROR', ''), silent: true });
        return err('ERROR', '');
    }
  }

  private parseStorage(mode: StoreMode, t: string[]): ParseResult | undefined {
    const want = mode === 'cas' ? 6 : 5;
    const noreply = t.length === want + 1 && t[want] === 'noreply';
    // Too few or too many tokens: which one is <bytes> is unknown, so is where the data block
    // ends, and what follows the line may be that block (a key with a space in it). Answering
    // ERROR and reading on would run the value as commands: close instead (T2).
    if (t.length !== want && !noreply) return this.fatal(err('CLIENT_ERROR', BAD_FORMAT));
    // <bytes> first: without it the data block cannot be found, and the stream is lost (T2, T7).
    const bytes = parseUnsignedNumber(t[4] ?? '', INT32_MAX);
    if (bytes === undefined) return this.fatal(err('CLIENT_ERROR', BAD_FORMAT));
    const need = bytes + 2;
    const key = t[1] ?? '';
    const flags = parseUnsignedNumber(t[2] ?? '', 0xffffffff);
    const exptime = parseExptime(t[3] ?? '');
    const cas = mode === 'cas' ? parseUnsigned(t[5] ?? '', U64_MASK) : undefined;
    if (!isValidKey(key) || flags === undefined || exptime === undefined || (mode === 'cas' && cas === undefined)) {
      // The block is swallowed, never executed as commands (T2). With noreply, answered with
      // nothing, as memcached 1.6 does: a client not listening would take the error for the
      // reply to its next command, and every reply after it for the one before's.
      return this.swallow(need, quiet(err('CLIENT_ERROR', BAD_FORMAT), noreply));
    }
    if (bytes > this.limits.maxItemSize) {
      // T5: refuse, swallow, and for a set delete the old value everywhere (the router does that).
      // Decided on the line, as memcached unlinks the old item before it swallows the block (and
      // as the binary parser does): a client that dies mid-block must not leave the old value.
      this.discard(need);
      return { kind: 'too_large', mode, key, noreply };
    }
    this.pending = {
      mode,
      key,
      flags,
      deadline: deadlineFromExptime(exptime, this.now()),
      cas,
      noreply,
      need,
    };
    return this.readData(this.pending);
  }

  private parseGet(t: string[], first: number, withCas: boolean, touch: number | undefined): ParseResult {
    if (t.length <= first && touch === undefined) return err('ERROR', '');
    const keys = t.slice(first);
    if (keys.length > this.limits.maxKeysPerGet) {
      return err('CLIENT_ERROR', `too many keys in one get (max-keys-per-get is ${this.limits.maxKeysPerGet})`);
    }
    // T1: one bad key fails the whole get.
    for (const k of keys) if (!isValidKey(k)) return err('CLIENT_ERROR', BAD_FORMAT);
    return { kind: 'get', keys, withCas, touch };
  }

  private parseDelete(t: string[]): ParseResult {
    // memcached 1.6 counts the tokens first: too few or too many is ERROR, noreply or not.
    if (t.length < 2 || t.length > 4) return err('ERROR', '');
    const key = t[1] ?? '';
    let rest = t.slice(2);
    const noreply = rest[rest.length - 1] === 'noreply';
    if (noreply) rest = rest.slice(0, -1);
    // protocol.txt: a time argument is no longer supported; memcached still accepts a literal 0 (T21).
    if (rest.length > 1 || (rest.length === 1 && rest[0] !== '0')) {
      return quiet(err('CLIENT_ERROR', 'bad command line format.  Usage: delete <key> [noreply]'), noreply);
    }
    if (!isValidKey(key)) return quiet(err('CLIENT_ERROR', BAD_FORMAT), noreply);
    return { kind: 'delete', key, noreply };
  }

  private parseArith(op: 'incr' | 'decr', t: string[]): ParseResult {
    if (t.length !== 3 && t.length !== 4) return err('ERROR', '');
    // As memcached 1.6: a last token noreply silences the errors even in the delta's place
    // (`incr k noreply`), and a fourth token that is not noreply is ignored (`incr k 1 x` adds 1).
    const noreply = t[t.length - 1] === 'noreply';
    const key = t[1] ?? '';
    if (!isValidKey(key)) return quiet(err('CLIENT_ERROR', BAD_FORMAT), noreply);
    const delta = parseUnsigned(t[2] ?? '', U64_MASK);
    if (delta === undefined) return quiet(err('CLIENT_ERROR', 'invalid numeric delta argument'), noreply);
    return { kind: 'arith', op, key, delta, initial: undefined, deadline: 0, noreply };
  }

  private parseTouch(t: string[]): ParseResult {
    if (t.length !== 3 && t.length !== 4) return err('ERROR', '');
    // As incr's (parseArith).
    const noreply = t[t.length - 1] === 'noreply';
    const key = t[1] ?? '';
    if (!isValidKey(key)) return quiet(err('CLIENT_ERROR', BAD_FORMAT), noreply);
    const exptime = parseExptime(t[2] ?? '');
    if (exptime === undefined) return quiet(err('CLIENT_ERROR', 'invalid exptime argument'), noreply);
    return { kind: 'touch', key, deadline: deadlineFromExptime(exptime, this.now()), noreply };
  }

  /**
   * As memcached's: the first argument is the delay (an exptime; not positive: now), anything
   * after it but a final noreply ignored; one that is not a number is an invalid exptime.
   */
  private parseFlush(t: string[]): ParseResult {
    const noreply = t[t.length - 1] === 'noreply';
    let delay = 0;
    if (t.length > (noreply ? 2 : 1)) {
      const d = parseExptime(t[1] ?? '');
      if (d === undefined) return quiet(err('CLIENT_ERROR', 'invalid exptime argument'), noreply);
      delay = Math.max(0, d);
    }
    return { kind: 'flush', delay, noreply };
  }
}
