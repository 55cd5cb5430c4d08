/**
 * WebSocket binding (asap-wire.md §5, §6): server push (ctx.push, server.push, connection.push,
 * both push forms), the connection index, reverse requests and acknowledgements.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createEnvelope, createReply, type Envelope } from '../../src/protocol/envelope.js';
import { ASAPError, ConnectionError, ProtocolError, RequestTimeoutError } from '../../src/protocol/errors.js';
import { ASAPServer } from '../../src/server/server.js';
import {
  CLIENT_URN,
  cleanup,
  connect,
  DEMO_URN,
  type Json,
  type Peer,
  rpcNotification,
  rpcRequest,
  startDemo,
  task,
  trackServer,
  uniqueKey,
  waitFor,
} from './ws-helpers.js';

afterEach(cleanup);

const update = (percent: number) => ({
  payload_type: 'TaskUpdate',
  payload: { task_id: 'task-push', update_type: 'progress', status: 'working', progress: { percent } },
});

/** Opens a connection and identifies it as `urn` with one request. */
async function identified(wsUrl: string, urn: string): Promise<Peer> {
  const peer = await connect(wsUrl);
  const res = await peer.call(task('echo', {}, { sender: urn }), 'hello');
  expect(res.result).toBeDefined();
  return peer;
}

