/**
 * OAuth2/OIDC bearer JWTs (src/server/jwt.ts) with real parts: keys generated here with jose, a
 * real HTTP server on 127.0.0.1 serving the JWKS (it can rotate, fail and go down), and the demo
 * agent reached with fetch and ws. Time that matters runs on a ManualClock / ManualTimers.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { base64url, exportJWK, exportSPKI, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { ManualTimers } from '../../src/core/timers.js';
import { type JwtAuthenticatorOptions, jwtAuthenticator } from '../../src/server/jwt.js';
import { RecordingLogger } from '../core/helpers.js';
import {
  CLIENT_URN,
  cleanup,
  connect,
  DEMO_URN,
  type Json,
  open,
  startDemo,
  task,
  trackHttpServer,
} from './ws-helpers.js';

afterEach(cleanup);

const ISSUER = 'https://idp.example.test/realms/asap';
const AUDIENCE = 'urn:asap:agent:demo';

interface TestKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(kid: string, alg = 'EdDSA'): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk };
}

/** A token with sensible defaults at `nowMs`; a claim set to undefined is left out. */
async function sign(
  key: TestKey,
  claims: JWTPayload = {},
  nowMs = Date.now(),
  header: Record<string, unknown> = {},
): Promise<string> {
  const iat = Math.floor(nowMs / 1000);
  const payload: JWTPayload = {
    iss: ISSUER,
    aud: AUDIENCE,
    sub: CLIENT_URN,
    iat,
    exp: iat + 3600,
    scope: 'asap:read asap:execute',
    ...claims,
  };
  return new SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, ...header })
    .sign(key.privateKey);
}

/** A JWKS endpoint on 127.0.0.1 that counts its fetches and can fail or go away. */
class JwksServer {
  keys: JWK[] = [];
  hits = 0;
  mode: 'ok' | 'error' | 'garbage' | 'huge' = 'ok';
  url = '';
  private readonly server: Server;

  constructor(keys: TestKey[]) {
    this.keys = keys.map((k) => k.jwk);
    this.server = trackHttpServer(
      createServer((_req, res) => {
        this.hits++;
        if (this.mode === 'error') {
          res.writeHead(500).end('down for maintenance');
          return;
        }
        const body =
          this.mode === 'garbage'
            ? '{"keys": '
            : this.mode === 'huge'
              ? JSON.stringify({ keys: [], pad: 'x'.repeat(1024 * 1024) })
              : JSON.stringify({ keys: this.keys });
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      }),
    );
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/jwks.json`;
    return this;
  }

  publish(...keys: TestKey[]): void {
    this.keys = keys.map((k) => k.jwk);
  }

  /** Stops listening and drops every connection: fetches now fail with ECONNREFUSED. */
  down(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function rpc(envelope: unknown, id: number | string = 1): string {
  return JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope }, id });
}

async function post(
  url: string,
  token: string | undefined,
  body: string,
): Promise<{ status: number; json: Json }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${url}/asap`, { method: 'POST', headers, body });
  return { status: res.status, json: (await res.json()) as Json };
}

function stateQuery(): Json {
  return { ...task('echo'), payload_type: 'StateQuery', payload: { task_id: 'task-1' } };
}

async function setup(opts: Partial<JwtAuthenticatorOptions> = {}, keys?: TestKey[]) {
  const key = await makeKey('k1');
  const jwks = await new JwksServer(keys ?? [key]).start();
  const logger = new RecordingLogger();
  const auth = jwtAuthenticator({ jwksUrl: jwks.url, issuer: ISSUER, audience: AUDIENCE, logger, ...opts });
  return { key, jwks, auth, logger };
}

