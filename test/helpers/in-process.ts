/**
 * mcmux in this process (startApp), on memory upstreams by default, listening on a free port:
 * for protocol tests that look at what reached each store. Closed after the file's tests.
 */

import { after } from 'node:test';
import pino from 'pino';
import { type App, startApp } from '../../src/app';
import { type RawConfig, buildConfig } from '../../src/config';
import type { MemoryUpstream } from '../../src/upstream/memory';

const apps: App[] = [];
after(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

export async function inProcessMcmux(scalars: RawConfig['scalars'] = {}, upstreams = ['memory://a', 'memory://b'], listen = ['127.0.0.1:0']): Promise<App> {
  const config = buildConfig(
    { scalars: {}, listen: [], upstreams: [] },
    { scalars, listen, upstreams: upstreams.map((url) => ({ url, options: new Map() })) },
  );
  const app = await startApp(config, pino({ level: 'silent' }));
  apps.push(app);
  return app;
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
