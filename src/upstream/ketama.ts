/**
 * Key placement over the servers of a memcached pool, reproducing libmemcached 1.x (the library
 * under php-memcached) bit for bit, so that mcmux finds every key a PHP client wrote:
 *
 * - `ketama`: MEMCACHED_BEHAVIOR_KETAMA (what php-memcached's session handler sets for
 *   memcached.sess_consistent_hash=On, sess_consistent_hash_type=ketama; the Memcached class's
 *   OPT_DISTRIBUTION=DISTRIBUTION_CONSISTENT). Distribution CONSISTENT_KETAMA, not weighted:
 *   100 points a server, point i (0..99) = one_at_a_time("host:port-i"), or "host-i" when the
 *   port is 11211; key hash one_at_a_time. Weights are ignored (setting the behaviour clears
 *   libmemcached's weighted flag).
 * - `ketama-weighted` / `libketama`: MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, the one behaviour behind
 *   both sess_consistent_hash_type=ketama_weighted and the class's OPT_LIBKETAMA_COMPATIBLE (the
 *   PHP constant IS that behaviour). Key hash MD5 (first 4 digest bytes, little-endian); 160
 *   points per server scaled by weight, 4 points from each MD5("host:port-i") digest.
 * - `modula`: MEMCACHED_DISTRIBUTION_MODULA (libmemcached's default, sess_consistent_hash=Off):
 *   one_at_a_time(key) % number of servers.
 *
 * A pool of one server always picks it (libmemcached skips the hash). Pure functions, no I/O.
 */

import { createHash } from 'node:crypto';

export type Distribution = 'ketama' | 'ketama-weighted' | 'libketama' | 'modula';
export const DISTRIBUTIONS: readonly Distribution[] = ['ketama', 'ketama-weighted', 'libketama', 'modula'];

export interface RingServer {
  /** The host exactly as the clients spell it in their server list: it is hashed. */
  readonly host: string;
  readonly port: number;
  /** Only `ketama-weighted` / `libketama` use it; libmemcached turns 0 into 1. */
  readonly weight: number;
}

/** libmemcached MEMCACHED_DEFAULT_PORT: a server on it is hashed as "host-i", without the port. */
const DEFAULT_PORT = 11211;
const POINTS_PER_SERVER = 100; // MEMCACHED_POINTS_PER_SERVER
const POINTS_PER_SERVER_KETAMA = 160; // MEMCACHED_POINTS_PER_SERVER_KETAMA (weighted)

/**
 * libhashkit's default hash (Bob Jenkins' one-at-a-time) over latin1 bytes. libmemcached reads
 * the key through a signed `char`, so a byte >= 0x80 enters as 0xFFFFFFxx (x86, and every
 * platform where char is signed): reproduced, since that is what PHP on such a host computes.
 */
export function oneAtATime(key: string): number {
  let h = 0;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i) & 0xff;
    h = (h + (c < 0x80 ? c : c | 0xffffff00)) | 0;
    h = (h + (h << 10)) | 0;
    h ^= h >>> 6;
  }
  h = (h + (h << 3)) | 0;
  h ^= h >>> 11;
  h = (h + (h << 15)) | 0;
  return h >>> 0;
}

function md5(key: string): Buffer {
  return createHash('md5').update(key, 'latin1').digest();
}

/** libhashkit's MD5 hash: the digest's first 32-bit word, little-endian. */
export function md5Hash(key: string): number {
  return md5(key).readUInt32LE(0);
}

/** The string libmemcached hashes for point `i` of a server (non-spy ketama). */
export function pointName(s: RingServer, i: number): string {
  return s.port === DEFAULT_PORT ? `${s.host}-${i}` : `${s.host}:${s.port}-${i}`;
}

/** The key hash a distribution places keys by. */
export function keyHash(d: Distribution): (key: string) => number {
  return d === 'ketama-weighted' || d === 'libketama' ? md5Hash : oneAtATime;
}

/** A sorted ring of points, each owned by a server index of the full list. */
export interface Continuum {
  readonly values: Uint32Array;
  readonly owners: Uint16Array;
}

/**
 * Builds the continuum of `servers` (libmemcached `update_continuum`), counting only those
 * with `live[i]` true (auto-eject; default all). Owners are indexes into `servers`.
 */
export function buildContinuum(servers: readonly RingServer[], d: Distribution, live?: readonly boolean[]): Continuum {
  const weighted = d === 'ketama-weighted' || d === 'libketama';
  const isLive = (i: number): boolean => live === undefined || live[i] === true;
  const liveCount = servers.filter((_, i) => isLive(i)).length;
  let totalWeight = 0;
  servers.forEach((s, i) => {
    if (isLive(i)) totalWeight += Math.max(1, s.weight);
  });
  const points: Array<[number, number]> = [];
  servers.forEach((s, index) => {
    if (!isLive(index)) return;
    if (!weighted) {
      for (let i = 0; i < POINTS_PER_SERVER; i++) points.push([oneAtATime(pointName(s, i)), index]);
      return;
    }
    // libmemcached computes this share in single-precision float: Math.fround at each step,
    // or a weight ratio that lands near an integer would round the other way.
    const f = Math.fround;
    const pct = f(f(Math.max(1, s.weight)) / f(totalWeight));
    const scaled = f(f(f(f(pct * POINTS_PER_SERVER_KETAMA) / 4) * f(liveCount)) + f(1e-10));
    const perServer = Math.floor(scaled) * 4;
    for (let i = 0; i < perServer / 4; i++) {
      const digest = md5(pointName(s, i));
      for (let k = 0; k < 4; k++) points.push([digest.readUInt32LE(k * 4), index]);
    }
  });
  // Equal values are ordered by server index, as libmemcached's qsort comparator does.
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const values = new Uint32Array(points.length);
  const owners = new Uint16Array(points.length);
  points.forEach(([v, o], i) => {
    values[i] = v;
    owners[i] = o;
  });
  return { values, owners };
}

/** The owner of the first point at or after `hash`, wrapping to the first point; -1 if empty. */
export function lookup(c: Continuum, hash: number): number {
  const n = c.values.length;
  if (n === 0) return -1;
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((c.values[mid] as number) < hash) lo = mid + 1;
    else hi = mid;
  }
  return c.owners[lo === n ? 0 : lo] as number;
}

/** libmemcached MODULA: hash % count, over the servers marked live (all by default). */
export function modula(hash: number, live: readonly number[]): number {
  return live.length === 0 ? -1 : (live[hash % live.length] as number);
}

/**
 * A placement function: key (already without its namespace) -> server index, or -1 when no
 * server is live. `live` = indexes of the servers that take keys (auto-eject), default all.
 */
export function placer(servers: readonly RingServer[], d: Distribution, live?: readonly boolean[]): (key: string) => number {
  const liveIdx = servers.map((_, i) => i).filter((i) => live === undefined || live[i] === true);
  if (liveIdx.length === 0) return () => -1;
  // libmemcached: `if (memcached_server_count(ptr) == 1) return 0` before any hashing.
  if (servers.length === 1) return () => liveIdx[0] as number;
  const hash = keyHash(d);
  if (d === 'modula') return (key) => modula(hash(key), liveIdx);
  const ring = buildContinuum(servers, d, live);
  return (key) => lookup(ring, hash(key));
}