describe('server push', () => {
  it('ctx.push: TaskUpdate notifications arrive before the final response, percent rising', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const env = task('push', { count: 4 });
    const res = await peer.call(env, 'push-1');
    expect(res.result.envelope.payload).toMatchObject({ status: 'completed', result: { pushed: 4 } });
    const pushes = peer.frames.filter((f) => f.method === 'asap.send');
    expect(pushes).toHaveLength(4);
    const responseAt = peer.frames.indexOf(res);
    for (const p of pushes) {
      expect(p.id).toBeUndefined();
      expect(peer.frames.indexOf(p)).toBeLessThan(responseAt);
      expect(p.params.envelope).toMatchObject({
        payload_type: 'TaskUpdate',
        sender: DEMO_URN,
        recipient: CLIENT_URN,
        correlation_id: env.id,
        payload: { task_id: env.id, update_type: 'progress', status: 'working' },
      });
    }
    expect(pushes.map((p) => p.params.envelope.payload.progress.percent)).toEqual([25, 50, 75, 100]);
  });

  it('ctx.push fills sender, recipient and trace_id from the request when given a bare init', async () => {
    const server = trackServer(new ASAPServer({ manifest: { id: DEMO_URN }, rateLimit: 0 }));
    server.skill('notify', async (env, ctx) => {
      await ctx.push(update(10));
      return { task_id: env.id, status: 'completed', result: { manifest: ctx.manifest?.id ?? null } };
    });
    const { port } = await server.listen();
    const peer = await connect(`ws://127.0.0.1:${port}/asap/ws`);
    const res = await peer.call(task('notify', {}, { trace_id: 'trace-7' }), 'n');
    expect(res.result.envelope.payload.result).toEqual({ manifest: DEMO_URN });
    const push = peer.frames.find((f) => f.method === 'asap.send');
    expect(push.params.envelope).toMatchObject({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      trace_id: 'trace-7',
      payload_type: 'TaskUpdate',
    });
  });

  it('server.push reaches every connection indexed under the sender URN of its first valid envelope', async () => {
    const { server, wsUrl } = await startDemo();
    const urn = `urn:asap:agent:${uniqueKey('pushee').toLowerCase()}`;
    const other = 'urn:asap:agent:bystander';
    const a = await identified(wsUrl, urn);
    const b = await identified(wsUrl, urn);
    const c = await identified(wsUrl, other);
    // A later envelope with another sender does not move the connection to that URN.
    await a.call(task('echo', {}, { sender: 'urn:asap:agent:someone-else' }), 'later');
    expect(server.connectionsFor('urn:asap:agent:someone-else')).toEqual([]);
    expect(server.connectionsFor(urn)).toHaveLength(2);

    expect(await server.push(urn, update(42))).toBe(2);
    for (const peer of [a, b]) {
      const push = await peer.waitFor((f) => f.method === 'asap.send', 'the push');
      expect(push).toMatchObject({ jsonrpc: '2.0', method: 'asap.send' });
      expect(push.id).toBeUndefined();
      expect(push.params.envelope).toMatchObject({
        sender: DEMO_URN,
        recipient: urn,
        payload_type: 'TaskUpdate',
        payload: { progress: { percent: 42 } },
      });
      expect(typeof push.params.envelope.id).toBe('string');
    }
    // A complete envelope goes out as it is.
    const full = createEnvelope({ sender: DEMO_URN, recipient: other, ...update(7) });
    expect(await server.push(other, full)).toBe(1);
    const got = await c.waitFor((f) => f.method === 'asap.send', 'the full envelope');
    expect(got.params.envelope).toEqual(full);
    expect(a.frames.filter((f) => f.method === 'asap.send')).toHaveLength(1);

    expect(await server.push('urn:asap:agent:nobody', update(1))).toBe(0);
    await b.close();
    await waitFor(() => server.connectionsFor(urn).length === 1, 'b to leave the index');
    expect(await server.push(urn, update(99))).toBe(1);
  });

  it('connection.push sends to that one connection; a closed connection refuses push and request', async () => {
    const { server, wsUrl } = await startDemo();
    const peer = await identified(wsUrl, CLIENT_URN);
    const conn = server.connectionsFor(CLIENT_URN)[0]!;
    expect(conn.isOpen).toBe(true);
    const env = createEnvelope({ sender: DEMO_URN, recipient: CLIENT_URN, ...update(5) });
    await conn.push(env);
    const push = await peer.waitFor((f) => f.method === 'asap.send', 'the push');
    expect(push.params.envelope).toEqual(env);

    await peer.close();
    await waitFor(() => server.connections.length === 0, 'the connection to close');
    expect(conn.isOpen).toBe(false);
    await expect(conn.push(env)).rejects.toBeInstanceOf(ConnectionError);
    await expect(conn.request(env)).rejects.toBeInstanceOf(ConnectionError);
  });

  it("pushForm 'result' sends result frames with id null", async () => {
    const { server, wsUrl } = await startDemo({ pushForm: 'result' });
    const peer = await identified(wsUrl, CLIENT_URN);
    const env = createEnvelope({ sender: DEMO_URN, recipient: CLIENT_URN, ...update(64) });
    expect(await server.push(CLIENT_URN, env)).toBe(1);
    await waitFor(() => peer.raw.length === 2, 'the push');
    expect(peer.raw[1]).toBe(`{"jsonrpc":"2.0","result":{"envelope":${JSON.stringify(env)}},"id":null}`);

    // ctx.push uses the same form.
    const res = await peer.call(task('push', { count: 2 }), 'p');
    const pushes = peer.frames.filter((f) => f.id === null);
    expect(pushes).toHaveLength(3);
    expect(pushes.slice(1).map((f) => f.result.envelope.payload.progress.percent)).toEqual([50, 100]);
    expect(pushes.every((f) => f.method === undefined)).toBe(true);
    expect(peer.frames.indexOf(pushes[2])).toBeLessThan(peer.frames.indexOf(res));
  });

  it('server.connections lists remoteAddress, agentUrn, connectedAt and inFlight', async () => {
    const { server, wsUrl } = await startDemo();
    const a = await connect(wsUrl);
    const b = await identified(wsUrl, 'urn:asap:agent:lister');
    await waitFor(() => server.connections.length === 2, 'two connections');
    a.request(task('sleep', { ms: 150 }), 'busy');
    a.request(task('sleep', { ms: 150 }), 'busy2');
    await waitFor(() => server.connections.some((c) => c.inFlight === 2), 'two requests in flight');
    const list = server.connections;
    const busy = list.find((c) => c.agentUrn === CLIENT_URN)!;
    const idle = list.find((c) => c.agentUrn === 'urn:asap:agent:lister')!;
    expect(busy).toMatchObject({ remoteAddress: '127.0.0.1', inFlight: 2 });
    expect(idle).toMatchObject({ remoteAddress: '127.0.0.1', inFlight: 0 });
    expect(busy.id).not.toBe(idle.id);
    for (const c of list) {
      expect(c.connectedAt).toBeInstanceOf(Date);
      expect(c.connectedAt.getTime()).toBeLessThanOrEqual(Date.now());
    }
    await a.response('busy2');
    await waitFor(() => server.connections.every((c) => c.inFlight === 0), 'in-flight to drain');
    await b.close();
    await waitFor(() => server.connections.length === 1, 'b to be gone');
  });
});

