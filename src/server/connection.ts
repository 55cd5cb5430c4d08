import type { WebSocket } from 'ws';
import type { AckOptions } from '../core/ack-tracker.js';
import type { SendResult } from '../core/channel.js';
import { type Corkable, holdWrite } from '../core/cork.js';
import { type Answer, isPromiseLike, type Session } from '../core/dispatcher.js';
import { boundAgents, principalId } from '../core/identity.js';
import type { Instrumentation } from '../core/instrumentation.js';
import type { Logger } from '../core/logger.js';
import { engineError } from '../core/opaque-error.js';
import { Peer } from '../core/peer.js';
import type { SessionEntry } from '../core/session-store.js';
import type { Timer, Timers } from '../core/timers.js';
import { TokenBucket } from '../core/token-bucket.js';
import { createEnvelope, type Envelope } from '../protocol/envelope.js';
import { ASAPError, ConnectionError } from '../protocol/errors.js';
import {
  type ErrorFrame,
  encodeError,
  type Frame,
  METHOD_RESUME,
  PING_FRAME,
  type SuccessFrame,
} from '../protocol/jsonrpc.js';
import type { MessageAck } from '../protocol/payloads.js';
import type { Drain } from './drain.js';
import type { PushTarget } from './push-adapter.js';
import type { SessionBinding } from './sessions.js';

/** Per-connection bounds (asap-wire.md §10). */
export interface ConnectionLimits {
  /** Requests in flight before the connection stops reading. */
  readonly maxInFlight: number;
  /** Send-buffer size at which the connection is congested. */
  readonly highWaterMark: number;
  /** Send-buffer size that, held for `slowConsumerGraceMs`, closes the connection (slow consumers). */
  readonly sendHardCap: number;
  readonly slowConsumerGraceMs: number;
  /** Messages per second, also the burst; 0: no limit. */
  readonly rateLimit: number;
}

/** What a connection needs from the server around it, and nothing more. */
export interface ConnectionDeps {
  readonly logger: Logger;
  readonly timers: Timers;
  readonly limits: ConnectionLimits;
  readonly drain: Drain;
  readonly pushForm: 'notification' | 'result';
  /** Acks and retransmission of pushes that require one (§6). */
  readonly ack: (AckOptions & { checkIntervalMs?: number }) | undefined;
  readonly instrumentation?: Instrumentation;
  /** The dispatcher: a frame in, its answer out. */
  dispatch(frame: Frame, session: Session): Answer;
  /** Sessions (asap-wire.md §12); undefined: `asap.resume` is ignored. */
  readonly sessions: SessionBinding | undefined;
  /** The connection now speaks as `urn` (index it for push). */
  identify(connection: Connection, urn: string): void;
  closed(connection: Connection, code: number, reason: string): void;
  /** Its socket failed, or the engine failed around one of its requests (already logged). */
  failed?(connection: Connection, err: unknown, source: 'socket' | 'engine', errorId?: string): void;
}

/** A snapshot of one connection, as `server.connections` lists it. */
export interface ConnectionInfo {
  id: number;
  remoteAddress: string | undefined;
  agentUrn: string | undefined;
  connectedAt: Date;
  inFlight: number;
}

let nextConnectionId = 1;

const OWNER = Symbol('asap.connection');
type Owned = WebSocket & { [OWNER]: Connection };

const owner = (socket: WebSocket): Connection => (socket as Owned)[OWNER];
function onMessage(this: WebSocket, data: Buffer | ArrayBuffer | Buffer[]): void {
  owner(this).receive(data);
}
function onPong(this: WebSocket): void {
  owner(this).touch();
}
function onError(this: WebSocket, err: Error): void {
  owner(this).socketError(err);
}
function onClose(this: WebSocket, code: number, reason: Buffer): void {
  owner(this).onClose(code, reason.toString());
}

/**
 * Connections whose socket is corked until the end of this tick (see core/cork.ts): the replies to
 * the frames of one read leave in one write. One nextTick for all of them, so nothing per
 * connection is allocated.
 */
const corked: Connection[] = [];
function uncorkAll(): void {
  for (const c of corked) c.uncork();
  corked.length = 0;
}

/** Why reading from a socket is paused (bits): the in-flight cap, or a send buffer over the mark. */
const IN_FLIGHT = 1;
const BACKPRESSURE = 2;

/** A send buffer above the high-water mark: writers wait on `drained`; `progress` says the peer read something. */
interface Congestion {
  drained: Promise<void>;
  resolve: () => void;
  timer: Timer;
  progress: boolean;
  overCap: boolean;
}

