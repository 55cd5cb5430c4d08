import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import type { AckOptions } from '../core/ack-tracker.js';
import { type DedupeStore, MemoryDedupeStore } from '../core/dedupe.js';
import { Dispatcher } from '../core/dispatcher.js';
import {
  combineInstrumentation,
  guardInstrumentation,
  type Instrumentation,
  type RequestInfo,
} from '../core/instrumentation.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { type Handler, HandlerRegistry, type SkillInfo } from '../core/registry.js';
import type { ReplayOptions } from '../core/replay.js';
import { systemTimers, type Timers } from '../core/timers.js';
import type { ServerTracing } from '../core/tracing.js';
import { otelTracing } from '../otel/index.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../protocol/envelope.js';
import { ASAPError } from '../protocol/errors.js';
import type { Health, Manifest } from '../protocol/manifest.js';
import type { PayloadMap, PayloadTypeName } from '../protocol/payloads.js';
import { type Authenticator, authCheck, type TokenVerifier } from './auth.js';
import type { Connection, ConnectionInfo } from './connection.js';
import { Drain } from './drain.js';
import {
  asError,
  isServerEvent,
  ServerEventEmitter,
  type ServerEventName,
  type ServerEvents,
} from './events.js';
import { HttpBinding } from './http-binding.js';
import {
  buildManifest,
  type EndpointBase,
  firstForwarded,
  forwardedProto,
  hostPort,
  type ManifestInit,
  parsePublicUrl,
  validHost,
} from './manifest.js';
import { type PrometheusMetrics, prometheusMetrics } from './metrics.js';
import { OriginPolicy } from './origin.js';
import { LocalPushAdapter, type PushAdapter } from './push-adapter.js';
import { requestLog } from './request-log.js';
import { SessionBinding } from './sessions.js';
import { StaticFiles } from './static.js';
import { memoryStore, type ServerStore } from './store.js';
import { WebSocketBinding } from './ws-binding.js';

