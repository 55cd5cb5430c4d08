import { Registry } from 'prom-client';
import type { DedupeStats } from '../core/dedupe.js';
import type {
  ConnectionClosedInfo,
  DedupeState,
  Instrumentation,
  RejectReason,
} from '../core/instrumentation.js';
import { CounterFamily, type HistogramChild, HistogramFamily, registered } from '../core/metric-families.js';
import { PAYLOAD_SCHEMAS } from '../protocol/payloads.js';

export interface PrometheusMetricsOptions {
  /** Where the metrics are registered (default: a new Registry of their own). */
  registry?: Registry;
  /** The metric names' prefix (default `asap_`, the reference's names). */
  prefix?: string;
}

/** State a server reports when scraped rather than by events. */
export interface MetricsSources {
  /** True while the server drains (asap-wire.md §9). */
  draining?(): boolean;
  /** The dedupe store's counts (the in-memory store has them). */
  dedupeStats?(): DedupeStats | undefined;
}

export interface PrometheusMetrics {
  /** The hooks that record the metrics: give them to ASAPServer's `instrumentation` (or `metrics`). */
  readonly instrumentation: Instrumentation;
  readonly registry: Registry;
  /** The `Content-Type` of `metrics()` (Prometheus text format). */
  readonly contentType: string;
  /** The registry's metrics in the Prometheus text format. */
  metrics(): Promise<string>;
  /** Adds a server's state, read at each scrape (ASAPServer does this for its drain and store). */
  watch(sources: MetricsSources): void;
}

/** Latency buckets of the reference (seconds). */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Store (Redis) operations take milliseconds, not seconds. */
const STORE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

/** The canonical payload type names: the only payload_type label values besides `other`. */
const PAYLOAD_TYPES: ReadonlySet<string> = new Set(Object.keys(PAYLOAD_SCHEMAS));
/** MessageAck statuses (asap-wire.md §6); a peer's other spellings count as `other`. */
const ACK_STATUSES: ReadonlySet<string> = new Set(['received', 'rejected', 'processed']);

const payloadLabel = (type: string): string => (PAYLOAD_TYPES.has(type) ? type : 'other');
const ackLabel = (status: string): string => (ACK_STATUSES.has(status) ? status : 'other');

/** Why the server closed a WebSocket, as a bounded label. */
function closeLabel({ code, reason }: ConnectionClosedInfo): string {
  if (code === 1008) {
    if (reason === 'Slow consumer') return 'slow_consumer';
    if (reason === 'Rate limit exceeded') return 'rate_limit';
    return 'policy';
  }
  if (code === 4401) return 'token_expired';
  if (code === 1001) return 'going_away';
  if (code === 1000 || code === 1005) return 'normal';
  return 'abnormal';
}

/** The families of one registry and prefix: every server recording there bumps the same numbers. */
function families(registry: Registry, prefix: string) {
  const counter = (name: string, help: string, labels: readonly string[] = [], type?: 'gauge') =>
    registered(registry, new CounterFamily(prefix + name, help, labels, type), CounterFamily);
  const histogram = (name: string, help: string, labels: readonly string[], buckets: readonly number[]) =>
    registered(registry, new HistogramFamily(prefix + name, help, labels, buckets), HistogramFamily);
  return {
    requests: counter('requests_total', 'Total number of ASAP requests handled', ['payload_type', 'status']),
    duration: histogram(
      'request_duration_seconds',
      'Request processing duration in seconds',
      ['payload_type', 'status'],
      LATENCY_BUCKETS,
    ),
    authFailures: counter('auth_failures_total', 'Total number of authentication failures'),
    senderMismatch: counter('sender_mismatch_total', 'Total number of sender identity mismatches'),
    validationErrors: counter('validation_errors_total', 'Total number of envelope validation errors'),
    invalidTimestamp: counter('invalid_timestamp_total', 'Total number of invalid timestamp rejections'),
    invalidNonce: counter('invalid_nonce_total', 'Total number of invalid nonce rejections'),
    handlerErrors: counter('handler_errors_total', 'Total number of handler execution failures', [
      'payload_type',
      'skill',
    ]),
    rejected: counter('rejected_total', 'Envelopes and frames refused before a handler ran', ['reason']),
    connections: counter('websocket_connections', 'Open WebSocket connections', [], 'gauge'),
    closes: counter('websocket_closes_total', 'WebSocket connections closed, by why', ['reason']),
    acksSent: counter('acks_sent_total', 'MessageAcks sent for received envelopes', ['status']),
    acksReceived: counter('acks_received_total', 'MessageAcks received for envelopes sent', ['status']),
    retransmissions: counter('retransmissions_total', 'Unacknowledged envelopes sent again'),
    dedupe: counter('dedupe_total', 'Answers of the dedupe store', ['state']),
    dedupeEvicted: counter(
      'dedupe_evicted_total',
      'Envelope ids forgotten before their window ended (the id budget was full)',
    ),
    rateLimited: counter('rate_limited_total', 'WebSocket messages refused by the rate limit'),
    streamChunks: counter('stream_chunks_total', 'Chunks yielded by streaming handlers', ['skill']),
    pushes: counter('pushes_total', 'Pushes written to a connection (replayed: on a session resume)', [
      'replayed',
    ]),
    draining: counter('draining', '1 while the server drains before shutting down', [], 'gauge'),
    storeDuration: histogram(
      'store_operation_duration_seconds',
      'Duration of the shared store operations (Redis), in seconds',
      ['status'],
      STORE_BUCKETS,
    ),
    storeErrors: counter('store_errors_total', 'Shared store (Redis) operations that failed or timed out'),
  };
}

