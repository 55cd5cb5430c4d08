/**
 * `asap serve --jwks-url … --issuer … --audience …`: OAuth2/OIDC bearer JWTs end to end, with keys
 * made here and a real JWKS server on 127.0.0.1; the manifest advertises the OAuth2 metadata.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type Served, startServe } from './cli-helpers.js';

const ISSUER = 'https://id.example.test/';
const AUDIENCE = 'asap-demo';
const SENDER = 'urn:asap:agent:cli';

let jwks: Server;
let jwksUrl: string;
let served: Served;
let privateKey: CryptoKey;

beforeAll(async () => {
  const pair = await generateKeyPair('ES256', { extractable: true });
  privateKey = pair.privateKey as CryptoKey;
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  jwks = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
  jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`;
  served = await startServe([
    '--jwks-url',
    jwksUrl,
    '--issuer',
    ISSUER.slice(0, -1),
    '--audience',
    'other',
    '--audience',
    AUDIENCE,
    '--token-url',
    'https://id.example.test/oauth/token',
    '--log-level',
    'silent',
  ]);
});

afterAll(async () => {
  await served?.stop();
  await new Promise((r) => jwks?.close(r));
});

function token(scope: string): Promise<string> {
  return new SignJWT({ scope })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject(SENDER)
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(privateKey);
}

describe('asap serve with JWTs', () => {
  it('accepts a valid token on HTTP and WebSocket; a missing scope is exit 1 with -32602', async () => {
    const good = await token('asap:execute');
    for (const url of [`${served.http}/asap`, served.ws]) {
      const r = await runCli(['send', url, '--token', good, '--sender', SENDER]);
      expect(r.code, r.stderr).toBe(0);
    }
    const readOnly = await token('asap:read');
    const r = await runCli(['send', `${served.http}/asap`, '--token', readOnly, '--sender', SENDER]);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.data).toMatchObject({
      required_scope: 'asap:execute',
      status_code: 403,
    });
    const wrongSender = await runCli([
      'send',
      served.ws,
      '--token',
      good,
      '--sender',
      'urn:asap:agent:mallory',
    ]);
    expect(wrongSender.code).toBe(1);
    expect(JSON.parse(wrongSender.stdout).error.code).toBe(-32602);
  });

  it('advertises bearer and OAuth2 (issuer, token endpoint, scopes) in the manifest', async () => {
    const manifest = (await (await fetch(`${served.http}/.well-known/asap/manifest.json`)).json()) as {
      auth: { schemes: string[]; oauth2: Record<string, unknown> };
    };
    expect(manifest.auth.schemes).toEqual(['bearer', 'oauth2']);
    expect(manifest.auth.oauth2).toMatchObject({
      token_url: 'https://id.example.test/oauth/token',
      scopes: expect.arrayContaining(['asap:read', 'asap:execute']),
    });
  });

  it('--jwks-url without --issuer or --audience is refused', async () => {
    const r = await runCli(['serve', '--port', '0', '--jwks-url', 'http://127.0.0.1:1/jwks']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--jwks-url needs --issuer and --audience');
  });
});
