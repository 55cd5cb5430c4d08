/**
 * ASAPServer over real HTTP (asap-wire.md §4, §9): POST /asap, the manifest and
 * health endpoints, bearer auth, size and content-type limits, attaching to a
 * user's own node:http server, and graceful shutdown with a request in flight.
 */
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { DedupeStore } from '../../src/core/dedupe.js';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import { encodeBatch, encodeNotification, encodeRequest } from '../../src/protocol/jsonrpc.js';
import { validateHealth, validateManifest } from '../../src/protocol/manifest.js';
import type { TaskRequest } from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';
import { bearerFromHeader, bearerFromProtocols, staticToken } from '../../src/server/auth.js';
import { buildManifest } from '../../src/server/manifest.js';
import { ASAPServer, type ASAPServerOptions } from '../../src/server/server.js';

const CLIENT = 'urn:asap:agent:http-test';
const DEMO = 'urn:asap:agent:demo';

const servers: ASAPServer[] = [];
const plainServers: Server[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await Promise.all(
    plainServers.splice(0).map(
      (s) =>
        new Promise<void>((resolve) => {
          s.closeAllConnections();
          s.close(() => resolve());
        }),
    ),
  );
});

interface RpcAnswer {
  jsonrpc: '2.0';
  id: string | number | null;
  result?: { envelope: Envelope<JsonObject> };
  error?: { code: number; message: string; data?: JsonObject };
}

async function startDemo(
  opts: Parameters<typeof createDemoAgent>[0] = {},
): Promise<{ server: ASAPServer; url: string }> {
  const server = createDemoAgent({ logger: undefined, ...opts });
  servers.push(server);
  const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, url };
}

async function startServer(
  opts: Partial<ASAPServerOptions> = {},
): Promise<{ server: ASAPServer; url: string }> {
  const server = new ASAPServer({ manifest: { id: 'urn:asap:agent:hello' }, ...opts });
  servers.push(server);
  const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, url };
}

function task(skill: string, input: JsonObject = {}, recipient = DEMO): Envelope<TaskRequest> {
  return createEnvelope({
    sender: CLIENT,
    recipient,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-http', skill_id: skill, input },
  });
}

