import {
  ASAP_VERSION,
  checkEnvelope,
  createReply,
  type Envelope,
  envelopeHeader,
  validateEnvelope,
} from '../protocol/envelope.js';
import { ASAPError, ErrorCode, type JsonRpcErrorObject } from '../protocol/errors.js';
import {
  type BatchItem,
  type ErrorFrame,
  encodeBatch,
  encodeEnvelopeJsonResult,
  encodeError,
  encodeNotification,
  encodeSuccess,
  envelopeParam,
  type Frame,
  type JsonRpcId,
  METHOD_ACK,
  METHOD_SEND,
  PONG_FRAME,
  type SuccessFrame,
} from '../protocol/jsonrpc.js';
import type { Manifest } from '../protocol/manifest.js';
import {
  KNOWN_PAYLOAD_TYPES,
  type MessageAck,
  normalizePayloadType,
  type TaskRequest,
} from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';
import { type Claim, type DedupeStore, MemoryDedupeStore, type Outcome } from './dedupe.js';
import { fingerprint, idDigest, MAX_KEY_ID_LENGTH } from './fingerprint.js';
import type { Principal } from './identity.js';
import {
  guardInstrumentation,
  type Instrumentation,
  type RejectReason,
  type RequestFinishedInfo,
  type RequestInfo,
  requestInfo,
} from './instrumentation.js';
import { debugEnabled, type Logger, silentLogger } from './logger.js';
import type { NonceStore } from './nonce-store.js';
import { engineError } from './opaque-error.js';
import type { Handler, HandlerRegistry, TransportKind } from './registry.js';
import { ReplayGuard, type ReplayOptions } from './replay.js';
import { INSUFFICIENT_SCOPE, missingScope } from './scopes.js';
import { isPromiseLike, replyTypeFor, TaskRuntime } from './tasks.js';
import { systemTimers, type Timers } from './timers.js';
import type { RequestSpan, ServerTracing } from './tracing.js';

export { isPromiseLike, replyTypeFor };

/**
 * One caller as the dispatcher sees it: a WebSocket connection, or one HTTP
 * request. The transport implements it; the dispatcher never touches sockets.
 */
export interface Session {
  readonly transport: TransportKind;
  /** True when chunks and acks may be written before the final answer (WebSocket, SSE). */
  readonly interactive: boolean;
  /**
   * False when chunks may be written but acks may not (SSE: the caller reads events and has no
   * channel to answer an ack's notification, and an ack is no envelope of its stream). Default true.
   */
  readonly writeAcks?: boolean;
  readonly principal?: unknown;
  /** The principal's id (see `principalId`): per-caller state is keyed by it and the envelope's sender. */
  readonly callerId?: string;
  /** The agent URNs the caller may speak for, when authentication says (§10 sender binding). */
  readonly agents?: ReadonlySet<string>;
  /** True once the peer is gone (a closed WebSocket): streams and push loops to it stop. */
  readonly closed?: boolean;
  /** Writes one encoded message now; a returned promise means "wait before writing more" (backpressure). */
  write(text: string): void | Promise<void>;
  /** Sends an envelope to the peer as server push. */
  push(envelope: Envelope<object>): Promise<void>;
  /** Called with every valid envelope received (the WebSocket binding indexes connections by sender). */
  onEnvelope?(envelope: Envelope<object>): void;
  /** Called with the envelope of every `asap.ack` notification received. */
  onAck?(envelope: Envelope<MessageAck>): void;
  /** Called with responses to requests this side sent (reverse requests, pushes with ids). */
  onResponse?(frame: SuccessFrame | ErrorFrame): void;
  /**
   * Called when an envelope is refused because the principal lacks `scope` (the HTTP binding
   * may answer a lone request with 403 then).
   */
  onInsufficientScope?(scope: string): void;
}

