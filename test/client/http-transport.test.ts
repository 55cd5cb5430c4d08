import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { baseUrlOf, HttpTransport } from '../../src/client/index.js';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { ConnectionError, ErrorCode, ProtocolError, RequestTimeoutError } from '../../src/protocol/errors.js';
import {
  CLIENT_URN,
  cleanups,
  DEMO_URN,
  demo,
  type Json,
  rejection,
  responseTo,
  runCleanups,
  taskInit,
} from './helpers.js';

afterEach(runCleanups);

interface Tiny {
  url: string;
  requests: { method: string; url: string; headers: IncomingMessage['headers']; body: string }[];
}

/** A plain node:http server whose answers the test writes. */
async function tiny(
  handler: (req: IncomingMessage, body: string, res: ServerResponse) => void,
): Promise<Tiny> {
  const requests: Tiny['requests'] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      handler(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

describe('HttpTransport against the demo agent', () => {
  it('sends a request and returns the bound response', async () => {
    const d = await demo();
    const http = new HttpTransport(d.rpc);
    const env = createEnvelope(taskInit('echo', { over: 'http' }));
    const reply = await http.request(env);
    expect(reply.correlation_id).toBe(env.id);
    expect(reply.payload).toEqual({
      task_id: env.id,
      status: 'completed',
      result: { echo: { over: 'http' } },
    });
    // An init without id/timestamp is completed into an envelope.
    const second = await http.request(taskInit('echo', { n: 2 }));
    expect((second.payload as Json).result).toEqual({ echo: { n: 2 } });
    // Streams answer with the final chunk only over HTTP.
    const streamed = await http.request(taskInit('stream', { chunks: 3 }));
    expect(streamed.payload).toMatchObject({ chunk: 'chunk-2', final: true, status: 'completed' });
  });

  it('discovers the manifest and reads health', async () => {
    const d = await demo();
    const http = new HttpTransport(d.rpc);
    const manifest = await http.discover();
    expect(manifest.id).toBe(DEMO_URN);
    expect(manifest.endpoints.asap).toBe(d.rpc);
    expect(manifest.endpoints.events).toBe(d.ws);
    expect((manifest.capabilities.skills ?? []).map((s) => s.id).sort()).toEqual(
      ['count', 'echo', 'fail', 'push', 'sleep', 'stream'].sort(),
    );
    const health = await http.health(d.base);
    expect(health).toMatchObject({ status: 'healthy', agent_id: DEMO_URN, asap_version: '0.1' });

    // A 503 still returns the body: the agent is there, but unhealthy.
    d.server.setHealthy(false);
    expect((await http.health()).status).toBe('unhealthy');
  });

  it('rejects with the remote error', async () => {
    const d = await demo();
    const err = await rejection(new HttpTransport(d.rpc).request(taskInit('fail', { message: 'nope' })));
    expect(err.code).toBe(ErrorCode.InternalError);
    expect(err.message).toBe('nope');
    expect(err).not.toBeInstanceOf(ConnectionError);
  });

  it('sends the token as a bearer header; a wrong one gets -32004', async () => {
    const d = await demo({ token: 'http-token' });
    const ok = await new HttpTransport(d.rpc, { token: 'http-token' }).request(taskInit('echo', { a: 1 }));
    expect((ok.payload as Json).status).toBe('completed');
    const wrong = await rejection(new HttpTransport(d.rpc, { token: 'bad' }).request(taskInit('echo')));
    expect(wrong.code).toBe(ErrorCode.Unauthorized);
    const none = await rejection(new HttpTransport(d.rpc).request(taskInit('echo')));
    expect(none.code).toBe(ErrorCode.Unauthorized);
    // Discovery needs no token.
    expect((await new HttpTransport(d.rpc).discover()).id).toBe(DEMO_URN);
  });

  it('times out with RequestTimeoutError, and an abort signal rejects with ConnectionError', async () => {
    const d = await demo();
    const http = new HttpTransport(d.rpc, { requestTimeoutMs: 50 });
    const err = await rejection(http.request(taskInit('sleep', { ms: 1000 })));
    expect(err).toBeInstanceOf(RequestTimeoutError);
    expect(err.message).toMatch(/within 50 ms/);

    const perRequest = await rejection(
      new HttpTransport(d.rpc).request(taskInit('sleep', { ms: 1000 }), { timeoutMs: 40 }),
    );
    expect(perRequest).toBeInstanceOf(RequestTimeoutError);

    const ac = new AbortController();
    const aborted = new HttpTransport(d.rpc).request(taskInit('sleep', { ms: 1000 }), { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    const abortErr = await rejection(aborted);
    expect(abortErr).toBeInstanceOf(ConnectionError);
    expect(abortErr.message).toBe('Request aborted');
  });
});

describe('HttpTransport against misbehaving servers', () => {
  it('fails with ConnectionError when the connection is refused', async () => {
    const t = await tiny((_req, _body, res) => json(res, 200, {}));
    const url = t.url;
    await cleanups.pop()?.(); // close it: the port now refuses
    const err = await rejection(new HttpTransport(`${url}/asap`).request(taskInit('echo')));
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toMatch(
      /^Cannot reach http:\/\/127\.0\.0\.1:(\d+)\/asap: connect ECONNREFUSED 127\.0\.0\.1:\1$/,
    );
  });

  it('says what a fetch that failed without a cause said', async () => {
    const failing = new HttpTransport('http://127.0.0.1:1/asap', {
      fetch: () => Promise.reject(new TypeError('Failed to fetch')),
    });
    const err = await rejection(failing.request(taskInit('echo')));
    expect(err.message).toBe('Cannot reach http://127.0.0.1:1/asap: Failed to fetch');
  });

  it('rejects a response that does not bind to its request with ProtocolError', async () => {
    const t = await tiny((_req, body, res) => {
      const req = JSON.parse(body);
      json(res, 200, {
        jsonrpc: '2.0',
        result: { envelope: responseTo(req, { correlation_id: 'other' }) },
        id: req.id,
      });
    });
    const env = createEnvelope(taskInit('echo'));
    const err = await rejection(new HttpTransport(`${t.url}/asap`).request(env));
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.data).toEqual({ expected: env.id, received: 'other' });
  });

  it('rejects a body that is not JSON-RPC, and a result without an envelope, with ProtocolError', async () => {
    const bodies = [
      { status: 502, body: '<html>Bad gateway</html>' },
      { status: 200, body: '{"hello":"world"}' },
      { status: 200, body: '{"jsonrpc":"2.0","method":"asap.send","params":{},"id":1}' },
    ];
    const custom = createEnvelope({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'Custom',
      payload: {},
    });
    let next = 0;
    const t = await tiny((_req, body, res) => {
      const b = bodies[next++];
      if (b !== undefined) {
        res.writeHead(b.status, { 'content-type': 'text/plain' });
        res.end(b.body);
        return;
      }
      const { id } = JSON.parse(body);
      if (id === 5) json(res, 200, { jsonrpc: '2.0', result: null, id });
      else if (id === 6) json(res, 200, { jsonrpc: '2.0', result: { envelope: custom }, id });
      else json(res, 200, { jsonrpc: '2.0', result: { envelope: { id: 'x' } }, id });
    });
    const http = new HttpTransport(`${t.url}/asap`);
    const first = await rejection(http.request(taskInit('echo')));
    expect(first).toBeInstanceOf(ProtocolError);
    expect(first.message).toBe('Unexpected HTTP 502 response');
    expect(first.data).toEqual({ status: 502, body: '<html>Bad gateway</html>' });
    for (let i = 1; i < bodies.length; i++) {
      const err = await rejection(http.request(taskInit('echo')));
      expect(err).toBeInstanceOf(ProtocolError);
      expect(err.message).toBe('Unexpected HTTP 200 response');
    }
    const noEnvelope = await rejection(http.request(taskInit('echo')));
    expect(noEnvelope).toBeInstanceOf(ProtocolError);
    expect(noEnvelope.message).toBe('Response carries no valid envelope');
    const nullResult = await rejection(http.request(taskInit('echo')));
    expect(nullResult.message).toBe('Response carries no valid envelope');
    const env = createEnvelope(taskInit('echo'));
    const unbound = await rejection(http.request(env));
    expect(unbound).toBeInstanceOf(ProtocolError);
    expect(unbound.data).toEqual({ expected: env.id, received: null });
    // Ids are numbers, one per request.
    expect(t.requests.map((r) => JSON.parse(r.body).id)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('times out on a response whose body never completes', async () => {
    const t = await tiny((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"jsonrpc":"2.0",');
      // ...and nothing more
    });
    const err = await rejection(
      new HttpTransport(`${t.url}/asap`, { requestTimeoutMs: 80 }).request(taskInit('echo')),
    );
    expect(err).toBeInstanceOf(RequestTimeoutError);
  });

  it('sends the token, extra headers and content type; uses the fetch it is given', async () => {
    const t = await tiny((_req, body, res) => {
      if (body === '') {
        json(res, 200, {
          status: 'healthy',
          agent_id: DEMO_URN,
          version: '1.0.0',
          asap_version: '0.1',
          uptime_seconds: 1,
          load: { active_tasks: 0, queue_depth: 0 },
        });
        return;
      }
      const req = JSON.parse(body);
      json(res, 200, { jsonrpc: '2.0', result: { envelope: responseTo(req) }, id: req.id });
    });
    const seen: string[] = [];
    const http = new HttpTransport(`${t.url}/asap`, {
      token: 'tkn',
      headers: { 'x-trace': 'abc' },
      fetch: (input, init) => {
        seen.push(String(input));
        return fetch(input, init);
      },
    });
    await http.request(taskInit('echo'));
    await http.health();
    expect(seen).toEqual([`${t.url}/asap`, `${t.url}/.well-known/asap/health`]);
    const [post, get] = t.requests;
    expect(post).toMatchObject({ method: 'POST', url: '/asap' });
    expect(post?.headers).toMatchObject({
      authorization: 'Bearer tkn',
      'x-trace': 'abc',
      'content-type': 'application/json',
    });
    expect(JSON.parse(post?.body ?? '')).toMatchObject({ jsonrpc: '2.0', method: 'asap.send', id: 1 });
    expect(get).toMatchObject({ method: 'GET', url: '/.well-known/asap/health' });
    expect(get?.headers.authorization).toBe('Bearer tkn');
  });

  it('rejects a failed or invalid manifest and an invalid health body', async () => {
    const t = await tiny((req, _body, res) => {
      if (
        req.url === '/missing/.well-known/asap/manifest.json' ||
        req.url === '/.well-known/asap/manifest.json'
      ) {
        if (req.headers['x-case'] === '404') json(res, 404, { error: 'Not found' });
        else if (req.headers['x-case'] === 'html') {
          res.writeHead(200, { 'content-type': 'text/html' });
          res.end('<html></html>');
        } else json(res, 200, { id: 'not a urn' });
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('OK');
    });
    const notFound = await rejection(new HttpTransport(t.url, { headers: { 'x-case': '404' } }).discover());
    expect(notFound).toBeInstanceOf(ConnectionError);
    expect(notFound.message).toBe('Manifest request failed with HTTP 404');
    expect(notFound.data).toEqual({ status: 404 });

    const invalid = await rejection(new HttpTransport(t.url).discover());
    expect(invalid).toBeInstanceOf(ProtocolError);
    expect(invalid.message).toBe('Invalid manifest');

    const html = await rejection(new HttpTransport(t.url, { headers: { 'x-case': 'html' } }).discover());
    expect(html).toBeInstanceOf(ProtocolError);

    const health = await rejection(new HttpTransport(t.url).health());
    expect(health).toBeInstanceOf(ProtocolError);
    expect(health.message).toBe('Invalid health response (HTTP 200)');
  });
});

describe('baseUrlOf', () => {
  it('keeps scheme, host and port', () => {
    expect(baseUrlOf('http://127.0.0.1:8080/asap')).toBe('http://127.0.0.1:8080');
    expect(baseUrlOf('wss://agent.example/asap/ws?x=1')).toBe('wss://agent.example');
  });
});
