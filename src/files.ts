/**
 * `mkdir -p` that always returns. Node 20's `mkdirSync(path, { recursive: true })` never returns
 * for a path under /proc (a parent it cannot create there sends it round again): `--state-dir
 * /proc/x` hung mcmux at start. Creating one missing level at a time with a plain mkdirSync
 * fails at once with the reason (ENOENT, EACCES, ENOTDIR), which the caller reports.
 */

import { mkdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export function makeDirs(dir: string, mode: number): void {
  const path = resolve(dir);
  try {
    mkdirSync(path, { mode });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && statSync(path).isDirectory()) return;
    const parent = dirname(path);
    if (code !== 'ENOENT' || parent === path) throw error;
    makeDirs(parent, mode); // at most one call per level of the path
    try {
      mkdirSync(path, { mode });
    } catch (again) {
      // Made meanwhile by someone else: fine if it is a directory.
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST' || !statSync(path).isDirectory()) throw again;
    }
  }
}
