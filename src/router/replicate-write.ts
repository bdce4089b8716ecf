/**
 * Replicated writes: sends the same write to every upstream in parallel; the client hears
 * success when at least min-copies upstreams succeeded (write-wait copies: as soon as they have;
 * write-wait all: once every upstream answered or timed out). A write that failed somewhere is
 * never reported as a miss.
 */

import { type Reply, type Status, isExpired } from '../command/command';
import { McmuxError, mayLandLate, unapplied } from '../errors';
import type { StoreRequest, StoreResult, TouchedItem, Upstream } from '../upstream/upstream';
import { authorityOrder } from './authority-order';
import { type RouterContext, refusedTooLarge, serverError, tooLargeReply } from './context';
import { type Outcome, count, failures, fanOut, firstError } from './fan-out';
import { flushedWithAll, isFenced, knowsKey, noteWritten, onlyLearnt, repairEmptied } from './health';
import { touchedTo } from './journal';

const STORED: Reply = { kind: 'status', status: 'STORED' };

/** What an upstream answers a delete or touch: a status, or the item a touch found (withItem). */
export type Keyed = Status | TouchedItem;

/** Whether `v` is `hit`, or the item a touch found (a hit with its flags and unique). */
const isHit = (v: Keyed, hit: Status): boolean => v === hit || typeof v === 'object';

/**
 * Stores `req` (a plain set) on `targets`. `copiesSoFar` counts copies already made (the
 * authority of a conditional command, `authority`), so the min-copies rule covers the whole
 * write. The answer carries a copy's unique only for a client's own set that asked for one
 * (`withCas`): otherwise the upstreams are told that nobody reads theirs.
 *
 * Success also needs a copy that a read takes (see lasting): not only copies on upstreams that
 * are not read for the key (an overflowed one that cannot learn it now), or where a flush that
 * timed out may still land and wipe it (journal.flushTimedOut), a request of a process killed
 * before this one overwrite it (journal.unknownLate), or a request of the key that timed out land
 * over it (journal.lateFor). Such copies still count toward min-copies.
 */
export function replicateSet(
  ctx: RouterContext,
  req: StoreRequest,
  targets: readonly Upstream[] = ctx.upstreams,
  copiesSoFar = 0,
  okReply: Reply = STORED,
  authority?: Upstream,
): Promise<Reply> {
  const total = targets.length + copiesSoFar;
  const min = Math.min(ctx.minCopies, total);
  // In flight until every copy has landed (write-wait copies answers before that).
  const seq = ctx.journal.writeStarted(req.key);
  const withCas = copiesSoFar === 0 && okReply === STORED && req.withCas !== false;
  const sent = withCas || req.withCas === false ? req : { ...req, withCas: false };
  const copies = fanOut<StoreResult, Reply>(
    targets,
    (u) => u.store(sent),
    (outcomes, settled) => {
      const ok = copiesSoFar + count(outcomes, (r) => r.status === 'STORED');
      if (ok >= min && (settled || ctx.writeWait === 'copies') && (!ctx.journal.untrusting || lasting(ctx, req.key, targets, outcomes, isStored, authority, true))) {
        if (!settled) markPending(ctx, targets, outcomes, req.key, seq, isExpired(req.deadline, Date.now()));
        if (!withCas) return okReply;
        // The cas a client may use next is the one the authority for this key will check.
        for (const i of authorityOrder(ctx, req.key)) {
          const o = outcomes[i];
          if (o?.ok && o.value.status === 'STORED' && o.value.cas !== undefined) return { kind: 'status', status: 'STORED', cas: o.value.cas };
        }
        return STORED;
      }
      if (!settled) return undefined;
      // Refused as too large by every store (memcached's -I below max-item-size): as memcached says it.
      if (ok === 0 && outcomes.every((o) => o !== undefined && !o.ok && refusedTooLarge(o.error))) return tooLargeReply();
      if (ok >= min) return serverError(`stored on ${ok} of ${total} upstreams, but only where a flush that timed out, a request of a process killed before this one, or a request of the key that timed out may still land over it, or where it is not read for the key (overflowed, and not able to learn it now): ${firstError(outcomes)}`);
      return serverError(`stored on ${ok} of ${total} upstreams, min-copies is ${ctx.minCopies}: ${firstError(outcomes)}`);
    },
    (u, o) => {
      ctx.journal.settled(u, req.key, seq);
      if (o.ok && o.value.status === 'STORED') {
        ctx.journal.written(u, req.key, seq);
        noteWritten(ctx.journal, u, req.key);
      } else {
        ctx.journal.mark(u, req.key, 'write', seq, !o.ok && mayLandLate(o.error));
      }
      reportLate(ctx, 'replicate', u, o, (r) => r.status === 'STORED');
    },
    () => ctx.journal.writeFinished(req.key),
  );
  // The authority of a conditional command already made min-copies: with write-wait copies the
  // client need not wait for any of the others.
  if (copiesSoFar >= min && ctx.writeWait === 'copies' && (!ctx.journal.untrusting || lasting(ctx, req.key, targets, [], isStored, authority, true))) {
    markPending(ctx, targets, [], req.key, seq, isExpired(req.deadline, Date.now()));
    return Promise.resolve(okReply);
  }
  return copies;
}

