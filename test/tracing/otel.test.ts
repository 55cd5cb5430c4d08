/**
 * OpenTelemetry tracing (asap-wire.md §13) with a real SDK: a BasicTracerProvider exporting to memory
 * and AsyncLocalStorage as the context manager, registered per test. Real servers and clients on
 * 127.0.0.1 port 0, over WebSocket, HTTP and the SSE stream: the client span is the parent of the
 * server span, the handler's pushes and its own calls to other agents are children of that, every
 * span shares the trace id, and replies, pushes and streamed chunks carry `trace_id` and
 * `extensions.traceparent`. Also: the Python reference's form of a parent, malformed traceparents,
 * errors, and no provider registered (nothing recorded, nothing added to the wire).
 */
import * as api from '@opentelemetry/api';
import { context, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ASAPClient } from '../../src/client/client.js';
import { HttpTransport } from '../../src/client/http-transport.js';
import { WebSocketTransport } from '../../src/client/websocket-transport.js';
import { HandlerRegistry } from '../../src/core/registry.js';
import { carryTrace } from '../../src/core/tracing.js';
import { otelTracing } from '../../src/otel/index.js';
import { remoteParent } from '../../src/otel/server.js';
import { createEnvelope, createReply, type Envelope, validateEnvelope } from '../../src/protocol/envelope.js';
import { ASAPError } from '../../src/protocol/errors.js';
import type { TaskRequest, TaskStream } from '../../src/protocol/payloads.js';
import { LocalPushAdapter } from '../../src/server/push-adapter.js';
import { ASAPServer, type ASAPServerOptions } from '../../src/server/server.js';
import { waitFor } from '../client/helpers.js';
import { hideNodeRuntime } from '../support/browser-like.js';

const CLIENT = 'urn:asap:agent:client';
const AGENT = 'urn:asap:agent:tracing';
const DOWNSTREAM = 'urn:asap:agent:downstream';
const WATCHER = 'urn:asap:agent:watcher';
const HEX32 = /^[0-9a-f]{32}$/;

let exporter: InMemorySpanExporter;
let provider: BasicTracerProvider | undefined;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

function registerProvider(): void {
  provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);
}

beforeEach(() => {
  exporter = new InMemorySpanExporter();
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  trace.disable();
  context.disable();
  await provider?.shutdown();
  provider = undefined;
});

async function startServer(
  id: string,
  opts: Partial<ASAPServerOptions> = {},
): Promise<{
  server: ASAPServer;
  http: string;
  ws: string;
}> {
  const server = new ASAPServer({ manifest: { id }, rateLimit: 0, drainTimeoutMs: 200, ...opts });
  const { url, port } = await server.listen({ host: '127.0.0.1', port: 0 });
  cleanups.push(() => server.close());
  return { server, http: `${url}/asap`, ws: `ws://127.0.0.1:${port}/asap/ws` };
}

function task(skill: string, recipient = AGENT, input: Record<string, unknown> = {}): Envelope<TaskRequest> {
  return createEnvelope({
    sender: CLIENT,
    recipient,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-1', skill_id: skill, input },
  });
}