function post(url: string, body: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${url}/asap`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  });
}

async function rpc(url: string, env: unknown, id: string | number = 1, headers: Record<string, string> = {}) {
  const res = await post(url, encodeRequest('asap.send', { envelope: env }, id), headers);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('application/json');
  return (await res.json()) as RpcAnswer;
}

function resultPayload(a: RpcAnswer): JsonObject {
  expect(a.error, JSON.stringify(a)).toBeUndefined();
  return a.result!.envelope.payload;
}

/** A request through node:http, so headers fetch will not send (Host) can be set. */
function rawRequest(
  url: string,
  opts: { method?: string; path: string; headers?: Record<string, string> },
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: u.hostname,
        port: u.port,
        method: opts.method ?? 'GET',
        path: opts.path,
        headers: opts.headers,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('POST /asap', () => {
  it('answers a single request with 200 and the JSON-RPC response', async () => {
    const { url } = await startDemo();
    const env = task('echo', { hello: 'world' });
    const a = await rpc(url, env, 'req-1');
    expect(a.id).toBe('req-1');
    expect(a.jsonrpc).toBe('2.0');
    const reply = a.result!.envelope;
    expect(reply.payload_type).toBe('TaskResponse');
    expect(reply.correlation_id).toBe(env.id);
    expect(reply.sender).toBe(DEMO);
    expect(reply.recipient).toBe(CLIENT);
    expect(reply.payload).toEqual({
      task_id: env.id,
      status: 'completed',
      result: { echo: { hello: 'world' } },
    });
  });

  it('ignores a query string on the route and accepts JSON content types with parameters or a +json suffix', async () => {
    const { url } = await startDemo();
    const body = encodeRequest('asap.send', { envelope: task('echo') }, 1);
    for (const ct of ['application/json; charset=utf-8', 'application/asap+json', 'APPLICATION/JSON']) {
      const res = await fetch(`${url}/asap?trace=1`, {
        method: 'POST',
        headers: { 'content-type': ct },
        body,
      });
      expect(res.status, ct).toBe(200);
      expect(((await res.json()) as RpcAnswer).result?.envelope.payload.status).toBe('completed');
    }
  });

  it('answers a batch with the responses of its requests only', async () => {
    const { url } = await startDemo();
    const key = `batch-${Date.now()}-${Math.random()}`;
    const body = encodeBatch([
      encodeRequest('asap.send', { envelope: task('echo', { n: 1 }) }, 1),
      encodeNotification('asap.send', { envelope: task('count', { key }) }),
      encodeRequest('asap.send', { envelope: task('echo', { n: 2 }) }, 'two'),
    ]);
    const res = await post(url, body);
    expect(res.status).toBe(200);
    const answers = (await res.json()) as RpcAnswer[];
    expect(answers.map((a) => a.id)).toEqual([1, 'two']);
    expect(answers.map((a) => (a.result!.envelope.payload.result as JsonObject).echo)).toEqual([
      { n: 1 },
      { n: 2 },
    ]);
    // The notification ran: the counter is at 1, so the next call sees 2.
    expect(resultPayload(await rpc(url, task('count', { key }))).result).toEqual({ key, count: 2 });
  });

  it('answers 204 with no body to a notification and to a batch of only notifications', async () => {
    const { url } = await startDemo();
    const key = `notif-${Date.now()}-${Math.random()}`;
    const one = await post(url, encodeNotification('asap.send', { envelope: task('count', { key }) }));
    expect(one.status).toBe(204);
    expect(await one.text()).toBe('');
    const batch = await post(
      url,
      encodeBatch([
        encodeNotification('asap.send', { envelope: task('count', { key }) }),
        encodeNotification('asap.send', { envelope: task('count', { key }) }),
      ]),
    );
    expect(batch.status).toBe(204);
    expect(await batch.text()).toBe('');
    expect(resultPayload(await rpc(url, task('count', { key }))).result).toEqual({ key, count: 4 });
  });

  it('answers 413 to a body over maxMessageBytes declared with content-length', async () => {
    const { url } = await startDemo({ maxMessageBytes: 1024 });
    const big = encodeRequest('asap.send', { envelope: task('echo', { pad: 'x'.repeat(64 * 1024) }) }, 1);
    const res = await post(url, big);
    expect(res.status).toBe(413);
    const a = (await res.json()) as RpcAnswer;
    expect(a.id).toBeNull();
    expect(a.error?.code).toBe(-32600);
    expect(a.error?.message).toContain('1024');
    // A body under the limit still passes.
    expect((await rpc(url, task('echo'))).result).toBeDefined();
  });

  it('answers 413 to a chunked body that grows over maxMessageBytes', async () => {
    const { url } = await startDemo({ maxMessageBytes: 1024 });
    const chunk = new TextEncoder().encode('y'.repeat(400));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 50) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as RpcAnswer).error?.code).toBe(-32600);
  });

  it('reads a chunked body under the limit', async () => {
    const { url } = await startDemo();
    const text = encodeRequest('asap.send', { envelope: task('echo', { chunked: true }) }, 'c');
    const parts = [text.slice(0, 10), text.slice(10, 50), text.slice(50)].map((p) =>
      new TextEncoder().encode(p),
    );
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const p = parts.shift();
        if (p) controller.enqueue(p);
        else controller.close();
      },
    });
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(200);
    expect(((await res.json()) as RpcAnswer).result?.envelope.payload.result).toEqual({
      echo: { chunked: true },
    });
  });

  it('answers 415 to a non-JSON content type, or none', async () => {
    const { url } = await startDemo();
    const body = encodeRequest('asap.send', { envelope: task('echo') }, 1);
    const res = await post(url, body, { 'content-type': 'text/plain' });
    expect(res.status).toBe(415);
    expect(((await res.json()) as RpcAnswer).error?.code).toBe(-32600);
    const none = await fetch(`${url}/asap`, { method: 'POST', body: new TextEncoder().encode(body) });
    expect(none.status).toBe(415);
    await none.text();
  });

  it('answers 405 to GET /asap', async () => {
    const { url } = await startDemo();
    const res = await fetch(`${url}/asap`);
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('POST');
    expect(((await res.json()) as RpcAnswer).error?.code).toBe(-32600);
  });

  it('answers malformed JSON (and an empty body) with 200 and -32700, id null', async () => {
    const { url } = await startDemo();
    for (const body of ['{"jsonrpc":"2.0",', '']) {
      const res = await post(url, body);
      expect(res.status).toBe(200);
      const a = (await res.json()) as RpcAnswer;
      expect(a.id).toBeNull();
      expect(a.error?.code).toBe(-32700);
    }
  });

  it('refuses WebSocket heartbeat frames with -32600', async () => {
    const { url } = await startDemo();
    const res = await post(url, '{"type":"ping"}');
    expect(res.status).toBe(200);
    expect(((await res.json()) as RpcAnswer).error?.code).toBe(-32600);
  });

  it('answers 500 with -32603 when the dispatcher itself fails', async () => {
    const broken: DedupeStore = {
      claim: () => {
        throw new Error('store down');
      },
      complete: () => {},
      release: () => {},
    };
    const { url } = await startDemo({ dedupe: broken });
    const res = await post(url, encodeRequest('asap.send', { envelope: task('echo') }, 1));
    expect(res.status).toBe(500);
    const a = (await res.json()) as RpcAnswer;
    expect(a.error).toMatchObject({
      code: -32603,
      message: 'Internal error',
      data: { error_id: expect.any(String) },
    });
    expect(JSON.stringify(a)).not.toContain('store down');
  });

  it('forgets a request whose client went away mid-body', async () => {
    const { server, url } = await startDemo();
    const queueDepth = async () => {
      const h = (await (await fetch(`${url}/.well-known/asap/health`)).json()) as {
        load: { queue_depth: number };
      };
      return h.load.queue_depth;
    };
    const { port } = new URL(url);
    const socket = connect(Number(port), '127.0.0.1');
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(
      'POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"jsonrpc"',
    );
    await waitFor(async () => (await queueDepth()) === 1, 'the partial request to be counted');
    socket.destroy();
    await waitFor(async () => (await queueDepth()) === 0, 'the aborted request to be released');
    expect(server.draining).toBe(false);
  });

  it('makes ctx.push a harmless no-op over HTTP', async () => {
    const server = new ASAPServer({ manifest: { id: 'urn:asap:agent:hello' } });
    servers.push(server);
    server.skill('pusher', async (env, ctx) => {
      await ctx.push({
        payload_type: 'TaskUpdate',
        payload: { task_id: env.id, update_type: 'progress', status: 'working' },
      });
      return { task_id: env.id, status: 'completed', result: { pushed: true } };
    });
    const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
    const a = await rpc(url, task('pusher', {}, 'urn:asap:agent:hello'));
    expect(resultPayload(a).result).toEqual({ pushed: true });
  });

  it('deduplicates a repeated envelope id over HTTP', async () => {
    const { url } = await startDemo();
    const env = task('count', { key: `dedupe-${Date.now()}-${Math.random()}` });
    const a = await rpc(url, env, 1);
    const b = await rpc(url, env, 2);
    expect(b.id).toBe(2);
    expect(b.result).toEqual(a.result);
    expect((resultPayload(b).result as JsonObject).count).toBe(1);
  });
});

describe('bearer authentication', () => {
  it('with `token`: 401 + WWW-Authenticate: Bearer + -32004 without or with a wrong token', async () => {
    const { url } = await startDemo({ token: 's3cret' });
    const body = encodeRequest('asap.send', { envelope: task('echo') }, 1);
    for (const [headers, message] of [
      [{}, 'Authentication required'],
      [{ authorization: 'Basic czNjcmV0' }, 'Authentication required'],
      [{ authorization: 'Bearer wrong' }, 'Invalid token'],
      [{ authorization: 'Bearer s3cret-but-longer' }, 'Invalid token'],
    ] as const) {
      const res = await post(url, body, headers);
      expect(res.status, JSON.stringify(headers)).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer');
      const a = (await res.json()) as RpcAnswer;
      expect(a.id).toBeNull();
      expect(a.error).toMatchObject({ code: -32004, message });
    }
    const ok = await rpc(url, task('echo', { ok: 1 }), 1, { authorization: 'Bearer s3cret' });
    expect(resultPayload(ok).status).toBe('completed');
    const lower = await rpc(url, task('echo'), 2, { authorization: 'bearer s3cret' });
    expect(resultPayload(lower).status).toBe('completed');
  });

  it('keeps the manifest and health public, and lists bearer auth in the manifest', async () => {
    const { url } = await startDemo({ token: 's3cret' });
    const m = await fetch(`${url}/.well-known/asap/manifest.json`);
    expect(m.status).toBe(200);
    const manifest = (await m.json()) as { auth?: { schemes: string[] } };
    expect(manifest.auth).toEqual({ schemes: ['bearer'] });
    expect(validateManifest(manifest).ok).toBe(true);
    const h = await fetch(`${url}/.well-known/asap/health`);
    expect(h.status).toBe(200);
    await h.json();
  });

  it('with `verifyToken`: the principal reaches handlers; null or a throw refuses', async () => {
    const server = new ASAPServer({
      manifest: { id: 'urn:asap:agent:guarded' },
      verifyToken: async (token) => {
        if (token === 'boom') throw new Error('verifier crashed');
        return token === 'alice-token' ? { user: 'alice' } : null;
      },
    });
    servers.push(server);
    server.skill('whoami', (env, ctx) => ({
      task_id: env.id,
      status: 'completed',
      result: { principal: ctx.principal as JsonObject, transport: ctx.transport },
    }));
    const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
    const body = encodeRequest('asap.send', { envelope: task('whoami', {}, 'urn:asap:agent:guarded') }, 1);
    for (const token of ['bob-token', 'boom']) {
      const res = await post(url, body, { authorization: `Bearer ${token}` });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer');
      expect(((await res.json()) as RpcAnswer).error).toMatchObject({
        code: -32004,
        message: 'Invalid token',
      });
    }
    const ok = await rpc(url, task('whoami', {}, 'urn:asap:agent:guarded'), 1, {
      authorization: 'Bearer alice-token',
    });
    expect(resultPayload(ok).result).toEqual({ principal: { user: 'alice' }, transport: 'http' });
  });

  it('auth helpers: header and subprotocol parsing, constant-time static tokens', () => {
    expect(bearerFromHeader(undefined)).toBeUndefined();
    expect(bearerFromHeader('Bearer abc')).toBe('abc');
    expect(bearerFromHeader('BEARER   abc  ')).toBe('abc');
    expect(bearerFromHeader('Bearer a b')).toBeUndefined();
    expect(bearerFromHeader('Basic abc')).toBeUndefined();
    expect(bearerFromHeader('Bearer')).toBeUndefined();
    expect(bearerFromProtocols(undefined)).toBeUndefined();
    expect(bearerFromProtocols('asap.v1, asap.bearer.tok-1')).toBe('tok-1');
    expect(bearerFromProtocols('asap.bearer.')).toBeUndefined();
    expect(bearerFromProtocols('asap.v1')).toBeUndefined();
    const verify = staticToken('abc');
    expect(verify('abc')).toEqual({ id: 'static-token' });
    expect(verify('abd')).toBeNull();
    expect(verify('ab')).toBeNull();
  });
});

describe('GET /.well-known/asap/manifest.json', () => {
  it('serves a valid manifest with endpoints built from the listen address (not the Host header) and the skills listed', async () => {
    const { url } = await startDemo();
    const own = new URL(url).host;
    const res = await rawRequest(url, {
      path: '/.well-known/asap/manifest.json',
      headers: { host: 'agent.example:9000' },
    });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json');
    const manifest = JSON.parse(res.body);
    const v = validateManifest(manifest);
    expect(v.ok, JSON.stringify(v)).toBe(true);
    expect(manifest.id).toBe(DEMO);
    expect(manifest.endpoints).toEqual({ asap: `http://${own}/asap`, events: `ws://${own}/asap/ws` });
    expect(manifest.capabilities.streaming).toBe(true);
    expect(manifest.capabilities.asap_version).toBe('0.1');
    expect(manifest.supported_versions).toEqual(['0.1']);
    expect(manifest.auth).toBeUndefined();
    const skills = manifest.capabilities.skills as { id: string; description: string }[];
    expect(skills.map((s) => s.id).sort()).toEqual(['count', 'echo', 'fail', 'push', 'sleep', 'stream']);
    for (const s of skills) expect(s.description.length).toBeGreaterThan(0);
  });

  it('uses the bound address when the request has no Host header', async () => {
    const { url } = await startDemo();
    // HTTP/1.1 requires Host (node answers 400 without it), HTTP/1.0 does not.
    const socket = connect(Number(new URL(url).port), '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    await new Promise<void>((resolve, reject) => {
      socket.on('error', reject);
      socket.on('close', () => resolve());
      socket.write('GET /.well-known/asap/manifest.json HTTP/1.0\r\n\r\n');
    });
    const text = Buffer.concat(chunks).toString();
    expect(text.startsWith('HTTP/1.1 200')).toBe(true);
    const manifest = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    expect(manifest.endpoints.asap).toBe(`${url}/asap`);
  });

  it('follows websocketPath and rpcPath', async () => {
    const { url } = await startServer({ websocketPath: '/rt/socket', rpcPath: '/rpc' });
    const res = await fetch(`${url}/.well-known/asap/manifest.json`);
    const manifest = (await res.json()) as { endpoints: { asap: string; events?: string } };
    const host = new URL(url).host;
    expect(manifest.endpoints).toEqual({ asap: `http://${host}/rpc`, events: `ws://${host}/rt/socket` });
    // The JSON-RPC route moved with it.
    const a = await fetch(`${url}/rpc`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: encodeRequest('asap.send', { envelope: task('x', {}, 'urn:asap:agent:hello') }, 1),
    });
    expect(((await a.json()) as RpcAnswer).error?.code).toBe(-32012);
    expect((await fetch(`${url}/asap`, { method: 'POST' })).status).toBe(404);
  });

  it('has no events endpoint with websocketPath:false', async () => {
    const { url } = await startServer({ websocketPath: false });
    const manifest = (await (await fetch(`${url}/.well-known/asap/manifest.json`)).json()) as {
      endpoints: Record<string, string>;
      capabilities: { streaming: boolean };
    };
    expect(Object.keys(manifest.endpoints)).toEqual(['asap']);
    // Streams still go over SSE at POST /asap/stream (§11).
    expect(manifest.capabilities.streaming).toBe(true);
    expect(validateManifest(manifest).ok).toBe(true);
  });

  it('fills defaults from a minimal manifest init', async () => {
    const { url } = await startServer();
    const manifest = (await (await fetch(`${url}/.well-known/asap/manifest.json`)).json()) as JsonObject;
    expect(manifest).toMatchObject({
      id: 'urn:asap:agent:hello',
      name: 'hello',
      version: '0.1.0',
      description: 'ASAP agent',
      ttl_seconds: 300,
    });
    expect((manifest.capabilities as JsonObject).skills).toEqual([]);
  });

  it('answers 405 to other methods, and HEAD without a body', async () => {
    const { url } = await startDemo();
    const res = await fetch(`${url}/.well-known/asap/manifest.json`, { method: 'POST' });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
    await res.text();
    const head = await fetch(`${url}/.well-known/asap/manifest.json`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
  });

  it('buildManifest keeps an explicit auth, capabilities and ttl', () => {
    const m = buildManifest(
      {
        id: 'urn:asap:agent:x',
        name: 'X',
        version: '2.0.0',
        description: 'd',
        capabilities: { asap_version: '0.1', state_persistence: true },
        auth: { schemes: ['oauth2'], oauth2: { token_url: 'https://auth.example/token' } },
        ttl_seconds: 60,
      },
      [{ id: 's', description: 'S' }],
      { asap: 'https://x.example/asap' },
      true,
    );
    expect(m.auth).toEqual({ schemes: ['oauth2'], oauth2: { token_url: 'https://auth.example/token' } });
    expect(m.capabilities.state_persistence).toBe(true);
    expect(m.capabilities.streaming).toBe(true);
    expect(m.ttl_seconds).toBe(60);
    expect(m.endpoints).toEqual({ asap: 'https://x.example/asap' });
    expect(validateManifest(m).ok).toBe(true);
  });
});

