/**
 * `mysql://user:password@host:port/database` — items as rows of one InnoDB table on MySQL 8 or
 * MariaDB 10.11, through a mysql2 connection pool. Durable: what a restart of the server keeps,
 * this store keeps.
 *
 *   get/store/... ──run()──┬─► pool.getConnection ─► session set-up (once per connection)
 *                          │       ─► CREATE TABLE IF NOT EXISTS (until it once succeeds)
 *                          │       ─► one statement, or a short transaction ─► release
 *                          └─► timer (option timeout) fires first: TIMEOUT, and the connection the
 *                              request was on is destroyed, so a late result is never read
 *   purge timer (unref'd) ──► DELETE ... WHERE exp <= now LIMIT purge-batch, while batches come back full
 *
 * Schema (created on first use; concurrent creators are harmless; one dropped while mcmux runs is
 * made again and reported as a store come back empty: tableLost):
 *
 *   CREATE TABLE IF NOT EXISTS `mcmux_items` (
 *     `key`   VARBINARY(250)  NOT NULL,   -- the key's bytes (latin1 string <-> Buffer)
 *     `value` LONGBLOB        NOT NULL,   -- up to --max-item-size bytes
 *     `flags` INT UNSIGNED    NOT NULL,
 *     `cas`   BIGINT UNSIGNED NOT NULL,   -- UUID_SHORT() of the last write (see below)
 *     `exp`   BIGINT          NOT NULL,   -- absolute deadline, Unix ms; 0 = never
 *     PRIMARY KEY (`key`),
 *     KEY `mcmux_exp` (`exp`)             -- for the purge
 *   ) ENGINE=InnoDB
 *
 * The server's max_allowed_packet must exceed --max-item-size (plus 16 KiB for the rest of a
 * statement); every new connection checks it and refuses to work with a message naming it.
 *
 * Atomicity: each conditional command is one statement whose WHERE clause (or ON DUPLICATE KEY
 * condition) is the memcached condition, judged by its affected-row count (the pool turns
 * CLIENT_FOUND_ROWS off, so an ODKU that keeps a live row reports 0). incr/decr and gat are
 * short transactions that lock the rows with SELECT ... FOR UPDATE. Expired rows are never
 * read (every statement says `exp = 0 OR exp > now`, now being this process's clock, which
 * also made the deadlines) and are deleted by the purge, never resurrected.
 *
 * CAS uniques come from the server: `cas = LAST_INSERT_ID(UUID_SHORT())`, read back from the OK
 * packet's insert id, so a write costs no extra round trip. UUID_SHORT() is unique per server
 * ((server_id << 56) + (start-up second << 24) + a global counter): every mcmux process sharing
 * the table draws from the same counter, and a key deleted and added again never gets back a
 * unique a client may still hold (a per-item `cas + 1` would). A restart within the start-up
 * second of the one before repeats them: each new connection draws one to see it (observeServer)
 * and reports it as a reconnect, so the router voids its clients' tokens. Limits: servers sharing
 * one server_id (a promoted replica with the same id), a server clock set back across a restart,
 * or more than 2^24 uniques a second on average since start-up could repeat one. touch/gat keep
 * the cas, as memcached does.
 *
 * Plain sets are batched (queueSet): the sets of one event-loop pass become multi-row upserts,
 * one commit for all of them (one autocommit statement when they fit one and no caller wants a
 * unique back, else one transaction); a batch starts when a pooled connection is free, so
 * batches grow with the load. Each set makes its own unique and keeps its own timeout and its
 * place in `max-queue`; a key stays out of a second batch while one holding it runs.
 *
 * Timeouts: mysql2 has no deadline covering the wait for a pooled connection, the handshake and
 * a transaction's several statements, so each request races one timer against all of them.
 * The default is 1000 ms (`--timeout` when given): a database round trip, and a transaction's
 * four, are slower than a cache's. A write that timed out may still be applied by the server:
 * its statement is killed (KILL QUERY, killQuery), which stops one waiting for row locks. So is
 * the statement of a connection lost with a request on it (the server does not stop a statement
 * when its client goes), and that request fails as UPSTREAM_IO, late (it may land after later ones).
 *
 * Statements are prepared on the server (mysql2 execute: values travel as raw bytes, not hex),
 * at most 62 per connection (19 single-row statements, 7 IN-list shapes each of four multi-key
 * ones and 5 of casMany, 10 batch shapes; most connections use far fewer); the server's
 * max_prepared_stmt_count is shared by all clients. At that limit a request needing a statement
 * its connection has not prepared is refused (ER_MAX_PREPARED_STMT_COUNT_REACHED: REFUSED, nothing
 * applied); a connection's statements are freed with it.
 *
 * URL: mysql://user:password@host[:3306]/database?table=mcmux_items&timeout=1000&connections=4
 *      &purge-interval=60000&purge-batch=1000
 */

import { performance } from 'node:perf_hooks';
import { type Connection, type Pool, type PoolConnection, type ResultSetHeader, type RowDataPacket, createConnection, createPool } from 'mysql2/promise';
import { type ArithOp, type Hit, applyArith, isExpired, parseCounter } from '../command/command';
import { ConfigError, ErrorCodes, McmuxError } from '../errors';
import type { UpstreamContext } from './registry';
import { intOption, rejectUnknownOptions } from './registry';
import { ReadBatcher } from './read-batch';
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

const DEFAULT_PORT = 3306;
const DEFAULT_TABLE = 'mcmux_items';
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Room in a packet for everything but the value (key, other parameters, statement). */
const PACKET_OVERHEAD = 16 * 1024;
/** Keys per IN list; lists are padded to a power of four so few statements get prepared. */
const MAX_IN = 4096;
/** Plain sets in one batch (one statement or one transaction): at most this many rows... */
const BATCH_MAX_ROWS = 256;
/** ...sent as statements of these row counts (few shapes get prepared), the largest first. */
const BATCH_SHAPES = [256, 128, 64, 32, 16, 8, 4, 3, 2, 1];
/** A deadlock rolls back the whole statement or transaction: re-running it is safe. */
const DEADLOCK_RETRIES = 5;

const ER_NO_SUCH_TABLE = 1146;
const ER_LOCK_DEADLOCK = 1213;
/** The server runs read-only (read_only, super_read_only): a demoted primary, say. */
const ER_OPTION_PREVENTS_STATEMENT = 1290;
/** A server clock this far (ms) from this host's is taken as the same (see observeClock). */
const CLOCK_SLACK_MS = 2000;
/** KILL of a thread that has ended. */
const ER_NO_SUCH_THREAD = 1094;
/** Server errors that mean the connection is gone: shutdown, killed, idle-disconnected (MySQL 8). */
const CONNECTION_ERRNOS = new Set([1053, 1927, 4031]);
/**
 * Server errors that refuse a new connection at its handshake, whoever asks: access denied
 * (1044, 1045), unknown database (1049), host blocked or not allowed (1129, 1130), an auth
 * plugin the client cannot speak (1251), a password to change (1862), a locked account (MySQL
 * 3118, MariaDB 4151). Not the connection limits (1040, 1203): those pass with the peak.
 */
const HANDSHAKE_REFUSALS = new Set([1044, 1045, 1049, 1129, 1130, 1251, 1862, 3118, 4151]);
/**
 * Server errors from a connection's set-up (prepare) that refuse every request of the account,
 * whichever key: the handshake's, a password expired on a server that lets the session in to
 * change it (ER_MUST_CHANGE_PASSWORD, 1820: every statement refused; MariaDB's
 * disconnect_on_expired_password=OFF), and the table missing and the account not allowed to make
 * it, or to read it (ER_TABLEACCESS_DENIED_ERROR, 1142).
 */
const SESSION_REFUSALS = new Set([...HANDSHAKE_REFUSALS, 1142, 1820]);

/** What a statement parameter may be: bytes, integers below 2^53, decimal strings (uniques). */
type Param = Buffer | number | string;

/** What mysql2 attaches to its errors (server errors carry sqlState). */
interface DriverError {
  readonly code?: unknown;
  readonly errno?: unknown;
  readonly sqlState?: unknown;
  readonly sqlMessage?: unknown;
  readonly message?: unknown;
  readonly fatal?: unknown;
}

/** The core (callback) connection under a promise wrapper: its socket, for a hard discard. */
interface CoreConnection {
  readonly stream?: { destroy(): void };
  on(event: 'error' | 'end', listener: () => void): unknown;
}

interface ItemRow extends RowDataPacket {
  key: Buffer;
  value: Buffer;
  flags: number;
  cas: string;
  exp: string;
}

/** A plain set waiting for a batch, or in one. */
interface QueuedSet {
  readonly key: string;
  readonly keyBytes: Buffer;
  readonly value: Buffer;
  readonly flags: number;
  readonly deadline: number;
  /** The caller uses the unique (StoreRequest.withCas): it is read back after the batch. */
  readonly withCas: boolean;
  /** performance.now() when it was queued: its timeout runs from here. */
  readonly queuedAt: number;
  /** Its place among the writes of its key (see `lanes`). */
  readonly ticket: number;
  resolve(r: StoreResult): void;
  reject(e: McmuxError): void;
}

