import type { AckOptions } from '../core/ack-tracker.js';
import { AsyncQueue } from '../core/async-queue.js';
import type { BackoffOptions } from '../core/backoff.js';
import { CircuitBreaker, type CircuitBreakerOptions, type CircuitState } from '../core/circuit-breaker.js';
import { Dispatcher, type Session } from '../core/dispatcher.js';
import { Emitter } from '../core/emitter.js';
import { ExpiringMap } from '../core/expiring-map.js';
import { guardInstrumentation, type Instrumentation } from '../core/instrumentation.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { Peer, type PeerRequestOptions } from '../core/peer.js';
import type { HandlerRegistry } from '../core/registry.js';
import { systemTimers, type Timers } from '../core/timers.js';
import { type ClientTracing, endWhenDone, endWhenSettled } from '../core/tracing.js';
import { createEnvelope, type Envelope, type EnvelopeInit, validateEnvelope } from '../protocol/envelope.js';
import { ASAPError, ConnectionError } from '../protocol/errors.js';
import {
  encodeError,
  encodeNotification,
  envelopeParam,
  type Frame,
  METHOD_ACK,
  METHOD_RESUME,
  METHOD_SEND,
  METHOD_SESSION,
} from '../protocol/jsonrpc.js';
import type { MessageAck, TaskCancel, TaskStream } from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';
import { cancelEnvelopeFor } from './cancel.js';
import { type ChannelEvents, ReconnectingChannel, type TransportState } from './reconnecting-channel.js';
import { defaultWebSocketFactory, type TokenSource, type WebSocketFactory } from './runtime.js';
import { defaultClientTracing } from './tracing.js';

export type { TransportState };

export interface WebSocketTransportOptions {
  /**
   * Bearer token, or a provider called before every connection: a header where the runtime
   * allows it, else the `asap.bearer.<token>` subprotocol. With a provider, a live connection the
   * server ends with 4401 (`Token expired`) reconnects at once with a fresh token, resuming its
   * session and sending again what was in flight.
   */
  token?: TokenSource;
  /** Extra upgrade headers (Node only). */
  headers?: Record<string, string>;
  webSocketFactory?: WebSocketFactory;
  /** Default deadline of a request (default 60 s); streams get it anew with every chunk. */
  requestTimeoutMs?: number;
  /**
   * Expected server heartbeat (default 30 s): the server is taken for dead after 3 silent intervals, and a
   * connection attempt unanswered for as long is dropped and retried. 0 turns both off.
   */
  heartbeatIntervalMs?: number;
  /** Reconnect after an unexpected close (default true). */
  reconnect?: boolean;
  /** Reconnect attempts before giving up (default unlimited). */
  maxReconnectAttempts?: number;
  /** Backoff between attempts (default 1 s doubling to 30 s, 20 % jitter). */
  backoff?: BackoffOptions;
  /** Re-send requests that were in flight when the connection dropped (default true); else fail them. */
  resendOnReconnect?: boolean;
  /** Most sends held while disconnected (default 1,000); past it sends fail at once. */
  maxQueue?: number;
  /** Acknowledgements and retransmission (§6); `false` turns them off. */
  ack?: AckOptions | false;
  /** Circuit breaker over connecting, sending and ack expiry; `false` turns it off. */
  circuitBreaker?: CircuitBreakerOptions | false;
  /** Handlers for reverse requests the server sends (same registry as a server's). */
  registry?: HandlerRegistry;
  /**
   * Hooks told of retransmissions, acks received, reconnections and circuit changes (e.g. the
   * Prometheus counters of `clientMetrics()` from `asap-ts/client`).
   */
  instrumentation?: Instrumentation;
  /** Envelopes kept for `receive()`, pushes and answers (default 1,000; the oldest is dropped past it). */
  maxBufferedPushes?: number;
  /**
   * Open a session (asap-wire.md §12) and resume it after a reconnect, so pushes sent while
   * disconnected are replayed, even from another node (default true). A server that does not
   * know sessions ignores the request.
   */
  resume?: boolean;
  /** Granularity of the single timer that enforces deadlines and ack timeouts (default 100 ms). */
  timerResolutionMs?: number;
  logger?: Logger;
  /**
   * A span per request and stream, its W3C traceparent sent in `extensions.traceparent` (asap-wire.md
   * §13). Default in Node: OpenTelemetry, recording once the application registers a TracerProvider;
   * in a browser none (pass `otelTracing(api)` of `asap-ts/otel`). `false` turns it off.
   */
  tracing?: ClientTracing | false;
  /** Clock and timers of deadlines, acks, heartbeat and backoff (default: the system's). */
  timers?: Timers;
}

