import type { IncomingMessage } from 'node:http';
import { type AddressInfo, isIPv4 } from 'node:net';

/**
 * The Origin policy of asap-wire.md §10.
 *
 * Browsers attach an `Origin` header to WebSocket upgrades and to cross-origin
 * (and non-GET) HTTP requests, and they do so whatever page made the request.
 * Without a check, any web page a user visits could open a WebSocket to an
 * agent on their machine or network (WebSockets are not covered by CORS) and
 * act on the user's behalf. So a request that carries `Origin` is only served
 * when that origin is the server's own or on the configured allow-list.
 * Requests without `Origin` come from non-browser clients, which no web page
 * can drive, and are left alone.
 */

/** `Access-Control-Allow-Methods` of a preflight answer: every method our routes take. */
export const CORS_ALLOW_METHODS = 'POST, GET, HEAD, OPTIONS';
/** `Access-Control-Allow-Headers`: what our client sends (auth, JSON bodies, version negotiation, tracing). */
export const CORS_ALLOW_HEADERS = 'authorization, content-type, asap-version, traceparent';
/** `Access-Control-Expose-Headers`: lets a cross-origin page read the negotiated version (§11). */
export const CORS_EXPOSE_HEADERS = 'asap-version';
/** How long browsers may cache a preflight answer, in seconds. */
export const CORS_MAX_AGE_SECONDS = 600;

/**
 * A gate before URL parsing: `scheme://host[:port]` and nothing else. The WHATWG
 * parser alone would accept paths, credentials and (after a comma-joined
 * repeated header) garbage that still parses, so anything but a bare origin is
 * refused here first.
 */
const ORIGIN_SYNTAX = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s,\\]+$/i;

/**
 * The canonical form of an origin (`scheme://host[:port]`, lower case, default
 * port dropped), so that two spellings of one origin compare equal; undefined
 * when `value` is not a bare origin. Non-special schemes (browser extensions,
 * e.g. `chrome-extension://id`) have an opaque WHATWG origin and are compared
 * in lower case as written.
 */
export function normalizeOrigin(value: string): string | undefined {
  if (!ORIGIN_SYNTAX.test(value)) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  return url.origin === 'null' ? value.toLowerCase() : url.origin;
}

/**
 * True for a host name that always means this machine in a browser: `localhost`
 * and `*.localhost` (browsers never ask DNS for them), 127.0.0.0/8 and `[::1]`.
 * `hostname` is a WHATWG URL hostname (lower case, IPv4 canonical, IPv6 in brackets).
 */
function isLoopbackName(hostname: string): boolean {
  return (
    hostname === 'localhost' ||
    hostname.endsWith('.localhost') ||
    hostname === '[::1]' ||
    (isIPv4(hostname) && hostname.startsWith('127.'))
  );
}

/** True for a loopback socket address: 127.0.0.0/8 (also IPv4-mapped) and `::1`. */
function isLoopbackAddress(address: string): boolean {
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return address === '::1' || (isIPv4(v4) && v4.startsWith('127.'));
}

export type OriginVerdict =
  /** No `Origin` header: not a browser, nothing to decide. */
  | { kind: 'none' }
  /** The origin may be served; `origin` is the header as sent (for `Access-Control-Allow-Origin`). */
  | { kind: 'allowed'; origin: string }
  | { kind: 'refused'; origin: string };

export interface OriginPolicyOptions {
  /**
   * Origins allowed besides the server's own, e.g. `https://app.example`; `*`
   * allows any. Throws a TypeError on an entry that is not a bare origin, so a
   * typo fails at startup instead of silently refusing a browser.
   */
  allow?: readonly string[];
  /**
   * The address the server is bound to (`server.address()`), read on each check
   * because `attach()` may be called before the server listens.
   */
  boundAddress?: () => AddressInfo | string | null | undefined;
}

/** Decides, per request, whether its `Origin` may be served (see the file comment). */
export class OriginPolicy {
  private readonly any: boolean;
  private readonly allowed: ReadonlySet<string>;
  private readonly bound: () => AddressInfo | string | null | undefined;

  constructor(opts: OriginPolicyOptions = {}) {
    const allow = opts.allow ?? [];
    this.any = allow.includes('*');
    const normalized = new Set<string>();
    for (const entry of allow) {
      if (entry === '*') continue;
      // Tolerate a pasted URL's trailing slash ("https://app.example/").
      const origin = normalizeOrigin(entry.trim().replace(/\/$/, ''));
      if (origin === undefined) throw new TypeError(`Not an origin (scheme://host[:port]): ${entry}`);
      normalized.add(origin);
    }
    this.allowed = normalized;
    this.bound = opts.boundAddress ?? (() => undefined);
  }

  /** The verdict for one HTTP request or WebSocket upgrade. */
  check(req: IncomingMessage): OriginVerdict {
    const origin = req.headers.origin;
    if (origin === undefined) return { kind: 'none' };
    if (this.any) return { kind: 'allowed', origin };
    const canonical = normalizeOrigin(origin);
    if (canonical !== undefined && (this.allowed.has(canonical) || canonical === this.ownOrigin(req)))
      return { kind: 'allowed', origin };
    return { kind: 'refused', origin };
  }

  /**
   * The origin the request came to: `http(s)://` + its Host header; https when
   * the socket is TLS. Behind a TLS-terminating proxy this is `http://…` while
   * the browser says `https://…`: put the public origin on the allow-list.
   *
   * DNS rebinding: a page on `http://evil.example:8080` can make its name
   * resolve to 127.0.0.1 and then reach a loopback-only agent as "its own
   * origin" (Origin and Host both `evil.example:8080`). A server bound to
   * loopback is only reachable under loopback names, so there a Host that is
   * not one cannot be its own origin.
   */
  private ownOrigin(req: IncomingMessage): string | undefined {
    const host = req.headers.host;
    if (host === undefined) return undefined;
    const scheme = (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http';
    const own = normalizeOrigin(`${scheme}://${host}`);
    if (own === undefined) return undefined;
    const bound = this.bound();
    if (typeof bound === 'object' && bound !== null && isLoopbackAddress(bound.address)) {
      if (!isLoopbackName(new URL(own).hostname)) return undefined;
    }
    return own;
  }
}
