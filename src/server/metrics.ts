import { Counter, Gauge, Histogram, type Metric, Registry } from 'prom-client';
import type { DedupeState, Instrumentation, RejectReason } from '../core/instrumentation.js';
import { PAYLOAD_SCHEMAS } from '../protocol/payloads.js';

export interface PrometheusMetricsOptions {
  /** Where the metrics are registered (default: a new Registry of their own). */
  registry?: Registry;
  /** The metric names' prefix (default `asap_`, the reference's names). */
  prefix?: string;
}

export interface PrometheusMetrics {
  /** The hooks that record the metrics: give them to ASAPServer's `instrumentation` (or `metrics`). */
  readonly instrumentation: Instrumentation;
  readonly registry: Registry;
  /** The `Content-Type` of `metrics()` (Prometheus text format). */
  readonly contentType: string;
  /** The registry's metrics in the Prometheus text format. */
  metrics(): Promise<string>;
}

/** Latency buckets of the reference (seconds). */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The canonical payload type names: the only payload_type label values besides `other`. */
const PAYLOAD_TYPES: ReadonlySet<string> = new Set(Object.keys(PAYLOAD_SCHEMAS));
/** MessageAck statuses (asap-wire.md §6); a peer's other spellings count as `other`. */
const ACK_STATUSES: ReadonlySet<string> = new Set(['received', 'rejected', 'processed']);

const payloadLabel = (type: string): string => (PAYLOAD_TYPES.has(type) ? type : 'other');
const ackLabel = (status: string): string => (ACK_STATUSES.has(status) ? status : 'other');

/**
 * Prometheus metrics recorded from the Instrumentation hooks, named as the reference's
 * (`asap_requests_total{payload_type,status}`, `asap_request_duration_seconds`, the rejection
 * counters) plus the WebSocket, ack, retransmission, dedupe, rate-limit and stream metrics.
 * Every label has a bounded set of values: payload types are the 14 canonical names (else
 * `other`), skills only those the registry runs (the dispatcher reports no other), ack
 * statuses the three of §6 (else `other`). Metrics already in `registry` under the same name
 * are reused, so several servers may share one registry.
 */
export function prometheusMetrics(opts: PrometheusMetricsOptions = {}): PrometheusMetrics {
  const registry = opts.registry ?? new Registry();
  const prefix = opts.prefix ?? 'asap_';

  function metric<M extends Metric>(name: string, make: (name: string) => M): M {
    const full = prefix + name;
    return (registry.getSingleMetric(full) as M | undefined) ?? make(full);
  }
  const counter = (name: string, help: string, labelNames: readonly string[] = []) =>
    metric(name, (n) => new Counter({ name: n, help, labelNames, registers: [registry] }));

  const requests = counter('requests_total', 'Total number of ASAP requests handled', [
    'payload_type',
    'status',
  ]);
  const duration = metric(
    'request_duration_seconds',
    (n) =>
      new Histogram({
        name: n,
        help: 'Request processing duration in seconds',
        labelNames: ['payload_type', 'status'],
        buckets: LATENCY_BUCKETS,
        registers: [registry],
      }),
  );
  const authFailures = counter('auth_failures_total', 'Total number of authentication failures');
  const senderMismatch = counter('sender_mismatch_total', 'Total number of sender identity mismatches');
  const validationErrors = counter('validation_errors_total', 'Total number of envelope validation errors');
  const invalidTimestamp = counter('invalid_timestamp_total', 'Total number of invalid timestamp rejections');
  const invalidNonce = counter('invalid_nonce_total', 'Total number of invalid nonce rejections');
  const handlerErrors = counter('handler_errors_total', 'Total number of handler execution failures', [
    'payload_type',
    'skill',
  ]);
  const rejected = counter('rejected_total', 'Envelopes and frames refused before a handler ran', ['reason']);
  const connections = metric(
    'websocket_connections',
    (n) => new Gauge({ name: n, help: 'Open WebSocket connections', registers: [registry] }),
  );
  const acksSent = counter('acks_sent_total', 'MessageAcks sent for received envelopes', ['status']);
  const acksReceived = counter('acks_received_total', 'MessageAcks received for envelopes sent', ['status']);
  const retransmissions = counter('retransmissions_total', 'Unacknowledged envelopes sent again');
  const dedupe = counter('dedupe_total', 'Answers of the dedupe store', ['state']);
  const rateLimited = counter('rate_limited_total', 'WebSocket messages refused by the rate limit');
  const streamChunks = counter('stream_chunks_total', 'Chunks yielded by streaming handlers', ['skill']);

  const byReason: Partial<Record<RejectReason, Counter>> = {
    auth: authFailures,
    sender_mismatch: senderMismatch,
    validation: validationErrors,
    invalid_timestamp: invalidTimestamp,
    invalid_nonce: invalidNonce,
    rate_limit: rateLimited,
  };
  // The WebSocket connections counted open, so that a close is counted only after its open.
  const open = new Set<number | string>();

  // The labelled children of the per-request metrics, made once per label pair: prom-client hashes
  // the label object on every inc()/observe() otherwise, which is most of what a metric costs.
  const perRequest = new Map<string, { count: { inc(): void }; time: { observe(v: number): void } }>();
  const requestMetrics = (payloadType: string, status: string) => {
    const key = `${payloadType}\u0000${status}`;
    let m = perRequest.get(key);
    if (m === undefined) {
      m = {
        count: requests.labels(payloadType, status),
        time: duration.labels(payloadType, status),
      };
      perRequest.set(key, m);
    }
    return m;
  };
  const dedupeByState = new Map<string, { inc(): void }>();

  const instrumentation: Instrumentation = {
    requestFinished(info) {
      const m = requestMetrics(payloadLabel(info.payloadType), info.outcome === 'ok' ? 'success' : 'error');
      m.count.inc();
      m.time.observe(info.durationMs / 1000);
    },
    rejected(reason) {
      rejected.inc({ reason });
      byReason[reason]?.inc();
    },
    handlerError(info) {
      handlerErrors.inc({ payload_type: payloadLabel(info.payloadType), skill: info.skill ?? '' });
    },
    streamChunk(info) {
      streamChunks.inc({ skill: info.skill ?? '' });
    },
    dedupe(state: DedupeState) {
      let child = dedupeByState.get(state);
      if (child === undefined) {
        child = dedupe.labels(state);
        dedupeByState.set(state, child);
      }
      child.inc();
    },
    ackSent(status) {
      acksSent.inc({ status: ackLabel(status) });
    },
    ackReceived(status) {
      acksReceived.inc({ status: ackLabel(status) });
    },
    retransmitted() {
      retransmissions.inc();
    },
    connectionOpened(info) {
      if (info.transport !== 'websocket' || open.has(info.id)) return;
      open.add(info.id);
      connections.inc();
    },
    connectionClosed(info) {
      if (open.delete(info.id)) connections.dec();
    },
  };

  return {
    instrumentation,
    registry,
    contentType: registry.contentType,
    metrics: () => registry.metrics(),
  };
}
