import { ConfigError } from '../errors';
import type { UpstreamContext } from './registry';
import type { Upstream } from './upstream';

export function createMysqlUpstream(url: URL, _options: Map<string, string>, _ctx: UpstreamContext): Upstream {
  throw new ConfigError(`upstream scheme ${url.protocol} is not implemented yet`);
}