/** Options of one request. */
export type RequestOptions = PeerRequestOptions;

/** Options of `cancel()`. */
export interface CancelOptions extends RequestOptions {
  /** Why (sent as the TaskCancel's `reason`). */
  reason?: string;
  /** Sender of the TaskCancel (default: that of the task's request when it is pending here, else that of the last request sent). */
  sender?: string;
  /** Recipient of the TaskCancel (default: as `sender`). */
  recipient?: string;
}

/** An answer to `send()` that is an error, kept in the inbox in its place. */
class Failed {
  constructor(readonly error: unknown) {}
}

export interface TransportEvents extends ChannelEvents {
  message: (envelope: Envelope<object>) => void;
  /** The server opened or resumed this client's session; `resumed: false` after a reconnect means pushes were lost. */
  session: (info: { sessionId: string; resumed: boolean }) => void;
  circuit: (state: CircuitState, previous: CircuitState) => void;
}

const FORWARDED: (keyof ChannelEvents)[] = [
  'open',
  'close',
  'error',
  'reconnecting',
  'reconnected',
  'gaveUp',
  'state',
];

/**
 * An ASAP client over one WebSocket: a {@link Peer} (correlation, deadlines,
 * streaming, acks with retransmission) over a {@link ReconnectingChannel}
 * (heartbeat, reconnection with resend, the offline queue), plus what only a
 * client does: a circuit breaker, server pushes delivered once, and reverse
 * requests answered by its own handlers. Runs in Node and browsers.
 */
export class WebSocketTransport extends Emitter<TransportEvents> {
  private readonly logger: Logger;
  private readonly timers: Timers;
  private readonly channel: ReconnectingChannel;
  private readonly peer: Peer;
  private readonly breaker: CircuitBreaker | undefined;
  /** What `receive()` yields: pushes, and the answers to `send()` (a failed one as its error). */
  private readonly inbox: AsyncQueue<Envelope<object> | Failed>;
  /** Pushes seen lately (sender + id), so a retransmitted push is acked again but delivered once. */
  private readonly seenPushes: ExpiringMap<true>;
  private readonly dispatcher: Dispatcher | undefined;
  private readonly tracing: ClientTracing | undefined;
  /** The session (§12) and the highest seq delivered in it. */
  private session: { id: string; lastSeq: number } | undefined;
  /** The last request sent (its addresses are those of a `cancel()` of a task not pending here). */
  private lastRequest: Envelope<object> | undefined;

