/**
 * Acknowledgements, retransmission and the circuit breaker (asap-wire.md §6) against plain `ws` servers
 * that ack late, never, or with `rejected`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { WebSocketTransport, WebSocketTransportOptions } from '../../src/client/websocket-transport.js';
import type { CircuitState } from '../../src/core/circuit-breaker.js';
import type { ManualTimers } from '../../src/core/timers.js';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { ConnectionError, ErrorCode, LocalErrorCode } from '../../src/protocol/errors.js';
import { manualTimers, recordingFactory, watch, whileTicking } from '../support/manual-time.js';
import {
  AGENT_URN,
  ackFrame,
  CLIENT_URN,
  cleanup,
  countingFactory,
  makeTransport,
  manualTransport,
  onCleanup,
  outcome,
  PlainServer,
  type Received,
  responseFrame,
  resultOf,
  setup,
  task,
  waitFor,
  within,
} from './helpers.js';

/**
 * A transport on manual time. Its own heartbeat is off: manual time jumps hundreds of ms at once, and
 * the plain server's pongs (real I/O) cannot land between the checks inside one jump.
 */
function quietTransport(
  url: string,
  timers: ManualTimers,
  opts: WebSocketTransportOptions = {},
): WebSocketTransport {
  return manualTransport(url, timers, { heartbeatIntervalMs: 0, ...opts });
}

afterEach(cleanup);

/** A well-behaved peer: acks what asks for it, answers requests. */
function ackAndAnswer(r: Received): void {
  const env = r.msg.params?.envelope;
  if (env === undefined) return;
  if (env.requires_ack === true) r.socket.send(ackFrame(env, 'received'));
  if (r.msg.id !== undefined) r.socket.send(responseFrame(r, { ok: true }));
}

const code = (r: { ok: boolean; error?: Error }): number | undefined =>
  r.ok ? undefined : (r.error as { code?: number } | undefined)?.code;

function cancelEnvelope(taskId = 'task-1') {
  return createEnvelope({
    sender: CLIENT_URN,
    recipient: AGENT_URN,
    payload_type: 'TaskCancel',
    payload: { task_id: taskId, reason: 'test' },
  });
}

describe('requires_ack over WebSocket', () => {
  it('is set automatically on TaskRequest and TaskCancel, not on other types, and not with ack: false', async () => {
    const server = await PlainServer.start(ackAndAnswer);
    const transport = makeTransport(server.url);
    await within(transport.request(task('echo')), 5000, 'request');
    await within(transport.notify(cancelEnvelope()), 5000, 'cancel');
    await within(
      transport.notify(
        createEnvelope({
          sender: CLIENT_URN,
          recipient: AGENT_URN,
          payload_type: 'TaskUpdate',
          payload: { task_id: 't', update_type: 'progress', status: 'working' },
        }),
      ),
      5000,
      'update',
    );
    await waitFor(() => server.envelopes.length === 3, 'three envelopes');
    expect(
      server.envelopes.map((r) => [
        r.msg.params!.envelope!.payload_type,
        r.msg.params!.envelope!.requires_ack,
      ]),
    ).toEqual([
      ['TaskRequest', true],
      ['TaskCancel', true],
      ['TaskUpdate', undefined],
    ]);

    const plain = makeTransport(server.url, { ack: false });
    await within(plain.request(task('echo')), 5000, 'request without acks');
    await waitFor(() => server.envelopes.length === 4, 'the fourth envelope');
    expect(server.envelopes[3]!.msg.params!.envelope!.requires_ack).toBeUndefined();
  });
});

