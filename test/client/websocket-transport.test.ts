import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  browserWebSocketFactory,
  type TransportState,
  WebSocketTransport,
  type WebSocketTransportOptions,
} from '../../src/client/index.js';
import { HandlerRegistry } from '../../src/core/registry.js';
import { createEnvelope, createReply, type Envelope } from '../../src/protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ErrorCode,
  LocalErrorCode,
  ProtocolError,
  RequestTimeoutError,
} from '../../src/protocol/errors.js';
import type { TaskStream } from '../../src/protocol/payloads.js';
import { manualTimers, recordingFactory, whileTicking } from '../support/manual-time.js';
import {
  activeTimeouts,
  baselineTimeouts,
  CLIENT_URN,
  cleanups,
  DEMO_URN,
  delay,
  demo,
  type Json,
  type RawServer,
  rejection,
  responseTo,
  resultFrame,
  runCleanups,
  startRawServer,
  taskInit,
  waitFor,
} from './helpers.js';

afterEach(runCleanups);

async function raw(...args: Parameters<typeof startRawServer>): Promise<RawServer> {
  const r = await startRawServer(...args);
  cleanups.push(() => r.close());
  return r;
}

function transport(url: string | undefined, opts: WebSocketTransportOptions = {}): WebSocketTransport {
  const t = new WebSocketTransport(url, { reconnect: false, ...opts });
  cleanups.push(() => t.close());
  return t;
}

/** Tracks whether a promise has settled yet. */
function watch<T>(p: Promise<T>): { settled: () => boolean; promise: Promise<T> } {
  let done = false;
  p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  return { settled: () => done, promise: p };
}

/**
 * Makes sure the client has processed everything the raw server sent so far:
 * frames are handled in order, so once the pong to this ping is back, all earlier ones were.
 */
async function flush(r: RawServer): Promise<void> {
  const before = r.frames.filter((f) => f?.type === 'pong').length;
  r.send('{"type":"ping"}');
  await waitFor(() => r.frames.filter((f) => f?.type === 'pong').length > before, 'pong');
}

const payloadOf = (env: Envelope<object>): Json => env.payload;

describe('WebSocketTransport: requests against the demo agent', () => {
  it('runs a TaskRequest → TaskResponse round trip bound by correlation_id', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const states: TransportState[] = [];
    t.on('state', (s) => states.push(s));
    expect(t.protocol).toBe('');
    await Promise.all([t.connect(), t.connect()]); // the second waits for the same attempt
    expect(t.state).toBe('open');
    expect(t.circuitState).toBe('closed');
    expect(t.protocol).toBe('asap.v1');
    expect(await t.connect()).toBeUndefined(); // already open: resolves at once

    const env = createEnvelope({ ...taskInit('echo', { hello: 'world' }), trace_id: 'trace-1' });
    const reply = await t.request(env);
    expect(reply.payload_type).toBe('TaskResponse');
    expect(reply.correlation_id).toBe(env.id);
    expect(reply.trace_id).toBe('trace-1');
    expect(reply.sender).toBe(DEMO_URN);
    expect(reply.recipient).toBe(CLIENT_URN);
    expect(payloadOf(reply)).toEqual({
      task_id: env.id,
      status: 'completed',
      result: { echo: { hello: 'world' } },
    });
    expect(t.inFlight).toBe(0);
    expect(states).toEqual(['connecting', 'open']);
  });

  it('opens lazily on the first request, and takes a URL given to connect()', async () => {
    const d = await demo();
    const lazy = transport(d.ws);
    expect(lazy.state).toBe('idle');
    const reply = await lazy.request(taskInit('echo', { n: 1 }));
    expect(payloadOf(reply).result).toEqual({ echo: { n: 1 } });

    const late = transport(undefined);
    await late.connect(d.ws);
    expect(payloadOf(await late.request(taskInit('echo', { n: 2 }))).result).toEqual({ echo: { n: 2 } });
  });

  it('matches 1,000 concurrent requests on one connection to their responses', async () => {
    const d = await demo();
    const t = transport(d.ws);
    await t.connect();
    const envs = Array.from({ length: 1000 }, (_, i) =>
      createEnvelope(taskInit('echo', { i, tag: `req-${i}` })),
    );
    const replies = await Promise.all(envs.map((e) => t.request(e)));
    replies.forEach((reply, i) => {
      expect(reply.correlation_id).toBe(envs[i]!.id);
      expect(payloadOf(reply).result).toEqual({ echo: { i, tag: `req-${i}` } });
    });
    expect(new Set(replies.map((r) => r.id)).size).toBe(1000);
    expect(d.server.connections).toHaveLength(1);
    expect(t.inFlight).toBe(0);
    await waitFor(() => t.unacknowledged === 0, 'acks');
  });

  it('queues requests issued before the first connection opens, up to maxQueue, and sends them once open', async () => {
    const d = await demo();
    const t = transport(d.ws, { maxQueue: 3 });
    const first = t.request(taskInit('echo', { i: 0 }));
    const notified = t.notify(taskInit('echo', { i: 1 })); // a TaskRequest notification: resolves on its ack
    const second = t.request(taskInit('echo', { i: 2 }));
    expect(t.state).toBe('connecting');
    const full = await rejection(t.request(taskInit('echo', { i: 3 })));
    expect(full.code).toBe(ErrorCode.ResourceExhausted);
    expect(full.data).toEqual({ max_queue: 3 });
    const update = {
      sender: CLIENT_URN,
      recipient: DEMO_URN,
      payload_type: 'TaskUpdate',
      payload: { task_id: 't', update_type: 'progress', status: 'working' },
    };
    expect((await rejection(t.notify(update))).code).toBe(ErrorCode.ResourceExhausted);
    expect((await rejection(t.notify(taskInit('echo')))).code).toBe(ErrorCode.ResourceExhausted);
    expect(t.inFlight).toBe(2);
    const replies = await Promise.all([first, second]);
    expect(replies.map((r) => payloadOf(r).result.echo.i)).toEqual([0, 2]);
    await notified;

    // The default bound is 1,000: a burst of 1,001 before the connection opens loses the last one.
    const burst = transport(d.ws);
    const accepted = Array.from({ length: 1000 }, (_, i) => burst.request(taskInit('echo', { i })));
    const over = await rejection(burst.request(taskInit('echo', { i: 1000 })));
    expect(over.data).toEqual({ max_queue: 1000 });
    const all = await Promise.all(accepted);
    expect(all.map((r) => payloadOf(r).result.echo.i)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
  });

  it('rejects with the remote ASAPError (code, message, data) and keeps the connection', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const err = await rejection(t.request(taskInit('fail', { message: 'boom' })));
    expect(err).toBeInstanceOf(ASAPError);
    expect(err).not.toBeInstanceOf(ConnectionError);
    expect(err.code).toBe(ErrorCode.InternalError);
    expect(err.message).toBe('boom');

    const invalid = await rejection(t.request(taskInit('sleep', { ms: -1 })));
    expect(invalid.code).toBe(ErrorCode.InvalidParams);
    expect(invalid.message).toBe('input.ms must be a non-negative integer');
    expect(invalid.data).toEqual({
      validation_errors: [expect.objectContaining({ loc: ['payload', 'input', 'ms'], type: 'int_type' })],
      recoverable: false,
      asap_taxonomy_code: 'asap:protocol/malformed_envelope',
    });
    expect(t.inFlight).toBe(0);
    expect(t.state).toBe('open');
    expect(payloadOf(await t.request(taskInit('echo', { after: 'errors' }))).status).toBe('completed');
  });

  it('answers an unknown skill with a failed TaskResponse', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const reply = await t.request(taskInit('no-such-skill'));
    expect(reply.payload_type).toBe('TaskResponse');
    expect(payloadOf(reply)).toMatchObject({
      status: 'failed',
      result: { error: 'Unknown skill: no-such-skill' },
    });
  });
});