/**
 * One WebSocket peer on the server: its bounds (rate, in-flight cap,
 * backpressure, slow consumers) and the channel under its {@link Peer}, which
 * routes what arrives and owns push acks and reverse requests. It is the
 * dispatcher's Session.
 */
export class Connection implements Session, PushTarget {
  readonly transport = 'websocket' as const;
  readonly interactive = true;
  readonly id = nextConnectionId++;
  /** Connection time in ms since the epoch (a number, not a Date: thousands of idle connections add up). */
  private readonly openedAt: number;
  agentUrn: string | undefined;
  /** Last time anything arrived (ms since epoch); the server's sweep reads it. */
  lastSeen: number;
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
  /** Made on first use: an idle connection keeps none. */
  private _peer: Peer | undefined;
  private readonly limits: ConnectionLimits;
  private expiry: Timer | undefined;
  /** Set once the client asked for a session (only its first `asap.resume` counts). */
  private resumed = false;
  /** The session this connection holds (asap-wire.md §12), once the client asked for one. */
  sessionId: string | undefined;
  private unsubscribeSession: (() => void) | undefined;

  /** Writes held in `wire` since it was corked this tick (0: not corked). */
  private corkedWrites = 0;

  /**
   * @param wire the TCP socket under `socket`, when the server has it (the upgrade's): writes made
   *   in one tick are batched into one (see `write`).
   */
  constructor(
    readonly socket: WebSocket,
    readonly remoteAddress: string | undefined,
    readonly principal: unknown,
    private readonly deps: ConnectionDeps,
    private readonly wire?: Corkable,
  ) {
    this.limits = deps.limits;
    this.openedAt = this.lastSeen = deps.timers.now();
    this.bucket =
      this.limits.rateLimit > 0
        ? new TokenBucket(this.limits.rateLimit, this.limits.rateLimit, deps.timers)
        : undefined;
    this.callerId = principalId(principal);
    this.agents = boundAgents(principal);
    // Shared listeners (no closures per connection): idle connections are many, and each byte counts.
    (socket as Owned)[OWNER] = this;
    socket.on('message', onMessage);
    socket.on('pong', onPong);
    socket.on('error', onError);
    socket.once('close', onClose);
    const expiresAt = (principal as { expiresAt?: unknown } | null)?.expiresAt;
    if (typeof expiresAt === 'number') {
      // The credential ends: so does the connection (the client reconnects with a fresh one).
      this.expiry = deps.timers.setTimeout(
        () => this.close(4401, 'Token expired'),
        Math.max(0, expiresAt - this.openedAt),
      );
    }
  }

  private get peer(): Peer {
    this._peer ??= new Peer(this, {
      idPrefix: 'srv-req-',
      inbound: (frame) => this.admit(frame),
      gate: this.bucket === undefined ? undefined : (frame) => this.withinRate(frame),
      pushForm: this.deps.pushForm,
      ack: this.deps.ack,
      resolutionMs: this.deps.ack?.checkIntervalMs ?? 1000,
      timers: this.deps.timers,
      logger: this.deps.logger,
      instrumentation: this.deps.instrumentation,
    });
    return this._peer;
  }

  /**
   * True while this server stopped reading from the connection (in-flight cap, congestion):
   * its pongs cannot arrive then, so its silence is ours, not a sign that it died.
   */
  get readingPaused(): boolean {
    return this.blocked !== 0;
  }

  /** @internal Something arrived (a message or a pong). */
  touch(): void {
    this.lastSeen = this.deps.timers.now();
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
    this.lastSeen = this.deps.timers.now();
    const text = Array.isArray(data)
      ? Buffer.concat(data).toString('utf8')
      : Buffer.isBuffer(data)
        ? data.toString('utf8')
        : Buffer.from(data).toString('utf8');
    this.peer.receive(text);
  }

  /** Every message but heartbeats counts against the rate limit. */
  private withinRate(frame: Frame): boolean {
    if (this.bucket!.take()) return true;
    this.refuseRateLimited(frame);
    return false;
  }

  /** What the peer hands on (requests, envelopes, batches): run now, or wait in order for a free slot. */
  private admit(frame: Frame): void {
    if (frame.kind === 'notification' && frame.method === METHOD_RESUME) {
      // One session per connection (asap-wire.md §12: the first frame): a repeat is ignored, so a
      // peer cannot open sessions in a loop.
      if (this.resumed) {
        this.deps.logger.debug({ conn: this.id }, 'asap.resume repeated on a connection: ignored');
        return;
      }
      this.resumed = true;
      void this.deps.sessions?.resume(this, frame.params);
      return;
    }
    if (this.inFlight >= this.limits.maxInFlight) {
      // Over the cap: wait in order for a free slot (nothing is dropped or refused).
      this.backlog ??= [];
      this.backlog.push(frame);
      return;
    }
    this.dispatch(frame);
  }

