/** The store contract (test/redis/contract.ts), run against the memory stores and the Redis ones (two nodes on one real redis-server). */
import { afterAll, describe } from 'vitest';
import { MemoryDedupeStore } from '../../src/core/dedupe.js';
import { MemoryNonceStore } from '../../src/core/nonce-store.js';
import { MemorySessionStore } from '../../src/core/session-store.js';
import { RedisDedupeStore } from '../../src/redis/dedupe.js';
import { RedisNonceStore } from '../../src/redis/nonces.js';
import { RedisSessionStore } from '../../src/redis/sessions.js';
import { dedupeContract, nonceContract, sessionContract } from './contract.js';
import { closeAll, connect, redisAvailable, track, uniquePrefix, useRedis } from './helpers.js';

describe('memory stores', () => {
  describe('MemoryDedupeStore', () => {
    dedupeContract(async (opts) => {
      const store = new MemoryDedupeStore(opts);
      return { a: store, b: store };
    });
  });
  describe('MemoryNonceStore', () => {
    nonceContract(async () => {
      const store = new MemoryNonceStore();
      return { a: store, b: store };
    });
  });
  describe('MemorySessionStore', () => {
    sessionContract(async (opts) => {
      const store = new MemorySessionStore(opts);
      return { a: store, b: store };
    });
  });
});

describe.skipIf(!redisAvailable())('Redis stores, two nodes on one Redis', () => {
  const redis = useRedis();
  afterAll(closeAll);

  /** Two connections (two nodes) sharing one key prefix. */
  async function nodes() {
    const keyPrefix = uniquePrefix();
    return Promise.all([
      connect(redis.server.url, { keyPrefix, nodeId: 'node-a' }),
      connect(redis.server.url, { keyPrefix, nodeId: 'node-b' }),
    ]);
  }

  describe('RedisDedupeStore', () => {
    dedupeContract(async (opts) => {
      const [ca, cb] = await nodes();
      return { a: track(new RedisDedupeStore(ca, opts)), b: track(new RedisDedupeStore(cb, opts)) };
    });
  });
  describe('RedisNonceStore', () => {
    nonceContract(async () => {
      const [ca, cb] = await nodes();
      return { a: new RedisNonceStore(ca), b: new RedisNonceStore(cb) };
    });
  });
  describe('RedisSessionStore', () => {
    sessionContract(async (opts) => {
      const [ca, cb] = await nodes();
      return {
        a: track({
          store: new RedisSessionStore(ca, opts),
          close() {
            this.store.shutdown();
          },
        }).store,
        b: track({
          store: new RedisSessionStore(cb, opts),
          close() {
            this.store.shutdown();
          },
        }).store,
      };
    });
  });
});
