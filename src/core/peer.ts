import { checkEnvelope, type Envelope, validateEnvelope } from '../protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ErrorCode,
  type JsonRpcErrorObject,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
} from '../protocol/errors.js';
import {
  type BatchItem,
  decodeFrame,
  type ErrorFrame,
  encodeEnvelopeRequest,
  encodeEnvelopeResult,
  encodeNotification,
  encodeSuccess,
  envelopeParam,
  type Frame,
  METHOD_ACK,
  METHOD_SEND,
  PING_FRAME,
  PONG_FRAME,
  type SuccessFrame,
} from '../protocol/jsonrpc.js';
import { ACKED_TYPES, type MessageAck, normalizePayloadType, type TaskStream } from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';
import { type AckOptions, AckTracker } from './ack-tracker.js';
import { AsyncQueue } from './async-queue.js';
import type { Channel } from './channel.js';
import type { Instrumentation } from './instrumentation.js';
import { type Logger, silentLogger } from './logger.js';
import { systemTimers, type Timer, type Timers } from './timers.js';

export interface PeerOptions {
  /** Prefix of the JSON-RPC ids of this side's requests (`ws-req-` for a client, `srv-req-` for a server). */
  idPrefix: string;
  /**
   * Frames the peer does not settle itself: requests, envelopes sent to this side (`asap.send`
   * notifications, result frames that are not answers to this side's requests), batches and
   * malformed frames.
   */
  inbound: (frame: Frame) => void;
  /** Sees every decoded frame but heartbeats before it is routed; false drops it (rate limits). */
  gate?: (frame: Frame) => boolean;
  /** Deadline of a request (default 60 s); streams get it anew with every chunk. */
  requestTimeoutMs?: number;
  /** Acks and retransmission of what this side sends (§6); `false` turns them off. */
  ack?: AckOptions | false;
  /** Envelopes sent with `send()` go as `asap.send` notifications (default) or result frames with id null. */
  pushForm?: 'notification' | 'result';
  /** Told of answers and acks (success) and of acks never received (failure): a circuit breaker. */
  health?: { recordSuccess(): void; recordFailure(): void };
  /** Granularity of the one timer that enforces deadlines and ack waits (default 100 ms). */
  resolutionMs?: number;
  /**
   * Told when a request that was already written is aborted by its signal (after it failed
   * locally): the owner may tell the other side (a WebSocket client sends a TaskCancel).
   */
  onAbort?: (envelope: Envelope<object>) => void;
  timers?: Timers;
  logger?: Logger;
  instrumentation?: Instrumentation;
}

export interface PeerRequestOptions {
  /** Deadline of this request (overrides `requestTimeoutMs`). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A request of this side awaiting its answer. */
interface Pending {
  rpcId: string;
  envelope: Envelope<object>;
  text: string;
  /** Written on the channel's current connection. */
  sent: boolean;
  /** Held by the channel until it opens. */
  held: boolean;
  settled: boolean;
  deadline: number;
  timeoutMs: number;
  resolve: (env: Envelope<object>) => void;
  reject: (err: Error) => void;
  onChunk?: (env: Envelope<TaskStream>) => void;
  detach?: () => void;
}

const NO_OPTIONS: PeerRequestOptions = Object.freeze({});

/**
 * One end of an ASAP conversation, written once for both sides (the
 * vscode-jsonrpc shape) over a {@link Channel}: request correlation and
 * deadlines, the binding check of every answer (`correlation_id`), acks and
 * retransmission of what it sends, and routing of what arrives (answers,
 * errors, acks and heartbeats here; requests and envelopes to `inbound`).
 * The server's connections and the WebSocket client each own one.
 */
export class Peer {
  private readonly opts: PeerOptions;
  private readonly channel: Channel;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private readonly acks: AckTracker | undefined;
  /** Made on first use: a server connection that never sends a request or a push keeps none. */
  private pending: Map<string, Pending> | undefined;
  private ackWaiters: Map<string, { resolve: () => void; reject: (e: Error) => void }> | undefined;
  private nextId = 1;
  private sweepTimer: Timer | undefined;
  private closedWith: Error | undefined;
  private _lastActivity: number;

  constructor(channel: Channel, opts: PeerOptions) {
    this.channel = channel;
    this.opts = opts;
    this.timers = opts.timers ?? systemTimers;
    this.logger = opts.logger ?? silentLogger;
    this.acks = opts.ack === false ? undefined : new AckTracker(opts.ack, this.timers);
    this._lastActivity = this.timers.now();
  }

