/**
 * `asap serve` end to end (demo-agent.md "asap serve"): the real command as a child process
 * (`node --import tsx src/cli/main.ts serve …`), driven over real sockets on 127.0.0.1.
 * The flag parsing and the serve() path are also run in-process through run(argv) so that
 * coverage sees them; there the shutdown is triggered by calling the listener serve() installed
 * (found by diffing process.listeners), never by signalling the test process.
 */

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ASAPClient } from '../../src/client/index.js';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import { encodeRequest } from '../../src/protocol/jsonrpc.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';
import {
  jsonLogLines,
  LISTEN_LINE,
  runCli,
  runInProcess,
  type Served,
  startServe,
  waitFor,
} from './cli-helpers.js';

const CLIENT = 'urn:asap:agent:serve-test';

const opened: Array<{ close(): unknown }> = [];
const servers: Served[] = [];

afterEach(async () => {
  for (const c of opened.splice(0)) await c.close();
  await Promise.all(servers.splice(0).map((s) => s.stop('SIGKILL')));
});

async function serve(args: string[] = []): Promise<Served> {
  const s = await startServe(args);
  servers.push(s);
  return s;
}

function client(url: string, opts: ConstructorParameters<typeof ASAPClient>[1] = {}): ASAPClient {
  const c = new ASAPClient(url, {
    sender: CLIENT,
    recipient: 'urn:asap:agent:demo',
    websocket: { reconnect: false, heartbeatIntervalMs: 0 },
    ...opts,
  });
  opened.push(c);
  return c;
}

async function health(base: string): Promise<{ status: number; body: { load: { active_tasks: number } } }> {
  const res = await fetch(`${base}/.well-known/asap/health`);
  return { status: res.status, body: (await res.json()) as { load: { active_tasks: number } } };
}

/** Waits until the server reports at least `n` active tasks. */
async function activeTasks(base: string, n: number): Promise<void> {
  for (let i = 0; i < 250; i++) {
    const h = await health(base);
    if (h.body.load.active_tasks >= n) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`never saw ${n} active tasks`);
}

/** Splits a pasted shell command line (words and single-quoted strings) into argv. */
function shellWords(line: string): string[] {
  return [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? '');
}

/** A raw WebSocket that answers app-level pings and records every frame it receives. */
async function rawSocket(
  url: string,
  token?: string,
): Promise<{
  ws: WebSocket;
  frames: JsonObject[];
  closed: Promise<{ code: number; reason: string }>;
}> {
  const ws = new WebSocket(url, {
    headers: token === undefined ? {} : { Authorization: `Bearer ${token}` },
  });
  const frames: JsonObject[] = [];
  ws.on('message', (data) => {
    const frame = JSON.parse(String(data)) as JsonObject;
    frames.push(frame);
    if (frame.type === 'ping') ws.send('{"type":"pong"}');
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on('close', (code, reason) => resolve({ code, reason: String(reason) })),
  );
  ws.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  opened.push({ close: () => ws.terminate() });
  return { ws, frames, closed };
}

/**
 * How a WebSocket upgrade with this Origin ends: `open` (then closed by us), the HTTP status of a
 * refusal (`403`), or the close code when the server closed it right after opening (`1013`).
 */
function wsOutcome(url: string, origin?: string): Promise<'open' | number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: origin === undefined ? {} : { origin } });
    opened.push({ close: () => ws.terminate() });
    let isOpen = false;
    ws.on('error', () => {});
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? -1);
      ws.terminate();
    });
    ws.on('open', () => {
      isOpen = true;
      // Closed by the server at once (limits), or still open a moment later: then close it.
      setTimeout(() => {
        resolve('open');
        ws.close();
      }, 300);
    });
    ws.on('close', (code) => {
      if (isOpen) resolve(code);
    });
  });
}

/** The status of a GET with this Origin (node:http, so that the Origin header is sent as given). */
function statusWithOrigin(url: string, origin: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { headers: { origin }, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? -1);
    });
    req.on('error', reject);
  });
}

function taskRequest(skill: string, input: JsonObject, recipient = 'urn:asap:agent:demo'): Envelope<object> {
  return createEnvelope({
    sender: CLIENT,
    recipient,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-serve-test', skill_id: skill, input },
  });
}

