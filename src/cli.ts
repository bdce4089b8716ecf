/**
 * The command line: the only place that reads flags, files and the environment.
 * A bad flag, URL or config value exits with status 2 and one line naming it.
 */

import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import pino from 'pino';
import { parse as parseToml } from 'smol-toml';
import { MCMUX_VERSION, buildUpstreams, startApp } from './app';
import { type Config, type RawConfig, type ScalarKey, SCALAR_KEYS, buildConfig, rawFromToml } from './config';
import { ConfigError } from './errors';
import { knownSchemes } from './upstream/registry';
import { maskUrl } from './upstream/upstream';

/** Flag name (commander's camelCase attribute) for each scalar config key. */
const FLAG_OF: Record<ScalarKey, string> = {
  listen: 'listen',
  'write-wait': 'writeWait',
  'min-copies': 'minCopies',
  timeout: 'timeout',
  'max-item-size': 'maxItemSize',
  'max-connections': 'maxConnections',
  'allow-flush': 'allowFlush',
  'log-level': 'logLevel',
  'max-line-length': 'maxLineLength',
  'max-keys-per-get': 'maxKeysPerGet',
  'max-pipeline': 'maxPipeline',
  'max-output-bytes': 'maxOutputBytes',
};

const HELP: Record<ScalarKey, string> = {
  listen: 'address to listen on (host:port)',
  'write-wait': 'answer writes after every upstream (all) or after min-copies (copies)',
  'min-copies': 'upstreams that must store a write for the client to hear success',
  timeout: 'default upstream request timeout in ms (drivers default to their own, 250 for memcached)',
  'max-item-size': 'largest value accepted, in bytes',
  'max-connections': 'most client connections at once',
  'allow-flush': 'let clients run flush_all (it wipes every upstream, durable ones too)',
  'log-level': 'fatal, error, warn, info, debug, trace or silent',
  'max-line-length': 'longest command line, in bytes',
  'max-keys-per-get': 'most keys in one get',
  'max-pipeline': 'most commands queued per client before mcmux stops reading it',
  'max-output-bytes': 'unsent reply bytes per client before mcmux stops reading it',
};

function program(): Command {
  const p = new Command('mcmux')
    .description('A memcached-protocol sidecar that replicates writes to every upstream and reads from the first that has the key.')
    .version(MCMUX_VERSION, '-V, --version')
    .option('--config <file>', 'TOML configuration file (flags override it)')
    .addOption(
      new Option('--upstream <url>', `upstream store, repeatable, in read-priority order (schemes: ${knownSchemes().join(', ')}; default: the embedded memory://)`)
        .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]),
    )
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .allowExcessArguments(false);
  for (const key of Object.keys(SCALAR_KEYS) as ScalarKey[]) {
    const { def, form } = SCALAR_KEYS[key];
    const shown = def === undefined ? '' : ` (default: ${def})`;
    const flag = key === 'allow-flush' ? `--${key}` : `--${key} <value>`;
    p.addOption(new Option(flag, `${HELP[key]}${key === 'allow-flush' ? '' : `; ${form}`}${shown}`));
  }
  return p;
}

function readConfigFile(file: string): RawConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config file "${file}": ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (error) {
    const first = String(error instanceof Error ? error.message : error).split('\n')[0];
    throw new ConfigError(`config file "${file}" is not valid TOML: ${first}`);
  }
  return rawFromToml(doc, file);
}

/** Parses argv into a validated config (throws ConfigError / CommanderError). */
export function loadConfig(argv: string[]): { config: Config; configFile: string | undefined } {
  const p = program();
  p.parse(argv, { from: 'user' });
  const opts = p.opts<Record<string, unknown>>();
  const configFile = opts.config as string | undefined;
  const file: RawConfig = configFile ? readConfigFile(configFile) : { scalars: {}, upstreams: [] };
  const flags: RawConfig = { scalars: {}, upstreams: ((opts.upstream as string[] | undefined) ?? []).map((url) => ({ url, options: new Map() })) };
  for (const key of Object.keys(SCALAR_KEYS) as ScalarKey[]) {
    const v = opts[FLAG_OF[key]];
    if (v !== undefined) flags.scalars[key] = v as string | boolean;
  }
  const config = buildConfig(file, flags);
  // Build (and drop) the upstreams once so a bad URL or option fails here, with exit status 2.
  for (const u of buildUpstreams(config)) void u.close();
  return { config, configFile };
}

export async function main(argv: string[]): Promise<void> {
  let config: Config;
  try {
    ({ config } = loadConfig(argv));
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) process.exit(0); // --help, --version
      // commander has printed its one line already.
      process.exit(2);
    }
    if (error instanceof ConfigError) {
      process.stderr.write(`mcmux: ${maskUrl(error.message)}\n`);
      process.exit(2);
    }
    throw error;
  }
  const log = pino({ level: config.logLevel, base: { pid: process.pid }, name: 'mcmux' });
  let app;
  try {
    app = await startApp(config, log);
  } catch (error) {
    log.fatal({ err: error instanceof Error ? error.message : String(error) }, 'cannot start');
    process.stderr.write(`mcmux: cannot listen on ${config.listen.host}:${config.listen.port}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting at once');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    app.close(5000).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`mcmux: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
