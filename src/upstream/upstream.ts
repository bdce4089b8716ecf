/**
 * The one interface every upstream driver implements (memory, memcached; later redis, mysql,
 * sqlite). The router knows nothing else about a store.
 *
 *   router ──► Upstream.get / store / delete / touch / arith / flush / probe
 *                 │
 *                 └─ driver: its own connections, its own wire format, its own timeout
 *
 * Contract, for every method:
 * - The promise settles within the driver's `timeoutMs` (plus scheduling noise). A driver whose
 *   store did not answer in time rejects with MCMUX_UPSTREAM_TIMEOUT and discards the connection
 *   the request went out on, so that a late reply can never be paired with a later request.
 * - Failures reject with a `McmuxError` from `src/errors.ts`; protocol outcomes (a miss,
 *   NOT_STORED, EXISTS, NOT_FOUND, a non-numeric incr) resolve as values. A request refused
 *   before it was sent (no connection) is MCMUX_UPSTREAM_UNREACHABLE, never _IO: the router
 *   takes _IO as "may have been applied", and a cas it cannot fail over answers SERVER_ERROR.
 * - Keys arrive validated (at most 250 bytes, no control characters or spaces) as latin1 strings.
 * - Deadlines are absolute Unix ms, 0 = never; a deadline in the past means "already expired":
 *   a store of such an item must leave the key absent.
 * - Values are Buffers that may be slices of a client's read buffer: copy one if you keep it
 *   beyond the call (the memory driver does; a socket write does not need to).
 */

import type { ArithOp, Hit, StoreMode } from '../command/command';

export type StoreResult = { status: 'STORED' | 'NOT_STORED' | 'EXISTS' | 'NOT_FOUND'; cas?: bigint };
/**
 * What a touch found: NOT_FOUND, or the item touched. With `withItem` a driver answers the
 * item's flags and cas unique as they were when it touched it (a touch changes neither, as in
 * memcached), when it could read them in the same operation; a plain 'TOUCHED' otherwise.
 */
export type TouchResult = 'TOUCHED' | 'NOT_FOUND' | TouchedItem;
export interface TouchedItem {
  readonly flags: number;
  readonly cas: bigint;
}

export type ArithResult = { status: 'OK'; value: bigint; cas?: bigint } | { status: 'NOT_FOUND' | 'NON_NUMERIC' };

export interface StoreRequest {
  readonly mode: StoreMode;
  readonly key: string;
  readonly value: Buffer;
  readonly flags: number;
  readonly deadline: number;
  /** For mode 'cas': the unique the client read from this upstream. */
  readonly cas?: bigint | undefined;
  /**
   * false: the caller will not use the unique this write makes (a text client's set, a copy, a
   * repair), so a driver may answer without one rather than spend work or a round trip reading
   * it back. The write still makes a new unique. Default: wanted.
   */
  readonly withCas?: boolean | undefined;
}

/** What `stats upstreams` shows for one upstream. */
export interface UpstreamStats {
  requests: number;
  errors: number;
  timeouts: number;
  /** Sum and count of request latencies in microseconds, for the mean. */
  latencyUsSum: number;
  latencyCount: number;
}

/**
 * A store that runs inside mcmux (memory://; sqlite://, whose requests better-sqlite3 runs on
 * mcmux's own thread, waiting in mcmux's queue while the file is locked): nothing sent to it
 * outlives the process that sent it.
 */
export function inProcess(u: Pick<Upstream, 'scheme'>): boolean {
  return u.scheme === 'memory' || u.scheme === 'sqlite';
}

export interface Upstream {
  /** Its URL with any password masked: safe to log and to show in `stats`. */
  readonly name: string;
  /** The URL scheme without the colon ('memory', 'memcached', ...). */
  readonly scheme: string;
  readonly timeoutMs: number;
  readonly stats: UpstreamStats;

