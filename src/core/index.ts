// `asap-ts/core`: the transport-agnostic engine's building blocks. Helpers only the engine uses
// (ExpiringMap, AsyncQueue, isPromiseLike, …) are @internal and stay out.
export * from './ack-tracker.js';
export * from './backoff.js';
export type { Channel, SendResult } from './channel.js';
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
export type {
  ConnectionClosedInfo,
  ConnectionInfo,
  DedupeState,
  Instrumentation,
  RejectReason,
  RequestFinishedInfo,
  RequestInfo,
} from './instrumentation.js';
export { combineInstrumentation } from './instrumentation.js';
export { type Logger, silentLogger } from './logger.js';
export * from './nonce-store.js';
export { answerEnvelope, Peer, type PeerOptions, type PeerRequestOptions } from './peer.js';
export * from './registry.js';
export * from './replay.js';
export * from './session-store.js';
export * from './timers.js';
export * from './token-bucket.js';
export type {
  ClientCall,
  ClientTracing,
  RequestSpan,
  ServerTracing,
  TracedRequest,
  Tracing,
} from './tracing.js';
