/**
 * scripts/build-browser.mjs: the browser bundle builds, holds no Node-only code, stays under its size
 * budget (the build fails past it), and exports the client and the protocol helpers.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { ASAPServer } from '../../src/server/server.js';
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
    expect(first.stdout).toMatch(/KB minified, [\d.]+ KB gzip; zod's share .*measured \(budget 30\.0 KB\)/);
  });

  it('stays under 30 KB gzip without zod', () => {
    const size = JSON.parse(readFileSync(join(dir, 'size.json'), 'utf8'));
    expect(size.budget).toBe(30 * 1024);
    expect(size.gzipWithoutZodMeasured).toBeGreaterThan(1000);
    expect(size.gzipWithoutZodMeasured).toBeLessThan(size.budget);
    expect(size.gzipWithoutZodEstimate).toBeLessThan(size.budget);
    expect(size.zodMinified).toBeGreaterThan(0);
    expect(size.gzip).toBeGreaterThan(size.gzipWithoutZodMeasured);
  });

  it('holds no Node-only code', () => {
    const code = readFileSync(out, 'utf8');
    expect(code).not.toMatch(/["']node:/);
    expect(code).not.toMatch(/\brequire\(/);
    expect(code).not.toContain('ws does not work in the browser');
    expect(code).not.toContain('process.env');
  });

  it('fails the build past the budget', async () => {
    const r = await build('--out', join(dir, 'small.js'), '--budget', '1024', '--quiet');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/over budget: [\d.]+ KB gzip without zod \(budget 1\.0 KB\)/);
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
});

/**
 * The bundle uses whatever `globalThis.WebSocket` is, as in a browser; here it is `ws`, which takes
 * `(url, protocols)` like the browser's, so the token can only travel as the subprotocol entry.
 */
/** As in a browser: `ws` as the global WebSocket, and no Node runtime for the bundle to load `ws` from. */
function withGlobalWebSocket(fn: () => Promise<void>): Promise<void> {
  return asBrowser(WebSocket, fn);
}
