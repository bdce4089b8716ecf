/**
 * One client connection: framing, ordering, limits.
 *
 *   first byte 0x80 ? binary codec : text codec   (as memcached decides, per connection)
 *   socket 'data' ─► codec.push ─► next() ─► Slot{request} queued ─► dispatch (read/write barrier)
 *                                                                    │
 *                                                       router.execute(cmd) ─► slot.reply
 *                                                                    │
 *   socket.write ◄─ flush(): codec.encode of the completed slots at the head, in order, one cork
 *
 * Ordering. Replies leave in request order whatever order the upstreams answer in. Execution
 * keeps what one memcached connection guarantees, without serialising everything:
 *  - writes are applied one at a time, in order (two pipelined sets of one key land in order on
 *    every upstream; `set sess` then `delete lock.sess` never unlock before the write);
 *  - a read waits for the write in flight only if it touches the same key, so `set k noreply`
 *    then `get k` reads the new value (T17) while reads of other keys go on in parallel;
 *  - a write waits for the reads in flight of its key (a `get k` before a `set k` must not see it);
 *  - commands start in request order: one that must wait holds back those after it;
 *  - flush_all waits for everything and holds back everything;
 *  - `stats` waits for everything before it (its counters then count those commands, as
 *    memcached's do), and holds back nothing after it: it is answered at once.
 *
 * Limits. At most `maxPipeline` commands are queued per client, holding at most `maxInputBytes`
 * of values (the command that crosses it is taken; nothing after it until those are answered);
 * beyond either, and while the socket holds more than `maxOutputBytes` unsent, the connection
 * stops reading and starts no more commands (backpressure: a client that does not read its
 * replies, or that pipelines large values to a slow upstream, cannot make mcmux buffer without
 * bound). Reads (and gats) started and not yet written out are bounded by count (max-reads-held) and
 * by keys (`maxKeysPerGet` among them, one get always allowed): the replies fetched or waiting
 * for an earlier reply are at most one get's worth of values.
 */

import type { Socket } from 'node:net';
import type { Command, Reply } from '../command/command';
import type { Decoded, Request, ServerCodec } from '../protocol/codec';
import { OutBuffer, writeChunks } from '../protocol/out-buffer';
import { errorLine } from '../protocol/text/reply-writer';
import { TextCodec } from '../protocol/text/text-codec';
import type { TextLimits } from '../protocol/text/request-parser';
import type { Router } from '../router/router';

export interface ConnectionLimits extends TextLimits {
  /**
   * Reads (and gats) started and not yet written out, per client (and at most max-keys-per-get
   * keys among them). With the output check in dispatch() this bounds the replies one client
   * can make mcmux hold: max-output-bytes plus one get's worth of values.
   */
  readonly maxReadsHeld: number;
  /** Commands parsed but not yet answered, per client. */
  readonly maxPipeline: number;
  /** Unsent reply bytes per client before mcmux stops reading from it. */
  readonly maxOutputBytes: number;
  /** Value bytes of queued, unanswered commands per client before mcmux stops reading it. */
  readonly maxInputBytes: number;
}

/** Chooses the codec from a connection's first byte; the binary codec registers itself here. */
export type CodecFactory = (firstByte: number, limits: ConnectionLimits) => ServerCodec;

export const defaultCodecFactory: CodecFactory = (_first, limits) => new TextCodec(limits);

interface Slot {
  request: Request | undefined;
  reply: Reply | undefined;
  /** Already-encoded bytes (a request that could not be decoded). */
  bytes: Buffer | undefined;
  /** Close the connection once this slot's reply is written. */
  closeAfter: boolean;
  write: boolean;
  /** The keys it reads or writes; undefined: every key (flush_all) or none (version, stats). */
  keys: readonly string[] | undefined;
  started: boolean;
  /**
   * Its reply carries values (a read's, or a gat's: ordered as a write, but answered as a get):
   * counted among the reads held (max-reads-held, max-keys-per-get) until it is written.
   */
  held: boolean;
  /** Value bytes the request holds until it is answered (stores). */
  inBytes: number;
}

/** The keys a command touches, for the ordering rules; 'all' for flush_all and stats (every key before it). */
function keysOf(cmd: Command): readonly string[] | 'all' | undefined {
  switch (cmd.kind) {
    case 'get':
      return cmd.keys;
    case 'store':
    case 'too_large':
    case 'delete':
    case 'touch':
    case 'arith':
      return [cmd.key];
    case 'flush':
    case 'stats':
      return 'all';
    default:
      return undefined;
  }
}