export interface ASAPServerOptions {
  /** The agent: its URN and what the manifest says about it. */
  manifest: ManifestInit;
  /** Shared handler registry; the server makes its own when omitted. */
  registry?: HandlerRegistry;
  /** A static bearer token that HTTP and WebSocket require. */
  token?: string;
  /** With `token`: the agent URNs its holders may speak for (default: any). */
  tokenAgents?: readonly string[];
  /** A pluggable check instead of `token`: token → principal, or null to refuse. */
  verifyToken?: TokenVerifier;
  /** The most general check (token and request → principal with URNs and expiry); wins over the two above. */
  authenticate?: Authenticator;
  /**
   * What the server remembers beyond one connection (dedupe outcomes, nonces, sessions, push
   * routing, counters): in this process by default, or shared (Redis) so that several
   * processes act as one agent. `dedupe`, `replay.nonces` and `pushAdapter` override its parts.
   */
  store?: ServerStore;
  /**
   * How long a session outlives its connection (asap-wire.md §12; default 2 min): pushes to it
   * are kept that long for a resume. Give the same window to a store you build yourself.
   */
  sessionWindowMs?: number;
  /** Where pushes to an agent URN go (default: the store's, i.e. this process's connections). */
  pushAdapter?: PushAdapter;
  /** Hooks that metrics and tracing subscribe to. */
  instrumentation?: Instrumentation;
  /**
   * Spans of requests, continuing the caller's trace (asap-wire.md §13). Default: OpenTelemetry
   * (`otelTracing()` of `asap-ts/otel`), which records only once the application registers a
   * TracerProvider; `false` turns it off.
   */
  tracing?: ServerTracing | false;
  /**
   * Prometheus metrics (default off): recorded through the Instrumentation hooks (alongside
   * `instrumentation`, which still gets every hook) and served at `GET /asap/metrics`. An object
   * names the prom-client Registry to record into (default: one of the server's own).
   */
  metrics?: boolean | { registry?: Registry };
  /**
   * One `info` log line per finished request: payload type, skill, sender, trace id, outcome,
   * error code, milliseconds, transport (default true). Only while the logger logs `info`.
   */
  requestLog?: boolean;
  /**
   * The base URL clients reach this server by (behind a proxy), e.g. `https://agents.example/billing`:
   * the manifest's endpoints are built from it (`https://` gives a `wss://` WebSocket endpoint; its
   * path prefixes every endpoint), and its origin counts as the server's own for browsers.
   */
  publicUrl?: string;
  /**
   * Take the manifest's scheme and host from `X-Forwarded-Proto` and `X-Forwarded-Host` (the first
   * entry of each; malformed values are ignored), else from the `Host` header, as the proxy in
   * front sets them (default false: the address the connection came in on; never a `Host` header).
   * Set it only when every request comes through a proxy you run. `publicUrl` wins over it.
   */
  trustProxy?: boolean;
  /** `GET /healthz` (liveness) and `GET /readyz` (readiness) (default true). */
  probes?: boolean;
  /** Clock and timers of heartbeats, deadlines, acks and drain (default: the system's). */
  timers?: Timers;
  logger?: Logger;
  /** Frame and body size limit in bytes (default 10 MiB). */
  maxMessageBytes?: number;
  /** WebSocket messages per second per connection, also the burst; 0 turns it off (default 10). */
  rateLimit?: number;
  /** Server heartbeat interval (default 30 s); a connection silent for 3 intervals is closed. */
  heartbeatIntervalMs?: number;
  /** How long in-flight work may finish on shutdown (default 10 s). */
  drainTimeoutMs?: number;
  /** HTTP route of the JSON-RPC endpoint (default `/asap`). */
  rpcPath?: string;
  /** WebSocket route (default `/asap/ws`); `false` turns WebSocket off. */
  websocketPath?: string | false;
  /** Requests in flight per connection before the server stops reading from it (default 64). */
  maxInFlightPerConnection?: number;
  /**
   * Send-buffer size at which a connection is congested (default 1 MiB): the server stops
   * reading from it, and streams and pushes wait for it to drain (asap-wire.md §10).
   */
  sendHighWaterMark?: number;
  /** Send-buffer size a peer may not hold for longer than the grace period (default 4 × the mark). */
  sendHardCap?: number;
  /**
   * How long a congested connection may read nothing, or stay over the hard cap, before it is
   * closed with 1008 `Slow consumer` (default 30 s: long enough for a slow link or a paused
   * browser tab to catch up, short enough that a stalled peer's buffer is soon freed).
   */
  slowConsumerGraceMs?: number;
  /** Let ordinary handler error messages reach callers (default true); see {@link core!DispatcherOptions}. */
  exposeHandlerErrors?: boolean;
  /** Longest run of stream chunks or pushes before other peers get a turn (default 5 ms). */
  yieldEveryMs?: number;
  /** Cap on open WebSocket connections; past it new ones are closed with 1013. */
  maxConnections?: number;
  /** Push as `asap.send` notifications (default) or as result frames with id null (reference Python clients). */
  pushForm?: 'notification' | 'result';
  replay?: ReplayOptions | false;
  dedupe?: DedupeStore | false;
  /** Handler deadline when a TaskRequest names none (default 60 s). */
  defaultTimeoutMs?: number;
  deadlineResolutionMs?: number;
  /** Send a `processed` ack after the handler finishes (default false). */
  processedAcks?: boolean;
  /** Ack wait and retransmission of pushes that require an ack (§6; defaults 30 s, 3 retries, checked every 5 s). */
  ack?: AckOptions & { checkIntervalMs?: number };
  /** Serve the files of this directory on GET and HEAD requests that are not ASAP routes (`/` serves index.html). */
  staticDir?: string;
  /** With `staticDir`: extra URL paths mapped to single files, e.g. `{ '/asap-client.js': 'dist/browser/asap-client.js' }`. */
  staticFiles?: Record<string, string>;
  /**
   * Browser origins allowed besides the server's own (asap-wire.md §10), e.g.
   * `['https://app.example']`; `'*'` allows any. Default: none, so only pages
   * served from this server's own origin may call it. Requests without an
   * `Origin` header (non-browser clients) are never affected.
   */
  allowOrigins?: readonly string[];
  /**
   * How long a client may take to send a request's headers (default 10 s,
   * asap-wire.md §10): the slowloris bound. Also the deadline of a WebSocket
   * upgrade's authentication, counted once the upgrade arrived. Applied by
   * `listen()`; with `attach()` the caller's server keeps its own setting.
   */
  headersTimeoutMs?: number;
  /**
   * How long a client may take to send a whole request, body included
   * (default 30 s, ≥ `headersTimeoutMs`). Applied by `listen()`; with `attach()`
   * the caller's server keeps its own setting.
   */
  requestTimeoutMs?: number;
}

