/**
 * `asap serve` for operators: `--public-url`, `--trust-proxy`, `--no-request-log`, the per-request
 * log line on stderr, and the /healthz and /readyz probes, on the real command (child process)
 * and, for coverage, through run(argv) in this process.
 */
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { encodeRequest } from '../../src/protocol/jsonrpc.js';
import type { Json } from '../server/ws-helpers.js';
import { jsonLogLines, runInProcess, type Served, startServe, waitFor } from './cli-helpers.js';

const servers: Served[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop('SIGKILL')));
});

async function serve(args: string[]): Promise<Served> {
  const s = await startServe(args);
  servers.push(s);
  return s;
}

const SENDER = 'urn:asap:agent:ops-test';

function echo(traceId: string) {
  return createEnvelope({
    sender: SENDER,
    recipient: 'urn:asap:agent:demo',
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'c', skill_id: 'echo', input: { a: 1 } },
    trace_id: traceId,
  });
}

async function rpc(base: string, envelope: object): Promise<{ status: number }> {
  const res = await fetch(`${base}/asap`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: encodeRequest('asap.send', { envelope }, 1),
  });
  await res.text();
  return { status: res.status };
}

/** GET with exactly these headers (a forged Host included). */
function getJson(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Json }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('asap serve (child process)', () => {
  it('--public-url: the manifest advertises it; probes answer; one info line per request on stderr', async () => {
    const s = await serve(['--public-url', 'https://agents.example/demo/']);
    const manifest = await getJson(s.port, '/.well-known/asap/manifest.json', { host: 'evil.com:1' });
    expect(manifest.body.endpoints).toEqual({
      asap: 'https://agents.example/demo/asap',
      events: 'wss://agents.example/demo/asap/ws',
    });
    expect(await getJson(s.port, '/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
    expect(await getJson(s.port, '/readyz')).toEqual({ status: 200, body: { status: 'ready' } });
    const env = echo('trace-cli-1');
    expect((await rpc(s.http, env)).status).toBe(200);
    expect((await s.stop('SIGTERM')).code).toBe(0);
    const lines = jsonLogLines(s.stderr()).filter((l) => l.msg === 'request finished');
    expect(lines).toEqual([
      {
        level: 30,
        time: expect.any(Number),
        pid: s.child.pid,
        payload_type: 'TaskRequest',
        skill: 'echo',
        sender: SENDER,
        envelope_id: env.id,
        trace_id: 'trace-cli-1',
        transport: 'http',
        outcome: 'ok',
        ms: expect.any(Number),
        msg: 'request finished',
      },
    ]);
  });

  it('--trust-proxy takes X-Forwarded-*; --no-request-log writes no request line', async () => {
    const s = await serve(['--trust-proxy', '--no-request-log']);
    const manifest = await getJson(s.port, '/.well-known/asap/manifest.json', {
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'agents.example',
    });
    expect(manifest.body.endpoints).toEqual({
      asap: 'https://agents.example/asap',
      events: 'wss://agents.example/asap/ws',
    });
    expect((await rpc(s.http, echo('trace-cli-2'))).status).toBe(200);
    expect((await s.stop('SIGTERM')).code).toBe(0);
    const logs = jsonLogLines(s.stderr());
    expect(logs.some((l) => l.msg === 'listening')).toBe(true);
    expect(logs.filter((l) => l.msg === 'request finished')).toEqual([]);
  });

  it('without either flag a forged Host does not reach the manifest', async () => {
    const s = await serve(['--log-level', 'warn']);
    const manifest = await getJson(s.port, '/.well-known/asap/manifest.json', {
      host: 'evil.com:1',
      'x-forwarded-host': 'evil.example',
    });
    expect(manifest.body.endpoints).toEqual({ asap: `${s.http}/asap`, events: s.ws });
  });
});

describe('asap serve (in process)', () => {
  it.each([
    'agents.example',
    'ftp://agents.example',
    'https://user@agents.example',
    'https://agents.example/?q=1',
    'https://agents.example/#top',
    'https://[bad/',
  ])('--public-url %s exits 2 with a message', async (value) => {
    const r = await runInProcess(['serve', '--public-url', value]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      '--public-url must be an http:// or https:// URL without credentials, query or fragment',
    );
    expect(r.stdout).toBe('');
  });

  it('passes --public-url, --trust-proxy and --no-request-log to the server', async () => {
    const before = process.listeners('SIGTERM');
    const r = await runInProcess(
      [
        'serve',
        '--port',
        '0',
        '--log-level',
        'silent',
        '--public-url',
        'http://front.example:8080',
        '--trust-proxy',
        '--no-request-log',
      ],
      async (out) => {
        const line = await waitFor(
          () => /listening on http:\/\/127\.0\.0\.1:(\d+) /.exec(out.stdout()),
          5_000,
        );
        const added = process.listeners('SIGTERM').filter((l) => !before.includes(l));
        try {
          const m = await getJson(Number(line[1]), '/.well-known/asap/manifest.json', {
            'x-forwarded-host': 'ignored.example',
          });
          expect(m.body.endpoints).toEqual({
            asap: 'http://front.example:8080/asap',
            events: 'ws://front.example:8080/asap/ws',
          });
        } finally {
          added[0]?.('SIGTERM');
        }
      },
    );
    expect(r.code).toBe(0);
  });
});
