/** RedisDedupeStore beyond the shared contract: pub/sub waits without polling, leases, lost claims, Redis errors. */
import { createClient } from '@redis/client';
import { afterAll, describe, expect, it } from 'vitest';
import type { Outcome } from '../../src/core/dedupe.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { RedisDedupeStore } from '../../src/redis/dedupe.js';
import {
  captureLogger,
  closeAll,
  connect,
  FP,
  pending,
  redisAvailable,
  reply,
  sleep,
  track,
  uniquePrefix,
  useRedis,
  waitFor,
} from './helpers.js';

describe.skipIf(!redisAvailable())('RedisDedupeStore', () => {
  const redis = useRedis();
  afterAll(closeAll);

  async function twoNodes(opts: { leaseMs?: number } = {}, logger = captureLogger()) {
    const keyPrefix = uniquePrefix();
    const [ca, cb] = await Promise.all([
      connect(redis.server.url, { keyPrefix, nodeId: 'a', logger }),
      connect(redis.server.url, { keyPrefix, nodeId: 'b', logger }),
    ]);
    return {
      ca,
      cb,
      a: track(new RedisDedupeStore(ca, opts)),
      b: track(new RedisDedupeStore(cb, opts)),
      logger,
    };
  }

  /** Calls of each command since the last reset, from INFO commandstats. */
  async function commandCalls(): Promise<Record<string, number>> {
    const admin = createClient({ url: redis.server.url });
    await admin.connect();
    const info = await admin.info('commandstats');
    admin.destroy();
    const out: Record<string, number> = {};
    for (const m of info.matchAll(/cmdstat_(\w+):calls=(\d+)/g)) out[m[1]!] = Number(m[2]);
    return out;
  }

  it('a copy on node B waits for node A by pub/sub: settled at once after complete, no polling meanwhile', async () => {
    const { a, b, ca } = await twoNodes(); // lease 30 s: the fallback re-read cannot be what settles it
    const key = 'k-wait';
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    const waiting = pending(await b.claim(key, FP));
    await waitFor(() => b.stats.waiting === 1, 'the waiter');
    await sleep(50); // subscribed and re-read
    await ca.client.configResetStat();
    await sleep(300);
    const idle = await commandCalls();
    // Nothing but the INFO itself while it waits.
    expect(Object.keys(idle).filter((c) => c !== 'info' && c !== 'hello' && c !== 'client')).toEqual([]);
    const started = performance.now();
    await a.complete(key, reply);
    expect(await waiting).toEqual(reply);
    expect(performance.now() - started).toBeLessThan(200);
    await waitFor(() => b.stats.waiting === 0, 'the waiter gone');
    expect(a.stats).toEqual({ pending: 0, unpersisted: 0, waiting: 0 });
  });

  it('renews the lease while the handler runs', async () => {
    const { a, b } = await twoNodes({ leaseMs: 150 });
    expect(await a.claim('k-renew', FP)).toEqual({ state: 'new' });
    await sleep(450); // three leases
    const waiting = pending(await b.claim('k-renew', FP));
    await a.complete('k-renew', reply);
    expect(await waiting).toEqual(reply);
  });

  it('a claim whose node died expires with its lease: its waiters settle undefined, the next claim is new', async () => {
    const { a, b } = await twoNodes({ leaseMs: 200 });
    expect(await a.claim('k-dead', FP)).toEqual({ state: 'new' });
    a.close(); // the node "dies": nobody renews its claim
    const started = performance.now();
    const waiting = pending(await b.claim('k-dead', FP));
    expect(await waiting).toBeUndefined(); // the re-read at the lease length found the key gone
    expect(performance.now() - started).toBeGreaterThanOrEqual(100);
    expect(await b.claim('k-dead', FP)).toEqual({ state: 'new' });
    await b.complete('k-dead', reply);
    expect(await b.claim('k-dead', FP)).toEqual({ state: 'done', outcome: reply });
  });

  it('a waiter keeps waiting across fallback re-reads while the claim is renewed', async () => {
    const { a, b } = await twoNodes({ leaseMs: 100 });
    expect(await a.claim('k-long', FP)).toEqual({ state: 'new' });
    const waiting = pending(await b.claim('k-long', FP));
    let settled = false;
    void waiting.then(() => {
      settled = true;
    });
    await sleep(350);
    expect(settled).toBe(false);
    await a.release('k-long');
    expect(await waiting).toBeUndefined();
  });

  it('a waiter whose claim is taken over by another envelope settles undefined (the claim again says conflict)', async () => {
    const { a, b, ca } = await twoNodes({ leaseMs: 100 });
    expect(await a.claim('k-over', FP)).toEqual({ state: 'new' });
    const waiting = pending(await b.claim('k-over', FP));
    a.close();
    await ca.client.set(ca.key('dd', 'k-over'), 'R7|{"other":true}');
    expect(await waiting).toBeUndefined();
    expect(await b.claim('k-over', FP)).toEqual({ state: 'conflict' });
  });

  it('warns when a running claim lost its key to someone else', async () => {
    const logger = captureLogger();
    const { a, ca } = await twoNodes({ leaseMs: 90 }, logger);
    expect(await a.claim('k-lost', FP)).toEqual({ state: 'new' });
    await ca.client.set(ca.key('dd', 'k-lost'), 'P42|someone-else', {
      expiration: { type: 'PX', value: 10_000 },
    });
    await waitFor(
      () => logger.lines.some((l) => l.msg === 'dedupe claim lost its lease while its handler runs'),
      'the warning',
    );
    // Its completion still lands (the first outcome wins over a pending claim).
    await a.complete('k-lost', reply);
    expect(await ca.client.get(ca.key('dd', 'k-lost'))).toBe('R42|{"id":"r1"}');
  });

  it('re-takes a running claim that Redis lost (e.g. FLUSHALL or a restart), so a copy waits instead of running', async () => {
    const { a, b, ca } = await twoNodes({ leaseMs: 90 });
    expect(await a.claim('k-flushed', FP)).toEqual({ state: 'new' });
    await ca.client.del(ca.key('dd', 'k-flushed'));
    await waitFor(async () => (await ca.client.exists(ca.key('dd', 'k-flushed'))) === 1, 're-taken');
    const waiting = pending(await b.claim('k-flushed', FP));
    await a.complete('k-flushed', { kind: 'none' });
    expect(await waiting).toEqual({ kind: 'none' });
  });

  it('an error outcome round-trips; a Redis error answers -32040 and is logged', async () => {
    const logger = captureLogger();
    const { a, b, ca } = await twoNodes({}, logger);
    const outcome: Outcome = {
      kind: 'error',
      error: { code: -32000, message: 'Invalid state', data: { x: [1] } },
    };
    expect(await a.claim('k-err', FP)).toEqual({ state: 'new' });
    const waiting = pending(await b.claim('k-err', FP));
    await a.complete('k-err', outcome);
    expect(await waiting).toEqual(outcome);
    await ca.client.hSet(ca.key('dd', 'k-wrongtype'), 'f', 'v');
    const err = await Promise.resolve(a.claim('k-wrongtype', FP)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ASAPError);
    expect((err as ASAPError).code).toBe(-32040);
    expect((err as ASAPError).data).toEqual({ retry_after_ms: 1000 });
    expect(logger.lines.some((l) => l.msg === 'Redis command failed')).toBe(true);
  });

  it('a pending value of another fingerprint after a re-read settles the waiter undefined', async () => {
    const { b, cb } = await twoNodes({ leaseMs: 80 });
    await cb.client.set(cb.key('dd', 'k-fp'), 'P42|x', { expiration: { type: 'PX', value: 5000 } });
    const waiting = pending(await b.claim('k-fp', FP));
    await cb.client.set(cb.key('dd', 'k-fp'), 'P43|y', { expiration: { type: 'PX', value: 5000 } });
    expect(await waiting).toBeUndefined();
    // A copy of a value this process cannot read (an unknown kind) counts as one without its outcome.
    await cb.client.set(cb.key('dd', 'k-odd'), 'Z42|?');
    expect(await b.claim('k-odd', FP)).toEqual({ state: 'dropped' });
  });

  it('copies on the node holding the claim wait in memory; copies on another node share one subscription', async () => {
    const { a, b } = await twoNodes();
    const [first, second] = await Promise.all([a.claim('k-race', FP), a.claim('k-race', FP)]);
    expect(first).toEqual({ state: 'new' });
    const third = await a.claim('k-race', FP);
    const remote1 = await b.claim('k-race', FP);
    const remote2 = await b.claim('k-race', FP);
    expect(b.stats.waiting).toBe(1);
    await a.complete('k-race', reply);
    for (const c of [second, third, remote1, remote2]) expect(await pending(c)).toEqual(reply);
  });

  it('close settles every waiter with undefined', async () => {
    const { a, b } = await twoNodes();
    expect(await a.claim('k-close', FP)).toEqual({ state: 'new' });
    const waiting = pending(await b.claim('k-close', FP));
    b.close();
    expect(await waiting).toBeUndefined();
    expect(b.stats.waiting).toBe(0);
  });
});
