/**
 * scripts/build-browser.mjs: the browser bundle builds, holds no Node-only code, stays within its size
 * budget (the build fails past it), and exports the client and the protocol helpers, validating what
 * it receives as the server does.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { validateEnvelope } from '../../src/protocol/envelope.js';
import type { ASAPServer } from '../../src/server/server.js';
import { PAYLOAD_TYPES, PAYLOADS, rawEnvelope } from '../protocol/fixtures.js';
import { asBrowser } from '../support/browser-like.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = join(ROOT, 'scripts', 'build-browser.mjs');

function build(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT, ...args], { cwd: ROOT }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : ((err as { code?: number }).code ?? 1), stdout, stderr });
    });
  });
}

describe('browser bundle', () => {
  let dir: string;
  let out: string;
  let first: { code: number; stdout: string; stderr: string };
  let agent: ASAPServer;
  const transports: { close(): Promise<void> }[] = [];

  afterEach(async () => {
    await Promise.all(transports.splice(0).map((t) => t.close()));
    await agent?.close();
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'asap-bundle-'));
    out = join(dir, 'asap-client.js');
    first = await build('--out', out);
  }, 60_000);

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('builds and reports its sizes', () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(
      /KB minified, [\d.]+ KB gzip \(budget 20\.0 KB\); minified by part: .*validation [\d.]+ KB/,
    );
  });

  it('stays within 20 KB gzip, validation included, and says what takes the room', () => {
    const size = JSON.parse(readFileSync(join(dir, 'size.json'), 'utf8'));
    expect(size.budget).toBe(20 * 1024);
    expect(size.gzip).toBeGreaterThan(1000);
    expect(size.gzip).toBeLessThanOrEqual(size.budget);
    expect(size.gzip).toBe(gzipSync(readFileSync(out), { level: 9 }).length);
    expect(Object.keys(size.parts)).toEqual(
      expect.arrayContaining(['client', 'protocol', 'core', 'validation']),
    );
    expect(size.files['src/protocol/lite-schema.ts']).toBeGreaterThan(0);
    const total = Object.values(size.parts as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(total).toBeLessThanOrEqual(size.minified);
  });

  it('holds no Node-only code, no package, and none of the server', () => {
    const code = readFileSync(out, 'utf8');
    expect(code).not.toMatch(/["']node:/);
    expect(code).not.toMatch(/\brequire\(/);
    expect(code).not.toContain('ws does not work in the browser');
    expect(code).not.toContain('process.env');
    const size = JSON.parse(readFileSync(join(dir, 'size.json'), 'utf8'));
    const files = Object.keys(size.files);
    expect(files.filter((f) => f.includes('node_modules/'))).toEqual([]);
    expect(
      files.filter((f) => /^src\/(server|redis|cli)\/|^src\/core\/(dispatcher|tasks|dedupe)\.ts/.test(f)),
    ).toEqual([]);
  });

  it('fails the build past the budget', async () => {
    const r = await build('--out', join(dir, 'small.js'), '--budget', '1024', '--quiet');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/over budget: [\d.]+ KB gzip \(budget 1\.0 KB\)/);
    expect(existsSync(join(dir, 'small.js'))).toBe(false);
  }, 60_000);

  it('exports the client and the protocol, and talks to an agent over the global WebSocket', async () => {
    const mod = await import(pathToFileURL(out).href);
    for (const name of [
      'ASAPClient',
      'WebSocketTransport',
      'HttpTransport',
      'ConnectionPool',
      'browserWebSocketFactory',
      'createEnvelope',
      'validateEnvelope',
      'ASAPError',
    ]) {
      expect([name, typeof mod[name]]).toEqual([name, 'function']);
    }
    expect(mod.nodeWebSocketFactory).toBeUndefined();
    agent = createDemoAgent({ token: 'tok', rateLimit: 0 });
    await withGlobalWebSocket(async () => {
      const url = `${(await agent.listen({ port: 0 })).url.replace('http:', 'ws:')}/asap/ws`;
      const t = new mod.WebSocketTransport(url, { token: 'tok', reconnect: false });
      transports.push(t);
      await t.connect();
      expect(t.protocol).toBe('asap.v1');
      const env = mod.createEnvelope({
        sender: 'urn:asap:agent:bundle-test',
        recipient: 'urn:asap:agent:demo',
        payload_type: 'TaskRequest',
        payload: { conversation_id: 'c', skill_id: 'echo', input: { via: 'bundle' } },
      });
      expect(mod.validateEnvelope(env).ok).toBe(true);
      const res = await t.request(env);
      expect(res.payload).toMatchObject({ status: 'completed', result: { echo: { via: 'bundle' } } });

      const wrong = new mod.WebSocketTransport(url, { token: 'nope', reconnect: false });
      transports.push(wrong);
      const refused = new Promise<{ error: { code: number; message: string } }>((r) => wrong.on('gaveUp', r));
      await wrong.connect().catch(() => {});
      const { error } = await refused;
      expect(error.code).toBe(-32004);
      expect(error.message).toContain('Invalid token');
    });
  });

  it('exports what src/client/browser.ts exports', async () => {
    const mod = await import(pathToFileURL(out).href);
    const entry = await import('../../src/client/browser.js');
    expect(Object.keys(mod).sort()).toEqual(Object.keys(entry).sort());
  });

  it('validates envelopes as the server does: same verdicts and issues, payloads included', async () => {
    const mod = await import(pathToFileURL(out).href);
    const inputs: unknown[] = [
      null,
      [],
      'x',
      {},
      rawEnvelope({ sender: 'bob' }),
      rawEnvelope({ timestamp: '2026-02-30T10:00:00Z' }),
    ];
    inputs.push(rawEnvelope({ extra: 1, payload: [] }), rawEnvelope({ id: undefined, timestamp: undefined }));
    for (const type of PAYLOAD_TYPES) {
      const full = PAYLOADS[type].full as Record<string, unknown>;
      const first = Object.keys(full)[0];
      const env = (payload: unknown, extra: Record<string, unknown> = {}) =>
        rawEnvelope({ payload_type: type, payload, correlation_id: 'req-1', ...extra });
      inputs.push(
        env(full),
        env(PAYLOADS[type].minimal),
        env({ ...full, extra: true }),
        env(full, { correlation_id: null }),
      );
      if (first !== undefined)
        inputs.push(env({ ...full, [first]: 42 }), env({ ...full, [first]: undefined }));
    }
    let accepted = 0;
    for (const input of inputs) {
      const a = validateEnvelope(input);
      const b = mod.validateEnvelope(input);
      expect(b.ok, JSON.stringify(input)).toBe(a.ok);
      if (a.ok) {
        accepted++;
        expect({ ...b.envelope, id: 0, timestamp: 0 }).toEqual({ ...a.envelope, id: 0, timestamp: 0 });
      } else {
        expect(b.issues, JSON.stringify(input)).toEqual(a.issues);
      }
    }
    expect(accepted).toBeGreaterThan(20);
    expect(accepted).toBeLessThan(inputs.length - 40);
    const ids = [mod.newId(), mod.newId(), mod.newId()];
    for (const id of ids) expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect([...ids].sort()).toEqual(ids);
  });
});

/**
 * The bundle uses whatever `globalThis.WebSocket` is, as in a browser; here it is `ws`, which takes
 * `(url, protocols)` like the browser's, so the token can only travel as the subprotocol entry.
 */
/** As in a browser: `ws` as the global WebSocket, and no Node runtime for the bundle to load `ws` from. */
function withGlobalWebSocket(fn: () => Promise<void>): Promise<void> {
  return asBrowser(WebSocket, fn);
}
