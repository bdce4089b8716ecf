/**
 * A TCP fault proxy for tests: listens on 127.0.0.1 (a free port), forwards each connection to a
 * real server on 127.0.0.1:targetPort, and injects one fault at a time, switchable while traffic
 * flows. A mode applies at once to the connections already open and to new ones.
 *
 *   client ──► accepted socket ──► Pipe (queue, delay, drop) ──► upstream socket ──► server
 *   client ◄── accepted socket ◄── Pipe (queue, delay, slice, drop) ◄── upstream socket ◄──┘
 *
 *   pass          forward as is
 *   latency(ms)   every chunk, both ways, leaves `ms` after it arrived (order kept)
 *   blackhole     accept and read, forward nothing either way, answer nothing. A connection
 *                 that lost data so stays silent for good even after a heal: the bytes after
 *                 the hole would no longer line up with the requests (a late reply paired with
 *                 the wrong request is exactly what the tests look for, so the proxy must never
 *                 be the one to cause it). The client discards it after its timeout.
 *   slice(n)      replies (server → client) leave in n-byte packets, one per event-loop turn
 *   hold          requests are forwarded; replies wait in the proxy, in order, until the mode
 *                 changes (a command the server has run, its answer not yet back)
 *   refuse        new connections are closed at once; the open ones are closed too
 *   stall()       an action: the requests (client → server) of the connections open now wait in
 *                 the proxy, in order, until release(); connections opened after it are not
 *                 stalled (a client's new connections reach the server while its old ones wait)
 *   release()     an action: what stall() held leaves now, in order, and those connections follow
 *                 the mode again
 *   reset()       an action, not a mode: every open connection is destroyed with a TCP RST
 *   cut()         an action: every open connection is closed (FIN), both sides, and what was
 *                 still queued in the proxy is lost (a server or load balancer closing it)
 *
 * Bounded: at most `maxConnections` connections at once (more are closed at accept), and a
 * direction with more than MAX_QUEUED_BYTES waiting stops reading its source until it drains.
 * Loopback only: it binds 127.0.0.1 and connects to 127.0.0.1.
 */

import { type Server, type Socket, connect, createServer } from 'node:net';

const HOST = '127.0.0.1';
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;

export type FaultMode =
  | { readonly kind: 'pass' }
  | { readonly kind: 'latency'; readonly ms: number }
  | { readonly kind: 'blackhole' }
  | { readonly kind: 'slice'; readonly bytes: number }
  | { readonly kind: 'hold' }
  | { readonly kind: 'refuse' };

export interface FaultProxyStats {
  accepted: number;
  /** Connections closed at accept (refuse mode or over the limit). */
  refused: number;
  /** Connections destroyed by reset(). */
  resets: number;
  bytesForwarded: number;
  /** Bytes read and thrown away (blackhole). */
  bytesDropped: number;
}

export interface FaultProxy {
  /** The port to give the client instead of the server's. */
  readonly port: number;
  readonly mode: FaultMode;
  readonly stats: Readonly<FaultProxyStats>;
  /** Connections open now. */
  readonly open: number;
  pass(): void;
  latency(ms: number): void;
  blackhole(): void;
  slice(bytes: number): void;
  hold(): void;
  refuse(): void;
  /** Holds the requests of the connections open now in the proxy until release(); new connections are not held. */
  stall(): void;
  /** Lets what stall() held go, in order. */
  release(): void;
  /** Destroys every open connection with a TCP RST, both sides; new ones follow the mode. */
  reset(): void;
  /** Closes every open connection (FIN), both sides; what the proxy still held is lost. */
  cut(): void;
  /** Stops listening and destroys every connection. */
  close(): Promise<void>;
}

interface Chunk {
  readonly data: Buffer;
  /** performance.now() before which it must not leave. */
  readonly at: number;
  /** A piece of a sliced reply: the next one leaves on a later event-loop turn. */
  readonly piece: boolean;
}

/** One link: the accepted socket and its upstream socket. */
class Link {
  /** Lost data in a blackhole: forwards nothing, ever again. */
  poisoned = false;
  readonly toServer: Pipe;
  readonly toClient: Pipe;
  private done = false;

  constructor(
    readonly client: Socket,
    readonly server: Socket,
    private readonly proxy: Proxy,
  ) {
    this.toServer = new Pipe(client, server, this, proxy, false);
    this.toClient = new Pipe(server, client, this, proxy, true);
    client.setNoDelay(true);
    server.setNoDelay(true);
    client.on('data', (d: Buffer) => this.toServer.push(d));
    server.on('data', (d: Buffer) => this.toClient.push(d));
    server.on('connect', () => this.toServer.pump());
    for (const s of [client, server]) {
      s.on('error', () => this.destroy());
      s.on('close', () => this.destroy());
    }
  }

  get connected(): boolean {
    return !this.server.connecting && !this.server.destroyed;
  }

  poison(): void {
    this.poisoned = true;
    this.toServer.clear();
    this.toClient.clear();
  }

  /** Either side gone: the other goes too (whatever was queued is lost, as on a real cut). */
  destroy(): void {
    if (this.done) return;
    this.done = true;
    this.toServer.clear();
    this.toClient.clear();
    this.client.destroy();
    this.server.destroy();
    this.proxy.links.delete(this);
  }

  reset(): void {
    if (this.done) return;
    this.done = true;
    this.toServer.clear();
    this.toClient.clear();
    // resetAndDestroy on a socket still connecting sends the RST once connected, or errors:
    // the 'error' listeners above swallow that.
    for (const s of [this.client, this.server]) {
      if (!s.destroyed) s.resetAndDestroy();
    }
    this.proxy.links.delete(this);
  }
}

