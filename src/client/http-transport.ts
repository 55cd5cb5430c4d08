import { abortError, answerEnvelope } from '../core/peer.js';
import { type ClientTracing, endWhenDone, endWhenSettled } from '../core/tracing.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
} from '../protocol/errors.js';
import { decodeFrame, encodeEnvelopeRequest, METHOD_SEND } from '../protocol/jsonrpc.js';
import { type Health, type Manifest, validateHealth, validateManifest } from '../protocol/manifest.js';
import { normalizePayloadType, type TaskStream } from '../protocol/payloads.js';
import { isJsonObject } from '../protocol/schema-util.js';
import { cancelEnvelopeFor } from './cancel.js';
import { type TokenSource, tokenOf } from './runtime.js';
import { readSSE } from './sse.js';
import { defaultClientTracing } from './tracing.js';

export interface HttpTransportOptions {
  /** Bearer token, or a provider called for every request. */
  token?: TokenSource;
  /** Deadline of a request (default 60 s). */
  requestTimeoutMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  headers?: Record<string, string>;
  /**
   * Where `stream()` posts (asap-wire.md §11). Default: the transport's URL with `/stream` appended
   * when its path ends with `/asap` (`/asap/stream`), else the transport's URL itself (a `POST /asap`
   * with `Accept: text/event-stream` is answered the same way).
   */
  streamUrl?: string;
  /** Bound on one SSE event of a stream (default 10 MiB); a larger one fails the stream. */
  maxEventSize?: number;
  /** Spans of requests and streams (see WebSocketTransportOptions.tracing); `false` turns them off. */
  tracing?: ClientTracing | false;
}

export interface HttpRequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The transport version this client speaks (asap-wire.md §11), sent as `ASAP-Version` on every request. */
export const ASAP_TRANSPORT_VERSION = '2.2';

const MANIFEST_PATH = '/.well-known/asap/manifest.json';
const HEALTH_PATH = '/.well-known/asap/health';

