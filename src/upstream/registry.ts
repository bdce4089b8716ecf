/**
 * The URL-scheme table: the one place a driver registers itself. A driver entry parses its own
 * options (from the URL query string or the TOML `[[upstream]]` table, both arriving as strings)
 * and throws `ConfigError` naming the bad value and the expected form.
 */

import { ConfigError } from '../errors';
import { createMemcachedUpstream } from './memcached';
import { createMemoryUpstream } from './memory';
import { createMysqlUpstream } from './mysql';
import { createRedisUpstream } from './redis';
import { createSqliteUpstream } from './sqlite';
import { type Upstream, maskRawUrl } from './upstream';

export interface UpstreamContext {
  /** `--timeout`: the default request timeout for upstreams that set none, in ms. */
  readonly defaultTimeoutMs: number | undefined;
  /** `--max-item-size`: stores may size their limits from it. */
  readonly maxItemSize: number;
  /** `--probe-interval`, in ms: a driver that checks its store on its own (sqlite's file) does so this often. */
  readonly probeIntervalMs?: number | undefined;
  /**
   * false for `mcmux check`: a file store that is not there is not made (nor its directory); the
   * driver throws `NotThereYet` once its options are validated. Default true.
   */
  readonly create?: boolean;
}

/** A file store `mcmux check` found missing: mcmux makes it at start (see `UpstreamContext.create`). */
export class NotThereYet extends Error {
  constructor(
    readonly upstream: string,
    readonly path: string,
    what = `not there yet (mcmux makes it, and its directory, at start): ${path}`,
  ) {
    super(what);
  }
}

/**
 * A store `mcmux check` could not open for a cause not the config's (StoreUnavailableError: a lock
 * held elsewhere, a failing disk), or a file store not there whose directory the start could not make.
 */
export class CannotOpen extends Error {
  constructor(
    readonly upstream: string,
    message: string,
  ) {
    super(message);
  }
}

/** What `mcmux check` builds for an upstream: its driver, or why there is none to probe. */
export type Checked = Upstream | NotThereYet | CannotOpen;

/** A driver `mcmux check` may probe (not NotThereYet or CannotOpen). */
export function isDriver(u: Checked): u is Upstream {
  return !(u instanceof Error);
}

export interface HostPort {
  readonly host: string;
  /** undefined when the URL gave none: the driver applies its default port. */
  readonly port: number | undefined;
}

/**
 * `url` is the upstream URL with only its first host (so WHATWG URL can parse it); `hosts`
 * lists every host of a multi-host URL (`redis+cluster://h1:p1,h2:p2`, a memcached pool).
 */
export type UpstreamFactory = (url: URL, options: Map<string, string>, ctx: UpstreamContext, hosts: HostPort[]) => Upstream;

const schemes = new Map<string, UpstreamFactory>([
  ['memory', createMemoryUpstream],
  ['memcached', createMemcachedUpstream],
  ['redis', createRedisUpstream],
  ['rediss', createRedisUpstream],
  ['redis+cluster', createRedisUpstream],
  ['mysql', createMysqlUpstream],
  ['sqlite', createSqliteUpstream],
]);

export function knownSchemes(): string[] {
  return [...schemes.keys()];
}

const CREDENTIALS_HINT = '; credentials in a URL must be percent-encoded (@ %40, : %3A, / %2F, ? %3F, # %23, % %25)';

/**
 * Builds an upstream from its URL and extra options (TOML keys); query-string options and
 * extra options are merged, extra options winning.
 */
