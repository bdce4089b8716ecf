/**
 * Who decides for a key: the order in which upstreams may act as the authority for conditional
 * commands — clean (not in the repair journal) and warm (not fenced); fenced ones only when every
 * upstream is fenced; dirty ones only when every upstream is dirty for the key, the freshest
 * first (as the repair takes it). Reads that hand out a cas unique and writes that answer with
 * one use the same order, so the unique a client gets belongs to the upstream that will check it.
 */

import type { Upstream } from '../upstream/upstream';
import type { RouterContext } from './context';
import { cameBackEmpty, emptyUntil, fencedUntil, isFenced, knowsKey, onlyLearntFor, partlyEmptyFor, stoppedLearning } from './health';

export function authorityOrder(ctx: RouterContext, key: string): number[] {
  const good: number[] = [];
  let known: number[] | undefined;
  let fenced: number[] | undefined;
  let warm = false;
  /**
   * Some upstream is fenced only as a precaution (it reconnected), or came back empty and stopped
   * learning which keys were written to it since (journal-max-keys): it may hold what others lost.
   * Or came back empty in part only, on a server other than the key's (partlyEmptyFor).
   */
  let maybeFull = false;
  ctx.upstreams.forEach((u: Upstream, i) => {
    const f = isFenced(u);
    if (!f) warm = true;
    else if (!onlyLearntFor(u, key)) maybeFull = true;
    if (ctx.journal.isDirty(u, key)) return;
    if (!f) good.push(i);
    // A fenced upstream that a client's set or delete of the key reached since it came back
    // holds the key's current state: it may decide, after the warm ones.
    else if (knowsKey(u, key)) (known ??= []).push(i);
    else (fenced ??= []).push(i);
  });
  if (known !== undefined) return good.concat(known);
  if (good.length > 0) return good;
  // A fenced upstream came back empty: for a key it has not been written since, it decides only
  // when every upstream came back empty. While a warm one exists, even a failing or dirty one, it
  // may hold a lock the fenced one forgot (hazard 2): nobody decides until the fence ends
  // (lock-fence) or the warm one is usable and clean again. Every upstream fenced: one fenced only
  // as a precaution (a reconnect whose marker check has not answered yet) stands for a warm one
  // to those known to have come back empty, which decide only when every upstream did. So does
  // one that came back empty and stopped learning the keys written to it since (fuzz seed 148953
  // with MCMUX_FUZZ_INITIAL=1 MCMUX_FUZZ_FLUSH=1, journal-max-keys 2: both stores had come back
  // empty, the one holding a set of the key had stopped learning, and the other, empty since,
  // decided a decr NOT_FOUND). One fenced only as a precaution goes before it: that one lost
  // nothing it is known of, the other everything written before it came back (fuzz seed 151163
  // with the same modes, journal-max-keys 1: the second store reconnected, unverifiable after a
  // flush_all had taken its marker; the first came back empty and stopped learning; it decided
  // an incr of a counter the second held: NOT_FOUND, and the counter started again). Of those that
  // came back empty, the one that did so first goes first: it got every write the later ones
  // lost when they did (fuzz seed 155783 with the same modes: three stores came back empty and
  // stopped learning; the first had been emptied last, by the repair's flush of its overflowed
  // journal, after an add of a lock the two others took, and decided a cas with it NOT_FOUND).
  // One fenced as a precaution goes first only if that fence (or its last extension) began no
  // later than the others came back empty: fenced since after, it may have come back empty itself
  // after them (then they held what it lost: a store restarts only while another holds the current
  // data), or not (then it holds what they lost), and nobody can tell until its marker check
  // answers: nobody decides meanwhile (fuzz seed 180239 with MCMUX_FUZZ_SMALL_JOURNAL=1
  // MCMUX_FUZZ_RESTART=1: the first store came back empty under one process and stopped learning;
  // every key was written to it again, then the second restarted empty as the next process
  // started, which inherited the first's fence as come back empty (journal.log B line), fenced
  // the second as a precaution, and let it decide a cas before its check answered: NOT_FOUND).
  if (fenced !== undefined) {
    if (warm) return [];
    const ups = ctx.upstreams as readonly Upstream[];
    // Every one came back empty and holds, as far as this process knows, nothing of the key: the
    // one that did so first goes first all the same, not the chain order. It may hold the key
    // after all, written there by a process before this one under a fence no marker names (its
    // first look could not read the marker, and it was gone before its next check), which the
    // later ones lost when they did (fuzz seed 311928; fuzz-seed-311928.test.ts).
    if (!maybeFull) return [...fenced].sort((a, b) => emptyUntil(ups[a] as Upstream) - emptyUntil(ups[b] as Upstream));
    const full = fenced.filter((i) => !onlyLearntFor(ups[i] as Upstream, key));
    // One that came back empty in part only (a server of a pool, a master of a cluster) goes first
    // for a key not placed on the server that did (partlyEmptyFor): its other servers hold every
    // key of theirs, which a store emptied whole lost, whenever it did (review-h36 finding 5: after
    // an mcmux restart both were inherited as come back empty, and the store, emptied first,
    // decided the counter and the lock the pool's other server held).
    const partly = (i: number): number => (partlyEmptyFor(ups[i] as Upstream, key) ? 0 : 1);
    const emptied = full.filter((i) => cameBackEmpty(ups[i] as Upstream)).sort((a, b) => partly(a) - partly(b) || emptyUntil(ups[a] as Upstream) - emptyUntil(ups[b] as Upstream));
    // Not past one emptied whole before it that stopped learning (fenceKeysMax): that one may hold,
    // unknown, a key written to it since it came back that the partly one's emptied server lost
    // since, as the partly one holds the keys of its other servers that it lost. Neither may then
    // decide a key neither knows: nobody does until the fences end (review-h38 finding 2: the pool
    // decided first, add STORED and decr NOT_FOUND of a lock and a counter b held).
    const stopped = (i: number): boolean => stoppedLearning(ups[i] as Upstream);
    if (emptied.some((i) => partly(i) === 0 && emptied.some((j) => partly(j) === 1 && stopped(j) && emptyUntil(ups[j] as Upstream) < emptyUntil(ups[i] as Upstream)))) return [];
    const precautions = full.filter((i) => !cameBackEmpty(ups[i] as Upstream));
    const lastPrecaution = Math.max(0, ...precautions.map((i) => fencedUntil(ups[i] as Upstream)));
    if (emptied.some((i) => emptyUntil(ups[i] as Upstream) < lastPrecaution)) return [];
    return precautions.concat(emptied);
  }
  // Dirty everywhere: the freshest copy decides. A dirty upstream never decides while a clean
  // one exists, even a down one: it may hold a lock that was released, or lack one that is held.
  const freshest = ctx.journal.freshest(ctx.upstreams, ctx.upstreams, key) ?? [];
  return freshest.map((u) => ctx.upstreams.indexOf(u));
}
