// The request every benchmark sends: a realistic TaskRequest envelope of about 500 bytes of JSON.
// Each call makes a fresh envelope (new ULID id, current timestamp, new trace id), as a real client
// would: the server deduplicates by envelope id and rejects stale timestamps, so envelopes are never reused.
import { monotonicFactory } from 'ulid';

export const SENDER = 'urn:asap:agent:bench-client';
export const RECIPIENT = 'urn:asap:agent:demo';

const ulid = monotonicFactory();
const conversationId = `conv-${ulid().toLowerCase()}`;
const tracePrefix = `${process.pid.toString(16).padStart(8, '0')}${Date.now().toString(16).padStart(12, '0')}`;
let traceCounter = 0;

/** The echo skill's input: a few fields of the kind an agent-to-agent task carries. */
const ECHO_INPUT = {
  query: 'Summarise open incidents for the payments service',
  language: 'en',
  max_results: 25,
  filters: { severity: ['high', 'critical'], region: 'eu-west-1', since: '2026-11-20T00:00:00Z' },
  dry_run: false,
};

/**
 * A new TaskRequest envelope.
 * @param {{ skill?: string, input?: object, requiresAck?: boolean }} [opts]
 */
export function makeEnvelope(opts = {}) {
  const env = {
    id: ulid(),
    asap_version: '0.1',
    timestamp: new Date().toISOString(),
    sender: SENDER,
    recipient: RECIPIENT,
    payload_type: 'TaskRequest',
    payload: {
      conversation_id: conversationId,
      skill_id: opts.skill ?? 'echo',
      input: opts.input ?? ECHO_INPUT,
    },
    trace_id: `${tracePrefix}${(traceCounter++).toString(16).padStart(12, '0')}`,
  };
  if (opts.requiresAck) env.requires_ack = true;
  return env;
}

/** A fresh envelope id, for servers that build replies (same generator as the client's). */
export const newId = ulid;

/**
 * The least a server must do to answer an envelope: a new id and timestamp, sender and recipient
 * swapped, correlation_id and trace_id carried over. Used by the baseline servers.
 */
export function replyEnvelope(request, payloadType, payload) {
  return {
    id: ulid(),
    asap_version: request.asap_version,
    timestamp: new Date().toISOString(),
    sender: request.recipient,
    recipient: request.sender,
    payload_type: payloadType,
    payload,
    correlation_id: request.id,
    trace_id: request.trace_id,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const env = makeEnvelope();
  process.stdout.write(`${JSON.stringify(env, null, 2)}\n${JSON.stringify(env).length} bytes\n`);
}
