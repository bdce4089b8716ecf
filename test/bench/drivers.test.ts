/** `--drivers`: each driver measured alone, in this process; here the two that need no server. */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { formatDrivers, measureDrivers } from '../../bench/drivers';
import { Children } from '../../bench/processes';

it('measures sets then gets of each driver: CPU a request here, none in a server it does not have', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'mcmux-drivers-'));
  const children = new Children();
  const logged: string[] = [];
  try {
    const rows = await measureDrivers({ drivers: ['memory', 'sqlite'], requests: 400, setsPerPass: 5, getsPerPass: 45, valueSize: 100 }, children, tmp, (m) => logged.push(m));
    assert.deepEqual(rows.map((r) => `${r.driver} ${r.op} ${r.perPass} ${r.requests} ${r.errors}`), [
      'memory set 5 400 0',
      'memory get 45 400 0',
      'sqlite set 5 400 0',
      'sqlite get 45 400 0',
    ]);
    for (const r of rows) {
      assert.ok(r.cpuUs > 0 && Number.isFinite(r.cpuUs), `${r.driver} ${r.op}: CPU ${r.cpuUs}`);
      assert.ok(r.wallUs > 0, `${r.driver} ${r.op}: wall ${r.wallUs}`);
      assert.equal(r.serverCpuUs, null, 'in-process stores have no server');
    }
    assert.equal(logged.length, 4);
    const table = formatDrivers(rows).split('\n');
    assert.equal(table.length, 2 + rows.length);
    assert.match(table[0] as string, /^driver\s+op\s+per pass\s+requests\s+CPU µs\/req here\s+CPU µs\/req server\s+wall µs\/req\s+errors$/);
    assert.match(table[4] as string, /^sqlite\s+set\s+5\s+400\s+[\d.]+\s+-\s+[\d.]+\s+0$/);
  } finally {
    await children.killAllAndWait(1000);
    rmSync(tmp, { recursive: true, force: true });
  }
});
