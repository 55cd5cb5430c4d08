/**
 * The Dispatcher (src/core/dispatcher.ts) driven with decoded frames and a
 * recording Session: error mapping (§3), routing, deadlines, cancellation,
 * streaming, batches, replay protection (§8), dedupe and acks (§6).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type DedupeStore, MemoryDedupeStore } from '../../src/core/dedupe.js';
import { Dispatcher, type DispatcherOptions, replyTypeFor } from '../../src/core/dispatcher.js';
import { fingerprint } from '../../src/core/fingerprint.js';
import { type HandlerContext, HandlerRegistry } from '../../src/core/registry.js';
import { createEnvelope, createReply, type Envelope } from '../../src/protocol/envelope.js';
import { ASAPError, ConnectionError, ErrorCode, RequestTimeoutError } from '../../src/protocol/errors.js';
import {
  decodeFrame,
  encodeBatch,
  encodeNotification,
  encodeRequest,
  PING_FRAME,
  PONG_FRAME,
} from '../../src/protocol/jsonrpc.js';
import type { Manifest } from '../../src/protocol/manifest.js';
import type { TaskRequest, TaskStream } from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';
import {
  AGENT,
  type Answer,
  aborted,
  bareSession,
  CLIENT,
  deferred,
  envelope,
  FakeSession,
  notify,
  RecordingLogger,
  raw,
  send,
  taskRequest,
  waitFor,
} from './helpers.js';

const dispatchers: Dispatcher[] = [];

afterEach(() => {
  for (const d of dispatchers.splice(0)) d.close();
});

function make(
  setup: (r: HandlerRegistry) => void = () => {},
  opts: Partial<DispatcherOptions> = {},
): { d: Dispatcher; registry: HandlerRegistry } {
  const registry = new HandlerRegistry();
  setup(registry);
  const d = new Dispatcher({ registry, ...opts });
  dispatchers.push(d);
  return { d, registry };
}

function echo(r: HandlerRegistry): void {
  r.skill('echo', (env) => ({ task_id: env.id, status: 'completed', result: { echo: env.payload.input } }));
}

const errorOf = (a: Answer | undefined) => {
  expect(a?.error, JSON.stringify(a)).toBeDefined();
  return a!.error!;
};
const resultOf = (a: Answer | undefined) => {
  expect(a?.result?.envelope, JSON.stringify(a)).toBeTruthy();
  return a!.result!.envelope!;
};

describe('error mapping (§3)', () => {
  it('answers an invalid envelope with -32602 and data.validation_errors', async () => {
    let calls = 0;
    const { d } = make((r) => r.skill('echo', () => void calls++));
    const bad = { ...taskRequest('echo'), sender: 'not-a-urn' };
    const a = await send(d, new FakeSession(false), bad, 'v1');
    expect(a?.id).toBe('v1');
    const err = errorOf(a);
    expect(err.code).toBe(-32602);
    const issues = err.data!.validation_errors!;
    expect(Array.isArray(issues)).toBe(true);
    expect(issues.length).toBeGreaterThan(0);
    expect(issues[0]).toMatchObject({ loc: expect.arrayContaining(['sender']), msg: expect.any(String) });
    expect(typeof issues[0]!.type).toBe('string');
    expect(calls).toBe(0);
  });

  it('reports payload errors with their location inside the payload', async () => {
    const { d } = make(echo);
    const env = taskRequest('echo');
    const bad = { ...env, payload: { conversation_id: 'c', input: {} } };
    const err = errorOf(await send(d, new FakeSession(false), bad));
    expect(err.code).toBe(-32602);
    expect(err.data!.validation_errors).toContainEqual(
      expect.objectContaining({ loc: ['payload', 'skill_id'] }),
    );
  });

  it('answers a missing params.envelope with -32602', async () => {
    const { d } = make(echo);
    for (const params of ['{}', '{"env":1}']) {
      const a = (await raw(
        d,
        new FakeSession(false),
        `{"jsonrpc":"2.0","method":"asap.send","params":${params},"id":3}`,
      )) as Answer;
      expect(a.id).toBe(3);
      expect(a.error?.code).toBe(-32602);
      expect(a.error?.data?.validation_errors).toEqual([
        { loc: ['params', 'envelope'], msg: 'Field required', type: 'missing' },
      ]);
    }
    const noParams = (await raw(
      d,
      new FakeSession(false),
      '{"jsonrpc":"2.0","method":"asap.send","id":4}',
    )) as Answer;
    expect(noParams.error?.code).toBe(-32602);
  });

  it('answers an unknown method with -32601 and data.method', async () => {
    const { d } = make(echo);
    const a = (await raw(
      d,
      new FakeSession(false),
      encodeRequest('asap.frobnicate', { envelope: taskRequest('echo') }, 9),
    )) as Answer;
    expect(a.id).toBe(9);
    expect(a.error?.code).toBe(-32601);
    expect(a.error?.data).toMatchObject({ method: 'asap.frobnicate' });
  });

  it('answers a payload type without handler with -32012 and data.payload_type', async () => {
    const { d } = make();
    const err = errorOf(await send(d, new FakeSession(false), envelope('state.query', { task_id: 't1' })));
    expect(err.code).toBe(-32012);
    expect(err.data).toMatchObject({ payload_type: 'state.query' });
    const custom = errorOf(await send(d, new FakeSession(false), envelope('x.custom_thing', { any: 1 })));
    expect(custom.code).toBe(ErrorCode.HandlerNotFound);
    expect(custom.data).toMatchObject({ payload_type: 'x.custom_thing' });
  });

  it('answers a TaskRequest with -32012 when neither a handler nor skills exist', async () => {
    const { d } = make();
    expect(errorOf(await send(d, new FakeSession(false), taskRequest('echo'))).code).toBe(-32012);
  });

  it('maps a thrown Error to -32603 with its message and no stack', async () => {
    const { d } = make((r) =>
      r.skill('boom', () => {
        throw new Error('kaboom');
      }),
    );
    const a = await send(d, new FakeSession(false), taskRequest('boom'));
    expect(a?.error).toMatchObject({ code: -32603, message: 'kaboom' });
    expect(JSON.stringify(a)).not.toMatch(/stack|at .*\.ts/);
  });

  it('maps an async rejection and a thrown non-Error to -32603', async () => {
    const { d } = make((r) => {
      r.skill('reject', async () => {
        await Promise.resolve();
        throw new Error('async failure');
      });
      r.skill('string', () => {
        throw 'plain string';
      });
      r.skill('nothing', () => {
        throw undefined;
      });
    });
    const s = new FakeSession(false);
    expect((await send(d, s, taskRequest('reject')))?.error).toMatchObject({
      code: -32603,
      message: 'async failure',
    });
    expect((await send(d, s, taskRequest('string')))?.error).toMatchObject({
      code: -32603,
      message: 'plain string',
    });
    expect((await send(d, s, taskRequest('nothing')))?.error).toMatchObject({
      code: -32603,
      message: 'Internal error',
      data: { error_id: expect.any(String) },
    });
  });

  it('never lets runtime error text reach the caller (§10 Errors): generic message, logged error id', async () => {
    const logger = new RecordingLogger();
    const { d } = make(
      (r) => {
        r.skill('overflow', () => {
          const f = (n: number): number => f(n + 1) + 1;
          return { task_id: 't', status: 'completed', result: { n: f(0) } };
        });
        r.skill('type', (env) => {
          const missing = env.payload.input.missing as { deeper: object };
          return { task_id: 't', status: 'completed', result: missing.deeper };
        });
      },
      { logger },
    );
    const s = new FakeSession(false);
    for (const skill of ['overflow', 'type']) {
      const error = (await send(d, s, taskRequest(skill)))?.error as unknown as {
        data: { error_id: string };
      };
      expect(error).toMatchObject({
        code: -32603,
        message: 'Internal error',
        data: { error_id: expect.any(String) },
      });
      const line = logger.entries.find(
        (l) => (l.obj as { error_id?: string }).error_id === error.data.error_id,
      );
      expect(line?.level).toBe('error');
      expect(JSON.stringify(line?.obj)).toMatch(skill === 'overflow' ? /call stack/ : /Cannot read/);
    }
  });

  it('a local error a handler lets escape goes out in its wire form: a timeout as -32033, the rest opaque', async () => {
    const logger = new RecordingLogger();
    const { d } = make(
      (r) => {
        r.skill('lost', async () => {
          throw new ConnectionError('Connection closed (1006) to urn:asap:agent:downstream');
        });
        r.skill('slow', () => {
          throw new RequestTimeoutError('No response to ws-req-4 within 50 ms');
        });
      },
      { logger },
    );
    const s = new FakeSession(false);
    const lost = (await send(d, s, taskRequest('lost')))?.error as unknown as { data: { error_id: string } };
    expect(lost).toMatchObject({
      code: -32603,
      message: 'Internal error',
      data: { error_id: expect.any(String) },
    });
    const line = logger.entries.find((l) => (l.obj as { error_id?: string }).error_id === lost.data.error_id);
    expect(JSON.stringify(line?.obj)).toMatch(/downstream/);
    expect((await send(d, s, taskRequest('slow')))?.error).toMatchObject({ code: ErrorCode.Timeout });
  });

  it('exposeHandlerErrors: false makes every handler error generic', async () => {
    const { d } = make(
      (r) =>
        r.skill('fail', () => {
          throw new Error('secret detail');
        }),
      { exposeHandlerErrors: false },
    );
    const error = (await send(d, new FakeSession(false), taskRequest('fail')))?.error;
    expect(error).toMatchObject({
      code: -32603,
      message: 'Internal error',
      data: { error_id: expect.any(String) },
    });
  });

  it('keeps the code and data of a thrown ASAPError', async () => {
    const logger = new RecordingLogger();
    const { d } = make(
      (r) =>
        r.skill('refuse', () => {
          throw new ASAPError(ErrorCode.InvalidState, 'Not now', { state: 'busy' });
        }),
      { logger },
    );
    const a = await send(d, new FakeSession(false), taskRequest('refuse'));
    expect(a?.error).toMatchObject({ code: -32000, message: 'Not now', data: { state: 'busy' } });
    expect(logger.messages('warn')).toContain('handler refused the request');
    expect(logger.messages('error')).not.toContain('handler failed');
  });

  it('logs internal failures as errors', async () => {
    const logger = new RecordingLogger();
    const { d } = make(
      (r) =>
        r.skill('boom', () => {
          throw new Error('x');
        }),
      { logger },
    );
    await send(d, new FakeSession(false), taskRequest('boom'));
    expect(logger.messages('error')).toContain('handler failed');
  });
});

describe('deadlines', () => {
  it('answers -32033 past defaultTimeoutMs and aborts ctx.signal', async () => {
    let signal: AbortSignal | undefined;
    const { d } = make(
      (r) =>
        r.skill('hang', async (_env, ctx) => {
          signal = ctx.signal;
          await aborted(ctx.signal);
          return { task_id: 'late', status: 'completed' };
        }),
      { defaultTimeoutMs: 30, deadlineResolutionMs: 10 },
    );
    const a = await send(d, new FakeSession(false), taskRequest('hang'));
    const err = errorOf(a);
    expect(err.code).toBe(-32033);
    expect(err.message).toContain('deadline');
    expect(signal?.aborted).toBe(true);
    expect((signal!.reason as ASAPError).code).toBe(-32033);
    expect(d.inFlight).toBe(0);
  });

  it('gives an already-aborted signal to a handler that reads it only after its deadline', async () => {
    const gate = deferred();
    const seen = deferred<AbortSignal>();
    const { d } = make(
      (r) =>
        r.skill('late-reader', async (_env, ctx) => {
          await gate.promise;
          seen.resolve(ctx.signal);
          return undefined;
        }),
      { defaultTimeoutMs: 20, deadlineResolutionMs: 10 },
    );
    const a = await send(d, new FakeSession(false), taskRequest('late-reader'));
    expect(errorOf(a).code).toBe(-32033);
    gate.resolve();
    const signal = await seen.promise;
    expect(signal.aborted).toBe(true);
    expect((signal.reason as ASAPError).code).toBe(-32033);
  });

  it('uses config.timeout_seconds when the TaskRequest names one', async () => {
    let signal: AbortSignal | undefined;
    const { d } = make(
      (r) =>
        r.skill('hang', (_env, ctx) => {
          signal = ctx.signal;
          return new Promise(() => {});
        }),
      { defaultTimeoutMs: 60_000, deadlineResolutionMs: 10 },
    );
    const a = await send(
      d,
      new FakeSession(false),
      taskRequest('hang', {}, { config: { timeout_seconds: 1 } }),
    );
    expect(errorOf(a).code).toBe(-32033);
    expect(signal?.aborted).toBe(true);
  });

  it('lets config.timeout_seconds extend a short default deadline', async () => {
    const { d } = make(
      (r) =>
        r.skill('slow', async (env) => {
          await new Promise((res) => setTimeout(res, 80));
          return { task_id: env.id, status: 'completed' };
        }),
      { defaultTimeoutMs: 20, deadlineResolutionMs: 10 },
    );
    const s = new FakeSession(false);
    const ok = await send(d, s, taskRequest('slow', {}, { config: { timeout_seconds: 5 } }));
    expect(resultOf(ok).payload).toMatchObject({ status: 'completed' });
    const late = await send(d, s, taskRequest('slow'));
    expect(errorOf(late).code).toBe(-32033);
  });

  it('stops pulling a stream that ran past its deadline', async () => {
    let cleanedUp = false;
    const gate = deferred();
    const { d } = make(
      (r) =>
        r.skill('stream', async function* () {
          try {
            yield { chunk: 'a' };
            await gate.promise;
            yield { chunk: 'b' };
            yield { chunk: 'c', final: true };
          } finally {
            cleanedUp = true;
          }
        }),
      { defaultTimeoutMs: 30, deadlineResolutionMs: 10 },
    );
    const s = new FakeSession(true);
    const a = await send(d, s, taskRequest('stream'), 'st');
    expect(errorOf(a).code).toBe(-32033);
    gate.resolve();
    await waitFor(() => cleanedUp, 5000, 'generator cleanup');
    // Only the chunk before the deadline was written: nothing after the error.
    expect(s.frames().map((f) => f.result?.envelope?.payload.chunk)).toEqual(['a']);
  });

  it('stops its sweep timer once nothing runs (no dangling timer)', async () => {
    const { d } = make(echo, { deadlineResolutionMs: 5 });
    await send(d, new FakeSession(false), taskRequest('echo'));
    // Nothing runs: a later sweep tick clears the interval; the process would otherwise keep a timer.
    await new Promise((r) => setTimeout(r, 30));
    const timer = (d as unknown as { sweepTimer: unknown }).sweepTimer;
    expect(timer).toBeUndefined();
  });
});

describe('TaskCancel', () => {
  function sleeper(r: HandlerRegistry, started: string[]): void {
    r.skill('sleep', async (env, ctx) => {
      started.push(env.id);
      await aborted(ctx.signal);
      throw ctx.signal.reason;
    });
  }

  it('aborts the running task: it answers TaskResponse cancelled', async () => {
    const started: string[] = [];
    const { d } = make((r) => sleeper(r, started));
    const s = new FakeSession(true);
    const req = taskRequest('sleep', {}, { trace_id: 'trace-1' });
    const running = send(d, s, req, 'task');
    await waitFor(() => started.length === 1);
    expect(d.inFlight).toBe(1);
    const cancelReply = await send(
      d,
      s,
      envelope('TaskCancel', { task_id: req.id, reason: 'user' }),
      'cancel',
    );
    expect(cancelReply?.id).toBe('cancel');
    expect(cancelReply?.error, JSON.stringify(cancelReply)).toBeUndefined();
    const a = await running;
    expect(a?.id).toBe('task');
    const reply = resultOf(a);
    expect(reply.payload_type).toBe('TaskResponse');
    expect(reply.payload).toEqual({ task_id: req.id, status: 'cancelled' });
    expect(reply.correlation_id).toBe(req.id);
    expect(reply.trace_id).toBe('trace-1');
    expect(reply.sender).toBe(AGENT);
    expect(reply.recipient).toBe(CLIENT);
    expect(d.inFlight).toBe(0);
  });

  it('answers the TaskCancel itself with a TaskResponse cancelled in the request spelling', async () => {
    const started: string[] = [];
    const { d } = make((r) => sleeper(r, started));
    const s = new FakeSession(false);
    const req = taskRequest('sleep', {}, { payload_type: 'task.request' });
    const running = send(d, s, req);
    await waitFor(() => started.length === 1);
    const c = await send(d, s, envelope('task.cancel', { task_id: req.id }), 2);
    const cancelReply = resultOf(c);
    expect(cancelReply.payload_type).toBe('task.response');
    expect(cancelReply.payload).toEqual({ task_id: req.id, status: 'cancelled' });
    const task = resultOf(await running);
    expect(task.payload_type).toBe('task.response');
    expect(task.payload.status).toBe('cancelled');
  });

  it('keeps the first reason when a task is cancelled twice', async () => {
    const gate = deferred();
    let signal: AbortSignal | undefined;
    const { d } = make((r) =>
      r.skill('stubborn', async (env, ctx) => {
        signal = ctx.signal;
        await gate.promise;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const s = new FakeSession(false);
    const req = taskRequest('stubborn');
    const running = send(d, s, req);
    await waitFor(() => signal !== undefined);
    resultOf(await send(d, s, envelope('TaskCancel', { task_id: req.id, reason: 'first' }), 2));
    resultOf(await send(d, s, envelope('TaskCancel', { task_id: req.id, reason: 'second' }), 3));
    expect((signal!.reason as ASAPError).message).toBe('first');
    expect((signal!.reason as ASAPError).code).toBe(ErrorCode.InvalidState);
    gate.resolve();
    // A handler that ignores its signal still answers what it returned.
    expect(resultOf(await running).payload.status).toBe('completed');
  });

  it('answers -32010 for an unknown task', async () => {
    const { d } = make(echo);
    const a = await send(d, new FakeSession(false), envelope('TaskCancel', { task_id: 'nope' }));
    const err = errorOf(a);
    expect(err.code).toBe(-32010);
    expect(err.data).toMatchObject({ task_id: 'nope' });
  });

  it('cannot cancel a task that already finished', async () => {
    const { d } = make(echo);
    const s = new FakeSession(false);
    const req = taskRequest('echo');
    resultOf(await send(d, s, req));
    expect(errorOf(await send(d, s, envelope('TaskCancel', { task_id: req.id }), 2)).code).toBe(-32010);
  });

  it('a registered TaskCancel handler replaces the built-in one', async () => {
    const { d } = make((r) => {
      echo(r);
      r.on('TaskCancel', (env, ctx) =>
        ctx.reply('TaskResponse', { task_id: env.payload.task_id, status: 'failed' }),
      );
    });
    const reply = resultOf(await send(d, new FakeSession(false), envelope('TaskCancel', { task_id: 'x' })));
    expect(reply.payload).toEqual({ task_id: 'x', status: 'failed' });
  });
});

describe('routing and replies', () => {
  it('routes TaskRequests by skill_id', async () => {
    const { d } = make((r) => {
      r.skill('a', (env) => ({ task_id: env.id, status: 'completed', result: { which: 'a' } }));
      r.skill('b', (env) => ({ task_id: env.id, status: 'completed', result: { which: 'b' } }));
    });
    const s = new FakeSession(false);
    expect(resultOf(await send(d, s, taskRequest('a'))).payload.result).toEqual({ which: 'a' });
    expect(resultOf(await send(d, s, taskRequest('b'))).payload.result).toEqual({ which: 'b' });
  });

  it('answers an unknown skill with TaskResponse failed and an error message', async () => {
    const { d } = make(echo);
    const req = taskRequest('missing');
    const reply = resultOf(await send(d, new FakeSession(false), req));
    expect(reply.payload_type).toBe('TaskResponse');
    expect(reply.correlation_id).toBe(req.id);
    expect(reply.payload).toMatchObject({ task_id: req.id, status: 'failed' });
    expect(String((reply.payload.result as JsonObject).error)).toContain('missing');
  });

  it('prefers a TaskRequest handler over skills', async () => {
    const { d } = make((r) => {
      echo(r);
      r.on('task_request', (env) => ({ task_id: env.id, status: 'completed', result: { via: 'handler' } }));
    });
    const reply = resultOf(await send(d, new FakeSession(false), taskRequest('echo')));
    expect(reply.payload.result).toEqual({ via: 'handler' });
  });

  it.each([
    ['task.request', 'task.response'],
    ['task_request', 'task_response'],
    ['TaskRequest', 'TaskResponse'],
    ['taskrequest', 'TaskResponse'],
  ])('spells the reply to %s as %s', async (reqType, replyType) => {
    const { d } = make(echo);
    const req = taskRequest('echo', { x: 1 }, { payload_type: reqType });
    const reply = resultOf(await send(d, new FakeSession(false), req));
    expect(reply.payload_type).toBe(replyType);
    expect(reply.payload).toEqual({ task_id: req.id, status: 'completed', result: { echo: { x: 1 } } });
  });

  it('answers a handler that returns nothing with a processed MessageAck', async () => {
    const got: string[] = [];
    const { d } = make((r) => {
      r.on('MessageSend', (env) => {
        got.push(env.payload.message_id);
      });
      r.on('artifact_notify', async () => null as unknown as undefined);
    });
    const msg = envelope('message.send', {
      task_id: 't',
      message_id: 'm1',
      sender: CLIENT,
      role: 'user',
      parts: ['hi'],
    });
    const reply = resultOf(await send(d, new FakeSession(false), msg));
    expect(got).toEqual(['m1']);
    expect(reply.payload_type).toBe('message.ack');
    expect(reply.payload).toEqual({ original_envelope_id: msg.id, status: 'processed' });
    expect(reply.correlation_id).toBe(msg.id);
    const art = envelope('ArtifactNotify', { artifact_id: 'a', task_id: 't' });
    const reply2 = resultOf(await send(d, new FakeSession(false), art));
    expect(reply2.payload_type).toBe('MessageAck');
  });

  it('passes an envelope returned by the handler through, filling correlation_id when absent', async () => {
    const { d } = make((r) => {
      r.on('StateQuery', (env) =>
        createEnvelope({
          sender: AGENT,
          recipient: env.sender,
          payload_type: 'StateSnapshot',
          payload: { task_id: env.payload.task_id, state: { step: 2 } },
        }),
      );
      r.on('StateRestore', (env, ctx) => ({
        ...ctx.reply('TaskResponse', { task_id: env.payload.task_id, status: 'completed' }),
        correlation_id: 'kept',
      }));
    });
    const q = envelope('StateQuery', { task_id: 't1' });
    const reply = resultOf(await send(d, new FakeSession(false), q));
    expect(reply.payload_type).toBe('StateSnapshot');
    expect(reply.payload).toEqual({ task_id: 't1', state: { step: 2 } });
    expect(reply.correlation_id).toBe(q.id);
    const restore = resultOf(
      await send(d, new FakeSession(false), envelope('StateRestore', { task_id: 't1', snapshot_id: 's' })),
    );
    expect(restore.correlation_id).toBe('kept');
  });

  it('answers -32603 when a non-TaskRequest handler returns a bare payload', async () => {
    const { d } = make((r) => r.on('StateQuery', () => ({ state: {} })));
    const err = errorOf(await send(d, new FakeSession(false), envelope('StateQuery', { task_id: 't' })));
    expect(err.code).toBe(-32603);
    expect(err.message).toContain('must return an envelope');
  });

  it('wraps a bare McpToolCall result in an McpToolResult', async () => {
    const { d } = make((r) =>
      r.on('mcp_tool_call', (env) => ({
        request_id: env.payload.request_id,
        success: true,
        result: { v: 1 },
      })),
    );
    const call = envelope('mcp_tool_call', { request_id: 'r1', tool_name: 'x', arguments: {} });
    const reply = resultOf(await send(d, new FakeSession(false), call));
    expect(reply.payload_type).toBe('mcp_tool_result');
    expect(reply.payload).toEqual({ request_id: 'r1', success: true, result: { v: 1 } });
  });

  it('gives handlers a context: taskId, transport, principal, manifest, reply, push', async () => {
    const manifest = { id: AGENT } as unknown as Manifest;
    const seen: Record<string, unknown> = {};
    let ctxRef: HandlerContext<TaskRequest> | undefined;
    const { d } = make(
      (r) => {
        r.skill('ctx', async (env, ctx) => {
          ctxRef = ctx;
          Object.assign(seen, {
            taskId: ctx.taskId,
            transport: ctx.transport,
            principal: ctx.principal,
            manifest: ctx.manifest,
            envelope: ctx.envelope,
          });
          await ctx.push({
            payload_type: 'TaskUpdate',
            payload: { task_id: env.id, update_type: 'progress', status: 'working' },
          });
          await ctx.push(
            createReply(env, 'TaskUpdate', { task_id: env.id, update_type: 'progress', status: 'working' }),
          );
          return ctx.reply('TaskResponse', { task_id: env.id, status: 'completed' });
        });
        r.on('StateQuery', (_env, ctx) => {
          seen.stateTaskId = ctx.taskId;
          return ctx.reply('StateSnapshot', {});
        });
        r.on('custom.ping', (env, ctx) => {
          seen.customTaskId = ctx.taskId;
          seen.customEnvId = env.id;
        });
      },
      { manifest: () => manifest },
    );
    const s = new FakeSession(true, { user: 'ada' });
    const req = taskRequest('ctx', {}, { trace_id: 'tr' });
    const reply = resultOf(await send(d, s, req));
    expect(reply.payload_type).toBe('TaskResponse');
    expect(seen).toMatchObject({
      taskId: req.id,
      transport: 'websocket',
      principal: { user: 'ada' },
      manifest,
    });
    expect((seen.envelope as Envelope).id).toBe(req.id);
    expect(ctxRef?.logger).toBeDefined();
    expect(s.pushed).toHaveLength(2);
    expect(s.pushed[0]).toMatchObject({
      sender: AGENT,
      recipient: CLIENT,
      trace_id: 'tr',
      payload_type: 'TaskUpdate',
    });
    expect(s.pushed[0]!.id).toEqual(expect.any(String));
    expect(s.pushed[1]!.correlation_id).toBe(req.id);
    await send(d, s, envelope('StateQuery', { task_id: 'the-task' }));
    expect(seen.stateTaskId).toBe('the-task');
    await send(d, s, envelope('custom.ping', { task_id: 42 }));
    expect(seen.customTaskId).toBe(seen.customEnvId);
    expect(s.seen.map((e) => e.id)).toContain(req.id);
  });

  it('has no manifest in the context unless configured', async () => {
    let m: unknown = 'unset';
    const { d } = make((r) =>
      r.skill('m', (env, ctx) => {
        m = ctx.manifest;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    await send(d, bareSession(), taskRequest('m'));
    expect(m).toBeUndefined();
  });
});

describe('streaming', () => {
  function streamSkill(r: HandlerRegistry, chunks: TaskStream[]): void {
    r.skill('stream', async function* () {
      for (const c of chunks) {
        await Promise.resolve();
        yield c;
      }
    });
  }

  const three: TaskStream[] = [
    { chunk: 'c0', progress: 0.33, status: 'working' },
    { chunk: 'c1', progress: 0.66, status: 'working' },
    { chunk: 'c2', progress: 1, final: true, status: 'completed' },
  ];

  it('writes chunks with the request id over an interactive session and returns the final chunk', async () => {
    const { d } = make((r) => streamSkill(r, three));
    const s = new FakeSession(true);
    const req = taskRequest('stream');
    const a = await send(d, s, req, 'ws-req-1');
    const frames = s.frames();
    expect(frames).toHaveLength(2);
    for (const f of frames) {
      expect(f.id).toBe('ws-req-1');
      expect(f.result?.envelope?.payload_type).toBe('TaskStream');
      expect(f.result?.envelope?.correlation_id).toBe(req.id);
      expect(f.result?.envelope?.payload.final).not.toBe(true);
    }
    expect(frames.map((f) => f.result?.envelope?.payload.chunk)).toEqual(['c0', 'c1']);
    expect(a?.id).toBe('ws-req-1');
    const final = resultOf(a);
    expect(final.payload).toEqual(three[2]);
    expect(final.correlation_id).toBe(req.id);
  });

  it('adds a synthetic final chunk when the stream ends without one', async () => {
    const { d } = make((r) => streamSkill(r, three.slice(0, 2)));
    const s = new FakeSession(true);
    const a = await send(d, s, taskRequest('stream'));
    expect(s.frames()).toHaveLength(2);
    expect(resultOf(a).payload).toEqual({ chunk: '', final: true, status: 'completed' });
  });

  it('returns only the final chunk over a non-interactive session', async () => {
    const { d } = make((r) => streamSkill(r, three));
    const s = new FakeSession(false);
    const a = await send(d, s, taskRequest('stream'));
    expect(s.writes).toHaveLength(0);
    expect(resultOf(a).payload.chunk).toBe('c2');
  });

  it('writes no chunks for a streamed notification and returns nothing', async () => {
    let done = false;
    const { d } = make((r) =>
      r.skill('stream', async function* () {
        yield { chunk: 'x' };
        done = true;
      }),
    );
    const s = new FakeSession(true);
    expect(await notify(d, s, taskRequest('stream'))).toBeUndefined();
    expect(done).toBe(true);
    expect(s.writes).toHaveLength(0);
  });

  it('accepts chunks given as envelopes, and a handler returning a stream from a promise', async () => {
    const { d } = make((r) =>
      r.skill('env-stream', async (env) => {
        await Promise.resolve();
        return (async function* () {
          yield createEnvelope({
            sender: AGENT,
            recipient: CLIENT,
            payload_type: 'TaskStream',
            payload: { chunk: 'e0' } as TaskStream,
          });
          yield createReply(env, 'TaskStream', { chunk: 'e1', final: true } as TaskStream);
        })();
      }),
    );
    const s = new FakeSession(true);
    const req = taskRequest('env-stream');
    const a = await send(d, s, req);
    expect(s.frames()[0]!.result!.envelope!.correlation_id).toBe(req.id);
    expect(resultOf(a).payload.chunk).toBe('e1');
  });

  it('waits for write backpressure before pulling the next chunk', async () => {
    let produced = 0;
    const { d } = make((r) =>
      r.skill('stream', async function* () {
        for (let i = 0; i < 3; i++) {
          produced++;
          yield { chunk: `c${i}`, final: i === 2 };
        }
      }),
    );
    const s = new FakeSession(true);
    const gate = deferred();
    s.writeHook = () => gate.promise;
    const pending = send(d, s, taskRequest('stream'));
    await waitFor(() => s.writes.length === 1);
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    expect(produced).toBe(1);
    gate.resolve();
    const a = await pending;
    expect(produced).toBe(3);
    expect(resultOf(a).payload.chunk).toBe('c2');
  });

  it('maps a stream that throws midway to -32603', async () => {
    const { d } = make((r) =>
      r.skill('stream', async function* () {
        yield { chunk: 'ok' };
        throw new Error('stream broke');
      }),
    );
    const s = new FakeSession(true);
    const a = await send(d, s, taskRequest('stream'));
    expect(a?.error).toMatchObject({ code: -32603, message: 'stream broke' });
    expect(s.writes).toHaveLength(1);
  });
});

describe('batches and notifications', () => {
  it('answers a mixed batch with one response per request, none for notifications', async () => {
    let calls = 0;
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        calls++;
        return { task_id: env.id, status: 'completed', result: { echo: env.payload.input } };
      }),
    );
    const text = encodeBatch([
      encodeRequest('asap.send', { envelope: taskRequest('echo', { n: 1 }) }, 'a'),
      encodeNotification('asap.send', { envelope: taskRequest('echo', { n: 2 }) }),
      encodeRequest('asap.send', { envelope: taskRequest('echo', { n: 3 }) }, 7),
    ]);
    const answers = (await raw(d, new FakeSession(false), text)) as Answer[];
    expect(Array.isArray(answers)).toBe(true);
    expect(answers.map((a) => a.id)).toEqual(['a', 7]);
    expect(answers.map((a) => (a.result!.envelope!.payload.result as JsonObject).echo)).toEqual([
      { n: 1 },
      { n: 3 },
    ]);
    expect(calls).toBe(3);
  });

  it('answers a batch of only notifications with nothing, but runs them', async () => {
    let calls = 0;
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        calls++;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const text = encodeBatch([
      encodeNotification('asap.send', { envelope: taskRequest('echo') }),
      encodeNotification('asap.send', { envelope: taskRequest('echo') }),
    ]);
    expect(await d.handle(decodeFrame(text), new FakeSession(false))).toBeUndefined();
    expect(calls).toBe(2);
  });

  it('answers invalid batch items with -32600 and still runs the valid ones', async () => {
    const { d } = make(echo);
    const text = `[1, {"jsonrpc":"1.0","method":"asap.send","id":"old"}, ${encodeRequest(
      'asap.send',
      { envelope: taskRequest('echo') },
      'ok',
    )}, ${encodeRequest('nope', {}, 'nm')}]`;
    const answers = (await raw(d, new FakeSession(false), text)) as Answer[];
    expect(answers).toHaveLength(4);
    expect(answers[0]).toMatchObject({ id: null, error: { code: -32600 } });
    expect(answers[1]).toMatchObject({ id: 'old', error: { code: -32600 } });
    expect(answers[2]!.result?.envelope?.payload_type).toBe('TaskResponse');
    expect(answers[3]).toMatchObject({ id: 'nm', error: { code: -32601 } });
  });

  it('answers a batch of 51 with a single -32600 and runs none of it', async () => {
    let calls = 0;
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        calls++;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const members = Array.from({ length: 51 }, (_, i) =>
      encodeRequest('asap.send', { envelope: taskRequest('echo') }, i),
    );
    const a = (await raw(d, new FakeSession(false), encodeBatch(members))) as Answer;
    expect(Array.isArray(a)).toBe(false);
    expect(a).toMatchObject({ id: null, error: { code: -32600 } });
    expect(calls).toBe(0);
    // 50 is allowed.
    const ok = (await raw(d, new FakeSession(false), encodeBatch(members.slice(0, 50)))) as Answer[];
    expect(ok).toHaveLength(50);
    expect(calls).toBe(50);
  });

  it('streams inside a batch only as the final chunk, even over an interactive session', async () => {
    const { d } = make((r) =>
      r.skill('stream', async function* () {
        yield { chunk: 'a' };
        yield { chunk: 'b', final: true };
      }),
    );
    const s = new FakeSession(true);
    const answers = (await raw(
      d,
      s,
      encodeBatch([encodeRequest('asap.send', { envelope: taskRequest('stream') }, 1)]),
    )) as Answer[];
    expect(s.writes).toHaveLength(0);
    expect(answers[0]!.result!.envelope!.payload.chunk).toBe('b');
  });

  it('gives notifications no answer, even errors', async () => {
    let ran = false;
    const { d } = make((r) => {
      r.skill('echo', (env) => {
        ran = true;
        return { task_id: env.id, status: 'completed' };
      });
      r.skill('boom', () => {
        throw new Error('x');
      });
    });
    const s = new FakeSession(false);
    expect(await notify(d, s, taskRequest('echo'))).toBeUndefined();
    expect(ran).toBe(true);
    expect(await notify(d, s, taskRequest('boom'))).toBeUndefined();
    expect(await notify(d, s, { bad: true })).toBeUndefined();
    expect(await notify(d, s, undefined)).toBeUndefined();
    expect(await notify(d, s, envelope('Unknown', {}))).toBeUndefined();
    expect(await d.handle(decodeFrame(encodeNotification('other.method', {})), s)).toBeUndefined();
    expect(s.writes).toHaveLength(0);
  });

  it('answers an app-level ping with pong and ignores a pong', async () => {
    const { d } = make();
    expect(await d.handle(decodeFrame(PING_FRAME), new FakeSession(true))).toBe(PONG_FRAME);
    expect(await d.handle(decodeFrame(PONG_FRAME), new FakeSession(true))).toBeUndefined();
  });

  it('answers a parse error with -32700 and id null', async () => {
    const { d } = make();
    expect(await raw(d, new FakeSession(false), '{nope')).toMatchObject({
      id: null,
      error: { code: -32700 },
    });
  });

  it('hands responses to session.onResponse and answers nothing', async () => {
    const { d } = make();
    const s = new FakeSession(true);
    expect(await raw(d, s, '{"jsonrpc":"2.0","result":{"envelope":null},"id":"r1"}')).toBeUndefined();
    expect(
      await raw(d, s, '{"jsonrpc":"2.0","error":{"code":-32603,"message":"x"},"id":"r2"}'),
    ).toBeUndefined();
    expect(s.responses.map((r) => [r.kind, r.id])).toEqual([
      ['success', 'r1'],
      ['error', 'r2'],
    ]);
    // Without an onResponse callback nothing breaks.
    expect(await raw(d, bareSession(true), '{"jsonrpc":"2.0","result":{},"id":"r3"}')).toBeUndefined();
  });

  it('hands valid asap.ack envelopes to session.onAck and ignores malformed ones', async () => {
    const logger = new RecordingLogger();
    const { d } = make(() => {}, { logger });
    const s = new FakeSession(true);
    const ack = createReply(taskRequest('x'), 'message.ack', {
      original_envelope_id: 'e1',
      status: 'received',
    });
    expect(await d.handle(decodeFrame(encodeNotification('asap.ack', { envelope: ack })), s)).toBeUndefined();
    expect(s.acksReceived.map((a) => a.payload.original_envelope_id)).toEqual(['e1']);
    await d.handle(decodeFrame(encodeNotification('asap.ack', { envelope: { nope: 1 } })), s);
    await d.handle(decodeFrame(encodeNotification('asap.ack', { envelope: taskRequest('x') })), s);
    expect(s.acksReceived).toHaveLength(1);
    expect(logger.messages('warn').filter((m) => m === 'malformed asap.ack ignored')).toHaveLength(2);
    await d.handle(decodeFrame(encodeNotification('asap.ack', { envelope: ack })), bareSession(true));
  });
});

describe('replay protection (§8)', () => {
  const minutesAgo = (m: number) => new Date(Date.now() - m * 60_000).toISOString();

  it('refuses a timestamp older than 5 minutes with -32002', async () => {
    const { d } = make(echo);
    const err = errorOf(
      await send(d, new FakeSession(false), taskRequest('echo', {}, { timestamp: minutesAgo(6) })),
    );
    expect(err.code).toBe(-32002);
    resultOf(await send(d, new FakeSession(false), taskRequest('echo', {}, { timestamp: minutesAgo(4) })));
  });

  it('refuses a timestamp more than 30 s in the future with -32002', async () => {
    const { d } = make(echo);
    const future = new Date(Date.now() + 60_000).toISOString();
    expect(
      errorOf(await send(d, new FakeSession(false), taskRequest('echo', {}, { timestamp: future }))).code,
    ).toBe(-32002);
    const near = new Date(Date.now() + 10_000).toISOString();
    resultOf(await send(d, new FakeSession(false), taskRequest('echo', {}, { timestamp: near })));
  });

  it('refuses a repeated nonce with -32003', async () => {
    let calls = 0;
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        calls++;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const s = new FakeSession(false);
    resultOf(await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n-1' } })));
    const err = errorOf(await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'n-1' } }), 2));
    expect(err.code).toBe(-32003);
    expect(calls).toBe(1);
  });

  it('replay:false accepts old timestamps and repeated nonces', async () => {
    const { d } = make(echo, { replay: false });
    const s = new FakeSession(false);
    resultOf(await send(d, s, taskRequest('echo', {}, { timestamp: minutesAgo(60) })));
    resultOf(await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'same' } })));
    resultOf(await send(d, s, taskRequest('echo', {}, { extensions: { nonce: 'same' } })));
  });

  it('answers a retransmission from the dedupe cache whatever its age', async () => {
    const { d } = make(echo);
    const s = new FakeSession(false);
    const env = taskRequest('echo', {}, { extensions: { nonce: 'only-once' } });
    const first = resultOf(await send(d, s, env, 1));
    const again = resultOf(await send(d, s, env, 2));
    expect(again.id).toBe(first.id);
  });
});

describe('dedupe by envelope id (§6)', () => {
  function counting(r: HandlerRegistry, counter: { n: number }, gate?: Promise<void>): void {
    r.skill('count', async (env) => {
      counter.n++;
      if (gate) await gate;
      return { task_id: env.id, status: 'completed', result: { n: counter.n } };
    });
  }

  it('processes a repeated envelope id once and answers the copy from the cache under its own id', async () => {
    const counter = { n: 0 };
    const { d } = make((r) => counting(r, counter));
    const s = new FakeSession(false);
    const env = taskRequest('count');
    const a = await send(d, s, env, 'first');
    const b = await send(d, s, env, 'second');
    expect(counter.n).toBe(1);
    expect(a?.id).toBe('first');
    expect(b?.id).toBe('second');
    expect(b?.result).toEqual(a?.result);
  });

  it('caches errors too', async () => {
    let n = 0;
    const { d } = make((r) =>
      r.skill('boom', () => {
        n++;
        throw new Error('once');
      }),
    );
    const env = taskRequest('boom');
    const s = new FakeSession(false);
    expect((await send(d, s, env, 1))?.error?.message).toBe('once');
    expect(await send(d, s, env, 2)).toMatchObject({ id: 2, error: { code: -32603, message: 'once' } });
    expect(n).toBe(1);
  });

  it('lets a duplicate that arrives while the first runs wait for the same result', async () => {
    const counter = { n: 0 };
    const gate = deferred();
    const { d } = make((r) => counting(r, counter, gate.promise));
    const s = new FakeSession(false);
    const env = taskRequest('count');
    const first = send(d, s, env, 1);
    await waitFor(() => counter.n === 1);
    let secondDone = false;
    const second = send(d, s, env, 2).then((a) => {
      secondDone = true;
      return a;
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(secondDone).toBe(false);
    gate.resolve();
    const [a, b] = await Promise.all([first, second]);
    expect(counter.n).toBe(1);
    expect(a?.id).toBe(1);
    expect(b?.id).toBe(2);
    expect(b?.result).toEqual(a?.result);
  });

  it('dedupe:false processes every copy', async () => {
    const counter = { n: 0 };
    const { d } = make((r) => counting(r, counter), { dedupe: false });
    const env = taskRequest('count');
    await send(d, new FakeSession(false), env, 1);
    await send(d, new FakeSession(false), env, 2);
    expect(counter.n).toBe(2);
  });

  it('works with an asynchronous (shared) store', async () => {
    const inner = new MemoryDedupeStore();
    let ops = 0;
    const store: DedupeStore = {
      claim: async (key, fp) => {
        ops++;
        return inner.claim(key, fp);
      },
      complete: async (key, outcome) => {
        ops++;
        inner.complete(key, outcome);
      },
      release: async (key) => inner.release(key),
    };
    const counter = { n: 0 };
    const { d } = make((r) => counting(r, counter), { dedupe: store });
    const env = taskRequest('count');
    const a = await send(d, new FakeSession(false), env, 1);
    const b = await send(d, new FakeSession(false), env, 2);
    expect(counter.n).toBe(1);
    expect(b?.result).toEqual(a?.result);
    expect(ops).toBe(3); // claim + complete, then one claim answered "done"
  });

  it('answers a cached "none" outcome with a null envelope, and nothing to a notification', async () => {
    const store = new MemoryDedupeStore();
    const env = taskRequest('echo');
    const { d } = make(echo, { dedupe: store });
    // What a store shared with a node that got it as a notification would hold.
    const key = `\u0000${env.sender}\u0000${env.id}`;
    store.claim(key, fingerprint(env));
    store.complete(key, { kind: 'none' });
    const a = await send(d, new FakeSession(false), env, 5);
    expect(a).toEqual({ jsonrpc: '2.0', result: { envelope: null }, id: 5 });
    expect(await notify(d, new FakeSession(false), env)).toBeUndefined();
  });

  it('remembers a notification, so a later request with the same id is not processed again', async () => {
    const counter = { n: 0 };
    const { d } = make((r) => counting(r, counter));
    const env = taskRequest('count');
    await notify(d, new FakeSession(false), env);
    const a = await send(d, new FakeSession(false), env, 1);
    expect(counter.n).toBe(1);
    expect(resultOf(a).payload.result).toEqual({ n: 1 });
  });
});

describe('acknowledgements (§6)', () => {
  it("sends a 'received' ack before the handler runs over an interactive session", async () => {
    let writesSeenByHandler = -1;
    const s = new FakeSession(true);
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        writesSeenByHandler = s.acks().length;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const req = taskRequest('echo', {}, { requires_ack: true, trace_id: 't-9' });
    const a = await send(d, s, req);
    expect(writesSeenByHandler).toBe(1);
    const [ack] = s.acks();
    expect(s.frames()[0]).toMatchObject({ jsonrpc: '2.0', method: 'asap.ack' });
    expect(s.frames()[0]!.id).toBeUndefined();
    expect(ack).toMatchObject({
      payload_type: 'MessageAck',
      sender: AGENT,
      recipient: CLIENT,
      correlation_id: req.id,
      asap_version: req.asap_version,
      payload: { original_envelope_id: req.id, status: 'received' },
    });
    expect(s.acks()).toHaveLength(1);
    resultOf(a);
  });

  it('sends no ack when requires_ack is not set', async () => {
    const { d } = make(echo);
    const s = new FakeSession(true);
    await send(d, s, taskRequest('echo'));
    expect(s.writes).toHaveLength(0);
  });

  it("sends a 'rejected' ack with the error for a validation failure when id and sender are readable", async () => {
    const { d } = make(echo);
    const s = new FakeSession(true);
    const bad = { ...taskRequest('echo', {}, { requires_ack: true }), payload: { nope: 1 } };
    const a = await send(d, s, bad);
    expect(errorOf(a).code).toBe(-32602);
    const acks = s.acks();
    expect(acks).toHaveLength(1);
    expect(acks[0]).toMatchObject({
      sender: AGENT,
      recipient: CLIENT,
      payload: { original_envelope_id: bad.id, status: 'rejected', error: 'Invalid envelope' },
    });
  });

  it('falls back to the current asap_version when the broken envelope has none', async () => {
    const { d } = make(echo);
    const s = new FakeSession(true);
    const { asap_version: _v, ...rest } = taskRequest('echo', {}, { requires_ack: true });
    await send(d, s, { ...rest, asap_version: 7 });
    expect(s.acks()[0]?.asap_version).toBe('0.1');
  });

  it('sends no ack when the envelope is too broken to read its id and sender', async () => {
    const { d } = make(echo);
    const s = new FakeSession(true);
    const env = taskRequest('echo', {}, { requires_ack: true });
    await send(d, s, { ...env, id: 5, payload: {} });
    await send(d, s, { ...env, sender: 'bad', payload: {} });
    await send(d, s, 'not an object');
    await send(d, s, { ...env, requires_ack: 'yes' });
    expect(s.acks()).toHaveLength(0);
  });

  it("sends a 'rejected' ack for a replay failure and for a missing handler", async () => {
    const { d } = make(echo);
    const s = new FakeSession(true);
    const old = new Date(Date.now() - 10 * 60_000).toISOString();
    await send(d, s, taskRequest('echo', {}, { requires_ack: true, timestamp: old }));
    await send(d, s, envelope('StateQuery', { task_id: 't' }, { requires_ack: true }));
    const acks = s.acks();
    expect(acks.map((a) => a.payload.status)).toEqual(['rejected', 'rejected']);
    expect(acks[0]!.payload.error).toContain('too old');
    expect(acks[1]!.payload.error).toContain('StateQuery');
  });

  it("sends 'processed' after the handler when processedAcks is on", async () => {
    const order: string[] = [];
    const s = new FakeSession(true);
    s.writeHook = (t) => {
      order.push(JSON.parse(t).params.envelope.payload.status);
    };
    const { d } = make(
      (r) =>
        r.skill('echo', (env) => {
          order.push('handler');
          return { task_id: env.id, status: 'completed' };
        }),
      { processedAcks: true },
    );
    await send(d, s, taskRequest('echo', {}, { requires_ack: true }));
    expect(order).toEqual(['received', 'handler', 'processed']);
  });

  it('acks a retransmitted duplicate again without processing it', async () => {
    const counter = { n: 0 };
    const { d } = make((r) =>
      r.skill('echo', (env) => {
        counter.n++;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    const s = new FakeSession(true);
    const env = taskRequest('echo', {}, { requires_ack: true });
    await send(d, s, env, 1);
    await send(d, s, env, 2);
    expect(counter.n).toBe(1);
    expect(s.acks().map((a) => a.payload.status)).toEqual(['received', 'received']);
  });

  it('sends no acks over a non-interactive session', async () => {
    const { d } = make(echo, { processedAcks: true });
    const s = new FakeSession(false);
    await send(d, s, taskRequest('echo', {}, { requires_ack: true }));
    await send(d, s, { ...taskRequest('echo', {}, { requires_ack: true }), payload: {} });
    await send(d, s, envelope('StateQuery', { task_id: 't' }, { requires_ack: true }));
    expect(s.writes).toHaveLength(0);
  });
});

describe('idle() and close()', () => {
  it('idle() resolves at once when nothing runs, else once every handler finished', async () => {
    const gate = deferred();
    const { d } = make((r) =>
      r.skill('wait', async (env) => {
        await gate.promise;
        return { task_id: env.id, status: 'completed' };
      }),
    );
    await d.idle();
    const pending = send(d, new FakeSession(false), taskRequest('wait'));
    const pending2 = send(d, new FakeSession(false), taskRequest('wait'));
    await waitFor(() => d.inFlight === 2);
    let idle = false;
    const idleP = d.idle().then(() => {
      idle = true;
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(idle).toBe(false);
    gate.resolve();
    await idleP;
    expect(d.inFlight).toBe(0);
    resultOf(await pending);
    resultOf(await pending2);
  });

  it('close() aborts running handlers and answers them -32040 (or the given reason)', async () => {
    const signals: AbortSignal[] = [];
    const { d } = make((r) =>
      r.skill('hang', (_env, ctx) => {
        signals.push(ctx.signal);
        return new Promise(() => {});
      }),
    );
    const a = send(d, new FakeSession(false), taskRequest('hang'));
    await waitFor(() => signals.length === 1);
    d.close();
    const err = errorOf(await a);
    expect(err.code).toBe(-32040);
    expect(signals[0]!.aborted).toBe(true);
    await d.idle();

    const { d: d2 } = make((r) =>
      r.skill('hang', (_env, ctx) => {
        signals.push(ctx.signal);
        return new Promise(() => {});
      }),
    );
    const b = send(d2, new FakeSession(false), taskRequest('hang'));
    await waitFor(() => signals.length === 2);
    d2.close(new ASAPError(ErrorCode.InvalidState, 'stopping'));
    expect(await b).toMatchObject({ error: { code: -32000, message: 'stopping' } });
  });

  it('after close() handlers still answer but no deadline timer is started', async () => {
    const { d } = make(echo, { deadlineResolutionMs: 5 });
    d.close();
    resultOf(await send(d, new FakeSession(false), taskRequest('echo')));
    expect((d as unknown as { sweepTimer: unknown }).sweepTimer).toBeUndefined();
  });
});

describe('logging', () => {
  it('logs each handled request at debug level when debug is enabled', async () => {
    const logger = new RecordingLogger(true);
    const { d } = make(echo, { logger });
    const env = taskRequest('echo');
    await send(d, new FakeSession(false), env);
    await send(d, new FakeSession(false), env, 2);
    const handled = logger.entries.find((e) => e.msg === 'request handled');
    expect(handled?.obj).toMatchObject({ envelope_id: env.id, outcome: 'result' });
    expect(logger.messages('debug')).toContain('duplicate envelope answered from the dedupe store');
  });

  it('builds no debug record when debug is off', async () => {
    const logger = new RecordingLogger(false);
    const { d } = make(echo, { logger });
    await send(d, new FakeSession(false), taskRequest('echo'));
    expect(logger.messages('debug')).not.toContain('request handled');
  });

  it('treats a logger without isLevelEnabled as debug-enabled', async () => {
    const msgs: (string | undefined)[] = [];
    const push = (_o: object, m?: string) => {
      msgs.push(m);
    };
    const { d } = make(echo, { logger: { debug: push, info: push, warn: push, error: push } });
    await send(d, new FakeSession(false), taskRequest('echo'));
    expect(msgs).toContain('request handled');
  });
});

describe('replyTypeFor', () => {
  it.each([
    ['TaskRequest', 'TaskResponse', 'TaskResponse'],
    ['task.request', 'TaskResponse', 'task.response'],
    ['task_request', 'TaskResponse', 'task_response'],
    ['mcp.tool.call', 'McpToolResult', 'mcp.tool.result'],
    ['mcp_tool_call', 'McpToolResult', 'mcp_tool_result'],
    ['message.send', 'MessageAck', 'message.ack'],
    ['taskrequest', 'TaskResponse', 'TaskResponse'],
  ])('%s → %s is spelled %s', (req, canonical, expected) => {
    expect(replyTypeFor(req, canonical)).toBe(expected);
  });
});
