/**
 * Shared fixtures of the chaos tests: a demo agent behind a TcpProxy, a WebSocketTransport with short
 * intervals, plain `ws` servers that misbehave on purpose, and polling helpers. Everything opened here is
 * registered for cleanup; call `cleanup()` from afterEach.
 */
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { type WebSocket, WebSocketServer } from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { nodeWebSocketFactory } from '../../src/client/node-runtime.js';
import type { WebSocketFactory } from '../../src/client/runtime.js';
import { WebSocketTransport, type WebSocketTransportOptions } from '../../src/client/websocket-transport.js';
import type { ManualTimers } from '../../src/core/timers.js';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import { encodeNotification, encodeSuccess, METHOD_ACK } from '../../src/protocol/jsonrpc.js';
import type { TaskRequest } from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';
import type { ASAPServer, ASAPServerOptions } from '../../src/server/server.js';
import { whileTicking } from '../support/manual-time.js';
import { TcpProxy } from '../support/tcp-proxy.js';

export const CLIENT_URN = 'urn:asap:agent:chaos-client';
export const AGENT_URN = 'urn:asap:agent:demo';
/** The server's heartbeat in these tests (the client's is the same). */
export const HEARTBEAT_MS = 50;

const cleanups: Array<() => Promise<void> | void> = [];

/** Registers a cleanup step; `cleanup()` runs them newest first. */
export function onCleanup(fn: () => Promise<void> | void): void {
  cleanups.push(fn);
}

export async function cleanup(): Promise<void> {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch {
      // A failed close must not hide the test's own failure nor skip the other closes.
    }
  }
}

/** Polls `cond` until true; throws with `what` after `timeoutMs` (default 5 s). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Rejects when `p` has not settled within `ms`: nothing in these tests may hang. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Settles `p` into a value or its error, so that a test can assert on either. */
export function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: Error }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: Error) => ({ ok: false as const, error }),
  );
}

/** Resolves with the next emission of a transport event (with a timeout). */
export function nextEvent<K extends 'reconnected' | 'gaveUp' | 'open' | 'close' | 'reconnecting'>(
  transport: WebSocketTransport,
  event: K,
  ms = 5000,
): Promise<unknown> {
  return within(
    new Promise((resolve) => {
      // biome-ignore lint/suspicious/noExplicitAny: the listener type depends on K
      transport.once(event, ((info: unknown) => resolve(info)) as any);
    }),
    ms,
    `event ${event}`,
  );
}

export async function startAgent(opts: Partial<ASAPServerOptions> = {}, port = 0): Promise<ASAPServer> {
  // A short drain: cleanup must not wait for the long `sleep` tasks some tests leave running.
  const server = createDemoAgent({
    rateLimit: 0,
    heartbeatIntervalMs: HEARTBEAT_MS,
    drainTimeoutMs: 300,
    ...opts,
  });
  await server.listen({ port });
  onCleanup(() => server.close());
  return server;
}

export async function startProxy(targetPort: number): Promise<TcpProxy> {
  const proxy = await TcpProxy.start({ targetPort });
  // Bounded: TcpProxy.close() waits for every socket's 'close', and Node never emits it for a socket that
  // got resetAndDestroy() while its end() was still being flushed (libuv refuses the reset with EINVAL).
  onCleanup(() => within(proxy.close(), 3000, 'proxy close'));
  return proxy;
}

/** The client options of the brief: every interval in tens of ms. */
export const FAST: WebSocketTransportOptions = {
  backoff: { baseMs: 10, maxMs: 50 },
  heartbeatIntervalMs: HEARTBEAT_MS,
  timerResolutionMs: 10,
  ack: { timeoutMs: 100, maxRetries: 3 },
  requestTimeoutMs: 10_000,
};

export function makeTransport(url: string, opts: WebSocketTransportOptions = {}): WebSocketTransport {
  const transport = new WebSocketTransport(url, {
    webSocketFactory: nodeWebSocketFactory,
    ...FAST,
    ...opts,
  });
  onCleanup(() => transport.close());
  return transport;
}

/** A demo agent behind a proxy, and a transport connected through the proxy. */
export async function setup(
  clientOpts: WebSocketTransportOptions = {},
  serverOpts: Partial<ASAPServerOptions> = {},
): Promise<{ server: ASAPServer; proxy: TcpProxy; transport: WebSocketTransport }> {
  const server = await startAgent(serverOpts);
  const proxy = await startProxy(server.boundAddress!.port);
  const transport = makeTransport(proxy.url('/asap/ws', 'ws'), clientOpts);
  await within(transport.connect(), 5000, 'connect');
  return { server, proxy, transport };
}

export function task(skill: string, input: JsonObject = {}): Envelope<TaskRequest> {
  return createEnvelope({
    sender: CLIENT_URN,
    recipient: AGENT_URN,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-chaos', skill_id: skill, input },
  });
}

/** The `result` object of a TaskResponse envelope. */
export function resultOf(env: Envelope<object>): JsonObject {
  return (env.payload as { result?: JsonObject }).result ?? {};
}

