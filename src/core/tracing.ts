import type { Envelope } from '../protocol/envelope.js';
import type { JsonRpcErrorObject } from '../protocol/errors.js';
import type { JsonObject } from '../protocol/schema-util.js';

/**
 * The tracing seam the engine calls (asap-wire.md §13). The engine knows nothing of a tracing
 * library: `otelTracing()` of `asap-ts/otel` implements it on `@opentelemetry/api`, and an
 * application may pass its own. Each start method is called once per request or call and is
 * expected to answer undefined at once when nothing records, so that tracing costs a request
 * close to nothing unless a tracer is registered.
 */
export interface ServerTracing {
  /**
   * The span of a request about to run its handler, continuing the caller's trace
   * (`extensions.traceparent`, else `trace_id` with `extensions.span_id`); undefined when
   * nothing records.
   */
  startRequest(request: TracedRequest): RequestSpan | undefined;
  /**
   * True when {@link startRequest} could return a span now: a cheap check the engine makes before
   * it gathers a {@link TracedRequest}. Optional (taken as true when absent).
   */
  recording?(): boolean;
}

/** A request as a tracer sees it. */
export interface TracedRequest {
  envelope: Envelope<object>;
  /** The canonical payload type when known (`TaskRequest` for `task.request`), else as sent. */
  payloadType: string;
  /** The skill of a TaskRequest that a registered skill handler runs. */
  skill?: string;
  /** The session's transport (`http`, `websocket`). */
  transport: string;
  /** The JSON-RPC id of the request; undefined for a notification. */
  rpcId?: string | number | null;
}

/** The span of one request on the server. Its methods must not throw. */
export interface RequestSpan {
  /** Runs `fn` with this span as the active context (its handler, and what the handler starts). */
  run<T>(fn: () => T): T;
  /** A streaming handler yielded a chunk (the final one included). */
  chunk(): void;
  /**
   * A push the handler sends (`envelope`), as a child span of this one around `send`, which
   * writes it; the span ends when the returned promise settles.
   */
  push<T>(envelope: Envelope<object>, send: () => Promise<T>): Promise<T>;
  /** The handler threw (recorded on the span; the outcome follows with {@link end}). */
  exception(err: unknown): void;
  /** The request's outcome is known: `error` when the answer is a JSON-RPC error. Ends the span. */
  end(error?: JsonRpcErrorObject): void;
}

/** The client side of the seam: a span per call, and the trace context it carries. */
export interface ClientTracing {
  /**
   * The span of a call about to go out (a request, or a stream), child of the active context;
   * undefined when nothing records. Its `envelope` is the one to send: the given one with
   * `extensions.traceparent` and `trace_id` of the span added when the caller set no traceparent.
   */
  startCall(
    envelope: Envelope<object>,
    kind: 'request' | 'stream',
    transport: string,
  ): ClientCall | undefined;
}

/** A call on the client. Its methods must not throw. */
export interface ClientCall {
  readonly envelope: Envelope<object>;
  /** The answer arrived: ends the span. */
  end(): void;
  /** The call failed with `err`: ends the span, marked failed. */
  fail(err: unknown): void;
}

/** Both sides, as `otelTracing()` returns them. */
export interface Tracing extends ServerTracing, ClientTracing {}

/**
 * @internal The envelope with `trace_id` and `extensions.traceparent` of `from` (a request)
 * where it has none of its own (asap-wire.md §13: replies, pushes and streamed chunks carry
 * them). The envelope is changed in place and returned.
 */
export function carryTrace<E extends Envelope<object>>(
  env: E,
  from: { trace_id?: string | null; extensions?: JsonObject | null },
): E {
  if (env.trace_id == null && from.trace_id != null) env.trace_id = from.trace_id;
  const traceparent = from.extensions?.traceparent;
  if (typeof traceparent === 'string' && env.extensions?.traceparent === undefined)
    env.extensions = { ...env.extensions, traceparent };
  return env;
}

/** @internal `result`, ending `call` when it settles. */
export function endWhenSettled<T>(call: ClientCall, result: Promise<T>): Promise<T> {
  return result.then(
    (v) => {
      call.end();
      return v;
    },
    (err: unknown) => {
      call.fail(err);
      throw err;
    },
  );
}

/** @internal The chunks of `source`, ending `call` with the last one, an error, or the consumer leaving early. */
export async function* endWhenDone<T>(
  call: ClientCall,
  source: AsyncIterable<T>,
): AsyncGenerator<T, void, undefined> {
  let failed = false;
  try {
    yield* source;
  } catch (err) {
    failed = true;
    call.fail(err);
    throw err;
  } finally {
    if (!failed) call.end();
  }
}
