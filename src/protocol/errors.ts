/**
 * The error taxonomy of asap-wire.md §3. Every failure that reaches a peer is
 * an {@link ASAPError} carrying one of these codes; this file is the only place
 * that maps a condition to a code. Failures of our own side carry a
 * {@link LocalErrorCode} instead, which never goes on the wire.
 */
export const ErrorCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  InvalidState: -32000,
  InvalidTimestamp: -32002,
  InvalidNonce: -32003,
  Unauthorized: -32004,
  TaskNotFound: -32010,
  CircuitOpen: -32011,
  HandlerNotFound: -32012,
  Timeout: -32033,
  ResourceExhausted: -32040,
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * Codes of failures detected by this process, not answered by a peer: the
 * local range -31000..-31099, outside JSON-RPC's reserved -32768..-32000 (so
 * outside every {@link ErrorCode}). They are carried only by the local error
 * classes ({@link ConnectionError}, {@link RequestTimeoutError},
 * {@link ProtocolError}, {@link RequestAbortedError}), whose `local` is true,
 * and are never sent: the wire form of a local error is {@link toWireError}'s.
 */
export const LocalErrorCode = {
  /** The connection could not be opened, or closed before the answer came. */
  ConnectionFailed: -31001,
  /** No answer within the local deadline. */
  RequestTimeout: -31002,
  /** The peer's answer breaks the protocol (e.g. correlation_id mismatch, no valid envelope). */
  ProtocolViolation: -31003,
  /** The caller aborted the request (its AbortSignal fired). */
  RequestAborted: -31004,
} as const;

export type LocalErrorCode = (typeof LocalErrorCode)[keyof typeof LocalErrorCode];

const DEFAULT_MESSAGES: Record<number, string> = {
  [-32700]: 'Parse error',
  [-32600]: 'Invalid request',
  [-32601]: 'Method not found',
  [-32602]: 'Invalid params',
  [-32603]: 'Internal error',
  [-32000]: 'Invalid state',
  [-32002]: 'Invalid timestamp',
  [-32003]: 'Invalid nonce',
  [-32004]: 'Unauthorized',
  [-32010]: 'Task not found',
  [-32011]: 'Circuit open',
  [-32012]: 'Handler not found',
  [-32033]: 'Timeout',
  [-32040]: 'Resource exhausted',
  [-31001]: 'Connection failed',
  [-31002]: 'Request timed out',
  [-31003]: 'Protocol violation',
  [-31004]: 'Request aborted',
};

/** One entry of `data.validation_errors` (pydantic's shape, so Python peers read it as-is). */
export interface ValidationIssue {
  loc: (string | number)[];
  msg: string;
  type: string;
}

/** The JSON-RPC error object as it travels. */
export interface JsonRpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/** How a peer should treat one error code (asap-wire.md §11 "Error data taxonomy"). */
export interface TaxonomyEntry {
  /** The reference's taxonomy string (`asap:<domain>/<error>`), or ours where it has none. */
  readonly asap_taxonomy_code: string;
  /** True when the same request may succeed later (rate limit, overload, shutdown, timeout, circuit open). */
  readonly recoverable: boolean;
}

/** The taxonomy of codes outside the table (the reference client's own default for them). */
export const GENERIC_TAXONOMY: TaxonomyEntry = Object.freeze({
  asap_taxonomy_code: 'asap:rpc/remote_error',
  recoverable: false,
});

const entry = (asap_taxonomy_code: string, recoverable = false): TaxonomyEntry =>
  Object.freeze({ asap_taxonomy_code, recoverable });

/**
 * The one mapping from a §3 code to `data.asap_taxonomy_code` and `data.recoverable`. Strings
 * are the reference's (`src/asap/errors.py`, docs/error-codes.md) where it has one for the
 * code; the plain JSON-RPC codes get its generic `asap:rpc/remote_error` (what its client
 * assumes for them), except -32602, whose envelope-validation meaning is the reference's
 * `malformed_envelope`. -32004 (ours) and -32040 (reserved there, without a string) get
 * strings of ours in its pattern. Recoverable exactly as §11 says: -32040, -32033, -32011.
 */