/**
 * A conditional command applied on its authority, with no other upstream to copy it to: `ok`
 * only when a read takes that copy (see lasting), else a SERVER_ERROR (it may have taken effect).
 */
export function authorityAlone(ctx: RouterContext, key: string, authority: Upstream, ok: Reply): Reply {
  if (!ctx.journal.untrusting || lasting(ctx, key, [], [], isStored, authority, true)) return ok;
  return serverError(`applied on ${authority.name} alone, where a flush or a request of the key that timed out may still land over it`);
}

/**
 * delete and touch: `hit` ('DELETED' / 'TOUCHED') when some upstream had the key, NOT_FOUND when
 * none had it. An upstream that failed has the key journaled (it is read from nowhere until
 * repaired), so its miss does not turn the answer into an error, as long as min-copies answered;
 * a delete that failed somewhere is never reported as NOT_FOUND unless the miss is journaled.
 */
export function replicateKeyed(
  ctx: RouterContext,
  what: 'delete' | 'touch',
  key: string,
  op: (u: Upstream) => Promise<Keyed>,
  hit: 'DELETED' | 'TOUCHED',
  deadline?: number,
): Promise<Reply> {
  const n = ctx.upstreams.length;
  const min = Math.min(ctx.minCopies, n);
  // An upstream dirty for the key may hold a copy that was deleted: its "I had it" says nothing.
  const dirty = ctx.upstreams.map((u) => ctx.journal.isDirty(u, key));
  // Dirty everywhere: only the freshest copy speaks for the key.
  let freshest = dirty.every(Boolean) ? ctx.journal.freshest(ctx.upstreams, ctx.upstreams, key)?.[0] : undefined;
  const seq = ctx.journal.writeStarted(key);
  // Emptied by the repair's flush, and not written the key since (before this request reached it).
  const emptiedAt = emptiedFor(ctx, key);
  const emptied = ctx.upstreams.map((u) => emptiedAt?.upstreams.includes(u) === true);
  let writtenSince = false;
  const outcome = keyedOutcome(ctx, what, key, seq, what === 'touch' ? { present: false, missed: [], failed: [], dated: [], current: (u) => !dirty[ctx.upstreams.indexOf(u)] || u === freshest, deadline: deadline ?? 0 } : undefined);
  return fanOut(
    ctx.upstreams,
    op,
    (outcomes, settled) => {
      // Whether upstream i holds the key's current state (clean for it, or the freshest copy).
      const current = (i: number): boolean => (freshest ? ctx.upstreams[i] === freshest : !dirty[i]);
      // A touch's answer is only as good as the copy that gave it; a delete removed whatever it found.
      const trusted = (i: number): boolean => what === 'delete' || current(i);
      const hits = outcomes.filter((o, i) => o?.ok && isHit(o.value, hit) && trusted(i)).length;
      const answered = count(outcomes, () => true);
      if (hits > 0 && answered >= min && (settled || ctx.writeWait === 'copies') && counted(ctx, what, key, outcomes, trusted)) {
        if (!settled) markPending(ctx, ctx.upstreams, outcomes, key, seq, what === 'delete' || isExpired(deadline ?? 0, Date.now()));
        return touchedItem(ctx, key, outcomes, trusted) ?? { kind: 'status', status: hit };
      }
      if (!settled) return undefined;
      if (answered < min) {
        return serverError(`${what} reached ${answered} of ${n} upstreams, min-copies is ${ctx.minCopies}: ${firstError(outcomes)}`);
      }
      if (!counted(ctx, what, key, outcomes, trusted)) {
        return serverError(`${what} reached ${answered} of ${n} upstreams, but only where a request of the key that timed out, or of a process killed before this one, may still land over it, or where it is not read for the key (overflowed, and not able to learn it now): ${firstError(outcomes)}`);
      }
      // NOT_FOUND only from a copy that knows: a dirty upstream's "none" is no answer about the
      // key (it may have missed the set that the one that failed holds). Nor, while an upstream
      // failed, one the repair's flush emptied (on the word that the others hold what it held),
      // for a key not written to it since, as for a read (failover-read.ts absorb; eject fuzz
      // seeds 11536 and 11553 of 10501-12000 with MCMUX_FUZZ_RESTART=1: the repair flushed the
      // pool as the two stores behind it began to fail, and a touch, then a delete, of a session
      // they held answered NOT_FOUND from the emptied pool).
      const failedSome = outcomes.some((o) => o !== undefined && !o.ok);
      const knows = (i: number): boolean => current(i) && !(failedSome && emptied[i] === true);
      if (!outcomes.some((o, i) => o?.ok && knows(i))) {
        // The emptied cache's "none" of a touch is then no answer about the key: it lacks what
        // the copy that failed may hold (a delete's reached it: it knows the key, absent, now).
        if (failedSome && what === 'touch' && emptiedAt !== undefined) {
          outcomes.forEach((o, i) => o?.ok && o.value === 'NOT_FOUND' && stillLacks(ctx, ctx.upstreams[i] as Upstream, key, emptiedAt, writtenSince) && ctx.journal.lacks(ctx.upstreams[i] as Upstream, key, seq));
        }
        return serverError(`${what}: no upstream with a current copy of the key answered: ${firstError(outcomes)}`);
      }
      return { kind: 'status', status: 'NOT_FOUND' };
    },
    what !== 'touch' || (freshest === undefined && emptiedAt === undefined)
      ? outcome
      : (u, o) => {
          // Asked while this write is in flight (the journal forgets the key's writes once none is):
          // whether one started since.
          if (emptiedAt !== undefined) writtenSince ||= ctx.journal.lastWrite(key) !== emptiedAt.lastWrite;
          // The freshest copy only for a write a late request may have undone, and what the touch
          // found there says it was (journal.undone): the next copy speaks for the key.
          if (u === freshest && o.ok && ctx.journal.undone(u, key, o.value !== 'NOT_FOUND')) {
            freshest = ctx.journal.freshest(ctx.upstreams, ctx.upstreams, key)?.[0];
          }
          outcome(u, o);
        },
    () => ctx.journal.writeFinished(key),
  );
}

