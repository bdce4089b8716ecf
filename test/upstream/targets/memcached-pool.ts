import { createUpstream } from '../../../src/upstream/registry';
import { type MemcachedProcess, requireBinary, startMemcached } from '../../helpers/servers';
import { CTX, type ConformanceTarget, instanceOf } from './target';

/** A pool of three memcached servers (ketama, the php-memcached session namespace) as one upstream. */
export const memcachedPoolTarget: ConformanceTarget = {
  name: 'memcached-pool',
  async start(t, maxItemSize) {
    if (!requireBinary(t, 'memcached', 'memcached')) return undefined;
    // -I: memcached's item limit must hold mcmux's largest value plus its item header.
    const args = ['-I', `${Math.max(2, Math.ceil((maxItemSize * 2) / 1048576))}m`];
    const started = await Promise.allSettled([startMemcached(args), startMemcached(args), startMemcached(args)]);
    const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(servers.map((s) => s.stop()));
      throw failed.reason;
    }
    const url = `memcached://${servers.map((s: MemcachedProcess) => `127.0.0.1:${s.port}`).join(',')}?namespace=memc.sess.key.`;
    return instanceOf(() => createUpstream(url, new Map(), CTX(maxItemSize)), async () => {
      await Promise.all(servers.map((s) => s.stop()));
    });
  },
};
