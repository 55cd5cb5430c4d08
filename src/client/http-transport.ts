import { answerEnvelope } from '../core/peer.js';
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
import { type TokenSource, tokenOf } from './runtime.js';

export interface HttpTransportOptions {
  /** Bearer token, or a provider called for every request. */
  token?: TokenSource;
  /** Deadline of a request (default 60 s). */
  requestTimeoutMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  headers?: Record<string, string>;
}

export interface HttpRequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

const MANIFEST_PATH = '/.well-known/asap/manifest.json';
const HEALTH_PATH = '/.well-known/asap/health';

/** The origin (scheme, host, port) of an endpoint URL: where the well-known routes live. */
export function baseUrlOf(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}`;
}

/** ASAP over HTTP: one POST per request, with the global fetch, so it runs in browsers too. */
export class HttpTransport {
  private nextId = 1;
  private readonly fetchImpl: typeof fetch;

  constructor(
    readonly url: string,
    private readonly opts: HttpTransportOptions = {},
  ) {
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Sends an envelope and resolves with the response envelope, checked to bind to it. */
  async request(
    init: Envelope<object> | EnvelopeInit<object>,
    opts: HttpRequestOptions = {},
  ): Promise<Envelope<object>> {
    const envelope =
      'id' in init && 'timestamp' in init && init.id ? (init as Envelope<object>) : createEnvelope(init);
    const id = this.nextId++;
    const body = encodeEnvelopeRequest(METHOD_SEND, envelope, id);
    const res = await this.fetchWithTimeout(
      this.url,
      { method: 'POST', body, headers: { 'content-type': 'application/json' } },
      opts,
    );
    const { text } = res;
    const frame = decodeFrame(text);
    if (frame.kind === 'error') throw ASAPError.fromJSON(frame.error);
    if (frame.kind !== 'success') {
      throw new ProtocolError(`Unexpected HTTP ${res.status} response`, {
        status: res.status,
        body: text.slice(0, 200),
      });
    }
    const answer = answerEnvelope(frame.result, envelope.id);
    if (answer instanceof Error) throw answer;
    return answer;
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

  /** Fetches and reads the whole body under one deadline (a body that stalls times out too). */
  private async fetchWithTimeout(
    url: string,
    init: RequestInit,
    opts: HttpRequestOptions,
  ): Promise<{ status: number; ok: boolean; text: string }> {
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 60_000;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const headers: Record<string, string> = {
      ...this.opts.headers,
      ...(init.headers as Record<string, string>),
    };
    let token: string | undefined;
    try {
      token = await tokenOf(this.opts.token);
    } catch (err) {
      throw new ConnectionError(`Cannot get a token: ${(err as Error)?.message ?? String(err)}`);
    }
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    try {
      const res = await this.fetchImpl(url, { ...init, headers, signal });
      return { status: res.status, ok: res.ok, text: await res.text() };
    } catch (err) {
      if (timeout.aborted) throw new RequestTimeoutError(`No response from ${url} within ${timeoutMs} ms`);
      if (opts.signal?.aborted) throw new RequestAbortedError();
      throw new ConnectionError(`Cannot reach ${url}: ${(err as Error).message}`);
    }
  }
}

/** The JSON value of a body, or undefined when it is not JSON (the validators then report it). */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
