// `asap-ts/core`: the transport-agnostic engine's building blocks. Helpers only the engine uses
// (ExpiringMap, AsyncQueue, isPromiseLike, …) are @internal and stay out.
export * from './ack-tracker.js';
export * from './backoff.js';
export * from './circuit-breaker.js';
export * from './clock.js';
export * from './dedupe.js';
export {
  type Answer,
  Dispatcher,
  type DispatcherOptions,
  replyTypeFor,
  type Session,
} from './dispatcher.js';
export * from './emitter.js';
export type { Principal } from './identity.js';
export { type Logger, silentLogger } from './logger.js';
export * from './registry.js';
export * from './replay.js';
export * from './token-bucket.js';
