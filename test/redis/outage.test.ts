/**
 * Redis going away and coming back (a real redis-server, SIGKILLed and restarted with its data
 * lost): requests get the recoverable -32040, the store recovers by itself, nothing runs twice.
 */
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { Claim, Outcome } from '../../src/core/dedupe.js';
import { ASAPError } from '../../src/protocol/errors.js';
import type { RedisConnection } from '../../src/redis/connection.js';
import { RedisDedupeStore } from '../../src/redis/dedupe.js';
import { RedisNonceStore } from '../../src/redis/nonces.js';
import { RedisSessionStore } from '../../src/redis/sessions.js';
import {
  captureLogger,
  closeAll,
  connect,
  redisAvailable,
  track,
  uniquePrefix,
  useRedis,
  waitFor,
} from './helpers.js';

const FP = 7;
const reply: Outcome = { kind: 'result', envelope: '{"id":"r"}' };

async function refused(p: unknown): Promise<ASAPError> {
  const err = await Promise.resolve(p).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ASAPError);
  const e = err as ASAPError;
  expect(e.code).toBe(-32040);
  expect(e.local).toBe(false);
  expect(e.message).toBe('Shared state unavailable; retry later');
  return e;
}

describe.skipIf(!redisAvailable())('Redis outage', () => {
  const redis = useRedis();
  afterAll(closeAll);
  beforeEach(async () => {
    if (!redis.server.running) await redis.server.restart();
  });

  async function twoNodes(logger = captureLogger()) {
    const keyPrefix = uniquePrefix();
    const [ca, cb] = await Promise.all([
      connect(redis.server.url, { keyPrefix, nodeId: 'a', logger, retryAfterMs: 750 }),
      connect(redis.server.url, { keyPrefix, nodeId: 'b', logger, retryAfterMs: 750 }),
    ]);
    return { ca, cb, logger };
  }

  const back = (...conns: RedisConnection[]) =>
    waitFor(() => conns.every((c) => c.available), 'Redis available again', 8000);

  it('refuses with -32040 (retry_after_ms) while Redis is down, then recovers by itself', async () => {
    const { ca, logger } = await twoNodes();
    const dedupe = track(new RedisDedupeStore(ca));
    const nonces = new RedisNonceStore(ca);
    const sessions = new RedisSessionStore(ca, { disconnectWindowMs: 1000 });
    track({ close: () => sessions.shutdown() });
    const { sessionId } = await sessions.open('alice');
    expect(ca.available).toBe(true);

    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    expect((await refused(dedupe.claim('k1', FP))).data).toEqual({ retry_after_ms: 750 });
    await refused(nonces.add('n1', 1000));
    await refused(sessions.open('alice'));
    await refused(sessions.append(sessionId, '{}', 'e1'));
    await refused(sessions.since(sessionId, 0));
    await refused(sessions.attach(sessionId, 'alice'));
    // Best effort: the keys expire by themselves.
    await sessions.detach(sessionId);
    await sessions.close(sessionId);
    // Logged once per outage and node (both nodes share the logger), not once per reconnect attempt.
    expect(logger.lines.filter((l) => l.msg === 'Redis unavailable')).toHaveLength(2);

    await redis.server.restart();
    await back(ca);
    expect(logger.lines.some((l) => l.msg === 'Redis available again')).toBe(true);
    expect(await dedupe.claim('k1', FP)).toEqual({ state: 'new' }); // scripts reloaded (NOSCRIPT, then EVAL)
    await dedupe.complete('k1', reply);
    expect(await dedupe.claim('k1', FP)).toEqual({ state: 'done', outcome: reply });
    expect(await nonces.add('n1', 1000)).toBe(true);
  });

  it('an outcome completed while Redis is down is answered locally, persisted when it returns, never re-run', async () => {
    const { ca, cb, logger } = await twoNodes();
    const a = track(new RedisDedupeStore(ca, { persistRetry: { baseMs: 20, maxMs: 100 } }));
    const b = track(new RedisDedupeStore(cb));
    expect(await a.claim('k2', FP)).toEqual({ state: 'new' });
    expect(await a.claim('k3', FP)).toEqual({ state: 'new' });
    const local = await a.claim('k2', FP);
    expect(local.state).toBe('pending');

    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    await a.complete('k2', reply); // resolves: the reply may go out, the outcome is held here
    await a.release('k3'); // cannot reach Redis: its lease will expire
    expect(logger.lines.some((l) => l.msg?.startsWith('dedupe claim not released'))).toBe(true);
    expect(await (local as Extract<Claim, { state: 'pending' }>).outcome).toEqual(reply);
    expect(await a.claim('k2', FP)).toEqual({ state: 'done', outcome: reply });
    expect(await a.claim('k2', FP + 1)).toEqual({ state: 'conflict' });
    expect(a.stats).toEqual({ pending: 0, unpersisted: 1, waiting: 0 });

    await redis.server.restart(); // its data is lost: the claim is gone from Redis
    await back(ca, cb);
    await waitFor(() => a.stats.unpersisted === 0, 'persisted');
    expect(await b.claim('k2', FP)).toEqual({ state: 'done', outcome: reply });
    expect(await a.claim('k2', FP)).toEqual({ state: 'done', outcome: reply });
  });

  it('keeps a running claim through a restart that lost it: a copy on another node waits, then gets the outcome', async () => {
    const { ca, cb } = await twoNodes();
    const a = track(new RedisDedupeStore(ca));
    const b = track(new RedisDedupeStore(cb));
    expect(await a.claim('k4', FP)).toEqual({ state: 'new' });
    await redis.server.restart();
    await back(ca, cb);
    await waitFor(async () => (await ca.client.exists(ca.key('dd', 'k4'))) === 1, 'claim re-taken');
    const copy = await b.claim('k4', FP);
    expect(copy.state).toBe('pending');
    await a.complete('k4', reply);
    expect(await (copy as Extract<Claim, { state: 'pending' }>).outcome).toEqual(reply);
  });

  it('a copy waiting on another node while Redis restarts re-reads when it returns', async () => {
    const { ca, cb } = await twoNodes();
    const a = track(new RedisDedupeStore(ca));
    const b = track(new RedisDedupeStore(cb));
    expect(await a.claim('k5', FP)).toEqual({ state: 'new' });
    const copy = await b.claim('k5', FP);
    if (copy.state !== 'pending') throw new Error('expected pending');
    await waitFor(() => b.stats.waiting === 1, 'waiting');
    a.close(); // its claim is not re-taken after the restart
    await redis.server.restart();
    await back(ca, cb);
    expect(await copy.outcome).toBeUndefined(); // the claim is gone: claim again
    expect(await b.claim('k5', FP)).toEqual({ state: 'new' });
  });

  it('holds at most maxUnpersisted outcomes while Redis is down (the oldest go, logged)', async () => {
    const { ca, logger } = await twoNodes();
    const a = track(
      new RedisDedupeStore(ca, {
        maxUnpersisted: 1,
        maxOutcomeBytes: 10,
        leaseMs: 60, // its lease renewals fail while Redis is down, and are tried again
        persistRetry: { baseMs: 20, maxMs: 40 },
      }),
    );
    expect(await a.claim('k6', FP)).toEqual({ state: 'new' });
    expect(await a.claim('k7', FP)).toEqual({ state: 'new' });
    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    await a.complete('k6', reply);
    await a.complete('k7', reply);
    expect(a.stats.unpersisted).toBe(1);
    expect(logger.lines.some((l) => l.level === 'error' && (l.obj as { key?: string }).key === 'k6')).toBe(
      true,
    );
    await refused(a.claim('k6', FP)); // forgotten here, and Redis is down
    expect(await a.claim('k7', FP)).toEqual({ state: 'dropped' }); // over maxOutcomeBytes: not kept, even here
    await new Promise((r) => setTimeout(r, 150)); // a few retries and renewals fail meanwhile
    await redis.server.restart();
    await back(ca);
    await waitFor(() => a.stats.unpersisted === 0, 'persisted');
    expect(await a.claim('k7', FP)).toEqual({ state: 'dropped' });
  });

  it('sessions: renewals fail quietly while Redis is down; subscriptions taken or dropped meanwhile do not throw', async () => {
    const { ca, cb, logger } = await twoNodes();
    const a = new RedisSessionStore(ca, { disconnectWindowMs: 300 });
    const b = new RedisSessionStore(cb, { disconnectWindowMs: 300 });
    track({ close: () => a.shutdown() });
    track({ close: () => b.shutdown() });
    const { sessionId: s } = await a.open('alice');
    const off = a.subscribe(s, () => {});
    await a.since(s, 0);
    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    off(); // UNSUBSCRIBE while offline
    const got: number[] = [];
    b.subscribe(s, (e) => got.push(e.seq)); // SUBSCRIBE while offline
    await new Promise((r) => setTimeout(r, 150)); // a renewal (every 100 ms) fails meanwhile
    await redis.server.restart({ keepData: false });
    await back(ca, cb);
    expect(await a.attach(s, 'alice')).toBe(false); // the restart lost it
    const { sessionId: t } = await b.open('alice');
    expect(await b.since(t, 0)).toEqual({ expired: false, entries: [] });
    expect(logger.lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('closing a store while Redis is down does not wait for it', async () => {
    const { ca } = await twoNodes();
    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    await ca.close();
  });

  it('a waiter whose re-read fails settles undefined (its next claim answers -32040)', async () => {
    const { ca, cb } = await twoNodes();
    const a = track(new RedisDedupeStore(ca));
    const b = track(new RedisDedupeStore(cb, { leaseMs: 150 }));
    expect(await a.claim('k8', FP)).toEqual({ state: 'new' });
    const copy = await b.claim('k8', FP);
    if (copy.state !== 'pending') throw new Error('expected pending');
    await waitFor(() => b.stats.waiting === 1, 'waiting');
    await redis.server.kill9();
    expect(await copy.outcome).toBeUndefined();
    await refused(b.claim('k8', FP));
  });
});
