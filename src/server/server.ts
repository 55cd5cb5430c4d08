import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { type AckOptions, AckTracker } from '../core/ack-tracker.js';
import type { DedupeStore } from '../core/dedupe.js';
import { type Answer, Dispatcher } from '../core/dispatcher.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { type Handler, HandlerRegistry, type SkillInfo } from '../core/registry.js';
import type { ReplayOptions } from '../core/replay.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../protocol/envelope.js';
import { ASAPError, ConnectionError, ErrorCode } from '../protocol/errors.js';
import { ASAP_SUBPROTOCOL, BEARER_PROTOCOL_PREFIX, type Frame } from '../protocol/jsonrpc.js';
import type { Health, Manifest } from '../protocol/manifest.js';
import type { MessageAck, PayloadMap, PayloadTypeName } from '../protocol/payloads.js';
import { bearerFromHeader, bearerFromProtocols, staticToken, type TokenVerifier } from './auth.js';
import { Connection, type ConnectionHost, type ConnectionInfo } from './connection.js';
import { HttpBinding, type HttpBindingHost } from './http-binding.js';
import { buildManifest, type ManifestInit } from './manifest.js';
import { OriginPolicy } from './origin.js';
import { StaticFiles } from './static.js';

export interface ASAPServerOptions {
  /** The agent: its URN and what the manifest says about it. */
  manifest: ManifestInit;
  /** Shared handler registry; the server makes its own when omitted. */
  registry?: HandlerRegistry;
  /** A static bearer token that HTTP and WebSocket require. */
  token?: string;
  /** A pluggable check instead of `token`: token → principal, or null to refuse. */
  verifyToken?: TokenVerifier;
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
  /** Let ordinary handler error messages reach callers (default true); see {@link DispatcherOptions}. */
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

/** A listener defined outside `upgrade()`, so it does not keep the upgrade request alive per connection. */
const ignore = (): void => {};

type AuthResult = { ok: true; principal: unknown } | { ok: false; reason: string };

const SHUTDOWN_REASON = 'Server shutting down';

const pushKey = (connection: Connection, envelopeId: string): string => `${connection.id} ${envelopeId}`;

/**
 * One ASAP agent: the HTTP binding and the WebSocket binding on one HTTP
 * server, both in front of one dispatcher.
 */
export class ASAPServer implements HttpBindingHost, ConnectionHost {
  readonly registry: HandlerRegistry;
  readonly dispatcher: Dispatcher;
  readonly logger: Logger;
  readonly maxMessageBytes: number;
  readonly rpcPath: string;
  readonly manifestPath = '/.well-known/asap/manifest.json';
  readonly healthPath = '/.well-known/asap/health';
  readonly websocketPath: string | undefined;
  readonly maxInFlight: number;
  readonly highWaterMark: number;
  readonly sendHardCap: number;
  readonly slowConsumerGraceMs: number;
  readonly pushForm: 'notification' | 'result';
  readonly rateLimit: number;
  readonly drainRetryAfterMs: number;
  readonly origins: OriginPolicy;
  private readonly headersTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly opts: ASAPServerOptions;
  private readonly verifier: TokenVerifier | undefined;
  private readonly http: HttpBinding;
  private readonly files: StaticFiles | undefined;
  private readonly wss: WebSocketServer | undefined;
  private readonly live = new Set<Connection>();
  private readonly byAgent = new Map<string, Set<Connection>>();
  private readonly started = Date.now();
  private server: Server | undefined;
  private ownsServer = false;
  private address: BoundAddress | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private active = 0;
  private activeWaiters: (() => void)[] = [];
  private _draining = false;
  private unhealthy = false;
  private closing: Promise<void> | undefined;
  private readonly pushAcks: AckTracker;
  /** Pushes awaiting their ack, keyed by connection and envelope id (one push may go to several connections). */
  private readonly pushWaiters = new Map<
    string,
    { resolve: () => void; reject: (e: Error) => void; connection: Connection }
  >();
  private pushAckTimer: ReturnType<typeof setInterval> | undefined;
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
    this.maxMessageBytes = opts.maxMessageBytes ?? 10 * 1024 * 1024;
    this.rpcPath = opts.rpcPath ?? '/asap';
    this.websocketPath = opts.websocketPath === false ? undefined : (opts.websocketPath ?? '/asap/ws');
    this.maxInFlight = opts.maxInFlightPerConnection ?? 64;
    this.highWaterMark = opts.sendHighWaterMark ?? 1024 * 1024;
    this.sendHardCap = opts.sendHardCap ?? 4 * this.highWaterMark;
    this.slowConsumerGraceMs = opts.slowConsumerGraceMs ?? 30_000;
    this.pushForm = opts.pushForm ?? 'notification';
    this.rateLimit = opts.rateLimit ?? 10;
    this.drainRetryAfterMs = opts.drainTimeoutMs ?? 10_000;
    this.verifier = opts.verifyToken ?? (opts.token !== undefined ? staticToken(opts.token) : undefined);
    this.origins = new OriginPolicy({ allow: opts.allowOrigins, boundAddress: () => this.server?.address() });
    this.headersTimeoutMs = opts.headersTimeoutMs ?? 10_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    if (!(this.headersTimeoutMs > 0 && this.headersTimeoutMs <= this.requestTimeoutMs))
      throw new RangeError('headersTimeoutMs must be > 0 and <= requestTimeoutMs');
    this.dispatcher = new Dispatcher({
      registry: this.registry,
      logger: this.logger,
      manifest: () => this.manifest(),
      replay: opts.replay,
      dedupe: opts.dedupe,
      defaultTimeoutMs: opts.defaultTimeoutMs,
      deadlineResolutionMs: opts.deadlineResolutionMs,
      processedAcks: opts.processedAcks,
      exposeHandlerErrors: opts.exposeHandlerErrors,
      yieldEveryMs: opts.yieldEveryMs,
      pushTo: (urn, envelope) => this.push(urn, envelope),
    });
    this.http = new HttpBinding(this);
    this.files =
      opts.staticDir === undefined
        ? undefined
        : new StaticFiles({
            root: opts.staticDir,
            files: opts.staticFiles,
            admit: (req, res) => this.http.admit(req, res, false),
          });
    this.pushAcks = new AckTracker(opts.ack);
    if (this.websocketPath !== undefined) {
      this.wss = new WebSocketServer({
        noServer: true,
        maxPayload: this.maxMessageBytes,
        perMessageDeflate: false,
        clientTracking: false,
        handleProtocols: (protocols) => {
          if (protocols.has(ASAP_SUBPROTOCOL)) return ASAP_SUBPROTOCOL;
          for (const p of protocols) if (!p.startsWith(BEARER_PROTOCOL_PREFIX)) return p;
          return false;
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
      upgrade: (req, socket, head) => this.upgrade(req, socket, head),
    };
  }

  /** Registers the handler for a payload type. */
  on<T extends PayloadTypeName>(payloadType: T, handler: Handler<PayloadMap[T]>): this;
  on(payloadType: string, handler: Handler): this;
  on(payloadType: string, handler: Handler<never>): this {
    this.registry.on(payloadType, handler as Handler);
    return this;
  }

  /** Registers a TaskRequest skill. */
  skill(id: string, handler: Handler<PayloadMap['TaskRequest']>, info?: SkillInfo): this {
    this.registry.skill(id, handler, info);
    return this;
  }

  get draining(): boolean {
    return this._draining;
  }

  /** Open WebSocket connections. */
  get connections(): ConnectionInfo[] {
    return [...this.live].map((c) => c.info);
  }

  /** The live connection objects (for `push` and reverse `request`). */
  connectionsFor(agentUrn: string): Connection[] {
    return [...(this.byAgent.get(agentUrn) ?? [])];
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
    if (this.wss !== undefined) {
      server.removeAllListeners('upgrade');
      server.on('upgrade', this.listeners.upgrade);
    }
    if (this.heartbeat === undefined && this.wss !== undefined) {
      const interval = this.opts.heartbeatIntervalMs ?? 30_000;
      this.heartbeat = setInterval(() => this.sweep(interval), interval);
      this.heartbeat.unref();
    }
    return this;
  }

  /** The manifest, with endpoints built from `base` (or the bound address). */
  manifest(base?: { scheme: 'http' | 'https'; host: string }): Manifest {
    const b = base ?? {
      scheme: 'http' as const,
      host: this.address ? new URL(this.address.url).host : 'localhost',
    };
    const ws = b.scheme === 'https' ? 'wss' : 'ws';
    return buildManifest(
      this.opts.manifest,
      this.registry.skills(),
      {
        asap: `${b.scheme}://${b.host}${this.rpcPath}`,
        events: this.websocketPath === undefined ? undefined : `${ws}://${b.host}${this.websocketPath}`,
      },
      this.verifier !== undefined,
    );
  }

  manifestFor(req: IncomingMessage): Manifest {
    const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true;
    const host = req.headers.host ?? (this.address ? new URL(this.address.url).host : 'localhost');
    return this.manifest({ scheme: encrypted ? 'https' : 'http', host });
  }

  health(): { status: number; body: Health } {
    const healthy = !this._draining && !this.unhealthy;
    return {
      status: healthy ? 200 : 503,
      body: {
        status: healthy ? 'healthy' : 'unhealthy',
        agent_id: this.opts.manifest.id,
        version: this.opts.manifest.version ?? '0.1.0',
        asap_version: '0.1',
        uptime_seconds: Math.round((Date.now() - this.started) / 1000),
        load: {
          active_tasks: this.dispatcher.inFlight,
          queue_depth: Math.max(0, this.active - this.dispatcher.inFlight),
        },
      },
    };
  }

  /** Marks the agent (un)healthy for load balancers. */
  setHealthy(healthy: boolean): void {
    this.unhealthy = !healthy;
  }

  get authRequired(): boolean {
    return this.verifier !== undefined;
  }

  async authenticate(token: string | undefined): Promise<AuthResult> {
    if (this.verifier === undefined) return { ok: true, principal: undefined };
    if (token === undefined) return { ok: false, reason: 'Authentication required' };
    try {
      const principal = await this.verifier(token);
      return principal == null ? { ok: false, reason: 'Invalid token' } : { ok: true, principal };
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'token check failed');
      return { ok: false, reason: 'Invalid token' };
    }
  }

  handle(frame: Frame, session: Parameters<Dispatcher['handle']>[1]): Answer {
    return this.dispatcher.handle(frame, session);
  }

  begin(): () => void {
    this.active++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.active--;
      if (this.active === 0) {
        const waiters = this.activeWaiters;
        this.activeWaiters = [];
        for (const w of waiters) w();
      }
    };
  }

