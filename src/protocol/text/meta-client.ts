/**
 * The client side of memcached's meta protocol (memcached >= 1.6), without sockets: request
 * encoders, and a parser that turns the bytes a server sends back into replies.
 *
 *   driver ──encodeMg/encodeMs/...──► OutBuffer ──take()──► socket
 *   socket ──push(chunk)──► MetaReplyParser ──next()──► MetaReply | undefined (need more bytes)
 *
 * Replies carry no request id: the caller pairs them with its requests first-in, first-out.
 * A malformed reply is returned as a `protocol_error` value and the parser stays failed: the
 * byte stream can no longer be trusted to line up with the requests, so the connection must go.
 */

import type { OutBuffer } from '../out-buffer';

/** A reply line longer than this without a newline is not memcached talking. */
export const MAX_REPLY_LINE = 8192;

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const CRLF = Buffer.from('\r\n', 'latin1');
const EMPTY = Buffer.alloc(0);
const U64_MAX = (1n << 64n) - 1n;

/** Meta statuses; `flags`, `cas`, `ttl` are the return flags f, c, t when the server sent them. */
export interface MetaStatus {
  readonly kind: 'HD' | 'NS' | 'EX' | 'NF' | 'EN' | 'MN';
  readonly flags: number | undefined;
  readonly cas: bigint | undefined;
  /** Remaining lifetime in seconds; -1 = never expires. */
  readonly ttl: number | undefined;
  /** The O token echoed, when it is a number: which request this reply answers. */
  readonly opaque: number | undefined;
}

export interface MetaValue extends Omit<MetaStatus, 'kind'> {
  readonly kind: 'VA';
  /** A slice of the parser's buffer, not a copy. */
  readonly value: Buffer;
}

export type MetaReply =
  | MetaStatus
  | MetaValue
  | { readonly kind: 'VERSION'; readonly version: string }
  | { readonly kind: 'OK' | 'ERROR' }
  | { readonly kind: 'CLIENT_ERROR' | 'SERVER_ERROR'; readonly message: string }
  /** Not the protocol; the stream is lost from here on. */
  | { readonly kind: 'protocol_error'; readonly message: string };

// Requests, appended to an OutBuffer (the connection's: one write per event-loop pass carries
// every request queued in it). `flags` is the meta flag list as sent, e.g. 'v f c t T30'. Keys are
// latin1 strings (one character per wire byte) and arrive validated: no spaces or control characters.

export function encodeMg(out: OutBuffer, key: string, flags: string): void {
  out.latin1(flags === '' ? `mg ${key}\r\n` : `mg ${key} ${flags}\r\n`);
}

/** The header, the value (copied beside it when small, else referenced) and CRLF. */
export function encodeMs(out: OutBuffer, key: string, value: Buffer, flags: string): void {
  out.latin1(`ms ${key} ${value.length}${flags === '' ? '' : ' ' + flags}\r\n`);
  out.append(value);
  out.append(CRLF);
}

export function encodeMd(out: OutBuffer, key: string, flags = ''): void {
  out.latin1(flags === '' ? `md ${key}\r\n` : `md ${key} ${flags}\r\n`);
}

export function encodeMa(out: OutBuffer, key: string, flags: string): void {
  out.latin1(`ma ${key} ${flags}\r\n`);
}

export function encodeMn(out: OutBuffer): void {
  out.latin1('mn\r\n');
}

export function encodeVersion(out: OutBuffer): void {
  out.latin1('version\r\n');
}

export function encodeFlushAll(out: OutBuffer): void {
  out.latin1('flush_all\r\n');
}

/**
 * The two-letter reply codes by their bytes, without a string per reply (a pipelined batch is
 * hundreds of replies per read); any other pair as its two characters.
 */
function twoLetterCode(a: number, b: number): string {
  switch ((a << 8) | b) {
    case 0x5641:
      return 'VA';
    case 0x4844:
      return 'HD';
    case 0x454e:
      return 'EN';
    case 0x4e53:
      return 'NS';
    case 0x4558:
      return 'EX';
    case 0x4e46:
      return 'NF';
    case 0x4d4e:
      return 'MN';
    case 0x4f4b:
      return 'OK';
    default:
      return String.fromCharCode(a, b);
  }
}

/**
 * Accumulates bytes and yields whole replies. Chunks are only concatenated when a reply spans
 * them, and a value waiting for its body is not re-copied on every chunk: `need` remembers how
 * many bytes the current reply needs before parsing is worth trying again.
 */
export class MetaReplyParser {
  private buf: Buffer = EMPTY;
  private off = 0; // start of the first unconsumed byte in buf
  private chunks: Buffer[] = []; // received after buf, not merged yet
  private chunkBytes = 0;
  private need = 0; // bytes from off needed before the next parse attempt can succeed
  private failed: MetaReply | undefined;
  /** The reply at off waits for the end of its line (not for a declared number of bytes). */
  private lineOpen = false;

