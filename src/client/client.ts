import type { ClientTracing } from '../core/tracing.js';
import { createEnvelope, type Envelope, type EnvelopeInit } from '../protocol/envelope.js';
import { ASAPError, ConnectionError } from '../protocol/errors.js';
import type { Health, Manifest } from '../protocol/manifest.js';
import type {
  McpResourceData,
  McpResourceFetch,
  McpToolCall,
  McpToolResult,
  TaskCancel,
  TaskRequest,
  TaskResponse,
  TaskStream,
} from '../protocol/payloads.js';
import type { JsonObject } from '../protocol/schema-util.js';
import { baseUrlOf, HttpTransport, type HttpTransportOptions } from './http-transport.js';
import { ConnectionPool } from './pool.js';
import { isRecoverable, retryAfterMs } from './retry.js';
import type { TokenSource } from './runtime.js';
import type { RequestOptions, WebSocketTransport, WebSocketTransportOptions } from './websocket-transport.js';

export type TransportChoice = 'auto' | 'http' | 'websocket';

export interface ASAPClientOptions {
  /** `auto` (default) picks WebSocket for ws:// and wss://, HTTP for http:// and https://. */
  transport?: TransportChoice;
  /** Bearer token, or a provider of fresh ones (see WebSocketTransportOptions.token). */
  token?: TokenSource;
  /** This client's agent URN, the sender of envelopes built by `task()` (default `urn:asap:agent:client`). */
  sender?: string;
  /** The peer's agent URN, the recipient of envelopes built by `task()` (default `urn:asap:agent:demo`). */
  recipient?: string;
  /** Request deadline for both transports; `websocket.requestTimeoutMs` / `http.requestTimeoutMs` override it. */
  requestTimeoutMs?: number;
  /** Options of every WebSocket connection. */
  websocket?: WebSocketTransportOptions;
  http?: Omit<HttpTransportOptions, 'token'>;
  /** A pool shared with other clients (not closed by `close()`); else the client keeps its own. */
  pool?: ConnectionPool;
  /**
   * Retries of requests that fail with an error the peer marks recoverable (same envelope, so
   * nothing runs twice): `false` turns them off. Default 2 attempts, backoff from 200 ms, or the
   * peer's `retry_after_ms`.
   */
  retry?: { attempts?: number; baseMs?: number } | false;
  /** Connections per target in the client's own pool (default 1). */
  poolSize?: number;
  /**
   * Spans of calls for both transports (see WebSocketTransportOptions.tracing); `websocket.tracing` /
   * `http.tracing` override it.
   */
  tracing?: ClientTracing | false;
}

/**
 * The TaskResponse of a task whose `result` has type `R` (what `task<R>()` resolves with): the
 * handler's returned object. The client does not check `R`: it is what the caller expects.
 */
export type TaskResult<R extends object = JsonObject> = Omit<TaskResponse, 'result'> & { result?: R };

/** True when `P` and `X` are the same type (each extends the other). */
type Same<P, X> = [P] extends [X] ? ([X] extends [P] ? true : false) : false;

/**
 * The payload of the answer to a request payload `P`: a TaskResponse for a TaskRequest or a
 * TaskCancel, an McpToolResult for an McpToolCall, McpResourceData for an McpResourceFetch;
 * `object` for the others (what the peer answers is not fixed by the protocol). Payload types
 * overlap structurally (a TaskUpdate has every field of a TaskCancel), so `P` must be the type
 * itself, as `taskEnvelope()` and `createEnvelope<TaskCancel>()` give.
 */
export type ReplyPayload<P> =
  Same<P, TaskRequest> extends true
    ? TaskResponse
    : Same<P, TaskCancel> extends true
      ? TaskResponse
      : Same<P, McpToolCall> extends true
        ? McpToolResult
        : Same<P, McpResourceFetch> extends true
          ? McpResourceData
          : object;

export interface TaskOptions extends RequestOptions {
  conversationId?: string;
  config?: TaskRequest['config'];
  traceId?: string;
}