describe('jwtAuthenticator: valid tokens', () => {
  it('lets a valid token in on HTTP and WebSocket, with the principal the engine reads', async () => {
    const { key, jwks, auth, logger } = await setup();
    const token = await sign(key, { scp: ['extra'] });
    const p = await auth.verify(token);
    expect(p).toMatchObject({
      id: CLIENT_URN,
      sub: CLIENT_URN,
      agents: [CLIENT_URN],
      scopes: ['asap:read', 'asap:execute', 'extra'],
      claims: { iss: ISSUER, aud: AUDIENCE },
    });
    expect(p.expiresAt).toBe(((p.claims.exp as number) + 5) * 1000);
    expect(p.requiredScopes).toBeUndefined();
    expect(logger.messages('info')).toEqual(['JWKS fetched']);

    const { url, wsUrl } = await startDemo({ authenticate: auth });
    const http = await post(url, token, rpc(task('echo', { via: 'http' })));
    expect(http.status).toBe(200);
    expect(http.json.result.envelope.payload.result).toEqual({ echo: { via: 'http' } });

    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: `Bearer ${token}` } });
    const ws = await peer.call(task('echo', { via: 'ws' }));
    expect(ws.result.envelope.payload.result).toEqual({ echo: { via: 'ws' } });
    // The browser path: the token as an `asap.bearer.` subprotocol.
    const browser = await connect(wsUrl, ['asap.v1', `asap.bearer.${token}`]);
    expect((await browser.call(task('echo'))).result.envelope.payload.status).toBe('completed');
    expect(jwks.hits).toBe(1);
  });

  it('refuses a missing token as "Authentication required" and a bad one as "Invalid token"', async () => {
    const { auth } = await setup();
    const { url, wsUrl } = await startDemo({ authenticate: auth });
    const none = await post(url, undefined, rpc(task('echo')));
    expect(none.status).toBe(401);
    expect(none.json.error).toMatchObject({ code: -32004, message: 'Authentication required' });
    const bad = await post(url, 'not-a-jwt', rpc(task('echo')));
    expect(bad.status).toBe(401);
    expect(bad.json.error).toMatchObject({ code: -32004, message: 'Invalid token' });
    const peer = open(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer not.a.jwt' } });
    expect(await peer.closed).toMatchObject({ code: 4401, reason: 'Invalid token' });
    await expect(auth.verify('x'.repeat(20_000))).rejects.toThrow(/token longer than/);
    await expect(auth.verify('garbage')).rejects.toThrow(/malformed token/);
  });
});

describe('jwtAuthenticator: time claims', () => {
  it('refuses expired and not-yet-valid tokens, with the clock tolerance on both edges', async () => {
    const clock = new ManualClock(1_800_000_000_000);
    const { key, auth } = await setup({ clock });
    const now = clock.now() / 1000;
    // exp is exclusive: valid while now < exp + tolerance (5 s by default).
    await expect(auth.verify(await sign(key, { exp: now - 4 }, clock.now()))).resolves.toBeDefined();
    await expect(auth.verify(await sign(key, { exp: now - 5 }, clock.now()))).rejects.toThrow(/"exp"/);
    await expect(auth.verify(await sign(key, { exp: now - 3600 }, clock.now()))).rejects.toThrow(/"exp"/);
    // nbf: valid once now ≥ nbf - tolerance.
    await expect(auth.verify(await sign(key, { nbf: now + 5 }, clock.now()))).resolves.toBeDefined();
    await expect(auth.verify(await sign(key, { nbf: now + 6 }, clock.now()))).rejects.toThrow(/"nbf"/);
    await expect(auth.verify(await sign(key, { exp: undefined }, clock.now()))).rejects.toThrow(/"exp"/);

    const strict = jwtAuthenticator({
      keys: [key.jwk],
      issuer: ISSUER,
      audience: AUDIENCE,
      clock,
      clockToleranceSec: 0,
    });
    await expect(strict.verify(await sign(key, { exp: now + 1 }, clock.now()))).resolves.toMatchObject({
      expiresAt: (now + 1) * 1000,
    });
    await expect(strict.verify(await sign(key, { exp: now }, clock.now()))).rejects.toThrow(/"exp"/);
    await expect(strict.verify(await sign(key, { nbf: now + 1 }, clock.now()))).rejects.toThrow(/"nbf"/);
  });

  it('an expired token gets 401 on HTTP', async () => {
    const { key, auth } = await setup();
    const { url } = await startDemo({ authenticate: auth });
    const old = await sign(key, { exp: Math.floor(Date.now() / 1000) - 60 });
    const res = await post(url, old, rpc(task('echo')));
    expect(res.status).toBe(401);
    expect(res.json.error.message).toBe('Invalid token');
  });

  it('closes a WebSocket with 4401 "Token expired" at exp plus the tolerance, not before', async () => {
    const timers = new ManualTimers(Math.ceil(Date.now() / 1000) * 1000);
    const { key, auth } = await setup({ clock: timers, clockToleranceSec: 5 });
    const { wsUrl } = await startDemo({ authenticate: auth, timers });
    const exp = timers.now() / 1000 + 60;
    const token = await sign(key, { exp }, timers.now());
    await auth.verify(token); // keys fetched: the upgrade's check then needs no time to pass
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: `Bearer ${token}` } });
    expect((await peer.call(task('echo'))).result.envelope.payload.status).toBe('completed');
    await timers.tick(65_000 - 1);
    expect((await peer.call(task('echo', { late: true }))).result.envelope.payload.status).toBe('completed');
    expect(peer.isOpen).toBe(true);
    await timers.tick(1);
    expect(await peer.closed).toMatchObject({ code: 4401, reason: 'Token expired' });
  });
});