  private dispatch(frame: Frame): void {
    if (this.deps.drain.draining && (frame.kind === 'request' || frame.kind === 'batch')) {
      const err = ASAPError.resourceExhausted('Server shutting down', {
        retry_after_ms: this.deps.drain.timeoutMs,
      });
      this.write(encodeError(frame.kind === 'request' ? frame.id : null, err));
      return;
    }
    let answer: Answer;
    try {
      answer = this.deps.dispatch(frame, this);
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
    const done = this.deps.drain.begin();
    // Stop reading this socket until a slot frees; nothing is dropped or refused.
    if (this.inFlight >= this.limits.maxInFlight) this.block(IN_FLIGHT);
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
    const e = engineError(this.deps.logger, err, { conn: this.id });
    // A failure the caller was not meant to see (an ASAPError a store chose is an answer, not one).
    if (e !== err) this.deps.failed?.(this, err, 'engine', (e.data as { error_id?: string }).error_id);
    if (frame.kind === 'request') void this.write(encodeError(frame.id, e));
  }

  private settle(done: () => void): void {
    this.inFlight--;
    done();
    const backlog = this.backlog;
    while (backlog !== undefined && backlog.length > 0 && this.inFlight < this.limits.maxInFlight)
      this.dispatch(backlog.shift()!);
    if (this.limited) {
      if (this.inFlight === 0) this.close(1008, 'Rate limit exceeded');
    } else if (this.inFlight < this.limits.maxInFlight) {
      this.unblock(IN_FLIGHT);
    }
  }

  private refuseRateLimited(frame: Frame): void {
    const id = frame.kind === 'request' ? frame.id : frame.kind === 'invalid' ? frame.id : null;
    const err = ASAPError.resourceExhausted('Rate limit exceeded', {
      limit_per_second: this.limits.rateLimit,
    });
    this.deps.instrumentation?.rejected?.('rate_limit', err.code);
    this.deps.logger.warn({ conn: this.id, agent: this.agentUrn }, 'rate limit exceeded; closing');
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
    if (this.wire !== undefined && holdWrite(this.wire, this.corkedWrites++)) {
      if (corked.push(this) === 1) process.nextTick(uncorkAll);
    }
    if (this.congestion === undefined && socket.bufferedAmount + text.length < this.limits.highWaterMark) {
      socket.send(text);
      return;
    }
    // The callback says when this frame left the buffer: the peer is reading.
    socket.send(text, this.flushed);
    const c = this.congestion ?? this.congest();
    if (socket.bufferedAmount > this.limits.sendHardCap) c.overCap = true;
    return c.drained;
  }

  /** @internal Sends what was written since the cork (at the end of the tick). */
  uncork(): void {
    this.corkedWrites = 0;
    this.wire!.uncork();
  }

  private congest(): Congestion {
    let resolve!: () => void;
    const drained = new Promise<void>((r) => {
      resolve = r;
    });
    const timer = this.deps.timers.setTimeout(this.checkStall, this.limits.slowConsumerGraceMs);
    const c: Congestion = { drained, resolve, timer, progress: false, overCap: false };
    this.congestion = c;
    this.block(BACKPRESSURE);
    return c;
  }

  private decongest(): void {
    const c = this.congestion;
    if (c === undefined) return;
    this.congestion = undefined;
    c.timer.cancel();
    c.resolve();
    this.unblock(BACKPRESSURE);
  }

  /** Send callback of frames written while congested (one function per connection, not per frame). */
  private readonly flushed = (): void => {
    const c = this.congestion;
    if (c === undefined) return;
    c.progress = true;
    const buffered = this.socket.bufferedAmount;
    if (buffered < this.limits.highWaterMark || this.socket.readyState !== 1) this.decongest();
    else c.overCap = buffered > this.limits.sendHardCap;
  };

  /** Runs every grace period while congested: no progress, or over the cap all along, closes. */
  private readonly checkStall = (): void => {
    const c = this.congestion;
    if (c === undefined) return;
    const overCap = c.overCap && this.socket.bufferedAmount > this.limits.sendHardCap;
    if (!c.progress || overCap) {
      this.deps.logger.warn(
        { conn: this.id, agent: this.agentUrn, buffered: this.socket.bufferedAmount, stalled: !c.progress },
        'slow consumer; closing',
      );
      this.refusing = true;
      // Still not reading: what the peer sent meanwhile is dropped with the socket, not parsed.
      // The close frame waits behind the unsent data, and the peer may never read it: do not
      // wait for ws's 30 s close timeout either.
      this.socket.close(1008, 'Slow consumer');
      this.deps.timers.setTimeout(() => this.terminate(), Math.min(this.limits.slowConsumerGraceMs, 5000));
      return;
    }
    c.progress = false;
    c.overCap = this.socket.bufferedAmount > this.limits.sendHardCap;
    c.timer = this.deps.timers.setTimeout(this.checkStall, this.limits.slowConsumerGraceMs);
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
    this.deps.identify(this, urn);
    if (this.sessionId !== undefined) this.deps.sessions?.identified(this.sessionId, urn);
  }

  /** An ack in a batch (the peer routes the others itself). */
  onAck(envelope: Envelope<MessageAck>): void {
    this.peer.acknowledge(envelope);
  }

  /** An answer in a batch: to one of our reverse requests, or dropped. */
  onResponse(frame: SuccessFrame | ErrorFrame): void {
    if (!this.peer.response(frame))
      this.deps.logger.debug({ conn: this.id, id: frame.id }, 'response to no pending request dropped');
  }

  /**
   * Sends an envelope as server push, in the form the server is configured for. One that
   * requires an ack (the types §6 lists always do) settles on the ack, retransmitted until then.
   */
  push(envelope: Envelope<object>): Promise<void> {
    // With a session, the push is kept in it first (even while this connection is closing: the
    // resume replays it); the session's subscription writes it with its seq.
    if (this.sessionId !== undefined)
      return this.deps.sessions!.push(this.sessionId, this.peer.withAck(envelope));
    if (!this.isOpen) return Promise.reject(new ConnectionError('Connection is closed'));
    this.deps.instrumentation?.pushSent?.(false);
    return this.peer.send(this.peer.withAck(envelope));
  }

  /**
   * @internal Writes one push kept in this connection's session, with its seq (§12); `replayed`
   * when a resume sends it again.
   */
  deliver(entry: SessionEntry, replayed = false): void {
    const envelope = JSON.parse(entry.envelope) as Envelope<object>;
    this.deps.instrumentation?.pushSent?.(replayed);
    this.peer.send(envelope, entry.seq).catch((err: unknown) => {
      this.deps.logger.debug(
        { conn: this.id, seq: entry.seq, err: (err as Error).message },
        'session push not delivered',
      );
    });
  }

  /** @internal */
  adopt(urns: readonly string[]): void {
    for (const urn of urns) {
      if (this.agentUrn === undefined) this.agentUrn = urn;
      if (this.urns.includes(urn)) continue;
      this.urns.push(urn);
      this.deps.identify(this, urn);
    }
  }

  /** @internal */
  bindSession(sessionId: string, unsubscribe: () => void): void {
    this.unsubscribeSession?.();
    this.sessionId = sessionId;
    this.unsubscribeSession = unsubscribe;
    // URNs it spoke for before asking for the session.
    for (const urn of this.urns) this.deps.sessions?.identified(sessionId, urn);
  }

  /**
   * Sends a reverse request (an `asap.send` with an id) and resolves with the
   * client's response envelope, bound to the request by `correlation_id`.
   */
  request(
    init: Envelope<object> | Parameters<typeof createEnvelope>[0],
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<Envelope<object>> {
    const envelope = 'id' in init && 'timestamp' in init ? (init as Envelope<object>) : createEnvelope(init);
    if (!this.isOpen) return Promise.reject(new ConnectionError('Connection is closed'));
    return this.peer.request(envelope, opts);
  }

  // ---- the Peer's channel ----

  /** @internal */
  get maxHeld(): number {
    return 0;
  }

  /** @internal */
  send(text: string): SendResult {
    if (this.socket.readyState !== 1) return 'closed';
    void this.write(text);
    return 'written';
  }

  /** @internal */
  drained(): Promise<void> | undefined {
    return this.congestion?.drained;
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
    this.deps.logger.debug({ conn: this.id, err: err.message }, 'websocket error');
    this.deps.failed?.(this, err, 'socket');
  }

  /** @internal */
  onClose(code: number, reason: string): void {
    this.decongest();
    this.expiry?.cancel();
    this._peer?.close(new ConnectionError(`Connection closed (${code}${reason ? ` ${reason}` : ''})`));
    if (this.sessionId !== undefined) {
      this.unsubscribeSession?.();
      this.deps.sessions?.closed(this, this.sessionId);
    }
    this.deps.closed(this, code, reason);
  }
}