describe('GET /.well-known/asap/health', () => {
  it('answers 200 healthy with the agent and its load', async () => {
    const { url } = await startDemo();
    const res = await fetch(`${url}/.well-known/asap/health`);
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const body = await res.json();
    expect(validateHealth(body).ok).toBe(true);
    expect(body).toMatchObject({
      status: 'healthy',
      agent_id: DEMO,
      version: '0.1.0',
      asap_version: '0.1',
      load: { active_tasks: 0, queue_depth: 0 },
    });
  });

  it('answers 503 unhealthy after setHealthy(false), 200 again after setHealthy(true)', async () => {
    const { server, url } = await startDemo();
    server.setHealthy(false);
    const res = await fetch(`${url}/.well-known/asap/health`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { status: string }).status).toBe('unhealthy');
    server.setHealthy(true);
    expect((await fetch(`${url}/.well-known/asap/health`)).status).toBe(200);
  });

  it('counts a running task in load.active_tasks', async () => {
    const { server, url } = await startDemo();
    const pending = rpc(url, task('sleep', { ms: 300 }));
    await waitFor(() => server.dispatcher.inFlight === 1, 'the sleep to start');
    const body = (await (await fetch(`${url}/.well-known/asap/health`)).json()) as {
      load: { active_tasks: number };
    };
    expect(body.load.active_tasks).toBe(1);
    expect(resultPayload(await pending).status).toBe('completed');
  });
});

