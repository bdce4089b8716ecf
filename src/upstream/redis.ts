/**
 * `redis://`, `rediss://`, `redis+cluster://` — Redis (>= 7.0: PEXPIRETIME) through ioredis.
 *
 * Data model: one Redis string per item, named `prefix + key` (the key's latin1 bytes):
 *
 *   bytes 0..3    flags, u32 big-endian
 *   bytes 4..11   cas unique, u64 big-endian
 *   bytes 12..    the value
 *
 * The item's deadline is the key's own expiry, sent as the time left (SET ... PX, PEXPIRE) and
 * read back as such (PTTL in the same script; -1, no expiry, is deadline 0): Redis counts it on
 * its own clock, so a relative exptime keeps its length whatever the difference between this
 * host's clock and the server's, or another mcmux's (an absolute PXAT of ours was read on
 * Redis's clock: 2 min ahead here, a 1 s session lived 2 min). PERSIST for 0, DEL for a deadline
 * at or before now (never `EX 0`, which Redis refuses). Cas uniques come from one
 * counter per prefix, `mcmux cas:<prefix>`: a client key holds no space, so no client can
 * name it. A counter that is missing (new, or flushed) restarts at the server clock in µs, above
 * every unique it issued before, so a unique read before a flush never matches after it.
 * In a cluster every script names one key, the item (a script naming two keys of a slot fails
 * with TRYAGAIN while that slot migrates, its keys moved one by one): a write's unique is the
 * server clock in µs, or the item's own unique + 1 where that is not below it, so the uniques
 * of a key only grow, across a delete or a flush too (as long as the server's clock does not
 * step back by more than the time since the key's last write).
 *
 * Atomicity: each command is ONE Lua script call (or one plain UNLINK): Redis runs a script with
 * nothing interleaved, so add/cas/incr/append decide and write in one step, whatever number of
 * mcmux processes share the store. WATCH/MULTI would need a connection of its own per request
 * (WATCH state is per connection; ours is shared and pipelined) and retries under contention: on
 * loopback a WATCH incr took ~3x the script's time alone, and with 8 clients on one key reached
 * ~1/15 of its rate, retrying about once per success. Keys and values only ever travel as script
 * arguments, never inside Lua source (CVE-2022-26635 class). A multi-get is one script call (in
 * a cluster: one per key, sent together: see above).
 *
 * u64 arithmetic in Lua: Lua numbers are doubles (exact to 2^53), so incr/decr work on the
 * decimal text split into two base-10^10 halves, each well inside 2^53.
 *
 *   get/store/... ──► run(): closed? down? (fail fast) ──► script call on the shared connection
 *   ioredis: one socket, FIFO pairing, commandTimeout ─► "Command timed out" ─► TIMEOUT, and the
 *            connection is discarded (a paused server must not collect a queue of requests)
 *   close ──► everything in flight fails (maxRetriesPerRequest 0: never resent: incr is not
 *            idempotent) ──► reconnect after 50 ms doubling to 2 s; meanwhile requests fail at
 *            once with IO (enableOfflineQueue off: a request never waits for a reconnect)
 *
 * URLs: redis://[user:password@]host[:6379][/db]?prefix=&timeout=250&name=mcmux
 *       rediss://...  (TLS; &tls-insecure=1 skips certificate verification)
 *       redis+cluster://[user:password@]host1:port1,host2:port2?...  (db 0 only)
 */

import { createHash, randomBytes } from 'node:crypto';
import type { Socket as NetStream } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { type ArithOp, type Hit, RESERVED_KEY_PREFIX } from '../command/command';
import { ConfigError, ErrorCodes, McmuxError } from '../errors';
import type { HostPort, UpstreamContext } from './registry';
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

const DEFAULT_PORT = 6379;
const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2000;
const HEADER = 12; // flags u32 + cas u64
const FLUSH_BATCH = 500; // keys per SCAN step and per UNLINK of a prefixed flush
const SLOTS = 16384;
const SLOTS_REFRESH_MS = 2000;
/** Cluster: how long the marker view of a master no longer is tried where its slots went (markerStores). */
const GHOST_MS = 300_000;
/** Keys of one gathered read (read-batch.ts): one script runs them all, and Redis runs nothing else meanwhile. */
const READ_BATCH_KEYS = 256;

/** Shared by the scripts: the next cas unique, its 8 bytes, and applying a deadline argument. */
const LUA_LIB = `
local function next_cas(ck, k)
  local t
  if ck then
    local c = redis.call('INCR', ck)
    if c == 1 then
      t = redis.call('TIME')
      c = tonumber(t[1]) * 1000000 + tonumber(t[2])
      redis.call('SET', ck, string.format('%.0f', c))
    end
    return c
  end
  t = redis.call('TIME')
  local c = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local head = redis.pcall('GETRANGE', k, 4, 11)
  if type(head) == 'string' and #head == 8 then
    local hi, lo = struct.unpack('>I4I4', head)
    local old = hi * 4294967296 + lo
    if old >= c then c = old + 1 end
  end
  return c
end
local function pack_cas(c)
  return struct.pack('>I4I4', math.floor(c / 4294967296), c % 4294967296)
end
local function expire(k, d)
  if d == '0' then redis.call('PERSIST', k)
  elseif d == '-1' then redis.call('UNLINK', k)
  else redis.call('PEXPIRE', k, d) end
end
`;

/** KEYS: items. ARGV[1]: '' (get) or a deadline argument (gat). Reply: blob|false, ms left (-1 none). */
const LUA_GET = `${LUA_LIB}
local touch = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local v = redis.pcall('GET', k)
  local d = 0
  if type(v) ~= 'string' or #v < 12 then
    v = false
  elseif touch == '' then
    d = redis.call('PTTL', k)
  else
    expire(k, touch)
  end
  out[2 * i - 1] = v
  out[2 * i] = d
end
return out
`;

/**
 * KEYS: item, cas counter (none in a cluster). ARGV: mode letter, value, flags (4 bytes), deadline argument,
 * expected cas (8 bytes), max-item-size. Reply: the new cas, or -1 NOT_STORED, -2 EXISTS, -3
 * NOT_FOUND. An append/prepend that would make the value longer than max-item-size is
 * NOT_STORED, the item left as it was (as memcached 1.6 answers one past its item size limit).
 */
const LUA_STORE = `${LUA_LIB}
local k, mode = KEYS[1], ARGV[1]
if mode ~= 's' then
  local head = redis.pcall('GETRANGE', k, 0, 11)
  -- Shorter than the header, or a key of another type (WRONGTYPE): no item, as a get reads it.
  if type(head) ~= 'string' or #head < 12 then head = '' end
  if mode == 'a' then
    if head ~= '' then return -1 end
  elseif head == '' then
    if mode == 'c' then return -3 end
    return -1
  elseif mode == 'c' and string.sub(head, 5, 12) ~= ARGV[5] then
    return -2
  end
end
if (mode == 'A' or mode == 'P') and redis.call('STRLEN', k) - 12 + #ARGV[2] > tonumber(ARGV[6]) then return -1 end
local cas = next_cas(KEYS[2], k)
local c8 = pack_cas(cas)
if mode == 'A' then
  redis.call('SETRANGE', k, 4, c8)
  redis.call('APPEND', k, ARGV[2])
elseif mode == 'P' then
  local old = redis.call('GET', k)
  redis.call('SET', k, string.sub(old, 1, 4) .. c8 .. ARGV[2] .. string.sub(old, 13), 'KEEPTTL')
elseif ARGV[4] == '-1' then
  redis.call('UNLINK', k)
elseif ARGV[4] == '0' then
  redis.call('SET', k, ARGV[3] .. c8 .. ARGV[2])
else
  redis.call('SET', k, ARGV[3] .. c8 .. ARGV[2], 'PX', ARGV[4])
end
return cas
`;

/**
 * KEYS: item. ARGV: deadline argument. Reply: the item's header (flags and cas, 12 bytes) as it
 * was touched, or 0 missing. The cas is kept. Read before the deadline is applied: a deadline in
 * the past unlinks the item.
 */
const LUA_TOUCH = `${LUA_LIB}
local head = redis.pcall('GETRANGE', KEYS[1], 0, 11)
if type(head) ~= 'string' or #head < 12 then return 0 end
expire(KEYS[1], ARGV[1])
return head
`;

