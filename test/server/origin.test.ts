/**
 * The Origin check of asap-wire.md §10 over real sockets on 127.0.0.1: a WebSocket upgrade or an
 * HTTP request to one of our routes (POST /asap, manifest, health, static files) that carries an
 * `Origin` is refused with 403 unless the origin is the server's own or allow-listed (`*` = any);
 * requests without `Origin` are untouched; CORS preflight is answered for allowed origins only; and
 * a loopback-bound server does not take a DNS-rebound name for its own origin.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { type AddressInfo, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeRequest } from '../../src/protocol/jsonrpc.js';
import { normalizeOrigin, OriginPolicy, type OriginPolicyOptions } from '../../src/server/origin.js';
import { ASAPServer } from '../../src/server/server.js';
import {
  cleanup,
  connect,
  DEMO_URN,
  type Json,
  startDemo,
  task,
  trackHttpServer,
  trackServer,
} from './ws-helpers.js';

afterEach(cleanup);

const tempDirs: string[] = [];
afterEach(() => {
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

interface RawRequest {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: string;
}

/** One HTTP request on a fresh connection, with full control over Host and Origin. */
function send(port: number, r: RawRequest): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: r.method ?? 'GET',
        path: r.path,
        headers: r.headers,
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end(r.body);
  });
}

const MANIFEST = '/.well-known/asap/manifest.json';
const HEALTH = '/.well-known/asap/health';

function rpcBody(id: number | string = 1): string {
  return encodeRequest('asap.send', { envelope: task('echo', { hi: 1 }) }, id);
}

function post(port: number, headers: Record<string, string> = {}): Promise<Reply> {
  return send(port, {
    method: 'POST',
    path: '/asap',
    headers: { 'content-type': 'application/json', ...headers },
    body: rpcBody(),
  });
}

function expectRefused(r: Reply): void {
  expect(r.status).toBe(403);
  expect(r.headers['access-control-allow-origin']).toBeUndefined();
  expect(r.headers.vary).toBe('Origin');
}

function expectCors(r: Reply, origin: string): void {
  expect(r.headers['access-control-allow-origin']).toBe(origin);
  expect(r.headers.vary).toBe('Origin');
  expect(r.headers['access-control-expose-headers']).toBe('asap-version');
}

/** The status of a WebSocket upgrade: 101 when it opened (then closed again), else the HTTP refusal. */
async function upgradeStatus(url: string, headers: Record<string, string>): Promise<number> {
  try {
    const peer = await connect(url, undefined, { headers });
    const reply = await peer.call(task('echo', { via: 'ws' }));
    expect(reply.result.envelope.payload.result).toEqual({ echo: { via: 'ws' } });
    await peer.close();
    return 101;
  } catch (err) {
    return (err as { status?: number }).status ?? -1;
  }
}

