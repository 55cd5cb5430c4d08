/** connectRedis and redisStore: readiness, failures mapped to -32040, scripts, counters, push adapter, close. */
import { afterAll, describe, expect, it } from 'vitest';
import { ASAPClient } from '../../src/client/client.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { connectRedis, LuaScript } from '../../src/redis/connection.js';
import { RedisPushAdapter } from '../../src/redis/push-adapter.js';
import { redisStore } from '../../src/redis/store.js';
import { LocalPushAdapter } from '../../src/server/push-adapter.js';
import { ASAPServer } from '../../src/server/server.js';
import { freePort } from '../support/redis-server.js';
import {
  captureLogger,
  closeAll,
  connect,
  redisAvailable,
  uniquePrefix,
  useRedis,
  waitFor,
} from './helpers.js';

describe.skipIf(!redisAvailable())('Redis connection and store', () => {
  const redis = useRedis();
  afterAll(closeAll);

  it('fails to connect when Redis is not there within connectTimeoutMs (password redacted)', async () => {
    const port = await freePort();
    const url = `redis://user:secret@127.0.0.1:${port}`;
    const err = await connectRedis(url, { connectTimeoutMs: 200 }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toBe(
      `Redis at redis://user:***@127.0.0.1:${port} not ready within 200 ms`,
    );
  });

  it('prefixes keys, maps any Redis failure to the -32040 wire error, rethrows an ASAPError as is', async () => {
    const logger = captureLogger();
    const conn = await connect(redis.server.url, { keyPrefix: 'p:', nodeId: 'n1', logger });
    expect(conn.key('dd', 'x')).toBe('p:dd:x');
    expect(conn.nodeId).toBe('n1');
    const err = (await conn
      .run((c) => c.sendCommand(['NOSUCHCOMMAND']))
      .catch((e: unknown) => e)) as ASAPError;
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.toJSON()).toEqual({
      code: -32040,
      message: 'Shared state unavailable; retry later',
      data: { retry_after_ms: 1000 },
    });
    expect(logger.lines.at(-1)?.msg).toBe('Redis command failed');
    const own = ASAPError.invalidState('mine');
    await expect(conn.run(() => Promise.reject(own))).rejects.toBe(own);
  });

  it('runs a script by its SHA, loading it once when Redis does not know it; other errors are thrown', async () => {
    const conn = await connect(redis.server.url);
    const script = new LuaScript(`return {KEYS[1], ARGV[1], ${Date.now()}}`);
    await conn.client.scriptFlush();
    expect(await script.run(conn.client, ['k'], ['v'])).toEqual(['k', 'v', expect.any(Number)]);
    expect(await conn.client.scriptExists(script.sha)).toEqual([1]);
    expect(await script.run(conn.client, ['k2'], ['v2'])).toEqual(['k2', 'v2', expect.any(Number)]);
    await expect(new LuaScript('return redis.call("NOPE")').run(conn.client, [], [])).rejects.toThrow();
  });

  it('a stalled Redis (answering nothing) is an unreachable one until it answers again; close does not hang', async () => {
    const logger = captureLogger();
    const conn = await connect(redis.server.url, { commandTimeoutMs: 150, logger });
    redis.server.pause();
    try {
      const started = performance.now();
      await expect(conn.run((c) => c.ping())).rejects.toMatchObject({ code: -32040 });
      expect(performance.now() - started).toBeGreaterThanOrEqual(140);
      expect(conn.available).toBe(false);
      expect(logger.lines.map((l) => l.msg)).toContain('Redis unavailable');
      const fast = performance.now();
      await expect(conn.run((c) => c.ping())).rejects.toMatchObject({ code: -32040 }); // at once: nothing queued
      expect(performance.now() - fast).toBeLessThan(50);
      redis.server.resume();
      await waitFor(() => conn.available, 'available again');
      expect(logger.lines.map((l) => l.msg)).toContain('Redis available again');
      expect(await conn.run((c) => c.ping())).toBe('PONG');

      // Closing waits for what is in flight, a second at most.
      const quick = conn.run((c) => c.ping());
      await conn.close();
      expect(await quick).toBe('PONG');
      const other = await connect(redis.server.url, { commandTimeoutMs: 5000 });
      redis.server.pause();
      const stuck = other.run((c) => c.ping()).catch((e: unknown) => e);
      const closing = performance.now();
      await other.close();
      expect(performance.now() - closing).toBeGreaterThanOrEqual(900);
      expect(await stuck).toMatchObject({ code: -32040 });
    } finally {
      redis.server.resume();
    }
  });

  it('closes idempotently; a closed connection is not available and refuses at once', async () => {
    const conn = await connect(redis.server.url);
    let readyCalls = 0;
    const off = conn.onReady(() => readyCalls++);
    off();
    expect(conn.available).toBe(true);
    await conn.close();
    await conn.close();
    expect(conn.available).toBe(false);
    await expect(conn.run((c) => c.ping())).rejects.toMatchObject({ code: -32040 });
    expect(readyCalls).toBe(0);
  });

  it('redisStore: counters, availability, the push adapter on the shared connections, close', async () => {
    const keyPrefix = uniquePrefix();
    const store = await redisStore(redis.server.url, {
      keyPrefix,
      nodeId: 'node-1',
      disconnectWindowMs: 1000,
    });
    const other = await redisStore(redis.server.url, { keyPrefix, nodeId: 'node-2' });
    expect(store.available).toBe(true);
    expect(store.nodeId).toBe('node-1');
    expect(await store.increment('count')).toBe(1);
    expect(await other.increment('count')).toBe(2);
    expect(await store.increment('other')).toBe(1);
    expect(await store.connection.client.get(`${keyPrefix}c:count`)).toBe('2');
    const adapter = store.pushAdapter(new LocalPushAdapter());
    expect(adapter).toBeInstanceOf(RedisPushAdapter);
    expect(adapter.nodeId).toBe('node-1');
    expect(await store.nonces.add('n', 1000)).toBe(true);
    const { sessionId } = await store.sessions.open('alice');
    expect(await other.sessions.attach(sessionId, 'alice')).toBe(true);
    await Promise.all([store.close(), store.close()]);
    expect(store.available).toBe(false);
    await expect(store.increment('count')).rejects.toMatchObject({ code: -32040 });
    await other.close();
  });
  it('reports each operation to the storeOperation hook; the server counts them in its metrics', async () => {
    const conn = await connect(redis.server.url, { keyPrefix: uniquePrefix() });
    const seen: boolean[] = [];
    conn.hooks = {
      storeOperation: (ms, ok) => {
        expect(ms).toBeGreaterThanOrEqual(0);
        seen.push(ok);
      },
    };
    await conn.run((c) => c.ping());
    await expect(conn.run((c) => c.sendCommand(['NOSUCHCOMMAND']))).rejects.toMatchObject({ code: -32040 });
    // An operation that throws before returning its promise fails the same way.
    await expect(
      conn.run(() => {
        throw new Error('thrown at once');
      }),
    ).rejects.toMatchObject({ code: -32040 });
    // An ASAPError an operation throws is its answer, not a store failure.
    await expect(
      conn.run(async () => {
        throw new ASAPError(-32010, 'Task not found');
      }),
    ).rejects.toMatchObject({ code: -32010 });
    expect(seen).toEqual([true, false, false, true]);

    const store = await redisStore(redis.server.url, { keyPrefix: uniquePrefix() });
    const server = new ASAPServer({
      manifest: { id: 'urn:asap:agent:demo', description: 'store metrics' },
      store,
      metrics: true,
      replay: false,
    });
    server.skill('echo', (env) => ({ task_id: env.id, status: 'completed', result: env.payload.input }));
    const { url } = await server.listen({ port: 0 });
    try {
      const reply = await new ASAPClient(`${url}/asap`).task('echo', { x: 1 });
      expect(reply.payload.result).toEqual({ x: 1 });
      const text = await server.prometheus!.metrics();
      // The dedupe claim and the outcome: two operations, both fine.
      expect(text).toContain('asap_store_operation_duration_seconds_count{status="ok"} 2\n');
      expect(text).toContain('asap_store_errors_total 0\n');
    } finally {
      await server.close();
      await store.close();
    }
  });
});
