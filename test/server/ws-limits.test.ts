/**
 * WebSocket binding (asap-wire.md §5, §9): authentication, rate limit, size limit, connection cap,
 * malformed floods, dropped connections and handle leaks, heartbeat and stale connections, and
 * graceful shutdown.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { TokenVerifier } from '../../src/server/auth.js';
import { ASAPServer } from '../../src/server/server.js';
import {
  type CloseInfo,
  cleanup,
  connect,
  DEMO_URN,
  open,
  type Peer,
  rpcNotification,
  rpcRequest,
  sleep,
  startDemo,
  task,
  trackServer,
  uniqueKey,
  waitFor,
} from './ws-helpers.js';

afterEach(cleanup);

/** A server whose `whoami` skill returns the principal its auth check produced. */
async function whoamiServer(opts: { token?: string; verifyToken?: TokenVerifier }): Promise<string> {
  const server = trackServer(new ASAPServer({ manifest: { id: DEMO_URN }, rateLimit: 0, ...opts }));
  server.skill('whoami', (env, ctx) => ({
    task_id: env.id,
    status: 'completed',
    result: { principal: (ctx.principal as object | undefined) ?? null },
  }));
  const { port } = await server.listen();
  return `ws://127.0.0.1:${port}/asap/ws`;
}

const whoami = async (peer: Peer) =>
  (await peer.call(task('whoami'))).result.envelope.payload.result.principal;

describe('authentication', () => {
  it('accepts the token in the Authorization header', async () => {
    const url = await whoamiServer({ token: 's3cret' });
    const peer = await connect(url, undefined, { headers: { authorization: 'Bearer s3cret' } });
    expect(await whoami(peer)).toEqual({ id: 'static-token' });
  });

  it('accepts Sec-WebSocket-Protocol "asap.v1, asap.bearer.<token>" and selects asap.v1', async () => {
    const url = await whoamiServer({ token: 's3cret' });
    const peer = await connect(url, ['asap.v1', 'asap.bearer.s3cret']);
    expect(peer.ws.protocol).toBe('asap.v1');
    expect(await whoami(peer)).toEqual({ id: 'static-token' });
  });

  it('closes with 4401 "Authentication required" without a token and "Invalid token" with a wrong one', async () => {
    const url = await whoamiServer({ token: 's3cret' });
    const refusals: [Peer, CloseInfo][] = [
      [open(url), { code: 4401, reason: 'Authentication required' }],
      [
        open(url, undefined, { headers: { authorization: 'Basic czNjcmV0' } }),
        { code: 4401, reason: 'Authentication required' },
      ],
      [
        open(url, undefined, { headers: { authorization: 'Bearer nope' } }),
        { code: 4401, reason: 'Invalid token' },
      ],
      [open(url, ['asap.v1', 'asap.bearer.nope']), { code: 4401, reason: 'Invalid token' }],
      [
        open(url, undefined, { headers: { authorization: 'Bearer s3cre' } }),
        { code: 4401, reason: 'Invalid token' },
      ],
    ];
    for (const [peer, expected] of refusals) {
      expect(await peer.closed).toEqual(expected);
      expect(peer.frames).toEqual([]);
    }
  });

  it('a request sent while the token is checked is not lost, and a refused one never runs', async () => {
    const key = uniqueKey('auth');
    const checks: string[] = [];
    const verifyToken: TokenVerifier = async (token) => {
      checks.push(token);
      await sleep(30);
      return token === 'good' ? { user: 'ada' } : null;
    };
    const url = await whoamiServer({ verifyToken });
    const ok = await connect(url, undefined, { headers: { authorization: 'Bearer good' } });
    ok.send(rpcRequest(task('whoami'), 'early'));
    const res = await ok.response('early');
    expect(res.result.envelope.payload.result.principal).toEqual({ user: 'ada' });

    const refused = await connect(url, undefined, { headers: { authorization: 'Bearer bad' } });
    refused.send(rpcRequest(task('count', { key }), 'never'));
    expect(await refused.closed).toEqual({ code: 4401, reason: 'Invalid token' });
    expect(refused.frames).toEqual([]);
    expect(checks).toEqual(['good', 'bad']);
  });

  it('takes a principal from a sync verifier; null and a throwing verifier refuse', async () => {
    const verifyToken: TokenVerifier = (token) => {
      if (token === 'explode') throw new Error('verifier down');
      return token.startsWith('user-') ? { user: token.slice(5) } : null;
    };
    const url = await whoamiServer({ verifyToken });
    const peer = await connect(url, undefined, { headers: { authorization: 'Bearer user-bob' } });
    expect(await whoami(peer)).toEqual({ user: 'bob' });
    const viaProtocol = await connect(url, ['asap.v1', 'asap.bearer.user-eve']);
    expect(await whoami(viaProtocol)).toEqual({ user: 'eve' });
    for (const token of ['other', 'explode']) {
      const refused = open(url, undefined, { headers: { authorization: `Bearer ${token}` } });
      expect(await refused.closed).toEqual({ code: 4401, reason: 'Invalid token' });
    }
  });

  it('an async verifier resolving undefined refuses', async () => {
    const url = await whoamiServer({ verifyToken: async () => undefined });
    const refused = open(url, undefined, { headers: { authorization: 'Bearer any' } });
    expect(await refused.closed).toEqual({ code: 4401, reason: 'Invalid token' });
  });

  it('selects another offered subprotocol, never echoes a bearer entry', async () => {
    const { wsUrl } = await startDemo();
    const other = await connect(wsUrl, ['graphql-ws']);
    expect(other.ws.protocol).toBe('graphql-ws');
    const both = await connect(wsUrl, ['asap.bearer.tok', 'asap.v1']);
    expect(both.ws.protocol).toBe('asap.v1');
    // Only a bearer entry: the server selects none, and the client refuses the handshake.
    await expect(connect(wsUrl, ['asap.bearer.tok'])).rejects.toThrow(/subprotocol/i);
  });
});

