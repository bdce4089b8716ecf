/**
 * Every connection encodes its replies into one shared slab (OutBuffer). A reply that fails
 * half-way must not leave its bytes there for the next client flushed: that would hand one
 * client another's data.
 */

import assert from 'node:assert/strict';
import { type Server, createServer } from 'node:net';
import { after, it } from 'node:test';
import type { Reply } from '../../src/command/command';
import type { Request } from '../../src/protocol/codec';
import type { OutBuffer } from '../../src/protocol/out-buffer';
import { TextCodec } from '../../src/protocol/text/text-codec';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import { ClientConnection, type ConnectionLimits } from '../../src/server/connection';
import { MemoryUpstream } from '../../src/upstream/memory';
import { noStats } from '../helpers/fake-upstream';
import { connectWire } from '../helpers/wire';

/** A text codec that, for a get of `boom`, writes part of a reply and then fails. */
class FailingCodec extends TextCodec {
  override encode(reply: Reply, request: Request, out: OutBuffer): void {
    if (request.command.kind === 'get' && request.command.keys[0] === 'boom') {
      out.latin1('VALUE secret-of-another-client 0 4\r\n');
      throw new Error('encoder bug');
    }
    super.encode(reply, request, out);
  }
}

const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

it('a reply that fails half-way leaves nothing in the shared output for the next client', async () => {
  const up = new MemoryUpstream('memory://', 1 << 20);
  await up.store({ mode: 'set', key: 'k', value: Buffer.from('mine'), flags: 0, deadline: 0 });
  const router = new Router(
    { upstreams: [up], journal: new RepairJournal({ maxKeys: 100, dir: undefined, fsync: 'no' }), minCopies: 1, writeWait: 'all', allowFlush: false },
    noStats,
    () => {},
  );
  const limits: ConnectionLimits = { maxLineLength: 2048, maxItemSize: 1 << 20, maxKeysPerGet: 16, maxReadsHeld: 16, maxPipeline: 64, maxOutputBytes: 1 << 20, maxInputBytes: 1 << 20 };
  const bugs: unknown[] = [];
  const server = createServer((socket) => {
    new ClientConnection(socket, router, limits, () => {}, (_first, l) => new FailingCodec(l), (e) => bugs.push(e));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;

  const victim = await connectWire(port);
  victim.send('get boom\r\n');
  await victim.closed; // the bug costs that client its connection
  assert.equal(bugs.length, 1);

  const other = await connectWire(port);
  assert.equal(await other.ask('get k\r\n', 'END\r\n'), 'VALUE k 0 4\r\nmine\r\nEND\r\n');
  other.close();
});
