import { type AckOptions, AckTracker } from '../core/ack-tracker.js';
import { AsyncQueue } from '../core/async-queue.js';
import { type BackoffOptions, backoffDelay } from '../core/backoff.js';
import { CircuitBreaker, type CircuitBreakerOptions, type CircuitState } from '../core/circuit-breaker.js';
import { type Clock, systemClock } from '../core/clock.js';
import { Dispatcher, type Session } from '../core/dispatcher.js';
import { Emitter } from '../core/emitter.js';
import { ExpiringMap } from '../core/expiring-map.js';
import { type Logger, silentLogger } from '../core/logger.js';
import type { HandlerRegistry } from '../core/registry.js';
import {
  checkEnvelope,
  createEnvelope,
  type Envelope,
  type EnvelopeInit,
  validateEnvelope,
} from '../protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ErrorCode,
  type JsonRpcErrorObject,
  ProtocolError,
  RequestTimeoutError,
} from '../protocol/errors.js';
import {
  ASAP_SUBPROTOCOL,
  type BatchItem,
  decodeFrame,
  encodeEnvelopeRequest,
  encodeError,
  encodeNotification,
  envelopeParam,
  METHOD_ACK,
  METHOD_SEND,
  PING_FRAME,
  PONG_FRAME,
} from '../protocol/jsonrpc.js';
import { ACKED_TYPES, type MessageAck, normalizePayloadType, type TaskStream } from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';
import { defaultWebSocketFactory, type WebSocketFactory, type WebSocketLike } from './runtime.js';

/** Default options shared by every call (no allocation per request). */
const NO_OPTIONS: RequestOptions = Object.freeze({});

export type TransportState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface WebSocketTransportOptions {
  /** Bearer token: a header where the runtime allows it, else the `asap.bearer.<token>` subprotocol. */
  token?: string;
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
  /** Pushed envelopes kept for `receive()` (default 1,000; the oldest is dropped past it). */
  maxBufferedPushes?: number;
  /** Granularity of the single timer that enforces deadlines and ack timeouts (default 100 ms). */
  timerResolutionMs?: number;
  logger?: Logger;
  clock?: Clock;
}

export interface RequestOptions {
  /** Deadline for this request (overrides `requestTimeoutMs`). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface TransportEvents {
  open: () => void;
  close: (info: { code: number; reason: string }) => void;
  error: (err: Error) => void;
  message: (envelope: Envelope<object>) => void;
  reconnecting: (info: { attempt: number; delayMs: number }) => void;
  reconnected: (info: { attempts: number }) => void;
  gaveUp: (info: { attempts: number; error: Error }) => void;
  state: (state: TransportState) => void;
  circuit: (state: CircuitState, previous: CircuitState) => void;
}

interface Pending {
  rpcId: string;
  envelope: Envelope<object>;
  text: string;
  /** Written on the current connection. */
  sent: boolean;
  /** Waiting in the offline queue. */
  queued: boolean;
  settled: boolean;
  deadline: number;
  timeoutMs: number;
  resolve: (env: Envelope<object>) => void;
  reject: (err: Error) => void;
  onChunk?: (env: Envelope<TaskStream>) => void;
  detach?: () => void;
}

interface Queued {
  text: string;
  pending?: Pending;
}

const CLOSED = 3;
const OPEN = 1;
/** JSON-RPC ids of this client's requests: `ws-req-1`, `ws-req-2`, … (as the reference). */
const RPC_ID_PREFIX = 'ws-req-';

const decoder = new TextDecoder();

/**
 * An ASAP client over one WebSocket: request correlation, streaming, server
 * push, reverse requests, heartbeat, reconnection with resend, acks with
 * retransmission and a circuit breaker. Runs in Node and browsers.
 */
export class WebSocketTransport extends Emitter<TransportEvents> {
  private readonly opts: WebSocketTransportOptions;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly factory: WebSocketFactory;
  private readonly pending = new Map<string, Pending>();
  private readonly queue: Queued[] = [];
  private readonly acks: AckTracker | undefined;
  private readonly breaker: CircuitBreaker | undefined;
  private readonly pushes: AsyncQueue<Envelope<object>>;
  /** Pushes seen lately (sender + id), so a retransmitted push is acked again but delivered once. */
  private readonly seenPushes = new ExpiringMap<true>(600_000, 10_000);
  private readonly dispatcher: Dispatcher | undefined;
  private url: string | undefined;
  private socket: WebSocketLike | undefined;
  private _state: TransportState = 'idle';
  private nextId = 1;
  private attempts = 0;
  private lastSeen = 0;
  private userClosed = false;
  private everOpened = false;
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closePromise: Promise<void> | undefined;

