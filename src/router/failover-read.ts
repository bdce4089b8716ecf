/**
 * Failover reads with read repair: asks the upstreams in priority order, each only for the keys
 * still missing; a miss or an error falls through to the next. A key found lower down is written
 * back, in the background, into the higher-priority upstreams that answered a miss for it, with
 * its remaining lifetime, and with `add` so that it never overwrites a newer value.
 * gat/gats touch on every upstream: the one that answers (in the same operation), the ones that
 * missed get the item repaired with the new deadline, the others are touched in the background.
 * gets/gats read fenced upstreams last, so the cas unique handed out is the authority's.
 */

import { type GetCommand, type Hit, type Reply, isExpired } from '../command/command';
import type { Upstream } from '../upstream/upstream';
import type { RouterContext } from './context';
import { isFenced } from './health';
import { errorMessage, serverError } from './context';

export async function failoverRead(ctx: RouterContext, cmd: GetCommand): Promise<Reply> {
  const { upstreams } = ctx;
  // Each distinct key is asked for once, however often the request repeats it (T16).
  const unique = [...new Set(cmd.keys)];
  const found = new Map<string, { hit: Hit; from: number }>();
  /** For each key, the upstreams that answered a miss: the read-repair targets. */
  const missedAt = new Map<string, number[]>();
  let missing = unique;
  let answered = 0;
  let lastError: unknown;

  // gets/gats hand out a cas unique: read first from the upstreams that may check it (not fenced).
  const order = upstreams.map((_, i) => i);
  if (cmd.withCas) order.sort((a, b) => Number(isFenced(upstreams[a] as Upstream)) - Number(isFenced(upstreams[b] as Upstream)));
  // Two passes: the first skips the upstreams a key is dirty on; a key dirty on every upstream
  // (every copy of its last write failed) is then read from the first that answers, the one the
  // repair takes as the truth.
  for (const skipDirty of [true, false]) {
    const asked = new Set<string>();
    for (const i of order) {
      if (missing.length === 0) break;
      const u = upstreams[i] as Upstream;
      // A key this upstream missed a write of is not asked of it: it may be stale or deleted there.
      const ask = skipDirty ? missing.filter((k) => !ctx.journal.isDirty(u, k)) : missing;
      if (ask.length === 0) continue;
      for (const k of ask) asked.add(k);
      let hits: Array<Hit | undefined>;
      try {
        hits = await u.get(ask, cmd.touch);
      } catch (error) {
        lastError = error;
        continue;
      }
      answered++;
      const still = skipDirty ? missing.filter((k) => ctx.journal.isDirty(u, k)) : [];
      ask.forEach((key, j) => {
        const hit = hits[j];
        if (hit) {
          found.set(key, { hit, from: i });
        } else {
          still.push(key);
          const list = missedAt.get(key);
          if (list) list.push(i);
          else missedAt.set(key, [i]);
        }
      });
      missing = still;
    }
    missing = missing.filter((k) => !asked.has(k));
    if (missing.length === 0) break;
  }

  if (answered === 0 && lastError !== undefined) {
    return serverError(`no upstream answered: ${errorMessage(lastError)}`);
  }

  for (const [key, { hit, from }] of found) {
    const above = missedAt.get(key);
    if (above) repair(ctx, key, hit, above);
    if (cmd.touch !== undefined) touchOthers(ctx, key, cmd.touch, from, above);
  }

  const hits = cmd.keys.map((k) => found.get(k)?.hit);
  for (const h of hits) {
    if (h) ctx.counters.getHits++;
    else ctx.counters.getMisses++;
  }
  return { kind: 'values', hits };
}

function repair(ctx: RouterContext, key: string, hit: Hit, targets: number[]): void {
  if (isExpired(hit.deadline, Date.now())) return;
  for (const i of targets) {
    const u = ctx.upstreams[i] as Upstream;
    ctx.counters.readRepairs++;
    u.store({ mode: 'add', key, value: hit.value, flags: hit.flags, deadline: hit.deadline }).catch((error: unknown) => {
      ctx.counters.readRepairFailures++;
      ctx.onBackgroundError('read repair', u, error);
    });
  }
}

/** gat: the upstreams neither answering nor repaired (they missed) get the touch in the background. */
function touchOthers(ctx: RouterContext, key: string, deadline: number, from: number, missed: number[] | undefined): void {
  ctx.upstreams.forEach((u, i) => {
    if (i === from || missed?.includes(i)) return;
    u.touch(key, deadline).catch((error: unknown) => {
      ctx.journal.mark(u, key, 'write');
      ctx.counters.replicationFailures++;
      ctx.onBackgroundError('touch', u, error);
    });
  });
}
