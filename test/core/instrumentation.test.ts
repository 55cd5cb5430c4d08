/**
 * Instrumentation hooks observed through a Dispatcher handling real frames: requests
 * started and finished, dedupe answers, refusals, handler errors, stream chunks, acks.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryDedupeStore } from '../../src/core/dedupe.js';
import { Dispatcher, type DispatcherOptions } from '../../src/core/dispatcher.js';
import type {
  ConnectionClosedInfo,
  ConnectionInfo,
  DedupeState,
  Instrumentation,
  RejectReason,
  RequestFinishedInfo,
  RequestInfo,
} from '../../src/core/instrumentation.js';
import type { NonceStore } from '../../src/core/nonce-store.js';
import { HandlerRegistry } from '../../src/core/registry.js';
import { createReply, type Envelope } from '../../src/protocol/envelope.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import type { TaskRequest } from '../../src/protocol/payloads.js';
import {
  AGENT,
  aborted,
  CLIENT,
  deferred,
  envelope,
  FakeSession,
  RecordingLogger,
  raw,
  send,
  taskRequest,
  waitFor,
} from './helpers.js';

type Event = [name: string, ...args: unknown[]];

/** Records every hook call; its methods use `this`, as a class-based exporter would. */
class Recorder implements Instrumentation {
  readonly events: Event[] = [];
  requestStarted(info: RequestInfo): void {
    this.events.push(['requestStarted', info]);
  }
  requestFinished(info: RequestFinishedInfo): void {
    this.events.push(['requestFinished', info]);
  }
  dedupe(state: DedupeState): void {
    this.events.push(['dedupe', state]);
  }
  rejected(reason: RejectReason, code: number): void {
    this.events.push(['rejected', reason, code]);
  }
  handlerError(info: RequestInfo, err: unknown): void {
    this.events.push(['handlerError', info, err]);
  }
  streamChunk(info: RequestInfo): void {
    this.events.push(['streamChunk', info]);
  }
  ackSent(status: string): void {
    this.events.push(['ackSent', status]);
  }
  ackReceived(status: string): void {
    this.events.push(['ackReceived', status]);
  }
  retransmitted(envelopeId: string): void {
    this.events.push(['retransmitted', envelopeId]);
  }
  connectionOpened(info: ConnectionInfo): void {
    this.events.push(['connectionOpened', info]);
  }
  connectionClosed(info: ConnectionClosedInfo): void {
    this.events.push(['connectionClosed', info]);
  }

  names(): string[] {
    return this.events.map((e) => e[0]);
  }
  /** The arguments of every call of one hook. */
  calls(name: string): unknown[][] {
    return this.events.filter((e) => e[0] === name).map((e) => e.slice(1));
  }
  /** The single argument of the one call of `name`. */
  only<T>(name: string): T {
    const calls = this.calls(name);
    expect(calls, name).toHaveLength(1);
    return calls[0]![0] as T;
  }
}

const dispatchers: Dispatcher[] = [];
afterEach(() => {
  for (const d of dispatchers.splice(0)) d.close();
});

function make(setup: (r: HandlerRegistry) => void, opts: Partial<DispatcherOptions> = {}) {
  const rec = new Recorder();
  const registry = new HandlerRegistry();
  setup(registry);
  const d = new Dispatcher({ registry, instrumentation: rec, ...opts });
  dispatchers.push(d);
  return { d, rec };
}

function echo(r: HandlerRegistry): void {
  r.skill('echo', (env) => ({ task_id: env.id, status: 'completed', result: { echo: env.payload.input } }));
}

