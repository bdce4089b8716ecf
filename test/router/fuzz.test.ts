/**
 * Model-based fuzz of the router: seeded, bounded, deterministic (virtual time, no sockets, no
 * Math.random). For each seed:
 *
 *   Router + RepairJournal + Repairer + ColdDetector, over 2-3 HealthyUpstream(SchedUpstream)
 *   (one of them a MemcachedPool of two SchedUpstreams with MCMUX_FUZZ_POOL=1, see the pool below)
 *   several client operations in flight at once (set, get / multi-get / gets, gat / gats,
 *   delete, touch, add, replace, append, prepend, cas, incr, decr, flush_all) over a small key
 *   space, with item deadlines (some already past) in 4 seeds in 10, a journal of 1-3 keys
 *   (journal-max-keys, overflowed by an outage) in 3 in 10, and faults injected on the upstreams
 *   ─► every reply is recorded, and judged afterwards against a reference model (judge()).
 *
 * SchedUpstream is a FakeUpstream (its MemoryUpstream is the store) whose every request waits on
 * its connection (a lane) until the scheduler applies it and, later, answers it, as with the
 * memcached driver: requests on one connection are applied and answered in the order sent, those
 * on different connections interleave in any order, and a request may be applied well before its
 * answer arrives. A seed uses one connection per upstream (memcached's default) or one per key
 * (connections > 1: a multi-get goes on the connection of its first key, as the driver sends it).
 * A timeout discards the connection: the request gets TIMEOUT, the others on it IO (late), as the
 * driver does. Time is node:test's mock timers: request timeouts (50 ms),
 * health probes, hedges, the repairer's and the cold detector's intervals, Date.now and mcmux's
 * monotonic clock (src/clock.ts: fences, settle windows) all run on the virtual clock, which
 * moves only when the scheduler ticks it.
 *
 * THE FAULT MODEL (what the README's consistency model promises to survive):
 *  - fail: an upstream refuses connections for a while (crashed, partitioned): its requests in
 *    flight fail (MCMUX_UPSTREAM_IO, not late: those already applied stay applied, the others are
 *    never applied), new ones are refused; health marks it down; it comes back and reconnects.
 *  - pause: an upstream stops answering (a paused or overloaded server): requests time out after
 *    50 ms (the lane's connection is discarded, as the driver does), health marks it down, probes
 *    time out; when it resumes it reconnects. A request that timed out before it was applied is a
 *    straggler: it may be applied LATER (a late landing), or never.
 *  - glitches: one connection closed by the server (its requests fail, not late); one request
 *    refused (a SERVER_ERROR of the store, nothing applied).
 *  - restart empty: an upstream crashes, loses everything (its MemoryUpstream is flushed), and
 *    comes back (the driver's reconnect calls ColdDetector.reconnected, as app.ts wires it). Its
 *    uniques start again from 1, as a memcached's do: those it handed out before may name other
 *    items of it now.
 *  - eviction: a cache drops one session key (memory pressure); mcmux cannot tell, the upstream
 *    answers a miss and read repair puts the key back.
 *  - an upstream in neither state is slow at random but answers within its timeout.
 *
 * EXCLUDED, because mcmux honestly cannot be right there (it keeps no values, only which copy
 * missed what):
 *  - a straggler lands no later than LATE_SETTLE_MS - 1 after it timed out (the README: "a server
 *    that resumes works through its old connections within this"), and only while some OTHER
 *    upstream holds the key's current state as mcmux knows it (clean for the key in the journal,
 *    not emptied by a restart since, no write of the key in flight or straggling there), or while
 *    no write of the key sent after it has been acknowledged (World.ackedSince: its value is still
 *    one a read may see, every newer write a maybe; MCMUX_FUZZ_LAND_UNACKED=0 turns this second
 *    case off; with a pool, MCMUX_FUZZ_POOL, not either once a write of the key sent after it has
 *    been applied on that store: World.appliedSince; for an incr, decr, append or prepend only while no write of its key began since:
 *    it would apply to that write's value, which the judge cannot give it, seed 21025 with
 *    MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1). Otherwise it is dropped. This excludes an old write landing late, after a newer
 *    one was acknowledged, on every copy at once, or on the only copy mcmux trusts (then the old
 *    value is all there is: a stale read no journal can prevent). Under the first case alone,
 *    a straggler does not land while an operation of the key is in flight that began when every
 *    copy was dirty for it: that one may read (or have decide) the freshest copy, which may be
 *    this one (found: seeds 37478 and 41331 of 45000, a read of the freshest copy served the
 *    straggler). The second case found a write acknowledged with its only copy read where a
 *    request of the key that timed out may still land (seed 16820 of 9001-21000 before the fix;
 *    fuzz-findings.test.ts).
 *  - a restart empty happens only while every other upstream is up, healthy, straggler-free and
 *    clean for every key, and no other upstream gets any fault until every key has been written to
 *    the restarted one again and every operation that began before that has ended. mcmux does not know what a restarted store lost (the journal says it
 *    is clean): a miss from it is taken as the truth when the others fail, and a key only it held
 *    is gone. ("at least one upstream holding current data at all times") The same for an
 *    eviction, key by key, and only while no operation of the key is in flight (see evict()).
 *  - an evicted lock or counter: whichever upstream decides an add or incr then answers from what
 *    it lacks (as plain memcached would; the lock-fence covers only a whole store coming back
 *    empty). With evictions on (7 seeds in 10), add, incr and decr, and replace, append, prepend
 *    and cas (NOT_STORED, NOT_FOUND from a copy that lost the key) go to lock and counter keys
 *    (append and prepend: lock keys),
 *    and only session keys are evicted.
 *  - a restart empty while a conditional command is in flight: its authority may hold a state it
 *    has not copied yet (an append's result, read back before its copies go out), the only
 *    current copy of the key ("at least one upstream holding current data").
 *  - nothing keeps clear of flush_all (off by default, --allow-flush): clients send it at any
 *    moment, with other operations in flight, and one that timed out is a straggler that lands
 *    (for every key) at any moment of its window, or never, whatever was acknowledged since: not
 *    under the rule above. mcmux orders it with every write (router.ts orderedFlush), keeps the
 *    writes that reach an upstream whose flush may still land dirty there (journal.ts
 *    wipedLater), acknowledges none whose only copies it may wipe, and ranks such a copy that
 *    has lost its key below the others (journal.wiped). (Until 2026-11-28 the rule above held
 *    for it too. Without it, 12,000 seeds, 4,500 of them with flush_all in every seed and some
 *    with restarts or a small journal, found nothing; about 60 flushes landed that it dropped.) The model takes it as a delete of every key; it
 *    does not check that reads are monotonic, so a write let through during a flush, landing
 *    before it on one upstream and after it on another, goes unseen: router.test.ts covers that.
 *  - a write that failed on every upstream (SERVER_ERROR) is not excluded but modelled as "maybe":
 *    it may or may not have taken effect, at any point of its interval.
 *  - a journal of a few keys (journal-max-keys 1-3, 3 seeds in 10; the upstreams are caches,
 *    scheme memcached, in half of the seeds, which the repair flushes once overflowed, fencing
 *    them as app.ts does): one upstream at a time misses writes, only while every other one is up
 *    and clean for every key, and no touch, gat or conditional command is in flight (a touch may
 *    find the item expired on another upstream, a conditional command applied on the faulty one
 *    leaves its copies missed: journaled there without a fault of their own; seeds 1072 and 2328
 *    with MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1) (see mayFault), and no touch or gat
 *    starts while one misses writes (it reads instead: seed 42717, see randomOp). The README concedes the
 *    rest: once an upstream's journal overflowed, a key another upstream is dirty for may be
 *    taken from that one's copy. A cache the repair flushed is then trusted and holds nothing: as a restart empty (its keys
 *    `lost`). The repair's flush is ordered with the writes as flush_all is (seeds 22968 with
 *    MCMUX_FUZZ_EXPIRY=1 MCMUX_FUZZ_SMALL_JOURNAL=1, and 40775 with MCMUX_FUZZ_EXPIRY=1: an add,
 *    a replace, the cache decided while it went out, applied after it).
 *  - touch: a plain write that overlaps a set of the key as any other; one that answered
 *    NOT_FOUND may have touched the set's value on a copy it reached later. (A gat's touches of
 *    the other copies, sent after it answered, land before any write of the key received after
 *    it: the model gives them only the value it answered. Seeds 116 and 377 of 400 found them
 *    landing on a later set's value, and without the fix seeds 86 and 377 of 400 with
 *    MCMUX_FUZZ_EXPIRY=1 still do: fuzz-findings.test.ts.)
 *  - a delete that failed on every upstream (SERVER_ERROR) may take effect until the next
 *    acknowledged write of its key (not a touch): the repair replays it (each copy journaled
 *    'delete') even after reads, or a touch, took the freshest copy, which still held the key, as
 *    the truth (seeds 1098 and 1733 of 2000). And after a flush_all that failed somewhere, a
 *    touch's TOUCHED (a gat's hit) is a maybe: a failed flush leaves the copies it did not reach
 *    as they were (README), and they may disagree about every key until it is written again
 *    (seed 194 of 400).
 *  - mcmux restarts (1 seed in 10, MCMUX_FUZZ_RESTART=1: every seed; now and then, with
 *    operations in flight): stopped gracefully (as app.ts close: no new command, those in flight
 *    answered and their copies landed, every request answered or timed out, then the journal
 *    closed), or killed (nothing more is answered, journaled or sent; an op in flight is a
 *    SERVER_ERROR, a maybe, that ends once nothing its process sent may land). Down 0-1500 ms,
 *    then a new process (drivers, health, cold detector, journal loaded from journal.log in a
 *    state-dir of the seed's, router, repairer) over the same upstreams, taking commands once its
 *    cold detector's first look has judged every upstream, and once what a process that did not
 *    close journal.log cleanly sent may no longer land on the upstreams that are up (app.ts).
 *    journal.log is taken as written (journal-fsync = no; everysec loses nothing when only mcmux
 *    dies, README). A request the killed process sent is a straggler under the rule above, as if
 *    it had timed out (no later than LATE_SETTLE_MS - 1 after it would have), even one that no
 *    entry on file tells of (unanswered, or timed out and not yet journaled): the next process
 *    takes every upstream as one where such a request may land until it has settled (before it
 *    did, a rule here let one land only before a later process changed its key; without it, seed
 *    55 of 600 brought back a deleted session; fuzz-findings.test.ts). And a copy of a write
 *    acknowledged with write-wait = copies still on its way at the kill is applied then (README,
 *    "not guaranteed": the upstream may miss it silently, which no reply can show; nor is it
 *    killed while an upstream's refusal, not yet answered, is the miss of such a copy). A flush_all
 *    that timed out before a restart lands under the same rule (a process with one that may still
 *    land does not close journal.log cleanly), but as a restart empty of its store (its rules, its
 *    keys `lost`: World.goneFlush): the next process finds it emptied by its marker alone, and
 *    what the gone one wrote there after the flush timed out, unanswered (such a copy), is not on
 *    file (seed 309354 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
 *    MCMUX_FUZZ_RESTART=1: a lock granted twice once its only other copy left the ring).
 *    A write of a killed process may have reached some copies and not others (README, "not
 *    guaranteed"): until an acknowledged write of its key, a gat's hit of the key is a maybe, as
 *    after a failed flush_all (seeds 823 and 859 of 1-3000 with MCMUX_FUZZ_RESTART=1
 *    MCMUX_FUZZ_FENCE_END=1: an append killed after its authority applied it, then a gat that read
 *    it there and touched the old value on the others), and what each copy holds of it after the
 *    run is not judged (seed 11010 of 10501-12000 with MCMUX_FUZZ_RESTART=1).
 *    It restarts even while a key is dirty on every upstream: journal.log keeps the write order
 *    that ranks the copies (before it did, by when entries were dated: seeds 773 and 1900
 *    with MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1 read the copy that missed the
 *    newest write; fuzz-findings.test.ts). And while a request may still land on an overflowed
 *    upstream: which of its keys a timed-out request may still reach is not on file, and the
 *    next process learns what it holds only from writes started once those have settled (before,
 *    seed 2029 read such a key after a write of it; fuzz-findings.test.ts). A write before then
 *    is kept as one it may hold alone, and a flush_all does not settle it (the fix without that:
 *    seed 2792 of 1-3000 lost a write to the repair's flush, seed 114 of 1-2000 with
 *    MCMUX_FUZZ_EXPIRY=1 MCMUX_FUZZ_SMALL_JOURNAL=1 read a set that landed after a flush_all).
 *  - the lock-fence ending (1 seed in 10, MCMUX_FUZZ_FENCE_END=1: every seed; lock-fence 150,
 *    600 or 2000 ms, else an hour): once an upstream that came back empty (a restart, the
 *    repair's flush) has been fenced for lock-fence (known empty, or as a precaution because it
 *    reconnected: mcmux fences it either way) and its fence is over, a conditional command
 *    of a key it lacks (lost) may be decided from that lack: add STORED, incr NOT_FOUND (or, with
 *    an initial value, the counter created afresh: seeds 599 and 808 of 1500 with
 *    MCMUX_FUZZ_INITIAL=1 MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1)...
 *    (README, "not guaranteed": lock-fence must be longer than a lock is held). Reads fall
 *    through its misses as before. No seed of 600 with both forced needed this (every lost key
 *    was read or written again within the fence).
 *  - a memcached pool (MCMUX_FUZZ_POOL=1: every seed; none by default, drawn from a generator of
 *    its own, so that a seed without it runs as before the mode was): one upstream of the chain,
 *    drawn per seed, is a MemcachedPool (ketama over 10.0.0.1 and 10.0.0.17: s0 s3 l0 c1 on the
 *    first server, s1 s2 l1 c0 on the second; eject=false) over two servers, each a SchedUpstream
 *    of its own (its lanes, timeouts, stragglers and glitches), built as app.ts resolveUpstreams
 *    builds one: each server a HealthyUpstream of the pool's own, a server's reconnect (endFault)
 *    and its turning healthy (onMemberChange) calling ColdDetector.serverReconnected, the pool in
 *    the chain's HealthyUpstream (its journal, its fence; the marker is in each server). A fault
 *    hits one STORE: a server of the pool (fail, pause, glitches, restart empty: that server's
 *    MemoryUpstream flushed, its uniques from 1 again, losing only the keys placed on it; the
 *    eviction of a key placed on it) or another upstream; both servers may be down at once (the
 *    pool down). And as mcmux restarts (MCMUX_FUZZ_RESTART), half the time a server of the pool
 *    restarts empty as it goes down (under the same rules), for the next process's first look to
 *    find (review finding 3, ba30ccb; with that fix undone, 4000 seeds of MCMUX_FUZZ_RESTART=1
 *    MCMUX_FUZZ_FENCE_END=1 did not find it: the fence its marker inherits is seldom still
 *    running when a lock of the lost server is asked for). A pool is scheme memcached: the repair's flush of it (its journal overflowed)
 *    empties both servers. The rules above are per store: "every other upstream" means the stores
 *    of the other upstreams of the chain that hold the key (the other server of the pool holds
 *    none of this one's keys). A server restarts empty only while those stores are up, healthy
 *    (a server's own health inside the pool too), straggler-free and clean for the keys they hold,
 *    whatever the other server of its pool is doing; a fault needs no store of another upstream
 *    to lack keys (the other server of the same pool may); with a small journal one UPSTREAM at a
 *    time misses writes (both servers of the pool may); an eviction needs the key's stores in the
 *    other upstreams up, healthy and clean for it; a straggler lands while the key's store in
 *    another upstream holds its current state. What each store holds after the run is judged for
 *    the keys placed on it. Not exercised: a namespace, weights, more than two servers, more
 *    than one pool (eject=true: below). Found: seed 1172 of 1-2000 with
 *    MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1 (a multi-get over the pool, one server marked
 *    down, lost the hits of the other: fuzz-pool-findings.test.ts).
 *  - a pool that ejects (MCMUX_FUZZ_POOL_EJECT=1: every pool seed; a share such as 0.5: that
 *    share of them; none by default, drawn from the pool's generator after its other draws, so
 *    that the seeds of MCMUX_FUZZ_POOL run as before the mode was): eject=true, its servers'
 *    failure limit (downAfter) 1, 2 or 3 and probed back every 100-400 ms, so that a fault of a
 *    server takes it out of the ring and its return brings it back within the run; wired as
 *    app.ts wires one (onRingMoved -> ColdDetector.ringMoved: the pool fenced as come back empty,
 *    journal.log's `J <pool> 1|0`; a process starts with the whole ring, and
 *    ColdDetector.inheritRings fences the pool for a ring the process before left broken).
 *    The model follows the ring of the running process's pool (World.ringMoved, logged `RING`):
 *    a server holds (`placed`) the keys the ring puts on it now. A key that moves onto a server
 *    that does not hold what the server it left held of it is `lost` there (mcmux takes the pool
 *    as holding it: a restart empty of that key, for the rules above: no store of another
 *    upstream faults until it is written there again; once the fence the move began is over, a
 *    conditional command decided there from what it lacks is allowed), and a value the server
 *    holds of it instead is a ghost (Ghost), unless the pool is dirty for the key (then mcmux
 *    does not read it there before a write reaches that server): a write that may have taken
 *    effect at the move, overwritten by the first acknowledged write of the key that begins after
 *    it (judge()).
 *    FORBIDDEN since each ring move distrusts the pool (ColdDetector.ringMoved, 1976150): a ghost
 *    served, judged as any stale read. Both kinds: a server back in the ring serving what it held
 *    before it left (a session deleted or overwritten while it was out: the twemproxy hazard, which
 *    docs/drivers.md accepted until then), the same when a process starts with the whole ring; and
 *    pool finding 3 (review-pool-cold.test.ts), a key moving onto the server that stayed in the
 *    ring, which holds a value of the key from an earlier outage. MCMUX_FUZZ_POOL_GHOSTS=1 allows
 *    ghosts again (the rule before that fix; without the fix and this variable, seeds 30, 58 and
 *    167 of 1-600 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 fail). FORBIDDEN as for every seed:
 *    a ghost is never an absence (a miss of a key the ring moved falls through to a copy that
 *    holds it), so a lost write, a lock granted twice (add STORED while a lock is held, the pool
 *    fenced at each move), a cas STORED with a unique of no state it may see, an expired value, a
 *    value of another key, and what each store holds after the run are judged as before; a value
 *    older than what a write acknowledged after the move left is a stale read (a ghost counts as
 *    a state it may see until then: a cas with the unique of the value the server held, a gat's
 *    hit of it, which then proves only what that copy held, as after a failed flush_all).
 *    Its fault rules (World.mayMoveRing): a fault of a server of the pool (a glitch too: with a
 *    failure limit of 1, one failed request takes it out) happens only while every store of the
 *    other upstreams is up, healthy, clean for every key, straggler-free, with no write in
 *    flight and nothing lost, as a restart empty; a store of another upstream faults only while
 *    both servers are up, healthy, in the ring and lacking nothing. (The keys of a server out of
 *    the ring live on the other one, which lacks them: a miss there while the copy that holds
 *    them is down too is a lost session mcmux cannot help, "at least one upstream holding current
 *    data"; with eject=false the pool fails those keys instead, docs/drivers.md.) No touch or
 *    gat starts while a server is out of the ring (it reads instead, see randomOp): its return
 *    makes the keys that move onto it lost there, and a touch that found the item expired on the
 *    other upstream (README: journaled, no fault of its own) leaves the copy the ring moves away
 *    from the only one it extended (seed 303476 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
 *    MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1: a decr decided NOT_FOUND; the README's known
 *    limit of a touch). Found (the
 *    tests in fuzz-pool-findings.test.ts; all pass since a ring move distrusts the pool, 1976150
 *    and ac4c590, but the first, still todo: with every upstream fenced as come back empty the
 *    chain order decides, though the fuzz seeds of it pass now): seeds 223 and 1150 (a pool whose ring moved decides as
 *    the freshest copy, every copy dirty: a lock granted twice; the fault rule of conditional
 *    commands above keeps the fuzz clear of it), 1565 of 1501-2000 with MCMUX_FUZZ_RESTART=1
 *    MCMUX_FUZZ_FENCE_END=1 (every upstream fenced as come back empty, the pool only because its
 *    ring moved: the one first in the chain decides; also 2847 of 2501-3500 with
 *    MCMUX_FUZZ_RESTART=1), 1178 of 1-1500 (write-wait = copies: a
 *    session acknowledged while its server was out reads as a miss once it is back, its other
 *    copy still landing), 209 of 1-1500 with MCMUX_FUZZ_RESTART=1, 587 of 1-1000 with
 *    MCMUX_FUZZ_EXPIRY=1 MCMUX_FUZZ_INITIAL=1 and 225 of 1-1000 with MCMUX_FUZZ_SMALL_JOURNAL=1
 *    MCMUX_FUZZ_FLUSH=1 MCMUX_FUZZ_EXPIRY=1 (a server back in the ring: its marker check
 *    relearns the keys the pool had learnt, which the ring move made it forget, and the pool
 *    decides them on the server that lacks them). Every one of these seeds passes now, and so do
 *    1-1500 with MCMUX_FUZZ_RESTART=1 and 1-1000 without (ac4c590); seed 79 of 1-1500 with
 *    MCMUX_FUZZ_RESTART=1 found, on 1976150, that the distrust forgot the keys the pool alone held.
 *  - a store restored from a snapshot (MCMUX_FUZZ_ROLLBACK=1: every seed; a share: that share of
 *    the seeds; none by default, drawn from a generator of its own, so that a seed without it runs
 *    as before the mode was; a seed with it runs three times as many operations, for the marker,
 *    written every 2 s, to be rewritten after a snapshot): now and then a snapshot is taken of a
 *    store's whole contents (its MemoryUpstream: items, the marker among them, the uniques'
 *    counters), and now and then a store is restored to one (World.restore: down, its contents
 *    replaced, back: a reconnect, ColdDetector.reconnected or serverReconnected, as a restart
 *    empty). The cold detector must take it for a store gone back in time: fenced as come back
 *    empty and distrusted (trusted for no key, as after a journal overflow) until known clean, so
 *    that no session deleted or value overwritten since the snapshot is served, and no lock the
 *    store lacked then, or held then and was released since, is decided there. The keys whose
 *    state it holds is not what it held just before are `stale` (written there again by a set or
 *    a delete: current again). EXCLUDED, as the README's "not guaranteed" says (a restore that
 *    would fall in a hole is not made):
 *    - a snapshot with no marker of mcmux in it, or the marker of a process whose writes this
 *      process cannot tell (World.caughtBy): of this process, one not older than the last marker
 *      write it had acknowledged there (since it last forgot the store, ColdDetector.flushed), or
 *      whose own write was not acknowledged (timed out: excused as a late landing); of an earlier
 *      process, one newer than what this process read of that process's marker there before its
 *      own was acknowledged. A snapshot taken while the store was fenced is not excluded (since
 *      0fcbc45, README: its `fenced until <ms> <pid> <gen> <nonce>` marker names the writer and a
 *      generation, read as the other form's: markerPidGen); until then it was (the marker said
 *      `fenced until <ms>` only), and so was one taken while the upstream was fenced at all.
 *    - a read of the restored store before the first marker check that read it since has been
 *      judged ("a read in between may serve what it holds"): a request sent to it meanwhile that
 *      reads what it holds (a get, a touch, an incr, a conditional store) is refused (SERVER_ERROR)
 *      when applied, whenever that is; a set, a delete, a flush and the marker go through.
 *    - as for a restart empty, and for the same reason (mcmux cannot know what it holds until the
 *      check, nor, should the check fail to tell, ever): a restore only while every other store is
 *      up, healthy, fenced by nothing, straggler-free and clean for every key, with no write in
 *      flight there and no conditional command running (mayRestart), while no store lacks or holds
 *      stale keys; and no other store faults (a glitch neither: its misses would make the
 *      distrusted copy the freshest one left, README: "a key another upstream is dirty for may be
 *      taken from that one's copy") until every stale key has been written there again, nor
 *      restarts mcmux before the check has judged it (a restore while mcmux is down, or judged by
 *      a process that never saw its marker acknowledged, goes unseen: README). A restored store
 *      loses its stragglers (they die with the server).
 *    Judged beyond the replies: a restore the detector can tell (above) whose first marker check
 *    since leaves the store trusted while it still holds stale keys is a violation of its own
 *    (ROLLBACK NOT CAUGHT), whether or not a read finds them; not for a server out of the ring of a
 *    pool that ejects (its return is a ring move, which distrusts what moves back onto it, a ghost
 *    judged as any: the repair's flush of the pool, which does not reach that server, makes the
 *    detector forget what it wrote there, so its marker check may find nothing amiss).
 *    Not exercised: a durable store (sqlite, MySQL: a marker missing there is a restore too), a
 *    restore while mcmux is down.
 *  - not exercised: several mcmux, a delayed flush_all, a step of the wall clock (the inherited
 *    fence's gap, README), journal-fsync.
 *  - what cas promises beyond "never succeeds wrongly" (README: CAS uniques belong to the
 *    authority): after a failover, or after any copy of the item was written again (a repair),
 *    a cas with the unique of the current state may fail with EXISTS or NOT_FOUND; the model
 *    never requires it to succeed. Nor is the unique an append or prepend answers with kept (the
 *    client does not know the value it is of).
 *
 * THE MODEL (judge()): each key is a register; a write (set, delete, add/replace/cas STORED,
 * incr/decr result, append/prepend STORED, touch TOUCHED, a gat's hit, flush_all: a delete of
 * every key) takes effect at one point between its start and its reply; one that failed may
 * never take effect. A state is a value and its deadline (virtual ms; a set's, add's, ...; a
 * touch or gat gives the value it finds its own; an incr or append keeps the one it found): a
 * value is seen only before its deadline, and once a deadline passed the key may be absent.
 * A touch (a failed gat) may leave any value present as it began with its deadline. An append's
 * (prepend's) state is the concatenation with a state it may see (values are made of pieces
 * naming the key and the op, so that each tells where it came from). A read (or the precondition
 * of add, replace, append, prepend, cas, incr, touch, delete NOT_FOUND) may see the state of a
 * write W that started before the read ended, unless some write acknowledged before the read
 * began started after W was answered (W was certainly overwritten): add STORED, replace/append/
 * prepend NOT_STORED, cas/incr/delete/touch NOT_FOUND need the key absent in a state it may see;
 * add NOT_STORED, replace STORED, cas EXISTS, touch TOUCHED need it present; cas STORED needs the
 * state its unique was handed out for (by a gets hit, or a set/add/replace/cas/incr asked withCas)
 * to be one it may see. Violations named:
 *  - value of another key: a hit whose value does not belong to the key asked
 *  - resurrection: a value deleted by a delete acknowledged before the read began
 *  - stale read: a value overwritten by a write acknowledged before the read began
 *  - lost write: a miss (NOT_FOUND, add STORED) where an acknowledged set is current (and
 *    not past its deadline: a touched item's new deadline holds)
 *  - expired value served: a hit (a cas, add NOT_STORED...) after the deadline of every state it
 *    may see (a set with a deadline in the past, a touch or gat that shortened it)
 *  - the same for what each upstream holds, when the journal says it is clean for the key, after
 *    the run (every fault healed, the repair done): "clean" is what reads rely on.
 *
 * Each seed also draws its configuration: 2 or 3 upstreams, write-wait all or copies, min-copies
 * 1 or 2, hedged reads or not, 1-6 operations in flight, 120-300 operations, the fault rate,
 * one connection per upstream (memcached's default: everything in order) or one per key,
 * whether caches evict, whether the stores number uniques per key (a unique of one store is
 * then often valid in another: the seal must tell them apart) or per store (as memcached), and
 * whether clients send flush_all (3 seeds in 10; then 4 operations in 100 are one); from a
 * second generator (so that a seed with none of them runs as before they were), whether items
 * get deadlines and gat/gats run (4 in 10), the journal's size, and whether the upstreams are
 * caches; from a third, whether mcmux restarts and the lock-fence; from a fourth, whether an incr
 * or decr of a counter may carry the binary protocol's initial value (2 seeds in 10; then half of
 * them do, a miss creating the counter with it, and with expiry a deadline), which the model
 * takes as a write of the initial value where the key may be absent.
 *
 * Replay one seed: MCMUX_FUZZ_SEED=<seed> MCMUX_FUZZ_SEEDS=1 node --test dist/test/router/fuzz.test.js
 * More seeds: MCMUX_FUZZ_SEEDS=2000 (MCMUX_FUZZ_SEED is the first); MCMUX_FUZZ_EXPIRY=1,
 * MCMUX_FUZZ_SMALL_JOURNAL=1, MCMUX_FUZZ_RESTART=1, MCMUX_FUZZ_FENCE_END=1, MCMUX_FUZZ_FLUSH=1 and
 * MCMUX_FUZZ_INITIAL=1 give every seed expiry, a small journal, mcmux restarts, a short lock-fence,
 * clients' flush_all or incr's initial values (0: none); MCMUX_FUZZ_POOL=1 makes one upstream of
 * every seed a pool of two servers (a share such as 0.3: that share of the seeds), and
 * MCMUX_FUZZ_POOL_EJECT=1 makes that pool eject (a share: that share of the pool seeds;
 * MCMUX_FUZZ_POOL_GHOSTS=1 allows what a ring move put under a key); MCMUX_FUZZ_ROLLBACK=1 restores
 * a store to a snapshot of it now and then (a share: that share of the seeds); MCMUX_FUZZ_DIGEST=1
 * prints a digest of every seed's log (to check that a change leaves the runs as they were, the
 * marker's value, which names the process, left out); MCMUX_FUZZ_TRIAGE=1 reports
 * one line per failing seed and goes on; MCMUX_FUZZ_VERBOSE=1 counts the error replies by kind
 * and the replies by command and status; MCMUX_FUZZ_LOG_LINES=<n> shows n lines of log (60).
 * A failure prints the seed, its configuration, the violation, and the log of the key and of the
 * faults up to the violating reply (every request applied, answered, timed out or landing late).
 *
 * What it found is minimised by hand in fuzz-findings.test.ts.
 */

