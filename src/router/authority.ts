/**
 * Conditional commands (add, replace, cas, append, prepend, incr, decr) are decided by one
 * authority: the first upstream, in priority order, that answers. Its answer is the client's
 * answer. On success the resulting item is written to every other upstream with `set`, so that
 * all hold the same value — for incr/decr the resulting number, never the delta (hazard 7) —
 * and the client hears success under the same min-copies / write-wait rule as any write.
 * This single decision point is what makes `add lock.<sid>` and `incr <sid>.lock` safe.
 */

import type { ArithCommand, Reply, StoreCommand } from '../command/command';
import { ErrorCodes, McmuxError, mayLandLate, unapplied } from '../errors';
import type { Upstream } from '../upstream/upstream';
import { type RouterContext, errorMessage, refusedTooLarge, serverError, tooLargeReply } from './context';
import { authorityOrder as candidates } from './authority-order';
import { failoverRead } from './failover-read';
import { isFenced, noteWritten } from './health';
import { authorityAlone, emptiedFor, has, lackedWhereEmptied, replicateSet, sendKeyed } from './replicate-write';

/**
 * Runs `op` on the authority for `key`: the first upstream that is usable, clean for the key
 * (not in the repair journal) and not fenced (known to have come back empty). An upstream that
 * fails is skipped, and journaled: the outcome on it is unknown (a timed-out incr may have been
 * applied), which is safe only because the authority's result is then written over it with `set`
 * (or it is deleted) below, or by the repair. Not when its error shows that the command changed
 * nothing there (unapplied): it still holds the key's current state (a copy of the result that
 * misses it is journaled as any write's), and journaled it could leave a worse copy ranked the
 * freshest once every copy is dirty: one a flush that timed out may have emptied (fuzz seed
 * 6418). A cas is not: it goes on only past an upstream that cannot have applied it (`cas`), as
 * no other can check its unique.
 *
 * When it fails on every upstream it tried and one of them may have applied it, the upstreams it
 * was never sent to lack a result an authority may hold (journal.notSent). The first candidate,
 * when it is first only for a write a late request may have undone, is asked for the key before it
 * decides: what it has ranks it down when it says the write was undone (journal.undone), as a read does. `seq`: the command's
 * write sequence (journal.writeStarted), when the router took one.
 */
async function decide<R>(
  ctx: RouterContext,
  key: string,
  op: (u: Upstream) => Promise<R>,
  seq: number | undefined,
  cas = false,
): Promise<{ value: R; index: number } | { error: unknown }> {
  let lastError: unknown;
  const tried: Upstream[] = [];
  // A cache the repair's flush emptied that does not know the key, as the command goes out.
  const emptied = emptiedFor(ctx, key);
  const failed = async (error: unknown): Promise<{ error: unknown }> => {
    if (tried.length > 0) {
      const at = seq ?? ctx.journal.nextWriteSeq() - 1;
      for (const u of ctx.upstreams) if (!tried.includes(u)) ctx.journal.notSent(u, key, at);
      // ...is no copy of its state.
      await lackedWhereEmptied(ctx, key, at, emptied, (u) => tried.includes(u));
    }
    return { error };
  };
  let order = candidates(ctx, key);
  // The freshest copy only for a write a late request may have undone (every copy is dirty): if
  // what it has says so (a set it lacks, a delete it has an item for), the next copy decides
  // (journal.undone).
  const top = order[0] === undefined ? undefined : (ctx.upstreams[order[0]] as Upstream);
  if (top !== undefined && ctx.journal.mayBeUndone(top, key)) {
    const found = await has(top, key);
    if (found !== undefined && ctx.journal.undone(top, key, found)) order = candidates(ctx, key);
  }
  for (const i of order) {
    const u = ctx.upstreams[i] as Upstream;
    try {
      return { value: await op(u), index: i };
    } catch (error) {
      lastError = error;
      if (unapplied(error)) {
        // Refused, but its copy of the key went with the refusal: left clean, it would decide the
        // next add alone, on an item it no longer has.
        if ((error as McmuxError).dropped) ctx.journal.mark(u, key, 'write', undefined, false);
        continue;
      }
      ctx.journal.mark(u, key, 'write', undefined, mayLandLate(error));
      tried.push(u);
      // A cas the authority may have applied (a timeout, a lost connection) is not asked of the
      // next: that one cannot check a unique of another store and would answer EXISTS or
      // NOT_FOUND, while a read may already have served the value the cas stored here.
      if (cas) return failed(new Error(`${errorMessage(error)}; the cas may have been applied there`));
    }
  }
  const fenced = ctx.upstreams.filter((u, i) => isFenced(u) && !order.includes(i) && !ctx.journal.isDirty(u, key));
  if (fenced.length > 0) {
    const names = fenced.map((u) => u.name).join(', ');
    const before = lastError === undefined ? '' : `${errorMessage(lastError)}; `;
    return failed(new Error(`${before}${names} came back empty and may not decide until its lock-fence ends`));
  }
  return failed(lastError ?? undecided(ctx, key));
}

