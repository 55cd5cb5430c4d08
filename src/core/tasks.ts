import { createEnvelope, createReply, type Envelope } from '../protocol/envelope.js';
import { ASAPError, toASAPError } from '../protocol/errors.js';
import { encodeEnvelopeResult, type JsonRpcId } from '../protocol/jsonrpc.js';
import type { Manifest } from '../protocol/manifest.js';
import type { TaskRequest, TaskStream } from '../protocol/payloads.js';
import type { JsonObject } from '../protocol/schema-util.js';
import type { Outcome } from './dedupe.js';
import type { Session } from './dispatcher.js';
import { TurnBudget } from './fairness.js';
import type { Instrumentation, RequestInfo } from './instrumentation.js';
import type { Logger } from './logger.js';
import { handlerError } from './opaque-error.js';
import type { Handler, HandlerContext, HandlerResult, PushInit, TransportKind } from './registry.js';
import type { Timer, Timers } from './timers.js';
import { carryTrace, type RequestSpan } from './tracing.js';

export interface TaskRuntimeOptions {
  logger: Logger;
  timers: Timers;
  manifest: () => Manifest | undefined;
  /** Push to every connection of an agent URN (what `ctx.pushTo` calls). */
  pushTo: ((agentUrn: string, envelope: Envelope<object>) => Promise<number>) | undefined;
  hooks: Instrumentation | undefined;
  /** Handler deadline when a TaskRequest names none. */
  defaultTimeoutMs: number;
  /** Granularity of the deadline sweep. */
  resolutionMs: number;
  exposeHandlerErrors: boolean;
  yieldEveryMs: number | undefined;
}

/**
 * One handler call: the context the handler sees, and the dispatcher's record
 * of it (deadline, abort signal made on first use, settlement). One object per
 * request on purpose: the hot path allocates as little as it can.
 */
class TaskScope<P extends object = JsonObject> implements HandlerContext<P> {
  done = false;
  resolve: ((outcome: Outcome) => void) | undefined;
  /** Time (timers.now()) past which the sweep ends it; set when the handler turns out to be asynchronous. */
  deadline = Number.POSITIVE_INFINITY;
  private controller: AbortController | undefined;
  private abortReason: unknown;

  constructor(
    readonly envelope: Envelope<P>,
    readonly taskId: string,
    readonly isTask: boolean,
    private readonly session: Session,
    private readonly owner: TaskRuntime,
    /** The request's span when a tracer records it. */
    readonly traceSpan: RequestSpan | undefined,
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
    const env = this.toEnvelope(envelope);
    const span = this.traceSpan;
    const pushed = span === undefined ? this.session.push(env) : span.push(env, () => this.session.push(env));
    const pause = this.owner.turns.pause();
    return pause === undefined ? pushed : pushed.then(() => pause);
  }

  pushTo(agentUrn: string, envelope: Envelope<object> | PushInit<object>): Promise<number> {
    if (this.done) return Promise.reject(this.abortReason ?? ASAPError.invalidState('Task is over'));
    const env = this.toEnvelope({ recipient: agentUrn, ...envelope });
    const span = this.traceSpan;
    const pushed =
      span === undefined
        ? this.owner.pushTo(agentUrn, env)
        : span.push(env, () => this.owner.pushTo(agentUrn, env));
    const pause = this.owner.turns.pause();
    return pause === undefined ? pushed : pushed.then((n) => pause.then(() => n));
  }

  private toEnvelope(envelope: Envelope<object> | PushInit<object>): Envelope<object> {
    if ('id' in envelope && 'timestamp' in envelope) return envelope;
    // The request's trace_id and traceparent, unless the push names its own (asap-wire.md §13).
    return carryTrace(
      createEnvelope({ sender: this.envelope.recipient, recipient: this.envelope.sender, ...envelope }),
      this.envelope,
    );
  }

  reply<Q extends object>(payloadType: string, payload: Q): Envelope<Q> {
    return createReply(this.envelope, payloadType, payload);
  }
}

const PEER_GONE = ASAPError.invalidState('The connection closed before the task finished', {
  reason: 'connection closed',
});

