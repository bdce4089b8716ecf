/**
 * Sends one operation to several upstreams in parallel and lets a policy decide, after each
 * answer, whether the client can be answered yet. What is not needed for the answer goes on in
 * the background (write-wait copies). Every upstream promise is awaited: nothing is left
 * unobserved.
 */

import type { Upstream } from '../upstream/upstream';

export type Outcome<R> = { ok: true; value: R } | { ok: false; error: unknown };

/**
 * `decide(outcomes, settled)` is called after every answer with the outcomes so far (undefined
 * where an upstream has not answered) and whether all have answered; the first value it returns
 * is the result. When `settled` is true it must return a value.
 */
export function fanOut<R, T>(
  upstreams: readonly Upstream[],
  op: (u: Upstream) => Promise<R>,
  decide: (outcomes: ReadonlyArray<Outcome<R> | undefined>, settled: boolean) => T | undefined,
  onOutcome?: (u: Upstream, o: Outcome<R>) => void,
  onAllSettled?: () => void,
): Promise<T> {
  return new Promise<T>((resolve) => {
    const outcomes: Array<Outcome<R> | undefined> = new Array(upstreams.length).fill(undefined);
    let left = upstreams.length;
    let done = false;
    const settle = (i: number, o: Outcome<R>): void => {
      outcomes[i] = o;
      left--;
      if (onOutcome) onOutcome(upstreams[i] as Upstream, o);
      if (left === 0 && onAllSettled) onAllSettled();
      if (done) return;
      const r = decide(outcomes, left === 0);
      if (r !== undefined) {
        done = true;
        resolve(r);
      }
    };
    if (left === 0) {
      if (onAllSettled) onAllSettled();
      resolve(decide(outcomes, true) as T);
      return;
    }
    upstreams.forEach((u, i) => {
      let p: Promise<R>;
      try {
        p = op(u);
      } catch (error) {
        p = Promise.reject(error);
      }
      p.then(
        (value) => settle(i, { ok: true, value }),
        (error: unknown) => settle(i, { ok: false, error }),
      );
    });
  });
}

/** Counts outcomes that succeeded and satisfy `pred`. */
export function count<R>(outcomes: ReadonlyArray<Outcome<R> | undefined>, pred: (r: R) => boolean): number {
  let n = 0;
  for (const o of outcomes) if (o?.ok && pred(o.value)) n++;
  return n;
}

export function failures<R>(outcomes: ReadonlyArray<Outcome<R> | undefined>): number {
  let n = 0;
  for (const o of outcomes) if (o && !o.ok) n++;
  return n;
}

export function firstError<R>(outcomes: ReadonlyArray<Outcome<R> | undefined>): string {
  for (const o of outcomes) if (o && !o.ok) return o.error instanceof Error ? o.error.message : String(o.error);
  return 'no upstream answered';
}
