/**
 * The listening side: accepts clients up to `maxConnections` (T22), hands each to a
 * `ClientConnection`, and counts them for `stats`. TCP only on the address given (127.0.0.1 by
 * default); there is no UDP listener (CVE-2018-1000115).
 */

import { type Server, type Socket, createServer } from 'node:net';
import type { Router } from '../router/router';
import type { StatsSource } from '../router/stats';
import { ClientConnection, type ConnectionLimits } from './connection';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export class Listener implements StatsSource {
  readonly startedAt = Date.now();
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private total = 0;
  private rejected = 0;
  limits: ConnectionLimits;
  maxConnections: number;

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

  listen(addr: ListenAddress): Promise<ListenAddress> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(addr.port, addr.host, () => {
        server.off('error', reject);
        const a = server.address();
        resolve(a && typeof a === 'object' ? { host: a.address, port: a.port } : addr);
      });
    });
  }

  private accept(socket: Socket): void {
    if (this.sockets.size >= this.maxConnections) {
      this.rejected++;
      ClientConnection.refuse(socket);
      return;
    }
    this.total++;
    this.sockets.add(socket);
    new ClientConnection(socket, this.routerRef(), this.limits, () => this.sockets.delete(socket));
  }

  /** Stops accepting; with `force`, also drops the clients. Resolves when the server is closed. */
  close(force: boolean): Promise<void> {
    const server = this.server;
    if (force) for (const s of this.sockets) s.destroy();
    if (!server) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }
}
