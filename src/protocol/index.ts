// `asap-ts/protocol`: pure data and codecs, browser-safe. Helpers tuned for the engine's hot paths
// (pre-encoded envelope frames, the canonical heartbeat strings, …) are @internal and stay out.
export {
  ASAP_VERSION,
  createEnvelope,
  createReply,
  type Envelope,
  type EnvelopeInit,
  type EnvelopeResult,
  EnvelopeSchema,
  isPayloadType,
  newId,
  nowTimestamp,
  validateEnvelope,
} from './envelope.js';
export * from './errors.js';
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
} from './jsonrpc.js';
export * from './manifest.js';
export * from './payloads.js';
export { isJsonObject, type JsonObject } from './schema-util.js';
