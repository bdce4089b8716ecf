/**
 * Review of the read path (failover-read.ts, read repair): each test asserts a client-visible
 * effect found by reading it, and failed before the fix in src/ that came with it.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command, Reply } from '../../src/command/command';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { FakeUpstream, settle, noStats } from '../helpers/fake-upstream';
import { eventually } from '../helpers/poll';
import { describeReply } from '../helpers/reply-text';

const source = noStats;
const noop = (): void => {};
const values = (r: Reply): Array<string | undefined> => (r.kind === 'values' ? r.hits.map((h) => h?.value.toString()) : [`<${describeReply(r)}>`]);

function setup(n: number) {
  const ups = Array.from({ length: n }, (_, i) => new FakeUpstream(`fake://${i}`));
  const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
  const router = new Router({ upstreams: ups, journal, minCopies: 1, writeWait: 'all', allowFlush: false }, source, noop);
  const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
  return { ups, journal, exec };
}

describe('review: read repair of a gat', () => {
  it("a gat that repairs the first upstream does not journal it for its own touches of the others: the first still serves the key when they fail", async () => {
    const { ups, journal, exec } = setup(3);
    const [first, second, third] = ups as [FakeUpstream, FakeUpstream, FakeUpstream];
    // The first upstream (a cache) lost the session; the other two hold it.
    for (const u of [second, third]) await u.inner.store({ mode: 'set', key: 'sess', value: Buffer.from('cart'), flags: 0, deadline: 0 });
    const deadline = Date.now() + 60_000;
    // Answered by the second: the first is repaired with the new deadline, the third touched.
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['sess'], withCas: false, touch: deadline })), ['cart']);
    await eventually('the read repair landed', async () => (await first.inner.get(['sess']))[0]?.deadline === deadline, { checks: 200, every: 'turn' });
    await eventually('the touch of the third landed', async () => (await third.inner.get(['sess']))[0]?.deadline === deadline, { checks: 200, every: 'turn' });
    await settle();
    assert.equal(journal.isDirty(first, 'sess'), false, 'no write of the key raced the repair: the first holds its current state');
    second.mode = 'fail';
    third.mode = 'fail';
    assert.deepEqual(values(await exec({ kind: 'get', keys: ['sess'], withCas: false, touch: undefined })), ['cart'], 'read from the first');
  });
});

describe('review: keys dirty on every upstream', () => {
  it('a multi-get of keys whose last write failed everywhere asks the freshest copy for all of them at once, not one round trip (or timeout) per key', async () => {
    const { ups, exec } = setup(2);
    const [first, second] = ups as [FakeUpstream, FakeUpstream];
    const keys = ['s1', 's2', 's3', 's4', 's5'];
    for (const k of keys) await exec({ kind: 'store', mode: 'set', key: k, value: Buffer.from(`v-${k}`), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
    // Every upstream misses the next write of each key: each is dirty everywhere, read from the freshest copy.
    first.mode = 'fail';
    second.mode = 'fail';
    for (const k of keys) assert.equal((await exec({ kind: 'store', mode: 'set', key: k, value: Buffer.from('lost'), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false })).kind, 'error');
    first.mode = 'ok';
    second.mode = 'ok';
    // The freshest copy is slow: each request waits at its gate (as it would for its timeout).
    first.close_gate();
    second.close_gate();
    first.calls.length = 0;
    second.calls.length = 0;
    const read = exec({ kind: 'get', keys, withCas: false, touch: undefined });
    await settle();
    const asked = [...first.calls, ...second.calls].filter((c) => c.startsWith('get '));
    assert.deepEqual(asked.flatMap((c) => c.split(' ').slice(1)).sort(), keys, `every key asked before any answer: ${asked.join(', ')}`);
    first.open();
    second.open();
    assert.deepEqual(values(await read), keys.map((k) => `v-${k}`));
  });
});

describe('review: a read overlapping a write-wait copies write', () => {
  /** A cache whose get is applied at once but answered only once `hold` settles (a slow reply). */
  class SlowReplies extends FakeUpstream {
    hold: Promise<void> | undefined;
    override async get(keys: readonly string[], touch?: number) {
      const hits = await super.get(keys, touch);
      if (this.hold) await this.hold;
      return hits;
    }
  }

  it('a miss from a cache that evicted the key does not stand for the answer: the copy a set acknowledged after the read began is still on its way to is read', async () => {
    const first = new SlowReplies('fake://0');
    const second = new FakeUpstream('fake://1');
    const journal = new RepairJournal({ maxKeys: 1000, dir: undefined, fsync: 'no' });
    const router = new Router({ upstreams: [first, second], journal, minCopies: 1, writeWait: 'copies', allowFlush: false }, source, noop);
    const exec = (c: Command): Promise<Reply> => Promise.resolve(router.execute(c));
    const set = (v: string): Command => ({ kind: 'store', mode: 'set', key: 'sess', value: Buffer.from(v), flags: 0, deadline: 0, cas: undefined, withCas: false, noreply: false });
    assert.equal((await exec(set('v1'))).kind, 'status');
    // The first (a cache) evicts the session: mcmux cannot know, the journal says it is clean.
    await first.inner.delete('sess');
    // A set of the session is on its way, slow to both...
    first.gateOnly = (call) => call === 'set sess';
    first.close_gate();
    second.gateOnly = (call) => call === 'set sess';
    second.close_gate();
    const writing = exec(set('v2'));
    await settle();
    // ...when a read begins: the first answers it late, with the miss it read before the set landed.
    let answer = (): void => {};
    first.hold = new Promise((r) => (answer = r));
    const reading = exec({ kind: 'get', keys: ['sess'], withCas: false, touch: undefined });
    await eventually('the read reached the first', () => first.calls.includes('get sess'), { checks: 200, every: 'turn' });
    // The set lands on the first and is acknowledged (write-wait copies); the second's copy is still on its way.
    first.open();
    assert.equal(((await writing) as { status?: string }).status, 'STORED');
    answer();
    // The read overlaps the set: the value before it (on the second) or the set's, not a miss.
    const got = values(await reading)[0];
    assert.ok(got === 'v1' || got === 'v2', `the session is served (got ${String(got)})`);
    second.open();
  });
});
