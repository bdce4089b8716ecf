/**
 * Review of the memcached driver and pool: findings proven against private memcached processes
 * (and mcmux as a process, for what a client sees).
 */

import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { ErrorCodes, McmuxError } from '../../src/errors';
import type { HealthyUpstream } from '../../src/router/health';
import { MemcachedPool } from '../../src/upstream/memcached-pool';
import { createUpstream } from '../../src/upstream/registry';
import { startMcmux } from '../helpers/mcmux';
import { type MemcachedProcess, requireBinary, startMemcached } from '../helpers/servers';
import { connectWire } from '../helpers/wire';

const ctx = { defaultTimeoutMs: 2000, maxItemSize: 1024 * 1024 };
const b = (s: string): Buffer => Buffer.from(s, 'latin1');
/** memcached with a 1 KiB item limit: a 2000-byte value is refused (SERVER_ERROR object too large for cache). */
const SMALL_ITEMS = ['-I', '1k', '-o', 'slab_chunk_max=512'];
const BIG = 'x'.repeat(2000);

async function startServers(t: TestContext, n: number, extra: string[] = []): Promise<MemcachedProcess[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => startMemcached(extra)));
  t.after(() => Promise.all(servers.map((s) => s.stop())));
  return servers;
}

function poolUrl(servers: readonly MemcachedProcess[], query = ''): string {
  return `memcached://${servers.map((s) => `127.0.0.1:${s.port}`).join(',')}${query}`;
}

function openPool(t: TestContext, servers: readonly MemcachedProcess[], query = ''): MemcachedPool {
  const u = createUpstream(poolUrl(servers, query), new Map(), ctx);
  assert.ok(u instanceof MemcachedPool);
  t.after(() => u.close());
  return u;
}

/** The code of the failure an UPSTREAM_PARTIAL stands for, where the error carries one. */
const origin = (e: McmuxError): unknown => (e as { origin?: unknown }).origin;

function errorOf(p: Promise<unknown>): Promise<McmuxError> {
  return p.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => {
      assert.ok(e instanceof McmuxError, String(e));
      return e;
    },
  );
}

// The router decides a conditional command on the first upstream that answers, and fails over
// past one only when its error shows nothing was applied there (authority.ts `unapplied`:
// UPSTREAM_DOWN, _BUSY, _REFUSED). README: "A `cas` fails over only past an authority that cannot
// have applied it (down, busy, or its answer an error of the store)", and such an authority "is
// not journaled at all". A pool re-raised a server's BUSY and REFUSED as UPSTREAM_PARTIAL, which
// reads as "may have been applied".
test('a pool server that is busy or refuses a store: the pool keeps the code that says nothing was applied', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const servers = await startServers(t, 2, SMALL_ITEMS);
  const pool = openPool(t, servers, '?max-queue=1');
  const members = pool.members();
  const key = Array.from({ length: 50 }, (_, i) => `busy:${i}`).find((k) => pool.serverFor(k) === members[0]) as string;

  // Two requests for one server in one synchronous run: the second finds max-queue=1 taken.
  const first = pool.store({ mode: 'set', key, value: b('a'), flags: 0, deadline: 0 });
  const busy = await errorOf(pool.store({ mode: 'set', key, value: b('b'), flags: 0, deadline: 0 }));
  assert.equal((await first).status, 'STORED');
  assert.equal(busy.late, false);
  assert.ok(
    busy.code === ErrorCodes.UPSTREAM_BUSY || origin(busy) === ErrorCodes.UPSTREAM_BUSY,
    `a busy server's refusal (nothing sent) came back as ${busy.code}, which the router takes as "may have been applied"`,
  );

  // memcached's own refusal (SERVER_ERROR object too large for cache): nothing was stored.
  const refused = await errorOf(pool.store({ mode: 'cas', key, value: b(BIG), flags: 0, deadline: 0, cas: 1n }));
  assert.equal(refused.late, false);
  assert.match(refused.message, /SERVER_ERROR object too large/);
  assert.ok(
    refused.code === ErrorCodes.UPSTREAM_REFUSED || origin(refused) === ErrorCodes.UPSTREAM_REFUSED,
    `a server's SERVER_ERROR came back as ${refused.code}, which the router takes as "may have been applied"`,
  );
  // It still does not count against the pool as a whole: the other server is fine.
  assert.ok((members[1] as HealthyUpstream).usable);
});

/** set, gets, then a cas too large for memcached's -I through mcmux; returns the cas reply line. */
async function casTooLarge(t: TestContext, url: string): Promise<string> {
  const mux = await startMcmux(['--upstream', url, '--upstream', 'sqlite://./review-pool.db', '--log-level', 'error']);
  t.after(() => mux.stop());
  const wire = await connectWire(mux.port);
  t.after(() => wire.close());
  assert.equal(await wire.ask('set sess 0 0 1\r\na\r\n'), 'STORED\r\n');
  const gets = await wire.ask('gets sess\r\n', /END\r\n$/);
  const unique = /^VALUE sess 0 1 (\d+)\r\n/.exec(gets)?.[1];
  assert.ok(unique !== undefined, gets);
  return wire.ask(`cas sess 0 0 ${BIG.length} ${unique}\r\n${BIG}\r\n`);
}

test('a cas refused by the pool server of its key fails over as with one memcached (EXISTS), not SERVER_ERROR "may have been applied"', async (t) => {
  if (!requireBinary(t, 'memcached', 'memcached')) return;
  const [one] = await startServers(t, 1, SMALL_ITEMS);
  const single = await casTooLarge(t, (one as MemcachedProcess).url);
  // The control: memcached refused it (nothing applied), the next upstream cannot check the
  // unique and fails safe.
  assert.equal(single, 'EXISTS\r\n', 'one memcached upstream');
  const pair = await startServers(t, 2, SMALL_ITEMS);
  const pooled = await casTooLarge(t, poolUrl(pair));
  assert.equal(pooled, single, 'a pool of two memcached answers the same cas differently');
});