  /**
   * `maxValue`: the largest value accepted (mcmux's max-item-size): a VA declaring more is a
   * protocol error at once, before its bytes are buffered (a broken or hostile server could
   * otherwise make mcmux hold up to 10^15 bytes).
   */
  constructor(private readonly maxValue = Number.POSITIVE_INFINITY) {}

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.off === this.buf.length && this.chunks.length === 0) {
      this.buf = chunk;
      this.off = 0;
    } else {
      this.chunks.push(chunk);
      this.chunkBytes += chunk.length;
    }
  }

  /** Bytes received but not yet returned as a reply. */
  get buffered(): number {
    return this.buf.length - this.off + this.chunkBytes;
  }

  next(): MetaReply | undefined {
    if (this.failed) return this.failed;
    for (;;) {
      if (this.buf.length - this.off >= this.need) {
        const reply = this.parseOne();
        if (reply) {
          this.need = 0;
          if (reply.kind === 'protocol_error') this.failed = reply;
          else if (this.off === this.buf.length && this.chunks.length === 0) {
            // Let the consumed chunk go once no reply slices remain in use.
            this.buf = EMPTY;
            this.off = 0;
          }
          return reply;
        }
      }
      if (this.chunks.length === 0 || this.buffered < this.need) return undefined;
      this.merge();
    }
  }

  /**
   * Joins the unparsed rest of buf with just what the reply in progress needs of the chunks after
   * it (its declared size, or enough to find the end of its line), not the whole of them: a
   * pipelined batch arrives as 64 KiB reads with a reply spanning each boundary, and copying the
   * next read whole at every boundary copied every byte of it once more.
   */
  private merge(): void {
    const rest = this.buf.length - this.off;
    const first = this.chunks[0] as Buffer;
    if (rest === 0) {
      this.buf = first;
      this.off = 0;
      this.chunks.shift();
      this.chunkBytes -= first.length;
      return;
    }
    // Exactly the reply's bytes: any more would start the next reply in the copy, and it would
    // span the copy's end in turn (every reply after the first boundary copied).
    let take = this.need - rest;
    if (this.lineOpen) {
      // The end of the line is not in buf yet: up to the first LF in the chunks (or all of them).
      take = 0;
      for (const c of this.chunks) {
        const lf = c.indexOf(LF);
        if (lf >= 0) {
          take += lf + 1;
          break;
        }
        take += c.length;
      }
    }
    take = Math.min(this.chunkBytes, take);
    const parts: Buffer[] = [this.buf.subarray(this.off)];
    let left = take;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      if (c.length <= left) {
        parts.push(c);
        this.chunks.shift();
        left -= c.length;
      } else {
        parts.push(c.subarray(0, left));
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.chunkBytes -= take;
    this.buf = Buffer.concat(parts, rest + take);
    this.off = 0;
  }

  /** One reply from buf at off, or undefined with `need` set to the bytes it waits for. */
  private parseOne(): MetaReply | undefined {
    this.lineOpen = false;
    const buf = this.buf;
    const start = this.off;
    const avail = buf.length - start;
    const lf = buf.indexOf(LF, start);
    if (lf < 0 || lf - start > MAX_REPLY_LINE) {
      if (avail > MAX_REPLY_LINE) return protocolError(`reply line longer than ${MAX_REPLY_LINE} bytes`);
      this.need = avail + 1;
      this.lineOpen = true;
      return undefined;
    }
    if (lf === start || buf[lf - 1] !== CR) return protocolError('reply line not terminated by \\r\\n');
    const end = lf - 1; // the line is buf[start, end)
    const lineEnd = lf + 1;
    const sp = spaceOrEnd(buf, start, end);
    const code = sp - start === 2 ? twoLetterCode(buf[start] as number, buf[start + 1] as number) : buf.toString('latin1', start, sp);
    switch (code) {
      case 'HD':
      case 'NS':
      case 'EX':
      case 'NF':
      case 'EN':
      case 'MN': {
        const f = parseFlags(buf, sp, end);
        if (typeof f === 'string') return protocolError(f);
        this.off = lineEnd;
        return { kind: code, flags: f.flags, cas: f.cas, ttl: f.ttl, opaque: f.opaque };
      }
      case 'VA':
        return this.parseValue(sp, end, lineEnd);
      case 'OK':
      case 'ERROR':
        if (sp !== end) return protocolError(`unexpected text after ${code}`);
        this.off = lineEnd;
        return { kind: code };
      case 'VERSION':
        this.off = lineEnd;
        return { kind: 'VERSION', version: buf.toString('latin1', Math.min(sp + 1, end), end) };
      case 'CLIENT_ERROR':
      case 'SERVER_ERROR':
        this.off = lineEnd;
        // The server's text goes into logs and client replies: printable ASCII only (it may echo a key).
        return { kind: code, message: printable(buf, Math.min(sp + 1, end), end, 256) };
      default:
        return protocolError(`unknown reply "${printable(buf, start, end)}"`);
    }
  }

  /** `VA <size> <flags>*\r\n<data>\r\n` */
  private parseValue(sp: number, end: number, lineEnd: number): MetaReply | undefined {
    const buf = this.buf;
    if (sp === end) return protocolError('VA without a size');
    const sizeEnd = spaceOrEnd(buf, sp + 1, end);
    const size = parseDigits(buf, sp + 1, sizeEnd);
    if (size === undefined) return protocolError(`VA with a bad size "${printable(buf, sp + 1, sizeEnd)}"`);
    if (size > this.maxValue) return protocolError(`VA of ${size} bytes, over max-item-size (${this.maxValue})`);
    const f = parseFlags(buf, sizeEnd, end);
    if (typeof f === 'string') return protocolError(f);
    const total = lineEnd + size + 2 - this.off;
    if (buf.length - this.off < total) {
      this.need = total;
      return undefined;
    }
    const valueEnd = lineEnd + size;
    if (buf[valueEnd] !== CR || buf[valueEnd + 1] !== LF) return protocolError('VA data not terminated by \\r\\n');
    this.off = valueEnd + 2;
    return { kind: 'VA', value: buf.subarray(lineEnd, valueEnd), flags: f.flags, cas: f.cas, ttl: f.ttl, opaque: f.opaque };
  }
}