describe('routing', () => {
  it('answers 404 to an unknown path', async () => {
    const { url } = await startDemo();
    const res = await fetch(`${url}/nope`);
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: 'Not found' });
  });

  it('attach(): serves ASAP routes on a user server, leaves its other routes to it, and restores it on close', async () => {
    const userListener = (req: { url?: string }, res: import('node:http').ServerResponse) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`user:${req.url}`);
    };
    const user = createServer(userListener);
    plainServers.push(user);
    await new Promise<void>((resolve) => user.listen(0, '127.0.0.1', () => resolve()));
    const url = `http://127.0.0.1:${(user.address() as AddressInfo).port}`;

    const asap = createDemoAgent({});
    servers.push(asap);
    expect(asap.attach(user)).toBe(asap);

    const hello = await fetch(`${url}/hello`);
    expect(await hello.text()).toBe('user:/hello');
    const manifest = (await (await fetch(`${url}/.well-known/asap/manifest.json`)).json()) as {
      endpoints: { asap: string };
    };
    expect(manifest.endpoints.asap).toBe(`${url}/asap`);
    expect(resultPayload(await rpc(url, task('echo', { via: 'attach' }))).result).toEqual({
      echo: { via: 'attach' },
    });

    await asap.close();
    // The user's server still listens, with its own listener back.
    expect(user.listening).toBe(true);
    expect(user.listeners('request')).toEqual([userListener]);
    const after = await fetch(`${url}/.well-known/asap/manifest.json`);
    expect(await after.text()).toBe('user:/.well-known/asap/manifest.json');
  });
});