describe('rate limit', () => {
  it('answers what fits the burst, then -32040 with the offending id, then closes 1008', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 5 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 20; i++) peer.request(task('echo', { i }), i);
    const close = await peer.closed;
    expect(close).toEqual({ code: 1008, reason: 'Rate limit exceeded' });
    const errors = peer.frames.filter((f) => f.error !== undefined);
    expect(errors).toHaveLength(1);
    const [err] = errors;
    expect(err.error).toMatchObject({
      code: -32040,
      message: 'Rate limit exceeded',
      data: { limit_per_second: 5 },
    });
    const offending = err.id as number;
    expect(offending).toBeGreaterThanOrEqual(5);
    expect(offending).toBeLessThan(20);
    // Every request accepted before the overflow is answered before the close; nothing after it runs.
    const answered = peer.frames.filter((f) => f.result !== undefined).map((f) => f.id);
    expect(answered.sort((a, b) => a - b)).toEqual([...Array(offending).keys()]);
  });

  it('answers accepted requests still in flight or waiting for a slot before closing 1008', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 4, maxInFlightPerConnection: 2 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 8; i++) peer.request(task('sleep', { ms: 30, i }), i);
    expect(await peer.closed).toEqual({ code: 1008, reason: 'Rate limit exceeded' });
    const err = peer.frames.find((f) => f.error !== undefined);
    expect(err.error.code).toBe(-32040);
    const answered = peer.frames.filter((f) => f.result !== undefined).map((f) => f.id);
    expect(answered.sort((a, b) => a - b)).toEqual([...Array(err.id as number).keys()]);
    expect(answered.length).toBeGreaterThanOrEqual(4);
  });

  it('uses the offending frame id: an invalid request keeps its id, a batch gets null', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 1 });
    const a = await connect(wsUrl);
    a.send('{"jsonrpc":"2.0","method":"asap.nope","id":"first"}');
    a.send('{"jsonrpc":"1.0","method":"asap.send","id":9}');
    expect((await a.closed).code).toBe(1008);
    expect(a.frames.find((f) => f.error?.code === -32040).id).toBe(9);

    const b = await connect(wsUrl);
    // The first answer is awaited, so the overflow finds nothing in flight and closes at once.
    b.send('{"jsonrpc":"2.0","method":"asap.nope","id":"first"}');
    expect((await b.response('first')).error.code).toBe(-32601);
    b.send([{ jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('echo') }, id: 'in-batch' }]);
    expect((await b.closed).code).toBe(1008);
    expect(b.frames.find((f) => f.error?.code === -32040).id).toBeNull();
  });

  it('does not count heartbeats', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 3 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 20; i++) peer.send(i % 2 === 0 ? '{"type":"ping"}' : '{ "type": "ping" }');
    for (let i = 0; i < 10; i++) peer.send('{"type":"pong"}');
    for (let i = 0; i < 3; i++) peer.request(task('echo', { i }), i);
    const answers = await peer.waitForCount((f) => typeof f.id === 'number', 3, 'answers');
    expect(answers.every((a) => a.result !== undefined)).toBe(true);
    expect(peer.raw.filter((r) => r === '{"type":"pong"}')).toHaveLength(20);
    await sleep(20);
    expect(peer.isOpen).toBe(true);
  });

  it('defaults to 10 messages per second', async () => {
    const server = trackServer(createDemoAgent({}));
    const { port } = await server.listen();
    const peer = await connect(`ws://127.0.0.1:${port}/asap/ws`);
    for (let i = 0; i < 30; i++) peer.request(task('echo'), i);
    expect((await peer.closed).code).toBe(1008);
    const err = peer.frames.find((f) => f.error !== undefined);
    expect(err.error.data).toMatchObject({ limit_per_second: 10 });
  });

  it('rateLimit 0 turns it off', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 0 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 200; i++) peer.request(task('echo', { i }), i);
    const answers = await peer.waitForCount((f) => typeof f.id === 'number', 200, 'answers', 10_000);
    expect(answers.every((a) => a.result !== undefined)).toBe(true);
    expect(peer.isOpen).toBe(true);
  });
});

