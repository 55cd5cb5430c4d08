/**
 * The Peer over an in-memory Channel: two peers wired back to back (a real
 * Channel implementation that delivers frames on the next microtask), time on
 * ManualTimers. Server connections and the WebSocket client run the same code
 * over real sockets in the server, client and chaos suites.
 */
import { describe, expect, it } from 'vitest';
import type { Channel, SendResult } from '../../src/core/channel.js';
import { abortError, answerEnvelope, Peer, type PeerOptions } from '../../src/core/peer.js';
import { ManualTimers } from '../../src/core/timers.js';
import { createEnvelope, createReply, type Envelope } from '../../src/protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ErrorCode,
  ProtocolError,
  RequestTimeoutError,
} from '../../src/protocol/errors.js';
import {
  decodeFrame,
  encodeBatch,
  encodeEnvelopeResult,
  encodeError,
  encodeNotification,
  type Frame,
  METHOD_ACK,
  METHOD_SEND,
  PING_FRAME,
  PONG_FRAME,
} from '../../src/protocol/jsonrpc.js';
import type { MessageAck } from '../../src/protocol/payloads.js';

const A = 'urn:asap:agent:a';
const B = 'urn:asap:agent:b';

/** One direction of an in-memory link: frames reach the other side on the next microtask. */
class Pipe implements Channel {
  readonly maxHeld = 2;
  isOpen = true;
  readonly sent: string[] = [];
  readonly held: { text: string; flush?: () => boolean }[] = [];
  closed = false;
  to: ((text: string) => void) | undefined;

  send(text: string, flush?: () => boolean): SendResult {
    if (this.closed) return 'closed';
    if (!this.isOpen) {
      if (this.held.length >= this.maxHeld) return 'full';
      this.held.push({ text, flush });
      return 'queued';
    }
    this.sent.push(text);
    queueMicrotask(() => this.to?.(text));
    return 'written';
  }

  drained(): undefined {
    return undefined;
  }

  /** Opens again: what was held goes out in order, skipping what its flush refuses. */
  reopen(): void {
    this.isOpen = true;
    for (const h of this.held.splice(0)) if (h.flush === undefined || h.flush()) this.send(h.text);
  }
}

interface Side {
  peer: Peer;
  pipe: Pipe;
  inbound: Frame[];
}

function side(opts: Partial<PeerOptions>, timers: ManualTimers, prefix: string): Side {
  const pipe = new Pipe();
  const inbound: Frame[] = [];
  const peer = new Peer(pipe, { idPrefix: prefix, inbound: (f) => inbound.push(f), timers, ...opts });
  return { peer, pipe, inbound };
}

function pair(a: Partial<PeerOptions> = {}, b: Partial<PeerOptions> = {}) {
  const timers = new ManualTimers(Date.now());
  const client = side(a, timers, 'c-');
  const server = side(b, timers, 's-');
  client.pipe.to = (t) => server.peer.receive(t);
  server.pipe.to = (t) => client.peer.receive(t);
  return { timers, client, server };
}

const flush = () => new Promise<void>((r) => setImmediate(r));

function task(extra: Partial<Envelope<object>> = {}): Envelope<object> {
  return {
    ...createEnvelope({
      sender: A,
      recipient: B,
      payload_type: 'TaskRequest',
      payload: { conversation_id: 'c', skill_id: 'echo', input: {} },
    }),
    ...extra,
  };
}

/** The request frame the server side got, and a reply bound to it. */
function lastRequest(s: Side): { id: string; envelope: Envelope<object> } {
  const f = s.inbound.at(-1);
  if (f?.kind !== 'request') throw new Error(`expected a request, got ${f?.kind}`);
  return { id: String(f.id), envelope: (f.params as { envelope: Envelope<object> }).envelope };
}

function reply(
  to: Envelope<object>,
  payloadType = 'TaskResponse',
  payload: object = { task_id: 't', status: 'completed' },
) {
  return createReply(to, payloadType, payload);
}

function ackOf(env: Envelope<object>, status: MessageAck['status'] = 'received', error?: string): string {
  return encodeNotification(METHOD_ACK, {
    envelope: createEnvelope({
      sender: env.recipient,
      recipient: env.sender,
      payload_type: 'MessageAck',
      payload: { original_envelope_id: env.id, status, ...(error ? { error } : {}) },
    }),
  });
}

