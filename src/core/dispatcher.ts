import {
  ASAP_VERSION,
  checkEnvelope,
  createEnvelope,
  createReply,
  type Envelope,
  envelopeHeader,
  validateEnvelope,
} from '../protocol/envelope.js';
import { ASAPError, ErrorCode, type JsonRpcErrorObject, toASAPError } from '../protocol/errors.js';
import {
  type BatchItem,
  type ErrorFrame,
  encodeBatch,
  encodeEnvelopeJsonResult,
  encodeEnvelopeResult,
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
  type TaskStream,
} from '../protocol/payloads.js';
import { isJsonObject, type JsonObject } from '../protocol/schema-util.js';
import { type Claim, type DedupeStore, MemoryDedupeStore, type Outcome } from './dedupe.js';
import { TurnBudget } from './fairness.js';
import { fingerprint } from './fingerprint.js';
import { debugEnabled, type Logger, silentLogger } from './logger.js';
import { handlerError } from './opaque-error.js';
import type {
  Handler,
  HandlerContext,
  HandlerRegistry,
  HandlerResult,
  PushInit,
  TransportKind,
} from './registry.js';
import { ReplayGuard, type ReplayOptions } from './replay.js';

/**
 * One caller as the dispatcher sees it: a WebSocket connection, or one HTTP
 * request. The transport implements it; the dispatcher never touches sockets.
 */
export interface Session {
  readonly transport: TransportKind;
  /** True when chunks and acks may be written before the final answer (WebSocket). */
  readonly interactive: boolean;
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
}

/** What handling a frame produces: the encoded answer (or nothing), at once or later. */
export type Answer = string | undefined | Promise<string | undefined>;

/**
 * One handler call: the context the handler sees, and the dispatcher's record
 * of it (deadline, abort signal made on first use, settlement). One object per
 * request on purpose: the hot path allocates as little as it can.
 */
class TaskScope<P extends object = JsonObject> implements HandlerContext<P> {
  done = false;
  resolve: ((outcome: Outcome) => void) | undefined;
  /** performance.now() past which the sweep ends it; set when the handler turns out to be asynchronous. */
  deadline = Number.POSITIVE_INFINITY;
  private controller: AbortController | undefined;
  private abortReason: unknown;

  constructor(
    readonly envelope: Envelope<P>,
    readonly taskId: string,
    readonly isTask: boolean,
    private readonly session: Session,
    private readonly owner: Dispatcher,
  ) {}

  get logger(): Logger {
    return this.owner.logger;
  }

  get transport(): TransportKind {
    return this.session.transport;
  }

  get principal(): unknown {
    return this.session.principal;
  }

  get manifest(): Manifest | undefined {
    return this.owner.manifest();
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason !== undefined) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  get aborted(): boolean {
    return this.abortReason !== undefined;
  }

  abort(reason: unknown): void {
    if (this.abortReason !== undefined) return;
    this.abortReason = reason;
    this.controller?.abort(reason);
  }

  /**
   * Pushes to the caller. Once the task is over (deadline, cancel, shutdown) it rejects with
   * that reason, so a push loop ends with its task; and it yields to the event loop every
   * few milliseconds, so a loop of pushes that never block cannot starve other peers.
   */
  push(envelope: Envelope<object> | PushInit<object>): Promise<void> {
    if (this.done) return Promise.reject(this.abortReason ?? ASAPError.invalidState('Task is over'));
    if (this.session.closed === true) return Promise.reject(PEER_GONE);
    const pushed = this.session.push(this.toEnvelope(envelope));
    const pause = this.owner.turns.pause();
    return pause === undefined ? pushed : pushed.then(() => pause);
  }

  pushTo(agentUrn: string, envelope: Envelope<object> | PushInit<object>): Promise<number> {
    if (this.done) return Promise.reject(this.abortReason ?? ASAPError.invalidState('Task is over'));
    const env = this.toEnvelope({ recipient: agentUrn, ...envelope });
    const pushed = this.owner.pushTo(agentUrn, env);
    const pause = this.owner.turns.pause();
    return pause === undefined ? pushed : pushed.then((n) => pause.then(() => n));
  }