/** One request in flight: settled once, by its result, its timer or close(). */
interface Job {
  conn: PoolConnection | undefined;
  settled: boolean;
  /** Settles the request with an error and discards its connection. */
  abort(err: McmuxError): void;
}

export interface MysqlOptions {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly database: string;
  readonly table: string;
  readonly timeoutMs: number;
  readonly connections: number;
  readonly purgeIntervalMs: number;
  readonly purgeBatch: number;
  readonly maxItemSize: number;
  /** Requests waiting for a pooled connection or running, before new ones are refused (BUSY). */
  readonly maxQueue: number;
  /** False for `mcmux check`: a missing table is left missing (UpstreamContext.create). Default true. */
  readonly create?: boolean;
}

/**
 * Statement texts for one table. Only the validated table name and the purge batch (an integer
 * option) are written into SQL; keys, values and everything else are placeholders.
 */
function statements(table: string, purgeBatch: number) {
  const t = `\`${table}\``;
  const live = '(`exp` = 0 OR `exp` > ?)';
  const expired = '`exp` <> 0 AND `exp` <= ?';
  const newCas = 'LAST_INSERT_ID(UUID_SHORT())';
  return {
    /** Whether the table is there (ER_NO_SUCH_TABLE if not), with no privilege but SELECT. */
    hasTable: `SELECT 1 FROM ${t} LIMIT 0`,
    create:
      `CREATE TABLE IF NOT EXISTS ${t} (\`key\` VARBINARY(250) NOT NULL, \`value\` LONGBLOB NOT NULL, ` +
      '`flags` INT UNSIGNED NOT NULL, `cas` BIGINT UNSIGNED NOT NULL, `exp` BIGINT NOT NULL, ' +
      'PRIMARY KEY (`key`), KEY `mcmux_exp` (`exp`)) ENGINE=InnoDB',
    select: (n: number, lock: boolean) =>
      `SELECT \`key\`, \`value\`, \`flags\`, \`cas\`, \`exp\` FROM ${t} WHERE \`key\` IN (${marks(n)}) AND ${live}${lock ? ' FOR UPDATE' : ''}`,
    touchMany: (n: number) => `UPDATE ${t} SET \`exp\` = ? WHERE \`key\` IN (${marks(n)})`,
    deleteMany: (n: number) => `DELETE FROM ${t} WHERE \`key\` IN (${marks(n)})`,
    set:
      `INSERT INTO ${t} (\`key\`, \`value\`, \`flags\`, \`cas\`, \`exp\`) VALUES (?, ?, ?, ${newCas}, ?) ` +
      'ON DUPLICATE KEY UPDATE `value` = VALUES(`value`), `flags` = VALUES(`flags`), `cas` = VALUES(`cas`), `exp` = VALUES(`exp`)',
    /** n plain sets in one statement (a batch); each row draws its own unique. */
    setMany: (n: number) =>
      `INSERT INTO ${t} (\`key\`, \`value\`, \`flags\`, \`cas\`, \`exp\`) VALUES ${Array.from({ length: n }, () => '(?, ?, ?, UUID_SHORT(), ?)').join(', ')} ` +
      'ON DUPLICATE KEY UPDATE `value` = VALUES(`value`), `flags` = VALUES(`flags`), `cas` = VALUES(`cas`), `exp` = VALUES(`exp`)',
    casMany: (n: number) => `SELECT \`key\`, \`cas\` FROM ${t} WHERE \`key\` IN (${marks(n)})`,
    // Only an expired row is overwritten; `exp` is assigned last because MySQL evaluates the
    // assignments left to right and later ones see earlier results.
    add:
      `INSERT INTO ${t} (\`key\`, \`value\`, \`flags\`, \`cas\`, \`exp\`) VALUES (?, ?, ?, ${newCas}, ?) ON DUPLICATE KEY UPDATE ` +
      `\`value\` = IF(${expired}, VALUES(\`value\`), \`value\`), \`flags\` = IF(${expired}, VALUES(\`flags\`), \`flags\`), ` +
      `\`cas\` = IF(${expired}, VALUES(\`cas\`), \`cas\`), \`exp\` = IF(${expired}, VALUES(\`exp\`), \`exp\`)`,
    replace: `UPDATE ${t} SET \`value\` = ?, \`flags\` = ?, \`cas\` = ${newCas}, \`exp\` = ? WHERE \`key\` = ? AND ${live}`,
    cas: `UPDATE ${t} SET \`value\` = ?, \`flags\` = ?, \`cas\` = ${newCas}, \`exp\` = ? WHERE \`key\` = ? AND ${live} AND \`cas\` = CAST(? AS UNSIGNED)`,
    append: `UPDATE ${t} SET \`value\` = CONCAT(\`value\`, ?), \`cas\` = ${newCas} WHERE \`key\` = ? AND ${live} AND LENGTH(\`value\`) + ? <= ?`,
    prepend: `UPDATE ${t} SET \`value\` = CONCAT(?, \`value\`), \`cas\` = ${newCas} WHERE \`key\` = ? AND ${live} AND LENGTH(\`value\`) + ? <= ?`,
    exists: `SELECT 1 AS one FROM ${t} WHERE \`key\` = ? AND ${live}`,
    remove: `DELETE FROM ${t} WHERE \`key\` = ?`,
    removeLive: `DELETE FROM ${t} WHERE \`key\` = ? AND ${live}`,
    removeLiveCas: `DELETE FROM ${t} WHERE \`key\` = ? AND ${live} AND \`cas\` = CAST(? AS UNSIGNED)`,
    touch: `UPDATE ${t} SET \`exp\` = ? WHERE \`key\` = ? AND ${live}`,
    hasDeadline: `SELECT 1 AS one FROM ${t} WHERE \`key\` = ? AND ${live} AND \`exp\` = ?`,
    /** A touch that answers the item's flags and unique (touch, withItem): the row read, then touched if still that item. */
    touchHead: `SELECT \`flags\`, \`cas\`, \`exp\` FROM ${t} WHERE \`key\` = ? AND ${live}`,
    touchCas: `UPDATE ${t} SET \`exp\` = ? WHERE \`key\` = ? AND ${live} AND \`cas\` = CAST(? AS UNSIGNED)`,
    lockValue: `SELECT \`value\` FROM ${t} WHERE \`key\` = ? AND ${live} FOR UPDATE`,
    setCounter: `UPDATE ${t} SET \`value\` = ?, \`cas\` = ${newCas} WHERE \`key\` = ?`,
    flush: `DELETE FROM ${t}`,
    uniqueOnly: 'SELECT UUID_SHORT() AS u',
    // exp is never negative, so `exp > 0` is `exp <> 0` as one index range. A literal LIMIT:
    // servers differ on the parameter types they accept there.
    purge: `DELETE FROM ${t} WHERE \`exp\` > 0 AND \`exp\` <= ? LIMIT ${purgeBatch}`,
  };
}

function marks(n: number): string {
  return n === 1 ? '?' : `?${', ?'.repeat(n - 1)}`;
}

/**
 * The IN-list size for n keys: the next power of four, so each connection prepares at most 7
 * shapes of each multi-key statement (the server's max_prepared_stmt_count is shared by all).
 */
function bucket(n: number): number {
  let size = 1;
  while (size < n) size *= 4;
  return size;
}

/** Key Buffers padded to `bucket(keys.length)` by repeating the last (IN ignores repeats). */
function inParams(keys: readonly Buffer[]): Buffer[] {
  const out = keys.slice();
  const last = keys[keys.length - 1] as Buffer;
  for (let i = keys.length, n = bucket(keys.length); i < n; i++) out.push(last);
  return out;
}

/**
 * `rows` (distinct keys) grown to the next statement shape by repeating the smallest row, or
 * undefined when that would not fit in `room` bytes. A repeated row sets its key again to the
 * same item in the same statement: the key ends as it would with one row, with a fresh unique
 * (nobody reads those back here). At most twice the rows, in one round trip instead of a
 * transaction of several statements.
 */
function padToShape(rows: readonly QueuedSet[], room: number): readonly QueuedSet[] | undefined {
  let shape: number | undefined; // the smallest shape that holds them (BATCH_SHAPES descends)
  for (const size of BATCH_SHAPES) if (size >= rows.length) shape = size;
  if (shape === undefined) return undefined;
  let bytes = 0;
  let smallest = rows[0] as QueuedSet;
  let smallestSize = Infinity;
  for (const q of rows) {
    const size = q.keyBytes.length + q.value.length;
    bytes += size;
    if (size < smallestSize) [smallest, smallestSize] = [q, size];
  }
  const extra = shape - rows.length;
  if (extra > 0 && bytes + extra * smallestSize > room) return undefined;
  return extra === 0 ? rows : [...rows, ...new Array<QueuedSet>(extra).fill(smallest)];
}

function kb(key: string): Buffer {
  return Buffer.from(key, 'latin1');
}

/** The unique `LAST_INSERT_ID(UUID_SHORT())` left in the OK packet (mysql2 reads it signed). */
function casOf(r: ResultSetHeader): bigint {
  return BigInt.asUintN(64, BigInt(r.insertId));
}

function toHit(row: ItemRow, deadline?: number): Hit {
  return { value: row.value, flags: Number(row.flags), cas: BigInt(row.cas), deadline: deadline ?? Number(row.exp) };
}

function ignore(): void {}