/**
 * A touch that asked for the item (a binary TOUCH): TOUCHED with the flags and unique of the copy
 * a gets right after would read, the one the authority for the key checks a cas against
 * (authorityOrder, as a set's answer takes its unique from), else of the first current copy that
 * touched it, warm before fenced, as a gets reads them. A touch leaves the unique as it was, so
 * this is the unique that gets answers. undefined (TOUCHED alone) when no upstream answered an
 * item, or that copy touched it without telling it (it answered TOUCHED only): another copy's
 * unique would not be the one the gets hands out.
 */
function touchedItem(ctx: RouterContext, key: string, outcomes: ReadonlyArray<Outcome<Keyed> | undefined>, trusted: (i: number) => boolean): Reply | undefined {
  if (!outcomes.some((o) => o?.ok && typeof o.value === 'object')) return undefined;
  const pick = (order: readonly number[]): Reply | undefined | false => {
    for (const i of order) {
      const o = outcomes[i];
      if (!o?.ok || o.value === 'NOT_FOUND' || !trusted(i)) continue;
      return typeof o.value === 'object' ? { kind: 'status', status: 'TOUCHED', flags: o.value.flags, cas: o.value.cas } : undefined;
    }
    return false;
  };
  const byAuthority = pick(authorityOrder(ctx, key));
  if (byAuthority !== false) return byAuthority;
  const warmFirst = ctx.upstreams.map((_, i) => i).sort((a, b) => Number(isFenced(ctx.upstreams[a] as Upstream)) - Number(isFenced(ctx.upstreams[b] as Upstream)));
  return pick(warmFirst) || undefined;
}

