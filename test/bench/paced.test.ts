/** The bench's paced idle round trips: every one is made, one at a time, and none is lost to the pause. */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { it } from 'node:test';
import { idleRoundTrips } from '../../bench/loadgen';

const PAUSE_MS = 20;

it('paced round trips: the group settles after the last request, not at the first pause', async () => {
  let requests = 0;
  let overlapped = false;
  let waiting = 0; // requests this server has not answered yet
  let answeredAt = 0;
  const gaps: number[] = []; // ms from an answer to the next request
  const server = createServer((socket) => {
    socket.on('data', (chunk: Buffer) => {
      const n = chunk.toString('latin1').split('\r\n').filter((l) => l.startsWith('get ')).length;
      if (requests > 0) gaps.push(performance.now() - answeredAt);
      requests += n;
      waiting += n;
      if (waiting > 1) overlapped = true;
      // Answered on the next turn, so that a client that did not wait would be seen overlapping.
      setImmediate(() => {
        waiting -= n;
        answeredAt = performance.now();
        socket.write('END\r\n'.repeat(n));
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    const g = await idleRoundTrips('127.0.0.1', port, 5, 100, 10, 0, PAUSE_MS);
    assert.equal(g.getOps, 5);
    assert.equal(g.errors + g.connErrors, 0);
    assert.equal(g.misses, 5);
    assert.equal(requests, 5);
    assert.equal(overlapped, false);
    // A lower bound only (a busy machine makes gaps longer, never shorter): each request waited.
    assert.equal(gaps.length, 4);
    for (const gap of gaps) assert.ok(gap >= PAUSE_MS / 2, `a request came ${gap.toFixed(1)} ms after the previous answer`);
  } finally {
    server.close();
  }
});
