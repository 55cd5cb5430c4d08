// `asap-ts/otel`: OpenTelemetry tracing for ASAP servers and clients (asap-wire.md §13), on
// `@opentelemetry/api` only: spans are recorded by whatever TracerProvider the application
// registers, and cost next to nothing while it registers none.
import * as otelApi from '@opentelemetry/api';
import type { Tracing } from '../core/tracing.js';
import { type OpenTelemetryApi, otelClientTracing } from './client.js';
import { otelServerTracing, remoteParent } from './server.js';

export type {
  ClientCall,
  ClientTracing,
  RequestSpan,
  ServerTracing,
  TracedRequest,
  Tracing,
} from '../core/tracing.js';
export { type OpenTelemetryApi, otelClientTracing, otelServerTracing, remoteParent };

/**
 * Tracing on `@opentelemetry/api` (this package's copy by default; pass your own module, e.g. in a
 * browser bundle): a SERVER span per request that continues the caller's trace, with the handler
 * run inside it and a PRODUCER span per push it sends; a CLIENT span per call, whose W3C
 * traceparent travels in `extensions.traceparent` with its trace id in `trace_id`. Give it to
 * `ASAPServer` / the transports as `tracing`; the server and the Node client use it by default.
 */
export function otelTracing(api: OpenTelemetryApi = otelApi): Tracing {
  const server = otelServerTracing(api);
  const client = otelClientTracing(api);
  return {
    recording: server.recording,
    startRequest: server.startRequest,
    startCall: client.startCall,
  };
}