describe('asap serve (child process)', () => {
  it('prints exactly one stdout line with the real port, JSON logs and a ready-to-paste hint on stderr', async () => {
    const s = await serve();
    expect(s.port).toBeGreaterThan(0);
    expect(s.port).not.toBe(8080);
    const hint = await waitFor(
      () =>
        s
          .stderr()
          .split('\n')
          .find((l) => l.includes('npx asap send')),
      5_000,
      () => s.stderr(),
    );
    expect(hint.trim()).toBe(
      `npx asap send ws://127.0.0.1:${s.port}/asap/ws --skill echo --input '{"hello":"world"}'`,
    );
    expect(hint).not.toContain('--token');

    // The hint is ready to paste: the same arguments, run through the real command, succeed.
    const argv = shellWords(hint.trim());
    expect(argv.slice(0, 3)).toEqual(['npx', 'asap', 'send']);
    const pasted = await runCli(argv.slice(2));
    expect(pasted.code, pasted.stderr).toBe(0);
    expect(JSON.parse(pasted.stdout).payload.result).toEqual({ echo: { hello: 'world' } });

    expect((await health(s.http)).status).toBe(200);
    const exit = await s.stop('SIGTERM');
    expect(exit).toEqual({ code: 0, signal: null });

    // stdout: exactly the listening line.
    const lines = s
      .stdout()
      .split('\n')
      .filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(LISTEN_LINE);
    expect(lines[0]).toBe(
      `ASAP agent listening on http://127.0.0.1:${s.port} (ws://127.0.0.1:${s.port}/asap/ws)`,
    );

    // stderr: pino JSON lines plus the two hint lines, nothing else.
    const stderrLines = s
      .stderr()
      .split('\n')
      .filter((l) => l !== '');
    const plain = stderrLines.filter((l) => !l.startsWith('{'));
    expect(plain.map((l) => l.trim())).toEqual(['Try it from another terminal:', hint.trim()]);
    const logs = jsonLogLines(s.stderr());
    for (const l of logs) {
      expect(typeof l.level).toBe('number');
      expect(typeof l.msg).toBe('string');
      expect(l.pid).toBe(s.child.pid);
    }
    const msgs = logs.map((l) => l.msg);
    expect(msgs).toContain('listening');
    expect(logs.find((l) => l.msg === 'shutting down')?.signal).toBe('SIGTERM');
    expect(msgs.indexOf('shutting down')).toBeLessThan(msgs.indexOf('closed'));
  });

  it('SIGINT shuts down gracefully: open WebSockets get 1001, the process exits 0', async () => {
    const s = await serve(['--log-level', 'info']);
    const raw = await rawSocket(s.ws);
    const exit = await s.stop('SIGINT');
    expect(exit).toEqual({ code: 0, signal: null });
    expect(await raw.closed).toEqual({ code: 1001, reason: 'Server shutting down' });
    const logs = jsonLogLines(s.stderr());
    expect(logs.find((l) => l.msg === 'shutting down')?.signal).toBe('SIGINT');
    expect(logs.map((l) => l.msg)).toContain('closed');
  });

  it('SIGTERM with sleep requests in flight: their responses still arrive, then it exits 0', async () => {
    const s = await serve(['--rate-limit', '0']);
    const http = client(`${s.http}/asap`);
    const ws = client(s.ws);
    const viaHttp = http.task('sleep', { ms: 1500 });
    const viaWs = ws.task('sleep', { ms: 1500 });
    await activeTasks(s.http, 2);
    s.child.kill('SIGTERM');
    // While draining, health turns 503 (§9): the listener stays open.
    await waitFor(
      () => jsonLogLines(s.stderr()).some((l) => l.msg === 'draining'),
      5_000,
      () => s.stderr(),
    );
    const [a, b] = await Promise.all([viaHttp, viaWs]);
    for (const reply of [a, b]) {
      expect(reply.payload_type).toBe('TaskResponse');
      expect(reply.payload).toMatchObject({ status: 'completed', result: { echo: { ms: 1500 } } });
    }
    expect(await s.exited).toEqual({ code: 0, signal: null });
    const logs = jsonLogLines(s.stderr());
    const msgs = logs.map((l) => l.msg);
    expect(logs.find((l) => l.msg === 'draining')?.active).toBeGreaterThanOrEqual(2);
    expect(msgs.indexOf('draining')).toBeLessThan(msgs.indexOf('closed'));
  });
});

