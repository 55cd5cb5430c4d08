/**
 * `asap send URL` end to end (demo-agent.md "asap send"): exit 0 on a completed response,
 * 1 on an error response, 2 on a connection failure or timeout, with a one-line stderr message.
 *
 * The first suite spawns the real command against a real `asap serve` child; the second calls
 * run(argv) in-process (so coverage sees commands.ts and demo-agent.ts) against demo agents
 * started in this process with createDemoAgent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { type Envelope, validateEnvelope } from '../../src/protocol/envelope.js';
import type { ASAPServer } from '../../src/server/server.js';
import {
  type CliResult,
  closedPort,
  expectReferenceValid,
  type InProcessResult,
  referenceValidators,
  runCli,
  runInProcess,
  type Served,
  startServe,
} from './cli-helpers.js';

type AnyEnvelope = Envelope<{ status?: string; result?: unknown; chunk?: string; final?: boolean }>;

/** Asserts a completed TaskResponse that validates with our validator and the reference schema. */
function expectCompletedResponse(stdout: string): AnyEnvelope {
  const env = JSON.parse(stdout) as AnyEnvelope;
  expect(validateEnvelope(env).ok).toBe(true);
  expectReferenceValid('envelope', env);
  expect(env.payload_type).toBe('TaskResponse');
  expect(env.payload.status).toBe('completed');
  expect(env.correlation_id).toBe((env.payload as { task_id?: string }).task_id);
  return env;
}

/** stderr is exactly one line. */
function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  expect(lines, stderr).toHaveLength(1);
  return lines[0] ?? '';
}

type PushEnvelope = Envelope<{ progress?: { percent?: number } }>;

/** The `{"push": envelope}` lines of stdout (demo-agent.md "Additions"), and the rest of it. */
function splitPushes(stdout: string): { pushes: PushEnvelope[]; rest: string } {
  const lines = stdout.split('\n');
  const pushes = lines
    .filter((l) => l.startsWith('{"push":'))
    .map((l) => (JSON.parse(l) as { push: PushEnvelope }).push);
  return { pushes, rest: lines.filter((l) => !l.startsWith('{"push":')).join('\n') };
}

function streamLines(stdout: string): AnyEnvelope[] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as AnyEnvelope);
}

