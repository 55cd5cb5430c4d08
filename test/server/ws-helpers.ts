/**
 * Shared helpers of the WebSocket server tests (test/server/ws-*.test.ts): a plain `ws` client
 * that records every frame, envelope builders, a demo agent on 127.0.0.1:0, and cleanup of
 * everything a test opened.
 */
import type { Server } from 'node:http';
import WebSocket, { type ClientOptions } from 'ws';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../../src/protocol/envelope.js';
import type { ASAPServer, ASAPServerOptions } from '../../src/server/server.js';

// biome-ignore lint/suspicious/noExplicitAny: frames on the wire are free-form JSON read by the tests
export type Json = any;

export const CLIENT_URN = 'urn:asap:agent:ws-tester';
export const DEMO_URN = 'urn:asap:agent:demo';

const peers = new Set<Peer>();
const servers = new Set<ASAPServer>();
const httpServers = new Set<Server>();

let uniq = 0;
/** A key no other test uses (the demo `count` skill keeps its counters per process). */
export function uniqueKey(prefix = 'k'): string {
  uniq++;
  return `${prefix}-${process.pid}-${Date.now()}-${uniq}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns something other than undefined/false, up to `timeoutMs`. */
export async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  label = 'condition',
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${label}`);
    await sleep(5);
  }
}

/** A TaskRequest envelope for a demo skill. */
export function task(
  skill: string,
  input: Record<string, unknown> = {},
  extra: Partial<EnvelopeInit<object>> = {},
): Envelope<Json> {
  return createEnvelope<object>({
    sender: CLIENT_URN,
    recipient: DEMO_URN,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv-ws', skill_id: skill, input },
    ...extra,
  });
}

export function rpcRequest(envelope: unknown, id: string | number): string {
  return JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope }, id });
}

export function rpcNotification(envelope: unknown): string {
  return JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope } });
}

export interface CloseInfo {
  code: number;
  reason: string;
}

/** A plain `ws` client that records every frame it receives. */
export class Peer {
  readonly frames: Json[] = [];
  readonly raw: string[] = [];
  readonly closed: Promise<CloseInfo>;
  closeInfo: CloseInfo | undefined;
  readonly errors: Error[] = [];
  private readonly listeners = new Set<() => void>();
  private nextId = 1;

