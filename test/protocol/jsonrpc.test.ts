import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ASAPError, type JsonRpcErrorObject, withTaxonomy } from '../../src/protocol/errors.js';
import {
  type BatchFrame,
  decodeFrame,
  decodeValue,
  type ErrorFrame,
  encodeBatch,
  encodeError,
  encodeFrame,
  encodeNotification,
  encodeRequest,
  encodeSuccess,
  envelopeParam,
  type Frame,
  type HeartbeatFrame,
  type JsonRpcId,
  MAX_BATCH,
  METHOD_ACK,
  METHOD_SEND,
  type MessageFrame,
  type NotificationFrame,
  PING_FRAME,
  PONG_FRAME,
  type RequestFrame,
  type SuccessFrame,
} from '../../src/protocol/jsonrpc.js';

/** The §11 taxonomy of the generic codes (-32700, -32600, -32601, -32603). */
const GENERIC = { recoverable: false, asap_taxonomy_code: 'asap:rpc/remote_error' };

/** A frame as it decodes after encoding: every error object with its taxonomy. */
function wired<F extends Frame>(frame: F): F {
  if (frame.kind === 'error') return { ...frame, error: withTaxonomy(frame.error as JsonRpcErrorObject) };
  if (frame.kind === 'batch') return { ...frame, items: frame.items.map((i) => wired(i as Frame)) };
  return frame;
}

const request = (id: unknown, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ jsonrpc: '2.0', method: METHOD_SEND, params: { envelope: {} }, id, ...extra });

function invalidOf(frame: Frame): { code: number; message: string; id: JsonRpcId | null } {
  if (frame.kind !== 'invalid') throw new Error(`expected an invalid frame, got ${frame.kind}`);
  expect(frame.error).toBeInstanceOf(ASAPError);
  return { code: frame.error.code, message: frame.error.message, id: frame.id };
}

