/**
 * Helpers for tests that run the engine on {@link ManualTimers} while servers and clients still talk over
 * real sockets on 127.0.0.1: manual time moves only when a test says so (`await timers.tick(ms)`), real
 * time passes only for socket I/O to land (short polls, bounded in real time).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { nodeWebSocketFactory } from '../../src/client/node-runtime.js';
import type { WebSocketFactory } from '../../src/client/runtime.js';
import { ManualTimers } from '../../src/core/timers.js';

/**
 * Manual timers that start at the wall clock. `new ManualTimers()` starts at 0, and the server's replay
 * guard compares envelope timestamps (wall clock, set by createEnvelope) with `timers.now()`.
 */
export function manualTimers(): ManualTimers {
  return new ManualTimers(Date.now());
}

/** Polls `cond` every few ms of real time; throws after `timeoutMs` of real time. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await sleep(2);
  }
}

/**
 * Lets real time pass (manual time does not): for a check that something did NOT arrive over a socket,
 * which would have landed within this span on loopback.
 */
export function letIoLand(ms = 30): Promise<void> {
  return sleep(ms);
}

/**
 * Moves manual time in steps of `stepMs`, letting real I/O land between steps (`realMs` each), until
 * `cond` holds. Returns the manual time that took. Throws once `maxMs` of manual time have passed.
 * For waits whose exact length is not what the test asserts (a reconnect after the network is back).
 */
export async function tickUntil(
  timers: ManualTimers,
  cond: () => boolean,
  what: string,
  { stepMs = 10, maxMs = 60_000, realMs = 1 }: { stepMs?: number; maxMs?: number; realMs?: number } = {},
): Promise<number> {
  const start = timers.now();
  while (!cond()) {
    if (timers.now() - start >= maxMs)
      throw new Error(`Still waiting for ${what} after ${maxMs} ms of manual time`);
    await timers.tick(stepMs);
    if (!cond()) await sleep(realMs);
  }
  return timers.now() - start;
}

/**
 * Awaits `p` while moving manual time forward: for closes whose fallbacks run on the manual timers (a
 * close handshake that cannot complete, a drain deadline), so a cleanup never hangs. Bounded in real time.
 */
export async function whileTicking<T>(
  timers: ManualTimers,
  p: Promise<T>,
  { stepMs = 100, realMs = 5000 }: { stepMs?: number; realMs?: number } = {},
): Promise<T> {
  let done = false;
  const settled = p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  const until = Date.now() + realMs;
  while (!done) {
    if (Date.now() > until) throw new Error(`still pending after ${realMs} ms while ticking`);
    await timers.tick(stepMs);
    await Promise.race([settled, sleep(2)]);
  }
  return p;
}

/** Tracks whether a promise has settled yet. */
export function watch<T>(p: Promise<T>): { settled: () => boolean; promise: Promise<T> } {
  let done = false;
  const mark = () => {
    done = true;
  };
  p.then(mark, mark);
  return { settled: () => done, promise: p };
}

export interface Recording {
  factory: WebSocketFactory;
  /** Manual time of every connection attempt (socket created), in order. */
  attempts: number[];
  /** Every frame the client wrote, with the manual time of the write. */
  writes: { at: number; text: string }[];
  /** Manual times of the writes whose text matches. */
  writesOf(pred: (text: string) => boolean): number[];
}

/**
 * The real `ws` factory (through the transport's public `webSocketFactory` option), recording when each
 * connection attempt starts and every frame written, on manual time. Both happen synchronously inside
 * the timer callback that causes them, so they are exact.
 */
export function recordingFactory(timers: ManualTimers): Recording {
  const attempts: number[] = [];
  const writes: { at: number; text: string }[] = [];
  return {
    attempts,
    writes,
    writesOf: (pred) => writes.filter((w) => pred(w.text)).map((w) => w.at),
    factory: (url, opts) => {
      attempts.push(timers.now());
      const socket = nodeWebSocketFactory(url, opts);
      const send = socket.send.bind(socket);
      socket.send = (data: string) => {
        writes.push({ at: timers.now(), text: data });
        send(data);
      };
      return socket;
    },
  };
}

// biome-ignore lint/suspicious/noExplicitAny: frames on the wire are free-form JSON read by the tests
export type Json = any;

/** A plain `ws` client that records every frame, answers nothing (no pong, no ack) and never pings. */
export class RawClient {
  readonly frames: Json[] = [];
  closeInfo: { code: number; reason: string } | undefined;
  private nextId = 1;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const text = data.toString('utf8');
      try {
        this.frames.push(JSON.parse(text));
      } catch {
        this.frames.push({ unparsable: text });
      }
    });
    ws.on('error', () => {});
    ws.once('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
    });
  }

  static connect(url: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, ['asap.v1'], { perMessageDeflate: false });
      const client = new RawClient(ws);
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Frames matching `pred`. */
  where(pred: (f: Json) => boolean): Json[] {
    return this.frames.filter(pred);
  }

  /** Sends an `asap.send` request carrying `envelope`; returns its JSON-RPC id. */
  request(envelope: unknown): string {
    const id = `raw-${this.nextId++}`;
    this.ws.send(JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope }, id }));
    return id;
  }

  /** Closes without waiting for anything the manual timers drive. */
  terminate(): void {
    this.ws.terminate();
  }
}

/** `{"type":"ping"}` and its other spellings, as a decoded frame. */
export const isPing = (f: Json): boolean => f?.type === 'ping' && f.jsonrpc === undefined;