/** The agent under test: `relay` pushes to the caller and asks a downstream agent, `count` streams. */
async function startAgent(opts: Partial<ASAPServerOptions> = {}) {
  const downstream = await startServer(DOWNSTREAM);
  downstream.server.skill('echo', (env) => ({
    task_id: env.id,
    status: 'completed',
    result: env.payload.input,
  }));
  const agent = await startServer(AGENT, opts);
  const nested = new ASAPClient(downstream.http, { sender: AGENT, recipient: DOWNSTREAM, retry: false });
  cleanups.push(() => nested.close());
  agent.server.skill('relay', async (env, ctx) => {
    await ctx.push({
      payload_type: 'TaskUpdate',
      payload: { task_id: env.id, update_type: 'progress', status: 'working' },
    });
    const answer = await nested.task('echo', { from: 'relay' });
    return { task_id: env.id, status: 'completed', result: { downstream: answer.payload } };
  });
  agent.server.skill('count', async function* (env) {
    for (let i = 1; i <= 3; i++) yield { chunk: `part ${i}`, final: false };
    yield { chunk: '', final: true, status: 'completed' } satisfies TaskStream;
    void env;
  });
  agent.server.skill('fail', () => {
    throw new Error('handler broke');
  });
  agent.server.skill('reject', () => Promise.reject('plain reason'));
  agent.server.registry.on('custom.ping', (env, ctx) => ctx.reply('custom.pong', { seen: env.id }));
  agent.server.skill('refuse', () => {
    throw new ASAPError(-32602, 'bad input');
  });
  agent.server.skill('notify', async (env, ctx) => {
    const reached = await ctx.pushTo(WATCHER, {
      payload_type: 'TaskUpdate',
      payload: { task_id: env.id, update_type: 'progress', status: 'working' },
    });
    await ctx
      .pushTo('urn:asap:agent:nobody', {
        payload_type: 'TaskUpdate',
        payload: { task_id: env.id, update_type: 'progress', status: 'working' },
      })
      .catch(() => {});
    return { task_id: env.id, status: 'completed', result: { reached } };
  });
  return { agent, downstream };
}

/** Pushes to `urn:asap:agent:nobody` fail (a push adapter whose store is down, say). */
class RefusingPushAdapter extends LocalPushAdapter {
  override push(urn: string, envelope: Envelope<object>): Promise<number> {
    if (urn === 'urn:asap:agent:nobody')
      return Promise.reject(new ASAPError(-32040, 'push store unavailable'));
    return super.push(urn, envelope);
  }
}

function spans(): ReadableSpan[] {
  return exporter.getFinishedSpans();
}

function one(pred: (s: ReadableSpan) => boolean, what: string): ReadableSpan {
  const found = spans().filter(pred);
  expect(
    found.length,
    `${what}: ${spans()
      .map((s) => s.name)
      .join(', ')}`,
  ).toBe(1);
  return found[0]!;
}

function parentOf(s: ReadableSpan): string | undefined {
  return s.parentSpanContext?.spanId;
}

/** Runs `fn` inside an active span of the test, the caller's own. */
async function inCallerSpan<T>(fn: (span: Span) => Promise<T>): Promise<{ result: T; caller: Span }> {
  const tracer = trace.getTracer('test');
  let caller: Span | undefined;
  const result = await tracer.startActiveSpan('caller', async (span) => {
    caller = span;
    try {
      return await fn(span);
    } finally {
      span.end();
    }
  });
  return { result, caller: caller! };
}

function traceparentOf(env: Envelope<object>): unknown {
  return env.extensions?.traceparent;
}

/** A WebSocketTransport connected to `url` (closed after the test), and the pushes it receives. */
async function connectTo(
  url: string,
): Promise<{ transport: WebSocketTransport; pushes: Envelope<object>[] }> {
  const transport = new WebSocketTransport(url, { reconnect: false });
  cleanups.push(() => transport.close());
  await transport.connect();
  const pushes: Envelope<object>[] = [];
  transport.onMessage((env) => pushes.push(env));
  return { transport, pushes };
}