import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { setMonotonicClock } from '../../src/clock';
import { type ArithOp, type Command, type Reply, applyArith } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { ColdDetector, markerKey } from '../../src/router/cold-detector';
import type { WriteWait } from '../../src/router/context';
import { HealthyUpstream } from '../../src/router/health';
import { RepairJournal } from '../../src/router/journal';
import { LATE_SETTLE_MS, Repairer } from '../../src/router/repair';
import { Router } from '../../src/router/router';
import { placer } from '../../src/upstream/ketama';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { type StoreRequest, type Upstream, newUpstreamStats } from '../../src/upstream/upstream';
import { FakeUpstream, noStats } from '../helpers/fake-upstream';
import { describeReply } from '../helpers/reply-text';
import { mulberry32 } from '../helpers/random';

const FIRST_SEED = Number(process.env.MCMUX_FUZZ_SEED ?? 1);
const SEEDS = Number(process.env.MCMUX_FUZZ_SEEDS ?? 150);
/** The share of seeds with deadlines, touch and gat (MCMUX_FUZZ_EXPIRY=1: every seed). */
const EXPIRY_SHARE = Number(process.env.MCMUX_FUZZ_EXPIRY ?? 0.4);
/** The share of seeds with a journal of a few keys, that an outage overflows (MCMUX_FUZZ_SMALL_JOURNAL=1: every seed). */
const SMALL_JOURNAL_SHARE = Number(process.env.MCMUX_FUZZ_SMALL_JOURNAL ?? 0.3);
/** The share of seeds in which mcmux restarts (stops gracefully or is killed) now and then (MCMUX_FUZZ_RESTART=1: every seed). */
const RESTART_SHARE = Number(process.env.MCMUX_FUZZ_RESTART ?? 0.1);
/** The share of seeds with a lock-fence short enough to end during the run (MCMUX_FUZZ_FENCE_END=1: every seed). */
const FENCE_END_SHARE = Number(process.env.MCMUX_FUZZ_FENCE_END ?? 0.1);
/** The share of seeds whose incr and decr may carry an initial value (MCMUX_FUZZ_INITIAL=1: every seed). */
const INITIAL_SHARE = Number(process.env.MCMUX_FUZZ_INITIAL ?? 0.2);
/** The share of seeds in which clients send flush_all (MCMUX_FUZZ_FLUSH=1: every seed). */
const FLUSH_SHARE = Number(process.env.MCMUX_FUZZ_FLUSH ?? 0.3);
/**
 * A straggler also lands where no other upstream holds the key's current state, as long as no
 * write of the key was acknowledged since it was sent (MCMUX_FUZZ_LAND_UNACKED=0: only the first).
 */
const LAND_UNACKED = process.env.MCMUX_FUZZ_LAND_UNACKED !== '0';
/**
 * The share of seeds in which one upstream of the chain is a memcached pool of two servers
 * (MCMUX_FUZZ_POOL=1: every seed; default none). Drawn from a generator of its own: a seed
 * without it runs as before the mode was.
 */
const POOL_SHARE = Number(process.env.MCMUX_FUZZ_POOL ?? 0);
/**
 * The share of the pool seeds whose pool ejects a server its health takes down (eject=true: the
 * ring moves; MCMUX_FUZZ_POOL_EJECT=1: every pool seed; default none). Drawn from the pool's own
 * generator, after its other draws: a seed without it runs as before the mode was.
 */
const POOL_EJECT_SHARE = Number(process.env.MCMUX_FUZZ_POOL_EJECT ?? 0);
/**
 * With eject: what a server held of a key the ring moved onto it (a ghost: World.ringMoved) may
 * be served, as with twemproxy, only with MCMUX_FUZZ_POOL_GHOSTS=1. By default a ghost served is a
 * stale read: each ring move distrusts the pool (ColdDetector.ringMoved).
 */
const POOL_GHOSTS = process.env.MCMUX_FUZZ_POOL_GHOSTS === '1';
/**
 * The share of seeds in which a store goes back in time: restored to a snapshot of it taken
 * earlier in the run (MCMUX_FUZZ_ROLLBACK=1: every seed; default none). Drawn from a generator of
 * its own: a seed without it runs as before the mode was. See World.restore.
 */
const ROLLBACK_SHARE = Number(process.env.MCMUX_FUZZ_ROLLBACK ?? 0);
/** How many snapshots of each store are kept (the oldest dropped). */
const SNAPSHOTS_KEPT = 4;
/** A marker not fencing: `<pid> <generation> <nonce>` (cold-detector.ts PID_GEN). */
const MARKER_PID_GEN = /^(\d{1,10}) (\d{1,15}) ([0-9a-f]{1,32})$/;
/**
 * A marker while fencing: `fenced until <ms> <pid> <generation> <nonce>` (cold-detector.ts
 * FENCED_UNTIL; since 0fcbc45: a bare `fenced until <ms>` before, which the processes here never
 * write). The same groups as MARKER_PID_GEN.
 */
const MARKER_FENCED = /^fenced until \d{1,15} (\d{1,10}) (\d{1,15}) ([0-9a-f]{1,32})$/;
/** A marker's writer and generation, of either form, as ColdDetector.checkStore reads them: pid, generation, nonce (null: no marker of a process here). */
function markerPidGen(text: string): RegExpExecArray | null {
  return MARKER_PID_GEN.exec(text) ?? MARKER_FENCED.exec(text);
}
/** The pool's servers as its URL would list them: ketama places the keys over them (World's constructor: s0 s3 l0 c1 on the first, s1 s2 l1 c0 on the second). */
const POOL_RING = [
  { host: '10.0.0.1', port: 11211, weight: 1 },
  { host: '10.0.0.17', port: 11211, weight: 1 },
] as const;
/** Virtual start time: fixed, so that a seed replays exactly. */
const T0 = 1_800_000_000_000;
/** Longer than any run: the fence of an upstream that came back empty never ends here (but with a short lock-fence, see Config.lockFenceMs). */
const LOCK_FENCE_MS = 3_600_000;
const MAX_STEPS = 60_000;

const SESSIONS = ['s0', 's1', 's2', 's3'];
const LOCKS = ['l0', 'l1'];
const COUNTERS = ['c0', 'c1'];
const KEYS = [...SESSIONS, ...LOCKS, ...COUNTERS];
const isCounter = (k: string): boolean => k.startsWith('c');
/** The commands one authority decides (README: "One authority for conditional commands"). */
const CONDITIONAL: ReadonlySet<string> = new Set(['add', 'replace', 'cas', 'append', 'prepend', 'incr', 'decr']);
/** A counter's values lie in [base, base + 1e8): a number outside is another key's. */
const counterBase = (k: string): number => (COUNTERS.indexOf(k) + 1) * 100_000_000;
/** What op #id writes to `key`: it names its key (a session) or lies in its key's range (a counter). */
const valueFor = (key: string, id: number): string => (isCounter(key) ? String(counterBase(key) + id * 10_000) : `${key}:${id}`);
/** What append (prepend) #id adds to a session or lock `key`: a piece naming the key, joined by `|`. */
const pieceFor = (key: string, id: number, mode: 'append' | 'prepend'): string => (mode === 'append' ? `|${key}:${id}a` : `${key}:${id}p|`);
/** An append's (prepend's) result on `old`. */
const joined = (old: string, piece: string, mode: 'append' | 'prepend'): string => (mode === 'append' ? old + piece : piece + old);
function belongsTo(key: string, v: string): boolean {
  if (!isCounter(key)) return v.split('|').every((p) => p.startsWith(`${key}:`));
  if (!/^\d+$/.test(v)) return false;
  const n = Number(v);
  return n >= counterBase(key) && n < counterBase(key) + 100_000_000;
}

const silent = pino({ level: 'silent' });
const source = noStats;
const drain = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const noop = (): void => {};

// ---------------------------------------------------------------------------------------------
// The scheduled upstream: a FakeUpstream whose requests wait in lanes for the scheduler.

interface Req {
  readonly id: number;
  /** The mcmux process (World.gen) that sent it. */
  readonly gen: number;
  readonly up: SchedUpstream;
  readonly lane: string;
  /** The key of the lane (the first key of a get). */
  readonly key: string;
  readonly what: string;
  readonly op: 'get' | 'store' | 'delete' | 'touch' | 'arith' | 'flush';
  /** It changes the store (a straggler of it matters). */
  readonly write: boolean;
  /** World.clock when it was sent: the op it is of (or whose value it copies) began no later. */
  readonly sentAt: number;
  readonly apply: () => Promise<unknown>;
  /** A flush the repair sent (an overflowed cache): it loses what it held, as in a restart. */
  readonly byRepair: boolean;
  readonly timeoutAt: number;
  applied: boolean;
  /** Refused (a glitch): its failure, not yet answered, will journal the key. */
  refused?: boolean;
  /** MCMUX_FUZZ_ROLLBACK: sent to a restored store before a marker check judged it, and it reads: refused when applied. */
  inWindow?: boolean;
  result: Promise<unknown> | undefined;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** It derives the new value from the one it finds (incr, decr, append, prepend). */
const composes = (r: Req): boolean => r.op === 'arith' || /^(append|prepend) /.test(r.what);
/** A flush changes every key. */
const changes = (r: Req, key: string): boolean => r.write && (r.key === key || r.op === 'flush');
/** The keys whose log shows `r` (none: every key's). */
const logKeys = (r: Req): readonly string[] => (r.op === 'flush' ? [] : [r.key]);

type UpState = 'ok' | 'paused' | 'down';

class SchedUpstream extends FakeUpstream {
  state: UpState = 'ok';
  /** Virtual time the current fault ends. */
  faultUntil = 0;
  /** The current fault is a restart (empty). */
  restarting = false;
  readonly lanes = new Map<string, Req[]>();
  /** Keys it lost in a restart and has not been written since: mcmux believes it holds them. */
  readonly lost = new Set<string>();
  /**
   * MCMUX_FUZZ_ROLLBACK: keys whose state it holds is older than the current one, restored from a
   * snapshot (World.restore) and not written since: mcmux must not take them from it once the
   * marker check has judged it (the rules of `lost` apply to them too: no other store faults
   * meanwhile).
   */
  readonly stale = new Set<string>();
  /** Snapshots of its whole contents (the marker too), oldest first. */
  readonly snapshots: Snapshot[] = [];
  /**
   * Restored, and no marker check that read it since has been judged (World.watchDetector): the
   * README's hole ("a read in between may serve what it holds"). A request sent to it meanwhile
   * that reads (a get, a touch, a conditional command) is refused when applied (see send).
   */
  rbWindow: { at: number } | undefined;
  /** World.clock at its last restore. */
  rbRestoredAt = -1;
  /**
   * Per mcmux process: the generation of its last `<pid> <gen> <nonce>` marker write acknowledged
   * here since its detector last forgot the store (ColdDetector.flushed), and every generation
   * acknowledged.
   */
  readonly markerAcked = new Map<number, number>();
  readonly markerOk = new Set<string>();
  /** World.clock when markerAcked was last set. */
  readonly markerAckedAt = new Map<number, number>();
  /** Per mcmux process: some marker write of it (a `fenced until` too) was acknowledged here since its detector last forgot the store. */
  readonly markerWrote = new Set<number>();
  /**
   * Per mcmux process: the markers of other processes (writer process -> highest generation) its
   * marker checks read here before its own marker was acknowledged (or while it started).
   */
  readonly foreignSeen = new Map<number, Map<number, number>>();
  /** A request timed out since it last (re)connected: the next connection is a reconnect. */
  timedOut = false;
  /** The current fault is a restore to a snapshot (World.restore). */
  restoring = false;
  /** Its journal overflowed (logged once per overflow). */
  overflowed = false;
  healthy!: HealthyUpstream;

