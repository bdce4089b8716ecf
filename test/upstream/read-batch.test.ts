/** ReadBatcher: the reads of one event-loop pass go to the store as few multi-key reads. */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Hit } from '../../src/command/command';
import { ReadBatcher } from '../../src/upstream/read-batch';

const hit = (key: string): Hit => ({ value: Buffer.from(`v:${key}`), flags: key.length, cas: 1n, deadline: 0 });
const values = (hits: Array<Hit | undefined>): Array<string | undefined> => hits.map((h) => h?.value.toString());

/** A store holding every key but those starting with "miss", recording each fetch. */
function store(failOn?: string) {
  const fetches: Array<{ keys: string[]; callers: number }> = [];
  const fetch = (keys: string[], callers: number): Promise<Array<Hit | undefined>> => {
    fetches.push({ keys, callers });
    if (failOn !== undefined && keys.includes(failOn)) return Promise.reject(new Error(`store failed on ${failOn}`));
    return Promise.resolve(keys.map((k) => (k.startsWith('miss') ? undefined : hit(k))));
  };
  return { fetches, fetch };
}

test('the reads of one pass are one fetch of their distinct keys; each caller gets its own keys, in its order', async () => {
  const s = store();
  const batcher = new ReadBatcher(s.fetch, 100);
  const reads = [batcher.read(['a']), batcher.read(['b', 'a']), batcher.read(['miss1', 'c', 'c']), batcher.read(['a'])];
  assert.equal(batcher.waiting, 4, 'queued until the end of the pass');
  const got = await Promise.all(reads);
  assert.deepEqual(s.fetches, [{ keys: ['a', 'b', 'miss1', 'c'], callers: 4 }]);
  assert.deepEqual(got.map(values), [['v:a'], ['v:b', 'v:a'], [undefined, 'v:c', 'v:c'], ['v:a']]);
  assert.equal(batcher.waiting, 0);
  // The next pass is a fetch of its own.
  assert.deepEqual(values(await batcher.read(['d'])), ['v:d']);
  assert.equal(s.fetches.length, 2);
});

test('a pass over maxKeys distinct keys is split into chunks of whole callers; a larger caller is a chunk alone', async () => {
  const s = store();
  const batcher = new ReadBatcher(s.fetch, 3);
  const got = await Promise.all([
    batcher.read(['a', 'b']),
    batcher.read(['a', 'c']), // adds one key: 3, still within
    batcher.read(['d']), // a fourth: a new chunk
    batcher.read(['e', 'f', 'g', 'h']), // more than maxKeys alone
    batcher.read(['i']),
  ]);
  assert.deepEqual(s.fetches, [
    { keys: ['a', 'b', 'c'], callers: 2 },
    { keys: ['d'], callers: 1 },
    { keys: ['e', 'f', 'g', 'h'], callers: 1 },
    { keys: ['i'], callers: 1 },
  ]);
  assert.deepEqual(got.map(values), [['v:a', 'v:b'], ['v:a', 'v:c'], ['v:d'], ['v:e', 'v:f', 'v:g', 'v:h'], ['v:i']]);
});

test('a failed fetch fails the callers of its chunk, and only them', async () => {
  const s = store('bad');
  const batcher = new ReadBatcher(s.fetch, 2);
  const got = await Promise.allSettled([batcher.read(['a']), batcher.read(['bad']), batcher.read(['c', 'd'])]);
  assert.deepEqual(
    got.map((r) => (r.status === 'fulfilled' ? values(r.value) : (r.reason as Error).message)),
    ['store failed on bad', 'store failed on bad', ['v:c', 'v:d']],
  );
  // A fetch that throws instead of rejecting fails its callers the same way.
  const throwing = new ReadBatcher(() => {
    throw new Error('thrown');
  }, 10);
  await assert.rejects(throwing.read(['x']), /thrown/);
});

test('sent() resolves once the queued reads have been handed to the store', async () => {
  const s = store();
  const batcher = new ReadBatcher(s.fetch, 10);
  await batcher.sent(); // nothing queued: at once
  const read = batcher.read(['a']);
  await batcher.sent();
  assert.equal(s.fetches.length, 1, 'sent before sent() resolved');
  assert.deepEqual(values(await read), ['v:a']);
});
