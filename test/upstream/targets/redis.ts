import type { ConformanceTarget } from './target';

// Placeholder until the redis driver lands: the cases skip (and fail under MCMUX_REQUIRE_SERVERS=1).
export const redisTarget: ConformanceTarget = {
  name: 'redis',
  async start() {
    return undefined;
  },
};
