import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher, Session } from '../core/dispatcher.js';
import { boundAgents, principalId } from '../core/identity.js';
import type { Instrumentation } from '../core/instrumentation.js';
import type { Logger } from '../core/logger.js';
import { engineError } from '../core/opaque-error.js';
import { ASAPError, ErrorCode, type JsonRpcErrorObject } from '../protocol/errors.js';
import {
  decodeFrame,
  encodeError,
  type JsonRpcId,
  METHOD_SEND,
  type RequestFrame,
} from '../protocol/jsonrpc.js';
import { normalizePayloadType } from '../protocol/payloads.js';
import { type AuthCheck, bearerFromHeader } from './auth.js';
import type { Drain } from './drain.js';
import {
  CORS_ALLOW_HEADERS,
  CORS_ALLOW_METHODS,
  CORS_EXPOSE_HEADERS,
  CORS_MAX_AGE_SECONDS,
  type OriginPolicy,
} from './origin.js';

/** What the HTTP binding needs from the server around it. */
export interface HttpBindingDeps {
  readonly dispatcher: Dispatcher;
  readonly logger: Logger;
  readonly maxMessageBytes: number;
  /** Counts requests in flight, so shutdown can wait for them, and says when the server drains. */
  readonly drain: Drain;
  readonly rpcPath: string;
  readonly manifestPath: string;
  readonly healthPath: string;
  /** `GET` route of the Prometheus metrics; undefined when metrics are off. */
  readonly metricsPath?: string;
  /** The metrics text and its content type (called only with `metricsPath` set). */
  metrics?(): Promise<{ contentType: string; body: string }>;
  /** Token check; undefined when the server is open. */
  readonly authenticate: AuthCheck | undefined;
  manifestFor(req: IncomingMessage): object;
  /** `Vary` of the manifest answer: the request headers its endpoints are built from, if any. */
  readonly manifestVary?: string;
  health(): { status: number; body: object };
  /** `GET` routes of the liveness and readiness probes; undefined when probes are off. */
  readonly livenessPath?: string;
  readonly readinessPath?: string;
  /** The readiness probe's status and body. */
  readiness(): { status: number; body: object };
  /** The engine failed around a request (already logged); `errorId` is what the caller got, if anything. */
  failed(err: unknown, errorId: string | undefined): void;
  /** Which browser origins may call us (asap-wire.md §10). */
  readonly origins: OriginPolicy;
  readonly instrumentation: Instrumentation | undefined;
}

const JSON_TYPE = 'application/json';
const SSE_TYPE = 'text/event-stream';

/** Transport versions of asap-wire.md §11 (`ASAP-Version`; not the envelopes' `asap_version`). */
export const SUPPORTED_TRANSPORT_VERSIONS: readonly string[] = Object.freeze(['2.1', '2.2']);
/** The version assumed when a request names none, and answered when it names none we speak. */
export const DEFAULT_TRANSPORT_VERSION = '2.2';

/**
 * §11 negotiation: the first supported entry of a comma-separated `ASAP-Version` (absent or
 * blank: the default); `requested` (the value as sent) when none is supported.
 */
export function negotiateVersion(
  header: string | string[] | undefined,
): { ok: true; version: string } | { ok: false; requested: string } {
  const value = Array.isArray(header) ? header.join(', ') : header;
  if (value === undefined || value.trim() === '') return { ok: true, version: DEFAULT_TRANSPORT_VERSION };
  for (const part of value.split(',')) {
    const v = part.trim();
    if (SUPPORTED_TRANSPORT_VERSIONS.includes(v)) return { ok: true, version: v };
  }
  return { ok: false, requested: value };
}

/** True when the Accept header lists `text/event-stream` (without `q=0`). */
export function acceptsEventStream(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  return accept.split(',').some((range) => {
    const [type, ...params] = range.split(';');
    if (type!.trim().toLowerCase() !== SSE_TYPE) return false;
    return !params.some((p) => /^\s*q\s*=\s*0(\.0*)?\s*$/i.test(p));
  });
}

const RESULT_PREFIX = '{"jsonrpc":"2.0","result":{"envelope":';
const ERROR_PREFIX = '{"jsonrpc":"2.0","error":';
const idText = (id: JsonRpcId | null): string => (typeof id === 'number' ? String(id) : JSON.stringify(id));

/**
 * The envelope JSON of an encoded `asap.send` answer (`{"jsonrpc":"2.0","result":{"envelope":E},"id":ID}`,
 * the form the dispatcher writes chunks and final answers in), cut out without parsing it again;
 * undefined for anything else (an error, a null envelope).
 */
function envelopeText(frame: string, suffix: string): string | undefined {
  if (frame.startsWith(RESULT_PREFIX) && frame.endsWith(suffix)) {
    const e = frame.slice(RESULT_PREFIX.length, frame.length - suffix.length);
    return e === 'null' ? undefined : e;
  }
  return undefined;
}