/** One direction of a link: chunks wait here until their time, in arrival order. */
class Pipe {
  /** Held by stall() until release(): nothing leaves. */
  stalled = false;
  private queue: Chunk[] = [];
  private queued = 0;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;

  constructor(
    private readonly src: Socket,
    private readonly dst: Socket,
    private readonly link: Link,
    private readonly proxy: Proxy,
    /** server → client: the direction slice() cuts. */
    private readonly replies: boolean,
  ) {}

  push(data: Buffer): void {
    const mode = this.proxy.mode;
    if (this.link.poisoned || mode.kind === 'blackhole') {
      this.proxy.stats.bytesDropped += data.length;
      this.link.poison();
      return;
    }
    const now = performance.now();
    if (mode.kind === 'slice' && this.replies) {
      for (let i = 0; i < data.length; i += mode.bytes) this.add({ data: data.subarray(i, i + mode.bytes), at: now, piece: true });
    } else {
      this.add({ data, at: now + (mode.kind === 'latency' ? mode.ms : 0), piece: false });
    }
    if (this.queued > MAX_QUEUED_BYTES) this.src.pause();
    this.pump();
  }

  private add(c: Chunk): void {
    this.queue.push(c);
    this.queued += c.data.length;
  }

  /** Sends what is due, in order; re-arms itself for what is not. */
  pump(): void {
    if (this.timer || this.immediate || this.stalled) return;
    if (this.replies ? this.dst.destroyed : !this.link.connected) return;
    if (this.replies && this.proxy.mode.kind === 'hold') return;
    while (this.queue.length > 0) {
      if (this.link.poisoned || this.proxy.mode.kind === 'blackhole') {
        // Data that was still on its way when the hole opened is lost with the rest.
        for (const c of this.queue) this.proxy.stats.bytesDropped += c.data.length;
        this.link.poison();
        return;
      }
      const head = this.queue[0] as Chunk;
      const wait = head.at - performance.now();
      if (wait > 0) {
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.pump();
        }, Math.ceil(wait));
        return;
      }
      this.queue.shift();
      this.queued -= head.data.length;
      this.proxy.stats.bytesForwarded += head.data.length;
      this.dst.write(head.data);
      if (head.piece && this.queue.length > 0) {
        // One piece per loop turn, so the reader sees each as a read of its own.
        this.immediate = setImmediate(() => {
          this.immediate = undefined;
          this.pump();
        });
        return;
      }
    }
    if (this.queued <= MAX_QUEUED_BYTES && this.src.isPaused()) this.src.resume();
  }

  clear(): void {
    this.queue = [];
    this.queued = 0;
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = this.immediate = undefined;
    if (this.src.isPaused() && !this.src.destroyed) this.src.resume();
  }
}

class Proxy implements FaultProxy {
  mode: FaultMode = { kind: 'pass' };
  readonly stats: FaultProxyStats = { accepted: 0, refused: 0, resets: 0, bytesForwarded: 0, bytesDropped: 0 };
  readonly links = new Set<Link>();
  port = 0;
  private readonly server: Server;

  constructor(
    private readonly targetPort: number,
    private readonly maxConnections: number,
  ) {
    this.server = createServer((client) => this.accept(client));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, HOST, () => {
        const addr = this.server.address();
        this.port = typeof addr === 'object' && addr ? addr.port : 0;
        resolve();
      });
    });
  }

  private accept(client: Socket): void {
    client.on('error', () => {});
    if (this.mode.kind === 'refuse' || this.links.size >= this.maxConnections) {
      this.stats.refused++;
      client.destroy();
      return;
    }
    this.stats.accepted++;
    const server = connect({ host: HOST, port: this.targetPort });
    this.links.add(new Link(client, server, this));
  }

  get open(): number {
    return this.links.size;
  }

  private setMode(mode: FaultMode): void {
    this.mode = mode;
    // Chunks queued under the previous mode follow the new one where it matters: pump re-checks.
    for (const l of this.links) {
      l.toServer.pump();
      l.toClient.pump();
    }
  }

  pass(): void {
    this.setMode({ kind: 'pass' });
  }

  latency(ms: number): void {
    if (!(ms >= 0 && ms <= 60_000)) throw new RangeError(`latency ${ms} ms: expected 0 to 60000`);
    this.setMode({ kind: 'latency', ms });
  }

  blackhole(): void {
    this.setMode({ kind: 'blackhole' });
  }

  slice(bytes: number): void {
    if (!(Number.isInteger(bytes) && bytes >= 1)) throw new RangeError(`slice ${bytes}: expected a positive integer`);
    this.setMode({ kind: 'slice', bytes });
  }

  hold(): void {
    this.setMode({ kind: 'hold' });
  }

  refuse(): void {
    this.setMode({ kind: 'refuse' });
    for (const l of [...this.links]) l.destroy();
  }

  stall(): void {
    for (const l of this.links) l.toServer.stalled = true;
  }

  release(): void {
    for (const l of this.links) {
      l.toServer.stalled = false;
      l.toServer.pump();
    }
  }

  reset(): void {
    for (const l of [...this.links]) {
      this.stats.resets++;
      l.reset();
    }
  }

  cut(): void {
    for (const l of [...this.links]) l.destroy();
  }

  close(): Promise<void> {
    for (const l of [...this.links]) l.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Starts a fault proxy in front of 127.0.0.1:targetPort, in `pass` mode. */
export async function startFaultProxy(targetPort: number, opts: { maxConnections?: number } = {}): Promise<FaultProxy> {
  const proxy = new Proxy(targetPort, opts.maxConnections ?? 256);
  await proxy.listen();
  return proxy;
}
