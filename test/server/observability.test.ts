/**
 * What an operator sees of a running server: its events (`connection`, `disconnect`, `error`),
 * the per-request log line, errors with their stack in the log and never on the wire, and the
 * liveness and readiness probes. Real sockets on 127.0.0.1, port 0.
 */
import { Gauge, Registry } from 'prom-client';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { DedupeStore } from '../../src/core/dedupe.js';
import type { Logger } from '../../src/core/logger.js';
import { ASAPError, ConnectionError } from '../../src/protocol/errors.js';
import type { ConnectionEvent, DisconnectEvent, ServerErrorContext } from '../../src/server/events.js';
import type { ASAPServer } from '../../src/server/server.js';
import { memoryStore, type ServerStore } from '../../src/server/store.js';
import {
  CLIENT_URN,
  cleanup,
  connect,
  type Json,
  rpcRequest,
  type Started,
  startDemo,
  task,
  trackServer,
  waitFor,
} from './ws-helpers.js';

afterEach(cleanup);

interface Line {
  level: 'debug' | 'info' | 'warn' | 'error';
  obj: Json;
  msg: string | undefined;
}

/** A logger that keeps every line; `levels` are those it says it logs. */
function captureLogger(levels: readonly string[] = ['debug', 'info', 'warn', 'error']) {
  const lines: Line[] = [];
  const at =
    (level: Line['level']) =>
    (obj: object, msg?: string): void => {
      lines.push({ level, obj, msg });
    };
  const logger: Logger = {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    isLevelEnabled: (l) => levels.includes(l),
  };
  return { lines, logger, named: (msg: string) => lines.filter((l) => l.msg === msg) };
}

/** The code and message of a wire error (its data is checked apart: it never holds a stack). */
function codeAndMessage(error: Json): { code: number; message: string } {
  expect(JSON.stringify(error.data ?? {})).not.toMatch(/stack|\bat /);
  return { code: error.code, message: error.message };
}