/** The caches emptiedFor found as a command of a key went out, and the key's last write then. */
export interface Emptied {
  readonly upstreams: readonly Upstream[];
  readonly lastWrite: number;
  /** Of `upstreams`, those that had stopped learning (not onlyLearnt): they may hold the key unremembered. */
  readonly unlearnt?: readonly Upstream[];
}

/**
 * As a command of `key` goes out: the caches the repair's flush emptied that do not know the key
 * (repairEmptied, knowsKey), undefined when none (the usual case). Judged then, not when the
 * command fails: by then the fence may have ended, and an unfenced upstream knows every key
 * (review-h19 finding 1).
 */
export function emptiedFor(ctx: RouterContext, key: string): Emptied | undefined {
  let upstreams: Upstream[] | undefined;
  for (const u of ctx.upstreams) if (repairEmptied(u) && !knowsKey(u, key)) (upstreams ??= []).push(u);
  if (upstreams === undefined) return undefined;
  const unlearnt = upstreams.filter((u) => !onlyLearnt(u));
  return { upstreams, lastWrite: ctx.journal.lastWrite(key), ...(unlearnt.length > 0 ? { unlearnt } : {}) };
}

/**
 * Whether the cache `u`, emptied by the repair's flush and not knowing `key` as a command of it
 * went out (emptiedFor), still lacks what the command's failure elsewhere may have left: no write
 * of the key started since (a set that reached it after the command's miss there is the newest
 * write, and ranked least fresh it was read from the store that missed it, and repaired over it:
 * review-h16 finding 3; fenced or not by then), and it is not dirty for the key already. A write
 * started before the command was sent to it before the command, and applied there first.
 * `writtenSince` as read while the command's own write was in flight (the journal keeps a key's
 * writes while one is).
 */
function stillLacks(ctx: RouterContext, u: Upstream, key: string, emptied: Emptied, writtenSince = ctx.journal.lastWrite(key) !== emptied.lastWrite): boolean {
  return emptied.upstreams.includes(u) && !writtenSince && !ctx.journal.isDirty(u, key);
}

/**
 * A command of `key` may have been applied on an upstream that then failed (journaled for it),
 * while a cache the repair's flush emptied that did not know the key (emptiedFor) never got it:
 * its absence is no state of the key. Journaled as lacking it (journal.lacks, the least fresh
 * copy), as for a touch it alone answered NOT_FOUND: left clean, it is read as the key's truth
 * once its fence ends, and is the repair's source for the store that failed, its absence copied
 * over the session (review-h16 finding 2: a gat, an incr, an append that failed on the store
 * behind). `skip`: upstreams the command was tried on (journaled already).
 */
