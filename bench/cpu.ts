/**
 * CPU time of other processes (from /proc/<pid>/stat) and of this one (process.cpuUsage(), which
 * counts every thread of the process, worker threads included).
 */

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticksPerSecond = 0;

/** Clock ticks per second that /proc counts utime and stime in (USER_HZ, nearly always 100). */
function clockTicks(): number {
  if (ticksPerSecond === 0) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/**
 * User + system CPU seconds used so far by process `pid`, or NaN if it cannot be read
 * (gone, or not Linux). Resolution is one clock tick (10 ms): fine over runs of seconds.
 */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Field 2, the command name, is in parentheses and may itself contain spaces or ')':
    // count fields from the last ')'. After it come field 3 (state) ... 14 (utime), 15 (stime).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return NaN;
    return (utime + stime) / clockTicks();
  } catch {
    return NaN;
  }
}

/** CPU seconds used so far by this process, all threads. */
export function selfCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
