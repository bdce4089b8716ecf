/**
 * Configuration: the defaults, the TOML file and the flags merged into one validated `Config`
 * (flags override the file, the file overrides the defaults). Every key is named as its flag
 * (`max-item-size` is `--max-item-size`). Nothing here reads files or argv: cli.ts does, and
 * hands the raw values in. A bad value throws `ConfigError` naming it and the expected form.
 */

import { resolve as resolvePath } from 'node:path';
import { ConfigError } from './errors';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface UpstreamConfig {
  readonly url: string;
  /** Driver options from a TOML `[[upstream]]` table (everything but `url`), as strings. */
  readonly options: ReadonlyMap<string, string>;
}

export type ListenSpec =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string };

export function formatListen(l: ListenSpec): string {
  return l.kind === 'unix' ? `unix:${l.path}` : l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
}

export interface Config {
  /** One or more addresses: TCP host:port, or a unix socket path. */
  readonly listen: readonly ListenSpec[];
  /** File mode of unix sockets mcmux creates. */
  readonly listenMode: number;
  readonly upstreams: readonly UpstreamConfig[];
  readonly writeWait: 'all' | 'copies';
  readonly minCopies: number;
  /** Default upstream timeout in ms; undefined lets each driver use its own default. */
  readonly timeout: number | undefined;
  readonly maxItemSize: number;
  readonly maxConnections: number;
  readonly allowFlush: boolean;
  readonly logLevel: LogLevel;
  readonly maxLineLength: number;
  readonly maxKeysPerGet: number;
  readonly maxReadsHeld: number;
  readonly maxPipeline: number;
  readonly maxOutputBytes: number;
  readonly maxInputBytes: number;
  readonly shutdownTimeout: number;
  readonly stateDir: string;
  readonly journal: { readonly maxKeys: number; readonly fsync: 'always' | 'everysec' | 'no' };
  readonly repair: { readonly rate: number; readonly flushCaches: boolean };
  readonly lockFence: number;
  readonly hedgeMs: number;
  /** Where to serve /metrics and /healthz; undefined = off. */
  readonly metrics: { readonly host: string; readonly port: number } | undefined;
  /** Most connections the metrics listener holds at once. */
  readonly metricsMaxConnections: number;
  /** fenceKeysMax: journal-max-keys (keys a fenced upstream remembers as written since). */
  readonly health: { readonly downAfter: number; readonly probeMinMs: number; readonly probeMaxMs: number; readonly fenceKeysMax: number };
}

/**
 * The upstreams used when none is configured: a fast in-process cache in front of a durable
 * SQLite file in the state directory, so one machine already has redundancy (restart mcmux and
 * the data is served from SQLite and repaired into memory).
 */