describe('size limit and connection cap', () => {
  it('closes with 1009 on a frame over maxMessageBytes; a frame under it is served', async () => {
    const { server, wsUrl } = await startDemo({ maxMessageBytes: 1024 });
    const peer = await connect(wsUrl);
    const small = await peer.call(task('echo', { pad: 'x'.repeat(500) }));
    expect(small.result.envelope.payload.result.echo.pad).toHaveLength(500);
    peer.send(rpcRequest(task('echo', { pad: randomBytes(1024).toString('hex') }), 'big'));
    expect((await peer.closed).code).toBe(1009);
    expect(peer.frames.filter((f) => f.id === 'big')).toEqual([]);
    await waitFor(() => server.connections.length === 0, 'the connection to be dropped');
  });

  it('maxConnections 2: a third connection is closed with 1013; a slot frees when one leaves', async () => {
    const { server, wsUrl } = await startDemo({ maxConnections: 2 });
    const a = await connect(wsUrl);
    const b = await connect(wsUrl);
    await waitFor(() => server.connections.length === 2, 'two connections');
    const third = open(wsUrl);
    expect(await third.closed).toEqual({ code: 1013, reason: 'Too many connections' });
    expect(server.connections).toHaveLength(2);
    expect((await a.call(task('echo', { a: 1 }))).result).toBeDefined();
    await b.close();
    await waitFor(() => server.connections.length === 1, 'b to leave');
    const c = await connect(wsUrl);
    expect((await c.call(task('echo', { c: 1 }))).result.envelope.payload.result.echo).toEqual({ c: 1 });
  });
});

describe('robustness', () => {
  it('answers each of 500 malformed frames and still serves a valid request', async () => {
    const { wsUrl } = await startDemo({ rateLimit: 0 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 500; i++) {
      if (i % 2 === 0) peer.send(`{"jsonrpc":"2.0", broken ${i}`);
      else peer.send(`{"jsonrpc":"2.0","id":${i}}`);
    }
    const errors = await peer.waitForCount((f) => f.error !== undefined, 500, 'error frames', 10_000);
    expect(errors).toHaveLength(500);
    const parse = errors.filter((e) => e.error.code === -32700);
    const invalid = errors.filter((e) => e.error.code === -32600);
    expect(parse).toHaveLength(250);
    expect(parse.every((e) => e.id === null)).toBe(true);
    expect(invalid.map((e) => e.id).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 250 }, (_, k) => 2 * k + 1),
    );
    const ok = await peer.call(task('echo', { alive: true }), 'alive');
    expect(ok.result.envelope.payload.result.echo).toEqual({ alive: true });
  });

  it('a connection dropped mid-request leaks nothing: no unhandled rejection, no handle left', async () => {
    const countResources = () => {
      const counts: Record<string, number> = { TCPSocketWrap: 0, TCPServerWrap: 0, Timeout: 0 };
      for (const r of process.getActiveResourcesInfo()) if (r in counts) counts[r]! += 1;
      return counts;
    };
    const turns = async () => {
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
    };
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown) => rejections.push(reason);
    process.on('unhandledRejection', onRejection);
    try {
      // Let timers the test runner armed at the start of the test fire first.
      await sleep(200);
      await turns();
      const baseline = countResources();
      const server = trackServer(
        createDemoAgent({ rateLimit: 0, heartbeatIntervalMs: 20, drainTimeoutMs: 1000 }),
      );
      const { port } = await server.listen();
      const peer = await connect(`ws://127.0.0.1:${port}/asap/ws`);
      peer.request(task('sleep', { ms: 100 }), 'cut');
      peer.request(task('stream', { chunks: 50, interval_ms: 5 }), 'cut-stream');
      await waitFor(() => server.connections[0]?.inFlight === 2, 'two requests in flight');
      peer.ws.terminate();
      await peer.closed;
      await waitFor(() => server.connections.length === 0, 'the server to forget the connection');
      await server.close();
      await turns();
      const after = countResources();
      expect(after).toEqual(baseline);
      expect(rejections).toEqual([]);
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });
});