describe('tracing with a registered TracerProvider', () => {
  beforeEach(registerProvider);

  it('over WebSocket: client → server handler → push and nested call, one trace, context on the wire', async () => {
    const { agent } = await startAgent();
    const { transport, pushes } = await connectTo(agent.ws);
    const request = task('relay');
    const { result: reply, caller } = await inCallerSpan(() => transport.request(request));
    await waitFor(() => spans().length >= 6 && pushes.length === 1, 'spans and the push');

    const traceId = caller.spanContext().traceId;
    const client = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap relay', 'client span');
    const server = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap relay', 'server span');
    const push = one((s) => s.kind === SpanKind.PRODUCER, 'push span');
    const nested = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap echo', 'nested client span');
    const downstream = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap echo', 'downstream span');
    for (const s of [client, server, push, nested, downstream]) expect(s.spanContext().traceId).toBe(traceId);
    expect(parentOf(client)).toBe(caller.spanContext().spanId);
    expect(parentOf(server)).toBe(client.spanContext().spanId);
    expect(server.parentSpanContext?.isRemote).toBe(true);
    expect(parentOf(push)).toBe(server.spanContext().spanId);
    expect(parentOf(nested)).toBe(server.spanContext().spanId);
    expect(parentOf(downstream)).toBe(nested.spanContext().spanId);

    expect(server.attributes).toMatchObject({
      'rpc.system': 'asap',
      'rpc.method': 'relay',
      'rpc.jsonrpc.version': '2.0',
      'messaging.system': 'asap',
      'messaging.operation.type': 'process',
      'messaging.message.id': request.id,
      'messaging.destination.name': AGENT,
      'messaging.message.conversation_id': 'conv-1',
      'asap.payload_type': 'TaskRequest',
      'asap.skill_id': 'relay',
      'asap.sender': CLIENT,
      'asap.transport': 'websocket',
    });
    expect(server.attributes['rpc.jsonrpc.request_id']).toMatch(/^ws-req-/);
    expect(client.attributes).toMatchObject({
      'rpc.system': 'asap',
      'rpc.method': 'relay',
      'messaging.operation.type': 'send',
      'messaging.message.id': request.id,
      'asap.transport': 'websocket',
    });
    expect(push.attributes).toMatchObject({
      'messaging.operation.type': 'send',
      'messaging.message.id': pushes[0]!.id,
      'messaging.destination.name': CLIENT,
      'asap.payload_type': 'TaskUpdate',
    });
    expect(server.status.code).toBe(SpanStatusCode.UNSET);
    expect(client.status.code).toBe(SpanStatusCode.UNSET);

    // The wire: the request carried the client span's context, the reply and the push carry it back.
    const sent = `00-${traceId}-${client.spanContext().spanId}-01`;
    expect(request.extensions).toBeUndefined(); // the caller's envelope is left as it was
    expect(reply.trace_id).toBe(traceId);
    expect(traceparentOf(reply)).toBe(sent);
    expect(pushes[0]!.trace_id).toBe(traceId);
    expect(traceparentOf(pushes[0]!)).toBe(sent);
    expect(validateEnvelope(JSON.parse(JSON.stringify(reply))).ok).toBe(true);
    expect(validateEnvelope(JSON.parse(JSON.stringify(pushes[0]))).ok).toBe(true);
    // The nested reply to the handler carried the nested span's context.
    const nestedReply = (reply.payload as { result: { downstream: Envelope<object> } }).result;
    expect(nestedReply.downstream).toMatchObject({ status: 'completed' });
  });

  it('over WebSocket: a stream is one server span; every chunk carries trace_id and traceparent', async () => {
    const { agent } = await startAgent();
    const transport = new WebSocketTransport(agent.ws, { reconnect: false });
    cleanups.push(() => transport.close());
    await transport.connect();
    const chunks: Envelope<TaskStream>[] = [];
    const { caller } = await inCallerSpan(async () => {
      for await (const c of transport.stream(task('count'))) chunks.push(c);
    });
    await waitFor(() => spans().length >= 3, 'spans');
    const traceId = caller.spanContext().traceId;
    const client = one((s) => s.kind === SpanKind.CLIENT, 'client span');
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    expect(client.attributes['asap.stream']).toBe(true);
    expect(parentOf(server)).toBe(client.spanContext().spanId);
    expect(server.attributes['asap.stream.chunks']).toBe(4);
    expect(chunks).toHaveLength(4);
    const sent = `00-${traceId}-${client.spanContext().spanId}-01`;
    for (const c of chunks) {
      expect(c.trace_id).toBe(traceId);
      expect(traceparentOf(c)).toBe(sent);
      expect(validateEnvelope(JSON.parse(JSON.stringify(c))).ok).toBe(true);
    }
  });

  it('over HTTP, request and SSE stream (POST /asap/stream), with the Node default of the transport', async () => {
    const { agent } = await startAgent();
    const http = new HttpTransport(agent.http);
    const { result, caller } = await inCallerSpan(async () => {
      const reply = await http.request(task('relay'));
      const chunks: Envelope<TaskStream>[] = [];
      for await (const c of http.stream(task('count'))) chunks.push(c);
      return { reply, chunks };
    });
    await waitFor(() => spans().filter((s) => s.kind === SpanKind.SERVER).length === 3, 'server spans');
    const traceId = caller.spanContext().traceId;
    const relayClient = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap relay', 'relay client');
    const relayServer = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap relay', 'relay server');
    const countClient = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap count', 'count client');
    const countServer = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap count', 'count server');
    const nested = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap echo', 'nested client');
    for (const s of [relayClient, relayServer, countClient, countServer, nested])
      expect(s.spanContext().traceId).toBe(traceId);
    expect(parentOf(relayServer)).toBe(relayClient.spanContext().spanId);
    expect(parentOf(nested)).toBe(relayServer.spanContext().spanId);
    expect(parentOf(countServer)).toBe(countClient.spanContext().spanId);
    expect(relayServer.attributes['asap.transport']).toBe('http');
    expect(countServer.attributes['asap.stream.chunks']).toBe(4);
    // Over HTTP the push has no connection to go to: its span ends failed or not, under the handler's.
    const push = one((s) => s.kind === SpanKind.PRODUCER, 'push span');
    expect(parentOf(push)).toBe(relayServer.spanContext().spanId);

    expect(result.reply.trace_id).toBe(traceId);
    expect(traceparentOf(result.reply)).toBe(`00-${traceId}-${relayClient.spanContext().spanId}-01`);
    expect(result.chunks).toHaveLength(4);
    for (const c of result.chunks) {
      expect(c.trace_id).toBe(traceId);
      expect(traceparentOf(c)).toBe(`00-${traceId}-${countClient.spanContext().spanId}-01`);
    }
  });

  it('ASAPClient passes tracing to its transports; without a caller span the call starts a trace', async () => {
    const { agent } = await startAgent();
    const client = new ASAPClient(agent.ws, { recipient: AGENT, websocket: { reconnect: false } });
    cleanups.push(() => client.close());
    const reply = await client.task('echo-none');
    await waitFor(() => spans().length >= 2, 'spans');
    const clientSpan = one((s) => s.kind === SpanKind.CLIENT, 'client span');
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    expect(clientSpan.parentSpanContext).toBeUndefined();
    expect(parentOf(server)).toBe(clientSpan.spanContext().spanId);
    // A skill nobody registered: named by its payload type, not by the caller's made-up skill.
    expect(server.name).toBe('asap TaskRequest');
    expect(server.attributes['asap.skill_id']).toBeUndefined();
    expect(reply.trace_id).toBe(clientSpan.spanContext().traceId);
  });

  it('ASAPClient tracing: false turns client spans off on both transports', async () => {
    const { agent } = await startAgent();
    const ws = new ASAPClient(agent.ws, {
      recipient: AGENT,
      tracing: false,
      websocket: { reconnect: false },
    });
    const http = new ASAPClient(agent.http, { recipient: AGENT, tracing: false });
    cleanups.push(() => ws.close());
    const replies = [await ws.task('echo-none'), await http.task('echo-none')];
    await waitFor(() => spans().filter((s) => s.kind === SpanKind.SERVER).length === 2, 'server spans');
    expect(spans().filter((s) => s.kind === SpanKind.CLIENT)).toEqual([]);
    for (const r of replies) expect(r.extensions).toBeUndefined();
  });

  it('keeps what the caller set: its traceparent and trace_id are sent as they are', async () => {
    const { agent } = await startAgent();
    const http = new HttpTransport(agent.http);
    const parent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const env = createEnvelope({
      ...task('echo-none'),
      trace_id: 'my-trace',
      extensions: { traceparent: parent },
    });
    const reply = await http.request(env);
    await waitFor(() => spans().length >= 2, 'spans');
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    expect(server.spanContext().traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    expect(parentOf(server)).toBe('00f067aa0ba902b7');
    expect(reply.trace_id).toBe('my-trace');
    expect(traceparentOf(reply)).toBe(parent);
  });

  it('accepts the Python reference form as the parent: trace_id (32 hex) and extensions.span_id', async () => {
    const { agent } = await startAgent();
    const http = new HttpTransport(agent.http, { tracing: false });
    const env = createEnvelope({
      ...task('echo-none'),
      trace_id: '0af7651916cd43dd8448eb211c80319c',
      extensions: { span_id: 'b7ad6b7169203331' },
    });
    const reply = await http.request(env);
    await waitFor(() => spans().length >= 1, 'spans');
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    expect(spans().filter((s) => s.kind === SpanKind.CLIENT)).toHaveLength(0);
    expect(server.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(parentOf(server)).toBe('b7ad6b7169203331');
    expect(reply.trace_id).toBe('0af7651916cd43dd8448eb211c80319c');
  });

  it('ignores a malformed traceparent: no crash, the server span starts a new trace', async () => {
    const { agent } = await startAgent();
    const http = new HttpTransport(agent.http, { tracing: false });
    const env = createEnvelope({ ...task('echo-none'), extensions: { traceparent: 'not-a-traceparent' } });
    const reply = await http.request(env);
    expect(reply.payload).toMatchObject({ status: 'failed' });
    await waitFor(() => spans().length >= 1, 'spans');
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    expect(server.parentSpanContext).toBeUndefined();
    expect(server.spanContext().traceId).toMatch(HEX32);
  });

  it('marks JSON-RPC errors: status error with the code, the exception recorded, on both sides', async () => {
    const { agent } = await startAgent();
    const http = new HttpTransport(agent.http);
    await expect(http.request(task('fail'))).rejects.toThrow(/handler broke/);
    await expect(http.request(task('refuse'))).rejects.toThrow(/bad input/);
    await waitFor(() => spans().length >= 4, 'spans');
    const failed = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap fail', 'fail server');
    expect(failed.status).toEqual({ code: SpanStatusCode.ERROR, message: 'handler broke' });
    expect(failed.attributes['rpc.jsonrpc.error_code']).toBe(-32603);
    expect(failed.events.map((e) => e.name)).toContain('exception');
    const refused = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap refuse', 'refuse server');
    expect(refused.attributes['rpc.jsonrpc.error_code']).toBe(-32602);
    expect(refused.attributes['rpc.jsonrpc.error_message']).toBe('bad input');
    const client = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap refuse', 'refuse client');
    expect(client.status.code).toBe(SpanStatusCode.ERROR);
    expect(client.attributes['rpc.jsonrpc.error_code']).toBe(-32602);
    expect(client.events.map((e) => e.name)).toContain('exception');
  });

  it('traces other payload types, notifications, and handlers that reject with a non-Error', async () => {
    const { agent } = await startAgent();
    const transport = new WebSocketTransport(agent.ws, { reconnect: false });
    cleanups.push(() => transport.close());
    await transport.connect();
    const ping = createEnvelope({
      sender: CLIENT,
      recipient: AGENT,
      payload_type: 'custom.ping',
      payload: {},
    });
    const pong = await transport.request(ping);
    await transport.notify(task('echo-none'));
    await expect(transport.request(task('reject'))).rejects.toThrow();
    await waitFor(() => spans().filter((s) => s.kind === SpanKind.SERVER).length === 3, 'server spans');
    const custom = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap custom.ping', 'custom server');
    expect(custom.attributes).toMatchObject({
      'rpc.method': 'custom.ping',
      'asap.payload_type': 'custom.ping',
    });
    expect(
      one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap custom.ping', 'custom client'),
    ).toBeDefined();
    expect(pong.extensions?.traceparent).toBe(
      `00-${custom.spanContext().traceId}-${custom.parentSpanContext?.spanId}-01`,
    );
    const notified = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap TaskRequest', 'notification');
    expect(notified.attributes['rpc.jsonrpc.request_id']).toBeUndefined();
    const rejected = one((s) => s.kind === SpanKind.SERVER && s.name === 'asap reject', 'reject server');
    expect(rejected.status.code).toBe(SpanStatusCode.ERROR);
    expect(rejected.events.map((e) => e.name)).toContain('exception');
  });

  it('a client call failed with a non-Error is marked failed with its text', () => {
    const call = otelTracing().startCall(task('x'), 'request', 'http')!;
    expect(call.envelope.extensions?.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    call.fail('gone');
    const span = one((s) => s.kind === SpanKind.CLIENT, 'client span');
    expect(span.status).toEqual({ code: SpanStatusCode.ERROR, message: 'gone' });
    expect(span.attributes['rpc.jsonrpc.error_code']).toBeUndefined();
  });

  it('a failing WebSocket call and a stream left early end their client spans', async () => {
    const { agent } = await startAgent();
    const transport = new WebSocketTransport(agent.ws, { reconnect: false });
    cleanups.push(() => transport.close());
    await transport.connect();
    await expect(transport.request(task('refuse'))).rejects.toThrow(/bad input/);
    for await (const c of transport.stream(task('count'))) {
      expect(c.payload.chunk).toBe('part 1');
      break;
    }
    const failing = new HttpTransport(agent.http.replace('/asap', '/nowhere'));
    await expect(
      (async () => {
        for await (const _ of failing.stream(task('count'))) void _;
      })(),
    ).rejects.toThrow();
    await waitFor(() => spans().filter((s) => s.kind === SpanKind.CLIENT).length === 3, 'client spans');
    const refused = one((s) => s.kind === SpanKind.CLIENT && s.name === 'asap refuse', 'refuse client');
    expect(refused.status.code).toBe(SpanStatusCode.ERROR);
    const counts = spans().filter((s) => s.kind === SpanKind.CLIENT && s.name === 'asap count');
    expect(counts.map((s) => s.status.code).sort()).toEqual([SpanStatusCode.UNSET, SpanStatusCode.ERROR]);
  });

  it('ctx.pushTo makes a PRODUCER span per push, failed when the push fails', async () => {
    const { agent } = await startAgent({ pushAdapter: new RefusingPushAdapter() });
    const watcher = new WebSocketTransport(agent.ws, { reconnect: false, tracing: false });
    cleanups.push(() => watcher.close());
    await watcher.connect();
    // The server learns the watcher's URN from what it sends.
    await watcher.request(createEnvelope({ ...task('echo-none'), sender: WATCHER }));
    const got: Envelope<object>[] = [];
    watcher.onMessage((e) => got.push(e));
    exporter.reset();
    const http = new HttpTransport(agent.http);
    const reply = await http.request(task('notify'));
    expect(reply.payload).toMatchObject({ result: { reached: 1 } });
    await waitFor(
      () => got.length === 1 && spans().filter((s) => s.kind === SpanKind.PRODUCER).length === 2,
      'pushes',
    );
    const server = one((s) => s.kind === SpanKind.SERVER, 'server span');
    const pushes = spans().filter((s) => s.kind === SpanKind.PRODUCER);
    for (const p of pushes) expect(parentOf(p)).toBe(server.spanContext().spanId);
    expect(pushes.map((p) => p.attributes['messaging.destination.name']).sort()).toEqual([
      'urn:asap:agent:nobody',
      WATCHER,
    ]);
    const toNobody = pushes.find(
      (p) => p.attributes['messaging.destination.name'] === 'urn:asap:agent:nobody',
    )!;
    expect(toNobody.status.code).toBe(SpanStatusCode.ERROR);
    expect(got[0]!.trace_id).toBe(server.spanContext().traceId);
  });

  it('tracing: false on the server and the transports records nothing and adds nothing', async () => {
    const { agent } = await startAgent({ tracing: false });
    const http = new HttpTransport(agent.http, { tracing: false });
    const reply = await http.request(task('echo-none'));
    const transport = new WebSocketTransport(agent.ws, { reconnect: false, tracing: false });
    cleanups.push(() => transport.close());
    await transport.connect();
    for await (const c of transport.stream(task('count'))) expect(c.extensions).toBeUndefined();
    expect(reply.trace_id).toBeUndefined();
    expect(reply.extensions).toBeUndefined();
    expect(spans()).toEqual([]);
  });

  it('works with an API object of another copy: its no-op provider is known by name', () => {
    let registered: api.TracerProvider = { getTracer: () => trace.getTracer('x') };
    class NoopTracerProvider implements api.TracerProvider {
      getTracer(): api.Tracer {
        return trace.getTracer('never');
      }
    }
    const foreign = {
      ...api,
      ProxyTracerProvider: undefined,
      trace: Object.create(api.trace, { getTracerProvider: { value: () => registered } }),
    } as unknown as typeof api;
    const tracing = otelTracing(foreign);
    expect(tracing.recording?.()).toBe(true);
    registered = new NoopTracerProvider();
    expect(tracing.recording?.()).toBe(false);
    expect(tracing.startCall(task('x'), 'request', 'http')).toBeUndefined();
    expect(
      tracing.startRequest({ envelope: task('x'), payloadType: 'TaskRequest', transport: 'http' }),
    ).toBeUndefined();
  });
});

describe('tracing with no TracerProvider registered', () => {
  it('records nothing, adds nothing to the wire, and requests work', async () => {
    const tracing = otelTracing();
    expect(tracing.recording?.()).toBe(false);
    const { agent } = await startAgent();
    const { transport, pushes } = await connectTo(agent.ws);
    const reply = await transport.request(task('relay'));
    expect(reply.payload).toMatchObject({ status: 'completed' });
    await waitFor(() => pushes.length === 1, 'the push');
    expect(reply.trace_id).toBeUndefined();
    expect(reply.extensions).toBeUndefined();
    expect(pushes[0]!.extensions).toBeUndefined();
    const http = new HttpTransport(agent.http);
    const chunks: Envelope<TaskStream>[] = [];
    for await (const c of http.stream(task('count'))) chunks.push(c);
    expect(chunks).toHaveLength(4);
    expect(spans()).toEqual([]);
  });

  it('still copies a trace the caller sent into the reply, pushes and chunks', async () => {
    const { agent } = await startAgent();
    const { transport, pushes } = await connectTo(agent.ws);
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const traced = (skill: string) =>
      createEnvelope({
        ...task(skill),
        trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
        extensions: { traceparent },
      });
    const reply = await transport.request(traced('relay'));
    await waitFor(() => pushes.length === 1, 'the push');
    for (const env of [reply, pushes[0]!]) {
      expect(env.trace_id).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
      expect(env.extensions).toEqual({ traceparent });
    }
    for await (const c of transport.stream(traced('count'))) expect(c.extensions).toEqual({ traceparent });
  });
});

describe('remoteParent', () => {
  const base = { ...task('x') };
  const at = (extensions: Record<string, unknown>, trace_id?: string) =>
    remoteParent(createEnvelope({ ...base, extensions, trace_id }));

  it('reads a W3C traceparent, flags included, and a future version with more fields', () => {
    expect(at({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00' })).toEqual({
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      spanId: '00f067aa0ba902b7',
      traceFlags: 0,
      isRemote: true,
    });
    expect(
      at({ traceparent: '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra' })?.traceFlags,
    ).toBe(1);
  });

  it('refuses malformed ones: bad shape, version ff, extra fields on version 00, all-zero ids', () => {
    for (const traceparent of [
      '',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
    ])
      expect(at({ traceparent }), traceparent).toBeUndefined();
    // A traceparent that is there but malformed wins over the Python form: no parent.
    expect(
      at({ traceparent: 'x', span_id: 'b7ad6b7169203331' }, '0af7651916cd43dd8448eb211c80319c'),
    ).toBeUndefined();
  });

  it('reads the Python form only with both ids well formed', () => {
    expect(at({ span_id: 'b7ad6b7169203331' }, '0af7651916cd43dd8448eb211c80319c')).toMatchObject({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      traceFlags: 1,
    });
    expect(at({ span_id: 'b7ad6b7169203331' }, 'trace-123')).toBeUndefined();
    expect(at({ span_id: 'short' }, '0af7651916cd43dd8448eb211c80319c')).toBeUndefined();
    expect(at({}, '0af7651916cd43dd8448eb211c80319c')).toBeUndefined();
    expect(remoteParent(task('x'))).toBeUndefined();
  });
});

describe('registry', () => {
  it('a server made with a shared registry traces its requests too', async () => {
    registerProvider();
    const registry = new HandlerRegistry().on('TaskRequest', (env) => ({
      task_id: env.id,
      status: 'completed',
    }));
    const { http } = await startServer(AGENT, { registry });
    await new HttpTransport(http).request(task('anything'));
    await waitFor(() => spans().length === 2, 'spans');
    expect(one((s) => s.kind === SpanKind.SERVER, 'server').attributes['rpc.method']).toBe('TaskRequest');
  });
});

describe('the default tracing of client transports', () => {
  it('is OpenTelemetry in Node, loaded once, and none where the runtime is not Node', async () => {
    vi.resetModules();
    const node = await import('../../src/client/tracing.js');
    expect(node.defaultClientTracing()).toBeDefined();
    expect(node.defaultClientTracing()).toBe(node.defaultClientTracing());
    vi.resetModules();
    const restore = hideNodeRuntime();
    try {
      const browser = await import('../../src/client/tracing.js');
      expect(browser.defaultClientTracing()).toBeUndefined();
    } finally {
      restore();
    }
  });
});

describe('the trace context of replies (createReply, carryTrace)', () => {
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  const request = createEnvelope({ ...task('x'), trace_id: 't-1', extensions: { traceparent, nonce: 'n1' } });

  it('createReply carries trace_id and traceparent (not the other extensions), merged with its own', () => {
    expect(createReply(request, 'TaskResponse', {}).extensions).toEqual({ traceparent });
    expect(createReply(request, 'TaskResponse', {}, { extensions: { nonce: 'n2' } }).extensions).toEqual({
      nonce: 'n2',
      traceparent,
    });
    const own = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' };
    expect(createReply(request, 'TaskResponse', {}, { extensions: own }).extensions).toBe(own);
    expect(createReply(task('x'), 'TaskResponse', {}, { extensions: { nonce: 'n3' } }).extensions).toEqual({
      nonce: 'n3',
    });
    expect(createReply(task('x'), 'TaskResponse', {}).extensions).toBeUndefined();
  });

  it('carryTrace fills only what the envelope lacks', () => {
    const bare = carryTrace(createEnvelope({ ...task('y') }), request);
    expect(bare.trace_id).toBe('t-1');
    expect(bare.extensions).toEqual({ traceparent });
    const own = carryTrace(
      createEnvelope({ ...task('y'), trace_id: 'mine', extensions: { traceparent: 'mine', a: 1 } }),
      request,
    );
    expect(own.trace_id).toBe('mine');
    expect(own.extensions).toEqual({ traceparent: 'mine', a: 1 });
    expect(carryTrace(createEnvelope({ ...task('y') }), task('z')).extensions).toBeUndefined();
  });
});
