/**
 * The error taxonomy of asap-wire.md §3. Every failure that reaches a peer is
 * an {@link ASAPError} carrying one of these codes; this file is the only place
 * that maps a condition to a code.
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

/** An error with a JSON-RPC code: thrown locally, sent to and received from peers. */
export class ASAPError extends Error {
  override readonly name: string = 'ASAPError';
  readonly code: number;
  readonly data: unknown;

  constructor(code: number, message?: string, data?: unknown) {
    super(message ?? DEFAULT_MESSAGES[code] ?? 'Error');
    this.code = code;
    this.data = data;
  }

  /** The wire form; never carries a stack. */
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
 * their code; anything else becomes -32603 with its message and no stack.
 */
export function toASAPError(err: unknown): ASAPError {
  if (err instanceof ASAPError) return err;
  if (err instanceof Error) return ASAPError.internal(err.message || 'Internal error');
  return ASAPError.internal(typeof err === 'string' && err !== '' ? err : 'Internal error');
}

/**
 * Failures of the local side (connection lost, request timed out, response
 * that does not bind to its request): distinct from remote errors so callers
 * can tell "the peer said no" from "we never heard back".
 */
export class ConnectionError extends ASAPError {
  override readonly name = 'ConnectionError';
  constructor(message: string, data?: unknown) {
    super(ErrorCode.InternalError, message, data);
  }
}

/** A peer broke the protocol (e.g. a response whose correlation_id does not match). */
export class ProtocolError extends ASAPError {
  override readonly name = 'ProtocolError';
  constructor(message: string, data?: unknown) {
    super(ErrorCode.InvalidRequest, message, data);
  }
}

/** A request got no answer within its deadline (local timeout, code -32033). */
export class RequestTimeoutError extends ASAPError {
  override readonly name = 'RequestTimeoutError';
  constructor(message: string) {
    super(ErrorCode.Timeout, message);
  }
}
