/**
 * The CLI's own messages (issue 18, item 8): `--version`, a URL given without its scheme, the
 * timeout message in the unit of `--timeout`, what a failed WebSocket connection was (HTTP status of
 * the upgrade, connection refused, TLS error), and the unknown-skill answer naming the skills.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingSchemeError, packageVersion } from '../../src/cli/commands.js';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { ASAPServer } from '../../src/server/server.js';
import { closedPort, ROOT, runCli, runInProcess } from './cli-helpers.js';

const VERSION = (JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { version: string }).version;

const lines = (s: string) => s.split('\n').filter((l) => l !== '');

describe('asap --version', () => {
  it('reads the version from package.json next to the module', () => {
    expect(packageVersion()).toBe(VERSION);
  });

  it.each([[[]], [['serve']], [['send']], [['discover']]])(
    'asap %j --version prints the version and exits 0',
    async (before) => {
      const r = await runInProcess([...before, '--version']);
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(VERSION);
    },
  );

  it('works from the command itself (under tsx)', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
  });
});

describe('a URL without its scheme', () => {
  it.each([
    ['127.0.0.1:8080', '127.0.0.1:8080'],
    ['localhost:8080/asap/ws', 'localhost:8080'],
    ['example.com', 'example.com'],
  ])('send %s → exit 2 and one line suggesting http:// or ws://', async (url, hostPort) => {
    const r = await runInProcess(['send', url]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(lines(r.stderr)).toEqual([
      `asap send: ${url} has no scheme: use http://${hostPort}/asap (HTTP) or ws://${hostPort}/asap/ws (WebSocket)`,
    ]);
  });

  it('discover 127.0.0.1:8080 → exit 2 suggesting http://', async () => {
    const r = await runInProcess(['discover', '127.0.0.1:8080']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual([
      'asap discover: 127.0.0.1:8080 has no scheme: use http://127.0.0.1:8080',
    ]);
  });

  it('leaves URLs with a scheme (or no host shape) to the client', () => {
    expect(missingSchemeError('ws://127.0.0.1:8080/asap/ws')).toBeUndefined();
    expect(missingSchemeError('http://h')).toBeUndefined();
    expect(missingSchemeError('mailto:someone@example.com')).toBeUndefined();
    expect(missingSchemeError('[::1]:8080')).toMatch(/use http:\/\/\[::1\]:8080\/asap/);
  });
});

describe('asap send against a demo agent', () => {
  let server: ASAPServer;
  let http: string;
  let ws: string;

  beforeAll(async () => {
    server = createDemoAgent({ rateLimit: 0, drainTimeoutMs: 200 });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    http = `${addr.url}/asap`;
    ws = `ws://127.0.0.1:${addr.port}/asap/ws`;
  });
  afterAll(() => server.close());

  it.each([
    ['http', () => http],
    ['ws', () => ws],
  ])('%s: the timeout message names --timeout in seconds, no internal id', async (_name, url) => {
    const r = await runInProcess([
      'send',
      url(),
      '--skill',
      'sleep',
      '--input',
      '{"ms":1500}',
      '--timeout',
      '0.3',
    ]);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['asap send: no response within 0.3 s (--timeout)']);
    expect(r.stderr).not.toMatch(/req-|ms\b|http:/);
  });

  it.each([
    [
      'a wrong WebSocket path',
      (port: number) => `ws://127.0.0.1:${port}/wrong`,
      /^HTTP 404 on WebSocket upgrade to ws:\/\/127\.0\.0\.1:\d+\/wrong$/,
    ],
    [
      'wss:// to a plain server',
      (port: number) => `wss://127.0.0.1:${port}/asap/ws`,
      /^TLS error: \S.*\(wss:\/\/127\.0\.0\.1:\d+\/asap\/ws\)$/,
    ],
  ])('%s: one line saying what happened, exit 2', async (_name, url, expected) => {
    const r = await runInProcess(['send', url(Number(new URL(ws).port)), '--timeout', '5']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const [line, ...more] = lines(r.stderr);
    expect(more).toEqual([]);
    expect(line?.replace(/^asap send: /, '')).toMatch(expected);
  });

  it('a closed port over WebSocket: connection refused (127.0.0.1:PORT), exit 2', async () => {
    const port = await closedPort();
    const r = await runInProcess(['send', `ws://127.0.0.1:${port}/asap/ws`, '--timeout', '5']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual([`asap send: connection refused (127.0.0.1:${port})`]);
  });

  it('an unknown skill: the answer and the message name the skills that exist', async () => {
    const r = await runInProcess(['send', ws, '--skill', 'nope']);
    expect(r.code).toBe(1);
    const reply = JSON.parse(r.stdout) as { payload: { status: string; result: Record<string, unknown> } };
    expect(reply.payload.status).toBe('failed');
    expect(reply.payload.result).toEqual({
      error: 'Unknown skill: nope',
      available_skills: ['echo', 'sleep', 'stream', 'push', 'fail', 'count'],
    });
    expect(lines(r.stderr)).toEqual([
      'asap send: task ended with status failed: Unknown skill: nope (available skills: echo, sleep, stream, push, fail, count)',
    ]);
  });
});
