/**
 * Writes made in one tick leave in one socket write: the TCP socket under the WebSocket is corked
 * from the first write of a tick to its end (`writable.writableCorked`), on the server (replies to
 * the frames of one read) and on the client (requests sent in one tick).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { wsWebSocketFactory } from '../../src/client/node-websocket.js';
import { WebSocketTransport } from '../../src/client/websocket-transport.js';
import { FLUSH_EVERY } from '../../src/core/cork.js';
import { ASAPServer } from '../../src/server/server.js';
import { cleanup, rpcRequest, task, trackHttpServer, trackServer, waitFor } from './ws-helpers.js';

afterEach(cleanup);

const nextTick = () => new Promise<void>((resolve) => process.nextTick(resolve));

describe('batched writes', () => {
  it('the server corks its socket from the first reply of a read to the end of the tick', async () => {
    const http: Server = trackHttpServer(createServer());
    const server = trackServer(new ASAPServer({ manifest: { id: 'urn:asap:agent:demo', description: 'd' } }));
    const corkedAt: number[] = [];
    const heldAt: number[] = [];
    server.skill('probe', (env) => {
      corkedAt.push(raw!.writableCorked);
      heldAt.push(raw!.writableLength);
      return { task_id: env.id, status: 'completed' };
    });
    server.attach(http);
    // Attached after the server (which takes over the listeners already there), called before it.
    let raw: Socket | undefined;
    http.prependListener('upgrade', (_req, socket) => {
      raw = socket as Socket;
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const ws = new WebSocket(`ws://127.0.0.1:${(http.address() as AddressInfo).port}/asap/ws`);
    const replies: unknown[] = [];
    ws.on('message', (data) => replies.push(data));
    await new Promise((resolve) => ws.once('open', resolve));
    // Frames sent in one tick of this process: the server reads them together.
    const n = FLUSH_EVERY + 2;
    for (let i = 0; i < n; i++) ws.send(rpcRequest(task('probe', { i }), i));
    await waitFor(() => replies.length === n, 'the replies');
    // The first handler ran before any write of the tick; the next ones after the first reply, corked.
    expect(corkedAt).toEqual([0, ...new Array(n - 1).fill(1)]);
    // Replies pile up in the corked socket, FLUSH_EVERY at most: the next write sends them.
    for (let i = 2; i <= FLUSH_EVERY; i++) expect(heldAt[i]).toBeGreaterThan(heldAt[i - 1]!);
    expect(heldAt[FLUSH_EVERY + 1]).toBeLessThan(heldAt[FLUSH_EVERY]!);
    await nextTick();
    expect(raw!.writableCorked).toBe(0);
    ws.close();
  });

  it('the client corks its socket from the first request of a tick to its end', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await new Promise((resolve) => wss.once('listening', resolve));
    let frames = 0;
    wss.on('connection', (socket) => {
      socket.on('message', (data) => {
        if (JSON.parse(data.toString()).method === 'asap.send') frames++;
      });
    });
    // The client's own socket, as the upgrade response gives it.
    let raw: Socket | undefined;
    class Observed extends WebSocket {
      constructor(...args: ConstructorParameters<typeof WebSocket>) {
        super(...args);
        this.once('upgrade', (res) => {
          raw = res.socket as Socket;
        });
      }
    }
    const transport = new WebSocketTransport(
      `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/asap/ws`,
      {
        webSocketFactory: wsWebSocketFactory(Observed as unknown as typeof WebSocket),
        resume: false,
        heartbeatIntervalMs: 0,
        ack: false,
      },
    );
    try {
      await transport.connect();
      await nextTick();
      expect(raw!.writableCorked).toBe(0);
      const held: number[] = [];
      for (let i = 0; i < 10; i++) {
        transport.request(task('echo', { i })).catch(() => undefined);
        held.push(raw!.writableLength);
      }
      expect(raw!.writableCorked).toBe(1);
      // Held while corked, 8 at most: the ninth send flushes the first eight.
      for (let i = 1; i < 8; i++) expect(held[i]).toBeGreaterThan(held[i - 1]!);
      expect(held[8]).toBeLessThan(held[7]!);
      await nextTick();
      expect(raw!.writableCorked).toBe(0);
      await waitFor(() => frames === 10, 'the requests');
    } finally {
      await transport.close();
      await new Promise((resolve) => wss.close(resolve));
    }
  });
});