describe('graceful shutdown (§9)', () => {
  it('finishes an in-flight request, refuses new ones with 503/-32040 and turns health 503 during the drain', async () => {
    const { server, url } = await startDemo({ drainTimeoutMs: 5000 });
    const inFlight = rpc(url, task('sleep', { ms: 1000 }), 'slow');
    await waitFor(() => server.dispatcher.inFlight === 1, 'the sleep to start');

    const closing = server.close();
    expect(server.draining).toBe(true);

    const health = await fetch(`${url}/.well-known/asap/health`);
    expect(health.status).toBe(503);
    expect(((await health.json()) as { status: string }).status).toBe('unhealthy');

    const refused = await post(url, encodeRequest('asap.send', { envelope: task('echo') }, 'late'));
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('5');
    const err = ((await refused.json()) as RpcAnswer).error;
    expect(err?.code).toBe(-32040);
    expect(err?.data).toMatchObject({ retry_after_ms: 5000 });

    const a = await inFlight;
    expect(a.id).toBe('slow');
    expect(resultPayload(a)).toMatchObject({ status: 'completed', result: { echo: { ms: 1000 } } });
    await closing;
    await expect(fetch(`${url}/.well-known/asap/health`)).rejects.toThrow();
  });

  it('close() is idempotent', async () => {
    const { server, url } = await startDemo();
    const first = server.close();
    const second = server.close();
    expect(second).toBe(first);
    await first;
    await server.close();
    await expect(fetch(`${url}/.well-known/asap/health`)).rejects.toThrow();
  });
});

