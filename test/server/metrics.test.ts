/**
 * Prometheus metrics (`metrics` option, GET /asap/metrics) on a real server, driven over
 * HTTP and WebSocket: the reference's metric names, bounded labels, a user registry, and the
 * user's own instrumentation still getting every hook.
 */
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { combineInstrumentation, type Instrumentation } from '../../src/core/instrumentation.js';
import { prometheusMetrics } from '../../src/server/metrics.js';
import { cleanup, connect, type Json, rpcRequest, startDemo, task, waitFor } from './ws-helpers.js';

afterEach(cleanup);

const verifyToken = (t: string) => (t === 'alice' ? { id: 'alice', agents: ['urn:asap:agent:alice'] } : null);
const ALICE = 'urn:asap:agent:alice';

async function post(url: string, body: string): Promise<Json> {
  const res = await fetch(`${url}/asap`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer alice' },
    body,
  });
  return res.json();
}

async function scrape(url: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${url}/asap/metrics`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/** The value of one sample line (`name{labels} value`), or undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('GET /asap/metrics', () => {
  it('counts requests, rejections and connections with bounded labels', async () => {
    const seen: string[] = [];
    const user: Instrumentation = {
      requestFinished: (i) => seen.push(`finished:${i.payloadType}`),
      rejected: (r) => seen.push(`rejected:${r}`),
    };
    const { url, wsUrl, server } = await startDemo({ verifyToken, metrics: true, instrumentation: user });
    expect(server.prometheus).toBeDefined();

    const ok = await post(url, rpcRequest(task('echo', { a: 1 }, { sender: ALICE }), 1));
    expect(ok.result.envelope.payload.result.echo).toEqual({ a: 1 });
    const invalid = await post(url, rpcRequest({ sender: ALICE, payload_type: 'TaskRequest' }, 2));
    expect(invalid.error.code).toBe(-32602);
    const spoof = await post(url, rpcRequest(task('echo', {}, { sender: 'urn:asap:agent:bob' }), 3));
    expect(spoof.error.message).toBe('Sender does not match authenticated identity');
    const peer = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer alice' } });
    await peer.call(task('echo', { w: 1 }, { sender: ALICE }), 1);

    const m = await scrape(url);
    expect(m.status).toBe(200);
    expect(m.type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(sample(m.text, 'asap_requests_total{payload_type="TaskRequest",status="success"}')).toBe(2);
    expect(
      sample(m.text, 'asap_request_duration_seconds_count{payload_type="TaskRequest",status="success"}'),
    ).toBe(2);
    expect(sample(m.text, 'asap_validation_errors_total')).toBe(1);
    expect(sample(m.text, 'asap_sender_mismatch_total')).toBe(1);
    expect(sample(m.text, 'asap_rejected_total{reason="sender_mismatch"}')).toBe(1);
    expect(sample(m.text, 'asap_auth_failures_total')).toBe(0);
    expect(sample(m.text, 'asap_invalid_timestamp_total')).toBe(0);
    expect(sample(m.text, 'asap_invalid_nonce_total')).toBe(0);
    expect(sample(m.text, 'asap_handler_errors_total')).toBeUndefined(); // labelled, none yet
    expect(sample(m.text, 'asap_websocket_connections')).toBe(1);
    expect(sample(m.text, 'asap_dedupe_total{state="new"}')).toBeGreaterThanOrEqual(2);
    for (const name of [
      'asap_acks_sent_total',
      'asap_acks_received_total',
      'asap_retransmissions_total',
      'asap_rate_limited_total',
      'asap_stream_chunks_total',
      'asap_handler_errors_total',
    ])
      expect(m.text).toContain(`# TYPE ${name} `);

    // The user's hooks saw the same events.
    expect(seen).toEqual(
      expect.arrayContaining(['finished:TaskRequest', 'rejected:validation', 'rejected:sender_mismatch']),
    );
    expect(seen.filter((s) => s === 'finished:TaskRequest')).toHaveLength(2);

    peer.ws.close();
    await waitFor(
      async () => sample((await scrape(url)).text, 'asap_websocket_connections') === 0,
      'the close',
    );
  });

  it('counts handler errors, stream chunks and sent acks with their labels', async () => {
    const { url, wsUrl } = await startDemo({ metrics: true });
    const peer = await connect(wsUrl);
    await peer.call(task('stream', { chunks: 3, interval_ms: 0 }), 1);
    await peer.call(task('echo', {}, { requires_ack: true }), 2);
    const m = await scrape(url);
    expect(sample(m.text, 'asap_stream_chunks_total{skill="stream"}')).toBeGreaterThanOrEqual(3);
    expect(sample(m.text, 'asap_acks_sent_total{status="received"}')).toBeGreaterThanOrEqual(1);
  });

  it('exact counts after a scripted workload over both bindings', async () => {
    const { url, wsUrl, server } = await startDemo({ metrics: true, rateLimit: 0 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 3; i++) await peer.call(task('echo', { i }), `e${i}`);
    const once = task('echo', { again: true });
    await peer.call(once, 'first');
    await peer.call(once, 'copy'); // the same envelope again: answered from the dedupe store
    await peer.call(task('stream', { chunks: 3, interval_ms: 0 }), 's');
    await peer.call(task('push', { count: 2 }), 'p');
    const failed = await post(url, rpcRequest(task('fail', { message: 'no' }), 'f'));
    expect(failed.error.code).toBe(-32603);

    let m = await scrape(url);
    expect(sample(m.text, 'asap_requests_total{payload_type="TaskRequest",status="success"}')).toBe(6);
    expect(sample(m.text, 'asap_requests_total{payload_type="TaskRequest",status="error"}')).toBe(1);
    expect(
      sample(m.text, 'asap_request_duration_seconds_count{payload_type="TaskRequest",status="success"}'),
    ).toBe(6);
    expect(
      sample(
        m.text,
        'asap_request_duration_seconds_bucket{le="+Inf",payload_type="TaskRequest",status="success"}',
      ),
    ).toBe(6);
    expect(sample(m.text, 'asap_handler_errors_total{payload_type="TaskRequest",skill="fail"}')).toBe(1);
    expect(sample(m.text, 'asap_dedupe_total{state="new"}')).toBe(7);
    expect(sample(m.text, 'asap_dedupe_total{state="done"}')).toBe(1);
    expect(sample(m.text, 'asap_stream_chunks_total{skill="stream"}')).toBe(3);
    expect(sample(m.text, 'asap_pushes_total{replayed="false"}')).toBe(2);
    expect(sample(m.text, 'asap_pushes_total{replayed="true"}')).toBe(0);
    expect(sample(m.text, 'asap_websocket_connections')).toBe(1);
    expect(sample(m.text, 'asap_draining')).toBe(0);
    expect(sample(m.text, 'asap_dedupe_evicted_total')).toBe(0);
    expect(sample(m.text, 'asap_store_errors_total')).toBe(0); // in memory: no store operations
    expect(sample(m.text, 'asap_store_operation_duration_seconds_count{status="ok"}')).toBe(0);
    expect(m.text).toContain('# TYPE asap_request_duration_seconds histogram');

    peer.ws.close();
    await waitFor(
      async () => sample((await scrape(url)).text, 'asap_websocket_connections') === 0,
      'the close',
    );
    m = await scrape(url);
    expect(sample(m.text, 'asap_websocket_closes_total{reason="normal"}')).toBe(1);

    // Draining shows while the server closes.
    const sleeper = await connect(wsUrl);
    const sleeping = sleeper.call(task('sleep', { ms: 300 }), 'z').catch(() => undefined);
    await waitFor(() => server.dispatcher.inFlight === 1, 'the sleep to start');
    const closing = server.close();
    expect(sample(await server.prometheus!.metrics(), 'asap_draining')).toBe(1);
    await Promise.all([closing, sleeping]);
  });

  it('records into a user-supplied registry', async () => {
    const registry = new Registry();
    const { url, server } = await startDemo({ metrics: { registry } });
    expect(server.prometheus?.registry).toBe(registry);
    await post(url, rpcRequest(task('echo', {}), 1));
    const text = await registry.metrics();
    expect(sample(text, 'asap_requests_total{payload_type="TaskRequest",status="success"}')).toBe(1);
    expect((await scrape(url)).text).toBe(await registry.metrics());
  });

  it('is off by default: no route, no hooks', async () => {
    const { url, server } = await startDemo();
    expect(server.prometheus).toBeUndefined();
    // Only the hook of the server's `error` event (handler failures): no metric records anything.
    expect(Object.keys(server.dispatcher.hooks ?? {})).toEqual(['handlerError']);
    expect((await scrape(url)).status).toBe(404);
  });

  it('answers only GET and HEAD', async () => {
    const { url } = await startDemo({ metrics: true });
    const res = await fetch(`${url}/asap/metrics`, { method: 'POST' });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
  });
});

