import { describe, expect, it } from 'vitest';
import {
  ASAPError,
  ConnectionError,
  decodeFrame,
  ErrorCode,
  encodeError,
  LocalErrorCode,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
  toASAPError,
  toWireError,
  withTaxonomy,
} from '../../src/protocol/index.js';

describe('ErrorCode (§3 table)', () => {
  it('has the codes of the spec', () => {
    expect(ErrorCode).toEqual({
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
    });
  });
});

describe('ASAPError', () => {
  it.each([
    [-32700, 'Parse error'],
    [-32600, 'Invalid request'],
    [-32601, 'Method not found'],
    [-32602, 'Invalid params'],
    [-32603, 'Internal error'],
    [-32000, 'Invalid state'],
    [-32002, 'Invalid timestamp'],
    [-32003, 'Invalid nonce'],
    [-32004, 'Unauthorized'],
    [-32010, 'Task not found'],
    [-32011, 'Circuit open'],
    [-32012, 'Handler not found'],
    [-32033, 'Timeout'],
    [-32040, 'Resource exhausted'],
    [-32099, 'Error'],
    [0, 'Error'],
  ])('code %i defaults to the message %j', (code, message) => {
    const err = new ASAPError(code);
    expect(err.code).toBe(code);
    expect(err.message).toBe(message);
    expect(err.data).toBeUndefined();
    expect(err.toJSON()).toStrictEqual({ code, message });
  });

  it('is an Error named ASAPError with a stack that never reaches the wire', () => {
    const err = new ASAPError(-32602, 'Bad envelope', { validation_errors: [] });
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('ASAPError');
    expect(err.stack).toContain('Bad envelope');
    const json = err.toJSON();
    expect(json).toStrictEqual({ code: -32602, message: 'Bad envelope', data: { validation_errors: [] } });
    expect(Object.keys(json)).not.toContain('stack');
    expect(JSON.stringify(err)).toBe(
      '{"code":-32602,"message":"Bad envelope","data":{"validation_errors":[]}}',
    );
  });

  it('keeps data that is falsy but defined', () => {
    expect(new ASAPError(-32000, 'x', null).toJSON()).toStrictEqual({
      code: -32000,
      message: 'x',
      data: null,
    });
    expect(new ASAPError(-32000, 'x', 0).toJSON()).toStrictEqual({ code: -32000, message: 'x', data: 0 });
  });

  it.each([
    { code: -32601, message: 'Method not found: x', data: { method: 'x' } },
    { code: -32700, message: 'Parse error' },
    { code: 4242, message: 'peer-specific', data: ['a', 1] },
  ])('fromJSON rebuilds $code', (obj) => {
    const err = ASAPError.fromJSON(obj);
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.code).toBe(obj.code);
    expect(err.message).toBe(obj.message);
    expect(err.data).toEqual(obj.data);
    expect(err.toJSON()).toStrictEqual(obj);
  });

  it.each<{ name: string; err: ASAPError; code: number; message: string; data?: unknown }>([
    { name: 'parse()', err: ASAPError.parse(), code: -32700, message: 'Parse error' },
    { name: 'parse(msg)', err: ASAPError.parse('bad JSON'), code: -32700, message: 'bad JSON' },
    { name: 'invalidRequest()', err: ASAPError.invalidRequest(), code: -32600, message: 'Invalid request' },
    {
      name: 'invalidRequest(msg, data)',
      err: ASAPError.invalidRequest('empty batch', { size: 0 }),
      code: -32600,
      message: 'empty batch',
      data: { size: 0 },
    },
    {
      name: 'methodNotFound',
      err: ASAPError.methodNotFound('asap.nope'),
      code: -32601,
      message: 'Method not found: asap.nope',
      data: { method: 'asap.nope' },
    },
    {
      name: 'invalidParams',
      err: ASAPError.invalidParams([{ loc: ['payload', 'x'], msg: 'Field required', type: 'missing' }]),
      code: -32602,
      message: 'Invalid params',
      data: { validation_errors: [{ loc: ['payload', 'x'], msg: 'Field required', type: 'missing' }] },
    },
    {
      name: 'invalidParams(issues, msg)',
      err: ASAPError.invalidParams([], 'Missing params.envelope'),
      code: -32602,
      message: 'Missing params.envelope',
      data: { validation_errors: [] },
    },
    { name: 'internal()', err: ASAPError.internal(), code: -32603, message: 'Internal error' },
    { name: 'internal(msg)', err: ASAPError.internal('db down'), code: -32603, message: 'db down' },
    {
      name: 'handlerNotFound',
      err: ASAPError.handlerNotFound('task.request'),
      code: -32012,
      message: 'No handler for payload type task.request',
      data: { payload_type: 'task.request' },
    },
    { name: 'timeout()', err: ASAPError.timeout(), code: -32033, message: 'Handler timed out' },
    { name: 'timeout(msg)', err: ASAPError.timeout('slow'), code: -32033, message: 'slow' },
    {
      name: 'resourceExhausted',
      err: ASAPError.resourceExhausted('Rate limit exceeded', { limit_per_second: 10 }),
      code: -32040,
      message: 'Rate limit exceeded',
      data: { limit_per_second: 10 },
    },
    {
      name: 'resourceExhausted without data',
      err: ASAPError.resourceExhausted('Shutting down'),
      code: -32040,
      message: 'Shutting down',
    },
    { name: 'circuitOpen()', err: ASAPError.circuitOpen(), code: -32011, message: 'Circuit open' },
    { name: 'circuitOpen(msg)', err: ASAPError.circuitOpen('peer down'), code: -32011, message: 'peer down' },
    { name: 'unauthorized()', err: ASAPError.unauthorized(), code: -32004, message: 'Unauthorized' },
    {
      name: 'unauthorized(msg)',
      err: ASAPError.unauthorized('Invalid token'),
      code: -32004,
      message: 'Invalid token',
    },
  ])('$name', ({ err, code, message, data }) => {
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.toJSON()).toStrictEqual(data === undefined ? { code, message } : { code, message, data });
  });
});

