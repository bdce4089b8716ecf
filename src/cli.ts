/**
 * The command line: the only place that reads flags, files and the environment.
 * A bad flag, URL or config value exits with status 2 and one line naming it.
 */

import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import pino from 'pino';
import { parse as parseToml } from 'smol-toml';
import { App, MCMUX_VERSION, StoppedWhileStarting, buildUpstreams, checkUpstreams, upstreamSpecs } from './app';
import { type Config, type ListenSpec, type RawConfig, type ScalarKey, SCALAR_KEYS, buildConfig, formatListen, parseListen, rawFromToml } from './config';
import { ConfigError, StoreUnavailableError } from './errors';
import { FileKindError, readRegularFile, stateDirProblem } from './files';
import { missingNodeFlags } from './node-flags';
import { CannotOpen, NotThereYet, isDriver, knownSchemes, storeIdentity } from './upstream/registry';
import { sqlitePathFromUrl } from './upstream/sqlite';
import { type Upstream, maskUrl, maskRawUrl } from './upstream/upstream';

/** commander's attribute name for a flag: `max-item-size` -> `maxItemSize`. */
function attr(key: string): string {
  return key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function program(): Command {
  const p = new Command('mcmux')
    .description('A memcached-protocol sidecar that replicates writes to every upstream and reads from the first that has the key.')
    .version(MCMUX_VERSION, '-V, --version')
    .option('--config <file>', 'TOML configuration file (flags override it)')
    .addOption(
      new Option('--upstream <url>', `upstream store, repeatable, in read-priority order (schemes: ${knownSchemes().join(', ')}; default: the embedded memory:// in front of sqlite://<state-dir>/mcmux.db)`)
        .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]),
    )
    .argument('[unexpected...]') // named in our own one-line error (loadConfig)
    .usage('[options]')
    .addHelpText(
      'after',
      [
        '',
        'Commands:',
        '  mcmux check [options]                         validate the config, probe every upstream (one line',
        '                                                each); exit status 1 when one is unusable',
        '  mcmux repair --metrics HOST:PORT [--trust N]  show the running mcmux\'s repair journal, or declare',
        '                                                upstream N clean (after flushing it)',
      ].join('\n'),
    )
    .exitOverride()
    // One line per error: no "(Did you mean ...?)" on a line of its own.
    .showSuggestionAfterError(false)
    // commander names a misspelt `--flag=URL` whole: its password is masked as in our errors.
    .configureOutput({ writeErr: (s) => process.stderr.write(maskUrl(s)) });
  for (const key of Object.keys(SCALAR_KEYS) as ScalarKey[]) {
    const { def, form, help } = SCALAR_KEYS[key];
    // metrics: '' is off (README's word), not an empty "(default: )".
    const shown = def === undefined ? '' : def === '' ? ' (default: off)' : ` (default: ${def})`;
    // --allow-flush alone means true; --allow-flush false overrides a file's true.
    const flag = key === 'allow-flush' ? `--${key} [value]` : `--${key} <value>`;
    const o = new Option(flag, `${help}; ${form}${shown}`);
    if (key === 'listen') o.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    p.addOption(o);
  }
  return p;
}

/** A config file is a few KiB; anything near this is a mistake (and is never read whole). */
const MAX_CONFIG_BYTES = 1024 * 1024;