describe('request hooks', () => {
  it('reports a successful request: dedupe, ack, started and finished with the same info', async () => {
    const { d, rec } = make(echo);
    const env = taskRequest('echo', { a: 1 }, { requires_ack: true, trace_id: 'trace-1' });
    const a = await send(d, new FakeSession(true), env);
    expect(a?.result?.envelope?.payload).toMatchObject({ status: 'completed' });
    expect(rec.names()).toEqual(['dedupe', 'ackSent', 'requestStarted', 'requestFinished']);
    expect(rec.calls('dedupe')).toEqual([['new']]);
    expect(rec.calls('ackSent')).toEqual([['received']]);
    const info = rec.only<RequestInfo>('requestStarted');
    const finished = rec.only<RequestFinishedInfo>('requestFinished');
    // One object for both hooks, completed in place when the request finishes.
    expect(finished).toBe(info);
    expect(finished).toEqual({
      transport: 'websocket',
      payloadType: 'TaskRequest',
      skill: 'echo',
      sender: CLIENT,
      envelopeId: env.id,
      traceId: 'trace-1',
      traceparent: undefined,
      outcome: 'ok',
      errorCode: undefined,
      durationMs: expect.any(Number),
    });
    expect(finished.durationMs).toBeGreaterThanOrEqual(0);
  });

  it('names payload types canonically, and skills only when a registered skill runs', async () => {
    const { d, rec } = make((r) => {
      echo(r);
      r.on('custom.ping', (env) => createReply(env, 'custom.pong', {}));
    });
    const s = new FakeSession(false);
    await send(d, s, { ...taskRequest('echo'), payload_type: 'task.request' });
    await send(d, s, taskRequest('made-up-skill-name'));
    await send(d, s, envelope('custom.ping', {}));
    const started = rec.calls('requestStarted').map((c) => c[0] as RequestInfo);
    expect(started.map((i) => [i.transport, i.payloadType, i.skill])).toEqual([
      ['http', 'TaskRequest', 'echo'],
      ['http', 'TaskRequest', undefined],
      ['http', 'custom.ping', undefined],
    ]);
    expect(started.every((i) => i.skill === undefined || i.skill === 'echo')).toBe(true);
  });

  it('gives no skill when one handler serves every TaskRequest', async () => {
    const { d, rec } = make((r) =>
      r.on('TaskRequest', (env) => ({ task_id: env.id, status: 'completed' }) as never),
    );
    await send(d, new FakeSession(false), taskRequest('anything'));
    expect(rec.only<RequestInfo>('requestStarted').skill).toBeUndefined();
  });

  it('takes the trace from trace_id, else from extensions.traceparent (§13)', async () => {
    const { d, rec } = make(echo);
    const s = new FakeSession(false);
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const traceparent = `00-${traceId}-00f067aa0ba902b7-01`;
    await send(d, s, taskRequest('echo', {}, { extensions: { traceparent } }));
    await send(d, s, taskRequest('echo', {}, { extensions: { traceparent }, trace_id: 'explicit' }));
    await send(d, s, taskRequest('echo', {}, { extensions: { traceparent: 'not-a-traceparent' } }));
    await send(d, s, taskRequest('echo', {}, { extensions: { traceparent: 42 } }));
    await send(d, s, taskRequest('echo', {}, { trace_id: '' }));
    const started = rec.calls('requestStarted').map((c) => c[0] as RequestInfo);
    expect(started.map((i) => [i.traceId, i.traceparent])).toEqual([
      [traceId, traceparent],
      ['explicit', traceparent],
      [undefined, 'not-a-traceparent'],
      [undefined, undefined],
      [undefined, undefined],
    ]);
  });

  it('reports a handler error, then the request finished with its code', async () => {
    const boom = new Error('boom');
    const late = new Error('late boom');
    const { d, rec } = make((r) => {
      r.skill('sync-fail', () => {
        throw boom;
      });
      r.skill('async-fail', async () => {
        throw late;
      });
    });
    const s = new FakeSession(false);
    expect((await send(d, s, taskRequest('sync-fail')))?.error?.message).toBe('boom');
    expect((await send(d, s, taskRequest('async-fail')))?.error?.message).toBe('late boom');
    expect(rec.names()).toEqual([
      'dedupe',
      'requestStarted',
      'handlerError',
      'requestFinished',
      'dedupe',
      'requestStarted',
      'handlerError',
      'requestFinished',
    ]);
    const [first, second] = rec.calls('handlerError');
    expect(first![1]).toBe(boom);
    expect(second![1]).toBe(late);
    expect(first![0]).toBe(rec.calls('requestStarted')[0]![0]);
    expect(rec.calls('requestFinished').map((c) => c[0])).toEqual([
      expect.objectContaining({ outcome: 'error', errorCode: ErrorCode.InternalError, skill: 'sync-fail' }),
      expect.objectContaining({ outcome: 'error', errorCode: ErrorCode.InternalError, skill: 'async-fail' }),
    ]);
  });

  it('reports a deadline as the request finishing with -32033, and no handler error after it', async () => {
    let thrown = false;
    const { d, rec } = make(
      (r) =>
        r.on('StateQuery', async (_env, ctx) => {
          await aborted(ctx.signal);
          thrown = true;
          throw new Error('too late to matter');
        }),
      { defaultTimeoutMs: 20, deadlineResolutionMs: 5 },
    );
    const a = await send(d, new FakeSession(false), envelope('StateQuery', { task_id: 't' }));
    expect(a?.error?.code).toBe(ErrorCode.Timeout);
    await waitFor(() => thrown, 5000, 'the handler to throw');
    await new Promise((r) => setImmediate(r));
    expect(rec.names()).toEqual(['dedupe', 'requestStarted', 'requestFinished']);
    expect(rec.only<RequestFinishedInfo>('requestFinished')).toMatchObject({
      outcome: 'error',
      errorCode: ErrorCode.Timeout,
    });
  });

  it('reports a task cancelled by TaskCancel as finished, not as a handler error', async () => {
    const started = deferred();
    const { d, rec } = make((r) =>
      r.skill('wait', async (_env, ctx) => {
        started.resolve();
        await aborted(ctx.signal);
        throw new Error('cancelled');
      }),
    );
    const s = new FakeSession(false);
    const req = taskRequest('wait');
    const pending = send(d, s, req);
    await started.promise;
    await send(d, s, envelope('TaskCancel', { task_id: req.id }), 2);
    expect((await pending)?.result?.envelope?.payload).toMatchObject({ status: 'cancelled' });
    expect(rec.calls('handlerError')).toEqual([]);
    expect(rec.calls('requestFinished').map((c) => (c[0] as RequestFinishedInfo).outcome)).toEqual([
      'ok',
      'ok',
    ]);
  });

  it('reports each stream chunk, the final one included, and the request once', async () => {
    const { d, rec } = make((r) => {
      r.skill('stream', async function* () {
        yield { chunk: 'a' };
        yield { chunk: 'b' };
        yield { chunk: 'c', final: true };
      });
      r.skill('open-ended', async function* () {
        yield { chunk: 'x' };
      });
    });
    const s = new FakeSession(true);
    const a = await send(d, s, taskRequest('stream'), 'st');
    expect(a?.result?.envelope?.payload).toMatchObject({ chunk: 'c', final: true });
    expect(rec.names()).toEqual([
      'dedupe',
      'requestStarted',
      'streamChunk',
      'streamChunk',
      'streamChunk',
      'requestFinished',
    ]);
    const info = rec.only<RequestInfo>('requestStarted');
    expect(rec.calls('streamChunk').every((c) => c[0] === info)).toBe(true);
    // A stream that ends without a final chunk: the closing chunk the dispatcher adds is not the handler's.
    await send(d, s, taskRequest('open-ended'), 'oe');
    expect(rec.calls('streamChunk')).toHaveLength(4);
    expect(rec.calls('requestFinished')).toHaveLength(2);
  });

  it('reports the processed ack when processed acks are on', async () => {
    const { d, rec } = make(echo, { processedAcks: true });
    await send(d, new FakeSession(true), taskRequest('echo', {}, { requires_ack: true }));
    expect(rec.names()).toEqual(['dedupe', 'ackSent', 'requestStarted', 'requestFinished', 'ackSent']);
    expect(rec.calls('ackSent')).toEqual([['received'], ['processed']]);
  });
});