describe('Peer: requests', () => {
  it('binds an answer to its request by correlation_id', async () => {
    const { client, server } = pair();
    const pending = client.peer.request(task());
    await flush();
    const { id, envelope } = lastRequest(server);
    expect(id).toBe('c-1');
    expect(client.peer.inFlight).toBe(1);
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope)));
    const answer = await pending;
    expect(answer.correlation_id).toBe(envelope.id);
    expect(client.peer.inFlight).toBe(0);
  });

  it('fails a request whose answer binds to another envelope, or carries none', async () => {
    const { client, server } = pair();
    const first = client.peer.request(task());
    const second = client.peer.request(task());
    await flush();
    const [r1, r2] = server.inbound.map((f) => f as Extract<Frame, { kind: 'request' }>);
    const other = task();
    server.pipe.send(encodeEnvelopeResult(r1!.id, reply(other)));
    server.pipe.send(encodeEnvelopeResult(r2!.id, { not: 'an envelope' }));
    const e1 = await first.catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(ProtocolError);
    expect((e1 as ProtocolError).message).toMatch(/correlation_id mismatch/);
    await expect(second).rejects.toThrow(/no valid envelope/);
  });

  it('fails with the error the other side answers', async () => {
    const { client, server } = pair();
    const pending = client.peer.request(task());
    await flush();
    server.pipe.send(
      encodeError(lastRequest(server).id, new ASAPError(ErrorCode.TaskNotFound, 'Task t-9 not found')),
    );
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ASAPError);
    expect((err as ASAPError).code).toBe(ErrorCode.TaskNotFound);
  });

  it('times out at its deadline on the injected timers, not before, and drops the late answer', async () => {
    const { timers, client, server } = pair({ requestTimeoutMs: 1000, resolutionMs: 100 });
    const pending = client.peer.request(task());
    let settled = false;
    pending.catch(() => {}).finally(() => (settled = true));
    await flush();
    timers.advance(900);
    await flush();
    expect(settled).toBe(false);
    timers.advance(200);
    await expect(pending).rejects.toBeInstanceOf(RequestTimeoutError);
    // The answer arrives after all: recognised as ours, dropped, not handed on.
    const before = client.inbound.length;
    server.pipe.send(encodeEnvelopeResult(lastRequest(server).id, reply(lastRequest(server).envelope)));
    await flush();
    expect(client.inbound.length).toBe(before);
  });

  it('takes a per-request deadline and an abort signal', async () => {
    const { timers, client } = pair({ requestTimeoutMs: 60_000 });
    const short = client.peer.request(task(), { timeoutMs: 50 });
    timers.advance(200);
    await expect(short).rejects.toBeInstanceOf(RequestTimeoutError);
    const ac = new AbortController();
    const aborted = client.peer.request(task(), { signal: ac.signal });
    ac.abort(new Error('user left'));
    await expect(aborted).rejects.toThrow(/Request aborted: user left/);
    await expect(client.peer.request(task(), { signal: ac.signal })).rejects.toThrow(/aborted/);
    const reason = ASAPError.resourceExhausted('mine');
    expect(abortError(AbortSignal.abort(reason))).toBe(reason);
    expect(abortError(AbortSignal.abort('text'))).toBeInstanceOf(ConnectionError);
  });

  it('streams chunks up to the final one, each chunk renewing the deadline', async () => {
    const { timers, client, server } = pair({ requestTimeoutMs: 1000 });
    const it = client.peer.stream(task())[Symbol.asyncIterator]();
    await flush();
    const { id, envelope } = lastRequest(server);
    for (let i = 0; i < 3; i++) {
      timers.advance(800);
      server.pipe.send(
        encodeEnvelopeResult(id, reply(envelope, 'TaskStream', { chunk: String(i), final: false })),
      );
      const r = await it.next();
      expect(r.value?.payload).toMatchObject({ chunk: String(i) });
    }
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope, 'TaskStream', { chunk: 'end', final: true })));
    expect((await it.next()).value?.payload).toMatchObject({ final: true });
    expect((await it.next()).done).toBe(true);
  });

  it('forgets a stream the consumer leaves early', async () => {
    const { client, server } = pair();
    const stream = client.peer.stream(task());
    const it = stream[Symbol.asyncIterator]();
    await flush();
    const { id, envelope } = lastRequest(server);
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope, 'TaskStream', { chunk: 'a', final: false })));
    await it.next();
    await it.return?.();
    expect(client.peer.inFlight).toBe(0);
  });
});