  /** The repair is about to flush it (an overflowed cache): that flush empties it as a restart does. */
  repairFlush = false;
  /**
   * Virtual ms mcmux was first seen fencing it (lock-fence), while it still lacks some keys
   * (lost); undefined once it lacks none. Its fence over, and lock-fence passed since, it decides
   * from what it lacks (see mayDecideLost).
   */
  emptyFencedAt: number | undefined;
  fenceEndNoted = false;
  /** The mcmux process whose driver (Conn) is calling: set by the Conn right before each call. */
  callerGen = 0;
  /** Its place in the chain: the upstream it is, or the pool it is a server of (MCMUX_FUZZ_POOL). */
  chainAt = 0;
  /**
   * A server of a pool: `healthy` is then the pool's (the chain's upstream: journal, fence),
   * `member` the server's own health inside the pool, and `placed` the keys ketama puts on it.
   */
  member: HealthyUpstream | undefined;
  /** With eject (MCMUX_FUZZ_POOL_EJECT) it follows the ring of the running process's pool (World.ringMoved). */
  placed: Set<string> | undefined;

  constructor(
    name: string,
    private readonly world: World,
    scheme?: string,
  ) {
    super(name, scheme);
  }

  private send<R>(op: Req['op'], what: string, key: string, apply: () => Promise<R>, byRepair = false): Promise<R> {
    const gen = this.callerGen;
    // A process that was stopped or killed sends nothing more (its timers may still fire).
    if (gen !== this.world.gen) return Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: the mcmux process ${gen} is gone`));
    if (this.state === 'down') return Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: connection refused (injected)`));
    const p = new Promise<R>((resolve, reject) => {
      // One connection for every key (memcached's default), or one per key (connections > 1:
      // requests of different keys, a multi-get and a write of its second key too, in any order).
      const lane = this.world.cfg.oneConnection ? '' : key;
      const write = op !== 'get';
      const req: Req = {
        id: ++this.world.reqSeq, gen, up: this, lane, key, what, op, write, sentAt: this.world.clock, apply, byRepair, timeoutAt: Date.now() + this.timeoutMs,
        applied: false, result: undefined, resolve: resolve as (v: unknown) => void, reject, timer: undefined,
      };
      // Restored to a snapshot, not yet judged by a marker check: what reads what it holds (the
      // README's hole: "a read in between may serve what it holds") is refused (World.restore).
      if (this.rbWindow !== undefined && key !== this.world.markerKey && (op === 'get' || op === 'touch' || op === 'arith' || (op === 'store' && !what.startsWith('set ')))) req.inWindow = true;
      req.timer = setTimeout(() => this.world.expire(req), this.timeoutMs);
      let l = this.lanes.get(lane);
      if (!l) this.lanes.set(lane, (l = []));
      l.push(req);
    });
    if (this.world.rollback && key === this.world.markerKey) this.world.markerSeen(this, op, what, gen, p);
    return p;
  }

  // Uniques per key (cfg.keyUniques): the n-th item of a key is unique n, as a store that numbers
  // each key on its own would; two stores that missed a different number of writes of the key
  // are a step apart. The MemoryUpstream's own (global, as memcached's) uniques are mapped.
  readonly versions = new Map<string, Map<bigint, bigint>>();
  readonly innerCas = new Map<string, Map<bigint, bigint>>();
  /** A new item of `key` with the store's unique `cas`: its unique as this store shows it. */
  private made(key: string, cas: bigint | undefined): bigint | undefined {
    if (!this.world.cfg.keyUniques || cas === undefined) return cas;
    let v = this.versions.get(key);
    if (!v) this.versions.set(key, (v = new Map()));
    let back = this.innerCas.get(key);
    if (!back) this.innerCas.set(key, (back = new Map()));
    const n = BigInt(v.size + 1);
    v.set(cas, n);
    back.set(n, cas);
    return n;
  }
  private shown(key: string, cas: bigint): bigint {
    return this.world.cfg.keyUniques ? (this.versions.get(key)?.get(cas) ?? 0n) : cas;
  }
  /** A restart: every key is numbered from 1 again. */
  forgetUniques(): void {
    this.versions.clear();
    this.innerCas.clear();
  }

  /** MCMUX_FUZZ_ROLLBACK: a copy of everything the store holds now (its uniques' counters too). */
  takeSnapshot(at: number, vt: number, gen: number): Snapshot {
    const m = this.inner as unknown as { items: Map<string, { value: Buffer; flags: number; cas: bigint; deadline: number }>; bytes: number; nextCas: bigint };
    const items = new Map([...m.items].map(([k, e]) => [k, { ...e, value: Buffer.from(e.value) }]));
    const copy = (x: Map<string, Map<bigint, bigint>>): Map<string, Map<bigint, bigint>> => new Map([...x].map(([k, v]) => [k, new Map(v)]));
    const marker = items.get(this.world.markerKey);
    return {
      at, vt, gen, items, bytes: m.bytes, nextCas: m.nextCas, versions: copy(this.versions), innerCas: copy(this.innerCas),
      marker: marker === undefined || (marker.deadline !== 0 && marker.deadline <= Date.now()) ? undefined : marker.value.toString('latin1'),
    };
  }

  /** MCMUX_FUZZ_ROLLBACK: the store holds what `s` held, and nothing else (a restore from a backup). */
  restoreSnapshot(s: Snapshot): void {
    const m = this.inner as unknown as { items: Map<string, { value: Buffer; flags: number; cas: bigint; deadline: number }>; bytes: number; nextCas: bigint };
    m.items.clear();
    for (const [k, e] of s.items) m.items.set(k, { ...e, value: Buffer.from(e.value) });
    m.bytes = s.bytes;
    m.nextCas = s.nextCas;
    this.versions.clear();
    this.innerCas.clear();
    for (const [k, v] of s.versions) this.versions.set(k, new Map(v));
    for (const [k, v] of s.innerCas) this.innerCas.set(k, new Map(v));
  }

  /** What it holds of `key` now (value, flags, deadline), or undefined: absent or expired. */
  entryOf(key: string): string | undefined {
    const e = (this.inner as unknown as { items: Map<string, { value: Buffer; flags: number; deadline: number }> }).items.get(key);
    if (e === undefined || (e.deadline !== 0 && e.deadline <= Date.now())) return undefined;
    return `${e.value.toString('latin1')} ${e.flags} ${e.deadline}`;
  }

  override get(keys: readonly string[], touch?: number) {
    const k = [...keys];
    return this.send('get', `get ${k.join(' ')}`, k[0] ?? '', async () =>
      (await this.inner.get(k, touch)).map((h, i) => (h === undefined ? h : { ...h, cas: this.shown(k[i] as string, h.cas) })),
    );
  }
  override store(req: StoreRequest) {
    return this.send('store', `${req.mode} ${req.key}=${req.value.toString()}`, req.key, async () => {
      // A unique the store never showed for the key matches none of its items (they start at 1).
      const cas = req.cas === undefined || !this.world.cfg.keyUniques ? req.cas : (this.innerCas.get(req.key)?.get(req.cas) ?? 0n);
      const r = await this.inner.store(req.cas === cas ? req : { ...req, cas });
      return r.status === 'STORED' ? { ...r, cas: this.made(req.key, r.cas) } : r;
    });
  }
  override delete(key: string) {
    return this.send('delete', `delete ${key}`, key, () => this.inner.delete(key));
  }
  override touch(key: string, deadline: number, withItem?: boolean) {
    return this.send('touch', `touch ${key}`, key, () => this.inner.touch(key, deadline, withItem));
  }
  override arith(op: ArithOp, key: string, delta: bigint) {
    return this.send('arith', `${op} ${key} ${delta}`, key, async () => {
      const r = await this.inner.arith(op, key, delta);
      return r.status === 'OK' && r.cas !== undefined ? { ...r, cas: this.made(key, r.cas) as bigint } : r;
    });
  }
  override flush() {
    const byRepair = this.repairFlush;
    this.repairFlush = false;
    return this.send('flush', byRepair ? 'flush (the repair)' : 'flush', '\0flush', () => this.inner.flush(), byRepair);
  }
  override async probe(): Promise<void> {
    if (this.state === 'down') throw new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: connection refused (injected)`);
    if (this.state === 'paused') {
      await new Promise((r) => setTimeout(r, this.timeoutMs));
      throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: probe timed out (injected pause)`);
    }
  }

  /** It is where its upstream keeps `key` (every key, but a pool server only those placed on it). */
  holds(key: string): boolean {
    return this.placed === undefined || this.placed.has(key);
  }

  /** Its own health says healthy (a pool server's inside the pool; an upstream's its only one). */
  get serverHealthy(): boolean {
    return (this.member ?? this.healthy).state === 'healthy';
  }

  /** World.clock when a write of each key (a flush: '\0flush') was last applied here. */
  readonly appliedAt = new Map<string, number>();
  /** A request that changes `key` is in flight here. */
  hasWriteInFlight(key: string): boolean {
    for (const lane of this.lanes.values()) if (lane.some((r) => changes(r, key))) return true;
    return false;
  }
}

/**
 * One mcmux process's driver of a SchedUpstream (the server, which outlives it): the
 * HealthyUpstream of each process wraps its own, and a process that stopped sends nothing more.
 */
class Conn implements Upstream {
  readonly stats = newUpstreamStats();
  onReconnect: (() => void) | undefined;
  constructor(
    readonly up: SchedUpstream,
    readonly gen: number,
  ) {}
  get name(): string {
    return this.up.name;
  }
  get scheme(): string {
    return this.up.scheme;
  }
  get timeoutMs(): number {
    return this.up.timeoutMs;
  }
  private as<R>(f: () => Promise<R>): Promise<R> {
    this.up.callerGen = this.gen;
    return f();
  }
  get(keys: readonly string[], touch?: number) {
    return this.as(() => this.up.get(keys, touch));
  }
  store(req: StoreRequest) {
    return this.as(() => this.up.store(req));
  }
  delete(key: string) {
    return this.as(() => this.up.delete(key));
  }
  touch(key: string, deadline: number, withItem?: boolean) {
    return this.as(() => this.up.touch(key, deadline, withItem));
  }
  arith(op: ArithOp, key: string, delta: bigint) {
    return this.as(() => this.up.arith(op, key, delta));
  }
  flush() {
    return this.as(() => this.up.flush());
  }
  probe() {
    return this.as(() => this.up.probe());
  }
  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------
// One seed's world: the router, its upstreams, the scheduler, and the record.

interface Op {
  readonly id: number;
  readonly kind: 'get' | 'gets' | 'gat' | 'gats' | 'set' | 'delete' | 'touch' | 'add' | 'incr' | 'decr' | 'replace' | 'append' | 'prepend' | 'cas' | 'flush_all';
  readonly keys: readonly string[];
  /** What it stores (set, add, replace, cas), or adds (append, prepend: a piece). */
  readonly value: string | undefined;
  /** A cas: the unique it sends, and what the key held when it was handed out (undefined: made up). */
  readonly token?: Token | undefined;
  readonly delta: bigint;
  /** An incr's or decr's initial value (binary protocol): a miss creates the key with it, answering it. */
  readonly initial?: bigint | undefined;
  readonly text: string;
  readonly final: boolean;
  readonly start: number;
  /** Virtual ms (since T0) it began, and it was answered. */
  readonly vstart: number;
  vend: number | undefined;
  /** The deadline it writes (set, add, replace, cas; an incr or decr that creates its key) or touches to (touch, gat, gats): virtual ms since T0, Infinity for none. */
  readonly deadline: number;
  /** Its keys that every upstream was dirty for as it began: it may take them from the freshest copy. */
  readonly allDirty: readonly string[];
  /**
   * Its keys that an upstream lacks as it begins (or as that upstream's lock-fence ends while it
   * runs), having come back empty (a restart, the repair's flush) and been fenced for it, its
   * lock-fence over since (see World.mayDecideLost).
   */
  lostAfterFence: readonly string[];
  end: number | undefined;
  reply: Reply | undefined;
  thrown: unknown;
  /** mcmux was killed before it answered (reply: a SERVER_ERROR; end: once nothing of it may land). */
  killed?: boolean;
}

/** A cas unique a reply handed out: for the state `value` of `key`, by op #from. */
interface Token {
  readonly key: string;
  readonly cas: bigint;
  readonly value: string | undefined;
  readonly from: number;
}

interface LogLine {
  readonly t: number;
  readonly vt: number;
  readonly keys: readonly string[];
  readonly text: string;
}

interface Straggler {
  readonly req: Req;
  readonly deadline: number;
}

/**
 * With eject (MCMUX_FUZZ_POOL_EJECT): `key` moved (the ring moved, or a process started with the
 * whole ring) onto `server`, which held `value` (until `deadline`, virtual ms), not what the
 * server the key left held for it: the pool may serve it from then on (judge(): a write that may
 * have taken effect at `at`, until an acknowledged write of the key that began after it).
 * `return`: the server came back into the ring (docs/drivers.md, eject: "a server that comes back
 * with its data then serves what it held before"); `takeover`: the server stayed, the other left
 * (pool finding 3, open).
 */
interface Ghost {
  readonly key: string;
  readonly value: string;
  readonly deadline: number;
  readonly at: number;
  readonly server: string;
  readonly kind: 'return' | 'takeover';
}

/** MCMUX_FUZZ_ROLLBACK: a store's whole contents at one moment (World.snapshot). */
interface Snapshot {
  /** World.clock and virtual ms when taken, and the mcmux process running then. */
  readonly at: number;
  readonly vt: number;
  readonly gen: number;
  readonly items: Map<string, { value: Buffer; flags: number; cas: bigint; deadline: number }>;
  readonly bytes: number;
  readonly nextCas: bigint;
  readonly versions: Map<string, Map<bigint, bigint>>;
  readonly innerCas: Map<string, Map<bigint, bigint>>;
  /** The marker it holds (undefined: none). */
  readonly marker: string | undefined;
}

interface Config {
  readonly n: number;
  readonly writeWait: WriteWait;
  readonly minCopies: number;
  readonly hedgeMs: number;
  readonly clients: number;
  readonly ops: number;
  readonly faultRate: number;
  /** Every request of an upstream on one connection, else one connection per key. */
  readonly oneConnection: boolean;
  /** Caches evict session keys (then add, incr and decr go to lock and counter keys only). */
  readonly evictions: boolean;
  /** The stores number uniques per key (else one counter per store, as memcached). */
  readonly keyUniques: boolean;
  /** Clients send flush_all now and then (mcmux --allow-flush). */
  readonly flushes: boolean;
  /** Items get deadlines (some already past), touch and gat/gats change them. */
  readonly expiry: boolean;
  /** journal-max-keys: 100,000 (never reached), or a few, so that an outage overflows it. */
  readonly journalMaxKeys: number;
  /** The upstreams are caches (scheme memcached: the repair flushes one whose journal overflowed). */
  readonly caches: boolean;
  /** mcmux restarts now and then: stopped gracefully, or killed (only journal.log survives). */
  readonly restarts: boolean;
  /** lock-fence (ms): longer than any run, or short enough to end while keys are dirty and locks held. */
  readonly lockFenceMs: number;
  /** An incr or decr of a counter may carry an initial value (the binary protocol's: a miss creates it). */
  readonly initials: boolean;
}

class World {
  readonly rng: () => number;
  /** A fourth generator, for the initial values (a seed without them runs as before they were). */
  private readonly rngInitial: () => number;
  readonly cfg: Config;
  clock = 0;
  reqSeq = 0;
  opSeq = 0;
  inflight = 0;
  readonly ops: Op[] = [];
  readonly log: LogLine[] = [];
  /**
   * The stores: one per upstream of the chain, or two for the pool (MCMUX_FUZZ_POOL: its servers,
   * each with its own lanes, faults and `lost`). Most rules are stated per store (see the header).
   */
  readonly ups: SchedUpstream[];
  /** The upstream of the chain that is a pool of two servers (MCMUX_FUZZ_POOL), else -1. */
  readonly poolAt: number;
  /** The pool ejects (MCMUX_FUZZ_POOL_EJECT): its ring moves as its servers' health goes down and back. */
  readonly eject: boolean = false;
  /** With eject: its servers' health's failure limit (downAfter), drawn per seed. */
  readonly memberDownAfter: number = 3;
  /** With eject: the running process's pool, whose ring the model follows (ringMoved). */
  pool: MemcachedPool | undefined;
  /** With eject: values the ring moved onto a server (see Ghost). */
  readonly ghosts: Ghost[] = [];
  /** The mcmux process running now (1 at the first start), and its parts. */
  gen = 0;
  /** The process's upstreams, in chain order (a pool once). */
  chain: HealthyUpstream[] = [];
  journal!: RepairJournal;
  router!: Router;
  repairer!: Repairer;
  detector!: ColdDetector;
  /** journal.log's directory (seeds with restarts). */
  readonly stateDir: string | undefined;
  /** Ops a kill left unanswered, by the process they ran in: they end once nothing of it may land. */
  killed: Array<{ op: Op; gen: number }> = [];
  /** A restart is due (chosen by step), and one is under way (no other is chosen meanwhile). */
  restartDue: 'graceful' | 'kill' | undefined;
  restarting = false;
  stragglers: Straggler[] = [];
  /** Virtual ms the run took. */
  endedAt = 0;
  /** The logical clock when an upstream last learnt again a key it had lost (see mayFault). */
  relearntAt = -1;
  /** The cas uniques the client was handed, by key, oldest first. */
  readonly tokens = new Map<string, Token[]>();
  /** MCMUX_FUZZ_ROLLBACK: stores go back in time now and then (snapshot, restore). */
  readonly rollback: boolean = false;
  /** Restores the first marker check since did not distrust, the store still holding stale keys (a violation). */
  readonly uncaught: string[] = [];
  /** A store to restore at the first step the rules allow (see restore). */
  restoreDue: SchedUpstream | undefined;
  /** The cold detector's marker key (the same for every process of this host). */
  readonly markerKey = markerKey();
  /** Each process's marker nonce -> the process (World.gen). */
  readonly nonces = new Map<string, number>();

  constructor(
    readonly seed: number,
    private readonly t: TestContext,
  ) {
    this.rng = mulberry32(seed);
    const x = mulberry32(seed ^ 0x5bd1e995);
    // A third generator: a seed without restarts or a short fence runs as before they were.
    const y = mulberry32(seed ^ 0x2545f491);
    this.rngInitial = mulberry32(seed ^ 0x9e3779b9);
    const n = this.rng() < 0.5 ? 2 : 3;
    this.cfg = {
      n,
      writeWait: this.rng() < 0.5 ? 'all' : 'copies',
      minCopies: n === 3 && this.rng() < 0.3 ? 2 : 1,
      hedgeMs: this.rng() < 0.2 ? 10 : 0,
      clients: 1 + this.int(6),
      ops: 120 + this.int(180),
      faultRate: [0.02, 0.05, 0.1][this.int(3)] as number,
      oneConnection: this.rng() < 0.5,
      evictions: this.rng() < 0.7,
      keyUniques: this.rng() < 0.5,
      flushes: this.rng() < FLUSH_SHARE,
      // Drawn from a second generator: a seed with none of these runs as it did before they were.
      expiry: x() < EXPIRY_SHARE,
      journalMaxKeys: x() < SMALL_JOURNAL_SHARE ? 1 + Math.floor(x() * 3) : 100_000,
      caches: x() < 0.5,
      restarts: y() < RESTART_SHARE,
      lockFenceMs: y() < FENCE_END_SHARE ? ([150, 600, 2000] as const)[Math.floor(y() * 3)] as number : LOCK_FENCE_MS,
      initials: this.rngInitial() < INITIAL_SHARE,
    };
    // A fifth generator: a seed without a pool runs as before the mode was.
    const p = mulberry32(seed ^ 0x85ebca6b);
    this.poolAt = p() < POOL_SHARE ? Math.floor(p() * n) : -1;
    if (this.poolAt >= 0 && p() < POOL_EJECT_SHARE) {
      this.eject = true;
      this.memberDownAfter = 1 + Math.floor(p() * 3);
    }
    // A sixth generator: a seed without rollbacks runs as before the mode was.
    this.rollback = mulberry32(seed ^ 0x27d4eb2f)() < ROLLBACK_SHARE;
    if (this.poolAt < 0) {
      this.ups = Array.from({ length: n }, (_, i) => new SchedUpstream(`up${i}`, this, this.cfg.caches ? 'memcached' : undefined));
      this.ups.forEach((u, i) => (u.chainAt = i));
    } else {
      const place = placer(POOL_RING, 'ketama');
      this.ups = [];
      for (let i = 0; i < n; i++) {
        if (i !== this.poolAt) {
          const u = new SchedUpstream(`up${i}`, this, this.cfg.caches ? 'memcached' : undefined);
          u.chainAt = i;
          this.ups.push(u);
          continue;
        }
        POOL_RING.forEach((_, j) => {
          const u = new SchedUpstream(`up${i}${'ab'[j]}`, this, 'memcached');
          u.chainAt = i;
          u.placed = new Set(KEYS.filter((k) => place(k) === j));
          this.ups.push(u);
        });
      }
    }
    this.stateDir = this.cfg.restarts ? mkdtempSync(join(tmpdir(), 'mcmux-fuzz-')) : undefined;
    this.makeProcess();
  }

