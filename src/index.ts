/**
 * The package root: the facades (ASAPServer, ASAPClient, HandlerRegistry, the transports and the
 * pool), the protocol essentials, the errors callers catch, and the seams with the implementation each
 * has here (DedupeStore / MemoryDedupeStore, NonceStore / MemoryNonceStore, SessionStore /
 * MemorySessionStore, PushAdapter / LocalPushAdapter, Authenticator and TokenVerifier / staticToken,
 * Logger / silentLogger, WebSocketFactory / browserWebSocketFactory, Instrumentation, Timers,
 * Principal), with the types their signatures use.
 * Lower-level building blocks live in the subpath entries: `asap-ts/protocol` (codecs, schemas, wire
 * constants), `asap-ts/core` (dispatcher, ack tracker, backoff, circuit breaker, …), `asap-ts/server`,
 * `asap-ts/client`. Importing it has no side effect. test/api-surface.test.ts holds the exact list of
 * runtime names.
 */

export {
  ASAPClient,
  type ASAPClientOptions,
  type ReplyPayload,
  type TaskOptions,
  type TaskResult,
  type TransportChoice,
} from './client/client.js';
export {
  type HttpRequestOptions,
  HttpTransport,
  type HttpTransportOptions,
} from './client/http-transport.js';
export { ConnectionPool, type ConnectionPoolOptions, type PoolEvents } from './client/pool.js';
export {
  browserWebSocketFactory,
  type WebSocketConnectOptions,
  type WebSocketFactory,
  type WebSocketLike,
} from './client/runtime.js';
export {
  type RequestOptions,
  type TransportEvents,
  type TransportState,
  WebSocketTransport,
  type WebSocketTransportOptions,
} from './client/websocket-transport.js';
export type { AckOptions } from './core/ack-tracker.js';
export type { BackoffOptions } from './core/backoff.js';
export type { CircuitBreakerOptions, CircuitState } from './core/circuit-breaker.js';
export type { Clock } from './core/clock.js';
export {
  type Claim,
  type DedupeStats,
  type DedupeStore,
  type MemoryDedupeOptions,
  MemoryDedupeStore,
  type Outcome,
} from './core/dedupe.js';
export type { Principal } from './core/identity.js';
export type {
  Instrumentation,
  RequestFinishedInfo,
  RequestInfo,
} from './core/instrumentation.js';
export { type Logger, silentLogger } from './core/logger.js';
export { MemoryNonceStore, type NonceStore } from './core/nonce-store.js';
export {
  type Handler,
  type HandlerContext,
  HandlerRegistry,
  type HandlerResult,
  type PushInit,
  type SkillInfo,
  type TransportKind,
} from './core/registry.js';
export type { ReplayOptions } from './core/replay.js';
export { MemorySessionStore, type SessionStore } from './core/session-store.js';
export type { Timer, Timers } from './core/timers.js';
export {
  ASAP_VERSION,
  createEnvelope,
  createReply,
  type Envelope,
  type EnvelopeInit,
  type EnvelopeResult,
  isPayloadType,
  validateEnvelope,
} from './protocol/envelope.js';
export {
  ASAPError,
  ConnectionError,
  ErrorCode,
  type JsonRpcErrorObject,
  LocalErrorCode,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
  type ValidationIssue,
} from './protocol/errors.js';
export type {
  AuthScheme,
  Capability,
  Endpoint,
  Health,
  Manifest,
  ParseResult,
  Skill,
} from './protocol/manifest.js';
export { validateManifest } from './protocol/manifest.js';
export type {
  ArtifactNotify,
  McpResourceData,
  McpResourceFetch,
  McpToolCall,
  McpToolResult,
  MessageAck,
  MessageSend,
  PayloadMap,
  PayloadTypeName,
  StateQuery,
  StateRestore,
  TaskCancel,
  TaskMetrics,
  TaskRequest,
  TaskRequestConfig,
  TaskResponse,
  TaskStatus,
  TaskStream,
  TaskUpdate,
} from './protocol/payloads.js';
export { isTerminalStatus, PAYLOAD_SCHEMAS } from './protocol/payloads.js';
export type { JsonObject } from './protocol/schema-util.js';
export { type Authenticator, type AuthRequest, staticToken, type TokenVerifier } from './server/auth.js';
export type { ConnectionInfo } from './server/connection.js';
export type {
  ConnectionEvent,
  DisconnectEvent,
  ServerErrorContext,
  ServerErrorSource,
  ServerEventName,
  ServerEvents,
} from './server/events.js';
export type { ManifestInit } from './server/manifest.js';
export { LocalPushAdapter, type PushAdapter, type PushTarget } from './server/push-adapter.js';
export {
  ASAPServer,
  type ASAPServerOptions,
  type BoundAddress,
  type ListenOptions,
} from './server/server.js';