describe('reverse requests', () => {
  async function setup(): Promise<{ peer: Peer; server: ASAPServer; env: Envelope<object> }> {
    const { server, wsUrl } = await startDemo();
    const peer = await identified(wsUrl, CLIENT_URN);
    const env = createEnvelope<object>({
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'rev', skill_id: 'client-skill', input: { q: 1 } },
    });
    return { peer, server, env };
  }

  const nextRequest = (peer: Peer) =>
    peer.waitFor((f) => f.method === 'asap.send' && f.id !== undefined, 'the reverse request');

  it('sends asap.send with an id and resolves with the response bound by correlation_id', async () => {
    const { peer, server, env } = await setup();
    const pending = server.connectionsFor(CLIENT_URN)[0]!.request(env, { timeoutMs: 5000 });
    const req = await nextRequest(peer);
    expect(req.jsonrpc).toBe('2.0');
    expect(typeof req.id).toBe('string');
    expect(req.params.envelope).toEqual(env);
    const reply = createReply(env, 'TaskResponse', {
      task_id: env.id,
      status: 'completed',
      result: { a: 1 },
    });
    peer.send({ jsonrpc: '2.0', result: { envelope: reply }, id: req.id });
    await expect(pending).resolves.toEqual(reply);
  });

  it('builds the envelope from an init, and keeps several requests apart by id', async () => {
    const { peer, server } = await setup();
    const conn = server.connectionsFor(CLIENT_URN)[0]!;
    const init = {
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'rev', skill_id: 's', input: {} },
    };
    const one = conn.request(init);
    const two = conn.request(init, { timeoutMs: 5000 });
    const reqs = await peer.waitForCount(
      (f) => f.method === 'asap.send' && f.id !== undefined,
      2,
      'requests',
    );
    expect(reqs[0].id).not.toBe(reqs[1].id);
    expect(reqs[0].params.envelope.id).not.toBe(reqs[1].params.envelope.id);
    // Answer in reverse order.
    for (const r of [reqs[1], reqs[0]]) {
      const reply = createReply(r.params.envelope, 'TaskResponse', { task_id: 'x', status: 'completed' });
      peer.send({ jsonrpc: '2.0', result: { envelope: reply }, id: r.id });
    }
    expect((await one).correlation_id).toBe(reqs[0].params.envelope.id);
    expect((await two).correlation_id).toBe(reqs[1].params.envelope.id);
  });

  it('rejects with ProtocolError on a wrong correlation_id or a result without an envelope', async () => {
    const { peer, server, env } = await setup();
    const conn = server.connectionsFor(CLIENT_URN)[0]!;
    const wrong = conn.request(env, { timeoutMs: 5000 });
    const req = await nextRequest(peer);
    const reply = createReply({ ...env, id: 'someone-else' }, 'TaskResponse', {
      task_id: 't',
      status: 'completed',
    });
    peer.send({ jsonrpc: '2.0', result: { envelope: reply }, id: req.id });
    await expect(wrong).rejects.toBeInstanceOf(ProtocolError);

    const from = peer.frames.length;
    const empty = conn.request(createEnvelope({ ...env, id: undefined, timestamp: undefined }), {
      timeoutMs: 5000,
    });
    const req2 = await peer.waitFor(
      (f) => f.method === 'asap.send' && f.id !== undefined,
      'request 2',
      5000,
      from,
    );
    peer.send({ jsonrpc: '2.0', result: {}, id: req2.id });
    await expect(empty).rejects.toBeInstanceOf(ProtocolError);

    const from3 = peer.frames.length;
    const nullResult = conn.request(env, { timeoutMs: 5000 });
    const req3 = await peer.waitFor(
      (f) => f.method === 'asap.send' && f.id !== undefined,
      'request 3',
      5000,
      from3,
    );
    peer.send({ jsonrpc: '2.0', result: null, id: req3.id });
    await expect(nullResult).rejects.toBeInstanceOf(ProtocolError);
    expect(peer.isOpen).toBe(true);
  });

  it('rejects with the code of an error response', async () => {
    const { peer, server, env } = await setup();
    const pending = server.connectionsFor(CLIENT_URN)[0]!.request(env, { timeoutMs: 5000 });
    const req = await nextRequest(peer);
    peer.send({ jsonrpc: '2.0', error: { code: -32012, message: 'No handler', data: { x: 1 } }, id: req.id });
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ASAPError);
    expect(err).toMatchObject({ code: -32012, message: 'No handler', data: { x: 1 } });
  });

  it('rejects with RequestTimeoutError when no answer comes, and a late answer is ignored', async () => {
    const { peer, server, env } = await setup();
    const pending = server.connectionsFor(CLIENT_URN)[0]!.request(env, { timeoutMs: 40 });
    const req = await nextRequest(peer);
    await expect(pending).rejects.toBeInstanceOf(RequestTimeoutError);
    // Late, unknown-id and id-null responses are dropped without a reply and without harm.
    peer.send({ jsonrpc: '2.0', result: { envelope: createReply(env, 'TaskResponse', {}) }, id: req.id });
    peer.send({ jsonrpc: '2.0', result: {}, id: 'srv-req-999' });
    peer.send({ jsonrpc: '2.0', error: { code: -32603, message: 'x' }, id: null });
    const res = await peer.call(task('echo', { ok: 1 }), 'after');
    expect(res.result.envelope.payload.result.echo).toEqual({ ok: 1 });
    expect(peer.frames.filter((f) => f.error !== undefined)).toHaveLength(0);
  });

  it('rejects with ConnectionError when the connection closes first', async () => {
    const { peer, server, env } = await setup();
    const pending = server.connectionsFor(CLIENT_URN)[0]!.request(env, { timeoutMs: 5000 });
    await nextRequest(peer);
    peer.ws.close(4000, 'bye');
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as Error).message).toContain('4000 bye');
  });

  it('rejects with ConnectionError when the client drops without a close frame', async () => {
    const { peer, server, env } = await setup();
    const pending = server.connectionsFor(CLIENT_URN)[0]!.request(env);
    await nextRequest(peer);
    peer.ws.terminate();
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as Error).message).toContain('1006');
  });
});