  /**
   * An mcmux process, as app.ts builds one: its own drivers (Conn), health, cold detector,
   * journal (loaded from journal.log when the seed restarts), router and repairer, over the
   * same upstreams. Not started (see startProcess).
   */
  private makeProcess(): void {
    const gen = ++this.gen;
    this.processStopped = false;
    const journal = new RepairJournal({ maxKeys: this.cfg.journalMaxKeys, dir: this.stateDir, fsync: 'no' });
    this.journal = journal;
    const detector = new ColdDetector(() => this.chain, this.cfg.lockFenceMs, silent, journal);
    this.detector = detector;
    if (this.rollback) this.watchDetector(detector, gen);
    const chain: HealthyUpstream[] = [];
    for (let i = 0; i < this.cfg.n; i++) {
      if (i === this.poolAt) {
        chain.push(this.makePool(i, gen, detector));
        continue;
      }
      const u = this.ups.find((y) => y.chainAt === i) as SchedUpstream;
      const conn = new Conn(u, gen);
      u.healthy = new HealthyUpstream(conn, { downAfter: 3, probeMinMs: 100, probeMaxMs: 400, fenceKeysMax: this.cfg.journalMaxKeys }, (h, from, to) => {
        if (gen !== this.gen) return;
        this.note([], `${u.name} health ${from} -> ${to}`);
        // As app.ts: an upstream back to healthy has its marker checked.
        if (to === 'healthy') void detector.check(h);
      });
      chain.push(u.healthy);
    }
    this.chain = chain;
    if (this.stateDir !== undefined) journal.load(this.chain);
    // As app.ts: sealed as the process before left it.
    for (const h of this.chain) h.resumeUniques(journal.uniquesEpochOf(h));
    const router = new Router(
      {
        upstreams: this.chain,
        journal: this.journal,
        onFlushed: (u) => detector.forget(u as HealthyUpstream),
        hedgeMs: this.cfg.hedgeMs,
        minCopies: this.cfg.minCopies,
        writeWait: this.cfg.writeWait,
        allowFlush: true,
      },
      source,
      noop,
    );
    this.router = router;
    this.repairer = new Repairer(() => router.context, { rate: 1000, flushCaches: true }, silent);
    // As app.ts: an overflowed cache the repair flushes comes back empty, fenced as after a restart.
    this.repairer.onFlush = (u) => {
      // Each server of a pool: the pool's flush is theirs.
      for (const y of this.ups) if (y.healthy === u) y.repairFlush = true;
      detector.knownEmpty(u as HealthyUpstream);
    };
    this.repairer.onFlushed = (u) => detector.flushed(u as HealthyUpstream);
  }

  /**
   * The pool (upstream `i` of the chain), as app.ts resolveUpstreams builds one: a MemcachedPool
   * over this process's drivers of its servers (each server a HealthyUpstream of the pool's own),
   * wrapped in a HealthyUpstream; a server's reconnect (endFault) and a server turning healthy
   * (onMemberChange) call ColdDetector.serverReconnected.
   */
  private makePool(i: number, gen: number, detector: ColdDetector): HealthyUpstream {
    const servers = this.ups.filter((y) => y.chainAt === i);
    const health = { downAfter: 3, probeMinMs: 100, probeMaxMs: 400, fenceKeysMax: this.cfg.journalMaxKeys };
    const pool = new MemcachedPool(
      `up${i}`,
      servers.map((u, j) => ({ ...(POOL_RING[j] as (typeof POOL_RING)[number]), upstream: new Conn(u, gen) })),
      { distribution: 'ketama', namespace: '', eject: this.eject },
      // With eject: a server's failure limit (1-3), so that it leaves the ring (and comes back,
      // probed every 100-400 ms) within a fault.
      this.eject ? { ...health, downAfter: this.memberDownAfter } : health,
    );
    const h = new HealthyUpstream(pool, { ...health }, (hu, from, to) => {
      if (gen !== this.gen) return;
      this.note([], `${hu.name} health ${from} -> ${to}`);
      if (to === 'healthy') void detector.check(hu);
    });
    pool.onMemberChange = (m, from, to) => {
      if (gen !== this.gen) return;
      this.note([], `${m.name} (a server of ${h.name}) health ${from} -> ${to}`);
      if (to === 'healthy') detector.serverReconnected(h, m);
    };
    servers.forEach((u, j) => {
      u.healthy = h;
      u.member = pool.members()[j];
    });
    if (this.eject) {
      // As app.ts: a ring move fences the pool as come back empty (and journal.log keeps whether
      // the ring is whole, `J` lines); then the model follows the move.
      pool.onRingMoved = () => {
        if (gen !== this.gen) return;
        detector.ringMoved(h);
        this.ringMoved(`the ring of ${h.name} moved (out of it: ${pool.outOfRing().join(' ') || 'none'})`);
      };
      this.pool = pool;
      // A process starts with the whole ring, whatever the one before had ejected (its J line
      // fences the pool as come back empty: ColdDetector.inheritRings).
      if (gen > 1) this.ringMoved(`process ${gen} starts with the whole ring of ${h.name}`);
    }
    return h;
  }

  /**
   * With eject: the keys' servers as the running process's pool places them now. A key that moved
   * onto a server is `lost` there unless it holds what the server the key left held for it (the
   * pool believes it holds the key's state), and what it holds of the key instead is a Ghost.
   */
  ringMoved(why: string): void {
    const pool = this.pool as MemcachedPool;
    const servers = this.ups.filter((y) => y.chainAt === this.poolAt);
    const members = pool.members();
    const before = new Map(KEYS.map((k) => [k, servers.find((y) => y.placed?.has(k))]));
    const wasIn = servers.map((y) => (y.placed?.size ?? 0) > 0);
    servers.forEach((y) => (y.placed = new Set()));
    for (const k of KEYS) {
      const at = members.indexOf(pool.serverFor(k) as HealthyUpstream);
      if (at >= 0) servers[at]?.placed?.add(k);
    }
    const text: string[] = [];
    const entry = (y: SchedUpstream | undefined, k: string): { value: string; deadline: number } | undefined => {
      const e = y === undefined ? undefined : (y.inner as unknown as { items: Map<string, { value: Buffer; deadline: number }> }).items.get(k);
      if (e === undefined || (e.deadline !== 0 && e.deadline <= Date.now())) return undefined;
      return { value: e.value.toString(), deadline: e.deadline === 0 ? Infinity : e.deadline - T0 };
    };
    // What the server a key left lacked of it (lost), it lacks no more: the key is not its now.
    const lostFrom = new Map(KEYS.map((k) => [k, before.get(k)?.lost.has(k) === true]));
    for (const k of KEYS) {
      const from = before.get(k);
      if (from !== undefined && !from.placed?.has(k) && from.lost.delete(k)) this.relearntAt = this.clock;
    }
    servers.forEach((y, j) => {
      for (const k of y.placed ?? []) {
        const from = before.get(k);
        if (from === y) continue;
        const had = entry(from, k);
        const has = entry(y, k);
        const kind = wasIn[j] === true ? 'takeover' : 'return';
        // The same as the server it left, which held the key's state as mcmux knows it (not lost
        // there: seed 704 of 1-1000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_INITIAL=1
        // MCMUX_FUZZ_FENCE_END=1 and 1653 of 1001-2000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1
        // MCMUX_FUZZ_RESTART=1, as the mode first ran: a key moved back from a server that had
        // restarted empty, the other one lacking it too, was taken as held).
        if (from !== undefined && !lostFrom.get(k) && had?.value === has?.value && had?.deadline === has?.deadline) {
          text.push(`${k} -> ${y.name} (holds the same)`);
          continue;
        }
        y.lost.add(k);
        // As after a restart empty: the fence the move begins governs what it lacks now.
        y.emptyFencedAt = undefined;
        y.fenceEndNoted = false;
        if (has === undefined) {
          text.push(`${k} -> ${y.name} (lacks it)`);
          continue;
        }
        // The pool dirty for the key: mcmux reads it there only once a write (the repair's) has
        // reached the server the key is on now, which then holds what it wrote.
        if (this.journal.isDirty(y.healthy, k)) {
          text.push(`${k} -> ${y.name} (holds ${JSON.stringify(has.value)}, the pool dirty for it)`);
          continue;
        }
        text.push(`${k} -> ${y.name} (holds ${JSON.stringify(has.value)}: ${kind === 'return' ? 'back in the ring' : 'POOL FINDING 3'})`);
        this.ghosts.push({ key: k, value: has.value, deadline: has.deadline, at: this.clock, server: y.name, kind });
      }
    });
    this.note([], `RING ${why}: ${servers.map((y) => `${y.name}: ${[...(y.placed ?? [])].join(' ') || '-'}`).join('; ')}${text.length > 0 ? `; moved ${text.join(', ')}` : ''}`);
  }

