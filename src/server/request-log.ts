import type { Instrumentation, RequestFinishedInfo } from '../core/instrumentation.js';
import type { Logger } from '../core/logger.js';

/**
 * @internal
 * One `info` line per finished request (`request finished`: payload type, skill, sender, trace id,
 * outcome, JSON-RPC error code, milliseconds, transport, envelope id), from the `requestFinished`
 * hook. Fields a request does not have are left out. Undefined when the logger drops `info`, so
 * that a server logging less pays nothing per request.
 */
export function requestLog(logger: Logger): Instrumentation | undefined {
  if (logger.isLevelEnabled !== undefined && !logger.isLevelEnabled('info')) return undefined;
  return {
    requestFinished(info: RequestFinishedInfo) {
      // One object shape for every line (pino leaves undefined fields out of the JSON).
      logger.info(
        {
          payload_type: info.payloadType,
          skill: info.skill,
          sender: info.sender,
          envelope_id: info.envelopeId,
          trace_id: info.traceId,
          transport: info.transport,
          outcome: info.outcome,
          error_code: info.errorCode,
          ms: Math.round(info.durationMs * 100) / 100,
        },
        'request finished',
      );
    },
  };
}