describe('prometheusMetrics', () => {
  it('maps unknown payload types and ack statuses to other, and takes a prefix', async () => {
    const m = prometheusMetrics({ prefix: 'x_' });
    const info = { transport: 'http', payloadType: 'made.up', sender: 's', envelopeId: 'e' };
    m.instrumentation.requestFinished?.({ ...info, outcome: 'error', errorCode: -32603, durationMs: 5 });
    m.instrumentation.ackReceived?.('whatever');
    m.instrumentation.connectionClosed?.({ id: 9, code: 1000, reason: '' }); // never opened: no -1
    const text = await m.metrics();
    expect(sample(text, 'x_requests_total{payload_type="other",status="error"}')).toBe(1);
    expect(sample(text, 'x_acks_received_total{status="other"}')).toBe(1);
    expect(sample(text, 'x_websocket_connections')).toBe(0);
    expect(m.contentType).toMatch(/^text\/plain/);
  });

  it('reuses the metrics already in a shared registry', () => {
    const registry = new Registry();
    prometheusMetrics({ registry });
    expect(() => prometheusMetrics({ registry })).not.toThrow();
  });
});

describe('combineInstrumentation', () => {
  it('calls every part, even after one throws, and rethrows the first error', () => {
    const calls: string[] = [];
    const hooks = combineInstrumentation(
      {
        ackSent: (s) => {
          calls.push(`a:${s}`);
          throw new Error('boom');
        },
      },
      undefined,
      { ackSent: (s) => calls.push(`b:${s}`), retransmitted: (id) => calls.push(`r:${id}`) },
    );
    expect(() => hooks?.ackSent?.('received')).toThrow('boom');
    hooks?.retransmitted?.('x');
    expect(calls).toEqual(['a:received', 'b:received', 'r:x']);
    expect(hooks?.dedupe).toBeUndefined();
    expect(combineInstrumentation(undefined, undefined)).toBeUndefined();
  });
});