describe('toASAPError', () => {
  it('keeps an ASAPError as it is', () => {
    const err = ASAPError.handlerNotFound('X');
    expect(toASAPError(err)).toBe(err);
    const sub = new RequestTimeoutError('late');
    expect(toASAPError(sub)).toBe(sub);
  });

  it.each<{ name: string; thrown: unknown; message: string }>([
    { name: 'an Error', thrown: new Error('database unreachable'), message: 'database unreachable' },
    { name: 'a TypeError', thrown: new TypeError('x is not a function'), message: 'x is not a function' },
    { name: 'an Error without message', thrown: new Error(''), message: 'Internal error' },
    { name: 'a string', thrown: 'plain failure', message: 'plain failure' },
    { name: 'an empty string', thrown: '', message: 'Internal error' },
    { name: 'a number', thrown: 42, message: 'Internal error' },
    { name: 'undefined', thrown: undefined, message: 'Internal error' },
    { name: 'null', thrown: null, message: 'Internal error' },
    { name: 'an object', thrown: { message: 'not an Error' }, message: 'Internal error' },
  ])('maps $name to -32603', ({ thrown, message }) => {
    const err = toASAPError(thrown);
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.toJSON()).toStrictEqual({ code: -32603, message });
  });

  it('never leaks the stack of what was thrown', () => {
    const thrown = new Error('boom');
    const wire = JSON.stringify(toASAPError(thrown));
    expect(wire).toBe('{"code":-32603,"message":"boom"}');
    expect(wire).not.toContain(thrown.stack?.split('\n')[1]?.trim() ?? 'at ');
  });
});

describe('LocalErrorCode', () => {
  const wire: number[] = Object.values(ErrorCode);
  const local: number[] = Object.values(LocalErrorCode);

  it('has one code per local failure, all distinct', () => {
    expect(LocalErrorCode).toEqual({
      ConnectionFailed: -31001,
      RequestTimeout: -31002,
      ProtocolViolation: -31003,
      RequestAborted: -31004,
    });
    expect(new Set(local).size).toBe(local.length);
  });

  it('is distinct from every wire code, and outside the JSON-RPC reserved range and the local range only', () => {
    for (const code of local) {
      expect(wire).not.toContain(code);
      expect(code < -32768 || code > -32000, `${code}`).toBe(true);
      expect(code >= -31099 && code <= -31000, `${code}`).toBe(true);
    }
  });
});

