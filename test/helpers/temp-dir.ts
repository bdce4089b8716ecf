/** A private temporary directory for one test, removed after it. */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** `mcmux-<name>-XXXXXX` under the system's temporary directory, removed when `t` ends. */
export function tempDir(t: { after: (fn: () => void) => void }, name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mcmux-${name}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