describe('WebSocketTransport: streaming', () => {
  it('iterates TaskStream chunks up to the final one', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const env = createEnvelope(taskInit('stream', { chunks: 4, interval_ms: 5 }));
    const chunks: Envelope<TaskStream>[] = [];
    for await (const c of t.stream(env)) chunks.push(c);
    expect(chunks.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2', 'chunk-3']);
    expect(chunks.map((c) => c.payload.final)).toEqual([false, false, false, true]);
    expect(chunks.at(-1)?.payload.status).toBe('completed');
    for (const c of chunks) expect(c.correlation_id).toBe(env.id);
    expect(t.inFlight).toBe(0);
  });

  it('yields the single response of a skill that does not stream', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const got: Envelope<object>[] = [];
    for await (const c of t.stream(taskInit('echo', { x: 1 }))) got.push(c);
    expect(got).toHaveLength(1);
    expect(got[0]?.payload_type).toBe('TaskResponse');
  });

  it('throws the remote error from the iterator', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const iterate = async () => {
      for await (const _ of t.stream(taskInit('stream', { chunks: -2 }))) {
        // no chunk expected
      }
    };
    const err = await rejection(iterate());
    expect(err.code).toBe(ErrorCode.InvalidParams);
    expect(t.inFlight).toBe(0);
  });

  it('breaking out early removes the stream from the pending table; later chunks are not pushes', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const pushed: Envelope<object>[] = [];
    t.onMessage((e) => pushed.push(e));
    const seen: string[] = [];
    for await (const c of t.stream(taskInit('stream', { chunks: 20, interval_ms: 5 }))) {
      seen.push(c.payload.chunk ?? '');
      expect(t.inFlight).toBe(1);
      if (seen.length === 2) break;
    }
    expect(seen).toEqual(['chunk-0', 'chunk-1']);
    expect(t.inFlight).toBe(0);
    // Let the server finish streaming, then make sure every chunk it wrote has reached the client.
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server stream to finish');
    await t.request(taskInit('echo', { barrier: true }));
    expect(pushed).toEqual([]);
    expect(t.inFlight).toBe(0);
  });
});

