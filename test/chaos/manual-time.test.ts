/**
 * Time-dependent behaviour on a manual scheduler: heartbeats, backoff, connect timeouts, ack expiry and
 * request / handler deadlines run on ManualTimers (moved with `await timers.tick(ms)`), while servers and
 * clients talk over real sockets on 127.0.0.1. Each test checks the boundary: nothing at `due - 1`,
 * the effect at `due`. Real time passes only for socket I/O to land (short polls, bounded at 5 s).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { ManualTimers } from '../../src/core/timers.js';
import { createEnvelope } from '../../src/protocol/envelope.js';
import {
  ConnectionError,
  ErrorCode,
  LocalErrorCode,
  RequestTimeoutError,
} from '../../src/protocol/errors.js';
import { PING_FRAME } from '../../src/protocol/jsonrpc.js';
import type { ASAPServer, ASAPServerOptions } from '../../src/server/server.js';
import {
  isPing,
  letIoLand,
  manualTimers,
  RawClient,
  recordingFactory,
  waitFor,
  watch,
  whileTicking,
} from '../support/manual-time.js';
import {
  AGENT_URN,
  CLIENT_URN,
  cleanup,
  manualTransport,
  onCleanup,
  outcome,
  PlainServer,
  resultOf,
  startProxy,
  task,
  within,
} from './helpers.js';

afterEach(cleanup);

/** A heartbeat that never fires within a test: the side it belongs to stays silent. */
const NEVER = 3_600_000;

/**
 * The demo agent on `timers`, plus a `never` skill whose handler only ends when aborted (deadline,
 * cancel, shutdown). Closed after the test with manual time moving, so its drain deadline passes.
 */
async function startServer(
  timers: ManualTimers,
  opts: Partial<ASAPServerOptions> = {},
): Promise<{ server: ASAPServer; started: AbortSignal[] }> {
  const server = createDemoAgent({
    rateLimit: 0,
    heartbeatIntervalMs: NEVER,
    drainTimeoutMs: 300,
    timers,
    ...opts,
  });
  const started: AbortSignal[] = [];
  server.skill(
    'never',
    (_env, ctx) =>
      new Promise((_resolve, reject) => {
        started.push(ctx.signal);
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
      }),
  );
  await server.listen({ port: 0 });
  onCleanup(() => whileTicking(timers, server.close()));
  return { server, started };
}

const wsUrl = (server: ASAPServer) => `ws://127.0.0.1:${server.boundAddress!.port}/asap/ws`;
const code = (r: { ok: boolean; error?: Error }): number | undefined =>
  r.ok ? undefined : (r.error as { code?: number } | undefined)?.code;

describe('client heartbeat on manual time', () => {
  it('a server silent for 3 intervals is abandoned at the next heartbeat check, not before; then the client reconnects', async () => {
    const timers = manualTimers();
    const I = 1000;
    // The server never pings (NEVER), and the proxy drops everything: nothing reaches the client.
    const { server } = await startServer(timers);
    const proxy = await startProxy(server.boundAddress!.port);
    const rec = recordingFactory(timers);
    const transport = manualTransport(proxy.url('/asap/ws', 'ws'), timers, {
      heartbeatIntervalMs: I,
      backoff: { baseMs: 100, maxMs: 100, jitter: 0 },
      webSocketFactory: rec.factory,
    });
    const states: string[] = [];
    const closes: { code: number; reason: string }[] = [];
    transport.on('state', (s) => states.push(s));
    transport.on('close', (info) => closes.push(info));
    await within(transport.connect(), 5000, 'connect');
    const t0 = timers.now();
    proxy.dropWhileBlackholed(true);
    proxy.blackhole();

    // Heartbeat checks run every interval from the open. Silent for more than one interval: ping
    // (at 2I and 3I). Exactly 3 intervals is not "more than 3": still open.
    await timers.tick(3 * I - 1);
    expect(transport.state).toBe('open');
    await timers.tick(1);
    expect(transport.state).toBe('open');
    await timers.tick(I - 1);
    expect(transport.state).toBe('open');
    expect(closes).toEqual([]);
    expect(rec.writesOf((t) => t === PING_FRAME)).toEqual([t0 + 2 * I, t0 + 3 * I]);

    // The check at 4I sees more than 3 silent intervals: the socket is dropped, a reconnect scheduled.
    await timers.tick(1);
    expect(closes).toEqual([{ code: 1006, reason: 'Heartbeat timeout' }]);
    expect(transport.state).toBe('reconnecting');
    expect(states).toEqual(['connecting', 'open', 'reconnecting']);

    // The network is back; the attempt goes out at the backoff delay (100 ms), not before.
    proxy.resume();
    await timers.tick(99);
    expect(rec.attempts).toHaveLength(1);
    await timers.tick(1);
    expect(rec.attempts).toEqual([t0, t0 + 4 * I + 100]);
    await waitFor(() => transport.state === 'open', 'the reconnect');
    expect(states).toEqual(['connecting', 'open', 'reconnecting', 'open']);
    await waitFor(() => server.connections.length === 1, 'one server connection');
    const res = await within(transport.request(task('echo', { after: 'silence' })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { after: 'silence' } });
  });
});

