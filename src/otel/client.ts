// The client half of the OpenTelemetry tracing: spans of calls and the trace context they carry
// (asap-wire.md §13). It takes the `@opentelemetry/api` object as an argument and imports only its
// types: the Node client loads the API on first use (src/client/tracing.ts), a page passes its own.
import type * as Api from '@opentelemetry/api';
import type { ClientCall, ClientTracing } from '../core/tracing.js';
import type { Envelope } from '../protocol/envelope.js';
import { KNOWN_PAYLOAD_TYPES, normalizePayloadType } from '../protocol/payloads.js';

/** The parts of `@opentelemetry/api` the tracing uses (pass the module itself). */
export type OpenTelemetryApi = Pick<
  typeof Api,
  'trace' | 'context' | 'SpanKind' | 'SpanStatusCode' | 'ROOT_CONTEXT' | 'ProxyTracerProvider'
>;

/** The instrumentation scope of every span. */
export const TRACER_NAME = 'asap-ts';

/**
 * @internal The tracer of the registered TracerProvider, or undefined while none is registered.
 * Asked per request: with nothing registered it costs a few property reads (the answer is
 * kept per provider, so registering, replacing or disabling one later is seen at once).
 */
export function tracerOf(api: OpenTelemetryApi): () => Api.Tracer | undefined {
  const ProxyProvider = api.ProxyTracerProvider;
  const noop = typeof ProxyProvider === 'function' ? new ProxyProvider().getDelegate() : undefined;
  let provider: Api.TracerProvider | undefined;
  let tracer: Api.Tracer | undefined;
  return () => {
    const global = api.trace.getTracerProvider() as Api.TracerProvider & {
      getDelegate?(): Api.TracerProvider;
    };
    const current = typeof global.getDelegate === 'function' ? global.getDelegate() : global;
    if (current !== provider) {
      provider = current;
      // Another copy of the API has its own no-op provider: known by its class name.
      const isNoop = current === noop || current.constructor?.name === 'NoopTracerProvider';
      tracer = isNoop ? undefined : current.getTracer(TRACER_NAME);
    }
    return tracer;
  };
}

/** @internal The W3C traceparent of a span context. */
export function traceparentOf(sc: Api.SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/** @internal The canonical payload type (`TaskRequest` for `task.request`), else the type as sent. */
export function canonicalType(payloadType: string): string {
  return KNOWN_PAYLOAD_TYPES.get(normalizePayloadType(payloadType)) ?? payloadType;
}

/** @internal Attributes every ASAP span has: `rpc.*` and `messaging.*` of one envelope. */
export function envelopeAttributes(
  env: Envelope<object>,
  payloadType: string,
  method: string,
  operation: string,
): Api.Attributes {
  const attributes: Api.Attributes = {
    'rpc.system': 'asap',
    'rpc.method': method,
    'messaging.system': 'asap',
    'messaging.operation.type': operation,
    'messaging.message.id': env.id,
    'messaging.destination.name': env.recipient,
    'asap.payload_type': payloadType,
    'asap.sender': env.sender,
  };
  const conversation = (env.payload as { conversation_id?: unknown }).conversation_id;
  if (typeof conversation === 'string') attributes['messaging.message.conversation_id'] = conversation;
  return attributes;
}

/** @internal Marks a span failed with `err` (an ASAPError's code as `rpc.jsonrpc.error_code`). */
export function failSpan(api: OpenTelemetryApi, span: Api.Span, err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'number') span.setAttribute('rpc.jsonrpc.error_code', code);
  if (err instanceof Error) span.recordException(err);
  span.setStatus({ code: api.SpanStatusCode.ERROR, message });
}

/** The client half of {@link otelTracing}: a CLIENT span per call, its traceparent in the envelope. */
export function otelClientTracing(api: OpenTelemetryApi): ClientTracing {
  const tracer = tracerOf(api);
  return {
    startCall(envelope, kind, transport): ClientCall | undefined {
      const t = tracer();
      if (t === undefined) return undefined;
      const payloadType = canonicalType(envelope.payload_type);
      const skill = (envelope.payload as { skill_id?: unknown }).skill_id;
      const method = payloadType === 'TaskRequest' && typeof skill === 'string' ? skill : payloadType;
      const attributes = envelopeAttributes(envelope, payloadType, method, 'send');
      attributes['asap.transport'] = transport;
      if (kind === 'stream') attributes['asap.stream'] = true;
      const span = t.startSpan(
        `asap ${method}`,
        { kind: api.SpanKind.CLIENT, attributes },
        api.context.active(),
      );
      const sc = span.spanContext();
      let sent = envelope;
      if (typeof envelope.extensions?.traceparent !== 'string' && api.trace.isSpanContextValid(sc)) {
        sent = {
          ...envelope,
          trace_id: envelope.trace_id ?? sc.traceId,
          extensions: { ...envelope.extensions, traceparent: traceparentOf(sc) },
        };
      }
      return {
        envelope: sent,
        end(): void {
          span.end();
        },
        fail(err: unknown): void {
          failSpan(api, span, err);
          span.end();
        },
      };
    },
  };
}
