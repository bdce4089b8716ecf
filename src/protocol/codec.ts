/**
 * What a client connection needs from a wire protocol: bytes in, commands out; replies in,
 * bytes out. The text and binary codecs both implement it, so the connection, the router and
 * the upstreams never know which protocol a client spoke. No sockets here.
 */

import type { Command, Reply } from '../command/command';
import type { OutBuffer } from './out-buffer';

/** A decoded request: the protocol-neutral command and what the codec needs to answer it. */
export interface Request {
  readonly command: Command;
  /** Codec-private (binary: opcode, opaque, quiet); undefined for text. */
  readonly tag: unknown;
}

export type Decoded =
  | { readonly kind: 'request'; readonly request: Request }
  /** A request that cannot be run: its reply, already encoded, and whether to close after it. */
  | { readonly kind: 'error'; readonly bytes: Buffer; readonly close: boolean };

export interface ServerCodec {
  /**
   * Appends input. `borrowed`: `chunk` is a view of a buffer its owner reuses once this call and
   * the next() calls after it return; the codec copies whatever it keeps (values, and through
   * detach() the unparsed rest).
   */
  push(chunk: Buffer, borrowed?: boolean): void;
  /** Copies the unparsed input out of a borrowed chunk (called once the caller stops parsing). */
  detach(): void;
  /** The next decoded request or error, or undefined when more bytes are needed. */
  next(): Decoded | undefined;
  /** Appends the reply to `request` to `out`; appends nothing when the client asked for none. */
  encode(reply: Reply, request: Request, out: OutBuffer): void;
  /** Bytes held, not yet decoded. */
  readonly buffered: number;
}