  identify(connection: Connection, agentUrn: string): void {
    let set = this.byAgent.get(agentUrn);
    if (set === undefined) {
      set = new Set();
      this.byAgent.set(agentUrn, set);
    }
    set.add(connection);
  }

  onAck(connection: Connection, envelope: Envelope<MessageAck>): void {
    const { original_envelope_id: id, status, error } = envelope.payload;
    this.logger.debug({ original: id, status }, 'ack received');
    // Only the connection a push went to can acknowledge it.
    const key = pushKey(connection, id);
    if (!this.pushAcks.ack(key)) return;
    const waiter = this.pushWaiters.get(key);
    this.pushWaiters.delete(key);
    if (status === 'rejected')
      waiter?.reject(new ASAPError(ErrorCode.InvalidRequest, error ?? 'Push rejected by the client'));
    else waiter?.resolve();
  }

  trackPush(connection: Connection, envelopeId: string, text: string): Promise<void> {
    const key = pushKey(connection, envelopeId);
    return new Promise((resolve, reject) => {
      this.pushWaiters.set(key, { resolve, reject, connection });
      this.pushAcks.track(
        key,
        () => void connection.write(text),
        (err) => {
          this.pushWaiters.delete(key);
          this.logger.warn({ envelope_id: envelopeId, conn: connection.id }, 'push never acknowledged');
          reject(err);
        },
      );
      if (this.pushAckTimer === undefined) {
        this.pushAckTimer = setInterval(() => {
          this.pushAcks.check(true);
          if (this.pushAcks.size === 0 && this.pushAckTimer !== undefined) {
            clearInterval(this.pushAckTimer);
            this.pushAckTimer = undefined;
          }
        }, this.opts.ack?.checkIntervalMs ?? 5000);
        this.pushAckTimer.unref();
      }
    });
  }