async function post(url: string, body: string): Promise<{ status: number; text: string; json: Json }> {
  const res = await fetch(`${url}/asap`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  const text = await res.text();
  return { status: res.status, text, json: JSON.parse(text) };
}

type Recorded =
  | { event: 'connection'; info: ConnectionEvent }
  | { event: 'disconnect'; info: DisconnectEvent }
  | { event: 'error'; error: Error; context: ServerErrorContext };

function record(server: ASAPServer): Recorded[] {
  const seen: Recorded[] = [];
  server.on('connection', (info) => seen.push({ event: 'connection', info }));
  server.on('disconnect', (info) => seen.push({ event: 'disconnect', info }));
  server.on('error', (error, context) => seen.push({ event: 'error', error, context }));
  return seen;
}

const errors = (seen: Recorded[]) =>
  seen.filter((r): r is Extract<Recorded, { event: 'error' }> => r.event === 'error');

describe('server events', () => {
  it('are typed: each listener gets its own event info', () => {
    const server = trackServer(createDemoAgent({}));
    server.on('connection', (info) => expectTypeOf(info).toEqualTypeOf<ConnectionEvent>());
    server.on('disconnect', (info) => expectTypeOf(info).toEqualTypeOf<DisconnectEvent>());
    server.on('error', (err, ctx) => {
      expectTypeOf(err).toEqualTypeOf<Error>();
      expectTypeOf(ctx).toEqualTypeOf<ServerErrorContext>();
    });
    // Payload types still register handlers.
    server.on('TaskCancel', (env) => {
      expectTypeOf(env.payload.task_id).toEqualTypeOf<string>();
      return undefined;
    });
    expect(server.listenerCount('connection')).toBe(1);
    expect(server.listenerCount('disconnect')).toBe(1);
    expect(server.listenerCount('error')).toBe(1);
    expect(server.registry.get('taskcancel')).toBeTypeOf('function');
  });

  it('connection and disconnect: id, transport, remote address, principal, agent, code and reason', async () => {
    const verifyToken = (t: string) => (t === 'alice' ? { id: 'alice', agents: [CLIENT_URN] } : null);
    const { server, wsUrl } = await startDemo({ verifyToken });
    const seen = record(server);
    const peer = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer alice' } });
    await waitFor(() => seen.length === 1, 'the connection event');
    const opened = seen[0] as Extract<Recorded, { event: 'connection' }>;
    const id = server.connections[0]!.id;
    expect(opened).toEqual({
      event: 'connection',
      info: {
        id,
        transport: 'websocket',
        remoteAddress: '127.0.0.1',
        principal: { id: 'alice', agents: [CLIENT_URN] },
        connection: opened.info.connection,
      },
    });
    expect(opened.info.connection.id).toBe(id);
    expect(server.connectionsFor(CLIENT_URN)).toEqual([]);
    expect((await peer.call(task('echo', { a: 1 }))).result.envelope.payload.status).toBe('completed');
    expect(server.connectionsFor(CLIENT_URN)).toEqual([opened.info.connection]);

    peer.ws.close(4000, 'bye');
    await waitFor(() => seen.length === 2, 'the disconnect event');
    expect(seen[1]).toEqual({
      event: 'disconnect',
      info: {
        id,
        transport: 'websocket',
        remoteAddress: '127.0.0.1',
        agentUrn: CLIENT_URN,
        code: 4000,
        reason: 'bye',
      },
    });
    expect(errors(seen)).toEqual([]);
  });

  it('disconnect on shutdown says 1001 Server shutting down; off() and once() stop listening', async () => {
    const { server, wsUrl } = await startDemo();
    const all: DisconnectEvent[] = [];
    const first: ConnectionEvent[] = [];
    const removed: ConnectionEvent[] = [];
    const gone = (info: ConnectionEvent) => removed.push(info);
    server.on('disconnect', (info) => all.push(info));
    server.once('connection', (info) => first.push(info));
    server.on('connection', gone).off('connection', gone);
    expect(server.listenerCount('connection')).toBe(1);
    await connect(wsUrl);
    await connect(wsUrl);
    await waitFor(() => server.connections.length === 2, 'two connections');
    expect(first).toHaveLength(1);
    expect(removed).toEqual([]);
    expect(server.listenerCount('connection')).toBe(0);
    await server.close();
    expect(all.map((d) => [d.code, d.reason, d.agentUrn])).toEqual([
      [1001, 'Server shutting down', undefined],
      [1001, 'Server shutting down', undefined],
    ]);
  });

  it('error: a handler failure, with its request (WebSocket and HTTP, trace id included)', async () => {
    const { server, url, wsUrl } = await startDemo();
    server.skill('throw-string', () => {
      throw 'plain string';
    });
    const seen = record(server);
    const peer = await connect(wsUrl);
    const env = task('fail', { message: 'boom' }, { trace_id: 'trace-ws-1' });
    expect(codeAndMessage((await peer.call(env)).error)).toEqual({ code: -32603, message: 'boom' });
    const viaHttp = task('fail', { message: 'boom over http' });
    expect(codeAndMessage((await post(url, rpcRequest(viaHttp, 1))).json.error)).toEqual({
      code: -32603,
      message: 'boom over http',
    });
    const str = task('throw-string');
    expect(codeAndMessage((await post(url, rpcRequest(str, 2))).json.error)).toEqual({
      code: -32603,
      message: 'plain string',
    });
    const errs = errors(seen);
    expect(errs.map((e) => e.context)).toEqual([
      {
        source: 'handler',
        transport: 'websocket',
        envelopeId: env.id,
        payloadType: 'TaskRequest',
        skill: 'fail',
        sender: CLIENT_URN,
        traceId: 'trace-ws-1',
      },
      {
        source: 'handler',
        transport: 'http',
        envelopeId: viaHttp.id,
        payloadType: 'TaskRequest',
        skill: 'fail',
        sender: CLIENT_URN,
        traceId: undefined,
      },
      {
        source: 'handler',
        transport: 'http',
        envelopeId: str.id,
        payloadType: 'TaskRequest',
        skill: 'throw-string',
        sender: CLIENT_URN,
        traceId: undefined,
      },
    ]);
    expect(errs[0]!.error).toBeInstanceOf(Error);
    expect(errs[0]!.error.message).toBe('boom');
    expect(errs[1]!.error.message).toBe('boom over http');
    expect(errs[2]!.error.message).toBe('plain string');
    expect(errs[2]!.error.cause).toBe('plain string');
  });

  it('error: not for an ASAPError a handler throws as its answer, but for a local one it let escape', async () => {
    const { server, wsUrl } = await startDemo();
    server.skill('lost-peer', () => {
      throw new ConnectionError('Connection closed (1006)');
    });
    const seen = record(server);
    const peer = await connect(wsUrl);
    const answer = await peer.call(task('sleep', { ms: -1 }));
    expect(answer.error.code).toBe(-32602);
    expect(errors(seen)).toEqual([]);
    const lost = await peer.call(task('lost-peer'));
    expect(codeAndMessage(lost.error)).toEqual({ code: -32603, message: 'Internal error' });
    expect(errors(seen).map((e) => [e.error, e.context.skill])).toEqual([
      [expect.any(ConnectionError), 'lost-peer'],
    ]);
  });

  it('error: an engine failure around a request carries the error_id the caller got (both bindings)', async () => {
    let refuse = false;
    const broken: DedupeStore = {
      claim: () => {
        if (refuse) throw ASAPError.resourceExhausted('Shared state unavailable; retry later');
        throw new Error('store down');
      },
      complete: () => {},
      release: () => {},
    };
    const { server, url, wsUrl } = await startDemo({ dedupe: broken });
    const seen = record(server);
    const res = await post(url, rpcRequest(task('echo'), 1));
    expect(res.status).toBe(500);
    const peer = await connect(wsUrl);
    const ws = await peer.call(task('echo'));
    const connId = server.connections[0]!.id;
    const errs = errors(seen);
    expect(errs.map((e) => [e.error.message, e.context])).toEqual([
      ['store down', { source: 'engine', transport: 'http', errorId: res.json.error.data.error_id }],
      [
        'store down',
        {
          source: 'engine',
          transport: 'websocket',
          connectionId: connId,
          remoteAddress: '127.0.0.1',
          errorId: ws.error.data.error_id,
        },
      ],
    ]);
    // A refusal the store chose on purpose is an answer, not an error.
    refuse = true;
    expect((await post(url, rpcRequest(task('echo'), 2))).json.error.code).toBe(-32040);
    expect((await peer.call(task('echo'))).error.code).toBe(-32040);
    expect(errors(seen)).toHaveLength(2);
  });

  it('error: a socket failure (an oversized frame), with its connection', async () => {
    const { server, wsUrl } = await startDemo({ maxMessageBytes: 64 });
    const seen = record(server);
    const peer = await connect(wsUrl);
    await waitFor(() => server.connections.length === 1, 'the connection');
    const id = server.connections[0]!.id;
    peer.send('x'.repeat(100));
    expect((await peer.closed).code).toBe(1009);
    await waitFor(() => seen.some((r) => r.event === 'disconnect'), 'the disconnect');
    const errs = errors(seen);
    expect(errs.map((e) => [e.error.message, e.context])).toEqual([
      [
        'Max payload size exceeded',
        { source: 'socket', transport: 'websocket', connectionId: id, remoteAddress: '127.0.0.1' },
      ],
    ]);
  });

  it('error: a metrics scrape that fails', async () => {
    const registry = new Registry();
    let thrown: unknown = new Error('collector down');
    new Gauge({
      name: 'broken_gauge',
      help: 'fails to collect',
      registers: [registry],
      collect() {
        throw thrown;
      },
    });
    const log = captureLogger();
    const { server, url } = await startDemo({ metrics: { registry }, logger: log.logger });
    const seen = record(server);
    const res = await fetch(`${url}/asap/metrics`);
    expect(res.status).toBe(500);
    expect(await res.json()).toEqual({ error: 'Metrics unavailable' });
    expect(errors(seen).map((e) => [e.error.message, e.context])).toEqual([
      ['collector down', { source: 'engine', transport: 'http', errorId: undefined }],
    ]);
    thrown = 'collector string';
    expect((await fetch(`${url}/asap/metrics`)).status).toBe(500);
    expect(errors(seen).map((e) => e.error.message)).toEqual(['collector down', 'collector string']);
    const lines = log.named('metrics failed');
    expect(lines.map((l) => l.obj.err)).toEqual(['collector down', 'collector string']);
    expect(lines[0]!.obj.stack).toMatch(/^Error: collector down\n\s+at /);
    expect(lines[1]!.obj.stack).toBeUndefined();
  });

  it('a listener that throws is logged and reported as an error event; one of error is only logged', async () => {
    const log = captureLogger();
    const { server, wsUrl } = await startDemo({ logger: log.logger });
    const reported: [string, ServerErrorContext][] = [];
    server.on('connection', () => {
      throw new Error('listener bug');
    });
    server.on('error', (err, ctx) => {
      reported.push([err.message, ctx]);
      throw new Error('error listener bug');
    });
    await connect(wsUrl);
    await waitFor(() => reported.length === 1, 'the listener error');
    expect(reported).toEqual([['listener bug', { source: 'listener', event: 'connection' }]]);
    const lines = log.named('server event listener failed');
    expect(lines.map((l) => [l.level, l.obj.event, l.obj.err])).toEqual([
      ['error', 'connection', 'listener bug'],
      ['error', 'error', 'error listener bug'],
    ]);
    expect(lines[0]!.obj.stack).toMatch(/^Error: listener bug\n\s+at /);
    // The server still serves.
    const peer = await connect(wsUrl);
    expect((await peer.call(task('echo', { ok: 1 }))).result.envelope.payload.result.echo).toEqual({ ok: 1 });
  });

  it('error with no listener does not crash: the request is answered and the server serves on', async () => {
    const { server, wsUrl } = await startDemo();
    expect(server.listenerCount('error')).toBe(0);
    const peer = await connect(wsUrl);
    expect(codeAndMessage((await peer.call(task('fail', { message: 'nobody listens' }))).error)).toEqual({
      code: -32603,
      message: 'nobody listens',
    });
    peer.send('x'.repeat(11 * 1024 * 1024));
    expect((await peer.closed).code).toBe(1009);
    const again = await connect(wsUrl);
    expect((await again.call(task('echo'))).result.envelope.payload.status).toBe('completed');
  });
});

describe('request log', () => {
  it('one info line per finished request: payload type, skill, sender, trace id, outcome, code, ms, transport', async () => {
    const log = captureLogger();
    const { url, wsUrl } = await startDemo({ logger: log.logger });
    const peer = await connect(wsUrl);
    const ok = task('echo', { a: 1 }, { trace_id: 'trace-1' });
    await peer.call(ok);
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const failed = task('fail', { message: 'nope' }, { extensions: { traceparent } });
    await post(url, rpcRequest(failed, 1));
    const lines = log.named('request finished');
    expect(lines.map((l) => l.level)).toEqual(['info', 'info']);
    expect(lines.map((l) => l.obj)).toEqual([
      {
        payload_type: 'TaskRequest',
        skill: 'echo',
        sender: CLIENT_URN,
        envelope_id: ok.id,
        trace_id: 'trace-1',
        transport: 'websocket',
        outcome: 'ok',
        error_code: undefined,
        ms: expect.any(Number),
      },
      {
        payload_type: 'TaskRequest',
        skill: 'fail',
        sender: CLIENT_URN,
        envelope_id: failed.id,
        trace_id: '0af7651916cd43dd8448eb211c80319c',
        transport: 'http',
        outcome: 'error',
        error_code: -32603,
        ms: expect.any(Number),
      },
    ]);
    for (const l of lines) {
      expect(l.obj.ms).toBeGreaterThanOrEqual(0);
      expect(Math.round(l.obj.ms * 100) / 100).toBe(l.obj.ms);
    }
  });

  it('requestLog: false turns it off, and so does a logger below info: no hook then', async () => {
    const off = captureLogger();
    const a = await startDemo({ logger: off.logger, requestLog: false });
    await post(a.url, rpcRequest(task('echo'), 1));
    expect(off.named('request finished')).toEqual([]);
    expect(Object.keys(a.server.dispatcher.hooks ?? {})).toEqual(['handlerError']);

    const quiet = captureLogger(['warn', 'error']);
    const b = await startDemo({ logger: quiet.logger });
    await post(b.url, rpcRequest(task('echo'), 1));
    expect(quiet.named('request finished')).toEqual([]);
    expect(Object.keys(b.server.dispatcher.hooks ?? {})).toEqual(['handlerError']);
  });

  it('a logger without a level check gets the line', async () => {
    const lines: string[] = [];
    const noop = () => {};
    const logger: Logger = {
      debug: noop,
      warn: noop,
      error: noop,
      info: (_o, msg) => lines.push(String(msg)),
    };
    const { url } = await startDemo({ logger });
    await post(url, rpcRequest(task('echo'), 1));
    expect(lines.filter((m) => m === 'request finished')).toHaveLength(1);
  });
});

describe('errors: the stack in the log, never on the wire', () => {
  it('a handler error: its message on the wire (exposeHandlerErrors), its stack in the log', async () => {
    const log = captureLogger();
    const { url, wsUrl } = await startDemo({ logger: log.logger });
    const peer = await connect(wsUrl);
    await peer.call(task('fail', { message: 'boom' }));
    const raw = peer.raw.find((r) => r.includes('"error"'))!;
    const ws = JSON.parse(raw);
    expect(Object.keys(ws).sort()).toEqual(['error', 'id', 'jsonrpc']);
    expect(codeAndMessage(ws.error)).toEqual({ code: -32603, message: 'boom' });
    const http = await post(url, rpcRequest(task('fail', { message: 'boom' }), 7));
    expect(Object.keys(http.json).sort()).toEqual(['error', 'id', 'jsonrpc']);
    expect(codeAndMessage(http.json.error)).toEqual({ code: -32603, message: 'boom' });
    for (const text of [raw, http.text]) {
      expect(text).not.toContain('stack');
      expect(text).not.toMatch(/\bat \S+ \(/);
    }
    const lines = log.named('handler failed');
    expect(lines).toHaveLength(2);
    for (const l of lines) {
      expect(l.level).toBe('error');
      expect(l.obj.err).toBe('boom');
      expect(l.obj.stack).toMatch(/^Error: boom\n\s+at .*demo-agent\.ts/);
    }
  });

  it('a runtime error: Internal error with an error_id on the wire, the stack under that id in the log', async () => {
    const log = captureLogger();
    const { server, url } = await startDemo({ logger: log.logger });
    server.skill('crash', (env) => {
      const missing = (env.payload.input as Json).nothing;
      return missing.deeper;
    });
    const res = await post(url, rpcRequest(task('crash'), 1));
    expect(codeAndMessage(res.json.error)).toEqual({ code: -32603, message: 'Internal error' });
    expect(res.json.error.data.error_id).toMatch(/^\w{26}$/);
    expect(res.text).not.toContain('TypeError');
    expect(res.text).not.toContain('deeper');
    const [line] = log.named('internal error');
    expect(line!.obj.error_id).toBe(res.json.error.data.error_id);
    expect(line!.obj.stack).toMatch(
      /^TypeError: Cannot read properties of undefined \(reading 'deeper'\)\n\s+at /,
    );
  });
});

describe('GET /healthz and /readyz', () => {
  async function probe(s: Started, path: string, method = 'GET') {
    const res = await fetch(`${s.url}${path}`, { method });
    return {
      status: res.status,
      type: res.headers.get('content-type'),
      cache: res.headers.get('cache-control'),
      allow: res.headers.get('allow'),
      body: await res.text(),
    };
  }

  it('answer JSON with Cache-Control: no-store; HEAD without a body; other methods 405', async () => {
    const s = await startDemo();
    expect(await probe(s, '/healthz')).toEqual({
      status: 200,
      type: 'application/json',
      cache: 'no-store',
      allow: null,
      body: '{"status":"ok"}',
    });
    expect(await probe(s, '/readyz')).toEqual({
      status: 200,
      type: 'application/json',
      cache: 'no-store',
      allow: null,
      body: '{"status":"ready"}',
    });
    expect((await probe(s, '/healthz', 'HEAD')).body).toBe('');
    expect((await probe(s, '/readyz?verbose=1', 'HEAD')).status).toBe(200);
    const post = await probe(s, '/readyz', 'POST');
    expect([post.status, post.allow]).toEqual([405, 'GET, HEAD']);
  });

  it('readiness: 503 while draining (liveness stays 200), when marked unhealthy, when the store is unreachable', async () => {
    let down = false;
    const base = memoryStore();
    const store: ServerStore = {
      ...base,
      get available() {
        return !down;
      },
    };
    const s = await startDemo({ store });
    const ready = async () => {
      const r = await probe(s, '/readyz');
      return [r.status, JSON.parse(r.body)];
    };
    down = true;
    expect(await ready()).toEqual([503, { status: 'not_ready', reasons: ['store_unavailable'] }]);
    s.server.setHealthy(false);
    expect(await ready()).toEqual([
      503,
      { status: 'not_ready', reasons: ['store_unavailable', 'unhealthy'] },
    ]);
    down = false;
    expect(await ready()).toEqual([503, { status: 'not_ready', reasons: ['unhealthy'] }]);
    s.server.setHealthy(true);
    expect(await ready()).toEqual([200, { status: 'ready' }]);

    // A request in flight keeps the drain open: readiness says so, liveness does not.
    const peer = await connect(s.wsUrl);
    const sleeping = peer.call(task('sleep', { ms: 400 }));
    await waitFor(() => s.server.dispatcher.inFlight === 1, 'the sleep to start');
    const closing = s.server.close();
    expect(s.server.draining).toBe(true);
    expect(await ready()).toEqual([503, { status: 'not_ready', reasons: ['draining'] }]);
    expect((await probe(s, '/healthz')).status).toBe(200);
    expect((await sleeping).result.envelope.payload.status).toBe('completed');
    await closing;
  });

  it('probes: false leaves /healthz and /readyz to others', async () => {
    const s = await startDemo({ probes: false });
    expect((await probe(s, '/healthz')).status).toBe(404);
    expect((await probe(s, '/readyz')).status).toBe(404);
    expect((await probe(s, '/.well-known/asap/health')).status).toBe(200);
  });
});
