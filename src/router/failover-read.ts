/**
 * Failover reads with read repair: asks the upstreams in priority order, each only for the keys
 * still missing; a miss or an error falls through to the next. A key found lower down is written
 * back, in the background, into the higher-priority upstreams that answered a miss for it, with
 * its remaining lifetime, and with `add` so that it never overwrites a newer value.
 * gat/gats touch on every upstream: the one that answers (in the same operation), the ones that
 * missed get the item repaired with the new deadline, the others are touched in the background.
 * gets/gats read fenced upstreams last, so the cas unique handed out is the authority's.
 *
 * An upstream is never asked for a key it is dirty for (the repair journal). A key dirty on
 * every upstream is read from the freshest copy. A key no eligible upstream answered for makes
 * the whole read a SERVER_ERROR: a miss there could log a user out or hide a live session.
 */

import { type GetCommand, type Hit, type Reply, isExpired } from '../command/command';
import type { Upstream } from '../upstream/upstream';
import type { RouterContext } from './context';
import { errorMessage, serverError } from './context';
import { McmuxError, mayLandLate, unapplied } from '../errors';
import { cameBackEmpty, isFenced, isUsable, knowsKey, repairEmptied } from './health';
import { touchedTo } from './journal';
import { emptiedFor, lackedWhereEmptied, lastsOn, sendKeyed } from './replicate-write';

/**
 * One upstream's answer. `failed`: keys it could not answer (a pool whose server for them
 * failed while the others answered), with the error: neither hits nor misses.
 */
/**
 * `unknown`: the keys of the request the upstream did not know (knowsKey) as it went out: its miss
 * of one is read before any write of it since reached the upstream (absorb).
 */
type Answer = { ok: true; hits: Map<string, Hit | undefined>; failed?: { keys: readonly string[]; error: unknown }; unknown?: ReadonlySet<string> } | { ok: false; error: unknown };

/** The keys of `keys` that `u` does not know now (knowsKey), undefined when none (unfenced). */
function unknownTo(u: Upstream, keys: readonly string[]): ReadonlySet<string> | undefined {
  if (!isFenced(u)) return undefined;
  const out = keys.filter((k) => !knowsKey(u, k));
  return out.length === 0 ? undefined : new Set(out);
}

interface ReadState {
  readonly found: Map<string, { hit: Hit; from: number }>;
  /** For each key, the upstreams that answered a miss: the read-repair targets. */
  readonly missedAt: Map<string, number[]>;
  /** Keys some eligible upstream answered for (hit or miss). */
  readonly answered: Set<string>;
  lastError: unknown;
  /**
   * Keys an upstream answered a miss for once the repair had begun flushing it (an overflowed
   * cache) since the read began (journal.repairFlushes, flushedSince): no answer. Not the misses of
   * the others (review-today finding 7: a store no flush touched answered a true miss, taken for
   * none, and a second flush left the key unanswered). The read may have left out a copy
   * dirty for the key as it began (a write on its way there) for the one the flush then emptied;
   * read once more (fuzz seed 211229).
   */
  emptied?: Set<string>;
  /** Keys a cache the repair flushed answered a miss for (absorb `empty`), and keys an upstream failed on or was not asked for (dirty there). */
  emptyMisses?: Set<string>;
  failedOn?: Set<string>;
}

/**
 * A gat that failed on `u`: journaled there, as a touch it may have missed, unless it changed
 * nothing there (unapplied: down, not connected, refused). Then a key the gat finds elsewhere is
 * touched there with the others (touchOthers, journaled if that fails); a key found nowhere is
 * left as it is: `u` may hold the only item left (the others evicted it, or the repair flushed
 * it), and journaled it would be repaired from their absence, the session deleted from the
 * durable store (review-h22 finding 3, a store down). A gat that expires the item is journaled.
 */
