/**
 * The request bytes of a run, built once: every `get bench:<n>\r\n` line back to back in one
 * Buffer, every `set bench:<n> 0 0 <size>\r\n` header likewise, and one value block.
 * An op is `key * 2 + isSet`; writing one is a copy or two into the batch's output Buffer.
 */

export class Workload {
  private static cache: Workload | null = null;

  private readonly gets: Buffer;
  private readonly getAt: Uint32Array; // key n's get line is gets[getAt[n] .. getAt[n + 1]]
  private readonly sets: Buffer;
  private readonly setAt: Uint32Array;
  private readonly value: Buffer; // the data block and its CRLF

  private constructor(readonly keys: number, readonly valueSize: number) {
    this.getAt = new Uint32Array(keys + 1);
    this.setAt = new Uint32Array(keys + 1);
    const getLines: string[] = [];
    const setLines: string[] = [];
    let g = 0;
    let s = 0;
    for (let n = 0; n < keys; n++) {
      const get = `get bench:${n}\r\n`;
      const set = `set bench:${n} 0 0 ${valueSize}\r\n`;
      getLines.push(get);
      setLines.push(set);
      g += get.length;
      s += set.length;
      this.getAt[n + 1] = g;
      this.setAt[n + 1] = s;
    }
    this.gets = Buffer.from(getLines.join(''), 'latin1');
    this.sets = Buffer.from(setLines.join(''), 'latin1');
    this.value = Buffer.alloc(valueSize + 2);
    for (let i = 0; i < valueSize; i++) this.value[i] = 97 + (i % 26); // a..z
    this.value.write('\r\n', valueSize, 'latin1');
  }

  /** The workload for these settings; the last one built is reused (one run builds it once). */
  static get(keys: number, valueSize: number): Workload {
    const c = Workload.cache;
    if (c && c.keys === keys && c.valueSize === valueSize) return c;
    return (Workload.cache = new Workload(keys, valueSize));
  }

  requestLength(op: number): number {
    const n = op >>> 1;
    if ((op & 1) === 0) return this.getAt[n + 1]! - this.getAt[n]!;
    return this.setAt[n + 1]! - this.setAt[n]! + this.value.length;
  }

  /** Writes op's request into `out` at `at`; returns the offset after it. */
  writeRequest(op: number, out: Buffer, at: number): number {
    const n = op >>> 1;
    if ((op & 1) === 0) return at + this.gets.copy(out, at, this.getAt[n]!, this.getAt[n + 1]!);
    at += this.sets.copy(out, at, this.setAt[n]!, this.setAt[n + 1]!);
    return at + this.value.copy(out, at);
  }
}
