/**
 * Requests across a reconnect (asap-wire.md §7): in-flight requests are re-sent on the new connection
 * (same envelope id, so the server's dedupe answers them once) or failed, per configuration; sends
 * issued while disconnected wait in a bounded queue and go out in order.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionError, ErrorCode, RequestTimeoutError } from '../../src/protocol/errors.js';
import { manualTimers, tickUntil, watch } from '../support/manual-time.js';
import {
  cleanup,
  manualSetup,
  nextEvent,
  outcome,
  resultOf,
  setup,
  task,
  uniqueKey,
  waitFor,
  within,
} from './helpers.js';

afterEach(cleanup);

describe('requests across a reconnect', () => {
  it('resendOnReconnect (default): a request cut mid-flight completes after the reconnect, bound to its envelope', async () => {
    const { server, proxy, transport } = await setup();
    const events: string[] = [];
    transport.on('reconnected', () => events.push('reconnected'));
    const env = task('sleep', { ms: 200, tag: 'cut-me' });
    const pending = transport.request(env).then((res) => {
      events.push('response');
      return res;
    });
    await waitFor(() => server.dispatcher.inFlight === 1, 'the handler to start');
    proxy.cut();

    const res = await within(pending, 5000, 'the cut request');
    expect(res.correlation_id).toBe(env.id);
    expect(res.payload_type).toMatch(/TaskResponse/i);
    expect(resultOf(res)).toEqual({ echo: { ms: 200, tag: 'cut-me' } });
    expect(events).toEqual(['reconnected', 'response']);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  });

  it('a request whose response was lost in the cut is answered from the dedupe store, not run again', async () => {
    // Both sides on manual time: no ack timeout, heartbeat or backoff runs unless the test moves time.
    const timers = manualTimers();
    const finished: string[] = [];
    const { proxy, transport } = await manualSetup(
      timers,
      {},
      { instrumentation: { requestFinished: (info) => finished.push(info.skill ?? '') } },
    );
    const key = uniqueKey('resend');
    const events: string[] = [];
    transport.on('reconnected', () => events.push('reconnected'));
    // 200 ms each way: once the server has run `count`, its response still has 200 ms to go in the
    // proxy; the cut right then loses it.
    proxy.setLatency(200);
    const counted = transport.request(task('count', { key })).then((res) => {
      events.push('response');
      return res;
    });
    await waitFor(() => finished.length === 1, 'the server to run count');
    proxy.cut();
    proxy.setLatency(0);
    await tickUntil(timers, () => events.includes('reconnected'), 'the reconnect');
    const c = await within(counted, 5000, 'the cut request');
    expect(resultOf(c).count).toBe(1);
    expect(events).toEqual(['reconnected', 'response']);
    // Run once: the copy sent again after the reconnect was answered from the dedupe store.
    expect(finished).toEqual(['count']);
    // One more call on the same key: 2 means every copy of the first one ran exactly once.
    const again = await within(transport.request(task('count', { key })), 5000, 'second count');
    expect(resultOf(again).count).toBe(2);
  });

  it('resendOnReconnect false: a request cut mid-flight fails with ConnectionError; later requests work', async () => {
    const { server, proxy, transport } = await setup({ resendOnReconnect: false });
    const pending = outcome(transport.request(task('sleep', { ms: 200 })));
    await waitFor(() => server.dispatcher.inFlight === 1, 'the handler to start');
    const reconnected = nextEvent(transport, 'reconnected');
    proxy.cut();

    const r = await within(pending, 5000, 'the cut request');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    await reconnected;
    const res = await within(transport.request(task('echo', { ok: 1 })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { ok: 1 } });
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  });

  it('sends issued while disconnected wait in the queue and go out in send order once connected', async () => {
    const { proxy, transport } = await setup();
    const key = uniqueKey('order');
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');

    const sent = [0, 1, 2, 3, 4].map((i) =>
      transport.request(task('count', { key, i })).then((res) => resultOf(res)),
    );
    await waitFor(() => proxy.refusedConnections >= 2, 'two refused attempts');
    // Nothing can have reached the server yet: all five are still queued.
    expect(transport.inFlight).toBe(5);
    proxy.refuse(false);

    const results = await within(Promise.all(sent), 5000, 'queued requests');
    expect(results.map((r) => r.count)).toEqual([1, 2, 3, 4, 5]);
  });

  it('an outage longer than the ack retry budget does not fail the sends queued during it', async () => {
    // Ack budget: 50 + 100 + 200 ms. Nothing queued is written while disconnected, so nothing may count
    // as a retransmission: the queued sends must go out once connected, not fail with -32033.
    const timers = manualTimers();
    const { proxy, transport } = await manualSetup(timers, { ack: { timeoutMs: 50, maxRetries: 2 } });
    const key = uniqueKey('outage');
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');
    const requests = [0, 1, 2].map((i) => outcome(transport.request(task('count', { key, i }))));
    const cancel = outcome(
      transport.notify({
        ...task('echo'),
        payload_type: 'TaskCancel',
        payload: { task_id: 'no-such-task', reason: 'test' },
      }),
    );
    // 600 ms of outage (the ack sweep runs every 10 ms of it), reconnect attempts failing meanwhile.
    for (let i = 0; i < 12; i++) {
      await timers.tick(50);
      await sleep(2);
    }
    expect(transport.state).toBe('reconnecting');
    expect(transport.unacknowledged).toBe(4);
    proxy.refuse(false);
    await tickUntil(timers, () => transport.state === 'open', 'the reconnect');

    const results = await within(Promise.all(requests), 5000, 'queued requests');
    expect(results.map((r) => (r.ok ? resultOf(r.value).count : (r.error as Error).message))).toEqual([
      1, 2, 3,
    ]);
    const c = await within(cancel, 5000, 'queued cancel');
    expect(c.ok ? 'acked' : c.error.message).toBe('acked');
    expect(transport.unacknowledged).toBe(0);
  });

  it('a queued request that times out while disconnected fails and is never sent later', async () => {
    const timers = manualTimers();
    const { proxy, transport } = await manualSetup(timers);
    const key = uniqueKey('expired');
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');
    const expired = watch(outcome(transport.request(task('count', { key }), { timeoutMs: 30 })));
    const kept = transport.request(task('count', { key }));
    // The deadline counts while queued: 30 ms, not a millisecond less.
    await timers.tick(29);
    expect(expired.settled()).toBe(false);
    await timers.tick(1);
    const r = await within(expired.promise, 5000, 'the expiring request');
    expect(!r.ok && r.error).toBeInstanceOf(RequestTimeoutError);
    proxy.refuse(false);
    await tickUntil(timers, () => transport.state === 'open', 'the reconnect');
    // Had the expired one been flushed too, this would count 2.
    expect(resultOf(await within(kept, 5000, 'the kept request')).count).toBe(1);
    expect(transport.unacknowledged).toBe(0);
  });

  it('maxQueue 2: the third send while disconnected fails fast with -32040; the first two go through', async () => {
    const { proxy, transport } = await setup({ maxQueue: 2 });
    const key = uniqueKey('maxq');
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');

    const a = transport.request(task('count', { key }));
    const b = transport.request(task('count', { key }));
    const c = await within(outcome(transport.request(task('count', { key }))), 1000, 'the third send');
    expect(c.ok).toBe(false);
    expect(!c.ok && (c.error as { code?: number }).code).toBe(ErrorCode.ResourceExhausted);
    // Fails at once, not after a reconnect (the proxy still refuses).
    expect(transport.state).toBe('reconnecting');
    // A notification is refused the same way.
    const note = await outcome(
      transport.notify({
        ...task('echo'),
        payload_type: 'TaskUpdate',
        payload: { task_id: 't', update_type: 'progress', status: 'working' },
      }),
    );
    expect(!note.ok && (note.error as { code?: number }).code).toBe(ErrorCode.ResourceExhausted);

    await sleep(30);
    proxy.refuse(false);
    const results = await within(Promise.all([a, b]), 5000, 'the two queued');
    expect(results.map((r) => resultOf(r).count)).toEqual([1, 2]);
  });
});