describe('WebSocketTransport: server push', () => {
  it('delivers pushes arriving while other requests are in flight, via onMessage and receive()', async () => {
    const d = await demo();
    const t = transport(d.ws);
    const viaCallback: Envelope<object>[] = [];
    const remove = t.onMessage((e) => viaCallback.push(e));
    const abort = new AbortController();
    const slow = watch(t.request(taskInit('sleep', { ms: 3000 }), { signal: abort.signal }));
    const pushEnv = createEnvelope(taskInit('push', { count: 3 }));
    const reply = await t.request(pushEnv);
    expect(payloadOf(reply).result).toEqual({ pushed: 3 });
    // The pushes were written before the response, on the same socket.
    expect(viaCallback).toHaveLength(3);
    expect(slow.settled()).toBe(false);
    expect(t.inFlight).toBe(1);
    for (const e of viaCallback) {
      expect(e.payload_type).toBe('TaskUpdate');
      expect(e.correlation_id).toBe(pushEnv.id);
      expect(e.recipient).toBe(CLIENT_URN);
    }
    expect(viaCallback.map((e) => payloadOf(e).progress.percent)).toEqual([33, 67, 100]);
    const viaReceive = [await t.receive(), await t.receive(), await t.receive()];
    expect(viaReceive.map((e) => e.id)).toEqual(viaCallback.map((e) => e.id));

    remove();
    await t.request(taskInit('push', { count: 1 }));
    expect(viaCallback).toHaveLength(3); // the removed callback got nothing more
    expect(payloadOf(await t.receive()).progress.percent).toBe(100);

    abort.abort();
    expect((await rejection(slow.promise)).message).toMatch(/^Request aborted/);
  });

  it('connect / send / receive: receive() yields the answers to send() and pushes, in arrival order', async () => {
    const d = await demo();
    const t = transport(d.ws);
    await t.connect();
    await t.send(taskInit('echo', { n: 1 }));
    const first = await t.receive();
    expect(first.payload_type).toBe('TaskResponse');
    expect(payloadOf(first).result).toEqual({ echo: { n: 1 } });

    // A skill that pushes before answering: the pushes come first, then the answer.
    const pushing = createEnvelope(taskInit('push', { count: 2 }));
    await t.send(pushing);
    const order = [await t.receive(), await t.receive(), await t.receive()];
    expect(order.map((e) => e.payload_type)).toEqual(['TaskUpdate', 'TaskUpdate', 'TaskResponse']);
    expect(order[2]!.correlation_id).toBe(pushing.id);

    // An error answer rejects receive() in its place; what follows is still delivered.
    await t.send({
      sender: CLIENT_URN,
      recipient: DEMO_URN,
      payload_type: 'TaskUpdate', // no handler for it
      payload: { task_id: 't', update_type: 'progress', status: 'working' },
    });
    await t.send(taskInit('echo', { n: 2 }));
    const failed = await rejection(t.receive());
    expect(failed.code).toBe(ErrorCode.HandlerNotFound);
    expect(payloadOf(await t.receive()).result).toEqual({ echo: { n: 2 } });

    // A notification gets no answer: nothing is queued for it.
    await t.notify(taskInit('echo', { n: 3 }));
    await t.send(taskInit('echo', { n: 4 }));
    expect(payloadOf(await t.receive()).result).toEqual({ echo: { n: 4 } });

    await t.close();
    await expect(t.send(taskInit('echo'))).rejects.toThrow(/closed/i);
    await expect(t.receive()).rejects.toThrow('Transport closed');
  });

  it('accepts pushes in the result form (pushForm: result, id null)', async () => {
    const d = await demo({ pushForm: 'result' });
    const t = transport(d.ws);
    const got: Envelope<object>[] = [];
    t.onMessage((e) => got.push(e));
    const reply = await t.request(taskInit('push', { count: 2 }));
    expect(payloadOf(reply).result).toEqual({ pushed: 2 });
    expect(got.map((e) => payloadOf(e).progress.percent)).toEqual([50, 100]);
  });

  it('takes both push forms from a plain ws server, acks requires_ack, and delivers a repeated id once', async () => {
    const r = await raw();
    const t = transport(r.url);
    const got: Envelope<object>[] = [];
    t.onMessage((e) => got.push(e));
    await t.connect();
    await waitFor(() => r.sockets.length === 1, 'connection');
    const update = (n: number, extra = {}) =>
      createEnvelope({
        sender: DEMO_URN,
        recipient: CLIENT_URN,
        payload_type: 'TaskUpdate',
        payload: { task_id: 't-1', update_type: 'progress', status: 'working', progress: { percent: n } },
        ...extra,
      });
    const asNotification = update(10);
    const asResult = update(20);
    const acked = update(30, { requires_ack: true });
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: asNotification } });
    r.send(resultFrame(null, asResult));
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: acked } });
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: acked } }); // same id again
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: asNotification } }); // and again
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: { not: 'an envelope' } } });
    await flush(r);

    expect(got.map((e) => e.id)).toEqual([asNotification.id, asResult.id, acked.id]);
    const received = [await t.receive(), await t.receive(), await t.receive()];
    expect(received.map((e) => e.id)).toEqual([asNotification.id, asResult.id, acked.id]);

    const acks = r.frames.filter((f) => f?.method === 'asap.ack');
    expect(acks).toHaveLength(2); // both copies of the acked push were acknowledged
    for (const a of acks) {
      expect(a.id).toBeUndefined();
      expect(a.params.envelope).toMatchObject({
        payload_type: 'MessageAck',
        sender: CLIENT_URN,
        recipient: DEMO_URN,
        asap_version: acked.asap_version,
        correlation_id: acked.id,
        payload: { original_envelope_id: acked.id, status: 'received' },
      });
    }
  });
});

describe('WebSocketTransport: reverse requests', () => {
  it('answers the server with a registry handler (on TaskRequest)', async () => {
    const d = await demo();
    const registry = new HandlerRegistry().on('TaskRequest', (env) => ({
      task_id: env.id,
      status: 'completed',
      result: { answered_by: 'client', got: env.payload.input },
    }));
    const t = transport(d.ws, { registry });
    await t.request(taskInit('echo')); // makes the server index this connection by sender
    const [conn] = d.server.connectionsFor(CLIENT_URN);
    expect(conn).toBeDefined();
    const req = createEnvelope({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'c', skill_id: 'anything', input: { q: 42 } },
    });
    const answer = await conn!.request(req, { timeoutMs: 5000 });
    expect(answer.payload_type).toBe('TaskResponse');
    expect(answer.correlation_id).toBe(req.id);
    expect(answer.sender).toBe(CLIENT_URN);
    expect(answer.payload).toEqual({
      task_id: req.id,
      status: 'completed',
      result: { answered_by: 'client', got: { q: 42 } },
    });
  });

  it('answers with a skill of the registry', async () => {
    const d = await demo();
    const registry = new HandlerRegistry().skill('double', (env) => ({
      task_id: env.id,
      status: 'completed',
      result: { value: Number(env.payload.input.n) * 2 },
    }));
    const t = transport(d.ws, { registry });
    await t.request(taskInit('echo'));
    const [conn] = d.server.connectionsFor(CLIENT_URN);
    const answer = await conn!.request(
      {
        sender: DEMO_URN,
        recipient: CLIENT_URN,
        payload_type: 'TaskRequest',
        payload: { conversation_id: 'c', skill_id: 'double', input: { n: 21 } },
      },
      { timeoutMs: 5000 },
    );
    expect((answer.payload as Json).result).toEqual({ value: 42 });
  });

  it('a client without a registry answers -32012', async () => {
    const d = await demo();
    const t = transport(d.ws);
    await t.request(taskInit('echo'));
    const [conn] = d.server.connectionsFor(CLIENT_URN);
    const err = await rejection(
      conn!.request(
        {
          sender: DEMO_URN,
          recipient: CLIENT_URN,
          payload_type: 'TaskRequest',
          payload: { conversation_id: 'c', skill_id: 'x', input: {} },
        },
        { timeoutMs: 5000 },
      ),
    );
    expect(err.code).toBe(ErrorCode.HandlerNotFound);
    expect(t.state).toBe('open');
  });

  it('acks a reverse request that requires it and lets the handler push back', async () => {
    const r = await raw();
    const registry = new HandlerRegistry().on('TaskRequest', async (env, ctx) => {
      await ctx.push({
        payload_type: 'TaskUpdate',
        payload: { task_id: env.id, update_type: 'progress', status: 'working' },
      });
      return { task_id: env.id, status: 'completed' };
    });
    const t = transport(r.url, { registry });
    await t.connect();
    await waitFor(() => r.sockets.length === 1, 'connection');
    const req = createEnvelope({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'c', skill_id: 's', input: {} },
      requires_ack: true,
    });
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: req }, id: 'srv-1' });
    const answer = await r.frame((f) => f?.id === 'srv-1', 'answer');
    expect(answer.result.envelope).toMatchObject({
      correlation_id: req.id,
      payload: { status: 'completed' },
    });
    const ack = await r.frame((f) => f?.method === 'asap.ack', 'ack');
    expect(ack.params.envelope.payload).toEqual({ original_envelope_id: req.id, status: 'received' });
    const push = await r.frame((f) => f?.method === 'asap.send' && f.id === undefined, 'push');
    expect(push.params.envelope).toMatchObject({
      payload_type: 'TaskUpdate',
      sender: CLIENT_URN,
      recipient: DEMO_URN,
    });
    // The ack comes before the handler runs, the push before the answer.
    const order = r.frames
      .filter((f) => f?.method !== 'asap.resume')
      .map((f) => (f?.method === 'asap.ack' ? 'ack' : f?.id === 'srv-1' ? 'answer' : 'push'));
    expect(order.indexOf('ack')).toBeLessThan(order.indexOf('push'));
    expect(order.indexOf('push')).toBeLessThan(order.indexOf('answer'));
  });
});