describe('the demo agent over HTTP', () => {
  it('echo', async () => {
    const { url } = await startDemo();
    expect(resultPayload(await rpc(url, task('echo', { a: [1, 2] }))).result).toEqual({
      echo: { a: [1, 2] },
    });
  });

  it('sleep waits, then echoes; a bad input is -32602', async () => {
    const { url } = await startDemo();
    expect(resultPayload(await rpc(url, task('sleep', { ms: 20 })))).toMatchObject({
      status: 'completed',
      result: { echo: { ms: 20 } },
    });
    const bad = await rpc(url, task('sleep', { ms: -1 }));
    expect(bad.error?.code).toBe(-32602);
    expect(bad.error?.data?.validation_errors).toEqual([
      expect.objectContaining({ loc: ['payload', 'input', 'ms'] }),
    ]);
  });

  it('stream answers with the final chunk only', async () => {
    const { url } = await startDemo();
    const env = task('stream', { chunks: 3, interval_ms: 5 });
    const a = await rpc(url, env);
    const reply = a.result!.envelope;
    expect(reply.payload_type).toBe('TaskStream');
    expect(reply.correlation_id).toBe(env.id);
    expect(reply.payload).toEqual({ chunk: 'chunk-2', progress: 1, final: true, status: 'completed' });
    const empty = await rpc(url, task('stream', { chunks: 0 }));
    expect(empty.result!.envelope.payload).toMatchObject({ final: true, status: 'completed' });
  });

  it('push pushes nothing and reports pushed 0', async () => {
    const { url } = await startDemo();
    expect(resultPayload(await rpc(url, task('push', { count: 3 })))).toMatchObject({
      status: 'completed',
      result: { pushed: 0 },
    });
  });

  it('fail answers -32603 with the message, and the server keeps running', async () => {
    const { url } = await startDemo();
    const a = await rpc(url, task('fail', { message: 'planned failure' }));
    expect(a.error).toMatchObject({ code: -32603, message: 'planned failure' });
    const d = await rpc(url, task('fail', {}));
    expect(d.error).toMatchObject({ code: -32603, message: 'Task failed' });
    expect(resultPayload(await rpc(url, task('echo'))).status).toBe('completed');
  });

  it('count increments per key', async () => {
    const { url } = await startDemo();
    const key = `count-${Date.now()}-${Math.random()}`;
    expect(resultPayload(await rpc(url, task('count', { key }))).result).toEqual({ key, count: 1 });
    expect(resultPayload(await rpc(url, task('count', { key }))).result).toEqual({ key, count: 2 });
    expect(resultPayload(await rpc(url, task('count', { key: `${key}-other` }))).result).toEqual({
      key: `${key}-other`,
      count: 1,
    });
  });
});
