import type { WebSocket } from 'ws';
import { type Answer, isPromiseLike, type Session } from '../core/dispatcher.js';
import { boundAgents, principalId } from '../core/identity.js';
import type { Logger } from '../core/logger.js';
import { opaqueError } from '../core/opaque-error.js';
import { TokenBucket } from '../core/token-bucket.js';
import { createEnvelope, type Envelope } from '../protocol/envelope.js';
import { ASAPError, ConnectionError, ProtocolError, RequestTimeoutError } from '../protocol/errors.js';
import {
  decodeFrame,
  type ErrorFrame,
  encodeEnvelopeRequest,
  encodeEnvelopeResult,
  encodeError,
  encodeNotification,
  type Frame,
  METHOD_SEND,
  PING_FRAME,
  PONG_FRAME,
  type SuccessFrame,
} from '../protocol/jsonrpc.js';
import { ACKED_TYPES, type MessageAck, normalizePayloadType } from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';

/** What a connection needs from the server that owns it. */
export interface ConnectionHost {
  readonly logger: Logger;
  readonly maxInFlight: number;
  readonly highWaterMark: number;
  /** Send-buffer size that, held for `slowConsumerGraceMs`, closes the connection (§10 slow consumers). */
  readonly sendHardCap: number;
  readonly slowConsumerGraceMs: number;
  readonly pushForm: 'notification' | 'result';
  readonly draining: boolean;
  readonly drainRetryAfterMs: number;
  readonly rateLimit: number;
  handle(frame: Frame, session: Session): Answer;
  begin(): () => void;
  identify(connection: Connection, agentUrn: string): void;
  onAck(connection: Connection, envelope: Envelope<MessageAck>): void;
  trackPush(connection: Connection, envelopeId: string, text: string): Promise<void>;
  closed(connection: Connection): void;
}

/** A snapshot of one connection, as `server.connections` lists it. */
export interface ConnectionInfo {
  id: number;
  remoteAddress: string | undefined;
  agentUrn: string | undefined;
  connectedAt: Date;
  inFlight: number;
}

interface PendingReverse {
  envelopeId: string;
  resolve: (env: Envelope<object>) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

let nextConnectionId = 1;

const OWNER = Symbol('asap.connection');
type Owned = WebSocket & { [OWNER]: Connection };

const owner = (socket: WebSocket): Connection => (socket as Owned)[OWNER];
function onMessage(this: WebSocket, data: Buffer | ArrayBuffer | Buffer[]): void {
  owner(this).receive(data);
}
function onPong(this: WebSocket): void {
  owner(this).lastSeen = Date.now();
}
function onError(this: WebSocket, err: Error): void {
  owner(this).socketError(err);
}
function onClose(this: WebSocket, code: number, reason: Buffer): void {
  owner(this).onClose(code, reason.toString());
}

/** Why reading from a socket is paused (bits): the in-flight cap, or a send buffer over the mark. */
const IN_FLIGHT = 1;
const BACKPRESSURE = 2;

/** A send buffer above the high-water mark: writers wait on `drained`; `progress` says the peer read something. */
interface Congestion {
  drained: Promise<void>;
  resolve: () => void;
  timer: ReturnType<typeof setTimeout>;
  progress: boolean;
  overCap: boolean;
}

/** One WebSocket peer: framing, limits, backpressure, push and reverse requests. It is the dispatcher's Session. */
export class Connection implements Session {
  readonly transport = 'websocket' as const;
  readonly interactive = true;
  readonly id = nextConnectionId++;
  /** Connection time in ms since the epoch (a number, not a Date: thousands of idle connections add up). */
  private readonly openedAt = Date.now();
  agentUrn: string | undefined;
  /** Last time anything arrived (ms since epoch); the server's sweep reads it. */
  lastSeen = Date.now();
  /** When the server started closing it as stale (0 = not closing). */
  closingSince = 0;
  inFlight = 0;
  /** Every URN this connection is indexed under for push (§10: only URNs it may speak for, when bound). */
  readonly urns: string[] = [];
  readonly callerId: string;
  readonly agents: ReadonlySet<string> | undefined;
  private blocked = 0;
  private congestion: Congestion | undefined;
  /** Frames ws delivered after the in-flight cap was reached (it emits what it had buffered before the pause). */
  private backlog: Frame[] | undefined;
  /** Set once the rate limit was exceeded: nothing more is read, and the close waits for in-flight answers. */
  private limited = false;
  /** Set once the server closes it for a policy reason: frames still arriving are ignored. */
  private refusing = false;
  private readonly bucket: TokenBucket | undefined;
  /** Reverse requests awaiting the client's answer; made on first use. */
  private reverse: Map<string, PendingReverse> | undefined;
  private nextReverseId = 1;

