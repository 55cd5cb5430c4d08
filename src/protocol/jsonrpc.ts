import { ASAPError, type JsonRpcErrorObject, withTaxonomy } from './errors.js';
import { isJsonObject } from './schema-util.js';

export type JsonRpcId = string | number;

/** The method that carries envelopes, and the one that carries acknowledgements. */
export const METHOD_SEND = 'asap.send';
export const METHOD_ACK = 'asap.ack';
/** asap-wire.md §12: the client opens or resumes a session; the server answers `asap.session`. */
export const METHOD_RESUME = 'asap.resume';
export const METHOD_SESSION = 'asap.session';
export const MAX_BATCH = 50;
/**
 * Deepest JSON nesting a frame may have, the frame itself counting as level 1 (so an envelope's
 * `payload.input` may nest 124 levels, itself included). Deeper input is refused with -32600 before anything
 * recursive touches it: V8's JSON.parse is iterative, but JSON.stringify, validators and user code
 * are not, and a few thousand levels overflow the stack.
 */
export const MAX_JSON_DEPTH = 128;

/** WebSocket subprotocol of ASAP, and the prefix of the entry that carries a bearer token for browsers. */
export const ASAP_SUBPROTOCOL = 'asap.v1';
export const BEARER_PROTOCOL_PREFIX = 'asap.bearer.';

/** @internal The canonical heartbeat frames (publicly: {@link decodeFrame}, {@link encodeFrame}). */
export const PING_FRAME = '{"type":"ping"}';
/** @internal */
export const PONG_FRAME = '{"type":"pong"}';

export interface RequestFrame {
  kind: 'request';
  method: string;
  params: unknown;
  id: JsonRpcId;
}
export interface NotificationFrame {
  kind: 'notification';
  method: string;
  params: unknown;
}
export interface SuccessFrame {
  kind: 'success';
  result: unknown;
  id: JsonRpcId | null;
}
export interface ErrorFrame {
  kind: 'error';
  error: JsonRpcErrorObject;
  id: JsonRpcId | null;
}
export interface HeartbeatFrame {
  kind: 'heartbeat';
  type: 'ping' | 'pong';
}
/** Input that is not a JSON-RPC message: answer it with `error` under `id`. */
export interface InvalidFrame {
  kind: 'invalid';
  error: ASAPError;
  id: JsonRpcId | null;
}
export type MessageFrame = RequestFrame | NotificationFrame | SuccessFrame | ErrorFrame;
export type BatchItem = MessageFrame | InvalidFrame;
export interface BatchFrame {
  kind: 'batch';
  items: BatchItem[];
}
export type Frame = MessageFrame | BatchFrame | HeartbeatFrame | InvalidFrame;

/**
 * Decodes one frame or body into exactly one kind of message, or into an
 * `invalid` frame carrying the error to send back (-32700, -32600).
 */
export function decodeFrame(text: string): Frame {
  // Heartbeats are the most frequent frame on an idle connection: skip JSON.parse for the canonical spelling.
  if (text === PING_FRAME) return { kind: 'heartbeat', type: 'ping' };
  if (text === PONG_FRAME) return { kind: 'heartbeat', type: 'pong' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'invalid', error: ASAPError.parse('Parse error: invalid JSON'), id: null };
  }
  if (
    typeof value === 'object' &&
    value !== null &&
    opensMoreThan(text, MAX_JSON_DEPTH) &&
    exceedsDepth(value, MAX_JSON_DEPTH)
  ) {
    const rawId = Array.isArray(value) ? undefined : (value as Record<string, unknown>).id;
    return invalid(
      `Invalid request: JSON nested deeper than ${MAX_JSON_DEPTH} levels`,
      isId(rawId) ? rawId : null,
    );
  }
  return decodeValue(value);
}

/**
 * True when `text` has more than `max` opening brackets (inside strings too): only then can its
 * nesting exceed `max`. indexOf skips along natively, so the usual frame costs a few calls.
 */
function opensMoreThan(text: string, max: number): boolean {
  let n = 0;
  for (let i = text.indexOf('{'); i !== -1; i = text.indexOf('{', i + 1)) if (++n > max) return true;
  for (let i = text.indexOf('['); i !== -1; i = text.indexOf('[', i + 1)) if (++n > max) return true;
  return false;
}

/**
 * @internal
 * True when `root` nests objects or arrays deeper than `max` levels. Iterative (an explicit stack),
 * so it is safe on any input JSON.parse accepted; it visits containers only, which makes it cheap
 * for envelopes (a few dozen nodes) even when they carry large strings.
 */
export function exceedsDepth(root: object, max: number): boolean {
  const stack: object[] = [root];
  const depths: number[] = [1];
  while (stack.length > 0) {
    const node = stack.pop() as Record<string, unknown>;
    const depth = depths.pop()!;
    for (const key in node) {
      const v = node[key];
      if (typeof v !== 'object' || v === null) continue;
      if (depth >= max) return true;
      stack.push(v);
      depths.push(depth + 1);
    }
  }
  return false;
}

/** Like {@link decodeFrame}, for an already-parsed JSON value. */
export function decodeValue(value: unknown): Frame {
  if (Array.isArray(value)) {
    if (value.length === 0) return invalid('Invalid request: empty batch', null);
    if (value.length > MAX_BATCH) {
      return invalid(`Invalid request: batch of ${value.length} exceeds the limit of ${MAX_BATCH}`, null);
    }
    return { kind: 'batch', items: value.map(decodeMessage) };
  }
  if (isJsonObject(value) && value.jsonrpc === undefined && value.method === undefined) {
    if (value.type === 'ping' || value.type === 'pong') return { kind: 'heartbeat', type: value.type };
  }
  return decodeMessage(value);
}