describe('decodeFrame: valid messages (§3)', () => {
  it.each<{ name: string; text: string; frame: Frame }>([
    {
      name: 'a request with an integer id',
      text: '{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{"id":"e1"}},"id":1}',
      frame: { kind: 'request', method: 'asap.send', params: { envelope: { id: 'e1' } }, id: 1 },
    },
    {
      name: 'a request with a string id',
      text: '{"id":"ws-req-1","params":{"envelope":{}},"method":"asap.send","jsonrpc":"2.0"}',
      frame: { kind: 'request', method: 'asap.send', params: { envelope: {} }, id: 'ws-req-1' },
    },
    {
      name: 'a request with array params',
      text: '{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":0}',
      frame: { kind: 'request', method: 'sum', params: [1, 2], id: 0 },
    },
    {
      name: 'a request without params',
      text: '{"jsonrpc":"2.0","method":"rpc.discover","id":-7}',
      frame: { kind: 'request', method: 'rpc.discover', params: undefined, id: -7 },
    },
    {
      name: 'a notification',
      text: '{"jsonrpc":"2.0","method":"asap.ack","params":{"envelope":{"payload_type":"MessageAck"}}}',
      frame: {
        kind: 'notification',
        method: 'asap.ack',
        params: { envelope: { payload_type: 'MessageAck' } },
      },
    },
    {
      name: 'a notification without params',
      text: '{"jsonrpc":"2.0","method":"tick"}',
      frame: { kind: 'notification', method: 'tick', params: undefined },
    },
    {
      name: 'a success',
      text: '{"jsonrpc":"2.0","result":{"envelope":{"id":"r1"}},"id":"ws-req-1"}',
      frame: { kind: 'success', result: { envelope: { id: 'r1' } }, id: 'ws-req-1' },
    },
    {
      name: 'a success with a null result',
      text: '{"jsonrpc":"2.0","result":null,"id":3}',
      frame: { kind: 'success', result: null, id: 3 },
    },
    {
      name: 'a success with id null (reference server push)',
      text: '{"jsonrpc":"2.0","result":{"envelope":{}},"id":null}',
      frame: { kind: 'success', result: { envelope: {} }, id: null },
    },
    {
      name: 'an error with data',
      text: '{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params","data":{"validation_errors":[]}},"id":9}',
      frame: {
        kind: 'error',
        error: { code: -32602, message: 'Invalid params', data: { validation_errors: [] } },
        id: 9,
      },
    },
    {
      name: 'an error without data and id null',
      text: '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
      frame: { kind: 'error', error: { code: -32700, message: 'Parse error' }, id: null },
    },
    {
      name: 'an error with null data',
      text: '{"jsonrpc":"2.0","error":{"code":-32000,"message":"Invalid state","data":null},"id":"a"}',
      frame: { kind: 'error', error: { code: -32000, message: 'Invalid state', data: null }, id: 'a' },
    },
    {
      name: 'a fractional id',
      text: '{"jsonrpc":"2.0","method":"m","id":1.5}',
      frame: { kind: 'request', method: 'm', params: undefined, id: 1.5 },
    },
  ])('decodes $name', ({ text, frame }) => {
    expect(decodeFrame(text)).toStrictEqual(frame);
    expect(decodeValue(JSON.parse(text))).toStrictEqual(frame);
  });

  it('decodes a batch of every message kind', () => {
    const text = `[${request(1)},{"jsonrpc":"2.0","method":"asap.send","params":{}},{"jsonrpc":"2.0","result":1,"id":2},{"jsonrpc":"2.0","error":{"code":-32603,"message":"x"},"id":3}]`;
    expect(decodeFrame(text)).toStrictEqual({
      kind: 'batch',
      items: [
        { kind: 'request', method: 'asap.send', params: { envelope: {} }, id: 1 },
        { kind: 'notification', method: 'asap.send', params: {} },
        { kind: 'success', result: 1, id: 2 },
        { kind: 'error', error: { code: -32603, message: 'x' }, id: 3 },
      ],
    });
  });

  it.each([1, MAX_BATCH])('accepts a batch of %i', (size) => {
    expect(MAX_BATCH).toBe(50);
    const text = `[${Array.from({ length: size }, (_, i) => request(i)).join(',')}]`;
    const frame = decodeFrame(text);
    if (frame.kind !== 'batch') throw new Error(`expected a batch, got ${frame.kind}`);
    expect(frame.items).toHaveLength(size);
    expect(frame.items.map((item) => (item.kind === 'request' ? item.id : undefined))).toEqual(
      Array.from({ length: size }, (_, i) => i),
    );
  });

  it('turns invalid batch items into invalid items, keeping readable ids', () => {
    const text = JSON.stringify([
      1,
      { jsonrpc: '1.0', method: 'm', id: 3 },
      { jsonrpc: '2.0', method: 'm', id: 4 },
      { type: 'ping' },
      { jsonrpc: '2.0', method: 'm', id: { nested: true } },
      { jsonrpc: '2.0', method: 7, id: 'x' },
      { jsonrpc: '2.0', method: 'm', params: 'p', id: 'y' },
      [request(5)],
    ]);
    const frame = decodeFrame(text);
    if (frame.kind !== 'batch') throw new Error('expected a batch');
    expect(
      frame.items.map((item) =>
        item.kind === 'invalid' ? [item.kind, item.error.code, item.id] : [item.kind],
      ),
    ).toEqual([
      ['invalid', -32600, null],
      ['invalid', -32600, 3],
      ['request'],
      ['invalid', -32600, null],
      ['invalid', -32600, null],
      ['invalid', -32600, 'x'],
      ['invalid', -32600, 'y'],
      ['invalid', -32600, null],
    ]);
  });
});

describe('decodeFrame: heartbeats (§5)', () => {
  it.each([
    { text: PING_FRAME, type: 'ping' },
    { text: PONG_FRAME, type: 'pong' },
    { text: '{ "type": "ping" }', type: 'ping' },
    { text: '{"type" : "pong"}\n', type: 'pong' },
    { text: ' {"type":"ping"} ', type: 'ping' },
    { text: '{"type":"ping","ts":1764178200}', type: 'ping' },
  ])('decodes $text as a $type', ({ text, type }) => {
    expect(decodeFrame(text)).toStrictEqual({ kind: 'heartbeat', type });
  });

  it('has canonical frames that are the JSON the spec shows', () => {
    expect(JSON.parse(PING_FRAME)).toEqual({ type: 'ping' });
    expect(JSON.parse(PONG_FRAME)).toEqual({ type: 'pong' });
  });

  it.each([
    '{"type":"Ping"}',
    '{"type":"heartbeat"}',
    '{"type":"ping","jsonrpc":"2.0"}',
    '{"type":"ping","method":"asap.send"}',
    '{"type":["ping"]}',
    '{"type":null}',
    '"ping"',
  ])('does not take %s for a heartbeat', (text) => {
    expect(invalidOf(decodeFrame(text)).code).toBe(-32600);
  });

  it('does not accept a heartbeat inside a batch', () => {
    const frame = decodeFrame(`[${PING_FRAME}]`);
    expect(frame.kind === 'batch' && frame.items[0]?.kind).toBe('invalid');
  });
});