export interface DispatcherOptions {
  registry: HandlerRegistry;
  logger?: Logger;
  manifest?: () => Manifest | undefined;
  /** Replay protection (§8); `false` turns it off. On by default. */
  replay?: ReplayOptions | false;
  /** Dedupe by envelope id (§6); `false` turns it off. An in-memory store by default. */
  dedupe?: DedupeStore | false;
  /** Handler deadline when a TaskRequest names none (default 60 s). */
  defaultTimeoutMs?: number;
  /** Granularity of the deadline sweep (default 100 ms). One timer serves every request. */
  deadlineResolutionMs?: number;
  /** Also send a `processed` ack after the handler finishes (default false). */
  processedAcks?: boolean;
  /**
   * Let the message of an ordinary Error a handler throws reach the caller (default true, as
   * the reference does). Runtime errors (TypeError, RangeError, …) are always answered with a
   * generic `Internal error` and an error id; `false` makes every handler error generic.
   */
  exposeHandlerErrors?: boolean;
  /**
   * Longest run of stream chunks or pushes before the event loop gets a turn (default 5 ms).
   * Small enough that other peers and health checks answer within milliseconds while one
   * caller streams a million chunks; large enough that the extra turns cost well under 1 %.
   */
  yieldEveryMs?: number;
  /** Push to every connection of an agent URN (what `ctx.pushTo` calls); resolves with how many it reached. */
  pushTo?: (agentUrn: string, envelope: Envelope<object>) => Promise<number>;
  /** Clock and timers of deadlines and the dedupe/replay windows (default: the system's). */
  timers?: Timers;
  /**
   * Hooks for metrics and tracing: requests started and finished, dedupe answers, refusals,
   * handler errors, stream chunks and acks sent. None by default (then they cost nothing).
   */
  instrumentation?: Instrumentation;
  /**
   * Spans of requests (asap-wire.md §13): each handler runs inside the span of its request,
   * which continues the caller's trace. None by default (`otelTracing()` of `asap-ts/otel`).
   */
  tracing?: ServerTracing;
}

/** What handling a frame produces: the encoded answer (or nothing), at once or later. */
export type Answer = string | undefined | Promise<string | undefined>;

const SENDER_MISMATCH = 'Sender does not match authenticated identity';

/**
 * Turns one decoded JSON-RPC message into the message to send back, for every
 * transport: validation, dedupe, replay checks, acks, routing, deadlines,
 * cancellation, streaming and the error mapping of §3 all happen here once.
 */
export class Dispatcher {
  private readonly registry: HandlerRegistry;
  private readonly logger: Logger;
  private readonly manifest: () => Manifest | undefined;
  private readonly replay: ReplayGuard<NonceStore> | undefined;
  /** @internal The hooks in use (each made safe to call), or undefined when none were given. */
  readonly hooks: Instrumentation | undefined;
  private readonly dedupe: DedupeStore | undefined;
  private readonly processedAcks: boolean;
  private readonly timers: Timers;
  private readonly tracing: ServerTracing | undefined;
  /** Runs the handlers this admits. */
  private readonly tasks: TaskRuntime;

  constructor(opts: DispatcherOptions) {
    this.registry = opts.registry;
    this.logger = opts.logger ?? silentLogger;
    this.hooks = guardInstrumentation(opts.instrumentation, this.logger);
    this.manifest = opts.manifest ?? (() => undefined);
    this.timers = opts.timers ?? systemTimers;
    this.replay =
      opts.replay === false ? undefined : new ReplayGuard<NonceStore>({ clock: this.timers, ...opts.replay });
    this.dedupe =
      opts.dedupe === false
        ? undefined
        : (opts.dedupe ?? new MemoryDedupeStore({ logger: this.logger, clock: this.timers }));
    this.processedAcks = opts.processedAcks ?? false;
    this.tracing = opts.tracing;
    this.tasks = new TaskRuntime({
      logger: this.logger,
      timers: this.timers,
      manifest: this.manifest,
      pushTo: opts.pushTo,
      hooks: this.hooks,
      defaultTimeoutMs: opts.defaultTimeoutMs ?? 60_000,
      resolutionMs: opts.deadlineResolutionMs ?? 100,
      exposeHandlerErrors: opts.exposeHandlerErrors ?? true,
      yieldEveryMs: opts.yieldEveryMs,
    });
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.tasks.inFlight;
  }

