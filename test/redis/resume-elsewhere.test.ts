/**
 * A session resumed on another node (asap-wire.md §12 with a shared store): the new connection
 * takes over the agent URNs its client spoke for, so pushes reach it before it sends anything,
 * even when the node it was on is gone; and a handler's "retry later" (-32040) is not kept as the
 * envelope's outcome, so a retry of the same envelope runs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { type RedisStore, redisStore } from '../../src/redis/store.js';
import type { ASAPServer } from '../../src/server/server.js';
import { CLIENT_URN, makeTransport, task, waitFor, within } from '../chaos/helpers.js';
import { startRedis } from '../support/redis-server.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function node(url: string): Promise<{ server: ASAPServer; store: RedisStore; port: number }> {
  const store = await redisStore(url, {});
  const server = createDemoAgent({ store, rateLimit: 0, drainTimeoutMs: 200 });
  const { port } = await server.listen({ port: 0 });
  cleanups.push(async () => {
    await server.close();
    await store.close();
  });
  return { server, store, port };
}

const update = (n: number) => ({
  payload_type: 'TaskUpdate',
  payload: { task_id: 'task-r', update_type: 'progress', status: 'working', progress: { percent: n } },
});

describe('resume on another node', () => {
  it('the resumed connection takes pushes to its URN before sending anything, with its first node gone', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const a = await node(redis.url);
    const b = await node(redis.url);
    const proxy = await TcpProxy.start({ targetPort: a.port });
    cleanups.push(() => proxy.close());
    const transport = makeTransport(proxy.url('/asap/ws', 'ws'));
    cleanups.push(() => transport.close());
    const seen: number[] = [];
    transport.onMessage((env: Envelope<object>) =>
      seen.push((env.payload as { progress: { percent: number } }).progress.percent),
    );
    await within(transport.connect(), 5000, 'connect');
    await transport.request(task('echo')); // on node A: the session records CLIENT_URN
    await waitFor(() => transport.sessionId !== undefined, 'the session');
    const resumed = new Promise((resolve) => transport.once('session', resolve));

    // Node A goes away for good; the client lands on B and resumes there.
    proxy.setTarget(b.port);
    await a.server.close();
    expect(await within(resumed, 5000, 'the resume')).toEqual({
      sessionId: transport.sessionId,
      resumed: true,
    });
    await waitFor(
      () => b.server.connectionsFor(CLIENT_URN).length === 1,
      'B to index the resumed connection',
    );
    expect(await b.server.push(CLIENT_URN, update(1))).toBe(1);
    await waitFor(() => seen.length === 1, 'the push on B');
    expect(seen).toEqual([1]);
  });

  it('a handler answering -32040 (retry later) leaves the envelope unclaimed: its retry runs', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const a = await node(redis.url);
    let calls = 0;
    a.server.skill('busy', () => {
      calls++;
      if (calls <= 2)
        throw ASAPError.resourceExhausted('Downstream unavailable; retry later', { retry_after_ms: 10 });
      return { task_id: 't', status: 'completed', result: { calls } };
    });
    const transport = makeTransport(`ws://127.0.0.1:${a.port}/asap/ws`);
    cleanups.push(() => transport.close());
    calls = 1;
    const env = task('busy');
    // Same envelope (same id) both times: a retransmission, not a new request.
    const first = await transport.request(env).catch((e: unknown) => e);
    expect((first as { code?: number }).code).toBe(-32040);
    const again = await transport.request(env);
    expect((again.payload as { result: { calls: number } }).result.calls).toBe(3);
  });
});
