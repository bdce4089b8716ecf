/**
 * What every routing policy sees: the upstreams in priority order and the write policy.
 * The router owns one and swaps it whole on reload, so a policy never sees half a change.
 */

import { type Reply, TOO_LARGE_MESSAGE } from '../command/command';
import { ErrorCodes, McmuxError } from '../errors';
import type { Upstream } from '../upstream/upstream';
import type { RepairJournal } from './journal';

export type WriteWait = 'all' | 'copies';

export interface RouterContext {
  /** In read-priority order. */
  readonly upstreams: readonly Upstream[];
  /** A write succeeds for the client when at least this many upstreams stored it. */
  readonly minCopies: number;
  /** 'all': answer after every upstream answered or timed out; 'copies': after min-copies. */
  readonly writeWait: WriteWait;
  /** Called for background failures (read repair, replication after the answer). */
  readonly onBackgroundError: (what: string, upstream: Upstream, error: unknown) => void;
  readonly counters: RouterCounters;
  /** Keys each upstream missed a write of: never read from it until repaired. */
  readonly journal: RepairJournal;
  /** A client's flush_all emptied `u` on purpose: it is empty, not "came back empty". */
  readonly onFlushed: (u: Upstream) => void;
  /** Ask the next upstream too when the first has not answered a read in this many ms (0: off). */
  readonly hedgeMs: number;
  /**
   * Runs `send` (the repair's flush of an overflowed cache) as a flush_all runs: once every
   * write in flight has settled, with the writes received meanwhile held until it is done.
   */
  readonly flushOrdered: <T>(send: () => Promise<T>) => Promise<T>;
}

/** Counters that policies bump; `stats` and (later) the metrics read them. */
export interface RouterCounters {
  getHits: number;
  getMisses: number;
  readRepairs: number;
  readRepairFailures: number;
  replicationFailures: number;
  /** Hedged reads sent, and keys their answer won. */
  hedges: number;
  hedgeWins: number;
}

export function serverError(message: string): Reply {
  return { kind: 'error', type: 'SERVER_ERROR', message };
}

/** The reply memcached gives an item over its size limit (see TOO_LARGE_MESSAGE). */
export function tooLargeReply(): Reply {
  return serverError(TOO_LARGE_MESSAGE);
}

/**
 * Whether `error` is a store's own refusal of the item as over its size limit (memcached's `-I`
 * below mcmux's max-item-size plus its item header): when every store refused so, the client is
 * told as memcached would tell it (tooLargeReply), not as of upstreams that failed.
 */
export function refusedTooLarge(error: unknown): boolean {
  return error instanceof McmuxError && error.origin === ErrorCodes.UPSTREAM_REFUSED && error.message.endsWith(`SERVER_ERROR ${TOO_LARGE_MESSAGE}`);
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