function gatFailed(ctx: RouterContext, cmd: GetCommand, u: Upstream, key: string, error: unknown): void {
  if (unapplied(error) && !(error as McmuxError).dropped && !isExpired(cmd.touch ?? 0, Date.now())) return;
  // With its deadline: the repair tells by it whether the gat took effect there (DirtyEntry.touched).
  // Where the gat finds the key elsewhere, touchOthers sends `u` the touch, whose outcome is
  // journaled as any copy's of an item another holds (replicate-write.ts keyedOutcome).
  ctx.journal.mark(u, key, 'write', undefined, mayLandLate(error), touchedTo(cmd.touch ?? 0));
}

export function failoverRead(ctx: RouterContext, cmd: GetCommand): Promise<Reply> {
  if (cmd.touch !== undefined) return touchingRead(ctx, cmd);
  // Writes that start while this read is in flight must keep it from read-repairing their keys.
  const seq = ctx.journal.readStarted();
  // So must the writes already in flight as it begins, though they may have settled when it ends.
  const busy = writesInFlight(ctx, cmd.keys);
  return firstHit(ctx, cmd, seq, busy) ?? finish(ctx, seq, read(ctx, cmd, seq, undefined, busy));
}

/**
 * gat/gats: a write of its keys' deadlines on the upstreams it asks, in flight (for the journal)
 * until it has sent its touches of the other copies (writes of their own) and every request it
 * made has been answered (a hedged read does not await the slower one): the router holds its
 * keys for later writes until all of these have landed (key-order.ts touching). A read that
 * overlaps it must not repair a key over it: the value another copy still holds with the old
 * deadline, written back where the gat just expired the item (or shortened its life), would
 * bring it back. Announced before this read's own sequence, and not counted by its own read
 * repair: it does not keep itself from repairing.
 */
function touchingRead(ctx: RouterContext, cmd: GetCommand): Promise<Reply> {
  const busy = writesInFlight(ctx, cmd.keys);
  const gat = new GatWrite(ctx, [...new Set(cmd.keys)]);
  const seq = ctx.journal.readStarted();
  const full = read(ctx, cmd, seq, undefined, busy, gat);
  const over = (): void => gat.over();
  full.then(over, over);
  return finish(ctx, seq, full);
}

/**
 * A gat's own write of its keys (touchingRead): announced at once, over once the read has ended
 * (`over`) and every request it sent has been answered.
 */
class GatWrite {
  /** Requests sent to upstreams and not answered yet. */
  private asking = 0;
  private ended = false;
  private done = false;

  constructor(
    private readonly ctx: RouterContext,
    private readonly keys: readonly string[],
  ) {
    for (const k of keys) ctx.journal.writeStarted(k);
  }

  sent(): void {
    this.asking++;
  }

  answered(): void {
    this.asking--;
    this.end();
  }

  /** The read has sent its touches (or ended without any). */
  over(): void {
    this.ended = true;
    this.end();
  }

  private end(): void {
    if (this.done || !this.ended || this.asking > 0) return;
    this.done = true;
    for (const k of this.keys) this.ctx.journal.writeFinished(k);
  }
}

/** Waits until the copies on their way to the upstreams `skippedAt` names for `keys` have answered, at most their timeout. */
async function copiesLanded(ctx: RouterContext, keys: readonly string[], skippedAt: ReadonlyMap<string, readonly number[]>, upstreams: readonly Upstream[], seq: number): Promise<void> {
  const waits: Array<Promise<void>> = [];
  let limit = 0;
  for (const k of keys) {
    for (const i of skippedAt.get(k) ?? []) {
      const u = upstreams[i] as Upstream;
      const w = ctx.journal.whenSettled(u, k, seq);
      if (w === undefined) continue;
      waits.push(w);
      limit = Math.max(limit, u.timeoutMs);
    }
  }
  if (waits.length === 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(waits), new Promise<void>((resolve) => (timer = setTimeout(resolve, limit)))]);
  clearTimeout(timer);
}

/**
 * Keys of `keys` with a write in flight, undefined when none (the usual case). A value the read
 * finds lower down may be one that such a write is removing (a delete applied above, refused or
 * not yet applied below): written back above, it would undo the write for good, and by the time
 * the read ends the write may have settled, so writtenSince() no longer tells.
 */