  closed(connection: Connection): void {
    this.live.delete(connection);
    for (const [id, waiter] of this.pushWaiters) {
      if (waiter.connection !== connection) continue;
      this.pushWaiters.delete(id);
      this.pushAcks.ack(id);
      waiter.reject(new ConnectionError('Connection closed before the push was acknowledged'));
    }
    for (const urn of connection.urns) {
      const set = this.byAgent.get(urn);
      set?.delete(connection);
      if (set?.size === 0) this.byAgent.delete(urn);
    }
    this.logger.debug({ conn: connection.id }, 'connection closed');
  }

  /**
   * Pushes an envelope to every connection of an agent. Resolves with how many
   * connections took it (wrote it, or acknowledged it when it requires an ack);
   * rejects with the first failure when there were connections and none took it.
   * It always settles: each connection's push settles on its ack, its retries
   * running out, or its close.
   */
  async push(
    agentUrn: string,
    init: Envelope<object> | (Omit<EnvelopeInit<object>, 'sender' | 'recipient'> & { sender?: string }),
  ): Promise<number> {
    const targets = this.connectionsFor(agentUrn);
    const envelope =
      'id' in init && 'timestamp' in init
        ? (init as Envelope<object>)
        : createEnvelope({ sender: this.opts.manifest.id, recipient: agentUrn, ...init });
    const results = await Promise.allSettled(targets.map((c) => c.push(envelope)));
    let reached = 0;
    for (const r of results) if (r.status === 'fulfilled') reached++;
    if (reached === 0 && results.length > 0) throw (results[0] as PromiseRejectedResult).reason;
    return reached;
  }

  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== this.websocketPath || this.wss === undefined) {
      if (this.previous.upgrade.length > 0) {
        for (const l of this.previous.upgrade) l.call(this.server, req, socket, head);
        return;
      }
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    socket.on('error', ignore);
    if (this.origins.check(req).kind === 'refused') {
      this.logger.warn(
        { origin: req.headers.origin, remote: req.socket.remoteAddress },
        'websocket origin not allowed',
      );
      // A plain 403 before upgrading: no web page may learn more than that (asap-wire.md §10).
      socket.once('finish', () => socket.destroy());
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const token =
      bearerFromHeader(req.headers.authorization) ??
      bearerFromProtocols(req.headers['sec-websocket-protocol']);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      // Refusals happen after the upgrade, with a close code, because browsers cannot read an HTTP status.
      if (this._draining) {
        ws.close(1001, SHUTDOWN_REASON);
        return;
      }
      const max = this.opts.maxConnections;
      if (max !== undefined && this.live.size >= max) {
        ws.close(1013, 'Too many connections');
        return;
      }
      const accept = (principal: unknown) => {
        const conn = new Connection(ws, req.socket.remoteAddress, principal, this);
        this.live.add(conn);
        this.logger.debug({ conn: conn.id, remote: conn.remoteAddress }, 'connection opened');
      };
      if (this.verifier === undefined) {
        accept(undefined);
        return;
      }
      ws.pause();
      // asap-wire.md §10: an upgrade that has not authenticated within the headers timeout is dropped,
      // and the verifier's late answer is ignored.
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        this.logger.warn({ remote: req.socket.remoteAddress }, 'websocket authentication timed out');
        ws.resume();
        ws.close(4401, 'Authentication timeout');
        // A peer that never answers the close frame is cut now, not after ws's 30 s close timer.
        setTimeout(() => ws.terminate(), 1000).unref();
      }, this.headersTimeoutMs);
      timer.unref();
      void this.authenticate(token).then((auth) => {
        if (timedOut) return;
        clearTimeout(timer);
        if (!auth.ok) {
          this.logger.warn(
            { remote: req.socket.remoteAddress, reason: auth.reason },
            'websocket authentication failed',
          );
          // Read again, or the peer's close frame is never seen and the close hangs until ws's 30 s timer.
          ws.resume();
          ws.close(4401, auth.reason);
          return;
        }
        accept(auth.principal);
        ws.resume();
      });
    });
  }

  /** One sweep for every connection: ping, and close those silent for 3 intervals. */
  private sweep(interval: number): void {
    const now = Date.now();
    for (const conn of this.live) {
      if (conn.closingSince !== 0) {
        if (now - conn.closingSince >= interval) conn.terminate();
      } else if (now - conn.lastSeen > 3 * interval) {
        this.logger.info({ conn: conn.id, agent: conn.agentUrn }, 'closing stale connection');
        conn.closingSince = now;
        conn.close(1001, 'Stale connection');
      } else {
        conn.ping();
      }
    }
  }

  private waitForActive(deadlineMs: number): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, deadlineMs);
      this.activeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
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
    this._draining = true;
    this.logger.info({ active: this.active }, 'draining');
    await this.waitForActive(this.opts.drainTimeoutMs ?? 10_000);
    this.dispatcher.close();
    // Answers of requests cut off at the deadline are written in the next turns; let them out before the close frames.
    await new Promise((resolve) => setImmediate(resolve));
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    if (this.pushAckTimer !== undefined) clearInterval(this.pushAckTimer);
    const closes = [...this.live].map(
      (conn) =>
        new Promise<void>((resolve) => {
          conn.socket.once('close', () => resolve());
          conn.close(1001, SHUTDOWN_REASON);
          const t = setTimeout(() => conn.terminate(), 2000);
          conn.socket.once('close', () => clearTimeout(t));
        }),
    );
    await Promise.all(closes);
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
