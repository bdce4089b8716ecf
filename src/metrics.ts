/**
 * Prometheus metrics and /healthz over HTTP (`--metrics 127.0.0.1:9150`). Counters that mcmux
 * already keeps (router counters, connections, upstream states) are read at scrape time; only
 * the per-upstream latency histogram and request outcomes are observed as they happen, through
 * the health wrapper's observer hook.
 */

import { type Server, createServer } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { App } from './app';
import { type HealthState, type HealthyUpstream, membersOf } from './router/health';

const STATES: readonly HealthState[] = ['healthy', 'suspect', 'down', 'probing'];
const OUTCOMES = ['ok', 'error', 'timeout', 'skipped'] as const;

/**
 * A client of the metrics listener has this long to send its request headers, and the whole
 * request: a scraper or a health check sends a few hundred bytes at once. Node's defaults (60 s
 * and 300 s, checked every 30 s) let idle sockets pile up to `metrics-max-connections`.
 */
const HEADERS_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10_000;
const CHECK_INTERVAL_MS = 1000;

export class Metrics {
  readonly registry = new Registry();
  private readonly upstreamRequests: Counter<'upstream' | 'outcome'>;
  private readonly upstreamLatency: Histogram<'upstream'>;
  private server: Server | undefined;
  /** The names of the upstreams (and pool servers) observed since the last attach(). */
  private attached = new Set<string>();

  /** Told of an error of the metrics socket once it listens (the app logs it). */
  onError: (error: Error) => void = () => {};