describe('Peer: acks (§6)', () => {
  it('adds requires_ack to the types §6 lists, only with acks on', () => {
    const { client } = pair();
    expect(client.peer.withAck(task()).requires_ack).toBe(true);
    const cancel = createEnvelope({
      sender: A,
      recipient: B,
      payload_type: 'TaskCancel',
      payload: { task_id: 't' },
    });
    expect(client.peer.withAck(cancel).requires_ack).toBe(true);
    const query = createEnvelope({
      sender: A,
      recipient: B,
      payload_type: 'StateQuery',
      payload: { task_id: 't' },
    });
    expect(client.peer.withAck(query).requires_ack).not.toBe(true);
    expect(pair({ ack: false }).client.peer.withAck(task()).requires_ack).not.toBe(true);
  });

  it('settles a send on its ack; a rejected ack fails it; health hears of both', async () => {
    const health = { ok: 0, bad: 0, recordSuccess: () => health.ok++, recordFailure: () => health.bad++ };
    const { client, server } = pair({ health });
    const env = task({ requires_ack: true });
    const sent = client.peer.send(env);
    await flush();
    expect(client.peer.unacknowledged).toBe(1);
    expect(server.inbound[0]).toMatchObject({ kind: 'notification', method: METHOD_SEND });
    server.pipe.send(ackOf(env));
    await sent;
    expect(health.ok).toBe(1);
    const env2 = task({ requires_ack: true });
    const refused = client.peer.send(env2);
    server.pipe.send(ackOf(env2, 'rejected', 'no thanks'));
    await expect(refused).rejects.toThrow('no thanks');
    // An ack for nothing we sent changes nothing.
    server.pipe.send(ackOf(task()));
    await flush();
    expect(client.peer.unacknowledged).toBe(0);
  });

  it('retransmits the same frame at the ack timeout with backoff, then gives up with a local timeout', async () => {
    const health = { bad: 0, recordSuccess: () => {}, recordFailure: () => health.bad++ };
    const { timers, client, server } = pair({
      ack: { timeoutMs: 1000, maxRetries: 2 },
      health,
      resolutionMs: 100,
    });
    const env = task({ requires_ack: true });
    const sent = client.peer.send(env);
    let failure: unknown;
    sent.catch((e: unknown) => (failure = e));
    await flush();
    const copies = () => server.inbound.filter((f) => f.kind === 'notification').length;
    expect(copies()).toBe(1);
    timers.advance(1000);
    await flush();
    expect(copies()).toBe(2);
    timers.advance(1900);
    await flush();
    expect(copies()).toBe(2);
    timers.advance(200);
    await flush();
    expect(copies()).toBe(3);
    timers.advance(4000);
    await flush();
    expect(failure).toBeInstanceOf(RequestTimeoutError);
    expect(health.bad).toBe(1);
    expect(client.pipe.sent.filter((t) => t === client.pipe.sent[0])).toHaveLength(3);
  });

  it('a request that requires an ack is retransmitted until answered', async () => {
    const { timers, client, server } = pair({ ack: { timeoutMs: 500, maxRetries: 3 } });
    const pending = client.peer.request(task({ requires_ack: true }));
    await flush();
    timers.advance(600);
    await flush();
    const requests = server.inbound.filter((f) => f.kind === 'request');
    expect(requests).toHaveLength(2);
    expect(requests[0]).toEqual(requests[1]);
    const { id, envelope } = lastRequest(server);
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope)));
    await pending;
    expect(client.peer.unacknowledged).toBe(0);
  });

  it('does not use up retries while the channel is closed', async () => {
    const { timers, client } = pair({ ack: { timeoutMs: 100, maxRetries: 1 } });
    const sent = client.peer.send(task({ requires_ack: true }));
    let failed = false;
    sent.catch(() => (failed = true));
    client.pipe.isOpen = false;
    timers.advance(10_000);
    await flush();
    expect(failed).toBe(false);
    expect(client.peer.unacknowledged).toBe(1);
  });

  it('answers in the result form when configured (pushes to reference clients)', async () => {
    const { client, server } = pair({ pushForm: 'result' });
    await client.peer.send(task());
    await flush();
    expect(server.inbound[0]).toMatchObject({ kind: 'success', id: null });
  });

  it('drops a malformed asap.ack and hands a batch to its owner whole', async () => {
    const { client, server } = pair();
    server.pipe.send(encodeNotification(METHOD_ACK, { envelope: { bogus: true } }));
    server.pipe.send(encodeBatch([encodeNotification(METHOD_SEND, { envelope: task() })]));
    await flush();
    expect(client.inbound.map((f) => f.kind)).toEqual(['batch']);
  });
});