describe('asap send (child process against asap serve)', () => {
  let open: Served;
  let locked: Served;
  let closed: number;

  beforeAll(async () => {
    if (referenceValidators() === undefined) console.warn('[cli] reference schema validation skipped');
    [open, locked, closed] = await Promise.all([
      startServe(['--rate-limit', '0', '--log-level', 'silent']),
      startServe(['--token', 's3cret', '--log-level', 'silent']),
      closedPort(),
    ]);
  });

  afterAll(async () => {
    const exits = await Promise.all([open?.stop(), locked?.stop()]);
    for (const e of exits) if (e !== undefined) expect(e.code).toBe(0);
  });

  const send = (...args: string[]): Promise<CliResult> => runCli(['send', ...args]);

  it('http: prints a completed TaskResponse that validates (ours and the reference schema), exit 0', async () => {
    const r = await send(`${open.http}/asap`, '--skill', 'echo', '--input', '{"a":1}');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const env = expectCompletedResponse(r.stdout);
    expect(env.payload.result).toEqual({ echo: { a: 1 } });
    expect(env.sender).toBe('urn:asap:agent:demo');
    expect(env.recipient).toBe('urn:asap:agent:cli');
  });

  it('ws: the same over ws://…/asap/ws, exit 0', async () => {
    const r = await send(open.ws, '--skill', 'echo', '--input', '{"a":1}');
    expect(r.code, r.stderr).toBe(0);
    expect(expectCompletedResponse(r.stdout).payload.result).toEqual({ echo: { a: 1 } });
  });

  it('--stream prints 5 JSON lines, chunk-0..chunk-4, the last final', async () => {
    const r = await send(
      open.ws,
      '--skill',
      'stream',
      '--input',
      '{"chunks":5,"interval_ms":50}',
      '--stream',
    );
    expect(r.code, r.stderr).toBe(0);
    const chunks = streamLines(r.stdout);
    expect(chunks.map((c) => c.payload.chunk)).toEqual([
      'chunk-0',
      'chunk-1',
      'chunk-2',
      'chunk-3',
      'chunk-4',
    ]);
    expect(chunks.map((c) => c.payload.final)).toEqual([false, false, false, false, true]);
    expect(chunks[4]?.payload.status).toBe('completed');
    for (const c of chunks) {
      expect(c.payload_type).toBe('TaskStream');
      expect(validateEnvelope(c).ok).toBe(true);
      expectReferenceValid('envelope', c);
    }
    expect(new Set(chunks.map((c) => c.correlation_id)).size).toBe(1);
  });

  it('--skill fail: exit 1, the error on stdout, a one-line message on stderr', async () => {
    const r = await send(`${open.http}/asap`, '--skill', 'fail', '--input', '{"message":"kaboom"}');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({
      error: {
        code: -32603,
        message: 'kaboom',
        data: { recoverable: false, asap_taxonomy_code: 'asap:rpc/remote_error' },
      },
    });
    expect(oneLine(r.stderr)).toBe('asap send: error -32603: kaboom');
  });

  it('an unknown skill: exit 1 with status failed', async () => {
    const r = await send(open.ws, '--skill', 'no-such-skill');
    expect(r.code).toBe(1);
    const env = JSON.parse(r.stdout) as AnyEnvelope;
    expect(env.payload.status).toBe('failed');
    expect(JSON.stringify(env.payload.result)).toContain('no-such-skill');
    expect(oneLine(r.stderr)).toMatch(/status failed/);
  });

  it.each(['http', 'ws'])(
    '%s: connection refused on a closed port → exit 2, one line on stderr',
    async (scheme) => {
      const url = scheme === 'http' ? `http://127.0.0.1:${closed}/asap` : `ws://127.0.0.1:${closed}/asap/ws`;
      const r = await send(url, '--timeout', '5');
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(oneLine(r.stderr)).toMatch(/^asap send: /);
    },
  );

  it('--timeout 1 with sleep 3000 → exit 2', async () => {
    const r = await send(`${open.http}/asap`, '--skill', 'sleep', '--input', '{"ms":3000}', '--timeout', '1');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toBe('asap send: no response within 1 s (--timeout)');
  });

  it('--token: the right token → 0; a wrong one → exit 1 with -32004 over HTTP and WebSocket (4401)', async () => {
    const [right, wrongHttp] = await Promise.all([
      send(locked.ws, '--token', 's3cret'),
      send(`${locked.http}/asap`, '--token', 'nope'),
    ]);
    const wrongWs = await send(locked.ws, '--token', 'nope');
    expect(right.code, right.stderr).toBe(0);
    expectCompletedResponse(right.stdout);
    // A refused token is the server's answer (401 / -32004 on HTTP, close 4401 on WebSocket): exit 1.
    for (const r of [wrongHttp, wrongWs]) {
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout).error.code).toBe(-32004);
      expect(oneLine(r.stderr)).toBe('asap send: error -32004: Invalid token');
    }
  });

  it('--sender becomes the recipient of the reply', async () => {
    const r = await send(`${open.http}/asap`, '--sender', 'urn:asap:agent:someone-else');
    expect(r.code, r.stderr).toBe(0);
    expect(expectCompletedResponse(r.stdout).recipient).toBe('urn:asap:agent:someone-else');
  });

  it('--input that is not a JSON object, or a bad URL scheme → non-zero with a message', async () => {
    const [array, scheme] = await Promise.all([
      send(`${open.http}/asap`, '--input', '[1,2]'),
      send(`ftp://127.0.0.1:${open.port}/asap`),
    ]);
    expect(array.code).toBe(2);
    expect(array.stderr).toMatch(/--input must be a JSON object/);
    expect(scheme.code).toBe(2);
    expect(oneLine(scheme.stderr)).toMatch(/^asap send: Unsupported URL scheme ftp:/);
    for (const r of [array, scheme]) expect(r.stdout).toBe('');
  });
});