describe('acknowledgements (§6)', () => {
  const acks = (peer: Peer) => peer.frames.filter((f) => f.method === 'asap.ack');

  it("acks an envelope with requires_ack 'received' before its response", async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const env = task('echo', { a: 1 }, { requires_ack: true, trace_id: 'tr-1' });
    const res = await peer.call(env, 'ra');
    const [ack] = acks(peer);
    expect(acks(peer)).toHaveLength(1);
    expect(ack.id).toBeUndefined();
    expect(ack.params.envelope).toMatchObject({
      payload_type: 'MessageAck',
      sender: DEMO_URN,
      recipient: CLIENT_URN,
      asap_version: env.asap_version,
      correlation_id: env.id,
      payload: { original_envelope_id: env.id, status: 'received' },
    });
    expect(ack.params.envelope.payload.error).toBeUndefined();
    expect(peer.frames.indexOf(ack)).toBeLessThan(peer.frames.indexOf(res));

    // Without requires_ack: no ack.
    await peer.call(task('echo'), 'plain');
    expect(acks(peer)).toHaveLength(1);
  });

  it("acks a refused envelope 'rejected' with an error", async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const noHandler = createEnvelope({
      sender: CLIENT_URN,
      recipient: DEMO_URN,
      payload_type: 'StateQuery',
      payload: { task_id: 't' },
      requires_ack: true,
    });
    const invalid = { ...task('echo', {}, { requires_ack: true }), payload: { skill_id: 'echo' } };
    const stale = task(
      'echo',
      {},
      { requires_ack: true, timestamp: new Date(Date.now() - 3600_000).toISOString() },
    );
    const cases: [Json, string, number][] = [
      [noHandler, 'nh', -32012],
      [invalid, 'iv', -32602],
      [stale, 'st', -32002],
    ];
    for (const [env, id, code] of cases) {
      const res = await peer.call(env, id);
      expect(res.error.code).toBe(code);
      const ack = acks(peer).find((a) => a.params.envelope.payload.original_envelope_id === env.id);
      expect(ack.params.envelope).toMatchObject({
        sender: DEMO_URN,
        recipient: CLIENT_URN,
        correlation_id: env.id,
        payload: { status: 'rejected' },
      });
      expect(typeof ack.params.envelope.payload.error).toBe('string');
      expect(ack.params.envelope.payload.error.length).toBeGreaterThan(0);
      expect(peer.frames.indexOf(ack)).toBeLessThan(peer.frames.indexOf(res));
    }
    expect(acks(peer)).toHaveLength(3);
  });

  it('acks a duplicate envelope id again, processes it once, and answers both with the same result', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const key = uniqueKey('dup');
    const env = task('count', { key }, { requires_ack: true });
    const first = await peer.call(env, 'd1');
    const second = await peer.call(env, 'd2');
    expect(first.result.envelope.payload.result).toEqual({ key, count: 1 });
    expect(second.result.envelope).toEqual(first.result.envelope);
    const received = acks(peer).filter((a) => a.params.envelope.payload.original_envelope_id === env.id);
    expect(received.map((a) => a.params.envelope.payload.status)).toEqual(['received', 'received']);
    // A concurrent duplicate of a running envelope waits for the same outcome.
    const slow = task('sleep', { ms: 40 }, { requires_ack: true });
    peer.request(slow, 's1');
    peer.request(slow, 's2');
    const [s1, s2] = await Promise.all([peer.response('s1'), peer.response('s2')]);
    expect(s2.result.envelope).toEqual(s1.result.envelope);

    const fresh = await peer.call(task('count', { key }), 'd3');
    expect(fresh.result.envelope.payload.result).toEqual({ key, count: 2 });
  });

  it("with processedAcks sends 'processed' after the handler, after 'received'", async () => {
    const { wsUrl } = await startDemo({ processedAcks: true });
    const peer = await connect(wsUrl);
    const env = task('sleep', { ms: 10 }, { requires_ack: true });
    const res = await peer.call(env, 'pa');
    const statuses = acks(peer).map((a) => a.params.envelope.payload.status);
    expect(statuses).toEqual(['received', 'processed']);
    const processed = acks(peer)[1];
    expect(processed.params.envelope).toMatchObject({ correlation_id: env.id, recipient: CLIENT_URN });
    expect(peer.frames.indexOf(processed)).toBeLessThan(peer.frames.indexOf(res));
  });

  it('acks a notification with requires_ack even though it gets no response', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const env = task('echo', {}, { requires_ack: true });
    peer.send(rpcNotification(env));
    const ack = await peer.waitFor((f) => f.method === 'asap.ack', 'the ack');
    expect(ack.params.envelope.payload).toEqual({ original_envelope_id: env.id, status: 'received' });
    await peer.call(task('echo'), 'after');
    expect(peer.frames).toHaveLength(2);
  });

  it('takes asap.ack notifications from the client without answering them', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const ack = createEnvelope({
      sender: CLIENT_URN,
      recipient: DEMO_URN,
      payload_type: 'MessageAck',
      payload: { original_envelope_id: 'unknown-id', status: 'received' },
    });
    peer.send({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: ack } });
    peer.send({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: { broken: true } } });
    peer.send(rpcRequest(task('echo'), 'after'));
    await peer.response('after');
    expect(peer.frames).toHaveLength(1);
  });
});