/**
 * KEYS: item, cas counter (none in a cluster). ARGV: 'i' or 'd', delta (decimal, <= 2^64-1). Reply: the new value
 * and the item's new unique as decimal text, a space between, or -1 NOT_FOUND, -2 NON_NUMERIC. Numbers are (hi, lo) with lo < 10^10, so
 * that every intermediate stays an exact double; flags and expiry are kept (KEEPTTL).
 */
const LUA_ARITH = `${LUA_LIB}
local E = 10000000000
local MAXHI, MAXLO = 1844674407, 3709551615
local function split(s)
  return tonumber(string.sub(s, 1, -11)) or 0, tonumber(string.sub(s, -10))
end
local function above(h1, l1, h2, l2)
  return h1 > h2 or (h1 == h2 and l1 > l2)
end
local v = redis.pcall('GET', KEYS[1])
if type(v) ~= 'string' or #v < 12 then return -1 end -- a key of another type too, as a get reads it
-- The number as memcached's safe_strtoull reads it (command.ts parseCounter): leading white
-- space, a sign, digits, then nothing, a NUL (where strtoull stops: memcached's items are C
-- strings to it) or white space, and anything after it.
local sign, num, rest = string.match(string.sub(v, 13), '^%s*([+-]?)(%d+)(.*)$')
if not num or (#rest > 0 and not string.find(rest, '^[%s%z]')) then return -2 end
num = string.match(num, '^0*(%d-)$')
if num == '' then num = '0' end
if #num > 20 then return -2 end
local h, l = split(num)
if above(h, l, MAXHI, MAXLO) then return -2 end
if sign == '-' and (h > 0 or l > 0) then
  -- strtoull negates modulo 2^64; memcached refuses the result when it is 2^63 or more
  local nh, nl = MAXHI - h, MAXLO - l
  if nl < 0 then nl = nl + E; nh = nh - 1 end
  nl = nl + 1
  if nl >= E then nl = nl - E; nh = nh + 1 end
  if above(nh, nl, 922337203, 6854775807) then return -2 end
  h, l = nh, nl
end
local dh, dl = split(ARGV[2])
if ARGV[1] == 'i' then
  l = l + dl
  h = h + dh
  if l >= E then l = l - E; h = h + 1 end
  if above(h, l, MAXHI, MAXLO) then
    h = h - MAXHI
    l = l - (MAXLO + 1)
    if l < 0 then l = l + E; h = h - 1 end
  end
elseif above(h, l, dh, dl) then
  h = h - dh
  l = l - dl
  if l < 0 then l = l + E; h = h - 1 end
else
  h, l = 0, 0
end
local n
if h > 0 then n = string.format('%.0f%010.0f', h, l) else n = string.format('%.0f', l) end
local cas = next_cas(KEYS[2], KEYS[1])
redis.call('SET', KEYS[1], string.sub(v, 1, 4) .. pack_cas(cas) .. n, 'KEEPTTL')
return n .. ' ' .. string.format('%.0f', cas)
`;

type Reply = Buffer | number | null;

/** ioredis has a Buffer-replying variant of every command; its types leave this one out. */
interface EvalshaBuffer {
  evalshaBuffer(sha: string, numKeys: number, ...args: Array<Buffer | string>): Promise<unknown>;
}

/**
 * The scripts, run by their SHA1 only (EVALSHA). Not ioredis's `defineCommand`: on NOSCRIPT (the
 * server's script cache flushed by SCRIPT FLUSH, or its scripts evicted, as Redis 8 does past 500
 * of them) it sends the script again as EVAL, after every command sent behind it has run, so a
 * set could land after the delete that followed it. Here the scripts are loaded (SCRIPT LOAD) as
 * each connection becomes ready, before any request on it, and a NOSCRIPT fails its request (it
 * did not run: the router journals the miss) and loads them again.
 */
interface Scripts {
  mcmuxGetBuffer(numKeys: number, ...args: Array<Buffer | string>): Promise<Reply[]>;
  mcmuxStore(keys: Buffer[], mode: string, value: Buffer, flags: Buffer, deadline: string, cas: Buffer, maxItemSize: string): Promise<number>;
  mcmuxTouchBuffer(item: Buffer, deadline: string): Promise<Buffer | number>;
  mcmuxArithBuffer(keys: Buffer[], op: string, delta: string): Promise<Buffer | number>;
}

const SCRIPTS = { get: LUA_GET, store: LUA_STORE, touch: LUA_TOUCH, arith: LUA_ARITH } as const;
const sha1 = (lua: string): string => createHash('sha1').update(lua).digest('hex');
const SHA = { get: sha1(LUA_GET), store: sha1(LUA_STORE), touch: sha1(LUA_TOUCH), arith: sha1(LUA_ARITH) } as const;

const MODE_LETTER = { set: 's', add: 'a', replace: 'r', cas: 'c', append: 'A', prepend: 'P' } as const;
const NO_CAS = Buffer.alloc(8); // never a real unique (they start at 1): a cas without one fails safe
const STORE_STATUS = { [-1]: 'NOT_STORED', [-2]: 'EXISTS', [-3]: 'NOT_FOUND' } as const;

/** The deadline as the scripts take it: '0' never, '-1' already expired, else the ms left. */
function deadlineArg(deadline: number, now: number): string {
  if (deadline === 0) return '0';
  return deadline <= now ? '-1' : String(Math.ceil(deadline - now));
}

export interface RedisSettings {
  readonly name: string;
  readonly scheme: string;
  readonly timeoutMs: number;
  readonly prefix: Buffer;
  /** Requests in flight before new ones are refused with MCMUX_UPSTREAM_BUSY. */
  readonly maxQueue: number;
  /** Strings that must never appear in an error message (the password, raw and URL-encoded). */
  readonly secrets: string[];
  /** max-item-size: an append/prepend never makes a value longer (memcached: NOT_STORED). */
  readonly maxItemSize: number;
}

/** lastError after a timeout made us drop the connection (the requests on it may still land). */
const DISCARDED = 'connection discarded after a request on it timed out';

export class RedisUpstream implements Upstream {
  readonly name: string;
  readonly scheme: string;
  readonly timeoutMs: number;
  readonly stats: UpstreamStats = newUpstreamStats();
  private readonly scripts: Scripts;
  private readonly prefix: Buffer;
  private readonly secrets: string[];
  /** Cluster: nodes (host:port) whose connection was lost and whose 'ready' since is not reported yet. */
  private readonly unreported = new Set<string>();
  /** Cluster: each slot's master as the last slots refresh saw it (mastersChanged). */
  private masters: string[] | undefined;
  /** Cluster: one marker store per master (markerStores), by master. */
  private readonly markerViews = new Map<string, ClusterMasterStore>();
  /** Cluster: each master's replication id as markersReady last read it ('': INFO refused), for markerStores. */
  private readonly replids = new Map<string, string>();
  /** Cluster: the marker views of masters no longer, until read once where their slots went (markerStores). */
  private readonly ghosts = new Map<string, ClusterMasterStore>();
  /** Cluster: masters whose replication id changed by a promotion, not yet given a new marker view. */
  private readonly promoted = new Set<string>();
  /** A server (a cluster's master) refused INFO (warned once). */
  private infoRefused = false;
  /** Cluster: the masters of the last slots refresh (movedToNewMaster). */
  private masterSet: Set<string> | undefined;
  /** Cluster: the MOVED replies not followed (see the constructor). */
  private readonly refusedMoves = new WeakSet<Error>();
  private refreshAsked = 0;
  /** Cluster: the periodic slots refresh (see the constructor). */
  private slotsTimer: NodeJS.Timeout | undefined;
  /** Cluster: the marker store while the slots are not known (markerStores): it answers nothing. */
  private readonly unknownMasters = new ClusterMasterStore(this, 'unknown', "the cluster's slots are not known yet");
  private readonly counterKey: Buffer; // the one cas counter (none in a cluster)
  private readonly maxQueue: number;
  private readonly maxItemSize: string;
  private inFlight = 0;
  /** Until the first connection is ready or fails, requests wait for it (bounded). */
  private starting = true;
  private readonly firstReady: Promise<void>;
  private closed = false;
  private lastError = 'not connected yet';
  onReconnect: (() => void) | undefined;
  onServerId: ((id: string, continues?: (before: string) => boolean) => void) | undefined;
  onWarning: ((message: string) => void) | undefined;