  constructor(url?: string, opts: WebSocketTransportOptions = {}) {
    super();
    this.logger = opts.logger ?? silentLogger;
    this.timers = opts.timers ?? systemTimers;
    const hooks = guardInstrumentation(opts.instrumentation, this.logger);
    this.breaker =
      opts.circuitBreaker === false
        ? undefined
        : new CircuitBreaker({
            clock: this.timers,
            ...opts.circuitBreaker,
            onStateChange: (s, prev) => {
              hooks?.circuitChanged?.(s, prev);
              this.emit('circuit', s, prev);
              if (typeof opts.circuitBreaker === 'object') opts.circuitBreaker.onStateChange?.(s, prev);
            },
          });
    const resend = opts.resendOnReconnect ?? true;
    this.channel = new ReconnectingChannel(
      url,
      {
        factory: opts.webSocketFactory ?? defaultWebSocketFactory(),
        token: opts.token,
        headers: opts.headers,
        heartbeatIntervalMs: opts.heartbeatIntervalMs,
        reconnect: opts.reconnect,
        maxReconnectAttempts: opts.maxReconnectAttempts,
        backoff: opts.backoff,
        maxQueue: opts.maxQueue,
        health: this.breaker,
        timers: this.timers,
        logger: this.logger,
      },
      {
        message: (text) => this.peer.receive(text),
        opened: (reconnected) => {
          // First frame on every connection: open the session, or resume it from the last seq delivered.
          if (opts.resume ?? true) {
            const params =
              this.session === undefined
                ? { session_id: null }
                : { session_id: this.session.id, last_seq: this.session.lastSeq };
            this.channel.send(encodeNotification(METHOD_RESUME, params));
          }
          if (reconnected) hooks?.reconnected?.();
          if (reconnected && resend) this.peer.reconnected();
        },
        dropped: (err) => this.peer.disconnected(err, resend),
        ended: (err) => this.shutdown(err),
      },
    );
    for (const event of FORWARDED) {
      this.channel.on(event, ((...args: never[]) =>
        (this.emit as (e: string, ...a: never[]) => void)(event, ...args)) as never);
    }
    this.peer = new Peer(this.channel, {
      idPrefix: 'ws-req-',
      inbound: (frame) => this.inbound(frame),
      requestTimeoutMs: opts.requestTimeoutMs,
      ack: opts.ack,
      health: this.breaker,
      resolutionMs: opts.timerResolutionMs,
      timers: this.timers,
      logger: this.logger,
      onAbort: (env) => this.cancelAborted(env),
      instrumentation: hooks,
    });
    this.seenPushes = new ExpiringMap<true>(600_000, 10_000, this.timers);
    this.inbox = new AsyncQueue<Envelope<object> | Failed>(undefined, opts.maxBufferedPushes ?? 1000);
    this.tracing = opts.tracing === false ? undefined : (opts.tracing ?? defaultClientTracing());
    if (opts.registry !== undefined) {
      this.dispatcher = new Dispatcher({ registry: opts.registry, logger: this.logger, timers: this.timers });
    }
  }

  get state(): TransportState {
    return this.channel.state;
  }

  /** Requests awaiting an answer (including queued ones). */
  get inFlight(): number {
    return this.peer.inFlight;
  }

  /** When a request last started or ended (the `timers` clock): how long the transport has been idle. */
  get lastActivity(): number {
    return this.peer.lastActivity;
  }

  /** Envelopes sent with `requires_ack` and not yet acknowledged. */
  get unacknowledged(): number {
    return this.peer.unacknowledged;
  }

  get circuitState(): CircuitState {
    return this.breaker?.state ?? 'closed';
  }

  /** The id of this client's session (§12), once the server opened one. */
  get sessionId(): string | undefined {
    return this.session?.id;
  }

  /** The subprotocol the server selected. */
  get protocol(): string {
    return this.channel.protocol;
  }

  /** Opens the connection; resolves once open. A failed first attempt rejects (later drops reconnect by themselves). */
  connect(url?: string): Promise<void> {
    return this.channel.connect(url);
  }

  /** Registers a callback for pushed envelopes (both push forms of §5); returns its remover. */
  onMessage(callback: (envelope: Envelope<object>) => void): () => void {
    return this.on('message', callback);
  }

  /**
   * The next envelope addressed to this client, in arrival order: server pushes and the answers to
   * {@link send} (buffered when nobody is waiting). An answer that is an error (the server's
   * JSON-RPC error, a timeout, a lost connection) rejects here, in its place in the order.
   */
  async receive(): Promise<Envelope<object>> {
    const r = await this.inbox.next();
    if (r.done) throw new ConnectionError('Transport closed');
    if (r.value instanceof Failed) throw r.value.error;
    return r.value;
  }

