/**
 * Node flags mcmux runs with. They cannot be set from inside the process (V8 reads them when the
 * heap is made) nor through NODE_OPTIONS (Node refuses them there), so every launcher passes
 * them: the systemd unit, `npm start`, the `#!` line of bin/mcmux, the bench and the tests.
 * mcmux warns at start when one is missing.
 *
 * --no-memory-reducer: V8 shrinks the heap of a process that has been idle for a few seconds,
 * and lowers its limits with it. A proxy that then takes load again ran on those limits:
 * measured on the bench (mcmux1, 50 clients x 16 pipelined, after about a minute idle while
 * other targets were preloaded), 12.0 µs of CPU per request instead of 5.7 and a p99 of 25 ms
 * instead of 10, for the whole 5 s run, and the same in every round. Setting it with
 * v8.setFlagsFromString at start-up did not help (10.3 µs). A sidecar idles between bursts by
 * design, so mcmux keeps the heap it grew; the cost in idle RSS is in docs/benchmarks.md.
 */
export const NODE_FLAGS: readonly string[] = ['--no-memory-reducer'];

/** The NODE_FLAGS this process was not started with. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
