/**
 * Hand-written acceptance checks for the envelopes and payloads that make up
 * almost all traffic. They follow the runtime schemas rule for rule but only
 * ever answer "certainly valid" or "not sure": anything unusual (a field the
 * check does not model, a day past the 28th, metrics, …) goes to the schema,
 * which decides and explains. So they change speed, never the verdict; a
 * property test holds them to that.
 */
import { TASK_STATUSES, URN_MAX_LENGTH, URN_PATTERN } from './payloads.js';

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const optString = (v: unknown): boolean => v === undefined || v === null || typeof v === 'string';
const optObj = (v: unknown): boolean => v === undefined || v === null || isObj(v);
const urn = (v: unknown): boolean =>
  typeof v === 'string' && v.length <= URN_MAX_LENGTH && URN_PATTERN.test(v);
const STATUSES: ReadonlySet<unknown> = new Set(TASK_STATUSES);

/** True when every own key of `o` is in `allowed` (no extra fields, no `__proto__` tricks). */
function onlyKeys(o: Obj, allowed: ReadonlySet<string>): boolean {
  for (const k in o) if (!allowed.has(k)) return false;
  return true;
}

// RFC 3339 in the common shapes; days stop at 28 so no calendar knowledge is needed here.
const TIMESTAMP =
  /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/;

const ENVELOPE_KEYS: ReadonlySet<string> = new Set([
  'id',
  'asap_version',
  'timestamp',
  'sender',
  'recipient',
  'payload_type',
  'payload',
  'correlation_id',
  'trace_id',
  'requires_ack',
  'extensions',
]);

/** The envelope's own fields (not the payload's) are certainly valid. */
export function quickEnvelope(v: unknown): v is Obj {
  if (!isObj(v) || !onlyKeys(v, ENVELOPE_KEYS)) return false;
  const { id, timestamp, requires_ack } = v;
  return (
    (id === undefined || id === null || (typeof id === 'string' && id !== '')) &&
    typeof v.asap_version === 'string' &&
    (timestamp === undefined ||
      timestamp === null ||
      (typeof timestamp === 'string' && TIMESTAMP.test(timestamp))) &&
    urn(v.sender) &&
    urn(v.recipient) &&
    typeof v.payload_type === 'string' &&
    v.payload_type !== '' &&
    isObj(v.payload) &&
    optString(v.correlation_id) &&
    optString(v.trace_id) &&
    (requires_ack === undefined || typeof requires_ack === 'boolean') &&
    optObj(v.extensions)
  );
}

const CONFIG_KEYS: ReadonlySet<string> = new Set([
  'timeout_seconds',
  'priority',
  'idempotency_key',
  'streaming',
  'persist_state',
  'model',
  'temperature',
]);
const optBool = (v: unknown): boolean => v === undefined || v === null || typeof v === 'boolean';

function quickConfig(c: unknown): boolean {
  if (c === undefined || c === null) return true;
  if (!isObj(c) || !onlyKeys(c, CONFIG_KEYS)) return false;
  const { timeout_seconds: t, temperature: temp } = c;
  return (
    (t === undefined || t === null || (Number.isSafeInteger(t) && (t as number) >= 1)) &&
    optString(c.priority) &&
    optString(c.idempotency_key) &&
    optBool(c.streaming) &&
    optBool(c.persist_state) &&
    optString(c.model) &&
    (temp === undefined || temp === null || (typeof temp === 'number' && temp >= 0 && temp <= 2))
  );
}

const keys = (...k: string[]): ReadonlySet<string> => new Set(k);
const TASK_REQUEST = keys('conversation_id', 'parent_task_id', 'skill_id', 'input', 'config');
const TASK_RESPONSE = keys('task_id', 'status', 'result', 'final_state', 'metrics');
const TASK_STREAM = keys('chunk', 'progress', 'final', 'status');
const TASK_CANCEL = keys('task_id', 'reason');
const MESSAGE_ACK = keys('original_envelope_id', 'status', 'error');
const ACK_STATUSES: ReadonlySet<unknown> = new Set(['received', 'processed', 'rejected']);

/** Payload checks by canonical type name; types without one always go to the schema. */
export const QUICK_PAYLOADS: Readonly<Record<string, (p: Obj) => boolean>> = {
  TaskRequest: (p) =>
    onlyKeys(p, TASK_REQUEST) &&
    typeof p.conversation_id === 'string' &&
    typeof p.skill_id === 'string' &&
    isObj(p.input) &&
    optString(p.parent_task_id) &&
    quickConfig(p.config),
  TaskResponse: (p) =>
    onlyKeys(p, TASK_RESPONSE) &&
    typeof p.task_id === 'string' &&
    STATUSES.has(p.status) &&
    optObj(p.result) &&
    optObj(p.final_state) &&
    (p.metrics === undefined || p.metrics === null),
  TaskStream: (p) =>
    onlyKeys(p, TASK_STREAM) &&
    (p.chunk === undefined || typeof p.chunk === 'string') &&
    (p.progress === undefined ||
      p.progress === null ||
      (typeof p.progress === 'number' && p.progress >= 0 && p.progress <= 1)) &&
    (p.final === undefined || typeof p.final === 'boolean') &&
    (p.status === undefined || p.status === null || STATUSES.has(p.status)),
  TaskCancel: (p) => onlyKeys(p, TASK_CANCEL) && typeof p.task_id === 'string' && optString(p.reason),
  MessageAck: (p) =>
    onlyKeys(p, MESSAGE_ACK) &&
    typeof p.original_envelope_id === 'string' &&
    ACK_STATUSES.has(p.status) &&
    optString(p.error),
};
