/**
 * What a failed WebSocket connection says (issue 18, item 8): with `ws` the error names the HTTP
 * status of a refused upgrade, a refused connection or a TLS failure, and the channel ends with that
 * message (ws's error as the cause) instead of `Connection closed (1006)`; a browser WebSocket's
 * error event carries no detail, so the generic close message stays.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeWebSocketFactory } from '../../src/client/node-runtime.js';
import { describeWsError } from '../../src/client/node-websocket.js';
import { type ChannelSink, ReconnectingChannel } from '../../src/client/reconnecting-channel.js';
import type { WebSocketLike } from '../../src/client/runtime.js';
import { ConnectionError } from '../../src/protocol/errors.js';
import { closedPort } from '../cli/cli-helpers.js';

const sink: ChannelSink = { message: () => {}, opened: () => {}, dropped: () => {}, ended: () => {} };

/** Connects once (no reconnect) and returns the error the channel ended with. */
async function failure(url: string, factory = nodeWebSocketFactory): Promise<ConnectionError> {
  const channel = new ReconnectingChannel(url, { factory, reconnect: false, heartbeatIntervalMs: 0 }, sink);
  const errors: Error[] = [];
  channel.on('error', (e) => errors.push(e));
  const err = await channel.connect().then(
    () => {
      throw new Error('connected');
    },
    (e: unknown) => e as ConnectionError,
  );
  expect(err).toBeInstanceOf(ConnectionError);
  // The 'error' event carries the same words (or 'WebSocket error' when the socket gave none).
  expect(errors[0]?.message).toBe(err.cause === undefined ? 'WebSocket error' : err.message);
  return err;
}

/** A socket that (after opening, when `opens`) reports `errorEvent`, then closes with 1006. */
function fakeSocket(errorEvent: unknown, opens = false) {
  return (): WebSocketLike => {
    const s: WebSocketLike = {
      readyState: 0,
      bufferedAmount: 0,
      protocol: '',
      binaryType: 'blob',
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
      send: () => {},
      close: () => {},
    };
    setTimeout(() => {
      if (opens) {
        (s as { readyState: number }).readyState = 1;
        s.onopen?.({});
      }
      setTimeout(() => {
        (s as { readyState: number }).readyState = 3;
        s.onerror?.(errorEvent);
        s.onclose?.({ code: 1006, reason: '' });
      }, 1);
    }, 1);
    return s;
  };
}