/** An error the server sent on a connection that stays usable (not a lost or killed one). */
function isServerError(err: unknown): boolean {
  const e = err as DriverError;
  return e.sqlState !== undefined && e.fatal !== true && !CONNECTION_ERRNOS.has(Number(e.errno));
}

export class MysqlUpstream implements Upstream {
  readonly scheme = 'mysql';
  readonly durable = true;
  readonly name: string;
  readonly timeoutMs: number;
  readonly stats: UpstreamStats = newUpstreamStats();
  private readonly pool: Pool;
  private readonly sql: ReturnType<typeof statements>;
  private readonly jobs = new Set<Job>();
  /** Core connections that passed the session set-up (max_allowed_packet checked). */
  private readonly prepared = new WeakSet<object>();
  private readonly cores = new Set<CoreConnection>();
  private tableReady = false;
  private closed = false;
  private purging = false;
  private readonly purgeTimer: NodeJS.Timeout;
  /** Plain sets waiting for the next batch (see queueSet). */
  private setQueue: QueuedSet[] = [];
  private setsInBatches = 0;
  private batchesRunning = 0;
  /**
   * Each key's writes not yet settled, by ticket, in the order they were sent. A write starts
   * only once it is the first of its key (a plain set joins a batch only then; the others run
   * only then): two pooled connections commit in either order, and the router counts on every
   * store applying a key's writes in the order it sent them (a delete must not land before the
   * set sent ahead of it, or the set comes back after the delete).
   */
  private readonly lanes = new Map<string, number[]>();
  /** Writes other than plain sets waiting for their turn, by ticket. */
  private readonly waiting = new Map<number, { start(): void; fail(e: McmuxError): void }>();
  private nextTicket = 0;
  private setFlushScheduled = false;
  private setTimer: NodeJS.Timeout | undefined;
  /** Counts the server restarts (observeServer) and table losses (tableLost) seen; a request started before one fails unsent. */
  private epoch = 0;
  /** The server id byte of UUID_SHORT() at the last new connection (undefined: none yet). */
  private serverId: bigint | undefined;
  /** The highest unique of that server seen (written, read or drawn): its counter only climbs. */
  private maxUnique = 0n;
  /**
   * The server's clock minus this host's, in ms, when they differ by more than CLOCK_SLACK_MS
   * (else 0): deadlines are kept, and compared, in the server's time (see observeClock).
   */
  private clockOffset = 0;
  /** A connection of its own for KILL QUERY (the pool may have none free), made with the pool's first (prepare), or on first need. */
  private killer: Promise<Connection> | undefined;
  /** Kill connections that have told whether the server restarted since (observeServer), before their first KILL. */
  private readonly killersObserved = new WeakSet<Connection>();

  /**
   * Optional (Upstream.onReconnect): called when a new connection finds the server restarted or
   * replaced since the last one (observeServer), or a statement finds the table gone (tableLost).
   * A pool reconnecting to the same server after a timeout or an error does not call it.
   */
  onReconnect: (() => void) | undefined;

  constructor(private readonly o: MysqlOptions) {
    this.name = o.name;
    this.timeoutMs = o.timeoutMs;
    this.sql = statements(o.table, o.purgeBatch);
    this.pool = createPool({
      ...this.connectionOptions(),
      connectionLimit: o.connections,
      maxIdle: o.connections,
      waitForConnections: true,
      queueLimit: 0,
    });
    this.pool.pool.on('connection', (core) => {
      const c = core as unknown as CoreConnection;
      const forget = (): void => {
        this.cores.delete(c);
      };
      // An 'error' on an idle pooled connection must never become an uncaught exception.
      c.on('error', forget);
      c.on('end', forget);
      this.cores.add(c);
    });
    this.purgeTimer = setInterval(this.purgeTick, o.purgeIntervalMs).unref();
  }

  /** Of every connection: the pool's and killQuery's. */
  private connectionOptions() {
    const o = this.o;
    return {
      host: o.host,
      port: o.port,
      user: o.user,
      password: o.password,
      database: o.database,
      // A down or paused server must not hold a request longer than the request would wait.
      connectTimeout: o.timeoutMs,
      // Affected rows, not matched rows: an ODKU that keeps a live row must report 0 (add).
      flags: ['-FOUND_ROWS'],
      // 64-bit uniques as exact decimal strings, never rounded to a double.
      supportBigNumbers: true,
      bigNumberStrings: true,
      // No call-site stack captured per statement (mysql2's "long stack traces"): it cost 5 % of
      // mcmux's CPU under a write load, and our errors name the upstream and the operation.
      trace: false,
    };
  }

  get(keys: readonly string[], touch?: number): Promise<Array<Hit | undefined>> {
    if (keys.length === 0) {
      this.stats.requests++;
      return Promise.resolve([]);
    }
    // Refused at once by run() when closed or full, as before; a gat locks rows: one statement each.
    if (touch !== undefined || this.closed || this.load() >= this.o.maxQueue) return this.read(keys, touch, 1);
    return this.reads.read(keys);
  }

  /** Reads of one pass, gathered (read-batch.ts): one SELECT ... IN for all their keys. */
  private readonly reads = new ReadBatcher((keys, callers) => this.read(keys, undefined, callers), MAX_IN);

  /** One read of `keys` on one connection, on behalf of `callers` get requests. */
  private async read(keys: readonly string[], touch: number | undefined, callers: number): Promise<Array<Hit | undefined>> {
    const unique = [...new Set(keys)].map(kb);
    const found = new Map<string, Hit>();
    await this.run(async (c) => {
      found.clear(); // a deadlock retry starts over
      if (touch === undefined) {
        for (let i = 0; i < unique.length; i += MAX_IN) {
          for (const row of await this.select(c, unique.slice(i, i + MAX_IN), false)) found.set(row.key.toString('latin1'), this.hit(row));
        }
        return;
      }
      // gat: lock the live rows, give them the new deadline (or delete them: a deadline in the
      // past expires them), report the hits with that deadline.
      await this.tx(c, async () => {
        for (let i = 0; i < unique.length; i += MAX_IN) {
          const rows = await this.select(c, unique.slice(i, i + MAX_IN), true);
          if (rows.length === 0) continue;
          const hitKeys = inParams(rows.map((r) => r.key));
          if (isExpired(touch, Date.now())) await this.exec(c, this.sql.deleteMany(hitKeys.length), hitKeys);
          else await this.exec(c, this.sql.touchMany(hitKeys.length), [this.toServer(touch), ...hitKeys]);
          for (const row of rows) found.set(row.key.toString('latin1'), this.hit(row, touch));
        }
      });
    }, false, this.timeoutMs, callers, this.epoch, touch === undefined);
    return keys.map((k) => found.get(k));
  }

  store(req: StoreRequest): Promise<StoreResult> {
    if (req.mode === 'set' && !isExpired(req.deadline, Date.now())) return this.queueSet(req);
    const key = kb(req.key);
    const local = req;
    return this.inOrder(req.key, (timeoutMs, epoch) => this.run(async (c) => {
      // In the server's time from here on (observeClock), the deadline as the now it is judged by.
      const now = this.serverNow();
      const req = { ...local, deadline: this.toServer(local.deadline) };
      switch (req.mode) {
        case 'append':
        case 'prepend': {
          // protocol.txt: append/prepend ignore the flags and exptime given. The length guard
          // keeps CONCAT under max_allowed_packet, where it would return NULL; one that would
          // pass max-item-size is NOT_STORED, as memcached answers past its item limit (an
          // error would let the command fail over to a store that takes it).
          const sql = req.mode === 'append' ? this.sql.append : this.sql.prepend;
          const r = await this.exec(c, sql, [req.value, key, now, req.value.length, this.o.maxItemSize]);
          return r.affectedRows === 1 ? { status: 'STORED', cas: casOf(r) } : { status: 'NOT_STORED' };
        }
        case 'set':
        case 'add':
        case 'replace':
        case 'cas':
          return isExpired(req.deadline, now) ? this.storeExpired(c, req, key, now) : this.storeLive(c, req, key, now);
      }
    }, false, timeoutMs, 1, epoch));
  }

  /**
   * A write whose item is at once expired: the key must end up absent (T9, hazard 5). Stored,
   * it still makes a unique (memcached answers a binary SET of it with one, as the other drivers
   * do), fresh from UUID_SHORT(): nothing holds it, so no cas can ever match it.
   */
  private async storeExpired(c: PoolConnection, req: StoreRequest, key: Buffer, now: number): Promise<StoreResult> {
    const stored = async (): Promise<StoreResult> => {
      if (req.withCas === false) return { status: 'STORED' };
      try {
        const [row] = await this.query(c, this.sql.uniqueOnly, []);
        return { status: 'STORED', cas: this.noteUnique(BigInt(String(row?.u))) };
      } catch (err) {
        // The delete before it committed (its own statement): whatever failed after it, the
        // write was applied, never "changed nothing" (a refusal): the router would take this
        // copy as still holding the key.
        throw err instanceof McmuxError ? err : this.error(ErrorCodes.UPSTREAM_IO, `the expired write was applied, its unique not read: ${(err as Error).message}`);
      }
    };
    switch (req.mode) {
      case 'add':
        return (await this.exists(c, key, now)) ? { status: 'NOT_STORED' } : stored();
      case 'replace':
        return (await this.exec(c, this.sql.removeLive, [key, now])).affectedRows === 1 ? stored() : { status: 'NOT_STORED' };
      case 'cas': {
        const r = await this.exec(c, this.sql.removeLiveCas, [key, now, String(req.cas ?? 0n)]);
        if (r.affectedRows === 1) return stored();
        return { status: (await this.exists(c, key, now)) ? 'EXISTS' : 'NOT_FOUND' };
      }
      default:
        await this.exec(c, this.sql.remove, [key]);
        return stored();
    }
  }

