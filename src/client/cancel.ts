import { createEnvelope, type Envelope } from '../protocol/envelope.js';
import { normalizePayloadType, type TaskCancel } from '../protocol/payloads.js';

/** The TaskCancel of a TaskRequest envelope `request` (same addresses, `task_id` its id), or undefined for any other type. */
export function cancelEnvelopeFor(
  request: Envelope<object>,
  reason?: string,
): Envelope<TaskCancel> | undefined {
  if (normalizePayloadType(request.payload_type) !== 'taskrequest') return undefined;
  const payload: TaskCancel = { task_id: request.id };
  if (reason !== undefined) payload.reason = reason;
  return createEnvelope({
    sender: request.sender,
    recipient: request.recipient,
    asap_version: request.asap_version,
    payload_type: 'TaskCancel',
    payload,
    trace_id: request.trace_id,
  });
}
