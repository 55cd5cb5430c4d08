import { Registry } from 'prom-client';
import type { Instrumentation } from '../core/instrumentation.js';
import { CounterFamily, registered } from '../core/metric-families.js';

export interface ClientMetricsOptions {
  /** Where the counters are registered: the application's registry, often the server's (default: a new one). */
  registry?: Registry;
  /** The metric names' prefix (default `asap_client_`). */
  prefix?: string;
}

export interface ClientMetrics {
  /** Give them to the client: `new ASAPClient(url, { websocket: { instrumentation } })`. */
  readonly instrumentation: Instrumentation;
  readonly registry: Registry;
}

const ACK_STATUSES: ReadonlySet<string> = new Set(['received', 'rejected', 'processed']);
const CIRCUIT_STATES = ['closed', 'open', 'half-open'] as const;

/**
 * Prometheus counters of a client's WebSocket connections: reconnections, retransmissions,
 * acks received by status, circuit breaker transitions, and how many breakers are open now
 * (every transport given these hooks counts into the same metrics). Node only: the browser
 * build has no prom-client.
 */
export function clientMetrics(opts: ClientMetricsOptions = {}): ClientMetrics {
  const registry = opts.registry ?? new Registry();
  const prefix = opts.prefix ?? 'asap_client_';
  const counter = (name: string, help: string, labels: readonly string[] = [], type?: 'gauge') =>
    registered(registry, new CounterFamily(prefix + name, help, labels, type), CounterFamily);
  const reconnects = counter('reconnects_total', 'WebSocket connections opened again after a drop').child();
  const retransmissions = counter('retransmissions_total', 'Unacknowledged envelopes sent again').child();
  const acks = counter('acks_received_total', 'MessageAcks received for envelopes sent', ['status']);
  const transitions = counter('circuit_transitions_total', 'Circuit breaker state changes, by new state', [
    'state',
  ]);
  const open = counter(
    'circuits_open',
    'Circuit breakers open now (requests fail fast)',
    [],
    'gauge',
  ).child();
  for (const state of CIRCUIT_STATES) transitions.child(state);

  return {
    registry,
    instrumentation: {
      reconnected() {
        reconnects.value++;
      },
      retransmitted() {
        retransmissions.value++;
      },
      ackReceived(status) {
        acks.child(ACK_STATUSES.has(status) ? status : 'other').value++;
      },
      circuitChanged(state, previous) {
        transitions.child(CIRCUIT_STATES.includes(state as never) ? state : 'other').value++;
        if (state === 'open') open.value++;
        if (previous === 'open') open.value--;
      },
    },
  };
}