/**
 * The first space in buf[from, end), or end. Not buf.indexOf: it would search past the line, to
 * the next space anywhere in what was read (a run of replies without one, a hostile server's,
 * costs a scan of the rest of the read for each: quadratic).
 */
function spaceOrEnd(buf: Buffer, from: number, end: number): number {
  let i = from;
  while (i < end && buf[i] !== SP) i++;
  return i;
}

interface ReturnFlags {
  flags: number | undefined;
  cas: bigint | undefined;
  ttl: number | undefined;
  opaque: number | undefined;
}

/** Return flags from buf[pos, end), pos at a space or end; a string is an error message. */
function parseFlags(buf: Buffer, pos: number, end: number): ReturnFlags | string {
  const out: ReturnFlags = { flags: undefined, cas: undefined, ttl: undefined, opaque: undefined };
  while (pos < end) {
    if (buf[pos] !== SP) return `bad return flags "${printable(buf, pos, end)}"`;
    const s = pos + 1;
    const e = spaceOrEnd(buf, s, end);
    if (e === s) return 'empty return flag';
    switch (buf[s]) {
      case 0x66: {
        // f: client flags, 32 bits unsigned
        const n = parseDigits(buf, s + 1, e);
        if (n === undefined || n > 0xffffffff) return `bad flags "${printable(buf, s, e)}"`;
        out.flags = n;
        break;
      }
      case 0x63: {
        // c: cas unique, 64 bits unsigned
        const n = parseU64(buf, s + 1, e);
        if (n === undefined) return `bad cas "${printable(buf, s, e)}"`;
        out.cas = n;
        break;
      }
      case 0x74: {
        // t: remaining seconds, -1 = never expires
        const neg = buf[s + 1] === 0x2d;
        const n = parseDigits(buf, neg ? s + 2 : s + 1, e);
        if (n === undefined || (neg && n !== 1)) return `bad ttl "${printable(buf, s, e)}"`;
        out.ttl = neg ? -1 : n;
        break;
      }
      case 0x4f:
        // O: the opaque token of the request, echoed. Not a number: it answers none we sent.
        out.opaque = parseDigits(buf, s + 1, e);
        break;
      default:
        // Flags we did not ask for (k key, s size, ...) carry nothing we use.
        break;
    }
    pos = e;
  }
  return out;
}

/** Decimal digits in buf[s, e) as a number; undefined if empty, not digits, or over 15 digits. */
function parseDigits(buf: Buffer, s: number, e: number): number | undefined {
  if (e <= s || e - s > 15) return undefined;
  let n = 0;
  for (let i = s; i < e; i++) {
    const c = buf[i] as number;
    if (c < 0x30 || c > 0x39) return undefined;
    n = n * 10 + (c - 0x30);
  }
  return n;
}

/** An unsigned 64-bit decimal in buf[s, e), or undefined. */
function parseU64(buf: Buffer, s: number, e: number): bigint | undefined {
  if (e <= s || e - s > 20) return undefined;
  for (let i = s; i < e; i++) {
    const c = buf[i] as number;
    if (c < 0x30 || c > 0x39) return undefined;
  }
  const n = BigInt(buf.toString('latin1', s, e));
  return n <= U64_MAX ? n : undefined;
}

function protocolError(message: string): MetaReply {
  return { kind: 'protocol_error', message };
}

function printable(buf: Buffer, s: number, e: number, max = 64): string {
  return buf.toString('latin1', s, Math.min(e, s + max)).replace(/[^\x20-\x7e]/g, '?');
}
