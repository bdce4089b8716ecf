/**
 * Client sockets that read into one buffer shared by every connection, instead of a new Buffer
 * for each read.
 *
 *   net.Server ──accepted socket (paused)──► adoptSharedReads ──► new Socket on the same handle,
 *                                                                 reads into SHARED, callback(chunk)
 *
 * Node offers this (`onread`) only to sockets it connects, not to the ones a server accepts, so
 * the accepted socket's handle is moved into a new Socket made with `onread`. A chunk handed to
 * the callback is a view of the shared buffer, valid until the callback returns: the codecs copy
 * what they keep (ServerCodec.push, `borrowed`). Measured against a fresh Buffer per read, in
 * paired rounds: 8 % less CPU per request unpipelined, 2-3 % pipelined (docs/benchmarks.md).
 *
 * Moving the handle uses the socket's `_handle` and the `handle` option of the Socket
 * constructor, which Node uses itself but does not document. Where they are not as expected,
 * adoptSharedReads returns undefined and the connection reads the usual way ('data' events);
 * test/server/shared-read.test.ts fails if that happens on the Node this project runs on.
 */

import { type OnReadOpts, Socket } from 'node:net';

/** Big enough for what one read() takes at most from a TCP socket in libuv (64 KiB). */
const SHARED = Buffer.allocUnsafeSlow(64 * 1024);

interface WithHandle {
  _handle?: { readStart?: unknown } | null;
}

/**
 * Moves `raw` (accepted with pauseOnConnect, nothing read yet) onto a socket whose reads land in
 * the shared buffer and go to `onRead`; undefined (and `raw` untouched) if that cannot be done.
 */
export function adoptSharedReads(raw: Socket, onRead: (chunk: Buffer) => void): Socket | undefined {
  const internal = raw as unknown as WithHandle;
  const handle = internal._handle;
  if (!handle || typeof handle.readStart !== 'function' || raw.readableLength > 0) return undefined;
  const onread: OnReadOpts = {
    buffer: SHARED,
    callback: (n: number, buf: Uint8Array): boolean => {
      onRead((buf as Buffer).subarray(0, n));
      return true;
    },
  };
  let socket: Socket;
  try {
    socket = new Socket({ handle, readable: true, writable: true, allowHalfOpen: raw.allowHalfOpen, onread } as ConstructorParameters<typeof Socket>[0]);
  } catch {
    return undefined;
  }
  if ((socket as unknown as WithHandle)._handle !== handle) return undefined;
  internal._handle = null; // raw must not close the handle it no longer owns
  raw.destroy();
  return socket;
}