  private async storeLive(c: PoolConnection, req: StoreRequest, key: Buffer, now: number): Promise<StoreResult> {
    const { value, flags, deadline } = req;
    switch (req.mode) {
      case 'add': {
        // 1: inserted, 2: an expired row overwritten, 0: a live row kept.
        const r = await this.exec(c, this.sql.add, [key, value, flags, deadline, now, now, now, now]);
        return r.affectedRows > 0 ? { status: 'STORED', cas: casOf(r) } : { status: 'NOT_STORED' };
      }
      case 'replace': {
        const r = await this.exec(c, this.sql.replace, [value, flags, deadline, key, now]);
        return r.affectedRows === 1 ? { status: 'STORED', cas: casOf(r) } : { status: 'NOT_STORED' };
      }
      case 'cas': {
        // No unique given: 0 never matches (uniques are never 0), so EXISTS or NOT_FOUND.
        const r = await this.exec(c, this.sql.cas, [value, flags, deadline, key, now, String(req.cas ?? 0n)]);
        if (r.affectedRows === 1) return { status: 'STORED', cas: casOf(r) };
        return { status: (await this.exists(c, key, now)) ? 'EXISTS' : 'NOT_FOUND' };
      }
      default: {
        const r = await this.exec(c, this.sql.set, [key, value, flags, deadline]);
        return { status: 'STORED', cas: casOf(r) };
      }
    }
  }

  delete(key: string): Promise<'DELETED' | 'NOT_FOUND'> {
    return this.inOrder(key, (timeoutMs, epoch) =>
      this.run(async (c) => ((await this.exec(c, this.sql.removeLive, [kb(key), this.serverNow()])).affectedRows === 1 ? 'DELETED' : 'NOT_FOUND'), false, timeoutMs, 1, epoch),
    );
  }

  touch(key: string, localDeadline: number, withItem = false): Promise<TouchResult> {
    const k = kb(key);
    return this.inOrder(key, (timeoutMs, epoch) => this.run(async (c): Promise<TouchResult> => {
      const now = this.serverNow();
      const deadline = this.toServer(localDeadline);
      // withItem (a binary TOUCH): one more round trip, no transaction. The row is read, then
      // touched only if it still holds that unique, so the flags and unique answered are the
      // item's that was touched; another writer in between makes it read again (then, after a
      // few tries, touch as a plain touch does, answered without them).
      for (let tries = 0; withItem && tries < 3; tries++) {
        const [row] = await this.query(c, this.sql.touchHead, [k, now]);
        if (row === undefined) return 'NOT_FOUND';
        const item = { flags: Number(row.flags), cas: this.noteUnique(BigInt(row.cas as string | number | bigint)) };
        const cas = String(item.cas);
        if (isExpired(deadline, now)) {
          if ((await this.exec(c, this.sql.removeLiveCas, [k, now, cas])).affectedRows === 1) return item;
        } else if (Number(row.exp) === deadline) {
          return item; // it has that deadline already: nothing to write
        } else if ((await this.exec(c, this.sql.touchCas, [deadline, k, now, cas])).affectedRows === 1) {
          return item;
        }
      }
      if (isExpired(deadline, now)) return (await this.exec(c, this.sql.removeLive, [k, now])).affectedRows === 1 ? 'TOUCHED' : 'NOT_FOUND';
      if ((await this.exec(c, this.sql.touch, [deadline, k, now])).affectedRows === 1) return 'TOUCHED';
      // 0 affected rows is also a live row that already had this deadline (nothing changed).
      const same = await this.query(c, this.sql.hasDeadline, [k, now, deadline]);
      return same.length > 0 ? 'TOUCHED' : 'NOT_FOUND';
    }, false, timeoutMs, 1, epoch));
  }

  /** In JS BigInt inside a transaction: SQL has no unsigned 64-bit wrap, MySQL 8 no REGEXP on BLOBs. */
  arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult> {
    const k = kb(key);
    return this.inOrder(key, (timeoutMs, epoch) =>
      this.run(
        (c) =>
          this.tx(c, async (): Promise<ArithResult> => {
            const [row] = await this.query(c, this.sql.lockValue, [k, this.serverNow()]);
            if (!row) return { status: 'NOT_FOUND' };
            const current = parseCounter(row.value as Buffer);
            if (current === undefined) return { status: 'NON_NUMERIC' };
            const value = applyArith(op, current, delta);
            // The OK packet carries the unique it made (LAST_INSERT_ID), as for every other write:
            // a binary INCREMENT/DECREMENT answers it, as memcached does.
            const r = await this.exec(c, this.sql.setCounter, [Buffer.from(value.toString(), 'latin1'), k]);
            return { status: 'OK', value, cas: casOf(r) };
          }),
        false,
        timeoutMs,
        1,
        epoch,
      ),
    );
  }

  flush(): Promise<void> {
    return this.run(async (c) => {
      await this.exec(c, this.sql.flush, []);
    });
  }

  probe(): Promise<void> {
    return this.run(async (c) => {
      await c.query('SELECT 1');
    });
  }

