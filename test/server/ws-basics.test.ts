/**
 * WebSocket binding (asap-wire.md §5): lifecycle, routing, attach, framing, the errors of §3,
 * concurrency, backpressure and streaming, with a plain `ws` client against the demo agent.
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { type DedupeStore, MemoryDedupeStore } from '../../src/core/dedupe.js';
import type { Logger } from '../../src/core/logger.js';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { ASAPServer } from '../../src/server/server.js';
import {
  CLIENT_URN,
  cleanup,
  connect,
  DEMO_URN,
  type Json,
  rpcNotification,
  rpcRequest,
  sleep,
  startDemo,
  task,
  trackHttpServer,
  trackServer,
  uniqueKey,
  waitFor,
} from './ws-helpers.js';

afterEach(cleanup);

function recordingLogger(): Logger & { lines: { level: string; obj: object; msg?: string }[] } {
  const lines: { level: string; obj: object; msg?: string }[] = [];
  const at =
    (level: string) =>
    (obj: object, msg?: string): void => {
      lines.push({ level, obj, msg });
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

async function getJson(url: string): Promise<Json> {
  const res = await fetch(url, { headers: { connection: 'close' } });
  return res.json();
}

describe('lifecycle', () => {
  it('opens, answers a message, lists the connection and forgets it on close', async () => {
    const { server, wsUrl } = await startDemo();
    const before = Date.now();
    const peer = await connect(wsUrl);
    await waitFor(() => server.connections.length === 1, 'the connection to be listed');
    const [info] = server.connections;
    expect(info).toMatchObject({ remoteAddress: '127.0.0.1', agentUrn: undefined, inFlight: 0 });
    expect(info!.connectedAt).toBeInstanceOf(Date);
    expect(info!.connectedAt.getTime()).toBeGreaterThanOrEqual(before - 5);

    const env = task('echo', { hello: 'world' });
    const res = await peer.call(env, 'r1');
    expect(res).toMatchObject({ jsonrpc: '2.0', id: 'r1' });
    expect(res.result.envelope).toMatchObject({
      payload_type: 'TaskResponse',
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      correlation_id: env.id,
      payload: { status: 'completed', result: { echo: { hello: 'world' } } },
    });
    expect(server.connections[0]!.agentUrn).toBe(CLIENT_URN);

    expect(server.boundAddress).toEqual({
      host: '127.0.0.1',
      port: Number(new URL(wsUrl).port),
      url: `http://127.0.0.1:${new URL(wsUrl).port}`,
    });
    expect(await peer.close(1000)).toEqual({ code: 1000, reason: '' });
    await waitFor(() => server.connections.length === 0, 'the connection to be forgotten');
    expect(server.connectionsFor(CLIENT_URN)).toEqual([]);
  });

  it('logs a socket error (invalid UTF-8 in a text frame), closes that connection with 1007 and keeps serving', async () => {
    const logger = recordingLogger();
    const { server, wsUrl } = await startDemo({ logger });
    const bad = await connect(wsUrl);
    const good = await connect(wsUrl);
    await waitFor(() => server.connections.length === 2, 'two connections');
    bad.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
    expect((await bad.closed).code).toBe(1007);
    await waitFor(() => server.connections.length === 1, 'the broken connection to be dropped');
    expect(logger.lines.some((l) => l.msg === 'websocket error')).toBe(true);
    const res = await good.call(task('echo', { still: 'here' }));
    expect(res.result.envelope.payload.result.echo).toEqual({ still: 'here' });
  });
});

describe('routing', () => {
  it('upgrades only the websocket path: another path fails with 404, a query string is ignored', async () => {
    const { port } = await startDemo();
    await expect(connect(`ws://127.0.0.1:${port}/other`)).rejects.toMatchObject({ status: 404 });
    await expect(connect(`ws://127.0.0.1:${port}/asap`)).rejects.toMatchObject({ status: 404 });
    const peer = await connect(`ws://127.0.0.1:${port}/asap/ws?client=test`);
    const res = await peer.call(task('echo', { q: 1 }));
    expect(res.result.envelope.payload.status).toBe('completed');
  });

  it('serves a configured websocketPath, and the manifest endpoints.events follows it', async () => {
    const { url, port } = await startDemo({ websocketPath: '/custom/events' });
    await expect(connect(`ws://127.0.0.1:${port}/asap/ws`)).rejects.toMatchObject({ status: 404 });
    const peer = await connect(`ws://127.0.0.1:${port}/custom/events`);
    expect((await peer.call(task('echo', { p: 1 }))).result.envelope.payload.result.echo).toEqual({ p: 1 });
    const manifest = await getJson(`${url}/.well-known/asap/manifest.json`);
    expect(manifest.endpoints).toEqual({
      asap: `http://127.0.0.1:${port}/asap`,
      events: `ws://127.0.0.1:${port}/custom/events`,
    });
  });

  it('names the events endpoint with the scheme and host it is reached by', async () => {
    const server = trackServer(createDemoAgent({ websocketPath: '/ev' }));
    // Before listen, with no request to read a host from.
    expect(server.manifest().endpoints).toEqual({
      asap: 'http://localhost/asap',
      events: 'ws://localhost/ev',
    });
    expect(server.manifest({ scheme: 'https', host: 'agent.example:8443' }).endpoints).toEqual({
      asap: 'https://agent.example:8443/asap',
      events: 'wss://agent.example:8443/ev',
    });
    const { port } = await server.listen();
    expect(server.manifest().endpoints.events).toBe(`ws://127.0.0.1:${port}/ev`);
  });

  it('listens on IPv6 loopback and serves WebSocket there', async (ctx) => {
    const server = trackServer(createDemoAgent({ rateLimit: 0 }));
    const addr = await server.listen({ host: '::1', port: 0 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRNOTAVAIL' || err.code === 'EAFNOSUPPORT') ctx.skip();
      throw err;
    });
    expect(addr.url).toBe(`http://[::1]:${addr.port}`);
    expect(server.manifest().endpoints.events).toBe(`ws://[::1]:${addr.port}/asap/ws`);
    const peer = await connect(`ws://[::1]:${addr.port}/asap/ws`);
    expect((await peer.call(task('echo', { v6: true }))).result.envelope.payload.result.echo).toEqual({
      v6: true,
    });
    expect(server.connections[0]!.remoteAddress).toBe('::1');
  });

  it('with websocketPath false has no WebSocket endpoint and no events endpoint', async () => {
    const { server, url, port } = await startDemo({ websocketPath: false });
    await expect(connect(`ws://127.0.0.1:${port}/asap/ws`)).rejects.toBeInstanceOf(Error);
    const manifest = await getJson(`${url}/.well-known/asap/manifest.json`);
    expect(manifest.endpoints).toEqual({ asap: `http://127.0.0.1:${port}/asap` });
    expect(server.manifest().endpoints.events).toBeUndefined();
  });

  it('attach() keeps the user server own request and upgrade listeners for paths that are not ASAP', async () => {
    const http = trackHttpServer(
      createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('user-http');
      }),
    );
    const userWss = new WebSocketServer({ noServer: true });
    const userUpgrades: string[] = [];
    http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      userUpgrades.push(req.url ?? '');
      userWss.handleUpgrade(req, socket, head, (ws) => ws.send(`user-ws ${req.url}`));
    });
    const asap = trackServer(createDemoAgent({ rateLimit: 0 }));
    expect(asap.attach(http)).toBe(asap);
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const port = (http.address() as { port: number }).port;
    try {
      const peer = await connect(`ws://127.0.0.1:${port}/asap/ws`);
      expect((await peer.call(task('echo', { a: 1 }))).result.envelope.payload.result.echo).toEqual({ a: 1 });

      const other = await connect(`ws://127.0.0.1:${port}/user/socket`);
      await other.waitFor((f) => f.unparsable === 'user-ws /user/socket', 'the user server greeting');
      expect(userUpgrades).toEqual(['/user/socket']);

      const page = await fetch(`http://127.0.0.1:${port}/index.html`, { headers: { connection: 'close' } });
      expect(await page.text()).toBe('user-http');
      const manifest = await getJson(`http://127.0.0.1:${port}/.well-known/asap/manifest.json`);
      expect(manifest.endpoints.events).toBe(`ws://127.0.0.1:${port}/asap/ws`);

      // After close, the user's listeners get everything again and the HTTP server stays up.
      await asap.close();
      expect((await peer.closed).code).toBe(1001);
      expect(http.listening).toBe(true);
      const again = await connect(`ws://127.0.0.1:${port}/asap/ws`);
      await again.waitFor((f) => f.unparsable === 'user-ws /asap/ws', 'the user server to get /asap/ws');
      const after = await fetch(`http://127.0.0.1:${port}/.well-known/asap/manifest.json`, {
        headers: { connection: 'close' },
      });
      expect(await after.text()).toBe('user-http');
    } finally {
      await cleanup();
      await new Promise<void>((resolve) => userWss.close(() => resolve()));
    }
  });
});

describe('framing', () => {
  it('reads binary frames as UTF-8 JSON', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const env = task('echo', { text: 'héllo ✓' });
    peer.ws.send(Buffer.from(rpcRequest(env, 'bin-1'), 'utf8'), { binary: true });
    const res = await peer.response('bin-1');
    expect(res.result.envelope.payload.result.echo).toEqual({ text: 'héllo ✓' });
    expect(res.result.envelope.correlation_id).toBe(env.id);
  });

  it('reads binary frames whatever binaryType the server socket uses (arraybuffer, fragments)', async () => {
    const { server, wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    await peer.call(task('echo'), 'hello');
    const conn = server.connectionsFor(CLIENT_URN)[0]!;
    for (const binaryType of ['arraybuffer', 'fragments'] as const) {
      conn.socket.binaryType = binaryType;
      peer.ws.send(Buffer.from(rpcRequest(task('echo', { binaryType }), binaryType)), { binary: true });
      const res = await peer.response(binaryType);
      expect(res.result.envelope.payload.result.echo).toEqual({ binaryType });
    }
  });

  it('answers heartbeat pings (any spelling) with {"type":"pong"}; they never reach the dispatcher', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const pings = [
      '{"type":"ping"}',
      '{ "type" : "ping" }',
      '\n\t{"type":"ping"}\r\n',
      '{"type":"ping","seq":4}',
    ];
    for (const p of pings) peer.send(p);
    peer.ws.send(Buffer.from('{"type":"ping"}'), { binary: true });
    await waitFor(() => peer.raw.length >= 5, 'five pongs');
    // A last request proves nothing else was sent back for the pings (no error, no result).
    const res = await peer.call(task('echo', { after: 'pings' }), 'after');
    expect(res.id).toBe('after');
    expect(peer.raw.slice(0, 5)).toEqual(Array(5).fill('{"type":"pong"}'));
    expect(peer.raw).toHaveLength(6);
  });

  it('sends nothing back for a client pong', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    peer.send('{"type":"pong"}');
    peer.send(' {"type": "pong"} ');
    await peer.call(task('echo'), 'x');
    expect(peer.frames).toHaveLength(1);
    expect(peer.frames[0].id).toBe('x');
  });

  it('answers a batch with an array of the responses (notifications produce none)', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const a = task('echo', { n: 'a' });
    const b = task('echo', { n: 'b' });
    peer.send([
      { jsonrpc: '2.0', method: 'asap.send', params: { envelope: a }, id: 'ba' },
      { jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('echo', { n: 'note' }) } },
      { jsonrpc: '2.0', method: 'asap.send', params: { envelope: b }, id: 2 },
      { jsonrpc: '2.0', method: 'asap.nope', id: 'bad' },
    ]);
    const batch = await peer.waitFor((f) => Array.isArray(f), 'the batch answer');
    expect(batch).toHaveLength(3);
    const byId = new Map(batch.map((r: Json) => [r.id, r]));
    expect((byId.get('ba') as Json).result.envelope.correlation_id).toBe(a.id);
    expect((byId.get(2) as Json).result.envelope.payload.result.echo).toEqual({ n: 'b' });
    expect((byId.get('bad') as Json).error.code).toBe(-32601);

    // A batch of notifications only: nothing comes back. An empty batch: one -32600 with id null.
    peer.send([{ jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('echo') } }]);
    peer.send([]);
    const empty = await peer.waitFor((f) => f.error !== undefined, 'the empty batch error');
    expect(empty).toMatchObject({ id: null, error: { code: -32600 } });
    await peer.call(task('echo'), 'last');
    expect(peer.frames).toHaveLength(3);
  });
});

describe('errors of §3 over WebSocket', () => {
  it('answers each error with the right code and id, and the connection stays open after each', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const cases: { frame: string; id: string | number | null; code: number; check?: (e: Json) => void }[] = [
      { frame: 'this is not json', id: null, code: -32700 },
      { frame: '{"jsonrpc":"2.0","method":"asap.send"', id: null, code: -32700 },
      { frame: '{"jsonrpc":"1.0","method":"asap.send","params":{},"id":7}', id: 7, code: -32600 },
      { frame: '{"jsonrpc":"2.0","method":"asap.send","params":{},"id":{"x":1}}', id: null, code: -32600 },
      { frame: '42', id: null, code: -32600 },
      { frame: '{"jsonrpc":"2.0","method":5,"id":"m5"}', id: 'm5', code: -32600 },
      {
        frame: '{"jsonrpc":"2.0","method":"asap.nope","params":{},"id":"m1"}',
        id: 'm1',
        code: -32601,
        check: (e) => expect(e.data).toMatchObject({ method: 'asap.nope' }),
      },
      {
        frame: '{"jsonrpc":"2.0","method":"asap.send","params":{},"id":"p1"}',
        id: 'p1',
        code: -32602,
        check: (e) =>
          expect(e.data.validation_errors).toEqual([
            { loc: ['params', 'envelope'], msg: 'Field required', type: 'missing' },
          ]),
      },
      {
        frame: rpcRequest({ ...task('echo'), sender: 'not-a-urn' }, 'p2'),
        id: 'p2',
        code: -32602,
        check: (e) => {
          expect(e.data.validation_errors.length).toBeGreaterThan(0);
          expect(e.data.validation_errors.some((v: Json) => v.loc.includes('sender'))).toBe(true);
          for (const v of e.data.validation_errors)
            expect(Object.keys(v).sort()).toEqual(['loc', 'msg', 'type']);
        },
      },
      {
        frame: rpcRequest(
          createEnvelope({
            sender: CLIENT_URN,
            recipient: DEMO_URN,
            payload_type: 'StateQuery',
            payload: { task_id: 't1' },
          }),
          'h1',
        ),
        id: 'h1',
        code: -32012,
        check: (e) => expect(e.data).toMatchObject({ payload_type: 'StateQuery' }),
      },
      {
        frame: rpcRequest(task('fail', { message: 'boom' }), 'f1'),
        id: 'f1',
        code: -32603,
        check: (e) => {
          expect(e.message).toBe('boom');
          // §11: the taxonomy is all its data.
          expect(e.data).toEqual({ recoverable: false, asap_taxonomy_code: 'asap:rpc/remote_error' });
          expect(JSON.stringify(e)).not.toMatch(/\bat .*\.ts/);
        },
      },
    ];
    for (const c of cases) {
      const from = peer.frames.length;
      peer.send(c.frame);
      const reply = await peer.waitFor((f) => f.error !== undefined, `the error for ${c.frame}`, 5000, from);
      expect(reply.jsonrpc).toBe('2.0');
      expect(reply.id).toBe(c.id);
      expect(reply.error.code).toBe(c.code);
      expect(typeof reply.error.message).toBe('string');
      c.check?.(reply.error);
      expect(peer.isOpen).toBe(true);
    }
    const ok = await peer.call(task('echo', { survived: true }));
    expect(ok.result.envelope.payload.result.echo).toEqual({ survived: true });
    expect(peer.frames).toHaveLength(cases.length + 1);
  });

  it('a handler that throws does not affect concurrent requests on the same connection', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    peer.request(task('sleep', { ms: 60 }), 'slow');
    peer.request(task('fail', { message: 'handler exploded' }), 'fail');
    peer.request(task('echo', { v: 1 }), 'echo');
    peer.request(task('sleep', { ms: 10 }), 'fast');
    const [slow, fail, echo, fast] = await Promise.all(
      ['slow', 'fail', 'echo', 'fast'].map((id) => peer.response(id)),
    );
    expect(fail.error).toMatchObject({ code: -32603, message: 'handler exploded' });
    expect(slow.result.envelope.payload).toMatchObject({ status: 'completed', result: { echo: { ms: 60 } } });
    expect(echo.result.envelope.payload.result.echo).toEqual({ v: 1 });
    expect(fast.result.envelope.payload.status).toBe('completed');
    expect(peer.isOpen).toBe(true);
  });

  it('answers -32603 when dispatch itself fails (a shared dedupe store that is down), and keeps serving', async () => {
    const logger = recordingLogger();
    let down = true;
    const inner = new MemoryDedupeStore();
    const store: DedupeStore = {
      claim: (key, fp) => (down ? Promise.reject(new Error('store unreachable')) : inner.claim(key, fp)),
      complete: (key, outcome) => inner.complete(key, outcome),
      release: (key) => inner.release(key),
    };
    const { wsUrl } = await startDemo({ dedupe: store, logger });
    const peer = await connect(wsUrl);
    const res = await peer.call(task('echo'), 'd1');
    expect(res.error.code).toBe(-32603);
    expect(JSON.stringify(res.error)).not.toContain('store unreachable');
    expect(logger.lines.some((l) => l.level === 'error' && l.msg === 'internal error')).toBe(true);
    // A notification that fails the same way gets nothing back.
    peer.send(rpcNotification(task('echo')));
    const failures = () => logger.lines.filter((l) => l.msg === 'internal error').length;
    await waitFor(() => failures() === 2, 'the notification to fail');
    down = false;
    const ok = await peer.call(task('echo', { back: true }), 'd2');
    expect(ok.result.envelope.payload.result.echo).toEqual({ back: true });
    expect(peer.frames).toHaveLength(2);
  });
});

describe('concurrency', () => {
  it('answers 100 pipelined requests with random delays out of order, each matched by its id', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const sent = new Map<string, { envId: string; ms: number }>();
    for (let i = 0; i < 100; i++) {
      // The first waits longest and the second not at all, so arrival order cannot equal send order.
      const ms = i === 0 ? 50 : i === 1 ? 0 : Math.floor(Math.random() * 51);
      const env = task('sleep', { ms, i });
      const id = `p-${i}`;
      sent.set(id, { envId: env.id, ms });
      peer.request(env, id);
    }
    const answers = await peer.waitForCount((f) => f.id !== undefined, 100, 'answers', 10_000);
    expect(answers).toHaveLength(100);
    const ids = answers.map((a) => a.id);
    expect(new Set(ids).size).toBe(100);
    expect(ids).not.toEqual([...sent.keys()]);
    for (const a of answers) {
      const s = sent.get(a.id)!;
      expect(a.error).toBeUndefined();
      expect(a.result.envelope.correlation_id).toBe(s.envId);
      expect(a.result.envelope.payload.result.echo.ms).toBe(s.ms);
    }
    expect(ids.indexOf('p-1')).toBeLessThan(ids.indexOf('p-0'));
  });

  it('processes notifications without a reply', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const key = uniqueKey('notif');
    for (let i = 0; i < 5; i++) peer.send(rpcNotification(task('count', { key })));
    // Failing notifications get no error back either: an invalid envelope, an unknown method, a throwing handler.
    peer.send(rpcNotification({ ...task('count', { key }), recipient: 'bad' }));
    peer.send('{"jsonrpc":"2.0","method":"asap.unknown","params":{}}');
    peer.send(rpcNotification(task('fail')));
    peer.send('{"jsonrpc":"2.0","method":"asap.send"}');
    const res = await peer.call(task('count', { key }), 'count');
    expect(res.result.envelope.payload.result).toEqual({ key, count: 6 });
    await peer.call(task('echo'), 'last');
    expect(peer.frames.map((f) => f.id)).toEqual(['count', 'last']);
  });
});

describe('backpressure', () => {
  it('with maxInFlightPerConnection 4, answers all 20 requests sent at once without exceeding 4 in flight', async () => {
    const { server, wsUrl } = await startDemo({ maxInFlightPerConnection: 4 });
    const peer = await connect(wsUrl);
    await peer.call(task('echo'), 'warm-up');
    let maxInFlight = 0;
    let sawPaused = false;
    const sampler = setInterval(() => {
      for (const c of server.connections) maxInFlight = Math.max(maxInFlight, c.inFlight);
      if (server.connectionsFor(CLIENT_URN)[0]?.socket.isPaused) sawPaused = true;
    }, 1);
    try {
      for (let i = 0; i < 20; i++) peer.request(task('sleep', { ms: 25, i }), i);
      const answers = await peer.waitForCount((f) => typeof f.id === 'number', 20, 'answers', 10_000);
      expect(answers.every((a) => a.result?.envelope.payload.status === 'completed')).toBe(true);
      expect(new Set(answers.map((a) => a.id)).size).toBe(20);
    } finally {
      clearInterval(sampler);
    }
    expect(maxInFlight).toBeGreaterThanOrEqual(2);
    expect(maxInFlight).toBeLessThanOrEqual(4);
    expect(sawPaused).toBe(true);
    await waitFor(() => server.connections[0]!.inFlight === 0, 'in-flight to return to 0');
    expect(server.connectionsFor(CLIENT_URN)[0]!.socket.isPaused).toBe(false);
    // The connection reads again once slots free.
    expect((await peer.call(task('echo', { z: 1 }))).result.envelope.payload.result.echo).toEqual({ z: 1 });
  });
});

describe('send high-water mark', () => {
  it('holds a stream back while the client does not read, and delivers every chunk in order once it does', async () => {
    const server = trackServer(
      new ASAPServer({ manifest: { id: DEMO_URN }, rateLimit: 0, sendHighWaterMark: 64 * 1024 }),
    );
    const total = 400;
    const body = 'x'.repeat(64 * 1024);
    let produced = 0;
    server.skill('flood', async function* () {
      for (let i = 0; i < total; i++) {
        produced++;
        const last = i === total - 1;
        yield {
          chunk: `${i}:${body}`,
          progress: (i + 1) / total,
          final: last,
          status: last ? 'completed' : 'working',
        };
      }
    });
    const { port } = await server.listen();
    const peer = await connect(`ws://127.0.0.1:${port}/asap/ws`);
    peer.ws.pause();
    peer.request(task('flood'), 'flood');
    // Wait until the producer stalls: the socket buffers are full and the pump waits for them to drain.
    let seen = -1;
    while (produced === 0 || produced !== seen) {
      seen = produced;
      await sleep(150);
    }
    expect(produced).toBeLessThan(total);
    peer.ws.resume();
    await peer.response('flood', 20_000);
    const chunks = peer.frames.filter((f) => f.id === 'flood');
    expect(chunks).toHaveLength(total);
    expect(chunks.map((f) => Number(f.result.envelope.payload.chunk.split(':', 1)[0]))).toEqual([
      ...Array(total).keys(),
    ]);
    expect(produced).toBe(total);
  });
});

describe('streaming', () => {
  it('sends stream chunks in order, each a result frame with the request id, the last with final true', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const a = task('stream', { chunks: 5, interval_ms: 5 });
    const b = task('stream', { chunks: 3, interval_ms: 7 });
    peer.request(a, 'sa');
    peer.request(b, 'sb');
    await Promise.all([peer.response('sa'), peer.response('sb')]);
    for (const [id, env, n] of [
      ['sa', a, 5],
      ['sb', b, 3],
    ] as const) {
      const chunks = peer.frames.filter((f) => f.id === id);
      expect(chunks).toHaveLength(n);
      chunks.forEach((f, i) => {
        expect(f.result.envelope).toMatchObject({
          payload_type: 'TaskStream',
          correlation_id: env.id,
          sender: DEMO_URN,
          recipient: CLIENT_URN,
          payload: { chunk: `chunk-${i}`, progress: (i + 1) / n, final: i === n - 1 },
        });
      });
      expect(chunks[n - 1].result.envelope.payload.status).toBe('completed');
    }
  });

  it('a stream of zero chunks sends only the final frame', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const res = await peer.call(task('stream', { chunks: 0 }), 's0');
    expect(res.result.envelope.payload).toMatchObject({ chunk: '', final: true, status: 'completed' });
    expect(peer.frames).toHaveLength(1);
  });
});