  constructor(
    settings: RedisSettings,
    private readonly client: Redis | Cluster,
  ) {
    ({ name: this.name, scheme: this.scheme, timeoutMs: this.timeoutMs, prefix: this.prefix, secrets: this.secrets } = settings);
    this.maxQueue = settings.maxQueue;
    this.maxItemSize = String(settings.maxItemSize);
    this.counterKey = Buffer.concat([Buffer.from('mcmux cas:', 'latin1'), this.prefix]);
    const call = <T>(sha: string, buffers: boolean, numKeys: number, args: Array<Buffer | string>): Promise<T> =>
      this.evalsha(sha, buffers, numKeys, args) as Promise<T>;
    this.scripts = {
      mcmuxGetBuffer: (numKeys, ...args) => call(SHA.get, true, numKeys, args),
      mcmuxStore: (keys, ...args) => call(SHA.store, false, keys.length, [...keys, ...args]),
      mcmuxTouchBuffer: (...args) => call(SHA.touch, true, 1, args),
      mcmuxArithBuffer: (keys, ...args) => call(SHA.arith, true, keys.length, [...keys, ...args]),
    };
    // First, before anything a waiting request sends on the new connection.
    client.on('ready', () => void this.loadScripts());
    if (client instanceof Cluster) {
      // A node seen ready before, ready again: that master may have restarted empty (its
      // connection re-made in the background, clusterNodeRetryStrategy, or the node made again
      // by ioredis at an address it had dropped). So may one whose connection failed before it
      // was ever ready (down when mcmux started). Until that 'ready' is reported (onReconnect,
      // which fences the cluster) and the scripts are loaded there again (a restarted server has
      // none: NOSCRIPT), a request routed to the node is not sent (refuseUnreported): ioredis
      // sends what waits in a node's offline queue before it emits 'ready', and the restarted
      // master would decide an add of a lock it lost before the fence.
      const seen = new Set<string>();
      const gen = new Map<string, number>(); // connections lost per node: a load outrun by a loss does not clear it
      const lost = (id: string): void => {
        gen.set(id, (gen.get(id) ?? 0) + 1);
        this.unreported.add(id);
      };
      client.on('+node', (node: Redis) => {
        void this.loadScripts([node]);
        const id = nodeId(node);
        if (seen.has(id)) lost(id);
        node.on('close', () => {
          if (client.nodes('all').includes(node)) lost(id);
        });
        node.on('ready', () => {
          const again = seen.has(id) || this.unreported.has(id);
          seen.add(id);
          if (!again) return;
          this.onReconnect?.();
          const g = gen.get(id);
          void this.loadScripts([node]).then(() => {
            if (gen.get(id) === g) this.unreported.delete(id);
          });
        });
      });
      client.on('-node', (node: Redis) => {
        if (seen.has(nodeId(node))) lost(nodeId(node));
      });
      // A slot whose master changed to a node that was no master before, or away from one that is
      // no master now (a replica promoted after its master failed): the new master may lack the
      // last writes of the old one (replication is asynchronous), a lock among them. Reported as a
      // reconnect: the cluster is fenced, and the marker check that follows finds that master's
      // marker missing (its key names the master: markerStores). A slot moved between two masters
      // (a reshard: MIGRATE moved its keys with it) is not reported.
      client.on('refresh', () => {
        if (this.mastersChanged()) this.onReconnect?.();
      });
      // A MOVED to a node that served no slot at the last refresh: a replica promoted while its
      // old master stays up (CLUSTER FAILOVER TAKEOVER, a partition of the cluster bus), which
      // answers MOVED. ioredis would follow it at once, before the refresh that reports the
      // failover (above): the promoted replica, which may lack the last writes of the old master
      // (a lock), would decide the command unfenced. The command is failed instead (it was not
      // run: UNREACHABLE, see failure) and the slots asked for. A MOVED to a node that was a
      // master already (a slot migrated with its keys) is followed, as is ASK.
      const follow = client.handleError.bind(client);
      client.handleError = (error: Error, ttl: { value?: unknown }, handlers: { defaults(): void }): void => {
        if (this.movedToNewMaster(error.message)) {
          this.refusedMoves.add(error);
          client.refreshSlotsCache();
          handlers.defaults();
          return;
        }
        follow(error, ttl, handlers);
      };
      // The slots asked for every 2 s (and after a request refused for a node reconnecting): a
      // master's failover is seen (the 'refresh' event) without waiting for a MOVED. A timer of
      // ours, not ioredis's slotsRefreshInterval: a refresh in flight as the client disconnects
      // arms that one again, for good, and the process never exits.
      this.slotsTimer = setInterval(() => {
        if (!this.closed && client.status === 'ready') client.refreshSlotsCache();
      }, SLOTS_REFRESH_MS);
      this.slotsTimer.unref();
    }
    this.firstReady = new Promise<void>((resolve, reject) => {
      client.once('ready', () => {
        this.starting = false;
        resolve();
      });
      // What a later close reports when no 'error' event says more.
      let readyBefore = false;
      client.on('ready', () => {
        this.lastError = 'connection closed by the server';
        // Sent first on the new connection: answered before the marker check the reconnect makes.
        if (client instanceof Redis) void this.readReplid(client);
        // Ready again after the connection was lost: the server may have restarted empty (a
        // Redis without persistence, a session store's usual set-up): the cold detector checks.
        if (readyBefore) this.onReconnect?.();
        readyBefore = true;
      });
      client.once('close', () => {
        this.starting = false;
        reject(this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `cannot connect: ${this.lastError}`));
      });
    });
    this.firstReady.catch(ignore);
    // A refused SELECT names the cause until the next connection: not the errors it leads to.
    let selectRefused = false;
    // A refused AUTH (a wrong password) is the cause of the SELECT's NOAUTH that goes with it.
    let authRefused = false;
    client.on('connect', () => {
      selectRefused = false;
      authRefused = false;
    });
    // Without a listener ioredis would print every connection error; keep the last one for the
    // message of the IO errors that follow (it names no password: see scrub()).
    const onError = (err: Error): void => {
      const command = (err as { command?: { name?: string } }).command?.name;
      if (command === 'auth' || command === 'hello') {
        // Refused credentials name the cause, whichever of the AUTH and the SELECT it made fail
        // (NOAUTH) is reported first.
        authRefused = true;
        this.lastError = this.scrub(err.message);
        return;
      }
      if (selectRefused && (err as NodeJS.ErrnoException).syscall === undefined) return;
      // ioredis only emits a SELECT of the connection's set-up that the server refused (an index
      // over its `databases`, an ACL user without SELECT, LOADING) and goes on ready on database
      // 0, another application's: writes and a flush_all would land there. A failed connection
      // instead: closed before its 'ready' (the refusal is answered before the ready check), and
      // made again after the back-off, until the server accepts the database.
      if (command === 'select' && client instanceof Redis) {
        // A wrong password: the SELECT after it is refused NOAUTH, which names no password.
        if (!authRefused) this.lastError = this.scrub(`cannot select the database: ${err.message}`);
        selectRefused = true;
        client.disconnect(true);
        return;
      }
      // A set-up command (AUTH, SELECT, INFO) that timed out: the server accepts but does not answer.
      const m = err.message === 'Command timed out' ? `no answer to the connection set-up within ${this.timeoutMs} ms` : err.message;
      this.lastError = this.scrub(m);
    };
    client.on('error', onError);
    client.on('node error', onError);
  }

  get(keys: readonly string[], touch?: number): Promise<Array<Hit | undefined>> {
    // run() refuses at once when closed or full, as before; a gat's deadline is its own. A
    // cluster's gets are not gathered: the pass would be one fetch across its nodes (one script
    // call per slot either way), and one node not answering would fail every get of the pass,
    // those of keys on the nodes that answer included.
    if (touch !== undefined || keys.length === 0 || this.closed || this.client instanceof Cluster || this.inFlight + this.reads.waiting >= this.maxQueue) {
      return this.run(() => this.doGet(keys, touch));
    }
    return this.reads.read(keys);
  }

  /**
   * Reads of one pass, gathered (read-batch.ts): one script call for all their keys. They were
   * admitted (max-queue, closed) as they were queued: a close() since then lets them go out first.
   */
  private readonly reads = new ReadBatcher((keys, callers) => this.run(() => this.doGet(keys, undefined), false, callers, true), READ_BATCH_KEYS);

  private loading: Promise<void> | undefined;

  /** SCRIPT LOAD of every script, on `nodes` (default: the client, or every cluster master). */
  private loadScripts(nodes?: Redis[]): Promise<void> {
    if (nodes === undefined && this.loading) return this.loading;
    const targets = nodes ?? (this.client instanceof Cluster ? this.client.nodes('master') : [this.client]);
    const loaded = Promise.all(targets.flatMap((n) => Object.values(SCRIPTS).map((lua) => n.script('LOAD', lua)))).then(
      () => {},
      (err: unknown) => {
        this.lastError = this.scrub(`cannot load the scripts: ${err instanceof Error ? err.message : String(err)}`);
      },
    );
    if (nodes !== undefined) return loaded;
    this.loading = loaded.finally(() => (this.loading = undefined));
    return this.loading;
  }

  private async evalsha(sha: string, buffers: boolean, numKeys: number, args: Array<Buffer | string>): Promise<unknown> {
    try {
      const c = this.client as (Redis | Cluster) & EvalshaBuffer;
      return await (buffers ? c.evalshaBuffer(sha, numKeys, ...args) : c.evalsha(sha, numKeys, ...args));
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) {
        void this.loadScripts();
        throw this.error(ErrorCodes.UPSTREAM_IO, 'the server has lost the scripts (SCRIPT FLUSH, or evicted): not run; loading them again');
      }
      throw err;
    }
  }

  store(req: StoreRequest): Promise<StoreResult> {
    return this.run(async () => {
      const item = this.itemKey(req.key);
      this.refuseUnreported(item);
      const flags = Buffer.allocUnsafe(4);
      flags.writeUInt32BE(req.flags >>> 0);
      let cas = NO_CAS;
      if (req.mode === 'cas' && req.cas !== undefined && req.cas >= 0n && req.cas <= 0xffffffffffffffffn) {
        cas = Buffer.allocUnsafe(8);
        cas.writeBigUInt64BE(req.cas);
      }
      const deadline = deadlineArg(req.deadline, Date.now());
      const r = await this.scripts.mcmuxStore(this.scriptKeys(item), MODE_LETTER[req.mode], req.value, flags, deadline, cas, this.maxItemSize);
      if (r >= 0) return { status: 'STORED', cas: BigInt(r) };
      const status = STORE_STATUS[r as -1 | -2 | -3];
      if (status === undefined) throw this.error(ErrorCodes.UPSTREAM_PROTOCOL, `store script answered ${r}`);
      return { status };
    });
  }

  delete(key: string): Promise<'DELETED' | 'NOT_FOUND'> {
    return this.run(async () => {
      const item = this.itemKey(key);
      this.refuseUnreported(item);
      return (await this.client.unlink(item)) > 0 ? 'DELETED' : 'NOT_FOUND';
    });
  }

  touch(key: string, deadline: number, withItem = false): Promise<TouchResult> {
    return this.run(async () => {
      const item = this.itemKey(key);
      this.refuseUnreported(item);
      const r = await this.scripts.mcmuxTouchBuffer(item, deadlineArg(deadline, Date.now()));
      if (r === 0) return 'NOT_FOUND';
      if (!Buffer.isBuffer(r) || r.length !== HEADER) throw this.error(ErrorCodes.UPSTREAM_PROTOCOL, 'touch script answered neither an item header nor 0');
      return withItem ? { flags: r.readUInt32BE(0), cas: r.readBigUInt64BE(4) } : 'TOUCHED';
    });
  }

  arith(op: ArithOp, key: string, delta: bigint): Promise<ArithResult> {
    return this.run(async () => {
      const item = this.itemKey(key);
      this.refuseUnreported(item);
      const r = await this.scripts.mcmuxArithBuffer(this.scriptKeys(item), op === 'incr' ? 'i' : 'd', delta.toString());
      if (r === -1) return { status: 'NOT_FOUND' };
      if (r === -2) return { status: 'NON_NUMERIC' };
      // "<value> <unique>": the unique it made, which a binary INCREMENT answers (as memcached does).
      const m = Buffer.isBuffer(r) ? /^([0-9]+) ([0-9]+)$/.exec(r.toString('latin1')) : null;
      if (!m) throw this.error(ErrorCodes.UPSTREAM_PROTOCOL, `arith script answered ${String(r)}`);
      return { status: 'OK', value: BigInt(m[1] as string), cas: BigInt(m[2] as string) };
    });
  }

  /** FLUSHDB ASYNC; with a prefix, only the keys a client could have stored under it, in batches. */
  flush(): Promise<void> {
    return this.run(async () => {
      const nodes = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
      await Promise.all(nodes.map((node) => (this.prefix.length === 0 ? node.flushdb('ASYNC').then(ignore) : this.flushPrefix(node))));
    }, true);
  }

  probe(): Promise<void> {
    return this.run(async () => {
      await this.client.ping();
    });
  }

  /**
   * A replica (`INFO replication`: role:slave) refuses every write (READONLY), or takes writes the
   * master never sees (replica-read-only no): what `mcmux check` says FAILED for (review-h31
   * finding 5: "ok", then every write refused). An INFO the account may not run tells nothing of
   * that; a write it is refused (writeRefused) is FAILED too.
   */
  async writeProblem(): Promise<string | undefined> {
    let info = '';
    try {
      info = await this.run(() => this.client.info('replication'));
    } catch {
      // An account without +info: the write below still tells what every write would meet.
    }
    if (/^role:slave\r?$/m.test(info)) {
      const master = /^master_host:(.*?)\r?$/m.exec(info)?.[1];
      const port = /^master_port:(\d+)\r?$/m.exec(info)?.[1];
      return `a replica${master === undefined ? '' : ` of ${master}:${port ?? '?'}`}: every write is refused there (READONLY); expected the master, or an address that follows it`;
    }
    return this.writeRefused();
  }

  /**
   * What an ACL user is refused that every write of mcmux needs, asked with a write that changes
   * nothing: a script (mcmux writes through EVALSHA: +@scripting) deleting a key that is not there
   * (DEL: +@write), declaring the keys a store declares (an item of mcmux's own, beside the cas
   * counter: the user's key patterns). review-h37 finding 2: `+@all -@write`, or `+@read +@write`
   * without `+@scripting`, said ok, then every write NOPERM.
   */
  private async writeRefused(): Promise<string | undefined> {
    const item = this.itemKey(`${RESERVED_KEY_PREFIX}check.${randomBytes(8).toString('hex')}`);
    const keys = this.client instanceof Cluster ? [item] : [item, this.counterKey];
    try {
      await this.run(() => this.client.eval("return redis.call('DEL', KEYS[1])", keys.length, ...keys));
      return undefined;
    } catch (err) {
      if (!(err instanceof McmuxError) || err.code !== ErrorCodes.UPSTREAM_REFUSED) return undefined;
      return `every write would be refused there (a write that changes nothing, a script deleting a key not there, was: ${err.message}); expected an account that may run scripts (+@scripting) and write (+@write) mcmux's keys`;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.slotsTimer);
    const client = this.client;
    if (client.status === 'ready') {
      // Reads gathered before the close go out first (read-batch.ts), then their commands too:
      // auto-pipelined requests leave at the end of the tick; QUIT is never pipelined: let them go first.
      await this.reads.sent();
      await new Promise<void>((resolve) => setImmediate(resolve));
      // QUIT is answered after every request already sent, so those still get their replies.
      await this.within(client.quit().then(ignore, ignore));
    }
    // Between two attempts there is no socket, and so no 'end' to wait for.
    const live = client.status === 'connecting' || client.status === 'connect' || client.status === 'ready';
    const ended = live ? new Promise<void>((resolve) => client.once('end', () => resolve())) : undefined;
    client.disconnect();
    if (ended) await this.within(ended);
  }

  /** `p`, or nothing once the timeout has passed (close must not hang on a dead server). */
  private async within(p: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.timeoutMs)));
    await Promise.race([p, late]);
    clearTimeout(timer);
  }

  private async doGet(keys: readonly string[], touch: number | undefined): Promise<Array<Hit | undefined>> {
    const out = new Array<Hit | undefined>(keys.length).fill(undefined);
    if (keys.length === 0) return out;
    const touchArg = touch === undefined ? '' : deadlineArg(touch, Date.now());
    const items = keys.map((k) => this.itemKey(k));
    if (!(this.client instanceof Cluster)) {
      decodeHits(await this.scripts.mcmuxGetBuffer(items.length, ...items, touchArg), touch, out, undefined, Date.now());
      return out;
    }
    // One call per key, all sent at once: a script's keys must share a slot, and while that slot
    // migrates, one naming several of its keys fails (TRYAGAIN) unless they are all on one side.
    await Promise.all(
      items.map(async (item, i) => {
        this.refuseUnreported(item);
        decodeHits(await this.scripts.mcmuxGetBuffer(1, item, touchArg), touch, out, [i], Date.now());
      }),
    );
    return out;
  }

  private async flushPrefix(node: Redis): Promise<void> {
    // The prefix came from UTF-8 text: escaping the text escapes the bytes.
    const pattern = `${this.prefix.toString('utf8').replace(/[*?[\]\\^]/g, '\\$&')}*`;
    let cursor = '0';
    do {
      const [next, found] = await node.scanBuffer(cursor, 'MATCH', pattern, 'COUNT', FLUSH_BATCH);
      cursor = next.toString('latin1');
      // Only names a client could have made: the rest after the prefix holds no space or control
      // byte. That spares the cas counters (whose unique must outlive a flush) and foreign keys.
      const mine = found.filter((k) => isClientKey(k, this.prefix.length));
      if (mine.length === 0) continue;
      // In a cluster UNLINK's keys must share a slot: one call per key, all sent at once.
      if (this.client instanceof Cluster) await Promise.all(mine.map((k) => node.unlink(k)));
      else await node.unlink(...mine);
    } while (cursor !== '0');
  }

  /**
   * Every request goes through here: fail fast when closed or disconnected, map failures to
   * McmuxError, count. `long` (flush): not bounded by the request timeout as a whole, only each
   * of its commands is.
   */
  private async run<T>(op: () => Promise<T>, long = false, callers = 1, admitted = false): Promise<T> {
    this.stats.requests += callers;
    const started = performance.now();
    // Reads waiting to be gathered count as in flight: they were admitted.
    if (!admitted && this.inFlight + this.reads.waiting >= this.maxQueue) {
      throw this.failure(this.error(ErrorCodes.UPSTREAM_BUSY, `${this.maxQueue} requests already in flight (option max-queue)`), started, callers);
    }
    this.inFlight += callers;
    try {
      let guard = this.client instanceof Cluster && !long; // a cluster may retry a command internally
      if (this.closed && !admitted) throw this.error(ErrorCodes.UPSTREAM_CLOSED, 'upstream closed');
      if (this.client.status !== 'ready') {
        if (!this.starting) throw this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `not connected (reconnecting): ${this.lastError}`);
        // Waited out for the first connection: never sent, so nothing of it can land later.
        await this.bounded(this.firstReady, started).catch((err: unknown) => {
          throw err instanceof McmuxError ? err : this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `not connected within ${this.timeoutMs} ms (option timeout): ${this.lastError}`);
        });
        // Ready then, but not necessarily still: a cluster would queue the request for its next connection.
        if ((this.client.status as string) !== 'ready') throw this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `not connected (reconnecting): ${this.lastError}`);
        guard = !long;
      }
      const result = await (guard ? this.bounded(op(), started) : op());
      this.stats.latencyUsSum += callers * Math.round((performance.now() - started) * 1000);
      this.stats.latencyCount += callers;
      return result;
    } catch (err) {
      throw this.failure(err, started, callers);
    } finally {
      this.inFlight -= callers;
    }
  }

  /**
   * Rejects once `timeoutMs` has passed since `started`, with the message of ioredis's own
   * commandTimeout, so that failure() maps both alike.
   */
  private bounded<T>(p: Promise<T>, started: number): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const left = Math.max(1, this.timeoutMs - (performance.now() - started));
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('Command timed out')), left);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  /** The McmuxError for what a request failed with; counts it. */
  private failure(err: unknown, started: number, callers = 1): McmuxError {
    this.stats.errors += callers;
    if (err instanceof McmuxError) return err;
    const message = this.scrub(err instanceof Error ? err.message : String(err));
    if (err instanceof Error && this.refusedMoves.has(err)) {
      return this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `slot moved to ${message.split(' ')[2] ?? ''}, no master before (a failover): not run; the slots are asked for again`);
    }
    if (this.closed) return this.error(ErrorCodes.UPSTREAM_CLOSED, `upstream closed (${message})`);
    if (message === 'Command timed out') {
      this.stats.timeouts += callers;
      // A reply that comes late is still paired with its own command (ioredis keeps it queued),
      // but a server that stopped answering would collect every request sent meanwhile: drop the
      // connection, so that they fail at once until it answers again.
      // destroy(), not disconnect(): that ends the socket politely and waits up to 2 s for a
      // server that is not reading. Destroyed once: the other timeouts of the batch see it.
      const stream = this.client instanceof Redis && this.client.status === 'ready' ? (this.client.stream as NetStream | undefined) : undefined;
      if (stream && !stream.destroyed) {
        this.lastError = DISCARDED;
        stream.destroy();
      }
      return this.error(ErrorCodes.UPSTREAM_TIMEOUT, `no reply within ${this.timeoutMs} ms (option timeout)`);
    }
    if (err instanceof Error && err.name === 'ReplyError') {
      // The server answered (an error of its own: OOM, NOPERM, an unknown command on Redis < 7).
      this.stats.latencyUsSum += Math.round((performance.now() - started) * 1000);
      this.stats.latencyCount++;
      return this.error(ErrorCodes.UPSTREAM_REFUSED, message);
    }
    const name = err instanceof Error ? err.name : '';
    // ioredis words these for its own options; say what happened instead.
    if (name === 'MaxRetriesPerRequestError' || name === 'AbortError') {
      // Discarded by us, the server is alive and may still apply it, after later requests.
      return this.error(ErrorCodes.UPSTREAM_IO, `connection lost with the request in flight (it may have been applied): ${this.lastError}`, this.lastError === DISCARDED);
    }
    if (message.startsWith("Stream isn't writeable")) {
      return this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `not connected (reconnecting): ${this.lastError}`);
    }
    return this.error(ErrorCodes.UPSTREAM_IO, this.lastError === message ? message : `${message} (last error: ${this.lastError})`);
  }

  private error(code: McmuxError['code'], message: string, late = false): McmuxError {
    return new McmuxError(code, `upstream ${this.name}: ${message}`, late);
  }

  /** Removes any password from a message that came from ioredis or the server. */
  private scrub(message: string): string {
    let m = message;
    for (const s of this.secrets) m = m.split(s).join('***');
    return m;
  }

  private itemKey(key: string): Buffer {
    const buf = Buffer.allocUnsafe(this.prefix.length + key.length);
    this.prefix.copy(buf, 0);
    buf.write(key, this.prefix.length, 'latin1');
    return buf;
  }

  /**
   * Cluster: a request whose slot's master lost its connection, and whose 'ready' since is not
   * reported yet (or whose scripts are not loaded there again yet), is not sent (UNREACHABLE: the
   * router fails it over as never sent). A slots refresh is asked for (at most one a second):
   * the slots may have a new master by now.
   */
  private refuseUnreported(item: Buffer): void {
    if (this.unreported.size === 0 || !(this.client instanceof Cluster)) return;
    const node = this.client.slots[keySlot(item)]?.[0];
    if (node === undefined || !this.unreported.has(node)) return;
    const now = performance.now();
    if (now - this.refreshAsked >= 1000) {
      this.refreshAsked = now;
      this.client.refreshSlotsCache();
    }
    throw this.error(ErrorCodes.UPSTREAM_UNREACHABLE, `cluster node ${node} is reconnecting: not sent`);
  }

  /**
   * Cluster: whether a slot's master changed since the last time this was asked (not the first)
   * to a node that served no slot then, or from one that serves none now: a failover, not a
   * slot moved between masters.
   */
  private mastersChanged(): boolean {
    if (!(this.client instanceof Cluster)) return false;
    const now = Array.from({ length: SLOTS }, (_, s): string => (this.client as Cluster).slots[s]?.[0] ?? '');
    const before = this.masters;
    const isMaster = new Set(now);
    this.masters = now;
    this.masterSet = isMaster;
    if (before === undefined) return false;
    const wasMaster = new Set(before);
    for (let s = 0; s < SLOTS; s++) {
      const a = before[s] as string;
      const b = now[s] as string;
      if (a !== '' && b !== '' && a !== b && (!wasMaster.has(b) || !isMaster.has(a))) return true;
    }
    return false;
  }

  /**
   * Cluster: whether `message` is a MOVED to a node that served no slot at the last slots refresh
   * (a promoted replica: see the constructor). Before the first refresh, none is.
   */
  private movedToNewMaster(message: string): boolean {
    const [word, , to] = message.split(' ');
    return word === 'MOVED' && to !== undefined && this.masterSet !== undefined && !this.masterSet.has(to);
  }

  /**
   * Cluster: one store per master for the cold detector's marker, each a view of this one that
   * names two keys `<marker>.<master host:port>.<replication id>.{<tag of a slot>}`, in the
   * lowest and the highest slot the master serves: both land on that master. A replica promoted
   * (another address, a new replication id) is asked for keys it was never written, though it
   * holds its old master's; so is a node promoted back to master (it holds the marker of its
   * earlier term, which came back to it through the replica it followed meanwhile, but maybe not
   * the last lock). The replication id (INFO replication, read by markersReady) is new at each
   * promotion, which makes a new view (nothing this process wrote), and at each restart, which
   * keeps the view: its keys name the new id, and it reads the keys it wrote before as well, on
   * the master itself (a restart with its data keeps them; one that lost them does not). A slot
   * migration keeps the id (the config epoch would not: SETSLOT bumps the importing master's):
   * when one of the two slots moves away, the marker in the other still speaks for the master.
   * An ACL user refused INFO: the keys name the address alone (a promotion back is not told).
   * A standalone Redis: itself.
   */
  markerStores(): readonly Upstream[] {
    if (!(this.client instanceof Cluster)) return [this];
    const owned = new Map<string, [number, number]>(); // each master's lowest and highest slot
    for (let s = 0; s < SLOTS; s++) {
      const m = this.client.slots[s]?.[0];
      if (m === undefined) continue;
      const range = owned.get(m);
      if (range === undefined) owned.set(m, [s, s]);
      else range[1] = s;
    }
    // Slots not known yet (the first look, as mcmux starts): no sight of any master. A view that
    // cannot answer makes the look 'unknown', and the cluster is fenced as unread until a look
    // with the masters' views judges it (the marker as any key would be read on one master only).
    if (owned.size === 0) return [this.unknownMasters];
    const views: ClusterMasterStore[] = [];
    for (const [master, [lowest, highest]] of owned) {
      const term = this.replids.get(master);
      if (term === undefined) {
        // Never read (markersReady could not reach it): a view that answers nothing.
        views.push(new ClusterMasterStore(this, master, 'its replication id is not known yet'));
        continue;
      }
      let view = this.markerViews.get(master);
      if (view === undefined || this.promoted.delete(master)) {
        view = new ClusterMasterStore(this, master);
        this.markerViews.set(master, view);
      }
      view.place(term, lowest, highest);
      views.push(view);
    }
    // Masters no longer: their views go (bounded by the masters of now), and what was read of
    // them. A view that wrote a marker is read once more, as a ghost, where its slots went: its
    // slots came with their keys (a reshard that drained the master, a replica promoted) or not
    // (a master lost for good whose slots another one took, ADDSLOTS: its locks are gone).
    const now = performance.now();
    for (const [master, view] of this.markerViews) {
      if (owned.has(master)) continue;
      this.markerViews.delete(master);
      if (view.ghost(now)) this.ghosts.set(master, view);
    }
    for (const [master, ghost] of this.ghosts) {
      if (owned.has(master) || ghost.retired(now)) this.ghosts.delete(master);
      else views.push(ghost);
    }
    for (const master of this.replids.keys()) if (!owned.has(master)) this.replids.delete(master);
    for (const master of this.promoted) if (!owned.has(master)) this.promoted.delete(master);
    return views;
  }

  /** Cluster: whether `master` serves `slot` as the slots are known now. */
  serves(master: string, slot: number): boolean {
    return this.client instanceof Cluster && this.client.slots[slot]?.[0] === master;
  }

  /**
   * Cluster: resolves once the slots are known (the first connection), failed, or after `timeout`,
   * and the replication id of each master read (INFO replication, each bounded by `timeout`; one
   * not answering keeps what was read of it before): Upstream.markersReady. A master whose id
   * changed since the last read restarted or was promoted (a takeover and back between two slots
   * refreshes is seen by nothing else: same address, its connection kept): reported as a
   * reconnect, and a promotion (its `master_replid2` names the master it followed) gets a new
   * marker view.
   */
  async markersReady(): Promise<void> {
    const client = this.client;
    if (!(client instanceof Cluster)) return;
    if (this.starting) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          resolve();
        };
        this.firstReady.then(done, done);
      });
    }
    const masters = new Set<string>();
    for (let s = 0; s < SLOTS; s++) {
      const m = client.slots[s]?.[0];
      if (m !== undefined) masters.add(m);
    }
    const nodes = client.nodes('all');
    let changed = false;
    await Promise.all(
      [...masters].map(async (master) => {
        const node = nodes.find((n) => nodeId(n) === master);
        if (node === undefined) return;
        const { info, refused } = await this.replication(node);
        if (!client.slots.some((s) => s?.[0] === master)) return;
        if (refused !== '') {
          if (!this.infoRefused) this.onWarning?.(`cluster master ${master} refuses INFO (${refused}): the markers name the master's address alone, and a node promoted back to master with its old marker is not told from one that kept its data (grant the user +info)`);
          this.infoRefused = true;
          this.replids.set(master, '');
          return;
        }
        const id = replidOf(info);
        if (id === undefined) return;
        const before = this.replids.get(master);
        this.replids.set(master, id);
        if (before === undefined || before === '' || before === id) return;
        changed = true;
        const followed = /^master_replid2:([0-9a-f]{40})\r?$/m.exec(info ?? '')?.[1];
        // A master restarted from its own RDB names its id of before there (or none, 0s).
        if (followed !== undefined && !/^0+$/.test(followed) && followed !== before) this.promoted.add(master);
      }),
    );
    if (changed) this.onReconnect?.();
  }

  /**
   * INFO `sections` of `node` (default: replication), one command each, sent together, bounded by
   * the timeout (undefined when one failed or they took longer); `refused`: the NOPERM an ACL user
   * without +info gets, scrubbed ('' otherwise).
   */
  private async replication(node: Redis, sections: readonly string[] = ['replication']): Promise<{ info: string | undefined; refused: string }> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, this.timeoutMs, undefined)));
    let refused = '';
    const info = await Promise.race([
      // One command a section, not `INFO server replication`: a server that takes one section
      // only (before Redis 7) would refuse it, and no id would be read at all.
      Promise.all(sections.map((section) => node.info(section))).then((replies) => replies.join('\r\n')).catch((err: unknown) => {
        if (err instanceof Error && err.message.startsWith('NOPERM')) refused = this.scrub(err.message);
        return undefined;
      }),
      late,
    ]).finally(() => clearTimeout(timer));
    return { info, refused };
  }

  /**
   * Standalone: the server's history, read at each connection and told as onServerId: its
   * replication id and its run_id (`<master_replid> <run_id>`: INFO replication and INFO server,
   * sent together first on the connection). Another replication id than at the connection before
   * (in this process, or the last one journal.log kept) is another history at this address: a
   * replica promoted behind a stable address (Sentinel, a VIP), which may lack writes the master
   * acknowledged (asynchronous replication: a lock among them), or the server restarted (empty,
   * or from a snapshot that may be older than its last writes). The cold detector fences it as
   * come back empty: the marker a promoted replica holds, replicated, passes for one the store
   * kept (review-durable finding 3). Unless the history continues the one before (historyOf):
   * a master that freed its replication backlog (no replica for `repl-backlog-ttl`) takes a new
   * id, with the same run_id (review-h1 finding 5).
   */
  private async readReplid(client: Redis): Promise<void> {
    const { info, refused } = await this.replication(client, ['server', 'replication']);
    if (refused !== '') {
      if (!this.infoRefused) this.onWarning?.(`the server refuses INFO (${refused}): a replica promoted behind the same address is taken for the master reconnecting, and may grant a lock the master had granted (grant the user +info)`);
      this.infoRefused = true;
      return;
    }
    const history = historyOf(info);
    if (history !== undefined) this.onServerId?.(history.id, history.continues);
  }

  /** The keys a write script names: the item and the cas counter; in a cluster the item alone. */
  private scriptKeys(item: Buffer): Buffer[] {
    return this.client instanceof Cluster ? [item] : [item, this.counterKey];
  }
}

