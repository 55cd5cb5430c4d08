import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { TcpProxy } from './tcp-proxy.js';

const HOST = '127.0.0.1';

/** A real socket end that records everything it sees. */
class Peer {
  private readonly chunks: Buffer[] = [];
  ended = false;
  closed = false;
  error: NodeJS.ErrnoException | undefined;
  readonly closedPromise: Promise<void>;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.chunks.push(chunk));
    socket.on('end', () => {
      this.ended = true;
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error = err;
    });
    this.closedPromise = new Promise((resolve) => {
      socket.once('close', () => {
        this.closed = true;
        resolve();
      });
    });
  }

  get text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** A real upstream server: 'echo' writes back what it reads (and ends after FIN); 'manual' only records. */
class TestServer {
  readonly peers: Peer[] = [];

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(mode: 'echo' | 'manual'): Promise<TestServer> {
    let self: TestServer | undefined;
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      const peer = new Peer(socket);
      self?.peers.push(peer);
      if (mode === 'echo') {
        socket.on('data', (chunk: Buffer) => socket.write(chunk));
        socket.on('end', () => socket.end());
      }
    });
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    const address = server.address() as net.AddressInfo;
    self = new TestServer(server, address.port);
    cleanups.push(() => self.close());
    return self;
  }

  get openCount(): number {
    return this.peers.filter((p) => !p.closed).length;
  }

  async close(): Promise<void> {
    for (const peer of this.peers) peer.socket.destroy();
    await Promise.all(this.peers.map((p) => p.closedPromise));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function startProxy(targetPort: number): Promise<TcpProxy> {
  const proxy = await TcpProxy.start({ targetPort });
  cleanups.push(() => proxy.close());
  return proxy;
}

function openClient(port: number, allowHalfOpen = false): Peer {
  const peer = new Peer(net.connect({ port, host: HOST, allowHalfOpen }));
  cleanups.push(() => {
    peer.socket.destroy();
    return peer.closedPromise;
  });
  return peer;
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 1500): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const nextLoopTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Live TCP handles and timers, after letting pending handle closes (from earlier tests) finish. */
async function handleSnapshot(): Promise<string[]> {
  await nextLoopTurn();
  await nextLoopTurn();
  return process
    .getActiveResourcesInfo()
    .filter((r) => r.startsWith('TCP') || r === 'Timeout')
    .sort();
}

const numbered = (from: number, to: number): string => {
  let out = '';
  for (let i = from; i < to; i++) out += `m${i};`;
  return out;
};

describe('TcpProxy', () => {
  it('forwards bytes both ways and propagates FIN', async () => {
    const server = await TestServer.start('manual');
    const proxy = await startProxy(server.port);
    expect(proxy.url('/asap/ws', 'ws')).toBe(`ws://127.0.0.1:${proxy.port}/asap/ws`);
    expect(proxy.url()).toBe(`http://127.0.0.1:${proxy.port}`);
    expect(proxy.url('health')).toBe(`http://127.0.0.1:${proxy.port}/health`);

    const client = openClient(proxy.port, true);
    client.socket.write('hello ');
    await waitFor(() => server.peers.length === 1, 'upstream connection');
    const upstream = server.peers[0]!;
    client.socket.write('upstream');
    upstream.socket.write('hello client');
    await waitFor(() => upstream.text === 'hello upstream', 'client→upstream bytes');
    await waitFor(() => client.text === 'hello client', 'upstream→client bytes');
    expect(proxy.connectionCount).toBe(1);
    expect(proxy.totalConnections).toBe(1);

    // Server half-closes; the client sees FIN but can still send.
    upstream.socket.end(' bye');
    await waitFor(() => client.ended, 'client end');
    expect(client.text).toBe('hello client bye');
    client.socket.write(' after');
    await waitFor(() => upstream.text === 'hello upstream after', 'bytes after half-close');
    client.socket.end();
    await Promise.all([client.closedPromise, upstream.closedPromise]);
    await waitFor(() => proxy.connectionCount === 0, 'pair released');
    expect(client.error).toBeUndefined();
  });

  it('cut() resets both sides and keeps accepting', async () => {
    const server = await TestServer.start('echo');
    const proxy = await startProxy(server.port);
    const client = openClient(proxy.port);
    client.socket.write('ping');
    await waitFor(() => client.text === 'ping', 'echo');

    proxy.cut();
    expect(proxy.connectionCount).toBe(0);
    await client.closedPromise;
    await server.peers[0]!.closedPromise;

    const again = openClient(proxy.port);
    again.socket.write('pong');
    await waitFor(() => again.text === 'pong', 'echo after cut');
    expect(proxy.totalConnections).toBe(2);
  });

  it('refuse() destroys new connections only while on', async () => {
    const server = await TestServer.start('echo');
    const proxy = await startProxy(server.port);
    const existing = openClient(proxy.port);
    existing.socket.write('a');
    await waitFor(() => existing.text === 'a', 'echo');

    proxy.refuse(true);
    const refused = openClient(proxy.port);
    refused.socket.write('nope');
    await refused.closedPromise;
    expect(refused.text).toBe('');
    expect(server.peers).toHaveLength(1);
    expect(proxy.refusedConnections).toBe(1);

    existing.socket.write('b');
    await waitFor(() => existing.text === 'ab', 'existing pair unaffected');

    proxy.refuse(false);
    const accepted = openClient(proxy.port);
    accepted.socket.write('yes');
    await waitFor(() => accepted.text === 'yes', 'echo after refuse(false)');
    expect(proxy.totalConnections).toBe(3);
  });

  it('blackhole() stalls both directions and resume() delivers in order', async () => {
    const server = await TestServer.start('manual');
    const proxy = await startProxy(server.port);
    const client = openClient(proxy.port);
    await waitFor(() => server.peers.length === 1, 'upstream connection');
    const upstream = server.peers[0]!;

    proxy.blackhole();
    expect(proxy.isBlackholed).toBe(true);
    for (let i = 0; i < 50; i++) {
      client.socket.write(`m${i};`);
      upstream.socket.write(`m${i};`);
      if (i % 10 === 0) await sleep(2);
    }
    // A connection opened during the blackhole is accepted but stalled too.
    const late = openClient(proxy.port);
    late.socket.write('late');
    await waitFor(() => server.peers.length === 2, 'late upstream connection');
    await sleep(60);
    expect(client.text).toBe('');
    expect(upstream.text).toBe('');
    expect(server.peers[1]!.text).toBe('');
    expect(client.closed).toBe(false);

    proxy.resume();
    upstream.socket.write(numbered(50, 60));
    await waitFor(() => client.text.length >= numbered(0, 60).length, 'held bytes to client');
    expect(client.text).toBe(numbered(0, 60));
    await waitFor(() => upstream.text.length >= numbered(0, 50).length, 'held bytes to upstream');
    expect(upstream.text).toBe(numbered(0, 50));
    await waitFor(() => server.peers[1]!.text === 'late', 'late connection released');
  });

  it('dropWhileBlackholed discards bytes sent during the blackhole', async () => {
    const server = await TestServer.start('echo');
    const proxy = await startProxy(server.port);
    const client = openClient(proxy.port);
    client.socket.write('before;');
    await waitFor(() => client.text === 'before;', 'echo');

    proxy.dropWhileBlackholed(true);
    proxy.blackhole();
    client.socket.write('lost;');
    await sleep(40);
    proxy.resume();
    client.socket.write('kept;');
    // Order is preserved, so if 'lost;' had been held it would arrive before 'kept;'.
    await waitFor(() => client.text.length >= 'before;kept;'.length, 'echo after resume');
    expect(client.text).toBe('before;kept;');
    expect(server.peers[0]!.text).toBe('before;kept;');
    expect(client.closed).toBe(false);
  });

  it('setLatency() delays chunks but preserves order', async () => {
    const server = await TestServer.start('echo');
    const proxy = await startProxy(server.port);
    const client = openClient(proxy.port);
    client.socket.write('warm;');
    await waitFor(() => client.text === 'warm;', 'echo');

    proxy.setLatency(30);
    const started = performance.now();
    for (let i = 0; i < 40; i++) {
      client.socket.write(`m${i};`);
      if (i % 5 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    const expected = 'warm;' + numbered(0, 40);
    await waitFor(() => client.text.length >= expected.length, 'delayed echo');
    expect(client.text).toBe(expected);
    // Two hops through the proxy (request and echo): at least ~2 × 30 ms.
    expect(performance.now() - started).toBeGreaterThanOrEqual(50);

    // Lowering the latency never lets a later chunk overtake an earlier one.
    const upstream = server.peers[0]!;
    proxy.setLatency(50);
    client.socket.write('slow;');
    await sleep(5);
    proxy.setLatency(0);
    client.socket.write('fast;');
    await waitFor(() => upstream.text.length >= (expected + 'slow;fast;').length, 'slow then fast chunk');
    expect(upstream.text).toBe(expected + 'slow;fast;');
  });

  it('setBandwidth() throttles but delivers everything in order', async () => {
    const server = await TestServer.start('echo');
    const proxy = await startProxy(server.port);
    const client = openClient(proxy.port);
    proxy.setBandwidth(20_000); // 1000-byte slices every 50 ms
    const payload = Array.from({ length: 3000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
    const started = performance.now();
    client.socket.write(payload);
    await waitFor(() => client.text.length >= payload.length, 'throttled echo');
    expect(client.text).toBe(payload);
    // 3 slices per direction, pipelined: the last slice leaves ~100 ms after the first.
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    proxy.setBandwidth(null);
    client.socket.write('free');
    await waitFor(() => client.text === payload + 'free', 'unthrottled echo');
    expect(() => proxy.setBandwidth(0)).toThrow(RangeError);
    expect(() => proxy.setLatency(-1)).toThrow(RangeError);
  });

  it('setTarget() sends new connections to the new upstream', async () => {
    const a = await TestServer.start('echo');
    const b = await TestServer.start('echo');
    const proxy = await startProxy(a.port);
    const first = openClient(proxy.port);
    first.socket.write('1');
    await waitFor(() => first.text === '1', 'echo via A');

    proxy.setTarget(b.port);
    const second = openClient(proxy.port);
    second.socket.write('2');
    await waitFor(() => second.text === '2', 'echo via B');
    first.socket.write('3');
    await waitFor(() => first.text === '13', 'existing pair stays on A');
    expect(a.peers).toHaveLength(1);
    expect(b.peers).toHaveLength(1);
    expect(b.peers[0]!.text).toBe('2');
  });

  it('closes the client when the upstream is down or resets', async () => {
    const server = await TestServer.start('manual');
    const proxy = await startProxy(await deadPort());
    const refused = openClient(proxy.port);
    refused.socket.write('hello');
    await refused.closedPromise;
    expect(refused.text).toBe('');
    expect(proxy.connectionCount).toBe(0);

    proxy.setTarget(server.port);
    const client = openClient(proxy.port);
    await waitFor(() => server.peers.length === 1, 'upstream connection');
    server.peers[0]!.socket.resetAndDestroy();
    await client.closedPromise;
    expect(proxy.connectionCount).toBe(0);
  });

  it('close() is idempotent and leaves no sockets or timers behind', async () => {
    const server = await TestServer.start('echo');
    const before = await handleSnapshot();

    const proxy = await TcpProxy.start({ targetPort: server.port });
    const client = openClient(proxy.port);
    client.socket.write('ping');
    await waitFor(() => client.text === 'ping', 'echo');
    // Leave a delivery timer pending and a second, stalled connection open.
    proxy.setLatency(1000);
    client.socket.write('pending');
    const other = openClient(proxy.port);
    other.socket.write('x');
    await waitFor(() => proxy.connectionCount === 2 && server.peers.length === 2, 'two pairs');
    await sleep(10);

    await Promise.all([proxy.close(), proxy.close()]);
    await proxy.close();
    expect(proxy.connectionCount).toBe(0);
    await Promise.all([client.closedPromise, other.closedPromise]);
    await waitFor(() => server.openCount === 0, 'upstream sockets closed');
    expect(client.text).toBe('ping');

    // No settling here: close() itself must resolve only once everything is gone.
    expect(
      process
        .getActiveResourcesInfo()
        .filter((r) => r.startsWith('TCP') || r === 'Timeout')
        .sort(),
    ).toEqual(before);
  });
});
