/**
 * Who decides for a key: the order in which upstreams may act as the authority for conditional
 * commands — clean (not in the repair journal) and warm (not fenced) first, then fenced, then
 * dirty ones (when every upstream is dirty, the first usable one is the truth, as the repair
 * takes it). Reads that hand out a cas unique and writes that answer with one use the same
 * order, so the unique a client gets belongs to the upstream that will check it.
 */

import type { Upstream } from '../upstream/upstream';
import type { RouterContext } from './context';
import { isFenced } from './health';

export function authorityOrder(ctx: RouterContext, key: string): number[] {
  const good: number[] = [];
  const fenced: number[] = [];
  const dirty: number[] = [];
  ctx.upstreams.forEach((u: Upstream, i) => {
    if (ctx.journal.isDirty(u, key)) dirty.push(i);
    else if (isFenced(u)) fenced.push(i);
    else good.push(i);
  });
  return good.concat(fenced, dirty);
}