  constructor(
    readonly socket: WebSocket,
    readonly remoteAddress: string | undefined,
    readonly principal: unknown,
    private readonly host: ConnectionHost,
  ) {
    this.bucket = host.rateLimit > 0 ? new TokenBucket(host.rateLimit, host.rateLimit) : undefined;
    this.callerId = principalId(principal);
    this.agents = boundAgents(principal);
    // Shared listeners (no closures per connection): idle connections are many, and each byte counts.
    (socket as Owned)[OWNER] = this;
    socket.on('message', onMessage);
    socket.on('pong', onPong);
    socket.on('error', onError);
    socket.once('close', onClose);
  }

  get info(): ConnectionInfo {
    return {
      id: this.id,
      remoteAddress: this.remoteAddress,
      agentUrn: this.agentUrn,
      connectedAt: new Date(this.openedAt),
      inFlight: this.inFlight,
    };
  }

  get isOpen(): boolean {
    return this.socket.readyState === 1;
  }

  /** Closing or closed: the dispatcher stops streams and pushes to it. */
  get closed(): boolean {
    return this.socket.readyState > 1;
  }

  /** @internal */
  receive(data: Buffer | ArrayBuffer | Buffer[]): void {
    if (this.limited || this.refusing) return;
    this.lastSeen = Date.now();
    const text = Array.isArray(data)
      ? Buffer.concat(data).toString('utf8')
      : Buffer.isBuffer(data)
        ? data.toString('utf8')
        : Buffer.from(data).toString('utf8');
    if (text === PING_FRAME) {
      void this.write(PONG_FRAME);
      return;
    }
    if (text === PONG_FRAME) return;
    const frame = decodeFrame(text);
    if (frame.kind === 'heartbeat') {
      if (frame.type === 'ping') void this.write(PONG_FRAME);
      return;
    }
    if (this.bucket !== undefined && !this.bucket.take()) {
      this.refuseRateLimited(frame);
      return;
    }
    if (this.inFlight >= this.host.maxInFlight) {
      // Over the cap: wait in order for a free slot (nothing is dropped or refused).
      this.backlog ??= [];
      this.backlog.push(frame);
      return;
    }
    this.dispatch(frame);
  }

  private dispatch(frame: Frame): void {
    if (this.host.draining && (frame.kind === 'request' || frame.kind === 'batch')) {
      const err = ASAPError.resourceExhausted('Server shutting down', {
        retry_after_ms: this.host.drainRetryAfterMs,
      });
      this.write(encodeError(frame.kind === 'request' ? frame.id : null, err));
      return;
    }
    let answer: Answer;
    try {
      answer = this.host.handle(frame, this);
    } catch (err) {
      this.dispatchFailed(frame, err);
      return;
    }
    if (!isPromiseLike(answer)) {
      // Answered at once (the common case): nothing to count, nothing to wait for.
      if (answer !== undefined) this.write(answer);
      return;
    }
    this.inFlight++;
    const done = this.host.begin();
    // Stop reading this socket until a slot frees; nothing is dropped or refused.
    if (this.inFlight >= this.host.maxInFlight) this.block(IN_FLIGHT);
    answer.then(
      (text) => {
        if (text !== undefined) this.write(text);
        this.settle(done);
      },
      (err: unknown) => {
        this.dispatchFailed(frame, err);
        this.settle(done);
      },
    );
  }

  private dispatchFailed(frame: Frame, err: unknown): void {
    // (e.g. a shared dedupe store failed) A request must still get an answer, and never the cause.
    const e = opaqueError(this.host.logger, err, { conn: this.id });
    if (frame.kind === 'request') void this.write(encodeError(frame.id, e));
  }

  private settle(done: () => void): void {
    this.inFlight--;
    done();
    const backlog = this.backlog;
    while (backlog !== undefined && backlog.length > 0 && this.inFlight < this.host.maxInFlight)
      this.dispatch(backlog.shift()!);
    if (this.limited) {
      if (this.inFlight === 0) this.close(1008, 'Rate limit exceeded');
    } else if (this.inFlight < this.host.maxInFlight) {
      this.unblock(IN_FLIGHT);
    }
  }

