/**
 * Static file serving (ASAPServerOptions.staticDir / staticFiles, src/server/static.ts) over real
 * HTTP: index.html, content types, HEAD, the extra file map, ASAP routes first, and no way out of
 * the directory (`..`, encoded `..`, symbolic links). Also `asap serve --static` end to end.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { browserBundleFile, staticOptions } from '../../src/cli/commands.js';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { ASAPServer } from '../../src/server/server.js';
import { runInProcess, waitFor } from '../cli/cli-helpers.js';
import { ensureBundle } from './ensure-bundle.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Reply {
  status: number;
  type: string | undefined;
  length: string | undefined;
  body: string;
}

/** A raw request: the path goes out exactly as written (no normalisation of `..`). */
function get(base: string, path: string, method = 'GET'): Promise<Reply> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          type: res.headers['content-type'],
          length: res.headers['content-length'],
          body,
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

let tmp: string;
let root: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'asap-static-'));
  root = join(tmp, 'site');
  mkdirSync(join(root, 'sub'), { recursive: true });
  mkdirSync(join(root, 'empty'));
  mkdirSync(join(root, '.well-known', 'asap'), { recursive: true });
  writeFileSync(join(root, 'index.html'), '<h1>home</h1>');
  writeFileSync(join(root, 'app.js'), 'export const x = 1;');
  writeFileSync(join(root, 'style.css'), 'body{}');
  writeFileSync(join(root, 'data.json'), '{"a":1}');
  writeFileSync(join(root, 'pic.png'), 'PNG');
  writeFileSync(join(root, 'pic.svg'), '<svg/>');
  writeFileSync(join(root, 'blob.bin'), 'bytes');
  writeFileSync(join(root, 'with space.txt'), 'spaced');
  writeFileSync(join(root, 'sub', 'index.html'), '<h1>sub</h1>');
  writeFileSync(join(root, '.well-known', 'asap', 'health'), 'not the health');
  writeFileSync(join(tmp, 'secret.txt'), 'SECRET');
  writeFileSync(join(tmp, 'bundle.js'), 'export const bundle = true;');
  symlinkSync(join(tmp, 'secret.txt'), join(root, 'escape.txt'));
  symlinkSync(join(root, 'app.js'), join(root, 'alias.js'));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('static files', () => {
  const servers: ASAPServer[] = [];
  const plain: Server[] = [];

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
    await Promise.all(plain.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  async function start(opts: { staticDir?: string; staticFiles?: Record<string, string> }): Promise<string> {
    const server = createDemoAgent({ ...opts, rateLimit: 0 });
    servers.push(server);
    return (await server.listen({ port: 0 })).url;
  }

  it('serves index.html for / and for directories, and files with their content types', async () => {
    const base = await start({ staticDir: root });
    expect(await get(base, '/')).toMatchObject({
      status: 200,
      type: 'text/html; charset=utf-8',
      body: '<h1>home</h1>',
      length: '13',
    });
    expect((await get(base, '/sub/')).body).toBe('<h1>sub</h1>');
    expect((await get(base, '/sub')).body).toBe('<h1>sub</h1>');
    expect((await get(base, '/index.html?v=1')).body).toBe('<h1>home</h1>');
    const types: Record<string, string> = {
      '/app.js': 'text/javascript; charset=utf-8',
      '/style.css': 'text/css; charset=utf-8',
      '/data.json': 'application/json; charset=utf-8',
      '/pic.png': 'image/png',
      '/pic.svg': 'image/svg+xml',
      '/blob.bin': 'application/octet-stream',
    };
    for (const [path, type] of Object.entries(types)) {
      const r = await get(base, path);
      expect([path, r.status, r.type]).toEqual([path, 200, type]);
    }
    expect((await get(base, '/app.js')).body).toBe('export const x = 1;');
    expect((await get(base, '/with%20space.txt')).body).toBe('spaced');
    expect((await get(base, '/alias.js')).body).toBe('export const x = 1;');
  });

  it('answers HEAD with the headers only; other methods and missing files get 404', async () => {
    const base = await start({ staticDir: root });
    const head = await get(base, '/app.js', 'HEAD');
    expect(head).toMatchObject({
      status: 200,
      type: 'text/javascript; charset=utf-8',
      length: '19',
      body: '',
    });
    const post = await get(base, '/app.js', 'POST');
    expect(post.status).toBe(404);
    expect(post.type).toBe('application/json');
    expect((await get(base, '/missing.html')).status).toBe(404);
    expect((await get(base, '/empty/')).status).toBe(404);
  });

  it('never serves anything outside the directory', async () => {
    const base = await start({ staticDir: root });
    expect((await get(base, '/%2e%2e/site/index.html')).body).toBe('<h1>home</h1>'); // back inside: fine
    for (const path of [
      '/../secret.txt',
      '/%2e%2e/secret.txt',
      '/..%2fsecret.txt',
      '/sub/../../secret.txt',
      '/sub/%2e%2e/%2e%2e/secret.txt',
      '/escape.txt', // a symbolic link to a file outside
      '/index.html%00.png',
      '/%E0%A4%A', // malformed percent-encoding
    ]) {
      const r = await get(base, path);
      expect([path, r.status]).toEqual([path, 404]);
      expect(r.body).not.toContain('SECRET');
    }
  });

  it('serves the extra file map, and ASAP routes come before files', async () => {
    const base = await start({
      staticDir: root,
      staticFiles: {
        '/asap-client.js': join(tmp, 'bundle.js'),
        '/gone.js': join(tmp, 'nope.js'),
        '/dir.js': join(root, 'sub'),
      },
    });
    expect(await get(base, '/asap-client.js')).toMatchObject({
      status: 200,
      type: 'text/javascript; charset=utf-8',
      body: 'export const bundle = true;',
    });
    expect((await get(base, '/gone.js')).status).toBe(404);
    expect((await get(base, '/dir.js')).status).toBe(404);
    const health = await get(base, '/.well-known/asap/health');
    expect(health.type).toBe('application/json');
    expect(JSON.parse(health.body)).toMatchObject({ status: 'healthy' });
  });

  it('a missing directory serves nothing; without staticDir nothing is served', async () => {
    expect((await get(await start({ staticDir: join(tmp, 'no-such-dir') }), '/')).status).toBe(404);
    expect((await get(await start({}), '/')).status).toBe(404);
  });

  it('on an attached server, files it does not have go to the listeners that were there before', async () => {
    const http = createServer((_req, res) => {
      res.writeHead(418, { 'content-type': 'text/plain' });
      res.end('teapot');
    });
    plain.push(http);
    const agent = createDemoAgent({ staticDir: root, rateLimit: 0 });
    agent.attach(http);
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    const port = (http.address() as { port: number }).port;
    const base = `http://127.0.0.1:${port}`;
    expect((await get(base, '/')).body).toBe('<h1>home</h1>');
    expect(await get(base, '/elsewhere')).toMatchObject({ status: 418, body: 'teapot' });
    await agent.close();
  });
});

describe('asap serve --static', () => {
  let child: ChildProcess | undefined;

  beforeAll(() => ensureBundle(), 60_000);

  afterEach(async () => {
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    child = undefined;
  });

  it('maps /asap-client.js to the browser bundle', () => {
    expect(browserBundleFile()).toBe(join(ROOT, 'dist', 'browser', 'asap-client.js'));
    expect(staticOptions('examples/browser')).toEqual({
      staticDir: 'examples/browser',
      staticFiles: { '/asap-client.js': browserBundleFile() },
    });
  });

  it('serves the example page next to the agent (in process, for coverage)', async () => {
    const before = process.listeners('SIGTERM');
    const r = await runInProcess(
      ['serve', '--port', '0', '--static', 'examples/browser', '--log-level', 'warn'],
      async (out) => {
        const base = await waitFor(() => /listening on (http:\/\/\S+) /.exec(out.stdout())?.[1], 5000);
        const stop = process.listeners('SIGTERM').filter((l) => !before.includes(l));
        try {
          expect((await get(base, '/')).body).toContain('data-testid="state"');
          const bundle = await get(base, '/asap-client.js', 'HEAD');
          expect(bundle.status).toBe(200);
          expect(bundle.type).toBe('text/javascript; charset=utf-8');
        } finally {
          for (const l of stop) l('SIGTERM');
        }
      },
    );
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(
      /Serving examples\/browser at http:\/\/127\.0\.0\.1:\d+\/ \(the client bundle at \/asap-client\.js\)/,
    );
    expect(r.stderr).not.toContain('is missing');
  });

  it('serves the example page next to the agent (child process)', async () => {
    child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'src/cli/main.ts',
        'serve',
        '--port',
        '0',
        '--static',
        'examples/browser',
        '--log-level',
        'silent',
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const base = await new Promise<string>((resolve, reject) => {
      let out = '';
      child!.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        const m = out.match(/listening on (http:\/\/\S+)/);
        if (m) resolve(m[1]!);
      });
      child!.once('exit', (code) => reject(new Error(`asap serve exited with ${code}`)));
    });
    const page = await get(base, '/');
    expect(page.status).toBe(200);
    expect(page.body).toContain('data-testid="state"');
    expect((await get(base, '/app.js')).body).toContain("from '/asap-client.js'");
    const health = await get(base, '/.well-known/asap/health');
    expect(health.status).toBe(200);
  });
});