export const ERROR_TAXONOMY: Readonly<Record<ErrorCode, TaxonomyEntry>> = Object.freeze({
  [ErrorCode.ParseError]: GENERIC_TAXONOMY,
  [ErrorCode.InvalidRequest]: GENERIC_TAXONOMY,
  [ErrorCode.MethodNotFound]: GENERIC_TAXONOMY,
  [ErrorCode.InvalidParams]: entry('asap:protocol/malformed_envelope'),
  [ErrorCode.InternalError]: GENERIC_TAXONOMY,
  [ErrorCode.InvalidState]: entry('asap:protocol/invalid_state'),
  [ErrorCode.InvalidTimestamp]: entry('asap:protocol/invalid_timestamp'),
  [ErrorCode.InvalidNonce]: entry('asap:protocol/invalid_nonce'),
  [ErrorCode.Unauthorized]: entry('asap:auth/unauthorized'),
  [ErrorCode.TaskNotFound]: entry('asap:task/not_found'),
  [ErrorCode.CircuitOpen]: entry('asap:transport/circuit_open', true),
  [ErrorCode.HandlerNotFound]: entry('asap:transport/handler_not_found'),
  [ErrorCode.Timeout]: entry('asap:transport/timeout', true),
  [ErrorCode.ResourceExhausted]: entry('asap:resource/exhausted', true),
});

/** The taxonomy of `code`: its row of {@link ERROR_TAXONOMY}, or {@link GENERIC_TAXONOMY}. */
export function taxonomyOf(code: number): TaxonomyEntry {
  return (ERROR_TAXONOMY as Record<number, TaxonomyEntry | undefined>)[code] ?? GENERIC_TAXONOMY;
}

/**
 * The wire form of an error object: its `data` with `recoverable` and `asap_taxonomy_code`
 * (§11) next to the fields already there. Values `data` already carries with the right type
 * win (a handler relaying another agent's error knows better); a `data` that is not a plain
 * object (an array, a string, …) is kept under `value`. Idempotent; returns a new object.
 */
export function withTaxonomy(error: JsonRpcErrorObject): JsonRpcErrorObject {
  const t = taxonomyOf(error.code);
  const raw = error.data;
  const data: Record<string, unknown> =
    raw === undefined || raw === null
      ? {}
      : typeof raw === 'object' && !Array.isArray(raw)
        ? { ...(raw as Record<string, unknown>) }
        : { value: raw };
  if (typeof data.recoverable !== 'boolean') data.recoverable = t.recoverable;
  if (typeof data.asap_taxonomy_code !== 'string') data.asap_taxonomy_code = t.asap_taxonomy_code;
  return { code: error.code, message: error.message, data };
}

/** An error with a JSON-RPC code: thrown locally, sent to and received from peers. */
export class ASAPError extends Error {
  override readonly name: string = 'ASAPError';
  readonly code: number;
  readonly data: unknown;
  /**
   * True for a failure of this process ({@link LocalErrorCode}: no answer, or an
   * unusable one), false for an error a peer answered (including every
   * {@link ASAPError.fromJSON}) or one we answer.
   */
  readonly local: boolean = false;

  constructor(code: number, message?: string, data?: unknown) {
    super(message ?? DEFAULT_MESSAGES[code] ?? 'Error');
    this.code = code;
    this.data = data;
  }

  /**
   * The form a peer sees; never carries a stack. A local error is never sent as
   * it is: its wire form is that of {@link toWireError} (no local code, message
   * or data). Every encoder of errors uses this.
   */
  toWire(): JsonRpcErrorObject {
    return withTaxonomy(this.local ? toWireError(this).toJSON() : this.toJSON());
  }