/** Why no upstream was asked to decide `key`: every copy is dirty, and the freshest may not yet. */
function undecided(ctx: RouterContext, key: string): Error {
  const unread = ctx.upstreams.find((u) => ctx.journal.unread(u, key));
  if (unread !== undefined) return new Error(`every copy of the key is dirty and ${unread.name} may hold its newest state: it decides nothing until the repair has read it there`);
  return new Error('every copy of the key is dirty and the freshest cannot decide now (down, or its write still in flight)');
}

/**
 * The authority applied the command: it holds the key's current state now, as after any write
 * that reached it (`seq`: the command's write sequence). When every upstream was dirty for the
 * key (its last write failed everywhere) it was chosen as the freshest copy, and left standing,
 * its entry would have the repair replay the old miss over the result: a missed delete deleting
 * the lock just granted.
 */
function settleAuthority(ctx: RouterContext, key: string, index: number, seq: number | undefined): void {
  const u = ctx.upstreams[index] as Upstream;
  ctx.journal.written(u, key, seq);
  // Fenced, it learnt the key as from a client's set: with every upstream fenced it decides the
  // key first from now on, not the chain order (fuzz seed 157 with MCMUX_FUZZ_ROLLBACK=1
  // MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1: the store that granted a lock
  // while fenced was passed over by a pool fenced before it, which the repair had flushed since).
  noteWritten(ctx.journal, u, key);
}

function others(ctx: RouterContext, index: number): Upstream[] {
  return ctx.upstreams.filter((_, i) => i !== index);
}

/** `seq`: the command's write sequence (journal.writeStarted), when the router took one. */
export async function conditionalStore(ctx: RouterContext, cmd: StoreCommand, seq?: number): Promise<Reply> {
  const req = { mode: cmd.mode, key: cmd.key, value: cmd.value, flags: cmd.flags, deadline: cmd.deadline, cas: cmd.cas };
  const r = await decide(ctx, cmd.key, (u) => u.store(req), seq, cmd.mode === 'cas');
  // Every store it was asked of refused the item as too large (each refusal goes on to the next).
  if ('error' in r) return refusedTooLarge(r.error) ? tooLargeReply() : serverError(`no upstream answered: ${errorMessage(r.error)}`);
  if (r.value.status !== 'STORED') return { kind: 'status', status: r.value.status };
  settleAuthority(ctx, cmd.key, r.index, seq);
  const ok: Reply = { kind: 'status', status: 'STORED', ...(r.value.cas !== undefined ? { cas: r.value.cas } : {}) };
  if (cmd.mode === 'append' || cmd.mode === 'prepend') return copyFromAuthority(ctx, cmd.key, r.index, ok);
  // add, replace and cas stored exactly the client's item: the others get the same.
  return replicateSet(ctx, { ...req, mode: 'set', cas: undefined }, others(ctx, r.index), 1, ok, ctx.upstreams[r.index]);
}

/**
 * An add that expires as it is stored (libmemcached's memcached_exist sends `add <key> 0 2678400
 * 0`, PHP's session.use_strict_mode asks it of every session id) changes nothing in memcached: it
 * only tells whether the key exists. Decided by the authority, an authority that lost its copy (a
 * memcached restarted empty whose fence has ended, or one that evicted the key) answered STORED,
 * and the copy of that expired item deleted the key from every other upstream: the session was
 * wiped from the durable stores and the user logged out. Found by a read (a get's answer), it is
 * NOT_STORED and writes nothing.
 */
export async function existenceProbe(ctx: RouterContext, cmd: StoreCommand, seq?: number): Promise<Reply> {
  const r = await failoverRead(ctx, { kind: 'get', keys: [cmd.key], withCas: false, touch: undefined });
  if (r.kind !== 'values') return r;
  if (r.hits[0]) return { kind: 'status', status: 'NOT_STORED' };
  // Found nowhere a read looks: decided and copied as any add, so that a copy no read takes (a
  // dirty one, still holding an older value) gets the expired item over it too, as in memcached
  // the add leaves the key absent (fuzz seed 55369 with MCMUX_FUZZ_EXPIRY=1: that older value was
  // read later, after the add had answered STORED).
  return conditionalStore(ctx, cmd, seq);
}