export interface ListenOptions {
  host?: string;
  port?: number;
}

export interface BoundAddress {
  host: string;
  port: number;
  /** Base URL, e.g. `http://127.0.0.1:8080`. */
  url: string;
}

// biome-ignore lint/suspicious/noExplicitAny: EventEmitter listeners are untyped
type Listener = (...args: any[]) => void;

const MANIFEST_PATH = '/.well-known/asap/manifest.json';
const HEALTH_PATH = '/.well-known/asap/health';
const LIVENESS_PATH = '/healthz';
const READINESS_PATH = '/readyz';
/** The request headers a manifest built with `trustProxy` depends on. */
const FORWARDED_VARY = 'Host, X-Forwarded-Host, X-Forwarded-Proto';
/** The reference's metrics route. */
const METRICS_PATH = '/asap/metrics';

/**
 * One ASAP agent: the HTTP binding and the WebSocket binding on one HTTP
 * server, both in front of one dispatcher, with one drain and one push
 * adapter between them.
 */
export class ASAPServer {
  readonly registry: HandlerRegistry;
  /** The Prometheus metrics when the `metrics` option is on (their registry, text, content type). */
  readonly prometheus: PrometheusMetrics | undefined;
  readonly dispatcher: Dispatcher;
  readonly logger: Logger;
  /** In-flight work and the draining flag, shared by both bindings. */
  readonly drain: Drain;
  private readonly opts: ASAPServerOptions;
  private readonly timers: Timers;
  private readonly rpcPath: string;
  private readonly websocketPath: string | undefined;
  private readonly headersTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly authenticates: boolean;
  private readonly pushes: PushAdapter;
  private readonly sessions: SessionBinding;
  /** @internal */
  readonly store: ServerStore;
  private readonly http: HttpBinding;
  private readonly files: StaticFiles | undefined;
  private readonly ws: WebSocketBinding | undefined;
  private readonly started: number;
  private readonly events: ServerEventEmitter;
  /** From `publicUrl`: what the manifest advertises whatever the request. */
  private readonly publicBase: EndpointBase | undefined;
  private readonly trustProxy: boolean;
  private server: Server | undefined;
  private ownsServer = false;
  private address: BoundAddress | undefined;
  private unhealthy = false;
  private closing: Promise<void> | undefined;
  private readonly listeners: {
    request: (req: IncomingMessage, res: ServerResponse) => void;
    upgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  };
  /** Listeners the attached server had before us: requests and upgrades that are not ours go to them. */
  private previous: { request: Listener[]; upgrade: Listener[] } = { request: [], upgrade: [] };