  private refuseRateLimited(frame: Frame): void {
    const id = frame.kind === 'request' ? frame.id : frame.kind === 'invalid' ? frame.id : null;
    const err = ASAPError.resourceExhausted('Rate limit exceeded', { limit_per_second: this.host.rateLimit });
    this.host.logger.warn({ conn: this.id, agent: this.agentUrn }, 'rate limit exceeded; closing');
    this.write(encodeError(id, err));
    this.limited = true;
    // Requests accepted before the overflow are still answered (see settle); then the connection closes.
    if (this.inFlight === 0) this.close(1008, 'Rate limit exceeded');
  }

  /**
   * Sends one encoded message: every frame (replies, acks, pongs, chunks, pushes) goes through
   * here, so the send buffer bounds them all (§10 slow consumers). Below the high-water mark it
   * returns nothing. At or above it the connection is congested: reading stops (no new work
   * from this peer), and the returned promise resolves once the buffer is back under the mark,
   * so streams and push loops wait. A peer that reads nothing for the grace period, or keeps
   * the buffer over the hard cap that long, is closed with 1008 `Slow consumer`.
   */
  write(text: string): void | Promise<void> {
    const socket = this.socket;
    if (socket.readyState !== 1) return;
    if (this.congestion === undefined && socket.bufferedAmount + text.length < this.host.highWaterMark) {
      socket.send(text);
      return;
    }
    // The callback says when this frame left the buffer: the peer is reading.
    socket.send(text, this.flushed);
    const c = this.congestion ?? this.congest();
    if (socket.bufferedAmount > this.host.sendHardCap) c.overCap = true;
    return c.drained;
  }

  private congest(): Congestion {
    let resolve!: () => void;
    const drained = new Promise<void>((r) => {
      resolve = r;
    });
    const timer = setTimeout(this.checkStall, this.host.slowConsumerGraceMs);
    const c: Congestion = { drained, resolve, timer, progress: false, overCap: false };
    this.congestion = c;
    this.block(BACKPRESSURE);
    return c;
  }

  private decongest(): void {
    const c = this.congestion;
    if (c === undefined) return;
    this.congestion = undefined;
    clearTimeout(c.timer);
    c.resolve();
    this.unblock(BACKPRESSURE);
  }

  /** Send callback of frames written while congested (one function per connection, not per frame). */
  private readonly flushed = (): void => {
    const c = this.congestion;
    if (c === undefined) return;
    c.progress = true;
    const buffered = this.socket.bufferedAmount;
    if (buffered < this.host.highWaterMark || this.socket.readyState !== 1) this.decongest();
    else c.overCap = buffered > this.host.sendHardCap;
  };

  /** Runs every grace period while congested: no progress, or over the cap all along, closes. */
  private readonly checkStall = (): void => {
    const c = this.congestion;
    if (c === undefined) return;
    const overCap = c.overCap && this.socket.bufferedAmount > this.host.sendHardCap;
    if (!c.progress || overCap) {
      this.host.logger.warn(
        { conn: this.id, agent: this.agentUrn, buffered: this.socket.bufferedAmount, stalled: !c.progress },
        'slow consumer; closing',
      );
      this.refusing = true;
      // Still not reading: what the peer sent meanwhile is dropped with the socket, not parsed.
      // The close frame waits behind the unsent data, and the peer may never read it: do not
      // wait for ws's 30 s close timeout either.
      this.socket.close(1008, 'Slow consumer');
      const t = setTimeout(() => this.terminate(), Math.min(this.host.slowConsumerGraceMs, 5000));
      t.unref?.();
      return;
    }
    c.progress = false;
    c.overCap = this.socket.bufferedAmount > this.host.sendHardCap;
    c.timer = setTimeout(this.checkStall, this.host.slowConsumerGraceMs);
  };

  private block(reason: number): void {
    if (this.blocked === 0) this.socket.pause();
    this.blocked |= reason;
  }

  private unblock(reason: number): void {
    if ((this.blocked & reason) === 0) return;
    this.blocked &= ~reason;
    if (this.blocked === 0) this.socket.resume();
  }

