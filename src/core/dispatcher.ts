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
import { type DedupeRecord, type DedupeStore, MemoryDedupeStore, type Outcome } from './dedupe.js';
import { debugEnabled, type Logger, silentLogger } from './logger.js';
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
    readonly logger: Logger,
    private readonly getManifest: () => Manifest | undefined,
  ) {}

  get transport(): TransportKind {
    return this.session.transport;
  }

  get principal(): unknown {
    return this.session.principal;
  }

  get manifest(): Manifest | undefined {
    return this.getManifest();
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

  push(envelope: Envelope<object> | PushInit<object>): Promise<void> {
    const env =
      'id' in envelope && 'timestamp' in envelope
        ? envelope
        : createEnvelope({
            sender: this.envelope.recipient,
            recipient: this.envelope.sender,
            trace_id: this.envelope.trace_id,
            ...envelope,
          });
    return this.session.push(env);
  }

  reply<Q extends object>(payloadType: string, payload: Q): Envelope<Q> {
    return createReply(this.envelope, payloadType, payload);
  }
}

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
  private readonly logger: Logger;
  private readonly manifest: () => Manifest | undefined;
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
    this.dedupe = opts.dedupe === false ? undefined : (opts.dedupe ?? new MemoryDedupeStore());
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 60_000;
    this.resolutionMs = opts.deadlineResolutionMs ?? 100;
    this.processedAcks = opts.processedAcks ?? false;
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.running.size;
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
    session.onEnvelope?.(env);
    if (this.dedupe === undefined) return this.admit(env, id, session, collect);
    const rec = this.dedupe.get(env.id);
    if (isPromiseLike(rec)) {
      return Promise.resolve(rec).then((r) =>
        r === undefined ? this.admit(env, id, session, collect) : this.answerDuplicate(r, env, id, session),
      );
    }
    return rec === undefined
      ? this.admit(env, id, session, collect)
      : this.answerDuplicate(rec, env, id, session);
  }

  /** A retransmitted envelope: acked again, never run again; it gets the first copy's outcome. */
  private answerDuplicate(
    rec: DedupeRecord,
    env: Envelope,
    id: JsonRpcId | undefined,
    session: Session,
  ): Answer {
    this.ack(env, session, 'received');
    this.logger.debug({ envelope_id: env.id }, 'duplicate envelope answered from the dedupe store');
    if ('outcome' in rec) return this.encodeOutcome(id, rec.outcome);
    return rec.pending.then((outcome) => this.encodeOutcome(id, outcome));
  }

  /** A new envelope: replay checks, routing, the ack, then the handler. */
  private admit(env: Envelope, id: JsonRpcId | undefined, session: Session, collect: boolean): Answer {
    const replayError = this.replay?.check(env.timestamp, env.extensions);
    if (replayError !== undefined) {
      this.ack(env, session, 'rejected', replayError.message);
      this.logger.warn({ envelope_id: env.id, code: replayError.code }, replayError.message);
      return this.answer(id, replayError);
    }
    const key = normalizePayloadType(env.payload_type);
    const handler = this.route(key, env as Envelope<TaskRequest>);
    if (handler === undefined) {
      const err = ASAPError.handlerNotFound(env.payload_type);
      this.ack(env, session, 'rejected', err.message);
      this.logger.warn({ envelope_id: env.id, payload_type: env.payload_type }, err.message);
      return this.answer(id, err);
    }
    this.ack(env, session, 'received');
    const started = debugEnabled(this.logger) ? performance.now() : 0;
    const result = this.run(env, key, handler, session, id, collect);
    if (!isPromiseLike(result)) return this.complete(env, id, session, result, started);
    if (this.dedupe === undefined) return result.then((o) => this.complete(env, id, session, o, started));
    const stored = this.dedupe.set(env.id, { pending: result });
    const settled = isPromiseLike(stored) ? Promise.resolve(stored).then(() => result) : result;
    return settled.then((o) => this.complete(env, id, session, o, started));
  }

  /** Records the outcome for duplicates, sends the `processed` ack, logs, and encodes the answer. */
  private complete(
    env: Envelope,
    id: JsonRpcId | undefined,
    session: Session,
    outcome: Outcome,
    started: number,
  ): Answer {
    const stored = this.dedupe?.set(env.id, { outcome });
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
    const scope = new TaskScope(env, taskId, isTask, session, this.logger, this.manifest);
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
    const e = toASAPError(err);
    if (e.code === ErrorCode.InternalError) {
      this.logger.error(
        { envelope_id: env.id, payload_type: env.payload_type, err: e.message },
        'handler failed',
      );
    } else {
      this.logger.warn({ envelope_id: env.id, code: e.code, err: e.message }, 'handler refused the request');
    }
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

  /** Writes each chunk as it comes; the final chunk is the outcome, so a duplicate request gets it too. */
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

  private sweep(): void {
    const now = performance.now();
    for (const scope of this.running) {
      if (scope.deadline <= now) {
        const err = ASAPError.timeout(`Handler exceeded its deadline for ${scope.taskId}`);
        scope.abort(err);
        this.settle(scope, { kind: 'error', error: err.toJSON() });
      }
    }
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