  int(n: number): number {
    return Math.floor(this.rng() * n);
  }
  chance(p: number): boolean {
    return this.rng() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  get now(): number {
    return Date.now() - T0;
  }

  note(keys: readonly string[], text: string): void {
    this.log.push({ t: this.clock, vt: this.now, keys, text });
  }

  describeConfig(): string {
    const c = this.cfg;
    const pool = this.poolAt < 0 ? '' : ` pool=up${this.poolAt}(${this.ups.filter((u) => u.chainAt === this.poolAt).map((u) => `${u.name}: ${[...(u.placed ?? [])].join(' ')}`).join('; ')})`;
    return `upstreams=${c.n}${pool} expiry=${c.expiry} journal-max-keys=${c.journalMaxKeys} scheme=${c.caches ? 'memcached' : 'fake'} connections=${c.oneConnection ? 'one' : 'per-key'} uniques=${c.keyUniques ? 'per-key' : 'per-store'} flush_all=${c.flushes} evictions=${c.evictions} write-wait=${c.writeWait} min-copies=${c.minCopies} hedge-ms=${c.hedgeMs} clients=${c.clients} ops=${c.ops} fault-rate=${c.faultRate}`;
  }

  // -------------------------------------------------------------------------------------------
  // Requests: apply, answer, time out, fail.

  /** The timer of `req` fired: as the driver, TIMEOUT to it, IO (late) to the rest of its connection. */
  expire(req: Req): void {
    const u = req.up;
    const lane = u.lanes.get(req.lane);
    if (!lane || !lane.includes(req)) return;
    u.lanes.delete(req.lane);
    u.timedOut = true;
    for (const r of lane) {
      if (r.timer) clearTimeout(r.timer);
      if (!r.applied && r.write) {
        this.stragglers.push({ req: r, deadline: Date.now() + LATE_SETTLE_MS - 1 });
        this.note(logKeys(r), `${u.name} ${r.what}: timed out unapplied (a straggler, lands by +${LATE_SETTLE_MS - 1} ms or never)`);
      } else if (r.write) {
        this.note(logKeys(r), `${u.name} ${r.what}: timed out (applied)`);
      }
      r.reject(
        r === req
          ? new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${u.name}: no reply within ${u.timeoutMs} ms (injected)`)
          : new McmuxError(ErrorCodes.UPSTREAM_IO, `${u.name}: connection discarded after a request on it timed out (injected)`, true),
      );
    }
  }

  /** The server closed the connection of `lane` (or all of them): what it applied stays applied. */
  closeLane(u: SchedUpstream, laneKey: string): void {
    const lane = u.lanes.get(laneKey);
    if (!lane) return;
    u.lanes.delete(laneKey);
    for (const r of lane) {
      if (r.timer) clearTimeout(r.timer);
      if (r.write) this.note(logKeys(r), `${u.name} ${r.what}: connection closed (${r.applied ? 'applied' : 'never applied'})`);
      r.reject(new McmuxError(ErrorCodes.UPSTREAM_IO, `${u.name}: connection closed by the server (injected)`));
    }
  }

  applyNext(u: SchedUpstream, lane: Req[], refuse = false): void {
    const req = lane.find((r) => !r.applied);
    if (!req) return;
    req.applied = true;
    if (req.inWindow) {
      refuse = true;
      this.note(logKeys(req), `${u.name} ${req.what}: refused (sent before a marker check judged the restored store)`);
    }
    if (refuse) {
      req.refused = true;
      req.result = Promise.reject(new McmuxError(ErrorCodes.UPSTREAM_REFUSED, `${u.name}: SERVER_ERROR out of memory (injected)`));
      if (req.write) this.note(logKeys(req), `${u.name} ${req.what}: refused`);
    } else {
      req.result = req.apply();
      if (req.write) u.appliedAt.set(req.key, this.clock);
      if (req.op === 'flush') this.flushed(u, req.byRepair);
      if (req.write) {
        req.result.then((v) => {
          this.note(logKeys(req), `${u.name} ${req.what}: applied -> ${typeof v === 'object' ? JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? undefined : x)) : String(v)}`);
          // A write that set the key's state there again (a delete whatever it found, a store
          // that stored, an incr that counted; not a touch) ends what the restart made unknown.
          const status = typeof v === 'object' && v !== null ? (v as { status?: string }).status : undefined;
          // A stale key (restored): only a delete or a set puts the current state there (an incr
          // or an append there would build on the stale one).
          if (req.op === 'delete' || (req.op === 'store' && status === 'STORED' && req.what.startsWith('set '))) u.stale.delete(req.key);
          if ((req.op === 'delete' || (req.op === 'store' && status === 'STORED') || (req.op === 'arith' && status === 'OK')) && u.lost.delete(req.key)) {
            this.relearntAt = this.clock;
          }
        }, noop);
      }
    }
    req.result.catch(noop);
  }

  answerHead(u: SchedUpstream, laneKey: string): void {
    const lane = u.lanes.get(laneKey);
    const req = lane?.[0];
    if (!lane || !req?.applied) return;
    lane.shift();
    if (lane.length === 0) u.lanes.delete(laneKey);
    if (req.timer) clearTimeout(req.timer);
    (req.result as Promise<unknown>).then(req.resolve, req.reject);
  }

  /** Applies and answers every request of `u` up to those due by `until` (all when undefined). */
  deliver(u: SchedUpstream, until?: number): void {
    for (const [laneKey, lane] of [...u.lanes]) {
      let last = -1;
      lane.forEach((r, i) => {
        if (until === undefined || r.timeoutAt <= until) last = i;
      });
      for (let i = 0; i <= last; i++) {
        this.applyNext(u, lane);
        this.answerHead(u, laneKey);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Stragglers: the fault model's rule for a late landing.

  /**
   * Some other upstream holds the key's current state, as mcmux knows it, or no write of the key
   * was acknowledged since the straggler was sent (see the header).
   */
  canLand(s: Straggler): boolean {
    // A flush (a client's flush_all, or the repair's of an overflowed cache) lands whenever it
    // may, whatever was acknowledged since (see the header). One of a process that is gone, as a
    // restart empty (goneFlush).
    if (s.req.op === 'flush') return !this.goneFlush(s.req) || (this.mayFault(s.req.up) && this.mayRestart(s.req.up));
    const { up } = s.req;
    // A flush: for every key.
    return KEYS.filter((k) => changes(s.req, k)).every(
      (key) =>
        (LAND_UNACKED && !this.ackedSince(key, s.req.sentAt) && !(composes(s.req) && this.writtenSince(key, s.req.sentAt)) && !(this.poolAt >= 0 && this.appliedSince(up, key, s.req.sentAt))) ||
        // Nor while an operation of the key is in flight that began when every copy was dirty:
        // it may read (or have decide) the freshest copy, this one maybe, whatever is clean now.
        (!this.ops.some((o) => o.end === undefined && o.allDirty.includes(key)) &&
        this.ups.some(
        (y) =>
          y.chainAt !== up.chainAt &&
          y.holds(key) &&
          !this.journal.isDirty(y.healthy, key) &&
          !y.lost.has(key) &&
          !y.stale.has(key) &&
          !y.hasWriteInFlight(key) &&
          !this.stragglers.some((o) => o.req.up === y && changes(o.req, key)),
      )),
    );
  }

  /**
   * A write of `key` (a flush: of every key) sent after World.clock was `at` has already been
   * applied on `u`: a straggler landing there now would land over it, as after it was
   * acknowledged (the second case of the header's rule: "every newer write a maybe" assumes it
   * lands before them). Seed 192 of 1-1500 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_RESTART=1
   * MCMUX_FUZZ_FLUSH=1: an add that timed out on up0 landed there after a flush_all applied there,
   * before that flush was acknowledged; the pool was fenced (a server had reconnected), and up0,
   * the only authority, answered a later add NOT_STORED. Only with a pool, so that a seed without
   * one runs as before (the rule holds for every seed: 3000 seeds of MCMUX_FUZZ_RESTART=1
   * MCMUX_FUZZ_FLUSH=1 without a pool never needed it).
   */
  appliedSince(u: SchedUpstream, key: string, at: number): boolean {
    return Math.max(u.appliedAt.get(key) ?? -1, u.appliedAt.get('\0flush') ?? -1) > at;
  }

  /**
   * A write of `key` (any op but a read, answered or not) began after World.clock was `at`: an
   * incr or append landing now would apply to its value, a state the judge cannot give it (it
   * applies a failed one to what the key held before it ended). Seed 21025 of 21001-22500 with
   * MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1: a decr that timed out landed over a later set
   * that failed, and a read served the sum.
   */
  writtenSince(key: string, at: number): boolean {
    return this.ops.some((o) => o.start > at && o.keys.includes(key) && !isRead(o));
  }

  /**
   * A write of `key` that began after World.clock was `at` has been acknowledged: any op of the
   * key but a get or gets answered without an error (a NOT_STORED too: more than judge() counts
   * as acknowledged, which only keeps more stragglers from landing), or a flush_all answered OK.
   */
  ackedSince(key: string, at: number): boolean {
    return this.ops.some(
      (o) => o.start > at && o.end !== undefined && o.keys.includes(key) && o.kind !== 'get' && o.kind !== 'gets' && o.reply !== undefined && o.reply.kind !== 'error',
    );
  }

  /**
   * A flush of a process that is gone (killed, or stopped with it still able to land): the next
   * process does not know what that one wrote after it timed out, a copy of a write acknowledged
   * with write-wait = copies still unanswered at the kill (README, "not guaranteed": it may miss
   * it silently; kill() applies such a copy, which this flush then wipes), and finds the store
   * emptied by its marker alone (README, "A restart after a crash waits": fenced as come back
   * empty). A restart empty of that store, for the fault model: it lands only under its rules
   * (mayFault, mayRestart) and leaves what the store held `lost` there (no other store faults until
   * each is written there again). Seed 309354 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1
   * MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1 (helper triage-309354): an add's copy on up0,
   * applied, unanswered at the kill, wiped by the killed process's flush_all that had timed out
   * there; the next process fenced up0 as come back empty; up1a, the add's authority and the
   * lock's only copy, then paused out of the ring, and up0 (every upstream come back empty, the
   * pool dirty for the key) granted the lock again: add STORED.
   */
  goneFlush(req: Req): boolean {
    return req.op === 'flush' && (req.gen !== this.gen || this.processStopped);
  }

  land(s: Straggler): void {
    this.stragglers = this.stragglers.filter((o) => o !== s);
    if (this.goneFlush(s.req)) {
      const u = s.req.up;
      this.flushed(u);
      for (const k of KEYS) if (u.holds(k)) u.lost.add(k);
      // A new fence governs what it lacks now, as after a restart empty (startFault).
      u.emptyFencedAt = undefined;
      u.fenceEndNoted = false;
      this.note([], `${u.name} EMPTIED by a flush of the process before (as a restart empty)`);
    } else if (s.req.op === 'flush') this.flushed(s.req.up);
    void s.req.apply().then(
      (v) => this.note(logKeys(s.req), `${s.req.up.name} ${s.req.what}: LANDED LATE -> ${typeof v === 'object' ? JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? undefined : x)) : String(v)}`),
      noop,
    );
  }

  /**
   * A flush applied on `u`: it holds no key now, a state the model allows whether or not the
   * flush is acknowledged (what it lost in a restart or an eviction is no longer its to miss).
   * It is not `lost`: mcmux knows what it sent (a flush that timed out may land late).
   */
  flushed(u: SchedUpstream, byRepair = false): void {
    if (byRepair) {
      // The repair flushed an overflowed cache and then trusts it: clean for every key, holding
      // none, as a store that restarted empty (README: fenced "as after a restart").
      for (const k of KEYS) if (u.holds(k)) u.lost.add(k);
      u.stale.clear();
      this.note([], `${u.name} flushed by the repair (journal overflowed): EMPTY`);
      return;
    }
    if (u.lost.size > 0) this.relearntAt = this.clock;
    u.lost.clear();
    u.stale.clear();
  }

  drop(s: Straggler): void {
    this.stragglers = this.stragglers.filter((o) => o !== s);
    this.note(logKeys(s.req), `${s.req.up.name} ${s.req.what}: straggler dropped (never applied)`);
  }

  // -------------------------------------------------------------------------------------------
  // Faults.

  /**
   * No other upstream is still missing keys it lost (restart, eviction), nor is an operation in
   * flight that began while one was: it may have taken that copy's miss already, and a fault of
   * the holder would make the miss its answer (see the header).
   */
  mayFault(u: SchedUpstream): boolean {
    if (this.eject && !this.mayMoveRing(u)) return false;
    // Per store: a server of the same pool holds none of the keys `u` holds.
    if (!this.ups.every((y) => y === u || y.chainAt === u.chainAt || y.lost.size === 0)) return false;
    // MCMUX_FUZZ_ROLLBACK: nor while another store holds stale keys or is not yet judged (World.restore).
    if (!this.ups.every((y) => y === u || y.chainAt === u.chainAt || (y.stale.size === 0 && y.rbWindow === undefined))) return false;
    // A journal of a few keys: one upstream at a time misses writes, and only while every other
    // one is clean for every key (not overflowed). README, "not guaranteed": once an upstream's
    // journal overflowed, a key another upstream is dirty for may be taken from that one's copy.
    // With rollbacks too: a restored store is distrusted as a whole, as overflowed, whatever the
    // journal's size (seed 2911 of 2001-3000 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_RESTART=1
    // MCMUX_FUZZ_FENCE_END=1: up0 paused while up1, distrusted since its restore, was flushed by
    // the repair and trusted, empty; a delete found s3 on up1 alone: NOT_FOUND).
    if ((this.cfg.journalMaxKeys < KEYS.length || this.rollback) && !this.ups.every((y) => y === u || y.chainAt === u.chainAt || this.cleanEverywhere(y))) return false;
    // Nor while an operation in flight may journal another upstream without a fault of its own,
    // two upstreams missing writes at once: a touch (a gat's included, and its touches of the other
    // copies) that finds an item expired there that `u` still holds (README: a touch that found no
    // item a current copy had), a conditional command that `u` applies and fails to answer or
    // read back (its copies are then misses). Seed 1072 with MCMUX_FUZZ_RESTART=1
    // MCMUX_FUZZ_FENCE_END=1: a gat's touch found the item expired on up1 after up0, the only copy
    // it had made live, went down and overflowed; the key was then read from up1 (absent). Seed
    // 2328 of the same (once the rule above had changed its draws): two prepends applied on up0 as
    // it went down overflowed up1's journal of one key too, and a key neither remembered was read
    // from up0, which had missed the sets since.
    if ((this.cfg.journalMaxKeys < KEYS.length || this.rollback) && this.othersMayMiss(u)) return false;
    return !this.ops.some((o) => o.end === undefined && o.start <= this.relearntAt);
  }

  /**
   * With eject, any fault of a pool server (a glitch too: with a failure limit of 1 one failed
   * request takes it down) may move the ring: its keys go to the other server, which lacks them
   * (or holds older values), and come back to it later, which has missed the writes since. As a
   * restart empty (mayRestart), only while every store of the other upstreams is up, healthy,
   * clean for every key, straggler-free, with no write in flight and nothing lost; and a store of
   * another upstream faults only while both servers are up, healthy and in the ring (then nothing
   * moves until it is healthy and clean again). So a key the ring moved is current elsewhere: a
   * miss of it falls through to a copy that holds it.
   */
  mayMoveRing(u: SchedUpstream): boolean {
    if (u.chainAt === this.poolAt) {
      // Nor while a conditional command runs (as mayRestart): its authority, that server maybe,
      // may hold a state it has not copied yet, the only current copy of the key; every copy then
      // dirty for it, the pool ranks as the freshest and decides from the server the key moved to
      // (seed 223 of 1-1000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_INITIAL=1
      // MCMUX_FUZZ_FENCE_END=1, and 1150 of 1001-2000 with MCMUX_FUZZ_EXPIRY=1 instead, as the mode
      // first ran: an append applied on up1a, which went down before it was read back; the ring
      // moved, and the pool, fenced, decided an add of the lock from up1b: STORED). mcmux knows the
      // ring moved, though, as it does not know of a restart: fuzz-pool-findings.test.ts, todo.
      if (this.ops.some((o) => o.end === undefined && CONDITIONAL.has(o.kind))) return false;
      return this.ups.every(
        (y) =>
          y.chainAt === this.poolAt ||
          (y.state === 'ok' &&
            y.healthy.state === 'healthy' &&
            y.lost.size === 0 &&
            y.stale.size === 0 &&
            this.cleanEverywhere(y) &&
            !this.stragglers.some((s) => s.req.up === y) &&
            KEYS.every((k) => !y.hasWriteInFlight(k))),
      );
    }
    // Nor while the pool is overflowed (a ring move distrusted it): the repair's flush to come
    // empties it on the word that the others hold what it held, a restart empty of mcmux's own
    // making (World.flushed), and a fault of another store meanwhile makes two (eject+RESTART+
    // FENCE_END seed 10720 of 10001-11000: up1 evicted a session the flush then took from the
    // pool; helper-123's triage). cleanEverywhere keeps the pool's own faults out already.
    return this.ups.every(
      (y) =>
        y.chainAt !== this.poolAt ||
        (y.state === 'ok' && y.serverHealthy && (y.placed?.size ?? 0) > 0 && y.lost.size === 0 && y.stale.size === 0 && this.journal.overflowed(y.healthy) === undefined),
    );
  }

  /**
   * `u` came back empty, was fenced for it, and lock-fence has passed since (its fence is over,
   * by the monotonic clock: this process's or an inherited one): for what it lacks, it decides
   * what a store without the key decides (README, "not guaranteed": lock-fence must be longer
   * than a lock is held). 20 ms: the scheduler sees the fence begin a step late.
   */
  mayDecideLost(u: SchedUpstream): boolean {
    return u.emptyFencedAt !== undefined && !u.healthy.fenced && this.now - u.emptyFencedAt >= this.cfg.lockFenceMs - 20;
  }

  /** A touch, gat or conditional command is running, or a touch request is on its way to an upstream other than `u`. */
  othersMayMiss(u: SchedUpstream): boolean {
    if (this.ops.some((o) => o.end === undefined && !o.killed && (o.kind === 'touch' || isGat(o) || CONDITIONAL.has(o.kind)))) return true;
    return this.ups.some((y) => y.chainAt !== u.chainAt && [...y.lanes.values()].some((l) => l.some((r) => r.op === 'touch')));
  }

  /** `y` is up and clean for every key: nothing journaled, not overflowed, no fault. */
  cleanEverywhere(y: SchedUpstream): boolean {
    return y.state === 'ok' && ![...y.lanes.values()].some((l) => l.some((r) => r.refused)) && this.journal.size(y.healthy) === 0 && this.journal.overflowed(y.healthy) === undefined && KEYS.every((k) => !this.journal.isDirty(y.healthy, k));
  }

  mayRestart(u: SchedUpstream): boolean {
    // Nor while a conditional command runs: its authority may hold a state it has not copied yet
    // (an append read back before its copies go out), the only current copy of the key.
    if (this.ops.some((o) => o.end === undefined && CONDITIONAL.has(o.kind))) return false;
    // Per store: every store that holds a key `u` holds (a server of the same pool holds none).
    return this.ups.every(
      (y) =>
        y === u ||
        y.chainAt === u.chainAt ||
        (y.state === 'ok' &&
          y.healthy.state === 'healthy' &&
          y.serverHealthy &&
          y.lost.size === 0 &&
          y.stale.size === 0 &&
          y.rbWindow === undefined &&
          !this.stragglers.some((s) => s.req.up === y) &&
          KEYS.every((k) => !y.holds(k) || (!this.journal.isDirty(y.healthy, k) && !y.hasWriteInFlight(k)))),
    );
  }

  startFault(u: SchedUpstream, kind: 'pause' | 'fail' | 'restart'): void {
    const duration = this.pick([20, 40, 80, 150, 300, 600, 1200, 2500]);
    u.faultUntil = this.now + duration;
    if (kind === 'pause') {
      u.state = 'paused';
      this.note([], `FAULT ${u.name} paused for ${duration} ms`);
      return;
    }
    u.state = 'down';
    for (const laneKey of [...u.lanes.keys()]) this.closeLane(u, laneKey);
    if (kind === 'restart') {
      u.restarting = true;
      void u.inner.flush();
      // As a memcached that restarts: its uniques start again from 1 (those it handed out before
      // may name other items now; the cold detector voids them, HealthyUpstream.restartedEmpty).
      (u.inner as unknown as { nextCas: bigint }).nextCas = 1n;
      u.forgetUniques();
      for (const k of KEYS) if (u.holds(k)) u.lost.add(k);
      // Restored before: it holds nothing stale now, and nothing a read in between may serve.
      u.stale.clear();
      u.rbWindow = undefined;
      // A new fence, from when it comes back, governs what it lacks now (every key): not one of
      // an earlier restart it had not been written every key since. Without this, the first
      // fence's start and end stood for every later one: seed 171456 with MCMUX_FUZZ_RESTART=1
      // MCMUX_FUZZ_FENCE_END=1 (up0 restarted empty three times, still lacking keys; a prepend
      // began while the third fence ran, waited behind an add of its key, and was decided by
      // up0 after that fence ended, NOT_STORED: called a lost write, as its fence's end was
      // never seen).
      u.emptyFencedAt = undefined;
      u.fenceEndNoted = false;
      for (const s of this.stragglers.filter((x) => x.req.up === u)) this.drop(s);
      this.note([], `FAULT ${u.name} restarted EMPTY, down for ${duration} ms`);
    } else {
      this.note([], `FAULT ${u.name} refuses connections for ${duration} ms`);
    }
  }

  /**
   * A cache evicts one session key (memory pressure). mcmux cannot know: the upstream is clean for
   * the key and answers a miss, which a read takes as the answer when it asks no other upstream
   * (one it skipped as its copy was still being written), and the repair copies as "absent" into
   * an upstream dirty for the key. So, as for a restart, key by key: only while no operation of
   * the key is in flight, and every other upstream is up, healthy and clean for it (and no other
   * upstream faults until the key is written to this one again).
   */
  evict(u: SchedUpstream, key: string): void {
    if (u.state !== 'ok' || !u.holds(key) || !this.mayFault(u)) return;
    if (this.ops.some((o) => o.end === undefined && o.keys.includes(key))) return;
    if (this.stragglers.some((s) => s.req.key === key) || u.hasWriteInFlight(key)) return;
    const others = this.ups.every(
      (y) =>
        y === u ||
        !y.holds(key) ||
        (y.state === 'ok' && y.healthy.state === 'healthy' && y.serverHealthy && !y.lost.has(key) && !y.stale.has(key) && !this.journal.isDirty(y.healthy, key) && !y.hasWriteInFlight(key)),
    );
    if (!others) return;
    void u.inner.delete(key);
    u.lost.add(key);
    u.stale.delete(key);
    this.note([key], `FAULT ${u.name} evicted ${key}`);
  }

  // -------------------------------------------------------------------------------------------
  // MCMUX_FUZZ_ROLLBACK: a store goes back in time.

  /**
   * What the model needs of process `gen`'s cold detector: its marker's nonce (whose marker is
   * whose); when it forgets what it wrote to a store (flushed: its next check of it starts
   * afresh, README); and when a marker check that read a restored store after its restore has
   * been judged (the end of the README's hole, SchedUpstream.rbWindow). It changes nothing the
   * detector does.
   */
  private watchDetector(detector: ColdDetector, gen: number): void {
    type Sight = { verdict: string; rolledBack?: boolean };
    const d = detector as unknown as {
      nonce: string;
      flushed: (u: HealthyUpstream) => void;
      checkStore: (u: HealthyUpstream, store: Upstream) => Promise<Sight>;
      judge: (u: HealthyUpstream, look: { targets: Upstream[]; sights: Sight[] } | undefined, server?: string, mayLift?: boolean) => string;
    };
    this.nonces.set(d.nonce, gen);
    const flushed = d.flushed.bind(detector);
    d.flushed = (u) => {
      for (const y of this.ups) {
        if (y.healthy !== u) continue;
        y.markerAcked.delete(gen);
        y.markerWrote.delete(gen);
      }
      flushed(u);
    };
    const sinceRestore = new WeakSet<Sight>();
    const checkStore = d.checkStore.bind(detector);
    d.checkStore = async (u, store) => {
      const y = store instanceof Conn ? store.up : undefined;
      const w = y?.rbWindow;
      const sight = await checkStore(u, store);
      if (w !== undefined && y?.rbWindow === w && sight.verdict !== 'unknown') sinceRestore.add(sight);
      return sight;
    };
    const judge = d.judge.bind(detector);
    d.judge = (u, look, server, mayLift) => {
      const verdict = judge(u, look, server, mayLift);
      look?.targets.forEach((t, i) => {
        const y = t instanceof Conn ? t.up : undefined;
        const sight = look.sights[i];
        if (y?.rbWindow === undefined || sight === undefined || !sinceRestore.has(sight) || gen !== this.gen) return;
        y.rbWindow = undefined;
        const distrusted = this.journal.overflowed(y.healthy) !== undefined;
        this.note([], `${y.name} judged by the first marker check since its restore: ${verdict}${sight.rolledBack === true ? ', rolled back' : ''}${distrusted ? ', distrusted' : y.stale.size > 0 ? ', NOT DISTRUSTED' : ', not distrusted (it holds nothing stale now)'}; stale: ${[...y.stale].join(' ') || 'none'}`);
        // The restore was one the detector can tell (caughtBy): still holding stale keys, and
        // trusted, it is a hole the README does not concede, whether or not a read finds it.
        // Not a server out of the ring of a pool that ejects: its return is a ring move, which
        // distrusts the keys that move back onto it (ColdDetector.ringMoved; what it holds of them
        // is a ghost, judged). Its marker may say nothing by then: the repair's flush of the pool
        // while it was out (which it did not reach) made the detector forget what it had written
        // there (ColdDetector.flushed; seeds 276, 287, 317 and 435 of 1-500 with
        // MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=0.5).
        const outOfRing = this.eject && y.chainAt === this.poolAt && (y.placed?.size ?? 0) === 0;
        if (!distrusted && y.stale.size > 0 && !outOfRing) this.uncaught.push(`${y.name}, restored at [${y.rbRestoredAt}], judged ${verdict} at [${this.clock}], not distrusted, still holding stale ${[...y.stale].join(' ')}`);
      });
      return verdict;
    };
  }

  /** A marker request of process `gen` on `u`: what its answer tells the model (see SchedUpstream.markerAcked). */
  markerSeen(u: SchedUpstream, op: Req['op'], what: string, gen: number, p: Promise<unknown>): void {
    if (op === 'store') {
      const value = what.slice(what.indexOf('=') + 1);
      p.then(() => {
        if (!what.startsWith('set ')) return;
        u.markerWrote.add(gen);
        // A `fenced until` too (its generation raises the detector's floor as any since 0fcbc45).
        const m = markerPidGen(value);
        if (m === null || this.nonces.get(m[3] as string) !== gen) return;
        u.markerAcked.set(gen, Number(m[2]));
        u.markerAckedAt.set(gen, this.clock);
        u.markerOk.add(`${gen} ${m[2]}`);
      }, noop);
    } else if (op === 'get') {
      p.then((hits) => {
        const h = (hits as Array<{ value: Buffer } | undefined>)[0];
        // Of either form: the detector takes a `fenced until` one's writer and generation too.
        const m = h === undefined ? null : markerPidGen(h.value.toString('latin1'));
        const writer = m === null ? undefined : this.nonces.get(m[3] as string);
        if (writer === undefined || writer === gen) return;
        // Read before its own marker was acknowledged here, or while the process starts (ColdDetector.earlier).
        if (u.markerWrote.has(gen) && !(this.restarting && gen === this.gen)) return;
        let seen = u.foreignSeen.get(gen);
        if (seen === undefined) u.foreignSeen.set(gen, (seen = new Map()));
        seen.set(writer, Math.max(seen.get(writer) ?? 0, Number(m?.[2])));
      }, noop);
    }
  }

  /**
   * A snapshot of `u`. While it is fenced too: its marker then says `fenced until <ms> <pid>
   * <gen> <nonce>`, which names its writer and generation as any since 0fcbc45 (README: "a
   * snapshot taken while the store was fenced is caught too"); caughtBy reads either form.
   */
  snapshot(u: SchedUpstream): void {
    if (u.state !== 'ok' || this.restarting || u.rbWindow !== undefined) return;
    const snap = u.takeSnapshot(this.clock, this.now, this.gen);
    u.snapshots.push(snap);
    if (u.snapshots.length > SNAPSHOTS_KEPT) u.snapshots.shift();
    this.note([], `SNAPSHOT of ${u.name} (marker ${JSON.stringify(snap.marker?.replace(/ [0-9a-f]+$/, '') ?? null)})`);
  }

  /**
   * Why the cold detector must take `u` restored to `s` for a rollback at its first check (the
   * README: the snapshot's marker is one this process wrote, older than the last it had
   * acknowledged there, and not one whose write timed out; or the marker of a process before it
   * no newer than the one this process read there before its own was acknowledged); undefined:
   * a documented hole (no marker in it, the marker the last one acknowledged, ...), not restored.
   * A `fenced until` marker is read as the detector reads it: its writer and generation (the
   * bare `fenced until <ms>` of an mcmux before 0fcbc45, no writer, is not written here).
   */
  caughtBy(u: SchedUpstream, s: Snapshot): string | undefined {
    // Either form: a `fenced until` marker names its writer and generation too (since 0fcbc45).
    const m = s.marker === undefined ? null : markerPidGen(s.marker);
    const writer = m === null ? undefined : this.nonces.get(m[3] as string);
    if (writer === undefined) return undefined;
    // A flush of the upstream applied since this process's last marker write there was
    // acknowledged, or on its way: once acknowledged, the detector forgets what it wrote to every
    // store of it (ColdDetector.flushed), and the next check starts afresh (seed 1438 of
    // 1251-1500 with MCMUX_FUZZ_ROLLBACK=1 MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=0.5: the repair's
    // flush of the pool applied, a server restored before its answer, judged warm after it).
    const mates = this.ups.filter((y) => y.chainAt === u.chainAt);
    const flushedAt = Math.max(-1, ...mates.map((y) => y.appliedAt.get('\0flush') ?? -1));
    if ((u.markerAckedAt.get(this.gen) ?? -1) <= flushedAt || mates.some((y) => [...y.lanes.values()].some((l) => l.some((r) => r.op === 'flush')))) return undefined;
    const g = Number(m?.[2]);
    if (writer === this.gen) {
      const floor = u.markerAcked.get(this.gen);
      return floor !== undefined && g < floor && u.markerOk.has(`${writer} ${g}`) ? `its marker ${g}, older than ${floor}, the last acknowledged` : undefined;
    }
    const seen = u.foreignSeen.get(this.gen)?.get(writer);
    return u.markerWrote.has(this.gen) && seen !== undefined && g <= seen ? `the marker ${g} of process ${writer}, which process ${this.gen} found (${seen}) before writing its own` : undefined;
  }

  /**
   * `u` is restored to a snapshot of it taken earlier (a Redis restarted from an older RDB, a
   * file or table restored from a backup): down, its contents replaced, back (a reconnect, as a
   * restart empty). As a restart empty, only while every other store is up, healthy, fenced by
   * nothing, straggler-free and clean for every key, and no conditional command runs (mayRestart),
   * and no other store faults until every key it holds stale (another state than before) has
   * been written there again (`stale`, as `lost`). Only when the cold detector can tell
   * (caughtBy). What reads it before a marker check since has been judged is refused (rbWindow).
   */
  restore(u: SchedUpstream): boolean {
    if (u.state !== 'ok' || this.restarting || u.restarting || this.processStopped) return false;
    if (this.ups.some((y) => y.rbWindow !== undefined || y.stale.size > 0)) return false;
    if (!this.mayFault(u) || !this.mayRestart(u) || this.ups.some((y) => y.chainAt !== u.chainAt && y.healthy.fenced)) return false;
    const ok = u.snapshots.flatMap((s) => {
      const why = this.caughtBy(u, s);
      return why === undefined ? [] : [{ s, why }];
    });
    if (ok.length === 0) return false;
    const { s, why } = this.pick(ok);
    const duration = this.pick([20, 40, 80, 150, 300, 600, 1200, 2500]);
    u.faultUntil = this.now + duration;
    u.state = 'down';
    for (const laneKey of [...u.lanes.keys()]) this.closeLane(u, laneKey);
    const before = new Map(KEYS.map((k) => [k, u.entryOf(k)]));
    u.restoreSnapshot(s);
    for (const k of KEYS) {
      if (!u.holds(k) || u.entryOf(k) === before.get(k)) continue;
      u.stale.add(k);
      if (u.lost.delete(k)) this.relearntAt = this.clock;
    }
    u.restoring = true;
    u.rbWindow = { at: this.clock };
    u.rbRestoredAt = this.clock;
    for (const x of this.stragglers.filter((y) => y.req.up === u)) this.drop(x);
    this.note([], `FAULT ${u.name} RESTORED to its snapshot of [${s.at} ${s.vt}ms] (${why}), down for ${duration} ms; stale: ${[...u.stale].join(' ') || 'none'}`);
    return true;
  }

  endFault(u: SchedUpstream): void {
    const was = u.state;
    u.state = 'ok';
    this.note([], `FAULT ${u.name} ends (${was === 'paused' ? 'resumes' : u.restarting ? 'back, empty' : u.restoring ? 'back, restored' : 'back'})`);
    // The driver's next connection is a reconnect (app.ts: onReconnect -> coldDetector.reconnected).
    // Not while mcmux is stopped: its drivers are closed, and the next process's first connection
    // is no reconnect (its first look judges the upstream).
    // A server of a pool: its driver's reconnect calls serverReconnected (app.ts: member.inner.onReconnect).
    if ((was === 'down' || u.timedOut) && !this.processStopped) {
      if (u.member !== undefined) this.detector.serverReconnected(u.healthy, u.member);
      else this.detector.reconnected(u.healthy);
    }
    u.timedOut = false;
    u.restarting = false;
    u.restoring = false;
  }

  // -------------------------------------------------------------------------------------------
  // Client operations.

  startOp(cmd: Command, kind: Op['kind'], keys: readonly string[], value: string | undefined, delta: bigint, final = false, token?: Token): Op {
    const id = ++this.opSeq;
    const tokenText = token ? ` unique=${token.value === undefined ? 'made up' : `of ${JSON.stringify(token.value)} (#${token.from})`}` : '';
    const abs = cmd.kind === 'get' ? cmd.touch : cmd.kind === 'store' || cmd.kind === 'touch' || cmd.kind === 'arith' ? cmd.deadline : undefined;
    const deadline = abs === undefined || abs === 0 ? Infinity : abs - T0;
    const vstart = this.now;
    const deadlineText = deadline === Infinity || !this.cfg.expiry ? '' : ` deadline=${deadline}ms (${deadline <= vstart ? 'past' : `+${deadline - vstart}`})`;
    const initial = cmd.kind === 'arith' ? cmd.initial : undefined;
    const text = `#${id} ${kind} ${keys.join(' ')}${value !== undefined ? ` ${value}` : ''}${kind === 'incr' || kind === 'decr' ? ` ${delta}` : ''}${initial !== undefined ? ` initial=${initial}` : ''}${tokenText}${deadlineText}`;
    const allDirty = keys.filter((k) => this.ups.every((u) => this.journal.isDirty(u.healthy, k)));
    const lostAfterFence = keys.filter((k) => this.ups.some((u) => this.mayDecideLost(u) && u.lost.has(k) && !this.journal.isDirty(u.healthy, k)));
    const op: Op = { id, kind, keys, value, delta, initial, token, text, final, start: ++this.clock, vstart, vend: undefined, deadline, allDirty, lostAfterFence, end: undefined, reply: undefined, thrown: undefined };
    this.ops.push(op);
    this.inflight++;
    // Which upstreams the journal keeps from its keys (o: overflowed), as it begins.
    const dirt = this.ups.filter((u) => keys.some((k) => this.journal.isDirty(u.healthy, k))).map((u) => `${u.name}${this.journal.overflowed(u.healthy) ? '(o)' : ''}`);
    this.note(keys, `${text} ... sent${dirt.length > 0 ? ` [dirty: ${dirt.join(' ')}]` : ''}`);
    let p: Promise<Reply>;
    try {
      p = Promise.resolve(this.router.execute(cmd));
    } catch (error) {
      p = Promise.reject(error);
    }
    p.then(
      (r) => {
        if (op.killed) return;
        op.end = ++this.clock;
        op.vend = this.now;
        op.reply = r;
        this.inflight--;
        this.note(keys, `${text} -> ${describeReply(r, undefined)}`);
        this.keepTokens(op, r);
      },
      (error: unknown) => {
        if (op.killed) return;
        op.end = ++this.clock;
        op.vend = this.now;
        op.thrown = error ?? new Error('rejected');
        this.inflight--;
        this.note(keys, `${text} -> THREW ${String(error)}`);
      },
    );
    return op;
  }