describe('reconnect backoff on manual time', () => {
  it('attempts go out at base·2^n (capped) after each failure, not a millisecond earlier', async () => {
    const timers = manualTimers();
    const { server } = await startServer(timers);
    const proxy = await startProxy(server.boundAddress!.port);
    const rec = recordingFactory(timers);
    const transport = manualTransport(proxy.url('/asap/ws', 'ws'), timers, {
      heartbeatIntervalMs: NEVER,
      backoff: { baseMs: 100, maxMs: 400, jitter: 0 },
      webSocketFactory: rec.factory,
    });
    const reconnecting: { attempt: number; delayMs: number; at: number }[] = [];
    transport.on('reconnecting', (info) => reconnecting.push({ ...info, at: timers.now() }));
    const reconnected: { attempts: number }[] = [];
    transport.on('reconnected', (info) => reconnected.push(info));
    await within(transport.connect(), 5000, 'connect');
    expect(proxy.totalConnections).toBe(1);

    proxy.refuse(true);
    proxy.cut();
    const delays = [100, 200, 400, 400];
    for (const [i, delayMs] of delays.entries()) {
      // The previous connection (or attempt) has failed: the next attempt is scheduled from now.
      await waitFor(() => reconnecting.length === i + 1, `reconnecting #${i + 1}`);
      const scheduled = reconnecting[i]!;
      expect(scheduled).toEqual({ attempt: i + 1, delayMs, at: timers.now() });
      await timers.tick(delayMs - 1);
      expect(rec.attempts).toHaveLength(1 + i);
      if (i === delays.length - 1) proxy.refuse(false);
      await timers.tick(1);
      expect(rec.attempts).toHaveLength(2 + i);
      expect(rec.attempts[1 + i]).toBe(scheduled.at + delayMs);
      // The attempt really reached the proxy.
      await waitFor(() => proxy.totalConnections === 2 + i, `attempt #${i + 1} at the proxy`);
    }
    await waitFor(() => reconnected.length === 1, 'reconnected');
    expect(reconnected).toEqual([{ attempts: 4 }]);
    expect(proxy.refusedConnections).toBe(3);
    expect(reconnecting).toHaveLength(4);
    await waitFor(() => server.connections.length === 1, 'the server connection');
    const res = await within(transport.request(task('echo', { back: true })), 5000, 'echo');
    expect(resultOf(res)).toEqual({ echo: { back: true } });
  });
});

describe('connect timeout on manual time', () => {
  it('an upgrade that is never answered is dropped after exactly 3 heartbeat intervals', async () => {
    const timers = manualTimers();
    const { server } = await startServer(timers);
    const proxy = await startProxy(server.boundAddress!.port);
    // The proxy accepts TCP and drops every byte: the upgrade request never reaches the server.
    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    const I = 500;
    const transport = manualTransport(proxy.url('/asap/ws', 'ws'), timers, { heartbeatIntervalMs: I });
    const connecting = watch(outcome(transport.connect()));
    await waitFor(() => proxy.totalConnections === 1, 'the TCP connection at the proxy');

    await timers.tick(3 * I - 1);
    await letIoLand();
    expect(connecting.settled()).toBe(false);
    expect(transport.state).toBe('connecting');

    await timers.tick(1);
    const r = await within(connecting.promise, 5000, 'connect');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    expect(!r.ok && r.error.message).toContain('Connect timeout');
    expect(transport.state).toBe('closed');
    expect(server.connections).toEqual([]);
  });
});