function writesInFlight(ctx: RouterContext, keys: readonly string[]): ReadonlySet<string> | undefined {
  let busy: Set<string> | undefined;
  for (const k of keys) if (ctx.journal.writesInFlight(k) > 0) (busy ??= new Set()).add(k);
  return busy;
}

/** Tells the journal the read `seq` is over once `full` settles. */
function finish(ctx: RouterContext, seq: number, full: Promise<Reply>): Promise<Reply> {
  return full.then(
    (reply) => {
      ctx.journal.readFinished(seq);
      return reply;
    },
    (error: unknown) => {
      ctx.journal.readFinished(seq);
      throw error;
    },
  );
}

/**
 * The common case, without the bookkeeping of a full read: one key (get or gets), and the first
 * upstream in order, clean for it, has it. Nothing to repair above it, no hedge, no touch.
 * Anything else (a miss, an error) is handed to the full read, with what upstream 0 answered.
 * One promise layer on top of the upstream's, no async function: this runs once per get, and
 * each layer costs the hot path a promise and a microtask.
 */
function firstHit(ctx: RouterContext, cmd: GetCommand, seq: number, busy: ReadonlySet<string> | undefined): Promise<Reply> | undefined {
  if (cmd.keys.length !== 1 || cmd.touch !== undefined || ctx.hedgeMs > 0) return undefined;
  const key = cmd.keys[0] as string;
  const u = ctx.upstreams[0];
  if (!u || ctx.journal.isDirty(u, key) || (cmd.withCas && isFenced(u))) return undefined;
  // As the request goes out: a write of the key that reaches `u` before its miss is taken says
  // nothing of what the miss read (absorb).
  const unknown = unknownTo(u, cmd.keys);
  // A plain get's hit goes to the client as it is: no cas or deadline needed (gets needs the cas).
  return u.get(cmd.keys, undefined, !cmd.withCas).then(
    (hits): Reply | Promise<Reply> => {
      const hit = hits[0];
      // Dirty for the key since the read went out (see missedMeanwhile): read elsewhere.
      if (hit && ctx.journal.isDirty(u, key, seq)) return finish(ctx, seq, read(ctx, cmd, seq, undefined, busy));
      // A miss here after the repair flushed this cache is taken (ReadState.emptied): the full
      // read asks the next upstreams only now, when one dirty as the read began is clean again
      // if the flush was allowed (journal.holdsAlone).
      if (!hit) return finish(ctx, seq, read(ctx, cmd, seq, { ok: true, hits: new Map([[key, undefined]]), unknown }, busy));
      ctx.counters.getHits++;
      ctx.journal.readFinished(seq);
      return { kind: 'values', hits: [hit] };
    },
    // Handed to the full read, so that a slow upstream is not waited for twice.
    (error: unknown) => finish(ctx, seq, read(ctx, cmd, seq, { ok: false, error }, busy)),
  );
}

/**
 * `first`: what upstream 0 already answered for a one-key read the fast path could not finish.
 * `busy`: keys with a write in flight when the read began (never read-repaired). `flushes`:
 * journal.repairFlushes when the read began (ReadState.emptied).
 */
