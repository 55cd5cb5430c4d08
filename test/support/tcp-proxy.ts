/**
 * A real TCP proxy on 127.0.0.1 for failure tests of WebSocket / HTTP clients and servers.
 *
 * Tests put it between a client and a server (both real sockets) and then inject faults:
 * connection cuts (RST), refused connections, stalls (blackhole / resume), partitions
 * (blackhole that drops), latency, bandwidth limits, and upstream switches.
 *
 * Guarantees:
 * - byte order is preserved per direction under latency, bandwidth limits and blackhole / resume;
 * - FIN is propagated as a plain `end()` (after every byte queued before it);
 * - every socket has an 'error' listener, so no fault ever surfaces as an uncaught exception;
 * - `close()` destroys every socket, clears every timer and resolves only once all handles are closed.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface TcpProxyOptions {
  /** Upstream host; default 127.0.0.1. */
  targetHost?: string;
  /** Upstream port. */
  targetPort: number;
  /** Port to listen on (127.0.0.1); default 0 = ephemeral. */
  listenPort?: number;
}

export type ProxyUrlScheme = 'ws' | 'http';

const LOOPBACK = '127.0.0.1';
/** Pause reading from a source once this many bytes wait in its delay queue (latency / bandwidth). */
const QUEUE_HIGH_WATER_MARK = 1024 * 1024;
/** With a bandwidth limit, bytes are released in slices of this fraction of a second. */
const BANDWIDTH_SLICES_PER_SECOND = 20;

/** Fault settings shared by every pair of one proxy (read live by each direction). */
interface LinkState {
  blackholed: boolean;
  dropWhileBlackholed: boolean;
  latencyMs: number;
  bytesPerSecond: number | null;
}

type QueueItem = { kind: 'data'; chunk: Buffer; dueAt: number } | { kind: 'end'; dueAt: number };

const nextLoopTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Destroy a socket with an RST where possible (connected TCP socket), else with a plain destroy. */
function hardDestroy(socket: net.Socket): void {
  if (socket.destroyed) return;
  // A reset right after end() in the same tick fails with EINVAL and the socket never closes: destroy it instead.
  if (!socket.connecting && !socket.writableEnded && typeof socket.resetAndDestroy === 'function') {
    try {
      socket.resetAndDestroy();
      return;
    } catch {
      // Not a TCP handle (or already gone): fall through to a plain destroy.
    }
  }
  socket.destroy();
}

/** One direction of a pair: reads `source`, delays / holds / drops, writes `dest` in order. */
class Direction {
  private queue: QueueItem[] = [];
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  /** dueAt of the last queued item: later items never become due before earlier ones. */
  private lastDueAt = Number.NEGATIVE_INFINITY;
  /** Earliest time the next data slice may be written under a bandwidth limit. */
  private nextSendAt = 0;
  private destNeedsDrain = false;
  private sourcePaused = false;
  private stopped = false;

  constructor(
    private readonly source: net.Socket,
    private readonly dest: net.Socket,
    private readonly link: LinkState,
  ) {}

  push(chunk: Buffer): void {
    if (this.stopped) return;
    if (this.link.blackholed && this.link.dropWhileBlackholed) return;
    this.queue.push({ kind: 'data', chunk, dueAt: this.nextDueAt() });
    this.queuedBytes += chunk.length;
    this.pump();
  }

  /** The source sent FIN: end the destination after everything queued before it. */
  pushEnd(): void {
    if (this.stopped) return;
    this.queue.push({ kind: 'end', dueAt: this.nextDueAt() });
    this.pump();
  }

  /** Deliver whatever is due now; arm one timer for the next item. No-op while blackholed. */
  pump(): void {
    if (this.stopped) return;
    this.clearTimer();
    if (!this.link.blackholed) this.drainDue();
    this.updateFlow();
  }

  stop(): void {
    this.stopped = true;
    this.clearTimer();
    this.queue = [];
    this.queuedBytes = 0;
  }

  private drainDue(): void {
    while (this.queue.length > 0) {
      const item = this.queue[0]!;
      const now = performance.now();
      const bps = this.link.bytesPerSecond;
      const readyAt =
        item.kind === 'data' && bps !== null ? Math.max(item.dueAt, this.nextSendAt) : item.dueAt;
      if (readyAt > now) {
        this.schedule(readyAt - now);
        return;
      }
      if (item.kind === 'end') {
        this.queue.shift();
        if (!this.dest.destroyed && !this.dest.writableEnded) this.dest.end();
        continue;
      }
      let chunk = item.chunk;
      if (bps !== null) {
        const slice = Math.max(1, Math.floor(bps / BANDWIDTH_SLICES_PER_SECOND));
        if (chunk.length > slice) {
          item.chunk = chunk.subarray(slice);
          chunk = chunk.subarray(0, slice);
        } else {
          this.queue.shift();
        }
        this.nextSendAt = Math.max(now, this.nextSendAt) + (chunk.length * 1000) / bps;
      } else {
        this.queue.shift();
      }
      this.queuedBytes -= chunk.length;
      this.write(chunk);
    }
  }

