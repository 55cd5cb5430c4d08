import { timingSafeEqual } from 'node:crypto';
import { BEARER_PROTOCOL_PREFIX } from '../protocol/jsonrpc.js';

/**
 * Decides who a bearer token belongs to: returns a principal (anything but
 * null/undefined) to let the caller in, or null to refuse. May be async.
 */
export type TokenVerifier = (token: string) => unknown | Promise<unknown>;

/** Everyone who holds the static token is one principal. */
const STATIC_PRINCIPAL = Object.freeze({ id: 'static-token' });

/** A verifier that accepts exactly one static token, compared in constant time. */
export function staticToken(expected: string): TokenVerifier {
  const want = Buffer.from(expected);
  return (token) => {
    const got = Buffer.from(token);
    return got.length === want.length && timingSafeEqual(got, want) ? STATIC_PRINCIPAL : null;
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
