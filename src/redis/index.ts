// `asap-ts/redis`: the server's store on Redis, for several processes acting as one agent.
export {
  connectRedis,
  type RedisClient,
  RedisConnection,
  type RedisConnectionOptions,
} from './connection.js';
export { type RedisDedupeOptions, RedisDedupeStore } from './dedupe.js';
export { RedisNonceStore } from './nonces.js';
export {
  type PushRedisClient,
  type PushRedisSubscriber,
  RedisPushAdapter,
  type RedisPushAdapterOptions,
} from './push-adapter.js';
export { type RedisSessionOptions, RedisSessionStore } from './sessions.js';
export { type RedisStore, type RedisStoreOptions, redisStore } from './store.js';