describe('local error classes', () => {
  it.each<{
    name: string;
    err: ASAPError;
    code: number;
    data?: unknown;
    wire: { code: number; message: string };
  }>([
    {
      name: 'ConnectionError',
      err: new ConnectionError('socket closed', { attempts: 3 }),
      code: LocalErrorCode.ConnectionFailed,
      data: { attempts: 3 },
      wire: { code: -32603, message: 'Internal error' },
    },
    {
      name: 'RequestAbortedError',
      err: new RequestAbortedError('Request aborted: user gave up', { url: 'ws://internal:9/asap/ws' }),
      code: LocalErrorCode.RequestAborted,
      data: { url: 'ws://internal:9/asap/ws' },
      wire: { code: -32603, message: 'Internal error' },
    },
    {
      name: 'ProtocolError',
      err: new ProtocolError('correlation mismatch', { expected: 'a' }),
      code: LocalErrorCode.ProtocolViolation,
      data: { expected: 'a' },
      wire: { code: -32603, message: 'Internal error' },
    },
    {
      name: 'RequestTimeoutError',
      err: new RequestTimeoutError('No response from http://10.0.0.7:8000/asap within 60000 ms'),
      code: LocalErrorCode.RequestTimeout,
      wire: { code: ErrorCode.Timeout, message: 'Handler timed out' },
    },
  ])(
    '$name has its name, its local code and the local marker, and goes on the wire as $wire.code',
    ({ name, err, code, data, wire }) => {
      expect(err).toBeInstanceOf(ASAPError);
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe(name);
      expect(err.code).toBe(code);
      expect(err.data).toEqual(data);
      expect(err.local).toBe(true);
      expect(err.stack).toContain(err.message);

      // What a peer sees: a wire code, no local message, data or stack.
      const onWire = toWireError(err);
      expect(onWire).toBeInstanceOf(ASAPError);
      expect(onWire.local).toBe(false);
      expect(onWire.toJSON()).toStrictEqual(wire);
      expect(err.toWire()).toStrictEqual(withTaxonomy(wire));
      expect(JSON.stringify(err.toWire())).not.toContain(err.message);
      expect(toASAPError(err).toWire()).toStrictEqual(withTaxonomy(wire));
      expect(Object.values(ErrorCode)).toContain(err.toWire().code);
      expect(decodeFrame(encodeError(1, err))).toMatchObject({ kind: 'error', error: wire });
      // Its own form stays for logs and callers.
      expect(err.toJSON()).toStrictEqual(
        data === undefined ? { code, message: err.message } : { code, message: err.message, data },
      );
    },
  );

  it('a RequestAbortedError is a ConnectionError with its own code and a default message', () => {
    const err = new RequestAbortedError();
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.code).toBe(LocalErrorCode.RequestAborted);
    expect(err.code).not.toBe(new ConnectionError('x').code);
    expect(err.message).toBe('Request aborted');
    expect(err.name).toBe('RequestAbortedError');
  });

  it('tells the classes apart', () => {
    const conn = new ConnectionError('x');
    expect(conn).not.toBeInstanceOf(ProtocolError);
    expect(conn).not.toBeInstanceOf(RequestAbortedError);
    expect(conn.data).toBeUndefined();
    expect(new ProtocolError('y')).not.toBeInstanceOf(RequestTimeoutError);
    expect(new ProtocolError('y').message).toBe('y');
  });

  it('the local code tells a local timeout from the timeout a peer answered', () => {
    const mine = new RequestTimeoutError('no answer in 50 ms');
    const theirs = ASAPError.fromJSON({ code: -32033, message: 'Handler exceeded its deadline' });
    expect(mine.code).not.toBe(theirs.code);
    expect([mine.local, theirs.local]).toEqual([true, false]);
  });
});

describe('wire errors are not local', () => {
  it.each([
    ...Object.values(ErrorCode).map((code) => ({ code, message: 'm' })),
    { code: 4242, message: 'peer-specific', data: ['a', 1] },
    // A peer that sends a code of our local range is still a peer answering.
    { code: LocalErrorCode.ConnectionFailed, message: 'odd peer' },
  ])('fromJSON($code) is not local and keeps its wire form', (obj) => {
    const err = ASAPError.fromJSON(obj);
    expect(err.local).toBe(false);
    expect(toWireError(err)).toBe(err);
    expect(err.toJSON()).toStrictEqual(obj);
  });

  it('neither are the errors this process answers with', () => {
    for (const err of [
      new ASAPError(-32602, 'x'),
      ASAPError.internal('db down'),
      ASAPError.timeout(),
      toASAPError(new Error('boom')),
    ]) {
      expect(err.local).toBe(false);
      expect(toWireError(err)).toBe(err);
    }
  });
});
