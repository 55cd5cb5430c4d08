/**
 * Reconnection (asap-wire.md §7): exponential backoff with the configured base and cap, giving up after
 * maxReconnectAttempts, no reconnect after close() or a 4401, reconnect after a 1001 and after a server
 * restart on the same port.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ASAPClient } from '../../src/client/client.js';
import type { WebSocketTransportOptions } from '../../src/client/websocket-transport.js';
import type { ManualTimers } from '../../src/core/timers.js';
import { ConnectionError, ErrorCode } from '../../src/protocol/errors.js';
import type { ASAPServer } from '../../src/server/server.js';
import { manualTimers, recordingFactory, tickUntil, whileTicking } from '../support/manual-time.js';
import {
  cleanup,
  FAST,
  makeTransport,
  nextEvent,
  onCleanup,
  outcome,
  PlainServer,
  resultOf,
  setup,
  startAgent,
  startProxy,
  task,
  waitFor,
  within,
} from './helpers.js';

/** `setup()` with the server and the client on the same manual timers. */
async function manualSetup(
  timers: ManualTimers,
  clientOpts: WebSocketTransportOptions = {},
): Promise<Awaited<ReturnType<typeof setup>>> {
  const s = await setup({ timers, ...clientOpts }, { timers });
  onCleanup(() => whileTicking(timers, s.server.close()));
  onCleanup(() => whileTicking(timers, s.transport.close()));
  return s;
}

afterEach(cleanup);

