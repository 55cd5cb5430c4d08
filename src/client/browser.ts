// Browser entry: the global WebSocket and fetch, no Node-only import. The protocol layer comes along
// so a page can build and check envelopes with the same package. scripts/build-browser.mjs bundles
// it into dist/browser/asap-client.js (`asap-ts/browser`, and the package root under the `browser`
// condition), with the protocol's schemas on src/protocol/lite-schema.ts instead of zod: the schema
// objects themselves are therefore not exported here, only their types; pages validate with
// validateEnvelope, validateManifest, validateHealth and PAYLOAD_SCHEMAS[type].safeParse.
import { type PayloadMap, type PayloadTypeName, PAYLOAD_SCHEMAS as SCHEMAS } from '../protocol/payloads.js';

export type { Logger } from '../core/logger.js';
export { silentLogger } from '../core/logger.js';
export {
  ASAP_VERSION,
  createEnvelope,
  createReply,
  type Envelope,
  type EnvelopeInit,
  type EnvelopeResult,
  isPayloadType,
  newId,
  nowTimestamp,
  validateEnvelope,
} from '../protocol/envelope.js';
export * from '../protocol/errors.js';
export {
  ASAP_SUBPROTOCOL,
  type BatchFrame,
  type BatchItem,
  BEARER_PROTOCOL_PREFIX,
  decodeFrame,
  decodeValue,
  type ErrorFrame,
  encodeBatch,
  encodeError,
  encodeFrame,
  encodeNotification,
  encodeRequest,
  encodeSuccess,
  type Frame,
  type HeartbeatFrame,
  type InvalidFrame,
  type JsonRpcId,
  MAX_BATCH,
  MAX_JSON_DEPTH,
  METHOD_ACK,
  METHOD_SEND,
  type MessageFrame,
  type NotificationFrame,
  type RequestFrame,
  type SuccessFrame,
} from '../protocol/jsonrpc.js';
export type {
  AuthScheme,
  Capability,
  Endpoint,
  Health,
  Manifest,
  ParseResult,
  Skill,
} from '../protocol/manifest.js';
export { validateHealth, validateManifest } from '../protocol/manifest.js';
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
} from '../protocol/payloads.js';
export {
  ACKED_TYPES,
  CORRELATED_TYPES,
  isTerminalStatus,
  KNOWN_PAYLOAD_TYPES,
  normalizePayloadType,
  TASK_STATUSES,
  URN_MAX_LENGTH,
  URN_PATTERN,
} from '../protocol/payloads.js';
export { isJsonObject, type JsonObject } from '../protocol/schema-util.js';
export * from './client.js';
export * from './http-transport.js';
export * from './pool.js';
export * from './retry.js';
export {
  browserWebSocketFactory,
  type WebSocketConnectOptions,
  type WebSocketFactory,
  type WebSocketLike,
} from './runtime.js';
export { readSSE, type SSEEvent, SSEParser, type SSEParserOptions } from './sse.js';
export * from './websocket-transport.js';

/** An issue of a failed parse: where (`path`), what (`code`) and why (`message`). */
export interface SchemaIssue {
  code: string;
  path: PropertyKey[];
  message: string;
}

/** A payload schema in this build: it parses (a copy of the payload, or the issues). */
export interface PayloadSchema<T> {
  safeParse(
    input: unknown,
  ): { success: true; data: T } | { success: false; error: { issues: SchemaIssue[] } };
}

/** The 14 payload types' schemas, by canonical name. */
export const PAYLOAD_SCHEMAS: { readonly [K in PayloadTypeName]: PayloadSchema<PayloadMap[K]> } = SCHEMAS;
