/**
 * The server's seams: the Authenticator (token and request → principal with URNs and expiry),
 * a principal's expiry closing its WebSocket with 4401, a custom PushAdapter, and the Drain unit.
 * Real sockets on 127.0.0.1; time on ManualTimers where the behaviour is about time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Instrumentation } from '../../src/core/instrumentation.js';
import { ManualTimers } from '../../src/core/timers.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import { ASAPError } from '../../src/protocol/errors.js';
import type { AuthRequest } from '../../src/server/auth.js';
import { Drain } from '../../src/server/drain.js';
import { LocalPushAdapter, type PushAdapter, type PushTarget } from '../../src/server/push-adapter.js';
import { memoryStore, type ServerStore } from '../../src/server/store.js';
import { CLIENT_URN, cleanup, connect, type Json, open, startDemo, task, waitFor } from './ws-helpers.js';

afterEach(cleanup);

describe('Authenticator', () => {
  it('gets the token and the request on both bindings, and its principal binds the sender', async () => {
    const seen: { token: string | undefined; req: AuthRequest }[] = [];
    const authenticate = (token: string | undefined, req: AuthRequest) => {
      seen.push({ token, req });
      return token === 'good' ? { id: 'alice', agents: [CLIENT_URN] } : null;
    };
    const { url, wsUrl } = await startDemo({ authenticate });
    const ok = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer good', 'x-tenant': 't1' },
      body: JSON.stringify({
        jsonrpc: '2.0',
        method: 'asap.send',
        params: { envelope: task('echo', { a: 1 }) },
        id: 1,
      }),
    });
    expect(((await ok.json()) as Json).result.envelope.payload.status).toBe('completed');
    expect(seen[0]).toMatchObject({
      token: 'good',
      req: { transport: 'http', headers: { 'x-tenant': 't1' } },
    });
    expect(seen[0]!.req.remoteAddress).toMatch(/127\.0\.0\.1/);

    const none = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(none.status).toBe(401);
    expect(((await none.json()) as Json).error.message).toBe('Authentication required');
    expect(seen[1]!.token).toBeUndefined();

    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer good' } });
    expect(seen[2]).toMatchObject({ token: 'good', req: { transport: 'websocket' } });
    const answer = await peer.call(task('echo', {}, { sender: 'urn:asap:agent:mallory' }));
    expect(answer.error).toMatchObject({ code: -32602, data: { status_code: 403 } });
    const bad = open(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer bad' } });
    expect(await bad.closed).toMatchObject({ code: 4401, reason: 'Invalid token' });
  });

  it('a static token may bind its holders to agent URNs (tokenAgents)', async () => {
    const { wsUrl } = await startDemo({ token: 's3cret', tokenAgents: [CLIENT_URN] });
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer s3cret' } });
    expect((await peer.call(task('echo', { ok: 1 }))).result.envelope.payload.status).toBe('completed');
    const other = await peer.call(task('echo', {}, { sender: 'urn:asap:agent:mallory' }));
    expect(other.error).toMatchObject({ code: -32602, data: { status_code: 403 } });
  });

  it('a throwing authenticator refuses with "Invalid token"', async () => {
    const { url } = await startDemo({
      authenticate: () => {
        throw new Error('identity provider down');
      },
    });
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer x' },
      body: '{}',
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as Json).error.message).toBe('Invalid token');
  });

  it('closes a WebSocket with 4401 "Token expired" when its principal expires, not before', async () => {
    const timers = new ManualTimers(Date.now());
    const expiresAt = timers.now() + 60_000;
    const { wsUrl } = await startDemo({
      timers,
      authenticate: (t) => (t === 'x' ? { id: 'bob', expiresAt } : null),
    });
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer x' } });
    await timers.tick(59_000);
    expect((await peer.call(task('echo', { still: 'here' }))).result.envelope.payload.status).toBe(
      'completed',
    );
    await timers.tick(1_000);
    expect(await peer.closed).toMatchObject({ code: 4401, reason: 'Token expired' });
  });
});

describe('PushAdapter', () => {
  it('the server pushes through the adapter it is given (and indexes connections there)', async () => {
    const local = new LocalPushAdapter();
    const pushed: string[] = [];
    const adapter: PushAdapter = {
      add: (urn, target) => local.add(urn, target),
      remove: (urns, target) => local.remove(urns, target),
      targets: (urn) => local.targets(urn),
      push: (urn, envelope) => {
        pushed.push(urn);
        return local.push(urn, envelope);
      },
    };
    const { server, wsUrl } = await startDemo({ pushAdapter: adapter });
    const peer = await connect(wsUrl);
    await peer.call(task('echo', {}));
    expect(server.connectionsFor(CLIENT_URN)).toHaveLength(1);
    expect(
      await server.push(CLIENT_URN, {
        payload_type: 'TaskUpdate',
        payload: { task_id: 't', update_type: 'progress', status: 'working' },
      }),
    ).toBe(1);
    expect(pushed).toEqual([CLIENT_URN]);
    await peer.close();
    await waitFor(() => local.targets(CLIENT_URN).length === 0, 'the connection to leave the index');
  });

  it('LocalPushAdapter: counts who took it, and rejects only when nobody did', async () => {
    const adapter = new LocalPushAdapter();
    const env = {} as Envelope<object>;
    expect(await adapter.push('urn:asap:agent:nobody', env)).toBe(0);
    const ok: PushTarget = { id: 1, push: () => Promise.resolve() };
    const bad: PushTarget = { id: 2, push: () => Promise.reject(new Error('closed')) };
    adapter.add('urn:x', ok);
    adapter.add('urn:x', bad);
    adapter.add('urn:y', bad);
    expect(await adapter.push('urn:x', env)).toBe(1);
    await expect(adapter.push('urn:y', env)).rejects.toThrow('closed');
    adapter.remove(['urn:x', 'urn:y', 'urn:z'], bad);
    expect(adapter.targets('urn:x')).toEqual([ok]);
    expect(adapter.targets('urn:y')).toEqual([]);
  });
});

describe('Drain', () => {
  it('waits for in-flight work, up to its deadline', async () => {
    const timers = new ManualTimers();
    const drain = new Drain(5_000, timers);
    expect(drain.draining).toBe(false);
    await drain.start();
    expect(drain.draining).toBe(true);

    const d2 = new Drain(5_000, timers);
    const a = d2.begin();
    const b = d2.begin();
    let drained = false;
    const done = d2.start().then(() => (drained = true));
    a();
    a();
    expect(d2.inFlight).toBe(1);
    await timers.tick(1);
    expect(drained).toBe(false);
    b();
    await done;
    expect(timers.pending).toBe(0);

    const d3 = new Drain(5_000, timers);
    d3.begin();
    const late = d3.start().then(() => (drained = false));
    await timers.tick(5_000);
    await late;
    expect(d3.inFlight).toBe(1);
  });
});

describe('ManualTimers', () => {
  it('runs what falls due in time order, re-arms intervals, and cancels', () => {
    const timers = new ManualTimers(1000);
    const log: string[] = [];
    timers.setTimeout(() => log.push(`b@${timers.now()}`), 20);
    timers.setTimeout(() => log.push(`a@${timers.now()}`), 10);
    const every = timers.setInterval(() => log.push(`i@${timers.now()}`), 15);
    const never = timers.setTimeout(() => log.push('never'), 5);
    never.cancel();
    never.cancel();
    timers.advance(30);
    expect(log).toEqual(['a@1010', 'i@1015', 'b@1020', 'i@1030']);
    expect(timers.now()).toBe(1030);
    every.cancel();
    timers.advance(100);
    expect(log).toHaveLength(4);
    expect(timers.pending).toBe(0);
  });

  it('a timer set from a callback runs in the same advance when it falls due', () => {
    const timers = new ManualTimers();
    const log: number[] = [];
    timers.setTimeout(() => timers.setTimeout(() => log.push(timers.now()), 5), 5);
    timers.advance(10);
    expect(log).toEqual([10]);
  });
});

describe('Instrumentation on the server', () => {
  it('hears of connections, auth refusals, rate limits, and push acks and retransmissions', async () => {
    const events: string[] = [];
    const instrumentation: Instrumentation = {
      connectionOpened: (i) => events.push(`open ${i.transport}`),
      connectionClosed: (i) => events.push(`close ${i.code}`),
      rejected: (reason, code) => events.push(`rejected ${reason} ${code}`),
      ackReceived: (status) => events.push(`ack ${status}`),
      retransmitted: () => events.push('retransmit'),
    };
    const { server, url, wsUrl } = await startDemo({
      instrumentation,
      rateLimit: 2,
      ack: { timeoutMs: 50, maxRetries: 1, checkIntervalMs: 10 },
      authenticate: (t) => (t === 'ok' ? { id: 'u' } : null),
    });
    const refused = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(refused.status).toBe(401);
    const peer = await connect(wsUrl, 'asap.v1', { headers: { authorization: 'Bearer ok' } });
    await peer.call(task('echo', {}));
    const push = server.push(CLIENT_URN, {
      payload_type: 'MessageSend',
      payload: { conversation_id: 'c', content: 'hi' },
    });
    const frame = await peer.waitFor((f) => f.method === 'asap.send');
    await waitFor(() => events.includes('retransmit'), 'a retransmission');
    peer.send({
      jsonrpc: '2.0',
      method: 'asap.ack',
      params: {
        envelope: {
          ...task('echo'),
          payload_type: 'MessageAck',
          payload: { original_envelope_id: frame.params.envelope.id, status: 'received' },
        },
      },
    });
    expect(await push).toBe(1);
    for (let i = 0; i < 3; i++)
      peer.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('echo') }, id: `r${i}` });
    await peer.closed;
    await waitFor(() => events.some((e) => e.startsWith('close')), 'the close hook');
    expect(events).toEqual([
      'rejected auth -32004',
      'open websocket',
      'retransmit',
      'ack received',
      'rejected rate_limit -32040',
      'close 1008',
    ]);
  });
});

describe('Connection: answers and acks inside a batch', () => {
  it('settles a push by an ack in a batch and a reverse request by an answer in a batch', async () => {
    const { server, wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    await peer.call(task('echo', {}));
    const conn = server.connectionsFor(CLIENT_URN)[0]!;
    const push = conn.push({
      ...task('echo'),
      sender: 'urn:asap:agent:demo',
      recipient: CLIENT_URN,
      payload_type: 'MessageSend',
      payload: { conversation_id: 'c', content: 'hi' },
    });
    const pushed = await peer.waitFor((f) => f.method === 'asap.send' && f.id === undefined);
    const reverse = conn.request({
      sender: 'urn:asap:agent:demo',
      recipient: CLIENT_URN,
      payload_type: 'StateQuery',
      payload: { task_id: 't' },
    });
    const asked = await peer.waitFor((f) => f.method === 'asap.send' && typeof f.id === 'string');
    const answer = {
      ...task('echo'),
      payload_type: 'TaskResponse',
      payload: { task_id: 't', status: 'completed' },
      correlation_id: asked.params.envelope.id,
    };
    const ack = {
      ...task('echo'),
      payload_type: 'MessageAck',
      payload: { original_envelope_id: pushed.params.envelope.id, status: 'received' },
    };
    peer.send([
      { jsonrpc: '2.0', method: 'asap.ack', params: { envelope: ack } },
      { jsonrpc: '2.0', result: { envelope: answer }, id: asked.id },
      { jsonrpc: '2.0', result: { envelope: answer }, id: 'nobody-asked' },
    ]);
    await push;
    expect((await reverse).correlation_id).toBe(asked.params.envelope.id);
    await peer.close();
    await waitFor(() => !conn.isOpen, 'the connection to close');
    await expect(conn.push(task('echo'))).rejects.toThrow('Connection is closed');
    expect(conn.send('{}')).toBe('closed');
  });
});

describe('ServerStore', () => {
  it('a store that is unavailable turns health 503 and its -32040 reaches callers on both bindings', async () => {
    const base = memoryStore();
    let down = false;
    const unavailable = () =>
      ASAPError.resourceExhausted('Shared state unavailable; retry later', { retry_after_ms: 1000 });
    const store: ServerStore = {
      ...base,
      get available() {
        return !down;
      },
      dedupe: {
        claim: (key, fp) => {
          if (down) throw unavailable();
          return base.dedupe.claim(key, fp);
        },
        complete: (key, outcome) => base.dedupe.complete(key, outcome),
        release: (key) => base.dedupe.release(key),
      },
    };
    const { url, wsUrl } = await startDemo({ store });
    const health = async () => (await fetch(`${url}/.well-known/asap/health`)).status;
    expect(await health()).toBe(200);
    down = true;
    expect(await health()).toBe(503);
    const http = (await (
      await fetch(`${url}/asap`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          jsonrpc: '2.0',
          method: 'asap.send',
          params: { envelope: task('echo') },
          id: 1,
        }),
      })
    ).json()) as Json;
    expect(http.error).toMatchObject({
      code: -32040,
      message: 'Shared state unavailable; retry later',
      data: { retry_after_ms: 1000 },
    });
    const peer = await connect(wsUrl);
    expect((await peer.call(task('echo'))).error).toMatchObject({
      code: -32040,
      data: { retry_after_ms: 1000 },
    });
    // Any other failure of the store stays opaque.
    store.dedupe.claim = () => {
      throw new Error('secret store detail');
    };
    const opaque = (await peer.call(task('echo'))).error;
    expect(opaque).toMatchObject({ code: -32603, message: 'Internal error' });
    expect(JSON.stringify(opaque)).not.toContain('secret');
    down = false;
    expect(await health()).toBe(200);
  });
});

describe('heartbeat sweep', () => {
  it('does not close as stale a connection the server stopped reading (in-flight cap)', async () => {
    const timers = new ManualTimers(Date.now());
    const { server, wsUrl } = await startDemo({
      timers,
      heartbeatIntervalMs: 1000,
      maxInFlightPerConnection: 2,
    });
    const peer = await connect(wsUrl);
    // Two long tasks fill the cap: the server stops reading this socket, so its pongs cannot arrive.
    for (const id of ['s1', 's2', 's3']) peer.request(task('sleep', { ms: 60_000 }), id);
    await waitFor(() => server.dispatcher.inFlight === 2, 'the cap to fill');
    await timers.tick(10_000);
    expect(peer.isOpen).toBe(true);
    expect(server.connections).toHaveLength(1);
    // Shut down on manual time: the drain deadline ends the sleeps.
    const closing = server.close();
    await timers.tick(20_000);
    await closing;
  });
});