async function read(ctx: RouterContext, cmd: GetCommand, seq: number, first?: Answer, busy?: ReadonlySet<string>, gat?: GatWrite, flushes = ctx.journal.repairFlushes): Promise<Reply> {
  const { upstreams } = ctx;
  // Each distinct key is asked for once, however often the request repeats it (T16).
  const unique = [...new Set(cmd.keys)];
  const st: ReadState = { found: new Map(), missedAt: new Map(), answered: new Set(), lastError: undefined };
  // `freshest`: asked as the freshest of copies all dirty for the key (dirty when asked too).
  const ask = (u: Upstream, keys: string[], freshest = false): Promise<Answer> => {
    // A gat's request is a write of its keys until answered, even one the read no longer awaits.
    gat?.sent();
    const since = flushes;
    const unknown = unknownTo(u, keys);
    // A cache the repair's flush emptied that does not know a key, as the gat goes out.
    const emptiedAt = cmd.touch === undefined ? undefined : keys.map((k) => emptiedFor(ctx, k));
    return u.get(keys, cmd.touch).then(
      (hits): Answer => {
        gat?.answered();
        const meanwhile = cmd.touch === undefined && !freshest ? missedMeanwhile(ctx, u, keys, hits, seq) : undefined;
        const emptied = ctx.journal.repairFlushes === since || !ctx.journal.flushedSince(u, since) ? undefined : keys.filter((_, j) => hits[j] === undefined);
        if (emptied !== undefined) for (const k of emptied) (st.emptied ??= new Set()).add(k);
        const failed = emptied === undefined || emptied.length === 0 ? meanwhile : [...(meanwhile ?? []), ...emptied];
        if (failed !== undefined) {
          const got = new Map<string, Hit | undefined>();
          keys.forEach((k, j) => {
            if (!failed.includes(k)) got.set(k, hits[j]);
          });
          return { ok: true, hits: got, failed: { keys: failed, error: new Error(`${u.name} missed a write of ${failed.join(' ')}, or was flushed by the repair, while the read was on its way`) }, unknown };
        }
        return { ok: true, hits: new Map(keys.map((k, j) => [k, hits[j]])), unknown };
      },
      (error: unknown) => {
        const partial = error instanceof McmuxError ? error.partial : undefined;
        const failedKeys = partial === undefined ? keys : partial.failed.map((j) => keys[j] as string);
        // A gat that failed may have touched the item there all the same (applied, then the
        // connection dropped or timed out), unknown to the others: that copy may now outlive
        // the item everywhere else (or expire before it). Journaled as a write it missed.
        if (cmd.touch !== undefined) {
          for (const k of failedKeys) gatFailed(ctx, cmd, u, k, error);
          // A cache the repair's flush emptied that does not know the key is no copy of its state
          // (review-h16 finding 2).
          for (const k of failedKeys) {
            const asking = lackedWhereEmptied(ctx, k, ctx.journal.nextWriteSeq() - 1, emptiedAt?.[keys.indexOf(k)]);
            // A cache past its fence's learnt keys is asked first: the gat's write of the key lasts
            // until it has answered (no repair of the key meanwhile, from that cache's miss).
            if (asking !== undefined) {
              gat?.sent();
              void asking.finally(() => gat?.answered());
            }
          }
        }
        gat?.answered();
        if (partial === undefined) return { ok: false, error };
        // A pool some of whose servers answered: their keys are answered.
        const hits = new Map<string, Hit | undefined>();
        const failed = new Set(partial.failed);
        keys.forEach((k, j) => {
          if (!failed.has(j)) hits.set(k, partial.hits[j]);
        });
        return { ok: true, hits, failed: { keys: failedKeys, error }, unknown };
      },
    );
  };

  // gets/gats hand out a cas unique: read first from the upstreams that may check it (not fenced).
  const order = upstreams.map((_, i) => i);
  if (cmd.withCas) order.sort((a, b) => Number(isFenced(upstreams[a] as Upstream)) - Number(isFenced(upstreams[b] as Upstream)));
  /** A hedged request already sent to an upstream, by index. */
  const prefetched = new Map<number, Promise<Answer>>();
  if (first) prefetched.set(0, Promise.resolve(first));
  let hedged = ctx.hedgeMs <= 0;
  const asked = new Set<string>();
  /** Per key, the upstreams (by index) the walk left out as dirty for it (see `reask` below). */
  const skippedAt = new Map<string, number[]>();
  /** Asks the upstreams in order for `keys`, then the freshest copy of those dirty on every one. */
  const walk = async (keys0: string[]): Promise<void> => {
    let missing = keys0;
    for (let pos = 0; pos < order.length && missing.length > 0; pos++) {
      const i = order[pos] as number;
      const u = upstreams[i] as Upstream;
      // A key this upstream missed a write of is not asked of it: it may be stale or deleted there.
      // Decided before the request goes out: the journal may change while it is in flight.
      const skipped = missing.filter((k) => ctx.journal.isDirty(u, k, seq));
      // Not asked, as one failing on it is not: a miss of the cache the repair flushed is no
      // answer beside it (absorb; review-h12 finding 3 with the set's timeout on the store behind
      // recorded before the read reached it, and eject fuzz seed 11553). Asked after all if clean
      // by the end of the walk (`reask` below).
      for (const k of skipped) {
        (st.failedOn ??= new Set()).add(k);
        const at = skippedAt.get(k);
        if (at === undefined) skippedAt.set(k, [i]);
        else if (!at.includes(i)) at.push(i);
      }
      const keys = skipped.length === 0 ? missing : missing.filter((k) => !skipped.includes(k));
      if (keys.length === 0) continue;
      for (const k of keys) asked.add(k);
      const pre = prefetched.get(i);
      const pending = pre ?? ask(u, keys);
      prefetched.delete(i);
      const next = order[pos + 1];
      if (!hedged && next !== undefined) {
        hedged = true;
        await hedge(ctx, pending, upstreams[next] as Upstream, next, missing, ask, prefetched, st);
        if (keys.every((k) => st.found.has(k))) {
          // The hedge found everything this upstream was asked for: its answer is not awaited.
          missing = missing.filter((k) => !st.found.has(k));
          continue;
        }
      }
      const still = skipped; // absorb() adds the keys this upstream did not have (or failed on)
      const answer = await pending;
      // A hedged request asked only for the keys clean there at the time: one cleaned since (a
      // write landed) was never asked, and its absence from the answer is not a miss.
      const got = pre !== undefined && answer.ok ? answer.hits : undefined;
      const failedThere = answer.ok ? answer.failed?.keys : undefined;
      const unasked = got ? keys.filter((k) => !got.has(k) && !failedThere?.includes(k)) : [];
      const empty = repairEmptied(u) ? u : undefined;
      if (unasked.length > 0) absorb(st, await ask(u, unasked), unasked, i, still, empty);
      absorb(st, answer, got && unasked.length > 0 ? keys.filter((k) => !unasked.includes(k)) : keys, i, still, empty);
      missing = still;
    }

    // Keys dirty on every upstream were never asked: read them from the freshest copy; from the
    // next one when the freshest turns out to have had its write undone by a late request
    // (journal.undone: a set a late flush wiped, a delete a late set put a value back over).
    // All at once: one after the other, a slow copy would cost the client a timeout per key.
    await Promise.all(
      missing
        .filter((k) => !asked.has(k))
        .map(async (key) => {
          for (let tries = 0; tries < upstreams.length; tries++) {
            const u = ctx.journal.freshest(upstreams, upstreams.filter(isUsable), key, true)?.[0];
            if (u === undefined) break;
            const answer = await ask(u, [key], true);
            if (answer.ok && ctx.journal.undone(u, key, answer.hits.get(key) !== undefined)) continue;
            if (!answer.ok && ctx.journal.unread(u, key) && (await readPast(ctx, upstreams, ask, st, u, key))) break;
            // Read past a copy lacking the key unread that is down (journal.freshest): the miss of
            // one that came back empty is no answer, as in readPast (review-h36 finding 2).
            if (answer.ok && answer.hits.get(key) === undefined && cameBackEmpty(u) && upstreams.some((o) => o !== u && ctx.journal.unread(o, key))) {
              absorb(st, { ok: false, error: new Error(`${u.name} came back empty, and a copy lacking ${key} unread cannot be read`) }, [key], upstreams.indexOf(u), []);
              break;
            }
            absorb(st, answer, [key], upstreams.indexOf(u), []);
            break;
          }
        }),
    );
  };
  await walk(unique);
  // Keys whose only misses came from answers a flush of the repair raced (ReadState.emptied): read
  // once more, from the copies clean for them now (a write the read could not take from one, on its
  // way there as the read began, may have landed since). A second such race leaves them unanswered.
  const again = st.emptied === undefined ? [] : [...st.emptied].filter((k) => !st.found.has(k) && !st.answered.has(k));
  if (again.length > 0) {
    st.emptied = undefined;
    flushes = ctx.journal.repairFlushes;
    for (const k of again) asked.delete(k);
    await walk(again);
  }

  // Keys still not found that the walk left out of an upstream as dirty for them, clean now: the
  // write it awaited has reached it (a write-wait = copies copy answered, the repair copied the
  // key), so it holds the key's current state: asked, in order, before the misses of those asked
  // instead stand for the answer. One of them may have lost the key meanwhile: a cache that
  // restarted empty after the read began, the copy left out holding the session (fuzz seed 144
  // with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1:
  // a get that began while up0's copy of an acknowledged set was on its way read the pool alone,
  // whose server restarted empty once up0 had answered; test/router/review-h13.test.ts).
  if (skippedAt.size > 0) {
    // A copy still on its way is waited for (up to that upstream's timeout: by then it has
    // answered, or failed and is journaled), not only one that has answered: else a miss that came
    // first stood (review-h19 finding 3). Only for keys found nowhere, skipped for such a copy.
    await copiesLanded(ctx, unique.filter((k) => !st.found.has(k)), skippedAt, upstreams, seq);
    for (const i of order) {
      const u = upstreams[i] as Upstream;
      const reask = unique.filter((k) => !st.found.has(k) && skippedAt.get(k)?.includes(i) === true && !ctx.journal.isDirty(u, k, seq));
      if (reask.length === 0) continue;
      absorb(st, await ask(u, reask), reask, i, [], repairEmptied(u) ? u : undefined);
    }
  }

  // A miss of a cache the repair flushed answers where no upstream failed on the key (absorb).
  for (const k of st.emptyMisses ?? []) if (!st.failedOn?.has(k)) st.answered.add(k);
  const unanswered = unique.find((k) => !st.answered.has(k) && !st.found.has(k));
  if (unanswered !== undefined) {
    // A gat touched the keys it found where it found them: the other copies get the touch all the
    // same (or are journaled), or they keep the old deadline, clean, and serve the item once that
    // copy has expired it (review-h5 finding 4: a multi-key gat whose other key was unanswered).
    if (cmd.touch !== undefined) for (const [key, { from }] of st.found) touchOthers(ctx, key, cmd.touch, from, st.missedAt.get(key));
    gat?.over();
    return serverError(`no upstream answered for a key: ${errorMessage(st.lastError ?? new Error('every copy is being repaired'))}`);
  }

  // A gat has every answer it waits for: its own write of the keys ends once its touches of the
  // other copies are sent, so that the key stays held for later writes until they have landed
  // (key-order.ts touching). Its own write does not keep it from read-repairing (`own`).
  // A gat's hit on a copy where a request that may still land would undo its touch (a set of the
  // key that timed out, carrying its own deadline; a flush) is not answered: the item would be
  // served past the deadline the client was given, as for a touch (replicate-write.ts counted).
  let undone: string | undefined;
  for (const [key, { hit, from }] of st.found) {
    const above = st.missedAt.get(key);
    // Decided before a gat's touches of the key go out: writes of its own, which the repair
    // would otherwise take for a client's write racing its add, and journal its targets for.
    const mend = above !== undefined && !busy?.has(key) && repairable(ctx, key, hit, seq, gat === undefined ? 0 : 1);
    if (cmd.touch !== undefined) {
      touchOthers(ctx, key, cmd.touch, from, above);
      if (ctx.journal.untrusting && !lastsOn(ctx, upstreams[from] as Upstream, key, true)) undone ??= key;
    }
    if (mend) repair(ctx, key, hit, above, seq);
  }
  gat?.over();
  if (undone !== undefined) return serverError(`the touch of a key may be undone by a request that timed out and may still land: ${undone}`);

  const hits = cmd.keys.map((k) => st.found.get(k)?.hit);
  for (const h of hits) {
    if (h) ctx.counters.getHits++;
    else ctx.counters.getMisses++;
  }
  return { kind: 'values', hits };
}