describe('WebSocketTransport: reverse requests and close', () => {
  it('closing while a reverse request runs aborts the handler and writes nothing', async () => {
    const r = await raw();
    let aborted = false;
    let started = false;
    const registry = new HandlerRegistry().on('TaskRequest', async (_env, ctx) => {
      started = true;
      await new Promise<void>((resolve) =>
        ctx.signal.addEventListener('abort', () => {
          aborted = true;
          resolve();
        }),
      );
      return { task_id: 'x', status: 'completed' };
    });
    const t = transport(r.url, { registry });
    await t.connect();
    await waitFor(() => r.sockets.length === 1, 'connection');
    const req = createEnvelope({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'c', skill_id: 's', input: {} },
    });
    r.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: req }, id: 'srv-9' });
    await waitFor(() => started, 'handler started');
    await t.close();
    await waitFor(() => aborted, 'handler aborted');
    await delay(20);
    expect(r.frames.filter((f) => f?.id === 'srv-9')).toEqual([]);
  });
});

describe('WebSocketTransport: deadlines and cancellation', () => {
  it('fails a request past its timeout with RequestTimeoutError and frees its slot', async () => {
    // Client and server on one manual clock: the deadline passes when the test says, not before.
    const timers = manualTimers();
    const d = await demo({ timers });
    cleanups.push(() => whileTicking(timers, d.server.close()));
    const t = transport(d.ws, { timerResolutionMs: 10, timers });
    const pending = watch(rejection(t.request(taskInit('sleep', { ms: 1000 }), { timeoutMs: 50 })));
    await waitFor(() => d.server.dispatcher.inFlight === 1 && t.unacknowledged === 0, 'the request to run');
    await timers.tick(49);
    expect(pending.settled()).toBe(false);
    expect(t.inFlight).toBe(1);
    await timers.tick(1);
    const err = await pending.promise;
    expect(err).toBeInstanceOf(RequestTimeoutError);
    expect(err.code).toBe(LocalErrorCode.RequestTimeout);
    expect(t.inFlight).toBe(0);
    expect(t.state).toBe('open');
  });

  it('applies requestTimeoutMs to every request, and to a stream that stalls', async () => {
    const timers = manualTimers();
    const r = await raw();
    const t = transport(r.url, { requestTimeoutMs: 60, timerResolutionMs: 10, timers });
    const request = watch(rejection(t.request(taskInit('echo'))));
    await r.request(0);
    await timers.tick(59);
    expect(request.settled()).toBe(false);
    await timers.tick(1);
    expect(await request.promise).toBeInstanceOf(RequestTimeoutError);

    // Each chunk gives a stream the whole deadline anew: one chunk after 40 ms moves it to 100 ms.
    const chunks: Envelope<TaskStream>[] = [];
    const iterate = async () => {
      for await (const c of t.stream(taskInit('stream'))) chunks.push(c);
    };
    const stream = watch(rejection(iterate()));
    const req = await r.request(1);
    await timers.tick(40);
    r.send(resultFrame(req.id, createReply(req.params.envelope, 'TaskStream', { chunk: 'a', final: false })));
    await waitFor(() => chunks.length === 1, 'the chunk');
    await timers.tick(59);
    expect(stream.settled()).toBe(false);
    await timers.tick(1);
    expect(await stream.promise).toBeInstanceOf(RequestTimeoutError);
    expect(t.inFlight).toBe(0);
  });

  it('rejects at once for an already aborted signal, without sending', async () => {
    const r = await raw();
    const t = transport(r.url);
    await t.connect();
    const ac = new AbortController();
    ac.abort();
    const err = await rejection(t.request(taskInit('echo'), { signal: ac.signal }));
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toBe('Request aborted: This operation was aborted');
    expect(t.inFlight).toBe(0);
    await flush(r);
    expect(r.frames.filter((f) => f?.method === 'asap.send')).toEqual([]);
  });

  it('aborting during a request rejects it and removes it; its late answer is dropped', async () => {
    const r = await raw();
    const t = transport(r.url);
    const pushed: Envelope<object>[] = [];
    t.onMessage((e) => pushed.push(e));
    const ac = new AbortController();
    const p = t.request(taskInit('echo'), { signal: ac.signal });
    const req = await r.request(0);
    expect(t.inFlight).toBe(1);
    ac.abort(new Error('user gave up'));
    const err = await rejection(p);
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toBe('Request aborted: user gave up');
    expect(t.inFlight).toBe(0);
    // The server is told: a TaskCancel notification for the aborted task, on the same socket.
    const cancel = await r.frame(
      (f) =>
        f?.method === 'asap.send' && f.id === undefined && f.params?.envelope?.payload_type === 'TaskCancel',
      'TaskCancel',
    );
    expect(cancel.params.envelope.payload).toEqual({
      task_id: req.params.envelope.id,
      reason: 'Request aborted by the client',
    });

    r.send(resultFrame(req.id, responseTo(req)));
    await flush(r);
    expect(pushed).toEqual([]);

    const ac2 = new AbortController();
    const p2 = t.request(taskInit('echo'), { signal: ac2.signal });
    await r.request(1);
    const reason = new ASAPError(ErrorCode.InvalidState, 'cancelled by test');
    ac2.abort(reason);
    expect(await rejection(p2)).toBe(reason);

    const ac3 = new AbortController();
    const chunks: unknown[] = [];
    const iterate = async () => {
      for await (const c of t.stream(taskInit('stream'), { signal: ac3.signal })) chunks.push(c);
    };
    const done = rejection(iterate());
    await r.request(2);
    ac3.abort('no Error, just a string');
    expect((await done).message).toBe('Request aborted');
    expect(t.inFlight).toBe(0);
  });
});