export async function conditionalArith(ctx: RouterContext, cmd: ArithCommand, seq?: number): Promise<Reply> {
  const r = await decide(ctx, cmd.key, (u) => u.arith(cmd.op, cmd.key, cmd.delta), seq);
  if ('error' in r) return serverError(`no upstream answered: ${errorMessage(r.error)}`);
  const res = r.value;
  if (res.status === 'OK') {
    settleAuthority(ctx, cmd.key, r.index, seq);
    const reply: Reply = res.cas === undefined ? { kind: 'number', value: res.value } : { kind: 'number', value: res.value, cas: res.cas };
    return copyFromAuthority(ctx, cmd.key, r.index, reply);
  }
  if (res.status === 'NON_NUMERIC') {
    return { kind: 'error', type: 'CLIENT_ERROR', message: 'cannot increment or decrement non-numeric value' };
  }
  if (cmd.initial === undefined) return { kind: 'status', status: 'NOT_FOUND' };
  // Binary protocol: a miss creates the key with `initial`, decided by the same authority.
  const value = Buffer.from(cmd.initial.toString(), 'latin1');
  const created = await conditionalStore(ctx, {
    kind: 'store', mode: 'add', key: cmd.key, flags: 0, deadline: cmd.deadline, value, cas: undefined, withCas: true, noreply: cmd.noreply,
  }, seq);
  if (created.kind === 'status' && created.status === 'STORED') {
    return created.cas === undefined ? { kind: 'number', value: cmd.initial } : { kind: 'number', value: cmd.initial, cas: created.cas };
  }
  // Someone created it between our miss and our add: count on what is there now.
  if (created.kind === 'status' && created.status === 'NOT_STORED') return conditionalArith(ctx, { ...cmd, initial: undefined }, seq);
  return created;
}

/**
 * After append/prepend/incr/decr the authority holds a value we did not send: read it back
 * (value, flags and remaining lifetime) and set it on the others; if it is gone, delete it there.
 */
async function copyFromAuthority(ctx: RouterContext, key: string, index: number, ok: Reply): Promise<Reply> {
  const targets = others(ctx, index);
  const authority = ctx.upstreams[index] as Upstream;
  if (targets.length === 0) return authorityAlone(ctx, key, authority, ok);
  let hit;
  try {
    [hit] = await authority.get([key]);
  } catch (error) {
    // The authority applied it and then failed (killed mid-way, say). An incr/decr result is
    // known (the number), and neither changes flags or expiry: take those from a copy and write
    // the number over the others. Answering an error here would make a client (pecl-memcache's
    // session lock) think the lock failed while it is held, and run without it.
    if (ok.kind === 'number') {
      const done = await replicateNumber(ctx, key, ok, targets, authority);
      if (done) return done;
    }
    // The others now lag the authority: journal them, so nothing reads the old value there.
    for (const u of targets) ctx.journal.mark(u, key, 'write');
    return serverError(`applied on ${authority.name} but could not read it back to replicate: ${errorMessage(error)}`);
  }
  if (!hit && isFenced(authority)) {
    // The authority was emptied after it applied the command (the repair flushes an overflowed
    // cache, fencing it first; or it restarted): its miss says nothing, and deleting the key on
    // the others would lose it everywhere. An incr/decr result is known: written over the
    // others, with flags and expiry from a copy. An append's result is lost: an error, and the
    // others keep the value before it.
    if (ok.kind === 'number') {
      const done = await replicateNumber(ctx, key, ok, targets, authority);
      if (done) return done;
    } else {
      ctx.journal.mark(authority, key, 'write');
      return serverError(`applied on ${authority.name}, which was emptied before it could be read back to replicate`);
    }
  }
  if (!hit) {
    const { seq, settled } = sendKeyed(ctx, 'delete', key, targets, (u) => u.delete(key));
    // As for any write: write-wait all answers once every copy is gone (or journaled); copies
    // answers now, and the others are not read for the key until their delete lands.
    if (ctx.writeWait === 'all') await settled;
    else for (const u of targets) ctx.journal.markPending(u, key, seq, true);
    // Gone right after the command: it expired, or a request of the key that timed out there
    // landed over the result (a replace whose deadline had passed: fuzz seed 18966 of
    // 18001-19500). Only the first leaves the client's result standing (authorityAlone).
    return authorityAlone(ctx, key, authority, ok);
  }
  return replicateSet(ctx, { mode: 'set', key, value: hit.value, flags: hit.flags, deadline: hit.deadline }, targets, 1, ok, authority);
}

/** Writes an incr/decr result over `targets`, with flags and expiry from one of their copies clean for the key. */
async function replicateNumber(
  ctx: RouterContext,
  key: string,
  ok: Extract<Reply, { kind: 'number' }>,
  targets: readonly Upstream[],
  authority: Upstream,
): Promise<Reply | undefined> {
  for (const source of targets) {
    // Not from a copy dirty for the key: it may have missed a touch (a gat's), and its deadline
    // is not the item's (a counter or lock would outlive the deadline the authority keeps).
    if (ctx.journal.isDirty(source, key)) continue;
    let copy;
    try {
      [copy] = await source.get([key]);
    } catch {
      continue;
    }
    if (!copy) return undefined;
    const value = Buffer.from(ok.value.toString(), 'latin1');
    const reply = await replicateSet(ctx, { mode: 'set', key, value, flags: copy.flags, deadline: copy.deadline }, targets, 1, ok, authority);
    return reply.kind === 'error' ? undefined : reply;
  }
  return undefined;
}