  constructor(private readonly app: App) {
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'mcmux_process_' });
    this.upstreamRequests = new Counter({
      name: 'mcmux_upstream_requests_total',
      help: 'Requests sent to each upstream, by outcome (ok, error, timeout, skipped while down)',
      labelNames: ['upstream', 'outcome'],
      registers: [r],
    });
    this.upstreamLatency = new Histogram({
      name: 'mcmux_upstream_request_seconds',
      help: 'Latency of upstream requests',
      labelNames: ['upstream'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [r],
    });
    const router = (): App['router'] => this.app.router;
    new Counter({
      name: 'mcmux_requests_total',
      help: 'Client commands by command and result (a counter, read at scrape time)',
      labelNames: ['command', 'result'],
      registers: [r],
      collect() {
        this.reset();
        for (const [command, byResult] of router().results) {
          for (const [result, n] of byResult) this.inc({ command, result }, n);
        }
      },
    });
    /** A value mcmux counts itself, exposed as a counter (or a gauge when it can go down). */
    const counter = (name: string, help: string, read: () => number): void => {
      if (name.endsWith('_total')) {
        new Counter({ name, help, registers: [r], collect() { this.reset(); this.inc(read()); } });
      } else {
        new Gauge({ name, help, registers: [r], collect() { this.set(read()); } });
      }
    };
    counter('mcmux_connections', 'Client connections open now', () => this.app.listener.currConnections());
    counter('mcmux_connections_total', 'Client connections accepted', () => this.app.listener.totalConnections());
    counter('mcmux_connections_rejected_total', 'Client connections refused over max-connections', () => this.app.listener.rejectedConnections());
    counter('mcmux_get_hits_total', 'Keys found by reads', () => router().counters.getHits);
    counter('mcmux_get_misses_total', 'Keys not found by reads', () => router().counters.getMisses);
    counter('mcmux_read_repairs_total', 'Values copied back into higher upstreams that missed them', () => router().counters.readRepairs);
    counter('mcmux_read_repair_failures_total', 'Read repairs that failed', () => router().counters.readRepairFailures);
    counter('mcmux_replication_failures_total', 'Writes that failed on some upstream', () => router().counters.replicationFailures);
    counter('mcmux_repaired_keys_total', 'Dirty keys copied into an upstream that was back', () => this.app.repairer.repaired);
    counter('mcmux_repair_failures_total', 'Key repairs that failed (retried later)', () => this.app.repairer.repairFailures);
    counter('mcmux_journal_write_errors_total', 'Writes to journal.log that failed (the entries stay in memory)', () => this.app.journal.writeErrors);
    const ups = (): readonly HealthyUpstream[] => this.app.upstreams;
    const journal = (): App['journal'] => this.app.journal;
    new Gauge({
      name: 'mcmux_journal_keys',
      help: 'Keys each upstream missed a write of (not read from it until repaired)',
      labelNames: ['upstream'],
      registers: [r],
      collect() {
        this.reset();
        for (const u of ups()) this.set({ upstream: u.name }, journal().size(u));
      },
    });
    new Gauge({
      name: 'mcmux_journal_overflowed',
      help: '1 when the upstream journal overflowed: no reads from it until it is known clean',
      labelNames: ['upstream'],
      registers: [r],
      collect() {
        this.reset();
        for (const u of ups()) this.set({ upstream: u.name }, journal().overflowed(u) ? 1 : 0);
      },
    });
    const repairer = (): App['repairer'] => this.app.repairer;
    new Gauge({
      name: 'mcmux_repair_remaining',
      help: 'Keys left to replay in the repair under way, per upstream',
      labelNames: ['upstream'],
      registers: [r],
      collect() {
        this.reset();
        for (const p of repairer().status()) this.set({ upstream: p.upstream }, Math.max(0, p.total - p.done));
      },
    });
    new Gauge({
      name: 'mcmux_upstream_state',
      help: 'Upstream health: 1 for its current state',
      labelNames: ['upstream', 'state'],
      registers: [r],
      collect() {
        this.reset();
        for (const u of ups()) {
          for (const x of [u, ...membersOf(u)]) for (const s of STATES) this.set({ upstream: x.name, state: s }, x.state === s ? 1 : 0);
        }
      },
    });
    new Counter({
      name: 'mcmux_upstream_state_changes_total',
      help: 'Upstream health state changes, by the state entered',
      labelNames: ['upstream', 'state'],
      registers: [r],
      collect() {
        this.reset();
        // The servers of a pool too, as mcmux_upstream_state shows them.
        for (const u of ups()) {
          for (const x of [u, ...membersOf(u)]) for (const s of STATES) this.inc({ upstream: x.name, state: s }, x.transitions[s]);
        }
      },
    });
  }

  /** The most connections the listener holds (`metrics-max-connections`): more are closed as accepted. */
  limit(maxConnections: number): void {
    if (this.server) this.server.maxConnections = maxConnections;
  }

  /** Hooks the observer into every current upstream (call again after a reload). */
  attach(): void {
    const names = new Set<string>();
    for (const u of this.app.upstreams) for (const x of [u, ...membersOf(u)]) names.add(x.name);
    // An upstream a reload removed leaves no series behind (nor adds them back: its requests
    // still in flight are not counted).
    for (const name of this.attached) {
      if (names.has(name)) continue;
      for (const outcome of OUTCOMES) this.upstreamRequests.remove({ upstream: name, outcome });
      this.upstreamLatency.remove({ upstream: name });
    }
    this.attached = names;
    const observe: HealthyUpstream['observer'] = (up, seconds, outcome) => {
      if (!this.attached.has(up.name)) return;
      this.upstreamRequests.inc({ upstream: up.name, outcome });
      if (outcome !== 'skipped') this.upstreamLatency.observe({ upstream: up.name }, seconds);
    };
    for (const u of this.app.upstreams) {
      u.observer = observe;
      // The servers of a pool show under their own names.
      for (const m of membersOf(u)) m.observer = observe;
    }
  }

  listen(host: string, port: number, maxConnections: number): Promise<{ host: string; port: number }> {
    const server = createServer({ headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: CHECK_INTERVAL_MS }, (req, res) => {
      // A query string (a probe's, a scrape config's params) does not change what is asked for.
      const path = (req.url ?? '').split('?', 1)[0];
      if (path === '/metrics') {
        this.attach();
        this.registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': this.registry.contentType });
            res.end(text);
          },
          (error: unknown) => {
            res.writeHead(500);
            res.end(String(error));
          },
        );
        return;
      }
      if (req.url?.startsWith('/admin/')) {
        // Trusting an upstream clears its journal: never from another host, whatever the bind.
        if (!isLoopback(req.socket.remoteAddress)) {
          res.writeHead(403, { 'content-type': 'text/plain' });
          res.end('admin endpoints answer loopback clients only\n');
          return;
        }
        // Nor from a web page open in a browser on this host: a cross-site form POST needs no
        // preflight, and a name rebound to 127.0.0.1 makes it same-site. The first carries an
        // Origin, the second a Host that is not a loopback address; mcmux repair sends neither.
        if (req.headers.origin !== undefined || !isLoopbackHost(req.headers.host)) {
          res.writeHead(403, { 'content-type': 'text/plain' });
          res.end('admin endpoints refuse browser requests (an Origin header, or a Host that is not a loopback address)\n');
          return;
        }
        this.admin(req.method ?? 'GET', new URL(req.url, 'http://localhost'), res);
        return;
      }
      if (path === '/healthz') {
        const ok = this.app.listening && this.app.upstreams.some(serving);
        res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
        res.end(ok ? 'ok\n' : this.app.listening ? 'no usable upstream\n' : 'not listening (shutting down)\n');
        return;
      }
      res.writeHead(404);
      res.end();
    });
    this.server = server;
    this.limit(maxConnections);
    this.attach();
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        // Once listening, an accept error is not fatal (Node would throw it with no listener).
        server.off('error', reject);
        server.on('error', (error) => this.onError(error));
        const a = server.address();
        resolve(a && typeof a === 'object' ? { host: a.address, port: a.port } : { host, port });
      });
    });
  }

  /**
   * Operator actions (loopback only, like the metrics): `GET /admin/journal` shows the repair
   * journal per upstream; `POST /admin/trust?upstream=N` declares upstream N clean (after the
   * operator flushed it), clearing its journal and an overflow that only expiry could end.
   */
  private admin(method: string, url: URL, res: import('node:http').ServerResponse): void {
    const json = (code: number, body: unknown): void => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body) + '\n');
    };
    const describe = (): unknown =>
      this.app.upstreams.map((u, i) => ({
        index: i,
        upstream: u.name,
        state: u.state,
        dirtyKeys: this.app.journal.size(u),
        overflowed: this.app.journal.overflowed(u) !== undefined,
        fenced: u.fenced,
      }));
    if (url.pathname === '/admin/journal' && method === 'GET') return json(200, describe());
    if (url.pathname === '/admin/trust' && method === 'POST') {
      const which = url.searchParams.get('upstream') ?? '';
      const u = this.app.upstreams.find((x, i) => String(i) === which || x.name === which);
      if (!u) return json(404, { error: `no upstream "${which}": give its index or its name (GET /admin/journal lists them)` });
      this.app.journal.trust(u, 'operator');
      return json(200, describe());
    }
    json(404, { error: 'GET /admin/journal, POST /admin/trust?upstream=N' });
  }

  close(): Promise<void> {
    const s = this.server;
    if (!s) return Promise.resolve();
    const closed = new Promise<void>((resolve) => s.close(() => resolve()));
    // close() waits for requests in progress: one a client never finishes sending would hold
    // the shutdown until Node's headers timeout (60 s), past systemd's TimeoutStopSec.
    s.closeAllConnections();
    return closed;
  }
}

/**
 * Whether `u` takes requests: usable, and for a memcached pool, one of its servers too (a pool
 * whose servers are all down stays healthy or suspect until requests fail on it as a whole).
 */
function serving(u: HealthyUpstream): boolean {
  const members = membersOf(u);
  return u.usable && (members.length === 0 || members.some((m) => m.usable));
}

/** A Host header naming this host by a loopback address or `localhost` (any port); none at all (HTTP/1.0) too. */
function isLoopbackHost(host: string | undefined): boolean {
  if (host === undefined) return true;
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d*$/, '');
  // Numeric only: `127.0.0.1.evil.example` is a name its owner can point at 127.0.0.1.
  return name.toLowerCase() === 'localhost' || name === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}

function isLoopback(address: string | undefined): boolean {
  return address !== undefined && (address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.'));
}
