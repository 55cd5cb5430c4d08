/**
 * Token providers: a WebSocket the server ends with 4401 `Token expired` reconnects at once with
 * a fresh token from the provider, resumes its session and sends again what was in flight, which
 * the server answers once (dedupe is per principal, not per token). HTTP asks the provider for
 * every request.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HttpTransport } from '../../src/client/http-transport.js';
import { ConnectionError } from '../../src/protocol/errors.js';
import { cleanup, makeTransport, resultOf, startAgent, task, uniqueKey, waitFor, within } from './helpers.js';

afterEach(cleanup);

/** Tokens `t1`, `t2`, …: each valid for `lifeMs` from when the server first sees it. */
function tokenServer(lifeMs: number) {
  const issued: string[] = [];
  const firstSeen = new Map<string, number>();
  const provider = async () => {
    const t = `t${issued.length + 1}`;
    issued.push(t);
    return t;
  };
  const authenticate = (token: string | undefined) => {
    if (token === undefined || !issued.includes(token)) return null;
    if (!firstSeen.has(token)) firstSeen.set(token, Date.now());
    return { id: 'user-1', expiresAt: firstSeen.get(token)! + lifeMs };
  };
  return { issued, provider, authenticate };
}

describe('token providers', () => {
  it('a live socket closed 4401 "Token expired" reconnects with a fresh token; 100 requests in flight are answered once', async () => {
    const tokens = tokenServer(500);
    // Heartbeats slow enough that a loaded machine cannot make them close anything here.
    const server = await startAgent({ authenticate: tokens.authenticate, heartbeatIntervalMs: 250 });
    const transport = makeTransport(`${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`, {
      token: tokens.provider,
      heartbeatIntervalMs: 2000,
    });
    const closes: { code: number; reason: string }[] = [];
    transport.on('close', (c) => closes.push(c));
    const sessions: boolean[] = [];
    transport.on('session', (s) => sessions.push(s.resumed));
    await within(transport.connect(), 5000, 'connect');
    const keys = Array.from({ length: 100 }, () => uniqueKey('tok'));
    // Spread over the expiry: some finish before it, some are in flight when the socket closes.
    const answers = keys.map((key, i) =>
      transport
        .request(task('sleep', { ms: 200 + (i % 10) * 60 }))
        .then(() => transport.request(task('count', { key }))),
    );
    const results = await within(Promise.all(answers), 15_000, '100 requests');
    expect(results.map((r) => resultOf(r).count)).toEqual(keys.map(() => 1));
    // Only the expiry closed it.
    expect(closes.length).toBeGreaterThanOrEqual(1);
    for (const c of closes) expect(c).toEqual({ code: 4401, reason: 'Token expired' });
    expect(tokens.issued.length).toBe(closes.length + 1);
    expect(tokens.issued.length).toBeGreaterThanOrEqual(2);
    expect(sessions[0]).toBe(false);
    expect(sessions.slice(1).every((resumed) => resumed)).toBe(true);
    expect(transport.inFlight).toBe(0);
    expect(transport.state).toBe('open');
  });

  it('a provider that fails: the first connection fails with a ConnectionError naming it', async () => {
    const server = await startAgent({ authenticate: () => ({ id: 'x' }) });
    const transport = makeTransport(`${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`, {
      token: () => Promise.reject(new Error('identity provider down')),
    });
    const err = await transport.connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as Error).message).toBe('Cannot get a token: identity provider down');
  });

  it('a refused fresh token (4401 before open) gives up instead of looping', async () => {
    const server = await startAgent({ authenticate: (t) => (t === 'good' ? { id: 'x' } : null) });
    let calls = 0;
    const transport = makeTransport(`${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`, {
      token: () => {
        calls++;
        return 'bad';
      },
    });
    // The upgrade succeeds and the server closes it 4401 (a browser could not read an HTTP status).
    const err = await transport.request(task('echo')).catch((e: unknown) => e);
    expect((err as { code?: number }).code).toBe(-32004);
    await waitFor(() => transport.state === 'closed', 'closed');
    expect(calls).toBe(1);
  });

  it('HTTP asks the provider for every request', async () => {
    const seen: (string | undefined)[] = [];
    const server = await startAgent({
      authenticate: (t) => {
        seen.push(t);
        return t?.startsWith('h') ? { id: 'x' } : null;
      },
    });
    let n = 0;
    const http = new HttpTransport(`${server.boundAddress!.url}/asap`, { token: () => `h${++n}` });
    await http.request(task('echo'));
    await http.request(task('echo'));
    expect(seen).toEqual(['h1', 'h2']);
    const broken = new HttpTransport(`${server.boundAddress!.url}/asap`, {
      token: () => {
        throw new Error('no credentials');
      },
    });
    await expect(broken.request(task('echo'))).rejects.toThrow('Cannot get a token: no credentials');
  });
});
