/**
 * Replies to text-protocol clients: a `Reply` in, bytes out into an OutBuffer (which copies small
 * values beside their header, so a hit leaves as one contiguous chunk, and keeps large ones by
 * reference). Fixed replies are prebuilt.
 */

import type { GetCommand, Reply, Status } from '../../command/command';
import type { OutBuffer } from '../out-buffer';

const CRLF = Buffer.from('\r\n');
const END = Buffer.from('END\r\n');

const STATUS: Readonly<Record<Status, Buffer>> = {
  STORED: Buffer.from('STORED\r\n'),
  NOT_STORED: Buffer.from('NOT_STORED\r\n'),
  EXISTS: Buffer.from('EXISTS\r\n'),
  NOT_FOUND: Buffer.from('NOT_FOUND\r\n'),
  DELETED: Buffer.from('DELETED\r\n'),
  TOUCHED: Buffer.from('TOUCHED\r\n'),
  OK: Buffer.from('OK\r\n'),
};

export const TOO_MANY_CONNECTIONS = Buffer.from('ERROR Too many open connections\r\n');

export function errorLine(type: string, message: string): Buffer {
  return Buffer.from(message ? `${type} ${message}\r\n` : `${type}\r\n`, 'latin1');
}

/** Appends the wire form of `reply` to `out`. `cmd` is the get it answers, for the keys. */
export function writeTextReply(reply: Reply, cmd: GetCommand | undefined, out: OutBuffer): void {
  switch (reply.kind) {
    case 'values': {
      const keys = cmd?.keys ?? [];
      const withCas = cmd?.withCas ?? false;
      for (let i = 0; i < reply.hits.length; i++) {
        const hit = reply.hits[i];
        if (!hit) continue;
        const head = withCas
          ? `VALUE ${keys[i]} ${hit.flags} ${hit.value.length} ${hit.cas}\r\n`
          : `VALUE ${keys[i]} ${hit.flags} ${hit.value.length}\r\n`;
        out.latin1(head);
        out.append(hit.value);
        out.append(CRLF);
      }
      out.append(END);
      return;
    }
    case 'status':
      out.append(STATUS[reply.status]);
      return;
    case 'number':
      out.latin1(`${reply.value}\r\n`);
      return;
    case 'version':
      out.latin1(`VERSION ${reply.version}\r\n`);
      return;
    case 'stats': {
      let s = '';
      for (const [name, value] of reply.lines) s += `STAT ${name} ${value}\r\n`;
      out.latin1(s + 'END\r\n');
      return;
    }
    case 'error':
      out.append(errorLine(reply.type, reply.message));
      return;
    case 'none':
      return;
    default: {
      const never: never = reply;
      throw new Error(`unhandled reply ${String(never)}`);
    }
  }
}