  /**
   * For `mcmux check`, which makes no table: a table not there yet that the account may not
   * CREATE (SHOW GRANTS names no CREATE, nor ALL PRIVILEGES, on `*.*`, on a database pattern that
   * matches this one or on the table itself, nor a role that might: mayCreate): the start's CREATE
   * is refused, and every request with it (review-h31 finding 4). Whatever cannot be told (a role
   * granted, a partial revoke, SHOW GRANTS refused) is no problem said.
   */
  async writeProblem(): Promise<string | undefined> {
    return this.run(async (c) => {
      try {
        await c.query(this.sql.hasTable);
        return undefined;
      } catch (err) {
        if ((err as DriverError).errno !== ER_NO_SUCH_TABLE) return undefined;
      }
      const [rows] = await c.query('SHOW GRANTS');
      const grants = (rows as Array<Record<string, unknown>>).map((r) => String(Object.values(r)[0] ?? ''));
      if (mayCreate(grants, this.o.database, this.o.table) !== false) return undefined;
      return `table ${this.o.table} not there yet, and the account may not CREATE it (SHOW GRANTS names no CREATE on ${this.o.database}): the start's CREATE is refused, and every request with it; grant CREATE on the database, or make the table`;
    }).catch(() => undefined);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.purgeTimer);
    clearTimeout(this.setTimer);
    this.killer?.then((c) => c.destroy(), ignore);
    this.killer = undefined;
    const err = this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed');
    for (const q of this.setQueue.splice(0)) q.reject(this.count(err, false));
    for (const w of [...this.waiting.values()]) w.fail(err);
    this.waiting.clear();
    this.lanes.clear();
    for (const job of this.jobs) job.abort(err);
    // pool.end() says QUIT on every connection and waits for the answers: a paused server
    // would never give them. Bound it, then cut whatever is left.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.pool.end().catch(ignore), new Promise<void>((r) => (timer = setTimeout(r, this.timeoutMs)))]);
    clearTimeout(timer);
    for (const core of this.cores) core.stream?.destroy();
    this.cores.clear();
  }

  /**
   * Plain sets are batched: those that arrive in one event-loop pass are written together, as
   * multi-row upserts in one statement or one transaction (writeSets), so the server commits
   * (and fsyncs) once for all of them instead of once each. A batch starts when a pooled
   * connection is free: while all are busy, sets gather for the next one, so batches grow with
   * the load (a database that keeps up sees batches of one or two). Each set still counts as one
   * request against `max-queue` and `timeout` (from when it was queued), and answers with its
   * own unique when it asked for one.
   */
  private queueSet(req: StoreRequest): Promise<StoreResult> {
    this.stats.requests++;
    if (this.closed) return Promise.reject(this.count(this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed'), false));
    if (this.load() >= this.o.maxQueue) {
      return Promise.reject(this.count(this.error(ErrorCodes.UPSTREAM_BUSY, `${this.o.maxQueue} requests already waiting or running (option max-queue)`), false));
    }
    return new Promise<StoreResult>((resolve, reject) => {
      const { key, value, flags, deadline } = req;
      const withCas = req.withCas !== false;
      const ticket = this.enter(key);
      this.setQueue.push({ key, keyBytes: kb(key), value, flags, deadline, withCas, queuedAt: performance.now(), ticket, resolve, reject });
      this.scheduleSets();
    });
  }

  /** Requests waiting or running: the jobs, counting each set of a batch (or waiting for one). */
  private load(): number {
    return this.jobs.size - this.batchesRunning + this.setsInBatches + this.setQueue.length + this.waiting.size + this.reads.waiting;
  }

  private scheduleSets(): void {
    if (!this.setFlushScheduled) {
      this.setFlushScheduled = true;
      setImmediate(this.flushSets);
    }
    if (this.setTimer === undefined) this.setTimer = setTimeout(this.expireSets, this.timeoutMs).unref();
  }

  /**
   * Starts batches while connections are free. Up to BATCH_MAX_ROWS rows, their keys and values
   * within one item's room in a packet. A set whose key has an earlier write still to settle (a
   * set in a running batch or queued before it, a delete...) stays queued: two batches commit in
   * either order, and the later write must win here as it does in every other store (`lanes`).
   */
  private readonly flushSets = (): void => {
    this.setFlushScheduled = false;
    while (this.setQueue.length > 0 && this.batchesRunning < this.o.connections && !this.closed) {
      const batch: QueuedSet[] = [];
      const rest: QueuedSet[] = [];
      const taken = new Map<string, number>(); // sets of each key in this batch (the first of its lane)
      let bytes = 0;
      let full = false;
      for (const q of this.setQueue) {
        const size = q.keyBytes.length + q.value.length;
        full ||= batch.length === BATCH_MAX_ROWS || (batch.length > 0 && bytes + size > this.o.maxItemSize);
        // Its turn: every earlier write of the key is a set of this batch (writeSets applies a
        // key's sets of one batch in order), none running or queued elsewhere, no other write.
        const before = taken.get(q.key) ?? 0;
        if (full || this.lanes.get(q.key)?.[before] !== q.ticket) {
          rest.push(q);
          continue;
        }
        taken.set(q.key, before + 1);
        batch.push(q);
        bytes += size;
      }
      if (batch.length === 0) return; // everything waits for a running batch
      this.setQueue = rest;
      this.runBatch(batch);
    }
  };

  private runBatch(batch: QueuedSet[]): void {
    this.batchesRunning++;
    this.setsInBatches += batch.length;
    const left = this.timeoutMs - (performance.now() - (batch[0] as QueuedSet).queuedAt);
    this.run((c) => this.writeSets(c, batch), true, Math.max(1, Math.ceil(left)))
      .then(
        (uniques) => {
          const now = performance.now();
          for (const q of batch) {
            this.stats.latencyUsSum += Math.round((now - q.queuedAt) * 1000);
            this.stats.latencyCount++;
            const cas = uniques.get(q);
            q.resolve(cas === undefined ? { status: 'STORED' } : { status: 'STORED', cas });
          }
        },
        (err: McmuxError) => {
          if (err.code === ErrorCodes.UPSTREAM_TIMEOUT) this.stats.timeouts += batch.length;
          for (const q of batch) q.reject(this.count(err, false));
        },
      )
      .finally(() => {
        this.batchesRunning--;
        this.setsInBatches -= batch.length;
        for (const q of batch) this.leave(q.key, q.ticket);
        if (this.setQueue.length > 0) this.scheduleSets();
      });
  }

  /**
   * Writes a batch. Rows go in key order (one lock order for every batch, so two batches do not
   * deadlock). A key set twice in the batch is written in rounds (its first set, then its
   * second, ...), so that each set gets the unique it made, as one set after the other would.
   *
   * - A lone set: one autocommit statement whose OK packet carries the unique.
   * - Distinct keys, none of whose uniques is wanted (StoreRequest.withCas; a text client never
   *   sees one): one autocommit statement, atomic and one commit by itself, padded to a prepared
   *   shape by repeating its smallest row (padToShape).
   * - Otherwise one transaction (one commit for all its statements), which reads back the
   *   uniques that are wanted before it commits, while its row locks keep them its own.
   */
  private async writeSets(c: PoolConnection, batch: readonly QueuedSet[]): Promise<Map<QueuedSet, bigint>> {
    if (batch.length === 1) {
      const q = batch[0] as QueuedSet;
      const r = await this.exec(c, this.sql.set, [q.keyBytes, q.value, q.flags, this.toServer(q.deadline)]);
      return new Map([[q, casOf(r)]]);
    }
    const rounds: QueuedSet[][] = [];
    const seen = new Map<string, number>();
    for (const q of batch) {
      const r = seen.get(q.key) ?? 0;
      seen.set(q.key, r + 1);
      (rounds[r] ??= []).push(q);
    }
    for (const round of rounds) round.sort((a, b) => Buffer.compare(a.keyBytes, b.keyBytes));
    const single = rounds.length === 1 && !batch.some((q) => q.withCas) ? padToShape(rounds[0] as QueuedSet[], this.o.maxItemSize) : undefined;
    if (single) {
      await this.insertRows(c, single);
      return new Map();
    }
    return this.tx(c, async () => {
      const uniques = new Map<QueuedSet, bigint>();
      for (const rows of rounds) {
        await this.insertRows(c, rows);
        const wanted = rows.filter((q) => q.withCas);
        const byKey = new Map(wanted.map((q) => [q.key, q]));
        for (let i = 0; i < wanted.length; i += MAX_IN) {
          const params = inParams(wanted.slice(i, i + MAX_IN).map((q) => q.keyBytes));
          const [found] = await c.execute<RowDataPacket[]>(this.sql.casMany(params.length), params);
          for (const row of found) {
            const q = byKey.get((row.key as Buffer).toString('latin1'));
            if (q) uniques.set(q, this.noteUnique(BigInt(row.cas as string)));
          }
        }
      }
      return uniques;
    });
  }

  /** `rows` as multi-row upserts of the prepared shapes, the largest first. */
  private async insertRows(c: PoolConnection, rows: readonly QueuedSet[]): Promise<void> {
    for (let i = 0; i < rows.length; ) {
      const n = BATCH_SHAPES.find((size) => size <= rows.length - i) as number;
      const params: Param[] = [];
      for (let j = i; j < i + n; j++) {
        const q = rows[j] as QueuedSet;
        params.push(q.keyBytes, q.value, q.flags, this.toServer(q.deadline));
      }
      await this.exec(c, this.sql.setMany(n), params);
      i += n;
    }
  }

  /** Fails the sets that waited their whole timeout without a batch (every connection busy). */
  private readonly expireSets = (): void => {
    this.setTimer = undefined;
    const now = performance.now();
    let n = 0;
    while (n < this.setQueue.length && now - (this.setQueue[n] as QueuedSet).queuedAt >= this.timeoutMs) n++;
    if (n > 0) {
      this.stats.timeouts += n;
      const err = this.error(ErrorCodes.UPSTREAM_TIMEOUT, `no answer within ${this.timeoutMs} ms (option timeout): every connection busy`);
      for (const q of this.setQueue.splice(0, n)) {
        this.leave(q.key, q.ticket);
        q.reject(this.count(err, false));
      }
    }
    const head = this.setQueue[0];
    if (head) this.setTimer = setTimeout(this.expireSets, Math.max(1, this.timeoutMs - (now - head.queuedAt))).unref();
  };

  /** A write of `key` is sent: its ticket, last in the key's lane. */
  private enter(key: string): number {
    const ticket = ++this.nextTicket;
    const lane = this.lanes.get(key);
    if (lane) lane.push(ticket);
    else this.lanes.set(key, [ticket]);
    return ticket;
  }

  /** The write `ticket` of `key` settled (or never ran): the next one of the key may start. */
  private leave(key: string, ticket: number): void {
    const lane = this.lanes.get(key);
    if (!lane) return;
    const i = lane.indexOf(ticket);
    if (i < 0) return;
    lane.splice(i, 1);
    if (lane.length === 0) {
      this.lanes.delete(key);
      return;
    }
    if (i !== 0) return;
    const next = this.waiting.get(lane[0] as number);
    if (next) next.start();
    else this.scheduleSets(); // a plain set is next
  }

  /**
   * Runs the write `op` of `key` once every write of the key sent before it has settled, within
   * one timeout in all (`op` gets what is left of it, and the epoch it was sent in: see run). A
   * write that waits its whole timeout for its turn fails as a timeout and never runs.
   */
  private inOrder<T>(key: string, op: (timeoutMs: number, epoch: number) => Promise<T>): Promise<T> {
    const ticket = this.enter(key);
    const epoch = this.epoch;
    const go = (timeoutMs: number): Promise<T> => {
      const p = op(timeoutMs, epoch);
      const done = (): void => this.leave(key, ticket);
      p.then(done, done);
      return p;
    };
    if (this.lanes.get(key)?.[0] === ticket) return go(this.timeoutMs);
    if (this.closed || this.load() >= this.o.maxQueue) {
      this.leave(key, ticket);
      return op(this.timeoutMs, epoch); // run() refuses it, and counts it, as it refuses any other
    }
    const queuedAt = performance.now();
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(ticket);
        this.leave(key, ticket);
        this.stats.requests++;
        this.stats.timeouts++;
        reject(this.count(this.error(ErrorCodes.UPSTREAM_TIMEOUT, `no answer within ${this.timeoutMs} ms (option timeout): waiting behind an earlier write of the key`), false));
      }, this.timeoutMs);
      timer.unref();
      this.waiting.set(ticket, {
        start: () => {
          clearTimeout(timer);
          this.waiting.delete(ticket);
          go(Math.max(1, Math.ceil(this.timeoutMs - (performance.now() - queuedAt)))).then(resolve, reject);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(this.count(e, false));
        },
      });
    });
  }

  /**
   * Runs `fn` on a pooled connection within the timeout. The result of a request whose timer
   * fired is dropped, its connection destroyed, and its statement killed on the server
   * (killQuery): a statement waiting for row locks held one after the other would otherwise
   * go on, and commit, long after the router stopped waiting for it. `epoch`: the server
   * restarts seen when the request was sent (see observeServer). `readOnly`: it writes nothing
   * (a plain read), so it may run again on a table made again (tableLost).
   */
  private run<T>(fn: (c: PoolConnection) => Promise<T>, background = false, timeoutMs = this.timeoutMs, callers = 1, epoch = this.epoch, readOnly = false): Promise<T> {
    if (!background) this.stats.requests += callers;
    if (!background && this.load() >= this.o.maxQueue) {
      // A database slower than the load: refuse at once (the router journals a write for repair)
      // rather than queue until every request waits out its timeout.
      return Promise.reject(this.count(this.error(ErrorCodes.UPSTREAM_BUSY, `${this.o.maxQueue} requests already waiting or running (option max-queue)`), background, callers));
    }
    if (this.closed) return Promise.reject(this.count(this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed'), background, callers));
    const started = performance.now();
    return new Promise<T>((resolve, reject) => {
      const settle = (err: McmuxError | undefined, value?: T): void => {
        if (job.settled) return;
        job.settled = true;
        clearTimeout(timer);
        this.jobs.delete(job);
        if (!background && (err === undefined || err.code === ErrorCodes.UPSTREAM_REFUSED)) {
          this.stats.latencyUsSum += callers * Math.round((performance.now() - started) * 1000);
          this.stats.latencyCount += callers;
        }
        if (err) reject(this.count(err, background, callers));
        else resolve(value as T);
      };
      const job: Job = {
        conn: undefined,
        settled: false,
        abort: (err) => {
          settle(err);
          if (job.conn) this.discard(job.conn);
        },
      };
      const timer = setTimeout(() => {
        if (!background) this.stats.timeouts += callers;
        const conn = job.conn;
        job.abort(this.error(ErrorCodes.UPSTREAM_TIMEOUT, `no answer within ${this.timeoutMs} ms (option timeout)`));
        if (conn) this.killQuery(conn.threadId, epoch);
      }, timeoutMs);
      this.jobs.add(job);
      this.execute(job, fn, epoch, readOnly).then(
        (value) => settle(undefined, value),
        (err: unknown) => settle(this.translate(err)),
      );
    });
  }

  private async execute<T>(job: Job, fn: (c: PoolConnection) => Promise<T>, epoch: number, readOnly: boolean): Promise<T> {
    // No connection (refused, reset during the handshake): the request was never sent.
    // A server that refuses the connection itself (access denied, unknown database, host not
    // allowed) answered no request: the store is unusable for every key, as one that refuses the
    // TCP connection is, not one request refused (REFUSED, which health does not count: a wrong
    // password left the upstream "healthy" for good, logged nowhere above debug).
    const conn = await this.pool.getConnection().catch((err: unknown) => {
      const e = this.translate(err, false);
      if (e.code === ErrorCodes.UPSTREAM_REFUSED && HANDSHAKE_REFUSALS.has(Number((err as DriverError).errno))) {
        throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, e.message);
      }
      throw e;
    });
    if (job.settled) {
      // Timed out (or closed) while waiting for it: nothing was sent on it, it is clean.
      if (this.closed) this.discard(conn);
      else conn.release();
      return undefined as T; // ignored: the job is settled
    }
    job.conn = conn;
    let refused = false;
    try {
      // Refused at the set-up every request needs: unusable for every key, as a refused handshake.
      // The connection goes: a session keeps the database privileges it began with (a GRANT
      // reaches the connections made after it), and an expired password's session stays refused.
      await this.prepare(conn).catch((err: unknown) => {
        if (!isServerError(err) || !SESSION_REFUSALS.has(Number((err as DriverError).errno))) throw err;
        refused = true;
        throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, this.translate(err).message);
      });
      if (epoch !== this.epoch) {
        // Sent to the server before it restarted (or was replaced): decided on what the router
        // knew of it then (a cas unique it may hand out again): never run (unsent, UNREACHABLE).
        throw this.error(ErrorCodes.UPSTREAM_UNREACHABLE, 'the server restarted since the request was sent: not run');
      }
      for (let attempt = 0; ; attempt++) {
        try {
          const value = await fn(conn);
          if (!job.settled) {
            job.conn = undefined; // back in the pool: close() must not discard it under another request
            conn.release();
          }
          return value;
        } catch (err) {
          const errno = (err as DriverError).errno;
          if (job.settled || attempt >= DEADLOCK_RETRIES) throw err;
          if (errno === ER_LOCK_DEADLOCK) continue;
          if (errno === ER_NO_SUCH_TABLE) {
            // Dropped behind our back (an operator, a migration, a restore): every item it held
            // is gone, as when a store restarts empty. Made again and reported (tableLost); a
            // write fails unsent: decided on the empty table, an add would grant a lock that the
            // store held, and the other upstreams still hold, a second time. A plain read runs
            // again (its miss is the store's state; reads need no fence).
            this.tableLost(epoch);
            await this.prepare(conn);
            if (readOnly && attempt === 0) continue;
            throw this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `table ${this.o.table} was missing (dropped?): made again, empty; not run`);
          }
          throw err;
        }
      }
    } catch (err) {
      // A server error or one of our refusals leaves the session usable (tx() rolled back);
      // anything else (a lost connection, a broken stream) does not. The server does not stop a
      // statement when its client goes (a reset by a proxy, a NAT, a firewall in between): one
      // waiting for row locks would commit later, after the router repaired the copy, so it is
      // killed as a timed-out one is (the error is late: translate).
      // A read-only server (a primary demoted by a failover behind the name mcmux connects to:
      // DNS, an RDS/Aurora endpoint) refuses writes on this connection for good: it is dropped,
      // so that the next request connects again, to whatever the name leads to now.
      if (!job.settled) {
        job.conn = undefined;
        if ((err as DriverError).errno === ER_OPTION_PREVENTS_STATEMENT || refused) this.discard(conn);
        else if (isServerError(err) || err instanceof McmuxError) conn.release();
        else {
          this.discard(conn);
          this.killQuery(conn.threadId, epoch);
        }
      }
      throw err;
    }
  }

  /**
   * The table this process had is gone (ER_NO_SUCH_TABLE from a statement: prepare() found it, or
   * made it, before): a store come back empty. Reported once per loss (onReconnect: the router
   * fences the store until its marker is checked, as for a memcached that restarted), and the
   * requests sent before fail unsent (the epoch moves), as after a server restart.
   */
  private tableLost(epoch: number): void {
    this.tableReady = false;
    if (epoch !== this.epoch) return; // another request saw it first (or a restart did)
    this.epoch++;
    this.onReconnect?.();
  }

  /** Once per connection: strict mode, and a packet limit the largest item fits in. */
  private async prepare(c: PoolConnection): Promise<void> {
    const core = c.connection as object;
    if (!this.prepared.has(core)) {
      // Strict: a value that does not fit is an error, never silently truncated.
      // Lock waits bounded by the timeout (whole seconds, at least 1): the server does not stop a
      // statement waiting for a row or table lock when its connection is cut (a timeout), and
      // the defaults (50 s, a year) let such a write land long after the router stopped waiting
      // for it (LATE_SETTLE_MS after the timeout), over the writes and the repair made since.
      const lockWaitS = Math.max(1, Math.floor(this.o.timeoutMs / 1000));
      await c.query(
        `SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', innodb_lock_wait_timeout = ${lockWaitS}, lock_wait_timeout = ${lockWaitS}`,
      );
      // Every unique seen so far was drawn on the server before this query's: the one it draws
      // is above them all unless the server restarted (observeServer).
      const seen = { serverId: this.serverId, maxUnique: this.maxUnique, epoch: this.epoch };
      const sent = Date.now();
      const [rows] = await c.query<RowDataPacket[]>('SELECT @@session.max_allowed_packet AS m, UUID_SHORT() AS u, UNIX_TIMESTAMP() AS s, @@session.max_user_connections AS uc');
      this.observeServer(BigInt(String(rows[0]?.u)), seen);
      this.observeClock(Number(rows[0]?.s), sent, Date.now());
      const packet = Number(rows[0]?.m);
      const needed = this.o.maxItemSize + PACKET_OVERHEAD;
      if (!(packet >= needed)) {
        throw this.error(
          ErrorCodes.UPSTREAM_REFUSED,
          `the server's max_allowed_packet is ${packet} bytes: it must be at least ${needed} (max-item-size ${this.o.maxItemSize} + ${PACKET_OVERHEAD}); raise max_allowed_packet on the server`,
        );
      }
      this.prepared.add(core);
      // The kill connection, made now, while the server has room: at max_connections (the
      // overload that makes statements time out) it could not be, nor a pooled one be free for
      // the KILL (review-h9 finding 2). Not for an account with a connection limit of its own
      // (MAX_USER_CONNECTIONS, or a global max_user_connections: the session value says which),
      // which may be sized to `connections`: kept, it would refuse the pool its last connection
      // at every peak (review-h11 finding 2); there it is made on first need, as before.
      const accountLimited = Number(rows[0]?.uc) > 0;
      if (this.killer === undefined && !this.closed && !accountLimited) {
        const k = (this.killer = this.connectKiller());
        k.catch(() => {
          if (this.killer === k) this.killer = undefined;
        });
      }
    }
    if (!this.tableReady) {
      // Created only when missing: CREATE is checked for its privilege (and refused under
      // read_only) even when the table exists, and a least-privilege account or a read-only
      // server must still be read from (and refuse writes on their own).
      try {
        await c.query(this.sql.hasTable);
      } catch (err) {
        if ((err as DriverError).errno !== ER_NO_SUCH_TABLE) throw err;
        // `mcmux check` makes nothing (review-h25 finding 7): the start makes it.
        if (this.o.create === false) return;
        await c.query(this.sql.create);
      }
      this.tableReady = true;
    }
  }

  /**
   * A new connection's UUID_SHORT(), drawn after every unique in `seen` was: ((server_id & 255)
   * << 56) + (start-up second << 24) + a counter that only climbs while the server runs. One not
   * above them (or of another server id) is a server restarted or replaced: a restart within the
   * start-up second of the one before hands out the same uniques again, so the router must void
   * those its clients hold (onReconnect; it also checks the store's marker, as for a memcached
   * that reconnects), and requests sent before it was seen must not run on it (epoch). A
   * restart in a later second goes unseen, as it may: its uniques are all above those before it.
   */
  private observeServer(draw: bigint, seen: { serverId: bigint | undefined; maxUnique: bigint; epoch: number }): void {
    const serverId = draw >> 56n;
    // A connection made alongside the one that saw the restart compares with the new server.
    const restarted = seen.epoch === this.epoch && seen.serverId !== undefined && (serverId !== seen.serverId || draw <= seen.maxUnique);
    if (restarted || this.serverId === undefined) {
      this.serverId = serverId;
      this.maxUnique = draw;
    } else {
      this.noteUnique(draw);
    }
    if (!restarted) return;
    this.epoch++;
    this.onReconnect?.();
  }

  /**
   * The server's clock against this host's, from a new connection's UNIX_TIMESTAMP() (whole
   * seconds) read between `sent` and `got`. Deadlines are Unix ms: kept on this host's clock, two
   * mcmux sidecars sharing the table with clocks apart gave each other's items another lifetime
   * (one 2 min ahead wrote 1 s sessions the other served for 2 min: the expiry review,
   * test/server/review-expiry.test.ts). When the server's clock is more than CLOCK_SLACK_MS off
   * this host's, every deadline written and every now compared with one is the server's (an
   * estimate to within about a second); within it, nothing changes (one clock for all, as
   * before). The offset moves only when a new estimate is off by the slack again.
   */
  private observeClock(serverSeconds: number, sent: number, got: number): void {
    if (!Number.isFinite(serverSeconds)) return;
    const estimate = Math.round(serverSeconds * 1000 + 500 - (sent + got) / 2);
    if (Math.abs(estimate - this.clockOffset) <= CLOCK_SLACK_MS) return;
    this.clockOffset = Math.abs(estimate) <= CLOCK_SLACK_MS ? 0 : estimate;
  }

  /** Now, on the server's clock (Unix ms). */
  private serverNow(): number {
    return Date.now() + this.clockOffset;
  }

  /** A deadline (Unix ms, 0 never) of this host's clock, on the server's. */
  private toServer(deadline: number): number {
    return deadline === 0 ? 0 : deadline + this.clockOffset;
  }

  /** A deadline of the server's clock (an `exp`), on this host's. */
  private fromServer(exp: number): number {
    return exp === 0 ? 0 : exp - this.clockOffset;
  }

  private hit(row: ItemRow, deadline?: number): Hit {
    const h = toHit(row, deadline ?? this.fromServer(Number(row.exp)));
    this.noteUnique(h.cas);
    return h;
  }

  /** Keeps the highest unique of the current server seen (see observeServer); returns `u`. */
  private noteUnique(u: bigint): bigint {
    if (u > this.maxUnique && u >> 56n === this.serverId) this.maxUnique = u;
    return u;
  }

  /** BEGIN, body, COMMIT; ROLLBACK on a failure so the connection goes back to the pool clean. */
  private async tx<T>(c: PoolConnection, body: () => Promise<T>): Promise<T> {
    await c.beginTransaction();
    try {
      const value = await body();
      await c.commit();
      return value;
    } catch (err) {
      await c.rollback().catch(ignore);
      throw err;
    }
  }

  private async exec(c: PoolConnection, sql: string, params: Param[]): Promise<ResultSetHeader> {
    const [r] = await c.execute<ResultSetHeader>(sql, params);
    if (r.insertId) this.noteUnique(casOf(r));
    return r;
  }

  private async query(c: PoolConnection, sql: string, params: Param[]): Promise<RowDataPacket[]> {
    const [rows] = await c.execute<RowDataPacket[]>(sql, params);
    return rows;
  }

  private async select(c: PoolConnection, keys: Buffer[], lock: boolean): Promise<ItemRow[]> {
    const params = inParams(keys);
    const [rows] = await c.execute<ItemRow[]>(this.sql.select(params.length, lock), [...params, this.serverNow()]);
    return rows;
  }

  private async exists(c: PoolConnection, key: Buffer, now: number): Promise<boolean> {
    return (await this.query(c, this.sql.exists, [key, now])).length > 0;
  }

  /** Batches (each a request with its own timeout) while they come back full, for half a tick at most. */
  private readonly purgeTick = (): void => {
    if (this.purging || this.closed || !this.tableReady) return;
    this.purging = true;
    const until = performance.now() + this.o.purgeIntervalMs / 2; // an in-process window: monotonic
    const purge = async (): Promise<void> => {
      for (;;) {
        const r = await this.run((c) => this.exec(c, this.sql.purge, [this.serverNow()]), true); // item deadlines: Unix ms, the server's
        if (r.affectedRows < this.o.purgeBatch || this.closed || performance.now() >= until) return;
      }
    };
    // A failed purge is retried at the next tick; requests report the server's state.
    purge()
      .catch(ignore)
      .finally(() => {
        this.purging = false;
      });
  };

  /**
   * KILL QUERY of a timed-out request's statement. The server does not stop a statement when its
   * client goes: one waiting for row locks held one after the other (innodb_lock_wait_timeout
   * bounds each wait, not the statement) would go on and commit after the router's late window,
   * over the writes and the repair made since. Sent on a connection of its own (the pool may
   * have none free), made with the pool's first connection (prepare; on first need for an account
   * with a connection limit) and kept, or, when that is gone and a new one cannot be made (the
   * server at max_connections), on the pool's first free one; skipped when the server restarted
   * since the request was sent (its thread id may be another client's now). Bounded by the
   * timeout. A kept connection may have been closed while idle (a proxy reset, an idle timeout in
   * between): a KILL that fails on one made before, with no answer from the server or none within
   * half the timeout, drops it and is sent once more on a new one; any other failure is ignored
   * and drops that connection.
   */
  private killQuery(threadId: number, epoch: number): void {
    if (this.closed) return;
    let timer: NodeJS.Timeout | undefined;
    let killer: Promise<Connection> | undefined;
    const drop = (k: Promise<Connection>): void => {
      if (this.killer === k) this.killer = undefined;
      k.then((c) => c.destroy(), ignore);
    };
    const kill = async (): Promise<void> => {
      for (let attempt = 0; ; attempt++) {
        const kept = this.killer !== undefined;
        const k = (killer = this.killer ??= this.connectKiller());
        let c: Connection;
        try {
          c = await k;
        } catch {
          // No connection of its own (the server at max_connections, the very overload that makes
          // statements time out; the timed-out statement's thread keeps its slot): on one of the
          // pool's, free now or once one is (review-h2 finding 4).
          drop(k);
          return this.killPooled(threadId, epoch);
        }
        let silent: NodeJS.Timeout | undefined;
        try {
          const send = async (): Promise<void> => {
            if (!this.killersObserved.has(c)) {
              // Before its first KILL, a new connection like any: it tells whether the server
              // restarted (observeServer: the epoch moves, and the thread id is skipped below).
              const seen = { serverId: this.serverId, maxUnique: this.maxUnique, epoch: this.epoch };
              const [rows] = await c.query<RowDataPacket[]>('SELECT UUID_SHORT() AS u');
              this.observeServer(BigInt(String(rows[0]?.u)), seen);
              this.killersObserved.add(c);
            }
            if (epoch !== this.epoch || this.closed) return;
            await c.query(`KILL QUERY ${Math.trunc(threadId)}`);
          };
          // A kept connection, idle since it was made, may be dead without a word (a flow that an
          // idle timeout in between forgot silently): half the bound for its answer, the rest for
          // the KILL again on a new one (review-h11 finding 3). A KILL sent twice is harmless: the
          // thread's connection was cut, it runs nothing after the statement killed.
          await (kept && attempt === 0
            ? Promise.race([
                send(),
                new Promise<never>((_, reject) => {
                  silent = setTimeout(() => reject(new Error('no answer on the kept kill connection')), this.timeoutMs / 2);
                }),
              ])
            : send());
          return;
        } catch (err) {
          if ((err as DriverError).errno === ER_NO_SUCH_THREAD) return; // the statement had ended
          drop(k);
          if (attempt > 0 || !kept || isServerError(err) || this.closed) return;
        } finally {
          clearTimeout(silent);
        }
      }
    };
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('KILL QUERY timed out')), this.timeoutMs);
    });
    Promise.race([kill(), late])
      .catch(() => {
        if (killer) drop(killer);
      })
      .finally(() => clearTimeout(timer));
  }

  /** killQuery's KILL on a connection of the pool's (when one of its own cannot be made). */
  private async killPooled(threadId: number, epoch: number): Promise<void> {
    const conn = await this.pool.getConnection();
    let lost = false;
    try {
      // A server restarted meanwhile may have given the thread id to another client.
      if (epoch === this.epoch && !this.closed) await conn.query(`KILL QUERY ${Math.trunc(threadId)}`);
    } catch (err) {
      lost = (err as DriverError).errno !== ER_NO_SUCH_THREAD && !isServerError(err);
    }
    // Back to the pool whatever the outcome (none but a lost connection spoils it).
    if (lost || this.closed) this.discard(conn);
    else conn.release();
  }

  private async connectKiller(): Promise<Connection> {
    const c = await createConnection(this.connectionOptions());
    c.on('error', ignore); // an idle connection the server closed: the KILL sent on it fails and goes on a new one
    // Closed while kept (the server restarted, anything in between cut it): no longer kept, so
    // that the pool's next new connection (prepare) makes another while the server has room, not
    // the next KILL, at max_connections (review-h11 finding 1).
    const lost = (): void => {
      const k = this.killer;
      k?.then((kept) => {
        if (kept === c && this.killer === k) this.killer = undefined;
      }, ignore);
    };
    c.once('end', lost);
    c.once('error', lost);
    try {
      // Kept idle for as long as the server allows (a year): its wait_timeout (8 h by default)
      // would close it after a night without a timeout, and a new one may then be refused.
      await c.query('SET SESSION wait_timeout = 31536000');
      return c;
    } catch (err) {
      c.destroy();
      throw err;
    }
  }

  /** Drops a connection from the pool and cuts its socket (end() alone waits for the server). */
  private discard(conn: PoolConnection): void {
    const core = conn.connection as unknown as CoreConnection;
    conn.destroy();
    core.stream?.destroy();
    this.cores.delete(core);
  }

  /** `sent`: whether the request may have reached the server (else a lost connection is UNREACHABLE). */
  private translate(err: unknown, sent = true): McmuxError {
    if (err instanceof McmuxError) return err;
    if (this.closed) return this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed');
    const e = (err ?? {}) as DriverError;
    const code = typeof e.code === 'string' ? `${e.code}: ` : '';
    if (isServerError(err)) {
      // An error the server sent (access denied, unknown database, ...): it answered.
      return this.error(ErrorCodes.UPSTREAM_REFUSED, `${code}${String(e.sqlMessage ?? e.message)}`);
    }
    // Lost with the request sent: its statement may still run, and commit, on the server (it
    // does not stop one when its client goes), later than requests sent since: late.
    if (sent) return this.error(ErrorCodes.UPSTREAM_IO, `${code}connection lost with the request sent (it may be applied): ${String(e.message ?? err)}`, true);
    return this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `${code}${String(e.message ?? err)}`);
  }

  /** Counts the failure of `callers` requests (a gathered read stands for several). */
  private count(err: McmuxError, background: boolean, callers = 1): McmuxError {
    if (!background) this.stats.errors += callers;
    return err;
  }

  /** Every message names the upstream by its masked URL; the password is scrubbed regardless. */
  private error(code: McmuxError['code'], message: string, late = false): McmuxError {
    const p = this.o.password;
    const safe = p.length >= 3 ? message.split(p).join('***') : message;
    return new McmuxError(code, `upstream ${this.name}: ${safe}`, late);
  }
}

