/** A Reply as one short line, for test messages and the fuzz's logs. */

import type { Reply } from '../../src/command/command';

export function describeReply(r: Reply | undefined, thrown?: unknown): string {
  if (thrown !== undefined) return `THREW ${String(thrown)}`;
  if (r === undefined) return '(no reply)';
  switch (r.kind) {
    case 'values':
      return r.hits.map((h) => (h ? h.value.toString() : 'miss')).join(' ');
    case 'status':
      return r.status;
    case 'number':
      return `${r.value}`;
    case 'error':
      return `${r.type} ${r.message}`;
    default:
      return r.kind;
  }
}
