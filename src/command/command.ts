/**
 * The protocol-neutral command model: what a client asked for and what it is told, whichever
 * protocol it spoke. The text codec (and later the binary one) turns bytes into `Command`s;
 * the router turns a `Command` into a `Reply`; the codec turns the `Reply` back into bytes.
 *
 * Keys are latin1 strings: one character per wire byte, so any byte a key may hold survives the
 * round trip, and a key can index a Map without a copy per lookup.
 *
 * Expiry is normalised once, by the codec, to an absolute deadline in Unix milliseconds
 * (see `deadlineFromExptime`): 0 means "never expires", any other value at or before now
 * means "already expired". Every upstream receives the same deadline.
 */

export type StoreMode = 'set' | 'add' | 'replace' | 'append' | 'prepend' | 'cas';
export type ArithOp = 'incr' | 'decr';

export interface GetCommand {
  readonly kind: 'get';
  readonly keys: string[];
  /** gets / gats: the client wants the cas unique. */
  readonly withCas: boolean;
  /** gat / gats: the new deadline; undefined for a plain get. */
  readonly touch: number | undefined;
}

export interface StoreCommand {
  readonly kind: 'store';
  readonly mode: StoreMode;
  readonly key: string;
  readonly flags: number;
  readonly deadline: number;
  readonly value: Buffer;
  /** Only for mode 'cas' (and binary writes carrying a cas in the header). */
  readonly cas: bigint | undefined;
  /**
   * The client is told the unique the write made: a binary response carries it, a text
   * `STORED` does not. Without it no store need read a unique back (upstream.ts, withCas).
   */
  readonly withCas: boolean;
  readonly noreply: boolean;
}

/**
 * A value over the item limit: refused; for a set, the old value is deleted everywhere (T5), as
 * memcached does for a set only (an oversized `add` of a lock must not free a lock held).
 */
export interface TooLargeCommand {
  readonly kind: 'too_large';
  readonly mode: StoreMode;
  readonly key: string;
  readonly noreply: boolean;
}

export interface DeleteCommand {
  readonly kind: 'delete';
  readonly key: string;
  readonly noreply: boolean;
}

export interface TouchCommand {
  readonly kind: 'touch';
  readonly key: string;
  readonly deadline: number;
  readonly noreply: boolean;
  /**
   * The client is told the item's flags and cas (a binary TOUCH answers them, as memcached does;
   * a text `TOUCHED` does not). Default: not.
   */
  readonly withItem?: boolean | undefined;
}

export interface ArithCommand {
  readonly kind: 'arith';
  readonly op: ArithOp;
  readonly key: string;
  readonly delta: bigint;
  /** Binary protocol: create the key with this value on a miss (undefined: never create). */
  readonly initial: bigint | undefined;
  /** Deadline of the item created from `initial`. */
  readonly deadline: number;
  readonly noreply: boolean;
}

export interface FlushCommand {
  readonly kind: 'flush';
  /** memcached's optional delay, in exptime form: up to 30 days relative seconds, else a Unix time. */
  readonly delay: number;
  readonly noreply: boolean;
}

export interface StatsCommand {
  readonly kind: 'stats';
  /** '' for the general section, or a sub-command such as 'upstreams'. */
  readonly group: string;
}

export interface SimpleCommand {
  readonly kind: 'version' | 'quit' | 'noop';
}

export interface VerbosityCommand {
  readonly kind: 'verbosity';
  readonly noreply: boolean;
}

export type Command =
  | GetCommand
  | StoreCommand
  | TooLargeCommand
  | DeleteCommand
  | TouchCommand
  | ArithCommand
  | FlushCommand
  | StatsCommand
  | SimpleCommand
  | VerbosityCommand;

/** One item as read from an upstream. */
export interface Hit {
  readonly value: Buffer;
  readonly flags: number;
  readonly cas: bigint;
  /** Absolute deadline in Unix ms, 0 = never. Drivers report what the store knows. */
  readonly deadline: number;
}

export type Status =
  | 'STORED'
  | 'NOT_STORED'
  | 'EXISTS'
  | 'NOT_FOUND'
  | 'DELETED'
  | 'TOUCHED'
  | 'OK';