export function createUpstream(
  rawUrl: string,
  extra: ReadonlyMap<string, string>,
  ctx: UpstreamContext,
): Upstream {
  const expected = `expected scheme://host:port or scheme://host1:port1,host2:port2 (schemes: ${knownSchemes().join(', ')})`;
  // The host part ends at the first / ? or # after "//": an @ after that is a user or password
  // holding one of them unencoded (`redis://app:2024/Secret@host`, `redis://app:12#Secret@host`).
  // Parsed as it stands, the digits before it were a port, the rest a database, an option or a
  // fragment cut off: the driver's error printed that part of the password, or mcmux connected
  // to the user name as a host. Refused here, before anything parses it, with everything up to
  // the last @ masked but a user name that a : ends before any / ? #. No upstream URL takes an @
  // in its path or query (a database, a file or an option value): one there is written %40.
  const early = /^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*[/?#][^]*@([^@]*)$/i.exec(rawUrl);
  if (early) {
    const user = /^[a-z][a-z0-9+.-]*:\/\/([^:/?#\s"]*):/i.exec(rawUrl)?.[1];
    const shown = maskRawUrl(`${early[1] as string}${user === undefined ? '' : `${user}:`}***@${early[2] as string}`);
    throw new ConfigError(
      `upstream "${shown}" is not a URL: an @ follows its first / ? or # (a user or password holding one of them unencoded ends the host part there)${CREDENTIALS_HINT}, and so must an @ in the path or query`,
    );
  }
  let url: URL;
  let hosts: HostPort[];
  try {
    ({ url, hosts } = parseUpstreamUrl(rawUrl));
  } catch {
    // A password holding @ or : (or % not followed by two hex digits) breaks the URL apart: say so.
    const credentials = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*@/i.test(rawUrl) ? CREDENTIALS_HINT : '';
    throw new ConfigError(`upstream "${maskRawUrl(rawUrl)}" is not a URL: ${expected}${credentials}`);
  }
  const scheme = url.protocol.replace(/:$/, '');
  const factory = schemes.get(scheme);
  if (!factory) {
    throw new ConfigError(`upstream "${maskRawUrl(rawUrl)}" has unknown scheme "${scheme}": expected one of ${knownSchemes().join(', ')}`);
  }
  const options = new Map<string, string>();
  for (const [k, v] of url.searchParams) options.set(k, v);
  for (const [k, v] of extra) options.set(k, v);
  return factory(url, options, ctx, hosts);
}

/** Splits a possibly multi-host URL into a URL of its first host and the list of all hosts. */
function parseUpstreamUrl(raw: string): { url: URL; hosts: HostPort[] } {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)((?:[^@/?#]*@)?)([^/?#]*)(.*)$/i.exec(raw);
  if (!m) throw new Error('not a URL');
  const [, scheme, auth, hostList, rest] = m as unknown as [string, string, string, string, string];
  const hosts: HostPort[] = [];
  const parts = hostList.split(',');
  // `memcached://h:1,` (a trailing or doubled comma): a server list with an empty entry.
  if (parts.length > 1 && parts.some((p) => p === '')) throw new Error('empty host in a server list');
  for (const part of parts) {
    const u = new URL(`${scheme}${part}`); // validates the host and port
    if (part !== '' && u.hostname === '') throw new Error('bad host');
    // The host as written, not as URL normalises it (lower case): libmemcached hashes the
    // spelling of the server list, and a pool must place keys where PHP put them.
    const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(part);
    const host = (m?.[1] ?? u.hostname).replace(/^\[|\]$/g, '');
    hosts.push({ host, port: u.port === '' ? undefined : Number(u.port) });
  }
  const url = new URL(`${scheme}${auth}${hostList.split(',')[0] ?? ''}${rest}`);
  return { url, hosts };
}

/** Option helpers shared by drivers. */
export function intOption(
  options: Map<string, string>,
  name: string,
  def: number,
  min: number,
  max: number,
  where: string,
): number {
  const raw = options.get(name);
  options.delete(name);
  if (raw === undefined) return def;
  if (!/^[0-9]+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(`${where}: option ${name}="${raw}" is invalid: expected an integer from ${min} to ${max}`);
  }
  return Number(raw);
}

/** Throws for options a driver did not consume (a typo must not pass silently). */
export function rejectUnknownOptions(options: Map<string, string>, where: string, known: string[]): void {
  for (const name of options.keys()) {
    throw new ConfigError(`${where}: unknown option "${name}": expected one of ${known.join(', ')}`);
  }
}

/**
 * Options that change how a store is reached, not which store it is (or where its keys live):
 * left out of `storeIdentity`, so the repair journal of a store survives changing them.
 */
const TUNING_OPTIONS = new Set([
  'timeout', 'connections', 'max-queue', 'purge-interval', 'purge-batch', 'synchronous', 'name', 'tls-insecure', 'max-bytes', 'eject',
]);

/** Which store an upstream spec points at: its masked URL without tuning options. */
export function storeIdentity(rawUrl: string, extra: ReadonlyMap<string, string>): string {
  const q = rawUrl.indexOf('?');
  const base = maskRawUrl(q < 0 ? rawUrl : rawUrl.slice(0, q));
  const options = new Map<string, string>();
  if (q >= 0) for (const [k, v] of new URLSearchParams(rawUrl.slice(q + 1))) options.set(k, v);
  for (const [k, v] of extra) options.set(k, v);
  const kept = [...options].filter(([k]) => !TUNING_OPTIONS.has(k)).sort(([a], [b]) => a.localeCompare(b));
  return kept.length === 0 ? base : `${base}?${new URLSearchParams(kept).toString()}`;
}