describe('dedupe hooks', () => {
  it('reports a retransmission as done, acked again, and runs it once', async () => {
    const { d, rec } = make(echo);
    const s = new FakeSession(true);
    const env = taskRequest('echo', {}, { requires_ack: true });
    await send(d, s, env, 1);
    await send(d, s, env, 2);
    expect(rec.calls('dedupe')).toEqual([['new'], ['done']]);
    expect(rec.calls('requestStarted')).toHaveLength(1);
    expect(rec.calls('ackSent')).toEqual([['received'], ['received']]);
  });

  it('reports a copy arriving while the first runs as pending', async () => {
    const gate = deferred();
    const { d, rec } = make((r) =>
      r.skill('wait', async (env) => {
        await gate.promise;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const s = new FakeSession(false);
    const env = taskRequest('wait');
    const first = send(d, s, env, 1);
    const second = send(d, s, env, 2);
    await waitFor(() => rec.calls('dedupe').length === 2);
    gate.resolve();
    await Promise.all([first, second]);
    expect(rec.calls('dedupe')).toEqual([['new'], ['pending']]);
    expect(rec.calls('requestFinished')).toHaveLength(1);
  });

  it('reports an id reused with other content as conflict', async () => {
    const { d, rec } = make(echo);
    const s = new FakeSession(false);
    const env = taskRequest('echo', { v: 1 });
    await send(d, s, env);
    const other = await send(d, s, { ...env, payload: { ...env.payload, input: { v: 2 } } });
    expect(other?.error?.code).toBe(ErrorCode.InvalidRequest);
    expect(rec.calls('dedupe')).toEqual([['new'], ['conflict']]);
  });

  it('reports a repeat whose outcome was dropped as dropped', async () => {
    const { d, rec } = make(echo, { dedupe: new MemoryDedupeStore({ maxOutcomeBytes: 1 }) });
    const s = new FakeSession(false);
    const env = taskRequest('echo');
    await send(d, s, env);
    expect((await send(d, s, env))?.error?.code).toBe(ErrorCode.InvalidState);
    expect(rec.calls('dedupe')).toEqual([['new'], ['dropped']]);
  });
});

describe('rejected hook', () => {
  it('reports frames and envelopes refused as invalid', async () => {
    const { d, rec } = make(echo);
    const s = new FakeSession(false);
    await send(d, s, { ...taskRequest('echo'), sender: 'not-a-urn' });
    await raw(d, s, 'not json');
    await raw(d, s, '{"jsonrpc":"2.0","method":"asap.nope","id":1}');
    await raw(d, s, '{"jsonrpc":"2.0","method":"asap.send","params":{},"id":2}');
    await raw(d, s, '[{"jsonrpc":"1.0","id":3}]');
    expect(rec.events).toEqual([
      ['rejected', 'validation', ErrorCode.InvalidParams],
      ['rejected', 'validation', ErrorCode.ParseError],
      ['rejected', 'validation', ErrorCode.MethodNotFound],
      ['rejected', 'validation', ErrorCode.InvalidParams],
      ['rejected', 'validation', ErrorCode.InvalidRequest],
    ]);
  });

  it('reports a sender the caller may not speak for, with its rejected ack', async () => {
    const { d, rec } = make(echo);
    const s = Object.assign(new FakeSession(true), { agents: new Set([AGENT]) });
    const a = await send(d, s, taskRequest('echo', {}, { requires_ack: true }));
    expect(a?.error?.code).toBe(ErrorCode.InvalidParams);
    expect(rec.events).toEqual([
      ['ackSent', 'rejected'],
      ['rejected', 'sender_mismatch', ErrorCode.InvalidParams],
    ]);
  });

  it('reports replayed and stale envelopes, and envelopes no handler takes', async () => {
    const { d, rec } = make(echo);
    const s = new FakeSession(false);
    const old = new Date(Date.now() - 3_600_000).toISOString();
    await send(d, s, taskRequest('echo', {}, { timestamp: old }));
    await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n' } }));
    await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n' } }));
    await send(d, s, envelope('StateQuery', { task_id: 't' }));
    expect(rec.calls('rejected')).toEqual([
      ['invalid_timestamp', ErrorCode.InvalidTimestamp],
      ['invalid_nonce', ErrorCode.InvalidNonce],
      ['no_handler', ErrorCode.HandlerNotFound],
    ]);
  });

  it('reports a failing nonce store as internal, and an asynchronous replay as invalid_nonce', async () => {
    let fail = true;
    const seen = new Set<string>();
    const nonces: NonceStore = {
      add: async (key) => {
        if (fail) throw new Error('store down');
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      },
    };
    const { d, rec } = make(echo, { replay: { nonces } });
    const s = new FakeSession(false);
    const a = await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n' } }));
    expect(a?.error?.code).toBe(ErrorCode.InternalError);
    fail = false;
    await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n' } }));
    await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n' } }));
    expect(rec.calls('rejected')).toEqual([
      ['internal', ErrorCode.InternalError],
      ['invalid_nonce', ErrorCode.InvalidNonce],
    ]);
    expect(rec.calls('requestStarted')).toHaveLength(1);
  });
});

describe('hook safety and cost', () => {
  it('installs nothing when no hook is given', () => {
    const registry = new HandlerRegistry();
    const none = new Dispatcher({ registry });
    const empty = new Dispatcher({ registry, instrumentation: {} });
    const junk = new Dispatcher({
      registry,
      instrumentation: { requestStarted: 'nope' } as unknown as Instrumentation,
    });
    dispatchers.push(none, empty, junk);
    expect(none.hooks).toBeUndefined();
    expect(empty.hooks).toBeUndefined();
    expect(junk.hooks).toBeUndefined();
  });

  it('keeps only the hooks given, each called with the hooks object as this', () => {
    const rec = new Recorder();
    const d = new Dispatcher({ registry: new HandlerRegistry(), instrumentation: rec });
    dispatchers.push(d);
    d.hooks!.connectionOpened!({ id: 1, transport: 'websocket', remoteAddress: '127.0.0.1' });
    d.hooks!.ackReceived!('received');
    d.hooks!.retransmitted!('env-1');
    d.hooks!.connectionClosed!({ id: 1, code: 1000, reason: '' });
    expect(rec.names()).toEqual(['connectionOpened', 'ackReceived', 'retransmitted', 'connectionClosed']);
    const partial = new Dispatcher({ registry: new HandlerRegistry(), instrumentation: { ackSent() {} } });
    dispatchers.push(partial);
    expect(Object.keys(partial.hooks!)).toEqual(['ackSent']);
  });

  it('guards once: hooks already guarded (by a transport) are used as they are', () => {
    const rec = new Recorder();
    const first = new Dispatcher({ registry: new HandlerRegistry(), instrumentation: rec });
    const second = new Dispatcher({ registry: new HandlerRegistry(), instrumentation: first.hooks });
    dispatchers.push(first, second);
    expect(first.hooks).not.toBe(rec);
    expect(second.hooks).toBe(first.hooks);
  });

  it('calls only the hooks given when a request runs', async () => {
    const started: string[] = [];
    const { d } = make(echo, {
      instrumentation: { requestStarted: (info) => started.push(info.envelopeId) },
    });
    const env = taskRequest('echo');
    expect((await send(d, new FakeSession(false), env))?.result).toBeDefined();
    expect(started).toEqual([env.id]);
  });

  it('survives hooks that throw, logging each failing hook once', async () => {
    const logger = new RecordingLogger(false);
    const thrower = (): void => {
      throw new Error('exporter broken');
    };
    const { d } = make(echo, {
      logger,
      instrumentation: {
        requestStarted: thrower,
        requestFinished: thrower,
        dedupe: () => {
          throw 'not an Error';
        },
      },
    });
    const s = new FakeSession(false);
    for (let i = 0; i < 3; i++) {
      const a = await send(d, s, taskRequest('echo', { i }));
      expect(a?.result?.envelope?.payload).toMatchObject({ status: 'completed', result: { echo: { i } } });
    }
    const errors = logger.entries.filter((e) => e.level === 'error');
    expect(errors.map((e) => e.obj)).toEqual([
      { hook: 'dedupe', err: 'not an Error' },
      { hook: 'requestStarted', err: 'exporter broken' },
      { hook: 'requestFinished', err: 'exporter broken' },
    ]);
  });

  it('answers exactly as without hooks', async () => {
    const plain = new Dispatcher({ registry: new HandlerRegistry().skill('echo', echoSkill), replay: false });
    const hooked = make((r) => r.skill('echo', echoSkill), { replay: false }).d;
    dispatchers.push(plain);
    const env = taskRequest('echo', { same: true });
    const a = await send(plain, new FakeSession(true), env);
    const b = await send(hooked, new FakeSession(true), env);
    // Same answer but for the reply's own id and timestamp.
    const { id: _a, timestamp: _at, ...replyA } = a!.result!.envelope!;
    const { id: _b, timestamp: _bt, ...replyB } = b!.result!.envelope!;
    expect(replyB).toEqual(replyA);
    expect(b?.id).toBe(a?.id);
  });
});

function echoSkill(env: Envelope<TaskRequest>) {
  return { task_id: env.id, status: 'completed' as const, result: { echo: env.payload.input } };
}
