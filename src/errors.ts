/**
 * The one error catalogue. Every error mcmux raises has a stable `code`; messages name the
 * setting an operator can change. On the request path these are values (a rejected upstream
 * promise is turned into a reply), never exceptions thrown through the router.
 */

export const ErrorCodes = {
  /** An upstream did not answer within its timeout; its connection was discarded. */
  UPSTREAM_TIMEOUT: 'MCMUX_UPSTREAM_TIMEOUT',
  /** The connection to an upstream failed or closed with requests outstanding. */
  UPSTREAM_IO: 'MCMUX_UPSTREAM_IO',
  /**
   * The upstream is not connected (still connecting, or reconnecting after a loss): the request
   * was refused before it was sent, so it cannot have been applied (unlike UPSTREAM_IO).
   */
  UPSTREAM_UNREACHABLE: 'MCMUX_UPSTREAM_UNREACHABLE',
  /** An upstream answered something that is not the protocol. */
  UPSTREAM_PROTOCOL: 'MCMUX_UPSTREAM_PROTOCOL',
  /** An upstream answered with an error of its own (SERVER_ERROR, out of memory, ...). */
  UPSTREAM_REFUSED: 'MCMUX_UPSTREAM_REFUSED',
  /** The upstream's request queue is full (`max-queue`). */
  UPSTREAM_BUSY: 'MCMUX_UPSTREAM_BUSY',
  /** The upstream is marked down by health tracking; it is skipped until a probe succeeds. */
  UPSTREAM_DOWN: 'MCMUX_UPSTREAM_DOWN',
  /** One server of a pool failed while others are up: that server's keys only (not the pool's health). */
  UPSTREAM_PARTIAL: 'MCMUX_UPSTREAM_PARTIAL',
  /** The upstream is closed (shutdown or reload). */
  UPSTREAM_CLOSED: 'MCMUX_UPSTREAM_CLOSED',
  /** A configuration value or flag is invalid; exit status 2. */
  CONFIG: 'MCMUX_CONFIG',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class McmuxError extends Error {
  readonly code: ErrorCode;
  /**
   * The request had been sent when it failed this way (its connection discarded by mcmux after
   * an earlier request on it timed out, or after a protocol error): the server may still apply
   * it, later than requests sent after it on another connection. A timeout is always so.
   */
  readonly late: boolean;
  /**
   * The code of the failure this error stands for: its own, except for UPSTREAM_PARTIAL, which
   * carries the code of the pool server's failure (did the request reach the store or not).
   */
  readonly origin: ErrorCode;
  /**
   * Refused (nothing of the request applied), but the store removed the key's item first:
   * memcached unlinks it before it refuses an `ms` it cannot allocate the item for (too large,
   * out of memory), whatever the mode. The copy there no longer holds the key's current state.
   */
  readonly dropped: boolean;
  /**
   * UPSTREAM_PARTIAL of a multi-key read of a pool: what the servers that answered gave, aligned
   * with the keys asked (undefined: a miss), and the positions whose server failed. The router
   * takes the answered keys and asks the next upstream for the failed ones only.
   */
  partial: { hits: Array<import('./command/command').Hit | undefined>; failed: readonly number[] } | undefined;
  constructor(code: ErrorCode, message: string, late = false, origin: ErrorCode = code, dropped = false) {
    // Upstream errors are values on the request path, thousands a second when a store is busy
    // or down: capturing a stack for each cost 2 % of the CPU under load, and no one reads it.
    const limit = Error.stackTraceLimit;
    if (code !== ErrorCodes.CONFIG) Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.code = code;
    this.late = late || code === ErrorCodes.UPSTREAM_TIMEOUT;
    this.origin = origin;
    this.dropped = dropped;
    this.partial = undefined;
    this.name = 'McmuxError';
  }
}

export class ConfigError extends McmuxError {
  constructor(message: string) {
    super(ErrorCodes.CONFIG, message);
    this.name = 'ConfigError';
  }
}

/**
 * A store that cannot be opened now for a reason that is not the config's: a lock another process
 * holds (SQLITE_BUSY: a backup, a VACUUM, a second mcmux creating the schema), a full or read-only
 * disk, an I/O error. At start it exits with status 1, which systemd restarts (RestartPreventExitStatus=2
 * is for a config that a restart cannot mend), not 2.
 */
export class StoreUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreUnavailableError';
  }
}

export function upstreamError(code: ErrorCode, message: string): McmuxError {
  return new McmuxError(code, message);
}

export function isTimeout(err: unknown): boolean {
  return err instanceof McmuxError && err.code === ErrorCodes.UPSTREAM_TIMEOUT;
}

/** Whether a failed request may still be applied by the server, after later ones (McmuxError.late). */
export function mayLandLate(err: unknown): boolean {
  return err instanceof McmuxError && err.late;
}

/**
 * The request changed nothing on the store: skipped (down, busy, not connected) or refused by it
 * (an error of its own: memcached's out of memory leaves the item of an incr as it was; its
 * refusal of an ms drops the item, which McmuxError.dropped says). Not closed: a request in
 * flight when its upstream closes (shutdown) may have been applied.
 */
export function unapplied(error: unknown): boolean {
  if (!(error instanceof McmuxError) || error.late) return false;
  const c = error.origin; // a pool server's own code under UPSTREAM_PARTIAL
  return c === ErrorCodes.UPSTREAM_DOWN || c === ErrorCodes.UPSTREAM_BUSY || c === ErrorCodes.UPSTREAM_REFUSED || c === ErrorCodes.UPSTREAM_UNREACHABLE;
}
