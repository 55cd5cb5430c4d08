import { afterEach, describe, expect, it } from 'vitest';
import {
  ASAPClient,
  type ASAPClientOptions,
  ConnectionPool,
  HttpTransport,
  WebSocketTransport,
} from '../../src/client/index.js';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import { ConnectionError, ErrorCode, RequestAbortedError } from '../../src/protocol/errors.js';
import {
  CLIENT_URN,
  cleanups,
  DEMO_URN,
  type Demo,
  demo,
  type Json,
  rejection,
  runCleanups,
  taskInit,
  waitFor,
} from './helpers.js';

afterEach(runCleanups);

function client(url: string, opts: ASAPClientOptions = {}): ASAPClient {
  const c = new ASAPClient(url, { sender: CLIENT_URN, recipient: DEMO_URN, ...opts });
  cleanups.push(() => c.close());
  return c;
}

function transport(url: string): WebSocketTransport {
  const t = new WebSocketTransport(url, { reconnect: false });
  cleanups.push(() => t.close());
  return t;
}

const payloadOf = (env: Envelope<object>): Json => env.payload;

/** A `hang` skill on the demo agent that runs until its signal aborts (only a TaskCancel aborts it here). */
function watchCancels(d: Demo): { started: string[]; aborted: string[] } {
  const seen = { started: [] as string[], aborted: [] as string[] };
  d.server.registry.skill('hang', (env, ctx) => {
    seen.started.push(env.id);
    return new Promise((_, reject) => {
      ctx.signal.addEventListener('abort', () => {
        seen.aborted.push(env.id);
        reject(ctx.signal.reason);
      });
    });
  });
  return seen;
}

describe('cancel over WebSocket', () => {
  it('aborting a request sends a TaskCancel: the handler signal aborts and inFlight returns to 0', async () => {
    const d = await demo();
    const seen = watchCancels(d);
    const t = transport(d.ws);
    const env = createEnvelope(taskInit('hang'));
    const ac = new AbortController();
    const pending = rejection(t.request(env, { signal: ac.signal }));
    await waitFor(() => seen.started.length === 1, 'handler started');
    expect(d.server.dispatcher.inFlight).toBe(1);
    ac.abort();
    expect(await pending).toBeInstanceOf(RequestAbortedError);
    await waitFor(() => seen.aborted.length === 1, 'handler signal aborted', 2000);
    expect(seen.aborted).toEqual([env.id]);
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server inFlight 0', 2000);
    await waitFor(() => t.inFlight === 0, 'client inFlight 0', 2000);
  });

  it('an aborted task() of the demo sleep skill stops on the server quickly', async () => {
    const d = await demo();
    const c = client(d.ws);
    const ac = new AbortController();
    const started = Date.now();
    const pending = rejection(c.task('sleep', { ms: 5000 }, { signal: ac.signal }));
    await waitFor(() => d.server.dispatcher.inFlight === 1, 'sleep running');
    ac.abort();
    expect(await pending).toBeInstanceOf(RequestAbortedError);
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server inFlight 0', 2000);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('client.cancel(id) of a running task answers a cancelled TaskResponse; the task itself ends cancelled', async () => {
    const d = await demo();
    const c = client(d.ws);
    const env = c.taskEnvelope('sleep', { ms: 5000 });
    const running = c.send(env);
    await waitFor(() => d.server.dispatcher.inFlight === 1, 'sleep running');
    const answer = await c.cancel(env.id, { reason: 'changed my mind' });
    expect(answer.payload_type).toBe('TaskResponse');
    expect(payloadOf(answer)).toMatchObject({ task_id: env.id, status: 'cancelled' });
    expect(payloadOf(await running).status).toBe('cancelled');
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server inFlight 0', 2000);
  });

  it('client.cancel(id) of an unknown task rejects with -32010', async () => {
    const d = await demo();
    for (const url of [d.ws, d.rpc]) {
      const err = await rejection(client(url).cancel('no-such-task'));
      expect(err.code).toBe(ErrorCode.TaskNotFound);
      expect(err.code).toBe(-32010);
    }
  });

  it('WebSocketTransport.cancel(id) sends a TaskCancel with the task request addresses', async () => {
    const d = await demo();
    const seen = watchCancels(d);
    const t = transport(d.ws);
    const env = createEnvelope(taskInit('hang'));
    const running = t.request(env);
    await waitFor(() => seen.started.length === 1, 'handler started');
    const answer = await t.cancel(env.id);
    expect(payloadOf(answer)).toMatchObject({ task_id: env.id, status: 'cancelled' });
    expect(answer.recipient).toBe(env.sender);
    expect(payloadOf(await running).status).toBe('cancelled');
    expect(seen.aborted).toEqual([env.id]);
    expect((await rejection(t.cancel(env.id))).code).toBe(ErrorCode.TaskNotFound);
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server inFlight 0', 2000);
  });
});

describe('cancel over HTTP', () => {
  it('aborting a TaskRequest posts a TaskCancel: the handler stops', async () => {
    const d = await demo();
    const seen = watchCancels(d);
    const http = new HttpTransport(d.rpc);
    const env = createEnvelope(taskInit('hang'));
    const ac = new AbortController();
    const pending = rejection(http.request(env, { signal: ac.signal }));
    await waitFor(() => seen.started.length === 1, 'handler started');
    ac.abort();
    expect(await pending).toBeInstanceOf(RequestAbortedError);
    await waitFor(() => seen.aborted.length === 1, 'handler signal aborted', 2000);
    await waitFor(() => d.server.dispatcher.inFlight === 0, 'server inFlight 0', 2000);
  });

  it('client.cancel(id) over HTTP cancels a task started over HTTP', async () => {
    const d = await demo();
    const c = client(d.rpc);
    const env = c.taskEnvelope('sleep', { ms: 5000 });
    const running = c.send(env);
    await waitFor(() => d.server.dispatcher.inFlight === 1, 'sleep running');
    expect(payloadOf(await c.cancel(env.id))).toMatchObject({ task_id: env.id, status: 'cancelled' });
    expect(payloadOf(await running).status).toBe('cancelled');
  });
});

describe('after close()', () => {
  it('task(), send() and stream() return rejected promises with a ConnectionError, never throw', async () => {
    const d = await demo();
    for (const url of [d.ws, d.rpc]) {
      const c = client(url);
      await c.task('echo');
      await c.close();
      let task: Promise<unknown> | undefined;
      expect(() => {
        task = c.task('echo');
      }).not.toThrow();
      const err = await rejection(task!);
      expect(err).toBeInstanceOf(ConnectionError);
      expect(err.message).toBe('Client is closed');
      expect(await rejection(c.send(c.taskEnvelope('echo')))).toBeInstanceOf(ConnectionError);
      const iter = c.stream(c.taskEnvelope('stream', { chunks: 1 }))[Symbol.asyncIterator]();
      expect(await rejection(iter.next())).toBeInstanceOf(ConnectionError);
    }
  });

  it('ConnectionPool.acquire after close throws a ConnectionError', async () => {
    const pool = new ConnectionPool();
    await pool.close();
    expect(() => pool.acquire('ws://127.0.0.1:1/asap/ws')).toThrow(ConnectionError);
  });
});