export type Reply =
  /** Aligned with the request's keys; undefined is a miss. */
  | { readonly kind: 'values'; readonly hits: ReadonlyArray<Hit | undefined> }
  /** `flags`: a binary TOUCH's hit (TouchCommand withItem), with the item's cas. */
  | { readonly kind: 'status'; readonly status: Status; readonly cas?: bigint; readonly flags?: number }
  | { readonly kind: 'number'; readonly value: bigint; readonly cas?: bigint }
  | { readonly kind: 'version'; readonly version: string }
  | { readonly kind: 'stats'; readonly lines: ReadonlyArray<readonly [string, string | number | bigint]> }
  /** `ERROR`, `CLIENT_ERROR <msg>`, `SERVER_ERROR <msg>`. */
  | { readonly kind: 'error'; readonly type: ErrorType; readonly message: string }
  /** Nothing to send (noreply, quit). */
  | { readonly kind: 'none' };

export type ErrorType = 'ERROR' | 'CLIENT_ERROR' | 'SERVER_ERROR';

/**
 * memcached's refusal of an item over its size limit: `SERVER_ERROR object too large for cache` in
 * text, status 0x03 in binary. libmemcached (php-memcached, pylibmc) tells it from other server
 * errors by this very text (MEMCACHED_E2BIG: pylibmc's TooBig).
 */
export const TOO_LARGE_MESSAGE = 'object too large for cache';

/**
 * Keys mcmux keeps in every store for itself: the cold detector's marker of each host
 * (`mcmux.sentinel.<host>`, cold-detector.ts). A client may not read, write or delete them (the
 * codecs refuse such a key as a malformed one): a client's read of a marker read-repaired it back
 * into a store flushed or restarted behind mcmux's back, and the store was never fenced.
 */
export const RESERVED_KEY_PREFIX = 'mcmux.sentinel.';

export const MAX_KEY_LENGTH = 250; // protocol.txt: "the key must not include control characters or whitespace" and be at most 250 characters

/** protocol.txt: exptimes above 30 days are absolute Unix times. */
export const RELATIVE_EXPTIME_LIMIT = 60 * 60 * 24 * 30;

/** Any deadline in the past means "already expired"; 1 is the canonical one. */
export const EXPIRED = 1;

/**
 * Turns a memcached exptime (seconds) into an absolute deadline in Unix ms.
 * 0: never; negative: already expired; up to 30 days: relative; above: absolute Unix time,
 * and an absolute time in the past is already expired (T8, T9: `2678400` is in 1970).
 */
export function deadlineFromExptime(exptime: number, nowMs: number): number {
  if (exptime === 0) return 0;
  if (exptime < 0) return EXPIRED;
  if (exptime <= RELATIVE_EXPTIME_LIMIT) return nowMs + exptime * 1000;
  const abs = exptime * 1000;
  return abs <= nowMs ? EXPIRED : abs;
}

export function isExpired(deadline: number, nowMs: number): boolean {
  return deadline !== 0 && deadline <= nowMs;
}

/** The memcached exptime to send to a store for a deadline: relative when it fits, else absolute. */
export function exptimeFromDeadline(deadline: number, nowMs: number): number {
  if (deadline === 0) return 0;
  if (deadline <= nowMs) return -1;
  const seconds = Math.ceil((deadline - nowMs) / 1000);
  return seconds <= RELATIVE_EXPTIME_LIMIT ? seconds : Math.ceil(deadline / 1000);
}

export const U64_MASK = (1n << 64n) - 1n;

/** memcached arithmetic: incr wraps at 2^64, decr floors at 0 (T14, hazard 7). */
export function applyArith(op: ArithOp, current: bigint, delta: bigint): bigint {
  return op === 'incr' ? (current + delta) & U64_MASK : current > delta ? current - delta : 0n;
}

/** Strict unsigned decimal: digits only, at most `max` (T7: never parseInt). */
export function parseUnsigned(text: string, max: bigint): bigint | undefined {
  if (smallUnsigned(text) === undefined) return undefined;
  const n = BigInt(text);
  return n <= max ? n : undefined;
}

/**
 * parseUnsigned for limits a double holds exactly (lengths, flags, exptimes): the same rules,
 * no BigInt (three of them per set line were most of its parse). Over 2^53 the value is
 * approximate but far above any such limit, so the answer is the same.
 */
