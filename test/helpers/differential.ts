/**
 * The targets a differential test (test/server/review-*differential.test.ts) sends the same
 * streams to and compares: memcached itself, mcmux over another memcached, and mcmux (in this
 * process) over memory://.
 */

import { after, before } from 'node:test';
import { inProcessMcmux } from './in-process';
import { type McmuxProcess, startMcmux } from './mcmux';
import { type MemcachedProcess, startMemcached } from './servers';

export interface Target {
  readonly name: string;
  readonly port: number;
}

/**
 * The three targets, started before the tests of the `describe` it is called in and stopped after
 * them (the list fills in `before`). `allowFlush`: both mcmux take flush_all.
 */
export function differentialTargets(allowFlush = false): Target[] {
  let reference: MemcachedProcess | undefined;
  let behind: MemcachedProcess | undefined;
  let mux: McmuxProcess | undefined;
  const targets: Target[] = [];
  before(async () => {
    [reference, behind] = await Promise.all([startMemcached(), startMemcached()]);
    mux = await startMcmux(['--upstream', behind.url, '--log-level', 'warn', '--lock-fence', '0', ...(allowFlush ? ['--allow-flush'] : [])]);
    const inProc = await inProcessMcmux({ 'lock-fence': 0, ...(allowFlush ? { 'allow-flush': true } : {}) }, ['memory://a']);
    targets.push({ name: 'memcached', port: reference.port }, { name: 'mcmux>memcached', port: mux.port }, { name: 'mcmux>memory', port: inProc.address.port });
  });
  after(async () => {
    await mux?.stop();
    await Promise.all([reference?.stop(), behind?.stop()]);
  });
  return targets;
}