function readConfigFile(file: string): RawConfig {
  let text: string;
  try {
    // Not readFileSync: a FIFO there would block mcmux, /dev/zero would never end.
    text = readRegularFile(file, MAX_CONFIG_BYTES).toString('utf8');
  } catch (error) {
    if (error instanceof FileKindError) throw new ConfigError(`config file "${file}" is ${error.message}: expected a TOML file of at most 1 MiB`);
    throw new ConfigError(`cannot read config file "${file}": ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (error) {
    const first = String(error instanceof Error ? error.message : error).split('\n')[0]?.replace(/^Invalid TOML document: /, '');
    // smol-toml's first line names no place ("trying to redefine an already defined ... value"):
    // the line, and the key it starts with, do.
    const line = (error as { line?: unknown }).line;
    let where = '';
    if (typeof line === 'number') {
      const key = /^\s*\[*\s*([A-Za-z0-9_.-]+|"[^"]*")/.exec(text.split('\n')[line - 1] ?? '')?.[1];
      where = ` at line ${line}${key === undefined ? '' : ` (${key})`}`;
    }
    throw new ConfigError(`config file "${file}" is not valid TOML${where}: ${first}`);
  }
  return rawFromToml(doc, file);
}

/** Parses argv into a validated config (throws ConfigError / CommanderError). */
export function loadConfig(argv: string[], create = true): { config: Config; configFile: string | undefined } {
  const p = program();
  p.parse(argv, { from: 'user' });
  const extra = p.args[0];
  if (extra !== undefined) throw new ConfigError(`unexpected argument "${maskRawUrl(extra)}": expected options only (mcmux --help), or the command check or repair first`);
  const opts = p.opts<Record<string, unknown>>();
  const configFile = opts.config as string | undefined;
  const file: RawConfig = configFile ? readConfigFile(configFile) : { scalars: {}, listen: [], upstreams: [] };
  const flags: RawConfig = {
    scalars: {},
    listen: (opts.listen as string[] | undefined) ?? [],
    upstreams: ((opts.upstream as string[] | undefined) ?? []).map((url) => ({ url, options: new Map() })),
  };
  for (const key of Object.keys(SCALAR_KEYS) as ScalarKey[]) {
    const v = opts[attr(key)];
    if (v !== undefined && key !== 'listen') flags.scalars[key] = v as string | boolean;
  }
  const config = buildConfig(file, flags);
  // The embedded default's SQLite file lives in the state-dir, and building it (below) makes the
  // state-dir: one it cannot make failed as that upstream (exit 2, a line about a sqlite:// URL
  // never configured), where with any upstream configured App's makeStateDir says it (exit 1, as
  // decided: a failed start, not a malformed value). Said as the latter (review-h31 finding 8).
  const dirProblem = create && config.upstreams.length === 0 ? stateDirProblem(config.stateDir) : undefined;
  if (dirProblem !== undefined) throw new StoreUnavailableError(`state-dir "${config.stateDir}" cannot be made (${dirProblem}): expected a directory mcmux can create and write`);
  try {
    checkUpstreamList(config, create);
  } catch (error) {
    // An error about the file's upstreams (or its listen addresses, for mcmux's own) names the
    // file, as buildConfig's errors about its values do (review-h25 finding 3).
    const fromFile = flags.upstreams.length === 0 && (file.upstreams.length > 0 || file.listen.length > 0);
    if (error instanceof ConfigError && configFile !== undefined && fromFile) throw new ConfigError(`${configFile}: ${error.message}`);
    throw error;
  }
  return { config, configFile };
}

/** Each upstream built (and dropped), each store listed once, none at mcmux's own address. */
function checkUpstreamList(config: Config, create: boolean): void {
  // Build (and drop) the upstreams once so a bad URL or option fails here, with exit status 2.
  for (const u of create ? buildUpstreams(config) : checkUpstreams(config)) if (isDriver(u)) void u.close();
  // The same store twice would count as two copies of a write (min-copies met by one store).
  const seen = new Map<string, string>();
  for (const spec of upstreamSpecs(config)) {
    const id = storeIdentity(spec.url, spec.options);
    const first = seen.get(id);
    if (first !== undefined) {
      throw new ConfigError(`upstream "${maskRawUrl(spec.url)}" is listed twice (as "${maskRawUrl(first)}" before): expected each store once`);
    }
    seen.set(id, spec.url);
  }
  refuseOwnAddress(config);
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/** 127.0.0.0/8, ::1 (and 127.x mapped into IPv6), localhost. */
function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  return LOOPBACK.has(h) || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^0{0,4}(:0{0,4}){0,6}:0{0,3}1$/.test(h);
}

/**
 * The address `host` names, canonical: an IPv4 literal in any form the resolver takes (`127.1`,
 * `0x7f.0.0.1`) as dotted quads, an IPv6 literal compressed (an IPv4-mapped one, `::ffff:127.0.0.1`,
 * as the IPv4 address it reaches), a name lowercased.
 */
function canonicalHost(host: string): string {
  const h = host.toLowerCase();
  try {
    if (isIPv6(h)) {
      const c = new URL(`http://[${h}]/`).hostname.slice(1, -1);
      const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(c);
      if (!m) return c;
      const [hi, lo] = [parseInt(m[1] as string, 16), parseInt(m[2] as string, 16)];
      return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
    }
    if (/^[0-9a-fx.]+$/.test(h)) {
      const v4 = new URL(`http://${h}/`).hostname;
      if (isIPv4(v4)) return v4;
    }
  } catch {
    // not an address: compared as a name
  }
  return h;
}

