/**
 * Shared fixtures of the client tests: a demo agent on 127.0.0.1:0, a plain `ws`
 * server whose behaviour each test scripts (for misbehaving peers), and polling helpers.
 */
import type { IncomingMessage } from 'node:http';
import { type WebSocket, WebSocketServer } from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { createReply, type Envelope } from '../../src/protocol/envelope.js';
import type { ASAPError } from '../../src/protocol/errors.js';
import type { ASAPServer, ASAPServerOptions } from '../../src/server/server.js';

export const CLIENT_URN = 'urn:asap:agent:client';
export const DEMO_URN = 'urn:asap:agent:demo';

/** Polls `cond` until it holds (up to `timeoutMs`, generous for a loaded machine). */
export async function waitFor(cond: () => boolean, what = 'condition', timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Active (ref'd) timers of the process. */
export function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

/**
 * The timer count with the test runner's own short-lived timers (its RPC calls) filtered out:
 * the lowest of a few samples. Compare later counts to it with `waitFor`, which rides out that noise.
 */
export async function baselineTimeouts(): Promise<number> {
  let min = activeTimeouts();
  for (let i = 0; i < 10; i++) {
    await delay(5);
    min = Math.min(min, activeTimeouts());
  }
  return min;
}

export interface Demo {
  server: ASAPServer;
  /** `http://127.0.0.1:PORT` */
  base: string;
  /** `http://127.0.0.1:PORT/asap` */
  rpc: string;
  /** `ws://127.0.0.1:PORT/asap/ws` */
  ws: string;
  port: number;
}

/** The demo agent with rate limiting off and a short drain, so closing never waits long. */
export async function startDemo(
  opts: Partial<Omit<ASAPServerOptions, 'manifest'>> & { agentId?: string } = {},
): Promise<Demo> {
  const server = createDemoAgent({ rateLimit: 0, drainTimeoutMs: 200, ...opts });
  const { url, port } = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, base: url, rpc: `${url}/asap`, ws: `ws://127.0.0.1:${port}/asap/ws`, port };
}

// biome-ignore lint/suspicious/noExplicitAny: frames from the wire are untyped JSON
export type Json = any;

export interface RawServer {
  url: string;
  port: number;
  wss: WebSocketServer;
  sockets: WebSocket[];
  /** Upgrade requests, in order. */
  upgrades: IncomingMessage[];
  /** Every frame received, parsed when it is JSON. */
  frames: Json[];
  /** The same, per connection (index as in `sockets`). */
  framesOf: Json[][];
  /** Resolves with the next frame matching `pred` (already received ones count). */
  frame(pred: (f: Json) => boolean, what?: string): Promise<Json>;
  /** The `n`-th (from 0) asap.send request with an id. */
  request(n?: number): Promise<Json>;
  /** Sends to the latest connection. */
  send(data: string | Json): void;
  close(): Promise<void>;
}

/**
 * A plain `ws` server that does what the test tells it: nothing by default, so
 * each test answers (or misbehaves) by hand. `onFrame` runs for every frame.
 */
export async function startRawServer(
  onFrame?: (ws: WebSocket, frame: Json, text: string) => void,
  options: { handleProtocols?: (protocols: Set<string>) => string | false } = {},
): Promise<RawServer> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', ...options });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const port = (wss.address() as { port: number }).port;
  const sockets: WebSocket[] = [];
  const upgrades: IncomingMessage[] = [];
  const frames: Json[] = [];
  const framesOf: Json[][] = [];
  wss.on('connection', (ws, req) => {
    sockets.push(ws);
    upgrades.push(req);
    const own: Json[] = [];
    framesOf.push(own);
    ws.on('error', () => {});
    ws.on('message', (data) => {
      const text = data.toString();
      let frame: Json;
      try {
        frame = JSON.parse(text);
      } catch {
        frame = text;
      }
      frames.push(frame);
      own.push(frame);
      onFrame?.(ws, frame, text);
    });
  });
  const raw: RawServer = {
    url: `ws://127.0.0.1:${port}/asap/ws`,
    port,
    wss,
    sockets,
    upgrades,
    frames,
    framesOf,
    async frame(pred, what = 'frame') {
      let found: Json;
      await waitFor(() => {
        found = frames.find(pred);
        return found !== undefined;
      }, what);
      return found;
    },
    async request(n = 0) {
      let found: Json;
      await waitFor(() => {
        found = frames.filter((f) => f?.method === 'asap.send' && f.id !== undefined)[n];
        return found !== undefined;
      }, `request #${n}`);
      return found;
    },
    send(data) {
      const ws = sockets[sockets.length - 1];
      if (ws === undefined) throw new Error('no connection');
      ws.send(typeof data === 'string' ? data : JSON.stringify(data));
    },
    async close() {
      for (const ws of sockets) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
  return raw;
}

/** A completed TaskResponse to a request frame, bound to it unless `correlation_id` is overridden. */
export function responseTo(request: Json, extra: { correlation_id?: string; result?: Json } = {}): Envelope {
  const env = request.params.envelope as Envelope;
  const reply = createReply(env, 'TaskResponse', {
    task_id: env.id,
    status: 'completed',
    result: extra.result ?? { ok: true },
  });
  if (extra.correlation_id !== undefined) reply.correlation_id = extra.correlation_id;
  return reply;
}

/** A JSON-RPC success frame carrying `envelope` under `id`. */
export function resultFrame(id: string | number | null, envelope: unknown): string {
  return JSON.stringify({ jsonrpc: '2.0', result: { envelope }, id });
}

/** A TaskRequest init from the test client to the demo agent. */
export function taskInit(skill: string, input: Json = {}) {
  return {
    sender: CLIENT_URN,
    recipient: DEMO_URN,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-test', skill_id: skill, input },
  };
}

/** Things a test opened, closed after it in reverse order (`afterEach(runCleanups)`). */
export const cleanups: (() => unknown)[] = [];

export async function runCleanups(): Promise<void> {
  for (const c of cleanups.splice(0).reverse()) await c();
}

/** A demo agent closed after the test. */
export async function demo(opts: Parameters<typeof startDemo>[0] = {}): Promise<Demo> {
  const d = await startDemo(opts);
  cleanups.push(() => d.server.close());
  return d;
}

/** Settles to the rejection reason (or fails the test when it resolves). */
export async function rejection(p: Promise<unknown>): Promise<ASAPError> {
  try {
    await p;
  } catch (err) {
    return err as ASAPError;
  }
  throw new Error('expected the promise to reject');
}
