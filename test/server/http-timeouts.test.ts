/**
 * HTTP timeouts of asap-wire.md §10 over real sockets on 127.0.0.1: headers must arrive within
 * `headersTimeoutMs` (slowloris), a whole request within `requestTimeoutMs` (slow body), and a
 * WebSocket upgrade whose authentication does not finish within the headers timeout is dropped,
 * its late verdict ignored. Handlers, WebSockets and normal clients are not cut by these deadlines.
 *
 * Bounds are generous (the machine is shared): the deadlines here are 300 ms / 1 s, the checks
 * allow several seconds.
 */
import { randomBytes } from 'node:crypto';
import { type Socket, connect as tcpConnect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeRequest } from '../../src/protocol/jsonrpc.js';
import { ASAPServer } from '../../src/server/server.js';
import { cleanup, connect, DEMO_URN, open, sleep, startDemo, task, waitFor } from './ws-helpers.js';

const sockets = new Set<Socket>();
const timers = new Set<ReturnType<typeof setInterval>>();

afterEach(async () => {
  for (const t of timers) clearInterval(t);
  timers.clear();
  for (const s of sockets) s.destroy();
  sockets.clear();
  await cleanup();
});

interface RawPeer {
  socket: Socket;
  received(): string;
  /** Resolves with the time (Date.now()) the server closed the connection. */
  closed: Promise<number>;
}

function raw(port: number): RawPeer {
  const socket = tcpConnect(port, '127.0.0.1');
  sockets.add(socket);
  let data = '';
  socket.setEncoding('latin1').on('data', (d: string) => {
    data += d;
  });
  socket.on('error', () => {});
  const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
  return { socket, received: () => data, closed };
}

/** Writes `chunk()` every `ms` until the socket closes. */
function trickle(peer: RawPeer, ms: number, chunk: () => string): void {
  const t = setInterval(() => {
    if (peer.socket.destroyed || !peer.socket.writable) {
      clearInterval(t);
      return;
    }
    peer.socket.write(chunk());
  }, ms);
  timers.add(t);
  void peer.closed.then(() => clearInterval(t));
}

async function health(url: string): Promise<{ status: number; queue: number }> {
  const res = await fetch(`${url}/.well-known/asap/health`);
  const body = (await res.json()) as { load: { queue_depth: number } };
  return { status: res.status, queue: body.load.queue_depth };
}

describe('headers timeout (slowloris)', () => {
  it('closes 50 sockets that never finish their headers, while a normal client is served', async () => {
    const { url, port } = await startDemo({ headersTimeoutMs: 300 });
    const started = Date.now();
    const peers = Array.from({ length: 50 }, () => raw(port));
    for (const [i, p] of peers.entries()) {
      p.socket.write(`GET /.well-known/asap/health HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`);
      // One more header line every 100 ms: the connection is never idle, the headers never end.
      trickle(p, 100, () => `X-Slow-${i}: ${Date.now()}\r\n`);
    }
    // While they hang on, an ordinary request is answered.
    expect((await health(url)).status).toBe(200);

    const closedAt = await Promise.race([
      Promise.all(peers.map((p) => p.closed)),
      sleep(5_000).then(() => undefined),
    ]);
    expect(closedAt, 'every slow socket closed by the server').toBeDefined();
    expect(Math.max(...(closedAt ?? [])) - started).toBeLessThan(5_000);
    // None was answered as if its request had completed.
    for (const p of peers) expect(p.received()).not.toMatch(/^HTTP\/1\.1 200/);
    expect((await health(url)).status).toBe(200);
  });

  it('also closes a connection that sends nothing at all', async () => {
    const { port } = await startDemo({ headersTimeoutMs: 300 });
    const idle = raw(port);
    const t0 = Date.now();
    const closedAt = await Promise.race([idle.closed, sleep(5_000).then(() => undefined)]);
    expect(closedAt, 'closed by the server').toBeDefined();
    expect((closedAt ?? 0) - t0).toBeLessThan(5_000);
  });
});