/**
 * Where every connection encodes its replies: flush() fills it and takes the bytes out in one
 * synchronous run, so one slab serves all clients (no buffer held per idle connection).
 */
const SHARED_OUT = new OutBuffer();

const NOTHING = Buffer.alloc(0);

/** Marks flush_all and stats: they order against every key. */
const ALL: readonly string[] = [];

const READS: ReadonlySet<Command['kind']> = new Set(['get', 'version', 'stats', 'noop', 'verbosity']);

export class ClientConnection {
  private codec: ServerCodec | undefined;
  private readonly queue: Slot[] = [];
  /** Index of the first slot not yet dispatched. */
  private nextToStart = 0;
  private readsInFlight = 0;
  /** Keys of the reads in flight, with how many reads hold each. */
  private readonly readKeys = new Map<string, number>();
  /** The write in flight: its keys, 'all' for flush_all; undefined when none. */
  private writeKeys: readonly string[] | 'all' | undefined;
  private paused = false;
  private closing = false;
  private flushScheduled = false;
  /** Replies computed but not yet handed to the socket. */
  private unflushed = 0;
  /** Value bytes of the queued commands not yet answered (Slot.inBytes). */
  private inputBytes = 0;
  /** Keys of the reads started and not yet flushed. */
  private readKeysHeld = 0;