  /** The uniques a reply hands out: a gets' hits, a store's or an incr's result (asked withCas). */
  keepTokens(op: Op, r: Reply): void {
    const keep = (key: string, cas: bigint | undefined, value: string | undefined): void => {
      if (cas === undefined || value === undefined) return;
      let l = this.tokens.get(key);
      if (!l) this.tokens.set(key, (l = []));
      l.push({ key, cas, value, from: op.id });
    };
    const key = op.keys[0] as string;
    if ((op.kind === 'gets' || op.kind === 'gats') && r.kind === 'values') op.keys.forEach((k, i) => keep(k, r.hits[i]?.cas, r.hits[i]?.value.toString()));
    // An append's unique is of a value the client does not know: not kept.
    else if ((op.kind === 'set' || op.kind === 'add' || op.kind === 'replace' || op.kind === 'cas') && r.kind === 'status' && r.status === 'STORED') keep(key, r.cas, op.value);
    else if ((op.kind === 'incr' || op.kind === 'decr') && r.kind === 'number') keep(key, r.cas, String(r.value));
  }

  /** A unique for a cas of `key`: mostly the newest handed out, now and then an older one or one made up. */
  pickToken(key: string): Token {
    const l = this.tokens.get(key) ?? [];
    const r = this.rng();
    if (l.length > 0 && r < 0.75) return l[l.length - 1] as Token;
    if (l.length > 0 && r < 0.93) return this.pick(l);
    return { key, cas: BigInt(1 + this.int(1000)), value: undefined, from: 0 };
  }

  /**
   * An absolute deadline for a write (touch: for a touch or gat): 0 (never) without expiry;
   * with it, now and then one already past (stored and at once expired), mostly a short one
   * (expiring within the run, racing faults, repair and failover), or none.
   */
  deadline(touch = false): number {
    if (!this.cfg.expiry) return 0;
    const r = this.rng();
    if (r < (touch ? 0.15 : 0.35)) return 0;
    if (r < (touch ? 0.25 : 0.42)) return Date.now() - this.pick([1, 1000, 60_000]);
    if (r < 0.45) return Date.now(); // expires at once (a deadline is exclusive)
    return Date.now() + this.pick([5, 20, 50, 100, 200, 400, 800, 1500, 3000]);
  }

  pickKey(pool: readonly string[] = KEYS): string {
    // Skewed: the first keys are hot, so that operations of a key overlap.
    return pool[Math.min(this.int(pool.length), this.int(pool.length))] as string;
  }

  randomOp(): void {
    const id = this.opSeq + 1;
    const r = this.rng() * 100;
    const store = (mode: 'set' | 'add' | 'replace' | 'cas', key: string): void => {
      const value = valueFor(key, id);
      const token = mode === 'cas' ? this.pickToken(key) : undefined;
      const cmd: Command = { kind: 'store', mode, key, value: Buffer.from(value), flags: 0, deadline: this.deadline(), cas: token?.cas, withCas: this.chance(0.5), noreply: false };
      this.startOp(cmd, mode, [key], value, 0n, false, token);
    };
    // The keys a conditional command of a session may go to: none is evicted (see the header).
    const conditional = this.cfg.evictions ? [...LOCKS, ...COUNTERS] : KEYS;
    const texts = this.cfg.evictions ? LOCKS : [...SESSIONS, ...LOCKS];
    // A journal of a few keys: a touch (a gat's too) may journal an upstream without a fault of
    // its own (an item expired there that a current copy holds: README), which must not happen
    // while another upstream misses writes (one at a time, see mayFault). Then it reads instead
    // (the same draws). Seed 42717 (default settings, journal-max-keys 1): a refused set left
    // one upstream dirty, a gat's touches overflowed the other's journal, and the key was read
    // from the older copy (README, "not guaranteed").
    // With a pool that ejects, nor while a server of it is out of the ring: its return moves keys
    // onto it that it lacks (World.ringMoved: `lost`, as a restart empty), which holds only while
    // every other store holds their current state; a touch that finds the item expired on another
    // store (README) leaves the copy the ring moves away the only one it extended (seed 303476
    // with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1:
    // the touch, acknowledged by the pool alone, found the set expired on up0, and the ring moved
    // the key back onto the server that had restarted empty: README's known limit of a touch).
    const outOfRing = this.eject && this.ups.some((y) => y.chainAt === this.poolAt && (y.placed?.size ?? 0) === 0);
    const touches = ((this.cfg.journalMaxKeys >= KEYS.length && !this.rollback) || this.ups.every((y) => this.cleanEverywhere(y))) && !outOfRing;
    if (r < 4 && this.cfg.flushes) {
      this.startOp({ kind: 'flush', delay: 0, noreply: false }, 'flush_all', KEYS, undefined, 0n);
    } else if (r < 20 && this.cfg.expiry && this.chance(0.4)) {
      // gat / gats: a read that sets the deadline of what it finds, of one key or several.
      const keys = Array.from({ length: this.chance(0.7) ? 1 : 2 + this.int(2) }, () => this.pickKey());
      const withCas = this.chance(0.4);
      const touch = this.deadline(true);
      if (touches) this.startOp({ kind: 'get', keys, withCas, touch }, withCas ? 'gats' : 'gat', keys, undefined, 0n);
      else this.startOp({ kind: 'get', keys, withCas, touch: undefined }, withCas ? 'gets' : 'get', keys, undefined, 0n);
    } else if (r < 20) {
      const key = this.pickKey();
      this.startOp({ kind: 'get', keys: [key], withCas: false, touch: undefined }, 'get', [key], undefined, 0n);
    } else if (r < 27) {
      const keys = Array.from({ length: 2 + this.int(3) }, () => this.pickKey());
      this.startOp({ kind: 'get', keys, withCas: false, touch: undefined }, 'get', keys, undefined, 0n);
    } else if (r < 34) {
      // gets hands out the uniques a cas uses: mostly of the keys a cas may go to.
      const keys = Array.from({ length: 1 + this.int(2) }, () => this.pickKey(this.chance(0.7) ? conditional : KEYS));
      this.startOp({ kind: 'get', keys, withCas: true, touch: undefined }, 'gets', keys, undefined, 0n);
    } else if (r < 52) {
      store('set', this.pickKey());
    } else if (r < 62) {
      const key = this.pickKey();
      this.startOp({ kind: 'delete', key, noreply: false }, 'delete', [key], undefined, 0n);
    } else if (r < 66) {
      const key = this.pickKey();
      const deadline = this.deadline(true);
      if (touches) this.startOp({ kind: 'touch', key, deadline, noreply: false }, 'touch', [key], undefined, 0n);
      else this.startOp({ kind: 'get', keys: [key], withCas: false, touch: undefined }, 'get', [key], undefined, 0n);
    } else if (r < 76) {
      store('add', this.chance(0.7) ? this.pickKey(LOCKS) : this.pickKey(conditional));
    } else if (r < 80) {
      store('replace', this.pickKey(conditional));
    } else if (r < 85) {
      store('cas', this.pickKey(conditional));
    } else if (r < 90) {
      const key = this.pickKey(texts);
      const mode = this.chance(0.6) ? 'append' : 'prepend';
      const piece = pieceFor(key, id, mode);
      const cmd: Command = { kind: 'store', mode, key, value: Buffer.from(piece), flags: 0, deadline: 0, cas: undefined, withCas: this.chance(0.5), noreply: false };
      this.startOp(cmd, mode, [key], piece, 0n);
    } else {
      const key = this.chance(0.9) || this.cfg.evictions ? this.pickKey(COUNTERS) : this.pickKey();
      const op: ArithOp = this.chance(0.7) ? 'incr' : 'decr';
      const delta = BigInt(1 + this.int(5));
      // The binary protocol's initial value (of a counter: a number in its range), and the
      // deadline of the item a miss creates.
      const z = this.rngInitial;
      const initial = this.cfg.initials && isCounter(key) && z() < 0.5 ? BigInt(valueFor(key, id)) : undefined;
      const deadline = initial !== undefined && this.cfg.expiry && z() < 0.5 ? Date.now() + ([20, 100, 400, 1500][Math.floor(z() * 4)] as number) : 0;
      this.startOp({ kind: 'arith', op, key, delta, initial, deadline, noreply: false }, op, [key], undefined, delta);
    }
  }

  // -------------------------------------------------------------------------------------------
  // The scheduler.

  /** Advances virtual time by `ms` (at most 10: less than a timeout), keeping the fault model's promises. */
  async tick(ms: number): Promise<void> {
    const target = Date.now() + ms;
    // An upstream without a fault answers within its timeout.
    for (const u of this.ups) if (u.state === 'ok') this.deliver(u, target);
    await drain();
    // Faults end on time.
    for (const u of this.ups) if (u.state !== 'ok' && u.faultUntil <= this.now + ms) this.endFault(u);
    // A straggler lands within LATE_SETTLE_MS of its timeout, or never.
    for (const s of [...this.stragglers]) {
      if (s.deadline >= target) continue;
      if (this.canLand(s) && this.chance(0.5)) this.land(s);
      else this.drop(s);
    }
    await drain();
    this.t.mock.timers.tick(ms);
    await drain();
    this.settleKilled();
  }

  /** An op a kill left unanswered ends once nothing its process sent may still land. */
  settleKilled(): void {
    if (this.killed.length === 0) return;
    this.killed = this.killed.filter(({ op, gen }) => {
      if (this.stragglers.some((s) => s.req.gen <= gen)) return true;
      op.end = ++this.clock;
      op.vend = this.now;
      this.note(op.keys, `${op.text} -> nothing of the killed process ${gen} may land any more`);
      return false;
    });
  }

  // -------------------------------------------------------------------------------------------
  // mcmux restarts.

  /**
   * mcmux is killed: nothing more is sent, journaled or answered. What its journal wrote is on
   * disk (journal-fsync aside, see the header). Requests sent and not applied sit in the server's
   * sockets: they may land late (canLand), as if they had timed out (journal.log tells the next
   * process that this one did not close it: it waits for them, journal.ts).
   */
  kill(): void {
    const gen = this.gen;
    this.noteFences();
    this.note([], `MCMUX KILLED (process ${gen})`);
    for (const u of this.ups) {
      // A write acknowledged with write-wait = copies whose copy here was still on its way: README,
      // "not guaranteed" (if mcmux dies before they answer, they may miss it silently), and
      // nothing the model can tell from what the client saw. Not exercised: applied at the kill,
      // with what was sent before it on its connection.
      const pending = (this.journal as unknown as { byName: Map<string, { pending?: Map<string, number> }> }).byName.get(u.healthy.name)?.pending;
      for (const lane of u.lanes.values()) {
        let last = -1;
        lane.forEach((r, i) => {
          if (!r.applied && r.op !== 'get' && r.op !== 'flush' && pending?.has(r.key) === true) last = i;
        });
        for (let i = 0; i <= last; i++) {
          if (lane[i]?.applied) continue;
          this.applyNext(u, lane);
          this.note(logKeys(lane[i] as Req), `${u.name} ${lane[i]?.what}: a copy pending at the kill, applied`);
        }
        for (const r of lane) {
          if (r.timer) clearTimeout(r.timer);
          if (r.applied || !r.write) continue;
          this.stragglers.push({ req: r, deadline: r.timeoutAt + LATE_SETTLE_MS - 1 });
          this.note(logKeys(r), `${u.name} ${r.what}: in flight at the kill (lands by +${r.timeoutAt + LATE_SETTLE_MS - 1 - Date.now()} ms or never)`);
        }
      }
      u.lanes.clear();
      u.timedOut = false;
    }
    for (const op of this.ops) {
      if (op.end !== undefined || op.killed) continue;
      op.killed = true;
      op.reply = { kind: 'error', type: 'SERVER_ERROR', message: 'mcmux was killed before it answered' };
      this.killed.push({ op, gen });
    }
    this.inflight = 0;
    this.stopProcess(false);
  }

  /** Between a stop (or kill) of mcmux and the start of the next process. */
  private processStopped = false;

  private stopProcess(clean: boolean): void {
    this.processStopped = true;
    this.repairer.stop();
    this.detector.stop();
    for (const h of this.chain) void h.close();
    this.journal.close(clean);
  }

  /**
   * Why mcmux may not restart now (undefined when it may). It may with a key dirty on every
   * upstream (journal.log keeps the write order that ranks the copies), and with a request that
   * may still land on an overflowed upstream (the next process learns nothing of what it holds
   * until those have settled); both were rules here until fixed (fuzz-findings.test.ts).
   */
  whyNoRestart(): string | undefined {
    // A refusal not answered yet: a copy of a write acknowledged with write-wait = copies that
    // the upstream missed, not journaled before its answer (README, "not guaranteed"; seed 4134
    // of 3001-7000 with MCMUX_FUZZ_RESTART=1 MCMUX_FUZZ_FENCE_END=1 killed mcmux in between).
    const r = this.ups.find((u) => [...u.lanes.values()].some((l) => l.some((x) => x.refused)));
    return r ? `a refusal by ${r.name} not answered yet` : undefined;
  }

  /**
   * Stopped gracefully (app.ts close): no new client command; those in flight and every request
   * answered or timed out. Called off (false) when it may not restart then (see whyNoRestart).
   */
  async stopGracefully(): Promise<boolean> {
    this.note([], `MCMUX STOPPING (process ${this.gen})`);
    let settled = false;
    void this.journal.writesSettled().then(() => (settled = true));
    for (let i = 0; i < MAX_STEPS && (this.inflight > 0 || !settled); i++) await this.step(false, true);
    this.repairer.stop();
    this.detector.stop();
    // The repair's and the marker checks' requests still out: answered or timed out.
    for (let i = 0; i < 200 && this.ups.some((u) => u.lanes.size > 0); i++) {
      for (const u of this.ups) if (u.state === 'ok') this.deliver(u);
      await drain();
      this.noteFences();
      await this.tick(5);
    }
    this.noteFences();
    const why = this.whyNoRestart();
    if (why !== undefined) {
      this.note([], `MCMUX STOP called off (process ${this.gen}): ${why}`);
      this.repairer.start();
      void this.detector.start();
      return false;
    }
    this.note([], `MCMUX STOPPED (process ${this.gen})`);
    this.stopProcess(true);
    return true;
  }

  /** mcmux stops (gracefully or killed), is down for a while, and a new process starts on journal.log. */
  async restart(how: 'graceful' | 'kill'): Promise<void> {
    if (this.whyNoRestart() !== undefined) return;
    this.restarting = true;
    if (how === 'kill') this.kill();
    else if (!(await this.stopGracefully())) {
      this.restarting = false;
      return;
    }
    const down = this.pick([0, 5, 50, 300, 1500]);
    // With a pool (only, so that a seed without one runs as before): now and then a server of it
    // restarts empty as mcmux goes down, under the same rules; the next process's first look finds
    // it (one that came back empty while mcmux was down was fenced only until the end of a fence
    // the other server's marker inherited: review finding 3, ba30ccb).
    if (this.poolAt >= 0 && this.chance(0.5)) {
      const u = this.pick(this.ups.filter((y) => y.chainAt === this.poolAt));
      if (u.state === 'ok' && this.mayFault(u) && this.mayRestart(u)) this.startFault(u, 'restart');
    }
    for (let t = 0; t < down; t += 10) await this.tick(Math.min(10, down - t));
    this.makeProcess();
    this.note([], `MCMUX STARTED (process ${this.gen}) after ${down} ms down`);
    // As app.ts: no client command before the cold detector's first look has judged every upstream,
    // nor, after a kill, before what the killed process sent may no longer land on those up.
    let looked = false;
    void this.detector
      .startAfter(() => this.repairer.untilUnknownSettled((ms) => this.note([], `MCMUX WAITS ${Math.ceil(ms)} ms: the process before did not stop cleanly`)))
      .then(() => (looked = true));
    this.repairer.start();
    for (let i = 0; i < MAX_STEPS && !looked; i++) await this.step(false, true);
    this.note([], `MCMUX LISTENING (process ${this.gen})`);
    this.restarting = false;
  }

