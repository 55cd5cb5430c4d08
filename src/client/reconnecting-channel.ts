import { type BackoffOptions, backoffDelay } from '../core/backoff.js';
import type { Channel, SendResult } from '../core/channel.js';
import { Emitter } from '../core/emitter.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import { ASAPError, ConnectionError } from '../protocol/errors.js';
import { ASAP_SUBPROTOCOL, PING_FRAME } from '../protocol/jsonrpc.js';
import { type TokenSource, tokenOf, type WebSocketFactory, type WebSocketLike } from './runtime.js';

export type TransportState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ReconnectingChannelOptions {
  factory: WebSocketFactory;
  /** A token, or a provider called before every connection (a 4401 on an open connection then reconnects with a fresh one). */
  token?: TokenSource;
  headers?: Record<string, string>;
  /** Expected heartbeat of the other side (default 30 s); 3 silent intervals drop the socket. 0: off. */
  heartbeatIntervalMs?: number;
  /** Reconnect after an unexpected close (default true). */
  reconnect?: boolean;
  maxReconnectAttempts?: number;
  backoff?: BackoffOptions;
  /** Most frames held while disconnected (default 1,000). */
  maxQueue?: number;
  /** Told of connection failures and successes: a circuit breaker. */
  health?: { recordSuccess(): void; recordFailure(): void };
  timers?: Timers;
  logger?: Logger;
}

export interface ChannelEvents {
  open: () => void;
  close: (info: { code: number; reason: string }) => void;
  error: (err: Error) => void;
  reconnecting: (info: { attempt: number; delayMs: number }) => void;
  reconnected: (info: { attempts: number }) => void;
  gaveUp: (info: { attempts: number; error: Error }) => void;
  state: (state: TransportState) => void;
}

/** What the channel's owner (the Peer's owner) is told, in order, before the public events. */
export interface ChannelSink {
  message(text: string): void;
  /** Open; runs before held frames are written, so in-flight requests can go first. */
  opened(reconnected: boolean): void;
  /** The socket dropped and a reconnect is scheduled. */
  dropped(err: Error): void;
  /** The channel ended for good (closed, gave up, refused): fail everything with `err`. */
  ended(err: Error): void;
}

interface Held {
  text: string;
  flush?: () => boolean;
}

const OPEN = 1;
/** The close reason of a connection whose credential expired (asap-wire.md, identity). */
const TOKEN_EXPIRED = 'Token expired';
const CLOSED = 3;
const decoder = new TextDecoder();

/**
 * A WebSocket that comes back: the connection state machine, connect
 * timeout, heartbeat, reconnection with backoff, and the queue of frames
 * written while disconnected. The {@link core!Peer} above it decides what is sent
 * again; this only moves frames (engine.io-client under socket.io's manager).
 */
export class ReconnectingChannel extends Emitter<ChannelEvents> implements Channel {
  readonly maxHeld: number;
  private readonly opts: ReconnectingChannelOptions;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private readonly held: Held[] = [];
  private socket: WebSocketLike | undefined;
  private _state: TransportState = 'idle';
  private attempts = 0;
  private lastSeen = 0;
  private userClosed = false;
  private everOpened = false;
  private heartbeatTimer: Timer | undefined;
  private reconnectTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private connectWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closePromise: Promise<void> | undefined;
  /** Counts token fetches, so a late answer for an abandoned attempt is ignored. */
  private tokenAttempt = 0;

  constructor(
    public url: string | undefined,
    opts: ReconnectingChannelOptions,
    private readonly sink: ChannelSink,
  ) {
    super();
    this.opts = opts;
    this.maxHeld = opts.maxQueue ?? 1000;
    this.timers = opts.timers ?? systemTimers;
    this.logger = opts.logger ?? silentLogger;
  }

  get state(): TransportState {
    return this._state;
  }

  get isOpen(): boolean {
    return this._state === 'open' && this.socket?.readyState === OPEN;
  }

  /** The subprotocol the server selected. */
  get protocol(): string {
    return this.socket?.protocol ?? '';
  }