  /** Code, message and data as they are (a local error keeps its own: for logs and callers). */
  toJSON(): JsonRpcErrorObject {
    return this.data === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, data: this.data };
  }

  /** Rebuilds an error received from a peer. */
  static fromJSON(obj: JsonRpcErrorObject): ASAPError {
    return new ASAPError(obj.code, obj.message, obj.data);
  }

  static parse(message = 'Parse error'): ASAPError {
    return new ASAPError(ErrorCode.ParseError, message);
  }
  static invalidRequest(message = 'Invalid request', data?: unknown): ASAPError {
    return new ASAPError(ErrorCode.InvalidRequest, message, data);
  }
  static methodNotFound(method: string): ASAPError {
    return new ASAPError(ErrorCode.MethodNotFound, `Method not found: ${method}`, { method });
  }
  static invalidParams(issues: ValidationIssue[], message = 'Invalid params'): ASAPError {
    return new ASAPError(ErrorCode.InvalidParams, message, { validation_errors: issues });
  }
  static invalidState(message = 'Invalid state', data?: unknown): ASAPError {
    return new ASAPError(ErrorCode.InvalidState, message, data);
  }
  static internal(message = 'Internal error'): ASAPError {
    return new ASAPError(ErrorCode.InternalError, message);
  }
  static handlerNotFound(payloadType: string): ASAPError {
    return new ASAPError(ErrorCode.HandlerNotFound, `No handler for payload type ${payloadType}`, {
      payload_type: payloadType,
    });
  }
  static timeout(message = 'Handler timed out'): ASAPError {
    return new ASAPError(ErrorCode.Timeout, message);
  }
  static resourceExhausted(message: string, data?: Record<string, unknown>): ASAPError {
    return new ASAPError(ErrorCode.ResourceExhausted, message, data);
  }
  static circuitOpen(message = 'Circuit open'): ASAPError {
    return new ASAPError(ErrorCode.CircuitOpen, message);
  }
  static unauthorized(message = 'Unauthorized'): ASAPError {
    return new ASAPError(ErrorCode.Unauthorized, message);
  }
}

/**
 * Turns anything a handler threw into the error a peer sees: ASAPErrors keep
 * their code; anything else becomes -32603 with its message and no stack. A
 * local error is returned as it is (for the logs), and its `toWire()` gives
 * the wire form of {@link toWireError}.
 */
export function toASAPError(err: unknown): ASAPError {
  if (err instanceof ASAPError) return err;
  if (err instanceof Error) return ASAPError.internal(err.message || 'Internal error');
  return ASAPError.internal(typeof err === 'string' && err !== '' ? err : 'Internal error');
}

/**
 * The error a peer sees for `err`: a wire error as it is; a local one (a handler
 * let it escape, e.g. after calling another agent) without its local code, message
 * or data: a local {@link RequestTimeoutError} becomes `-32033` (the handler ran
 * out of time: worth a retry), any other local error the opaque `-32603 Internal error`.
 * {@link ASAPError.toWire} goes through it, so every encoder of errors does.
 */
export function toWireError(err: ASAPError): ASAPError {
  if (!err.local) return err;
  if (err.code === LocalErrorCode.RequestTimeout) return ASAPError.timeout();
  return ASAPError.internal();
}

/**
 * The connection to the peer could not be opened, or was lost before the
 * answer came (code {@link LocalErrorCode.ConnectionFailed}, `local`): the
 * peer never said anything about the request. Sent on as `-32603 Internal error`.
 */
export class ConnectionError extends ASAPError {
  override readonly name: string = 'ConnectionError';
  override readonly local = true;
  constructor(message: string, data?: unknown) {
    super(LocalErrorCode.ConnectionFailed, message, data);
  }
}

/**
 * The caller aborted the request through its AbortSignal (code
 * {@link LocalErrorCode.RequestAborted}, `local`). A {@link ConnectionError},
 * so a `catch` for those still takes it. Sent on as `-32603 Internal error`.
 */
export class RequestAbortedError extends ConnectionError {
  override readonly name: string = 'RequestAbortedError';
  override readonly code: number = LocalErrorCode.RequestAborted;
  constructor(message = 'Request aborted', data?: unknown) {
    super(message, data);
  }
}

/**
 * The peer's answer breaks the protocol, e.g. a response whose correlation_id
 * does not match (code {@link LocalErrorCode.ProtocolViolation}, `local`).
 * Sent on as `-32603 Internal error`.
 */
export class ProtocolError extends ASAPError {
  override readonly name = 'ProtocolError';
  override readonly local = true;
  constructor(message: string, data?: unknown) {
    super(LocalErrorCode.ProtocolViolation, message, data);
  }
}

/**
 * A request got no answer within its local deadline (code
 * {@link LocalErrorCode.RequestTimeout}, `local`; not the peer's `-32033`).
 * Sent on as `-32033`.
 */
export class RequestTimeoutError extends ASAPError {
  override readonly name = 'RequestTimeoutError';
  override readonly local = true;
  constructor(message: string, data?: unknown) {
    super(LocalErrorCode.RequestTimeout, message, data);
  }
}