  /**
   * Handles one decoded frame: the encoded answer, or undefined when nothing
   * goes back (notifications, responses, pongs). Answers that are ready at once
   * (validation errors, synchronous handlers) come back as plain strings, the
   * rest as promises, so the common request costs no extra turns of the event loop.
   */
  handle(frame: Frame, session: Session): Answer {
    switch (frame.kind) {
      case 'heartbeat':
        return frame.type === 'ping' ? PONG_FRAME : undefined;
      case 'batch':
        return Promise.all(frame.items.map((item) => this.handleMessage(item, session, true))).then(
          (answers) => {
            const members = answers.filter((a): a is string => a !== undefined);
            return members.length > 0 ? encodeBatch(members) : undefined;
          },
        );
      default:
        return this.handleMessage(frame, session, false);
    }
  }

  private handleMessage(item: BatchItem, session: Session, inBatch: boolean): Answer {
    switch (item.kind) {
      case 'invalid':
        this.hooks?.rejected?.('validation', item.error.code);
        return encodeError(item.id, item.error);
      case 'success':
      case 'error':
        session.onResponse?.(item);
        return undefined;
      case 'notification':
        if (item.method === METHOD_SEND)
          return this.processEnvelope(envelopeParam(item.params), undefined, session, inBatch);
        if (item.method === METHOD_ACK) this.receiveAck(envelopeParam(item.params), session);
        else this.logger.debug({ method: item.method }, 'notification for an unknown method ignored');
        return undefined;
      case 'request':
        if (item.method === METHOD_SEND)
          return this.processEnvelope(envelopeParam(item.params), item.id, session, inBatch);
        this.hooks?.rejected?.('validation', ErrorCode.MethodNotFound);
        return encodeError(item.id, ASAPError.methodNotFound(item.method));
    }
  }

  private receiveAck(raw: unknown, session: Session): void {
    const v = validateEnvelope(raw);
    if (v.ok && KNOWN_PAYLOAD_TYPES.get(normalizePayloadType(v.envelope.payload_type)) === 'MessageAck') {
      session.onAck?.(v.envelope as Envelope<MessageAck>);
    } else {
      this.logger.warn({ issues: v.ok ? undefined : v.issues }, 'malformed asap.ack ignored');
    }
  }

  private processEnvelope(
    raw: unknown,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    if (raw === undefined) {
      this.hooks?.rejected?.('validation', ErrorCode.InvalidParams);
      return this.answer(
        id,
        ASAPError.invalidParams([{ loc: ['params', 'envelope'], msg: 'Field required', type: 'missing' }]),
      );
    }
    const env = checkEnvelope(raw);
    if (Array.isArray(env)) {
      const err = ASAPError.invalidParams(env, 'Invalid envelope');
      this.rejectRaw(raw, session, err);
      this.hooks?.rejected?.('validation', err.code);
      this.logger.warn({ jsonrpc_id: id, issues: env }, 'invalid envelope');
      return this.answer(id, err);
    }
    if (session.agents !== undefined && !session.agents.has(env.sender)) {
      // §10 sender binding, in the reference's form.
      const err = new ASAPError(ErrorCode.InvalidParams, SENDER_MISMATCH, {
        error: SENDER_MISMATCH,
        status_code: 403,
      });
      this.ack(env, session, 'rejected', SENDER_MISMATCH);
      this.hooks?.rejected?.('sender_mismatch', err.code);
      this.logger.warn({ envelope_id: env.id, sender: env.sender }, SENDER_MISMATCH);
      return this.answer(id, err);
    }
    const type = normalizePayloadType(env.payload_type);
    // Scopes: only principals that carry them (JWTs) pay for the check.
    if ((session.principal as Principal | null | undefined)?.scopes !== undefined) {
      const missing = missingScope(session.principal, type);
      if (missing !== undefined) return this.refuseScope(env, id, session, missing);
    }
    session.onEnvelope?.(env);
    if (this.dedupe === undefined) return this.admit(env, type, undefined, id, session, collect);
    // §10: per caller (principal and sender), never by envelope id alone.
    // A long id (up to the frame size, the peer's choice) counts in the key by its digest.
    const envelopeId = env.id.length <= MAX_KEY_ID_LENGTH ? env.id : idDigest(env.id);
    const key = `${session.callerId ?? ''}\u0000${env.sender}\u0000${envelopeId}`;
    return this.claim(env, type, key, fingerprint(env, type), id, session, collect);
  }