  constructor(readonly ws: WebSocket) {
    peers.add(this);
    ws.on('message', (data: Buffer) => {
      const text = data.toString('utf8');
      this.raw.push(text);
      let value: Json;
      try {
        value = JSON.parse(text);
      } catch {
        value = { unparsable: text };
      }
      this.frames.push(value);
      this.notify();
    });
    ws.on('error', (err) => this.errors.push(err));
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this.notify();
      });
    });
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Sends an `asap.send` request and returns its JSON-RPC id. */
  request(envelope: unknown, id: string | number = `t-${this.nextId++}`): string | number {
    this.send(rpcRequest(envelope, id));
    return id;
  }

  /** Resolves with the first frame (already received or to come) that matches, from index `from`. */
  waitFor(pred: (f: Json) => boolean, label = 'a matching frame', timeoutMs = 5000, from = 0): Promise<Json> {
    return new Promise((resolve, reject) => {
      let i = from;
      const check = () => {
        for (; i < this.frames.length; i++) {
          if (pred(this.frames[i])) {
            done();
            resolve(this.frames[i]);
            return;
          }
        }
        if (this.closeInfo !== undefined) {
          done();
          reject(new Error(`Closed (${this.closeInfo.code} ${this.closeInfo.reason}) before ${label}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(`Timed out waiting for ${label}; got ${JSON.stringify(this.frames).slice(0, 2000)}`),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** The (final) response to a JSON-RPC id: an error, or a result that is not a non-final TaskStream chunk. */
  response(id: string | number | null, timeoutMs = 5000): Promise<Json> {
    return this.waitFor(
      (f) =>
        f.id === id &&
        f.method === undefined &&
        (f.error !== undefined || f.result?.envelope?.payload?.final !== false),
      `the response to ${JSON.stringify(id)}`,
      timeoutMs,
    );
  }

  /** Sends a request and waits for its response. */
  call(envelope: unknown, id?: string | number, timeoutMs = 5000): Promise<Json> {
    const rid = this.request(envelope, id);
    return this.response(rid, timeoutMs);
  }

  /** Waits until `n` frames matching `pred` have arrived, and returns them. */
  async waitForCount(
    pred: (f: Json) => boolean,
    n: number,
    label = 'frames',
    timeoutMs = 5000,
  ): Promise<Json[]> {
    await waitFor(() => this.frames.filter(pred).length >= n, `${n} ${label}`, timeoutMs);
    return this.frames.filter(pred);
  }

  close(code?: number): Promise<CloseInfo> {
    this.ws.close(code);
    return this.closed;
  }
}

/** Opens a WebSocket and resolves once it is open; rejects on an error or an HTTP refusal. */
export function connect(
  url: string,
  protocols?: string | string[],
  options: ClientOptions = {},
): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, options);
    const peer = new Peer(ws);
    const fail = (err: Error) => {
      ws.off('open', onOpen);
      reject(err);
    };
    const onOpen = () => {
      ws.off('error', fail);
      ws.off('unexpected-response', onUnexpected);
      resolve(peer);
    };
    const onUnexpected = (_req: unknown, res: { statusCode?: number }) => {
      ws.off('open', onOpen);
      ws.terminate();
      reject(
        Object.assign(new Error(`Unexpected server response: ${res.statusCode}`), { status: res.statusCode }),
      );
    };
    ws.once('open', onOpen);
    ws.once('error', fail);
    ws.once('unexpected-response', onUnexpected);
  });
}

/** Opens a WebSocket without waiting for anything: for connections the server is expected to close. */
export function open(url: string, protocols?: string | string[], options: ClientOptions = {}): Peer {
  return new Peer(new WebSocket(url, protocols, options));
}

export type DemoOptions = Omit<ASAPServerOptions, 'manifest'> & { agentId?: string };

export interface Started {
  server: ASAPServer;
  /** `http://127.0.0.1:PORT` */
  url: string;
  port: number;
  /** `ws://127.0.0.1:PORT/asap/ws` (or the configured path) */
  wsUrl: string;
}

/**
 * The demo agent on 127.0.0.1:0. Defaults suited to tests: rate limit off (tests that
 * exercise it set it), a short drain deadline.
 */
export async function startDemo(opts: DemoOptions = {}): Promise<Started> {
  const server = createDemoAgent({ rateLimit: 0, drainTimeoutMs: 2000, ...opts });
  servers.add(server);
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  const path = opts.websocketPath === undefined ? '/asap/ws' : opts.websocketPath;
  return { server, url: addr.url, port: addr.port, wsUrl: `ws://127.0.0.1:${addr.port}${path || ''}` };
}

export function trackServer(server: ASAPServer): ASAPServer {
  servers.add(server);
  return server;
}

export function trackHttpServer(server: Server): Server {
  httpServers.add(server);
  return server;
}

/** Closes every client, ASAP server and HTTP server the test opened. */
export async function cleanup(): Promise<void> {
  for (const p of peers) p.ws.terminate();
  await Promise.all([...peers].map((p) => (p.ws.readyState === WebSocket.CLOSED ? undefined : p.closed)));
  peers.clear();
  await Promise.all([...servers].map((s) => s.close()));
  servers.clear();
  await Promise.all(
    [...httpServers].map(
      (s) =>
        new Promise<void>((resolve) => {
          s.closeAllConnections();
          if (!s.listening) {
            resolve();
            return;
          }
          s.close(() => resolve());
        }),
    ),
  );
  httpServers.clear();
}