describe('WebSocketTransport: a misbehaving server', () => {
  it('fails a request whose response has the wrong correlation_id with ProtocolError', async () => {
    const r = await raw((ws, f) => {
      if (f?.method === 'asap.send' && f.id !== undefined) {
        ws.send(resultFrame(f.id, responseTo(f, { correlation_id: 'someone-else' })));
      }
    });
    const t = transport(r.url);
    const env = createEnvelope(taskInit('echo'));
    const err = await rejection(t.request(env));
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.message).toMatch(/correlation_id/);
    expect(err.data).toEqual({ expected: env.id, received: 'someone-else' });
    expect(t.inFlight).toBe(0);
    expect(t.state).toBe('open');
  });

  it('fails a response without any correlation_id with ProtocolError', async () => {
    const r = await raw((ws, f) => {
      if (f?.method === 'asap.send' && f.id !== undefined) {
        // An unknown payload type is a valid envelope without correlation_id, but it binds to nothing.
        ws.send(
          resultFrame(
            f.id,
            createEnvelope({
              sender: DEMO_URN,
              recipient: CLIENT_URN,
              payload_type: 'CustomReply',
              payload: {},
            }),
          ),
        );
      }
    });
    const t = transport(r.url);
    const env = createEnvelope(taskInit('echo'));
    const err = await rejection(t.request(env));
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.data).toEqual({ expected: env.id, received: null });
  });

  it('drops answers to unknown ids; the request stays pending until its real answer', async () => {
    const r = await raw();
    const t = transport(r.url);
    const pushed: Envelope<object>[] = [];
    t.onMessage((e) => pushed.push(e));
    const p = watch(t.request(taskInit('echo', { real: true })));
    const req = await r.request(0);
    r.send(resultFrame('ws-req-999', responseTo(req, { result: { wrong: 'id' } })));
    r.send(JSON.stringify({ jsonrpc: '2.0', result: { no: 'envelope' }, id: 'other-7' }));
    r.send(JSON.stringify({ jsonrpc: '2.0', error: { code: -32603, message: 'stray' }, id: 'ws-req-998' }));
    r.send(JSON.stringify({ jsonrpc: '2.0', error: { code: -32600, message: 'stray' }, id: null }));
    await flush(r);
    expect(p.settled()).toBe(false);
    expect(t.inFlight).toBe(1);
    expect(pushed).toEqual([]);

    r.send(resultFrame(req.id, responseTo(req, { result: { right: 'id' } })));
    const reply = await p.promise;
    expect(payloadOf(reply).result).toEqual({ right: 'id' });
  });

  it('drops garbage without throwing, without an error event, and stays open', async () => {
    const r = await raw();
    const t = transport(r.url);
    const errors: Error[] = [];
    const states: TransportState[] = [];
    const pushed: Envelope<object>[] = [];
    t.on('error', (e) => errors.push(e));
    t.on('state', (s) => states.push(s));
    t.onMessage((e) => pushed.push(e));
    const p = watch(t.request(taskInit('echo')));
    const req = await r.request(0);
    const garbage = [
      'not json at all',
      '{"unterminated": ',
      '42',
      'null',
      '"a string"',
      '[]',
      '{}',
      '{"foo":1}',
      '{"jsonrpc":"2.0"}',
      `{"jsonrpc":"1.0","result":{},"id":${JSON.stringify(req.id)}}`,
      `{"jsonrpc":"2.0","result":{},"error":{"code":1,"message":"x"},"id":${JSON.stringify(req.id)}}`,
      `{"jsonrpc":"2.0","error":"not an object","id":${JSON.stringify(req.id)}}`,
      '{"jsonrpc":"2.0","method":"asap.unknown","params":{}}',
      '{"jsonrpc":"2.0","method":"asap.ack","params":{"envelope":{"bad":true}}}',
      '{"jsonrpc":"2.0","method":"asap.send"}',
      '{"type":"unknown"}',
      '[1, "two", null]',
      '{"type":"pong"}',
      '{ "type": "pong" }',
      JSON.stringify({
        jsonrpc: '2.0',
        method: 'asap.ack',
        params: {
          envelope: createEnvelope({
            sender: DEMO_URN,
            recipient: CLIENT_URN,
            payload_type: 'MessageAck',
            payload: { original_envelope_id: 'never-sent', status: 'received' },
            correlation_id: 'never-sent',
          }),
        },
      }),
    ];
    for (const g of garbage) r.send(g);
    r.sockets[0]!.send(Buffer.from('binary garbage \u00ff'), { binary: true });
    await flush(r);
    expect(p.settled()).toBe(false);
    expect(errors).toEqual([]);
    expect(pushed).toEqual([]);
    expect(t.state).toBe('open');
    expect(states).toEqual(['connecting', 'open']);
    expect(r.frames.filter((f) => f?.type === 'pong')).toHaveLength(1); // only flush()'s ping was answered
    expect(t.unacknowledged).toBe(1); // the request's own ack is still outstanding

    // A binary frame is UTF-8 JSON like a text frame.
    r.sockets[0]!.send(Buffer.from(resultFrame(req.id, responseTo(req, { result: { via: 'binary' } }))), {
      binary: true,
    });
    expect(payloadOf(await p.promise).result).toEqual({ via: 'binary' });
  });

  it('fails a result without a valid envelope with ProtocolError', async () => {
    const r = await raw();
    const t = transport(r.url);
    const a = t.request(taskInit('echo'));
    const b = t.request(taskInit('echo'));
    const c = t.request(taskInit('echo'));
    const [ra, rb, rc] = [await r.request(0), await r.request(1), await r.request(2)];
    r.send(JSON.stringify({ jsonrpc: '2.0', result: { envelope: { id: 'x', payload: {} } }, id: ra.id }));
    r.send(JSON.stringify({ jsonrpc: '2.0', result: { something: 'else' }, id: rb.id }));
    r.send(JSON.stringify({ jsonrpc: '2.0', result: null, id: rc.id }));
    for (const p of [a, b, c]) {
      const err = await rejection(p);
      expect(err).toBeInstanceOf(ProtocolError);
      expect(err.message).toBe('Response carries no valid envelope');
      expect((err.data as Json).validation_errors.length).toBeGreaterThan(0);
    }
    expect(t.inFlight).toBe(0);
    expect(t.state).toBe('open');
  });

  it('rejects with an error frame for its id, and takes answers in a batch', async () => {
    const r = await raw();
    const t = transport(r.url);
    const a = t.request(taskInit('echo'));
    const b = t.request(taskInit('echo'));
    const c = t.request(taskInit('echo'));
    const [ra, rb, rc] = [await r.request(0), await r.request(1), await r.request(2)];
    r.send(
      `[${resultFrame(rb.id, responseTo(rb, { result: { n: 'b' } }))},${resultFrame(ra.id, responseTo(ra, { result: { n: 'a' } }))}]`,
    );
    r.send({
      jsonrpc: '2.0',
      error: { code: -32040, message: 'busy', data: { retry_after_ms: 5 } },
      id: rc.id,
    });
    expect(payloadOf(await a).result).toEqual({ n: 'a' });
    expect(payloadOf(await b).result).toEqual({ n: 'b' });
    const err = await rejection(c);
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.code).toBe(ErrorCode.ResourceExhausted);
    expect(err.message).toBe('busy');
    expect(err.data).toEqual({ retry_after_ms: 5 });
  });

  it('pings a server that stays silent for a heartbeat interval; heartbeatIntervalMs 0 never does', async () => {
    const timers = manualTimers();
    const r = await raw((ws, f) => {
      if (f?.type === 'ping') ws.send('{"type":"pong"}');
    });
    const quietRec = recordingFactory(timers);
    const quiet = transport(r.url, { heartbeatIntervalMs: 0, timers, webSocketFactory: quietRec.factory });
    await quiet.connect();
    const rec = recordingFactory(timers);
    const chatty = transport(r.url, { heartbeatIntervalMs: 50, timers, webSocketFactory: rec.factory });
    await chatty.connect();
    await waitFor(() => r.sockets.length === 2, 'connections');
    const t0 = timers.now();
    const pings = () => rec.writesOf((text) => text === '{"type":"ping"}');
    // Silent for exactly one interval is not silent for more than one: no ping at 50 ms.
    await timers.tick(50);
    expect(pings()).toEqual([]);
    await timers.tick(50);
    expect(pings()).toEqual([t0 + 100]);
    await waitFor(() => r.framesOf[1]!.filter((f) => f?.type === 'ping').length === 1, 'the ping');
    // The pong (and the flush's ping) arrive at 100 ms: the next ping is due at 200, not 150.
    await flush(r);
    await timers.tick(50);
    expect(pings()).toEqual([t0 + 100]);
    await timers.tick(50);
    expect(pings()).toEqual([t0 + 100, t0 + 200]);
    await waitFor(() => r.framesOf[1]!.filter((f) => f?.type === 'ping').length === 2, 'the second ping');
    // The quiet one never pings, however long.
    await timers.tick(10_000);
    expect(quietRec.writesOf((text) => text === '{"type":"ping"}')).toEqual([]);
    expect(r.framesOf[0]!.filter((f) => f?.type === 'ping')).toHaveLength(0);
    expect(quiet.state).toBe('open');
  });

  it('answers an app-level ping with a pong', async () => {
    const r = await raw();
    const t = transport(r.url);
    await t.connect();
    await waitFor(() => r.sockets.length === 1, 'connection');
    r.send('{ "type": "ping" }'); // not the canonical spelling: decoded as a heartbeat frame
    await waitFor(() => r.frames.some((f) => f?.type === 'pong'), 'pong');
    expect(r.frames.filter((f) => f?.type === 'pong')).toHaveLength(1);
  });
});