export function createMysqlUpstream(url: URL, options: Map<string, string>, ctx: UpstreamContext): Upstream {
  const name = maskUrl(url.href);
  const where = `upstream ${name}`;
  const form = 'expected mysql://user:password@host:port/database';
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new ConfigError(`${where}: no host: ${form}`);
  let user: string;
  let password: string;
  let database: string;
  try {
    user = decodeURIComponent(url.username);
    password = decodeURIComponent(url.password);
    database = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw new ConfigError(`${where}: bad percent-encoding in the user, password or database: ${form}`);
  }
  if (database === '' || database.includes('/')) throw new ConfigError(`${where}: no database: ${form}`);
  const table = options.get('table') ?? DEFAULT_TABLE;
  options.delete('table');
  if (!TABLE_NAME.test(table)) {
    // The table name is the one thing written into SQL text: it must be a plain identifier.
    throw new ConfigError(`${where}: option table="${table}" is invalid: expected letters, digits and _ (not first a digit), at most 64`);
  }
  const timeoutMs = intOption(options, 'timeout', ctx.defaultTimeoutMs ?? 1000, 1, 600_000, where);
  const connections = intOption(options, 'connections', 4, 1, 256, where);
  const purgeIntervalMs = intOption(options, 'purge-interval', 60_000, 10, 86_400_000, where);
  const purgeBatch = intOption(options, 'purge-batch', 1000, 1, 1_000_000, where);
  const maxQueue = intOption(options, 'max-queue', 4096, 1, 1_000_000, where);
  rejectUnknownOptions(options, where, ['table', 'timeout', 'connections', 'purge-interval', 'purge-batch', 'max-queue']);
  const port = url.port === '' ? DEFAULT_PORT : Number(url.port);
  return new MysqlUpstream({
    name,
    host,
    port,
    user,
    password,
    database,
    table,
    timeoutMs,
    connections,
    purgeIntervalMs,
    purgeBatch,
    maxItemSize: ctx.maxItemSize,
    maxQueue,
    create: ctx.create,
  });
}

