/**
 * Heartbeat and stale connections (asap-wire.md §5) through a real TCP proxy: the client answers the
 * server's pings, and a partition (blackhole that drops bytes) is detected by both sides within a few
 * heartbeat intervals, after which the client reconnects by itself once the network is back.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { TransportState } from '../../src/client/websocket-transport.js';
import { ConnectionError } from '../../src/protocol/errors.js';
import {
  cleanup,
  HEARTBEAT_MS,
  makeTransport,
  nextEvent,
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

afterEach(cleanup);

describe('heartbeat', () => {
  it('answers the server pings, so an idle connection survives many intervals', async () => {
    // The client's own heartbeat is off: the only frames it sends while idle are its pongs.
    const { server, transport } = await setup({ heartbeatIntervalMs: 0 });
    await waitFor(() => server.connections.length === 1, 'server connection');
    const connId = server.connections[0]!.id;
    const closes: unknown[] = [];
    transport.on('close', (info) => closes.push(info));

    // Idle for 8 intervals: the server closes a connection silent for 3, so only pongs keep it alive.
    await sleep(8 * HEARTBEAT_MS);

    expect(closes).toEqual([]);
    expect(transport.state).toBe('open');
    expect(server.connections.map((c) => c.id)).toEqual([connId]);
    const res = await within(transport.request(task('echo', { n: 1 })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { n: 1 } });
  });

  it('answers an app-level {"type":"ping"} with {"type":"pong"} and keeps it away from handlers', async () => {
    const pongs: string[] = [];
    const server = await PlainServer.start(undefined, (socket) => {
      socket.on('message', (data) => {
        if (data.toString() === '{"type":"pong"}') pongs.push('pong');
      });
      socket.send('{"type":"ping"}');
    });
    const transport = makeTransport(server.url, { heartbeatIntervalMs: 0 });
    const pushed: unknown[] = [];
    transport.onMessage((env) => pushed.push(env));
    await within(transport.connect(), 5000, 'connect');
    await waitFor(() => pongs.length === 1, 'pong');
    expect(pushed).toEqual([]);
    expect(server.envelopes).toEqual([]);
  });

  it('answers a ping spelled differently ({ "type": "ping" } with spaces) too', async () => {
    const pongs: string[] = [];
    const server = await PlainServer.start(undefined, (socket) => {
      socket.on('message', (data) => pongs.push(data.toString()));
      socket.send('{ "type": "ping" }');
    });
    const transport = makeTransport(server.url, { heartbeatIntervalMs: 0 });
    await within(transport.connect(), 5000, 'connect');
    await waitFor(() => pongs.length === 1, 'pong');
    expect(JSON.parse(pongs[0]!)).toEqual({ type: 'pong' });
  });

  it('a first connection attempt that is never answered fails after 3 intervals instead of hanging', async () => {
    const server = await startAgent();
    const proxy = await startProxy(server.boundAddress!.port);
    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    const transport = makeTransport(proxy.url('/asap/ws', 'ws'));
    const pending = outcome(transport.request(task('echo')));
    const r = await within(outcome(transport.connect()), 5000, 'connect');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    expect(!r.ok && r.error.message).toContain('Connect timeout');
    expect(transport.state).toBe('closed');
    const q = await within(pending, 5000, 'queued request');
    expect(!q.ok && q.error).toBeInstanceOf(ConnectionError);
  });

  it('close() on a partitioned connection does not wait for a close handshake that cannot come', async () => {
    const { proxy, transport } = await setup({ heartbeatIntervalMs: 0 });
    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    await within(transport.close(), 5000, 'close');
    expect(transport.state).toBe('closed');
  });

  it('client side: a server silent for 3 intervals is abandoned (Heartbeat timeout) and the client reconnects', async () => {
    // The server's own stale sweep is slow here, so only the client can notice the partition.
    const { proxy, transport } = await setup({}, { heartbeatIntervalMs: 10_000 });
    const closes: { code: number; reason: string }[] = [];
    transport.on('close', (info) => closes.push(info));

    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    await waitFor(() => transport.state === 'reconnecting', 'client to abandon the connection');
    expect(closes).toEqual([{ code: 1006, reason: 'Heartbeat timeout' }]);

    const reconnected = nextEvent(transport, 'reconnected');
    await sleep(4 * HEARTBEAT_MS);
    proxy.resume();
    await reconnected;
    const res = await within(transport.request(task('echo', { after: 'partition' })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { after: 'partition' } });
  });

  it('server side: a client silent for 3 intervals is closed as stale', async () => {
    // The client sends no heartbeat of its own and does not check the server: only the server can notice.
    const { server, proxy, transport } = await setup({ heartbeatIntervalMs: 0 });
    await waitFor(() => server.connections.length === 1, 'server connection');
    const first = server.connections[0]!.id;
    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    await waitFor(() => server.connections.length === 0, 'server to drop the stale connection');
    // Nothing crossed the partition, so this client cannot know yet; once the network is back the
    // server's FIN reaches it, and it reconnects.
    expect(transport.state).toBe<TransportState>('open');
    const reconnected = nextEvent(transport, 'reconnected');
    proxy.resume();
    await reconnected;
    await waitFor(() => server.connections.length === 1, 'a new server connection');
    expect(server.connections[0]!.id).not.toBe(first);
    const res = await within(transport.request(task('echo', { n: 2 })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { n: 2 } });
  });

  it('a partition longer than 3 intervals: both sides drop the connection; after resume the client is back by itself', async () => {
    const { server, proxy, transport } = await setup();
    await waitFor(() => server.connections.length === 1, 'server connection');
    const first = server.connections[0]!.id;
    const states: TransportState[] = [];
    transport.on('state', (s) => states.push(s));
    const reconnected = nextEvent(transport, 'reconnected', 10_000);

    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    await waitFor(
      () => server.connections.length === 0 && transport.state === 'reconnecting',
      'both sides to drop the connection',
    );
    // Keep the partition a while longer: reconnect attempts made during it must not get stuck.
    await sleep(6 * HEARTBEAT_MS);
    expect(transport.state).toBe('reconnecting');
    proxy.resume();

    await reconnected;
    expect(transport.state).toBe('open');
    expect(states[0]).toBe('reconnecting');
    await waitFor(() => server.connections.length === 1, 'a new server connection');
    expect(server.connections[0]!.id).not.toBe(first);
    const results = await within(
      Promise.all([1, 2, 3].map((n) => transport.request(task('echo', { n })))),
      5000,
      'requests after the partition',
    );
    expect(results.map((r) => resultOf(r))).toEqual([
      { echo: { n: 1 } },
      { echo: { n: 2 } },
      { echo: { n: 3 } },
    ]);
  });
});
