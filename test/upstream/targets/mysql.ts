import type { ConformanceTarget } from './target';

// Placeholder until the mysql driver lands: the cases skip (and fail under MCMUX_REQUIRE_SERVERS=1).
export const mysqlTarget: ConformanceTarget = {
  name: 'mysql',
  async start() {
    return undefined;
  },
};