  private nextDueAt(): number {
    const dueAt = Math.max(performance.now() + this.link.latencyMs, this.lastDueAt);
    this.lastDueAt = dueAt;
    return dueAt;
  }

  private write(chunk: Buffer): void {
    if (this.dest.destroyed || this.dest.writableEnded) return;
    if (!this.dest.write(chunk) && !this.destNeedsDrain) {
      this.destNeedsDrain = true;
      this.dest.once('drain', () => {
        this.destNeedsDrain = false;
        this.updateFlow();
      });
    }
  }

  /** Backpressure: stop reading the source while the destination or our queue is full. */
  private updateFlow(): void {
    if (this.stopped) return;
    const shouldPause = this.destNeedsDrain || this.queuedBytes > QUEUE_HIGH_WATER_MARK;
    if (shouldPause && !this.sourcePaused) {
      this.sourcePaused = true;
      this.source.pause();
    } else if (!shouldPause && this.sourcePaused) {
      this.sourcePaused = false;
      this.source.resume();
    }
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.pump();
      },
      Math.max(1, Math.ceil(ms)),
    );
  }

  private clearTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }
}

/** One accepted client socket and its upstream socket. */
class Pair {
  readonly upstream: net.Socket;
  private readonly toUpstream: Direction;
  private readonly toClient: Direction;
  private upstreamConnected = false;
  private clientClosed = false;
  private upstreamClosed = false;
  private done = false;

  constructor(
    readonly client: net.Socket,
    target: { host: string; port: number },
    link: LinkState,
    track: (socket: net.Socket) => void,
    private readonly onDone: (pair: Pair) => void,
  ) {
    this.upstream = net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    track(this.upstream);
    client.setNoDelay(true);

    this.toUpstream = new Direction(client, this.upstream, link);
    this.toClient = new Direction(this.upstream, client, link);

    client.on('data', (chunk: Buffer) => this.toUpstream.push(chunk));
    client.on('end', () => this.toUpstream.pushEnd());
    client.on('error', () => this.teardown('reset'));
    client.on('close', () => {
      this.clientClosed = true;
      this.onSocketClose(client);
    });

    this.upstream.once('connect', () => {
      this.upstreamConnected = true;
    });
    this.upstream.on('data', (chunk: Buffer) => this.toClient.push(chunk));
    this.upstream.on('end', () => this.toClient.pushEnd());
    // ECONNREFUSED (upstream down) → plain destroy of the client; a reset mid-stream → propagate an RST.
    this.upstream.on('error', () => this.teardown(this.upstreamConnected ? 'reset' : 'destroy'));
    this.upstream.on('close', () => {
      this.upstreamClosed = true;
      this.onSocketClose(this.upstream);
    });
  }

  pump(): void {
    this.toUpstream.pump();
    this.toClient.pump();
  }

  /** Tear the pair down at once: drop queues and timers, destroy both sockets. Idempotent. */
  teardown(mode: 'reset' | 'destroy'): void {
    if (this.done) return;
    this.done = true;
    this.toUpstream.stop();
    this.toClient.stop();
    for (const socket of [this.client, this.upstream]) {
      if (mode === 'reset') hardDestroy(socket);
      else socket.destroy();
    }
    this.onDone(this);
  }

  private onSocketClose(socket: net.Socket): void {
    if (this.done) return;
    // A socket closes cleanly only after FIN both ways; anything else takes the whole pair down.
    if (!(socket.readableEnded && socket.writableEnded)) {
      this.teardown('destroy');
      return;
    }
    if (this.clientClosed && this.upstreamClosed) {
      this.done = true;
      this.toUpstream.stop();
      this.toClient.stop();
      this.onDone(this);
    }
  }
}

export class TcpProxy {
  /** Listening port on 127.0.0.1. */
  readonly port: number;

  /** URL through the proxy, e.g. `proxy.url('/asap/ws', 'ws')` → `ws://127.0.0.1:PORT/asap/ws`. */
  readonly url = (path = '', scheme: ProxyUrlScheme = 'http'): string => {
    const suffix = path === '' || path.startsWith('/') ? path : `/${path}`;
    return `${scheme}://${LOOPBACK}:${this.port}${suffix}`;
  };

