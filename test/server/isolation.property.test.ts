/**
 * asap-wire.md §10, as a property: no sequence of frames from one connection makes another
 * connection's request go unanswered. One server (with the rate limit and a small frame limit
 * on, so those closes are exercised too), a fresh hostile connection per run.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEnvelope } from '../../src/protocol/envelope.js';
import { killRemotePeers, RemotePeer } from '../support/remote-peer.js';
import {
  cleanup,
  connect,
  type Peer,
  rpcNotification,
  rpcRequest,
  type Started,
  startDemo,
  task,
} from './ws-helpers.js';

let demo: Started;
let bystander: Peer;
let hostile: RemotePeer;

beforeAll(async () => {
  demo = await startDemo({ rateLimit: 200, maxMessageBytes: 64 * 1024, slowConsumerGraceMs: 500 });
  bystander = await connect(demo.wsUrl);
  hostile = new RemotePeer();
});
afterAll(async () => {
  killRemotePeers();
  await cleanup();
});

const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
const id = fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.constant(null), fc.constant({}));
const skill = fc.constantFrom('echo', 'sleep', 'stream', 'push', 'fail', 'count', 'nope');
const input = fc.record({
  ms: fc.integer({ min: -5, max: 30 }),
  chunks: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.constant(1_000_000)),
  count: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.constant(1_000_000)),
  interval_ms: fc.constantFrom(0, 1),
  message: fc.string({ maxLength: 10 }),
  key: fc.constantFrom('a', 'b'),
});
const envelope = fc
  .tuple(skill, input, fc.boolean(), fc.constantFrom('urn:asap:agent:ws-tester', 'urn:asap:agent:x'))
  .map(([s, i, ack, sender]) => task(s, i, { requires_ack: ack, sender }));

/** Anything a peer can put in a frame: valid, broken, huge, deep, replayed, misaddressed. */
const frame: fc.Arbitrary<string | Buffer> = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom('{"type":"ping"}', '{"type":"pong"}', '[]', '{}', 'null', '[1,2]', deep(200), deep(20)),
  fc.tuple(envelope, id).map(([e, i]) => rpcRequest(e, i as string)),
  envelope.map((e) => rpcNotification(e)),
  fc.tuple(envelope, fc.integer({ min: 1, max: 60 })).map(([e, n]) =>
    JSON.stringify(
      Array.from({ length: n }, (_, i) => ({
        jsonrpc: '2.0',
        method: 'asap.send',
        params: { envelope: e },
        id: i,
      })),
    ),
  ),
  fc.tuple(id, fc.jsonValue()).map(([i, r]) => JSON.stringify({ jsonrpc: '2.0', result: r, id: i })),
  fc
    .tuple(id, fc.integer())
    .map(([i, c]) => JSON.stringify({ jsonrpc: '2.0', error: { code: c, message: 'x' }, id: i })),
  fc.string({ maxLength: 8 }).map((s) =>
    JSON.stringify({
      jsonrpc: '2.0',
      method: 'asap.ack',
      params: {
        envelope: createEnvelope({
          sender: 'urn:asap:agent:ws-tester',
          recipient: 'urn:asap:agent:demo',
          payload_type: 'MessageAck',
          correlation_id: s || 'x',
          payload: { original_envelope_id: s || 'x', status: 'received' },
        }),
      },
    }),
  ),
  fc.constant('x'.repeat(70 * 1024)), // over the frame limit: 1009
  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v))), // binary frame
  fc.string({ maxLength: 20 }).map((m) => JSON.stringify({ jsonrpc: '2.0', method: m, params: {}, id: 1 })),
);

let n = 0;

describe('§10 isolation between connections', () => {
  it('no sequence of frames from one connection leaves another connection unanswered', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { minLength: 1, maxLength: 30 }), async (frames) => {
        // From another process, as a remote peer reads: fast, so only fairness gives others a turn.
        await hostile.open(demo.wsUrl);
        await hostile.send(frames);
        const r = await bystander.call(task('echo', { n }), `b-${n++}`, 2000);
        expect(r.result.envelope.payload.result.echo).toEqual({ n: n - 1 });
        await hostile.closeSocket();
      }),
      { numRuns: 40 },
    );
    expect(bystander.isOpen).toBe(true);
  }, 60_000);
});
