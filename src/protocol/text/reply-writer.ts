/**
 * Replies to text-protocol clients: a `Reply` in, Buffers out (to be written under one cork).
 * Fixed replies are prebuilt; values are written as header + the value Buffer itself + CRLF,
 * never copied into a new buffer.
 */

import type { GetCommand, Reply, Status } from '../../command/command';

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
export function writeTextReply(reply: Reply, cmd: GetCommand | undefined, out: Buffer[]): void {
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
        out.push(Buffer.from(head, 'latin1'), hit.value, CRLF);
      }
      out.push(END);
      return;
    }
    case 'status':
      out.push(STATUS[reply.status]);
      return;
    case 'number':
      out.push(Buffer.from(`${reply.value}\r\n`, 'latin1'));
      return;
    case 'version':
      out.push(Buffer.from(`VERSION ${reply.version}\r\n`, 'latin1'));
      return;
    case 'stats': {
      let s = '';
      for (const [name, value] of reply.lines) s += `STAT ${name} ${value}\r\n`;
      out.push(Buffer.from(s + 'END\r\n', 'latin1'));
      return;
    }
    case 'error':
      out.push(errorLine(reply.type, reply.message));
      return;
    case 'none':
      return;
    default: {
      const never: never = reply;
      throw new Error(`unhandled reply ${String(never)}`);
    }
  }
}