describe('decodeFrame: invalid input (§3 error codes)', () => {
  it.each(['', 'not json', '{"jsonrpc":"2.0",', "{'jsonrpc':'2.0'}", '{"a":1}}', 'NaN', '\u0000'])(
    'answers non-JSON %j with -32700 and id null',
    (text) => {
      expect(invalidOf(decodeFrame(text))).toMatchObject({ code: -32700, id: null });
    },
  );

  it.each<{ name: string; text: string; id: JsonRpcId | null; message?: RegExp }>([
    { name: 'a number', text: '42', id: null, message: /JSON-RPC object/ },
    { name: 'a string', text: '"asap.send"', id: null },
    { name: 'null', text: 'null', id: null },
    { name: 'true', text: 'true', id: null },
    { name: 'an empty batch', text: '[]', id: null, message: /empty batch/ },
    { name: 'a missing jsonrpc', text: '{"method":"asap.send","id":"a"}', id: 'a', message: /"2.0"/ },
    { name: 'jsonrpc 1.0', text: request(7, { jsonrpc: '1.0' }), id: 7, message: /"2.0"/ },
    { name: 'jsonrpc as a number', text: request(8, { jsonrpc: 2.0 }), id: 8, message: /"2.0"/ },
    { name: 'an object id', text: request({ a: 1 }), id: null, message: /id must be/ },
    { name: 'an array id', text: request([1]), id: null, message: /id must be/ },
    { name: 'a boolean id', text: request(true), id: null, message: /id must be/ },
    { name: 'a bad id and a bad jsonrpc', text: request(false, { jsonrpc: '1' }), id: null },
    { name: 'a null id on a request', text: request(null), id: null, message: /must not be null/ },
    { name: 'a numeric method', text: request(1, { method: 5 }), id: 1, message: /method must be a string/ },
    { name: 'a null method', text: request(1, { method: null }), id: 1, message: /method must be a string/ },
    { name: 'string params', text: request(2, { params: 'envelope' }), id: 2, message: /params/ },
    { name: 'number params', text: request(3, { params: 42 }), id: 3, message: /params/ },
    { name: 'null params', text: request(4, { params: null }), id: 4, message: /params/ },
    { name: 'boolean params', text: request('b', { params: true }), id: 'b', message: /params/ },
    {
      name: 'string params on a notification',
      text: '{"jsonrpc":"2.0","method":"m","params":"x"}',
      id: null,
    },
    {
      name: 'no method, result or error',
      text: '{"jsonrpc":"2.0","id":5}',
      id: 5,
      message: /method, a result/,
    },
    {
      name: 'both result and error',
      text: '{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"m"},"id":6}',
      id: 6,
      message: /method, a result/,
    },
    { name: 'a result without id', text: '{"jsonrpc":"2.0","result":1}', id: null, message: /needs an id/ },
    {
      name: 'an error without id',
      text: '{"jsonrpc":"2.0","error":{"code":1,"message":"m"}}',
      id: null,
      message: /needs an id/,
    },
    {
      name: 'a string error',
      text: '{"jsonrpc":"2.0","error":"boom","id":1}',
      id: 1,
      message: /numeric code/,
    },
    { name: 'a null error', text: '{"jsonrpc":"2.0","error":null,"id":1}', id: 1, message: /numeric code/ },
    {
      name: 'an error with a string code',
      text: '{"jsonrpc":"2.0","error":{"code":"-32600","message":"m"},"id":1}',
      id: 1,
    },
    { name: 'an error without message', text: '{"jsonrpc":"2.0","error":{"code":-32600},"id":"z"}', id: 'z' },
    {
      name: 'a batch of 51',
      text: `[${Array.from({ length: MAX_BATCH + 1 }, (_, i) => request(i)).join(',')}]`,
      id: null,
      message: /51 exceeds the limit of 50/,
    },
  ])('answers $name with -32600', ({ text, id, message }) => {
    const invalid = invalidOf(decodeFrame(text));
    expect(invalid.code).toBe(-32600);
    expect(invalid.id).toBe(id);
    if (message !== undefined) expect(invalid.message).toMatch(message);
  });

  it('answers an oversized batch with one error and decodes none of it', () => {
    const frame = decodeValue(Array.from({ length: 200 }, () => ({ jsonrpc: '2.0', method: 'm', id: 1 })));
    expect(frame.kind).toBe('invalid');
    expect('items' in frame).toBe(false);
  });
});

