/**
 * Behind a proxy: the manifest's endpoints come from `publicUrl`, else (with `trustProxy`) from
 * X-Forwarded-Proto / X-Forwarded-Host, else from the address the request came in on; a forged
 * Host or X-Forwarded-* header from a client nobody vouches for never reaches the manifest.
 */

import { mkdtempSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  firstForwarded,
  forwardedProto,
  hostPort,
  parsePublicUrl,
  validHost,
} from '../../src/server/manifest.js';
import { ASAPServer } from '../../src/server/server.js';
import { cleanup, type Json, startDemo, trackHttpServer, trackServer } from './ws-helpers.js';

afterEach(cleanup);

const MANIFEST = '/.well-known/asap/manifest.json';

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  json: Json;
}

/** GET with exactly these headers (Host included when given), over TCP or a Unix socket. */
function get(
  target: { port: number } | { socketPath: string },
  path: string,
  headers: Record<string, string | string[]> = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', ...target, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => {
        body += d;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, json: JSON.parse(body) }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

async function endpoints(port: number, headers: Record<string, string | string[]> = {}): Promise<Json> {
  const r = await get({ port }, MANIFEST, headers);
  expect(r.status).toBe(200);
  return r.json.endpoints;
}

const FORGED = {
  host: 'evil.com:1',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'evil.example',
};

describe('the manifest without publicUrl or trustProxy', () => {
  it('ignores a forged Host and X-Forwarded-* headers: the listen address it is', async () => {
    const { port } = await startDemo();
    expect(await endpoints(port, FORGED)).toEqual({
      asap: `http://127.0.0.1:${port}/asap`,
      events: `ws://127.0.0.1:${port}/asap/ws`,
    });
    const r = await get({ port }, MANIFEST, FORGED);
    expect(r.headers.vary).toBeUndefined();
    expect(r.headers['cache-control']).toBe('public, max-age=60');
  });

  it('attached to a server on a Unix socket (no address): localhost', async () => {
    const http = trackHttpServer(createServer());
    const asap = trackServer(new ASAPServer({ manifest: { id: 'urn:asap:agent:unix' } }));
    asap.attach(http);
    const socketPath = join(mkdtempSync(join(tmpdir(), 'asap-')), 's.sock');
    await new Promise<void>((resolve) => http.listen(socketPath, resolve));
    const r = await get({ socketPath }, MANIFEST, { host: 'evil.com:1' });
    expect(r.json.endpoints).toEqual({ asap: 'http://localhost/asap', events: 'ws://localhost/asap/ws' });
    expect(asap.manifest().endpoints.asap).toBe('http://localhost/asap');
  });

  it('attached to a TCP server before any request: that server address', async () => {
    const http = trackHttpServer(createServer());
    const asap = trackServer(new ASAPServer({ manifest: { id: 'urn:asap:agent:attached' } }));
    expect(asap.manifest().endpoints.asap).toBe('http://localhost/asap');
    asap.attach(http);
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const port = (http.address() as { port: number }).port;
    expect(asap.manifest().endpoints).toEqual({
      asap: `http://127.0.0.1:${port}/asap`,
      events: `ws://127.0.0.1:${port}/asap/ws`,
    });
  });
});

describe('trustProxy', () => {
  it('takes scheme and host from X-Forwarded-Proto / X-Forwarded-Host, and says Vary', async () => {
    const { port } = await startDemo({ trustProxy: true });
    const r = await get({ port }, MANIFEST, {
      host: 'internal:8080',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'agents.example',
    });
    expect(r.json.endpoints).toEqual({
      asap: 'https://agents.example/asap',
      events: 'wss://agents.example/asap/ws',
    });
    expect(r.headers.vary).toBe('Host, X-Forwarded-Host, X-Forwarded-Proto');
  });

  it('takes the first entry of a comma list (several proxies), in any case', async () => {
    const { port } = await startDemo({ trustProxy: true });
    expect(
      await endpoints(port, {
        'x-forwarded-proto': ' HTTPS , http',
        'x-forwarded-host': 'Agents.Example:8443, proxy.internal',
      }),
    ).toEqual({
      asap: 'https://agents.example:8443/asap',
      events: 'wss://agents.example:8443/asap/ws',
    });
    // Repeated headers are joined by node into one comma list: the first still wins.
    expect(await endpoints(port, { 'x-forwarded-host': ['[2001:db8::1]:9000', 'second.example'] })).toEqual({
      asap: 'http://[2001:db8::1]:9000/asap',
      events: 'ws://[2001:db8::1]:9000/asap/ws',
    });
  });

  it('without X-Forwarded-Host uses the Host the proxy set; with neither usable, the listen address', async () => {
    const { port } = await startDemo({ trustProxy: true });
    expect(await endpoints(port, { host: 'front.example', 'x-forwarded-proto': 'https' })).toEqual({
      asap: 'https://front.example/asap',
      events: 'wss://front.example/asap/ws',
    });
    expect(await endpoints(port, { host: 'front.example/../x', 'x-forwarded-host': 'bad host' })).toEqual({
      asap: `http://127.0.0.1:${port}/asap`,
      events: `ws://127.0.0.1:${port}/asap/ws`,
    });
  });

  it.each([
    ['a path', 'evil.example/x'],
    ['credentials', 'user@evil.example'],
    ['a space', 'evil example'],
    ['a port out of range', 'evil.example:65536'],
    ['port 0', 'evil.example:0'],
    ['a bad label', '-evil.example'],
    ['a long label', `${'a'.repeat(64)}.example`],
    ['an empty label', 'evil..example'],
    ['not IPv6', '[evil]'],
    ['an empty first entry', ', evil.example'],
    ['a scheme', 'https://evil.example'],
  ])('ignores an X-Forwarded-Host with %s', async (_what, value) => {
    const { port } = await startDemo({ trustProxy: true });
    expect(await endpoints(port, { host: 'front.example:81', 'x-forwarded-host': value })).toEqual({
      asap: 'http://front.example:81/asap',
      events: 'ws://front.example:81/asap/ws',
    });
  });

  it.each(['ftp', 'javascript', 'https:', ''])('ignores X-Forwarded-Proto %j', async (value) => {
    const { port } = await startDemo({ trustProxy: true });
    expect((await endpoints(port, { host: 'front.example', 'x-forwarded-proto': value })).events).toBe(
      'ws://front.example/asap/ws',
    );
  });

  it('keeps Vary: Origin for an allowed browser origin', async () => {
    const { port } = await startDemo({ trustProxy: true, allowOrigins: ['https://app.example'] });
    const r = await get({ port }, MANIFEST, { origin: 'https://app.example' });
    expect(r.headers.vary).toBe('Origin, Host, X-Forwarded-Host, X-Forwarded-Proto');
    expect(r.headers['access-control-allow-origin']).toBe('https://app.example');
  });
});

