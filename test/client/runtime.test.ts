import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  browserWebSocketFactory,
  defaultWebSocketFactory,
  nodeWebSocketFactory,
  setDefaultWebSocketFactory,
  WebSocketTransport,
} from '../../src/client/index.js';
import { cleanups, type RawServer, runCleanups, startRawServer, taskInit, waitFor } from './helpers.js';

afterEach(runCleanups);

type WithWebSocket = { WebSocket?: unknown };

/** Runs `fn` with no installed factory and `globalWebSocket` as the global WebSocket; restores both. */
async function withRuntime(globalWebSocket: unknown, fn: () => Promise<void> | void): Promise<void> {
  const g = globalThis as WithWebSocket;
  const had = Object.hasOwn(g, 'WebSocket');
  const saved = g.WebSocket;
  setDefaultWebSocketFactory(undefined);
  if (globalWebSocket === undefined) delete g.WebSocket;
  else g.WebSocket = globalWebSocket;
  try {
    await fn();
  } finally {
    setDefaultWebSocketFactory(nodeWebSocketFactory);
    if (had) g.WebSocket = saved;
    else delete g.WebSocket;
  }
}

async function raw(): Promise<RawServer> {
  const r = await startRawServer(undefined, { handleProtocols: () => 'asap.v1' });
  cleanups.push(() => r.close());
  return r;
}

describe('WebSocket runtime', () => {
  it('the Node entry installs the ws-based factory', async () => {
    expect(defaultWebSocketFactory()).toBe(nodeWebSocketFactory);
    const r = await raw();
    const t = new WebSocketTransport(r.url, { token: 'node-token' });
    cleanups.push(() => t.close());
    await t.connect();
    await waitFor(() => r.upgrades.length === 1, 'upgrade');
    expect(r.upgrades[0]?.headers.authorization).toBe('Bearer node-token');
  });

  it('without an installed factory or a global WebSocket, says what to do', async () => {
    await withRuntime(undefined, () => {
      expect(() => defaultWebSocketFactory()).toThrow(
        'No WebSocket implementation: pass webSocketFactory, or import asap-ts/client in Node',
      );
      expect(() => new WebSocketTransport('ws://127.0.0.1:1/asap/ws')).toThrow(/No WebSocket implementation/);
      // A factory passed explicitly needs no default.
      const t = new WebSocketTransport('ws://127.0.0.1:1/asap/ws', {
        webSocketFactory: nodeWebSocketFactory,
      });
      expect(t.state).toBe('idle');
    });
    expect(defaultWebSocketFactory()).toBe(nodeWebSocketFactory);
  });

  it('falls back to the global WebSocket, with the token as a subprotocol', async () => {
    const r = await raw();
    await withRuntime(WebSocket, async () => {
      const factory = defaultWebSocketFactory();
      expect(factory).not.toBe(nodeWebSocketFactory);
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

  it('the browser entry exposes the same client without installing ws', async () => {
    const browser = await import('../../src/client/browser.js');
    const node = await import('../../src/client/index.js');
    expect(browser.ASAPClient).toBe(node.ASAPClient);
    expect(browser.WebSocketTransport).toBe(node.WebSocketTransport);
    expect('nodeWebSocketFactory' in browser).toBe(false);
  });
});