describe('jwtAuthenticator: issuer, audience, subject', () => {
  it('refuses another issuer, and ignores a trailing slash on either side', async () => {
    const { key, auth } = await setup();
    await expect(auth.verify(await sign(key, { iss: 'https://evil.example.test' }))).rejects.toThrow(
      /unexpected issuer "https:\/\/evil/,
    );
    await expect(auth.verify(await sign(key, { iss: `${ISSUER}/` }))).resolves.toBeDefined();
    await expect(auth.verify(await sign(key, { iss: `${ISSUER}//` }))).resolves.toBeDefined();
    await expect(auth.verify(await sign(key, { iss: `${ISSUER}x` }))).rejects.toThrow(/unexpected issuer/);
    await expect(auth.verify(await sign(key, { iss: undefined }))).rejects.toThrow(/"iss"/);
    await expect(auth.verify(await sign(key, { iss: 42 as unknown as string }))).rejects.toThrow(/issuer/);

    const slashed = jwtAuthenticator({ keys: [key.jwk], issuer: `${ISSUER}/`, audience: AUDIENCE });
    await expect(slashed.verify(await sign(key))).resolves.toBeDefined();
    expect(slashed.issuer).toBe(`${ISSUER}/`);
  });

  it('needs the audience, or one of them: any intersection of the lists', async () => {
    const { key } = await setup();
    const one = jwtAuthenticator({ keys: [key.jwk], issuer: ISSUER, audience: AUDIENCE });
    await expect(one.verify(await sign(key, { aud: 'urn:asap:agent:other' }))).rejects.toThrow(/"aud"/);
    await expect(one.verify(await sign(key, { aud: undefined }))).rejects.toThrow(/"aud"/);
    await expect(one.verify(await sign(key, { aud: ['x', AUDIENCE] }))).resolves.toBeDefined();
    const many = jwtAuthenticator({
      keys: [key.jwk],
      issuer: ISSUER,
      audience: ['api://asap', 'https://agents'],
    });
    expect(many.audience).toEqual(['api://asap', 'https://agents']);
    await expect(many.verify(await sign(key, { aud: ['other', 'https://agents'] }))).resolves.toBeDefined();
    await expect(many.verify(await sign(key, { aud: 'api://asap' }))).resolves.toBeDefined();
    await expect(many.verify(await sign(key, { aud: ['other', 'more'] }))).rejects.toThrow(/"aud"/);
  });

  it('needs a subject', async () => {
    const { key, auth } = await setup();
    await expect(auth.verify(await sign(key, { sub: undefined }))).rejects.toThrow(/"sub"/);
    await expect(auth.verify(await sign(key, { sub: '' }))).rejects.toThrow(/no subject/);
    await expect(auth.verify(await sign(key, { sub: 7 as unknown as string }))).rejects.toThrow(/no subject/);
  });
});

