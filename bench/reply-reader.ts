/**
 * Incremental reader of memcached text-protocol replies to `get <key>` and `set`, on Buffers.
 * No sockets: feed it chunks as they arrive, split anywhere; it calls `sink.reply()` once per
 * complete reply, in order.
 *
 *   get  ->  VALUE <key> <flags> <bytes>\r\n<data block>\r\n ... END\r\n    (hit)
 *            END\r\n                                                        (miss)
 *   set  ->  STORED\r\n
 *   any  ->  ERROR | CLIENT_ERROR <msg> | SERVER_ERROR <msg> | NOT_STORED | ...  (one line)
 *
 * Only a partial line is ever kept between chunks; data blocks are skipped by count, never copied.
 */

/** What a complete reply was. Anything but END (after zero or more VALUEs) or STORED is an error. */
export const Reply = { end: 0, stored: 1, error: 2 } as const;
export type Reply = (typeof Reply)[keyof typeof Reply];

export interface ReplySink {
  /** One complete reply. `hadValue` is true when an END closed at least one VALUE (a hit). */
  reply(kind: Reply, hadValue: boolean): void;
}

const CR = 13;
const LF = 10;
/** A line longer than this without LF is garbage, not a reply: the reader gives up. */
const MAX_LINE = 8192;

const VALUE_ = Buffer.from('VALUE ');
const END = Buffer.from('END');
const STORED = Buffer.from('STORED');

export class ReplyReader {
  private tail: Buffer | null = null; // bytes of an unfinished line
  private skip = 0; // bytes of data block (+ its CRLF) still to pass over
  private hadValue = false; // a VALUE line was seen since the last END
  /** Set when the stream cannot be a valid reply stream; the reader ignores further input. */
  broken: string | null = null;

  constructor(private readonly sink: ReplySink) {}

  feed(chunk: Buffer): void {
    if (this.broken) return;
    let buf = chunk;
    if (this.tail) {
      buf = Buffer.concat([this.tail, chunk]);
      this.tail = null;
    }
    const end = buf.length;
    let pos = 0;
    while (pos < end) {
      if (this.skip > 0) {
        const take = Math.min(this.skip, end - pos);
        pos += take;
        this.skip -= take;
        continue;
      }
      const lf = buf.indexOf(LF, pos);
      if (lf < 0) {
        if (end - pos > MAX_LINE) {
          this.broken = `reply line longer than ${MAX_LINE} bytes`;
          return;
        }
        // Copy: a subarray would pin the whole (up to 64 KiB) chunk until the next one arrives.
        this.tail = Buffer.from(buf.subarray(pos));
        return;
      }
      const lineEnd = lf > pos && buf[lf - 1] === CR ? lf - 1 : lf;
      this.line(buf, pos, lineEnd);
      if (this.broken) return;
      pos = lf + 1;
    }
  }

  private line(buf: Buffer, start: number, end: number): void {
    if (startsWith(buf, start, end, VALUE_)) {
      const bytes = valueLength(buf, start + VALUE_.length, end);
      if (bytes < 0) {
        this.broken = 'malformed VALUE line';
        return;
      }
      this.skip = bytes + 2; // the data block and its CRLF
      this.hadValue = true;
      return;
    }
    const hadValue = this.hadValue;
    this.hadValue = false;
    if (equals(buf, start, end, END)) this.sink.reply(Reply.end, hadValue);
    else if (equals(buf, start, end, STORED)) this.sink.reply(Reply.stored, false);
    else this.sink.reply(Reply.error, false);
  }
}

/** `<key> <flags> <bytes>[ <cas>]` from `from` to `end`: returns <bytes>, or -1 if malformed. */
function valueLength(buf: Buffer, from: number, end: number): number {
  let pos = from;
  for (let field = 0; field < 2; field++) {
    while (pos < end && buf[pos] !== 32) pos++;
    while (pos < end && buf[pos] === 32) pos++;
  }
  let n = 0;
  let digits = 0;
  while (pos < end) {
    const c = buf[pos]!;
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
    digits++;
    pos++;
  }
  return digits === 0 || digits > 10 ? -1 : n;
}

function startsWith(buf: Buffer, start: number, end: number, prefix: Buffer): boolean {
  if (end - start < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (buf[start + i] !== prefix[i]) return false;
  return true;
}

function equals(buf: Buffer, start: number, end: number, word: Buffer): boolean {
  return end - start === word.length && startsWith(buf, start, end, word);
}