describe('WebSocketTransport: notifications (notify)', () => {
  it('resolves a send without requires_ack once written, with requires_ack once acknowledged', async () => {
    const d = await demo();
    const t = transport(d.ws);
    await t.notify({
      sender: CLIENT_URN,
      recipient: DEMO_URN,
      payload_type: 'TaskUpdate',
      payload: { task_id: 't', update_type: 'progress', status: 'working' },
    });
    await t.notify(taskInit('echo', { as: 'notification' })); // a TaskRequest: requires_ack set automatically
    expect(t.unacknowledged).toBe(0);

    const refused = await rejection(
      t.notify({
        sender: CLIENT_URN,
        recipient: DEMO_URN,
        payload_type: 'NoSuchType',
        payload: {},
        requires_ack: true,
      }),
    );
    expect(refused.code).toBe(ErrorCode.InvalidRequest);
    expect(refused.message).toMatch(/No handler for payload type NoSuchType/);
    expect(t.state).toBe('open');
  });

  it('sets requires_ack on TaskRequest, and not with ack: false', async () => {
    const r = await raw();
    const withAcks = transport(r.url);
    const withoutAcks = transport(r.url, { ack: false });
    void withAcks.request(taskInit('echo')).catch(() => {});
    void withoutAcks.request(taskInit('echo')).catch(() => {});
    await r.request(1);
    const byConnection = r.frames
      .filter((f) => f?.method === 'asap.send')
      .map((f) => f.params.envelope.requires_ack);
    expect(byConnection.sort()).toEqual([true, undefined]);
    expect(withoutAcks.unacknowledged).toBe(0);
    await withoutAcks.notify(taskInit('echo')); // resolves once written: nobody acks here

    const bare = transport(r.url, { ack: false, circuitBreaker: false, timerResolutionMs: 10 });
    expect(bare.circuitState).toBe('closed');
    expect(await rejection(bare.request(taskInit('echo'), { timeoutMs: 30 }))).toBeInstanceOf(
      RequestTimeoutError,
    );
  });

  it('rejects a send whose envelope the peer acks as rejected', async () => {
    const r = await raw((ws, f) => {
      if (f?.method === 'asap.send' && f.id === undefined) {
        const env = f.params.envelope;
        const ack = createEnvelope({
          sender: env.recipient,
          recipient: env.sender,
          payload_type: 'MessageAck',
          payload: { original_envelope_id: env.id, status: 'rejected' },
          correlation_id: env.id,
        });
        ws.send(JSON.stringify({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: ack } }));
      }
    });
    const t = transport(r.url);
    const env = createEnvelope(taskInit('echo'));
    const err = await rejection(t.notify(env));
    expect(err.code).toBe(ErrorCode.InvalidRequest);
    expect(err.message).toBe('Envelope rejected by the peer');
    expect(err.data).toEqual({ envelope_id: env.id });
    expect(t.unacknowledged).toBe(0);
  });

  it('rejects a send on a transport that cannot connect', async () => {
    const t = transport(undefined);
    const err = await rejection(t.notify(taskInit('echo')));
    expect(err).toBeInstanceOf(ConnectionError);
    expect(t.state).toBe('closed');
    expect(t.unacknowledged).toBe(0);
  });
});