describe('reconnect backoff', () => {
  it('waits base·2^n between attempts, capped, with jitter that never exceeds the cap', async () => {
    // Manual time: each attempt must go out exactly when its reported delay has passed, not before.
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const { proxy, transport } = await manualSetup(timers, { webSocketFactory: rec.factory });
    const delays: number[] = [];
    const attempts: number[] = [];
    const scheduledAt: number[] = [];
    transport.on('reconnecting', ({ attempt, delayMs }) => {
      attempts.push(attempt);
      delays.push(delayMs);
      scheduledAt.push(timers.now());
    });
    const reconnected = nextEvent(transport, 'reconnected', 10_000);

    proxy.refuse(true);
    proxy.cut();
    for (let i = 0; i < 8; i++) {
      // Attempt i+1 is scheduled once attempt i (or the cut connection) has failed.
      await waitFor(() => delays.length === i + 1, `reconnect attempt ${i + 1} scheduled`);
      await timers.tick(delays[i]! - 1);
      expect(rec.attempts).toHaveLength(1 + i);
      if (i === 7) proxy.refuse(false);
      await timers.tick(1);
      expect(rec.attempts).toHaveLength(2 + i);
      expect(rec.attempts[1 + i]).toBe(scheduledAt[i]! + delays[i]!);
      if (i < 7) await waitFor(() => proxy.refusedConnections === i + 1, `attempt ${i + 1} refused`);
    }
    const info = (await reconnected) as { attempts: number };

    expect(attempts).toEqual(attempts.map((_, i) => i + 1));
    // baseMs 10, maxMs 50, default jitter 20 %: attempt n waits min(50, 10·2^(n-1)) scaled into [0.8, 1].
    delays.forEach((d, i) => {
      const raw = Math.min(50, 10 * 2 ** i);
      expect(d).toBeGreaterThanOrEqual(Math.floor(raw * 0.8));
      expect(d).toBeLessThanOrEqual(raw);
    });
    expect(delays[1]!).toBeGreaterThan(delays[0]!);
    expect(delays[2]!).toBeGreaterThan(delays[1]!);
    expect(Math.max(...delays)).toBeLessThanOrEqual(50);
    // Every refused attempt really reached the proxy.
    expect(proxy.refusedConnections).toBe(delays.length - 1);
    expect(info.attempts).toBe(delays.length);

    const res = await within(transport.request(task('echo', { back: true })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { back: true } });
  });

  it('gives up after maxReconnectAttempts: gaveUp, state closed, pending requests fail with ConnectionError', async () => {
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    // The server on the same timers too: its drain deadline (the `sleep` still runs) passes in manual time.
    const { server, proxy, transport } = await manualSetup(timers, {
      maxReconnectAttempts: 3,
      webSocketFactory: rec.factory,
    });
    const reconnecting: number[] = [];
    transport.on('reconnecting', ({ attempt }) => reconnecting.push(attempt));
    const gaveUp = nextEvent(transport, 'gaveUp');

    const inFlight = outcome(transport.request(task('sleep', { ms: 5000 })));
    await waitFor(() => server.dispatcher.inFlight === 1, 'the request to run');
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');
    const queued = outcome(transport.request(task('echo', { queued: true })));
    await tickUntil(
      timers,
      () => rec.attempts.length === 4 && transport.state === 'closed',
      'three attempts',
    );

    const info = (await gaveUp) as { attempts: number; error: Error };
    expect(info.attempts).toBe(3);
    expect(reconnecting).toEqual([1, 2, 3]);
    expect(transport.state).toBe('closed');
    for (const r of [await within(inFlight, 5000, 'in-flight'), await within(queued, 5000, 'queued')]) {
      expect(r.ok).toBe(false);
      expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    }
    // Closed for good: a new request fails at once and nothing reconnects any more, however long.
    const later = await outcome(transport.request(task('echo')));
    expect(!later.ok && later.error).toBeInstanceOf(ConnectionError);
    const total = proxy.totalConnections;
    await timers.tick(60_000);
    await sleep(20);
    expect(rec.attempts).toHaveLength(4);
    expect(proxy.totalConnections).toBe(total);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  });

  it('does not reconnect after the user closes the transport', async () => {
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const { server, proxy, transport } = await manualSetup(timers, { webSocketFactory: rec.factory });
    const reconnecting: unknown[] = [];
    transport.on('reconnecting', (info) => reconnecting.push(info));
    const pending = outcome(transport.request(task('sleep', { ms: 5000 })));
    await waitFor(() => server.dispatcher.inFlight === 1, 'the request to run');
    const total = proxy.totalConnections;

    await within(transport.close(), 5000, 'close');
    const r = await within(pending, 5000, 'pending');
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    // Far past any backoff delay.
    await timers.tick(60_000);
    await sleep(20);
    expect(reconnecting).toEqual([]);
    expect(rec.attempts).toHaveLength(1);
    expect(proxy.totalConnections).toBe(total);
    expect(transport.state).toBe('closed');
  });

  it('close() while waiting to reconnect cancels the next attempt and fails what is queued', async () => {
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const { proxy, transport } = await setup({
      backoff: { baseMs: 100, maxMs: 100 },
      timers,
      webSocketFactory: rec.factory,
    });
    onCleanup(() => whileTicking(timers, transport.close()));
    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => transport.state === 'reconnecting', 'reconnecting');
    const queued = outcome(transport.request(task('echo')));
    await within(transport.close(), 5000, 'close');
    const total = proxy.totalConnections;
    const r = await within(queued, 5000, 'queued');
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    // Past the attempt that was scheduled (≤ 100 ms), and far beyond.
    await timers.tick(60_000);
    await sleep(20);
    expect(rec.attempts).toHaveLength(1);
    expect(proxy.totalConnections).toBe(total);
    expect(transport.state).toBe('closed');
  });

  it('does not reconnect after a 4401 close: gaveUp, closed, pending requests fail with -32004', async () => {
    // A server that accepts the upgrade, then refuses the token with 4401 once the first frame arrives.
    const timers = manualTimers();
    const server = await PlainServer.start((r) => r.socket.close(4401, 'Invalid token'));
    const transport = makeTransport(server.url, { token: 'wrong', timers });
    onCleanup(() => whileTicking(timers, transport.close()));
    const reconnecting: unknown[] = [];
    transport.on('reconnecting', (info) => reconnecting.push(info));
    const gaveUp = nextEvent(transport, 'gaveUp');
    await within(transport.connect(), 5000, 'connect');

    const first = outcome(transport.request(task('sleep', { ms: 1000 })));
    const second = outcome(transport.request(task('echo')));
    await gaveUp;
    for (const r of [await within(first, 5000, 'first'), await within(second, 5000, 'second')]) {
      expect(r.ok).toBe(false);
      expect(!r.ok && (r.error as { code?: number }).code).toBe(ErrorCode.Unauthorized);
    }
    expect(transport.state).toBe('closed');
    // Far past any backoff delay.
    await timers.tick(60_000);
    await sleep(20);
    expect(server.connections).toBe(1);
    expect(reconnecting).toEqual([]);
  });

  it('reconnects with backoff after a 1001 (server shutdown) once a server listens on the same port again', async () => {
    const first = await startAgent();
    const port = first.boundAddress!.port;
    const transport = makeTransport(`ws://127.0.0.1:${port}/asap/ws`);
    await within(transport.connect(), 5000, 'connect');
    const closes: { code: number; reason: string }[] = [];
    const delays: number[] = [];
    transport.on('close', (info) => closes.push(info));
    transport.on('reconnecting', ({ delayMs }) => delays.push(delayMs));

    await within(first.close(), 5000, 'server close');
    // The client hears of the close once its side of the close handshake is done.
    await waitFor(() => closes.length === 1, 'the close at the client');
    expect(closes[0]).toEqual({ code: 1001, reason: 'Server shutting down' });
    // Nothing listens now: attempts are refused and the delays grow up to the cap.
    await waitFor(() => delays.length >= 5, 'attempts against the closed port');
    expect(transport.state).toBe('reconnecting');

    const second = await startAgent({}, port);
    await waitFor(
      () => transport.state === 'open' && second.connections.length === 1,
      'reconnect to the new server',
    );
    expect(delays[1]!).toBeGreaterThan(delays[0]!);
    expect(Math.max(...delays)).toBeLessThanOrEqual(50);
    const res = await within(transport.request(task('echo', { to: 'second' })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { to: 'second' } });
  });
});

describe('server restart on the same port', () => {
  it('an ASAPClient through the proxy reconnects by itself; requests issued during the outage succeed after', async () => {
    let server: ASAPServer = await startAgent();
    const port = server.boundAddress!.port;
    const proxy = await startProxy(port);
    const client = new ASAPClient(proxy.url('/asap/ws', 'ws'), {
      websocket: FAST,
      recipient: 'urn:asap:agent:demo',
    });
    onCleanup(() => client.close());

    const before = await within(client.task('echo', { phase: 'before' }), 5000, 'before');
    expect(resultOf(before)).toEqual({ echo: { phase: 'before' } });
    const transport = client.transport();
    const reconnected = nextEvent(transport, 'reconnected', 10_000);

    await within(server.close(), 5000, 'server close');
    await waitFor(() => transport.state === 'reconnecting', 'client to notice');
    const during = client.task('echo', { phase: 'during' });
    await sleep(100);
    server = await startAgent({}, port);

    await reconnected;
    const [a, b] = await within(
      Promise.all([during, client.task('echo', { phase: 'after' })]),
      5000,
      'requests after the restart',
    );
    expect(resultOf(a)).toEqual({ echo: { phase: 'during' } });
    expect(resultOf(b)).toEqual({ echo: { phase: 'after' } });
    expect(client.transport()).toBe(transport);
    await waitFor(() => server.connections.length === 1, 'connection on the new server');
  });
});