  private readonly server: net.Server;
  private readonly pairs = new Set<Pair>();
  /** Every socket we own that has not emitted 'close' yet, with a promise for that event. */
  private readonly openSockets = new Map<net.Socket, Promise<void>>();
  private readonly link: LinkState = {
    blackholed: false,
    dropWhileBlackholed: false,
    latencyMs: 0,
    bytesPerSecond: null,
  };
  private target: { host: string; port: number };
  private refusing = false;
  private closing = false;
  private closePromise: Promise<void> | undefined;
  private accepted = 0;
  private refused = 0;

  private constructor(server: net.Server, port: number, opts: TcpProxyOptions) {
    this.server = server;
    this.port = port;
    this.target = { host: opts.targetHost ?? LOOPBACK, port: opts.targetPort };
  }

  static async start(opts: TcpProxyOptions): Promise<TcpProxy> {
    const server = net.createServer({ allowHalfOpen: true });
    let proxy: TcpProxy | undefined;
    server.on('connection', (socket: net.Socket) => {
      if (proxy) proxy.onConnection(socket);
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen({ port: opts.listenPort ?? 0, host: LOOPBACK }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    // Listener errors after a successful listen are not actionable for tests; never let them escape.
    server.on('error', () => {});
    const address = server.address();
    if (address === null || typeof address === 'string') {
      server.close();
      throw new Error('TcpProxy: unexpected listening address');
    }
    proxy = new TcpProxy(server, address.port, opts);
    return proxy;
  }

  /** Live client↔upstream pairs. */
  get connectionCount(): number {
    return this.pairs.size;
  }

  /** Connections accepted since start (including those destroyed by `refuse`). */
  get totalConnections(): number {
    return this.accepted;
  }

  /** Connections destroyed on arrival because `refuse(true)` was on. */
  get refusedConnections(): number {
    return this.refused;
  }

  get isBlackholed(): boolean {
    return this.link.blackholed;
  }

  /** New connections go to this target; existing pairs keep theirs. */
  setTarget(port: number, host: string = LOOPBACK): void {
    this.target = { host, port };
  }

  /** Destroy every live pair in both directions at once (RST where possible). New connections still work. */
  cut(): void {
    for (const pair of [...this.pairs]) pair.teardown('reset');
  }

  /** While on, new incoming connections are destroyed (RST) immediately after accept. */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  /** Stop forwarding in both directions without closing anything; bytes are held (or dropped). */
  blackhole(): void {
    this.link.blackholed = true;
    this.pumpAll(); // clears pending delivery timers
  }

  /** Deliver what was held during the blackhole, in order, and forward again. */
  resume(): void {
    this.link.blackholed = false;
    this.pumpAll();
  }

  /** While blackholed, discard bytes that arrive instead of holding them (a real partition). */
  dropWhileBlackholed(on: boolean): void {
    this.link.dropWhileBlackholed = on;
  }

  /** Delay every chunk by `ms` in both directions (applies to chunks received from now on); order kept. */
  setLatency(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`TcpProxy: invalid latency ${ms}`);
    this.link.latencyMs = ms;
  }

  /** Limit each direction of each pair to `bytesPerSecond`; `null` removes the limit. */
  setBandwidth(bytesPerSecond: number | null): void {
    if (bytesPerSecond !== null && (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0)) {
      throw new RangeError(`TcpProxy: invalid bandwidth ${bytesPerSecond}`);
    }
    this.link.bytesPerSecond = bytesPerSecond;
    this.pumpAll();
  }

  /** Close the listener and every pair; resolves once every socket and timer is gone. Idempotent. */
  close(): Promise<void> {
    this.closePromise ??= this.shutdown();
    return this.closePromise;
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    const listenerClosed = new Promise<void>((resolve) => {
      this.server.close(() => resolve());
    });
    for (const pair of [...this.pairs]) pair.teardown('destroy');
    await Promise.all([listenerClosed, ...this.openSockets.values()]);
    // The listener's 'close' fires before libuv has run its handle close callback (the handle is still
    // listed by process.getActiveResourcesInfo()); two loop turns later it is gone.
    await nextLoopTurn();
    await nextLoopTurn();
  }

  private onConnection(socket: net.Socket): void {
    this.accepted += 1;
    this.track(socket);
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.refusing) {
      this.refused += 1;
      hardDestroy(socket);
      return;
    }
    const pair = new Pair(
      socket,
      this.target,
      this.link,
      (s) => this.track(s),
      (p) => this.pairs.delete(p),
    );
    this.pairs.add(pair);
  }

  private track(socket: net.Socket): void {
    socket.on('error', () => {});
    const closed = new Promise<void>((resolve) => {
      socket.once('close', () => {
        this.openSockets.delete(socket);
        resolve();
      });
    });
    this.openSockets.set(socket, closed);
  }

  private pumpAll(): void {
    for (const pair of this.pairs) pair.pump();
  }
}
