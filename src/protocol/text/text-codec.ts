/** The text protocol as a `ServerCodec`: the request parser and the reply writer together. */

import type { OutBuffer } from '../out-buffer';
import type { Reply } from '../../command/command';
import type { Decoded, Request, ServerCodec } from '../codec';
import { errorLine, writeTextReply } from './reply-writer';
import { type TextLimits, TextRequestParser } from './request-parser';

const NOTHING = Buffer.alloc(0);

export class TextCodec implements ServerCodec {
  private readonly parser: TextRequestParser;

  constructor(limits: TextLimits) {
    this.parser = new TextRequestParser(limits);
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
    if (r.kind === 'parse_error') {
      return { kind: 'error', bytes: r.silent === true || (r.noreply && !r.close) ? NOTHING : errorLine(r.type, r.message), close: r.close };
    }
    return { kind: 'request', request: { command: r, tag: undefined } };
  }

  encode(reply: Reply, request: Request, out: OutBuffer): void {
    const cmd = request.command;
    // noreply: the client reads nothing for this command, errors included (it is not listening).
    if (cmd.kind === 'quit' || ('noreply' in cmd && cmd.noreply)) return;
    writeTextReply(reply, cmd.kind === 'get' ? cmd : undefined, out);
  }
}
