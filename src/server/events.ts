import { Emitter } from '../core/emitter.js';
import type { Logger } from '../core/logger.js';
import type { Connection } from './connection.js';

/** A WebSocket connection the server accepted (origin, authentication and the cap passed). */
export interface ConnectionEvent {
  /** The connection's id, as in `server.connections` and the logs' `conn`. */
  id: number;
  transport: 'websocket';
  remoteAddress: string | undefined;
  /** What the authenticator returned for the connection's token; undefined on an open server. */
  principal: unknown;
  /** The live connection: push to it, send it reverse requests, close it. */
  connection: Connection;
}

/** A WebSocket connection that closed, whoever closed it. */
export interface DisconnectEvent {
  id: number;
  transport: 'websocket';
  remoteAddress: string | undefined;
  /** The first agent URN it spoke as, if any. */
  agentUrn: string | undefined;
  /** The WebSocket close code (1000 normal, 1001 going away or shutdown, 1006 dropped, 1008 policy, …). */
  code: number;
  reason: string;
}

/**
 * Where an `error` event comes from:
 * - `handler`: a handler threw or rejected (not for a deadline or a cancel, and not an `ASAPError`
 *   it threw on purpose as its answer);
 * - `engine`: the server failed around a request (the caller got `Internal error` with
 *   `data.error_id`, which `errorId` repeats);
 * - `socket`: a WebSocket failed (a peer's malformed frame, a reset);
 * - `listener`: a listener of these events threw (not for `error` listeners: those are only logged).
 */
export type ServerErrorSource = 'handler' | 'engine' | 'socket' | 'listener';

/** What an `error` event belongs to: its source, and the connection or request when known. */
export interface ServerErrorContext {
  source: ServerErrorSource;
  transport?: 'http' | 'websocket';
  /** The WebSocket connection's id. */
  connectionId?: number;
  remoteAddress?: string;
  /** The request's envelope, for a handler error. */
  envelopeId?: string;
  payloadType?: string;
  skill?: string;
  sender?: string;
  traceId?: string;
  /** The `data.error_id` the caller got, for an engine error. */
  errorId?: string;
  /** The event whose listener threw, for a listener error. */
  event?: 'connection' | 'disconnect';
}

/**
 * The server's events: `server.on('connection', (c) => …)`, `server.on('disconnect', (d) => …)`,
 * `server.on('error', (err, ctx) => …)`. Unlike a bare EventEmitter, an `error` with no listener
 * does not throw: every error is logged anyway.
 */
export interface ServerEvents {
  connection(info: ConnectionEvent): void;
  disconnect(info: DisconnectEvent): void;
  error(error: Error, context: ServerErrorContext): void;
}

export type ServerEventName = keyof ServerEvents;

const EVENT_NAMES: ReadonlySet<string> = new Set<ServerEventName>(['connection', 'disconnect', 'error']);

/** @internal True for the names `on` takes as server events (not as payload types). */
export function isServerEvent(name: string): name is ServerEventName {
  return EVENT_NAMES.has(name);
}

/** @internal A non-Error thrown value as an Error (the value as its `cause`). */
export function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value), { cause: value });
}

/**
 * @internal
 * The server's event emitter: a listener that throws is logged (with its stack) and reported as
 * an `error` event; one of `error` itself is only logged.
 */
export class ServerEventEmitter extends Emitter<ServerEvents> {
  private current: ServerEventName | undefined;

  constructor(private readonly logger: Logger) {
    super();
  }

  fire<K extends ServerEventName>(event: K, ...args: Parameters<ServerEvents[K]>): void {
    if (this.listenerCount(event) === 0) return;
    const previous = this.current;
    this.current = event;
    try {
      this.emit(event, ...args);
    } finally {
      this.current = previous;
    }
  }

  protected override onListenerError(err: unknown): void {
    const event = this.current!;
    const e = asError(err);
    this.logger.error({ event, err: e.message, stack: e.stack }, 'server event listener failed');
    if (event !== 'error') this.fire('error', e, { source: 'listener', event });
  }
}