function invalid(message: string, id: JsonRpcId | null): InvalidFrame {
  return { kind: 'invalid', error: ASAPError.invalidRequest(message), id };
}

function isId(value: unknown): value is JsonRpcId {
  return typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value));
}

function decodeMessage(value: unknown): BatchItem {
  if (!isJsonObject(value)) return invalid('Invalid request: expected a JSON-RPC object', null);
  const rawId = value.id;
  const id = isId(rawId) ? rawId : null;
  if (value.jsonrpc !== '2.0') return invalid('Invalid request: jsonrpc must be "2.0"', id);
  if (rawId !== undefined && rawId !== null && !isId(rawId)) {
    return invalid('Invalid request: id must be a string or a number', null);
  }
  if (value.method !== undefined) {
    if (typeof value.method !== 'string') return invalid('Invalid request: method must be a string', id);
    const params = value.params;
    if (params !== undefined && (typeof params !== 'object' || params === null)) {
      return invalid('Invalid request: params must be an object or an array', id);
    }
    if (rawId === undefined) return { kind: 'notification', method: value.method, params };
    if (rawId === null) return invalid('Invalid request: id must not be null', null);
    return { kind: 'request', method: value.method, params, id: rawId as JsonRpcId };
  }
  const hasResult = Object.hasOwn(value, 'result');
  const hasError = Object.hasOwn(value, 'error');
  if (hasResult === hasError) return invalid('Invalid request: expected a method, a result or an error', id);
  if (rawId === undefined) return invalid('Invalid request: a response needs an id', null);
  if (hasResult) return { kind: 'success', result: value.result, id };
  const err = value.error;
  if (!isJsonObject(err) || typeof err.code !== 'number' || typeof err.message !== 'string') {
    return invalid('Invalid request: error must have a numeric code and a message', id);
  }
  const error: JsonRpcErrorObject = { code: err.code, message: err.message };
  if (err.data !== undefined) error.data = err.data;
  return { kind: 'error', error, id };
}

const idText = (id: JsonRpcId | null): string => (typeof id === 'number' ? String(id) : JSON.stringify(id));

const paramsText = (params: unknown): string =>
  params === undefined ? '' : `,"params":${JSON.stringify(params)}`;

export function encodeRequest(method: string, params: unknown, id: JsonRpcId): string {
  return `{"jsonrpc":"2.0","method":${JSON.stringify(method)}${paramsText(params)},"id":${idText(id)}}`;
}

/** @internal `{"jsonrpc":"2.0","method":M,"params":{"envelope":E},"id":ID}` without a wrapper object. */
export function encodeEnvelopeRequest(method: string, envelope: unknown, id: JsonRpcId): string {
  return `{"jsonrpc":"2.0","method":${JSON.stringify(method)},"params":{"envelope":${JSON.stringify(envelope)}},"id":${idText(id)}}`;
}

export function encodeNotification(method: string, params: unknown): string {
  return `{"jsonrpc":"2.0","method":${JSON.stringify(method)}${paramsText(params)}}`;
}

export function encodeSuccess(id: JsonRpcId | null, result: unknown): string {
  return `{"jsonrpc":"2.0","result":${JSON.stringify(result)},"id":${idText(id)}}`;
}

/**
 * @internal `{"jsonrpc":"2.0","result":{"envelope":E},"id":ID}`, the answer to `asap.send`, without a
 * wrapper object.
 */
export function encodeEnvelopeResult(id: JsonRpcId | null, envelope: unknown): string {
  return encodeEnvelopeJsonResult(id, JSON.stringify(envelope));
}

/** @internal Like {@link encodeEnvelopeResult}, for an envelope already encoded as JSON text. */
export function encodeEnvelopeJsonResult(id: JsonRpcId | null, envelopeJson: string): string {
  return `{"jsonrpc":"2.0","result":{"envelope":${envelopeJson}},"id":${idText(id)}}`;
}

export function encodeError(id: JsonRpcId | null, error: ASAPError | JsonRpcErrorObject): string {
  const obj = error instanceof ASAPError ? error.toWire() : withTaxonomy(error);
  return `{"jsonrpc":"2.0","error":${JSON.stringify(obj)},"id":${idText(id)}}`;
}

/** A batch from already-encoded members, so each member is stringified once. */
export function encodeBatch(members: readonly string[]): string {
  return `[${members.join(',')}]`;
}

/** Re-encodes a decoded frame (used for tests and for proxies that forward frames). */
export function encodeFrame(frame: Frame): string {
  switch (frame.kind) {
    case 'request':
      return encodeRequest(frame.method, frame.params, frame.id);
    case 'notification':
      return encodeNotification(frame.method, frame.params);
    case 'success':
      return encodeSuccess(frame.id, frame.result);
    case 'error':
      return encodeError(frame.id, frame.error);
    case 'invalid':
      return encodeError(frame.id, frame.error);
    case 'heartbeat':
      return frame.type === 'ping' ? PING_FRAME : PONG_FRAME;
    case 'batch':
      return encodeBatch(frame.items.map(encodeFrame));
  }
}

/** @internal Reads `params.envelope` of an `asap.send` / `asap.ack` message. */
export function envelopeParam(params: unknown): unknown {
  return isJsonObject(params) ? params.envelope : undefined;
}