  private toEnvelope(envelope: Envelope<object> | PushInit<object>): Envelope<object> {
    if ('id' in envelope && 'timestamp' in envelope) return envelope;
    return createEnvelope({
      sender: this.envelope.recipient,
      recipient: this.envelope.sender,
      trace_id: this.envelope.trace_id,
      ...envelope,
    });
  }

  reply<Q extends object>(payloadType: string, payload: Q): Envelope<Q> {
    return createReply(this.envelope, payloadType, payload);
  }
}

const SENDER_MISMATCH = 'Sender does not match authenticated identity';
const PEER_GONE = ASAPError.invalidState('The connection closed before the task finished', {
  reason: 'connection closed',
});

/** The reply envelope as the JSON text an outcome keeps (a flat string is cheap to hold for the dedupe window). */
function stringifyReply(request: Envelope, payloadType: string, payload: object): string {
  return JSON.stringify(createReply(request, payloadType, payload));
}

/** Spells a reply type in the style the request used (`task.request` → `task.response`). */
export function replyTypeFor(requestType: string, canonical: string): string {
  if (!requestType.includes('.') && !requestType.includes('_')) return canonical;
  const sep = requestType.includes('.') ? '.' : '_';
  return canonical.replace(/(?!^)([A-Z])/g, `${sep}$1`).toLowerCase();
}

const REPLY_TYPES: Record<string, string> = {
  taskrequest: 'TaskResponse',
  mcptoolcall: 'McpToolResult',
  mcpresourcefetch: 'McpResourceData',
};

function isAsyncIterable(v: unknown): v is AsyncIterable<TaskStream | Envelope<TaskStream>> {
  return typeof v === 'object' && v !== null && Symbol.asyncIterator in v;
}

function isEnvelopeLike(v: object): v is Envelope<object> {
  return 'payload_type' in v && 'payload' in v && 'sender' in v && 'id' in v;
}

/** True for anything with a `then` method. */
export function isPromiseLike(v: unknown): v is PromiseLike<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

/**
 * Turns one decoded JSON-RPC message into the message to send back, for every
 * transport: validation, dedupe, replay checks, acks, routing, deadlines,
 * cancellation, streaming and the error mapping of §3 all happen here once.
 */