function ignore(): void {}

/** `master_replid` of an INFO replication reply. */
function replidOf(info: string | undefined): string | undefined {
  return info === undefined ? undefined : /^master_replid:([0-9a-f]{40})\r?$/m.exec(info)?.[1];
}

/**
 * The history a standalone server names in its INFO server and replication replies (undefined:
 * no replication id in them), for Upstream.onServerId: `id` is `<master_replid> <run_id>` (the
 * replication id alone when the reply has no run_id); `continues(before)` says whether an id
 * told before (by this version, or a bare replication id by the one before it) names the same
 * history: the same process (run_id; the same replication id where either names no run_id)
 * with the same replication id, or one that is a master whose `master_replid2` is all zeros — a master that freed its replication backlog, having had no
 * replica for `repl-backlog-ttl` (replication.c replicationCron: changeReplicationId and
 * clearReplicationId2), every write kept. Not a restart (a new run_id), a replica promoted (another
 * run_id, its master_replid2 its old master's id), nor the same process demoted, resynced from
 * another master (its data replaced) and promoted again: a replica meanwhile (role:slave), then
 * a master whose master_replid2 names the master it followed.
 */
export function historyOf(info: string | undefined): { id: string; continues: (before: string) => boolean } | undefined {
  const replid = replidOf(info);
  if (info === undefined || replid === undefined) return undefined;
  const runId = /^run_id:([0-9a-f]{40})\r?$/m.exec(info)?.[1];
  const replid2 = /^master_replid2:([0-9a-f]{40})\r?$/m.exec(info)?.[1];
  const ownId = /^role:master\r?$/m.test(info) && replid2 !== undefined && /^0+$/.test(replid2);
  return {
    id: runId === undefined ? replid : `${replid} ${runId}`,
    continues: (before) => {
      const [was, wasRun] = before.split(' ');
      // Without a run_id on either side (the version before wrote none; a server that names
      // none), the same replication id is the same history. With both, another run_id is another
      // process, whatever its replication id (a restart keeps it where it is persisted, and serves
      // the snapshot it loaded).
      if (wasRun === undefined || runId === undefined) return was === replid;
      return wasRun === runId && (was === replid || ownId);
    },
  };
}

