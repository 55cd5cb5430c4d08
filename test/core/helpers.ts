/** Shared helpers of the core tests: a recording Session, envelope builders, and a JSON-RPC round trip. */
import type { Dispatcher, Session } from '../../src/core/dispatcher.js';
import type { Logger } from '../../src/core/logger.js';
import type { TransportKind } from '../../src/core/registry.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../../src/protocol/envelope.js';
import {
  decodeFrame,
  type ErrorFrame,
  encodeNotification,
  encodeRequest,
  type JsonRpcId,
  type SuccessFrame,
} from '../../src/protocol/jsonrpc.js';
import type { MessageAck, TaskRequest } from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';

export const CLIENT = 'urn:asap:agent:client';
export const AGENT = 'urn:asap:agent:server';

/** What a JSON-RPC answer looks like once parsed. */
export interface Answer {
  jsonrpc: '2.0';
  id: JsonRpcId | null;
  result?: { envelope: Envelope<JsonObject> | null };
  error?: { code: number; message: string; data?: JsonObject & { validation_errors?: JsonObject[] } };
  method?: string;
  params?: { envelope: Envelope<JsonObject> };
}

/**
 * A plain Session that records everything the dispatcher does with it.
 * `writeHook` lets a test make `write` return a promise (backpressure).
 */
export class FakeSession implements Session {
  readonly writes: string[] = [];
  readonly pushed: Envelope<object>[] = [];
  readonly seen: Envelope<object>[] = [];
  readonly acksReceived: Envelope<MessageAck>[] = [];
  readonly responses: (SuccessFrame | ErrorFrame)[] = [];
  writeHook: ((text: string) => void | Promise<void>) | undefined;
  readonly transport: TransportKind;

  constructor(
    readonly interactive: boolean,
    readonly principal?: unknown,
  ) {
    this.transport = interactive ? 'websocket' : 'http';
  }

  write(text: string): void | Promise<void> {
    this.writes.push(text);
    return this.writeHook?.(text);
  }

  push(envelope: Envelope<object>): Promise<void> {
    this.pushed.push(envelope);
    return Promise.resolve();
  }

  onEnvelope(envelope: Envelope<object>): void {
    this.seen.push(envelope);
  }

  onAck(envelope: Envelope<MessageAck>): void {
    this.acksReceived.push(envelope);
  }

  onResponse(frame: SuccessFrame | ErrorFrame): void {
    this.responses.push(frame);
  }

  /** Every written frame, parsed. */
  frames(): Answer[] {
    return this.writes.map((w) => JSON.parse(w) as Answer);
  }

  /** The `asap.ack` notifications written, as MessageAck envelopes. */
  acks(): Envelope<MessageAck>[] {
    return this.frames()
      .filter((f) => f.method === 'asap.ack')
      .map((f) => f.params!.envelope as unknown as Envelope<MessageAck>);
  }
}

/** A minimal session without any of the optional callbacks. */
export function bareSession(interactive = false): Session & { writes: string[] } {
  const writes: string[] = [];
  return {
    transport: interactive ? 'websocket' : 'http',
    interactive,
    writes,
    write: (t: string) => {
      writes.push(t);
    },
    push: () => Promise.resolve(),
  };
}

export function taskRequest(
  skillId: string,
  input: JsonObject = {},
  extra: Partial<EnvelopeInit<TaskRequest>> & { config?: TaskRequest['config'] } = {},
): Envelope<TaskRequest> {
  const { config, ...rest } = extra;
  const payload: TaskRequest = { conversation_id: 'conv-1', skill_id: skillId, input };
  if (config !== undefined) payload.config = config;
  return createEnvelope({
    sender: CLIENT,
    recipient: AGENT,
    payload_type: 'TaskRequest',
    payload,
    ...rest,
  });
}

export function envelope<P extends object>(
  payloadType: string,
  payload: P,
  extra: Partial<EnvelopeInit<P>> = {},
): Envelope<P> {
  return createEnvelope({ sender: CLIENT, recipient: AGENT, payload_type: payloadType, payload, ...extra });
}

/** Sends `asap.send` with `id` and returns the parsed answer (undefined when none). */
export async function send(
  d: Dispatcher,
  session: Session,
  env: unknown,
  id: JsonRpcId = 1,
): Promise<Answer | undefined> {
  const text = await d.handle(decodeFrame(encodeRequest('asap.send', { envelope: env }, id)), session);
  return text === undefined ? undefined : (JSON.parse(text) as Answer);
}

/** Sends `asap.send` as a notification; resolves with what handle() returned (always undefined). */
export function notify(d: Dispatcher, session: Session, env: unknown): Promise<string | undefined> {
  return Promise.resolve(d.handle(decodeFrame(encodeNotification('asap.send', { envelope: env })), session));
}

/** Handles a raw text frame and parses the answer. */
export async function raw(d: Dispatcher, session: Session, text: string): Promise<unknown> {
  const out = await d.handle(decodeFrame(text), session);
  return out === undefined ? undefined : JSON.parse(out);
}

export interface Deferred<T = void> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Polls `cond` until it holds (up to `timeoutMs`), so tests do not depend on exact timings. */
export async function waitFor(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Resolves when `signal` aborts. */
export function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    else signal.addEventListener('abort', () => resolve(signal.reason), { once: true });
  });
}

/** A logger that records every call. */
export class RecordingLogger implements Logger {
  readonly entries: { level: string; obj: object; msg: string | undefined }[] = [];
  constructor(private readonly debugOn = true) {}
  debug(obj: object, msg?: string): void {
    this.entries.push({ level: 'debug', obj, msg });
  }
  info(obj: object, msg?: string): void {
    this.entries.push({ level: 'info', obj, msg });
  }
  warn(obj: object, msg?: string): void {
    this.entries.push({ level: 'warn', obj, msg });
  }
  error(obj: object, msg?: string): void {
    this.entries.push({ level: 'error', obj, msg });
  }
  isLevelEnabled(level: string): boolean {
    return level !== 'debug' || this.debugOn;
  }
  messages(level: string): (string | undefined)[] {
    return this.entries.filter((e) => e.level === level).map((e) => e.msg);
  }
}