  drained(): undefined {
    return undefined;
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

  send(text: string, flush?: () => boolean): SendResult {
    if (this.isOpen) {
      this.socket!.send(text);
      return 'written';
    }
    if (this._state === 'closed') return 'closed';
    if (this.held.length >= this.maxHeld) return 'full';
    this.held.push({ text, flush });
    if (this._state === 'idle') this.open();
    // A first connection that fails at once (no URL, the factory throws) ends the channel right here.
    return (this._state as TransportState) === 'closed' ? 'closed' : 'queued';
  }

  /** Closes for good: no reconnect. Idempotent; resolves once the socket is closed. */
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
      const timer = this.timers.setTimeout(
        () => {
          (socket as { terminate?: () => void }).terminate?.();
          resolve();
        },
        1000,
        true,
      );
      socket.onclose = (ev) => {
        timer.cancel();
        if (wasOpen) this.emit('close', { code: ev.code, reason: ev.reason });
        resolve();
      };
      try {
        socket.close(code, reason);
      } catch {
        timer.cancel();
        resolve();
      }
    });
    this.end(new ConnectionError('Transport closed'));
    return this.closePromise;
  }

  // ---- internals ----

  private open(): void {
    const url = this.url;
    if (url === undefined) {
      this.end(new ConnectionError('No URL to connect to'));
      return;
    }
    this.setState(this.everOpened ? 'reconnecting' : 'connecting');
    const source = this.opts.token;
    if (typeof source !== 'function') {
      this.openSocket(url, source);
      return;
    }
    // A provider: a fresh token for every connection.
    const attempt = ++this.tokenAttempt;
    tokenOf(source).then(
      (token) => {
        if (attempt === this.tokenAttempt && !this.userClosed && this._state !== 'closed')
          this.openSocket(url, token);
      },
      (err: unknown) => {
        if (attempt !== this.tokenAttempt || this.userClosed || this._state === 'closed') return;
        const e = new ConnectionError(`Cannot get a token: ${(err as Error)?.message ?? String(err)}`);
        this.emit('error', e);
        this.opts.health?.recordFailure();
        if (!this.everOpened || this.opts.reconnect === false) this.end(e);
        else this.scheduleReconnect(e);
      },
    );
  }

  private openSocket(url: string, token: string | undefined): void {
    let socket: WebSocketLike;
    try {
      socket = this.opts.factory(url, {
        protocols: [ASAP_SUBPROTOCOL],
        token,
        headers: this.opts.headers,
      });
    } catch (err) {
      this.end(new ConnectionError(`Cannot open ${url}: ${(err as Error).message}`));
      return;
    }
    this.socket = socket;
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => this.onOpen(socket);
    socket.onmessage = (ev) => {
      this.lastSeen = this.timers.now();
      const data = ev.data;
      this.sink.message(typeof data === 'string' ? data : decoder.decode(data as ArrayBuffer));
    };
    // What the socket said went wrong, if it says (ws does; a browser's error event carries nothing):
    // a handshake that fails then ends with this message instead of a bare `Connection closed (1006)`.
    let failure: ConnectionError | undefined;
    socket.onerror = (ev) => {
      const error = (ev as { error?: unknown }).error;
      const message =
        (error instanceof Error ? error.message : undefined) ?? (ev as { message?: string }).message;
      const err = new ConnectionError(message ?? 'WebSocket error');
      if (error !== undefined) err.cause = error;
      if (message !== undefined) failure = err;
      this.emit('error', err);
    };
    socket.onclose = (ev) => this.onClose(socket, ev.code, ev.reason, failure);
    // A handshake the server never answers (a partition, a stalled peer) counts as silence too:
    // after 3 heartbeat intervals the attempt is dropped, so a reconnect can never get stuck.
    const interval = this.opts.heartbeatIntervalMs ?? 30_000;
    if (interval > 0) {
      this.connectTimer = this.timers.setTimeout(() => {
        this.connectTimer = undefined;
        if (socket === this.socket && socket.readyState !== OPEN) this.abandon('Connect timeout');
      }, 3 * interval);
    }
  }

  private onOpen(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.stopTimer('connectTimer');
    const reconnected = this.everOpened;
    const attempts = this.attempts;
    this.everOpened = true;
    this.attempts = 0;
    this.lastSeen = this.timers.now();
    this.opts.health?.recordSuccess();
    this.setState('open');
    this.startHeartbeat();
    this.sink.opened(reconnected);
    // Then what was held while disconnected, in order (skipping what was settled meanwhile).
    for (const item of this.held.splice(0)) {
      if (item.flush === undefined || item.flush()) socket.send(item.text);
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
    this.emit('open');
    if (reconnected) this.emit('reconnected', { attempts });
  }

  private onClose(socket: WebSocketLike, code: number, reason: string, failure?: ConnectionError): void {
    if (socket !== this.socket) return;
    this.socket = undefined;
    this.stopTimer('heartbeatTimer');
    this.stopTimer('connectTimer');
    const wasOpen = this._state === 'open';
    if (wasOpen) this.emit('close', { code, reason });
    if (this.userClosed) return;
    if (
      code === 4401 &&
      reason === TOKEN_EXPIRED &&
      typeof this.opts.token === 'function' &&
      this.opts.reconnect !== false
    ) {
      // The server ended a live connection because its token expired: reconnect (with backoff,
      // should the provider keep handing out stale tokens) with a fresh one; what was in flight
      // is sent again. Any other 4401 (a token refused) ends the channel.
      const err = new ConnectionError(`Connection closed (4401 ${reason})`, { code, reason });
      this.sink.dropped(err);
      this.scheduleReconnect(err);
      return;
    }
    if (code === 4401) {
      const err = ASAPError.unauthorized(reason || 'Authentication required');
      this.end(err);
      this.emit('gaveUp', { attempts: this.attempts, error: err });
      return;
    }
    if (!wasOpen) this.opts.health?.recordFailure();
    // A connection that never opened ends with what the socket reported (HTTP status, refusal, TLS).
    const err = new ConnectionError(
      !wasOpen && failure !== undefined
        ? failure.message
        : `Connection closed (${code}${reason ? ` ${reason}` : ''})`,
      { code, reason },
    );
    if (failure !== undefined) err.cause = failure.cause ?? failure;
    if (!this.everOpened || this.opts.reconnect === false) {
      this.end(err);
      return;
    }
    this.sink.dropped(err);
    this.scheduleReconnect(err);
  }

  private scheduleReconnect(err: Error): void {
    const max = this.opts.maxReconnectAttempts ?? Number.POSITIVE_INFINITY;
    if (this.attempts >= max) {
      this.setState('closed');
      this.emit('gaveUp', { attempts: this.attempts, error: err });
      this.end(
        new ConnectionError(`Gave up reconnecting after ${this.attempts} attempts`, { cause: err.message }),
      );
      return;
    }
    const delayMs = backoffDelay(this.attempts, this.opts.backoff);
    this.attempts++;
    this.setState('reconnecting');
    this.emit('reconnecting', { attempt: this.attempts, delayMs });
    this.reconnectTimer = this.timers.setTimeout(
      () => {
        this.reconnectTimer = undefined;
        if (!this.userClosed) this.open();
      },
      delayMs,
      true,
    );
  }

  /** Ends the channel: connect waiters and the owner get `err`; every timer stops. */
  private end(err: Error): void {
    this.setState('closed');
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
    this.held.length = 0;
    this.stopTimer('heartbeatTimer');
    this.stopTimer('connectTimer');
    this.stopTimer('reconnectTimer');
    this.sink.ended(err);
  }

  private startHeartbeat(): void {
    const interval = this.opts.heartbeatIntervalMs ?? 30_000;
    if (interval <= 0) return;
    this.heartbeatTimer = this.timers.setInterval(() => {
      const silent = this.timers.now() - this.lastSeen;
      if (silent > 3 * interval) {
        this.logger.warn({ silent_ms: silent }, 'server silent for 3 heartbeat intervals; reconnecting');
        this.abandon('Heartbeat timeout');
      } else if (silent > interval && this.isOpen) {
        this.socket!.send(PING_FRAME);
      }
    }, interval);
  }

  private stopTimer(name: 'heartbeatTimer' | 'connectTimer' | 'reconnectTimer'): void {
    this[name]?.cancel();
    this[name] = undefined;
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