/** An identifier of a GRANT line, unquoted (`a``b` is a`b); undefined when it is not one. */
function grantIdentifier(text: string): string | undefined {
  const quoted = /^`((?:[^`]|``)*)`$/.exec(text);
  if (quoted) return (quoted[1] as string).replace(/``/g, '`');
  return /^[A-Za-z0-9_$%\\]+$/.test(text) || text === '*' ? text : undefined;
}

/** Whether `name` matches a database-level grant's pattern (`%` any run, `_` any one, `\` escapes). */
function matchesDbPattern(pattern: string, name: string): boolean {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] as string;
    if (ch === '\\' && i + 1 < pattern.length) re += (pattern[++i] as string).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    else if (ch === '%') re += '.*';
    else if (ch === '_') re += '.';
    else re += ch.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }
  // Case folded: lower_case_table_names may make the server do so (and a wrong "ok" is the safer side).
  return new RegExp(`^${re}$`, 'is').test(name);
}

/**
 * Whether the grants SHOW GRANTS listed let the account CREATE `table` in `database`: a line
 * granting CREATE or ALL [PRIVILEGES] (a whole privilege: not CREATE VIEW, CREATE TEMPORARY
 * TABLES, CREATE ROUTINE) on `*.*`, on a database pattern matching `database`, or on the table
 * itself. Undefined when it cannot be told: a line that is not `GRANT <privileges> ON <db>.<table>
 * TO` (a role granted, SET DEFAULT ROLE) or a REVOKE (MySQL's partial revokes). review-h37
 * finding 1: CREATE or ALL anywhere (on another database, CREATE VIEW) was taken for it.
 */