describe('ack expiry on manual time', () => {
  it('an unacked request is retransmitted after timeoutMs, then 2× and 4× that, and fails with a local timeout after maxRetries', async () => {
    const timers = manualTimers();
    // Records every frame; never acks, never answers (heartbeat pings get their pong).
    const server = await PlainServer.start();
    const rec = recordingFactory(timers);
    const transport = manualTransport(server.url, timers, {
      heartbeatIntervalMs: NEVER,
      ack: { timeoutMs: 100, maxRetries: 3 },
      timerResolutionMs: 10,
      requestTimeoutMs: 60_000,
      webSocketFactory: rec.factory,
    });
    await within(transport.connect(), 5000, 'connect');
    const env = task('echo', { unacked: true });
    const result = watch(outcome(transport.request(env)));
    const t0 = timers.now();
    const copies = () => server.envelopes.filter((r) => r.msg.params?.envelope?.id === env.id);
    const written = () => rec.writesOf((t) => t.includes(env.id));
    await waitFor(() => copies().length === 1, 'the first copy');

    // Retransmissions at t0 + 100, + 300 (100 + 2·100), + 700 (300 + 4·100).
    let now = 0;
    for (const [n, at] of [100, 300, 700].entries()) {
      await timers.tick(at - 1 - now);
      expect(written()).toHaveLength(1 + n);
      await timers.tick(1);
      now = at;
      expect(written()).toHaveLength(2 + n);
      await waitFor(() => copies().length === 2 + n, `copy #${2 + n} at the server`);
    }
    expect(written()).toEqual([t0, t0 + 100, t0 + 300, t0 + 700]);
    // The last copy gets its own wait (8·100) before the request is given up.
    await timers.tick(1500 - 1 - now);
    expect(result.settled()).toBe(false);
    await timers.tick(1);
    const r = await within(result.promise, 5000, 'the unacked request');
    expect(code(r)).toBe(LocalErrorCode.RequestTimeout);
    expect(!r.ok && r.error.message).toContain('after 3 retransmissions');

    await letIoLand();
    const all = copies();
    expect(all).toHaveLength(4);
    expect(new Set(all.map((c) => c.msg.id)).size).toBe(1);
    expect(all.every((c) => c.msg.params!.envelope!.requires_ack === true)).toBe(true);
    expect(transport.unacknowledged).toBe(0);
    expect(transport.inFlight).toBe(0);
  });
});

describe('request deadline on manual time', () => {
  it('a request whose handler never answers fails with RequestTimeoutError exactly at timeoutMs', async () => {
    const timers = manualTimers();
    const { server, started } = await startServer(timers);
    const transport = manualTransport(wsUrl(server), timers, {
      heartbeatIntervalMs: NEVER,
      timerResolutionMs: 100,
    });
    await within(transport.connect(), 5000, 'connect');
    const pending = watch(outcome(transport.request(task('never'), { timeoutMs: 500 })));
    // Delivered, acked and running: nothing but the deadline can end it now.
    await waitFor(() => started.length === 1 && transport.unacknowledged === 0, 'the handler to start');

    await timers.tick(499);
    await letIoLand();
    expect(pending.settled()).toBe(false);
    expect(transport.inFlight).toBe(1);
    await timers.tick(1);
    const r = await within(pending.promise, 5000, 'the request');
    expect(!r.ok && r.error).toBeInstanceOf(RequestTimeoutError);
    expect(code(r)).toBe(LocalErrorCode.RequestTimeout);
    expect(transport.inFlight).toBe(0);
    expect(transport.state).toBe('open');
  });
});

