/**
 * Wires a validated `Config` into a running proxy: upstreams from the scheme table, the router,
 * the listener. Used by the CLI and, in-process, by the tests.
 */

import type { Logger } from 'pino';
import { type Config, EMBEDDED_DEFAULT } from './config';
import { Router } from './router/router';
import { Listener } from './server/listener';
import { createUpstream } from './upstream/registry';
import type { Upstream } from './upstream/upstream';

export const MCMUX_VERSION: string = (require('../../package.json') as { version: string }).version;

export interface RunningApp {
  readonly address: { host: string; port: number };
  readonly router: Router;
  readonly listener: Listener;
  /** Stops accepting, waits up to `graceMs` for clients to leave, then closes everything. */
  close(graceMs?: number): Promise<void>;
}

export function buildUpstreams(config: Config): Upstream[] {
  const ctx = { defaultTimeoutMs: config.timeout, maxItemSize: config.maxItemSize };
  const specs = config.upstreams.length > 0
    ? config.upstreams
    : EMBEDDED_DEFAULT.map((url) => ({ url, options: new Map<string, string>() }));
  return specs.map((s) => createUpstream(s.url, s.options, ctx));
}

export async function startApp(config: Config, log: Logger): Promise<RunningApp> {
  const upstreams = buildUpstreams(config);
  if (config.upstreams.length === 0) {
    log.warn({ upstreams: EMBEDDED_DEFAULT }, 'no upstream configured: running on the embedded default');
  }
  let router: Router | undefined;
  const listener = new Listener(
    () => router as Router,
    {
      maxLineLength: config.maxLineLength,
      maxItemSize: config.maxItemSize,
      maxKeysPerGet: config.maxKeysPerGet,
      maxPipeline: config.maxPipeline,
      maxOutputBytes: config.maxOutputBytes,
    },
    config.maxConnections,
    MCMUX_VERSION,
  );
  router = new Router(
    { upstreams, minCopies: config.minCopies, writeWait: config.writeWait, allowFlush: config.allowFlush },
    listener,
    (what, u, error) => log.debug({ upstream: u.name, err: error instanceof Error ? error.message : String(error) }, `${what} failed`),
  );
  let address;
  try {
    address = await listener.listen(config.listen);
  } catch (error) {
    await Promise.all(upstreams.map((u) => u.close()));
    throw error;
  }
  log.info(
    { listen: `${address.host}:${address.port}`, upstreams: upstreams.map((u) => u.name), writeWait: config.writeWait, minCopies: config.minCopies },
    'mcmux listening',
  );
  const r = router;
  return {
    address,
    router: r,
    listener,
    async close(graceMs = 0) {
      const closed = listener.close(false);
      if (graceMs > 0) {
        await Promise.race([closed, new Promise((res) => setTimeout(res, graceMs).unref())]);
      }
      await listener.close(true);
      await Promise.all(r.upstreams.map((u) => u.close()));
    },
  };
}