  /** When a request of this side last started or ended (timers.now()); idle pools read it. */
  get lastActivity(): number {
    return this._lastActivity;
  }

  /** Requests awaiting an answer (held ones included). */
  get inFlight(): number {
    return this.pending?.size ?? 0;
  }

  /** Envelopes sent with `requires_ack` and not yet acknowledged. */
  get unacknowledged(): number {
    return this.acks?.size ?? 0;
  }

  /** The envelope of the pending request whose envelope id is `id`, if any. */
  pendingEnvelope(id: string): Envelope<object> | undefined {
    for (const p of this.pending?.values() ?? []) if (p.envelope.id === id) return p.envelope;
    return undefined;
  }

  /** With acks on, envelopes of the types §6 lists always ask for one. */
  withAck<E extends Envelope<object>>(env: E): E {
    return env.requires_ack !== true &&
      this.acks !== undefined &&
      ACKED_TYPES.has(normalizePayloadType(env.payload_type))
      ? { ...env, requires_ack: true }
      : env;
  }

  // ---- outbound ----

  /** Sends a request and resolves with the answer envelope, checked to bind to it by `correlation_id`. */
  request(envelope: Envelope<object>, opts: PeerRequestOptions = NO_OPTIONS): Promise<Envelope<object>> {
    return new Promise((resolve, reject) => {
      this.start(envelope, opts, resolve, reject);
    });
  }