/**
 * The keys `u` found (`hits`) that it became dirty for while the read was on its way, undefined
 * when none (the usual case). Its copy may be what the journal says it missed: a conditional
 * command that timed out there, applied all the same, then decided otherwise by the next
 * upstream (an add answered NOT_STORED whose value a read sent to the first upstream behind it
 * served: fuzz seed 166197 with MCMUX_FUZZ_INITIAL=1 MCMUX_FUZZ_FLUSH=1). Such a key is neither a
 * hit nor a miss there: it is read from the next upstream, as one `u` failed on.
 */
function missedMeanwhile(ctx: RouterContext, u: Upstream, keys: readonly string[], hits: ReadonlyArray<Hit | undefined>, seq: number): string[] | undefined {
  let out: string[] | undefined;
  for (let j = 0; j < keys.length; j++) {
    const k = keys[j] as string;
    if (hits[j] !== undefined && ctx.journal.isDirty(u, k, seq)) (out ??= []).push(k);
  }
  return out;
}

/**
 * A copy lacking `key` unread (DirtyEntry.asks), `unread`, failed the read: the next copy by the
 * ranking answers, its hit or its miss, unless it came back empty (its miss is then no answer: the
 * lock the unread copy alone holds). True when it answered (review-h33 finding 3: a session the
 * store behind held was unreadable while the cache failed that key's reads).
 */