  /** An envelope whose payload type needs a scope the principal lacks, in the reference's form plus `required_scope`. */
  private refuseScope(env: Envelope, id: JsonRpcId | undefined, session: Session, scope: string): Answer {
    const err = new ASAPError(ErrorCode.InvalidParams, INSUFFICIENT_SCOPE, {
      error: INSUFFICIENT_SCOPE,
      status_code: 403,
      required_scope: scope,
    });
    this.ack(env, session, 'rejected', INSUFFICIENT_SCOPE);
    this.hooks?.rejected?.('auth', err.code);
    this.logger.warn(
      { envelope_id: env.id, sender: env.sender, payload_type: env.payload_type, required_scope: scope },
      INSUFFICIENT_SCOPE,
    );
    session.onInsufficientScope?.(scope);
    return this.answer(id, err);
  }

  private claim(
    env: Envelope,
    type: string,
    key: string,
    fp: number,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    const claim = this.dedupe!.claim(key, fp);
    if (isPromiseLike(claim))
      return claim.then((c) => this.onClaim(c, env, type, key, fp, id, session, collect));
    return this.onClaim(claim, env, type, key, fp, id, session, collect);
  }

  /** First sight runs; a copy (retransmission) is acked again and gets the first copy's outcome, never a second run. */
  private onClaim(
    claim: Claim,
    env: Envelope,
    type: string,
    key: string,
    fp: number,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    this.hooks?.dedupe?.(claim.state);
    switch (claim.state) {
      case 'new':
        return this.admit(env, type, key, id, session, collect);
      case 'conflict': {
        const err = ASAPError.invalidRequest('Envelope id reused with different content', {
          reason: 'envelope id reused with different content',
          envelope_id: env.id,
        });
        this.ack(env, session, 'rejected', err.message);
        this.logger.warn({ envelope_id: env.id, sender: env.sender }, err.message);
        return this.answer(id, err);
      }
      case 'dropped':
        this.ack(env, session, 'received');
        this.logger.warn({ envelope_id: env.id }, 'duplicate envelope whose outcome is no longer held');
        return this.answer(
          id,
          ASAPError.invalidState('Duplicate envelope; its outcome is no longer held', {
            reason: 'duplicate; outcome no longer held',
            envelope_id: env.id,
          }),
        );
      case 'done':
        this.ack(env, session, 'received');
        this.logger.debug({ envelope_id: env.id }, 'duplicate envelope answered from the dedupe store');
        return this.encodeOutcome(id, claim.outcome);
      case 'pending':
        this.ack(env, session, 'received');
        // Undefined: the first copy was refused unprocessed, so this copy is new after all.
        return claim.outcome.then((o) =>
          o === undefined ? this.claim(env, type, key, fp, id, session, collect) : this.encodeOutcome(id, o),
        );
    }
  }

  /**
   * A new envelope: replay checks (synchronous unless the nonce store answers with a
   * promise), then {@link accept}. A nonce store that fails refuses it with `Internal error`.
   */
  private admit(
    env: Envelope,
    type: string,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    const replayError = this.replay?.check(env.timestamp, env.extensions, session.callerId, env.sender);
    if (replayError === undefined) return this.accept(env, type, key, id, session, collect);
    if (!isPromiseLike(replayError))
      return this.refuse(env, key, id, session, replayError, replayReason(replayError));
    return replayError.then(
      (e) =>
        e === undefined
          ? this.accept(env, type, key, id, session, collect)
          : this.refuse(env, key, id, session, e, replayReason(e)),
      (err: unknown) => {
        const e = engineError(this.logger, err, { envelope_id: env.id, payload_type: env.payload_type });
        return this.refuse(env, key, id, session, e, 'internal');
      },
    );
  }

