import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher, Session } from '../core/dispatcher.js';
import { boundAgents, principalId } from '../core/identity.js';
import type { Instrumentation } from '../core/instrumentation.js';
import type { Logger } from '../core/logger.js';
import { engineError } from '../core/opaque-error.js';
import { ASAPError, ErrorCode } from '../protocol/errors.js';
import { decodeFrame, encodeError } from '../protocol/jsonrpc.js';
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
  /** Token check; undefined when the server is open. */
  readonly authenticate: AuthCheck | undefined;
  manifestFor(req: IncomingMessage): object;
  health(): { status: number; body: object };
  /** Which browser origins may call us (asap-wire.md §10). */
  readonly origins: OriginPolicy;
  readonly instrumentation: Instrumentation | undefined;
}

const JSON_TYPE = 'application/json';

const noWrite = (): void => {};
const noPush = (): Promise<void> => Promise.resolve();
/** HTTP has no channel back to the caller: writes and pushes go nowhere. */
const ANONYMOUS: Session = { transport: 'http', interactive: false, write: noWrite, push: noPush };
const OPEN = { ok: true, principal: undefined } as const;

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
  constructor(private readonly host: HttpBindingDeps) {}

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
    const ours = path === h.rpcPath || path === h.manifestPath || path === h.healthPath;
    if (ours && !this.admit(req, res, path === h.rpcPath)) return true;
    if (path === h.rpcPath) {
      if (req.method !== 'POST') {
        sendJson(res, 405, encodeError(null, ASAPError.invalidRequest('Use POST')), { allow: 'POST' });
      } else {
        void this.rpc(req, res);
      }
      return true;
    }
    if (path === h.manifestPath || path === h.healthPath) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        sendJson(res, 405, JSON.stringify({ error: 'Method not allowed' }), { allow: 'GET, HEAD' });
      } else if (path === h.manifestPath) {
        sendJson(res, 200, JSON.stringify(h.manifestFor(req)), { 'cache-control': 'public, max-age=60' });
      } else {
        const { status, body } = h.health();
        sendJson(res, status, JSON.stringify(body), { 'cache-control': 'no-store' });
      }
      return true;
    }
    return false;
  }

  private async rpc(req: IncomingMessage, res: ServerResponse): Promise<void> {
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
      if (!res.headersSent) sendJson(res, 500, encodeError(null, e));
    } finally {
      done();
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
