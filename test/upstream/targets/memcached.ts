import { createMemcachedUpstream } from '../../../src/upstream/memcached';
import { requireBinary, startMemcached } from '../../helpers/servers';
import { CTX, type ConformanceTarget, instanceOf } from './target';

export const memcachedTarget: ConformanceTarget = {
  name: 'memcached',
  async start(t, maxItemSize) {
    if (!requireBinary(t, 'memcached', 'memcached')) return undefined;
    // -I: memcached's item limit must hold mcmux's largest value plus its item header.
    const server = await startMemcached(['-I', `${Math.max(2, Math.ceil((maxItemSize * 2) / 1048576))}m`]);
    return instanceOf(() => createMemcachedUpstream(new URL(server.url), new Map(), CTX(maxItemSize)), () => server.stop());
  },
};
