/**
 * mcmux in this process (startApp), on memory upstreams by default, listening on a free port:
 * for protocol tests that look at what reached each store. Closed after the file's tests.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, after } from 'node:test';
import pino from 'pino';
import { type App, startApp } from '../../src/app';
import { type RawConfig, buildConfig } from '../../src/config';
import type { HealthyUpstream } from '../../src/router/health';
import type { MemoryUpstream } from '../../src/upstream/memory';
import { type FaultProxy, startFaultProxy } from './fault-proxy';
import { type MemcachedProcess, startMemcacheds } from './servers';

const apps: App[] = [];
const dirs: string[] = [];
after(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function privateStateDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'mcmux-in-process-'));
  dirs.push(d);
  return d;
}

/**
 * Without a `state-dir`, a private one (removed after the file's tests): the default, ./data, is
 * shared by every test file, and a journal.log one mcmux left there (an upstream overflowed, keys
 * dirty, not closed cleanly) would change what the next one reads (review-hostile-upstream failed
 * so in a full run).
 */
export async function inProcessMcmux(scalars: RawConfig['scalars'] = {}, upstreams = ['memory://a', 'memory://b'], listen = ['127.0.0.1:0']): Promise<App> {
  const own = scalars['state-dir'] === undefined ? { 'state-dir': privateStateDir() } : {};
  const config = buildConfig(
    { scalars: {}, listen: [], upstreams: [] },
    { scalars: { ...scalars, ...own }, listen, upstreams: upstreams.map((url) => ({ url, options: new Map() })) },
  );
  const app = await startApp(config, pino({ level: 'silent' }));
  apps.push(app);
  return app;
}

/** What App.reload gets from a config file with these scalars and upstreams. */
export function reloadTo(app: App, scalars: Record<string, string>, upstreams: readonly string[]): void {
  app.reload(buildConfig({ scalars: {}, listen: [], upstreams: [] }, { scalars, listen: ['127.0.0.1:0'], upstreams: upstreams.map((url) => ({ url, options: new Map() })) }));
}

/** No request of `u` is still unanswered. */
export const idle = (u: HealthyUpstream): boolean => u.stats.requests === u.stats.latencyCount + u.stats.errors;

/**
 * Two memcached for a test (stopped after it), the first behind a fault proxy: `first` is the URL
 * of that first store through the proxy, with `query` (`?timeout=5000`) appended.
 */
export async function proxiedPair(t: TestContext, query = ''): Promise<{ mc1: MemcachedProcess; mc2: MemcachedProcess; proxy: FaultProxy; first: string }> {
  const [mc1, mc2] = (await startMemcacheds(t, 2)) as [MemcachedProcess, MemcachedProcess];
  const proxy = await startFaultProxy(mc1.port);
  t.after(() => proxy.close());
  return { mc1, mc2, proxy, first: `memcached://127.0.0.1:${proxy.port}${query}` };
}

/** The memory store behind upstream `i` of `app`. */
export const memory = (app: App, i: number): MemoryUpstream => app.upstreams[i]?.inner as MemoryUpstream;

const STORE_OPS = ['get', 'store', 'delete', 'touch', 'arith', 'flush'] as const;

/**
 * From now on, every call mcmux makes to the memory stores behind `app`, as `<upstream> <op>
 * <key...>`, leaving out the cold detector's own marker key (it reads that every few seconds).
 */
export function recordCalls(app: App): string[] {
  const calls: string[] = [];
  app.upstreams.forEach((_, i) => {
    const m = memory(app, i) as unknown as Record<(typeof STORE_OPS)[number], (...args: unknown[]) => Promise<unknown>>;
    for (const op of STORE_OPS) {
      const original = m[op].bind(m);
      m[op] = (...args: unknown[]) => {
        const a = args[0];
        const keys = op === 'arith' ? [args[1]] : Array.isArray(a) ? a : typeof a === 'string' ? [a] : a ? [(a as { key: string }).key] : [];
        if (!keys.includes(app.coldDetector.key)) calls.push([i, op, ...keys].join(' '));
        return original(...args);
      };
    }
  });
  return calls;
}
