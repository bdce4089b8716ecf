/**
 * A fault-injecting upstream for router tests: a real memory store behind a switch that can
 * make every request fail, time out, or wait at a gate the test opens. It injects faults a
 * real server cannot produce on demand; the real-server tests live in test/integration.
 */

import type { ArithOp } from '../../src/command/command';
import { ErrorCodes, McmuxError } from '../../src/errors';
import { RepairJournal } from '../../src/router/journal';
import { Router } from '../../src/router/router';
import type { StatsSource } from '../../src/router/stats';
import type { ConnectionLimits } from '../../src/server/connection';
import { Listener } from '../../src/server/listener';
import { MemoryUpstream } from '../../src/upstream/memory';
import type { StoreRequest, Upstream } from '../../src/upstream/upstream';

export type FaultMode = 'ok' | 'fail' | 'timeout' | 'gate' | 'late';

export class FakeUpstream implements Upstream {
  /** 'memory' makes the router treat it as a cache (flushed to be trusted after an overflow). */
  readonly scheme: string;
  readonly timeoutMs = 50;
  readonly inner: MemoryUpstream;
  mode: FaultMode = 'ok';
  /** With mode 'gate' or 'late': only the calls it matches are held (undefined: every call). */
  gateOnly: ((call: string) => boolean) | undefined;
  /** Every call, as `op key...`, for asserting what the router asked. */
  readonly calls: string[] = [];
  /** Every store request, as the router made it. */
  readonly storeRequests: StoreRequest[] = [];
  /** Settles with true when the requests waiting at it are to fail (`kill`). */
  private gate: Promise<boolean> = Promise.resolve(false);
  private openGate: (failed: boolean) => void = () => {};

  constructor(
    readonly name: string,
    scheme = 'fake',
  ) {
    this.scheme = scheme;
    this.inner = new MemoryUpstream(name, 64 * 1024 * 1024);
  }

  get stats() {
    return this.inner.stats;
  }

  /** Requests made while closed wait until `open()`. */
  close_gate(): void {
    this.mode = 'gate';
    this.gate = new Promise((resolve) => (this.openGate = resolve));
  }

  /**
   * Requests made from now on time out for the caller, and are applied when `open()` is called:
   * a paused server that resumes works through what waited in its sockets.
   */
  delay_late(): void {
    this.close_gate();
    this.mode = 'late';
  }

  open(): void {
    this.mode = 'ok';
    this.openGate(false);
  }

  /** Dies: the requests waiting at the gate fail, and so does every request from now on. */
  kill(): void {
    this.mode = 'fail';
    this.openGate(true);
  }

  /** The request `call` under the current mode; `apply` performs it on the store. */
  private async run<R>(call: string, apply: () => Promise<R>): Promise<R> {
    if (this.mode === 'late' && (this.gateOnly === undefined || this.gateOnly(call))) {
      this.calls.push(call);
      void this.gate.then((failed) => (failed ? undefined : apply())).catch(() => {});
      await new Promise((r) => setTimeout(r, this.timeoutMs));
      throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: injected timeout (applied when the gate opens)`);
    }
    await this.fault(call);
    return apply();
  }

  private async fault(call: string): Promise<void> {
    this.calls.push(call);
    switch (this.mode) {
      case 'fail':
        throw new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: injected failure`);
      case 'timeout':
        await new Promise((r) => setTimeout(r, this.timeoutMs));
        throw new McmuxError(ErrorCodes.UPSTREAM_TIMEOUT, `${this.name}: injected timeout`);
      case 'gate':
        if (this.gateOnly && !this.gateOnly(call)) return;
        if (await this.gate) throw new McmuxError(ErrorCodes.UPSTREAM_IO, `${this.name}: injected failure`);
        return;
      case 'late': // a call it does not hold
      case 'ok':
        return;
    }
  }

  get(keys: readonly string[], touch?: number) {
    return this.run(`get ${keys.join(' ')}`, () => this.inner.get(keys, touch));
  }
  store(req: StoreRequest) {
    this.storeRequests.push(req);
    return this.run(`${req.mode} ${req.key}`, () => this.inner.store(req));
  }
  delete(key: string) {
    return this.run(`delete ${key}`, () => this.inner.delete(key));
  }
  touch(key: string, deadline: number, withItem?: boolean) {
    return this.run(`touch ${key}`, () => this.inner.touch(key, deadline, withItem));
  }
  arith(op: ArithOp, key: string, delta: bigint) {
    return this.run(`${op} ${key}`, () => this.inner.arith(op, key, delta));
  }
  flush() {
    return this.run('flush', () => this.inner.flush());
  }
  async probe() {
    await this.fault('probe');
  }
  async close() {}
}

/**
 * An in-process mcmux front end (Listener + Router) over `up`, on a free port: for tests that
 * hold the upstream at a gate and look at what reached it. Close it with `listener.close(true)`.
 */
export async function listenOverFake(up: FakeUpstream, overrides: Partial<ConnectionLimits> = {}): Promise<{ listener: Listener; port: number }> {
  let router: Router | undefined;
  const limits: ConnectionLimits = {
    maxLineLength: 2048,
    maxItemSize: 1 << 20,
    maxKeysPerGet: 16,
    maxReadsHeld: 16,
    maxPipeline: 64,
    maxOutputBytes: 1 << 20,
    maxInputBytes: 1 << 20,
    ...overrides,
  };
  const listener = new Listener(() => router as Router, limits, 10, 'test');
  router = new Router(
    { upstreams: [up], journal: new RepairJournal({ maxKeys: 100, dir: undefined, fsync: 'no' }), minCopies: 1, writeWait: 'all', allowFlush: true },
    listener,
    () => {},
  );
  const bound = await listener.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, 0o666);
  return { listener, port: bound.kind === 'tcp' ? bound.port : 0 };
}

/** Lets the event loop turn a few times, so anything not held back reaches the upstream. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** What a Router's `stats` reports of the listener, for routers driven without one. */
export const noStats: StatsSource = { startedAt: 0, version: 'test', currConnections: () => 0, totalConnections: () => 0, rejectedConnections: () => 0 };
