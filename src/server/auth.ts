import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { Principal } from '../core/identity.js';
import type { Logger } from '../core/logger.js';
import { BEARER_PROTOCOL_PREFIX } from '../protocol/jsonrpc.js';

/** The request being authenticated, besides its bearer token. */
export interface AuthRequest {
  transport: 'http' | 'websocket';
  headers: IncomingHttpHeaders;
  remoteAddress: string | undefined;
}

/**
 * Decides who a caller is, from its bearer token (undefined when it sent
 * none) and its request: returns a principal to let it in, or null to refuse.
 * The principal is handed to handlers as `ctx.principal`; the engine reads
 * its `id`/`sub` (whose state is whose), `agents` (the URNs it may speak for)
 * and `expiresAt` (ms since the epoch: a WebSocket is closed with 4401
 * `Token expired` then). May be async; a throw refuses.
 */
export type Authenticator = (token: string | undefined, req: AuthRequest) => unknown | Promise<unknown>;

/** @internal */
export type AuthResult = { ok: true; principal: unknown } | { ok: false; reason: string };
/** @internal The server's check: an authenticator's answer as a verdict with a reason. */
export type AuthCheck = (token: string | undefined, req: AuthRequest) => Promise<AuthResult>;

/**
 * @internal The check a server runs, from its options (`authenticate` first, then `verifyToken`, then a
 * static `token`); undefined when none is set and the server is open.
 */
export function authCheck(
  opts: {
    authenticate?: Authenticator;
    verifyToken?: TokenVerifier;
    token?: string;
    tokenAgents?: readonly string[];
  },
  logger: Logger,
): AuthCheck | undefined {
  let authenticate = opts.authenticate;
  if (authenticate === undefined) {
    const principal =
      opts.tokenAgents === undefined ? undefined : { id: 'static-token', agents: opts.tokenAgents };
    const verify =
      opts.verifyToken ?? (opts.token !== undefined ? staticToken(opts.token, principal) : undefined);
    if (verify === undefined) return undefined;
    authenticate = (token) => (token === undefined ? null : verify(token));
  }
  const check = authenticate;
  return async (token, req) => {
    try {
      const principal = await check(token, req);
      if (principal != null) return { ok: true, principal };
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'token check failed');
    }
    return { ok: false, reason: token === undefined ? 'Authentication required' : 'Invalid token' };
  };
}

/**
 * Decides who a bearer token belongs to: returns a principal (anything but
 * null/undefined) to let the caller in, or null to refuse. May be async.
 */
export type TokenVerifier = (token: string) => unknown | Promise<unknown>;

/** Everyone who holds the static token is one principal. */
const STATIC_PRINCIPAL = Object.freeze({ id: 'static-token' });

/**
 * A verifier that accepts exactly one static token, compared in constant time. Everyone who
 * holds it is one principal: `{ id: 'static-token' }`, or the one given, e.g.
 * `{ id: 'billing', agents: ['urn:asap:agent:billing'] }` to bind its holders to those URNs.
 */
export function staticToken(expected: string, principal: Principal = STATIC_PRINCIPAL): TokenVerifier {
  const want = Buffer.from(expected);
  const who = Object.freeze({ ...principal });
  return (token) => {
    const got = Buffer.from(token);
    return got.length === want.length && timingSafeEqual(got, want) ? who : null;
  };
}

/** @internal The token of an `Authorization: Bearer <token>` header, if any. */
export function bearerFromHeader(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** @internal The token carried in a `Sec-WebSocket-Protocol` entry `asap.bearer.<token>`, for browsers. */
export function bearerFromProtocols(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  for (const entry of header.split(',')) {
    const p = entry.trim();
    if (p.startsWith(BEARER_PROTOCOL_PREFIX) && p.length > BEARER_PROTOCOL_PREFIX.length) {
      return p.slice(BEARER_PROTOCOL_PREFIX.length);
    }
  }
  return undefined;
}
