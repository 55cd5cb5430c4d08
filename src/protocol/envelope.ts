import { monotonicFactory } from 'ulid';
import * as z from 'zod';
import type { ValidationIssue } from './errors.js';
import { QUICK_PAYLOADS, quickEnvelope } from './fast-path.js';
import {
  AgentUrn,
  CORRELATED_TYPES,
  KNOWN_PAYLOAD_TYPES,
  normalizePayloadType,
  PAYLOAD_SCHEMAS,
  type PayloadMap,
  type PayloadTypeName,
} from './payloads.js';
import { isJsonObject, type JsonObject, jsonObject, opt, toValidationIssues } from './schema-util.js';

export const ASAP_VERSION = '0.1';

/** The envelope's shape; the payload is checked separately against its type (see {@link validateEnvelope}). */
export const EnvelopeSchema = z.strictObject({
  id: opt(z.string().min(1)),
  asap_version: z.string(),
  timestamp: opt(z.iso.datetime({ offset: true })),
  sender: AgentUrn,
  recipient: AgentUrn,
  payload_type: z.string().min(1),
  payload: jsonObject,
  correlation_id: opt(z.string()),
  trace_id: opt(z.string()),
  requires_ack: z.boolean().optional(),
  extensions: opt(jsonObject),
});

/**
 * A validated envelope. `id` and `timestamp` are always present after
 * validation or construction; the payload type parameter narrows `payload`.
 */
export interface Envelope<P extends object = JsonObject> {
  id: string;
  asap_version: string;
  timestamp: string;
  sender: string;
  recipient: string;
  payload_type: string;
  payload: P;
  correlation_id?: string | null;
  trace_id?: string | null;
  requires_ack?: boolean;
  extensions?: JsonObject | null;
}

/** What a caller supplies to build an envelope. */
export interface EnvelopeInit<P extends object = JsonObject> {
  sender: string;
  recipient: string;
  payload_type: string;
  payload: P;
  id?: string;
  timestamp?: string;
  asap_version?: string;
  correlation_id?: string | null;
  trace_id?: string | null;
  requires_ack?: boolean;
  extensions?: JsonObject | null;
}

/**
 * Random bytes for ULIDs, drawn from the platform CSPRNG 4 KiB at a time: ulid's own source asks the
 * CSPRNG for one byte per character (16 calls per id), a few percent of a busy server's time.
 */
const pool = new Uint8Array(4096);
let poolIndex = pool.length;
function pooledRandom(): number {
  if (poolIndex === pool.length) {
    globalThis.crypto.getRandomValues(pool);
    poolIndex = 0;
  }
  return pool[poolIndex++]! / 256;
}

const nextUlid = monotonicFactory(pooledRandom);

/** A new ULID (monotonic within this process, so ids sort by creation). */
export function newId(): string {
  return nextUlid();
}

/** Current time as RFC 3339 UTC with milliseconds. */
export function nowTimestamp(now: number = Date.now()): string {
  // A busy agent stamps dozens of envelopes per millisecond: format each millisecond once.
  if (now !== lastStampMs) {
    lastStampMs = now;
    lastStamp = new Date(now).toISOString();
  }
  return lastStamp;
}
let lastStampMs = Number.NaN;
let lastStamp = '';

/** Builds an envelope, filling `id`, `timestamp` and `asap_version`. Fields left undefined are not emitted. */
export function createEnvelope<P extends object>(init: EnvelopeInit<P>): Envelope<P> {
  const env: Envelope<P> = {
    id: init.id ?? newId(),
    asap_version: init.asap_version ?? ASAP_VERSION,
    timestamp: init.timestamp ?? nowTimestamp(),
    sender: init.sender,
    recipient: init.recipient,
    payload_type: init.payload_type,
    payload: init.payload,
  };
  if (init.correlation_id != null) env.correlation_id = init.correlation_id;
  if (init.trace_id != null) env.trace_id = init.trace_id;
  if (init.requires_ack) env.requires_ack = true;
  if (init.extensions != null) env.extensions = init.extensions;
  return env;
}

/**
 * The reply to `request`: sender and recipient swapped, `correlation_id` set to
 * the request's id, `trace_id` and `extensions.traceparent` carried over (asap-wire.md §13),
 * same `asap_version`.
 */
