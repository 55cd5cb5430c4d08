import type { NonceStore } from '../core/nonce-store.js';
import type { RedisConnection } from './connection.js';

/**
 * The {@link NonceStore} of several processes sharing one Redis (asap-wire.md §8): one
 * `SET <prefix>n:<key> 1 NX PX <ttl>` per new envelope (one round trip), true when it was
 * set. Of two copies racing on several nodes exactly one passes. While Redis is unreachable
 * it rejects with the recoverable -32040 (`retry_after_ms`).
 */
export class RedisNonceStore implements NonceStore {
  constructor(private readonly conn: RedisConnection) {}

  async add(key: string, ttlMs: number): Promise<boolean> {
    const px = Math.max(1, Math.ceil(ttlMs));
    const reply = await this.conn.run((c) =>
      c.set(this.conn.key('n', key), '1', { condition: 'NX', expiration: { type: 'PX', value: px } }),
    );
    return reply === 'OK';
  }
}