describe('jwtAuthenticator: agent binding', () => {
  it('binds the sub when it is an agent URN; a foreign sender gets -32602 in the reference’s form', async () => {
    const { key, auth } = await setup();
    const { wsUrl } = await startDemo({ authenticate: auth });
    const token = await sign(key);
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: `Bearer ${token}` } });
    const answer = await peer.call(task('echo', {}, { sender: 'urn:asap:agent:mallory' }));
    expect(answer.error).toMatchObject({
      code: -32602,
      message: 'Sender does not match authenticated identity',
      data: { error: 'Sender does not match authenticated identity', status_code: 403 },
    });
    expect(peer.isOpen).toBe(true);
    expect((await peer.call(task('echo'))).result.envelope.payload.status).toBe('completed');
  });

  it('reads the agent claim when sub is not a URN, and refuses a token that names no agent', async () => {
    const { key, auth } = await setup();
    const p = await auth.verify(
      await sign(key, { sub: 'auth0|123', asap_agents: [CLIENT_URN, 'not-a-urn', 'urn:asap:agent:b'] }),
    );
    expect(p).toMatchObject({ id: 'auth0|123', agents: [CLIENT_URN, 'urn:asap:agent:b'] });
    expect((await auth.verify(await sign(key, { sub: 'u1', asap_agents: CLIENT_URN }))).agents).toEqual([
      CLIENT_URN,
    ]);
    await expect(auth.verify(await sign(key, { sub: 'u1' }))).rejects.toThrow(
      /names no agent URN: sub is not urn:asap:agent:… and claim "asap_agents"/,
    );
    await expect(auth.verify(await sign(key, { sub: 'u1', asap_agents: 12 }))).rejects.toThrow(
      /no agent URN/,
    );
    const long = `urn:asap:agent:${'a'.repeat(250)}`;
    await expect(auth.verify(await sign(key, { sub: long }))).rejects.toThrow(/no agent URN/);

    const named = jwtAuthenticator({
      keys: [key.jwk],
      issuer: ISSUER,
      audience: AUDIENCE,
      agentClaim: 'agent_urn',
    });
    expect((await named.verify(await sign(key, { sub: 'u', agent_urn: CLIENT_URN }))).agents).toEqual([
      CLIENT_URN,
    ]);
  });

  it('lets in unbound tokens only when told, and takes a mapping function', async () => {
    const { key } = await setup();
    const loose = jwtAuthenticator({
      keys: [key.jwk],
      issuer: ISSUER,
      audience: AUDIENCE,
      allowUnbound: true,
    });
    expect((await loose.verify(await sign(key, { sub: 'svc-1' }))).agents).toBeUndefined();
    const { url } = await startDemo({ authenticate: loose });
    const res = await post(
      url,
      await sign(key, { sub: 'svc-1' }),
      rpc(task('echo', {}, { sender: 'urn:asap:agent:anyone' })),
    );
    expect(res.json.result.envelope.payload.status).toBe('completed');

    const mapped = jwtAuthenticator({
      keys: [key.jwk],
      issuer: ISSUER,
      audience: AUDIENCE,
      agentClaim: (claims) =>
        claims.tenant === 'open' ? undefined : [`urn:asap:agent:${claims.tenant}`, 'bad'],
    });
    expect((await mapped.verify(await sign(key, { tenant: 'acme' }))).agents).toEqual([
      'urn:asap:agent:acme',
    ]);
    expect((await mapped.verify(await sign(key, { tenant: 'open' }))).agents).toBeUndefined();
    await expect(mapped.verify(await sign(key, { tenant: 'Not Valid' }))).rejects.toThrow(
      /agentClaim returned none/,
    );
  });
});

describe('jwtAuthenticator: scopes', () => {
  it('a missing scope gets -32602 with data.required_scope; the WebSocket stays and allowed requests run', async () => {
    const { key, auth } = await setup();
    const { wsUrl, url } = await startDemo({ authenticate: auth });
    const token = await sign(key, { scope: 'asap:execute' });
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: `Bearer ${token}` } });
    const refused = await peer.call(stateQuery());
    expect(refused.error).toMatchObject({
      code: -32602,
      message: 'Insufficient scope',
      data: { error: 'Insufficient scope', status_code: 403, required_scope: 'asap:read' },
    });
    expect(peer.isOpen).toBe(true);
    expect((await peer.call(task('echo', { n: 2 }))).result.envelope.payload.result).toEqual({
      echo: { n: 2 },
    });

    const readOnly = await sign(key, { scope: 'asap:read' });
    const http = await post(url, readOnly, rpc(task('echo')));
    expect(http.status).toBe(403);
    expect(http.json.error.data).toMatchObject({
      error: 'Insufficient scope',
      status_code: 403,
      required_scope: 'asap:execute',
    });
    // asap:read is enough to get past the scope check of a StateQuery (the demo has no handler for it).
    const allowed = await post(url, readOnly, rpc(stateQuery()));
    expect(allowed.status).toBe(200);
    expect(allowed.json.error.code).toBe(-32012);
    // `scp` (Okta, Entra ID) counts as well.
    const scp = await sign(key, { scope: undefined, scp: ['asap:execute'] });
    expect((await post(url, scp, rpc(task('echo')))).json.result.envelope.payload.status).toBe('completed');
  });

  it('requiredScopes: every request needs them, whatever its type', async () => {
    const { key, auth } = await setup({ requiredScopes: ['tenant:acme'] });
    expect(auth.requiredScopes).toEqual(['tenant:acme']);
    const { url } = await startDemo({ authenticate: auth });
    const without = await post(url, await sign(key), rpc(task('echo')));
    expect(without.json.error.data.required_scope).toBe('tenant:acme');
    const withIt = await post(url, await sign(key, { scope: 'asap:execute tenant:acme' }), rpc(task('echo')));
    expect(withIt.json.result.envelope.payload.status).toBe('completed');
  });
});