  constructor(
    private readonly socket: Socket,
    private readonly router: Router,
    private readonly limits: ConnectionLimits,
    private readonly onClose: () => void,
    private readonly codecFor: CodecFactory = defaultCodecFactory,
    private readonly onBug: (error: unknown) => void = () => {},
    /** Input comes through onRead() (the shared read buffer), not 'data' events. */
    readonly sharedReads = false,
  ) {
    socket.setNoDelay(true);
    if (!sharedReads) socket.on('data', (chunk: Buffer) => this.onData(chunk, false));
    socket.on('drain', this.onWritten);
    // Shutdown, or the client shut down its side (it sends nothing more): read no more commands;
    // end once the replies already owed are written (flush), as memcached answers what it read.
    const finish = (): void => {
      this.closing = true;
      if (this.queue.length === 0) this.close();
    };
    socket.on('mcmux:drain', finish);
    socket.on('end', finish);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.closing = true;
      this.onClose();
    });
  }

  /** Input read into the shared buffer (shared-read.ts): valid only until this returns. */
  onRead(chunk: Buffer): void {
    this.onData(chunk, true);
  }

  private onData(chunk: Buffer, borrowed: boolean): void {
    if (this.closing || chunk.length === 0) return;
    try {
      if (!this.codec) this.codec = this.codecFor(chunk[0] as number, this.limits);
      const codec = this.codec;
      codec.push(chunk, borrowed);
      try {
        this.drainParser();
      } finally {
        // What is left unparsed (a partial command, or input held back by max-pipeline) must
        // not stay a view of the shared buffer, which the next read overwrites.
        if (borrowed) codec.detach();
      }
    } catch (error) {
      this.closeOnBug(error);
    }
  }

  private drainParser(): void {
    while (this.codec && !this.closing && this.queue.length < this.limits.maxPipeline && this.inputBytes < this.limits.maxInputBytes) {
      const r = this.codec.next();
      if (r === undefined) break;
      this.enqueue(r);
    }
    this.dispatch();
    this.maybePause();
  }

  private enqueue(d: Decoded): void {
    if (d.kind === 'error') {
      const reply: Reply = { kind: 'none' };
      this.queue.push({ request: undefined, reply, bytes: d.bytes, closeAfter: d.close, write: false, keys: undefined, started: true, held: false, inBytes: 0 });
      if (d.close) this.closing = true; // decode nothing more; close once the replies before it are out
      return;
    }
    const command = d.request.command;
    const kind = command.kind;
    const keys = keysOf(command);
    const inBytes = kind === 'store' ? command.value.length : 0;
    this.inputBytes += inBytes;
    // A gat changes its keys' deadlines: a `get k` after `gat -1 k` must not read k (memcached
    // answers it a miss), so it is ordered as a write.
    const write = !READS.has(kind) || (kind === 'get' && command.touch !== undefined);
    this.queue.push({
      request: d.request,
      reply: undefined,
      bytes: undefined,
      closeAfter: kind === 'quit',
      write,
      keys: keys === 'all' ? ALL : keys,
      started: false,
      // A gat's reply is a get's, values and all: held to the same budget as the reads', or a
      // pipeline of gats, each started as soon as the one before is answered, would pile up
      // replies faster than they are written (the output check sees only what reached the socket).
      held: !write || kind === 'get',
      inBytes,
    });
    if (kind === 'quit') this.closing = true;
  }

  /** Starts the queued commands the read/write barrier allows. */
  private dispatch(): void {
    while (this.nextToStart < this.queue.length) {
      const slot = this.queue[this.nextToStart] as Slot;
      if (slot.started) {
        this.nextToStart++;
        continue;
      }
      if (!this.mayStart(slot)) break;
      // Backpressure: start nothing more while the client has not read what it was sent.
      if (this.socket.writableLength > this.limits.maxOutputBytes) break;
      this.nextToStart++;
      slot.started = true;
      if (slot.held) this.readKeysHeld += slot.keys?.length ?? 0;
      if (slot.write) {
        this.writeKeys = slot.keys === ALL ? 'all' : (slot.keys ?? []);
      } else {
        this.readsInFlight++;
        for (const k of slot.keys ?? []) this.readKeys.set(k, (this.readKeys.get(k) ?? 0) + 1);
      }
      this.run(slot);
    }
    this.scheduleFlush();
  }

  /**
   * Replies are written once per event-loop pass (setImmediate: after every socket read in this
   * poll phase, the upstreams' included, has been handled), so the replies to a pipelined batch
   * leave in one write even when they came back in several upstream reads. Measured against
   * process.nextTick (a write after each upstream read): about a quarter fewer client writes and
   * their wake-ups of the client, the largest single cost of a pipelined op on a 2-core VM.
   */
  private scheduleFlush(): void {
    if (this.flushScheduled || this.queue[0]?.reply === undefined) return;
    this.flushScheduled = true;
    setImmediate(this.flushNow);
  }

  private readonly flushNow = (): void => {
    this.flushScheduled = false;
    this.safely(() => {
      this.flush();
      // Backpressure may have held commands back while these replies were unwritten.
      this.dispatch();
    });
  };

  /**
   * Replies written out ('drain', or an empty write's callback where no 'drain' will come: see
   * flush): commands held back by backpressure may start, and a paused client be read again.
   */
  private readonly onWritten = (error?: Error | null): void => {
    if (error || this.socket.destroyed) return;
    this.safely(() => {
      this.dispatch();
      this.maybeResume();
    });
  };

  /** The ordering rules (see the top of this file). */
  private mayStart(slot: Slot): boolean {
    if (slot.held && !this.mayHold(slot)) return false;
    const w = this.writeKeys;
    if (slot.write) {
      if (w !== undefined) return false;
      if (slot.keys === ALL) return this.readsInFlight === 0;
      for (const k of slot.keys ?? []) if (this.readKeys.has(k)) return false;
      return true;
    }
    // stats: once everything before it is answered.
    if (slot.keys === ALL) return w === undefined && this.readsInFlight === 0;
    if (w === undefined) return true;
    if (w === 'all') return false;
    for (const k of slot.keys ?? []) if (w.includes(k)) return false;
    return true;
  }

  /** Whether a read (or gat) may start within the replies one client may have mcmux hold. */
  private mayHold(slot: Slot): boolean {
    // Replies computed but not yet written count too: together they are what this client holds.
    if (this.readsInFlight + this.unflushed >= this.limits.maxReadsHeld) return false;
    // One get's worth of keys among the reads held, so one get's worth of values fetched.
    const n = slot.keys?.length ?? 0;
    return this.readKeysHeld === 0 || this.readKeysHeld + n <= this.limits.maxKeysPerGet;
  }

  private run(slot: Slot): void {
    let result: Promise<Reply> | Reply;
    try {
      result = this.router.execute((slot.request as Request).command);
    } catch (error) {
      result = { kind: 'error', type: 'SERVER_ERROR', message: error instanceof Error ? error.message : String(error) };
    }
    if (result instanceof Promise) {
      result.then(
        (reply) => this.completeSafely(slot, reply),
        (error: unknown) => this.completeSafely(slot, { kind: 'error', type: 'SERVER_ERROR', message: String(error) }),
      );
    } else {
      this.complete(slot, result);
    }
  }

  /** Runs `fn`; a bug in it closes this connection instead of crashing the process. */
  private safely(fn: () => void): void {
    try {
      fn();
    } catch (error) {
      this.closeOnBug(error);
    }
  }

  /** complete() from a promise reaction: as safely(), without a closure per reply. */
  private completeSafely(slot: Slot, reply: Reply): void {
    try {
      this.complete(slot, reply);
    } catch (error) {
      this.closeOnBug(error);
    }
  }

  /** A bug must cost this client its connection, never the proxy every client's. */
  private closeOnBug(error: unknown): void {
    this.onBug(error);
    this.socket.destroy();
  }

  private complete(slot: Slot, reply: Reply): void {
    slot.reply = reply;
    this.unflushed++;
    this.inputBytes -= slot.inBytes;
    this.router.record((slot.request as Request).command, reply);
    if (slot.write) {
      this.writeKeys = undefined;
    } else {
      this.readsInFlight--;
      for (const k of slot.keys ?? []) {
        const n = (this.readKeys.get(k) ?? 1) - 1;
        if (n === 0) this.readKeys.delete(k);
        else this.readKeys.set(k, n);
      }
    }
    if (this.socket.destroyed) return;
    this.dispatch();
  }

  /** Writes the replies of the completed slots at the head of the queue, in order, in one batch. */
  private flush(): void {
    if (this.queue.length === 0 || this.queue[0]?.reply === undefined) return;
    const out = SHARED_OUT;
    let close = false;
    let n = 0;
    try {
      for (const slot of this.queue) {
        if (slot.reply === undefined) break;
        n++;
        if (slot.bytes) out.append(slot.bytes);
        else if (slot.request && this.codec) {
          this.codec.encode(slot.reply, slot.request, out);
          this.unflushed--;
          if (slot.held) this.readKeysHeld -= slot.keys?.length ?? 0;
        }
        if (slot.closeAfter) {
          close = true;
          break;
        }
      }
    } catch (error) {
      // The slab is shared: half a reply left in it would go out to the next client flushed.
      out.discard();
      throw error;
    }
    this.queue.splice(0, n);
    // dispatch() may be on the stack (a reply that was ready at once): never index below 0.
    this.nextToStart = Math.max(0, this.nextToStart - n);
    // Replies behind unsent ones wait in the socket: their own copy, not a view of the shared slab.
    const chunks = out.take(this.socket.writableLength > 0);
    if (!this.socket.destroyed) {
      writeChunks(this.socket, chunks);
      // Held back by unsent replies that never reached the socket's high-water mark (a
      // max-output-bytes below it): no 'drain' will come, so be told when they are written.
      if (this.socket.writableLength > this.limits.maxOutputBytes && !this.socket.writableNeedDrain) this.socket.write(NOTHING, this.onWritten);
    }
    if (close || (this.closing && this.queue.length === 0)) {
      this.close();
      return;
    }
    this.maybePause();
    this.maybeResume();
  }

  /**
   * Ends the connection once what was written is out, and releases it then: with allowHalfOpen a
   * client that never closes its side would otherwise hold the descriptor (and a max-connections
   * slot) forever after mcmux closed it (quit, a fatal error, shutdown).
   */
  private close(): void {
    const socket = this.socket;
    socket.end(() => socket.destroy());
  }

  /** Whether this client must wait for its replies before mcmux reads more of its commands. */
  private full(): boolean {
    return (
      this.queue.length >= this.limits.maxPipeline ||
      this.inputBytes >= this.limits.maxInputBytes ||
      this.socket.writableLength > this.limits.maxOutputBytes
    );
  }

  private maybePause(): void {
    if (this.paused || this.closing) return;
    if (this.full()) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private maybeResume(): void {
    if (!this.paused || this.closing) return;
    if (!this.full()) {
      this.paused = false;
      this.socket.resume();
      // Commands already buffered in the parser are not waiting for a 'data' event.
      this.drainParser();
    }
  }

  /** What the limits are holding back right now (for tests and `stats`). */
  info(): { queued: number; unsentBytes: number; queuedValueBytes: number; paused: boolean; bufferedInput: number } {
    return {
      queued: this.queue.length,
      unsentBytes: this.socket.writableLength,
      queuedValueBytes: this.inputBytes,
      paused: this.paused,
      bufferedInput: this.codec?.buffered ?? 0,
    };
  }

  /** Refuses a connection over the limit (T22). */
  static refuse(socket: Socket): void {
    socket.on('error', () => socket.destroy());
    socket.resume(); // accepted paused: read (and drop) what it sends until it is gone
    // Closed once the line is out, as memcached does: waiting for the client to close its side
    // would let clients that never do hold a descriptor each beyond max-connections.
    socket.end(errorLine('ERROR', 'Too many open connections'), () => socket.destroy());
  }
}