describe('asap serve flags (child process)', () => {
  it('honours every flag of the contract', async () => {
    const s = await serve([
      '--host',
      '127.0.0.1',
      '--agent-id',
      'urn:asap:agent:flags',
      '--token',
      's3cret',
      '--rate-limit',
      '3',
      '--heartbeat-interval',
      '0.5',
      '--max-message-bytes',
      '4096',
      '--drain-timeout',
      '0.3',
      '--log-level',
      'debug',
      '--push-form',
      'result',
    ]);

    // --agent-id: the manifest id, seen through `asap discover`, and the sender of replies.
    const discovered = await runCli(['discover', s.http]);
    expect(discovered.code, discovered.stderr).toBe(0);
    expect(JSON.parse(discovered.stdout).manifest.id).toBe('urn:asap:agent:flags');
    const ok = client(`${s.http}/asap`, { token: 's3cret', recipient: 'urn:asap:agent:flags' });
    const reply = await ok.task('echo', { x: 1 });
    expect(reply.sender).toBe('urn:asap:agent:flags');

    // --token: the hint says a token is needed; a request without it gets 401 / -32004.
    expect(s.stderr()).toContain(`npx asap send ws://127.0.0.1:${s.port}/asap/ws`);
    expect(s.stderr()).toContain('--token <token>');
    const body = encodeRequest('asap.send', { envelope: taskRequest('echo', {}) }, 1);
    const anon = await fetch(`${s.http}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(((await anon.json()) as { error: { code: number } }).error.code).toBe(-32004);

    // --max-message-bytes: a body over 4096 bytes gets 413.
    const big = encodeRequest('asap.send', { envelope: taskRequest('echo', { pad: 'x'.repeat(5000) }) }, 2);
    const tooBig = await fetch(`${s.http}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer s3cret' },
      body: big,
    });
    expect(tooBig.status).toBe(413);
    await tooBig.arrayBuffer();

    // --heartbeat-interval 0.5: app-level pings arrive; --push-form result: pushes are result frames with id null.
    const a = await rawSocket(s.ws, 's3cret');
    await waitFor(
      () => a.frames.some((f) => f.type === 'ping'),
      5_000,
      () => JSON.stringify(a.frames),
    );
    a.ws.send(
      encodeRequest(
        'asap.send',
        { envelope: taskRequest('push', { count: 1 }, 'urn:asap:agent:flags') },
        'p1',
      ),
    );
    await waitFor(
      () => a.frames.some((f) => f.id === 'p1'),
      5_000,
      () => JSON.stringify(a.frames),
    );
    const pushes = a.frames.filter(
      (f) =>
        f.id === null && (f.result as { envelope?: Envelope<object> } | undefined)?.envelope !== undefined,
    );
    expect(pushes).toHaveLength(1);
    const pushed = pushes[0]?.result as { envelope?: Envelope<object> } | undefined;
    expect(pushed?.envelope?.payload_type).toBe('TaskUpdate');
    expect(a.frames.some((f) => f.method === 'asap.send')).toBe(false);

    // --rate-limit 3: a burst of 8 requests on one connection overflows: -32040, then close 1008.
    const b = await rawSocket(s.ws, 's3cret');
    for (let i = 0; i < 8; i++)
      b.ws.send(
        encodeRequest('asap.send', { envelope: taskRequest('echo', { i }, 'urn:asap:agent:flags') }, `r${i}`),
      );
    expect((await b.closed).code).toBe(1008);
    expect(b.frames.some((f) => (f.error as { code?: number } | undefined)?.code === -32040)).toBe(true);

    // --log-level debug: debug lines (level 20) are written; the token is never logged.
    expect(jsonLogLines(s.stderr()).some((l) => l.level === 20)).toBe(true);
    expect(s.stderr()).not.toContain('s3cret');

    // --drain-timeout 0.3: a 5 s sleep in flight is cut off at the drain deadline instead of completing.
    const slow = client(`${s.http}/asap`, { token: 's3cret', recipient: 'urn:asap:agent:flags' });
    const sleeping = slow.task('sleep', { ms: 5_000 }).then(
      (env) => ({ ok: true as const, env }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await activeTasks(s.http, 1);
    s.child.kill('SIGTERM');
    expect(await s.exited).toEqual({ code: 0, signal: null });
    const outcome = await sleeping;
    if (outcome.ok) expect((outcome.env.payload as { status?: string }).status).not.toBe('completed');
    else expect(outcome.err).toBeInstanceOf(Error);
  });

  it('--allow-origin lets that origin open a WebSocket, others get 403; --max-connections 2 closes the third with 1013', async () => {
    const s = await serve(['--allow-origin', 'http://a.example', '--max-connections', '2']);
    expect(await wsOutcome(s.ws, 'http://b.example')).toBe(403);
    // Two connections open: the third is closed with 1013, with or without an allowed Origin.
    const first = await rawSocket(s.ws);
    const second = await rawSocket(s.ws);
    expect(await wsOutcome(s.ws)).toBe(1013);
    expect(await wsOutcome(s.ws, 'http://a.example')).toBe(1013);
    // A foreign origin is refused with 403 before the limit is even looked at.
    expect(await wsOutcome(s.ws, 'http://b.example')).toBe(403);
    expect(second.ws.readyState).toBe(WebSocket.OPEN);
    // Once a slot is free, the allowed origin gets in.
    first.ws.close();
    await first.closed;
    let outcome: 'open' | number = 0;
    for (let i = 0; i < 50 && outcome !== 'open'; i++) outcome = await wsOutcome(s.ws, 'http://a.example');
    expect(outcome).toBe('open');
    // HTTP follows the same allow-list.
    expect(await statusWithOrigin(`${s.http}/.well-known/asap/health`, 'http://a.example')).toBe(200);
    expect(await statusWithOrigin(`${s.http}/.well-known/asap/health`, 'http://b.example')).toBe(403);
  });

  it('--log-level silent writes nothing to stderr; error and warn drop info logs but keep the hint', async () => {
    const [silent, error, warn] = await Promise.all([
      serve(['--log-level', 'silent', '--push-form', 'notification']),
      serve(['--log-level', 'error']),
      serve(['--log-level', 'warn']),
    ]);
    // A request that fails logs an error (level 50): shown at error and warn, not at silent.
    const outcomes = await Promise.all(
      [silent, error, warn].map((s) =>
        client(`${s.http}/asap`)
          .task('fail', { message: 'boom' })
          .then(
            () => 'resolved',
            (e: Error) => e.message,
          ),
      ),
    );
    expect(outcomes).toEqual(['boom', 'boom', 'boom']);
    const exits = await Promise.all([silent, error, warn].map((s) => s.stop('SIGTERM')));
    for (const e of exits) expect(e).toEqual({ code: 0, signal: null });
    expect(silent.stderr()).toBe('');
    for (const s of [error, warn]) {
      expect(s.stderr()).toContain('npx asap send');
      const logs = jsonLogLines(s.stderr());
      expect(logs.length).toBeGreaterThan(0);
      expect(logs.every((l) => (l.level as number) >= 40)).toBe(true);
      expect(logs.some((l) => l.level === 50)).toBe(true);
    }
    for (const s of [silent, error, warn]) expect(s.stdout().trim()).toMatch(LISTEN_LINE);
  });

  it.each([
    { args: ['--port', 'abc'], message: /--port must be an integer/ },
    { args: ['--log-level', 'loud'], message: /--log-level.*loud.*invalid|Allowed choices/is },
  ])('rejects $args with a non-zero exit and a message', async ({ args, message }) => {
    const r = await runCli(['serve', ...args]);
    expect(r.code).not.toBe(0);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).not.toMatch(/listening/);
  });

  it('serves Prometheus metrics at /asap/metrics by default; --no-metrics turns them off (404)', async () => {
    const on = await serve();
    const echo = await fetch(`${on.http}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: encodeRequest(
        'asap.send',
        {
          envelope: createEnvelope({
            sender: CLIENT,
            recipient: 'urn:asap:agent:demo',
            payload_type: 'TaskRequest',
            payload: { conversation_id: 'c', skill_id: 'echo', input: { m: 1 } },
          }),
        },
        1,
      ),
    });
    expect(echo.status).toBe(200);
    const res = await fetch(`${on.http}/asap/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await res.text()).toContain('asap_requests_total{payload_type="TaskRequest",status="success"} 1');
    const off = await serve(['--no-metrics']);
    expect((await fetch(`${off.http}/asap/metrics`)).status).toBe(404);
    expect((await fetch(`${off.http}/.well-known/asap/health`)).status).toBe(200);
  });

  it('a port already in use → exit 2 with the reason on stderr', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    try {
      const r = await runCli(['serve', '--port', String((busy.address() as net.AddressInfo).port)]);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^asap: listen EADDRINUSE/m);
    } finally {
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });

  it('asap --help and asap serve --help print usage and exit 0', async () => {
    const [top, sub] = await Promise.all([runCli(['--help']), runCli(['serve', '--help'])]);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/^Usage: asap/m);
    for (const cmd of ['serve', 'send', 'discover']) expect(top.stdout).toContain(cmd);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toMatch(/^Usage: asap serve/m);
    for (const flag of [
      '--host',
      '--port',
      '--agent-id',
      '--token',
      '--rate-limit',
      '--heartbeat-interval',
      '--max-message-bytes',
      '--drain-timeout',
      '--log-level',
      '--push-form',
      '--allow-origin',
      '--max-connections',
    ])
      expect(sub.stdout).toContain(flag);
  });
});