  /** An envelope past every check: routing, the ack, then the handler. */
  private accept(
    env: Envelope,
    type: string,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    const handler = this.route(type, env as Envelope<TaskRequest>);
    if (handler === undefined)
      return this.refuse(env, key, id, session, ASAPError.handlerNotFound(env.payload_type), 'no_handler');
    this.ack(env, session, 'received');
    const info = this.hooks === undefined ? undefined : this.startRequest(env, type, handler, session);
    // Timed only for a requestFinished hook or the debug log: performance.now() costs ~0.2 µs.
    const started =
      (info !== undefined && this.hooks!.requestFinished !== undefined) || debugEnabled(this.logger)
        ? performance.now()
        : 0;
    const span = this.tracing === undefined ? undefined : this.traceRequest(env, type, handler, session, id);
    const result =
      span === undefined
        ? this.tasks.run(env, type, handler, session, id, collect, info, undefined)
        : span.run(() => this.tasks.run(env, type, handler, session, id, collect, info, span));
    if (!isPromiseLike(result)) return this.complete(env, key, id, session, result, started, info, span);
    return result.then((o) => this.complete(env, key, id, session, o, started, info, span));
  }

  /** The span of a request about to run, when a tracer records (asked per request: it is cheap). */
  private traceRequest(
    env: Envelope,
    type: string,
    handler: Handler<object>,
    session: Session,
    id: JsonRpcId | undefined,
  ): RequestSpan | undefined {
    const tracing = this.tracing!;
    if (tracing.recording?.() === false) return undefined;
    const skill = type === 'taskrequest' ? (env.payload as TaskRequest).skill_id : undefined;
    return tracing.startRequest({
      envelope: env,
      payloadType: KNOWN_PAYLOAD_TYPES.get(type) ?? env.payload_type,
      skill: skill !== undefined && this.registry.getSkill(skill) === handler ? skill : undefined,
      transport: session.transport,
      rpcId: id,
    });
  }

  /** Builds the RequestInfo (only called with hooks installed) and calls `requestStarted`. */
  private startRequest(env: Envelope, type: string, handler: Handler<object>, session: Session): RequestInfo {
    // A skill label only for a registered skill: a caller must not grow label sets with made-up names.
    const skill = type === 'taskrequest' ? (env.payload as TaskRequest).skill_id : undefined;
    const info = requestInfo(
      env,
      session.transport,
      KNOWN_PAYLOAD_TYPES.get(type) ?? env.payload_type,
      skill !== undefined && this.registry.getSkill(skill) === handler ? skill : undefined,
    );
    this.hooks!.requestStarted?.(info);
    return info;
  }

  /** Calls `requestFinished` (only called with hooks installed). */
  private finishRequest(info: RequestInfo, outcome: Outcome, durationMs: number): void {
    const finished = this.hooks!.requestFinished;
    if (finished === undefined) return;
    // requestInfo made the object with these fields: completing it in place costs no copy.
    const done = info as RequestFinishedInfo;
    if (outcome.kind === 'error') {
      done.outcome = 'error';
      done.errorCode = outcome.error.code;
    }
    done.durationMs = durationMs;
    finished(done);
  }

  /** Refused before its handler ran: the claim is given back, so a corrected resend may still run. */
  private refuse(
    env: Envelope,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    err: ASAPError,
    reason: RejectReason,
  ): Answer {
    const released = key === undefined ? undefined : this.dedupe!.release(key);
    this.ack(env, session, 'rejected', err.message);
    this.hooks?.rejected?.(reason, err.code);
    this.logger.warn({ envelope_id: env.id, code: err.code, payload_type: env.payload_type }, err.message);
    const answer = this.answer(id, err);
    return isPromiseLike(released) ? Promise.resolve(released).then(() => answer) : answer;
  }

  /** Records the outcome for duplicates (before answering), sends the `processed` ack, logs, and encodes the answer. */
  private complete(
    env: Envelope,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    outcome: Outcome,
    started: number,
    info: RequestInfo | undefined,
    span: RequestSpan | undefined,
  ): Answer {
    // A "retry later" (-32040: a store or a downstream was unavailable) is no outcome to keep:
    // the claim is given back, so the caller's retry of the same envelope runs.
    const stored =
      key === undefined
        ? undefined
        : outcome.kind === 'error' && outcome.error.code === ErrorCode.ResourceExhausted
          ? this.dedupe!.release(key)
          : this.dedupe!.complete(key, outcome);
    if (info !== undefined && started !== 0) this.finishRequest(info, outcome, performance.now() - started);
    span?.end(outcome.kind === 'error' ? outcome.error : undefined);
    if (this.processedAcks) this.ack(env, session, 'processed');
    if (started !== 0 && (info === undefined || debugEnabled(this.logger))) {
      this.logger.debug(
        {
          envelope_id: env.id,
          payload_type: env.payload_type,
          outcome: outcome.kind,
          ms: performance.now() - started,
        },
        'request handled',
      );
    }
    const answer = this.encodeOutcome(id, outcome);
    return isPromiseLike(stored) ? Promise.resolve(stored).then(() => answer) : answer;
  }

