// The server half of the OpenTelemetry tracing: a SERVER span per request continuing the caller's
// trace, the handler run inside it, and a PRODUCER span per push the handler sends.
import type * as Api from '@opentelemetry/api';
import type { RequestSpan, ServerTracing, TracedRequest } from '../core/tracing.js';
import type { Envelope } from '../protocol/envelope.js';
import { canonicalType, envelopeAttributes, failSpan, type OpenTelemetryApi, tracerOf } from './client.js';

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-|$)/;
const TRACE_ID = /^[0-9a-f]{32}$/;
const SPAN_ID = /^[0-9a-f]{16}$/;

/**
 * The caller's span context an envelope carries: the W3C `extensions.traceparent`
 * (asap-wire.md §13), else the Python reference's `trace_id` (32 hex) with `extensions.span_id`
 * (16 hex). Undefined when it carries none, or a malformed one.
 */
export function remoteParent(env: Envelope<object>): Api.SpanContext | undefined {
  const ext = env.extensions;
  const traceparent = ext?.traceparent;
  if (typeof traceparent === 'string') {
    const m = TRACEPARENT.exec(traceparent);
    // Version ff is invalid; version 00 has exactly four fields.
    if (m === null || m[1] === 'ff' || (m[1] === '00' && m[5] !== '')) return undefined;
    return valid({ traceId: m[2]!, spanId: m[3]!, traceFlags: Number.parseInt(m[4]!, 16), isRemote: true });
  }
  const spanId = ext?.span_id;
  const traceId = env.trace_id;
  if (
    typeof spanId === 'string' &&
    typeof traceId === 'string' &&
    TRACE_ID.test(traceId) &&
    SPAN_ID.test(spanId)
  )
    return valid({ traceId, spanId, traceFlags: 1, isRemote: true });
  return undefined;
}

/** All-zero ids are invalid (W3C Trace Context). */
function valid(sc: Api.SpanContext): Api.SpanContext | undefined {
  return /^0+$/.test(sc.traceId) || /^0+$/.test(sc.spanId) ? undefined : sc;
}

/** The server half of {@link otelTracing}. */
export function otelServerTracing(api: OpenTelemetryApi): ServerTracing {
  const tracer = tracerOf(api);
  return {
    recording: () => tracer() !== undefined,
    startRequest(request: TracedRequest): RequestSpan | undefined {
      const t = tracer();
      if (t === undefined) return undefined;
      return requestSpan(api, t, request);
    },
  };
}

function requestSpan(api: OpenTelemetryApi, tracer: Api.Tracer, request: TracedRequest): RequestSpan {
  const env = request.envelope;
  const { payloadType, skill } = request;
  const method = skill ?? payloadType;
  const attributes = envelopeAttributes(env, payloadType, method, 'process');
  attributes['rpc.jsonrpc.version'] = '2.0';
  if (request.rpcId != null) attributes['rpc.jsonrpc.request_id'] = String(request.rpcId);
  if (skill !== undefined) attributes['asap.skill_id'] = skill;
  attributes['asap.transport'] = request.transport;
  // A request from the network continues only the trace it carries, never a context of this process.
  const remote = remoteParent(env);
  const parent = remote === undefined ? api.ROOT_CONTEXT : api.trace.setSpanContext(api.ROOT_CONTEXT, remote);
  const span = tracer.startSpan(`asap ${method}`, { kind: api.SpanKind.SERVER, attributes }, parent);
  const active = api.trace.setSpan(parent, span);
  let chunks = 0;
  return {
    run: (fn) => api.context.with(active, fn),
    chunk(): void {
      chunks++;
    },
    push<T>(pushed: Envelope<object>, send: () => Promise<T>): Promise<T> {
      const type = canonicalType(pushed.payload_type);
      const child = tracer.startSpan(
        `asap push ${type}`,
        { kind: api.SpanKind.PRODUCER, attributes: envelopeAttributes(pushed, type, type, 'send') },
        active,
      );
      return send().then(
        (v) => {
          child.end();
          return v;
        },
        (err: unknown) => {
          failSpan(api, child, err);
          child.end();
          throw err;
        },
      );
    },
    exception(err: unknown): void {
      span.recordException(err instanceof Error ? err : String(err));
    },
    end(error): void {
      if (chunks > 0) span.setAttribute('asap.stream.chunks', chunks);
      if (error !== undefined) {
        span.setAttribute('rpc.jsonrpc.error_code', error.code);
        span.setAttribute('rpc.jsonrpc.error_message', error.message);
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: error.message });
      }
      span.end();
    },
  };
}
