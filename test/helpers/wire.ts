/**
 * A raw socket to a memcached-protocol server for exact wire assertions: send bytes, then wait
 * for the text received so far to satisfy a condition (event-driven, bounded by a timeout).
 */

import { type Socket, connect } from 'node:net';

export interface Wire {
  readonly socket: Socket;
  send(data: string | Buffer): void;
  /** Resolves with everything received so far once `until` holds; rejects after `timeoutMs`. */
  read(until: RegExp | string | ((text: string) => boolean), timeoutMs?: number): Promise<string>;
  /** Sends `data` and reads until the reply ends with `until` (default: a complete reply line). */
  ask(data: string | Buffer, until?: RegExp | string): Promise<string>;
  /** Everything received, consumed by read/ask. */
  readonly received: string;
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
    const matches = (until: RegExp | string | ((text: string) => boolean)): boolean =>
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
      ask(data, until = /\r\n$/) {
        wire.send(data);
        return wire.read(until);
      },
      get received() {
        return buf;
      },
      closed,
      close: () => socket.destroy(),
    };
    socket.once('connect', () => resolve(wire));
    socket.once('error', reject);
  });
}
