/**
 * mcmux's own `stats`: the memcached names clients and dashboards know, computed from mcmux's
 * counters (never forwarded upstream), then one section per upstream.
 */

import type { Upstream } from '../upstream/upstream';
import { HealthyUpstream, membersOf } from './health';
import type { RepairJournal } from './journal';
import type { Router } from './router';

/** What the server side knows: connections and process facts. */
export interface StatsSource {
  readonly startedAt: number;
  readonly version: string;
  currConnections(): number;
  totalConnections(): number;
  rejectedConnections(): number;
}

type Line = readonly [string, string | number | bigint];

export function statsLines(router: Router, src: StatsSource): Line[] {
  const now = Date.now();
  const cmd = (name: string): number => router.commands.get(name) ?? 0;
  const c = router.counters;
  const lines: Line[] = [
    ['pid', process.pid],
    ['uptime', Math.floor((now - src.startedAt) / 1000)],
    ['time', Math.floor(now / 1000)],
    ['version', src.version],
    ['pointer_size', 64],
    ['curr_connections', src.currConnections()],
    ['total_connections', src.totalConnections()],
    ['rejected_connections', src.rejectedConnections()],
    ['cmd_get', cmd('get')],
    ['cmd_set', cmd('set')],
    ['cmd_touch', cmd('touch')],
    ['cmd_flush', cmd('flush')],
    ['cas_cmds', cmd('cas')],
    ['delete_cmds', cmd('delete')],
    ['incr_cmds', cmd('incr')],
    ['decr_cmds', cmd('decr')],
    ['get_hits', c.getHits],
    ['get_misses', c.getMisses],
    ['read_repairs', c.readRepairs],
    ['read_repair_failures', c.readRepairFailures],
    ['replication_failures', c.replicationFailures],
    ['hedged_reads', c.hedges],
    ['hedge_wins', c.hedgeWins],
    ['upstreams', router.upstreams.length],
    ['journal_keys', router.context.journal.totalKeys],
    ['journal_write_errors', router.context.journal.writeErrors],
    ['repaired_keys', router.repairStats().repaired],
    ['repair_failures', router.repairStats().failures],
  ];
  return lines.concat(upstreamStatsLines(router.upstreams, router.context.journal));
}

/** `stats upstreams`: one block per upstream, prefixed `upstream.<index>.`. */
export function upstreamStatsLines(upstreams: readonly Upstream[], journal: RepairJournal): Line[] {
  const lines: Line[] = [];
  upstreams.forEach((u, i) => {
    const p = `upstream.${i}.`;
    const s = u.stats;
    lines.push(
      [`${p}name`, u.name],
      [`${p}scheme`, u.scheme],
      [`${p}state`, u instanceof HealthyUpstream ? u.state : 'healthy'],
      [`${p}state_changes`, u instanceof HealthyUpstream ? Object.values(u.transitions).reduce((a, b) => a + b, 0) : 0],
      [`${p}requests`, s.requests],
      [`${p}errors`, s.errors],
      [`${p}timeouts`, s.timeouts],
      [`${p}dirty_keys`, journal.size(u)],
      [`${p}overflowed`, journal.overflowed(u) ? 1 : 0],
      [`${p}fenced`, u instanceof HealthyUpstream && u.fenced ? 1 : 0],
      [`${p}latency_mean_us`, s.latencyCount ? Math.round(s.latencyUsSum / s.latencyCount) : 0],
    );
    membersOf(u).forEach((m, j) => {
      const q = `${p}server.${j}.`;
      lines.push(
        [`${q}name`, m.name],
        [`${q}state`, m.state],
        [`${q}requests`, m.stats.requests],
        [`${q}errors`, m.stats.errors],
        [`${q}timeouts`, m.stats.timeouts],
        [`${q}latency_mean_us`, m.stats.latencyCount ? Math.round(m.stats.latencyUsSum / m.stats.latencyCount) : 0],
      );
    });
  });
  return lines;
}