  /**
   * Sends an envelope as a request whose answer {@link receive} yields (the `connect / send /
   * receive` pattern); {@link request} instead resolves with the answer itself. Resolves once the
   * request is written or queued; rejects at once when the transport refuses it (closed, circuit open).
   */
  send(init: Envelope<object> | EnvelopeInit<object>, opts?: RequestOptions): Promise<void> {
    const refused = this.refuse();
    if (refused) return Promise.reject(refused);
    this.request(init, opts).then(
      (answer) => this.inbox.push(answer),
      (err: unknown) => this.inbox.push(new Failed(err)),
    );
    return Promise.resolve();
  }

  /**
   * Sends an envelope as a notification (`asap.send`): the server answers nothing. When it
   * requires an ack, resolves once acknowledged; otherwise once written (or queued).
   */
  notify(init: Envelope<object> | EnvelopeInit<object>): Promise<void> {
    const refused = this.refuse();
    if (refused) return Promise.reject(refused);
    return this.peer.send(this.prepare(init));
  }

  /** Sends a request and resolves with the response envelope, bound to it by `correlation_id`. */
  request(init: Envelope<object> | EnvelopeInit<object>, opts?: RequestOptions): Promise<Envelope<object>> {
    const refused = this.refuse();
    if (refused) return Promise.reject(refused);
    const prepared = this.prepare(init);
    const call = this.tracing?.startCall(prepared, 'request', 'websocket');
    const env = call?.envelope ?? prepared;
    this.lastRequest = env;
    const answer = this.peer.request(env, opts);
    return call === undefined ? answer : endWhenSettled(call, answer);
  }

  /**
   * Asks the server to cancel the running task `taskId` (the id of its TaskRequest envelope) with a
   * TaskCancel, and resolves with the server's answer: a TaskResponse with status `cancelled`, or
   * rejects with -32010 when the server runs no such task. Aborting a request's signal sends
   * the same TaskCancel by itself.
   */
  cancel(taskId: string, opts: CancelOptions = {}): Promise<Envelope<object>> {
    const { reason, sender, recipient, ...requestOpts } = opts;
    const known = this.peer.pendingEnvelope(taskId) ?? this.lastRequest;
    const payload: TaskCancel = { task_id: taskId };
    if (reason !== undefined) payload.reason = reason;
    return this.request(
      {
        sender: sender ?? known?.sender ?? 'urn:asap:agent:client',
        recipient: recipient ?? known?.recipient ?? 'urn:asap:agent:demo',
        payload_type: 'TaskCancel',
        payload,
      },
      requestOpts,
    );
  }

  /** Sends a request whose answer is streamed; iterates TaskStream envelopes up to the final one. */
  stream(
    init: Envelope<object> | EnvelopeInit<object>,
    opts?: RequestOptions,
  ): AsyncIterable<Envelope<TaskStream>> {
    const refused = this.refuse();
    if (refused) {
      const failed = new AsyncQueue<Envelope<TaskStream>>();
      failed.fail(refused);
      return failed;
    }
    const prepared = this.prepare(init);
    const call = this.tracing?.startCall(prepared, 'stream', 'websocket');
    const env = call?.envelope ?? prepared;
    this.lastRequest = env;
    const chunks = this.peer.stream(env, opts);
    return call === undefined ? chunks : endWhenDone(call, chunks);
  }

  /** Closes the connection for good: no reconnect; everything pending fails. Idempotent. */
  close(code = 1000, reason = ''): Promise<void> {
    return this.channel.close(code, reason);
  }

  // ---- internals ----

  /** A TaskRequest aborted by its signal after it was written: tell the server (best effort). */
  private cancelAborted(request: Envelope<object>): void {
    const cancel = cancelEnvelopeFor(request, 'Request aborted by the client');
    if (cancel === undefined || this.channel.state === 'closed') return;
    this.logger.debug({ task_id: request.id }, 'request aborted: sending TaskCancel');
    // A notification: nothing to wait for, and it takes no request slot (inFlight, pool balancing).
    this.peer.send(cancel).catch((err: unknown) => {
      this.logger.debug({ task_id: request.id, err: (err as Error)?.message }, 'TaskCancel not sent');
    });
  }