  /** Sends a request whose answer is streamed; iterates TaskStream envelopes up to the final one. */
  stream(
    envelope: Envelope<object>,
    opts: PeerRequestOptions = NO_OPTIONS,
  ): AsyncIterable<Envelope<TaskStream>> {
    let pending: Pending | undefined;
    const chunks = new AsyncQueue<Envelope<TaskStream>>(() => {
      if (pending !== undefined) this.settle(pending);
    });
    pending = this.start(
      envelope,
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

  /**
   * Sends an envelope that expects no answer (a notification, or a push in the
   * configured form). With `requires_ack` it resolves once acknowledged and is
   * retransmitted until then; otherwise once written (after the send buffer
   * drains, when it is over its mark) or held. `seq`: its place in the receiver's session
   * (asap-wire.md §12), sent next to the envelope.
   */
  send(envelope: Envelope<object>, seq?: number): Promise<void> {
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    const text = encodePush(envelope, this.opts.pushForm, seq);
    const sent = this.channel.send(text);
    if (sent === 'full' || sent === 'closed') return Promise.reject(this.unsendable(sent));
    const written = sent === 'written' ? this.channel.drained() : undefined;
    if (envelope.requires_ack !== true || this.acks === undefined) return written ?? Promise.resolve();
    const acks = this.acks;
    const tracked = new Promise<void>((resolve, reject) => {
      const id = envelope.id;
      acks.track(
        id,
        () => {
          this.opts.instrumentation?.retransmitted?.(id);
          this.channel.send(text);
        },
        (err) => {
          this.ackWaiters?.delete(id);
          this.opts.health?.recordFailure();
          this.logger.warn({ envelope_id: id }, 'never acknowledged');
          reject(err);
        },
      );
      this.ackWaiters ??= new Map();
      this.ackWaiters.set(id, { resolve, reject });
      this.ensureSweep();
    });
    return written === undefined ? tracked : written.then(() => tracked);
  }

  private start(
    envelope: Envelope<object>,
    opts: PeerRequestOptions,
    resolve: (env: Envelope<object>) => void,
    reject: (err: Error) => void,
    onChunk?: (env: Envelope<TaskStream>) => void,
  ): Pending | undefined {
    const refused = this.closedWith ?? (opts.signal?.aborted ? abortError(opts.signal) : undefined);
    if (refused !== undefined) {
      reject(refused);
      return undefined;
    }
    const rpcId = `${this.opts.idPrefix}${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 60_000;
    const now = this.timers.now();
    this._lastActivity = now;
    const p: Pending = {
      rpcId,
      envelope,
      text: encodeEnvelopeRequest(METHOD_SEND, envelope, rpcId),
      sent: false,
      held: false,
      settled: false,
      deadline: now + timeoutMs,
      timeoutMs,
      resolve,
      reject,
      onChunk,
    };
    // In the table before sending: a channel whose first connection fails at once closes the peer
    // inside send(), and that must fail this request too.
    this.pending ??= new Map();
    this.pending.set(rpcId, p);
    const sent = this.channel.send(p.text, () => {
      p.held = false;
      if (p.settled) return false;
      p.sent = true;
      return true;
    });
    if (sent === 'full' || sent === 'closed') {
      this.fail(p, this.closedWith ?? this.unsendable(sent));
      return undefined;
    }
    if (sent === 'written') p.sent = true;
    else p.held = true;
    if (p.settled) return undefined;
    if (envelope.requires_ack === true && this.acks !== undefined) {
      this.acks.track(
        envelope.id,
        () => {
          if (p.settled) return;
          this.opts.instrumentation?.retransmitted?.(envelope.id);
          this.channel.send(p.text);
        },
        (err) => {
          this.opts.health?.recordFailure();
          this.fail(p, err);
        },
      );
    }
    const signal = opts.signal;
    if (signal !== undefined) {
      const onAbort = () => {
        if (p.settled) return;
        const written = p.sent;
        this.fail(p, abortError(signal));
        if (written) this.opts.onAbort?.(p.envelope);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      p.detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.ensureSweep();
    return p;
  }

  private unsendable(result: 'full' | 'closed'): ASAPError {
    return result === 'full'
      ? ASAPError.resourceExhausted('Send queue is full while disconnected', {
          max_queue: this.channel.maxHeld,
        })
      : new ConnectionError('Connection is closed');
  }

  // ---- inbound ----

  /** Takes one text frame from the channel. */
  receive(text: string): void {
    if (text === PING_FRAME) {
      this.channel.send(PONG_FRAME);
      return;
    }
    if (text === PONG_FRAME) return;
    const frame = decodeFrame(text);
    if (frame.kind === 'heartbeat') {
      if (frame.type === 'ping') this.channel.send(PONG_FRAME);
      return;
    }
    if (this.opts.gate !== undefined && !this.opts.gate(frame)) return;
    if (frame.kind === 'batch') this.opts.inbound(frame);
    else this.route(frame);
  }

  /** Routes one message (a frame, or an item of a batch the owner split). */
  route(frame: BatchItem): void {
    switch (frame.kind) {
      case 'success':
      case 'error':
        if (!this.response(frame)) this.opts.inbound(frame);
        return;
      case 'notification':
        if (frame.method === METHOD_ACK) {
          const v = validateEnvelope(envelopeParam(frame.params));
          if (v.ok && normalizePayloadType(v.envelope.payload_type) === 'messageack')
            this.acknowledge(v.envelope as Envelope<MessageAck>);
          else this.logger.warn({}, 'malformed asap.ack dropped');
          return;
        }
        this.opts.inbound(frame);
        return;
      default:
        this.opts.inbound(frame);
    }
  }

  /**
   * Settles the request an answer is for; false when the answer is for none of this side's
   * requests (a result frame carrying a push, or an answer to the other side's id scheme).
   */
  response(frame: SuccessFrame | ErrorFrame): boolean {
    const id = frame.id;
    if (typeof id !== 'string' || !id.startsWith(this.opts.idPrefix)) return false;
    const p = this.pending?.get(id);
    if (p === undefined) {
      // A late answer to one of this side's requests (timed out, aborted, stream left early).
      this.logger.debug({ id }, 'late response to a settled request dropped');
      return true;
    }
    if (frame.kind === 'error') this.onRemoteError(p, frame.error);
    else this.onResult(p, frame.result);
    return true;
  }

  /** An ack from the other side: settles the send it acknowledges. */
  acknowledge(ack: Envelope<MessageAck>): void {
    const { original_envelope_id: id, status, error } = ack.payload;
    this.opts.instrumentation?.ackReceived?.(status);
    if (this.acks === undefined || !this.acks.ack(id)) return;
    const waiter = this.ackWaiters?.get(id);
    this.ackWaiters?.delete(id);
    if (status === 'rejected') {
      waiter?.reject(
        new ASAPError(ErrorCode.InvalidRequest, error ?? 'Envelope rejected by the peer', {
          envelope_id: id,
        }),
      );
    } else {
      this.opts.health?.recordSuccess();
      waiter?.resolve();
    }
  }

  private onResult(p: Pending, result: unknown): void {
    this.acks?.ack(p.envelope.id);
    const env = answerEnvelope(result, p.envelope.id);
    if (env instanceof Error) {
      this.fail(p, env);
      return;
    }
    this.opts.health?.recordSuccess();
    if (
      p.onChunk !== undefined &&
      (env.payload as { final?: boolean }).final !== true &&
      normalizePayloadType(env.payload_type) === 'taskstream'
    ) {
      p.deadline = this.timers.now() + p.timeoutMs;
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

  // ---- connection changes ----

  /**
   * The channel dropped and will reconnect: requests written on it are sent
   * again on the next connection (same envelope ids, so the other side
   * dedupes them) when `resend`, else failed with `err`.
   */
  disconnected(err: Error, resend: boolean): void {
    for (const p of [...(this.pending?.values() ?? [])]) {
      if (!p.sent) continue;
      if (resend) p.sent = false;
      else this.fail(p, err);
    }
  }

  /**
   * The channel is open again: requests that were in flight go out first (the
   * channel writes what it held after this), and every ack wait restarts.
   */
  reconnected(): void {
    for (const p of this.pending?.values() ?? []) {
      if (p.sent || p.held) continue;
      if (this.channel.send(p.text) === 'written') p.sent = true;
    }
    this.acks?.restart();
  }

  /** Fails everything pending with `err` and refuses what comes after. Idempotent. */
  close(err: Error): void {
    if (this.closedWith !== undefined) return;
    this.closedWith = err;
    for (const p of [...(this.pending?.values() ?? [])]) this.fail(p, err);
    for (const w of this.ackWaiters?.values() ?? []) w.reject(err);
    this.ackWaiters?.clear();
    this.acks?.clear();
    this.sweepTimer?.cancel();
    this.sweepTimer = undefined;
  }

  // ---- bookkeeping ----

  private settle(p: Pending): void {
    if (p.settled) return;
    p.settled = true;
    this._lastActivity = this.timers.now();
    this.pending?.delete(p.rpcId);
    this.acks?.ack(p.envelope.id);
    p.detach?.();
  }

  private fail(p: Pending, err: Error): void {
    if (p.settled) return;
    this.settle(p);
    p.reject(err);
  }

  private ensureSweep(): void {
    if (this.sweepTimer !== undefined || this.closedWith !== undefined) return;
    this.sweepTimer = this.timers.setInterval(() => this.sweep(), this.opts.resolutionMs ?? 100);
  }

  private sweep(): void {
    const now = this.timers.now();
    for (const p of [...(this.pending?.values() ?? [])]) {
      if (p.deadline <= now)
        this.fail(p, new RequestTimeoutError(`No response to ${p.rpcId} within ${p.timeoutMs} ms`));
    }
    // Only while open: nothing is (re)transmitted while disconnected, so no retry may be used up then
    // (else sends held during an outage fail unsent); a reconnect restarts every wait.
    if (this.channel.isOpen) this.acks?.check(true);
    if ((this.pending?.size ?? 0) === 0 && (this.acks?.size ?? 0) === 0) {
      this.sweepTimer?.cancel();
      this.sweepTimer = undefined;
    }
  }
}

/**
 * The envelope of an answer (`{ envelope }` in a JSON-RPC result), checked to
 * bind to the request whose envelope id is `requestId`; the error to fail the
 * request with otherwise. Every transport checks answers with it.
 */
export function answerEnvelope(result: unknown, requestId: string): Envelope<object> | ProtocolError {
  const env = checkEnvelope(isJsonObject(result) ? result.envelope : undefined);
  if (Array.isArray(env))
    return new ProtocolError('Response carries no valid envelope', { validation_errors: env });
  if (env.correlation_id !== requestId) {
    return new ProtocolError('Response does not bind to its request (correlation_id mismatch)', {
      expected: requestId,
      received: env.correlation_id ?? null,
    });
  }
  return env;
}

/** An envelope sent without expecting an answer, in the push form given, with its session seq if any. */
function encodePush(
  envelope: Envelope<object>,
  form: PeerOptions['pushForm'],
  seq: number | undefined,
): string {
  if (seq === undefined) {
    return form === 'result'
      ? encodeEnvelopeResult(null, envelope)
      : encodeNotification(METHOD_SEND, { envelope });
  }
  return form === 'result'
    ? encodeSuccess(null, { envelope, seq })
    : encodeNotification(METHOD_SEND, { envelope, seq });
}

/** The error a request aborted by its signal fails with (the signal's reason when it is an ASAPError). */
export function abortError(signal: AbortSignal): ASAPError {
  const reason = signal.reason;
  return reason instanceof ASAPError
    ? reason
    : new RequestAbortedError(`Request aborted${reason instanceof Error ? `: ${reason.message}` : ''}`);
}