export function lackedWhereEmptied(ctx: RouterContext, key: string, seq: number, emptied: Emptied | undefined, skip?: (u: Upstream) => boolean): Promise<void> | undefined {
  if (emptied === undefined) return undefined;
  const ask: Upstream[] = [];
  for (const u of emptied.upstreams) {
    if (skip?.(u) === true || !stillLacks(ctx, u, key, emptied)) continue;
    // Not knowing the key says no write of it reached the cache since the flush only while its
    // fence still learnt (onlyLearnt, as the command went out): past fenceKeysMax a set may have
    // reached it unremembered, its copy the only one left (fuzz seed 301238: an add's copy, the
    // store behind restarted empty). Asked: an item there was written since the flush.
    if (emptied.unlearnt?.includes(u) === true) ask.push(u);
    else ctx.journal.lacks(u, key, seq);
  }
  if (ask.length === 0) return undefined;
  return (async () => {
    for (const u of ask) {
      // A read that failed tells nothing: lacking it unread (asks), until the repair reads it.
      const holds = await has(u, key);
      if (holds !== true && stillLacks(ctx, u, key, emptied)) ctx.journal.lacks(u, key, seq, holds === undefined);
    }
  })();
}

/** Whether `u` has an item for `key` (undefined when it cannot tell: the read failed). */
export async function has(u: Upstream, key: string): Promise<boolean | undefined> {
  try {
    return (await u.get([key], undefined, true))[0] !== undefined;
  } catch {
    return undefined;
  }
}

/**
 * A delete or touch of `key` that no client waits on for its answer (the copies of a
 * conditional command whose item is gone, a gat's touches of the others), tracked like any
 * write: in flight for the journal until every target answered, misses journaled. Returns the
 * write's sequence and a promise that settles when every target has answered.
 */
export function sendKeyed(
  ctx: RouterContext,
  what: 'delete' | 'touch',
  key: string,
  targets: readonly Upstream[],
  op: (u: Upstream) => Promise<Keyed>,
  deadline?: number,
): { seq: number; settled: Promise<unknown> } {
  const seq = ctx.journal.writeStarted(key);
  // A gat's touches: the copy it read (clean for the key) holds the item, touched.
  const touch = what === 'touch' ? { present: true, missed: [], failed: [], dated: [], current: () => false, deadline: deadline ?? 0 } : undefined;
  const settled = fanOut(targets, op, (_, all) => (all ? true : undefined), keyedOutcome(ctx, what, key, seq, touch), () => ctx.journal.writeFinished(key));
  return { seq, settled };
}

/**
 * A touch's copies: whether a copy holding the key's current state (`current`) answered TOUCHED
 * (`present`), and the copies that answered NOT_FOUND before one did (`missed`).
 */
interface TouchCopies {
  present: boolean;
  readonly missed: Upstream[];
  /** Copies that refused the touch unsent while no current copy had shown the item yet. */
  readonly failed: Upstream[];
  /** Copies journaled with the touch's deadline (it may have been applied) while none had shown the item yet. */
  readonly dated: Upstream[];
  readonly current: (u: Upstream) => boolean;
  /** The touch's deadline: once past, the item is gone from the touched copies too. */
  readonly deadline: number;
}