async function readPast(ctx: RouterContext, upstreams: readonly Upstream[], ask: (u: Upstream, keys: string[], freshest?: boolean) => Promise<Answer>, st: ReadState, unread: Upstream, key: string): Promise<boolean> {
  const rest = upstreams.filter((x) => x !== unread);
  const next = ctx.journal.freshest(rest, rest.filter(isUsable), key)?.[0];
  // Only to a copy that missed nothing but touches: one that missed a write may be older than the
  // unread copy (review-h36 finding 1).
  if (next === undefined || !ctx.journal.passable(next, key)) return false;
  const answer = await ask(next, [key], true);
  if (!answer.ok || (answer.hits.get(key) === undefined && cameBackEmpty(next))) return false;
  absorb(st, answer, [key], upstreams.indexOf(next), []);
  return true;
}

/**
 * Takes one upstream's answer for `keys` into the read: hits found, misses noted, errors kept.
 * `empty`: the repair's flush emptied the upstream (an overflowed cache, flushed on the word that
 * the others hold what it held; HealthyUpstream.repairEmptied): its miss of a key not written to
 * it since (knowsKey) answers only if no upstream failed on the key (unanswered): with one that
 * may hold it failing, the read fails rather than say the key is absent. Not a store that came
 * back empty by itself (a restart: memory:// as mcmux starts): its miss answers as any, as it
 * would once its fence is over (fuzz seed 4100 with MCMUX_FUZZ_POOL=1
 * MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1: the repair flushed the pool while the store
 * holding the session was paused, and the read took the pool's miss: a session read as absent,
 * which PHP then writes back empty).
 */
