import type { Envelope } from '../protocol/envelope.js';
import type { Claim } from './dedupe.js';
import type { Logger } from './logger.js';

/** One request as the hooks see it: built only when hooks are installed. */
export interface RequestInfo {
  /** The session's transport (`http`, `websocket`). */
  transport: string;
  /** The canonical payload type when it is a known one (`TaskRequest` for `task.request`), else as sent. */
  payloadType: string;
  /**
   * The skill of a TaskRequest that a registered skill handler runs. Absent for a skill the
   * registry does not know, so a caller cannot grow a metric's label set with made-up names.
   */
  skill?: string;
  sender: string;
  envelopeId: string;
  /** The envelope's `trace_id`, or the trace id of `extensions.traceparent` (asap-wire.md §13). */
  traceId?: string;
  /** The caller's W3C `extensions.traceparent`, for a tracer to continue the caller's span. */
  traceparent?: string;
}

/**
 * The RequestInfo given to `requestStarted`, completed in place: hooks get the same object at
 * both ends of a request (copy what you keep beyond the hook).
 */
export interface RequestFinishedInfo extends RequestInfo {
  /** `error` when the answer is a JSON-RPC error (handler error, deadline, cancel by shutdown, …). */
  outcome: 'ok' | 'error';
  /** The JSON-RPC error code, when `outcome` is `error`. */
  errorCode?: number;
  /** From just before the handler ran to its outcome being recorded (performance.now() resolution). */
  durationMs: number;
}

/** What the dedupe store said about an envelope (asap-wire.md §6, §10). */
export type DedupeState = Claim['state'];

/**
 * Why an envelope was refused before any handler ran. `rate_limit` and `auth` come from the
 * transports; the rest from the dispatcher (`internal`: a nonce store failed).
 */
export type RejectReason =
  | 'validation'
  | 'sender_mismatch'
  | 'invalid_timestamp'
  | 'invalid_nonce'
  | 'no_handler'
  | 'rate_limit'
  | 'auth'
  | 'internal';

export interface ConnectionInfo {
  id: number | string;
  transport: string;
  remoteAddress?: string;
}

export interface ConnectionClosedInfo {
  id: number | string;
  code: number;
  reason: string;
}

/**
 * Typed hooks that metrics and tracing subscribe to. Every hook is optional and
 * called synchronously where the event happens; a missing one costs the engine a
 * property read. Hooks must be quick and must not throw (the dispatcher logs a
 * throwing hook once and carries on).
 */
export interface Instrumentation {
  /** A new envelope passed every check and its handler is about to run. */
  requestStarted?(info: RequestInfo): void;
  /** That handler's outcome is recorded; exactly once per `requestStarted`, with the same fields. */
  requestFinished?(info: RequestFinishedInfo): void;
  /** The dedupe store's answer for each envelope that reached it (every one while dedupe is on). */
  dedupe?(state: DedupeState): void;
  /** An envelope or frame refused before its handler ran, with the JSON-RPC code sent back. */
  rejected?(reason: RejectReason, code: number): void;
  /** The handler threw or rejected (not for a deadline or a cancel); `requestFinished` follows. */
  handlerError?(info: RequestInfo, err: unknown): void;
  /** A streaming handler yielded a chunk (the final one included). */
  streamChunk?(info: RequestInfo): void;
  /** A MessageAck was written for a received envelope (`received`, `rejected`, `processed`). */
  ackSent?(status: string): void;
  /** A MessageAck arrived for an envelope this side sent. */
  ackReceived?(status: string): void;
  /** An unacknowledged envelope was sent again (asap-wire.md §6). */
  retransmitted?(envelopeId: string): void;
  /** A push was written to a connection; `replayed` when a session resume sent it again (§12). */
  pushSent?(replayed: boolean): void;
  /** A shared-store operation (Redis) finished, `ok` false when it failed or timed out. */
  storeOperation?(durationMs: number, ok: boolean): void;
  /** A client's connection was opened again after a drop. */
  reconnected?(): void;
  /** A client's circuit breaker changed state (`closed`, `open`, `half-open`). */
  circuitChanged?(state: string, previous: string): void;
  connectionOpened?(info: ConnectionInfo): void;
  connectionClosed?(info: ConnectionClosedInfo): void;
}

type HookName = keyof Instrumentation;
type AnyHook = (this: Instrumentation, a?: unknown, b?: unknown) => void;

