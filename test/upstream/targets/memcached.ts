import { createMemcachedUpstream } from '../../../src/upstream/memcached';
import type { Upstream } from '../../../src/upstream/upstream';
import { requireBinary, startMemcached } from '../../helpers/servers';
import { CTX, type ConformanceTarget } from './target';

export const memcachedTarget: ConformanceTarget = {
  name: 'memcached',
  async start(t, maxItemSize) {
    if (!requireBinary(t, 'memcached', 'memcached')) return undefined;
    // -I: memcached's item limit must hold mcmux's largest value plus its item header.
    const server = await startMemcached(['-I', `${Math.max(2, Math.ceil((maxItemSize * 2) / 1048576))}m`]);
    const clients: Upstream[] = [];
    const make = (): Upstream => {
      const u = createMemcachedUpstream(new URL(server.url), new Map(), CTX(maxItemSize));
      clients.push(u);
      return u;
    };
    const upstream = make();
    return {
      upstream,
      second: make,
      async stop() {
        await Promise.all(clients.map((c) => c.close()));
        await server.stop();
      },
    };
  },
};