function absorb(st: ReadState, answer: Answer, keys: readonly string[], i: number, still: string[], empty?: Upstream): void {
  if (!answer.ok) {
    st.lastError = answer.error;
    for (const k of keys) if (!st.found.has(k) && !still.includes(k)) still.push(k);
    for (const k of keys) (st.failedOn ??= new Set()).add(k);
    return;
  }
  const failed = answer.failed;
  if (failed !== undefined) st.lastError = failed.error;
  for (const key of keys) {
    if (failed?.keys.includes(key)) {
      if (!st.found.has(key) && !still.includes(key)) still.push(key);
      (st.failedOn ??= new Set()).add(key);
      continue;
    }
    const hit = answer.hits.get(key);
    // Known as the request went out and still (a set of the key that reached it after it read
    // the miss, answered first, says nothing of the miss: review-h12 finding 3).
    if (hit || empty === undefined || (knowsKey(empty, key) && answer.unknown?.has(key) !== true)) st.answered.add(key);
    else (st.emptyMisses ??= new Set()).add(key);
    if (hit) {
      if (!st.found.has(key)) st.found.set(key, { hit, from: i });
      continue;
    }
    if (!st.found.has(key) && !still.includes(key)) still.push(key);
    const list = st.missedAt.get(key);
    if (list) list.push(i);
    else st.missedAt.set(key, [i]);
  }
}

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
  st: ReadState,
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
    if (hit && !st.found.has(k)) {
      st.found.set(k, { hit, from: nextIndex });
      st.answered.add(k);
      ctx.counters.hedgeWins++;
    }
  }
}