describe('jwtAuthenticator: algorithms and keys', () => {
  it('refuses alg "none"', async () => {
    const { auth } = await setup();
    const { url } = await startDemo({ authenticate: auth });
    const enc = (o: object) => base64url.encode(JSON.stringify(o));
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: ISSUER, aud: AUDIENCE, sub: CLIENT_URN, exp: now + 600 })}.`;
    await expect(auth.verify(unsigned)).rejects.toThrow(/algorithm "none" not allowed/);
    const res = await post(url, unsigned, rpc(task('echo')));
    expect(res.status).toBe(401);
    expect(res.json.error.message).toBe('Invalid token');
    const noAlg = `${enc({ typ: 'JWT' })}.${enc({ sub: CLIENT_URN })}.`;
    await expect(auth.verify(noAlg)).rejects.toThrow(/algorithm undefined not allowed/);
  });

  it('refuses HS256 signed with the public key’s bytes, on a JWKS and on a static key', async () => {
    const { key, auth } = await setup();
    const pem = new TextEncoder().encode(await exportSPKI(key.publicKey));
    const x = base64url.decode(key.jwk.x as string);
    for (const secret of [pem, x]) {
      const forged = await new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: CLIENT_URN })
        .setProtectedHeader({ alg: 'HS256', kid: key.kid })
        .setExpirationTime('10m')
        .sign(secret);
      await expect(auth.verify(forged)).rejects.toThrow(/algorithm "HS256" not allowed/);
      const direct = jwtAuthenticator({ keys: key.publicKey, issuer: ISSUER, audience: AUDIENCE });
      await expect(direct.verify(forged)).rejects.toThrow(/algorithm "HS256" not allowed/);
    }
    // Nor can HS256 be allowed without an explicit secret.
    expect(() =>
      jwtAuthenticator({ keys: [key.jwk], issuer: ISSUER, audience: AUDIENCE, algorithms: ['HS256'] }),
    ).toThrow(/HS256 needs an explicit secret/);
  });

  it('takes static keys: a JWKS object, a JWK, a key object, and RS256/ES256 next to EdDSA', async () => {
    const ed = await makeKey('ed');
    const es = await makeKey('es', 'ES256');
    const rs = await makeKey('rs', 'RS256');
    const ps = await makeKey('ps', 'PS256');
    const set = jwtAuthenticator({
      keys: { keys: [ed.jwk, es.jwk, rs.jwk] },
      issuer: ISSUER,
      audience: AUDIENCE,
    });
    for (const k of [ed, es, rs]) await expect(set.verify(await sign(k)), k.alg).resolves.toBeDefined();
    // PS256 is not in the default list.
    await expect(set.verify(await sign(ps))).rejects.toThrow(/"PS256" not allowed/);
    const withPs = jwtAuthenticator({
      keys: ps.jwk,
      issuer: ISSUER,
      audience: AUDIENCE,
      algorithms: ['PS256'],
    });
    await expect(withPs.verify(await sign(ps))).resolves.toBeDefined();
    // A key of the set that did not sign it.
    const other = await makeKey('ed');
    await expect(set.verify(await sign(other))).rejects.toThrow(/signature verification failed/);
    // A kid the static set does not hold.
    await expect(set.verify(await sign(await makeKey('zz')))).rejects.toThrow(/no key with kid "zz"/);
    // One public key, no kid needed.
    const single = jwtAuthenticator({ keys: es.publicKey, issuer: ISSUER, audience: AUDIENCE });
    await expect(single.verify(await sign(es, {}, Date.now(), { kid: undefined }))).resolves.toBeDefined();
    await expect(single.verify(await sign(ed))).rejects.toThrow();
  });

  it('a token without kid is checked against every key that fits', async () => {
    const a = await makeKey('a');
    const b = await makeKey('b');
    const noKid = (k: TestKey): JWK => ({ ...k.jwk, kid: undefined });
    const auth = jwtAuthenticator({ keys: [noKid(a), noKid(b)], issuer: ISSUER, audience: AUDIENCE });
    await expect(auth.verify(await sign(b, {}, Date.now(), { kid: undefined }))).resolves.toBeDefined();
    const c = await makeKey('c');
    await expect(auth.verify(await sign(c, {}, Date.now(), { kid: undefined }))).rejects.toThrow(
      /signature verification failed/,
    );
    // Keys that fit the token but cannot even be imported.
    const broken: JWK = { kty: 'OKP', crv: 'Ed25519', x: 'AAAA' };
    const junk = jwtAuthenticator({ keys: [broken, { ...broken }], issuer: ISSUER, audience: AUDIENCE });
    await expect(junk.verify(await sign(c, {}, Date.now(), { kid: undefined }))).rejects.toThrow(
      /no key verifies the token/,
    );
  });

  it('HS256 works with an explicit secret of at least 32 bytes, and only HS*', async () => {
    const secret = 'a-shared-secret-of-at-least-32-bytes!';
    const auth = jwtAuthenticator({ secret, issuer: ISSUER, audience: AUDIENCE });
    expect(auth.algorithms).toEqual(['HS256']);
    const token = await new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: CLIENT_URN, scope: 'asap:execute' })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(secret));
    await expect(auth.verify(token)).resolves.toMatchObject({ scopes: ['asap:execute'] });
    const bytes = jwtAuthenticator({
      secret: new Uint8Array(32).fill(7),
      issuer: ISSUER,
      audience: AUDIENCE,
    });
    await expect(bytes.verify(token)).rejects.toThrow(/signature verification failed/);
    const ed = await makeKey('ed');
    await expect(auth.verify(await sign(ed))).rejects.toThrow(/"EdDSA" not allowed/);
  });

  it('refuses configurations that could accept forged tokens', async () => {
    const key = await makeKey('k');
    const base = { issuer: ISSUER, audience: AUDIENCE };
    const bad: [Partial<JwtAuthenticatorOptions>, RegExp][] = [
      [{}, /exactly one of jwksUrl, keys, secret/],
      [{ keys: [key.jwk], jwksUrl: 'http://127.0.0.1:1/jwks' }, /exactly one/],
      [{ keys: [key.jwk], algorithms: ['none'] }, /algorithm "none" is not supported/],
      [{ keys: [key.jwk], algorithms: [] }, /must not be empty/],
      [{ keys: [key.jwk], algorithms: ['EdDSA', 'HS512'] }, /HS512 needs an explicit secret/],
      [{ secret: 'x'.repeat(32), algorithms: ['RS256'] }, /RS256 needs public keys/],
      [{ secret: 'short' }, /at least 32 bytes/],
      [{ keys: key.privateKey }, /must be public keys/],
      [{ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }, /must be public keys/],
      [{ keys: [await exportJWK(key.privateKey)] }, /must be public keys/],
      [{ keys: [key.jwk], issuer: '' }, /issuer is required/],
      [{ keys: [key.jwk], audience: [] }, /audience is required/],
      [{ keys: [key.jwk], audience: [''] }, /audience is required/],
      [{ keys: [key.jwk], clockToleranceSec: -1 }, /clockToleranceSec/],
      [{ keys: [key.jwk], audience: undefined }, /audience is required/],
    ];
    for (const [opts, error] of bad) {
      expect(() => jwtAuthenticator({ ...base, ...opts } as JwtAuthenticatorOptions), String(error)).toThrow(
        error,
      );
    }
  });
});

describe('jwtAuthenticator: JWKS fetching, rotation and outages', () => {
  it('fetches once for concurrent first requests, and for concurrent unknown kids', async () => {
    const clock = new ManualClock(Date.now());
    const { key, jwks, auth } = await setup({ clock });
    const token = await sign(key, {}, clock.now());
    await Promise.all(Array.from({ length: 10 }, () => auth.verify(token)));
    expect(jwks.hits).toBe(1);
    const next = await makeKey('k2');
    jwks.publish(key, next);
    clock.advance(30_000);
    const rotated = await sign(next, {}, clock.now());
    await Promise.all(Array.from({ length: 10 }, () => auth.verify(rotated)));
    expect(jwks.hits).toBe(2);
  });

  it('concurrent first requests share a failed fetch: all refused, one fetch', async () => {
    const { key, jwks, auth } = await setup();
    jwks.mode = 'error';
    const token = await sign(key);
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => auth.verify(token)));
    expect(results.map((r) => r.status)).toEqual(Array(5).fill('rejected'));
    expect(jwks.hits).toBe(1);
  });

  it('an unknown kid refetches the JWKS (at most once per cooldown): a rotated key works without a restart', async () => {
    const clock = new ManualClock(Date.now());
    const { key, jwks, auth } = await setup({ clock });
    await auth.verify(await sign(key, {}, clock.now()));
    expect(jwks.hits).toBe(1);
    const next = await makeKey('k2');
    jwks.publish(key, next);
    // Within the cooldown of the first fetch: no refetch, refused.
    clock.advance(10_000);
    await expect(auth.verify(await sign(next, {}, clock.now()))).rejects.toThrow(
      /no key with kid "k2" \(JWKS refetch rate-limited\)/,
    );
    expect(jwks.hits).toBe(1);
    // Past it: one refetch, and the new key is accepted.
    clock.advance(20_000);
    await expect(auth.verify(await sign(next, {}, clock.now()))).resolves.toBeDefined();
    expect(jwks.hits).toBe(2);
    // A forged kid right after does not make it fetch again.
    await expect(auth.verify(await sign(await makeKey('k9'), {}, clock.now()))).rejects.toThrow(
      /rate-limited/,
    );
    expect(jwks.hits).toBe(2);
    // Past the cooldown an unknown kid refetches, and is refused if still unknown.
    clock.advance(30_000);
    await expect(auth.verify(await sign(await makeKey('k9'), {}, clock.now()))).rejects.toThrow(
      /no key with kid "k9" for EdDSA/,
    );
    expect(jwks.hits).toBe(3);
  });

  it('a key removed from the JWKS is refused once the cache refreshes', async () => {
    const clock = new ManualClock(Date.now());
    const old = await makeKey('old');
    const { key, jwks, auth } = await setup({ clock, jwksMaxAgeMs: 60_000 }, [old]);
    const oldToken = await sign(old, { exp: Math.floor(clock.now() / 1000) + 7200 }, clock.now());
    await expect(auth.verify(oldToken)).resolves.toBeDefined();
    jwks.publish(key);
    clock.advance(59_000);
    await expect(auth.verify(oldToken)).resolves.toBeDefined();
    expect(jwks.hits).toBe(1);
    clock.advance(1_000);
    await expect(auth.verify(oldToken)).rejects.toThrow(/no key with kid "old"/);
    expect(jwks.hits).toBe(2);
    await expect(auth.verify(await sign(key, {}, clock.now()))).resolves.toBeDefined();
    expect(jwks.hits).toBe(2);
  });

  it('JWKS server down with keys cached: tokens keep working, the failure is logged', async () => {
    const clock = new ManualClock(Date.now());
    const { key, jwks, auth, logger } = await setup({ clock, jwksMaxAgeMs: 60_000 });
    const { url } = await startDemo({ authenticate: auth });
    const token = await sign(key, { exp: Math.floor(clock.now() / 1000) + 7200 }, clock.now());
    expect((await post(url, token, rpc(task('echo')))).status).toBe(200);
    await jwks.down();
    clock.advance(120_000); // the keys are stale: a refresh is tried, fails, and the keys held stay
    const res = await post(url, token, rpc(task('echo')));
    expect(res.json.result.envelope.payload.status).toBe('completed');
    expect(logger.entries.filter((e) => e.level === 'error').map((e) => e.msg)).toEqual([
      'JWKS fetch failed; keeping the keys held',
    ]);
    // An unknown kid while it is down: refused, the old keys still serve the rest.
    clock.advance(30_000);
    await expect(auth.verify(await sign(await makeKey('new'), {}, clock.now()))).rejects.toThrow(
      /no key with kid "new"/,
    );
    await expect(auth.verify(token)).resolves.toBeDefined();
  });

  it('JWKS server down with no keys cached: 401 "Invalid token" with a logged reason, and no crash', async () => {
    const { key, jwks, auth, logger } = await setup();
    await jwks.down();
    const serverLog = new RecordingLogger();
    const { url, wsUrl } = await startDemo({ authenticate: auth, logger: serverLog });
    const token = await sign(key);
    const res = await post(url, token, rpc(task('echo')));
    expect(res.status).toBe(401);
    expect(res.json.error).toMatchObject({ code: -32004, message: 'Invalid token' });
    const logged = serverLog.entries.find((e) => e.msg === 'token check failed');
    expect((logged!.obj as { err: string }).err).toMatch(
      new RegExp(`no signing keys: JWKS fetch from ${jwks.url.replace(/[.]/g, '\\.')} failed`),
    );
    expect(logger.messages('error')).toEqual(['JWKS fetch failed; no keys to verify tokens with']);
    // Within a second of that failure nobody fetches again; the server keeps answering.
    const peer = open(wsUrl, 'asap.v1', { headers: { authorization: `Bearer ${token}` } });
    expect(await peer.closed).toMatchObject({ code: 4401, reason: 'Invalid token' });
    expect((await post(url, token, rpc(task('echo')))).status).toBe(401);
  });

  it('retries a failed first fetch after a second, and recovers when the JWKS comes back', async () => {
    const clock = new ManualClock(Date.now());
    const { key, jwks, auth } = await setup({ clock });
    jwks.mode = 'error';
    const token = await sign(key, {}, clock.now());
    await expect(auth.verify(token)).rejects.toThrow(/failed \(HTTP 500\)/);
    expect(jwks.hits).toBe(1);
    await expect(auth.verify(token)).rejects.toThrow(/failed \(HTTP 500\)/);
    expect(jwks.hits).toBe(1);
    jwks.mode = 'garbage';
    clock.advance(1_000);
    await expect(auth.verify(token)).rejects.toThrow(/no signing keys: JWKS fetch .* failed \(.*JSON/);
    jwks.mode = 'huge';
    clock.advance(1_000);
    await expect(auth.verify(token)).rejects.toThrow(/JWKS larger than/);
    jwks.mode = 'ok';
    clock.advance(1_000);
    await expect(auth.verify(token)).resolves.toBeDefined();
    expect(jwks.hits).toBe(4);
  });

  it('uses the fetch it is given', async () => {
    const key = await makeKey('f1');
    const urls: string[] = [];
    const auth = jwtAuthenticator({
      jwksUrl: new URL('https://idp.example.test/jwks'),
      issuer: ISSUER,
      audience: AUDIENCE,
      fetch: async (input) => {
        urls.push(String(input));
        return new Response(JSON.stringify({ keys: [key.jwk] }));
      },
    });
    await expect(auth.verify(await sign(key))).resolves.toBeDefined();
    expect(urls).toEqual(['https://idp.example.test/jwks']);
    expect(auth.jwksUrl).toBe('https://idp.example.test/jwks');
  });
});

describe('jwtAuthenticator: metadata for the manifest', () => {
  it('describes itself as the reference’s AuthScheme', async () => {
    const { auth, jwks } = await setup();
    expect(auth.manifestAuth()).toEqual({
      schemes: ['bearer', 'oauth2'],
      oauth2: { issuer: ISSUER, jwks_uri: jwks.url, scopes: ['asap:read', 'asap:execute', 'asap:admin'] },
    });
    const key = await makeKey('m');
    const local = jwtAuthenticator({ keys: [key.jwk], issuer: ISSUER, audience: AUDIENCE });
    expect(
      local.manifestAuth({ tokenUrl: `${ISSUER}/token`, authorizationUrl: `${ISSUER}/auth` }).oauth2,
    ).toEqual({
      issuer: ISSUER,
      scopes: ['asap:read', 'asap:execute', 'asap:admin'],
      token_url: `${ISSUER}/token`,
      authorization_url: `${ISSUER}/auth`,
    });
    expect(local.jwksUrl).toBeUndefined();
    expect(DEMO_URN).toBe(AUDIENCE);
  });
});
