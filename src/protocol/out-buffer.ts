/**
 * Bytes on their way to a socket, gathered into few large Buffers instead of many small ones.
 *
 *   latin1('VALUE k 0 5\r\n') ─┐
 *   push(value ≤ COPY_MAX) ────┼─► copied into the current slab ─┐
 *   push(value > COPY_MAX) ────┴─► kept as is (no copy) ─────────┴─► take(): Buffer[] ─► socket
 *
 * A reply or request made of a header, a value and a CRLF then costs the socket one contiguous
 * chunk (one write, or a writev of a few), not three Buffers and an allocation for the header.
 *
 * take() hands out views of the slab and the next bytes go after them, in the same slab, until it
 * is full: a view handed out is never written again, so one OutBuffer may serve many sockets as
 * long as each fills and takes within one synchronous run (the client connections share one).
 */

import type { Socket } from 'node:net';

/** Values larger than this are referenced, not copied. */
export const COPY_MAX = 16 * 1024;
/** Size of a fresh slab (a bigger one when a single piece needs more). */
const SLAB_SIZE = 64 * 1024;

const EMPTY = Buffer.alloc(0);

export class OutBuffer {
  private slab: Buffer = EMPTY;
  private start = 0; // first byte not yet handed out
  private end = 0; // first free byte
  private parts: Buffer[] = [];
  /** parts[i] is a view of a slab (not a large value kept by reference). */
  private inSlab: boolean[] = [];
  private bytes = 0;

  /** Bytes gathered and not yet taken. */
  get length(): number {
    return this.bytes;
  }

  /** Appends `s`, one byte per character (keys and protocol lines are latin1 by construction). */
  latin1(s: string): void {
    const n = s.length;
    this.reserve(n);
    this.slab.latin1Write(s, this.end, n);
    this.end += n;
    this.bytes += n;
  }

  /** Appends each Buffer: small ones copied into the slab, large ones kept by reference. */
  push(...chunks: Buffer[]): void {
    for (const b of chunks) this.append(b);
  }

  append(b: Buffer): void {
    const n = b.length;
    if (n === 0) return;
    this.bytes += n;
    if (n > COPY_MAX) {
      this.cut();
      this.parts.push(b);
      this.inSlab.push(false);
      return;
    }
    this.reserve(n);
    b.copy(this.slab, this.end);
    this.end += n;
  }

  /**
   * Everything gathered since the last take(), in order; the buffer is then empty. `own`: the
   * parts that are views of the slab are copied, for a socket that will hold them a while (one
   * not reading its replies): a view would keep the whole slab, shared with every other
   * connection's replies, alive for as long as it waits (thousands of times its own size).
   */
  take(own = false): Buffer[] {
    this.cut();
    const parts = this.parts;
    if (own) {
      for (let i = 0; i < parts.length; i++) {
        if (!this.inSlab[i]) continue;
        const view = parts[i] as Buffer;
        const copy = Buffer.allocUnsafeSlow(view.length); // not from Node's shared pool either
        view.copy(copy);
        parts[i] = copy;
      }
    }
    this.parts = [];
    this.inSlab = [];
    this.bytes = 0;
    return parts;
  }

  /** Drops what was gathered (the socket it was for is gone). */
  discard(): void {
    this.start = this.end;
    this.parts = [];
    this.inSlab = [];
    this.bytes = 0;
  }

  private reserve(n: number): void {
    if (this.end + n <= this.slab.length) return;
    this.cut();
    this.slab = Buffer.allocUnsafeSlow(Math.max(SLAB_SIZE, n));
    this.start = this.end = 0;
  }

  /** Closes the bytes written since the last cut into a part of their own. */
  private cut(): void {
    if (this.end === this.start) return;
    this.parts.push(this.slab.subarray(this.start, this.end));
    this.inSlab.push(true);
    this.start = this.end;
  }
}

/**
 * Hands `chunks` (from take()) to `socket`: one write for one chunk, else one writev under a
 * cork. Both the client connections and the upstream connections write this way.
 */
export function writeChunks(socket: Socket, chunks: readonly Buffer[]): void {
  if (chunks.length === 1) {
    socket.write(chunks[0] as Buffer);
  } else if (chunks.length > 1) {
    socket.cork();
    for (const c of chunks) socket.write(c);
    socket.uncork();
  }
}

declare global {
  interface Buffer {
    /** Node's latin1 writer (what buf.write(s, off, 'latin1') ends in), without the encoding lookup. */
    latin1Write(s: string, offset: number, length: number): number;
  }
}