  /**
   * Indexes the connection for push under the senders it speaks as. With a bound principal the
   * dispatcher has already refused other senders, so each of its URNs may be indexed; without
   * one, only the first sender is (a claim nobody can check must not grow without bound).
   */
  onEnvelope(envelope: Envelope<object>): void {
    const urn = envelope.sender;
    if (this.agentUrn === undefined) this.agentUrn = urn;
    else if (this.agents === undefined || this.urns.includes(urn)) return;
    this.urns.push(urn);
    this.host.identify(this, urn);
  }

  onAck(envelope: Envelope<MessageAck>): void {
    this.host.onAck(this, envelope);
  }

  /** Sends an envelope as server push, in the form the server is configured for. */
  push(init: Envelope<object>): Promise<void> {
    if (!this.isOpen) return Promise.reject(new ConnectionError('Connection is closed'));
    const envelope =
      init.requires_ack !== true && ACKED_TYPES.has(normalizePayloadType(init.payload_type))
        ? { ...init, requires_ack: true }
        : init;
    const text =
      this.host.pushForm === 'result'
        ? encodeEnvelopeResult(null, envelope)
        : encodeNotification(METHOD_SEND, { envelope });
    const written = Promise.resolve(this.write(text));
    // A push that requires an ack settles when the client acknowledges it (retransmitted until then).
    if (envelope.requires_ack === true)
      return written.then(() => this.host.trackPush(this, envelope.id, text));
    return written;
  }

  /**
   * Sends a reverse request (an `asap.send` with an id) and resolves with the
   * client's response envelope, bound to the request by `correlation_id`.
   */
  request(
    init: Envelope<object> | Parameters<typeof createEnvelope>[0],
    opts: { timeoutMs?: number } = {},
  ): Promise<Envelope<object>> {
    const envelope = 'id' in init && 'timestamp' in init ? (init as Envelope<object>) : createEnvelope(init);
    if (!this.isOpen) return Promise.reject(new ConnectionError('Connection is closed'));
    const id = `srv-req-${this.nextReverseId++}`;
    return new Promise((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const timer = setTimeout(() => {
        this.reverse?.delete(id);
        reject(new RequestTimeoutError(`No response to ${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.reverse ??= new Map();
      this.reverse.set(id, { envelopeId: envelope.id, resolve, reject, timer });
      void this.write(encodeEnvelopeRequest(METHOD_SEND, envelope, id));
    });
  }

  onResponse(frame: SuccessFrame | ErrorFrame): void {
    const key = frame.id === null ? undefined : String(frame.id);
    const pending = key === undefined ? undefined : this.reverse?.get(key);
    if (pending === undefined) {
      this.host.logger.debug({ conn: this.id, id: frame.id }, 'response to no pending request dropped');
      return;
    }
    this.reverse?.delete(key!);
    clearTimeout(pending.timer);
    if (frame.kind === 'error') {
      pending.reject(ASAPError.fromJSON(frame.error));
      return;
    }
    const env = isJsonObject(frame.result) ? frame.result.envelope : undefined;
    if (!isJsonObject(env) || env.correlation_id !== pending.envelopeId) {
      pending.reject(new ProtocolError('Response does not bind to its request (correlation_id mismatch)'));
      return;
    }
    pending.resolve(env as unknown as Envelope<object>);
  }

  /** Sends an app-level ping (the server's heartbeat). */
  ping(): void {
    void this.write(PING_FRAME);
  }

  close(code = 1000, reason = ''): void {
    if (this.blocked !== 0) {
      // A paused socket would never read the peer's close frame: the close would hang until ws's 30 s timer.
      this.blocked = 0;
      this.socket.resume();
    }
    if (this.socket.readyState === 0 || this.socket.readyState === 1) this.socket.close(code, reason);
  }

  terminate(): void {
    this.socket.terminate();
  }

  /** @internal */
  socketError(err: Error): void {
    this.host.logger.debug({ conn: this.id, err: err.message }, 'websocket error');
  }

  /** @internal */
  onClose(code: number, reason: string): void {
    this.decongest();
    for (const [key, pending] of this.reverse ?? []) {
      clearTimeout(pending.timer);
      pending.reject(new ConnectionError(`Connection closed (${code}${reason ? ` ${reason}` : ''})`));
      this.reverse?.delete(key);
    }
    this.host.closed(this);
  }
}
