import type { LocalPushAdapter } from '../server/push-adapter.js';
import type { ServerStore } from '../server/store.js';
import { connectRedis, type RedisConnection, type RedisConnectionOptions } from './connection.js';
import { type RedisDedupeOptions, RedisDedupeStore } from './dedupe.js';
import { RedisNonceStore } from './nonces.js';
import { RedisPushAdapter, type RedisPushAdapterOptions } from './push-adapter.js';
import { type RedisSessionOptions, RedisSessionStore } from './sessions.js';

export interface RedisStoreOptions extends RedisConnectionOptions {
  /** Dedupe window, claim lease, outcome cap and persist retries (see {@link RedisDedupeOptions}). */
  dedupe?: RedisDedupeOptions;
  /** Bounds per session (see {@link RedisSessionOptions}). */
  sessions?: Omit<RedisSessionOptions, 'disconnectWindowMs'>;
  /** How long a session outlives its connection (default 2 min, asap-wire.md §12): give the server the same. */
  disconnectWindowMs?: number;
  /** Presence TTL and remote push timeout of the push adapter. */
  push?: Pick<RedisPushAdapterOptions, 'presenceTtlMs' | 'requestTimeoutMs' | 'timers'>;
}

/** A {@link ServerStore} on Redis: what several processes share to act as one agent. */
export interface RedisStore extends ServerStore {
  readonly dedupe: RedisDedupeStore;
  readonly nonces: RedisNonceStore;
  readonly sessions: RedisSessionStore;
  /** The connections (commands and subscriber) the parts share. */
  readonly connection: RedisConnection;
  /** This process's id in claims and push routing. */
  readonly nodeId: string;
  pushAdapter(local: LocalPushAdapter): RedisPushAdapter;
  increment(key: string): Promise<number>;
}

/**
 * Connects to Redis at `url` and builds every part of the server's store on it: dedupe
 * ({@link RedisDedupeStore}), nonces ({@link RedisNonceStore}), sessions
 * ({@link RedisSessionStore}), push routing ({@link RedisPushAdapter}) and named counters
 * (`INCR <prefix>c:<key>`, one round trip). Rejects when Redis is not ready within
 * `connectTimeoutMs`; afterwards it reconnects by itself, `available` is false meanwhile,
 * and the parts answer the recoverable -32040 with `retry_after_ms`.
 */
export async function redisStore(url: string, opts: RedisStoreOptions = {}): Promise<RedisStore> {
  const connection = await connectRedis(url, opts);
  const dedupe = new RedisDedupeStore(connection, opts.dedupe);
  const nonces = new RedisNonceStore(connection);
  const sessions = new RedisSessionStore(connection, {
    ...opts.sessions,
    disconnectWindowMs: opts.disconnectWindowMs,
  });
  const adapters = new Set<RedisPushAdapter>();
  let closing: Promise<void> | undefined;
  return {
    dedupe,
    nonces,
    sessions,
    connection,
    nodeId: connection.nodeId,
    pushAdapter(local: LocalPushAdapter): RedisPushAdapter {
      const adapter = new RedisPushAdapter({
        ...opts.push,
        client: connection.client,
        subscriber: connection.subscriber,
        local,
        nodeId: connection.nodeId,
        keyPrefix: connection.keyPrefix,
        logger: connection.logger,
      });
      adapters.add(adapter);
      void adapter.start(); // never rejects: while Redis is down it logs and keeps trying
      return adapter;
    },
    increment: (key) => connection.run((c) => c.incr(connection.key('c', key))),
    instrument(hooks) {
      connection.hooks = hooks;
    },
    get available() {
      return connection.available;
    },
    close() {
      closing ??= (async () => {
        dedupe.close();
        sessions.shutdown();
        await Promise.allSettled([...adapters].map((a) => a.close()));
        await connection.close();
      })();
      return closing;
    },
  };
}
