import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import type { Logger } from '../core/logger.js';
import type { Timer, Timers } from '../core/timers.js';
import { ErrorCode } from '../protocol/errors.js';
import { ASAP_SUBPROTOCOL, BEARER_PROTOCOL_PREFIX } from '../protocol/jsonrpc.js';
import { type AuthCheck, bearerFromHeader, bearerFromProtocols } from './auth.js';
import { Connection, type ConnectionDeps } from './connection.js';
import type { OriginPolicy } from './origin.js';
import type { PushAdapter } from './push-adapter.js';

export interface WebSocketBindingOptions {
  path: string;
  maxMessageBytes: number;
  /** Server heartbeat interval; a connection silent for 3 intervals is closed. */
  heartbeatIntervalMs: number;
  /** Deadline of an upgrade's authentication. */
  authTimeoutMs: number;
  maxConnections: number | undefined;
  origins: OriginPolicy;
  /** Token check; undefined when the server is open. */
  authenticate: AuthCheck | undefined;
  pushes: PushAdapter;
  /** What every connection gets (bounds, dispatcher, drain). */
  connection: Omit<ConnectionDeps, 'identify' | 'closed'>;
  logger: Logger;
  timers: Timers;
  /** Told of every connection accepted and closed, and of its failures (the server's events). */
  events: {
    opened(connection: Connection): void;
    closed(connection: Connection, code: number, reason: string): void;
    failed(connection: Connection, err: unknown, source: 'socket' | 'engine', errorId?: string): void;
  };
}

/** A listener defined outside `upgrade()`, so it does not keep the upgrade request alive per connection. */
const ignore = (): void => {};

export const SHUTDOWN_REASON = 'Server shutting down';

/**
 * The WebSocket binding of asap-wire.md §5 beside the HTTP binding: upgrade
 * (Origin, authentication with its deadline, connection cap), the live
 * connections, the heartbeat sweep, and closing them all on shutdown.
 */
export class WebSocketBinding {
  readonly live = new Set<Connection>();
  private readonly wss: WebSocketServer;
  private readonly deps: ConnectionDeps;
  private heartbeat: Timer | undefined;

  constructor(private readonly opts: WebSocketBindingOptions) {
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: opts.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: (protocols) => {
        if (protocols.has(ASAP_SUBPROTOCOL)) return ASAP_SUBPROTOCOL;
        for (const p of protocols) if (!p.startsWith(BEARER_PROTOCOL_PREFIX)) return p;
        return false;
      },
    });
    this.deps = {
      ...opts.connection,
      identify: (connection, urn) => opts.pushes.add(urn, connection),
      closed: (connection, code, reason) => {
        this.live.delete(connection);
        opts.pushes.remove(connection.urns, connection);
        opts.logger.debug({ conn: connection.id, code, reason }, 'connection closed');
        opts.connection.instrumentation?.connectionClosed?.({ id: connection.id, code, reason });
        opts.events.closed(connection, code, reason);
      },
      failed: opts.events.failed,
    };
  }

  /** Starts the heartbeat sweep (idempotent). */
  start(): void {
    if (this.heartbeat !== undefined) return;
    const interval = this.opts.heartbeatIntervalMs;
    this.heartbeat = this.opts.timers.setInterval(() => this.sweep(interval), interval);
  }

  /** Takes an upgrade for our path; false when the path is not ours. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): boolean {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== this.opts.path) return false;
    const { logger, timers } = this.opts;
    socket.on('error', ignore);
    if (this.opts.origins.check(req).kind === 'refused') {
      logger.warn(
        { origin: req.headers.origin, remote: req.socket.remoteAddress },
        'websocket origin not allowed',
      );
      // A plain 403 before upgrading: no web page may learn more than that (asap-wire.md §10).
      socket.once('finish', () => socket.destroy());
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return true;
    }
    const token =
      bearerFromHeader(req.headers.authorization) ??
      bearerFromProtocols(req.headers['sec-websocket-protocol']);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      // Refusals happen after the upgrade, with a close code, because browsers cannot read an HTTP status.
      if (this.opts.connection.drain.draining) {
        ws.close(1001, SHUTDOWN_REASON);
        return;
      }
      const max = this.opts.maxConnections;
      if (max !== undefined && this.live.size >= max) {
        ws.close(1013, 'Too many connections');
        return;
      }
      const accept = (principal: unknown) => {
        const conn = new Connection(ws, req.socket.remoteAddress, principal, this.deps, socket);
        this.live.add(conn);
        logger.debug({ conn: conn.id, remote: conn.remoteAddress }, 'connection opened');
        this.opts.connection.instrumentation?.connectionOpened?.({
          id: conn.id,
          transport: 'websocket',
          remoteAddress: conn.remoteAddress,
        });
        this.opts.events.opened(conn);
      };
      const authenticate = this.opts.authenticate;
      if (authenticate === undefined) {
        accept(undefined);
        return;
      }
      ws.pause();
      // asap-wire.md §10: an upgrade that has not authenticated within the headers timeout is dropped,
      // and the verifier's late answer is ignored.
      let timedOut = false;
      const timer = timers.setTimeout(() => {
        timedOut = true;
        logger.warn({ remote: req.socket.remoteAddress }, 'websocket authentication timed out');
        ws.resume();
        ws.close(4401, 'Authentication timeout');
        // A peer that never answers the close frame is cut now, not after ws's 30 s close timer.
        timers.setTimeout(() => ws.terminate(), 1000);
      }, this.opts.authTimeoutMs);
      void authenticate(token, {
        transport: 'websocket',
        headers: req.headers,
        remoteAddress: req.socket.remoteAddress,
      }).then((auth) => {
        if (timedOut) return;
        timer.cancel();
        if (!auth.ok) {
          this.opts.connection.instrumentation?.rejected?.('auth', ErrorCode.Unauthorized);
          logger.warn(
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
    return true;
  }

  /** One sweep for every connection: ping, and close those silent for 3 intervals. */
  private sweep(interval: number): void {
    const now = this.opts.timers.now();
    for (const conn of this.live) {
      if (conn.closingSince !== 0) {
        if (now - conn.closingSince >= interval) conn.terminate();
      } else if (conn.readingPaused) {
        // We stopped reading it (in-flight cap, congestion): its silence is ours. Its own bounds
        // (handler deadlines, the slow-consumer grace) end that state; it still hears from us.
        conn.touch();
        conn.ping();
      } else if (now - conn.lastSeen > 3 * interval) {
        this.opts.logger.info({ conn: conn.id, agent: conn.agentUrn }, 'closing stale connection');
        conn.closingSince = now;
        conn.close(1001, 'Stale connection');
      } else {
        conn.ping();
      }
    }
  }

  /** Stops the sweep and closes every connection with 1001 (terminated if it does not answer in 2 s). */
  async closeAll(): Promise<void> {
    this.heartbeat?.cancel();
    this.heartbeat = undefined;
    const timers = this.opts.timers;
    await Promise.all(
      [...this.live].map(
        (conn) =>
          new Promise<void>((resolve) => {
            const t = timers.setTimeout(() => conn.terminate(), 2000, true);
            conn.socket.once('close', () => {
              t.cancel();
              resolve();
            });
            conn.close(1001, SHUTDOWN_REASON);
          }),
      ),
    );
  }
}