describe('publicUrl', () => {
  it('is what the manifest advertises, forged or trusted headers notwithstanding; https gives wss; the path is kept', async () => {
    const { server, port } = await startDemo({
      publicUrl: 'https://agents.example/billing/',
      trustProxy: true,
    });
    const expected = {
      asap: 'https://agents.example/billing/asap',
      events: 'wss://agents.example/billing/asap/ws',
    };
    expect(await endpoints(port, FORGED)).toEqual(expected);
    expect(await endpoints(port)).toEqual(expected);
    expect(server.manifest().endpoints).toEqual(expected);
    expect((await get({ port }, MANIFEST, FORGED)).headers.vary).toBeUndefined();
  });

  it('http:// with a port gives ws:// with that port; custom routes follow', async () => {
    const { port } = await startDemo({
      publicUrl: 'http://Agents.Example:8080',
      rpcPath: '/rpc',
      websocketPath: '/rt',
    });
    expect(await endpoints(port, FORGED)).toEqual({
      asap: 'http://agents.example:8080/rpc',
      events: 'ws://agents.example:8080/rt',
    });
  });

  it("its origin is the server's own for browsers", async () => {
    const { port } = await startDemo({ publicUrl: 'https://agents.example/a' });
    const own = await get({ port }, '/healthz', { origin: 'https://agents.example' });
    expect(own.status).toBe(200);
    expect(own.headers['access-control-allow-origin']).toBe('https://agents.example');
    const other = await get({ port }, '/healthz', { origin: 'https://evil.example' });
    expect(other.status).toBe(403);
  });

  it.each([
    'ftp://agents.example',
    'https://user:pw@agents.example',
    'https://agents.example/?q=1',
    'https://agents.example/#frag',
    'https://agents.example/?',
    'agents.example',
    'not a url',
  ])('refuses %j', (url) => {
    expect(() => new ASAPServer({ manifest: { id: 'urn:asap:agent:x' }, publicUrl: url })).toThrow(
      new TypeError(
        `publicUrl must be an http:// or https:// URL without credentials, query or fragment (got ${JSON.stringify(url)})`,
      ),
    );
  });
});

describe('header parsing', () => {
  it('validHost', () => {
    expect(validHost(undefined)).toBeUndefined();
    expect(validHost('Example.COM')).toBe('example.com');
    expect(validHost('10.0.0.1:443')).toBe('10.0.0.1:443');
    expect(validHost('[::1]')).toBe('[::1]');
    expect(validHost('[::ffff:10.0.0.1]:8080')).toBe('[::ffff:10.0.0.1]:8080');
    expect(validHost('a-b.c-d.example:65535')).toBe('a-b.c-d.example:65535');
    expect(validHost(`${'a.'.repeat(126)}ab`)).toBeUndefined(); // 254 characters
    expect(validHost('[1:2:3]')).toBeUndefined();
    expect(validHost('example.com:')).toBeUndefined();
    expect(validHost('')).toBeUndefined();
  });

  it('hostPort', () => {
    expect(hostPort('127.0.0.1', 80)).toBe('127.0.0.1:80');
    expect(hostPort('::ffff:10.0.0.1', 8080)).toBe('10.0.0.1:8080');
    expect(hostPort('::ffff:a:b', 8080)).toBe('[::ffff:a:b]:8080');
    expect(hostPort('fe80::1', 1)).toBe('[fe80::1]:1');
    expect(hostPort(undefined, 1)).toBeUndefined();
    expect(hostPort('127.0.0.1', undefined)).toBeUndefined();
  });

  it('firstForwarded and forwardedProto', () => {
    expect(firstForwarded(undefined)).toBeUndefined();
    expect(firstForwarded([])).toBeUndefined();
    expect(firstForwarded(['a, b', 'c'])).toBe('a');
    expect(firstForwarded(' , b')).toBeUndefined();
    expect(forwardedProto('HTTP')).toBe('http');
    expect(forwardedProto(undefined)).toBeUndefined();
    expect(forwardedProto('wss')).toBeUndefined();
  });

  it('parsePublicUrl', () => {
    expect(parsePublicUrl('https://a.example')).toEqual({ scheme: 'https', host: 'a.example', prefix: '' });
    expect(parsePublicUrl('https://a.example:443/x//')).toEqual({
      scheme: 'https',
      host: 'a.example',
      prefix: '/x',
    });
    expect(parsePublicUrl('http://[::1]:8080/p/q')).toEqual({
      scheme: 'http',
      host: '[::1]:8080',
      prefix: '/p/q',
    });
  });
});