function nodeId(node: Redis): string {
  return `${node.options.host ?? ''}:${node.options.port ?? ''}`;
}

/**
 * One master of a Redis Cluster as the cold detector sees it (RedisUpstream.markerStores): the
 * cluster's driver, the marker kept under two keys that land on that master, in its lowest and
 * its highest slot. Only get and store are asked of it.
 */
class ClusterMasterStore implements Upstream {
  readonly name: string;
  readonly scheme: string;
  readonly timeoutMs: number;
  readonly stats: UpstreamStats;
  /** The suffixes a marker is written under now, each with its slot (place). */
  private now: Array<{ suffix: string; slot: number }> = [];
  /** Those of the last marker write acknowledged (of those sent, the last sent), and its number. */
  private written: Array<{ suffix: string; slot: number }> = [];
  private writtenSeq = 0;
  private sent = 0;
  /** A ghost (its master is a master no more: see markerStores): since when, and whether a read of it answered. */
  private ghostSince: number | undefined;
  private ghostRead = false;

  constructor(
    private readonly cluster: RedisUpstream,
    private readonly master: string,
    /** Why every request fails unsent (no master known, or not its replication id). */
    private readonly none?: string,
  ) {
    this.name = `${cluster.name} master ${master}`;
    this.scheme = cluster.scheme;
    this.timeoutMs = cluster.timeoutMs;
    this.stats = cluster.stats;
  }

