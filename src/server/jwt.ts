/**
 * OAuth2/OIDC bearer JWTs on the {@link Authenticator} seam: signature (keys from a JWKS URL,
 * cached and refetched on key rotation, or static keys), issuer, audience, algorithm allow-list,
 * `exp`/`nbf` with a clock tolerance, `sub`; the principal it yields carries the agent URNs the
 * caller may speak for (sender binding, asap-wire.md §10), its scopes (checked per envelope by
 * the dispatcher) and its expiry (a WebSocket is closed with 4401 `Token expired` then).
 */
import type { KeyObject } from 'node:crypto';
import {
  type CryptoKey,
  createLocalJWKSet,
  decodeProtectedHeader,
  errors,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
  jwtVerify,
  type ProtectedHeaderParameters,
} from 'jose';
import { type Clock, systemClock } from '../core/clock.js';
import type { Principal } from '../core/identity.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { ASAP_SCOPES, parseScopes } from '../core/scopes.js';
import { URN_PATTERN } from '../protocol/payloads.js';
import type { Authenticator } from './auth.js';

export interface JwtAuthenticatorOptions {
  /**
   * Where the identity provider publishes its signing keys (the `jwks_uri` of its OIDC
   * discovery document). Fetched on first use, kept for `jwksMaxAgeMs`, refetched early when a
   * token names a key id (`kid`) not in the set (key rotation), at most once per
   * `jwksCooldownMs`. While the URL is unreachable the keys already fetched keep working.
   */
  jwksUrl?: string | URL;
  /** Static public keys instead of a URL: a JWKS object, a list of JWKs, or one public key. */
  keys?: JSONWebKeySet | readonly JWK[] | JWK | KeyObject | CryptoKey;
  /**
   * A shared secret for HS256/384/512, instead of public keys (at least 32 bytes). Only with a
   * secret are HS* algorithms allowed: a public key is never used as an HMAC secret.
   */
  secret?: string | Uint8Array;
  /** The expected `iss`; a trailing slash on either side does not matter. */
  issuer: string;
  /** The expected audience: the token's `aud` (string or array) must name at least one of these. */
  audience: string | readonly string[];
  /** Accepted `alg` values (default EdDSA, ES256, RS256; HS256 with `secret`). `none` never is. */
  algorithms?: readonly string[];
  /** Slack on `exp` and `nbf`, in seconds (default 5). The principal expires at `exp` plus this. */
  clockToleranceSec?: number;
  /**
   * Which agent URNs the caller may speak for. A claim name (default `asap_agents`, a string or
   * an array of URNs), read when `sub` is not itself an `urn:asap:agent:…` URN; or a function of
   * the claims (return undefined to leave the caller unbound: any sender is taken). A token that
   * names no URN is refused, unless `allowUnbound`.
   */
  agentClaim?: string | ((claims: JWTPayload) => readonly string[] | undefined);
  /** Let in tokens that name no agent URN, unbound (any `sender`; default false). */
  allowUnbound?: boolean;
  /** Scopes every request needs, whatever its payload type (refused per request, like a type's scope). */
  requiredScopes?: readonly string[];
  /** Time source of `exp`/`nbf` and of the JWKS cache (tests pass ManualTimers). */
  clock?: Clock;
  /** The fetch used for the JWKS (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Give up on a JWKS fetch after this long (default 5 s). */
  fetchTimeoutMs?: number;
  /** Least time between two JWKS fetches once keys are held (default 30 s). */
  jwksCooldownMs?: number;
  /** Refetch the JWKS when the keys held are older than this (default 10 min). */
  jwksMaxAgeMs?: number;
  /** Where JWKS fetches and their failures are logged (refusals are logged by the server). */
  logger?: Logger;
}