/** A masked client text frame (mask key 0, so the payload goes as is), for raw-socket clients. */
function textFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  if (payload.length > 125) throw new Error('short frames only');
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

/** A WebSocket client on a raw TCP socket: it completes the handshake, then never answers anything. */
function deafClient(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(
        'GET /asap/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    socket.on('error', () => {});
    socket.once('data', (chunk) => {
      if (chunk.toString().startsWith('HTTP/1.1 101')) resolve(socket);
      else reject(new Error(`handshake failed: ${chunk.toString()}`));
    });
  });
}

describe('heartbeat and stale connections', () => {
  it('sends {"type":"ping"} every interval; a client that answers pongs stays open', async () => {
    const { wsUrl } = await startDemo({ heartbeatIntervalMs: 50 });
    const peer = await connect(wsUrl);
    peer.ws.on('message', (data: Buffer) => {
      if (data.toString() === '{"type":"ping"}') peer.send('{"type":"pong"}');
    });
    await waitFor(() => peer.raw.filter((r) => r === '{"type":"ping"}').length >= 6, 'six pings', 10_000);
    expect(peer.isOpen).toBe(true);
    expect(peer.closeInfo).toBeUndefined();
    expect(peer.raw.every((r) => r === '{"type":"ping"}')).toBe(true);
  });

  it('closes a client that never sends anything with 1001 "Stale connection" after 3 intervals', async () => {
    const { server, wsUrl } = await startDemo({ heartbeatIntervalMs: 50 });
    const opened = Date.now();
    const peer = await connect(wsUrl);
    expect(await peer.closed).toEqual({ code: 1001, reason: 'Stale connection' });
    expect(Date.now() - opened).toBeGreaterThanOrEqual(140);
    expect(peer.raw.filter((r) => r === '{"type":"ping"}').length).toBeGreaterThanOrEqual(1);
    await waitFor(() => server.connections.length === 0, 'the stale connection to be dropped');
  });

  it('counts protocol-level pongs and data frames as signs of life', async () => {
    const { wsUrl } = await startDemo({ heartbeatIntervalMs: 50 });
    const ponger = await connect(wsUrl);
    const pongs = setInterval(() => ponger.ws.pong(), 30);
    const talker = await connect(wsUrl);
    const talk = setInterval(() => talker.send('{"type":"ping"}'), 30);
    const silent = await connect(wsUrl);
    try {
      expect(await silent.closed).toEqual({ code: 1001, reason: 'Stale connection' });
      await sleep(200);
      expect(ponger.isOpen).toBe(true);
      expect(talker.isOpen).toBe(true);
    } finally {
      clearInterval(pongs);
      clearInterval(talk);
    }
  });

  it('terminates a rate-limited client that does not answer the close handshake', async () => {
    const { server, port } = await startDemo({ heartbeatIntervalMs: 30, rateLimit: 1 });
    const socket = await deafClient(port);
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(Buffer.concat([textFrame('not json'), textFrame('{"jsonrpc":"2.0","method":"x","id":5}')]));
    await closed;
    const bytes = Buffer.concat(received).toString('latin1');
    expect(bytes).toContain('"code":-32040');
    expect(bytes).toContain('Rate limit exceeded');
    await waitFor(() => server.connections.length === 0, 'the connection to be dropped');
  });

  it('terminates a stale client that does not answer the close handshake', async () => {
    const { server, port } = await startDemo({ heartbeatIntervalMs: 30 });
    const socket = await deafClient(port);
    await waitFor(() => server.connections.length === 1, 'the raw connection');
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.resume();
    await closed;
    await waitFor(() => server.connections.length === 0, 'the connection to be dropped');
    socket.destroy();
  });
});

