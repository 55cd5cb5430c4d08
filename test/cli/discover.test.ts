/**
 * `asap discover BASE_URL` (demo-agent.md): prints {manifest, health} as JSON; the manifest
 * validates against the reference entities/manifest.schema.json; unreachable → exit 2.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { validateManifest } from '../../src/protocol/manifest.js';
import type { ASAPServer } from '../../src/server/server.js';
import {
  closedPort,
  expectReferenceValid,
  referenceValidators,
  runCli,
  runInProcess,
  type Served,
  startServe,
} from './cli-helpers.js';

const SKILLS = ['echo', 'sleep', 'stream', 'push', 'fail', 'count'];

interface Discovered {
  manifest: {
    id: string;
    capabilities: { skills: Array<{ id: string }> };
    endpoints: { asap: string; events?: string };
  };
  health: { status: string; agent_id: string };
}

function expectDiscovered(stdout: string, agentId: string, port: number): Discovered {
  const out = JSON.parse(stdout) as Discovered;
  expect(Object.keys(out).sort()).toEqual(['health', 'manifest']);
  expect(validateManifest(out.manifest).ok).toBe(true);
  expectReferenceValid('manifest', out.manifest);
  expect(out.manifest.id).toBe(agentId);
  expect(out.manifest.capabilities.skills.map((s) => s.id).sort()).toEqual([...SKILLS].sort());
  expect(out.manifest.endpoints).toEqual({
    asap: `http://127.0.0.1:${port}/asap`,
    events: `ws://127.0.0.1:${port}/asap/ws`,
  });
  expect(out.health).toMatchObject({ status: 'healthy', agent_id: agentId });
  return out;
}

describe('asap discover (child process against asap serve)', () => {
  let s: Served;
  let closed: number;

  beforeAll(async () => {
    if (referenceValidators() === undefined) console.warn('[cli] reference manifest validation skipped');
    [s, closed] = await Promise.all([
      startServe(['--agent-id', 'urn:asap:agent:discover-me', '--token', 'sekrit', '--log-level', 'silent']),
      closedPort(),
    ]);
  });

  afterAll(async () => {
    if (s !== undefined) expect((await s.stop()).code).toBe(0);
  });

  it('prints {manifest, health}; the manifest validates against the reference schema (no token needed)', async () => {
    const r = await runCli(['discover', s.http]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expectDiscovered(r.stdout, 'urn:asap:agent:discover-me', s.port);
  });

  it('a closed port → exit 2 with a one-line message; a bad scheme → exit 2', async () => {
    const [refused, scheme] = await Promise.all([
      runCli(['discover', `http://127.0.0.1:${closed}`, '--timeout', '5']),
      runCli(['discover', 'ftp://127.0.0.1:1']),
    ]);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toBe('');
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.stderr).toMatch(/Cannot reach http:\/\/127\.0\.0\.1:\d+\/\.well-known\/asap\//);
    expect(scheme.code).toBe(2);
    expect(scheme.stdout).toBe('');
    expect(scheme.stderr).toBe('asap discover: Unsupported URL scheme ftp: (use http, https, ws or wss)\n');
  });
});

describe('asap discover (in-process run)', () => {
  let server: ASAPServer;
  let port: number;
  let closed: number;

  beforeAll(async () => {
    server = createDemoAgent({ agentId: 'urn:asap:agent:inproc-discover', token: 't' });
    port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
    closed = await closedPort();
  });

  afterAll(async () => {
    await server?.close();
  });

  it('prints {manifest, health} for an http:// base URL, and for a ws:// one (mapped to http)', async () => {
    const viaHttp = await runInProcess([
      'discover',
      `http://127.0.0.1:${port}`,
      '--token',
      't',
      '--timeout',
      '5',
    ]);
    expect(viaHttp.code, viaHttp.stderr).toBe(0);
    expectDiscovered(viaHttp.stdout, 'urn:asap:agent:inproc-discover', port);

    const viaWs = await runInProcess(['discover', `ws://127.0.0.1:${port}`]);
    expect(viaWs.code, viaWs.stderr).toBe(0);
    expectDiscovered(viaWs.stdout, 'urn:asap:agent:inproc-discover', port);
  });

  it('a closed port → exit 2, one line on stderr, nothing on stdout', async () => {
    const r = await runInProcess(['discover', `http://127.0.0.1:${closed}`]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      /^asap discover: Cannot reach http:\/\/127\.0\.0\.1:\d+\/\.well-known\/asap\/\S+: .+\n$/,
    );
  });

  it('a server that is not an ASAP agent (manifest 404) → exit 2 with the HTTP status', async () => {
    const plain = http.createServer((_req, res) => {
      res.statusCode = 404;
      res.end('not here');
    });
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    try {
      const { port: p } = plain.address() as AddressInfo;
      const r = await runInProcess(['discover', `http://127.0.0.1:${p}`]);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^asap discover: .*HTTP 404/);
    } finally {
      plain.closeAllConnections();
      await new Promise<void>((resolve) => plain.close(() => resolve()));
    }
  });

  it('a server that answers 200 with something that is not a manifest → exit 1 (a protocol error)', async () => {
    const plain = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end('{"hello":"not a manifest"}');
    });
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    try {
      const { port: p } = plain.address() as AddressInfo;
      const r = await runInProcess(['discover', `http://127.0.0.1:${p}`]);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout).error.message).toMatch(/Invalid (manifest|health)/);
      expect(r.stderr).toMatch(/^asap discover: error -?\d+: Invalid (manifest|health)/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    } finally {
      plain.closeAllConnections();
      await new Promise<void>((resolve) => plain.close(() => resolve()));
    }
  });

  it('an unsupported scheme → exit 2 with one line', async () => {
    const r = await runInProcess(['discover', 'ftp://127.0.0.1:1']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('asap discover: Unsupported URL scheme ftp: (use http, https, ws or wss)\n');
  });

  it('bad arguments → exit 2 with a message', async () => {
    const noUrl = await runInProcess(['discover']);
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toMatch(/missing required argument 'base-url'/);
    const badTimeout = await runInProcess(['discover', `http://127.0.0.1:${port}`, '--timeout', '-3']);
    expect(badTimeout.code).toBe(2);
    expect(badTimeout.stderr).toMatch(/--timeout must be a number > 0/);
  });
});