/**
 * The addresses a connection to `host` may reach: `localhost` either loopback address (the
 * resolver may give either first, and Node tries both); `0.0.0.0` and `::` are this host's
 * loopback (Linux connects to them so).
 */
function reachedAt(host: string): string[] {
  const h = canonicalHost(host);
  if (h === 'localhost') return ['127.0.0.1', '::1'];
  if (h === '0.0.0.0') return ['127.0.0.1'];
  if (h === '::') return ['::1'];
  return [h];
}

/**
 * Whether `a` (canonical) is an address of this host: loopback (127/8, ::1) or an interface's.
 * The interfaces are read over netlink, which systemd's RestrictAddressFamilies= (the shipped
 * unit's) refuses: os.networkInterfaces() then throws, and the check, a convenience, knows
 * loopback alone (review-h25 finding 5: mcmux crashed at every start, and systemd restarted it).
 */
function isOwnHostAddress(a: string): boolean {
  if (a === '::1' || /^127\.\d+\.\d+\.\d+$/.test(a)) return true;
  let interfaces: ReturnType<typeof networkInterfaces>;
  try {
    interfaces = networkInterfaces();
  } catch {
    return false;
  }
  return Object.values(interfaces).some((list) => (list ?? []).some((i) => canonicalHost(i.address) === a));
}

/**
 * Whether an upstream server at `host:port` is mcmux listening at `l`: a wildcard listen
 * (`0.0.0.0`: every IPv4 address of the host; `[::]`: every address, IPv4 too, as Node listens
 * dual-stack) is reached by any address of the host and its own name; another listen address
 * only by that address, whatever its spelling. 127.0.0.1 and ::1 are two sockets: a memcached
 * on [::1]:P is not mcmux on 127.0.0.1:P. `localhost` is taken as both, on either side.
 */
function isListenAddress(host: string, port: number, l: ListenSpec): boolean {
  if (l.kind !== 'tcp' || l.port === 0 || l.port !== port) return false;
  const to = reachedAt(host);
  const b = canonicalHost(l.host);
  if (b === '0.0.0.0' || b === '::') {
    const self = hostname().toLowerCase();
    return to.some((a) => (isIPv4(a) || (b === '::' && isIPv6(a)) ? isOwnHostAddress(a) : a === self));
  }
  const at = b === 'localhost' ? ['127.0.0.1', '::1'] : [b];
  return to.some((a) => at.includes(a));
}

/**
 * A memcached upstream at mcmux's own listen address is mcmux itself (`memcached://127.0.0.1`
 * takes the default port 11211, which mcmux listens on by default): every write would answer
 * "replies out of step" and every read miss, while `version` probes call it healthy. `listen`:
 * the addresses to check against (a reload: those mcmux listens on, which only a restart changes).
 */