export function embeddedDefault(stateDir: string): string[] {
  // The path percent-encoded where a URL would read it otherwise (the sqlite driver decodes it):
  // a state-dir holding `%41` put mcmux.db in another directory, one holding `#`, `?` or `@` (a
  // template unit's StateDirectory=%N: mcmux@a) was refused as a bad upstream URL (review-h31
  // finding 3). Tab, CR and LF: the URL parser drops them.
  const path = resolvePath(stateDir, 'mcmux.db').replace(/[%#?@\t\n\r]/g, (c) => encodeURIComponent(c));
  return ['memory://', `sqlite://${path}`];
}

/**
 * systemd's $STATE_DIRECTORY: with several `StateDirectory=` entries it holds them all, joined
 * with ":" (systemd.exec(5)); mcmux keeps its state in the first (the one the unit lists first).
 */
export function stateDirectoryFromEnv(value: string | undefined): string | undefined {
  return value === undefined ? undefined : (value.split(':')[0] as string);
}

/** Every scalar key: its default, its expected form and its help line (README and --help follow). */
export const SCALAR_KEYS = {
  listen: {
    def: '127.0.0.1:11211',
    form: 'host:port or unix:/path/to.sock',
    help: 'address to listen on; repeat it (or give a TOML array) to listen on several',
  },
  'listen-mode': { def: '0666', form: 'an octal file mode such as 0660', help: 'file mode of unix sockets' },
  'write-wait': { def: 'all', form: 'all or copies', help: 'answer writes after every upstream (all) or after min-copies (copies)' },
  'min-copies': { def: 1, form: 'an integer from 1 to 64', help: 'upstreams that must store a write for the client to hear success' },
  timeout: {
    def: undefined,
    form: 'milliseconds, 1 to 600000',
    help: "default upstream request timeout (when unset, each driver's own: memcached 250)",
  },
  'max-item-size': { def: 1024 * 1024, form: 'bytes, 1024 to 1073741824', help: 'largest value accepted' },
  'max-connections': { def: 4096, form: 'an integer from 1 to 1000000', help: 'most client connections at once' },
  'allow-flush': { def: false, form: 'true or false', help: 'let clients run flush_all (it wipes every upstream, durable ones too)' },
  'log-level': { def: 'info', form: LOG_LEVELS.join(', '), help: 'log level' },
  'max-line-length': { def: 2048, form: 'bytes, 256 to 1048576', help: 'longest command line' },
  'max-keys-per-get': { def: 256, form: 'an integer from 1 to 100000', help: 'most keys in one get' },
  'max-reads-held': {
    def: 16,
    form: 'an integer from 1 to 1024',
    help: 'reads (gats too) started and not yet written out per client; with max-keys-per-get keys among them, what mcmux fetches ahead for one client',
  },
  'max-pipeline': { def: 1024, form: 'an integer from 1 to 1000000', help: 'most commands queued per client before mcmux stops reading it' },
  'max-output-bytes': {
    def: 4 * 1024 * 1024,
    form: 'bytes, 1024 to 1073741824',
    help: 'reply bytes held per client (unsent, or waiting for an earlier reply) before mcmux stops reading it',
  },
  'max-input-bytes': {
    def: 4 * 1024 * 1024,
    form: 'bytes, 1024 to 1073741824',
    help: 'value bytes of queued, unanswered commands per client before mcmux stops reading it',
  },
  metrics: {
    def: '',
    form: 'host:port, or empty for none',
    help: 'serve Prometheus metrics at /metrics and a health check at /healthz on this address',
  },
  'metrics-max-connections': {
    def: 64,
    form: 'an integer from 1 to 65536',
    help: 'most connections the metrics listener holds at once; more are closed on accept (each must send its request headers within 5 s)',
  },
  'shutdown-timeout': {
    def: 5000,
    form: 'milliseconds, 0 to 600000',
    help: 'on SIGTERM, how long clients may finish their requests before mcmux closes them',
  },
  'state-dir': {
    def: stateDirectoryFromEnv(process.env.STATE_DIRECTORY) ?? './data',
    form: 'a directory path',
    help: "where the repair journal is kept (systemd's StateDirectory when set, else ./data)",
  },
  'journal-max-keys': {
    def: 100_000,
    form: 'an integer from 1 to 100000000',
    help: 'dirty keys kept per upstream; beyond, the upstream serves no reads until known clean (also: keys a fenced upstream remembers as written, finished writes remembered for reads in flight)',
  },
  'journal-fsync': { def: 'everysec', form: 'always, everysec or no', help: 'when the repair journal file is fsynced' },
  'repair-rate': { def: 1000, form: 'an integer from 1 to 1000000', help: 'keys per second replayed into an upstream that is back' },
  'repair-flush-caches': {
    def: true,
    form: 'true or false',
    help: 'flush a cache upstream (memcached, memory) whose journal overflowed when it comes back',
  },
  'lock-fence': {
    def: 60_000,
    form: 'milliseconds, 0 to 86400000',
    help: 'how long an upstream that came back empty may not decide add/cas/incr (locks held elsewhere stay held)',
  },
  'hedge-ms': {
    def: 0,
    form: 'milliseconds, 0 to 60000 (0: off)',
    help: 'when the first upstream has not answered a read in this many ms, ask the next one too',
  },
  'down-after': { def: 3, form: 'an integer from 1 to 1000', help: 'consecutive failures or timeouts that mark an upstream down' },
  'probe-interval': { def: 200, form: 'milliseconds, 10 to 600000', help: 'first probe of a down upstream, doubling after each failed probe' },
  'probe-interval-max': { def: 5000, form: 'milliseconds, 10 to 3600000', help: 'longest wait between probes of a down upstream' },
} as const;

export type ScalarKey = keyof typeof SCALAR_KEYS;
export type RawValue = string | number | boolean | bigint;

/** Raw input: scalar keys as they came (TOML types or flag strings), and upstream entries. */
export interface RawConfig {
  scalars: Partial<Record<Exclude<ScalarKey, 'listen'>, RawValue>>;
  /** `listen` may repeat; empty when not given. */
  listen: string[];
  upstreams: UpstreamConfig[];
  /** The file the values came from (none for flags): an error in one of them names it. */
  file?: string;
}

/** A ConfigError about one scalar key: buildConfig names the file when the value came from one. */
class KeyError extends ConfigError {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

function bad(key: string, value: unknown, form: string): ConfigError {
  return new KeyError(key, `invalid ${key} "${String(value)}": expected ${form}`);
}

function int(key: ScalarKey, v: RawValue, min: number, max: number): number {
  const s = String(v);
  if (!/^[0-9]+$/.test(s) || Number(s) < min || Number(s) > max) throw bad(key, v, SCALAR_KEYS[key].form);
  return Number(s);
}

export function parseListen(v: string, key = 'listen'): ListenSpec {
  if (v.startsWith('unix:')) {
    const path = v.slice(5);
    if (!path.startsWith('/') || path.length > 100) throw bad(key, v, 'unix:/absolute/path.sock (at most 100 bytes)');
    return { kind: 'unix', path };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  const form = key === 'metrics' ? 'host:port (for example 127.0.0.1:9150)' : `${SCALAR_KEYS.listen.form} (for example 127.0.0.1:11211)`;
  if (!m || port > 65535) throw bad(key, v, form);
  return { kind: 'tcp', host: (m[1] ?? m[2]) as string, port };
}

function bool(key: ScalarKey, v: RawValue | undefined): boolean {
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw bad(key, v, 'true or false');
}

/**
 * A file mode: a string of octal digits ("0660", from a flag or a TOML string). A TOML integer
 * is refused: 0o644 and 420 arrive as the same number, and 440 may mean either base.
 */
function fileMode(v: RawValue | undefined): number {
  if (typeof v === 'string' && /^0?[0-7]{3}$/.test(v)) return parseInt(v, 8);
  if (typeof v === 'number' || typeof v === 'bigint') throw bad('listen-mode', v, 'a quoted octal file mode such as "0660" (a TOML integer is ambiguous)');
  throw bad('listen-mode', v, SCALAR_KEYS['listen-mode'].form);
}

function fsyncPolicy(v: RawValue | undefined): 'always' | 'everysec' | 'no' {
  if (v === 'always' || v === 'everysec' || v === 'no') return v;
  throw bad('journal-fsync', v, SCALAR_KEYS['journal-fsync'].form);
}

function metricsAddress(v: string): { host: string; port: number } | undefined {
  if (v === '') return undefined;
  const l = parseListen(v, 'metrics');
  if (l.kind !== 'tcp') throw bad('metrics', v, SCALAR_KEYS.metrics.form);
  return { host: l.host, port: l.port };
}

/**
 * Merges `file` under `flags` and validates the result. An error about a value the file gave (and
 * no flag overrode) names the file, as the file's own errors do: `mcmux.toml: invalid ...`.
 */
export function buildConfig(file: RawConfig, flags: RawConfig): Config {
  try {
    return validate(file, flags);
  } catch (error) {
    if (error instanceof KeyError && file.file !== undefined && fromFile(error.key, file, flags)) {
      throw new ConfigError(`${file.file}: ${error.message}`);
    }
    throw error;
  }
}

/** Whether the value of `key` buildConfig used is the file's. */
function fromFile(key: string, file: RawConfig, flags: RawConfig): boolean {
  if (key === 'listen') return flags.listen.length === 0 && file.listen.length > 0;
  return key in file.scalars && !(key in flags.scalars);
}

function validate(file: RawConfig, flags: RawConfig): Config {
  const s: Partial<Record<ScalarKey, RawValue>> = { ...file.scalars, ...flags.scalars };
  const get = <K extends ScalarKey>(k: K): RawValue | undefined => s[k] ?? SCALAR_KEYS[k].def;
  const listen = flags.listen.length > 0 ? flags.listen : file.listen.length > 0 ? file.listen : [SCALAR_KEYS.listen.def];
  const listenMode = fileMode(get('listen-mode'));
  const stateDir = String(get('state-dir'));
  // Empty would keep the repair journal in memory only: a restart would forget every dirty key.
  if (stateDir.trim() === '') throw bad('state-dir', stateDir, SCALAR_KEYS['state-dir'].form);

  const writeWait = String(get('write-wait'));
  if (writeWait !== 'all' && writeWait !== 'copies') throw bad('write-wait', writeWait, SCALAR_KEYS['write-wait'].form);
  const logLevel = String(get('log-level')) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw bad('log-level', logLevel, SCALAR_KEYS['log-level'].form);
  const timeoutRaw = get('timeout');
  const upstreams = flags.upstreams.length > 0 ? flags.upstreams : file.upstreams;
  const minCopies = int('min-copies', get('min-copies') as RawValue, 1, 64);
  const n = upstreams.length === 0 ? 2 : upstreams.length; // the embedded default has two
  if (minCopies > n) {
    throw new KeyError('min-copies', `invalid min-copies "${minCopies}": expected at most the number of upstreams (${n})`);
  }

  const listenSpecs = listen.map((l) => parseListen(l));
  const metrics = metricsAddress(String(get('metrics')));
  // The same address twice fails only at bind (exit 1; a unix path then reads as "in use by
  // another process", mcmux itself). Port 0 twice is two ephemeral ports.
  const seen = new Set<string>();
  for (const l of listenSpecs) {
    if (l.kind === 'tcp' && l.port === 0) continue;
    const a = formatListen(l);
    if (seen.has(a)) throw new KeyError('listen', `listen "${a}" is listed twice: expected each address once`);
    seen.add(a);
  }
  if (metrics && metrics.port !== 0 && seen.has(formatListen({ kind: 'tcp', ...metrics }))) {
    throw new KeyError('metrics', `metrics "${formatListen({ kind: 'tcp', ...metrics })}" is also a listen address: expected an address of its own`);
  }

  const journalMaxKeys = int('journal-max-keys', get('journal-max-keys') as RawValue, 1, 100_000_000);
  return {
    listen: listenSpecs,
    listenMode,
    upstreams,
    writeWait,
    minCopies,
    timeout: timeoutRaw === undefined ? undefined : int('timeout', timeoutRaw, 1, 600000),
    maxItemSize: int('max-item-size', get('max-item-size') as RawValue, 1024, 1024 ** 3),
    maxConnections: int('max-connections', get('max-connections') as RawValue, 1, 1_000_000),
    allowFlush: bool('allow-flush', get('allow-flush')),
    logLevel,
    maxLineLength: int('max-line-length', get('max-line-length') as RawValue, 256, 1024 * 1024),
    maxKeysPerGet: int('max-keys-per-get', get('max-keys-per-get') as RawValue, 1, 100_000),
    maxReadsHeld: int('max-reads-held', get('max-reads-held') as RawValue, 1, 1024),
    maxPipeline: int('max-pipeline', get('max-pipeline') as RawValue, 1, 1_000_000),
    maxOutputBytes: int('max-output-bytes', get('max-output-bytes') as RawValue, 1024, 1024 ** 3),
    maxInputBytes: int('max-input-bytes', get('max-input-bytes') as RawValue, 1024, 1024 ** 3),
    metrics,
    metricsMaxConnections: int('metrics-max-connections', get('metrics-max-connections') as RawValue, 1, 65_536),
    stateDir,
    journal: { maxKeys: journalMaxKeys, fsync: fsyncPolicy(get('journal-fsync')) },
    repair: { rate: int('repair-rate', get('repair-rate') as RawValue, 1, 1_000_000), flushCaches: bool('repair-flush-caches', get('repair-flush-caches')) },
    hedgeMs: int('hedge-ms', get('hedge-ms') as RawValue, 0, 60_000),
    lockFence: int('lock-fence', get('lock-fence') as RawValue, 0, 86_400_000),
    shutdownTimeout: int('shutdown-timeout', get('shutdown-timeout') as RawValue, 0, 600_000),
    health: { ...healthOf(get), fenceKeysMax: journalMaxKeys },
  };
}

function healthOf(get: (k: ScalarKey) => RawValue | undefined): Omit<Config['health'], 'fenceKeysMax'> {
  const probeMinMs = int('probe-interval', get('probe-interval') as RawValue, 10, 600_000);
  const probeMaxMs = int('probe-interval-max', get('probe-interval-max') as RawValue, 10, 3_600_000);
  // The first wait doubles up to the longest: a longest below the first is a mistake.
  if (probeMaxMs < probeMinMs) throw bad('probe-interval-max', get('probe-interval-max') as RawValue, `milliseconds, at least probe-interval (${probeMinMs})`);
  return { downAfter: int('down-after', get('down-after') as RawValue, 1, 1000), probeMinMs, probeMaxMs };
}

/** Turns a parsed TOML document into raw config; unknown keys are errors (a typo must not pass). */
export function rawFromToml(doc: Record<string, unknown>, file: string): RawConfig {
  const scalars: RawConfig['scalars'] = {};
  const upstreams: UpstreamConfig[] = [];
  const listen: string[] = [];
  for (const [key, value] of Object.entries(doc)) {
    if (key === 'listen') {
      const list = Array.isArray(value) ? value : [value];
      // Not the default 127.0.0.1:11211 in its place: an empty list is a mistake.
      if (list.length === 0) throw badIn(file, 'listen', '[]', `${SCALAR_KEYS.listen.form}, or an array of at least one`);
      for (const l of list) {
        if (typeof l !== 'string') throw badIn(file, 'listen', JSON.stringify(l), SCALAR_KEYS.listen.form);
        listen.push(l);
      }
      continue;
    }
    if (key === 'upstream') {
      if (!Array.isArray(value)) throw new ConfigError(`${file}: "upstream" must be an array of tables ([[upstream]])`);
      value.forEach((t: unknown, i) => upstreams.push(upstreamFromToml(t, `${file}: upstream #${i + 1}`)));
      continue;
    }
    if (!(key in SCALAR_KEYS)) {
      throw new ConfigError(`${file}: unknown key "${key}": expected one of ${Object.keys(SCALAR_KEYS).join(', ')}, upstream`);
    }
    const form = SCALAR_KEYS[key as ScalarKey].form;
    if (!isScalar(value)) throw badIn(file, key, JSON.stringify(value), form);
    // A path is free text: state-dir = true would make a directory named "true".
    if (key === 'state-dir' && typeof value !== 'string') throw badIn(file, key, value, 'a quoted directory path such as "/var/lib/mcmux"');
    // A number or a boolean in quotes is a mistake TOML can tell (min-copies = "1"): refused, as
    // listen-mode = 660 is the other way round.
    const kind = scalarKind(key as ScalarKey);
    if (kind === 'integer' && typeof value === 'string') throw badIn(file, key, value, `${form}, written as a TOML integer (without quotes)`);
    if (kind === 'boolean' && typeof value === 'string') throw badIn(file, key, value, 'true or false, without quotes');
    scalars[key as Exclude<ScalarKey, 'listen'>] = value;
  }
  return { scalars, listen, upstreams, file };
}

/** What a key's TOML value is: an integer, a boolean, or a string (from its default). */
function scalarKind(key: ScalarKey): 'integer' | 'boolean' | 'string' {
  if (key === 'timeout') return 'integer'; // no default
  const def: unknown = SCALAR_KEYS[key].def;
  return typeof def === 'number' ? 'integer' : typeof def === 'boolean' ? 'boolean' : 'string';
}

function badIn(file: string, key: string, value: unknown, form: string): ConfigError {
  return new ConfigError(`${file}: ${bad(key, value, form).message}`);
}

function isScalar(v: unknown): v is RawValue {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint';
}

function upstreamFromToml(t: unknown, where: string): UpstreamConfig {
  if (typeof t !== 'object' || t === null || Array.isArray(t)) throw new ConfigError(`${where}: expected a table with url = "..."`);
  const entries = Object.entries(t as Record<string, unknown>);
  const url = (t as Record<string, unknown>).url;
  if (typeof url !== 'string') throw new ConfigError(`${where}: missing url = "scheme://host:port"`);
  const options = new Map<string, string>();
  for (const [k, v] of entries) {
    if (k === 'url') continue;
    if (!isScalar(v)) throw new ConfigError(`${where}: option ${k} must be a string, number or boolean`);
    options.set(k, String(v));
  }
  return { url, options };
}
