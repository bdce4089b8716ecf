/**
 * What mcmux's memory costs per idle client: open N connections, each sends one get and then
 * nothing, wait until mcmux counts them all (its `stats` curr_connections), read the process's
 * VmRSS, close them, read it again.
 *
 *   5 s with no traffic (V8 shrinks its heap after load) ─► VmRSS before ─► connect N in batches (so the listen backlog never overflows), one
 *     `get bench:<i>` each, answered ─► poll `stats` until curr_connections >= N + 1 (itself)
 *     ─► settle 1 s ─► VmRSS ─► close all ─► poll until they are gone ─► settle 1 s ─► VmRSS after
 *
 * The one get is there because a client that has spoken has cost mcmux what a connection costs
 * (reader, codec, reply queue); a socket that never sent a byte may not have, and a pool of
 * persistent client connections is made of clients that have spoken.
 *
 * RSS is what the kernel has given the process, so it includes V8's heap grown by earlier load;
 * run on a process that has served load, it is what a sidecar costs. V8 collects on its own
 * schedule, so the per-connection figure (a difference of two readings) is rough: a collection
 * between the readings can even make it negative.
 */

import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { sleep, withTimeout } from './loadgen';
import { stats } from './mcmux-stats';
import type { IdleMemory } from './report';

const BATCH = 100;
const CONNECT_TIMEOUT_MS = 5000;
const ACCEPT_TIMEOUT_MS = 30_000;
const SETTLE_MS = 1000;
const QUIET_BEFORE_MS = 5000;

/** VmRSS of `pid` in MiB, or NaN if unreadable (gone, or not Linux). */
export function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** The value of mcmux's `STAT curr_connections`. */
async function currConnections(host: string, port: number): Promise<number> {
  const n = Number((await stats(host, port)).get('curr_connections'));
  if (!Number.isFinite(n)) throw new Error('stats: no curr_connections line');
  return n;
}

/** Connects, sends `get bench:<n>`, resolves with the socket once the reply's END is in. */
function openAndGet(host: string, port: number, n: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port });
    let got = '';
    const finish = (err: Error | null) => {
      clearTimeout(timer);
      s.removeAllListeners('data');
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      s.on('error', () => {}); // a reset while idle is seen when the count is polled
      if (err) {
        s.destroy();
        reject(err);
      } else resolve(s);
    };
    const timer = setTimeout(() => finish(new Error(`connect and get on ${host}:${port}: no answer in ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
    s.once('connect', () => s.write(`get bench:${n}\r\n`));
    s.on('data', (d: Buffer) => {
      got = (got + d.toString('latin1')).slice(-16);
      if (got.endsWith('END\r\n')) finish(null);
      else if (/ERROR/.test(got)) finish(new Error(`get on an idle connection: ${got.trim()}`));
    });
    s.once('error', (err) => finish(err));
    s.once('close', () => finish(new Error('closed by mcmux before answering (over --max-connections?)')));
  });
}

/** Polls `stats` until `ok(curr_connections)`; returns the last value seen. */
async function waitConnections(host: string, port: number, ok: (n: number) => boolean, what: string): Promise<number> {
  const deadline = Date.now() + ACCEPT_TIMEOUT_MS;
  for (;;) {
    const n = await currConnections(host, port);
    if (ok(n)) return n;
    if (Date.now() > deadline) throw new Error(`${what}: curr_connections still ${n} after ${ACCEPT_TIMEOUT_MS} ms`);
    await sleep(100);
  }
}

export async function measureIdleConnections(
  target: { kind: string; host: string; port: number; pid: number },
  connections: number,
  limitMB: number,
): Promise<IdleMemory> {
  const { host, port, pid } = target;
  await sleep(QUIET_BEFORE_MS);
  const rssBefore = rssMiB(pid);
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < connections; i += BATCH) {
      const batch = Array.from({ length: Math.min(BATCH, connections - i) }, (_, j) => openAndGet(host, port, i + j));
      const made = await Promise.allSettled(batch);
      for (const m of made) if (m.status === 'fulfilled') sockets.push(m.value);
      const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
      if (failed) throw new Error(`opening idle connection ${sockets.length + 1} of ${connections}: ${(failed.reason as Error).message}`);
    }
    // The stats connection is one of curr_connections too.
    const seen = await waitConnections(host, port, (n) => n >= connections + 1, `${connections} idle connections`);
    await sleep(SETTLE_MS);
    const rssOpen = rssMiB(pid);
    for (const s of sockets) s.destroy();
    await waitConnections(host, port, (n) => n <= 1, 'closing the idle connections');
    await sleep(SETTLE_MS);
    return {
      target: target.kind,
      connections,
      currConnections: seen,
      rssBeforeMiB: rssBefore,
      rssOpenMiB: rssOpen,
      rssAfterMiB: rssMiB(pid),
      kibPerConnection: ((rssOpen - rssBefore) * 1024) / connections,
      limitMB,
    };
  } finally {
    for (const s of sockets) s.destroy();
  }
}

/** measureIdleConnections, bounded in time. */
export function measureIdleConnectionsBounded(
  target: { kind: string; host: string; port: number; pid: number },
  connections: number,
  limitMB: number,
): Promise<IdleMemory> {
  return withTimeout(measureIdleConnections(target, connections, limitMB), 2 * ACCEPT_TIMEOUT_MS + connections * 50 + 10_000, 'idle connections');
}