describe('encoders', () => {
  const envelope = {
    id: 'e1',
    payload_type: 'TaskRequest',
    payload: { input: { text: 'h\u00e9llo "quoted" \n' } },
  };

  it.each<{ name: string; text: string; json: unknown; frame: Frame }>([
    {
      name: 'encodeRequest',
      text: encodeRequest(METHOD_SEND, { envelope }, 'ws-req-1'),
      json: { jsonrpc: '2.0', method: 'asap.send', params: { envelope }, id: 'ws-req-1' },
      frame: { kind: 'request', method: 'asap.send', params: { envelope }, id: 'ws-req-1' },
    },
    {
      name: 'encodeRequest without params',
      text: encodeRequest('rpc.discover', undefined, 12),
      json: { jsonrpc: '2.0', method: 'rpc.discover', id: 12 },
      frame: { kind: 'request', method: 'rpc.discover', params: undefined, id: 12 },
    },
    {
      name: 'encodeNotification',
      text: encodeNotification(METHOD_ACK, { envelope }),
      json: { jsonrpc: '2.0', method: 'asap.ack', params: { envelope } },
      frame: { kind: 'notification', method: 'asap.ack', params: { envelope } },
    },
    {
      name: 'encodeNotification without params',
      text: encodeNotification('tick', undefined),
      json: { jsonrpc: '2.0', method: 'tick' },
      frame: { kind: 'notification', method: 'tick', params: undefined },
    },
    {
      name: 'encodeSuccess',
      text: encodeSuccess(3, { envelope }),
      json: { jsonrpc: '2.0', result: { envelope }, id: 3 },
      frame: { kind: 'success', result: { envelope }, id: 3 },
    },
    {
      name: 'encodeSuccess with id null',
      text: encodeSuccess(null, { envelope }),
      json: { jsonrpc: '2.0', result: { envelope }, id: null },
      frame: { kind: 'success', result: { envelope }, id: null },
    },
    {
      name: 'encodeError with an ASAPError',
      text: encodeError('a', ASAPError.methodNotFound('asap.nope')),
      json: {
        jsonrpc: '2.0',
        error: {
          code: -32601,
          message: 'Method not found: asap.nope',
          data: { method: 'asap.nope', ...GENERIC },
        },
        id: 'a',
      },
      frame: {
        kind: 'error',
        error: {
          code: -32601,
          message: 'Method not found: asap.nope',
          data: { method: 'asap.nope', ...GENERIC },
        },
        id: 'a',
      },
    },
    {
      name: 'encodeError with a plain error object',
      text: encodeError(null, { code: -32700, message: 'Parse error' }),
      json: { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error', data: GENERIC }, id: null },
      frame: { kind: 'error', error: { code: -32700, message: 'Parse error', data: GENERIC }, id: null },
    },
  ])('$name produces JSON that decodes back', ({ text, json, frame }) => {
    expect(JSON.parse(text)).toStrictEqual(json);
    expect(decodeFrame(text)).toStrictEqual(frame);
  });

  it('never puts a stack in an encoded error', () => {
    const text = encodeError(1, new ASAPError(-32603, 'boom'));
    expect(text).not.toContain('stack');
    expect(text).not.toContain('at ');
  });

  it('encodeBatch joins encoded members into an array', () => {
    const members = [encodeRequest(METHOD_SEND, { envelope }, 1), encodeSuccess(2, null)];
    const text = encodeBatch(members);
    expect(JSON.parse(text)).toEqual(members.map((m) => JSON.parse(m)));
    expect(decodeFrame(text).kind).toBe('batch');
  });

  it('encodeFrame answers an invalid frame with its error and id', () => {
    const frame = decodeFrame(request(7, { jsonrpc: '1.0' }));
    expect(JSON.parse(encodeFrame(frame))).toEqual({
      jsonrpc: '2.0',
      error: { code: -32600, message: 'Invalid request: jsonrpc must be "2.0"', data: GENERIC },
      id: 7,
    });
    expect(JSON.parse(encodeFrame(decodeFrame('{')))).toEqual({
      jsonrpc: '2.0',
      error: { code: -32700, message: 'Parse error: invalid JSON', data: GENERIC },
      id: null,
    });
  });

  it.each([PING_FRAME, PONG_FRAME, '{ "type": "ping" }'])('encodeFrame writes %s canonically', (text) => {
    const frame = decodeFrame(text);
    expect(encodeFrame(frame)).toBe(text.includes('ping') ? PING_FRAME : PONG_FRAME);
  });

  it('encodeFrame encodes every batch item', () => {
    const frame = decodeFrame(`[${request(1)},1]`);
    expect(JSON.parse(encodeFrame(frame))).toEqual([
      { jsonrpc: '2.0', method: 'asap.send', params: { envelope: {} }, id: 1 },
      {
        jsonrpc: '2.0',
        error: { code: -32600, message: 'Invalid request: expected a JSON-RPC object', data: GENERIC },
        id: null,
      },
    ]);
  });

  it.each([
    { params: { envelope }, expected: envelope },
    { params: { envelope: null }, expected: null },
    { params: {}, expected: undefined },
    { params: [envelope], expected: undefined },
    { params: undefined, expected: undefined },
    { params: 'envelope', expected: undefined },
  ])('envelopeParam reads params.envelope from $params', ({ params, expected }) => {
    expect(envelopeParam(params)).toEqual(expected);
  });
});

describe('round trip (property-based)', () => {
  // JSON text → value, so -0 and other non-JSON values cannot appear.
  const json = fc.jsonValue().map((v): unknown => JSON.parse(JSON.stringify(v)));
  const jsonObject = fc.dictionary(fc.string(), json, { noNullPrototype: true, maxKeys: 5 });
  const id: fc.Arbitrary<JsonRpcId> = fc.oneof(fc.string(), fc.integer(), fc.maxSafeInteger());
  const nullableId = fc.option(id, { nil: null });
  const params = fc.option(fc.oneof(jsonObject, fc.array(json, { maxLength: 5 })), { nil: undefined });

  // Decoded frames are plain objects; fast-check may otherwise build null-prototype records.
  const plain = { noNullPrototype: true } as const;
  const requestArb: fc.Arbitrary<RequestFrame> = fc.record(
    {
      kind: fc.constant('request' as const),
      method: fc.string(),
      params,
      id,
    },
    plain,
  );
  const notificationArb: fc.Arbitrary<NotificationFrame> = fc.record(
    {
      kind: fc.constant('notification' as const),
      method: fc.string(),
      params,
    },
    plain,
  );
  const successArb: fc.Arbitrary<SuccessFrame> = fc.record(
    {
      kind: fc.constant('success' as const),
      result: json,
      id: nullableId,
    },
    plain,
  );
  const errorArb: fc.Arbitrary<ErrorFrame> = fc.record(
    {
      kind: fc.constant('error' as const),
      error: fc.record(
        { code: fc.integer({ min: -32768, max: 32767 }), message: fc.string(), data: json },
        { requiredKeys: ['code', 'message'], noNullPrototype: true },
      ),
      id: nullableId,
    },
    plain,
  );
  const messageArb: fc.Arbitrary<MessageFrame> = fc.oneof(requestArb, notificationArb, successArb, errorArb);
  const batchArb: fc.Arbitrary<BatchFrame> = fc.record(
    {
      kind: fc.constant('batch' as const),
      items: fc.array(messageArb, { minLength: 1, maxLength: MAX_BATCH }),
    },
    plain,
  );
  const heartbeatArb: fc.Arbitrary<HeartbeatFrame> = fc.record(
    {
      kind: fc.constant('heartbeat' as const),
      type: fc.constantFrom('ping' as const, 'pong' as const),
    },
    plain,
  );

  it.each<{ kind: string; arb: fc.Arbitrary<Frame> }>([
    { kind: 'request', arb: requestArb },
    { kind: 'notification', arb: notificationArb },
    { kind: 'success', arb: successArb },
    { kind: 'error', arb: errorArb },
    { kind: 'batch', arb: batchArb },
    { kind: 'heartbeat', arb: heartbeatArb },
  ])('a $kind encodes and decodes to itself', ({ arb }) => {
    fc.assert(
      fc.property(arb, (frame) => {
        const text = encodeFrame(frame);
        // Errors go out with the §11 taxonomy in their data.
        expect(decodeFrame(text)).toStrictEqual(wired(frame));
        expect(decodeValue(JSON.parse(text))).toStrictEqual(wired(frame));
      }),
      { numRuns: 200 },
    );
  });

  it('the dedicated encoders agree with encodeFrame', () => {
    fc.assert(
      fc.property(requestArb, notificationArb, successArb, errorArb, (req, note, ok, err) => {
        expect(encodeRequest(req.method, req.params, req.id)).toBe(encodeFrame(req));
        expect(encodeNotification(note.method, note.params)).toBe(encodeFrame(note));
        expect(encodeSuccess(ok.id, ok.result)).toBe(encodeFrame(ok));
        expect(encodeError(err.id, ASAPError.fromJSON(err.error))).toBe(encodeFrame(err));
      }),
      { numRuns: 100 },
    );
  });

  it('never throws on arbitrary text and answers garbage with -32700 or -32600', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json()), (text) => {
        const frame = decodeFrame(text);
        if (frame.kind === 'invalid') expect([-32700, -32600]).toContain(frame.error.code);
        const again = encodeFrame(frame);
        expect(() => JSON.parse(again)).not.toThrow();
      }),
      { numRuns: 500 },
    );
  });
});