  private lanesWhere(pred: (u: SchedUpstream, lane: Req[]) => boolean): Array<[SchedUpstream, string]> {
    const out: Array<[SchedUpstream, string]> = [];
    for (const u of this.ups) for (const [k, lane] of u.lanes) if (pred(u, lane)) out.push([u, k]);
    return out;
  }

  /**
   * What each step first notes of the upstreams: a fence of one that lacks keys beginning
   * (emptyFencedAt) or ending, and its journal overflowing or trusted again. Also as a graceful
   * stop delivers its last requests (stopGracefully) and as mcmux is killed: a fence the repair's
   * flush began then, with no step left to see it, went unnoted, and once it had ended (while
   * mcmux was down) the model took the flushed store's add for a lost write (seed
   * 15217 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_RESTART=1, lock-fence 150 ms:
   * the repair flushed the pool as process 3 stopped, and process 4, 1500 ms later, let it decide
   * an add of a session the other store held).
   */
  private noteFences(): void {
    for (const u of this.ups) {
      if (u.lost.size === 0) {
        u.emptyFencedAt = undefined;
        u.fenceEndNoted = false;
      } else if (u.healthy.fenced && u.emptyFencedAt === undefined) {
        // Known to have come back empty, or fenced as a precaution (it reconnected): either fence
        // lasts lock-fence from when it came back (the README's promise), whether or not the
        // marker check finds it empty (seed 2764 of 1501-3000 with MCMUX_FUZZ_RESTART=1
        // MCMUX_FUZZ_FENCE_END=1: the check after a restart empty failed, an injected error,
        // while no client ran, mcmux waiting after a kill, and the fence ended).
        u.emptyFencedAt = this.now;
        this.note([], `${u.name} fenced: ${u.healthy.cameBackEmpty ? 'it came back empty' : 'it reconnected (a precaution)'}`);
      }
      if (!u.fenceEndNoted && this.mayDecideLost(u)) {
        u.fenceEndNoted = true;
        this.note([], `${u.name} lock-fence ENDED, lacking ${[...u.lost].join(' ')}`);
        // A conditional command under way may be decided there from now on too (one waiting
        // behind another of its key: seed 26404 of 25501-27000 with MCMUX_FUZZ_RESTART=1).
        for (const op of this.ops) {
          if (op.end !== undefined || !CONDITIONAL.has(op.kind)) continue;
          const lost = op.keys.filter((k) => u.lost.has(k) && !this.journal.isDirty(u.healthy, k) && !op.lostAfterFence.includes(k));
          if (lost.length > 0) op.lostAfterFence = [...op.lostAfterFence, ...lost];
        }
      }
      const o = this.journal.overflowed(u.healthy) !== undefined;
      if (o !== u.overflowed) this.note([], `${u.name} journal ${o ? 'OVERFLOWED' : 'trusted again'}`);
      u.overflowed = o;
    }
  }

  async step(issuing: boolean, allowFaults: boolean): Promise<void> {
    this.noteFences();
    // MCMUX_FUZZ_ROLLBACK: a store due to be restored is, at the first step its rules allow.
    if (allowFaults && this.restoreDue !== undefined && this.restore(this.restoreDue)) this.restoreDue = undefined;
    const canStart = issuing && this.inflight < this.cfg.clients;
    const applicable = this.lanesWhere((u, l) => u.state === 'ok' && l.some((r) => !r.applied));
    const answerable = this.lanesWhere((u, l) => u.state === 'ok' && l[0]?.applied === true);
    const choices: Array<[number, () => void | Promise<void>]> = [
      [canStart ? 3 : 0, () => this.randomOp()],
      [
        applicable.length > 0 ? 3 : 0,
        () => {
          const [u, k] = this.pick(applicable);
          const glitch = allowFaults && this.mayFault(u) && this.chance(this.cfg.faultRate * 0.5);
          this.applyNext(u, u.lanes.get(k) as Req[], glitch);
        },
      ],
      [
        answerable.length > 0 ? 3 : 0,
        () => {
          const [u, k] = this.pick(answerable);
          if (allowFaults && this.mayFault(u) && this.chance(this.cfg.faultRate * 0.1)) this.closeLane(u, k);
          else this.answerHead(u, k);
        },
      ],
      // With rollbacks, time runs three times as fast against the operations: the marker is
      // written every 2 s, and a restore the detector can tell needs a snapshot older than the
      // last marker write acknowledged. (More operations instead, the judge takes minutes.)
      [this.rollback ? 3 : 1, () => this.tick(1 + this.int(10))],
      [
        allowFaults ? this.cfg.faultRate : 0,
        () => {
          const u = this.pick(this.ups);
          // Mostly some upstream stays up; now and then every one fails at once.
          const others = this.ups.filter((y) => y !== u && y.state === 'ok').length;
          if (u.state === 'ok' && this.mayFault(u) && (others > 0 || this.chance(0.1))) this.startFault(u, this.chance(0.5) ? 'pause' : 'fail');
        },
      ],
      [
        allowFaults ? this.cfg.faultRate * 2 : 0,
        () => {
          const u = this.pick(this.ups);
          if (u.state === 'ok' && this.mayFault(u) && this.mayRestart(u)) this.startFault(u, 'restart');
        },
      ],
      [allowFaults && this.cfg.evictions ? this.cfg.faultRate * 2 : 0, () => this.evict(this.pick(this.ups), this.pickKey(SESSIONS))],
      // MCMUX_FUZZ_ROLLBACK: a snapshot of a store now and then; a store restored to one.
      [this.rollback ? 0.05 : 0, () => this.snapshot(this.pick(this.ups))],
      [allowFaults && this.rollback && this.restoreDue === undefined ? this.cfg.faultRate * 2 : 0, () => void (this.restoreDue = this.pick(this.ups))],
      [issuing && this.cfg.restarts && !this.restarting && !this.ups.some((y) => y.rbWindow !== undefined) ? 0.01 : 0, () => void (this.restartDue = this.chance(0.5) ? 'kill' : 'graceful')],
      [
        this.stragglers.length > 0 ? 0.3 : 0,
        () => {
          const s = this.pick(this.stragglers);
          if (this.canLand(s)) this.land(s);
        },
      ],
    ];
    const total = choices.reduce((a, [w]) => a + w, 0);
    let r = this.rng() * total;
    for (const [w, run] of choices) {
      if (w === 0) continue;
      r -= w;
      if (r < 0) {
        await run();
        break;
      }
    }
    await drain();
  }

  async run(): Promise<void> {
    // mcmux starts: markers written (the cold detector can tell a restart later), intervals running.
    void this.detector.start();
    this.repairer.start();
    for (let i = 0; i < 3; i++) {
      for (const u of this.ups) this.deliver(u);
      await drain();
    }
    let steps = 0;
    while (this.opSeq < this.cfg.ops || this.inflight > 0) {
      if (++steps > MAX_STEPS) throw new Error(`seed ${this.seed}: no progress after ${MAX_STEPS} steps (${this.inflight} in flight)`);
      await this.step(this.opSeq < this.cfg.ops, true);
      const how = this.restartDue;
      this.restartDue = undefined;
      if (how) await this.restart(how);
    }
    // Heal: every fault ends, the stragglers land or are dropped, the repair runs to the end.
    this.note([], 'HEAL: every fault ends');
    for (const u of this.ups) if (u.state !== 'ok') this.endFault(u);
    const healStart = this.now;
    for (let i = 0; i < 1000; i++) {
      for (const u of this.ups) this.deliver(u);
      await drain();
      await this.tick(10);
      const quiet = this.inflight === 0 && this.killed.length === 0 && this.stragglers.length === 0 && this.journal.totalKeys === 0 && this.ups.every((u) => u.lanes.size === 0);
      if (this.now - healStart > 2 * LATE_SETTLE_MS + 500 && quiet) break;
    }
    // Final reads of every key, through the router.
    for (const key of KEYS) {
      const op = this.startOp({ kind: 'get', keys: [key], withCas: false, touch: undefined }, 'get', [key], undefined, 0n, true);
      for (let i = 0; i < 50 && op.end === undefined; i++) {
        for (const u of this.ups) this.deliver(u);
        await drain();
        if (op.end === undefined) await this.tick(5);
      }
    }
  }

  /** What each upstream holds of each key it is clean for (after the run). */
  async held(): Promise<Array<{ up: string; key: string; value: string | null }>> {
    const out: Array<{ up: string; key: string; value: string | null }> = [];
    for (const u of this.ups) {
      for (const key of KEYS) {
        if (!u.holds(key) || this.journal.isDirty(u.healthy, key) || u.lost.has(key)) continue;
        const [hit] = await u.inner.get([key]);
        out.push({ up: u.name, key, value: hit ? hit.value.toString() : null });
      }
    }
    return out;
  }

