/**
 * A latency histogram cheap enough to record every request: log-linear buckets over whole
 * microseconds, counts in one Uint32Array, no allocation per sample.
 *
 *   0 .. 63 µs          one bucket per microsecond (exact)
 *   64 µs .. 2^31 µs    32 buckets per power of two (each within ~3 % of its value)
 *
 * Recording is a clz32 and two shifts; a quantile is one walk over 928 counters.
 * Histograms from worker threads are merged by adding their `counts` arrays.
 */

const LINEAR = 64; // values below this get a bucket each
const SUB_BITS = 5; // 2^5 = 32 sub-buckets per power of two
const SUB = 1 << SUB_BITS;
const FIRST_EXP = 6; // log2(LINEAR)

/** Number of buckets: 64 linear + 32 per octave for exponents 6..31. */
export const BUCKETS = LINEAR + (32 - FIRST_EXP) * SUB;

export class Histogram {
  readonly counts: Uint32Array;
  total = 0;

  constructor(counts?: Uint32Array) {
    this.counts = counts ?? new Uint32Array(BUCKETS);
    if (counts) for (const c of counts) this.total += c;
  }

  /** Records one latency, in microseconds (fractions are truncated). */
  record(us: number): void {
    const v = us < 0 ? 0 : us >= 0x7fffffff ? 0x7fffffff : us | 0;
    this.counts[bucketOf(v)]! += 1;
    this.total += 1;
  }

  /** Adds another histogram's counts into this one. */
  add(counts: Uint32Array): void {
    for (let i = 0; i < BUCKETS; i++) {
      const c = counts[i] ?? 0;
      this.counts[i]! += c;
      this.total += c;
    }
  }

  /** The value (µs, bucket midpoint) below which a fraction `q` (0..1) of samples fall; 0 if empty. */
  quantile(q: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return midpointOf(i);
    }
    return midpointOf(BUCKETS - 1);
  }

  reset(): void {
    this.counts.fill(0);
    this.total = 0;
  }
}

/** Bucket index of a whole number of microseconds, 0 <= v < 2^31. */
export function bucketOf(v: number): number {
  if (v < LINEAR) return v;
  const exp = 31 - Math.clz32(v); // >= FIRST_EXP
  const sub = (v >>> (exp - SUB_BITS)) & (SUB - 1);
  return LINEAR + (exp - FIRST_EXP) * SUB + sub;
}

/** Representative value of a bucket: exact below 64 µs, the middle of the bucket above. */
export function midpointOf(index: number): number {
  if (index < LINEAR) return index;
  const k = index - LINEAR;
  const exp = FIRST_EXP + Math.floor(k / SUB);
  const sub = k % SUB;
  const width = 2 ** (exp - SUB_BITS);
  return (SUB + sub) * width + width / 2;
}