describe('server on manual time', () => {
  it('handler deadline: a handler that never resolves is answered -32033 once defaultTimeoutMs has passed', async () => {
    const timers = manualTimers();
    const { server, started } = await startServer(timers, {
      defaultTimeoutMs: 1000,
      deadlineResolutionMs: 100,
    });
    const client = await RawClient.connect(wsUrl(server));
    onCleanup(() => client.terminate());
    const id = client.request({ ...task('never'), requires_ack: true });
    await waitFor(() => started.length === 1, 'the handler to start');
    const answers = () => client.where((f) => f.id === id);
    // The ack came, the answer did not.
    await waitFor(() => client.where((f) => f.method === 'asap.ack').length === 1, 'the received ack');

    await timers.tick(999);
    await letIoLand();
    expect(answers()).toEqual([]);
    expect(started[0]!.aborted).toBe(false);
    await timers.tick(1);
    await waitFor(() => answers().length === 1, 'the answer');
    expect(answers()[0].error.code).toBe(ErrorCode.Timeout);
    expect(started[0]!.aborted).toBe(true);
    expect(client.isOpen).toBe(true);
  });

  it('heartbeat: a client that never answers pings gets 3 pings, then 1001 "Stale connection" at the next sweep', async () => {
    const timers = manualTimers();
    const I = 1000;
    const { server } = await startServer(timers, { heartbeatIntervalMs: I });
    const client = await RawClient.connect(wsUrl(server));
    onCleanup(() => client.terminate());
    await waitFor(() => server.connections.length === 1, 'the server connection');

    // Sweeps every interval from listen(): ping at I, 2I, 3I (silent, but not more than 3 intervals).
    await timers.tick(4 * I - 1);
    await waitFor(() => client.where(isPing).length === 3, 'three pings');
    await letIoLand();
    expect(client.closeInfo).toBeUndefined();
    expect(client.isOpen).toBe(true);

    await timers.tick(1);
    await waitFor(() => client.closeInfo !== undefined, 'the close');
    expect(client.closeInfo).toEqual({ code: 1001, reason: 'Stale connection' });
    expect(client.where(isPing)).toHaveLength(3);
    await waitFor(() => server.connections.length === 0, 'the server to forget it');
  });

  it('push acks: an unacked push is retransmitted after timeoutMs, 2× and 4× that, then the push rejects with a local timeout', async () => {
    const timers = manualTimers();
    const retransmitted: string[] = [];
    const { server } = await startServer(timers, {
      ack: { timeoutMs: 1000, maxRetries: 3, checkIntervalMs: 100 },
      instrumentation: { retransmitted: (id) => retransmitted.push(id) },
    });
    const client = await RawClient.connect(wsUrl(server));
    onCleanup(() => client.terminate());
    // One request makes the server index this connection under its sender URN.
    const first = client.request(task('echo'));
    await waitFor(() => client.where((f) => f.id === first).length === 1, 'the echo answer');
    expect(server.connectionsFor(CLIENT_URN)).toHaveLength(1);

    const push = createEnvelope({
      sender: AGENT_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskUpdate',
      payload: { task_id: 't-push', update_type: 'progress', status: 'working' },
      requires_ack: true,
    });
    const pushed = watch(outcome(server.push(CLIENT_URN, push)));
    const copies = () => client.where((f) => f.method === 'asap.send' && f.params?.envelope?.id === push.id);
    await waitFor(() => copies().length === 1, 'the push');

    let now = 0;
    for (const [n, at] of [1000, 3000, 7000].entries()) {
      await timers.tick(at - 1 - now);
      expect(retransmitted).toHaveLength(n);
      await timers.tick(1);
      now = at;
      expect(retransmitted).toHaveLength(n + 1);
      await waitFor(() => copies().length === 2 + n, `copy #${2 + n} at the client`);
    }
    await timers.tick(15_000 - 1 - now);
    await letIoLand();
    expect(pushed.settled()).toBe(false);
    await timers.tick(1);
    const r = await within(pushed.promise, 5000, 'the push');
    expect(code(r)).toBe(LocalErrorCode.RequestTimeout);
    expect(retransmitted).toEqual([push.id, push.id, push.id]);
    expect(copies()).toHaveLength(4);
    expect(copies().every((c) => c.params.envelope.requires_ack === true)).toBe(true);
    expect(client.isOpen).toBe(true);
  });
});