  /** Where the marker goes now: the master's replication id ('' unknown) and its lowest and highest slot. */
  place(replid: string, lowest: number, highest: number): void {
    const at = (slot: number): { suffix: string; slot: number } => ({ suffix: `.${this.master}${replid === '' ? '' : `.${replid}`}.{${slotTag(slot)}}`, slot });
    this.now = lowest === highest ? [at(lowest)] : [at(lowest), at(highest)];
  }

  /**
   * Its master is a master no more: the view is read once more where the slots of its last marker
   * went (markerStores), and written no more. Whether it is worth it (a marker was written).
   */
  ghost(now: number): boolean {
    this.ghostSince = now;
    return this.written.length > 0;
  }

  /** A ghost read once (or given up on after GHOST_MS: its slots' new masters never answered). */
  retired(now: number): boolean {
    return this.ghostRead || now - (this.ghostSince ?? now) > GHOST_MS;
  }

  /**
   * The marker under the keys of now, and under those last written (a restart changed the
   * replication id, a migration one of the slots), where the master still serves their slot:
   * what another master holds (a slot migrated with its keys) says nothing of this one. A read
   * that met MOVED, followed to the slot's new master, is not counted either. The first found.
   */
  async get(keys: readonly string[]): Promise<Array<Hit | undefined>> {
    if (this.none !== undefined) throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `${this.name}: ${this.none}`);
    if (this.ghostSince !== undefined) {
      // Where the slots went: a miss there is a marker lost with the master.
      const reads = await Promise.all(this.written.map((p) => this.cluster.get(keys.map((k) => k + p.suffix))));
      this.ghostRead = true;
      return keys.map((_, i) => reads.find((r) => r[i] !== undefined)?.[i]);
    }
    const places = [...this.now, ...this.written.filter((w) => !this.now.some((n) => n.suffix === w.suffix))].filter((p) => this.cluster.serves(this.master, p.slot));
    const reads = await Promise.all(
      places.map(async (p) => {
        const hits = await this.cluster.get(keys.map((k) => k + p.suffix));
        return this.cluster.serves(this.master, p.slot) ? hits : undefined;
      }),
    );
    const answered = reads.filter((r): r is Array<Hit | undefined> => r !== undefined);
    if (answered.length === 0) throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `${this.name}: its slots moved while its marker was asked for`);
    return keys.map((_, i) => answered.find((r) => r[i] !== undefined)?.[i]);
  }

  /** The marker under the keys of now, in both slots. */
  async store(req: StoreRequest): Promise<StoreResult> {
    if (this.none !== undefined) throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `${this.name}: ${this.none}`);
    const places = this.now;
    if (places.length === 0 || this.ghostSince !== undefined) throw new McmuxError(ErrorCodes.UPSTREAM_UNREACHABLE, `${this.name}: no slot of its own`);
    const seq = ++this.sent;
    const [result] = await Promise.all(places.map((p) => this.cluster.store({ ...req, key: req.key + p.suffix })));
    if (seq > this.writtenSeq) {
      this.writtenSeq = seq;
      this.written = places;
    }
    return result as StoreResult;
  }

  delete(): Promise<'DELETED' | 'NOT_FOUND'> {
    return this.refused('delete');
  }

  touch(): Promise<TouchResult> {
    return this.refused('touch');
  }

  arith(): Promise<ArithResult> {
    return this.refused('arith');
  }

  private refused(what: string): Promise<never> {
    return Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `${this.name}: a marker view is asked for get and store only, not ${what}`));
  }

  flush(): Promise<void> {
    return Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `${this.name}: a master of a cluster is not flushed alone`));
  }

  probe(): Promise<void> {
    return this.cluster.probe();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Fills `out` (at `idx[i]`, or at i) from a get script's reply pairs. */
function decodeHits(reply: Reply[], touch: number | undefined, out: Array<Hit | undefined>, idx: number[] | undefined, now: number): void {
  const n = idx ? idx.length : out.length;
  for (let i = 0; i < n; i++) {
    const blob = reply[2 * i];
    const expiry = reply[2 * i + 1];
    // A string shorter than the header was not written by mcmux: it is no item.
    if (!Buffer.isBuffer(blob) || blob.length < HEADER) continue;
    const deadline = touch ?? (typeof expiry === 'number' && expiry >= 0 ? now + expiry : 0);
    out[idx ? (idx[i] as number) : i] = { value: blob.subarray(HEADER), flags: blob.readUInt32BE(0), cas: blob.readBigUInt64BE(4), deadline };
  }
}

/** After the prefix, a client key: no space or control byte (the codecs refuse those). */
function isClientKey(key: Buffer, prefixLength: number): boolean {
  if (key.length <= prefixLength) return false;
  for (let i = prefixLength; i < key.length; i++) {
    const c = key[i] as number;
    if (c <= 0x20 || c === 0x7f) return false;
  }
  return true;
}

// --- Redis Cluster key slots: CRC16/XMODEM of the key, or of its {hash tag}, mod 16384 ---

const CRC16 = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

function crc16(buf: Buffer, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ (CRC16[((crc >> 8) ^ (buf[i] as number)) & 0xff] as number);
  return crc;
}

export function keySlot(key: Buffer): number {
  const open = key.indexOf(0x7b); // {
  if (open >= 0) {
    const close = key.indexOf(0x7d, open + 1); // }
    if (close > open + 1) return crc16(key, open + 1, close) % SLOTS;
  }
  return crc16(key, 0, key.length) % SLOTS;
}

let slotTags: string[] | undefined;

/** A short alphanumeric tag whose slot is `slot` (a table built on first use, in a few ms). */
function slotTag(slot: number): string {
  if (!slotTags) {
    const tags = new Array<string>(SLOTS);
    const alphabet = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
    let missing = SLOTS;
    for (let n = 0; missing > 0; n++) {
      let tag = '';
      for (let m = n; tag === '' || m > 0; m = Math.floor(m / alphabet.length)) tag += alphabet[m % alphabet.length];
      const s = keySlot(Buffer.from(tag, 'latin1'));
      if (tags[s] === undefined) {
        tags[s] = tag;
        missing--;
      }
    }
    slotTags = tags;
  }
  return slotTags[slot] as string;
}

// --- configuration ---

export function createRedisUpstream(url: URL, options: Map<string, string>, ctx: UpstreamContext, hosts: HostPort[] = []): Upstream {
  const scheme = url.protocol.replace(/:$/, '');
  const cluster = scheme === 'redis+cluster';
  const name = maskUrl(cluster ? clusterHref(url, hosts) : url.href);
  const where = `upstream ${name}`;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new ConfigError(`${where}: no host: expected ${scheme}://host:port`);
  if (!cluster && hosts.length > 1) throw new ConfigError(`${where}: several hosts: expected one, or redis+cluster://host1:port1,host2:port2`);
  const timeoutMs = intOption(options, 'timeout', ctx.defaultTimeoutMs ?? 250, 1, 600_000, where);
  const prefix = Buffer.from(options.get('prefix') ?? '', 'utf8');
  options.delete('prefix');
  if (prefix.length > 200) throw new ConfigError(`${where}: option prefix is ${prefix.length} bytes: expected at most 200`);
  const connectionName = options.get('name') ?? 'mcmux';
  options.delete('name');
  if (!/^[\x21-\x7e]{1,64}$/.test(connectionName)) {
    throw new ConfigError(`${where}: option name="${connectionName}" is invalid: expected 1 to 64 printable characters, no spaces (CLIENT SETNAME)`);
  }
  const maxQueue = intOption(options, 'max-queue', 4096, 1, 1_000_000, where);
  const known = ['prefix', 'timeout', 'name', 'max-queue'];
  let tls: RedisOptions['tls'];
  if (scheme === 'rediss') {
    known.push('tls-insecure');
    const insecure = intOption(options, 'tls-insecure', 0, 0, 1, where) === 1;
    tls = insecure ? { rejectUnauthorized: false } : {};
  }
  rejectUnknownOptions(options, where, known);

  const dbText = url.pathname.replace(/^\//, '');
  if (dbText !== '' && !/^[0-9]{1,9}$/.test(dbText)) {
    throw new ConfigError(`${where}: database "${dbText}" is invalid: expected ${scheme}://host:port/DB with DB a number`);
  }
  const db = dbText === '' ? 0 : Number(dbText);
  if (cluster && db !== 0) throw new ConfigError(`${where}: a Redis Cluster has only database 0: remove "/${dbText}"`);
  let username: string | undefined;
  let password: string | undefined;
  try {
    username = decodeURIComponent(url.username) || undefined;
    password = decodeURIComponent(url.password) || undefined;
  } catch {
    throw new ConfigError(`${where}: the user or password is not valid percent-encoding`);
  }
  const secrets = password ? [...new Set([password, url.password, encodeURIComponent(password)])] : [];

  const common: RedisOptions = {
    username,
    password,
    connectionName,
    commandTimeout: timeoutMs,
    connectTimeout: timeoutMs,
    // A request never waits for a (re)connect, and is never sent twice: a resent incr or
    // append would apply twice, and a resent set could land after a later delete.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    protocol: 2,
    disableClientInfo: true,
    tls,
  };
  const retryStrategy = (times: number): number => Math.min(BACKOFF_MIN_MS * 2 ** Math.min(times - 1, 10), BACKOFF_MAX_MS);
  const settings = { name, scheme, timeoutMs, prefix, secrets, maxQueue, maxItemSize: ctx.maxItemSize };
  if (cluster) {
    const nodes = (hosts.length > 0 ? hosts : [{ host, port: undefined }]).map((h) => ({ host: h.host, port: h.port ?? DEFAULT_PORT }));
    const client = new Cluster(nodes, {
      // true, unlike a single Redis: with false, ioredis fails at once ("Connection is closed.")
      // every command routed to a node whose connection is still being set up, its own ready
      // check (CLUSTER INFO) included, which it answers by reconnecting the whole cluster: right
      // after a (re)connect every node is being set up, so that could go on for good (seen: > 10 s,
      // in about half the runs of the cluster tests). A node's offline queue holds commands until
      // its connection is ready and fails them if it closes first (never sent: not retried).
      // Requests still never wait for the cluster itself to reconnect: run() refuses them
      // unless its status is ready, so nothing waits in the cluster's own offline queue.
      enableOfflineQueue: true,
      clusterRetryStrategy: retryStrategy,
      // A node's connection is made again in the background (not only when a request is routed
      // to it): a master that restarted is reported while no request waits for it.
      clusterNodeRetryStrategy: retryStrategy,
      slotsRefreshTimeout: timeoutMs,
      // 0: a command whose node connection closed is failed, not sent again after a delay (ioredis
      // retries those when this is above 0, whatever maxRetriesPerRequest says: an incr applied
      // twice, a set landing after a later delete). MOVED/ASK/TRYAGAIN never ran: still followed.
      retryDelayOnFailover: 0,
      // TRYAGAIN (a slot migrating: the command named keys on both sides) never ran: ioredis sends
      // it again up to 16 times (maxRedirections), each after this delay, whatever became of the
      // caller. At its default (100 ms) a set that timed out at 250 ms still landed 1.6 s later,
      // after the delete that followed it (review-redis-cluster.test.ts). Spaced so that the 16
      // end within the timeout; CLUSTERDOWN (0) fails at once.
      retryDelayOnTryAgain: Math.max(1, Math.floor(timeoutMs / 20)),
      retryDelayOnClusterDown: 0,
      redisOptions: common,
    });
    return new RedisUpstream(settings, client);
  }
  const port = url.port === '' ? DEFAULT_PORT : Number(url.port);
  // Auto-pipelining: commands issued in one tick leave in one write (one syscall, one wake-up of
  // Redis) instead of one each. Not for a cluster: ioredis refuses multi-slot pipelines there.
  const client = new Redis({ ...common, host, port, db, enableOfflineQueue: false, retryStrategy, enableAutoPipelining: true });
  return new RedisUpstream(settings, client);
}

/** The URL of a cluster with all its hosts (`url` holds only the first). */
function clusterHref(url: URL, hosts: HostPort[]): string {
  const auth = url.username || url.password ? `${url.username}${url.password ? `:${url.password}` : ''}@` : '';
  const list = hosts.map((h) => (h.host.includes(':') ? `[${h.host}]` : h.host) + (h.port === undefined ? '' : `:${h.port}`)).join(',');
  return `${url.protocol}//${auth}${list || url.host}${url.pathname}${url.search}`;
}