describe('a failed ws connection says what happened', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    // Plain HTTP that refuses every upgrade with 404.
    server = createServer((_req, res) => res.writeHead(404).end('no'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('a wrong path: the HTTP status of the upgrade', async () => {
    const url = `ws://127.0.0.1:${port}/wrong`;
    const err = await failure(url);
    expect(err.message).toBe(`HTTP 404 on WebSocket upgrade to ${url}`);
    expect(err.data).toEqual({ code: 1006, reason: '' });
    expect((err.cause as Error).message).toBe(err.message);
    expect(((err.cause as Error).cause as Error).message).toBe('Unexpected server response: 404');
  });

  it('a closed port: connection refused with the address', async () => {
    const closed = await closedPort();
    const err = await failure(`ws://127.0.0.1:${closed}/asap/ws`);
    expect(err.message).toBe(`connection refused (127.0.0.1:${closed})`);
    expect(((err.cause as Error).cause as { code?: string }).code).toBe('ECONNREFUSED');
  });

  it('wss:// to a plain server: a TLS error', async () => {
    const url = `wss://127.0.0.1:${port}/asap/ws`;
    const err = await failure(url);
    expect(err.message).toMatch(/^TLS error: \S.* \(wss:\/\/127\.0\.0\.1:\d+\/asap\/ws\)$/);
    expect(err.message).not.toMatch(/SSL routines|\n/);
  });

  it('a socket whose error event has only a message: that message ends the attempt', async () => {
    const err = await failure(
      'ws://127.0.0.1:1/asap/ws',
      fakeSocket({ type: 'error', message: 'proxy said no' }),
    );
    expect(err.message).toBe('proxy said no');
    expect((err.cause as Error).message).toBe('proxy said no');
  });

  it('an error on an open connection: the close message stays, with the error as its cause', async () => {
    const channel = new ReconnectingChannel(
      'ws://127.0.0.1:1/asap/ws',
      {
        factory: fakeSocket({ error: new Error('read ECONNRESET') }, true),
        reconnect: false,
        heartbeatIntervalMs: 0,
      },
      { ...sink, ended: (e) => ended.push(e) },
    );
    const ended: Error[] = [];
    await channel.connect();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(ended[0]?.message).toBe('Connection closed (1006)');
    expect((ended[0]?.cause as Error | undefined)?.message).toBe('read ECONNRESET');
  });

  it('a browser-like socket whose error event has no detail keeps the generic close message', async () => {
    const err = await failure('ws://127.0.0.1:1/asap/ws', fakeSocket({ type: 'error' }));
    expect(err.message).toBe('Connection closed (1006)');
    expect(err.cause).toBeUndefined();
  });
});

describe('describeWsError', () => {
  const sys = (message: string, fields: Record<string, unknown> = {}) =>
    Object.assign(new Error(message), fields);

  it.each([
    [
      sys('Unexpected server response: 401'),
      'ws://h:1/asap/ws',
      'HTTP 401 on WebSocket upgrade to ws://h:1/asap/ws',
    ],
    [
      sys('connect ECONNREFUSED ::1:8080', { code: 'ECONNREFUSED', address: '::1', port: 8080 }),
      'ws://localhost:8080/asap/ws',
      'connection refused (::1:8080)',
    ],
    [sys('connect ECONNREFUSED', { code: 'ECONNREFUSED' }), 'ws://h/asap/ws', 'connection refused (h:80)'],
    [sys('connect ECONNREFUSED', { code: 'ECONNREFUSED' }), 'wss://h/asap/ws', 'connection refused (h:443)'],
    [
      sys('getaddrinfo ENOTFOUND nowhere.invalid', { code: 'ENOTFOUND', hostname: 'nowhere.invalid' }),
      'ws://nowhere.invalid/asap/ws',
      'host not found (nowhere.invalid)',
    ],
    [sys('getaddrinfo EAI_AGAIN x', { code: 'EAI_AGAIN' }), 'ws://x:9/asap/ws', 'host not found (x:9)'],
    [
      sys('connect ETIMEDOUT 10.0.0.1:443', { code: 'ETIMEDOUT', address: '10.0.0.1', port: 443 }),
      'wss://10.0.0.1/asap/ws',
      'connection timed out (10.0.0.1:443)',
    ],
    [sys('socket hang up', { code: 'ECONNRESET' }), 'ws://h:2/asap/ws', 'connection reset (h:2)'],
    [
      sys('self-signed certificate', { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }),
      'wss://h/asap/ws',
      'TLS error: self-signed certificate (wss://h/asap/ws)',
    ],
    [
      sys("Hostname/IP does not match certificate's altnames", { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }),
      'wss://h/asap/ws',
      "TLS error: Hostname/IP does not match certificate's altnames (wss://h/asap/ws)",
    ],
    [
      sys('wrong version', { code: 'ERR_SSL_WRONG_VERSION_NUMBER' }),
      'wss://h/asap/ws',
      'TLS error: wrong version (wss://h/asap/ws)',
    ],
    [
      sys('write EPROTO 80:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:x.c:350:\n'),
      'wss://h/asap/ws',
      'TLS error: wrong version number (wss://h/asap/ws)',
    ],
    [sys('Invalid WebSocket frame'), 'ws://h/asap/ws', 'Invalid WebSocket frame'],
    [sys('connect ECONNREFUSED', { code: 'ECONNREFUSED' }), 'not a url', 'connection refused (not a url)'],
  ])('%s → the message', (error, url, expected) => {
    expect(describeWsError(error, url)).toBe(expected);
  });
});