const HOOK_NAMES = [
  'requestStarted',
  'requestFinished',
  'dedupe',
  'rejected',
  'handlerError',
  'streamChunk',
  'ackSent',
  'ackReceived',
  'retransmitted',
  'pushSent',
  'storeOperation',
  'reconnected',
  'circuitChanged',
  'connectionOpened',
  'connectionClosed',
] as const satisfies readonly HookName[];

// Fails to compile when a hook is added to Instrumentation but not to HOOK_NAMES.
const everyHookListed: Exclude<HookName, (typeof HOOK_NAMES)[number]> extends never ? true : never = true;
void everyHookListed;

/** The objects guardInstrumentation made: guarding one again returns it as is. */
const guardedSets = new WeakSet<object>();

/**
 * @internal
 * The hooks the engine calls: only those `hooks` defines (undefined when none), each
 * called with `hooks` as `this`, and each made safe: a hook that throws is logged once
 * (per hook) and ignored, so a broken metrics exporter cannot fail a request. Idempotent:
 * a transport may guard the user's hooks once and hand the result to the Dispatcher.
 */
export function guardInstrumentation(
  hooks: Instrumentation | undefined,
  logger: Logger,
): Instrumentation | undefined {
  if (hooks === undefined) return undefined;
  if (guardedSets.has(hooks)) return hooks;
  const guarded: Record<string, AnyHook> = {};
  let any = false;
  for (const name of HOOK_NAMES) {
    const hook = hooks[name] as AnyHook | undefined;
    if (typeof hook !== 'function') continue;
    let logged = false;
    guarded[name] = (a, b) => {
      try {
        hook.call(hooks, a, b);
      } catch (err) {
        if (logged) return;
        logged = true;
        logger.error(
          { hook: name, err: err instanceof Error ? err.message : String(err) },
          'instrumentation hook failed (further failures of this hook are not logged)',
        );
      }
    };
    any = true;
  }
  if (!any) return undefined;
  guardedSets.add(guarded);
  return guarded as Instrumentation;
}

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** @internal The RequestInfo of an envelope (call it only when a hook will use it). */
export function requestInfo(
  env: Envelope<object>,
  transport: string,
  payloadType: string,
  skill: string | undefined,
): RequestInfo {
  // Every field set from the start (requestFinished's too), so that the object keeps one shape
  // from requestStarted to requestFinished, which completes it in place.
  const extension = env.extensions?.traceparent;
  const traceparent = typeof extension === 'string' ? extension : undefined;
  let traceId = typeof env.trace_id === 'string' && env.trace_id !== '' ? env.trace_id : undefined;
  if (traceId === undefined && traceparent !== undefined) traceId = TRACEPARENT.exec(traceparent)?.[1];
  const info: RequestFinishedInfo = {
    transport,
    payloadType,
    skill,
    sender: env.sender,
    envelopeId: env.id,
    traceId,
    traceparent,
    outcome: 'ok',
    errorCode: undefined,
    durationMs: 0,
  };
  return info;
}

/**
 * Hooks that call each of `parts` (undefined entries skipped) in order, so that several
 * subscribers (metrics, tracing, the user's own) each see every event. Only hooks some part
 * defines are present, so a combination costs nothing for the events nobody records. A part
 * that throws does not keep the later ones from running; the first error is rethrown after
 * all ran (for guardInstrumentation to log). Undefined when no part defines a hook; the one
 * part itself when only one is given.
 */
export function combineInstrumentation(
  ...parts: ReadonlyArray<Instrumentation | undefined>
): Instrumentation | undefined {
  const present = parts.filter((p): p is Instrumentation => p !== undefined);
  if (present.length <= 1) return present[0];
  const combined: Record<string, AnyHook> = {};
  let any = false;
  for (const name of HOOK_NAMES) {
    const calls: Array<[Instrumentation, AnyHook]> = [];
    for (const p of present) {
      const hook = p[name] as AnyHook | undefined;
      if (typeof hook === 'function') calls.push([p, hook]);
    }
    if (calls.length === 0) continue;
    any = true;
    if (calls.length === 1) {
      const [owner, hook] = calls[0]!;
      combined[name] = (a, b) => hook.call(owner, a, b);
      continue;
    }
    combined[name] = (a, b) => {
      let failed = false;
      let first: unknown;
      for (const [owner, hook] of calls) {
        try {
          hook.call(owner, a, b);
        } catch (err) {
          if (!failed) {
            failed = true;
            first = err;
          }
        }
      }
      if (failed) throw first;
    };
  }
  return any ? (combined as Instrumentation) : undefined;
}
