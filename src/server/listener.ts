/**
 * The listening side: accepts clients up to `maxConnections` (T22), hands each to a
 * `ClientConnection`, and counts them for `stats`. TCP only on the address given (127.0.0.1 by
 * default); there is no UDP listener (CVE-2018-1000115).
 */

import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { type Server, type Socket, connect, createServer } from 'node:net';
import type { ListenSpec } from '../config';
import { binaryCodecFactory } from '../protocol/binary/binary-codec';
import type { Router } from '../router/router';
import type { StatsSource } from '../router/stats';
import { ClientConnection, type ConnectionLimits } from './connection';
import { adoptSharedReads } from './shared-read';


export class Listener implements StatsSource {
  readonly startedAt = Date.now();
  private readonly servers: Server[] = [];
  private readonly sockets = new Map<Socket, ClientConnection>();
  private total = 0;
  private rejected = 0;
  private readonly goneWaiters: Array<() => void> = [];
  limits: ConnectionLimits;
  maxConnections: number;
  /** Told of a bug caught on a client connection (logged by the app). */
  onBug: (error: unknown) => void = () => {};
  /**
   * Told of an error of a listening socket once it listens: accept() failing (ENOBUFS, ENOMEM;
   * libuv absorbs EMFILE itself). Without a listener Node throws it, and mcmux would exit.
   */
  onAcceptError: (error: Error) => void = () => {};

  constructor(
    private readonly routerRef: () => Router,
    limits: ConnectionLimits,
    maxConnections: number,
    readonly version: string,
  ) {
    this.limits = limits;
    this.maxConnections = maxConnections;
  }

  currConnections(): number {
    return this.sockets.size;
  }

  totalConnections(): number {
    return this.total;
  }

  rejectedConnections(): number {
    return this.rejected;
  }

  /** Listens on one more address; resolves with what was bound (the real port for port 0). */
  async listen(spec: ListenSpec, unixMode: number): Promise<ListenSpec> {
    if (spec.kind === 'unix') await removeStaleSocket(spec.path);
    // Paused until accept() has moved the socket onto the shared read buffer (nothing read yet).
    // allowHalfOpen: a client that sends its commands and then shuts down its side (`nc -N`)
    // still gets every reply it is owed before mcmux closes (connection.ts, 'end').
    const server = createServer({ noDelay: true, pauseOnConnect: true, allowHalfOpen: true }, (socket) => this.accept(socket));
    this.servers.push(server);
    return new Promise((resolve, fail) => {
      const reject = (error: NodeJS.ErrnoException): void => fail(spec.kind === 'unix' ? socketError(spec.path, error) : error);
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        server.on('error', (error) => this.onAcceptError(error));
        if (spec.kind === 'unix') {
          chmodSync(spec.path, unixMode);
          resolve(spec);
          return;
        }
        const a = server.address();
        resolve(a && typeof a === 'object' ? { kind: 'tcp', host: a.address, port: a.port } : spec);
      };
      if (spec.kind === 'unix') server.listen(spec.path, done);
      else server.listen(spec.port, spec.host, done);
    });
  }

  private accept(raw: Socket): void {
    if (this.sockets.size >= this.maxConnections) {
      this.rejected++;
      ClientConnection.refuse(raw);
      return;
    }
    this.total++;
    let conn: ClientConnection | undefined;
    const shared = adoptSharedReads(raw, (chunk) => conn?.onRead(chunk));
    const socket = shared ?? raw;
    const onClose = (): void => {
      this.sockets.delete(socket);
      if (this.sockets.size === 0) for (const resolve of this.goneWaiters.splice(0)) resolve();
    };
    conn = new ClientConnection(socket, this.routerRef(), this.limits, onClose, binaryCodecFactory, this.onBug, shared !== undefined);
    this.sockets.set(socket, conn);
    if (!shared) raw.resume();
  }

  /** Resolves once no client is connected. */
  private allGone(): Promise<void> {
    if (this.sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.goneWaiters.push(resolve));
  }

  connections(): ClientConnection[] {
    return [...this.sockets.values()];
  }

  /** Stops accepting; resolves when every client has gone (`force`: drops them now). */
  close(force: boolean): Promise<void> {
    if (force) for (const s of this.sockets.keys()) s.destroy();
    // The servers do not count the clients moved onto the shared read buffer: wait for those too.
    return Promise.all([
      ...this.servers.map((server) => new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve()))),
      this.allGone(),
    ]).then(() => undefined);
  }

  /** Ends idle clients now and the others as soon as their last reply is written (shutdown). */
  drain(): void {
    for (const s of this.sockets.keys()) s.emit('mcmux:drain');
  }
}

/**
 * libuv reports a unix socket's missing directory as EACCES ("listen EACCES: permission denied"):
 * said as what it is (review-h31 finding 9: the operator looked for a permission).
 */
function socketError(path: string, error: NodeJS.ErrnoException): NodeJS.ErrnoException {
  if (error.code !== 'EACCES' || existsSync(dirname(path))) return error;
  const said = new Error(`listen ${path}: its directory ${dirname(path)} does not exist (mcmux makes none; under systemd: RuntimeDirectory=)`) as NodeJS.ErrnoException;
  said.code = 'ENOENT';
  return said;
}

/**
 * A socket file left by a previous run would make listen fail with EADDRINUSE; one that a live
 * process still listens on must stay (taking it over would cut that process off silently).
 */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    if (!lstatSync(path).isSocket()) return; // not a socket: let listen() report it
  } catch {
    return; // absent: nothing to remove
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) {
    const error = new Error(`listen EADDRINUSE: ${path} is in use by another process`) as NodeJS.ErrnoException;
    error.code = 'EADDRINUSE';
    throw error;
  }
  unlinkSync(path);
}