/** What each upstream's answer to a delete or touch (write `seq`) means for the journal. */
function keyedOutcome(ctx: RouterContext, what: 'delete' | 'touch', key: string, seq: number, touch?: TouchCopies): (u: Upstream, o: Outcome<Keyed>) => void {
  return (u, o) => {
    ctx.journal.settled(u, key, seq);
    if (!o.ok) {
      // A touch that changed nothing there (refused, or never sent: down, not connected) where no
      // current copy has shown the item: journaled only once one does. If none does, the copy it
      // failed on may hold the only item left (the others evicted it, or the repair flushed it),
      // and journaled it would be repaired from their absence: the session deleted from the
      // durable store for a touch (review-h22 finding 3, a store down). Left clean, it is read
      // with the lifetime it had. One that may have been applied is journaled (its item may
      // outlive, by the touch, the copies that expired it: fuzz seed 1533's class), and so is a
      // touch that expires the item.
      // Where no current copy shows the item either, the repair tells by the deadline whether it was
      // (touchedTo).
      if (touch !== undefined && !touch.present && unapplied(o.error) && !(o.error as McmuxError).dropped && !isExpired(touch.deadline, Date.now())) touch.failed.push(u);
      else {
        const dated = touch === undefined || touch.present ? undefined : touchedTo(touch.deadline);
        ctx.journal.mark(u, key, what === 'delete' ? 'delete' : 'write', seq, mayLandLate(o.error), dated);
        if (dated !== undefined) touch?.dated.push(u);
      }
    } else if (what === 'delete') {
      ctx.journal.written(u, key, seq, 'delete');
      noteWritten(ctx.journal, u, key);
    } else if (touch) {
      // A copy without the item while a current one has it and was touched (the touch reached it
      // after the item's old deadline, which the other copy's touch had moved): it lacks what
      // the others hold until the new deadline. Journaled: not read, and never the authority
      // (an add there would grant a lock that is held), until the repair copies the item.
      if (o.value !== 'NOT_FOUND' && !touch.present && touch.current(u)) {
        touch.present = true;
        for (const f of touch.failed.splice(0)) ctx.journal.mark(f, key, 'write', seq);
        for (const f of touch.dated.splice(0)) ctx.journal.untouch(f, key);
        if (!isExpired(touch.deadline, Date.now())) for (const m of touch.missed.splice(0)) ctx.journal.mark(m, key, 'write', seq);
      } else if (o.value === 'NOT_FOUND' && !isExpired(touch.deadline, Date.now())) {
        if (touch.present) ctx.journal.mark(u, key, 'write', seq);
        else touch.missed.push(u);
      }
    }
    // Answered on connections a reload retired, a later write of the key gone to the store on
    // new ones: the touch may have landed after that write, giving it this deadline. As a late
    // request (the repair copies the key's current state once it has settled).
    if (what === 'touch' && o.ok && o.value !== 'NOT_FOUND' && ctx.journal.landedRetired(u, key)) ctx.journal.mark(u, key, 'write', seq, true);
    reportLate(ctx, what, u, o, () => true);
  };
}

/**
 * flush_all: every upstream must flush, or the client hears an error. The router sends it only
 * once nothing else is in flight (journal.quiesce) and starts no write until it is answered.
 */
export function replicateFlush(ctx: RouterContext): Promise<Reply> {
  return fanOut(
    ctx.upstreams,
    (u) => u.flush(),
    (outcomes, settled) => {
      if (!settled) return undefined;
      const failed = failures(outcomes);
      // Every upstream flushed: none holds what the repair's flush took from a cache any more.
      // Before onFlushed, whose marker rewrite puts the fence's B line on journal.log with its
      // `r` while repairEmptied still says so: a process restarted before the next check
      // inherited it (review-h16 finding 1).
      if (failed === 0) for (const u of ctx.upstreams) flushedWithAll(u);
      outcomes.forEach((o, i) => {
        const u = ctx.upstreams[i] as Upstream;
        // One that timed out may still flush later, over the writes acknowledged since.
        if (!o?.ok) {
          if (mayLandLate(o?.error)) ctx.journal.flushTimedOut(u);
          return;
        }
        // A flushed upstream holds nothing stale: its journal entries are moot.
        ctx.journal.trust(u, 'flush_all');
        ctx.onFlushed(u);
      });
      return failed === 0
        ? { kind: 'status', status: 'OK' }
        : serverError(`flush failed on ${failed} of ${outcomes.length} upstreams: ${firstError(outcomes)}`);
    },
  );
}

const isStored = (r: StoreResult): boolean => r.status === 'STORED';
const anyAnswer = (): boolean => true;

/**
 * Whether a delete's answers include one a read takes the key's absence from (see lasting). A
 * touch's hit is a current copy's (`trusted`), which it leaves as current as it was: it counts
 * unless a request that may still land there (a set of the key that timed out, a flush) would
 * undo the touch, as for any write (a review found it acknowledged so, and the late set served
 * after the touch's deadline). A touch without a hit is NOT_FOUND as it is.
 */
function counted(ctx: RouterContext, what: 'delete' | 'touch', key: string, outcomes: ReadonlyArray<Outcome<Keyed> | undefined>, trusted: (i: number) => boolean): boolean {
  if (!ctx.journal.untrusting) return true;
  if (what === 'delete') return lasting(ctx, key, ctx.upstreams, outcomes, anyAnswer, undefined, false);
  const hit = (o: Outcome<Keyed> | undefined, i: number): boolean => o?.ok === true && o.value !== 'NOT_FOUND' && trusted(i);
  return !outcomes.some(hit) || outcomes.some((o, i) => hit(o, i) && lastsOn(ctx, ctx.upstreams[i] as Upstream, key, true));
}