  private route(key: string, env: Envelope<TaskRequest>): Handler<object> | undefined {
    const handler = this.registry.get(key);
    if (handler !== undefined) return handler;
    if (key === 'taskrequest' && this.registry.hasSkills) {
      return (
        (this.registry.getSkill(env.payload.skill_id) as Handler<object> | undefined) ?? this.unknownSkill
      );
    }
    if (key === 'taskcancel') return this.cancelTask;
    return undefined;
  }

  /** A TaskRequest for a skill nobody registered: a failed TaskResponse naming the skills that exist. */
  private readonly unknownSkill: Handler<object> = (env) => {
    const { skill_id } = env.payload as TaskRequest;
    return {
      task_id: env.id,
      status: 'failed',
      result: {
        error: `Unknown skill: ${skill_id}`,
        available_skills: this.registry.skills().map((s) => s.id),
      },
    };
  };

  /** Built-in TaskCancel: aborts the running task it names. */
  private readonly cancelTask: Handler<object> = (env) => {
    const payload = env.payload as { task_id: string; reason?: string | null };
    const reason = new ASAPError(ErrorCode.InvalidState, payload.reason ?? 'Task cancelled');
    if (!this.tasks.cancel(payload.task_id, reason)) {
      throw new ASAPError(ErrorCode.TaskNotFound, `Task not found: ${payload.task_id}`, {
        task_id: payload.task_id,
      });
    }
    // A bare payload would be refused by toOutcome (no reply type for TaskCancel): reply with a TaskResponse.
    return createReply(env, replyTypeFor(env.payload_type, 'TaskResponse'), {
      task_id: payload.task_id,
      status: 'cancelled',
    });
  };

  private encodeOutcome(id: JsonRpcId | undefined, outcome: Outcome): string | undefined {
    if (id === undefined) return undefined;
    switch (outcome.kind) {
      case 'result':
        return encodeEnvelopeJsonResult(id, outcome.envelope);
      case 'error':
        return encodeError(id, outcome.error);
      case 'none':
        return encodeSuccess(id, { envelope: null });
    }
  }

  private answer(id: JsonRpcId | undefined, err: ASAPError | JsonRpcErrorObject): string | undefined {
    return id === undefined ? undefined : encodeError(id, err);
  }

  private ack(
    env: Pick<Envelope, 'id' | 'sender' | 'recipient' | 'asap_version' | 'requires_ack' | 'trace_id'>,
    session: Session,
    status: MessageAck['status'],
    error?: string,
  ): void {
    if (env.requires_ack !== true || !session.interactive || session.writeAcks === false) return;
    const payload: MessageAck = { original_envelope_id: env.id, status };
    if (error !== undefined) payload.error = error;
    const ack = createReply(env, 'MessageAck', payload);
    void session.write(encodeNotification(METHOD_ACK, { envelope: ack }));
    this.hooks?.ackSent?.(status);
  }

  /** A `rejected` ack for an envelope too broken to validate, when its id and addresses can still be read. */
  private rejectRaw(raw: unknown, session: Session, err: ASAPError): void {
    if (!isJsonObject(raw) || raw.requires_ack !== true) return;
    const header = envelopeHeader(raw);
    if (header === undefined) return;
    const asap_version = typeof raw.asap_version === 'string' ? raw.asap_version : ASAP_VERSION;
    this.ack({ ...header, asap_version, requires_ack: true }, session, 'rejected', err.message);
  }

  /** Resolves when no handler is running. */
  idle(): Promise<void> {
    return this.tasks.idle();
  }

  /** Aborts every running handler (shutdown past the drain deadline) and stops the deadline sweep. */
  close(reason?: unknown): void {
    this.tasks.close(reason);
  }
}

function replayReason(err: ASAPError): RejectReason {
  return err.code === ErrorCode.InvalidNonce ? 'invalid_nonce' : 'invalid_timestamp';
}
