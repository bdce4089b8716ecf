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

type Answer = { ok: true; hits: Map<string, Hit | undefined> } | { ok: false; error: unknown };

/**
 * Hedged read (`hedge-ms`): when the first upstream has not answered within hedge-ms, the next
 * one is asked too, for every key still missing. If it answers first, its hits are taken at once
 * (the first hit to arrive wins); the first upstream's answer is still awaited for the other keys.
 * Its request is kept in `prefetched`, so the next hop of the read does not ask again.
 */
async function hedge(
  ctx: RouterContext,
  first: Promise<Answer>,
  next: Upstream,
  nextIndex: number,
  missing: readonly string[],
  ask: (u: Upstream, keys: string[]) => Promise<Answer>,
  prefetched: Map<number, Promise<Answer>>,
  found: Map<string, { hit: Hit; from: number }>,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = await Promise.race([
    first.then(() => false),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), ctx.hedgeMs))),
  ]);
  clearTimeout(timer);
  if (!late) return;
  const keys = missing.filter((k) => !ctx.journal.isDirty(next, k));
  if (keys.length === 0) return;
  ctx.counters.hedges++;
  const second = ask(next, keys);
  prefetched.set(nextIndex, second);
  const winner = await Promise.race([first.then(() => undefined), second]);
  if (!winner?.ok) return;
  for (const [k, hit] of winner.hits) {
    if (hit && !found.has(k)) {
      found.set(k, { hit, from: nextIndex });
      ctx.counters.hedgeWins++;
    }
  }
}

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
  const ask = (u: Upstream, keys: string[]): Promise<Answer> =>
    u.get(keys, cmd.touch).then(
      (hits) => ({ ok: true, hits: new Map(keys.map((k, j) => [k, hits[j]])) }),
      (error: unknown) => ({ ok: false, error }),
    );
  /** A hedged request already sent to an upstream, by index. */
  const prefetched = new Map<number, Promise<Answer>>();
  let hedged = ctx.hedgeMs <= 0;

  // Two passes: the first skips the upstreams a key is dirty on; a key dirty on every upstream
  // (every copy of its last write failed) is then read from the first that answers, the one the
  // repair takes as the truth.
  for (const skipDirty of [true, false]) {
    const asked = new Set<string>();
    for (let pos = 0; pos < order.length && missing.length > 0; pos++) {
      const i = order[pos] as number;
      const u = upstreams[i] as Upstream;
      // A key this upstream missed a write of is not asked of it: it may be stale or deleted there.
      const keys = skipDirty ? missing.filter((k) => !ctx.journal.isDirty(u, k)) : missing;
      if (keys.length === 0) continue;
      for (const k of keys) asked.add(k);
      const pending = prefetched.get(i) ?? ask(u, keys);
      prefetched.delete(i);
      const next = order[pos + 1];
      if (!hedged && next !== undefined) {
        hedged = true;
        await hedge(ctx, pending, upstreams[next] as Upstream, next, missing, ask, prefetched, found);
        if (keys.every((k) => found.has(k))) {
          // The hedge found everything this upstream was asked for: its answer is not awaited.
          missing = missing.filter((k) => !found.has(k));
          continue;
        }
      }
      const answer = await pending;
      if (!answer.ok) {
        lastError = answer.error;
        continue;
      }
      answered++;
      const still = skipDirty ? missing.filter((k) => ctx.journal.isDirty(u, k)) : [];
      for (const key of keys) {
        const hit = answer.hits.get(key);
        const early = found.get(key);
        if (hit && !early) {
          found.set(key, { hit, from: i });
        } else if (!hit) {
          if (!early) still.push(key);
          const list = missedAt.get(key);
          if (list) list.push(i);
          else missedAt.set(key, [i]);
        }
      }
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