export function createReply<P extends object>(
  request: Pick<Envelope<object>, 'id' | 'sender' | 'recipient' | 'asap_version' | 'trace_id' | 'extensions'>,
  payloadType: string,
  payload: P,
  extra?: Pick<EnvelopeInit<P>, 'extensions' | 'requires_ack'>,
): Envelope<P> {
  // Built in one literal (every reply on the hot path goes through here); same field order as createEnvelope.
  const env: Envelope<P> = {
    id: newId(),
    asap_version: request.asap_version,
    timestamp: nowTimestamp(),
    sender: request.recipient,
    recipient: request.sender,
    payload_type: payloadType,
    payload,
    correlation_id: request.id,
  };
  if (request.trace_id != null) env.trace_id = request.trace_id;
  if (extra?.requires_ack) env.requires_ack = true;
  const traceparent = request.extensions?.traceparent;
  if (extra?.extensions != null) {
    env.extensions =
      typeof traceparent === 'string' && extra.extensions.traceparent === undefined
        ? { ...extra.extensions, traceparent }
        : extra.extensions;
  } else if (typeof traceparent === 'string') env.extensions = { traceparent };
  return env;
}

export type EnvelopeResult<P extends object = JsonObject> =
  | { ok: true; envelope: Envelope<P> }
  | { ok: false; issues: ValidationIssue[] };

/**
 * Validates an incoming envelope: strict top level, URNs, a known payload type's
 * payload strictly (unknown types pass through untouched), `correlation_id` on
 * response types. Fills a missing `id` and `timestamp` as the reference does.
 */
export function validateEnvelope(input: unknown): EnvelopeResult {
  const r = checkEnvelope(input);
  return Array.isArray(r) ? { ok: false, issues: r } : { ok: true, envelope: r };
}

/** @internal {@link validateEnvelope} without the result wrapper: the envelope, or the list of issues. */
export function checkEnvelope(input: unknown): Envelope | ValidationIssue[] {
  // The common well-formed envelope passes the hand-written checks; anything else gets the schema's verdict.
  let data: Envelope | Omit<Envelope, 'id' | 'timestamp'>;
  if (quickEnvelope(input)) {
    data = input as unknown as Envelope;
  } else {
    const parsed = EnvelopeSchema.safeParse(input);
    if (!parsed.success) return toValidationIssues(parsed.error, input);
    data = parsed.data as Envelope;
  }
  const key = normalizePayloadType(data.payload_type);
  const known = KNOWN_PAYLOAD_TYPES.get(key);
  let payload: JsonObject = data.payload;
  if (known !== undefined && QUICK_PAYLOADS[known]?.(payload) !== true) {
    const p = PAYLOAD_SCHEMAS[known].safeParse(payload);
    if (!p.success) return toValidationIssues(p.error, payload, ['payload']);
    payload = p.data as JsonObject;
  }
  if (CORRELATED_TYPES.has(key) && !data.correlation_id) {
    return [
      {
        loc: ['correlation_id'],
        msg: `correlation_id is required for ${data.payload_type}`,
        type: 'missing',
      },
    ];
  }
  const env = data as Envelope;
  if (payload === env.payload && env.id != null && env.timestamp != null) return env;
  // Never write into the caller's object: fill a copy.
  return { ...env, payload, id: env.id ?? newId(), timestamp: env.timestamp ?? nowTimestamp() };
}

/** Narrows an envelope to a known payload type by its normalised name. */
export function isPayloadType<T extends PayloadTypeName>(
  envelope: Envelope<object>,
  type: T,
): envelope is Envelope<PayloadMap[T]> {
  return KNOWN_PAYLOAD_TYPES.get(normalizePayloadType(envelope.payload_type)) === type;
}

/**
 * @internal True when `value` looks enough like an envelope to read its id and sender (used to address
 * rejections).
 */
export function envelopeHeader(
  value: unknown,
): { id: string; sender: string; recipient: string } | undefined {
  if (!isJsonObject(value)) return undefined;
  const { id, sender, recipient } = value;
  if (typeof id !== 'string' || id === '' || typeof sender !== 'string' || typeof recipient !== 'string') {
    return undefined;
  }
  if (!AgentUrn.safeParse(sender).success || !AgentUrn.safeParse(recipient).success) return undefined;
  return { id, sender, recipient };
}
