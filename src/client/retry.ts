// Retry classification of errors (asap-wire.md §11: our client treats `data.recoverable: true` as
// retryable). src/protocol/errors.ts stays the one place that maps conditions to codes; this only
// reads what a peer said.
import { ASAPError, ErrorCode, LocalErrorCode } from '../protocol/errors.js';

/** Codes worth a retry when the peer did not say (a server older than §11 sends no `recoverable`). */
const RECOVERABLE_CODES: ReadonlySet<number> = new Set<number>([
  ErrorCode.ResourceExhausted,
  ErrorCode.CircuitOpen,
  ErrorCode.Timeout,
  LocalErrorCode.RequestTimeout,
  LocalErrorCode.ConnectionFailed,
]);

function dataOf(err: unknown): Record<string, unknown> | undefined {
  if (!(err instanceof ASAPError)) return undefined;
  const data = err.data;
  return typeof data === 'object' && data !== null && !Array.isArray(data)
    ? (data as Record<string, unknown>)
    : undefined;
}

/**
 * Whether retrying the request may succeed: the peer's `data.recoverable` when it sent one (rate
 * limit, overload, shutting down, timeouts, circuit open); otherwise by code (-32040, -32011, -32033,
 * and the local timeout and connection failure: no answer came). An abort, a protocol violation, or
 * anything that is no ASAPError is not.
 */
export function isRecoverable(err: unknown): boolean {
  if (!(err instanceof ASAPError)) return false;
  const recoverable = dataOf(err)?.recoverable;
  if (typeof recoverable === 'boolean') return recoverable;
  return RECOVERABLE_CODES.has(err.code);
}

/** The peer's `data.asap_taxonomy_code` (e.g. `asap:transport/timeout`), if it sent one. */
export function taxonomyCode(err: unknown): string | undefined {
  const code = dataOf(err)?.asap_taxonomy_code;
  return typeof code === 'string' ? code : undefined;
}

/** The peer's `data.retry_after_ms`, if it sent one (a rate limit's hint). */
export function retryAfterMs(err: unknown): number | undefined {
  const ms = dataOf(err)?.retry_after_ms;
  return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}
