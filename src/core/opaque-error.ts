import { newId } from '../protocol/envelope.js';
import { ASAPError, ErrorCode, RequestTimeoutError } from '../protocol/errors.js';
import type { Logger } from './logger.js';

/** Errors the JavaScript runtime itself throws: their messages describe our process, never the caller's request. */
const RUNTIME_ERRORS: readonly (abstract new (...args: never[]) => Error)[] = [
  TypeError,
  RangeError,
  ReferenceError,
  SyntaxError,
  EvalError,
  URIError,
];

/**
 * @internal
 * The generic -32603 a peer gets for a failure it did not cause and must not
 * see the inside of (asap-wire.md §10 "Errors"): the message is always
 * `Internal error`, and `data.error_id` names the log line that holds the cause.
 */
export function opaqueError(logger: Logger, cause: unknown, context: object = {}): ASAPError {
  const error_id = newId();
  logger.error(
    {
      ...context,
      error_id,
      err: cause instanceof Error ? cause.message : String(cause),
      stack: cause instanceof Error ? cause.stack : undefined,
    },
    'internal error',
  );
  return new ASAPError(ErrorCode.InternalError, 'Internal error', { error_id });
}

/**
 * @internal
 * What the caller sees of an error its handler threw: an ASAPError as it is
 * (a local one in its wire form: a timeout as -32033, the rest opaque);
 * the message of an ordinary `Error` (or a thrown string) when `expose` is on,
 * as the demo `fail` skill relies on; and never the text of a runtime error
 * (`Maximum call stack size exceeded`, `Cannot read properties of undefined`, …).
 */
export function handlerError(logger: Logger, err: unknown, expose: boolean, context: object): ASAPError {
  if (err instanceof ASAPError) {
    if (!err.local) return err;
    // A failure of this process the handler let escape (it called another agent that timed out):
    // a timeout stays a timeout, anything else is opaque, with its cause in the log.
    return err instanceof RequestTimeoutError ? ASAPError.timeout() : opaqueError(logger, err, context);
  }
  if (!expose || RUNTIME_ERRORS.some((T) => err instanceof T)) return opaqueError(logger, err, context);
  const message = err instanceof Error ? err.message : typeof err === 'string' ? err : '';
  if (message === '') return opaqueError(logger, err, context);
  logger.error(
    { ...context, err: message, stack: err instanceof Error ? err.stack : undefined },
    'handler failed',
  );
  return ASAPError.internal(message);
}

/**
 * @internal
 * What a peer gets when the engine itself fails around a request (a store, a codec): a wire
 * error the failing part chose on purpose (e.g. a shared store that is unreachable answers
 * -32040 with `retry_after_ms`, recoverable) as it is; anything else opaque.
 */
export function engineError(logger: Logger, cause: unknown, context: object = {}): ASAPError {
  if (cause instanceof ASAPError && !cause.local) {
    logger.warn({ ...context, code: cause.code, err: cause.message }, 'request refused');
    return cause;
  }
  return opaqueError(logger, cause, context);
}