let keySeq = 0;
/** A `count` key no other test (nor an earlier run in this process) uses: the demo's counters are global. */
export function uniqueKey(prefix: string): string {
  keySeq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${keySeq}`;
}

/** One frame a plain server received, decoded. */
export interface Received {
  at: number;
  socket: WebSocket;
  msg: {
    jsonrpc?: string;
    method?: string;
    id?: string | number | null;
    params?: { envelope?: Envelope<object> & { requires_ack?: boolean } };
    type?: string;
  };
}

/** A plain `ws` server on 127.0.0.1 that records every frame and lets the test decide what to answer. */
export class PlainServer {
  readonly received: Received[] = [];
  readonly sockets: WebSocket[] = [];
  connections = 0;
  /** `asap.resume` notifications received (ignored, as a server without sessions does). */
  resumes = 0;

  private constructor(
    private readonly wss: WebSocketServer,
    readonly port: number,
  ) {}

  get url(): string {
    return `ws://127.0.0.1:${this.port}/asap/ws`;
  }

  /** Frames carrying an envelope (requests and notifications), heartbeats left out. */
  get envelopes(): Received[] {
    return this.received.filter((r) => r.msg.method === 'asap.send');
  }

  static async start(
    onMessage: (r: Received, server: PlainServer) => void = () => {},
    onConnection: (socket: WebSocket, server: PlainServer) => void = () => {},
  ): Promise<PlainServer> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
    const server = new PlainServer(wss, (wss.address() as AddressInfo).port);
    wss.on('connection', (socket) => {
      server.connections += 1;
      server.sockets.push(socket);
      socket.on('error', () => {});
      socket.on('message', (data) => {
        const text = data.toString();
        let msg: Received['msg'];
        try {
          msg = JSON.parse(text) as Received['msg'];
        } catch {
          return;
        }
        if (msg.type === 'ping') {
          socket.send('{"type":"pong"}');
          return;
        }
        // A server without sessions (as the reference) ignores the client's asap.resume (§12).
        if (msg.method === 'asap.resume') {
          server.resumes += 1;
          return;
        }
        const r: Received = { at: Date.now(), socket, msg };
        server.received.push(r);
        onMessage(r, server);
      });
      onConnection(socket, server);
    });
    onCleanup(() => server.close());
    return server;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

/** The `asap.ack` notification a well-behaved receiver sends for `env`. */
export function ackFrame(
  env: Envelope<object>,
  status: 'received' | 'processed' | 'rejected',
  error?: string,
): string {
  const payload: JsonObject = { original_envelope_id: env.id, status };
  if (error !== undefined) payload.error = error;
  return encodeNotification(METHOD_ACK, {
    envelope: createEnvelope({
      sender: env.recipient,
      recipient: env.sender,
      payload_type: 'MessageAck',
      payload,
      correlation_id: env.id,
    }),
  });
}

/** A TaskResponse result frame for request `r`. */
export function responseFrame(r: Received, result: JsonObject = {}): string {
  const env = r.msg.params!.envelope!;
  return encodeSuccess(r.msg.id ?? null, {
    envelope: createEnvelope({
      sender: env.recipient,
      recipient: env.sender,
      payload_type: 'TaskResponse',
      payload: { task_id: env.id, status: 'completed', result },
      correlation_id: env.id,
    }),
  });
}

/** The real `ws` factory, counting how many times each envelope id was written (first sends and copies). */
export function countingFactory(writes: Map<string, number>): WebSocketFactory {
  return (url, opts) => {
    const socket = nodeWebSocketFactory(url, opts);
    const send = socket.send.bind(socket);
    socket.send = (data: string) => {
      const m = /^\{"jsonrpc":"2\.0","method":"asap\.send","params":\{"envelope":\{"id":"([^"]+)"/.exec(data);
      if (m?.[1] !== undefined) writes.set(m[1], (writes.get(m[1]) ?? 0) + 1);
      send(data);
    };
    return socket;
  };
}

/** Active handles by type (Timeout, TCPSocketWrap, …). */
export function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

/** `setup()` with the server and the client on the same manual timers; cleanup moves time on. */
export async function manualSetup(
  timers: ManualTimers,
  clientOpts: WebSocketTransportOptions = {},
  serverOpts: Partial<ASAPServerOptions> = {},
): Promise<Awaited<ReturnType<typeof setup>>> {
  const s = await setup({ timers, ...clientOpts }, { timers, ...serverOpts });
  onCleanup(() => whileTicking(timers, s.server.close()));
  onCleanup(() => whileTicking(timers, s.transport.close()));
  return s;
}

/** A transport on manual timers; cleanup moves time on while it closes. */
export function manualTransport(
  url: string,
  timers: ManualTimers,
  opts: WebSocketTransportOptions = {},
): WebSocketTransport {
  const transport = makeTransport(url, { timers, ...opts });
  onCleanup(() => whileTicking(timers, transport.close()));
  return transport;
}
