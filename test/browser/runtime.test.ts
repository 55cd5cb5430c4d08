/**
 * The browser entry (src/client/browser.ts) in Node made to look like a browser (no
 * `process.getBuiltinModule`, see test/support/browser-like.ts), with a WHATWG-style WebSocket
 * constructor as the global (`ws`), over real sockets: the entry has no Node WebSocket factory, the
 * token travels as the `asap.bearer.<token>` subprotocol, and without a global WebSocket the transport
 * says what is missing.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import * as entry from '../../src/client/browser.js';
import { defaultWebSocketFactory } from '../../src/client/runtime.js';
import type { ASAPServer } from '../../src/server/server.js';
import { hideNodeRuntime } from '../support/browser-like.js';

const g = globalThis as { WebSocket?: unknown };
const original = g.WebSocket;

describe('browser entry', () => {
  const servers: ASAPServer[] = [];
  const transports: entry.WebSocketTransport[] = [];
  let restoreNode: () => void = () => {};

  beforeEach(() => {
    restoreNode = hideNodeRuntime();
  });

  afterEach(async () => {
    g.WebSocket = original;
    restoreNode();
    await Promise.all(transports.splice(0).map((t) => t.close()));
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  async function agentUrl(token?: string): Promise<string> {
    const server = createDemoAgent({ token, rateLimit: 0 });
    servers.push(server);
    return `${(await server.listen({ port: 0 })).url.replace('http:', 'ws:')}/asap/ws`;
  }

  it('has no Node factory: without a global WebSocket it says what is missing', () => {
    expect('nodeWebSocketFactory' in entry).toBe(false);
    g.WebSocket = undefined;
    expect(() => defaultWebSocketFactory()).toThrow(/No WebSocket implementation/);
    expect(() => new entry.WebSocketTransport('ws://127.0.0.1:1/asap/ws')).toThrow(
      /No WebSocket implementation/,
    );
  });

  it('uses the global WebSocket and sends the token as the asap.bearer subprotocol', async () => {
    g.WebSocket = WebSocket;
    const url = await agentUrl('s3cret');
    const ok = new entry.WebSocketTransport(url, { token: 's3cret', reconnect: false });
    transports.push(ok);
    await ok.connect();
    expect(ok.protocol).toBe('asap.v1');
    const client = new entry.ASAPClient(url, { token: 's3cret', websocket: { reconnect: false } });
    try {
      const res = await client.task('echo', { from: 'browser entry' });
      expect(res.payload).toMatchObject({ status: 'completed', result: { echo: { from: 'browser entry' } } });
    } finally {
      await client.close();
    }

    const none = new entry.WebSocketTransport(url, { reconnect: false });
    transports.push(none);
    const gaveUp = new Promise<{ error: Error }>((r) => none.on('gaveUp', r));
    await none.connect().catch(() => {});
    expect((await gaveUp).error.message).toContain('Authentication required');
  });

  it('offers exactly asap.v1 without a token, and a factory passed explicitly wins over the global', async () => {
    const seen: (string[] | undefined)[] = [];
    const Recording = class extends WebSocket {
      constructor(url: string, protocols?: string[]) {
        seen.push(protocols);
        super(url, protocols);
      }
    };
    g.WebSocket = Recording;
    const url = await agentUrl();
    const t = new entry.WebSocketTransport(url, { reconnect: false });
    transports.push(t);
    await t.connect();
    expect(seen).toEqual([['asap.v1']]);

    g.WebSocket = WebSocket;
    const custom = entry.browserWebSocketFactory(Recording as never);
    const t2 = new entry.WebSocketTransport(url, { token: 'x', reconnect: false, webSocketFactory: custom });
    transports.push(t2);
    await t2.connect();
    expect(seen[1]).toEqual(['asap.v1', 'asap.bearer.x']);
  });
  it("has the package root's names but the server's, and no schema objects", async () => {
    const root = await import('../../src/index.js');
    const protocol = await import('../../src/protocol/index.js');
    const serverSide = [
      'ASAPServer',
      'HandlerRegistry',
      'LocalPushAdapter',
      'MemoryDedupeStore',
      'MemoryNonceStore',
      'MemorySessionStore',
      'staticToken',
    ];
    expect(
      Object.keys(root)
        .filter((name) => !(name in entry))
        .sort(),
    ).toEqual(serverSide.sort());
    // The protocol's helpers are all there; its zod schemas are not (the bundle has lite ones).
    const schemas = Object.entries(protocol)
      .filter(([, v]) => typeof v === 'object' && v !== null && 'safeParse' in v)
      .map(([name]) => name);
    expect(schemas).toContain('TaskRequest');
    expect(Object.keys(protocol).filter((name) => !(name in entry))).toEqual(schemas);
    expect(Object.keys(entry.PAYLOAD_SCHEMAS)).toEqual(Object.keys(protocol.PAYLOAD_SCHEMAS));
    expect(entry.PAYLOAD_SCHEMAS.TaskCancel.safeParse({ task_id: 't' })).toEqual({
      success: true,
      data: { task_id: 't' },
    });
  });
});