describe('asap serve (in-process run, for coverage)', () => {
  /** Runs `serve` in this process and stops it through the listener it installed for `signal`. */
  async function serveInProcess(
    args: string[],
    signal: 'SIGTERM' | 'SIGINT',
    whileUp: (base: string, out: { stdout(): string; stderr(): string }) => Promise<void>,
  ) {
    const beforeTerm = process.listeners('SIGTERM');
    const beforeInt = process.listeners('SIGINT');
    const result = await runInProcess(['serve', '--port', '0', ...args], async (out) => {
      const line = await waitFor(() => /ASAP agent listening on (http:\/\/\S+) /.exec(out.stdout()), 5_000);
      const addedTerm = process.listeners('SIGTERM').filter((l) => !beforeTerm.includes(l));
      const addedInt = process.listeners('SIGINT').filter((l) => !beforeInt.includes(l));
      try {
        expect(addedTerm).toHaveLength(1);
        expect(addedInt).toHaveLength(1);
        await whileUp(line[1] ?? '', out);
      } finally {
        // Always stop the server, even when an assertion failed, so nothing leaks into other tests.
        (signal === 'SIGTERM' ? addedTerm[0] : addedInt[0])?.(signal);
      }
    });
    // serve() removed both of its listeners.
    expect(process.listeners('SIGTERM')).toEqual(beforeTerm);
    expect(process.listeners('SIGINT')).toEqual(beforeInt);
    return result;
  }

  it('serves, prints the line and the token hint, and resolves 0 on SIGTERM', async () => {
    const r = await serveInProcess(
      ['--log-level', 'warn', '--token', 'tok', '--agent-id', 'urn:asap:agent:inproc'],
      'SIGTERM',
      async (base) => {
        const m = (await (await fetch(`${base}/.well-known/asap/manifest.json`)).json()) as { id: string };
        expect(m.id).toBe('urn:asap:agent:inproc');
      },
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^ASAP agent listening on http:\/\/127\.0\.0\.1:\d+ \(ws:\/\/127\.0\.0\.1:\d+\/asap\/ws\)\n$/,
    );
    expect(r.stderr).toContain('--input \'{"hello":"world"}\' --token <token>');
  });

  it('brackets an IPv6 host in the line and prints no hint when silent; resolves 0 on SIGINT', async () => {
    const r = await serveInProcess(['--host', '::1', '--log-level', 'silent'], 'SIGINT', async (base) => {
      expect(base).toMatch(/^http:\/\/\[::1\]:\d+$/);
      expect((await fetch(`${base}/.well-known/asap/health`)).status).toBe(200);
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^ASAP agent listening on http:\/\/\[::1\]:(\d+) \(ws:\/\/\[::1\]:\1\/asap\/ws\)\n$/,
    );
    expect(r.stderr).toBe('');
  });

  it.each([
    ['--port', '-1', /--port must be an integer >= 0/],
    ['--port', '1.5', /--port must be an integer >= 0/],
    ['--rate-limit', 'x', /--rate-limit must be an integer >= 0/],
    ['--heartbeat-interval', '0', /--heartbeat-interval must be a number > 0/],
    ['--max-message-bytes', '0', /--max-message-bytes must be an integer >= 1/],
    ['--drain-timeout', '-1', /--drain-timeout must be a number > 0/],
    ['--log-level', 'loud', /Allowed choices are silent, error, warn, info, debug/],
    ['--push-form', 'xml', /Allowed choices are notification, result/],
    ['--allow-origin', 'a.example', /--allow-origin must be \* or an origin like https:\/\/app\.example/],
    ['--allow-origin', 'http://a.example/path', /--allow-origin must be \* or an origin/],
    ['--max-connections', '0', /--max-connections must be an integer >= 1/],
    ['--bogus', '1', /unknown option '--bogus'/],
  ])('serve %s %s exits 2 with a message', async (flag, value, message) => {
    const before = process.listeners('SIGTERM').length;
    const r = await runInProcess(['serve', flag, value]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
    expect(process.listeners('SIGTERM')).toHaveLength(before);
  });

  it('--allow-origin (repeated) and --max-connections reach the server', async () => {
    const r = await serveInProcess(
      [
        '--log-level',
        'silent',
        '--allow-origin',
        'http://a.example',
        '--allow-origin',
        'https://b.example/',
        '--max-connections',
        '1',
      ],
      'SIGTERM',
      async (base) => {
        const healthUrl = `${base}/.well-known/asap/health`;
        expect(await statusWithOrigin(healthUrl, 'http://a.example')).toBe(200);
        expect(await statusWithOrigin(healthUrl, 'https://b.example')).toBe(200);
        expect(await statusWithOrigin(healthUrl, 'https://c.example')).toBe(403);
        const wsUrl = `${base.replace('http:', 'ws:')}/asap/ws`;
        await rawSocket(wsUrl);
        expect(await wsOutcome(wsUrl, 'http://a.example')).toBe(1013);
      },
    );
    expect(r.code).toBe(0);
  });

  it('--static DIR serves the directory and says so on stderr', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'asap-cli-static-'));
    writeFileSync(path.join(dir, 'index.html'), '<!doctype html><title>cli static</title>');
    try {
      const r = await serveInProcess(['--log-level', 'error', '--static', dir], 'SIGTERM', async (base) => {
        const res = await fetch(`${base}/`);
        expect(res.status).toBe(200);
        expect(await res.text()).toContain('<title>cli static</title>');
        // ASAP routes are unaffected.
        expect((await fetch(`${base}/.well-known/asap/health`)).status).toBe(200);
      });
      expect(r.code).toBe(0);
      const serving = r.stderr.split('\n').find((l) => l.startsWith(`Serving ${dir} at http://127.0.0.1:`));
      expect(serving, r.stderr).toMatch(
        / at http:\/\/127\.0\.0\.1:\d+\/ \(the client bundle at \/asap-client\.js\)$/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a port already in use → exit 2 with a message, no signal listener left behind', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const before = process.listeners('SIGTERM').length;
    try {
      const port = String((busy.address() as net.AddressInfo).port);
      const r = await runInProcess(['serve', '--port', port, '--log-level', 'silent']);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^asap: listen EADDRINUSE: .*\n$/);
      expect(process.listeners('SIGTERM')).toHaveLength(before);
    } finally {
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });

  it('an unknown command exits 2; --help, help serve and no command print usage and exit 0', async () => {
    const unknown = await runInProcess(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'frobnicate'/);

    const help = await runInProcess(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: asap/m);

    const helpServe = await runInProcess(['help', 'serve']);
    expect(helpServe.code).toBe(0);
    expect(helpServe.stdout).toMatch(/^Usage: asap serve/m);

    const none = await runInProcess([]);
    expect(none.code).toBe(0);
    expect(none.stdout + none.stderr).toMatch(/^Usage: asap/m);
  });
});