/**
 * Whether to read-repair `key`. Not when a write of the key is in flight or started after the
 * read began (the value found may be gone: a delete that raced the read must not be undone), nor
 * when a flush_all came in since the read began (the value found may be one it emptied:
 * journal.flushBegan and flushEnded). `own`: the reader's own writes of the key in flight (a gat's).
 */
function repairable(ctx: RouterContext, key: string, hit: Hit, seq: number, own: number): boolean {
  return !isExpired(hit.deadline, Date.now()) && !ctx.journal.writtenSince(key, seq, own);
}

/**
 * Read repair, once repairable() said so: when a write starts while the `add` is in flight, or
 * the `add` fails (it may still be applied), the target is journaled, since the `add` may land
 * after it. Writes that started before the adds are sent (a gat's touches of the other copies)
 * do not count: repairable() allowed only the reader's own.
 */
function repair(ctx: RouterContext, key: string, hit: Hit, targets: number[], seq: number): void {
  const since = ctx.journal.nextWriteSeq() - 1;
  for (const i of targets) {
    const u = ctx.upstreams[i] as Upstream;
    // Not while a flush_all is pending or running (it waits for the read repairs in flight); a
    // read that began before one was answered does not get here (writtenSince).
    if (!ctx.journal.backgroundStarted()) return;
    ctx.counters.readRepairs++;
    ctx.journal.readStarted(seq); // keeps the writes since the read remembered until the add is done
    u.store({ mode: 'add', key, value: hit.value, flags: hit.flags, deadline: hit.deadline, withCas: false })
      .then(
        () => {
          if (ctx.journal.startedSince(key, since)) ctx.journal.mark(u, key, 'write');
        },
        (error: unknown) => {
          // A timed-out add may still be applied, even after a delete that comes later: the
          // target is journaled, and the repair copies the key's current state into it (hazard 1).
          // An add refused before it was sent (down, no connection) changed nothing.
          if (mayLandLate(error) || ctx.journal.startedSince(key, since)) ctx.journal.mark(u, key, 'write', undefined, mayLandLate(error));
          ctx.counters.readRepairFailures++;
          ctx.onBackgroundError('read repair', u, error);
        },
      )
      .finally(() => {
        ctx.journal.readFinished(seq);
        ctx.journal.backgroundFinished();
      });
  }
}

/** gat: the upstreams neither answering nor repaired (they missed) get the touch in the background. */
function touchOthers(ctx: RouterContext, key: string, deadline: number, from: number, missed: number[] | undefined): void {
  const targets = ctx.upstreams.filter((_, i) => i !== from && !missed?.includes(i));
  // A flush_all is pending or running: it empties the key after this anyway (a touch that lands
  // after it finds nothing), and one waits for the writes in flight. Until it has, the others
  // still hold the item with its old deadline: journaled, so no read takes it from them (a gat
  // that expired it saw it come back, the fuzz, seed 1228), and a flush that fails there leaves
  // them to the repair. Not the repair's flush of one overflowed cache: it empties that one only,
  // maybe the copy the gat read and touched, and the others, journaled, kept the old deadline
  // with no copy left to repair them from: once every copy was dirty, the freshest served the
  // item past the gat's deadline (fuzz seed 3384 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
  // MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1). They are touched; the flush waits for it.
  if (ctx.journal.flushingAll) {
    for (const u of targets) ctx.journal.mark(u, key, 'write');
    return;
  }
  // A write like any other while it lands: reads in flight must not repair over it, and the
  // key's next conditional command waits for it (key-order.ts).
  if (targets.length === 0) return;
  const { seq } = sendKeyed(ctx, 'touch', key, targets, (u) => u.touch(key, deadline), deadline);
  // The gat answers before they do: until each has, no read takes the key from it (the item
  // there has the old deadline: a gat that expired it would see it come back). One that expires
  // it is not waited for by a read that finds the key nowhere (it can only make it miss there).
  const removes = isExpired(deadline, Date.now());
  for (const u of targets) ctx.journal.markPending(u, key, seq, removes);
}
