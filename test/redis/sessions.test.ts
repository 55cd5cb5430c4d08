/** RedisSessionStore beyond the shared contract: TTLs on every key, nothing left after the window, live feed across nodes. */
import { afterAll, describe, expect, it } from 'vitest';
import type { SessionEntry } from '../../src/core/session-store.js';
import { RedisSessionStore } from '../../src/redis/sessions.js';
import {
  captureLogger,
  closeAll,
  connect,
  redisAvailable,
  sleep,
  track,
  uniquePrefix,
  useRedis,
  waitFor,
} from './helpers.js';

describe.skipIf(!redisAvailable())('RedisSessionStore', () => {
  const redis = useRedis();
  afterAll(closeAll);

  async function twoNodes(window = 300, logger = captureLogger()) {
    const keyPrefix = uniquePrefix();
    const [ca, cb] = await Promise.all([
      connect(redis.server.url, { keyPrefix, logger }),
      connect(redis.server.url, { keyPrefix, logger }),
    ]);
    const make = (c: typeof ca) => {
      const store = new RedisSessionStore(c, { disconnectWindowMs: window });
      track({ close: () => store.shutdown() });
      return store;
    };
    return { ca, cb, a: make(ca), b: make(cb), keyPrefix, logger };
  }

  it('gives every key a TTL, and leaves nothing behind once the window after the last detach has passed', async () => {
    const { ca, a, b, keyPrefix } = await twoNodes(300);
    const { sessionId: s } = await a.open('alice');
    await a.append(s, '{"n":1}', 'e1');
    await b.append(s, '{"n":2}', 'e2');
    const keys = await ca.client.keys(`${keyPrefix}*`);
    expect(keys.sort()).toEqual([`${keyPrefix}s:{${s}}`, `${keyPrefix}s:{${s}}:i`, `${keyPrefix}s:{${s}}:x`]);
    for (const k of keys) {
      const ttl = await ca.client.pTTL(k);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(400); // window + refresh interval while attached
    }
    await a.detach(s);
    for (const k of keys) expect(await ca.client.pTTL(k)).toBeLessThanOrEqual(300);
    await sleep(350);
    expect(await ca.client.keys(`${keyPrefix}*`)).toEqual([]);
  });

  it('renews a held session for as long as its connection stays, with no activity', async () => {
    const { ca, a, keyPrefix } = await twoNodes(150);
    const { sessionId: s } = await a.open('alice');
    await sleep(500);
    expect(await ca.client.exists(`${keyPrefix}s:{${s}}`)).toBe(1);
    await a.close(s);
    expect(await ca.client.keys(`${keyPrefix}*`)).toEqual([]);
  });

  it('counts two connections of one node holding a session', async () => {
    const { a } = await twoNodes(150);
    const { sessionId: s } = await a.open('alice');
    expect(await a.attach(s, 'alice')).toBe(true);
    await a.detach(s);
    await sleep(300);
    expect(await a.since(s, 0)).toEqual({ expired: false, entries: [] });
    await a.detach(s);
    await sleep(250);
    expect(await a.since(s, 0)).toEqual({ expired: true });
  });

  it('feeds the node holding the connection what another node appends, in seq order, once', async () => {
    const { a, b } = await twoNodes();
    const { sessionId: s } = await a.open('alice');
    const got: SessionEntry[] = [];
    a.subscribe(s, (e) => got.push(e));
    await a.since(s, 0);
    const appended = await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).append(s, `{"i":${i}}`, `e${i}`)),
    );
    await Promise.all(Array.from({ length: 20 }, (_, i) => b.append(s, `{"i":${i}}`, `e${i}`))); // copies
    expect(appended.map((r) => r?.fresh)).toEqual(Array(20).fill(true));
    await waitFor(() => got.length >= 20, 'twenty entries');
    await sleep(30);
    expect(got.map((e) => e.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });

  it('a resume subscribes then reads: an entry appended meanwhile is in the replay or the feed', async () => {
    const { a, b } = await twoNodes();
    const { sessionId: s } = await a.open('alice');
    await b.append(s, '{"n":1}', 'e1');
    await a.detach(s);
    expect(await b.attach(s, 'alice')).toBe(true);
    const live: number[] = [];
    b.subscribe(s, (e) => live.push(e.seq));
    const [replay] = await Promise.all([b.since(s, 0), a.append(s, '{"n":2}', 'e2')]);
    if (replay.expired) throw new Error('expired');
    await sleep(50);
    const seen = new Set([...replay.entries.map((e) => e.seq), ...live]);
    expect([...seen].sort()).toEqual([1, 2]);
  });

  it('logs a listener that throws, and still feeds the others', async () => {
    const logger = captureLogger();
    const { a } = await twoNodes(300, logger);
    const { sessionId: s } = await a.open('alice');
    const got: number[] = [];
    a.subscribe(s, () => {
      throw new Error('boom');
    });
    a.subscribe(s, (e) => got.push(e.seq));
    await a.since(s, 0);
    await a.append(s, '{}', 'e1');
    await waitFor(() => got.length === 1, 'the entry');
    expect(logger.lines.some((l) => l.msg === 'session listener failed')).toBe(true);
  });

  it('close and shutdown drop the subscriptions', async () => {
    const { a, b } = await twoNodes();
    const { sessionId: s } = await a.open('alice');
    const got: number[] = [];
    const off = a.subscribe(s, (e) => got.push(e.seq));
    await a.since(s, 0);
    await a.close(s);
    off(); // after close: nothing left to remove
    const { sessionId: t } = await b.open('alice');
    a.subscribe(t, (e) => got.push(e.seq));
    await a.since(t, 0);
    a.shutdown();
    await b.append(t, '{}', 'e1');
    await sleep(50);
    expect(got).toEqual([]);
  });
});
