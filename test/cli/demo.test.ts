/**
 * `npm run demo` (README, demo-agent.md): a self-contained round trip over WebSocket and HTTP
 * that exits 0. Run as a child from the TypeScript sources, and once in-process (importing the
 * module runs it) so that coverage sees src/cli/demo.ts.
 */
import { describe, expect, it } from 'vitest';
import { spawnNode, waitFor, withCapturedOutput } from './cli-helpers.js';

function expectRoundTrips(stdout: string): void {
  expect(stdout).toMatch(
    /^Demo agent listening on http:\/\/127\.0\.0\.1:\d+ \(ws:\/\/127\.0\.0\.1:\d+\/asap\/ws\)$/m,
  );
  const ws = stdout.indexOf('WebSocket:');
  const http = stdout.indexOf('HTTP:');
  const done = stdout.indexOf('Done.');
  expect(ws).toBeGreaterThan(-1);
  expect(http).toBeGreaterThan(ws);
  expect(done).toBeGreaterThan(http);
  const wsPart = stdout.slice(ws, http);
  const httpPart = stdout.slice(http, done);
  // WebSocket: echo request/response, two pushes before the push response, a stream of 3 chunks.
  expect(wsPart).toMatch(/-> TaskRequest .*"skill_id":"echo"/);
  expect(wsPart).toMatch(/<- TaskResponse .*"status":"completed".*"echo":\{"hello":"world"\}/);
  expect(wsPart.match(/<- push TaskUpdate /g)).toHaveLength(2);
  expect(wsPart).toMatch(/<- TaskResponse .*"pushed":2/);
  expect(wsPart.indexOf('<- push TaskUpdate')).toBeLessThan(wsPart.search(/<- TaskResponse .*"pushed":2/));
  expect(wsPart.match(/<- TaskStream /g)).toHaveLength(3);
  expect(wsPart).toMatch(/TaskStream .*"chunk":"chunk-2".*"final":true/);
  // HTTP: echo round trip, then the manifest.
  expect(httpPart).toMatch(/-> TaskRequest .*"hello":"http"/);
  expect(httpPart).toMatch(/<- TaskResponse .*"status":"completed"/);
  expect(httpPart).toMatch(
    /Manifest: urn:asap:agent:demo with skills echo, sleep, stream, push, fail, count/,
  );
}

describe('the demo (npm run demo)', () => {
  it('runs as a child process from the sources and exits 0 after both round trips', async () => {
    const p = spawnNode('src/cli/demo.ts', []);
    const timer = setTimeout(() => p.child.kill('SIGKILL'), 15_000);
    const exit = await p.exited;
    clearTimeout(timer);
    expect(exit, p.stderr()).toEqual({ code: 0, signal: null });
    expect(p.stderr()).toBe('');
    expectRoundTrips(p.stdout());
  });

  it('runs in-process (for coverage) with the same output', async () => {
    const stdout = await withCapturedOutput(async (out) => {
      await import('../../src/cli/demo.js');
      return waitFor(
        () => out.stdout().includes('Done.') && out.stdout(),
        10_000,
        () => out.stdout(),
      );
    });
    expectRoundTrips(stdout);
  });
});