/**
 * Whether a write of `key` that reached `u` stays there: no request that may still land on `u`
 * undoes it (one of the key that timed out; with `wipeable`, a flush that timed out too, else only
 * a request of a killed process, which may store).
 */
export function lastsOn(ctx: RouterContext, u: Upstream, key: string, wipeable: boolean): boolean {
  const late = ctx.journal.unknownLate(u);
  return (late === undefined || (!wipeable && !late.sets)) && !ctx.journal.lateFor(u, key);
}

/**
 * Whether a read of `key` now takes a copy this write made (`made`: the outcomes of `targets`
 * that are copies; `authority`: the conditional command's, which applied it): one of them is on
 * an upstream clean for the key, or every upstream is dirty for it and the freshest is one of
 * them (journal.freshest, as a read ranks them). Only such a copy counts for the client: one on an
 * overflowed upstream that cannot learn the key now (a request of it that timed out there may
 * still land, it is being flushed, its memory of keys is full, or it was loaded from
 * journal.log and has not settled) is read from nowhere, and with the others failing, the copy
 * that missed the write would be read. Nor one where a request of the key that timed out may
 * still land over it (journal.lateFor: the copy ranks as the freshest, and once the request
 * lands a read takes the older value it carries, or brings back what a delete removed); nor, set
 * or delete, one where a request of a process killed before this one may still land
 * (journal.unknownLate `sets`: app.ts waits for those to settle before it listens); nor,
 * `wipeable` (a set), one that a flush that timed out may still wipe (it ranks as the freshest
 * until then). With every copy there, the write fails safe until the request settles and the
 * repair copies the key (about a second), or another copy is clean. Only while
 * journal.untrusting: otherwise every copy is read (clean, or ranked the freshest) and keeps
 * what the write stored.
 */
function lasting<R>(
  ctx: RouterContext,
  key: string,
  targets: readonly Upstream[],
  outcomes: ReadonlyArray<Outcome<R> | undefined>,
  made: (r: R) => boolean,
  authority: Upstream | undefined,
  wipeable: boolean,
): boolean {
  const j = ctx.journal;
  const counts = (u: Upstream): boolean => lastsOn(ctx, u, key, wipeable);
  if (authority !== undefined && counts(authority) && !j.isDirty(authority, key)) return true;
  for (let i = 0; i < targets.length; i++) {
    const o = outcomes[i];
    const u = targets[i] as Upstream;
    if (o?.ok === true && made(o.value) && counts(u) && !j.isDirty(u, key)) return true;
  }
  // Dirty everywhere (else a clean upstream that is none of these copies is read).
  const top = j.freshest(ctx.upstreams, ctx.upstreams, key)?.[0];
  if (top === undefined || !counts(top)) return false;
  if (top === authority) return true;
  const o = outcomes[targets.indexOf(top)];
  return o?.ok === true && made(o.value);
}

/**
 * write-wait copies answers before every upstream did: those still to answer are dirty for the
 * key (in memory) until they do, so a read after the answer never takes the old value from one.
 */
function markPending<R>(ctx: RouterContext, targets: readonly Upstream[], outcomes: ReadonlyArray<Outcome<R> | undefined>, key: string, seq: number, removes = false): void {
  targets.forEach((u, i) => {
    if (outcomes[i] === undefined) ctx.journal.markPending(u, key, seq, removes);
  });
}

function reportLate<R>(ctx: RouterContext, what: string, u: Upstream, o: Outcome<R>, good: (r: R) => boolean): void {
  if (!o.ok) {
    ctx.counters.replicationFailures++;
    ctx.onBackgroundError(what, u, o.error);
  } else if (!good(o.value)) {
    ctx.counters.replicationFailures++;
    ctx.onBackgroundError(what, u, new Error(`answered ${String((o.value as { status?: string }).status ?? o.value)}`));
  }
}