describe('asap send (in-process run against in-process demo agents)', () => {
  let open: ASAPServer;
  let locked: ASAPServer;
  let http: string;
  let ws: string;
  let lockedHttp: string;
  let lockedWs: string;
  let closed: number;

  beforeAll(async () => {
    open = createDemoAgent({ rateLimit: 0, drainTimeoutMs: 500 });
    locked = createDemoAgent({ token: 'tok', agentId: 'urn:asap:agent:locked', drainTimeoutMs: 500 });
    const [a, b] = await Promise.all([
      open.listen({ host: '127.0.0.1', port: 0 }),
      locked.listen({ host: '127.0.0.1', port: 0 }),
    ]);
    http = `${a.url}/asap`;
    ws = `ws://127.0.0.1:${a.port}/asap/ws`;
    lockedHttp = `${b.url}/asap`;
    lockedWs = `ws://127.0.0.1:${b.port}/asap/ws`;
    closed = await closedPort();
  });

  afterAll(async () => {
    await Promise.all([open?.close(), locked?.close()]);
  });

  const send = (...args: string[]): Promise<InProcessResult> => runInProcess(['send', ...args]);

  it.each([
    ['http', () => http],
    ['ws', () => ws],
  ])('%s: echo completes with exit 0', async (_name, url) => {
    const r = await send(url(), '--skill', 'echo', '--input', '{"a":1}', '--sender', 'urn:asap:agent:me');
    expect(r.code, r.stderr).toBe(0);
    const env = expectCompletedResponse(r.stdout);
    expect(env.payload.result).toEqual({ echo: { a: 1 } });
    expect(env.recipient).toBe('urn:asap:agent:me');
  });

  it('the default skill is echo with input {}', async () => {
    const r = await send(http);
    expect(r.code).toBe(0);
    expect(expectCompletedResponse(r.stdout).payload.result).toEqual({ echo: {} });
  });

  it('--stream over ws prints each chunk; over HTTP only the final chunk', async () => {
    const overWs = await send(
      ws,
      '--skill',
      'stream',
      '--input',
      '{"chunks":3,"interval_ms":10}',
      '--stream',
    );
    expect(overWs.code, overWs.stderr).toBe(0);
    expect(streamLines(overWs.stdout).map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2']);

    const overHttp = await send(http, '--skill', 'stream', '--input', '{"chunks":3}', '--stream');
    expect(overHttp.code, overHttp.stderr).toBe(0);
    const lines = streamLines(overHttp.stdout);
    expect(lines.at(-1)?.payload).toMatchObject({ chunk: 'chunk-2', final: true, status: 'completed' });

    const empty = await send(ws, '--skill', 'stream', '--input', '{"chunks":0}', '--stream');
    expect(empty.code).toBe(0);
    expect(streamLines(empty.stdout)).toHaveLength(1);
    expect(streamLines(empty.stdout)[0]?.payload).toMatchObject({
      chunk: '',
      final: true,
      status: 'completed',
    });
  });

  it('--stream of an unknown skill ends with status failed → exit 1', async () => {
    const r = await send(ws, '--skill', 'nope', '--stream');
    expect(r.code).toBe(1);
    expect(streamLines(r.stdout).at(-1)?.payload.status).toBe('failed');
    expect(oneLine(r.stderr)).toBe(
      'asap send: task ended with status failed: Unknown skill: nope (available skills: echo, sleep, stream, push, fail, count)',
    );
  });

  it('push: over ws each push is printed as a {"push": envelope} line before the reply; over HTTP pushed 0', async () => {
    const overWs = await send(ws, '--skill', 'push', '--input', '{"count":3}');
    expect(overWs.code, overWs.stderr).toBe(0);
    const { pushes, rest } = splitPushes(overWs.stdout);
    expect(pushes.map((p) => [p.payload_type, p.payload.progress?.percent])).toEqual([
      ['TaskUpdate', 33],
      ['TaskUpdate', 67],
      ['TaskUpdate', 100],
    ]);
    for (const p of pushes) expect(validateEnvelope(p).ok).toBe(true);
    expect(expectCompletedResponse(rest).payload.result).toEqual({ pushed: 3 });
    expect(pushes[0]?.correlation_id).toBe(JSON.parse(rest).correlation_id);
    const overHttp = await send(http, '--skill', 'push', '--input', '{"count":3}');
    expect(overHttp.code).toBe(0);
    expect(expectCompletedResponse(overHttp.stdout).payload.result).toEqual({ pushed: 0 });
  });

  it('push with --stream: the push lines and the chunk lines share stdout, one JSON value per line', async () => {
    const r = await send(ws, '--skill', 'push', '--input', '{"count":2}', '--stream');
    expect(r.code, r.stderr).toBe(0);
    const { pushes, rest } = splitPushes(r.stdout);
    expect(pushes).toHaveLength(2);
    expect(streamLines(rest).at(-1)?.payload).toMatchObject({ status: 'completed', result: { pushed: 2 } });
  });

  it('count increments per key across sends', async () => {
    const key = `k-${Date.now()}`;
    const results = [];
    for (const url of [http, ws, http])
      results.push(
        expectCompletedResponse(
          (await send(url, '--skill', 'count', '--input', JSON.stringify({ key }))).stdout,
        ),
      );
    expect(results.map((e) => e.payload.result)).toEqual([
      { key, count: 1 },
      { key, count: 2 },
      { key, count: 3 },
    ]);
    const numeric = await send(http, '--skill', 'count', '--input', '{"key":7}');
    expect(expectCompletedResponse(numeric.stdout).payload.result).toMatchObject({ key: '7' });
    const none = await send(http, '--skill', 'count');
    expect(expectCompletedResponse(none.stdout).payload.result).toMatchObject({ key: 'default' });
  });

  it('fail: exit 1, -32603 on stdout, one line on stderr (input.message, or a default message)', async () => {
    const cases: Array<[string, string, string]> = [
      [http, '{}', 'Task failed'],
      [ws, '{"message":""}', 'Task failed'],
      [ws, '{"message":"kaboom"}', 'kaboom'],
    ];
    for (const [url, input, message] of cases) {
      const r = await send(url, '--skill', 'fail', '--input', input);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toEqual({
        error: {
          code: -32603,
          message,
          data: { recoverable: false, asap_taxonomy_code: 'asap:rpc/remote_error' },
        },
      });
      expect(oneLine(r.stderr)).toBe(`asap send: error -32603: ${message}`);
    }
  });

  it('a short sleep completes and echoes its input', async () => {
    for (const url of [http, ws]) {
      const r = await send(url, '--skill', 'sleep', '--input', '{"ms":20}');
      expect(r.code, r.stderr).toBe(0);
      expect(expectCompletedResponse(r.stdout).payload.result).toEqual({ echo: { ms: 20 } });
    }
  });

  it('a bad skill input is a remote -32602 error → exit 1', async () => {
    const r = await send(http, '--skill', 'sleep', '--input', '{"ms":-5}');
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { error: { code: number; message: string } };
    expect(out.error.code).toBe(-32602);
    expect(out.error.message).toMatch(/input\.ms must be a non-negative integer/);
  });

  it('an unknown skill → exit 1, status failed', async () => {
    const r = await send(http, '--skill', 'nope');
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as AnyEnvelope).payload.status).toBe('failed');
  });

  it.each([
    ['http', () => `http://127.0.0.1:${closed}/asap`],
    ['ws', () => `ws://127.0.0.1:${closed}/asap/ws`],
  ])('%s: connection refused → exit 2, one line, nothing on stdout', async (_name, url) => {
    const r = await send(url(), '--timeout', '5');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toMatch(/^asap send: \S/);
  });

  it.each([
    ['http', () => http],
    ['ws', () => ws],
  ])('%s: --timeout below the sleep → exit 2', async (_name, url) => {
    const r = await send(url(), '--skill', 'sleep', '--input', '{"ms":2000}', '--timeout', '0.2');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toBe('asap send: no response within 0.2 s (--timeout)');
  });

  it('--token: right → 0; wrong or missing → exit 1 with -32004 (HTTP 401, WebSocket 4401)', async () => {
    const right = await send(lockedHttp, '--token', 'tok', '--recipient', 'urn:asap:agent:locked');
    expect(right.code, right.stderr).toBe(0);
    expect(expectCompletedResponse(right.stdout).sender).toBe('urn:asap:agent:locked');
    const rightWs = await send(lockedWs, '--token', 'tok');
    expect(rightWs.code, rightWs.stderr).toBe(0);
    for (const url of [lockedHttp, lockedWs]) {
      const wrong = await send(url, '--token', 'bad');
      expect(wrong.code).toBe(1);
      expect(JSON.parse(wrong.stdout).error.code).toBe(-32004);
      expect(oneLine(wrong.stderr)).toBe('asap send: error -32004: Invalid token');
    }
    const missing = await send(lockedHttp);
    expect(missing.code).toBe(1);
    expect(oneLine(missing.stderr)).toMatch(/-32004/);
  });

  it("--token-command: the command's output is the token; a failing or empty command → exit 2, named", async () => {
    for (const url of [lockedHttp, lockedWs]) {
      const ok = await send(
        url,
        '--token-command',
        'printf "tok\\n"',
        '--recipient',
        'urn:asap:agent:locked',
      );
      expect(ok.code, ok.stderr).toBe(0);
    }
    const failing = await send(lockedWs, '--token-command', 'echo no credentials >&2; exit 3');
    expect(failing.code).toBe(2);
    expect(oneLine(failing.stderr)).toBe(
      'asap send: Cannot get a token: --token-command failed: no credentials',
    );
    const empty = await send(lockedHttp, '--token-command', 'true');
    expect(empty.code).toBe(2);
    expect(oneLine(empty.stderr)).toBe(
      'asap send: Cannot get a token: --token-command printed no single token',
    );
  });

  it.each([
    [['--input', '[1]'], /--input must be a JSON object/],
    [['--input', 'not json'], /--input must be JSON/],
    [['--input', '"a string"'], /--input must be a JSON object/],
    [['--timeout', '0'], /--timeout must be a number > 0/],
    [['--timeout', 'soon'], /--timeout must be a number > 0/],
  ])('send %j → exit 2 with a message', async (args, message) => {
    const r = await send(http, ...args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).not.toContain('"payload_type"');
  });

  it('a missing URL → exit 2; a bad URL scheme → exit 2 with one line', async () => {
    const missing = await send();
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/missing required argument 'url'/);
    const scheme = await send('gopher://127.0.0.1/asap');
    expect(scheme.code).toBe(2);
    expect(oneLine(scheme.stderr)).toMatch(/^asap send: Unsupported URL scheme gopher:/);
  });
});
