/**
 * Where the client's WebSocket comes from (src/client/runtime.ts): nothing is installed on import; a
 * transport given no factory resolves one when it needs it — `ws` in Node (the token in the
 * Authorization header, which the reference server reads), else the global WebSocket (the token as
 * the `asap.bearer.<token>` subprotocol).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { browserWebSocketFactory, nodeWebSocketFactory, WebSocketTransport } from '../../src/client/index.js';
import { defaultWebSocketFactory } from '../../src/client/runtime.js';
import { asBrowser } from '../support/browser-like.js';
import { cleanups, type RawServer, runCleanups, startRawServer, taskInit, waitFor } from './helpers.js';

afterEach(runCleanups);

async function raw(): Promise<RawServer> {
  const r = await startRawServer(undefined, { handleProtocols: () => 'asap.v1' });
  cleanups.push(() => r.close());
  return r;
}

/** A WHATWG-style constructor that records its calls and opens a real `ws` socket. */
function recordingWebSocket(calls: unknown[][]): new (url: string, protocols?: string[]) => WebSocket {
  return class extends WebSocket {
    constructor(url: string, protocols?: string[]) {
      calls.push([url, protocols]);
      super(url, protocols);
    }
  };
}

describe('WebSocket runtime', () => {
  it('in Node, a transport given no factory uses ws: the token goes in the Authorization header', async () => {
    const r = await raw();
    const t = new WebSocketTransport(r.url, { token: 'node-token' });
    cleanups.push(() => t.close());
    await t.connect();
    await waitFor(() => r.upgrades.length === 1, 'upgrade');
    expect(r.upgrades[0]?.headers.authorization).toBe('Bearer node-token');
    expect(r.upgrades[0]?.headers['sec-websocket-protocol']).toBe('asap.v1');
  });

  it('in Node, ws wins over a global WebSocket (which could not send the header)', async () => {
    const r = await raw();
    const calls: unknown[][] = [];
    const g = globalThis as { WebSocket?: unknown };
    const had = Object.hasOwn(g, 'WebSocket');
    const saved = g.WebSocket;
    g.WebSocket = recordingWebSocket(calls);
    try {
      const t = new WebSocketTransport(r.url, { token: 'node-token' });
      cleanups.push(() => t.close());
      await t.connect();
      await waitFor(() => r.upgrades.length === 1, 'upgrade');
      expect(r.upgrades[0]?.headers.authorization).toBe('Bearer node-token');
      expect(calls).toEqual([]);
    } finally {
      if (had) g.WebSocket = saved;
      else delete g.WebSocket;
    }
  });

  it('outside Node, without a global WebSocket, says what to do', async () => {
    await asBrowser(undefined, () => {
      expect(() => defaultWebSocketFactory()).toThrow(
        'No WebSocket implementation: pass webSocketFactory (in Node: nodeWebSocketFactory)',
      );
      expect(() => new WebSocketTransport('ws://127.0.0.1:1/asap/ws')).toThrow(/No WebSocket implementation/);
      // A factory passed explicitly needs no default.
      const t = new WebSocketTransport('ws://127.0.0.1:1/asap/ws', {
        webSocketFactory: nodeWebSocketFactory,
      });
      expect(t.state).toBe('idle');
    });
  });

  it('outside Node, takes the global WebSocket, with the token as a subprotocol', async () => {
    const r = await raw();
    await asBrowser(WebSocket, async () => {
      const t = new WebSocketTransport(r.url, { token: 'browser-token' });
      cleanups.push(() => t.close());
      void t.request(taskInit('echo')).catch(() => {});
      await waitFor(() => r.upgrades.length === 1, 'upgrade');
      expect(r.upgrades[0]?.headers['sec-websocket-protocol']?.split(/,\s*/)).toEqual([
        'asap.v1',
        'asap.bearer.browser-token',
      ]);
      expect(r.upgrades[0]?.headers.authorization).toBeUndefined();
      await waitFor(() => t.state === 'open', 'open');
      expect(t.protocol).toBe('asap.v1');
    });
  });

  it('in Node, when ws cannot be loaded, takes the global WebSocket', async () => {
    vi.resetModules();
    const fresh = await import('../../src/client/runtime.js');
    const proc = process as { getBuiltinModule?: (id: string) => unknown };
    const saved = proc.getBuiltinModule;
    let requires = 0;
    proc.getBuiltinModule = () => ({
      createRequire: () => () => {
        requires++;
        throw new Error("Cannot find module 'ws'");
      },
    });
    const g = globalThis as { WebSocket?: unknown };
    const had = Object.hasOwn(g, 'WebSocket');
    const savedWebSocket = g.WebSocket;
    try {
      delete g.WebSocket;
      expect(() => fresh.defaultWebSocketFactory()).toThrow(/No WebSocket implementation/);
      const calls: unknown[][] = [];
      g.WebSocket = class {
        constructor(...args: unknown[]) {
          calls.push(args);
        }
      };
      fresh.defaultWebSocketFactory()('ws://x/asap/ws', { protocols: ['asap.v1'], token: 't' });
      expect(calls).toEqual([['ws://x/asap/ws', ['asap.v1', 'asap.bearer.t']]]);
      // The failed load is remembered, not retried per connection.
      expect(requires).toBe(1);
    } finally {
      proc.getBuiltinModule = saved;
      if (had) g.WebSocket = savedWebSocket;
      else delete g.WebSocket;
    }
  });

  it('browserWebSocketFactory passes the protocols as they are without a token', () => {
    const calls: unknown[][] = [];
    class Recorder {
      constructor(...args: unknown[]) {
        calls.push(args);
      }
    }
    const factory = browserWebSocketFactory(Recorder as never);
    factory('ws://x/asap/ws', { protocols: ['asap.v1'] });
    factory('ws://x/asap/ws', { protocols: ['asap.v1'], token: 't' });
    expect(calls).toEqual([
      ['ws://x/asap/ws', ['asap.v1']],
      ['ws://x/asap/ws', ['asap.v1', 'asap.bearer.t']],
    ]);
  });

  it('the browser entry exposes the same client, without the ws factory', async () => {
    const browser = await import('../../src/client/browser.js');
    const node = await import('../../src/client/index.js');
    expect(browser.ASAPClient).toBe(node.ASAPClient);
    expect(browser.WebSocketTransport).toBe(node.WebSocketTransport);
    expect('nodeWebSocketFactory' in browser).toBe(false);
    expect('nodeWebSocketFactory' in node).toBe(true);
  });
});