/** What a valid token yields: `ctx.principal` in handlers. */
export interface JwtPrincipal extends Principal {
  id: string;
  sub: string;
  /** Undefined only with `allowUnbound` (or an `agentClaim` function that says so). */
  agents: readonly string[] | undefined;
  scopes: readonly string[];
  /** `exp` plus the clock tolerance, in ms since the epoch. */
  expiresAt: number;
  /** Every claim of the token. */
  claims: JWTPayload;
}

/** The authenticator, plus what it checks (for the manifest's `auth` block and for logs). */
export interface JwtAuthenticator extends Authenticator {
  readonly issuer: string;
  readonly audience: readonly string[];
  readonly jwksUrl: string | undefined;
  readonly algorithms: readonly string[];
  readonly requiredScopes: readonly string[];
  /** Checks a token: its principal, or a rejection whose message says why. */
  verify(token: string): Promise<JwtPrincipal>;
  /**
   * The manifest's `auth` block (the reference's AuthScheme): schemes `bearer` and `oauth2`,
   * with the issuer, the JWKS URL, the scopes, and the token endpoint when given.
   */
  manifestAuth(extra?: { tokenUrl?: string; authorizationUrl?: string }): {
    schemes: string[];
    oauth2: Record<string, unknown>;
  };
}

/** A token refused, with the reason (logged by the server; the peer only sees `Invalid token`). */
export class JwtRefusedError extends Error {
  override readonly name = 'JwtRefusedError';
}

const DEFAULT_ALGORITHMS = ['EdDSA', 'ES256', 'RS256'];
const HMAC = new Set(['HS256', 'HS384', 'HS512']);
const ASYMMETRIC = new Set([
  'EdDSA',
  'Ed25519',
  'ES256',
  'ES384',
  'ES512',
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
]);
const DEFAULT_AGENT_CLAIM = 'asap_agents';
/** Longer tokens are refused unread (real access tokens are a few KiB). */
const MAX_TOKEN_CHARS = 16 * 1024;
/** Larger JWKS documents are refused. */
const MAX_JWKS_CHARS = 1024 * 1024;
/** With no keys held, a failed fetch is retried at most this often (keeps a dead IdP from being hammered). */
const RETRY_WITHOUT_KEYS_MS = 1000;

type Resolver = KeyObject | CryptoKey | JWK | Uint8Array | JWTVerifyGetKey;

/**
 * A JWT authenticator for `ASAPServer({ authenticate })`. Throws at once on a configuration that
 * could accept forged tokens (no key source or two, `none`, HS* without a secret, a short secret).
 */