/** Waits `ms`, or until `signal` aborts (then resolves at once: the caller's request fails on its own). */
function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Picks the transport a URL implies. */
export function transportFor(url: string, choice: TransportChoice = 'auto'): 'http' | 'websocket' {
  if (choice !== 'auto') return choice;
  const scheme = new URL(url).protocol;
  if (scheme === 'ws:' || scheme === 'wss:') return 'websocket';
  if (scheme === 'http:' || scheme === 'https:') return 'http';
  throw new Error(`Unsupported URL scheme ${scheme} (use http, https, ws or wss)`);
}

/**
 * An ASAP client. The same `send()` works over HTTP and WebSocket; the URL
 * picks the transport unless told otherwise.
 */
export class ASAPClient {
  readonly kind: 'http' | 'websocket';
  private readonly http: HttpTransport | undefined;
  private readonly pool: ConnectionPool | undefined;
  private readonly ownsPool: boolean;
  private readonly sender: string;
  private readonly recipient: string;
  private closed = false;

  constructor(
    readonly url: string,
    private readonly opts: ASAPClientOptions = {},
  ) {
    this.kind = transportFor(url, opts.transport);
    this.sender = opts.sender ?? 'urn:asap:agent:client';
    this.recipient = opts.recipient ?? 'urn:asap:agent:demo';
    if (this.kind === 'http') {
      this.http = new HttpTransport(url, {
        ...opts.http,
        token: opts.token,
        requestTimeoutMs: opts.http?.requestTimeoutMs ?? opts.requestTimeoutMs,
        tracing: opts.http?.tracing ?? opts.tracing,
      });
      this.ownsPool = false;
    } else {
      this.ownsPool = opts.pool === undefined;
      this.pool =
        opts.pool ??
        new ConnectionPool({
          maxPerTarget: opts.poolSize ?? 1,
          transport: {
            token: opts.token,
            requestTimeoutMs: opts.requestTimeoutMs,
            tracing: opts.tracing,
            ...opts.websocket,
          },
        });
    }
  }

  /**
   * Starts over HTTP at `baseUrl`, reads the manifest, and returns a client on
   * its WebSocket endpoint (`endpoints.events`), or on HTTP when it has none.
   */
  static async fromManifest(baseUrl: string, opts: ASAPClientOptions = {}): Promise<ASAPClient> {
    const manifest = await new HttpTransport(baseUrl, { token: opts.token }).discover(baseUrlOf(baseUrl));
    const url = manifest.endpoints.events ?? manifest.endpoints.asap;
    return new ASAPClient(url, { recipient: manifest.id, ...opts, transport: 'auto' });
  }

  /** The WebSocket connection requests go to next (opening it if needed). */
  transport(): WebSocketTransport {
    if (this.pool === undefined) throw new Error('This client uses HTTP');
    if (this.closed) throw new ConnectionError('Client is closed');
    return this.pool.acquire(this.url);
  }

  /**
   * Sends an envelope and resolves with the response envelope. An error the peer answers and marks
   * recoverable (`data.recoverable`, asap-wire.md §11: rate limit, overload, shutting down,
   * timeouts) is retried with the same envelope, so the server answers a copy it already ran from
   * its dedupe store: `retry.attempts` times (default 2), after `retry_after_ms` when the peer says,
   * else with backoff from `retry.baseMs` (default 200 ms).
   */
  async send<P extends object>(
    envelope: Envelope<P> | EnvelopeInit<P>,
    opts?: RequestOptions,
  ): Promise<Envelope<ReplyPayload<P>>> {
    if (this.closed) throw new ConnectionError('Client is closed');
    // One envelope (one id) for every attempt.
    const env =
      'id' in envelope && envelope.id
        ? (envelope as Envelope<object>)
        : createEnvelope(envelope as EnvelopeInit<object>);
    const retry = this.opts.retry;
    const attempts = retry === false ? 0 : (retry?.attempts ?? 2);
    for (let attempt = 0; ; attempt++) {
      try {
        return (await (this.http !== undefined
          ? this.http.request(env, opts)
          : this.transport().request(env, opts))) as Envelope<ReplyPayload<P>>;
      } catch (err) {
        // Only what the peer answered: a local failure (no answer, timeout) has its own handling
        // (the WebSocket transport resends after a reconnect; a deadline is the caller's).
        const peerSaidRetry = err instanceof ASAPError && !err.local && isRecoverable(err);
        if (attempt >= attempts || !peerSaidRetry || opts?.signal?.aborted) throw err;
        const base = retry === false ? 0 : (retry?.baseMs ?? 200);
        await delay(retryAfterMs(err) ?? base * 2 ** attempt, opts?.signal);
      }
    }
  }

