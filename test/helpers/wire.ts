/**
 * A raw socket to a memcached-protocol server for exact wire assertions: send bytes, then wait
 * for the text received so far to satisfy a condition (event-driven, bounded by a timeout).
 */

import { type Socket, connect } from 'node:net';

export type Until = RegExp | string | ((text: string) => boolean);

export interface Wire {
  readonly socket: Socket;
  send(data: string | Buffer): void;
  /** Resolves with everything received so far once `until` holds; rejects after `timeoutMs`. */
  read(until: Until, timeoutMs?: number): Promise<string>;
  /** The same as `read`. */
  readUntil(until: Until, timeoutMs?: number): Promise<string>;
  /** Sends `data` and reads until the reply ends with `until` (default: a complete reply line). */
  ask(data: string | Buffer, until?: Until, timeoutMs?: number): Promise<string>;
  /** Everything received, consumed by read/ask. */
  readonly received: string;
  /** The same as `received`. */
  readonly pending: string;
  readonly closed: Promise<void>;
  close(): void;
}

export function connectWire(target: number | string, host = '127.0.0.1'): Promise<Wire> {
  return new Promise((resolve, reject) => {
    const socket = typeof target === 'number' ? connect(target, host) : connect(target);
    let buf = '';
    let waiters: Array<() => void> = [];
    const wake = (): void => {
      const w = waiters;
      waiters = [];
      for (const f of w) f();
    };
    let isClosed = false;
    const closed = new Promise<void>((res) => socket.on('close', () => {
      isClosed = true;
      wake();
      res();
    }));
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      wake();
    });
    socket.on('error', () => {});
    const matches = (until: Until): boolean =>
      typeof until === 'function' ? until(buf) : typeof until === 'string' ? buf.includes(until) : until.test(buf);
    const wire: Wire = {
      socket,
      send: (data) => void socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data),
      read(until, timeoutMs = 5000) {
        return new Promise((res, rej) => {
          const timer = setTimeout(() => rej(new Error(`timed out waiting for ${String(until)}; got ${JSON.stringify(buf)}`)), timeoutMs);
          const check = (): void => {
            if (matches(until)) {
              clearTimeout(timer);
              const out = buf;
              buf = '';
              res(out);
            } else if (isClosed) {
              clearTimeout(timer);
              rej(new Error(`closed while waiting for ${String(until)}; got ${JSON.stringify(buf)}`));
            } else {
              waiters.push(check);
            }
          };
          check();
        });
      },
      readUntil: (until, timeoutMs) => wire.read(until, timeoutMs),
      ask(data, until = /\r\n$/, timeoutMs) {
        wire.send(data);
        return wire.read(until, timeoutMs);
      },
      get received() {
        return buf;
      },
      get pending() {
        return buf;
      },
      closed,
      close: () => socket.destroy(),
    };
    socket.once('connect', () => resolve(wire));
    socket.once('error', reject);
  });
}