export function jwtAuthenticator(opts: JwtAuthenticatorOptions): JwtAuthenticator {
  const sources = [opts.jwksUrl, opts.keys, opts.secret].filter((s) => s !== undefined).length;
  if (sources !== 1) throw new TypeError('jwtAuthenticator: give exactly one of jwksUrl, keys, secret');
  if (typeof opts.issuer !== 'string' || opts.issuer === '')
    throw new TypeError('jwtAuthenticator: issuer is required');
  const audience = typeof opts.audience === 'string' ? [opts.audience] : [...(opts.audience ?? [])];
  if (audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === ''))
    throw new TypeError('jwtAuthenticator: audience is required');
  const symmetric = opts.secret !== undefined;
  const algorithms = [...(opts.algorithms ?? (symmetric ? ['HS256'] : DEFAULT_ALGORITHMS))];
  checkAlgorithms(algorithms, symmetric);
  const tolerance = opts.clockToleranceSec ?? 5;
  if (!(tolerance >= 0)) throw new TypeError('jwtAuthenticator: clockToleranceSec must be ≥ 0');
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? silentLogger;
  const issuer = trimSlashes(opts.issuer);
  const agentClaim = opts.agentClaim ?? DEFAULT_AGENT_CLAIM;
  const requiredScopes = [...(opts.requiredScopes ?? [])];
  const allowed = new Set(algorithms);
  const jwksUrl = opts.jwksUrl === undefined ? undefined : String(opts.jwksUrl);
  const remote =
    jwksUrl === undefined
      ? undefined
      : new RemoteKeys(jwksUrl, {
          fetch: opts.fetch ?? globalThis.fetch,
          clock,
          logger,
          timeoutMs: opts.fetchTimeoutMs ?? 5000,
          cooldownMs: opts.jwksCooldownMs ?? 30_000,
          maxAgeMs: opts.jwksMaxAgeMs ?? 600_000,
        });
  const local = remote === undefined ? staticResolver(opts) : undefined;

  const verify = async (token: string): Promise<JwtPrincipal> => {
    if (token.length > MAX_TOKEN_CHARS) throw new JwtRefusedError(`token longer than ${MAX_TOKEN_CHARS}`);
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch (err) {
      throw new JwtRefusedError(`malformed token: ${(err as Error).message}`);
    }
    // Before any key is looked at: `none`, and HS* against a public key, end here.
    if (typeof header.alg !== 'string' || !allowed.has(header.alg))
      throw new JwtRefusedError(`algorithm ${JSON.stringify(header.alg)} not allowed`);
    const options: JWTVerifyOptions = {
      algorithms,
      audience,
      clockTolerance: tolerance,
      currentDate: new Date(clock.now()),
      requiredClaims: ['iss', 'sub', 'exp'],
    };
    const checkRemote = async (keys: RemoteKeys): Promise<JWTPayload> => {
      try {
        return await check(token, await keys.keys(), options);
      } catch (err) {
        if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
        // A key id we do not hold: the provider may have rotated its keys.
        return check(token, await keys.rotated(header.kid), options);
      }
    };
    let claims: JWTPayload;
    try {
      claims = remote === undefined ? await check(token, local!, options) : await checkRemote(remote);
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey)
        throw new JwtRefusedError(`no key with kid ${JSON.stringify(header.kid)} for ${header.alg}`);
      throw err;
    }
    if (typeof claims.iss !== 'string' || trimSlashes(claims.iss) !== issuer)
      throw new JwtRefusedError(`unexpected issuer ${JSON.stringify(claims.iss)}`);
    const sub = claims.sub;
    if (typeof sub !== 'string' || sub === '') throw new JwtRefusedError('no subject (sub)');
    const agents = agentsOf(claims, sub, agentClaim);
    if (agents !== undefined && agents.length === 0 && opts.allowUnbound !== true) {
      throw new JwtRefusedError(
        typeof agentClaim === 'string'
          ? `token names no agent URN: sub is not urn:asap:agent:… and claim "${agentClaim}" names none`
          : 'token names no agent URN (agentClaim returned none)',
      );
    }
    const principal: JwtPrincipal = {
      id: sub,
      sub,
      agents: agents?.length === 0 ? undefined : agents,
      scopes: parseScopes(claims.scope, claims.scp),
      expiresAt: ((claims.exp as number) + tolerance) * 1000,
      claims,
    };
    if (requiredScopes.length > 0) principal.requiredScopes = requiredScopes;
    return principal;
  };

  const authenticate: Authenticator = (token) => (token === undefined ? null : verify(token));
  return Object.assign(authenticate, {
    issuer: opts.issuer,
    audience,
    jwksUrl,
    algorithms,
    requiredScopes,
    verify,
    manifestAuth(extra: { tokenUrl?: string; authorizationUrl?: string } = {}) {
      const oauth2: Record<string, unknown> = { issuer: opts.issuer, scopes: [...ASAP_SCOPES] };
      if (jwksUrl !== undefined) oauth2.jwks_uri = jwksUrl;
      if (extra.tokenUrl !== undefined) oauth2.token_url = extra.tokenUrl;
      if (extra.authorizationUrl !== undefined) oauth2.authorization_url = extra.authorizationUrl;
      return { schemes: ['bearer', 'oauth2'], oauth2 };
    },
  });
}