describe('retransmission', () => {
  it('a late answer: the envelope is retransmitted with the same id until the response arrives', async () => {
    // Never acks; answers the first copy only when the test says so (the ack timeout is 100 ms).
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    let answer: (() => void) | undefined;
    const server = await PlainServer.start((r) => {
      if (r.msg.id !== undefined && server.envelopes.length === 1) {
        answer = () => r.socket.send(responseFrame(r, { late: true }));
      }
    });
    const transport = quietTransport(server.url, timers, { webSocketFactory: rec.factory });
    const env = task('echo');
    const pending = watch(transport.request(env));
    const written = () => rec.writesOf((t) => t.includes(env.id));
    await waitFor(() => server.envelopes.length === 1, 'the first copy');
    const t0 = written()[0]!;
    await timers.tick(99);
    expect(written()).toHaveLength(1);
    await timers.tick(1);
    await timers.tick(200);
    expect(written()).toEqual([t0, t0 + 100, t0 + 300]);
    await waitFor(() => server.envelopes.length === 3, 'three copies at the server');
    expect(pending.settled()).toBe(false);

    answer!();
    const res = await within(pending.promise, 5000, 'late request');
    expect(resultOf(res)).toEqual({ late: true });
    const copies = server.envelopes;
    expect(new Set(copies.map((c) => c.msg.params!.envelope!.id))).toEqual(new Set([env.id]));
    expect(new Set(copies.map((c) => c.msg.id)).size).toBe(1);
    expect(transport.unacknowledged).toBe(0);
    expect(transport.circuitState).toBe('closed');
    // Once answered, nothing more is retransmitted, however long.
    await timers.tick(10_000);
    expect(written()).toHaveLength(3);
    await sleep(20);
    expect(server.envelopes.length).toBe(3);
  });

  it('no ack at all: maxRetries retransmissions with growing gaps, then a local timeout; the breaker opens, fails fast, half-opens and closes', async () => {
    let behave = false;
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const server = await PlainServer.start((r) => {
      if (behave) ackAndAnswer(r);
    });
    const transport = quietTransport(server.url, timers, {
      circuitBreaker: { failureThreshold: 2, resetTimeoutMs: 100 },
      webSocketFactory: rec.factory,
    });
    const circuit: [CircuitState, CircuitState][] = [];
    transport.on('circuit', (s, prev) => circuit.push([s, prev]));
    await within(transport.connect(), 5000, 'connect');

    const a = task('echo', { n: 'a' });
    const b = task('echo', { n: 'b' });
    const ra = watch(outcome(transport.request(a)));
    await timers.tick(20);
    const rb = watch(outcome(transport.request(b)));
    // Ack timeout 100 ms, 3 retries: copies after 100, 300 and 700 ms; given up at 1500 ms.
    await timers.tick(1500 - 20 - 1);
    expect(ra.settled()).toBe(false);
    await timers.tick(1);
    await within(ra.promise, 1000, 'the first unacked request');
    await timers.tick(19);
    expect(rb.settled()).toBe(false);
    await timers.tick(1);
    const [oa, ob] = await within(Promise.all([ra.promise, rb.promise]), 5000, 'the unacked requests');
    expect(code(oa)).toBe(LocalErrorCode.RequestTimeout);
    expect(code(ob)).toBe(LocalErrorCode.RequestTimeout);

    await waitFor(() => server.envelopes.length === 8, 'eight copies at the server');
    for (const env of [a, b]) {
      const copies = server.envelopes.filter((r) => r.msg.params!.envelope!.id === env.id);
      // The first send and maxRetries (3) retransmissions of the same envelope, same JSON-RPC id.
      expect(copies).toHaveLength(4);
      expect(new Set(copies.map((c) => c.msg.id)).size).toBe(1);
      const at = rec.writesOf((t) => t.includes(env.id));
      const gaps = at.slice(1).map((t, i) => t - at[i]!);
      expect(gaps).toEqual([100, 200, 400]);
      expect(gaps[1]!).toBeGreaterThan(gaps[0]!);
      expect(gaps[2]!).toBeGreaterThan(gaps[1]!);
    }
    // Two failures reached the threshold: open.
    expect(circuit).toEqual([['open', 'closed']]);
    expect(transport.circuitState).toBe('open');
    expect(transport.unacknowledged).toBe(0);
    expect(transport.inFlight).toBe(0);

    // Open: fails fast with -32011, nothing goes out.
    const sent = server.envelopes.length;
    const fast = await within(outcome(transport.request(task('echo'))), 1000, 'fail fast');
    expect(code(fast)).toBe(ErrorCode.CircuitOpen);
    const fastSend = await within(outcome(transport.notify(cancelEnvelope())), 1000, 'fail fast send');
    expect(code(fastSend)).toBe(ErrorCode.CircuitOpen);
    expect(server.envelopes.length).toBe(sent);

    // After the reset timeout (100 ms from the opening) one trial goes through; the peer behaves now,
    // and the success closes it.
    await timers.tick(99);
    expect(transport.circuitState).toBe('open');
    await timers.tick(1);
    behave = true;
    const trial = await within(transport.request(task('echo', { n: 'trial' })), 5000, 'trial');
    expect(resultOf(trial)).toEqual({ ok: true });
    expect(circuit).toEqual([
      ['open', 'closed'],
      ['half-open', 'open'],
      ['closed', 'half-open'],
    ]);
    expect(transport.circuitState).toBe('closed');
    const after = await within(transport.request(task('echo')), 5000, 'after');
    expect(resultOf(after)).toEqual({ ok: true });
  });
});

