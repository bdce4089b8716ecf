/**
 * Reads of one event-loop pass gathered into few multi-key reads, for stores whose cost is per
 * statement or per command (MySQL, Redis). The router asks a driver once per client get, so a
 * pass over 50 clients makes about 45 one-key reads; sent apart they cost the store and mcmux's
 * thread 45 statements or commands, gathered one (measured with `npm run bench -- --drivers`,
 * docs/benchmarks.md). The memcached driver gathers on its wire the same way.
 *
 *   read(keys) ──► queued, with its promise ─┐
 *   read(keys) ──► queued ───────────────────┼─► setImmediate: chunks of at most maxKeys distinct
 *   read(keys) ──► queued ───────────────────┘   keys ──► fetch(keys, callers) ──► each caller its
 *                                                own keys' hits, or the chunk's error
 *
 * A read gathered this way may see a write issued after it in the same pass (it is sent later);
 * that is a newer value, never an older one, and the router's journal tracks reads and writes in
 * flight together either way. A caller with more keys than maxKeys is a chunk of its own (the
 * driver splits it as before).
 */

import type { Hit } from '../command/command';

interface Waiting {
  readonly keys: readonly string[];
  resolve(hits: Array<Hit | undefined>): void;
  reject(err: unknown): void;
}

export class ReadBatcher {
  private queue: Waiting[] = [];
  private scheduled = false;
  private onSent: Array<() => void> = [];

  /**
   * `fetch(keys, callers)`: one read of distinct `keys` on behalf of `callers` requests (for the
   * driver's stats and limits), its hits aligned with `keys`.
   */
  constructor(
    private readonly fetch: (keys: string[], callers: number) => Promise<Array<Hit | undefined>>,
    private readonly maxKeys: number,
  ) {}

  /** Reads waiting for the end of the pass: the driver counts them against its max-queue. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Resolves once the reads queued so far have been handed to `fetch` (at once when none wait). */
  sent(): Promise<void> {
    if (!this.scheduled) return Promise.resolve();
    return new Promise((resolve) => this.onSent.push(resolve));
  }

  read(keys: readonly string[]): Promise<Array<Hit | undefined>> {
    return new Promise((resolve, reject) => {
      this.queue.push({ keys, resolve, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(this.flush);
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = [];
    let chunk: Waiting[] = [];
    let keys = new Set<string>();
    for (const w of queue) {
      let fresh = 0;
      for (const k of w.keys) if (!keys.has(k)) fresh++;
      if (chunk.length > 0 && keys.size + fresh > this.maxKeys) {
        this.send(chunk, keys);
        chunk = [];
        keys = new Set();
      }
      chunk.push(w);
      for (const k of w.keys) keys.add(k);
    }
    if (chunk.length > 0) this.send(chunk, keys);
    for (const resolve of this.onSent.splice(0)) resolve();
  };

  private send(chunk: readonly Waiting[], keys: ReadonlySet<string>): void {
    const list = [...keys];
    let p: Promise<Array<Hit | undefined>>;
    try {
      p = this.fetch(list, chunk.length);
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (hits) => {
        const byKey = new Map<string, Hit | undefined>();
        list.forEach((k, i) => byKey.set(k, hits[i]));
        for (const w of chunk) w.resolve(w.keys.map((k) => byKey.get(k)));
      },
      (err: unknown) => {
        for (const w of chunk) w.reject(err);
      },
    );
  }
}