/** Verifies the signature and the standard claims; jose's reasons become refusal reasons. */
async function check(token: string, key: Resolver, options: JWTVerifyOptions): Promise<JWTPayload> {
  try {
    return (await jwtVerify(token, key as JWTVerifyGetKey, options)).payload;
  } catch (err) {
    if (err instanceof errors.JWKSMultipleMatchingKeys) return tryEach(token, err, options);
    throw refusal(err);
  }
}

/** A token without `kid` that several keys of the set could have signed: the first that verifies wins. */
async function tryEach(
  token: string,
  candidates: errors.JWKSMultipleMatchingKeys,
  options: JWTVerifyOptions,
): Promise<JWTPayload> {
  let last: unknown;
  for await (const key of candidates) {
    try {
      return (await jwtVerify(token, key, options)).payload;
    } catch (err) {
      last = err;
    }
  }
  throw refusal(last);
}

function refusal(err: unknown): Error {
  if (err instanceof JwtRefusedError || err instanceof errors.JWKSNoMatchingKey) return err as Error;
  return new JwtRefusedError((err as Error | undefined)?.message ?? 'no key verifies the token');
}

function checkAlgorithms(algorithms: readonly string[], symmetric: boolean): void {
  if (algorithms.length === 0) throw new TypeError('jwtAuthenticator: algorithms must not be empty');
  for (const alg of algorithms) {
    if (HMAC.has(alg)) {
      if (!symmetric) throw new TypeError(`jwtAuthenticator: ${alg} needs an explicit secret`);
    } else if (!ASYMMETRIC.has(alg)) {
      throw new TypeError(`jwtAuthenticator: algorithm ${JSON.stringify(alg)} is not supported`);
    } else if (symmetric) {
      throw new TypeError(`jwtAuthenticator: ${alg} needs public keys, not a secret`);
    }
  }
}

/** The key (or key set) of `keys` or `secret`. */
function staticResolver(opts: JwtAuthenticatorOptions): Resolver {
  if (opts.secret !== undefined) {
    const secret = typeof opts.secret === 'string' ? new TextEncoder().encode(opts.secret) : opts.secret;
    if (secret.byteLength < 32) throw new TypeError('jwtAuthenticator: secret must be at least 32 bytes');
    return secret;
  }
  const keys = opts.keys!;
  if (Array.isArray(keys)) return keySet({ keys: [...keys] });
  if ('keys' in keys && Array.isArray(keys.keys)) return keySet(keys as JSONWebKeySet);
  if ('kty' in keys) return keySet({ keys: [keys as JWK] });
  if ((keys as KeyObject | CryptoKey).type !== 'public')
    throw new TypeError('jwtAuthenticator: keys must be public keys (use secret for HS*)');
  return keys as KeyObject | CryptoKey;
}

function keySet(jwks: JSONWebKeySet): JWTVerifyGetKey {
  if (jwks.keys.some((k) => k.kty === 'oct' || k.d !== undefined))
    throw new TypeError('jwtAuthenticator: keys must be public keys (use secret for HS*)');
  return createLocalJWKSet(jwks);
}

/** The URNs a token's caller may speak for; undefined: unbound. */
function agentsOf(
  claims: JWTPayload,
  sub: string,
  agentClaim: NonNullable<JwtAuthenticatorOptions['agentClaim']>,
): string[] | undefined {
  if (typeof agentClaim === 'function') {
    const named = agentClaim(claims);
    return named === undefined ? undefined : named.filter(isUrn);
  }
  if (isUrn(sub)) return [sub];
  const value = claims[agentClaim];
  const named = typeof value === 'string' ? [value] : Array.isArray(value) ? value : [];
  return named.filter(isUrn);
}

function isUrn(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 256 && URN_PATTERN.test(value);
}

function trimSlashes(s: string): string {
  let end = s.length;
  while (end > 0 && s.charCodeAt(end - 1) === 47) end--;
  return s.slice(0, end);
}