  constructor(url?: string, opts: WebSocketTransportOptions = {}) {
    super();
    this.url = url;
    this.opts = opts;
    this.logger = opts.logger ?? silentLogger;
    this.clock = opts.clock ?? systemClock;
    this.factory = opts.webSocketFactory ?? defaultWebSocketFactory();
    this.acks = opts.ack === false ? undefined : new AckTracker(opts.ack, this.clock);
    this.breaker =
      opts.circuitBreaker === false
        ? undefined
        : new CircuitBreaker({
            clock: this.clock,
            ...opts.circuitBreaker,
            onStateChange: (s, prev) => {
              this.emit('circuit', s, prev);
              if (typeof opts.circuitBreaker === 'object') opts.circuitBreaker.onStateChange?.(s, prev);
            },
          });
    this.pushes = new AsyncQueue<Envelope<object>>(undefined, opts.maxBufferedPushes ?? 1000);
    if (opts.registry !== undefined) {
      this.dispatcher = new Dispatcher({ registry: opts.registry, logger: this.logger });
    }
  }

  get state(): TransportState {
    return this._state;
  }

  /** Requests awaiting an answer (including queued ones). */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Envelopes sent with `requires_ack` and not yet acknowledged. */
  get unacknowledged(): number {
    return this.acks?.size ?? 0;
  }

  get circuitState(): CircuitState {
    return this.breaker?.state ?? 'closed';
  }

  /** The subprotocol the server selected. */
  get protocol(): string {
    return this.socket?.protocol ?? '';
  }