describe('acked notifications', () => {
  it('send() of a TaskCancel resolves only once the ack arrives', async () => {
    let ackSent = false;
    const server = await PlainServer.start((r) => {
      setTimeout(() => {
        ackSent = true;
        r.socket.send(ackFrame(r.msg.params!.envelope!, 'received'));
      }, 60);
    });
    const transport = makeTransport(server.url);
    await within(transport.connect(), 5000, 'connect');
    let resolvedBeforeAck: boolean | undefined;
    await within(
      transport.notify(cancelEnvelope()).then(() => {
        resolvedBeforeAck = !ackSent;
      }),
      5000,
      'acked send',
    );
    expect(resolvedBeforeAck).toBe(false);
    expect(transport.unacknowledged).toBe(0);
  });

  it('a rejected ack rejects the send with the peer error', async () => {
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const server = await PlainServer.start((r) => {
      r.socket.send(ackFrame(r.msg.params!.envelope!, 'rejected', 'No such task'));
    });
    const transport = quietTransport(server.url, timers, { webSocketFactory: rec.factory });
    await within(transport.connect(), 5000, 'connect');
    const env = cancelEnvelope('missing');
    const r = await within(outcome(transport.notify(env)), 5000, 'rejected send');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error.message).toBe('No such task');
    expect(code(r)).toBe(ErrorCode.InvalidRequest);
    expect(transport.unacknowledged).toBe(0);
    // Only one copy: a rejection is an answer, not a reason to retransmit (past all 3 ack timeouts).
    await timers.tick(10_000);
    expect(rec.writesOf((t) => t.includes(env.id))).toHaveLength(1);
    await sleep(20);
    expect(server.envelopes).toHaveLength(1);
  });

  it('close() fails a send still waiting for its ack', async () => {
    const server = await PlainServer.start();
    const transport = makeTransport(server.url);
    await within(transport.connect(), 5000, 'connect');
    const pending = outcome(transport.notify(cancelEnvelope()));
    await waitFor(() => server.envelopes.length === 1, 'the cancel to arrive');
    await within(transport.close(), 5000, 'close');
    const r = await within(pending, 5000, 'pending send');
    expect(!r.ok && r.error).toBeInstanceOf(ConnectionError);
    expect(transport.unacknowledged).toBe(0);
  });

  it('an unacked TaskCancel is retransmitted, then the send fails with a local timeout', async () => {
    const timers = manualTimers();
    const rec = recordingFactory(timers);
    const server = await PlainServer.start();
    const transport = quietTransport(server.url, timers, {
      ack: { timeoutMs: 30, maxRetries: 2 },
      webSocketFactory: rec.factory,
    });
    await within(transport.connect(), 5000, 'connect');
    const env = cancelEnvelope();
    const sending = watch(outcome(transport.notify(env)));
    const t0 = timers.now();
    // Copies after 30 and 90 ms (30 + 2·30); the send is given up 4·30 ms after the last one.
    await timers.tick(209);
    expect(rec.writesOf((t) => t.includes(env.id))).toEqual([t0, t0 + 30, t0 + 90]);
    expect(sending.settled()).toBe(false);
    await timers.tick(1);
    const r = await within(sending.promise, 5000, 'unacked send');
    expect(code(r)).toBe(LocalErrorCode.RequestTimeout);
    await waitFor(() => server.envelopes.length === 3, 'three copies at the server');
    expect(server.envelopes.map((c) => c.msg.params!.envelope!.id)).toEqual([env.id, env.id, env.id]);
    expect(server.envelopes.every((c) => c.msg.id === undefined)).toBe(true);
    expect(transport.unacknowledged).toBe(0);
  });
});

describe('duplicate answers', () => {
  it('the answers to retransmitted copies are dropped, not delivered as server push', async () => {
    // Both sides on one manual clock.
    const timers = manualTimers();
    const writes = new Map<string, number>();
    const dedupe: string[] = [];
    const { proxy, transport, server } = await setup(
      { timers, webSocketFactory: countingFactory(writes) },
      { timers, instrumentation: { dedupe: (state) => dedupe.push(state) } },
    );
    onCleanup(() => whileTicking(timers, server.close()));
    onCleanup(() => whileTicking(timers, transport.close()));
    const pushes: unknown[] = [];
    transport.onMessage((env) => pushes.push(env));
    let closes = 0;
    transport.on('close', () => closes++);
    // The proxy holds the first copy past the 100 ms ack timeout, so a copy goes out; once both reach
    // the server it deduplicates, and answers both copies (same JSON-RPC id).
    proxy.blackhole();
    const env = task('echo', { dup: true });
    const pending = transport.request(env);
    await timers.tick(100);
    expect(writes.get(env.id)).toBe(2);
    proxy.resume();
    const res = await within(pending, 5000, 'slow request');
    expect(res.correlation_id).toBe(env.id);
    await waitFor(() => dedupe.length === 2, 'both copies at the server');
    expect(dedupe).toEqual(['new', 'done']);
    // The server wrote the second answer before this one: once it is back, the client has seen both.
    await within(transport.request(task('echo', { barrier: true })), 5000, 'barrier');
    expect(writes.get(env.id)).toBe(2);
    expect(closes).toBe(0);
    expect(pushes).toEqual([]);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  });
});