describe('WebSocketTransport: events and close', () => {
  it('emits open, close with code and reason, and the state transitions; pending requests fail', async () => {
    const r = await raw();
    const t = transport(r.url);
    const events: string[] = [];
    const closes: { code: number; reason: string }[] = [];
    t.on('open', () => events.push('open'));
    t.on('close', (info) => closes.push(info));
    t.on('state', (s) => events.push(`state:${s}`));
    const p = t.request(taskInit('echo'));
    await r.request(0);
    r.sockets[0]!.close(4000, 'go away');
    const err = await rejection(p);
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toBe('Connection closed (4000 go away)');
    expect(err.data).toEqual({ code: 4000, reason: 'go away' });
    expect(closes).toEqual([{ code: 4000, reason: 'go away' }]);
    expect(events).toEqual(['state:connecting', 'state:open', 'open', 'state:closed']);
    expect(t.state).toBe('closed');
    expect(await rejection(t.request(taskInit('echo')))).toBeInstanceOf(ConnectionError);
  });

  it('emits error and rejects connect() when the server is not there', async () => {
    const r = await startRawServer();
    const url = r.url;
    await r.close();
    const t = transport(url);
    const errors: Error[] = [];
    t.on('error', (e) => errors.push(e));
    const err = await rejection(t.connect());
    expect(err).toBeInstanceOf(ConnectionError);
    // What happened, not the bare close code (1006) that follows it; ws's error is the cause.
    expect(err.message).toMatch(/^connection refused \(127\.0\.0\.1:\d+\)$/);
    expect(err.data).toEqual({ code: 1006, reason: '' });
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toBeInstanceOf(ConnectionError);
    expect(errors[0]?.message).toBe(err.message);
    const described = errors[0]?.cause as Error | undefined;
    expect((described?.cause as Error | undefined)?.message).toMatch(/ECONNREFUSED/);
    expect(t.state).toBe('closed');
    expect((await rejection(t.connect())).message).toBe('Transport is closed');
    expect((await rejection(t.send(taskInit('echo')))).message).toBe('Transport is closed');
  });

  it('fails to connect to a path the server does not serve', async () => {
    const d = await demo();
    const t = transport(d.ws.replace('/asap/ws', '/nowhere'));
    const errors: Error[] = [];
    t.on('error', (e) => errors.push(e));
    const pending = t.request(taskInit('echo'));
    expect(await rejection(pending)).toBeInstanceOf(ConnectionError);
    expect(errors.map((e) => e.message).join()).toMatch(/404/);
    expect(t.state).toBe('closed');
  });

  it('rejects connect() without a URL, and a factory that throws', async () => {
    const noUrl = transport(undefined);
    expect((await rejection(noUrl.connect())).message).toBe('No URL to connect to');
    expect(noUrl.state).toBe('closed');

    const broken = transport('ws://127.0.0.1:1/asap/ws', {
      webSocketFactory: () => {
        throw new Error('no sockets today');
      },
    });
    const err = await rejection(broken.request(taskInit('echo')));
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toBe('Cannot open ws://127.0.0.1:1/asap/ws: no sockets today');
  });

  it('close() is idempotent, rejects pending work with ConnectionError and leaves no timer', async () => {
    const r = await raw();
    const baseline = await baselineTimeouts();
    const t = new WebSocketTransport(r.url, { reconnect: false, timerResolutionMs: 10 });
    const closes: { code: number; reason: string }[] = [];
    t.on('close', (info) => closes.push(info));
    const p = rejection(t.request(taskInit('echo')));
    const s = rejection(t.stream(taskInit('stream'))[Symbol.asyncIterator]().next());
    const receiving = rejection(t.receive());
    await r.request(1);
    const first = t.close(1000, 'bye');
    const second = t.close();
    expect(second).toBe(first);
    await first;
    for (const pending of [p, s, receiving]) expect(await pending).toBeInstanceOf(ConnectionError);
    expect((await p).message).toBe('Transport closed');
    expect(t.state).toBe('closed');
    expect(t.inFlight).toBe(0);
    expect(t.unacknowledged).toBe(0);
    expect(closes).toEqual([{ code: 1000, reason: 'bye' }]);
    await waitFor(() => r.sockets[0]?.readyState === WebSocket.CLOSED, 'server side closed');
    await waitFor(() => activeTimeouts() <= baseline, 'timers back to baseline');
    await t.close();
  });

  it('close() while waiting to reconnect clears the reconnect timer', async () => {
    const r = await raw();
    const baseline = await baselineTimeouts();
    const t = new WebSocketTransport(r.url, { backoff: { baseMs: 60_000, jitter: 0 } });
    await t.connect();
    await waitFor(() => r.sockets.length === 1, 'connection');
    r.sockets[0]!.terminate();
    await waitFor(() => t.state === 'reconnecting', 'reconnecting');
    await waitFor(() => activeTimeouts() > baseline, 'the reconnect timer to be counted');
    await t.close();
    expect(t.state).toBe('closed');
    await waitFor(() => activeTimeouts() <= baseline, 'timers back to baseline');
  });

  it('close() before connecting, and while connecting, resolves', async () => {
    const idle = new WebSocketTransport('ws://127.0.0.1:1/asap/ws');
    await idle.close();
    expect(idle.state).toBe('closed');

    const d = await demo();
    const connecting = new WebSocketTransport(d.ws);
    const opening = connecting.connect();
    expect(connecting.state).toBe('connecting');
    await connecting.close();
    expect(await rejection(opening)).toBeInstanceOf(ConnectionError);
    expect(connecting.state).toBe('closed');
  });

  it('a throwing event listener does not break the transport', async () => {
    const d = await demo();
    const t = transport(d.ws);
    t.on('open', () => {
      throw new Error('listener bug');
    });
    await t.connect();
    expect(payloadOf(await t.request(taskInit('echo', { still: 'works' }))).status).toBe('completed');
  });
});