/**
 * Prometheus metrics recorded from the Instrumentation hooks, named as the reference's
 * (`asap_requests_total{payload_type,status}`, `asap_request_duration_seconds`, the rejection
 * counters) plus the WebSocket, ack, retransmission, dedupe, push, rate-limit, stream, drain and
 * store metrics. Every label has a bounded set of values: payload types are the 14 canonical
 * names (else `other`), skills only those the registry runs (the dispatcher reports no other),
 * ack statuses the three of §6 (else `other`), close reasons a fixed list. Several servers may
 * share one registry: they share the metrics (see metric-families.ts for why these are not
 * prom-client's own Counter and Histogram).
 */
export function prometheusMetrics(opts: PrometheusMetricsOptions = {}): PrometheusMetrics {
  const registry = opts.registry ?? new Registry();
  const m = families(registry, opts.prefix ?? 'asap_');

  const byReason: Partial<Record<RejectReason, { value: number }>> = {
    auth: m.authFailures.child(),
    sender_mismatch: m.senderMismatch.child(),
    validation: m.validationErrors.child(),
    invalid_timestamp: m.invalidTimestamp.child(),
    invalid_nonce: m.invalidNonce.child(),
    rate_limit: m.rateLimited.child(),
  };
  const connections = m.connections.child();
  const retransmissions = m.retransmissions.child();
  // The WebSocket connections counted open, so that a close is counted only after its open.
  const open = new Set<number | string>();
  const pushed = m.pushes.child('false');
  const replayed = m.pushes.child('true');
  const storeOk = m.storeDuration.child('ok');
  const storeFailed = m.storeDuration.child('error');
  const storeErrors = m.storeErrors.child();

  // The per-request pair of children, cached by payload type (two statuses each).
  const perRequest = new Map<string, { ok: RequestChildren; error: RequestChildren }>();
  const requestChildren = (payloadType: string) => {
    let pair = perRequest.get(payloadType);
    if (pair === undefined) {
      const label = payloadLabel(payloadType);
      const make = (status: string) => ({
        count: m.requests.child(label, status),
        time: m.duration.child(label, status),
      });
      pair = { ok: make('success'), error: make('error') };
      perRequest.set(payloadType, pair);
    }
    return pair;
  };

  const instrumentation: Instrumentation = {
    requestFinished(info) {
      const pair = requestChildren(info.payloadType);
      const c = info.outcome === 'ok' ? pair.ok : pair.error;
      c.count.value++;
      m.duration.observe(c.time, info.durationMs / 1000);
    },
    rejected(reason) {
      m.rejected.child(reason).value++;
      const specific = byReason[reason];
      if (specific !== undefined) specific.value++;
    },
    handlerError(info) {
      m.handlerErrors.child(payloadLabel(info.payloadType), info.skill ?? '').value++;
    },
    streamChunk(info) {
      m.streamChunks.child(info.skill ?? '').value++;
    },
    dedupe(state: DedupeState) {
      m.dedupe.child(state).value++;
    },
    ackSent(status) {
      m.acksSent.child(ackLabel(status)).value++;
    },
    ackReceived(status) {
      m.acksReceived.child(ackLabel(status)).value++;
    },
    retransmitted() {
      retransmissions.value++;
    },
    pushSent(isReplay) {
      (isReplay ? replayed : pushed).value++;
    },
    storeOperation(durationMs, ok) {
      m.storeDuration.observe(ok ? storeOk : storeFailed, durationMs / 1000);
      if (!ok) storeErrors.value++;
    },
    connectionOpened(info) {
      if (info.transport !== 'websocket' || open.has(info.id)) return;
      open.add(info.id);
      connections.value++;
    },
    connectionClosed(info) {
      if (!open.delete(info.id)) return;
      connections.value--;
      m.closes.child(closeLabel(info)).value++;
    },
  };

  return {
    instrumentation,
    registry,
    contentType: registry.contentType,
    metrics: () => registry.metrics(),
    watch(sources) {
      const { draining, dedupeStats } = sources;
      if (draining !== undefined) m.draining.read(() => (draining() ? 1 : 0));
      if (dedupeStats !== undefined) m.dedupeEvicted.read(() => dedupeStats()?.idsEvicted ?? 0);
    },
  };
}

interface RequestChildren {
  count: { value: number };
  time: HistogramChild;
}