describe('graceful shutdown (§9)', () => {
  it('answers every in-flight request before closing with 1001 "Server shutting down"', async () => {
    const { server, wsUrl } = await startDemo({ drainTimeoutMs: 5000 });
    const peer = await connect(wsUrl);
    for (let i = 0; i < 5; i++) peer.request(task('sleep', { ms: 200, i }), i);
    await waitFor(() => server.connections[0]?.inFlight === 5, 'five requests in flight');
    const closing = server.close();
    expect(server.close()).toBe(closing);
    expect(server.draining).toBe(true);
    const close = await peer.closed;
    expect(close).toEqual({ code: 1001, reason: 'Server shutting down' });
    const answers = peer.frames.filter((f) => typeof f.id === 'number');
    expect(answers).toHaveLength(5);
    expect(answers.every((a) => a.result?.envelope.payload.status === 'completed')).toBe(true);
    await closing;
    expect(server.connections).toEqual([]);
  });

  it('during the drain: a new WebSocket is closed with 1001, a new request gets -32040 with retry_after_ms', async () => {
    const key = uniqueKey('drain');
    const { server, wsUrl } = await startDemo({ drainTimeoutMs: 3000 });
    const peer = await connect(wsUrl);
    peer.request(task('sleep', { ms: 300 }), 'inflight');
    await waitFor(() => server.connections[0]?.inFlight === 1, 'the request in flight');
    const closing = server.close();

    const late = open(wsUrl);
    expect(await late.closed).toEqual({ code: 1001, reason: 'Server shutting down' });

    peer.send(rpcRequest(task('count', { key }), 'refused'));
    const refused = await peer.response('refused');
    expect(refused.error).toMatchObject({
      code: -32040,
      message: 'Server shutting down',
      data: { retry_after_ms: 3000 },
    });
    peer.send([
      { jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('count', { key }) }, id: 'b' },
    ]);
    const batch = await peer.waitFor((f) => f.id === null && f.error?.code === -32040, 'the batch refusal');
    expect(batch.error.data.retry_after_ms).toBe(3000);
    // Heartbeats are still answered while draining.
    peer.send('{"type":"ping"}');
    await peer.waitFor((f) => f.type === 'pong', 'the pong');

    const inflight = await peer.response('inflight');
    expect(inflight.result.envelope.payload.status).toBe('completed');
    expect((await peer.closed).code).toBe(1001);
    await closing;
  });

  it('closes at the drain deadline even when a handler runs longer', async () => {
    const { server, wsUrl } = await startDemo({ drainTimeoutMs: 100 });
    const peer = await connect(wsUrl);
    peer.request(task('sleep', { ms: 60_000 }), 'long');
    await waitFor(() => server.connections[0]?.inFlight === 1, 'the request in flight');
    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    expect((await peer.closed).code).toBe(1001);
    const answer = peer.frames.find((f) => f.id === 'long');
    expect(answer.error.code).toBe(-32040);
  });

  it('terminates a client that does not answer the shutdown close handshake', async () => {
    const { server, port } = await startDemo();
    const socket = await deafClient(port);
    socket.resume();
    await waitFor(() => server.connections.length === 1, 'the raw connection');
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await server.close();
    await closed;
    expect(server.connections).toEqual([]);
  });

  it('a begin() token released twice does not end the drain early', async () => {
    const { server, wsUrl } = await startDemo({ drainTimeoutMs: 5000 });
    const peer = await connect(wsUrl);
    peer.request(task('sleep', { ms: 150 }), 'work');
    await waitFor(() => server.connections[0]?.inFlight === 1, 'the request in flight');
    const done = server.drain.begin();
    done();
    done();
    await server.close();
    const answer = peer.frames.find((f) => f.id === 'work');
    expect(answer.result.envelope.payload.status).toBe('completed');
  });

  it('close() of a server that never listened resolves', async () => {
    const server = new ASAPServer({ manifest: { id: DEMO_URN } });
    expect(server.health()).toMatchObject({ status: 200, body: { status: 'healthy', version: '0.1.0' } });
    await expect(server.close()).resolves.toBeUndefined();
    expect(server.draining).toBe(true);
    expect(server.health()).toMatchObject({ status: 503, body: { status: 'unhealthy' } });
  });

  it('closes idle connections at once and leaves the HTTP listener closed', async () => {
    const { server, wsUrl, port } = await startDemo();
    const a = await connect(wsUrl);
    const b = await connect(wsUrl);
    await server.close();
    expect((await a.closed).code).toBe(1001);
    expect((await b.closed).code).toBe(1001);
    await expect(connect(`ws://127.0.0.1:${port}/asap/ws`)).rejects.toThrow();
  });

  it('a notification arriving during the drain gets no answer and the shutdown completes', async () => {
    const key = uniqueKey('drain-notif');
    const { server, wsUrl } = await startDemo({ drainTimeoutMs: 3000 });
    const peer = await connect(wsUrl);
    peer.request(task('sleep', { ms: 150 }), 'inflight');
    await waitFor(() => server.connections[0]?.inFlight === 1, 'the request in flight');
    const closing = server.close();
    peer.send(rpcNotification(task('count', { key })));
    await peer.closed;
    await closing;
    expect(peer.frames.map((f) => f.id)).toEqual(['inflight']);
  });
});
