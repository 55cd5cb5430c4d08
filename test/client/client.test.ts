import { afterEach, describe, expect, it } from 'vitest';
import { ASAPClient, type ASAPClientOptions, ConnectionPool, transportFor } from '../../src/client/index.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import { ErrorCode, RequestTimeoutError } from '../../src/protocol/errors.js';
import type { TaskStream } from '../../src/protocol/payloads.js';
import {
  CLIENT_URN,
  cleanups,
  DEMO_URN,
  demo,
  type Json,
  rejection,
  runCleanups,
  waitFor,
} from './helpers.js';

afterEach(runCleanups);

function client(url: string, opts: ASAPClientOptions = {}): ASAPClient {
  const c = new ASAPClient(url, opts);
  cleanups.push(() => c.close());
  return c;
}

const payloadOf = (env: Envelope<object>): Json => env.payload;

describe('ASAPClient: transport choice', () => {
  it('picks the transport from the URL scheme, unless told otherwise', () => {
    expect(transportFor('ws://h/asap/ws')).toBe('websocket');
    expect(transportFor('wss://h/asap/ws')).toBe('websocket');
    expect(transportFor('http://h/asap')).toBe('http');
    expect(transportFor('https://h/asap')).toBe('http');
    expect(transportFor('ftp://h/asap', 'websocket')).toBe('websocket');
    expect(transportFor('ws://h/asap/ws', 'http')).toBe('http');
    expect(() => transportFor('ftp://h/asap')).toThrow(
      'Unsupported URL scheme ftp: (use http, https, ws or wss)',
    );
    expect(() => new ASAPClient('mailto:someone@example.com')).toThrow(/Unsupported URL scheme mailto:/);
  });

  it('sends the same way over ws:// and http://', async () => {
    const d = await demo();
    for (const [url, kind] of [
      [d.ws, 'websocket'],
      [d.rpc, 'http'],
    ] as const) {
      const c = client(url, { sender: CLIENT_URN, recipient: DEMO_URN });
      expect(c.kind).toBe(kind);
      const env = c.taskEnvelope('echo', { via: kind });
      const reply = await c.send(env);
      expect(reply.correlation_id).toBe(env.id);
      expect(payloadOf(reply)).toEqual({
        task_id: env.id,
        status: 'completed',
        result: { echo: { via: kind } },
      });
      const viaTask = await c.task('echo', { again: true });
      expect(payloadOf(viaTask).result).toEqual({ echo: { again: true } });
    }
  });

  it('uses WebSocket for an http:// URL when transport is websocket', async () => {
    const d = await demo();
    const c = client(`${d.base}/asap/ws`, { transport: 'websocket' });
    expect(c.kind).toBe('websocket');
    expect(payloadOf(await c.task('echo', { forced: true })).result).toEqual({ echo: { forced: true } });
    expect(d.server.connections).toHaveLength(1);
    expect(c.transport().state).toBe('open');
  });

  it('uses HTTP for an ws:// URL that the caller says is HTTP', () => {
    const c = client('ws://127.0.0.1:1/asap', { transport: 'http' });
    expect(c.kind).toBe('http');
    expect(() => c.transport()).toThrow('This client uses HTTP');
  });
});