function refuseOwnAddress(config: Config, listen: readonly ListenSpec[] = config.listen, until = ''): void {
  for (const spec of upstreamSpecs(config)) {
    const m = /^memcached:\/\/([^/?#]*)/i.exec(spec.url);
    if (!m) continue;
    for (const server of (m[1] as string).split(',')) {
      const hp = /^(?:\[([^\]]+)\]|([^:]*))(?::([0-9]+))?$/.exec(server);
      if (!hp) continue;
      const host = (hp[1] ?? hp[2] ?? '') as string;
      const port = hp[3] === undefined ? 11211 : Number(hp[3]);
      const own = listen.find((l) => isListenAddress(host, port, l));
      if (own) {
        throw new ConfigError(
          `upstream "${maskRawUrl(spec.url)}" is mcmux's own listen address ${formatListen(own)}${until}${hp[3] === undefined ? ' (memcached:// without a port is port 11211)' : ''}: expected a memcached server of its own`,
        );
      }
    }
  }
}

/** Exits 2 with one line for a bad flag or config value, 1 for a store that cannot be opened now; rethrows anything else. */
function exitOnConfigError(error: unknown): never {
  if (error instanceof CommanderError) {
    if (error.exitCode === 0) process.exit(0); // --help, --version
    process.exit(2); // commander has printed its one line already
  }
  if (error instanceof ConfigError) {
    // One line, whatever the value holds: a newline in it is printed as \n.
    const line = maskUrl(error.message).replace(/[\x00-\x1f\x7f]/g, (c) => JSON.stringify(c).slice(1, -1));
    process.stderr.write(`mcmux: ${line}\n`);
    process.exit(2);
  }
  if (error instanceof StoreUnavailableError) {
    // Not the config's fault (a lock held elsewhere, a failing disk): status 1, which systemd restarts.
    process.stderr.write(`mcmux: ${maskUrl(error.message).replace(/[\x00-\x1f\x7f]/g, (c) => JSON.stringify(c).slice(1, -1))}\n`);
    process.exit(1);
  }
  throw error;
}

/**
 * For check's line about a `sqlite://./` upstream: the file it looked at is in the shell's working
 * directory, and the service resolves the path against its own (the shipped unit sets no
 * WorkingDirectory=: /), so check's verdict may be about another file (review-h37 finding 6).
 */
function relativeNote(url: string | undefined): string {
  if (url === undefined || !/^sqlite:\/\/\.\//i.test(url)) return '';
  let path: string;
  try {
    path = sqlitePathFromUrl(new URL(url), 'upstream');
  } catch {
    return '';
  }
  return ` (looked at ${path}: relative to ${process.cwd()}, where the service resolves it against its own working directory, / under the shipped unit: give an absolute path)`;
}

/**
 * `mcmux check`: validates the config and probes each upstream, one line each, after a line naming
 * the state directory. It makes nothing: a file store not there yet is said so (mcmux makes it).
 */
async function check(argv: string[]): Promise<number> {
  let config: Config;
  try {
    ({ config } = loadConfig(argv, false));
  } catch (error) {
    exitOnConfigError(error);
  }
  // From a shell, without the unit's $STATE_DIRECTORY, the default is ./data: not the service's.
  const fromCwd = isAbsolute(config.stateDir) ? '' : ` (relative to ${process.cwd()}; a systemd unit's StateDirectory= is not seen from a shell: give --state-dir to check the service's)`;
  process.stdout.write(`state-dir ${resolvePath(config.stateDir)}${fromCwd}\n`);
  // What the start would refuse (review-h25 finding 2: "config ok" for a state-dir that is a file).
  const dirProblem = stateDirProblem(config.stateDir);
  if (dirProblem !== undefined) process.stdout.write(`FAILED state-dir: ${dirProblem}: expected a directory mcmux can create and write\n`);
  const built = checkUpstreams(config);
  const upstreams = built.filter(isDriver);
  const specs = upstreamSpecs(config);
  let bad = 0;
  for (const [i, u] of built.entries()) {
    const note = relativeNote(specs[i]?.url);
    if (u instanceof NotThereYet) {
      process.stdout.write(`ok     ${u.upstream}: ${u.message}${note}\n`);
      continue;
    }
    if (u instanceof CannotOpen) {
      // A lock held elsewhere, a failing disk: the start would stop (exit 1); check goes on.
      bad++;
      process.stdout.write(`FAILED ${u.upstream}: ${maskUrl(u.message)}${note}\n`);
      continue;
    }
    const limit = Math.max(1000, u.timeoutMs * 4);
    const timer = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${limit} ms`)), limit).unref());
    try {
      await Promise.race([u.probe(), timer]);
      const problem = u.writeProblem === undefined ? undefined : await Promise.race([u.writeProblem(), timer]);
      if (problem !== undefined) throw new Error(problem);
      process.stdout.write(`ok     ${u.name}${note}\n`);
    } catch (error) {
      bad++;
      process.stdout.write(`FAILED ${u.name}: ${maskUrl(error instanceof Error ? error.message : String(error))}${note}\n`);
    }
  }
  await Promise.all(upstreams.map((u) => u.close().catch(() => undefined)));
  const answer = `${upstreams.length} upstreams answer${built.length > upstreams.length ? ` (${built.length - upstreams.length} not made yet)` : ''}`;
  if (bad > 0) process.stdout.write(`${bad} of ${built.length} upstreams unusable\n`);
  else process.stdout.write(dirProblem === undefined ? `config ok, ${answer}\n` : `state-dir unusable, ${answer}\n`);
  return bad === 0 && dirProblem === undefined ? 0 : 1;
}

/**
 * `mcmux repair --metrics HOST:PORT [--trust N]`: shows the running proxy's repair journal, or
 * declares upstream N clean (after the operator flushed it) through the admin endpoint.
 */
async function repair(argv: string[]): Promise<number> {
  const p = new Command('mcmux repair')
    .requiredOption('--metrics <host:port>', 'the metrics address of the running mcmux')
    .option('--trust <upstream>', 'index or name of an upstream to declare clean')
    .exitOverride()
    .showSuggestionAfterError(false)
    .configureOutput({ writeErr: (s) => process.stderr.write(maskUrl(s)) });
  let opts: { metrics: string; trust?: string };
  try {
    opts = p.parse(argv, { from: 'user' }).opts();
    // A malformed address is a bad flag (exit 2), not an unreachable proxy (exit 1).
    if (parseListen(opts.metrics, 'metrics').kind !== 'tcp') throw new ConfigError(`invalid metrics "${opts.metrics}": expected host:port`);
  } catch (error) {
    exitOnConfigError(error);
  }
  const base = `http://${opts.metrics}`;
  const res = await fetch(opts.trust === undefined ? `${base}/admin/journal` : `${base}/admin/trust?upstream=${encodeURIComponent(opts.trust)}`, {
    method: opts.trust === undefined ? 'GET' : 'POST',
  }).catch((error: unknown) => {
    // fetch says only "fetch failed"; the cause names it (ECONNREFUSED: no mcmux serves metrics there).
    const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
    const why = cause === undefined ? '' : `: ${String(cause.code ?? cause.message)}`;
    process.stderr.write(`mcmux repair: cannot reach ${base}: ${error instanceof Error ? error.message : String(error)}${why} (is mcmux running with --metrics ${opts.metrics}?)\n`);
    process.exit(1);
  });
  process.stdout.write(await res.text());
  return res.ok ? 0 : 1;
}

/**
 * Nothing is sent to an upstream until a request needs it: one mcmux cannot use (a wrong
 * password, nothing listening, an unknown database) showed "healthy" in `stats upstreams`, the
 * metrics and /healthz, and was logged nowhere, until clients came. Each is probed once after
 * the start (and one a reload built, after it), as `mcmux check` does, and one that fails is said
 * at once (its state is left to the requests, as before).
 */
async function probeUpstreams(upstreams: readonly Upstream[], log: pino.Logger, when: string, current: () => readonly Upstream[]): Promise<void> {
  await Promise.all(
    upstreams.map(async (u) => {
      const limit = Math.max(1000, u.timeoutMs * 4);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${limit} ms`)), limit).unref();
      });
      try {
        await Promise.race([u.probe(), late]);
      } catch (error) {
        // A reload removed it meanwhile: it is in no chain (review-h25 finding 4); or mcmux stops.
        if (!current().includes(u)) return;
        log.warn({ upstream: u.name, err: maskUrl(error instanceof Error ? error.message : String(error)) }, `upstream fails its probe ${when}: it stays in the chain, and requests will find it failing`);
      } finally {
        clearTimeout(timer);
      }
    }),
  );
}

/** Descriptors mcmux holds besides its clients: listeners, upstream connections, files, the journal. */
const FD_MARGIN = 128;

/** The soft limit on open files (Linux: /proc/self/limits), if it can be read. */
export function openFileLimit(limits = '/proc/self/limits'): number | undefined {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(readFileSync(limits, 'utf8'));
    return m === null || m[1] === 'unlimited' ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/**
 * Past the open-file limit, a client's connection is accepted and reset by libuv (its EMFILE
 * reserve), with no error mcmux sees: no log line, no rejected_connections. Said at start and at
 * each reload that leaves max-connections past it.
 */
function warnOpenFileLimit(maxConnections: number, log: pino.Logger): void {
  const limit = openFileLimit();
  if (limit === undefined || maxConnections + FD_MARGIN <= limit) return;
  log.warn(
    { maxConnections, openFileLimit: limit },
    `max-connections ${maxConnections} is above what the open-file limit ${limit} allows (less about ${FD_MARGIN} for upstreams and files): clients past it are reset without a log line; raise LimitNOFILE (ulimit -n) or lower max-connections`,
  );
}

export interface MainOptions {
  /** Hands over from bin/mcmux's first-thing SIGHUP handler: whether one came meanwhile. */
  readonly sighupBeforeStart?: () => boolean;
}

export async function main(argv: string[], opts: MainOptions = {}): Promise<void> {
  if (argv[0] === 'check') {
    process.exit(await check(argv.slice(1)));
  }
  if (argv[0] === 'repair') {
    process.exit(await repair(argv.slice(1)));
  }
  let config: Config;
  let configFile: string | undefined;
  try {
    ({ config, configFile } = loadConfig(argv));
  } catch (error) {
    exitOnConfigError(error);
  }
  const log = pino({ level: config.logLevel, base: { pid: process.pid }, name: 'mcmux' });
  const missing = missingNodeFlags();
  if (missing.length > 0) {
    log.warn(
      { missing },
      `node started without ${missing.join(' ')}: after an idle period expect about twice the CPU per request (see src/node-flags.ts)`,
    );
  }
  // Node opens its inspector on 127.0.0.1:9229 at a SIGUSR1: any local user could then run code
  // as mcmux (its config's passwords, every store). memcached stops on it; SIGUSR2 would kill
  // mcmux uncleanly. Both are logged and ignored.
  for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
    process.on(signal, () => log.warn({ signal }, `${signal} ignored: SIGTERM stops mcmux, SIGHUP reloads its config`));
  }
  let app: App | undefined;
  let reloadAfterStart = false;
  const reload = (running: App): void => {
    if (!configFile) {
      log.warn('SIGHUP: no --config file to reload; nothing changed');
      return;
    }
    try {
      const before = new Set<Upstream>(running.upstreams);
      // Checked without making anything (as `mcmux check`): App.reload builds what it runs on, and
      // a state-dir the reload ignores got the embedded store made in it.
      const next = loadConfig(argv, false).config;
      // loadConfig checked the file's listen addresses; mcmux listens on its own until it restarts.
      refuseOwnAddress(next, running.bound, ' (mcmux listens there until it restarts)');
      running.reload(next);
      // A reload may raise max-connections past the open-file limit, as a start may.
      warnOpenFileLimit(next.maxConnections, log);
      void probeUpstreams(running.upstreams.filter((u) => !before.has(u)), log, 'after the reload', () => (stopping ? [] : running.upstreams));
    } catch (error) {
      const why = error instanceof CommanderError || error instanceof ConfigError ? error.message : String(error);
      log.error({ err: maskUrl(why) }, 'reload rejected; the running configuration stays');
    }
  };
  let stopping = false;
  // Before the start: a SIGHUP without a handler kills the process (systemctl start, then reload
  // at once). One that comes while starting is applied once started; one while stopping, not at
  // all (it rebuilt the chain and rewrote journal.log under the stop: review-h25 finding 6).
  process.on('SIGHUP', () => {
    if (stopping) log.warn('SIGHUP while stopping: ignored');
    else if (app) reload(app);
    else reloadAfterStart = true;
  });
  if (opts.sighupBeforeStart?.()) reloadAfterStart = true;
  // Registered before the start: one that comes while it runs (its first look at an upstream that
  // does not answer, the wait after a process that did not stop cleanly) would kill mcmux, and
  // leave journal.log as after a crash. The start is ended, what it opened closed, as any stop.
  let starting: App | undefined;
  const stop = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting at once');
      process.exit(1);
    }
    stopping = true;
    const target = app ?? starting;
    if (target === undefined) process.exit(0); // nothing opened yet
    const graceMs = target.shutdownTimeout; // as last reloaded
    log.info({ signal, graceMs, ...(app === undefined ? { starting: true } : {}) }, 'shutting down');
    target.close(graceMs).then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    starting = new App(config, log);
    await starting.start();
    app = starting;
  } catch (error) {
    // The stop's close() ends the process once what the start opened is closed.
    if (stopping && error instanceof StoppedWhileStarting) return;
    const why = error instanceof Error ? error.message : String(error);
    log.fatal({ err: why }, 'cannot start');
    process.stderr.write(`mcmux: cannot start: ${why}\n`);
    process.exit(1);
  }
  if (stopping) return; // a stop came as the start ended: close() is under way
  const running = app;
  // mcmux has no authentication (README): an address other hosts reach serves every session to them.
  const exposed = config.listen.filter((l) => l.kind === 'tcp' && !isLoopbackHost(l.host)).map(formatListen);
  if (exposed.length > 0) {
    log.warn({ listen: exposed }, 'listening on an address other hosts may reach: mcmux has no authentication, any client there reads, writes and deletes every session');
  }
  warnOpenFileLimit(config.maxConnections, log);
  if (reloadAfterStart) reload(running);
  // A stop closes the upstreams under a probe still out: that is no failure (review-h31 finding 12).
  void probeUpstreams(running.upstreams, log, 'at start', () => (stopping ? [] : running.upstreams));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`mcmux: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
