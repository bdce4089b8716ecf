/**
 * mcmux's own `stats`, read by the bench: how many connections it holds (idle-connections.ts),
 * and whether a run kept every store in step (replication failures, upstream errors, journal).
 * A fast row means nothing if its writes did not reach every upstream: these counters say so.
 */

import { connect } from 'node:net';

const STATS_TIMEOUT_MS = 5000;

/** One `stats` round trip on a connection of its own: every `STAT name value` line. */
export function stats(host: string, port: number): Promise<Map<string, string>> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port });
    let got = '';
    const done = (err: Error | null) => {
      clearTimeout(timer);
      s.destroy();
      if (err) return reject(err);
      const m = new Map<string, string>();
      for (const line of got.split('\r\n')) {
        const [word, name, ...value] = line.split(' ');
        if (word === 'STAT' && name) m.set(name, value.join(' '));
      }
      resolve(m);
    };
    const timer = setTimeout(() => done(new Error(`stats on ${host}:${port}: no END in ${STATS_TIMEOUT_MS} ms`)), STATS_TIMEOUT_MS);
    s.on('connect', () => s.write('stats\r\n'));
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.endsWith('END\r\n')) done(null);
    });
    s.on('error', (err) => done(err));
  });
}

/** The counters of one run of an mcmux target (differences over the run; the journal at its end). */
export interface Replication {
  /** Writes that some upstream missed (mcmux `replication_failures`). */
  replicationFailures: number;
  /** Failed upstream requests, timeouts included, summed over upstreams (`upstream.N.errors`). */
  upstreamErrors: number;
  /** Upstream health changes, summed (`upstream.N.state_changes`): healthy -> down and back. */
  stateChanges: number;
  /** Keys still waiting for repair on some upstream when the run ended (`journal_keys`). */
  journalKeys: number;
}

function sum(m: Map<string, string>, suffix: string): number {
  let n = 0;
  for (const [k, v] of m) if (/^upstream\.\d+\./.test(k) && k.endsWith(suffix) && !k.includes('.server.')) n += Number(v) || 0;
  return n;
}

export function replication(before: Map<string, string>, after: Map<string, string>): Replication {
  const num = (m: Map<string, string>, k: string) => Number(m.get(k) ?? 0) || 0;
  return {
    replicationFailures: num(after, 'replication_failures') - num(before, 'replication_failures'),
    upstreamErrors: sum(after, '.errors') - sum(before, '.errors'),
    stateChanges: sum(after, '.state_changes') - sum(before, '.state_changes'),
    journalKeys: num(after, 'journal_keys'),
  };
}