export class Dispatcher {
  private readonly registry: HandlerRegistry;
  /** @internal */
  readonly logger: Logger;
  /** @internal */
  readonly manifest: () => Manifest | undefined;
  /** @internal Shared by every stream and push loop (see TurnBudget). */
  readonly turns: TurnBudget;
  private readonly pushToAgent: DispatcherOptions['pushTo'];
  private readonly exposeHandlerErrors: boolean;
  private readonly replay: ReplayGuard | undefined;
  private readonly dedupe: DedupeStore | undefined;
  private readonly defaultTimeoutMs: number;
  private readonly resolutionMs: number;
  private readonly processedAcks: boolean;
  private readonly running = new Set<TaskScope>();
  private readonly tasks = new Map<string, TaskScope>();
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  constructor(opts: DispatcherOptions) {
    this.registry = opts.registry;
    this.logger = opts.logger ?? silentLogger;
    this.manifest = opts.manifest ?? (() => undefined);
    this.replay = opts.replay === false ? undefined : new ReplayGuard(opts.replay);
    this.dedupe =
      opts.dedupe === false ? undefined : (opts.dedupe ?? new MemoryDedupeStore({ logger: this.logger }));
    this.turns = new TurnBudget(opts.yieldEveryMs);
    this.pushToAgent = opts.pushTo;
    this.exposeHandlerErrors = opts.exposeHandlerErrors ?? true;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 60_000;
    this.resolutionMs = opts.deadlineResolutionMs ?? 100;
    this.processedAcks = opts.processedAcks ?? false;
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /** @internal What `ctx.pushTo` calls. */
  pushTo(agentUrn: string, envelope: Envelope<object>): Promise<number> {
    if (this.pushToAgent === undefined)
      return Promise.reject(ASAPError.invalidState('Push by agent URN is not available here'));
    return this.pushToAgent(agentUrn, envelope);
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
      return this.answer(
        id,
        ASAPError.invalidParams([{ loc: ['params', 'envelope'], msg: 'Field required', type: 'missing' }]),
      );
    }
    const env = checkEnvelope(raw);
    if (Array.isArray(env)) {
      const err = ASAPError.invalidParams(env, 'Invalid envelope');
      this.rejectRaw(raw, session, err);
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
      this.logger.warn({ envelope_id: env.id, sender: env.sender }, SENDER_MISMATCH);
      return this.answer(id, err);
    }
    session.onEnvelope?.(env);
    const type = normalizePayloadType(env.payload_type);
    if (this.dedupe === undefined) return this.admit(env, type, undefined, id, session, collect);
    // §10: per caller (principal and sender), never by envelope id alone.
    const key = `${session.callerId ?? ''}\u0000${env.sender}\u0000${env.id}`;
    return this.claim(env, type, key, fingerprint(env, type), id, session, collect);
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

  /** A new envelope: replay checks, routing, the ack, then the handler. */
  private admit(
    env: Envelope,
    type: string,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    collect: boolean,
  ): Answer {
    const replayError = this.replay?.check(env.timestamp, env.extensions, session.callerId, env.sender);
    if (replayError !== undefined) return this.refuse(env, key, id, session, replayError);
    const handler = this.route(type, env as Envelope<TaskRequest>);
    if (handler === undefined)
      return this.refuse(env, key, id, session, ASAPError.handlerNotFound(env.payload_type));
    this.ack(env, session, 'received');
    const started = debugEnabled(this.logger) ? performance.now() : 0;
    const result = this.run(env, type, handler, session, id, collect);
    if (!isPromiseLike(result)) return this.complete(env, key, id, session, result, started);
    return result.then((o) => this.complete(env, key, id, session, o, started));
  }

  /** Refused before its handler ran: the claim is given back, so a corrected resend may still run. */
  private refuse(
    env: Envelope,
    key: string | undefined,
    id: JsonRpcId | undefined,
    session: Session,
    err: ASAPError,
  ): Answer {
    const released = key === undefined ? undefined : this.dedupe!.release(key);
    this.ack(env, session, 'rejected', err.message);
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
  ): Answer {
    const stored = key === undefined ? undefined : this.dedupe!.complete(key, outcome);
    if (this.processedAcks) this.ack(env, session, 'processed');
    if (started !== 0) {
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
      return (this.registry.getSkill(env.payload.skill_id) as Handler<object> | undefined) ?? unknownSkill;
    }
    if (key === 'taskcancel') return this.cancelTask;
    return undefined;
  }

  /** Built-in TaskCancel: aborts the running task it names. */
  private readonly cancelTask: Handler<object> = (env) => {
    const payload = env.payload as { task_id: string; reason?: string | null };
    const scope = this.tasks.get(payload.task_id);
    if (scope === undefined) {
      throw new ASAPError(ErrorCode.TaskNotFound, `Task not found: ${payload.task_id}`, {
        task_id: payload.task_id,
      });
    }
    scope.abort(new ASAPError(ErrorCode.InvalidState, payload.reason ?? 'Task cancelled'));
    // A bare payload would be refused by toOutcome (no reply type for TaskCancel): reply with a TaskResponse.
    return createReply(env, replyTypeFor(env.payload_type, 'TaskResponse'), {
      task_id: payload.task_id,
      status: 'cancelled',
    });
  };

  /**
   * Runs the handler. A handler that returns at once yields its outcome at
   * once; one that returns a promise or a stream yields a promise, settled by
   * the handler, the deadline sweep, a TaskCancel or shutdown, whichever is first.
   */
  private run(
    env: Envelope,
    key: string,
    handler: Handler<object>,
    session: Session,
    id: JsonRpcId | undefined,
    collect: boolean,
  ): Outcome | Promise<Outcome> {
    const isTask = key === 'taskrequest';
    const taskId = isTask || typeof env.payload.task_id !== 'string' ? env.id : env.payload.task_id;
    const scope = new TaskScope(env, taskId, isTask, session, this);
    let result: HandlerResult | Promise<HandlerResult>;
    try {
      result = handler(env, scope);
      // Nothing can cancel or time out a handler while it runs synchronously: only one that
      // returns a promise or a stream is registered for TaskCancel, the deadline and shutdown.
      if (!isPromiseLike(result) && !isAsyncIterable(result)) return this.toOutcome(env, key, result);
    } catch (err) {
      return this.failure(env, key, scope, err);
    }
    const config = isTask ? (env.payload as TaskRequest).config : undefined;
    scope.deadline =
      performance.now() +
      (config?.timeout_seconds != null ? config.timeout_seconds * 1000 : this.defaultTimeoutMs);
    this.running.add(scope);
    if (isTask) this.tasks.set(taskId, scope);
    this.ensureSweep();
    const pending = result;
    return new Promise<Outcome>((resolve) => {
      scope.resolve = resolve;
      const fail = (err: unknown) => this.settle(scope, this.failure(env, key, scope, err));
      const finish = (r: HandlerResult) => {
        if (isAsyncIterable(r)) {
          this.pump(r, env, scope, session, id, collect).then((o) => this.settle(scope, o), fail);
          return;
        }
        try {
          this.settle(scope, this.toOutcome(env, key, r));
        } catch (err) {
          fail(err);
        }
      };
      if (isPromiseLike(pending)) pending.then(finish, fail);
      else finish(pending);
    });
  }

  /** Ends a scope with its outcome, once: the first of handler, deadline, cancel or shutdown wins. */
  private settle(scope: TaskScope, outcome: Outcome): void {
    if (scope.done) return;
    this.release(scope);
    scope.resolve?.(outcome);
  }

  private release(scope: TaskScope): void {
    scope.done = true;
    this.running.delete(scope);
    if (scope.isTask) this.tasks.delete(scope.taskId);
    if (this.running.size === 0) this.notifyIdle();
  }

  private failure(env: Envelope, key: string, scope: TaskScope, err: unknown): Outcome {
    if (scope.aborted && key === 'taskrequest') {
      // A task stopped by TaskCancel answers like the reference: a TaskResponse with status cancelled.
      return {
        kind: 'result',
        envelope: stringifyReply(env, replyTypeFor(env.payload_type, 'TaskResponse'), {
          task_id: env.id,
          status: 'cancelled',
        }),
      };
    }
    const e = handlerError(this.logger, err, this.exposeHandlerErrors, {
      envelope_id: env.id,
      payload_type: env.payload_type,
    });
    if (err instanceof ASAPError)
      this.logger.warn({ envelope_id: env.id, code: e.code, err: e.message }, 'handler refused the request');
    return { kind: 'error', error: e.toJSON() };
  }

  private toOutcome(env: Envelope, key: string, r: HandlerResult): Outcome {
    if (r === undefined || r === null) {
      return {
        kind: 'result',
        envelope: stringifyReply(env, replyTypeFor(env.payload_type, 'MessageAck'), {
          original_envelope_id: env.id,
          status: 'processed',
        }),
      };
    }
    const obj = r as JsonObject;
    if (isEnvelopeLike(obj)) {
      const reply = obj as Envelope<object>;
      if (reply.correlation_id == null) reply.correlation_id = env.id;
      return { kind: 'result', envelope: JSON.stringify(reply) };
    }
    const replyType = REPLY_TYPES[key];
    if (replyType === undefined) {
      throw ASAPError.internal(`A ${env.payload_type} handler must return an envelope (use ctx.reply)`);
    }
    return { kind: 'result', envelope: stringifyReply(env, replyTypeFor(env.payload_type, replyType), obj) };
  }

  /**
   * Writes each chunk as it comes; the final chunk is the outcome, so a duplicate request gets it too.
   * Between chunks it honours the send buffer (the write's promise), the turn budget (so a
   * generator that never awaits cannot hold the event loop) and the deadline (checked here too,
   * since the sweep timer only runs when the loop gets a turn).
   */
  private async pump(
    source: AsyncIterable<TaskStream | Envelope<TaskStream>>,
    env: Envelope,
    scope: TaskScope,
    session: Session,
    id: JsonRpcId | undefined,
    collect: boolean,
  ): Promise<Outcome> {
    const live = session.interactive && !collect && id !== undefined;
    for await (const chunk of source) {
      if (scope.done) break;
      const reply = isEnvelopeLike(chunk) ? chunk : createReply(env, 'TaskStream', chunk);
      if (reply.correlation_id == null) reply.correlation_id = env.id;
      if (reply.payload.final === true) return { kind: 'result', envelope: JSON.stringify(reply) };
      if (live) {
        const w = session.write(encodeEnvelopeResult(id, reply));
        if (w !== undefined) await w;
      }
      const pause = this.turns.pause();
      if (pause !== undefined) await pause;
      if (scope.done) break;
      if (session.closed === true) {
        // Nobody reads the rest: stop pulling. The outcome says so, for a resend after a reconnect.
        scope.abort(PEER_GONE);
        this.settle(scope, { kind: 'error', error: PEER_GONE.toJSON() });
        break;
      }
      if (performance.now() >= scope.deadline) {
        this.expire(scope);
        break;
      }
    }
    return {
      kind: 'result',
      envelope: stringifyReply(env, 'TaskStream', {
        chunk: '',
        final: true,
        status: 'completed',
      } satisfies TaskStream),
    };
  }

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
    if (env.requires_ack !== true || !session.interactive) return;
    const payload: MessageAck = { original_envelope_id: env.id, status };
    if (error !== undefined) payload.error = error;
    const ack = createReply(env, 'MessageAck', payload);
    void session.write(encodeNotification(METHOD_ACK, { envelope: ack }));
  }