describe('WebSocket upgrade', () => {
  it('refuses a foreign origin with a plain HTTP 403 before upgrading, and opens no connection', async () => {
    const { server, port, wsUrl } = await startDemo();
    expect(await upgradeStatus(wsUrl, { origin: 'http://evil.example' })).toBe(403);
    expect(server.connections).toHaveLength(0);

    // The exact bytes on the wire, then the server closes the socket.
    const sock = tcpConnect(port, '127.0.0.1');
    let raw = '';
    sock.setEncoding('utf8').on('data', (d: string) => {
      raw += d;
    });
    const ended = new Promise<void>((resolve) => sock.on('close', () => resolve()));
    sock.write(
      'GET /asap/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
        'Origin: https://evil.example\r\n\r\n',
    );
    await ended;
    expect(raw).toBe('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    expect(server.connections).toHaveLength(0);
  });

  it('accepts its own origin (also under a loopback name) and a client that sends no Origin', async () => {
    const { port, wsUrl } = await startDemo();
    expect(await upgradeStatus(wsUrl, { origin: `http://127.0.0.1:${port}` })).toBe(101);
    expect(await upgradeStatus(wsUrl, { origin: `HTTP://127.0.0.1:${port}` })).toBe(101);
    expect(
      await upgradeStatus(wsUrl, { host: `localhost:${port}`, origin: `http://localhost:${port}` }),
    ).toBe(101);
    expect(await upgradeStatus(wsUrl, {})).toBe(101);
    // Same host, another port or scheme: another origin.
    expect(await upgradeStatus(wsUrl, { origin: `http://127.0.0.1:${port + 1}` })).toBe(403);
    expect(await upgradeStatus(wsUrl, { origin: `https://127.0.0.1:${port}` })).toBe(403);
  });

  it('accepts an allow-listed origin and still refuses the others; * accepts any', async () => {
    const listed = await startDemo({ allowOrigins: ['https://app.example/', 'http://b.example:8080'] });
    expect(await upgradeStatus(listed.wsUrl, { origin: 'https://app.example' })).toBe(101);
    expect(await upgradeStatus(listed.wsUrl, { origin: 'https://app.example:443' })).toBe(101);
    expect(await upgradeStatus(listed.wsUrl, { origin: 'http://b.example:8080' })).toBe(101);
    expect(await upgradeStatus(listed.wsUrl, { origin: 'http://b.example' })).toBe(403);
    expect(await upgradeStatus(listed.wsUrl, { origin: 'https://app.example.evil.example' })).toBe(403);

    const any = await startDemo({ allowOrigins: ['*'] });
    expect(await upgradeStatus(any.wsUrl, { origin: 'https://whatever.example' })).toBe(101);
    expect(await upgradeStatus(any.wsUrl, { origin: 'null' })).toBe(101);
  });

  it('DNS rebinding: on 127.0.0.1, Host and Origin evil.example:PORT is not its own origin', async () => {
    const { server, port, wsUrl } = await startDemo();
    const rebound = { host: `evil.example:${port}`, origin: `http://evil.example:${port}` };
    expect(await upgradeStatus(wsUrl, rebound)).toBe(403);
    expect(server.connections).toHaveLength(0);
    // A non-browser client with that Host (no Origin) is unaffected.
    expect(await upgradeStatus(wsUrl, { host: `evil.example:${port}` })).toBe(101);
    // The allow-list still applies.
    const listed = await startDemo({ allowOrigins: ['http://evil.example'] });
    expect(await upgradeStatus(listed.wsUrl, { host: 'evil.example', origin: 'http://evil.example' })).toBe(
      101,
    );
  });

  it('DNS rebinding is refused on a server bound to an IPv4-mapped loopback address too', async () => {
    const server = trackServer(new ASAPServer({ manifest: { id: DEMO_URN } }));
    const { port } = await server.listen({ host: '::ffff:127.0.0.1', port: 0 });
    const r = await send(port, {
      path: HEALTH,
      headers: { host: `evil.example:${port}`, origin: `http://evil.example:${port}` },
    });
    expectRefused(r);
    const own = await send(port, { path: HEALTH, headers: { origin: `http://127.0.0.1:${port}` } });
    expect(own.status).toBe(200);
  });
});

describe('HTTP routes', () => {
  it('refuse a foreign origin with 403 on POST /asap (JSON-RPC -32600, id null), manifest and health', async () => {
    const { server, port } = await startDemo();
    const origin = { origin: 'http://evil.example' };

    const rpc = await post(port, origin);
    expectRefused(rpc);
    expect(rpc.headers['content-type']).toBe('application/json');
    expect(JSON.parse(rpc.body)).toMatchObject({
      jsonrpc: '2.0',
      id: null,
      error: { code: -32600, message: 'Origin not allowed' },
    });
    for (const p of [MANIFEST, HEALTH]) {
      for (const method of ['GET', 'HEAD']) {
        const r = await send(port, { method, path: p, headers: origin });
        expectRefused(r);
        if (method === 'GET') expect(JSON.parse(r.body)).toEqual({ error: 'Origin not allowed' });
      }
    }
    // Nothing was dispatched, nothing is left in flight.
    expect(server.health().body.load).toEqual({ active_tasks: 0, queue_depth: 0 });
  });

  it('serve their own origin and no-Origin requests; CORS headers only go to requests with Origin', async () => {
    const { port } = await startDemo();
    const own = `http://127.0.0.1:${port}`;

    const rpc = await post(port, { origin: own });
    expect(rpc.status).toBe(200);
    expect(JSON.parse(rpc.body).result.envelope.payload.result).toEqual({ echo: { hi: 1 } });
    expectCors(rpc, own);
    const manifest = await send(port, { path: MANIFEST, headers: { origin: own } });
    expect(manifest.status).toBe(200);
    expectCors(manifest, own);

    for (const r of [await post(port), await send(port, { path: HEALTH })]) {
      expect(r.status).toBe(200);
      expect(r.headers['access-control-allow-origin']).toBeUndefined();
      expect(r.headers.vary).toBeUndefined();
    }
  });

  it('serve an allow-listed origin with CORS headers; * serves any origin', async () => {
    const listed = await startDemo({ allowOrigins: ['https://app.example'] });
    const ok = await post(listed.port, { origin: 'https://app.example' });
    expect(ok.status).toBe(200);
    expectCors(ok, 'https://app.example');
    expectRefused(await send(listed.port, { path: HEALTH, headers: { origin: 'https://other.example' } }));

    const any = await startDemo({ allowOrigins: ['*'] });
    const health = await send(any.port, { path: HEALTH, headers: { origin: 'https://whatever.example' } });
    expect(health.status).toBe(200);
    expectCors(health, 'https://whatever.example');
  });

  it('answer a CORS preflight with 204 for an allowed origin, 403 for a foreign one', async () => {
    const { port } = await startDemo({ allowOrigins: ['https://app.example'] });
    const preflight = (origin: string | undefined, p = '/asap') =>
      send(port, {
        method: 'OPTIONS',
        path: p,
        headers: {
          ...(origin === undefined ? {} : { origin }),
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'authorization, content-type',
        },
      });

    for (const [origin, p] of [
      ['https://app.example', '/asap'],
      ['https://app.example', HEALTH],
      [`http://127.0.0.1:${port}`, MANIFEST],
    ] as const) {
      const ok = await preflight(origin, p);
      expect(ok.status).toBe(204);
      expect(ok.body).toBe('');
      expect(ok.headers['access-control-allow-origin']).toBe(origin);
      expect(ok.headers.vary).toBe('Origin');
      expect(ok.headers['access-control-allow-methods']).toBe('POST, GET, HEAD, OPTIONS');
      expect(ok.headers['access-control-allow-headers']).toBe(
        'authorization, content-type, asap-version, traceparent',
      );
      expect(ok.headers['access-control-max-age']).toBe('600');
    }
    const foreign = await preflight('https://evil.example');
    expectRefused(foreign);
    expect(foreign.headers['access-control-allow-methods']).toBeUndefined();
    // OPTIONS without Origin is not a preflight: unchanged (405, POST only).
    expect((await preflight(undefined)).status).toBe(405);
  });

  it('DNS rebinding: on 127.0.0.1, Host and Origin evil.example:PORT is refused; without Origin it is served', async () => {
    const { port } = await startDemo();
    const host = `evil.example:${port}`;
    expectRefused(await post(port, { host, origin: `http://${host}` }));
    expectRefused(await send(port, { path: MANIFEST, headers: { host, origin: `http://${host}` } }));
    expect((await send(port, { path: MANIFEST, headers: { host } })).status).toBe(200);
    // Loopback names are fine: localhost, 127.x.x.x, *.localhost.
    for (const name of ['localhost', '127.0.0.2', 'app.localhost']) {
      const r = await send(port, {
        path: HEALTH,
        headers: { host: `${name}:${port}`, origin: `http://${name}:${port}` },
      });
      expect(r.status, name).toBe(200);
    }
  });

  it('refuse an Origin that is not a bare origin, and an HTTP/1.0 request without Host', async () => {
    const { port } = await startDemo();
    const own = `http://127.0.0.1:${port}`;
    for (const origin of [`${own}/`, `${own}/path`, `${own}, ${own}`, 'http://127.0.0.1:99999', 'null']) {
      expectRefused(await send(port, { path: HEALTH, headers: { origin } }));
    }
    // No Host header: no own origin to compare with.
    const sock = tcpConnect(port, '127.0.0.1');
    let raw = '';
    sock.setEncoding('utf8').on('data', (d: string) => {
      raw += d;
    });
    const closed = new Promise<void>((resolve) => sock.on('close', () => resolve()));
    sock.write(`GET ${HEALTH} HTTP/1.0\r\nOrigin: ${own}\r\n\r\n`);
    await closed;
    expect(raw).toMatch(/^HTTP\/1\.1 403 /);
  });

  it('static files: a foreign origin gets 403 for an existing file, a missing one stays 404; allowed origins get CORS', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'asap-origin-static-'));
    tempDirs.push(dir);
    writeFileSync(path.join(dir, 'index.html'), '<!doctype html><title>origin</title>');
    const { port } = await startDemo({ staticDir: dir, allowOrigins: ['https://app.example'] });

    const foreign = await send(port, { path: '/', headers: { origin: 'https://evil.example' } });
    expectRefused(foreign);
    expect(JSON.parse(foreign.body)).toEqual({ error: 'Origin not allowed' });
    const missing = await send(port, { path: '/nope.js', headers: { origin: 'https://evil.example' } });
    expect(missing.status).toBe(404);

    const allowed = await send(port, { path: '/', headers: { origin: 'https://app.example' } });
    expect(allowed.status).toBe(200);
    expect(allowed.body).toContain('<title>origin</title>');
    expectCors(allowed, 'https://app.example');
    const plain = await send(port, { path: '/' });
    expect(plain.status).toBe(200);
    expect(plain.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('over TLS (attach to an https server) its own origin is https://, and http:// is another origin', async () => {
    const tls = trackHttpServer(createHttpsServer({ key: TLS_KEY, cert: TLS_CERT }) as unknown as Server);
    const server = trackServer(new ASAPServer({ manifest: { id: DEMO_URN } }));
    server.attach(tls);
    await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
    const { port } = tls.address() as AddressInfo;
    const get = (origin: string, p = HEALTH) =>
      new Promise<Reply>((resolve, reject) => {
        const req = httpsRequest(
          { host: '127.0.0.1', port, path: p, headers: { origin }, ca: TLS_CERT, agent: false },
          (res) => {
            let body = '';
            res.setEncoding('utf8').on('data', (d: string) => {
              body += d;
            });
            res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
          },
        );
        req.on('error', reject);
        req.end();
      });
    const own = `https://127.0.0.1:${port}`;
    expect((await get(own)).status).toBe(200);
    expectRefused(await get(`http://127.0.0.1:${port}`));
    // The manifest served over TLS advertises https:// and wss:// endpoints.
    const manifest = await get(own, MANIFEST);
    expectCors(manifest, own);
    expect(JSON.parse(manifest.body).endpoints).toEqual({
      asap: `${own}/asap`,
      events: `wss://127.0.0.1:${port}/asap/ws`,
    });
  });
});

describe('OriginPolicy', () => {
  /** A plain node:http server on 127.0.0.1 that answers each request with the policy's verdict. */
  async function verdicts(
    opts: OriginPolicyOptions,
  ): Promise<(headers: Record<string, string>) => Promise<Json>> {
    const policy = new OriginPolicy(opts);
    const http = trackHttpServer(createServer((req, res) => res.end(JSON.stringify(policy.check(req)))));
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const { port } = http.address() as AddressInfo;
    return async (headers) => JSON.parse((await send(port, { path: '/', headers })).body);
  }

  it('trusts the Host header when the bound address is unknown or not loopback', async () => {
    const rebound = { host: 'evil.example:8080', origin: 'http://evil.example:8080' };
    const bounds: OriginPolicyOptions['boundAddress'][] = [
      undefined,
      () => null,
      () => '/tmp/asap.sock',
      () => ({ address: '192.0.2.10', family: 'IPv4', port: 8080 }),
      () => ({ address: '::', family: 'IPv6', port: 8080 }),
    ];
    for (const boundAddress of bounds) {
      const check = await verdicts({ boundAddress });
      expect(await check(rebound)).toEqual({ kind: 'allowed', origin: rebound.origin });
    }
    const loopback = await verdicts({ boundAddress: () => ({ address: '::1', family: 'IPv6', port: 8080 }) });
    expect(await loopback(rebound)).toEqual({ kind: 'refused', origin: rebound.origin });
    expect(await loopback({ host: '[::1]:8080', origin: 'http://[::1]:8080' })).toEqual({
      kind: 'allowed',
      origin: 'http://[::1]:8080',
    });
    expect(await loopback({ host: 'a/b', origin: 'http://a' })).toEqual({
      kind: 'refused',
      origin: 'http://a',
    });
    expect(await loopback({})).toEqual({ kind: 'none' });
  });

  it('compares canonical origins, extension schemes included, and rejects allow-list entries that are not origins', async () => {
    expect(normalizeOrigin('HTTPS://App.Example:443')).toBe('https://app.example');
    expect(normalizeOrigin('http://a.example:80')).toBe('http://a.example');
    expect(normalizeOrigin('chrome-extension://ABCdef')).toBe('chrome-extension://abcdef');
    for (const bad of [
      'a.example',
      'http://a.example/x',
      'http://u@a.example',
      'http://a.example:99999',
      '',
    ]) {
      expect(normalizeOrigin(bad), bad).toBeUndefined();
    }
    const check = await verdicts({ allow: ['chrome-extension://abcdef'] });
    expect(await check({ origin: 'chrome-extension://abcdef' })).toEqual({
      kind: 'allowed',
      origin: 'chrome-extension://abcdef',
    });
    expect(() => new OriginPolicy({ allow: ['app.example'] })).toThrow(TypeError);
    expect(
      () => new ASAPServer({ manifest: { id: DEMO_URN }, allowOrigins: ['https://a.example/x'] }),
    ).toThrow(/Not an origin/);
  });
});

/** A self-signed certificate for localhost / 127.0.0.1 (test only; valid until 2126). */
const TLS_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBtG+e/gQpM6wps4+
gpYJHn1fgKyjH3CgbcrTx4lCkaehRANCAARIYbgbWtGaIOVrc4Ftb0Y7LkzXZWuD
Kh1Zt7u9qRe3MdztN2lbRQhVwumZji/8uZGcgr0O6lRKMwhNPqgA/+z9
-----END PRIVATE KEY-----
`;
const TLS_CERT = `-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUeqDcxFCE1QsSuleM/UNIvZ8JnM4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNDE4MjUxNFoYDzIxMjYxMTEw
MTgyNTE0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARIYbgbWtGaIOVrc4Ftb0Y7LkzXZWuDKh1Zt7u9qRe3MdztN2lbRQhV
wumZji/8uZGcgr0O6lRKMwhNPqgA/+z9o28wbTAdBgNVHQ4EFgQU9I6kXKnEGjEW
RT87BnZuNUdCzk8wHwYDVR0jBBgwFoAU9I6kXKnEGjEWRT87BnZuNUdCzk8wDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAMCecbpI/Xy/OTX1rAKO1QiLJjI1jnmQyGUsxZRmh95KAiEA
yVklF4DYq8eeP64t+OSjgh1EdvnTlZJrQGW6c981Xsw=
-----END CERTIFICATE-----
`;