  private prepare(init: Envelope<object> | EnvelopeInit<object>): Envelope<object> {
    const env =
      'id' in init && 'timestamp' in init && init.id && init.timestamp
        ? (init as Envelope<object>)
        : createEnvelope(init);
    return this.peer.withAck(env);
  }

  private refuse(): ASAPError | undefined {
    if (this.channel.state === 'closed') return new ConnectionError('Transport is closed');
    if (this.breaker !== undefined && !this.breaker.allow()) {
      return ASAPError.circuitOpen('Circuit open: the peer failed repeatedly; retry later');
    }
    return undefined;
  }

  /** What the peer does not settle itself: pushes, reverse requests, batches. */
  private inbound(frame: Frame): void {
    switch (frame.kind) {
      case 'batch':
        for (const item of frame.items) this.peer.route(item);
        return;
      case 'success':
        // A push in the result form (id null), or an answer to no request of ours.
        if (isJsonObject(frame.result) && frame.result.envelope !== undefined)
          this.onPush(frame.result.envelope);
        else this.logger.debug({ id: frame.id }, 'response to no pending request dropped');
        return;
      case 'error':
        this.logger.warn({ id: frame.id, error: frame.error }, 'error for no pending request');
        return;
      case 'notification':
        if (frame.method === METHOD_SEND)
          this.onPush(envelopeParam(frame.params), isJsonObject(frame.params) ? frame.params.seq : undefined);
        else if (frame.method === METHOD_SESSION) this.onSession(frame.params);
        return;
      case 'request':
        void this.onReverseRequest(frame);
        return;
      case 'invalid':
        this.logger.warn({ error: frame.error.message }, 'malformed frame from server dropped');
        return;
    }
  }

  private onSession(params: unknown): void {
    if (!isJsonObject(params) || typeof params.session_id !== 'string') return;
    const resumed = params.resumed === true && this.session?.id === params.session_id;
    if (!resumed) this.session = { id: params.session_id, lastSeq: 0 };
    this.emit('session', { sessionId: params.session_id, resumed });
  }

  private onPush(raw: unknown, seq?: unknown): void {
    const v = validateEnvelope(raw);
    if (!v.ok) {
      this.logger.warn({ issues: v.issues }, 'invalid pushed envelope dropped');
      return;
    }
    const env = v.envelope;
    if (env.requires_ack === true)
      this.channel.send(encodeNotification(METHOD_ACK, { envelope: ackFor(env, 'received') }));
    // Delivered (now, or before: a replay of a push already seen is dropped below).
    if (this.session !== undefined && typeof seq === 'number' && seq > this.session.lastSeq)
      this.session.lastSeq = seq;
    const key = `${env.sender}\u0000${env.id}`;
    if (this.seenPushes.get(key) !== undefined) return;
    this.seenPushes.set(key, true);
    this.inbox.push(env);
    this.emit('message', env);
  }

  private async onReverseRequest(frame: Extract<Frame, { kind: 'request' }>): Promise<void> {
    if (this.dispatcher === undefined) {
      this.channel.send(
        encodeError(frame.id, ASAPError.handlerNotFound('any (this client registered no handlers)')),
      );
      return;
    }
    const session: Session = {
      transport: 'websocket',
      interactive: true,
      write: (text) => {
        this.channel.send(text);
      },
      push: (env) => this.notify(env),
    };
    const answer = await this.dispatcher.handle(frame, session);
    if (answer !== undefined) this.channel.send(answer);
  }

  /** Fails everything pending and stops every timer. */
  private shutdown(err: Error): void {
    this.peer.close(err);
    this.inbox.end();
    this.dispatcher?.close(err);
  }

  protected override onListenerError(err: unknown): void {
    this.logger.error({ err: (err as Error)?.message }, 'event listener threw');
  }
}

function ackFor(env: Envelope<object>, status: MessageAck['status']): Envelope<MessageAck> {
  return createEnvelope({
    sender: env.recipient,
    recipient: env.sender,
    asap_version: env.asap_version,
    payload_type: 'MessageAck',
    payload: { original_envelope_id: env.id, status },
    correlation_id: env.id,
  });
}