describe('WebSocketTransport: authentication', () => {
  it('takes a 4401 close without a reason as "Authentication required"', async () => {
    const r = await raw((ws) => ws.close(4401));
    const t = transport(r.url, { reconnect: true });
    const err = await rejection(t.request(taskInit('echo')));
    expect(err.code).toBe(ErrorCode.Unauthorized);
    expect(err.message).toBe('Authentication required');
    expect(t.state).toBe('closed');
  });

  it('sends the token as an Authorization header with the Node factory', async () => {
    const r = await raw();
    const t = transport(r.url, { token: 's3cret', headers: { 'x-extra': 'yes' } });
    await t.connect();
    await waitFor(() => r.upgrades.length === 1, 'upgrade');
    expect(r.upgrades[0]!.headers.authorization).toBe('Bearer s3cret');
    expect(r.upgrades[0]!.headers['x-extra']).toBe('yes');
    expect(r.upgrades[0]!.headers['sec-websocket-protocol']).toBe('asap.v1');

    const d = await demo({ token: 's3cret' });
    const ok = transport(d.ws, { token: 's3cret' });
    expect(payloadOf(await ok.request(taskInit('echo', { authed: true }))).result).toEqual({
      echo: { authed: true },
    });
  });

  it('browserWebSocketFactory puts the token in an asap.bearer subprotocol next to asap.v1', async () => {
    const r = await raw(undefined, { handleProtocols: () => 'asap.v1' });
    const factory = browserWebSocketFactory(WebSocket as never);
    const t = transport(r.url, { token: 'tok123', webSocketFactory: factory });
    await t.connect();
    await waitFor(() => r.upgrades.length === 1, 'upgrade');
    expect(r.upgrades[0]!.headers['sec-websocket-protocol']?.split(/,\s*/)).toEqual([
      'asap.v1',
      'asap.bearer.tok123',
    ]);
    expect(r.upgrades[0]!.headers.authorization).toBeUndefined();
    expect(t.protocol).toBe('asap.v1');

    const anon = transport(r.url, { webSocketFactory: factory });
    await anon.connect();
    await waitFor(() => r.upgrades.length === 2, 'upgrade');
    expect(r.upgrades[1]!.headers['sec-websocket-protocol']).toBe('asap.v1');

    const d = await demo({ token: 'tok123' });
    const viaProtocol = transport(d.ws, { token: 'tok123', webSocketFactory: factory });
    expect(payloadOf(await viaProtocol.request(taskInit('echo', { b: 1 }))).result).toEqual({
      echo: { b: 1 },
    });
    expect(viaProtocol.protocol).toBe('asap.v1'); // the server never selects the bearer entry
  });

  it('a wrong or missing token rejects with -32004 and does not reconnect', async () => {
    const d = await demo({ token: 'right' });
    for (const [token, reason] of [
      ['wrong', 'Invalid token'],
      [undefined, 'Authentication required'],
    ] as const) {
      const timers = manualTimers();
      const rec = recordingFactory(timers);
      const t = new WebSocketTransport(d.ws, {
        token,
        backoff: { baseMs: 10, jitter: 0 },
        timers,
        webSocketFactory: rec.factory,
      });
      cleanups.push(() => whileTicking(timers, t.close()));
      const events: string[] = [];
      t.on('reconnecting', () => events.push('reconnecting'));
      t.on('gaveUp', () => events.push('gaveUp'));
      const err = await rejection(t.request(taskInit('echo')));
      expect(err).toBeInstanceOf(ASAPError);
      expect(err.code).toBe(ErrorCode.Unauthorized);
      expect(err.message).toBe(reason);
      expect(t.state).toBe('closed');
      // Far past any reconnect delay: no second attempt.
      await timers.tick(60_000);
      expect(rec.attempts).toHaveLength(1);
      expect(events).toEqual(['gaveUp']);
      expect(t.state).toBe('closed');
      await delay(20);
      expect(d.server.connections).toHaveLength(0);
    }
  });
});