describe('ASAPClient: tasks', () => {
  it('builds TaskRequest envelopes with sender, recipient, conversation, config and trace', () => {
    const c = client('ws://127.0.0.1:1/asap/ws');
    const env = c.taskEnvelope(
      'echo',
      { a: 1 },
      {
        conversationId: 'conv-9',
        config: { timeout_seconds: 5 },
        traceId: 'trace-9',
      },
    );
    expect(env).toMatchObject({
      sender: 'urn:asap:agent:client',
      recipient: 'urn:asap:agent:demo',
      payload_type: 'TaskRequest',
      trace_id: 'trace-9',
      payload: {
        conversation_id: 'conv-9',
        skill_id: 'echo',
        input: { a: 1 },
        config: { timeout_seconds: 5 },
      },
    });
    const plain = c.taskEnvelope('echo');
    expect(plain.payload.input).toEqual({});
    expect(plain.payload.conversation_id).toMatch(/^conv-/);
    expect(plain.payload.config).toBeUndefined();
    expect(plain.trace_id).toBeUndefined();
  });

  it('streams chunk by chunk over WebSocket and over HTTP (SSE, asap-wire.md §11)', async () => {
    const d = await demo();
    const ws = client(d.ws);
    const chunks: Envelope<TaskStream>[] = [];
    for await (const c of ws.stream(ws.taskEnvelope('stream', { chunks: 3 }))) chunks.push(c);
    expect(chunks.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2']);

    const http = client(d.rpc);
    const overHttp: Envelope<TaskStream>[] = [];
    for await (const c of http.stream(http.taskEnvelope('stream', { chunks: 3 }))) overHttp.push(c);
    expect(overHttp.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2']);
    expect(overHttp[2]?.payload).toMatchObject({ final: true, status: 'completed' });
  });

  it('reports remote errors and timeouts on both transports', async () => {
    const d = await demo();
    for (const url of [d.ws, d.rpc]) {
      const c = client(url);
      const err = await rejection(c.task('fail', { message: 'bad day' }));
      expect(err.code).toBe(ErrorCode.InternalError);
      expect(err.message).toBe('bad day');
      const unknown = await c.task('nope');
      expect(payloadOf(unknown).status).toBe('failed');
      const impatient = client(url, { requestTimeoutMs: 50, websocket: { timerResolutionMs: 10 } });
      expect(await rejection(impatient.task('sleep', { ms: 1000 }))).toBeInstanceOf(RequestTimeoutError);
    }
  });

  it('honours http.requestTimeoutMs when no top-level requestTimeoutMs is given', async () => {
    const d = await demo();
    const c = client(d.rpc, { http: { requestTimeoutMs: 50 } });
    expect(await rejection(c.task('sleep', { ms: 1000 }))).toBeInstanceOf(RequestTimeoutError);
  });

  it('delivers pushes to onMessage over WebSocket; over HTTP there are none', async () => {
    const d = await demo();
    const c = client(d.ws);
    const got: Envelope<object>[] = [];
    const off = c.onMessage((e) => got.push(e));
    const reply = await c.task('push', { count: 2 });
    expect(payloadOf(reply).result).toEqual({ pushed: 2 });
    expect(got.map((e) => payloadOf(e).progress.percent)).toEqual([50, 100]);
    off();
    await c.task('push', { count: 1 });
    expect(got).toHaveLength(2);

    const http = client(d.rpc);
    const none: Envelope<object>[] = [];
    http.onMessage((e) => none.push(e))();
    expect(payloadOf(await http.task('push', { count: 2 })).result).toEqual({ pushed: 0 });
    expect(none).toEqual([]);
  });

  it('sends the token on both transports', async () => {
    const d = await demo({ token: 'tok' });
    for (const url of [d.ws, d.rpc]) {
      const ok = client(url, { token: 'tok' });
      expect(payloadOf(await ok.task('echo')).status).toBe('completed');
      const wrong = client(url, { token: 'wrong', websocket: { reconnect: false } });
      expect((await rejection(wrong.task('echo'))).code).toBe(ErrorCode.Unauthorized);
    }
  });
});

describe('ASAPClient: discovery', () => {
  it('discovers and checks health from a ws:// client, over HTTP', async () => {
    const d = await demo();
    const c = client(d.ws);
    const manifest = await c.discover();
    expect(manifest.id).toBe(DEMO_URN);
    expect(manifest.endpoints.events).toBe(d.ws);
    expect((await c.health()).status).toBe('healthy');
    // Nothing was opened over WebSocket for this.
    expect(d.server.connections).toHaveLength(0);

    const http = client(d.rpc);
    expect((await http.discover()).id).toBe(DEMO_URN);
    expect((await http.health(d.base)).agent_id).toBe(DEMO_URN);
    expect((await c.discover(d.base)).id).toBe(DEMO_URN);
    expect((await c.health(d.ws)).status).toBe('healthy');
  });

  it('fromManifest(httpBase) gives a WebSocket client addressed to the agent', async () => {
    const d = await demo({ agentId: 'urn:asap:agent:other-demo' });
    const c = await ASAPClient.fromManifest(d.base);
    cleanups.push(() => c.close());
    expect(c.kind).toBe('websocket');
    expect(c.url).toBe(d.ws);
    const env = c.taskEnvelope('echo', { from: 'manifest' });
    expect(env.recipient).toBe('urn:asap:agent:other-demo');
    const reply = await c.send(env);
    expect(payloadOf(reply).result).toEqual({ echo: { from: 'manifest' } });
    expect(reply.sender).toBe('urn:asap:agent:other-demo');
  });

  it('fromManifest falls back to HTTP when the agent has no WebSocket endpoint, and passes the token', async () => {
    const d = await demo({ websocketPath: false, token: 'mt' });
    const c = await ASAPClient.fromManifest(d.base, { token: 'mt', recipient: DEMO_URN });
    cleanups.push(() => c.close());
    expect(c.kind).toBe('http');
    expect(c.url).toBe(d.rpc);
    expect(c.taskEnvelope('echo').recipient).toBe(DEMO_URN);
    expect(payloadOf(await c.task('echo', { x: 1 })).result).toEqual({ echo: { x: 1 } });
  });
});

describe('ASAPClient: connections', () => {
  it('keeps one connection by default and closes it on close()', async () => {
    const d = await demo();
    const c = new ASAPClient(d.ws);
    await Promise.all(Array.from({ length: 20 }, (_, i) => c.task('echo', { i })));
    expect(d.server.connections).toHaveLength(1);
    const t = c.transport();
    await c.close();
    expect(t.state).toBe('closed');
    await waitFor(() => d.server.connections.length === 0, 'server side closed');
  });

  it('opens up to poolSize connections while they are busy', async () => {
    const d = await demo();
    const c = client(d.ws, { poolSize: 3 });
    await Promise.all(Array.from({ length: 6 }, () => c.task('sleep', { ms: 30 })));
    expect(d.server.connections).toHaveLength(3);
  });

  it('leaves a shared pool open on close()', async () => {
    const d = await demo();
    const pool = new ConnectionPool({ maxPerTarget: 1 });
    cleanups.push(() => pool.close());
    const a = new ASAPClient(d.ws, { pool });
    const b = new ASAPClient(d.ws, { pool });
    await a.task('echo');
    await b.task('echo');
    expect(a.transport()).toBe(b.transport());
    await a.close();
    expect(pool.size()).toBe(1);
    expect(payloadOf(await b.task('echo', { still: 'open' })).status).toBe('completed');
    await pool.close();
    expect(pool.size()).toBe(0);
    // An HTTP client has nothing to close.
    await new ASAPClient(d.rpc).close();
  });
});