  constructor(opts: ASAPServerOptions) {
    this.opts = opts;
    this.registry = opts.registry ?? new HandlerRegistry();
    this.logger = opts.logger ?? silentLogger;
    this.timers = opts.timers ?? systemTimers;
    this.started = this.timers.now();
    this.rpcPath = opts.rpcPath ?? '/asap';
    this.websocketPath = opts.websocketPath === false ? undefined : (opts.websocketPath ?? '/asap/ws');
    this.headersTimeoutMs = opts.headersTimeoutMs ?? 10_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    if (!(this.headersTimeoutMs > 0 && this.headersTimeoutMs <= this.requestTimeoutMs))
      throw new RangeError('headersTimeoutMs must be > 0 and <= requestTimeoutMs');
    const maxMessageBytes = opts.maxMessageBytes ?? 10 * 1024 * 1024;
    const authenticate = authCheck(opts, this.logger);
    this.events = new ServerEventEmitter(this.logger);
    this.publicBase = opts.publicUrl === undefined ? undefined : parsePublicUrl(opts.publicUrl);
    this.trustProxy = opts.trustProxy === true;
    const metrics =
      opts.metrics === undefined || opts.metrics === false
        ? undefined
        : prometheusMetrics(opts.metrics === true ? {} : { registry: opts.metrics.registry });
    this.prometheus = metrics;
    const instrumentation = guardInstrumentation(
      combineInstrumentation(
        opts.instrumentation,
        metrics?.instrumentation,
        opts.requestLog === false ? undefined : requestLog(this.logger),
        { handlerError: (info, err) => this.handlerFailed(info, err) },
      ),
      this.logger,
    );
    this.authenticates = authenticate !== undefined;
    const origins = new OriginPolicy({
      allow:
        this.publicBase === undefined
          ? opts.allowOrigins
          : [...(opts.allowOrigins ?? []), `${this.publicBase.scheme}://${this.publicBase.host}`],
      boundAddress: () => this.server?.address(),
    });
    this.drain = new Drain(opts.drainTimeoutMs ?? 10_000, this.timers);
    const sessionWindowMs = opts.sessionWindowMs ?? 120_000;
    this.store =
      opts.store ??
      memoryStore({ clock: this.timers, logger: this.logger, disconnectWindowMs: sessionWindowMs });
    this.store.instrument?.(instrumentation);
    metrics?.watch({
      draining: () => this.drain.draining,
      dedupeStats: () => {
        const dedupe = opts.dedupe ?? this.store.dedupe;
        return dedupe instanceof MemoryDedupeStore ? dedupe.snapshot() : undefined;
      },
    });
    this.pushes = opts.pushAdapter ?? this.store.pushAdapter(new LocalPushAdapter());
    this.sessions = new SessionBinding(
      this.store.sessions,
      this.pushes,
      this.timers,
      this.logger,
      sessionWindowMs,
    );
    this.dispatcher = new Dispatcher({
      registry: this.registry,
      logger: this.logger,
      manifest: () => this.manifest(),
      replay: opts.replay === false ? false : { nonces: this.store.nonces, ...opts.replay },
      dedupe: opts.dedupe ?? this.store.dedupe,
      defaultTimeoutMs: opts.defaultTimeoutMs,
      deadlineResolutionMs: opts.deadlineResolutionMs,
      processedAcks: opts.processedAcks,
      exposeHandlerErrors: opts.exposeHandlerErrors,
      yieldEveryMs: opts.yieldEveryMs,
      instrumentation,
      tracing: opts.tracing === false ? undefined : (opts.tracing ?? otelTracing()),
      timers: this.timers,
      pushTo: (urn, envelope) => this.push(urn, envelope),
    });
    this.http = new HttpBinding({
      dispatcher: this.dispatcher,
      logger: this.logger,
      maxMessageBytes,
      drain: this.drain,
      rpcPath: this.rpcPath,
      manifestPath: MANIFEST_PATH,
      healthPath: HEALTH_PATH,
      ...(metrics === undefined
        ? {}
        : {
            metricsPath: METRICS_PATH,
            metrics: async () => ({ contentType: metrics.contentType, body: await metrics.metrics() }),
          }),
      authenticate,
      origins,
      instrumentation,
      manifestFor: (req) => this.manifestFor(req),
      manifestVary: this.publicBase === undefined && this.trustProxy ? FORWARDED_VARY : undefined,
      health: () => this.health(),
      ...(opts.probes === false ? {} : { livenessPath: LIVENESS_PATH, readinessPath: READINESS_PATH }),
      readiness: () => this.readiness(),
      failed: (err, errorId) =>
        this.events.fire('error', asError(err), { source: 'engine', transport: 'http', errorId }),
    });
    this.files =
      opts.staticDir === undefined
        ? undefined
        : new StaticFiles({
            root: opts.staticDir,
            files: opts.staticFiles,
            admit: (req, res) => this.http.admit(req, res, false),
          });
    if (this.websocketPath !== undefined) {
      const highWaterMark = opts.sendHighWaterMark ?? 1024 * 1024;
      this.ws = new WebSocketBinding({
        path: this.websocketPath,
        maxMessageBytes,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 30_000,
        authTimeoutMs: this.headersTimeoutMs,
        maxConnections: opts.maxConnections,
        origins,
        authenticate,
        pushes: this.pushes,
        logger: this.logger,
        timers: this.timers,
        events: {
          opened: (c) =>
            this.events.fire('connection', {
              id: c.id,
              transport: 'websocket',
              remoteAddress: c.remoteAddress,
              principal: c.principal,
              connection: c,
            }),
          closed: (c, code, reason) =>
            this.events.fire('disconnect', {
              id: c.id,
              transport: 'websocket',
              remoteAddress: c.remoteAddress,
              agentUrn: c.agentUrn,
              code,
              reason,
            }),
          failed: (c, err, source, errorId) =>
            this.events.fire('error', asError(err), {
              source,
              transport: 'websocket',
              connectionId: c.id,
              remoteAddress: c.remoteAddress,
              ...(errorId === undefined ? {} : { errorId }),
            }),
        },
        connection: {
          logger: this.logger,
          timers: this.timers,
          limits: {
            maxInFlight: opts.maxInFlightPerConnection ?? 64,
            highWaterMark,
            sendHardCap: opts.sendHardCap ?? 4 * highWaterMark,
            slowConsumerGraceMs: opts.slowConsumerGraceMs ?? 30_000,
            rateLimit: opts.rateLimit ?? 10,
          },
          drain: this.drain,
          pushForm: opts.pushForm ?? 'notification',
          ack: opts.ack,
          instrumentation,
          sessions: this.sessions,
          dispatch: (frame, session) => this.dispatcher.handle(frame, session),
        },
      });
    }
    this.listeners = {
      request: (req, res) => {
        if (this.http.handle(req, res)) return;
        const notOurs = () => {
          if (this.previous.request.length > 0) {
            for (const l of this.previous.request) l.call(this.server, req, res);
            return;
          }
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'Not found' }));
        };
        if (this.files?.handle(req, res, notOurs)) return;
        notOurs();
      },
      upgrade: (req, socket, head) => {
        if (this.ws?.upgrade(req, socket, head)) return;
        if (this.previous.upgrade.length > 0) {
          for (const l of this.previous.upgrade) l.call(this.server, req, socket, head);
          return;
        }
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      },
    };
  }

  /**
   * Listens to a server event (`connection`, `disconnect`, `error`; see {@link ServerEvents}), or
   * registers the handler for a payload type (any other name; a payload type named like an event
   * is registered with `server.registry.on`).
   */
  on<E extends ServerEventName>(event: E, listener: ServerEvents[E]): this;
  on<T extends PayloadTypeName>(payloadType: T, handler: Handler<PayloadMap[T]>): this;
  on(payloadType: string, handler: Handler): this;
  on(name: string, fn: Handler<never> | ServerEvents[ServerEventName]): this {
    if (isServerEvent(name)) this.events.on(name, fn as ServerEvents[typeof name]);
    else this.registry.on(name, fn as Handler);
    return this;
  }

  /** Listens to the next occurrence of a server event only. */
  once<E extends ServerEventName>(event: E, listener: ServerEvents[E]): this {
    this.events.once(event, listener);
    return this;
  }

  /** Removes a listener added with `on`. */
  off<E extends ServerEventName>(event: E, listener: ServerEvents[E]): this {
    this.events.off(event, listener);
    return this;
  }

  /** Listeners of a server event. */
  listenerCount(event: ServerEventName): number {
    return this.events.listenerCount(event);
  }

  /** A handler threw: an `error` event, unless it threw an ASAPError on purpose as its answer. */
  private handlerFailed(info: RequestInfo, err: unknown): void {
    if (this.events.listenerCount('error') === 0 || (err instanceof ASAPError && !err.local)) return;
    this.events.fire('error', asError(err), {
      source: 'handler',
      transport: info.transport as 'http' | 'websocket',
      envelopeId: info.envelopeId,
      payloadType: info.payloadType,
      skill: info.skill,
      sender: info.sender,
      traceId: info.traceId,
    });
  }

  /** Registers a TaskRequest skill. */
  skill(id: string, handler: Handler<PayloadMap['TaskRequest']>, info?: SkillInfo): this {
    this.registry.skill(id, handler, info);
    return this;
  }

  get draining(): boolean {
    return this.drain.draining;
  }

  /** Open WebSocket connections. */
  get connections(): ConnectionInfo[] {
    return [...(this.ws?.live ?? [])].map((c) => c.info);
  }

  /** The live connection objects of an agent on this node (for `push` and reverse `request`). */
  connectionsFor(agentUrn: string): Connection[] {
    return this.pushes.targets(agentUrn) as Connection[];
  }

  /** The bound address after `listen`. */
  get boundAddress(): BoundAddress | undefined {
    return this.address;
  }

  /** Starts an HTTP server of its own and resolves with the bound address. */
  async listen(opts: ListenOptions = {}): Promise<BoundAddress> {
    // Node checks its header and request deadlines only every connectionsCheckingInterval (30 s by
    // default): check often enough that a slowloris socket is cut close to the deadline.
    const server = createServer({
      keepAliveTimeout: 65_000,
      headersTimeout: Math.ceil(this.headersTimeoutMs),
      requestTimeout: Math.ceil(this.requestTimeoutMs),
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(this.headersTimeoutMs / 2))),
    });
    this.ownsServer = true;
    this.attach(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    this.address = { host: addr.address, port: addr.port, url: `http://${host}:${addr.port}` };
    this.logger.info({ url: this.address.url }, 'listening');
    return this.address;
  }

  /**
   * Serves ASAP on an HTTP server the caller owns. Its existing listeners keep
   * every request and upgrade that is not ASAP's (the way engine.io attaches).
   * The caller also owns that server's socket deadlines: set `headersTimeout`,
   * `requestTimeout`, `keepAliveTimeout` and `connectionsCheckingInterval` on it
   * (asap-wire.md §10 asks for 10 s / 30 s); `headersTimeoutMs` and
   * `requestTimeoutMs` here only apply to `listen()`, except that the upgrade
   * authentication deadline is `headersTimeoutMs` either way.
   */
  attach(server: Server): this {
    this.server = server;
    this.previous = {
      request: server.listeners('request') as Listener[],
      upgrade: server.listeners('upgrade') as Listener[],
    };
    server.removeAllListeners('request');
    server.on('request', this.listeners.request);
    if (this.ws !== undefined) {
      server.removeAllListeners('upgrade');
      server.on('upgrade', this.listeners.upgrade);
      this.ws.start();
    }
    return this;
  }

  /**
   * The manifest, with endpoints built from `base`, else `publicUrl`, else the bound address
   * (`localhost` before the server listens).
   */
  manifest(base?: EndpointBase): Manifest {
    const b = base ?? this.publicBase ?? { scheme: 'http' as const, host: this.boundHost() ?? 'localhost' };
    const root = `${b.host}${b.prefix ?? ''}`;
    const ws = b.scheme === 'https' ? 'wss' : 'ws';
    return buildManifest(
      this.opts.manifest,
      this.registry.skills(),
      {
        asap: `${b.scheme}://${root}${this.rpcPath}`,
        events: this.websocketPath === undefined ? undefined : `${ws}://${root}${this.websocketPath}`,
      },
      this.authenticates,
    );
  }

  /**
   * The manifest a request to this server gets: from `publicUrl` when set; else, with `trustProxy`,
   * from `X-Forwarded-Proto` / `X-Forwarded-Host` (else `Host`); else from the address and port the
   * request came in on (https on a TLS socket). A `Host` header nobody vouches for is never used.
   */
  manifestFor(req: IncomingMessage): Manifest {
    if (this.publicBase !== undefined) return this.manifest(this.publicBase);
    const socket = req.socket as Socket & { encrypted?: boolean };
    let scheme: 'http' | 'https' = socket.encrypted === true ? 'https' : 'http';
    let host: string | undefined;
    if (this.trustProxy) {
      scheme = forwardedProto(req.headers['x-forwarded-proto']) ?? scheme;
      host = validHost(firstForwarded(req.headers['x-forwarded-host'])) ?? validHost(req.headers.host);
    }
    host ??= hostPort(socket.localAddress, socket.localPort) ?? this.boundHost() ?? 'localhost';
    return this.manifest({ scheme, host });
  }

  /** `host:port` of the address the server listens on (its own, or the attached server's). */
  private boundHost(): string | undefined {
    if (this.address !== undefined) return hostPort(this.address.host, this.address.port);
    const a = this.server?.address();
    return typeof a === 'object' && a !== null ? hostPort(a.address, a.port) : undefined;
  }

  health(): { status: number; body: Health } {
    const healthy = !this.drain.draining && !this.unhealthy && this.store.available;
    return {
      status: healthy ? 200 : 503,
      body: {
        status: healthy ? 'healthy' : 'unhealthy',
        agent_id: this.opts.manifest.id,
        version: this.opts.manifest.version ?? '0.1.0',
        asap_version: '0.1',
        uptime_seconds: Math.round((this.timers.now() - this.started) / 1000),
        load: {
          active_tasks: this.dispatcher.inFlight,
          queue_depth: Math.max(0, this.drain.inFlight - this.dispatcher.inFlight),
        },
      },
    };
  }

  /**
   * Readiness (`GET /readyz`): 200 `{"status":"ready"}`, or 503 `{"status":"not_ready","reasons":[…]}`
   * while the server drains (`draining`), its store is unreachable (`store_unavailable`) or it was
   * marked unhealthy (`unhealthy`).
   */
  readiness(): { status: number; body: { status: 'ready' } | { status: 'not_ready'; reasons: string[] } } {
    const reasons: string[] = [];
    if (this.drain.draining) reasons.push('draining');
    if (!this.store.available) reasons.push('store_unavailable');
    if (this.unhealthy) reasons.push('unhealthy');
    return reasons.length === 0
      ? { status: 200, body: { status: 'ready' } }
      : { status: 503, body: { status: 'not_ready', reasons } };
  }

  /** Marks the agent (un)healthy for load balancers. */
  setHealthy(healthy: boolean): void {
    this.unhealthy = !healthy;
  }

  /**
   * Pushes an envelope to every connection of an agent. Resolves with how many
   * connections took it (wrote it, or acknowledged it when it requires an ack);
   * rejects with the first failure when there were connections and none took it.
   * It always settles: each connection's push settles on its ack, its retries
   * running out, or its close.
   */
  push(
    agentUrn: string,
    init: Envelope<object> | (Omit<EnvelopeInit<object>, 'sender' | 'recipient'> & { sender?: string }),
  ): Promise<number> {
    const envelope =
      'id' in init && 'timestamp' in init
        ? (init as Envelope<object>)
        : createEnvelope({ sender: this.opts.manifest.id, recipient: agentUrn, ...init });
    return this.pushes.push(agentUrn, envelope);
  }

  /**
   * Graceful shutdown (asap-wire.md §9): health turns 503 and new work is
   * refused; in-flight requests finish (up to the drain deadline) and are
   * answered; then every WebSocket gets 1001 and the HTTP server closes.
   * Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.logger.info({ active: this.drain.inFlight }, 'draining');
    await this.drain.start();
    this.dispatcher.close();
    // Answers of requests cut off at the deadline are written in the next turns; let them out before the close frames.
    await new Promise((resolve) => setImmediate(resolve));
    await this.ws?.closeAll();
    this.sessions.close();
    const server = this.server;
    if (server !== undefined) {
      server.off('request', this.listeners.request);
      server.off('upgrade', this.listeners.upgrade);
      for (const l of this.previous.request) server.on('request', l);
      for (const l of this.previous.upgrade) server.on('upgrade', l);
      if (this.ownsServer) {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          setImmediate(() => server.closeAllConnections());
        });
      }
    }
    this.logger.info({}, 'closed');
  }
}