  /** Opens the connection; resolves once open. A failed first attempt rejects (later drops reconnect by themselves). */
  connect(url?: string): Promise<void> {
    if (url !== undefined) this.url = url;
    if (this._state === 'open') return Promise.resolve();
    if (this._state === 'closed') return Promise.reject(new ConnectionError('Transport is closed'));
    const wait = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this._state === 'idle') this.open();
    return wait;
  }

  /** Registers a callback for pushed envelopes (both push forms of §5); returns its remover. */
  onMessage(callback: (envelope: Envelope<object>) => void): () => void {
    return this.on('message', callback);
  }

  /** The next pushed envelope (buffered when nobody is waiting). */
  async receive(): Promise<Envelope<object>> {
    const r = await this.pushes.next();
    if (r.done) throw new ConnectionError('Transport closed');
    return r.value;
  }

  /**
   * Sends an envelope as a notification (no response). When it requires an
   * ack, resolves once acknowledged; otherwise once written (or queued).
   */
  send(init: Envelope<object> | EnvelopeInit<object>): Promise<void> {
    const envelope = this.prepare(init);
    const refused = this.refuse();
    if (refused) return Promise.reject(refused);
    const text = encodeNotification(METHOD_SEND, { envelope });
    if (envelope.requires_ack !== true || this.acks === undefined) {
      return this.enqueue({ text }) ? Promise.resolve() : Promise.reject(this.queueFull());
    }
    const acks = this.acks;
    return new Promise<void>((resolve, reject) => {
      if (!this.enqueue({ text })) {
        reject(this.queueFull());
        return;
      }
      if (this._state === 'closed') {
        reject(new ConnectionError('Transport is closed'));
        return;
      }
      acks.track(
        envelope.id,
        () => this.write(text),
        (err) => {
          this.ackWaiters.delete(envelope.id);
          this.breaker?.recordFailure();
          reject(err);
        },
      );
      this.ackWaiters.set(envelope.id, { resolve, reject });
      this.ensureSweep();
    });
  }

  private readonly ackWaiters = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();

  /** Sends a request and resolves with the response envelope, bound to it by `correlation_id`. */
  request(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: RequestOptions = NO_OPTIONS,
  ): Promise<Envelope<object>> {
    return new Promise((resolve, reject) => {
      this.start(init, opts, resolve, reject);
    });
  }

  /** Sends a request whose answer is streamed; iterates TaskStream envelopes up to the final one. */
  stream(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: RequestOptions = NO_OPTIONS,
  ): AsyncIterable<Envelope<TaskStream>> {
    let pending: Pending | undefined;
    const chunks = new AsyncQueue<Envelope<TaskStream>>(() => {
      if (pending !== undefined) this.settle(pending);
    });
    pending = this.start(
      init,
      opts,
      (env) => {
        chunks.push(env as Envelope<TaskStream>);
        chunks.end();
      },
      (err) => chunks.fail(err),
      (env) => chunks.push(env),
    );
    return chunks;
  }

  private start(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: RequestOptions,
    resolve: (env: Envelope<object>) => void,
    reject: (err: Error) => void,
    onChunk?: (env: Envelope<TaskStream>) => void,
  ): Pending | undefined {
    const refused = this.refuse() ?? (opts.signal?.aborted ? abortError(opts.signal) : undefined);
    if (refused) {
      reject(refused);
      return undefined;
    }
    const envelope = this.prepare(init);
    const rpcId = `${RPC_ID_PREFIX}${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 60_000;
    const p: Pending = {
      rpcId,
      envelope,
      text: encodeEnvelopeRequest(METHOD_SEND, envelope, rpcId),
      sent: false,
      queued: false,
      settled: false,
      deadline: this.clock.now() + timeoutMs,
      timeoutMs,
      resolve,
      reject,
      onChunk,
    };
    // In the table before enqueue: a first connection attempt that fails at once (no URL, the factory
    // throws) shuts down synchronously inside enqueue and must fail this request too.
    this.pending.set(rpcId, p);
    if (!this.enqueue({ text: p.text, pending: p })) {
      this.pending.delete(rpcId);
      reject(this.queueFull());
      return undefined;
    }
    if (p.settled) return undefined;
    if (envelope.requires_ack === true && this.acks !== undefined) {
      this.acks.track(
        envelope.id,
        () => {
          if (!p.settled) this.write(p.text);
        },
        (err) => {
          this.breaker?.recordFailure();
          this.fail(p, err);
        },
      );
    }
    const signal = opts.signal;
    if (signal !== undefined) {
      const onAbort = () => this.fail(p, abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      p.detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.ensureSweep();
    return p;
  }

  /** Closes the connection for good: no reconnect; everything pending fails. Idempotent. */
  close(code = 1000, reason = ''): Promise<void> {
    if (this.closePromise !== undefined) return this.closePromise;
    this.userClosed = true;
    const socket = this.socket;
    const wasOpen = this._state === 'open';
    this.closePromise = new Promise<void>((resolve) => {
      if (socket === undefined || socket.readyState === CLOSED) {
        resolve();
        return;
      }
      // A peer that vanished never completes the close handshake: give it a second, then drop the socket.
      const timer = setTimeout(() => {
        (socket as { terminate?: () => void }).terminate?.();
        resolve();
      }, 1000);
      socket.onclose = (ev) => {
        clearTimeout(timer);
        if (wasOpen) this.emit('close', { code: ev.code, reason: ev.reason });
        resolve();
      };
      try {
        socket.close(code, reason);
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
    this.shutdown(new ConnectionError('Transport closed'));
    return this.closePromise;
  }

  // ---- internals ----

  private prepare(init: Envelope<object> | EnvelopeInit<object>): Envelope<object> {
    const env =
      'id' in init && 'timestamp' in init && init.id && init.timestamp
        ? (init as Envelope<object>)
        : createEnvelope(init);
    if (
      env.requires_ack !== true &&
      this.acks !== undefined &&
      ACKED_TYPES.has(normalizePayloadType(env.payload_type))
    ) {
      return { ...env, requires_ack: true };
    }
    return env;
  }

  private refuse(): ASAPError | undefined {
    if (this._state === 'closed') return new ConnectionError('Transport is closed');
    if (this.breaker !== undefined && !this.breaker.allow()) {
      return ASAPError.circuitOpen('Circuit open: the peer failed repeatedly; retry later');
    }
    return undefined;
  }

  private queueFull(): ASAPError {
    return ASAPError.resourceExhausted('Send queue is full while disconnected', {
      max_queue: this.opts.maxQueue ?? 1000,
    });
  }

  /** Writes now when open; otherwise queues (bounded). False when the queue is full. */
  private enqueue(item: Queued): boolean {
    if (this._state === 'open' && this.socket?.readyState === OPEN) {
      this.socket.send(item.text);
      if (item.pending) item.pending.sent = true;
      return true;
    }
    if (this.queue.length >= (this.opts.maxQueue ?? 1000)) return false;
    this.queue.push(item);
    if (item.pending) item.pending.queued = true;
    if (this._state === 'idle') this.open();
    return true;
  }

  private write(text: string): void {
    if (this.socket?.readyState === OPEN) this.socket.send(text);
  }

  private open(): void {
    if (this.url === undefined) {
      this.failConnect(new ConnectionError('No URL to connect to'));
      return;
    }
    this.setState(this.everOpened ? 'reconnecting' : 'connecting');
    let socket: WebSocketLike;
    try {
      socket = this.factory(this.url, {
        protocols: [ASAP_SUBPROTOCOL],
        token: this.opts.token,
        headers: this.opts.headers,
      });
    } catch (err) {
      this.failConnect(new ConnectionError(`Cannot open ${this.url}: ${(err as Error).message}`));
      return;
    }
    this.socket = socket;
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => this.onOpen(socket);
    socket.onmessage = (ev) => this.onData(ev.data);
    socket.onerror = (ev) => {
      const message =
        (ev as { message?: string; error?: Error }).error?.message ?? (ev as { message?: string }).message;
      this.emit('error', new ConnectionError(message ?? 'WebSocket error'));
    };
    socket.onclose = (ev) => this.onClose(socket, ev.code, ev.reason);
    // A handshake the server never answers (a partition, a stalled peer) counts as silence too:
    // after 3 heartbeat intervals the attempt is dropped, so a reconnect can never get stuck.
    const interval = this.opts.heartbeatIntervalMs ?? 30_000;
    if (interval > 0) {
      this.connectTimer = setTimeout(() => {
        this.connectTimer = undefined;
        if (socket === this.socket && socket.readyState !== OPEN) this.abandon('Connect timeout');
      }, 3 * interval);
      (this.connectTimer as { unref?: () => void }).unref?.();
    }
  }

  private clearConnectTimer(): void {
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
  }

  private failConnect(err: Error): void {
    this.setState('closed');
    this.rejectConnectWaiters(err);
    this.shutdown(err);
  }

  private rejectConnectWaiters(err: Error): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  private onOpen(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.clearConnectTimer();
    const reconnected = this.everOpened;
    const attempts = this.attempts;
    this.everOpened = true;
    this.attempts = 0;
    this.lastSeen = this.clock.now();
    this.breaker?.recordSuccess();
    this.setState('open');
    this.startHeartbeat();
    // Requests that were in flight when the connection dropped go first (same envelope ids), then the queue, in order.
    if (reconnected && (this.opts.resendOnReconnect ?? true)) {
      for (const p of this.pending.values()) {
        if (!p.sent && !p.queued) {
          socket.send(p.text);
          p.sent = true;
        }
      }
    }
    const queued = this.queue.splice(0);
    for (const item of queued) {
      if (item.pending !== undefined) {
        item.pending.queued = false;
        if (item.pending.settled) continue;
        item.pending.sent = true;
      }
      socket.send(item.text);
    }
    this.acks?.restart();
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
    this.emit('open');
    if (reconnected) this.emit('reconnected', { attempts });
  }

  private onClose(socket: WebSocketLike, code: number, reason: string): void {
    if (socket !== this.socket) return;
    this.socket = undefined;
    this.stopHeartbeat();
    this.clearConnectTimer();
    const wasOpen = this._state === 'open';
    if (wasOpen) this.emit('close', { code, reason });
    if (this.userClosed) return;
    if (code === 4401) {
      const err = ASAPError.unauthorized(reason || 'Authentication required');
      this.setState('closed');
      this.rejectConnectWaiters(err);
      this.shutdown(err);
      this.emit('gaveUp', { attempts: this.attempts, error: err });
      return;
    }
    if (!wasOpen) this.breaker?.recordFailure();
    const err = new ConnectionError(`Connection closed (${code}${reason ? ` ${reason}` : ''})`, {
      code,
      reason,
    });
    if (!this.everOpened || this.opts.reconnect === false) {
      this.setState('closed');
      this.rejectConnectWaiters(err);
      this.shutdown(err);
      return;
    }
    // In-flight requests: re-sent on the next connection, or failed now.
    for (const p of [...this.pending.values()]) {
      if (!p.sent) continue;
      if (this.opts.resendOnReconnect ?? true) p.sent = false;
      else this.fail(p, err);
    }
    this.scheduleReconnect(err);
  }

  private scheduleReconnect(err: Error): void {
    const max = this.opts.maxReconnectAttempts ?? Number.POSITIVE_INFINITY;
    if (this.attempts >= max) {
      this.setState('closed');
      this.emit('gaveUp', { attempts: this.attempts, error: err });
      this.shutdown(
        new ConnectionError(`Gave up reconnecting after ${this.attempts} attempts`, { cause: err.message }),
      );
      return;
    }
    const delayMs = backoffDelay(this.attempts, this.opts.backoff);
    this.attempts++;
    this.setState('reconnecting');
    this.emit('reconnecting', { attempt: this.attempts, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.userClosed) this.open();
    }, delayMs);
  }

  private onData(data: unknown): void {
    this.lastSeen = this.clock.now();
    const text = typeof data === 'string' ? data : decoder.decode(data as ArrayBuffer);
    if (text === PING_FRAME) {
      this.write(PONG_FRAME);
      return;
    }
    if (text === PONG_FRAME) return;
    const frame = decodeFrame(text);
    switch (frame.kind) {
      case 'heartbeat':
        if (frame.type === 'ping') this.write(PONG_FRAME);
        return;
      case 'batch':
        for (const item of frame.items) this.onMessageFrame(item);
        return;
      default:
        this.onMessageFrame(frame);
    }
  }

  private onMessageFrame(frame: BatchItem): void {
    switch (frame.kind) {
      case 'success': {
        const p = frame.id === null ? undefined : this.pending.get(String(frame.id));
        if (p !== undefined) this.onResult(p, frame.result);
        // A late answer to one of our own requests (timed out, aborted, stream left early) is no push.
        else if (typeof frame.id === 'string' && frame.id.startsWith(RPC_ID_PREFIX))
          this.logger.debug({ id: frame.id }, 'late response to a settled request dropped');
        else if (isJsonObject(frame.result) && frame.result.envelope !== undefined)
          this.onPush(frame.result.envelope);
        else this.logger.debug({ id: frame.id }, 'response to no pending request dropped');
        return;
      }
      case 'error': {
        const p = frame.id === null ? undefined : this.pending.get(String(frame.id));
        if (p !== undefined) this.onRemoteError(p, frame.error);
        else this.logger.warn({ id: frame.id, error: frame.error }, 'error for no pending request');
        return;
      }
      case 'notification':
        if (frame.method === METHOD_SEND) this.onPush(envelopeParam(frame.params));
        else if (frame.method === METHOD_ACK) this.onAck(envelopeParam(frame.params));
        return;
      case 'request':
        void this.onReverseRequest(frame);
        return;
      case 'invalid':
        this.logger.warn({ error: frame.error.message }, 'malformed frame from server dropped');
        return;
    }
  }

  private onResult(p: Pending, result: unknown): void {
    this.acks?.ack(p.envelope.id);
    const raw = isJsonObject(result) ? result.envelope : undefined;
    const env = checkEnvelope(raw);
    if (Array.isArray(env)) {
      this.fail(p, new ProtocolError('Response carries no valid envelope', { validation_errors: env }));
      return;
    }
    if (env.correlation_id !== p.envelope.id) {
      this.fail(
        p,
        new ProtocolError('Response does not bind to its request (correlation_id mismatch)', {
          expected: p.envelope.id,
          received: env.correlation_id ?? null,
        }),
      );
      return;
    }
    this.breaker?.recordSuccess();
    if (
      p.onChunk !== undefined &&
      env.payload.final !== true &&
      normalizePayloadType(env.payload_type) === 'taskstream'
    ) {
      p.deadline = this.clock.now() + p.timeoutMs;
      p.onChunk(env as Envelope<TaskStream>);
      return;
    }
    this.settle(p);
    p.resolve(env);
  }

  private onRemoteError(p: Pending, error: JsonRpcErrorObject): void {
    this.acks?.ack(p.envelope.id);
    this.fail(p, ASAPError.fromJSON(error));
  }

  private onAck(raw: unknown): void {
    const v = validateEnvelope(raw);
    if (!v.ok || normalizePayloadType(v.envelope.payload_type) !== 'messageack') {
      this.logger.warn({}, 'malformed asap.ack dropped');
      return;
    }
    const ack = v.envelope.payload as MessageAck;
    const id = ack.original_envelope_id;
    if (!this.acks?.ack(id)) return;
    const waiter = this.ackWaiters.get(id);
    this.ackWaiters.delete(id);
    if (ack.status === 'rejected') {
      const err = new ASAPError(ErrorCode.InvalidRequest, ack.error ?? 'Envelope rejected by the peer', {
        envelope_id: id,
      });
      waiter?.reject(err);
    } else {
      this.breaker?.recordSuccess();
      waiter?.resolve();
    }
  }

  private onPush(raw: unknown): void {
    const v = validateEnvelope(raw);
    if (!v.ok) {
      this.logger.warn({ issues: v.issues }, 'invalid pushed envelope dropped');
      return;
    }
    const env = v.envelope;
    if (env.requires_ack === true)
      this.write(encodeNotification(METHOD_ACK, { envelope: ackFor(env, 'received') }));
    const key = `${env.sender}\u0000${env.id}`;
    if (this.seenPushes.get(key) !== undefined) return;
    this.seenPushes.set(key, true);
    this.pushes.push(env);
    this.emit('message', env);
  }

  private async onReverseRequest(frame: Extract<BatchItem, { kind: 'request' }>): Promise<void> {
    if (this.dispatcher === undefined) {
      this.write(
        encodeError(frame.id, ASAPError.handlerNotFound('any (this client registered no handlers)')),
      );
      return;
    }
    const session: Session = {
      transport: 'websocket',
      interactive: true,
      write: (text) => this.write(text),
      push: (env) => this.send(env),
    };
    const answer = await this.dispatcher.handle(frame, session);
    if (answer !== undefined) this.write(answer);
  }

  private settle(p: Pending): void {
    if (p.settled) return;
    p.settled = true;
    this.pending.delete(p.rpcId);
    this.acks?.ack(p.envelope.id);
    p.detach?.();
  }

  private fail(p: Pending, err: Error): void {
    if (p.settled) return;
    this.settle(p);
    p.reject(err);
  }

  /** Fails everything pending and stops every timer. */
  private shutdown(err: Error): void {
    if (this._state !== 'closed') this.setState('closed');
    this.rejectConnectWaiters(err);
    for (const p of [...this.pending.values()]) this.fail(p, err);
    for (const w of this.ackWaiters.values()) w.reject(err);
    this.ackWaiters.clear();
    this.acks?.clear();
    this.queue.length = 0;
    this.pushes.end();
    this.dispatcher?.close(err);
    this.stopHeartbeat();
    this.clearConnectTimer();
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
  }

  private ensureSweep(): void {
    if (this.sweepTimer !== undefined || this._state === 'closed') return;
    this.sweepTimer = setInterval(() => this.sweep(), this.opts.timerResolutionMs ?? 100);
    (this.sweepTimer as { unref?: () => void }).unref?.();
  }

  private sweep(): void {
    const now = this.clock.now();
    for (const p of [...this.pending.values()]) {
      if (p.deadline <= now) {
        this.fail(p, new RequestTimeoutError(`No response to ${p.rpcId} within ${p.timeoutMs} ms`));
      }
    }
    // Only while connected: nothing is (re)transmitted while disconnected, so no retry may be used up then
    // (else sends queued during an outage fail unsent); the reconnect restarts every wait.
    if (this._state === 'open') this.acks?.check(true);
    if (this.pending.size === 0 && (this.acks?.size ?? 0) === 0 && this.sweepTimer !== undefined) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  private startHeartbeat(): void {
    const interval = this.opts.heartbeatIntervalMs ?? 30_000;
    if (interval <= 0) return;
    this.heartbeatTimer = setInterval(() => {
      const silent = this.clock.now() - this.lastSeen;
      if (silent > 3 * interval) {
        this.logger.warn({ silent_ms: silent }, 'server silent for 3 heartbeat intervals; reconnecting');
        this.abandon('Heartbeat timeout');
      } else if (silent > interval) {
        this.write(PING_FRAME);
      }
    }, interval);
    (this.heartbeatTimer as { unref?: () => void }).unref?.();
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /** Drops a dead socket at once (a half-open TCP connection would never finish a close handshake). */
  private abandon(reason: string): void {
    const socket = this.socket;
    if (socket === undefined) return;
    socket.onclose = null;
    socket.onmessage = null;
    socket.onerror = () => {};
    const terminate = (socket as { terminate?: () => void }).terminate;
    if (typeof terminate === 'function') terminate.call(socket);
    else socket.close(4000, reason);
    this.onClose(socket, 1006, reason);
  }

  private setState(state: TransportState): void {
    if (this._state === state) return;
    this._state = state;
    this.emit('state', state);
  }

  protected override onListenerError(err: unknown): void {
    this.logger.error({ err: (err as Error)?.message }, 'event listener threw');
  }
}

function abortError(signal: AbortSignal): ASAPError {
  const reason = signal.reason;
  return reason instanceof ASAPError
    ? reason
    : new ConnectionError(`Request aborted${reason instanceof Error ? `: ${reason.message}` : ''}`);
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