export function parseUnsignedNumber(text: string, max: number): number | undefined {
  const n = smallUnsigned(text);
  return n !== undefined && n <= max ? n : undefined;
}

/** Digits only, 1 to 20 of them (a u64 has 20): their value as a double, else undefined. */
function smallUnsigned(text: string): number | undefined {
  if (text.length === 0 || text.length > 20) return undefined;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) return undefined;
    n = n * 10 + (c - 48);
  }
  return n;
}

/** A numeric value as memcached reads one for incr/decr (safe_strtoull); undefined: non-numeric. */
export function parseCounter(value: Buffer): bigint | undefined {
  // memcached 1.6 reads the item as safe_strtoull does: strtoull skips leading white space and
  // takes a sign; the digits may be followed by white space (a decr that shortened the number
  // leaves spaces) and anything after it; the value must fit 64 bits (T12).
  const n = value.length;
  let i = 0;
  while (i < n && isSpace(value[i] as number)) i++;
  const sign = value[i];
  const negative = sign === 0x2d;
  if (negative || sign === 0x2b) i++;
  const start = i;
  while (i < n && (value[i] as number) >= 0x30 && (value[i] as number) <= 0x39) i++;
  // After the digits: the end, white space, or a NUL (strtoull stops there: the end of its C string).
  if (i === start || (i < n && !isSpace(value[i] as number) && value[i] !== 0)) return undefined;
  let digits = start;
  while (digits < i - 1 && value[digits] === 0x30) digits++; // leading zeros add no length
  if (i - digits > 20) return undefined;
  const magnitude = BigInt(value.toString('latin1', digits, i));
  if (magnitude > U64_MASK) return undefined; // ERANGE
  // strtoull negates a "-" number modulo 2^64; memcached refuses it only when that is >= 2^63.
  const result = negative ? (U64_MASK + 1n - magnitude) & U64_MASK : magnitude;
  return negative && result >= 1n << 63n ? undefined : result;
}

/** C isspace(): space, \t, \n, \v, \f, \r. */
function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

/** What a storage command does to the item it finds, by memcached's rules (no I/O). */
export type StoreDecision =
  | { readonly kind: 'refuse'; readonly status: 'NOT_STORED' | 'NOT_FOUND' | 'EXISTS' }
  /** Write this item; `whole` is false for append/prepend, which keep the item's flags and expiry. */
  | { readonly kind: 'write'; readonly value: Buffer; readonly flags: number; readonly deadline: number; readonly whole: boolean };

/**
 * Decides a set/add/replace/cas/append/prepend against the live item (undefined when absent),
 * for stores that read, decide and write in one atomic step (memory, SQLite). `maxValue`
 * (max-item-size): an append/prepend that would make the value longer is NOT_STORED, the item
 * left as it was, as memcached 1.6 answers one that would pass its item size limit.
 */
export function decideStore(
  req: { readonly mode: StoreMode; readonly value: Buffer; readonly flags: number; readonly deadline: number; readonly cas?: bigint | undefined },
  current: { readonly value: Buffer; readonly flags: number; readonly cas: bigint; readonly deadline: number } | undefined,
  maxValue = Number.POSITIVE_INFINITY,
): StoreDecision {
  switch (req.mode) {
    case 'add':
      if (current) return { kind: 'refuse', status: 'NOT_STORED' };
      break;
    case 'replace':
      if (!current) return { kind: 'refuse', status: 'NOT_STORED' };
      break;
    case 'cas':
      if (!current) return { kind: 'refuse', status: 'NOT_FOUND' };
      if (current.cas !== req.cas) return { kind: 'refuse', status: 'EXISTS' };
      break;
    case 'append':
    case 'prepend': {
      if (!current) return { kind: 'refuse', status: 'NOT_STORED' };
      if (current.value.length + req.value.length > maxValue) return { kind: 'refuse', status: 'NOT_STORED' };
      // protocol.txt: append/prepend ignore the flags and exptime given.
      const parts = req.mode === 'append' ? [current.value, req.value] : [req.value, current.value];
      return { kind: 'write', value: Buffer.concat(parts), flags: current.flags, deadline: current.deadline, whole: false };
    }
    case 'set':
      break;
  }
  return { kind: 'write', value: req.value, flags: req.flags, deadline: req.deadline, whole: true };
}
