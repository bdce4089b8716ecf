import type { ConformanceTarget } from './target';

// Placeholder until the sqlite driver lands: the cases skip (and fail under MCMUX_REQUIRE_SERVERS=1).
export const sqliteTarget: ConformanceTarget = {
  name: 'sqlite',
  async start() {
    return undefined;
  },
};
