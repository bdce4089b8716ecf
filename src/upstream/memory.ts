/**
 * `memory://` — an in-process store: bounded in bytes, least-recently-used eviction, expiry.
 * It is the embedded default and the store the router tests run against. Every operation is
 * synchronous and atomic (one event-loop turn), so conditional commands need no locking.
 *
 * URL: memory://[name]?max-bytes=67108864
 */

import { type ArithOp, type Hit, applyArith, decideStore, isExpired, parseCounter } from '../command/command';
import type { UpstreamContext } from './registry';
import { ConfigError } from '../errors';
import { intOption, rejectUnknownOptions } from './registry';
import {
  type ArithResult,
  type StoreRequest,
  type StoreResult,
  type TouchResult,
  type Upstream,
  type UpstreamStats,
  maskUrl,
  newUpstreamStats,
} from './upstream';

interface Entry {
  value: Buffer;
  flags: number;
  cas: bigint;
  deadline: number;
}

/** Rough per-item bookkeeping cost beyond key and value, so the bound tracks real memory. */
const ITEM_OVERHEAD = 96;

export const MEMORY_DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

export class MemoryUpstream implements Upstream {
  readonly scheme = 'memory';
  readonly timeoutMs = 0;
  readonly stats: UpstreamStats = newUpstreamStats();
  /** Map iteration order is insertion order: the first entry is the least recently used. */
  private readonly items = new Map<string, Entry>();
  private bytes = 0;
  private nextCas = 1n;
  evictions = 0;

  constructor(
    public name: string,
    public maxBytes: number,
    private readonly now: () => number = Date.now,
    /** max-item-size: an append/prepend never makes a value longer (memcached: NOT_STORED). */
    public maxItemSize = Number.POSITIVE_INFINITY,
  ) {}

  /**
   * Takes the name and limits of `other`, built from the config a reload applies, keeping what
   * it holds (a new store would be empty: see App.resolveUpstreams); evicts down to the new bound.
   */
  retune(other: MemoryUpstream): void {
    this.name = other.name;
    this.maxBytes = other.maxBytes;
    this.maxItemSize = other.maxItemSize;
    for (const [k, victim] of this.items) {
      if (this.bytes <= this.maxBytes) break;
      this.remove(k, victim);
      this.evictions++;
    }
  }

  get itemCount(): number {
    return this.items.size;
  }

  get usedBytes(): number {
    return this.bytes;
  }

  async get(keys: readonly string[], touch?: number): Promise<Array<Hit | undefined>> {
    this.stats.requests++;
    const out: Array<Hit | undefined> = [];
    for (const key of keys) {
      const e = this.live(key);
      if (e && touch !== undefined) {
        e.deadline = touch;
        if (isExpired(touch, this.now())) this.remove(key, e);
      }
      out.push(e ? { value: e.value, flags: e.flags, cas: e.cas, deadline: e.deadline } : undefined);
    }
    return out;
  }

  async store(req: StoreRequest): Promise<StoreResult> {
    this.stats.requests++;
    const e = this.live(req.key);
    const d = decideStore(req, e, this.maxItemSize);
    if (d.kind === 'refuse') return { status: d.status };
    if (isExpired(d.deadline, this.now())) {
      // Stored and at once expired: the key is left absent, as memcached does with a past exptime.
      if (e) this.remove(req.key, e);
      return { status: 'STORED', cas: this.nextCas++ };
    }
    // A whole new value may be a slice of a client's read buffer: keep a copy of its own.
    return { status: 'STORED', cas: this.put(req.key, d.whole ? Buffer.from(d.value) : d.value, d.flags, d.deadline) };
  }

  async delete(key: string): Promise<'DELETED' | 'NOT_FOUND'> {
    this.stats.requests++;
    const e = this.live(key);
    if (!e) return 'NOT_FOUND';
    this.remove(key, e);
    return 'DELETED';
  }

  async touch(key: string, deadline: number, withItem = false): Promise<TouchResult> {
    this.stats.requests++;
    const e = this.live(key);
    if (!e) return 'NOT_FOUND';
    e.deadline = deadline;
    if (isExpired(deadline, this.now())) this.remove(key, e);
    return withItem ? { flags: e.flags, cas: e.cas } : 'TOUCHED';
  }

  async arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult> {
    this.stats.requests++;
    const e = this.live(key);
    if (!e) return { status: 'NOT_FOUND' };
    const current = parseCounter(e.value);
    if (current === undefined) return { status: 'NON_NUMERIC' };
    const value = applyArith(op, current, delta);
    const cas = this.put(key, Buffer.from(value.toString(), 'latin1'), e.flags, e.deadline);
    return { status: 'OK', value, cas };
  }

  async flush(): Promise<void> {
    this.stats.requests++;
    this.items.clear();
    this.bytes = 0;
  }

  async probe(): Promise<void> {}

  async close(): Promise<void> {}

  /** The live entry for key (refreshed as most recently used), or undefined; drops it if expired. */
  private live(key: string): Entry | undefined {
    const e = this.items.get(key);
    if (!e) return undefined;
    if (isExpired(e.deadline, this.now())) {
      this.remove(key, e);
      return undefined;
    }
    this.items.delete(key);
    this.items.set(key, e);
    return e;
  }

  private put(key: string, value: Buffer, flags: number, deadline: number): bigint {
    const old = this.items.get(key);
    if (old) this.remove(key, old);
    const cas = this.nextCas++;
    this.items.set(key, { value, flags, cas, deadline });
    this.bytes += key.length + value.length + ITEM_OVERHEAD;
    for (const [k, victim] of this.items) {
      if (this.bytes <= this.maxBytes || k === key) break;
      this.remove(k, victim);
      this.evictions++;
    }
    return cas;
  }

  private remove(key: string, e: Entry): void {
    this.items.delete(key);
    this.bytes -= key.length + e.value.length + ITEM_OVERHEAD;
  }
}

export function createMemoryUpstream(url: URL, options: Map<string, string>, ctx: UpstreamContext): MemoryUpstream {
  const where = `upstream ${maskUrl(url.href)}`;
  // memory://10.0.0.5:11211 is memcached:// mistyped: run as an in-process store, nothing would
  // say so. Only a name is taken.
  if (url.port !== '' || url.username !== '' || url.password !== '' || (url.pathname !== '' && url.pathname !== '/') || url.hash !== '') {
    throw new ConfigError(`${where}: a port, user, password, path or fragment is not taken: expected memory://[name] (an in-process store; a memcached server is memcached://host:port)`);
  }
  const maxBytes = intOption(options, 'max-bytes', MEMORY_DEFAULT_MAX_BYTES, ctx.maxItemSize + 1024, 2 ** 48, where);
  rejectUnknownOptions(options, where, ['max-bytes']);
  return new MemoryUpstream(maskUrl(url.href), maxBytes, Date.now, ctx.maxItemSize);
}