describe('Peer: routing', () => {
  it('answers both heartbeat forms with a pong and drops pongs', async () => {
    const { client, server } = pair();
    server.pipe.send(PING_FRAME);
    server.pipe.send('{"type":"ping","ts":1}');
    server.pipe.send(PONG_FRAME);
    await flush();
    await flush();
    expect(client.pipe.sent).toEqual([PONG_FRAME, PONG_FRAME]);
    expect(client.inbound).toEqual([]);
  });

  it('hands on answers that are not for its requests (a result-form push, another id scheme)', async () => {
    const { client, server } = pair();
    server.pipe.send(encodeEnvelopeResult(null, task()));
    server.pipe.send(encodeError('other-7', ASAPError.invalidRequest('x')));
    await flush();
    expect(client.inbound.map((f) => f.kind)).toEqual(['success', 'error']);
  });

  it('lets a gate drop frames before routing (rate limits)', async () => {
    let open = false;
    const { client, server } = pair({ gate: () => open });
    server.pipe.send(encodeNotification(METHOD_SEND, { envelope: task() }));
    await flush();
    expect(client.inbound).toEqual([]);
    open = true;
    server.pipe.send(encodeNotification(METHOD_SEND, { envelope: task() }));
    await flush();
    expect(client.inbound).toHaveLength(1);
  });

  it('routes the items of a batch its owner splits', async () => {
    const { client, server } = pair();
    const pending = client.peer.request(task());
    await flush();
    const { id, envelope } = lastRequest(server);
    const frame = decodeFrame(encodeEnvelopeResult(id, reply(envelope)));
    if (frame.kind !== 'success') throw new Error('expected success');
    client.peer.route(frame);
    await pending;
  });
});

describe('Peer: connection changes', () => {
  it('holds requests while the channel is closed and skips those settled meanwhile', async () => {
    const { client, server } = pair();
    client.pipe.isOpen = false;
    const ac = new AbortController();
    const dropped = client.peer.request(task(), { signal: ac.signal });
    const kept = client.peer.request(task());
    ac.abort();
    await expect(dropped).rejects.toThrow(/aborted/);
    // The hold queue (2) is full with one settled and one live request.
    await expect(client.peer.request(task())).rejects.toMatchObject({
      code: ErrorCode.ResourceExhausted,
      data: { max_queue: 2 },
    });
    client.pipe.reopen();
    await flush();
    expect(server.inbound.filter((f) => f.kind === 'request')).toHaveLength(1);
    const { id, envelope } = lastRequest(server);
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope)));
    await kept;
  });

  it('resends in-flight requests after a reconnect (same frame), or fails them when told not to', async () => {
    const { client, server } = pair({ ack: { timeoutMs: 1000 } });
    const kept = client.peer.request(task());
    await flush();
    const first = client.pipe.sent[0];
    client.pipe.isOpen = false;
    client.peer.disconnected(new ConnectionError('dropped'), true);
    client.pipe.isOpen = true;
    client.peer.reconnected();
    expect(client.pipe.sent).toEqual([first, first]);
    await flush();
    const { id, envelope } = lastRequest(server);
    server.pipe.send(encodeEnvelopeResult(id, reply(envelope)));
    await kept;

    const failed = client.peer.request(task());
    client.peer.disconnected(new ConnectionError('dropped for good'), false);
    await expect(failed).rejects.toThrow('dropped for good');
  });

  it('close fails everything pending, ack waits included, and refuses what comes after', async () => {
    const { client } = pair();
    const req = client.peer.request(task());
    const sent = client.peer.send(task({ requires_ack: true }));
    client.peer.close(new ConnectionError('gone'));
    client.peer.close(new ConnectionError('twice'));
    await expect(req).rejects.toThrow('gone');
    await expect(sent).rejects.toThrow('gone');
    await expect(client.peer.request(task())).rejects.toThrow('gone');
    await expect(client.peer.send(task())).rejects.toThrow('gone');
    expect(client.peer.unacknowledged).toBe(0);
  });

  it('a closed channel refuses at once', async () => {
    const { client } = pair();
    client.pipe.closed = true;
    await expect(client.peer.request(task())).rejects.toThrow('Connection is closed');
    await expect(client.peer.send(task())).rejects.toThrow('Connection is closed');
  });
});

describe('answerEnvelope', () => {
  it('returns the envelope that binds, else the error', () => {
    const req = task();
    const ok = reply(req);
    expect(answerEnvelope({ envelope: ok }, req.id)).toEqual(ok);
    expect(answerEnvelope({ envelope: ok }, 'other')).toBeInstanceOf(ProtocolError);
    expect(answerEnvelope(null, req.id)).toBeInstanceOf(ProtocolError);
  });
});