/** The reply envelope as the JSON text an outcome keeps (a flat string is cheap to hold for the dedupe window). */
export function stringifyReply(request: Envelope, payloadType: string, payload: object): string {
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
 * Runs handlers: the context each one sees, deadlines (one sweep timer for
 * all), TaskCancel, streams pumped chunk by chunk within the turn budget, and
 * abort on shutdown; every run ends in one {@link Outcome}. The dispatcher
 * decides whether a message runs; this decides how it runs and ends.
 */
export class TaskRuntime {
  readonly logger: Logger;
  readonly manifest: () => Manifest | undefined;
  /** @internal Shared by every stream and push loop (see TurnBudget). */
  readonly turns: TurnBudget;
  private readonly hooks: Instrumentation | undefined;
  private readonly timers: Timers;
  private readonly pushToAgent: TaskRuntimeOptions['pushTo'];
  private readonly exposeHandlerErrors: boolean;
  private readonly defaultTimeoutMs: number;
  private readonly resolutionMs: number;
  private readonly running = new Set<TaskScope>();
  private readonly tasks = new Map<string, TaskScope>();
  private sweepTimer: Timer | undefined;
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  constructor(opts: TaskRuntimeOptions) {
    this.logger = opts.logger;
    this.timers = opts.timers;
    this.manifest = opts.manifest;
    this.pushToAgent = opts.pushTo;
    this.hooks = opts.hooks;
    this.defaultTimeoutMs = opts.defaultTimeoutMs;
    this.resolutionMs = opts.resolutionMs;
    this.exposeHandlerErrors = opts.exposeHandlerErrors;
    this.turns = new TurnBudget(opts.yieldEveryMs);
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /** What `ctx.pushTo` calls. */
  pushTo(agentUrn: string, envelope: Envelope<object>): Promise<number> {
    if (this.pushToAgent === undefined)
      return Promise.reject(ASAPError.invalidState('Push by agent URN is not available here'));
    return this.pushToAgent(agentUrn, envelope);
  }

  /** Aborts the running task `taskId` with `reason`; false when no such task runs. */
  cancel(taskId: string, reason: unknown): boolean {
    const scope = this.tasks.get(taskId);
    if (scope === undefined) return false;
    scope.abort(reason);
    return true;
  }

  /**
   * Runs the handler. A handler that returns at once yields its outcome at
   * once; one that returns a promise or a stream yields a promise, settled by
   * the handler, the deadline sweep, a TaskCancel or shutdown, whichever is first.
   */
  run(
    env: Envelope,
    key: string,
    handler: Handler<object>,
    session: Session,
    id: JsonRpcId | undefined,
    collect: boolean,
    info: RequestInfo | undefined,
    span: RequestSpan | undefined,
  ): Outcome | Promise<Outcome> {
    const isTask = key === 'taskrequest';
    const taskId = isTask || typeof env.payload.task_id !== 'string' ? env.id : env.payload.task_id;
    const scope = new TaskScope(env, taskId, isTask, session, this, span);
    let result: HandlerResult | Promise<HandlerResult>;
    try {
      result = handler(env, scope);
      // Nothing can cancel or time out a handler while it runs synchronously: only one that
      // returns a promise or a stream is registered for TaskCancel, the deadline and shutdown.
      if (!isPromiseLike(result) && !isAsyncIterable(result)) return this.toOutcome(env, key, result);
    } catch (err) {
      return this.failure(env, key, scope, err, info);
    }
    const config = isTask ? (env.payload as TaskRequest).config : undefined;
    scope.deadline =
      this.timers.now() +
      (config?.timeout_seconds != null ? config.timeout_seconds * 1000 : this.defaultTimeoutMs);
    this.running.add(scope);
    if (isTask) this.tasks.set(taskId, scope);
    this.ensureSweep();
    const pending = result;
    return new Promise<Outcome>((resolve) => {
      scope.resolve = resolve;
      const fail = (err: unknown) => this.settle(scope, this.failure(env, key, scope, err, info));
      const finish = (r: HandlerResult) => {
        if (isAsyncIterable(r)) {
          this.pump(r, env, scope, session, id, collect, info).then((o) => this.settle(scope, o), fail);
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

  private failure(
    env: Envelope,
    key: string,
    scope: TaskScope,
    err: unknown,
    info: RequestInfo | undefined,
  ): Outcome {
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
    // Not once the scope is over (deadline, shutdown): its request already finished.
    if (info !== undefined && !scope.done) this.hooks!.handlerError?.(info, err);
    if (scope.traceSpan !== undefined && !scope.done) scope.traceSpan.exception(err);
    const e = handlerError(this.logger, err, this.exposeHandlerErrors, {
      envelope_id: env.id,
      payload_type: env.payload_type,
    });
    if (err instanceof ASAPError)
      this.logger.warn({ envelope_id: env.id, code: e.code, err: e.message }, 'handler refused the request');
    return { kind: 'error', error: e.toWire() };
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
      const reply = carryTrace(obj as Envelope<object>, env);
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
    info: RequestInfo | undefined,
  ): Promise<Outcome> {
    const live = session.interactive && !collect && id !== undefined;
    for await (const chunk of source) {
      if (scope.done) break;
      if (info !== undefined) this.hooks!.streamChunk?.(info);
      scope.traceSpan?.chunk();
      const reply = isEnvelopeLike(chunk) ? carryTrace(chunk, env) : createReply(env, 'TaskStream', chunk);
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
        this.settle(scope, { kind: 'error', error: PEER_GONE.toWire() });
        break;
      }
      if (this.timers.now() >= scope.deadline) {
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

  private ensureSweep(): void {
    if (this.sweepTimer !== undefined || this.closed) return;
    this.sweepTimer = this.timers.setInterval(() => this.sweep(), this.resolutionMs);
  }

  /** Ends a scope at its deadline: aborted, and answered -32033. */
  private expire(scope: TaskScope): void {
    const err = ASAPError.timeout(`Handler exceeded its deadline for ${scope.taskId}`);
    scope.abort(err);
    this.settle(scope, { kind: 'error', error: err.toWire() });
  }

  private sweep(): void {
    const now = this.timers.now();
    for (const scope of this.running) if (scope.deadline <= now) this.expire(scope);
    if (this.running.size === 0 && this.sweepTimer !== undefined) {
      this.sweepTimer.cancel();
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

  /** Aborts every running handler and stops the sweep. */
  close(reason: unknown = ASAPError.resourceExhausted('Server shutting down')): void {
    this.closed = true;
    for (const scope of this.running) {
      scope.abort(reason);
      this.settle(scope, { kind: 'error', error: toASAPError(reason).toWire() });
    }
    this.sweepTimer?.cancel();
    this.sweepTimer = undefined;
  }
}