interface RemoteKeysOptions {
  fetch: typeof globalThis.fetch;
  clock: Clock;
  logger: Logger;
  timeoutMs: number;
  cooldownMs: number;
  maxAgeMs: number;
}

/**
 * The keys of a JWKS URL. One fetch at a time (concurrent callers share it); refreshed when
 * older than `maxAgeMs` or on an unknown `kid`, never more than once per `cooldownMs`; a failed
 * refresh keeps the keys held, so an identity provider outage does not lock callers out.
 */
class RemoteKeys {
  private set: JWTVerifyGetKey | undefined;
  private fetchedAt = Number.NEGATIVE_INFINITY;
  private attemptedAt = Number.NEGATIVE_INFINITY;
  private lastError = '';
  private inflight: Promise<JWTVerifyGetKey> | undefined;

  constructor(
    private readonly url: string,
    private readonly o: RemoteKeysOptions,
  ) {}

  /** The keys to verify with now: fetched when none are held, refreshed when stale. */
  async keys(): Promise<JWTVerifyGetKey> {
    if (this.inflight !== undefined) return this.settle(this.inflight);
    const now = this.o.clock.now();
    if (this.set === undefined) {
      if (now - this.attemptedAt < Math.min(RETRY_WITHOUT_KEYS_MS, this.o.cooldownMs))
        throw new JwtRefusedError(`no signing keys: JWKS fetch from ${this.url} failed (${this.lastError})`);
      return this.refresh('first use');
    }
    if (now - this.fetchedAt >= this.o.maxAgeMs && now - this.attemptedAt >= this.o.cooldownMs)
      return this.settle(this.refresh('keys expired'));
    return this.set;
  }

  /** Keys refetched for a token whose `kid` is not held; refused when the cooldown forbids a refetch. */
  async rotated(kid: string | undefined): Promise<JWTVerifyGetKey> {
    if (this.inflight !== undefined) return this.settle(this.inflight);
    if (this.o.clock.now() - this.attemptedAt < this.o.cooldownMs)
      throw new JwtRefusedError(`no key with kid ${JSON.stringify(kid)} (JWKS refetch rate-limited)`);
    return this.settle(this.refresh(`unknown kid ${JSON.stringify(kid)}`));
  }

  /** A refresh's keys; if it failed, the keys held, if any. */
  private settle(refresh: Promise<JWTVerifyGetKey>): Promise<JWTVerifyGetKey> {
    return refresh.catch((err: unknown) => {
      if (this.set === undefined) throw err;
      return this.set;
    });
  }

  private refresh(why: string): Promise<JWTVerifyGetKey> {
    this.inflight ??= this.load(why).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async load(why: string): Promise<JWTVerifyGetKey> {
    this.attemptedAt = this.o.clock.now();
    try {
      const fetch = this.o.fetch; // called unbound: some runtimes refuse a fetch with another `this`
      const res = await fetch(this.url, {
        headers: { accept: 'application/json' },
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const text = await res.text();
      if (text.length > MAX_JWKS_CHARS) throw new Error(`JWKS larger than ${MAX_JWKS_CHARS} characters`);
      const jwks = JSON.parse(text) as JSONWebKeySet;
      const set = createLocalJWKSet(jwks);
      this.set = set;
      this.fetchedAt = this.o.clock.now();
      this.o.logger.info({ jwks_url: this.url, keys: jwks.keys.length, why }, 'JWKS fetched');
      return set;
    } catch (err) {
      this.lastError = (err as Error).message;
      this.o.logger.error(
        { jwks_url: this.url, why, err: this.lastError, cached: this.set !== undefined },
        this.set === undefined
          ? 'JWKS fetch failed; no keys to verify tokens with'
          : 'JWKS fetch failed; keeping the keys held',
      );
      throw new JwtRefusedError(`no signing keys: JWKS fetch from ${this.url} failed (${this.lastError})`);
    }
  }
}