  /**
   * Streams the answer: TaskStream envelopes up to the final one, as they arrive (over HTTP as
   * Server-Sent Events from the stream endpoint, asap-wire.md §11).
   */
  async *stream(
    envelope: Envelope<object> | EnvelopeInit<object>,
    opts?: RequestOptions,
  ): AsyncIterable<Envelope<TaskStream>> {
    if (this.closed) throw new ConnectionError('Client is closed');
    if (this.http !== undefined) yield* this.http.stream(envelope, opts);
    else yield* this.transport().stream(envelope, opts);
  }

  /** The transport version the HTTP server negotiated (its last `ASAP-Version`); undefined over WebSocket or before a response. */
  get negotiatedVersion(): string | undefined {
    return this.http?.negotiatedVersion;
  }

  /** Builds a TaskRequest envelope for a skill. */
  taskEnvelope(skillId: string, input: JsonObject = {}, opts: TaskOptions = {}): Envelope<TaskRequest> {
    const payload: TaskRequest = {
      conversation_id: opts.conversationId ?? `conv-${Date.now().toString(36)}`,
      skill_id: skillId,
      input,
    };
    if (opts.config) payload.config = opts.config;
    return createEnvelope({
      sender: this.sender,
      recipient: this.recipient,
      payload_type: 'TaskRequest',
      payload,
      trace_id: opts.traceId,
    });
  }

  /**
   * Runs a skill and resolves with the TaskResponse envelope; `R` types its `result` (the object
   * the skill's handler returns), e.g. `client.task<{ echo: string }>('echo', { text })`.
   */
  task<R extends object = JsonObject>(
    skillId: string,
    input: JsonObject = {},
    opts: TaskOptions = {},
  ): Promise<Envelope<TaskResult<R>>> {
    return this.send(this.taskEnvelope(skillId, input, opts), opts) as Promise<Envelope<TaskResult<R>>>;
  }

  /**
   * Asks the peer to cancel the running task `taskId` (the id of its TaskRequest envelope) and
   * resolves with its answer: a TaskResponse with status `cancelled`; rejects with -32010 when the
   * peer runs no such task. (Aborting the signal of a `task()` sends the same TaskCancel itself.)
   */
  cancel(taskId: string, opts: RequestOptions & { reason?: string } = {}): Promise<Envelope<TaskResponse>> {
    const { reason, ...requestOpts } = opts;
    const payload: TaskCancel = { task_id: taskId };
    if (reason !== undefined) payload.reason = reason;
    return this.send(
      createEnvelope({ sender: this.sender, recipient: this.recipient, payload_type: 'TaskCancel', payload }),
      requestOpts,
    );
  }

  /** Calls back for every pushed envelope, on any of this client's connections. Returns the remover. */
  onMessage(callback: (envelope: Envelope<object>) => void): () => void {
    if (this.pool === undefined) return () => {};
    return this.pool.on('message', (env) => callback(env));
  }

  discover(baseUrl: string = baseUrlOf(this.url)): Promise<Manifest> {
    return (this.http ?? new HttpTransport(this.httpBase(baseUrl), { token: this.opts.token })).discover(
      this.httpBase(baseUrl),
    );
  }

  health(baseUrl: string = baseUrlOf(this.url)): Promise<Health> {
    return (this.http ?? new HttpTransport(this.httpBase(baseUrl), { token: this.opts.token })).health(
      this.httpBase(baseUrl),
    );
  }

  private httpBase(url: string): string {
    return url.replace(/^ws(s?):/, 'http$1:');
  }

  /** Closes the client's own connections. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.pool !== undefined && this.ownsPool) await this.pool.close();
  }
}