export function mayCreate(grants: readonly string[], database: string, table: string): boolean | undefined {
  for (const line of grants) {
    const m = /^GRANT\s+(.*?)\s+ON\s+(.*?)\s+TO\s/is.exec(line.trim());
    if (m === null) return undefined;
    const target = m[2] as string;
    // A routine's grant (FUNCTION db.f, PROCEDURE, PACKAGE) or PROXY ON a user: not a table's.
    if (/^(FUNCTION|PROCEDURE|PACKAGE(\s+BODY)?)\s/i.test(target) || /^PROXY\b/i.test(m[1] as string)) continue;
    const t = /^((?:`(?:[^`]|``)*`)|[^.`\s]+)\.((?:`(?:[^`]|``)*`)|[^.`\s]+)$/.exec(target);
    if (t === null) return undefined;
    const [db, tbl] = [grantIdentifier(t[1] as string), grantIdentifier(t[2] as string)];
    if (db === undefined || tbl === undefined) return undefined;
    // The privileges: split at commas outside a column list, the column list dropped.
    const privileges: string[] = [];
    let depth = 0;
    let current = '';
    for (const ch of m[1] as string) {
      if (ch === '(') depth++;
      else if (ch === ')') depth--;
      else if (ch === ',' && depth === 0) {
        privileges.push(current);
        current = '';
      } else if (depth === 0) current += ch;
    }
    privileges.push(current);
    const creates = privileges.some((p) => /^(CREATE|ALL(\s+PRIVILEGES)?)$/i.test(p.trim().replace(/\s+/g, ' ')));
    if (!creates) continue;
    if (db === '*' && tbl === '*') return true;
    if (tbl === '*' ? matchesDbPattern(db, database) : db.toLowerCase() === database.toLowerCase() && tbl.toLowerCase() === table.toLowerCase()) return true;
  }
  return false;
}