  /**
   * Reads several keys in one round trip; the result is aligned with `keys` (undefined = miss).
   * With `touch` set (gat), each hit's deadline is replaced by it in the same operation.
   * `valueOnly`: the caller uses only value and flags (a plain get answered as it is), so a
   * driver may skip fetching the cas unique and the deadline and report them as 0.
   */
  get(keys: readonly string[], touch?: number, valueOnly?: boolean): Promise<Array<Hit | undefined>>;
  store(req: StoreRequest): Promise<StoreResult>;
  delete(key: string): Promise<'DELETED' | 'NOT_FOUND'>;
  /**
   * `withItem`: the caller answers the item's flags and unique (a binary TOUCH), so a driver
   * that can read them in the same operation returns a TouchedItem; without it, a plain
   * 'TOUCHED' (a text touch, a gat's copies: nobody reads them).
   */
  touch(key: string, deadline: number, withItem?: boolean): Promise<TouchResult>;
  /** memcached semantics: unsigned 64-bit, incr wraps, decr floors at 0; expiry kept. */
  arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult>;
  flush(): Promise<void>;
  /** A cheap request that proves the store answers (memcached `version`). */
  probe(): Promise<void>;
  /**
   * Optional, for `mcmux check`: why every write would be refused here, found without writing
   * anything (a Redis replica: READONLY); undefined when none is seen (or it cannot be told).
   */
  writeProblem?(): Promise<string | undefined>;
  close(): Promise<void>;
  /**
   * Optional: a driver that can tell it reconnected after losing its connection calls this (the
   * store may have restarted empty; mcmux then fences it until its marker key is checked).
   */
  onReconnect?: (() => void) | undefined;
  /**
   * Optional: a driver that can name the history of the server at its address (a Redis
   * replication id) calls this at each connection, before the requests sent on it are answered.
   * Another id than the last one seen, by this process or, on journal.log, one before it, is
   * another server than before (a replica promoted behind a stable address, a restart): it may
   * lack writes it had acknowledged, whatever its marker says (ColdDetector.serverId). Unless
   * `continues(before)`, given the id seen last (one this driver told, maybe by an older version
   * of it, from journal.log), says the new id names the same history, every write kept: an id
   * that changed though the server did not (a Redis master that freed its replication backlog:
   * same run_id, a new replication id). Without it, any other id is another server.
   */
  onServerId?: ((id: string, continues?: (before: string) => boolean) => void) | undefined;
  /** Optional: a driver that finds something the operator should mend (a missing permission) says it here, once; mcmux logs it. */
  onWarning?: ((message: string) => void) | undefined;
  /**
   * Optional: true for a store whose data outlives a restart of its server and that evicts
   * nothing (sqlite, MySQL). The marker mcmux wrote there found missing is then a replacement or a
   * restore (an older copy, holding sessions destroyed since), not a restart empty: the cold
   * detector distrusts it as well as fencing it (review-durable finding 2).
   */
  readonly durable?: boolean;
  /**
   * Optional: the parts of a store that places keys on servers of its own, each to keep a marker
   * of the cold detector (a Redis Cluster: one per master, since one can restart alone). Without
   * it, the store keeps one marker (a memcached pool's servers are HealthyUpstreams: membersOf).
   */
  markerStores?(): readonly Upstream[];
  /**
   * Optional: resolves once markerStores can name every part (a Redis Cluster: its slots known,
   * at its first connection), or once that has failed or taken `timeout`. The cold detector's
   * looks wait for it.
   */
  markersReady?(): Promise<void>;
}

export function newUpstreamStats(): UpstreamStats {
  return { requests: 0, errors: 0, timeouts: 0, latencyUsSum: 0, latencyCount: 0 };
}

/** Replaces the password of every URL in `text` with `***` (never log a secret). */
export function maskUrl(text: string): string {
  // Up to the LAST @ of the word: a password written unencoded may hold @ / ? # itself (which
  // also makes the URL unparseable, so this runs on the raw text of the error that says so).
  // The user part may hold an @ too (Azure's user@server).
  return maskQuerySecrets(text.replace(/([a-z][a-z0-9+.-]*:\/\/[^:/?#\s"]*:)[^\s"]*@/gi, '$1***@'));
}

/**
 * `?password=...` (or pass, pwd, secret, token, auth...): no driver takes one, so such a URL is
 * refused, and the error naming it must not print it.
 */
function maskQuerySecrets(text: string): string {
  // The value runs to `&`, `#`, a space, a quote or the end; one `:` `,` `;` `)` just before a
  // space or a quote is the text's ("upstream <url>: unknown option"), not masked away with it
  // (review-h37 finding 7).
  return text.replace(/([?&](?:[a-z0-9_-]*(?:pass|pwd|secret|token|auth|key)[a-z0-9_-]*)=)[^&#\s"']*?(?=[&#]|[:,;)]?[\s"']|$)/gi, '$1***');
}

/**
 * maskUrl for one URL as written (a config value, not free text): everything between
 * `scheme://user:` and its last @ is the password, whatever it holds. maskUrl stops at a space
 * or a double quote (so that it never runs on from a URL into the text after it), which left a
 * password holding one in the clear.
 */
export function maskRawUrl(raw: string): string {
  return maskQuerySecrets(raw.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/?#\s"]*:)[^]*@/i, '$1***@'));
}