/** The origin (scheme, host, port) of an endpoint URL: where the well-known routes live. */
export function baseUrlOf(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}`;
}

/** The URL `stream()` posts to by default (see {@link HttpTransportOptions.streamUrl}). */
export function streamUrlOf(url: string): string {
  const u = new URL(url);
  const path = u.pathname.replace(/\/+$/, '');
  if (!path.endsWith('/asap')) return url;
  u.pathname = `${path}/stream`;
  return u.href;
}

/** ASAP over HTTP: one POST per request, with the global fetch, so it runs in browsers too. */
export class HttpTransport {
  private nextId = 1;
  private readonly fetchImpl: typeof fetch;
  private readonly tracing: ClientTracing | undefined;
  private _negotiatedVersion: string | undefined;

  constructor(
    readonly url: string,
    private readonly opts: HttpTransportOptions = {},
  ) {
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.tracing = opts.tracing === false ? undefined : (opts.tracing ?? defaultClientTracing());
  }

  /** The `ASAP-Version` the server answered with last; undefined before the first response carrying it. */
  get negotiatedVersion(): string | undefined {
    return this._negotiatedVersion;
  }

  /** Where `stream()` posts. */
  get streamUrl(): string {
    return this.opts.streamUrl ?? streamUrlOf(this.url);
  }

  /** Sends an envelope and resolves with the response envelope, checked to bind to it. */
  request(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: HttpRequestOptions = {},
  ): Promise<Envelope<object>> {
    const envelope = toEnvelope(init);
    const call = this.tracing?.startCall(envelope, 'request', 'http');
    const answer = this.post(call?.envelope ?? envelope, opts);
    return call === undefined ? answer : endWhenSettled(call, answer);
  }

  private async post(envelope: Envelope<object>, opts: HttpRequestOptions): Promise<Envelope<object>> {
    const id = this.nextId++;
    const body = encodeEnvelopeRequest(METHOD_SEND, envelope, id);
    const signal = opts.signal;
    // An aborted TaskRequest: tell the server with a TaskCancel (best effort, not awaited).
    const onAbort = () => this.sendCancel(envelope);
    if (signal !== undefined && !signal.aborted) signal.addEventListener('abort', onAbort, { once: true });
    try {
      const res = await this.fetchWithTimeout(
        this.url,
        { method: 'POST', body, headers: { 'content-type': 'application/json' } },
        opts,
      );
      return answerOf(res.text, res.status, envelope.id);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Posts the TaskCancel of an aborted TaskRequest, ignoring the outcome. */
  private sendCancel(request: Envelope<object>): void {
    const cancel = cancelEnvelopeFor(request, 'Request aborted by the client');
    if (cancel === undefined) return;
    const body = encodeEnvelopeRequest(METHOD_SEND, cancel, this.nextId++);
    this.fetchWithTimeout(
      this.url,
      { method: 'POST', body, headers: { 'content-type': 'application/json' } },
      {},
    ).catch(() => {});
  }

  /**
   * Sends a request to the stream endpoint and iterates the answer as it arrives (asap-wire.md §11):
   * TaskStream envelopes, each checked to bind to the request, up to the final one. A JSON answer is
   * an error (thrown) or a single envelope; `event: error` throws the error it carries. The deadline
   * restarts with every envelope and runs only while waiting for the server (not while the consumer
   * holds a chunk); the body is read only as the consumer pulls. Leaving the loop early, or the
   * signal, aborts the request, so the server stops the handler.
   */
  stream(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: HttpRequestOptions = {},
  ): AsyncGenerator<Envelope<TaskStream>, void, undefined> {
    const envelope = toEnvelope(init);
    const call = this.tracing?.startCall(envelope, 'stream', 'http');
    if (call === undefined) return this.streamOf(envelope, opts);
    return endWhenDone(call, this.streamOf(call.envelope, opts));
  }

  private async *streamOf(
    envelope: Envelope<object>,
    opts: HttpRequestOptions,
  ): AsyncGenerator<Envelope<TaskStream>, void, undefined> {
    const body = encodeEnvelopeRequest(METHOD_SEND, envelope, this.nextId++);
    const url = this.streamUrl;
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 60_000;
    const controller = new AbortController();
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, timeoutMs);
    };
    const pause = () => clearTimeout(timer);
    const signal = opts.signal;
    const onAbort = () => controller.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const failure = (err: unknown): Error => {
      if (err instanceof ASAPError) return err;
      if (timedOut) return new RequestTimeoutError(`No response from ${url} within ${timeoutMs} ms`);
      if (signal?.aborted) return abortError(signal);
      return new ConnectionError(`Stream from ${url} failed: ${(err as Error)?.message ?? String(err)}`);
    };
    try {
      if (signal?.aborted) throw abortError(signal);
      arm();
      let res: Response;
      try {
        const headers = await this.headers({
          'content-type': 'application/json',
          accept: 'text/event-stream',
        });
        res = await this.fetchImpl(url, { method: 'POST', body, headers, signal: controller.signal });
        this.noteVersion(res);
      } catch (err) {
        throw failure(err);
      }
      const type = res.headers.get('content-type') ?? '';
      if (!/^text\/event-stream\b/i.test(type) || res.body === null) {
        let text: string;
        try {
          text = await res.text();
        } catch (err) {
          throw failure(err);
        }
        yield answerOf(text, res.status, envelope.id) as Envelope<TaskStream>;
        return;
      }
      const events = readSSE(res.body, { maxEventSize: this.opts.maxEventSize });
      try {
        for (;;) {
          let next: IteratorResult<{ event?: string; data: string }>;
          try {
            next = await events.next();
          } catch (err) {
            throw failure(err);
          }
          if (next.done === true)
            throw new ConnectionError(`Stream from ${url} ended before its final chunk`);
          const { event, data } = next.value;
          if (event === 'error') throw streamError(data);
          if (event !== undefined && event !== 'message') continue;
          const env = chunkEnvelope(data, envelope.id);
          pause();
          yield env;
          if (isLast(env)) return;
          arm();
        }
      } finally {
        await events.return();
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      // Ended early (break, error, abort) or done: either way nothing more is read from this response.
      controller.abort();
    }
  }

  /** Fetches and validates the agent's manifest. */
  async discover(baseUrl: string = baseUrlOf(this.url), opts: HttpRequestOptions = {}): Promise<Manifest> {
    const res = await this.fetchWithTimeout(new URL(MANIFEST_PATH, baseUrl).href, { method: 'GET' }, opts);
    if (!res.ok)
      throw new ConnectionError(`Manifest request failed with HTTP ${res.status}`, { status: res.status });
    const v = validateManifest(parseJson(res.text));
    if (!v.ok) throw new ProtocolError('Invalid manifest', { validation_errors: v.issues });
    return v.value;
  }

  /** Fetches the agent's health (a 503 still returns the body: the agent is there but draining). */
  async health(baseUrl: string = baseUrlOf(this.url), opts: HttpRequestOptions = {}): Promise<Health> {
    const res = await this.fetchWithTimeout(new URL(HEALTH_PATH, baseUrl).href, { method: 'GET' }, opts);
    const v = validateHealth(parseJson(res.text));
    if (!v.ok)
      throw new ProtocolError(`Invalid health response (HTTP ${res.status})`, {
        validation_errors: v.issues,
      });
    return v.value;
  }

  /** The headers of every request: ours, the version, the caller's, and the bearer token. */
  private async headers(extra: Record<string, string> = {}): Promise<Record<string, string>> {
    const headers: Record<string, string> = {
      'asap-version': ASAP_TRANSPORT_VERSION,
      ...this.opts.headers,
      ...extra,
    };
    let token: string | undefined;
    try {
      token = await tokenOf(this.opts.token);
    } catch (err) {
      throw new ConnectionError(`Cannot get a token: ${(err as Error)?.message ?? String(err)}`);
    }
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    return headers;
  }

  private noteVersion(res: Response): void {
    const version = res.headers.get('asap-version');
    if (version !== null && version !== '') this._negotiatedVersion = version.trim();
  }

  /** Fetches and reads the whole body under one deadline (a body that stalls times out too). */
  private async fetchWithTimeout(
    url: string,
    init: RequestInit,
    opts: HttpRequestOptions,
  ): Promise<{ status: number; ok: boolean; text: string }> {
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 60_000;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const headers = await this.headers(init.headers as Record<string, string> | undefined);
    try {
      const res = await this.fetchImpl(url, { ...init, headers, signal });
      this.noteVersion(res);
      return { status: res.status, ok: res.ok, text: await res.text() };
    } catch (err) {
      if (timeout.aborted) throw new RequestTimeoutError(`No response from ${url} within ${timeoutMs} ms`);
      if (opts.signal?.aborted) throw new RequestAbortedError();
      throw new ConnectionError(`Cannot reach ${url}: ${fetchFailure(err)}`);
    }
  }
}

/**
 * What a failed fetch says happened: Node's fetch rejects with a bare `fetch failed` and puts the
 * socket's error (`connect ECONNREFUSED 127.0.0.1:9`, a TLS error, …) in `cause`; browsers give a
 * TypeError with no detail.
 */
function fetchFailure(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error && cause.message !== '') return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** An envelope as given, or one completed from an init (id, timestamp). */
function toEnvelope(init: Envelope<object> | EnvelopeInit<object>): Envelope<object> {
  return 'id' in init && 'timestamp' in init && init.id ? (init as Envelope<object>) : createEnvelope(init);
}

/** The answer of a JSON body: a JSON-RPC error (thrown) or one envelope bound to the request. */
function answerOf(text: string, status: number, requestId: string): Envelope<object> {
  const frame = decodeFrame(text);
  if (frame.kind === 'error') throw ASAPError.fromJSON(frame.error);
  if (frame.kind !== 'success') {
    throw new ProtocolError(`Unexpected HTTP ${status} response`, { status, body: text.slice(0, 200) });
  }
  const answer = answerEnvelope(frame.result, requestId);
  if (answer instanceof Error) throw answer;
  return answer;
}

/** The envelope of one SSE event (`data:` the envelope JSON), checked to bind to the request. */
function chunkEnvelope(data: string, requestId: string): Envelope<TaskStream> {
  const value = parseJson(data);
  if (value === undefined)
    throw new ProtocolError('SSE event data is not JSON', { data: data.slice(0, 200) });
  const answer = answerEnvelope({ envelope: value }, requestId);
  if (answer instanceof Error) throw answer;
  return answer as Envelope<TaskStream>;
}

/** The error an `event: error` carries: the JSON-RPC error object (or a whole error response). */
function streamError(data: string): ASAPError {
  const value = parseJson(data);
  const error = isJsonObject(value) && isJsonObject(value.error) ? value.error : value;
  if (isJsonObject(error) && typeof error.code === 'number' && typeof error.message === 'string')
    return ASAPError.fromJSON({ code: error.code, message: error.message, data: error.data });
  return new ProtocolError('Malformed SSE error event', { data: data.slice(0, 200) });
}

/** The last envelope of a stream: a final chunk, or an answer that is no TaskStream chunk at all. */
function isLast(env: Envelope<object>): boolean {
  return (
    (env.payload as { final?: unknown }).final === true ||
    normalizePayloadType(env.payload_type) !== 'taskstream'
  );
}

/** The JSON value of a body, or undefined when it is not JSON (the validators then report it). */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