  close(): void {
    this.endedAt = this.now;
    this.repairer.stop();
    this.detector.stop();
    for (const h of this.chain) void h.close();
    this.journal.close();
    if (this.stateDir !== undefined) rmSync(this.stateDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The reference model.

interface Write {
  readonly op: Op | undefined;
  /** With eject, what a ring move served (judge(): ghosts). */
  readonly ghost?: string;
  /** States it may leave: a value, or null for absent (several: an incr that failed). */
  readonly values: ReadonlyArray<string | null>;
  /** The deadline of each state (virtual ms since T0; Infinity: none): a value is absent from then on. */
  readonly deadlines: readonly number[];
  readonly acked: boolean;
  readonly start: number;
  readonly end: number;
}

const INITIAL: Write = { op: undefined, values: [null], deadlines: [Infinity], acked: true, start: -2, end: -1 };

interface Violation {
  readonly what: string;
  readonly op: Op | undefined;
  readonly key: string;
}

/** The writes that `[s, e]` may observe: started before it ended, not certainly overwritten before it began. */
function observable(ws: readonly Write[], s: number, e: number): Write[] {
  let m = -Infinity;
  for (const w of ws) if (w.acked && w.end < s && w.start > m) m = w.start;
  return ws.filter((w) => w.start < e && !(w.end < m));
}

/** The states of `ws`, a value with its deadline. */
function statesOf(ws: readonly Write[]): Array<{ v: string | null; d: number }> {
  return ws.flatMap((x) => x.values.map((v, i) => ({ v, d: x.deadlines[i] ?? Infinity })));
}

function statusOf(r: Reply | undefined): string {
  if (!r) return 'none';
  if (r.kind === 'status') return r.status;
  if (r.kind === 'error') return r.type;
  if (r.kind === 'number') return 'NUMBER';
  return r.kind.toUpperCase();
}

const isNum = (v: string | null): v is string => v !== null && /^\d+$/.test(v);
const isRead = (op: Op): boolean => op.kind === 'get' || op.kind === 'gets' || op.kind === 'gat' || op.kind === 'gats';
const isGat = (op: Op): boolean => op.kind === 'gat' || op.kind === 'gats';
const ms = (d: number): string => (d === Infinity ? 'none' : `${d}ms`);

function judge(ops: readonly Op[], held: ReadonlyArray<{ up: string; key: string; value: string | null }>, endClock: number, endVt: number, ghosts: readonly Ghost[] = []): Violation[] {
  const out: Violation[] = [];
  const writes = new Map<string, Write[]>(KEYS.map((k) => [k, [INITIAL]]));
  // With eject: what a server held of a key the ring moved onto it, served by the pool from then
  // on: a write that may have taken effect at the move, and is overwritten by an acknowledged
  // write of the key that began after it (see Ghost).
  for (const g of ghosts) (writes.get(g.key) as Write[]).push({ op: undefined, ghost: `held by ${g.server} as the ring moved (${g.kind === 'return' ? 'back in the ring' : 'pool finding 3'})`, values: [g.value], deadlines: [g.deadline], acked: false, start: g.at, end: g.at });
  const bad = (op: Op | undefined, key: string, what: string): void => {
    out.push({ op, key, what });
  };
  /** A write of `key` (the op's first) leaving `values`, each with its deadline (the op's own by default). */
  const w = (op: Op, values: Array<string | null>, acked: boolean, deadlines?: number[], key = op.keys[0] as string): void => {
    const ds = deadlines ?? values.map((v) => (v === null ? Infinity : op.deadline));
    (writes.get(key) as Write[]).push({ op, values, deadlines: ds, acked, start: op.start, end: op.end ?? Infinity });
  };

  /** An acknowledged write that overwrites the key on every copy (not a touch, not a gat's hit). */
  const ackedWrite = (o: Op): boolean => {
    const st = statusOf(o.reply);
    if (o.kind === 'delete') return st === 'DELETED' || st === 'NOT_FOUND';
    if (o.kind === 'incr' || o.kind === 'decr') return st === 'NUMBER';
    if (o.kind === 'flush_all') return st === 'OK';
    return !isRead(o) && o.kind !== 'touch' && st === 'STORED';
  };

  // After a flush_all that failed somewhere, the upstreams may disagree about any key until it is
  // written again (mcmux journals nothing for a failed flush: README, "not guaranteed"): one
  // copy's TOUCHED (a gat's hit) proves only that that copy held it, so a touch or gat after one
  // is a maybe, as the flush is.
  const flushFailedBefore = (op: Op): boolean => ops.some((f) => f.kind === 'flush_all' && statusOf(f.reply) === 'SERVER_ERROR' && f.start < (op.end ?? Infinity));
  // A write of `key` by a process killed before it answered may have reached some copies and not
  // others (a conditional command's authority, not yet its copies), and nothing on file tells
  // (README, "not guaranteed"): until an acknowledged write of the key overwrites every copy, they
  // may disagree, and a gat's hit proves only what the copy it read held (its touches give each
  // other copy's value its deadline). Seeds 823 and 859 with MCMUX_FUZZ_RESTART=1
  // MCMUX_FUZZ_FENCE_END=1: an append killed after its authority applied it, then a gat that read
  // the appended value and touched the old one on the others.
  const killedBefore = (op: Op, key: string): boolean =>
    ops.some(
      (x) =>
        x.killed === true &&
        !isRead(x) &&
        x.keys.includes(key) &&
        x.start < (op.end ?? Infinity) &&
        !ops.some((o) => o.keys.includes(key) && ackedWrite(o) && o.start > (x.end ?? Infinity) && (o.end ?? Infinity) < op.start),
    );

  // With eject: a server the ring moved `key` onto may hold another value of it than the other
  // copies (a ghost), until an acknowledged write of the key that began after the move: one
  // copy's hit, as above, proves only what that copy held, and a gat touches each copy's own value
  // (seed 233 of 1-1000 with MCMUX_FUZZ_POOL=1 MCMUX_FUZZ_POOL_EJECT=1 MCMUX_FUZZ_EXPIRY=1, as the
  // mode first ran, before mayMoveRing's rule of conditional commands changed its draws: a gat
  // read the deleted session a server back in the ring held, and touched the newer value on the
  // other upstream, which a gets then read).
  const ghostBefore = (op: Op, key: string): boolean =>
    ghosts.some((g) => g.key === key && g.at < (op.end ?? Infinity) && !ops.some((o) => o.keys.includes(key) && ackedWrite(o) && o.start > g.at && (o.end ?? Infinity) < op.start));

  /** A gat's hit of `key` that proves only what the copy it read held (the copies may disagree). */
  const maybeHit = (op: Op, key: string): boolean => {
    const hits = (op.reply as Extract<Reply, { kind: 'values' }>).hits;
    return hits[op.keys.indexOf(key)] !== undefined && (flushFailedBefore(op) || killedBefore(op, key) || ghostBefore(op, key));
  };

  // The writes, and the form of every reply.
  /** Writes whose result depends on the state they found: an append, an incr, a touch, a gat that failed. */
  const derived: Op[] = [];
  for (const op of ops) {
    const st = statusOf(op.reply);
    const key = op.keys[0] as string;
    if (op.thrown !== undefined) bad(op, key, `the router threw: ${String(op.thrown)}`);
    else if (op.end === undefined) bad(op, key, 'no reply (the run healed every fault and waited)');
    else if (op.kind === 'flush_all') {
      // A delete of every key (one that failed somewhere may have emptied some upstreams only).
      if (st === 'OK' || st === 'SERVER_ERROR') for (const k of op.keys) (writes.get(k) as Write[]).push({ op, values: [null], deadlines: [Infinity], acked: st === 'OK', start: op.start, end: op.end });
      else bad(op, key, `flush_all answered ${st}`);
    }
    else if (isRead(op)) {
      if (st === 'VALUES') {
        const hits = (op.reply as Extract<Reply, { kind: 'values' }>).hits;
        if (hits.length !== op.keys.length) bad(op, key, `${hits.length} hits for ${op.keys.length} keys`);
        // A gat's hit: the key held that value, and holds it now until the gat's deadline
        // (touched where it was found, in the same operation). Each key once.
        else if (isGat(op)) for (const [i, k] of op.keys.entries()) if (op.keys.indexOf(k) === i && hits[i]) w(op, [hits[i]?.value.toString() as string], !flushFailedBefore(op) && !killedBefore(op, k) && !ghostBefore(op, k), [op.deadline], k);
      } else if (st !== 'SERVER_ERROR') bad(op, key, `a read answered ${describeReply(op.reply, undefined)}`);
      // A gat that failed may have touched some copies: maybe touches of any value present. One
      // that found a key touches the other copies after it answered, before any write of the key
      // received after it (router.ts, key-order.ts touching): its hit above says it all, unless
      // that hit is a maybe (the copies may disagree): then its touches give the gat's deadline
      // to whatever each other copy holds (seed 143546 with MCMUX_FUZZ_RESTART=1: an incr killed
      // after its authority applied it, a gat that read the older value elsewhere and touched
      // the incremented one on the authority, incrs from that one, then the key expired at the
      // gat's deadline, which no state of the model gave the incremented value).
      if (isGat(op) && (st === 'SERVER_ERROR' || (st === 'VALUES' && op.keys.some((k) => maybeHit(op, k))))) derived.push(op);
    } else if (op.kind === 'set') {
      if (st === 'STORED') w(op, [op.value as string], true);
      else if (st === 'SERVER_ERROR') w(op, [op.value as string], false);
      else bad(op, key, `set answered ${st}`);
    } else if (op.kind === 'delete') {
      if (st === 'DELETED' || st === 'NOT_FOUND') w(op, [null], true);
      else if (st === 'SERVER_ERROR') w(op, [null], false);
      else bad(op, key, `delete answered ${st}`);
    } else if (op.kind === 'add' || op.kind === 'replace') {
      if (st === 'STORED') w(op, [op.value as string], true);
      else if (st === 'SERVER_ERROR') w(op, [op.value as string], false);
      else if (st !== 'NOT_STORED') bad(op, key, `${op.kind} answered ${st}`);
    } else if (op.kind === 'cas') {
      if (st === 'STORED') w(op, [op.value as string], true);
      else if (st === 'SERVER_ERROR') w(op, [op.value as string], false);
      else if (st !== 'EXISTS' && st !== 'NOT_FOUND') bad(op, key, `cas answered ${st}`);
    } else if (op.kind === 'append' || op.kind === 'prepend') {
      if (st === 'STORED' || st === 'SERVER_ERROR') derived.push(op);
      else if (st !== 'NOT_STORED') bad(op, key, `${op.kind} answered ${st}`);
    } else if (op.kind === 'incr' || op.kind === 'decr') {
      if (st === 'NUMBER' || st === 'SERVER_ERROR') derived.push(op);
      else if (st !== 'NOT_FOUND' && st !== 'CLIENT_ERROR') bad(op, key, `${op.kind} answered ${st}`);
    } else if (op.kind === 'touch') {
      // NOT_FOUND too: a plain write, it overlaps a set of the key, and may touch the new value
      // on one copy while the one whose answer counts had none yet (seed 1843 of 3000).
      if (st === 'TOUCHED' || st === 'SERVER_ERROR' || st === 'NOT_FOUND') derived.push(op);
      else bad(op, key, `touch answered ${st}`);
    }
  }
  // A delete that failed everywhere leaves every copy journaled 'delete', and the repair replays
  // it (repair.ts) even after reads (a touch, a gat) took the freshest copy, which still held the
  // key, as the truth: it may take effect until the next acknowledged write of the key (not a
  // touch) starts, not only within its own interval.
  for (const [key, ws] of writes) {
    ws.forEach((x, i) => {
      if (x.acked || x.op?.kind !== 'delete') return;
      const next = ops.filter((o) => o.keys.includes(key) && o.start > x.end && ackedWrite(o));
      const end = Math.min(...next.map((o) => o.start));
      ws[i] = { ...x, end };
    });
  }

  // In the order they began (a key's conditional commands run alone, in the order they came, and
  // a touch is ordered with them): an incr that failed may have been applied to any number the
  // key held before it ended, one that answered to a number it may see that gives its answer (the
  // result keeps that state's deadline); an append (prepend) acknowledged, to a value the key may
  // have held while it ran (and one that failed, to any value it held before it ended); a touch
  // (a gat that failed), to any value present as it began, leaving the touch's deadline. Each only
  // to a state present when it began (a deadline later than its start).
  for (const op of derived.sort((a, b) => a.start - b.start)) {
    const st = statusOf(op.reply);
    const acked = st === 'STORED' || st === 'NUMBER' || (st === 'TOUCHED' && !flushFailedBefore(op));
    for (const [i, key] of op.keys.entries()) {
      if (op.keys.indexOf(key) !== i) continue;
      // A gat that answered: only its keys whose hit is a maybe (above).
      if (isGat(op) && st === 'VALUES' && !maybeHit(op, key)) continue;
      const ws = writes.get(key) as Write[];
      const values: Array<string | null> = [];
      const deadlines: number[] = [];
      const span = new Map<string, Set<number>>();
      const add = (v: string, d: number): void => {
        const x = span.get(v);
        if (x) x.add(d);
        else span.set(v, new Set([d]));
      };
      const got = st === 'NUMBER' ? (op.reply as Extract<Reply, { kind: 'number' }>).value : undefined;
      // A touch (a failed gat's), whatever it answered, touches a value the key may hold while it runs
      // (one that lands late finds its key journaled): not any value of the key's past, or the
      // states multiply without end (seed 4433 of 4500 was judged for ever).
      for (const x of acked || op.kind === 'touch' || isGat(op) ? observable(ws, op.start, op.end as number) : ws) {
        if (x.start >= (op.end ?? Infinity)) continue;
        x.values.forEach((v, j) => {
          const d = x.deadlines[j] ?? Infinity;
          // With an initial value: the key absent (or gone while it ran) is created with it.
          const created = op.initial !== undefined && (v === null || d <= (op.vend ?? Infinity));
          if (created && (got === undefined || got === op.initial)) add(String(op.initial), op.deadline);
          if (v === null || d <= op.vstart) return;
          if (op.kind === 'incr' || op.kind === 'decr') {
            if (!isNum(v)) return;
            const r = applyArith(op.kind, BigInt(v), op.delta);
            if (got === undefined || r === got) add(String(r), d);
          } else if (op.kind === 'append' || op.kind === 'prepend') {
            add(joined(v, op.value as string, op.kind), d);
          } else {
            add(v, op.deadline);
          }
        });
      }
      for (const [v, ds] of span) {
        for (const d of ds) {
          values.push(v);
          deadlines.push(d);
        }
      }
      // An incr's number is known: with no state giving it (judged below), it is still written.
      // Its initial value was a miss creating the key (a key lost past a fence's end): with the
      // op's deadline, as any item it creates (seed 39350 of 39001-40500 with MCMUX_FUZZ_RESTART=1
      // MCMUX_FUZZ_FENCE_END=1: the counter so created expired, the model kept it for ever, and a
      // later miss of it was called a lost write).
      if (got !== undefined && values.length === 0) {
        values.push(String(got));
        deadlines.push(got === op.initial ? op.deadline : Infinity);
      }
      if (acked && values.length === 0) bad(op, key, `${op.kind} ${st}: ${key} can only be absent`);
      w(op, values, acked, deadlines, key);
    }
  }

  /**
   * Why state `v` may not be observed by [s, e] (virtual [vs, ve]) of `key`; undefined when it
   * may. Not from a write of `self` (a gat's touch, a touch): it does not justify its own read.
   */
  const why = (key: string, v: string | null, s: number, e: number, vs: number, ve: number, self?: Op): string | undefined => {
    const ws = writes.get(key) as Write[];
    const seen = observable(ws, s, e).filter((x) => self === undefined || x.op !== self);
    // A value is seen only before its deadline; absent, also once a deadline passed.
    const ok = v === null ? statesOf(seen).some((x) => x.v === null || x.d <= ve) : statesOf(seen).some((x) => x.v === v && x.d > vs);
    if (ok) return undefined;
    if (v !== null && !belongsTo(key, v)) return `VALUE OF ANOTHER KEY: ${key} read ${JSON.stringify(v)}`;
    if (v !== null) {
      const expired = statesOf(seen).filter((x) => x.v === v);
      if (expired.length > 0) {
        const last = Math.max(...expired.map((x) => x.d));
        const by = seen.filter((x) => x.values.includes(v)).map((x) => x.op?.text ?? x.ghost ?? 'initial').join(', ');
        return `EXPIRED VALUE SERVED: ${key} = ${JSON.stringify(v)} (${by}), whose deadline ${ms(last)} passed before this began (${vs}ms)`;
      }
    }
    const from = ws.filter((x) => x.values.includes(v) && x.start < e);
    if (from.length === 0) return `${key} read ${JSON.stringify(v)}, which no write of ${key} wrote`;
    // The newest acknowledged write before [s that overwrote it.
    const lastEnd = Math.max(...from.map((x) => x.end));
    const over = ws.filter((x) => x.acked && x.end < s && x.start > lastEnd).sort((a, b) => b.end - a.end)[0];
    const src = from.map((x) => x.op?.text ?? x.ghost ?? 'never written (initial state)').join(', ');
    if (!over) {
      if (v === null) {
        const live = statesOf(seen).filter((x) => x.v !== null).map((x) => `${JSON.stringify(x.v)} until ${ms(x.d)}`);
        return `LOST WRITE: ${key} absent at ${vs}..${ve}ms, but every state it may see is present then: ${live.join(', ')}`;
      }
      return `${key}: ${JSON.stringify(v)} (${src}) may not be seen before it was written`;
    }
    const overText = `${over.op?.text} -> ${describeReply(over.op?.reply, undefined)}`;
    if (v === null) return `LOST WRITE: ${key} absent, but ${overText} was acknowledged before this began`;
    if (over.values.every((x) => x === null)) return `RESURRECTION: ${key} = ${JSON.stringify(v)} (${src}), deleted by ${overText} before this began`;
    return `STALE READ: ${key} = ${JSON.stringify(v)} (${src}), overwritten by ${overText} before this began`;
  };

  for (const op of ops) {
    if (op.end === undefined || op.thrown !== undefined) continue;
    const s = op.start;
    const e = op.end;
    const vs = op.vstart;
    const ve = op.vend as number;
    const key = op.keys[0] as string;
    const st = statusOf(op.reply);
    const check = (k: string, v: string | null, label: string): void => {
      // A conditional command decided by an upstream that lacks the key, its lock-fence over.
      if (v === null && CONDITIONAL.has(op.kind) && op.lostAfterFence.includes(k)) return;
      const reason = why(k, v, s, e, vs, ve, op);
      if (reason) bad(op, k, `${label}: ${reason}`);
    };
    /** Some state it may see satisfies `pred` (given the value, and whether it is present as it begins). */
    const mayBe = (k: string, pred: (v: string | null) => boolean): boolean =>
      statesOf(observable(writes.get(k) as Write[], s, e).filter((x) => x.op !== op)).some((x) => x.d > vs && pred(x.v));
    if (isRead(op) && st === 'VALUES') {
      const hits = (op.reply as Extract<Reply, { kind: 'values' }>).hits;
      op.keys.forEach((k, i) => check(k, hits[i] ? (hits[i]?.value.toString() as string) : null, op.final ? 'final read' : op.kind === 'get' ? 'read' : op.kind));
    } else if (op.kind === 'delete' && st === 'NOT_FOUND') {
      check(key, null, 'delete NOT_FOUND');
    } else if (op.kind === 'touch' && st === 'NOT_FOUND') {
      check(key, null, 'touch NOT_FOUND');
    } else if (op.kind === 'touch' && st === 'TOUCHED') {
      if (!mayBe(key, (v) => v !== null)) {
        const ws = writes.get(key) as Write[];
        const gone = ws.filter((x) => x.acked && x.end < s && x.values.every((v) => v === null)).sort((a, b) => b.end - a.end)[0];
        bad(op, key, gone?.op ? `touch TOUCHED: RESURRECTION: ${key} was deleted by ${gone.op.text} -> ${describeReply(gone.op.reply, undefined)} before this began` : `touch TOUCHED: ${key} was never written, or expired`);
      }
    } else if (op.kind === 'add' && st === 'STORED') {
      check(key, null, 'add STORED (so it was absent)');
    } else if ((op.kind === 'add' && st === 'NOT_STORED') || (op.kind === 'replace' && st === 'STORED') || (op.kind === 'cas' && st === 'EXISTS')) {
      if (!mayBe(key, (v) => v !== null)) bad(op, key, `${op.kind} ${st}: ${key} can only be absent (deleted or expired)`);
    } else if ((op.kind === 'replace' || op.kind === 'append' || op.kind === 'prepend') && st === 'NOT_STORED') {
      check(key, null, `${op.kind} NOT_STORED (so it was absent)`);
    } else if (op.kind === 'cas' && st === 'NOT_FOUND') {
      check(key, null, 'cas NOT_FOUND (so it was absent)');
    } else if (op.kind === 'cas' && st === 'STORED') {
      // The README: a cas never succeeds wrongly. Its unique is of a state the key held when it
      // was handed out; STORED says the key still held that state (not a copy of it: any write
      // of the key since makes another unique, and a unique of another store or of one that came
      // back empty since unseals to nothing it holds).
      const t = op.token as Token;
      if (t.value === undefined) bad(op, key, `cas STORED with a unique made up (${t.cas})`);
      else check(key, t.value, `cas STORED (so ${key} still held what its unique is of)`);
    } else if ((op.kind === 'incr' || op.kind === 'decr') && st === 'NUMBER') {
      const got = (op.reply as Extract<Reply, { kind: 'number' }>).value;
      if (!belongsTo(key, String(got))) bad(op, key, `VALUE OF ANOTHER KEY: ${op.kind} ${key} answered ${got}`);
      else if (!mayBe(key, (v) => isNum(v) && applyArith(op.kind as ArithOp, BigInt(v), op.delta) === got) && !(got === op.initial && (op.lostAfterFence.includes(key) || why(key, null, s, e, vs, ve, op) === undefined))) {
        const seen = statesOf(observable(writes.get(key) as Write[], s, e).filter((x) => x.op !== op)).map((x) => `${JSON.stringify(x.v)} until ${ms(x.d)}`);
        bad(op, key, `${op.kind} answered ${got}: no state it may see (present at ${vs}ms) gives it (may see: ${seen.join(', ')})`);
      }
    } else if ((op.kind === 'incr' || op.kind === 'decr') && st === 'NOT_FOUND') {
      check(key, null, `${op.kind} NOT_FOUND`);
    } else if ((op.kind === 'incr' || op.kind === 'decr') && st === 'CLIENT_ERROR') {
      if (!mayBe(key, (v) => v !== null && !isNum(v))) bad(op, key, `${op.kind} CLIENT_ERROR non-numeric: ${key} holds no non-numeric value it may see`);
    }
  }

  // What each upstream clean for a key holds of it, after the run. Not for a key a killed
  // process's write may have left the copies disagreeing about, with no acknowledged write of it
  // since (README, "not guaranteed": each copy is taken as clean, and a gat or touch gives each
  // copy's own value the new deadline; seed 11010 of 10501-12000 with MCMUX_FUZZ_RESTART=1: a
  // prepend applied on its authority only, then a gat that kept the other copy's older value).
  const afterRun = { start: Infinity, end: Infinity } as unknown as Op;
  for (const h of held) {
    if (killedBefore(afterRun, h.key)) continue;
    const reason = why(h.key, h.value, endClock, endClock, endVt, endVt);
    if (reason) out.push({ op: undefined, key: h.key, what: `${h.up} (clean for ${h.key} in the journal) holds: ${reason}` });
  }
  return out;
}

function report(world: World, v: Violation): string {
  // Up to the violating reply (the whole run for what an upstream holds at the end).
  const until = process.env.MCMUX_FUZZ_LOG_ALL ? Infinity : (v.op?.end ?? Infinity);
  const lines = world.log.filter((l) => (l.keys.length === 0 || l.keys.includes(v.key)) && l.t <= until);
  const tail = lines.slice(-(Number(process.env.MCMUX_FUZZ_LOG_LINES) || 60)).map((l) => `  [${String(l.t).padStart(4)} ${String(l.vt).padStart(5)}ms] ${l.text}`);
  return [
    `seed ${world.seed} (${world.describeConfig()}): ${v.what}`,
    v.op ? `  op: ${v.op.text} [${v.op.start}..${v.op.end}] -> ${describeReply(v.op.reply, v.op.thrown)}` : '  (after the run)',
    `log of ${v.key} and of the faults, last ${tail.length} of ${lines.length} lines ([logical clock, virtual ms]):`,
    ...tail,
    `replay: MCMUX_FUZZ_SEED=${world.seed} MCMUX_FUZZ_SEEDS=1 node --test dist/test/router/fuzz.test.js`,
  ].join('\n');
}

async function runSeed(seed: number, t: TestContext): Promise<{ world: World; violations: Violation[] }> {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: T0 });
  setMonotonicClock(() => Date.now()); // the mocked Date.now: virtual time
  const world = new World(seed, t);
  try {
    await world.run();
    const held = await world.held();
    // Ghosts served are stale reads, unless MCMUX_FUZZ_POOL_GHOSTS=1 (POOL_GHOSTS).
    const ghosts = POOL_GHOSTS ? world.ghosts : [];
    const uncaught = world.uncaught.map((what): Violation => ({ op: undefined, key: '', what: `ROLLBACK NOT CAUGHT: ${what}` }));
    return { world, violations: [...uncaught, ...judge(world.ops, held, world.clock + 1, world.now, ghosts)] };
  } finally {
    world.close();
    setMonotonicClock();
    t.mock.timers.reset();
  }
}

describe('router fuzz (model-based, seeded, virtual time)', () => {
  it(`${SEEDS} seeds from ${FIRST_SEED}: no acknowledged write lost, no stale read, no resurrection, no value of another key`, async (t) => {
    const stats = { restores: 0, restoresJudged: 0, restoresTrusted: 0, snapshots: 0, ringMoves: 0, ghosts: 0, vt: 0, evictions: 0, ops: 0, faults: 0, late: 0, lateFlushes: 0, restarts: 0, errors: 0, overflows: 0, repairFlushes: 0, deadlines: 0, kills: 0, stops: 0, fenceEnds: 0 };
    const errorKinds = new Map<string, number>();
    /** Replies by command and status (MCMUX_FUZZ_VERBOSE). */
    const outcomes = new Map<string, number>();
    /** MCMUX_FUZZ_TRIAGE=1: one line per failing seed, and go on. */
    const failed: string[] = [];
    /** MCMUX_FUZZ_DIGEST=1: a digest of every seed's log and replies (to check that a change of the fuzz leaves the seeds' runs as they were). */
    const digest = process.env.MCMUX_FUZZ_DIGEST ? createHash('sha256') : undefined;
    for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed++) {
      const { world, violations } = await runSeed(seed, t);
      if (digest) {
        // The marker's value names the process (its pid and nonce): not of the seed. A `fenced
        // until <ms>` names it too since 0fcbc45 (`fenced until <ms> <pid> <gen> <nonce>`), and so
        // does the marker a SNAPSHOT note shows (MCMUX_FUZZ_ROLLBACK).
        const unnamed = (text: string): string =>
          text.replace(/(sentinel\S*=(?:fenced until \d+ )?)\d+( \d+)?(?: [0-9a-f]{12})?/g, '$1P$2').replace(/^(SNAPSHOT of \S+ \(marker "(?:fenced until \d+ )?)\d+ /, '$1P ');
        for (const l of world.log) digest.update(`${l.t} ${l.vt} ${l.keys.join(' ')} ${unnamed(l.text)}\n`);
        for (const v of violations) digest.update(`violation ${v.what}\n`);
      }
      stats.ops += world.ops.length;
      stats.vt += world.endedAt;
      stats.faults += world.log.filter((l) => l.text.startsWith('FAULT') && !l.text.includes(' ends')).length;
      stats.restarts += world.log.filter((l) => l.text.includes('restarted EMPTY')).length;
      stats.evictions += world.log.filter((l) => l.text.includes(' evicted ')).length;
      stats.late += world.log.filter((l) => l.text.includes('LANDED LATE')).length;
      stats.lateFlushes += world.log.filter((l) => l.text.includes(' flush: LANDED LATE')).length;
      stats.errors += world.ops.filter((o) => o.reply?.kind === 'error').length;
      stats.overflows += world.log.filter((l) => l.text.endsWith('journal OVERFLOWED')).length;
      stats.repairFlushes += world.log.filter((l) => l.text.includes('flushed by the repair')).length;
      stats.deadlines += world.ops.filter((o) => o.deadline !== Infinity).length;
      stats.kills += world.log.filter((l) => l.text.startsWith('MCMUX KILLED')).length;
      stats.stops += world.log.filter((l) => l.text.startsWith('MCMUX STOPPED')).length;
      stats.fenceEnds += world.log.filter((l) => l.text.includes('lock-fence ENDED')).length;
      stats.ringMoves += world.log.filter((l) => l.text.startsWith('RING the ring')).length;
      stats.ghosts += world.ghosts.length;
      stats.snapshots += world.log.filter((l) => l.text.startsWith('SNAPSHOT of')).length;
      stats.restores += world.log.filter((l) => l.text.includes(' RESTORED to ')).length;
      stats.restoresJudged += world.log.filter((l) => l.text.includes('judged by the first marker check since its restore')).length;
      stats.restoresTrusted += world.log.filter((l) => l.text.includes('NOT DISTRUSTED')).length;
      for (const o of world.ops) {
        const outcome = `${o.kind} ${statusOf(o.reply)}${o.kind === 'cas' ? ` (unique ${o.token?.value === undefined ? 'made up' : 'kept'})` : ''}`;
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        if (o.reply?.kind !== 'error') continue;
        const m = `${o.kind}: ${o.reply.message.replace(/up\d/g, 'upN').replace(/\d+/g, 'N').slice(0, 110)}`;
        errorKinds.set(m, (errorKinds.get(m) ?? 0) + 1);
      }
      if (violations.length > 0 && process.env.MCMUX_FUZZ_TRIAGE) {
        failed.push(`seed ${seed}: ${violations[0]?.what} [${violations[0]?.op?.text ?? 'after the run'}]`);
        continue;
      }
      if (violations.length > 0) assert.fail(`${violations.length} violation(s); the first:\n${report(world, violations[0] as Violation)}`);
    }
    if (process.env.MCMUX_FUZZ_VERBOSE) {
      for (const [m, c] of [...errorKinds].sort((a, b) => b[1] - a[1]).slice(0, 15)) t.diagnostic(`${c} x ${m}`);
      t.diagnostic([...outcomes].sort((a, b) => a[0].localeCompare(b[0])).map(([m, c]) => `${m}: ${c}`).join(', '));
    }
    for (const f of failed) t.diagnostic(f);
    if (digest) t.diagnostic(`digest of ${SEEDS} seeds from ${FIRST_SEED}: ${digest.digest('hex')}`);
    assert.equal(failed.length, 0, `${failed.length} seeds failed`);
    t.diagnostic(`virtual ms ${stats.vt}, ops ${stats.ops}, faults ${stats.faults} (restarts empty ${stats.restarts}, evictions ${stats.evictions}), late landings ${stats.late} (flush_all ${stats.lateFlushes}), error replies ${stats.errors}, ops with a deadline ${stats.deadlines}, journal overflows ${stats.overflows} (caches flushed by the repair ${stats.repairFlushes}), mcmux restarts ${stats.kills + stats.stops} (killed ${stats.kills}), fences of an empty upstream that ended before it was whole again ${stats.fenceEnds}${POOL_EJECT_SHARE > 0 ? `, ring moves ${stats.ringMoves} (values moved onto a server that held an older one ${stats.ghosts})` : ''}${ROLLBACK_SHARE > 0 ? `, snapshots ${stats.snapshots}, stores restored to one ${stats.restores} (judged by a marker check since ${stats.restoresJudged}, of them not distrusted ${stats.restoresTrusted})` : ''}`);
  });
});