  /** A `rejected` ack for an envelope too broken to validate, when its id and addresses can still be read. */
  private rejectRaw(raw: unknown, session: Session, err: ASAPError): void {
    if (!isJsonObject(raw) || raw.requires_ack !== true) return;
    const header = envelopeHeader(raw);
    if (header === undefined) return;
    const asap_version = typeof raw.asap_version === 'string' ? raw.asap_version : ASAP_VERSION;
    this.ack({ ...header, asap_version, requires_ack: true }, session, 'rejected', err.message);
  }

  private ensureSweep(): void {
    if (this.sweepTimer !== undefined || this.closed) return;
    this.sweepTimer = setInterval(() => this.sweep(), this.resolutionMs);
    this.sweepTimer.unref?.();
  }

  /** Ends a scope at its deadline: aborted, and answered -32033. */
  private expire(scope: TaskScope): void {
    const err = ASAPError.timeout(`Handler exceeded its deadline for ${scope.taskId}`);
    scope.abort(err);
    this.settle(scope, { kind: 'error', error: err.toJSON() });
  }

  private sweep(): void {
    const now = performance.now();
    for (const scope of this.running) if (scope.deadline <= now) this.expire(scope);
    if (this.running.size === 0 && this.sweepTimer !== undefined) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  /** Resolves when no handler is running. */
  idle(): Promise<void> {
    if (this.running.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Aborts every running handler (shutdown past the drain deadline) and stops the sweep. */
  close(reason: unknown = ASAPError.resourceExhausted('Server shutting down')): void {
    this.closed = true;
    for (const scope of this.running) {
      scope.abort(reason);
      this.settle(scope, { kind: 'error', error: toASAPError(reason).toJSON() });
    }
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
  }
}

const unknownSkill: Handler<object> = (env) => {
  const { skill_id } = env.payload as TaskRequest;
  return { task_id: env.id, status: 'failed', result: { error: `Unknown skill: ${skill_id}` } };
};