/** The error object of an encoded error answer, or undefined when `frame` is not one. */
function errorObject(frame: string): JsonRpcErrorObject | undefined {
  if (!frame.startsWith(ERROR_PREFIX)) return undefined;
  return (JSON.parse(frame) as { error: JsonRpcErrorObject }).error;
}

/** True when an envelope (as JSON text) is a TaskStream, however its payload_type is spelled. */
function isStreamEnvelope(text: string): boolean {
  const type = (JSON.parse(text) as { payload_type?: unknown }).payload_type;
  return typeof type === 'string' && normalizePayloadType(type) === 'taskstream';
}

const noWrite = (): void => {};
const noPush = (): Promise<void> => Promise.resolve();
/** HTTP has no channel back to the caller: writes and pushes go nowhere. */
const ANONYMOUS: Session = { transport: 'http', interactive: false, write: noWrite, push: noPush };
const OPEN = { ok: true, principal: undefined } as const;
/** The liveness probe's answer: the process serves. */
const LIVE = { status: 200, body: { status: 'ok' } } as const;

function sendJson(
  res: ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function isJsonContentType(header: string | undefined): boolean {
  if (header === undefined) return false;
  const type = header.split(';', 1)[0]!.trim().toLowerCase();
  return type === JSON_TYPE || (type.startsWith('application/') && type.endsWith('+json'));
}

/** The HTTP binding of asap-wire.md §4: POST /asap, the manifest and health. */
export class HttpBinding {
  /** `POST <rpcPath>/stream`: one request answered as Server-Sent Events (§11). */
  readonly streamPath: string;

  constructor(private readonly host: HttpBindingDeps) {
    this.streamPath = `${host.rpcPath.replace(/\/$/, '')}/stream`;
  }

  /**
   * The Origin check of asap-wire.md §10 for a request to one of our routes
   * (static files included): true lets it through, with CORS headers set for an
   * allowed origin; false when it was answered here, with 403 for a foreign
   * origin or 204 for an allowed origin's preflight. `Vary: Origin` goes on
   * every answer to a request with Origin, since the answer depends on it.
   * `rpc`: the request is for the JSON-RPC route, so a refusal is a JSON-RPC error.
   */
  admit(req: IncomingMessage, res: ServerResponse, rpc: boolean): boolean {
    const verdict = this.host.origins.check(req);
    if (verdict.kind === 'none') return true;
    res.setHeader('vary', 'Origin');
    if (verdict.kind === 'refused') {
      this.host.logger.warn({ origin: verdict.origin, url: req.url }, 'origin not allowed');
      req.resume();
      const body = rpc
        ? encodeError(null, ASAPError.invalidRequest('Origin not allowed'))
        : JSON.stringify({ error: 'Origin not allowed' });
      sendJson(res, 403, body);
      return false;
    }
    res.setHeader('access-control-allow-origin', verdict.origin);
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-methods': CORS_ALLOW_METHODS,
        'access-control-allow-headers': CORS_ALLOW_HEADERS,
        'access-control-max-age': String(CORS_MAX_AGE_SECONDS),
      });
      res.end();
      return false;
    }
    res.setHeader('access-control-expose-headers', CORS_EXPOSE_HEADERS);
    return true;
  }

  /** Serves the request when it is one of ours; false lets the caller route it elsewhere. */
  handle(req: IncomingMessage, res: ServerResponse): boolean {
    const path = (req.url ?? '/').split('?', 1)[0];
    const h = this.host;
    const stream = path === this.streamPath;
    const rpc = stream || path === h.rpcPath;
    const metrics = h.metricsPath !== undefined && path === h.metricsPath;
    const probe = path === h.livenessPath || path === h.readinessPath;
    const ours = rpc || metrics || probe || path === h.manifestPath || path === h.healthPath;
    // §11: every answer of the JSON-RPC routes says which transport version it speaks.
    const version = rpc ? negotiateVersion(req.headers['asap-version']) : undefined;
    if (version !== undefined)
      res.setHeader('asap-version', version.ok ? version.version : DEFAULT_TRANSPORT_VERSION);
    if (ours && !this.admit(req, res, rpc)) return true;
    if (rpc) {
      if (req.method !== 'POST') {
        sendJson(res, 405, encodeError(null, ASAPError.invalidRequest('Use POST')), { allow: 'POST' });
      } else if (!version!.ok) {
        // No version we speak: refused before anything else runs (as the reference's middleware does).
        req.resume();
        const err = ASAPError.invalidState(`Unsupported ASAP-Version: ${version!.requested}`, {
          requested: version!.requested,
          supported: [...SUPPORTED_TRANSPORT_VERSIONS],
        });
        sendJson(res, 200, encodeError(null, err));
      } else {
        void this.rpc(req, res, stream);
      }
      return true;
    }
    if (metrics) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        sendJson(res, 405, JSON.stringify({ error: 'Method not allowed' }), { allow: 'GET, HEAD' });
      } else {
        void this.metrics(res);
      }
      return true;
    }
    if (probe || path === h.manifestPath || path === h.healthPath) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        sendJson(res, 405, JSON.stringify({ error: 'Method not allowed' }), { allow: 'GET, HEAD' });
      } else if (path === h.manifestPath) {
        if (h.manifestVary !== undefined) {
          const vary = res.getHeader('vary');
          res.setHeader('vary', vary === undefined ? h.manifestVary : `${String(vary)}, ${h.manifestVary}`);
        }
        sendJson(res, 200, JSON.stringify(h.manifestFor(req)), { 'cache-control': 'public, max-age=60' });
      } else {
        const { status, body } =
          path === h.healthPath ? h.health() : path === h.readinessPath ? h.readiness() : LIVE;
        sendJson(res, status, JSON.stringify(body), { 'cache-control': 'no-store' });
      }
      return true;
    }
    return false;
  }

  /** `GET <metricsPath>`: the Prometheus text format. */
  private async metrics(res: ServerResponse): Promise<void> {
    try {
      const { contentType, body } = await this.host.metrics!();
      res.writeHead(200, {
        'content-type': contentType,
        'content-length': Buffer.byteLength(body),
        'cache-control': 'no-store',
      });
      res.end(body);
    } catch (err) {
      this.host.logger.error(
        err instanceof Error ? { err: err.message, stack: err.stack } : { err: String(err) },
        'metrics failed',
      );
      this.host.failed(err, undefined);
      if (!res.headersSent) sendJson(res, 500, JSON.stringify({ error: 'Metrics unavailable' }));
    }
  }

  private async rpc(req: IncomingMessage, res: ServerResponse, streamRoute: boolean): Promise<void> {
    const h = this.host;
    const done = h.drain.begin();
    try {
      if (h.drain.draining) {
        const err = ASAPError.resourceExhausted('Server shutting down', {
          retry_after_ms: h.drain.timeoutMs,
        });
        req.resume();
        sendJson(res, 503, encodeError(null, err), {
          'retry-after': String(Math.ceil(h.drain.timeoutMs / 1000)),
        });
        return;
      }
      const auth =
        h.authenticate === undefined
          ? OPEN
          : await h.authenticate(bearerFromHeader(req.headers.authorization), {
              transport: 'http',
              headers: req.headers,
              remoteAddress: req.socket.remoteAddress,
            });
      if (!auth.ok) {
        h.instrumentation?.rejected?.('auth', ErrorCode.Unauthorized);
        req.resume();
        sendJson(res, 401, encodeError(null, ASAPError.unauthorized(auth.reason)), {
          'www-authenticate': 'Bearer',
        });
        return;
      }
      if (!isJsonContentType(req.headers['content-type'])) {
        req.resume();
        sendJson(res, 415, encodeError(null, ASAPError.invalidRequest(`Content-Type must be ${JSON_TYPE}`)));
        return;
      }
      const body = await this.readBody(req, res);
      if (body === undefined) return;
      const frame = decodeFrame(body);
      if (frame.kind === 'heartbeat') {
        sendJson(
          res,
          200,
          encodeError(null, ASAPError.invalidRequest('Heartbeat frames belong to WebSocket')),
        );
        return;
      }
      if (streamRoute || acceptsEventStream(req.headers.accept)) {
        if (frame.kind === 'request' && frame.method === METHOD_SEND) {
          await this.stream(frame, req, res, streamRoute, auth.principal);
          return;
        }
        // Input that is no JSON-RPC message is answered by the dispatcher (-32700/-32600), as on /asap.
        if (streamRoute && frame.kind !== 'invalid') {
          this.host.instrumentation?.rejected?.('validation', ErrorCode.InvalidRequest);
          sendJson(
            res,
            200,
            encodeError(
              null,
              ASAPError.invalidRequest(`${this.streamPath} takes one ${METHOD_SEND} request`),
            ),
          );
          return;
        }
      }
      // A lone request refused for a missing scope is answered 403, as the reference's middleware does.
      let forbidden: string | undefined;
      const session: Session =
        auth.principal === undefined
          ? ANONYMOUS
          : {
              transport: 'http',
              interactive: false,
              principal: auth.principal,
              callerId: principalId(auth.principal),
              agents: boundAgents(auth.principal),
              write: noWrite,
              push: noPush,
              onInsufficientScope: (scope) => {
                forbidden ??= scope;
              },
            };
      const answer = await h.dispatcher.handle(frame, session);
      if (answer === undefined) {
        res.writeHead(204);
        res.end();
      } else if (forbidden !== undefined && frame.kind !== 'batch') {
        sendJson(res, 403, answer, {
          'www-authenticate': `Bearer error="insufficient_scope", scope="${forbidden}"`,
        });
      } else {
        sendJson(res, 200, answer);
      }
    } catch (err) {
      const e = engineError(h.logger, err, { route: h.rpcPath });
      // A failure the caller was not meant to see (an ASAPError a store chose is an answer, not one).
      if (e !== err) h.failed(err, (e.data as { error_id?: string }).error_id);
      if (!res.headersSent) sendJson(res, 500, encodeError(null, e));
      else if (!res.writableEnded) res.end(`event: error\ndata: ${JSON.stringify(e.toWire())}\n\n`);
    } finally {
      done();
    }
  }

  /**
   * §11: runs one `asap.send` request through the dispatcher with an interactive session whose
   * chunks become SSE events (`data: <envelope JSON>`), honouring the socket's backpressure; the
   * final answer is the last event, or `event: error` once the stream started. Nothing is sent
   * until the first chunk or the answer, so an error before that is a plain JSON-RPC answer. On
   * `POST /asap` (Accept: text/event-stream) only a streaming handler is answered as a stream.
   * A caller that goes away sets `closed`, which stops the stream at its next chunk (the
   * handler's signal aborts) and releases a write waiting for 'drain'.
   */
  private async stream(
    frame: RequestFrame,
    req: IncomingMessage,
    res: ServerResponse,
    streamRoute: boolean,
    principal: unknown,
  ): Promise<void> {
    const suffix = `},"id":${idText(frame.id)}}`;
    let started = false;
    let waiting: Promise<void> | undefined;
    let wake: (() => void) | undefined;
    let forbidden: string | undefined;
    const start = () => {
      started = true;
      res.writeHead(200, {
        'content-type': SSE_TYPE,
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
      });
    };
    const session: Session & { closed: boolean } = {
      transport: 'http',
      interactive: true,
      writeAcks: false,
      closed: false,
      ...(principal === undefined
        ? {}
        : { principal, callerId: principalId(principal), agents: boundAgents(principal) }),
      write: (text) => {
        if (session.closed) return undefined;
        const env = envelopeText(text, suffix);
        if (env === undefined) return undefined;
        if (!started) start();
        if (res.write(`data: ${env}\n\n`) || waiting !== undefined) return waiting;
        waiting = new Promise<void>((resolve) => {
          wake = () => {
            waiting = undefined;
            wake = undefined;
            res.off('drain', onDrain);
            resolve();
          };
          const onDrain = () => wake?.();
          res.on('drain', onDrain);
        });
        return waiting;
      },
      push: noPush,
      onInsufficientScope: (scope) => {
        forbidden ??= scope;
      },
    };
    const onClose = () => {
      if (res.writableFinished) return;
      session.closed = true;
      wake?.();
    };
    res.on('close', onClose);
    req.on('close', onClose);
    try {
      const answer = await this.host.dispatcher.handle(frame, session);
      if (session.closed || answer === undefined) return;
      const env = envelopeText(answer, suffix);
      if (started) {
        const err = env === undefined ? errorObject(answer) : undefined;
        res.end(
          err === undefined
            ? env === undefined
              ? ''
              : `data: ${env}\n\n`
            : `event: error\ndata: ${JSON.stringify(err)}\n\n`,
        );
      } else if (env !== undefined && (streamRoute || isStreamEnvelope(env))) {
        start();
        res.end(`data: ${env}\n\n`);
      } else if (forbidden !== undefined) {
        sendJson(res, 403, answer, {
          'www-authenticate': `Bearer error="insufficient_scope", scope="${forbidden}"`,
        });
      } else {
        sendJson(res, 200, answer);
      }
    } finally {
      res.off('close', onClose);
      req.off('close', onClose);
    }
  }

  /** Reads the body up to the limit; answers 413 and resolves undefined past it. */
  private readBody(req: IncomingMessage, res: ServerResponse): Promise<string | undefined> {
    const limit = this.host.maxMessageBytes;
    const tooLarge = () => {
      sendJson(res, 413, encodeError(null, ASAPError.invalidRequest(`Request body exceeds ${limit} bytes`)), {
        connection: 'close',
      });
    };
    const declared = Number(req.headers['content-length']);
    if (declared > limit) {
      tooLarge();
      req.destroy();
      return Promise.resolve(undefined);
    }
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          req.removeAllListeners('data');
          tooLarge();
          req.destroy();
          resolve(undefined);
          return;
        }
        chunks.push(chunk);
      });
      req.on('end', () =>
        resolve(chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8')),
      );
      req.on('error', () => resolve(undefined));
    });
  }
}