describe('request timeout (slow body)', () => {
  it('cuts a request whose body trickles in past requestTimeoutMs, and nothing stays in flight', async () => {
    const { url, port } = await startDemo({ headersTimeoutMs: 300, requestTimeoutMs: 1000 });
    const body = encodeRequest('asap.send', { envelope: task('echo', { pad: 'x'.repeat(500) }) }, 1);
    const slow = raw(port);
    const t0 = Date.now();
    slow.socket.write(
      `POST /asap HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`,
    );
    let sent = 0;
    // Headers done; then one byte every 50 ms: the body would take half a minute.
    trickle(slow, 50, () => body.charAt(sent++));
    const closedAt = await Promise.race([slow.closed, sleep(6_000).then(() => undefined)]);
    expect(closedAt, 'closed by the server').toBeDefined();
    const elapsed = (closedAt ?? 0) - t0;
    // The request deadline, not the headers one (300 ms), applied once the headers were in.
    expect(elapsed).toBeGreaterThanOrEqual(700);
    expect(elapsed).toBeLessThan(6_000);
    expect(slow.received()).not.toMatch(/^HTTP\/1\.1 200/);
    expect(sent).toBeLessThan(Buffer.byteLength(body));
    // The binding counted the request in flight while reading; it let go of it.
    let h = await health(url);
    for (let i = 0; i < 100 && h.queue !== 0; i++) {
      await sleep(20);
      h = await health(url);
    }
    expect(h).toEqual({ status: 200, queue: 0 });
  });

  it('does not cut a handler that runs longer than requestTimeoutMs once the request is in', async () => {
    const { url } = await startDemo({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: encodeRequest('asap.send', { envelope: task('sleep', { ms: 1500 }) }, 7),
    });
    expect(res.status).toBe(200);
    const answer = (await res.json()) as { result: { envelope: { payload: { status: string } } } };
    expect(answer.result.envelope.payload.status).toBe('completed');
  });

  it('does not cut a WebSocket that lives longer than requestTimeoutMs', async () => {
    const { wsUrl } = await startDemo({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const peer = await connect(wsUrl);
    await sleep(1500);
    expect(peer.isOpen).toBe(true);
    const reply = await peer.call(task('echo', { late: true }));
    expect(reply.result.envelope.payload.result).toEqual({ echo: { late: true } });
  });

  it('refuses timeouts that Node cannot apply', () => {
    const manifest = { id: DEMO_URN };
    expect(() => new ASAPServer({ manifest, headersTimeoutMs: 0 })).toThrow(RangeError);
    expect(() => new ASAPServer({ manifest, headersTimeoutMs: 5000, requestTimeoutMs: 1000 })).toThrow(
      /headersTimeoutMs must be > 0 and <= requestTimeoutMs/,
    );
  });
});

describe('WebSocket upgrade authentication deadline', () => {
  it('drops an upgrade whose verifier never answers (4401 Authentication timeout) and opens no connection', async () => {
    let calls = 0;
    const { server, wsUrl } = await startDemo({
      headersTimeoutMs: 300,
      verifyToken: () => {
        calls++;
        return new Promise(() => {});
      },
    });
    const peer = open(wsUrl, undefined, { headers: { authorization: 'Bearer tok' } });
    const t0 = Date.now();
    const closed = await Promise.race([peer.closed, sleep(5_000).then(() => undefined)]);
    expect(closed).toEqual({ code: 4401, reason: 'Authentication timeout' });
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(calls).toBe(1);
    expect(server.connections).toHaveLength(0);
  });

  it('ignores a verdict that arrives after the deadline', async () => {
    const late: Array<(principal: unknown) => void> = [];
    // Records what the server logs, to see whether it ever let the late connection in.
    const logged: string[] = [];
    const record = (_obj: object, msg?: string) => {
      logged.push(msg ?? '');
    };
    const { server, wsUrl } = await startDemo({
      headersTimeoutMs: 300,
      verifyToken: () => new Promise((resolve) => late.push(resolve)),
      logger: { debug: record, info: record, warn: record, error: record },
    });
    const peer = open(wsUrl, undefined, { headers: { authorization: 'Bearer tok' } });
    expect(await peer.closed).toEqual({ code: 4401, reason: 'Authentication timeout' });
    expect(logged).toContain('websocket authentication timed out');
    expect(late).toHaveLength(1);
    late[0]?.({ user: 'late' });
    await sleep(100);
    expect(server.connections).toHaveLength(0);
    expect(logged).not.toContain('connection opened');
    // A verifier that answers in time still lets the client in.
    late.length = 0;
    const ok = open(wsUrl, undefined, { headers: { authorization: 'Bearer tok' } });
    await waitFor(() => late.length === 1, 'the verifier call');
    late[0]?.({ user: 'prompt' });
    await waitFor(() => server.connections.length === 1, 'the connection');
    expect(logged.filter((m) => m === 'connection opened')).toHaveLength(1);
    expect(ok.closeInfo).toBeUndefined();
  });

  it('cuts a peer that never answers the close frame instead of waiting for ws’s 30 s timer', async () => {
    const { port } = await startDemo({ headersTimeoutMs: 300, verifyToken: () => new Promise(() => {}) });
    const peer = raw(port);
    const t0 = Date.now();
    peer.socket.write(
      `GET /asap/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
        'Authorization: Bearer tok\r\n\r\n',
    );
    // The peer reads but never writes again: no close frame back.
    const closedAt = await Promise.race([peer.closed, sleep(6_000).then(() => undefined)]);
    expect(closedAt, 'closed by the server').toBeDefined();
    expect((closedAt ?? 0) - t0).toBeLessThan(6_000);
    expect(peer.received()).toMatch(/^HTTP\/1\.1 101 /);
    // The close frame: opcode 8, code 4401, reason "Authentication timeout".
    const frame = peer.received().slice(peer.received().indexOf('\r\n\r\n') + 4);
    expect(frame.charCodeAt(0)).toBe(0x88);
    expect((frame.charCodeAt(2) << 8) | frame.charCodeAt(3)).toBe(4401);
    expect(frame.slice(4)).toBe('Authentication timeout');
  });
});
