/**
 * `asap send --stream` over an http:// URL (demo-agent.md: streams over HTTP too, via
 * `POST /asap/stream`): one JSON line per chunk, printed as it arrives, the same format as over
 * WebSocket; an `event: error` mid-stream prints the error and exits 1.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { createReply, type Envelope } from '../../src/protocol/envelope.js';
import type { ASAPServer } from '../../src/server/server.js';
import { runInProcess } from './cli-helpers.js';

type Chunk = Envelope<{ chunk?: string; final?: boolean; status?: string }>;

function lines(stdout: string): Chunk[] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Chunk);
}

describe('asap send --stream over HTTP', () => {
  let agent: ASAPServer;
  let http: string;

  beforeAll(async () => {
    agent = createDemoAgent({ rateLimit: 0, drainTimeoutMs: 500 });
    const a = await agent.listen({ host: '127.0.0.1', port: 0 });
    http = `${a.url}/asap`;
  });

  afterAll(async () => {
    await agent?.close();
  });

  it('prints each chunk as it arrives, one JSON line each, exit 0', async () => {
    const seen: number[] = [];
    const r = await runInProcess(
      ['send', http, '--skill', 'stream', '--input', '{"chunks":4,"interval_ms":150}', '--stream'],
      async (out) => {
        // Sample the output while the command runs: lines appear one by one, not all at the end.
        const until = Date.now() + 5000;
        while (Date.now() < until) {
          const n = lines(out.stdout()).length;
          if (seen.at(-1) !== n) seen.push(n);
          if (n >= 4) break;
          await new Promise((res) => setTimeout(res, 10));
        }
      },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    const chunks = lines(r.stdout);
    expect(chunks.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2', 'chunk-3']);
    expect(chunks.at(-1)?.payload).toMatchObject({ final: true, status: 'completed' });
    expect(chunks.every((c) => c.payload_type === 'TaskStream')).toBe(true);
  });

  it('an error event after some chunks prints them, then the error, exit 1', async () => {
    const server = createServer((req, res) => {
      let text = '';
      req.on('data', (c) => {
        text += c;
      });
      req.on('end', () => {
        const env = JSON.parse(text).params.envelope as Envelope;
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const c0 = createReply(env, 'TaskStream', { chunk: 'chunk-0', final: false, status: 'working' });
        const error = { code: -32033, message: 'Handler timed out', data: { recoverable: true } };
        res.end(`data: ${JSON.stringify(c0)}\n\nevent: error\ndata: ${JSON.stringify(error)}\n\n`);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/asap`;
      const r = await runInProcess(['send', url, '--skill', 'stream', '--stream']);
      expect(r.code).toBe(1);
      const [first, second] = r.stdout.split(/\n(?=\{\n)/);
      expect((JSON.parse(first ?? '') as Chunk).payload.chunk).toBe('chunk-0');
      expect(JSON.parse(second ?? '')).toEqual({
        error: { code: -32033, message: 'Handler timed out', data: { recoverable: true } },
      });
      expect(r.stderr).toBe('asap send: error -32033: Handler timed out\n');
    } finally {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  });
});
