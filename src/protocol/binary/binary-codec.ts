/**
 * The binary protocol as a `ServerCodec`: the request parser and the reply writer together,
 * and the codec factory that serves both protocols on one port, choosing per connection by the
 * first byte as memcached does (0x80: binary; anything else: text).
 */

import type { OutBuffer } from '../out-buffer';
import type { Reply } from '../../command/command';
import type { CodecFactory } from '../../server/connection';
import type { Decoded, Request, ServerCodec } from '../codec';
import { TextCodec } from '../text/text-codec';
import type { TextLimits } from '../text/request-parser';
import { MAGIC } from './header';
import { errorPacket, writeBinaryReply } from './reply-writer';
import { type BinaryTag, BinaryRequestParser } from './request-parser';

const NOTHING = Buffer.alloc(0);

export class BinaryCodec implements ServerCodec {
  private readonly parser: BinaryRequestParser;

  constructor(limits: TextLimits, now: () => number = Date.now) {
    this.parser = new BinaryRequestParser(limits, now);
  }

  get buffered(): number {
    return this.parser.buffered;
  }

  push(chunk: Buffer, borrowed?: boolean): void {
    this.parser.push(chunk, borrowed);
  }

  detach(): void {
    this.parser.detach();
  }

  next(): Decoded | undefined {
    const r = this.parser.next();
    if (r === undefined) return undefined;
    if (r.kind === 'request') return { kind: 'request', request: { command: r.command, tag: r.tag } };
    const bytes = r.status === undefined ? NOTHING : errorPacket(r.opcode, r.opaque, r.status, r.message);
    return { kind: 'error', bytes, close: r.close };
  }

  encode(reply: Reply, request: Request, out: OutBuffer): void {
    writeBinaryReply(reply, request.command, request.tag as BinaryTag, out);
  }
}

/** Text and binary on one port: a connection whose first byte is 0x80 speaks binary. */
export const binaryCodecFactory: CodecFactory = (firstByte, limits) =>
  firstByte === MAGIC.REQUEST ? new BinaryCodec(limits) : new TextCodec(limits);
