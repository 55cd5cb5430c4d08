/**
 * Graceful shutdown as a client sees it (asap-wire.md §9): every request in flight when the server
 * stops gets its response before the 1001 close.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, outcome, resultOf, setup, task, waitFor, within } from './helpers.js';

afterEach(cleanup);

describe('server shutdown with requests in flight', () => {
  it('answers all 50 in-flight `sleep` requests before closing with 1001', async () => {
    const { server, transport } = await setup({ reconnect: false }, { drainTimeoutMs: 5000 });
    const order: string[] = [];
    transport.on('close', ({ code, reason }) => order.push(`close ${code} ${reason}`));

    const all = Array.from({ length: 50 }, (_, i) =>
      outcome(
        transport.request(task('sleep', { ms: 100, i })).then((res) => {
          order.push('response');
          return res;
        }),
      ),
    );
    await waitFor(() => server.dispatcher.inFlight === 50, 'all 50 handlers to run');
    const closed = server.close();

    const results = await within(Promise.all(all), 10_000, 'the 50 requests');
    await within(closed, 10_000, 'server close');
    // With reconnect off, a request not answered before the close would have failed with ConnectionError.
    const failed = results.filter((r) => !r.ok);
    expect(failed).toEqual([]);
    expect(results.map((r) => (r.ok ? resultOf(r.value) : null))).toEqual(
      Array.from({ length: 50 }, (_, i) => ({ echo: { ms: 100, i } })),
    );
    await waitFor(() => transport.state === 'closed', 'the client to see the close');
    expect(order.filter((o) => o === 'response')).toHaveLength(50);
    expect(order.at(-1)).toBe('close 1001 Server shutting down');
    expect(order.indexOf('close 1001 Server shutting down')).toBe(50);
  });

  it('refuses new requests on the open connection while draining with -32040 and retry_after_ms', async () => {
    const { server, transport } = await setup({ reconnect: false }, { drainTimeoutMs: 5000 });
    const slow = transport.request(task('sleep', { ms: 150 }));
    await waitFor(() => server.dispatcher.inFlight === 1, 'the handler to run');
    const closed = server.close();
    const late = await within(outcome(transport.request(task('echo'))), 5000, 'the late request');
    expect(late.ok).toBe(false);
    const err = !late.ok ? (late.error as { code?: number; data?: { retry_after_ms?: number } }) : {};
    expect(err.code).toBe(-32040);
    expect(typeof err.data?.retry_after_ms).toBe('number');
    expect(resultOf(await within(slow, 5000, 'the slow request'))).toEqual({ echo: { ms: 150 } });
    await within(closed, 5000, 'server close');
  });
});
