/**
 * The client's Prometheus counters (clientMetrics): retransmissions, acks received, circuit
 * transitions and open breakers against a plain server that acks never or always, and
 * reconnections through a proxy the test cuts.
 */
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { clientMetrics } from '../../src/client/metrics.js';
import { LocalErrorCode } from '../../src/protocol/errors.js';
import { manualTimers, watch } from '../support/manual-time.js';
import {
  ackFrame,
  cleanup,
  makeTransport,
  manualTransport,
  nextEvent,
  outcome,
  PlainServer,
  type Received,
  responseFrame,
  setup,
  task,
  within,
} from './helpers.js';

afterEach(cleanup);

/** The value of one sample line (`name{labels} value`) of a scrape, or undefined when absent. */
async function sample(registry: Registry, series: string): Promise<number | undefined> {
  const line = (await registry.metrics()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('clientMetrics', () => {
  it('counts retransmissions, the circuit opening and open breakers; acks by status', async () => {
    const registry = new Registry();
    const { instrumentation } = clientMetrics({ registry });
    let behave = false;
    const server = await PlainServer.start((r: Received) => {
      const env = r.msg.params?.envelope;
      if (!behave || env === undefined) return;
      if (env.requires_ack === true) r.socket.send(ackFrame(env, 'received'));
      if (r.msg.id !== undefined) r.socket.send(responseFrame(r, { ok: true }));
    });
    const timers = manualTimers();
    const transport = manualTransport(server.url, timers, {
      heartbeatIntervalMs: 0,
      instrumentation,
      circuitBreaker: { failureThreshold: 1, resetTimeoutMs: 100 },
    });
    await within(transport.connect(), 5000, 'connect');
    expect(await sample(registry, 'asap_client_retransmissions_total')).toBe(0);
    expect(await sample(registry, 'asap_client_circuits_open')).toBe(0);

    // No ack: the first send and 3 retransmissions (after 100, 300, 700 ms), a local timeout at 1500 ms.
    const lost = watch(outcome(transport.request(task('echo'))));
    await timers.tick(1500);
    const o = await within(lost.promise, 2000, 'the unacked request');
    expect(o.ok ? undefined : (o.error as { code?: number }).code).toBe(LocalErrorCode.RequestTimeout);
    expect(await sample(registry, 'asap_client_retransmissions_total')).toBe(3);
    expect(await sample(registry, 'asap_client_circuit_transitions_total{state="open"}')).toBe(1);
    expect(await sample(registry, 'asap_client_circuits_open')).toBe(1);

    // Half-open after the reset timeout; a success closes it again.
    behave = true;
    await timers.tick(100);
    const ok = watch(outcome(transport.request(task('echo'))));
    await within(ok.promise, 2000, 'the request after the reset');
    expect(await sample(registry, 'asap_client_circuit_transitions_total{state="half-open"}')).toBe(1);
    expect(await sample(registry, 'asap_client_circuit_transitions_total{state="closed"}')).toBe(1);
    expect(await sample(registry, 'asap_client_circuits_open')).toBe(0);
    expect(await sample(registry, 'asap_client_acks_received_total{status="received"}')).toBe(1);
    expect(await sample(registry, 'asap_client_retransmissions_total')).toBe(3);
  });

  it('counts reconnections after a cut, into the registry of a second set of hooks too', async () => {
    const registry = new Registry();
    const first = clientMetrics({ registry });
    const { proxy, transport } = await setup({ instrumentation: first.instrumentation });
    // A second transport's hooks on the same registry count into the same metrics.
    const second = clientMetrics({ registry });
    const other = makeTransport(proxy.url('/asap/ws', 'ws'), { instrumentation: second.instrumentation });
    await within(other.connect(), 5000, 'connect the second');
    expect(await sample(registry, 'asap_client_reconnects_total')).toBe(0);
    const back = Promise.all([nextEvent(transport, 'reconnected'), nextEvent(other, 'reconnected')]);
    proxy.cut();
    await within(back, 5000, 'both reconnect');
    expect(await sample(registry, 'asap_client_reconnects_total')).toBe(2);
    await within(transport.request(task('echo')), 5000, 'a request after the reconnect');
  });
});
