import { createMemoryUpstream } from '../../../src/upstream/memory';
import { CTX, type ConformanceTarget } from './target';

export const memoryTarget: ConformanceTarget = {
  name: 'memory',
  async start(_t, maxItemSize) {
    const upstream = createMemoryUpstream(new URL('memory://'), new Map(), CTX(maxItemSize));
    // One process, one store: the "second client" is the same object, as in production.
    return { upstream, second: () => upstream, stop: () => upstream.close() };
  },
};
