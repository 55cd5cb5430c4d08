/**
 * asap-wire.md §10, trust boundaries: each defect a hostile peer could exploit, on real sockets.
 * Every test here failed on the server before the §10 work (noted per test).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryDedupeStore } from '../../src/core/dedupe.js';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { LocalErrorCode } from '../../src/protocol/errors.js';
import { MAX_JSON_DEPTH } from '../../src/protocol/jsonrpc.js';
import { killRemotePeers, RemotePeer } from '../support/remote-peer.js';
import {
  CLIENT_URN,
  cleanup,
  connect,
  type Json,
  rpcRequest,
  startDemo,
  task,
  uniqueKey,
  waitFor,
} from './ws-helpers.js';

afterEach(async () => {
  killRemotePeers();
  await cleanup();
});

async function timed<T>(f: () => Promise<T>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

describe('§10 fairness: no stream or push loop holds the event loop', () => {
  // The hog reads from another process, as a remote peer would: it drains the socket at once, so
  // the send buffer never fills and only the fairness budget gives others a turn.
  // Before: health probes timed out (> 10 s) and other connections got nothing.
  it('while one connection streams 1,000,000 chunks, 20 echoes and 10 health probes answer within 1 s', async () => {
    const { url, wsUrl } = await startDemo();
    const other = await connect(wsUrl);
    const hog = new RemotePeer();
    await hog.open(wsUrl);
    await hog.send([rpcRequest(task('stream', { chunks: 1_000_000, interval_ms: 0 }), 'hog')]);
    await hog.until((s) => s.received > 1000, 'the stream to be under way');
    const worst = { echo: 0, health: 0 };
    const started = performance.now();
    for (let i = 0; i < 20; i++) {
      const ms = await timed(async () => {
        const r = await other.call(task('echo', { i }), `e${i}`, 20_000);
        expect(r.result.envelope.payload.result.echo).toEqual({ i });
      });
      worst.echo = Math.max(worst.echo, ms);
    }
    for (let i = 0; i < 10; i++) {
      const ms = await timed(async () => {
        const res = await fetch(`${url}/.well-known/asap/health`, { signal: AbortSignal.timeout(20_000) });
        expect(res.status).toBe(200);
      });
      worst.health = Math.max(worst.health, ms);
    }
    const during = await hog.stats();
    expect(during.last).not.toContain('"final":true'); // still streaming: the answers came during it
    expect(worst.echo).toBeLessThan(1000);
    expect(worst.health).toBeLessThan(1000);
    expect(performance.now() - started).toBeLessThan(5000); // all 30 together
  }, 60_000);

  // Before: 200,001 frames went out on a 1 s deadline; the deadline never fired.
  it('a stream that never awaits I/O ends at its deadline with -32033', async () => {
    const { wsUrl } = await startDemo();
    const hog = new RemotePeer();
    await hog.open(wsUrl);
    const env = task('stream', { chunks: 1_000_000, interval_ms: 0 });
    env.payload.config = { timeout_seconds: 1 };
    const t0 = performance.now();
    await hog.send([rpcRequest(env, 's1')]);
    const end = await hog.until(
      (s) => s.last.includes('"error"') || s.last.includes('"final":true'),
      'the end',
      30_000,
    );
    expect(JSON.parse(end.last)).toMatchObject({ id: 's1', error: { code: -32033 } });
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(end.received).toBeLessThan(1_000_000);
  }, 60_000);

  it('a push loop ends at its deadline with -32033, and pushes stop', async () => {
    const { wsUrl } = await startDemo();
    const hog = new RemotePeer();
    await hog.open(wsUrl);
    const env = task('push', { count: 1_000_000 });
    env.payload.config = { timeout_seconds: 1 };
    const t0 = performance.now();
    await hog.send([rpcRequest(env, 'p1')]);
    const end = await hog.until((s) => s.last.includes('"id":"p1"'), 'the answer', 30_000);
    expect(JSON.parse(end.last)).toMatchObject({ id: 'p1', error: { code: -32033 } });
    expect(performance.now() - t0).toBeLessThan(5000);
    await new Promise((r) => setTimeout(r, 200));
    expect((await hog.stats()).received).toBe(end.received);
    expect(end.received).toBeLessThan(1_000_000);
  }, 60_000);

  it('a stream stops when its peer goes away', async () => {
    const { server, wsUrl } = await startDemo();
    const hog = new RemotePeer();
    await hog.open(wsUrl);
    await hog.send([rpcRequest(task('stream', { chunks: 1_000_000, interval_ms: 0 }), 'gone')]);
    await hog.until((s) => s.received > 100, 'the stream to be under way');
    await hog.closeSocket();
    await waitFor(() => server.dispatcher.inFlight === 0, 'the stream to stop', 5000);
  });

  it('caps the demo skills: chunks and count over 1,000,000 get -32602', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const s = await peer.call(task('stream', { chunks: 1_000_001 }), 's');
    expect(s.error.code).toBe(-32602);
    expect(s.error.data.validation_errors[0].loc).toEqual(['payload', 'input', 'chunks']);
    const p = await peer.call(task('push', { count: 3_000_000 }), 'p');
    expect(p.error.code).toBe(-32602);
    const t = await peer.call(task('push', { count: 1, to: 'not a urn' }), 't');
    expect(t.error.code).toBe(-32602);
  });
});

describe('§10 dedupe scope: per caller, with a content fingerprint', () => {
  // Before: dedupe was keyed by envelope id alone; the second sender got the first one's result.
  it("another sender reusing an envelope id gets its own answer, never the first caller's", async () => {
    const { wsUrl } = await startDemo();
    const victim = await connect(wsUrl);
    const other = await connect(wsUrl);
    const secret = task('echo', { secret: 's3cr3t' });
    const a = await victim.call(secret, 'v');
    expect(a.result.envelope.payload.result.echo).toEqual({ secret: 's3cr3t' });
    const stolen = { ...secret, sender: 'urn:asap:agent:thief', payload: { ...secret.payload, input: {} } };
    const b = await other.call(stolen, 't');
    expect(b.result.envelope.payload.result.echo).toEqual({});
    expect(JSON.stringify(b)).not.toContain('s3cr3t');
  });

  it('pre-empting: an id claimed first by another caller does not block the victim', async () => {
    const { wsUrl } = await startDemo();
    const victim = await connect(wsUrl);
    const thief = await connect(wsUrl);
    const env = task('count', { key: uniqueKey() });
    await thief.call({ ...env, sender: 'urn:asap:agent:thief' }, 'first');
    const mine = await victim.call(env, 'mine');
    expect(mine.result.envelope.payload.result.count).toBe(2);
    expect(mine.result.envelope.recipient).toBe(CLIENT_URN);
  });

  it('two principals with the same sender and id are two envelopes', async () => {
    const verifyToken = (t: string) => (t === 'a' || t === 'b' ? { id: `user-${t}` } : null);
    const { wsUrl } = await startDemo({ verifyToken });
    const a = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer a' } });
    const b = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer b' } });
    const env = task('count', { key: uniqueKey() });
    expect((await a.call(env, 1)).result.envelope.payload.result.count).toBe(1);
    expect((await b.call(env, 1)).result.envelope.payload.result.count).toBe(2);
    // Each principal's own resend is answered from dedupe.
    expect((await a.call(env, 2)).result.envelope.payload.result.count).toBe(1);
  });

  it('the same caller reusing an id with other content is refused -32600, not answered or run', async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const key = uniqueKey();
    const env = task('count', { key });
    expect((await peer.call(env, 1)).result.envelope.payload.result.count).toBe(1);
    const reused = { ...env, payload: { ...env.payload, input: { key, other: true } } };
    const r = await peer.call(reused, 2);
    expect(r.error).toMatchObject({
      code: -32600,
      data: { reason: 'envelope id reused with different content' },
    });
    // Same content, keys in another order: a resend, answered from dedupe.
    const reordered = { ...env, payload: { input: { key }, skill_id: 'count', conversation_id: 'conv-ws' } };
    expect((await peer.call(reordered, 3)).result.envelope.payload.result.count).toBe(1);
    expect((await peer.call(task('count', { key }), 4)).result.envelope.payload.result.count).toBe(2);
  });

  it("nonces are per caller: one caller cannot burn another caller's nonce", async () => {
    const { wsUrl } = await startDemo();
    const peer = await connect(wsUrl);
    const a = await peer.call(task('echo', {}, { extensions: { nonce: 'n-1' } }), 1);
    expect(a.result).toBeDefined();
    const b = await peer.call(
      task('echo', {}, { sender: 'urn:asap:agent:other', extensions: { nonce: 'n-1' } }),
      2,
    );
    expect(b.result).toBeDefined();
    const c = await peer.call(task('echo', {}, { extensions: { nonce: 'n-1' } }), 3);
    expect(c.error.code).toBe(-32003);
  });
});

describe('§10 dedupe window: by time, within byte budgets', () => {
  // Before: 10,000 entries; the same id after 10,001 others ran twice.
  it('12,000 distinct ids, then the first again: answered from dedupe', async () => {
    const { url } = await startDemo();
    const key = uniqueKey();
    const first = task('count', { key });
    const post = (body: string) =>
      fetch(`${url}/asap`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then(
        (r) => r.json() as Promise<Json>,
      );
    expect((await post(rpcRequest(first, 0))).result.envelope.payload.result.count).toBe(1);
    // In batches of 50 (the batch limit), 12,000 other envelopes.
    for (let b = 0; b < 240; b++) {
      const batch = Array.from({ length: 50 }, (_, i) => ({
        jsonrpc: '2.0',
        method: 'asap.send',
        params: { envelope: task('echo', { b, i }) },
        id: i,
      }));
      const answers = (await post(JSON.stringify(batch))) as Json[];
      expect(answers).toHaveLength(50);
    }
    const again = await post(rpcRequest(first, 1));
    expect(again.result.envelope.payload.result.count).toBe(1);
  }, 60_000);

  // Before: an id counted in the id budget at its full length (the frame size is its only bound),
  // so each 100,000-character id pushed every other caller's ids out and a repeat of theirs ran again.
  it("a caller's huge envelope ids do not push other callers' ids out of the window", async () => {
    const dedupe = new MemoryDedupeStore({ maxIdBytes: 100_000 });
    const { wsUrl } = await startDemo({ dedupe });
    const honest = await connect(wsUrl);
    const hostile = await connect(wsUrl);
    const mine = task('count', { key: uniqueKey() });
    expect((await honest.call(mine, 'a')).result.envelope.payload.result.count).toBe(1);
    const theirKey = uniqueKey();
    const huge = (i: number) =>
      task(
        'count',
        { key: theirKey },
        { id: `${i}${'x'.repeat(100_000)}`, sender: 'urn:asap:agent:hostile' },
      );
    for (let i = 0; i < 10; i++)
      expect((await hostile.call(huge(i), `h${i}`)).result.envelope.payload.result.count).toBe(i + 1);
    expect((await honest.call(mine, 'b')).result.envelope.payload.result.count).toBe(1); // not run again
    // Their own long ids are still remembered: the same envelope again is not run (its reply, which
    // repeats the id, is over the 64 KiB kept per outcome, so it is answered as no longer held).
    const again = await hostile.call(huge(3), 'again');
    expect(again.error).toMatchObject({
      code: -32000,
      data: { reason: 'duplicate; outcome no longer held' },
    });
    expect(dedupe.snapshot()).toMatchObject({ ids: 11, idsEvicted: 0 });
  });

  it('an outcome dropped by the budget is answered "outcome no longer held", never run again', async () => {
    const dedupe = new MemoryDedupeStore({ maxOutcomesBytes: 2000 });
    const { wsUrl } = await startDemo({ dedupe });
    const peer = await connect(wsUrl);
    const key = uniqueKey();
    const first = task('count', { key });
    expect((await peer.call(first, 'a')).result.envelope.payload.result.count).toBe(1);
    for (let i = 0; i < 10; i++) await peer.call(task('echo', { pad: 'x'.repeat(300) }), `p${i}`);
    const r = await peer.call(first, 'b');
    expect(r.error).toMatchObject({ code: -32000, data: { reason: 'duplicate; outcome no longer held' } });
    expect((await peer.call(task('count', { key }), 'c')).result.envelope.payload.result.count).toBe(2);
    expect(dedupe.snapshot().outcomesDropped).toBeGreaterThan(0);
  });
});

describe('§10 errors: nothing from the runtime reaches a peer', () => {
  const deep = (n: number, leaf = '1') => '{"a":'.repeat(n) + leaf + '}'.repeat(n);

  // Before: -32603 "Maximum call stack size exceeded" for both.
  for (const depth of [100_000, 5000]) {
    it(`a ${depth}-deep input gets a clear -32600 on WebSocket and HTTP`, async () => {
      const { url, wsUrl } = await startDemo();
      const env = JSON.stringify(task('echo', {}));
      const frame = `{"jsonrpc":"2.0","method":"asap.send","id":"deep","params":{"envelope":${env.replace('"input":{}', `"input":${deep(depth)}`)}}}`;
      const peer = await connect(wsUrl);
      peer.send(frame);
      const r = await peer.response('deep');
      expect(r.error.code).toBe(-32600);
      expect(r.error.message).toContain(`deeper than ${MAX_JSON_DEPTH} levels`);
      const res = await fetch(`${url}/asap`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: frame,
      });
      const h = (await res.json()) as Json;
      expect(h.error.code).toBe(-32600);
      expect(JSON.stringify(h)).not.toMatch(/stack|Maximum/);
      // The server is unharmed.
      expect((await peer.call(task('echo'), 'ok')).result).toBeDefined();
    });
  }

  it('everything up to the maximum depth works end to end', async () => {
    const { url, wsUrl } = await startDemo();
    // Frame → params → envelope → payload, then the input's own levels (itself included).
    const inputDepth = MAX_JSON_DEPTH - 4;
    const input = JSON.parse(deep(inputDepth));
    const peer = await connect(wsUrl);
    const r = await peer.call(task('echo', input), 'max');
    expect(r.result.envelope.payload.result.echo).toEqual(input);
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: rpcRequest(task('echo', input), 1),
    });
    expect(((await res.json()) as Json).result.envelope.payload.result.echo).toEqual(input);
    const over = await peer.call(task('echo', JSON.parse(deep(inputDepth + 1))), 'over');
    expect(over.error.code).toBe(-32600);
  });
});

describe('§10 sender binding', () => {
  const verifyToken = (t: string) =>
    t === 'alice'
      ? { id: 'alice', agents: ['urn:asap:agent:alice'] }
      : t === 'bob'
        ? { id: 'bob', agents: ['urn:asap:agent:bob'] }
        : null;

  // Before: any envelope sender was accepted, and the connection indexed under it.
  it('refuses an envelope whose sender the principal may not speak for (-32602, 403), on WS and HTTP', async () => {
    const { url, wsUrl } = await startDemo({ verifyToken });
    const alice = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer alice' } });
    const spoof = task('echo', {}, { sender: 'urn:asap:agent:bob', requires_ack: true });
    const r = await alice.call(spoof, 1);
    expect(r.error).toMatchObject({
      code: -32602,
      message: 'Sender does not match authenticated identity',
      data: { error: 'Sender does not match authenticated identity', status_code: 403 },
    });
    const ack = alice.frames.find((f) => f.method === 'asap.ack');
    expect(ack.params.envelope.payload).toMatchObject({ status: 'rejected', original_envelope_id: spoof.id });
    const ok = await alice.call(task('echo', {}, { sender: 'urn:asap:agent:alice' }), 2);
    expect(ok.result.envelope.recipient).toBe('urn:asap:agent:alice');
    const res = await fetch(`${url}/asap`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer alice' },
      body: rpcRequest(task('echo', {}, { sender: 'urn:asap:agent:bob' }), 1),
    });
    expect(((await res.json()) as Json).error.data.status_code).toBe(403);
  });

  // Before: the connection was indexed under whatever sender its first envelope named.
  it('indexes a connection for push only under URNs it may speak for', async () => {
    const { server, wsUrl } = await startDemo({ verifyToken });
    const alice = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer alice' } });
    const bob = await connect(wsUrl, undefined, { headers: { authorization: 'Bearer bob' } });
    await alice.call(task('echo', {}, { sender: 'urn:asap:agent:bob' }), 1); // refused: no claim on bob
    await bob.call(task('echo', {}, { sender: 'urn:asap:agent:bob' }), 1);
    expect(server.connectionsFor('urn:asap:agent:bob')).toHaveLength(1);
    const reached = await server.push('urn:asap:agent:bob', {
      payload_type: 'TaskUpdate',
      payload: { task_id: 't', update_type: 'progress', status: 'working' },
    });
    expect(reached).toBe(1);
    await bob.waitFor((f) => f.method === 'asap.send', 'the push');
    expect(alice.frames.some((f) => f.method === 'asap.send')).toBe(false);
  });
});

describe('server.push to an agent with several connections', () => {
  const update = (n: number) => ({
    payload_type: 'TaskCancel',
    payload: { task_id: `t-${n}`, reason: 'test' },
  });

  // Before: the second connection's ack waiter overwrote the first's; that promise never settled.
  it('goes to every connection and settles with how many acknowledged', async () => {
    const { server, wsUrl } = await startDemo();
    const a = await connect(wsUrl);
    const b = await connect(wsUrl);
    for (const p of [a, b]) await p.call(task('echo'), 'hello');
    for (const p of [a, b]) {
      p.ws.on('message', (data: Buffer) => {
        const f = JSON.parse(data.toString());
        if (f.method === 'asap.send' && f.params.envelope.requires_ack) {
          const e = f.params.envelope;
          p.send({
            jsonrpc: '2.0',
            method: 'asap.ack',
            params: {
              envelope: createEnvelope({
                sender: e.recipient,
                recipient: e.sender,
                payload_type: 'MessageAck',
                correlation_id: e.id,
                payload: { original_envelope_id: e.id, status: 'received' },
              }),
            },
          });
        }
      });
    }
    expect(await server.push(CLIENT_URN, update(1))).toBe(2);
  });

  it('counts only the connections that acknowledged; rejects when none did', async () => {
    const { server, wsUrl } = await startDemo({ ack: { timeoutMs: 50, maxRetries: 1, checkIntervalMs: 20 } });
    const silent = await connect(wsUrl);
    await silent.call(task('echo'), 'hello');
    await expect(server.push(CLIENT_URN, update(2))).rejects.toMatchObject({
      code: LocalErrorCode.RequestTimeout,
    });
    expect(await server.push('urn:asap:agent:nobody', update(3))).toBe(0);
  });

  it('the demo push skill: requires_ack and to, from outside', async () => {
    const { wsUrl } = await startDemo();
    const target = 'urn:asap:agent:listener';
    const l1 = await connect(wsUrl);
    const l2 = await connect(wsUrl);
    for (const p of [l1, l2]) {
      await p.call(task('echo', {}, { sender: target }), 'hello');
      p.ws.on('message', (data: Buffer) => {
        const f = JSON.parse(data.toString());
        if (f.method !== 'asap.send') return;
        const e = f.params.envelope;
        const ack = createEnvelope({
          sender: e.recipient,
          recipient: e.sender,
          payload_type: 'MessageAck',
          correlation_id: e.id,
          payload: { original_envelope_id: e.id, status: 'received' },
        });
        p.send({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: ack } });
      });
    }
    const caller = await connect(wsUrl);
    const r = await caller.call(task('push', { count: 3, to: target, requires_ack: true }), 'push', 10_000);
    expect(r.result.envelope.payload.result).toEqual({ pushed: 6, acked: 6 });
    const toSelf = await caller.call(task('push', { count: 2, to: target }), 'push2');
    expect(toSelf.result.envelope.payload.result).toEqual({ pushed: 4 });
  });
});
