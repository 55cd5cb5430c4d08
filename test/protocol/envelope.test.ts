import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { envelopeHeader } from '../../src/protocol/envelope.js';
import {
  ACKED_TYPES,
  ASAP_VERSION,
  CORRELATED_TYPES,
  createEnvelope,
  createReply,
  type Envelope,
  isPayloadType,
  isTerminalStatus,
  KNOWN_PAYLOAD_TYPES,
  newId,
  normalizePayloadType,
  nowTimestamp,
  type PayloadTypeName,
  TASK_STATUSES,
  URN_MAX_LENGTH,
  type ValidationIssue,
  validateEnvelope,
} from '../../src/protocol/index.js';
import { toValidationIssues } from '../../src/protocol/schema-util.js';
import { CLIENT, EXTRA_PAYLOADS, PAYLOAD_TYPES, PAYLOADS, rawEnvelope, SERVER } from './fixtures.js';

const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
const URN_PREFIX = 'urn:asap:agent:';

function accepted(input: unknown): Envelope {
  const r = validateEnvelope(input);
  if (!r.ok) throw new Error(`expected the envelope to be valid, got ${JSON.stringify(r.issues)}`);
  return r.envelope;
}

function rejected(input: unknown): ValidationIssue[] {
  const r = validateEnvelope(input);
  if (r.ok) throw new Error('expected the envelope to be rejected');
  for (const issue of r.issues) {
    expect(issue).toEqual({ loc: expect.any(Array), msg: expect.any(String), type: expect.any(String) });
  }
  return r.issues;
}

/** An envelope of a known type, correlated so that response types pass. */
function withPayload(payload_type: string, payload: unknown, extra: Record<string, unknown> = {}): unknown {
  return rawEnvelope({ payload_type, payload, correlation_id: 'corr-1', ...extra });
}

function nested(depth: number): unknown {
  return JSON.parse('['.repeat(depth) + ']'.repeat(depth));
}

function isPolluted(): boolean {
  return Object.hasOwn(Object.prototype, 'polluted') || ({} as { polluted?: unknown }).polluted !== undefined;
}

/** Required fields of each payload type (asap-wire.md §2, bold). */
const REQUIRED: Record<PayloadTypeName, string[]> = {
  TaskRequest: ['conversation_id', 'skill_id', 'input'],
  TaskResponse: ['task_id', 'status'],
  TaskUpdate: ['task_id', 'update_type', 'status'],
  TaskStream: [],
  TaskCancel: ['task_id'],
  MessageSend: ['task_id', 'message_id', 'sender', 'role', 'parts'],
  StateQuery: ['task_id'],
  StateRestore: ['task_id', 'snapshot_id'],
  ArtifactNotify: ['artifact_id', 'task_id'],
  McpToolCall: ['request_id', 'tool_name', 'arguments'],
  McpToolResult: ['request_id', 'success'],
  McpResourceFetch: ['resource_uri'],
  McpResourceData: ['resource_uri', 'content'],
  MessageAck: ['original_envelope_id', 'status'],
};

describe('validateEnvelope: valid envelopes (§1, §2)', () => {
  const cases = PAYLOAD_TYPES.flatMap((type) => [
    { type, variant: 'minimal', payload: PAYLOADS[type].minimal },
    { type, variant: 'full', payload: PAYLOADS[type].full },
  ]);

  it('covers all 14 payload types', () => {
    expect(new Set(cases.map((c) => c.type)).size).toBe(14);
  });

  it.each(cases)('accepts $type ($variant) and keeps its payload', ({ type, payload }) => {
    const input = withPayload(type, structuredClone(payload));
    const env = accepted(input);
    expect(env.payload).toEqual(payload);
    expect(env).toEqual(input);
  });

  it.each(EXTRA_PAYLOADS)('accepts $type: $name', ({ type, payload }) => {
    expect(accepted(withPayload(type, structuredClone(payload))).payload).toEqual(payload);
  });

  it('accepts every optional top-level field', () => {
    const input = rawEnvelope({
      correlation_id: null,
      trace_id: 'trace-1',
      requires_ack: true,
      extensions: { nonce: 'n-1', custom: { a: [1, 2] } },
    });
    expect(accepted(input)).toEqual(input);
  });

  it.each(['TaskRequest', 'task.request', 'task_request', 'taskrequest', 'TASK-REQUEST'])(
    'validates the %s spelling strictly as a TaskRequest',
    (spelling) => {
      const good = PAYLOADS.TaskRequest.minimal;
      expect(accepted(withPayload(spelling, { ...good })).payload_type).toBe(spelling);
      expect(rejected(withPayload(spelling, { ...good, bogus: 1 }))).toEqual([
        { loc: ['payload', 'bogus'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
      ]);
    },
  );
});

describe('validateEnvelope: wrong types', () => {
  it.each([
    { field: 'id', value: 5, type: 'invalid_type' },
    { field: 'id', value: '', type: 'too_small' },
    { field: 'asap_version', value: 0.1, type: 'invalid_type' },
    { field: 'asap_version', value: null, type: 'invalid_type' },
    { field: 'timestamp', value: 1764178200, type: 'invalid_type' },
    { field: 'sender', value: 42, type: 'invalid_type' },
    { field: 'recipient', value: null, type: 'invalid_type' },
    { field: 'payload_type', value: 7, type: 'invalid_type' },
    { field: 'payload_type', value: '', type: 'too_small' },
    { field: 'payload', value: [], type: 'custom' },
    { field: 'payload', value: 'text', type: 'custom' },
    { field: 'payload', value: null, type: 'custom' },
    { field: 'correlation_id', value: 5, type: 'invalid_type' },
    { field: 'trace_id', value: {}, type: 'invalid_type' },
    { field: 'requires_ack', value: 'yes', type: 'invalid_type' },
    { field: 'requires_ack', value: null, type: 'invalid_type' },
    { field: 'extensions', value: [], type: 'custom' },
    { field: 'extensions', value: 'nonce', type: 'custom' },
  ])('rejects $field = $value with $type', ({ field, value, type }) => {
    const issues = rejected(rawEnvelope({ [field]: value }));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ loc: [field], type });
  });

  it.each([null, undefined, 'envelope', 42, [], true])('rejects a non-object envelope (%s)', (value) => {
    const issues = rejected(value);
    expect(issues).toHaveLength(1);
    expect(issues[0]?.loc).toEqual([]);
  });

  it.each([
    {
      type: 'TaskRequest',
      payload: { conversation_id: 1, skill_id: 's', input: {} },
      loc: ['conversation_id'],
    },
    { type: 'TaskRequest', payload: { conversation_id: 'c', skill_id: 's', input: [] }, loc: ['input'] },
    { type: 'TaskRequest', payload: { conversation_id: 'c', skill_id: 's', input: 'x' }, loc: ['input'] },
    { type: 'TaskResponse', payload: { task_id: 't', status: 'done' }, loc: ['status'] },
    { type: 'TaskResponse', payload: { task_id: 't', status: 'completed', result: [] }, loc: ['result'] },
    {
      type: 'TaskResponse',
      payload: { task_id: 't', status: 'completed', metrics: { duration_ms: -1 } },
      loc: ['metrics', 'duration_ms'],
    },
    {
      type: 'TaskResponse',
      payload: { task_id: 't', status: 'completed', metrics: { tokens_in: 1.5 } },
      loc: ['metrics', 'tokens_in'],
    },
    {
      type: 'TaskUpdate',
      payload: { task_id: 't', update_type: 'eta', status: 'working' },
      loc: ['update_type'],
    },
    { type: 'TaskStream', payload: { chunk: 5 }, loc: ['chunk'] },
    { type: 'TaskStream', payload: { final: 'yes' }, loc: ['final'] },
    { type: 'TaskCancel', payload: { task_id: 't', reason: 5 }, loc: ['reason'] },
    {
      type: 'MessageSend',
      payload: { task_id: 't', message_id: 'm', sender: CLIENT, role: 'bot', parts: [] },
      loc: ['role'],
    },
    {
      type: 'MessageSend',
      payload: { task_id: 't', message_id: 'm', sender: CLIENT, role: 'user', parts: ['a', 2] },
      loc: ['parts', 1],
    },
    {
      type: 'MessageSend',
      payload: { task_id: 't', message_id: 'm', sender: 'bob', role: 'user', parts: [] },
      loc: ['sender'],
    },
    { type: 'StateQuery', payload: { task_id: 't', version: 1.5 }, loc: ['version'] },
    { type: 'StateQuery', payload: { task_id: 't', version: '2' }, loc: ['version'] },
    {
      type: 'McpToolCall',
      payload: { request_id: 'r', tool_name: 't', arguments: null },
      loc: ['arguments'],
    },
    { type: 'McpToolResult', payload: { request_id: 'r', success: 'true' }, loc: ['success'] },
    { type: 'McpResourceData', payload: { resource_uri: 'u', content: 'text' }, loc: ['content'] },
    { type: 'MessageAck', payload: { original_envelope_id: 'e', status: 'ok' }, loc: ['status'] },
  ])('rejects $type payload with a bad $loc', ({ type, payload, loc }) => {
    const issues = rejected(withPayload(type, payload));
    expect(issues.map((i) => i.loc)).toEqual([['payload', ...loc]]);
    expect(issues[0]?.type).not.toBe('missing');
  });
});

describe('validateEnvelope: missing fields', () => {
  it.each(['asap_version', 'sender', 'recipient', 'payload_type', 'payload'])(
    'reports an absent %s as missing',
    (field) => {
      const input = rawEnvelope();
      delete input[field];
      expect(rejected(input)).toEqual([{ loc: [field], msg: 'Field required', type: 'missing' }]);
    },
  );

  it('reports every absent field of an empty object', () => {
    expect(rejected({}).map((i) => [i.loc[0], i.type])).toEqual([
      ['asap_version', 'missing'],
      ['sender', 'missing'],
      ['recipient', 'missing'],
      ['payload_type', 'missing'],
      ['payload', 'missing'],
    ]);
  });

  const payloadCases = PAYLOAD_TYPES.flatMap((type) => REQUIRED[type].map((field) => ({ type, field })));

  it.each(payloadCases)('reports $type without $field as missing at payload.$field', ({ type, field }) => {
    const payload: Record<string, unknown> = { ...PAYLOADS[type].full };
    delete payload[field];
    expect(rejected(withPayload(type, payload))).toEqual([
      { loc: ['payload', field], msg: 'Field required', type: 'missing' },
    ]);
  });

  it('accepts a TaskStream with no field at all (all have defaults)', () => {
    expect(accepted(withPayload('TaskStream', {})).payload).toEqual({});
  });
});

describe('validateEnvelope: unknown fields are rejected', () => {
  it.each(['extra', 'payloadType', 'ID', 'nonce'])('rejects the top-level field %s', (key) => {
    expect(rejected(rawEnvelope({ [key]: 'x' }))).toEqual([
      { loc: [key], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
  });

  it('reports each unknown top-level field separately', () => {
    expect(rejected(rawEnvelope({ a: 1, b: 2 })).map((i) => i.loc)).toEqual([['a'], ['b']]);
  });

  it.each(PAYLOAD_TYPES)('rejects an unknown field inside a %s payload', (type) => {
    expect(rejected(withPayload(type, { ...PAYLOADS[type].full, surprise: true }))).toEqual([
      { loc: ['payload', 'surprise'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
  });

  it('rejects an unknown field inside TaskRequest.config', () => {
    const payload = { ...PAYLOADS.TaskRequest.minimal, config: { retries: 3 } };
    expect(rejected(withPayload('TaskRequest', payload))).toEqual([
      {
        loc: ['payload', 'config', 'retries'],
        msg: 'Extra inputs are not permitted',
        type: 'extra_forbidden',
      },
    ]);
  });

  it('allows extra keys in TaskResponse.metrics and TaskUpdate.progress', () => {
    const metrics = { duration_ms: 5, cache_hits: 3, cost_usd: 0.01 };
    const response = accepted(withPayload('TaskResponse', { task_id: 't', status: 'completed', metrics }));
    expect(response.payload['metrics']).toEqual(metrics);
    const progress = { percent: 10, message: 'fetching', step: { n: 1 } };
    const update = accepted(
      withPayload('TaskUpdate', { task_id: 't', update_type: 'progress', status: 'working', progress }),
    );
    expect(update.payload['progress']).toEqual(progress);
  });

  it('reports problems in the envelope before looking at the payload', () => {
    const input = rawEnvelope({ extra: 1, payload: { bogus: 1 } });
    expect(rejected(input)).toEqual([
      { loc: ['extra'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
  });
});

describe('validateEnvelope: agent URNs', () => {
  const name = (n: number) => 'a'.repeat(n - URN_PREFIX.length);
  const urn256 = URN_PREFIX + name(256);
  const urn257 = URN_PREFIX + name(257);
  const urnSub256 = `${URN_PREFIX}team:${'b'.repeat(256 - URN_PREFIX.length - 5)}`;

  it('builds URNs of the intended lengths', () => {
    expect([urn256.length, urn257.length, urnSub256.length]).toEqual([256, 257, 256]);
    expect(URN_MAX_LENGTH).toBe(256);
  });

  it.each(['sender', 'recipient'])('accepts a 256-character %s', (field) => {
    expect(accepted(rawEnvelope({ [field]: urn256 }))[field as 'sender']).toBe(urn256);
    expect(accepted(rawEnvelope({ [field]: urnSub256 }))[field as 'sender']).toBe(urnSub256);
  });

  it.each(['sender', 'recipient'])('rejects a 257-character %s', (field) => {
    const issues = rejected(rawEnvelope({ [field]: urn257 }));
    expect(issues).toEqual([{ loc: [field], msg: expect.stringContaining('256'), type: 'too_big' }]);
  });

  it('applies the same URN rule to MessageSend.sender', () => {
    const payload = { ...PAYLOADS.MessageSend.minimal, sender: urn257 };
    expect(rejected(withPayload('MessageSend', payload)).map((i) => i.loc)).toEqual([['payload', 'sender']]);
    expect(accepted(withPayload('MessageSend', { ...payload, sender: urn256 })).payload['sender']).toBe(
      urn256,
    );
  });

  it.each([
    'urn:asap:agent:a',
    'urn:asap:agent:research-v1',
    'urn:asap:agent:research-v1:worker-2',
    'urn:asap:agent:0',
  ])('accepts the URN %s', (urn) => {
    expect(accepted(rawEnvelope({ sender: urn })).sender).toBe(urn);
  });

  it.each([
    '',
    'urn:asap:agent:',
    'urn:asap:agent:Research',
    'urn:asap:agent:under_score',
    'urn:asap:agent:a:b:c',
    'urn:asap:agent:a:',
    'urn:asap:agent::a',
    'urn:asap:agent:a b',
    'urn:asap:agent:a\n',
    ' urn:asap:agent:a',
    'urn:asap:user:a',
    'URN:ASAP:AGENT:a',
    'agent:a',
    'urn:asap:agent:caf\u00e9',
  ])('rejects the URN %j', (urn) => {
    const issues = rejected(rawEnvelope({ recipient: urn }));
    expect(issues).toEqual([
      { loc: ['recipient'], msg: expect.stringContaining('urn:asap:agent'), type: 'invalid_format' },
    ]);
  });
});

describe('validateEnvelope: timestamps (RFC 3339)', () => {
  it.each([
    '2026-11-26T17:30:00Z',
    '2026-11-26T17:30:00.123Z',
    '2026-11-26T17:30:00.123456Z',
    '2026-11-26T17:30:00+00:00',
    '2026-11-26T17:30:00.123456+00:00',
    '2026-11-26T19:30:00+02:00',
    '2026-11-26T12:30:00-05:00',
    '2024-02-29T00:00:00Z',
  ])('accepts %s unchanged', (timestamp) => {
    expect(accepted(rawEnvelope({ timestamp })).timestamp).toBe(timestamp);
  });

  it.each([
    '2026-11-26T17:30:00',
    '2026-11-26T17:30:00.123',
    '2026-11-26 17:30:00Z',
    '2026-11-26T17:30Z',
    '2026-11-26',
    '17:30:00Z',
    '26/11/2026 17:30',
    'Thu, 26 Nov 2026 17:30:00 GMT',
    '2026-13-01T00:00:00Z',
    '2026-02-30T00:00:00Z',
    '2026-11-26T25:00:00Z',
    '2026-11-26T17:30:00+0000',
    'now',
    '',
  ])('rejects %j', (timestamp) => {
    expect(rejected(rawEnvelope({ timestamp }))).toEqual([
      { loc: ['timestamp'], msg: expect.any(String), type: 'invalid_format' },
    ]);
  });
});

describe('validateEnvelope: ranges', () => {
  const update = (progress: unknown) =>
    withPayload('TaskUpdate', { task_id: 't', update_type: 'progress', status: 'working', progress });
  const stream = (progress: unknown) => withPayload('TaskStream', { chunk: 'x', progress });
  const config = (cfg: Record<string, unknown>) =>
    withPayload('TaskRequest', { ...PAYLOADS.TaskRequest.minimal, config: cfg });

  it.each([0, 0.5, 55.5, 100])('accepts TaskUpdate progress.percent %s', (percent) => {
    expect(accepted(update({ percent })).payload['progress']).toEqual({ percent });
  });
  it.each([-0.01, -1, 100.01, 101, 1e9])('rejects TaskUpdate progress.percent %s', (percent) => {
    expect(rejected(update({ percent })).map((i) => i.loc)).toEqual([['payload', 'progress', 'percent']]);
  });
  it.each([{}, { message: 'no percent' }, null])('accepts TaskUpdate progress %j', (progress) => {
    accepted(update(progress));
  });
  it.each(['50', [50], 7])('rejects TaskUpdate progress or percent of the wrong type (%j)', (value) => {
    const input = typeof value === 'number' ? update(value) : update({ percent: value });
    expect(rejected(input)[0]?.type).toBe('invalid_type');
  });

  it.each([0, 0.001, 0.5, 1, null])('accepts TaskStream progress %s', (progress) => {
    accepted(stream(progress));
  });
  it.each([-0.1, 1.01, 2, 50])('rejects TaskStream progress %s', (progress) => {
    expect(rejected(stream(progress)).map((i) => i.loc)).toEqual([['payload', 'progress']]);
  });

  it.each([0, 1, 1.99, 2])('accepts temperature %s', (temperature) => {
    accepted(config({ temperature }));
  });
  it.each([2.01, 3, -0.1])('rejects temperature %s', (temperature) => {
    expect(rejected(config({ temperature }))).toEqual([
      {
        loc: ['payload', 'config', 'temperature'],
        msg: expect.any(String),
        type: expect.stringMatching(/^too_/),
      },
    ]);
  });

  it.each([1, 30, 86_400])('accepts timeout_seconds %s', (timeout_seconds) => {
    accepted(config({ timeout_seconds }));
  });
  it.each([
    { timeout_seconds: 0, type: 'too_small' },
    { timeout_seconds: -5, type: 'too_small' },
    { timeout_seconds: 1.5, type: 'invalid_type' },
    { timeout_seconds: '30', type: 'invalid_type' },
  ])('rejects timeout_seconds $timeout_seconds', ({ timeout_seconds, type }) => {
    expect(rejected(config({ timeout_seconds }))).toEqual([
      { loc: ['payload', 'config', 'timeout_seconds'], msg: expect.any(String), type },
    ]);
  });

  it.each([
    { metric: 'duration_ms', value: 0, ok: true },
    { metric: 'api_calls', value: -1, ok: false },
    { metric: 'tokens_used', value: 2.5, ok: false },
    { metric: 'tokens_out', value: null, ok: true },
  ])('checks TaskResponse metrics.$metric = $value', ({ metric, value, ok }) => {
    const r = validateEnvelope(
      withPayload('TaskResponse', { task_id: 't', status: 'working', metrics: { [metric]: value } }),
    );
    expect(r.ok).toBe(ok);
  });
});

describe('validateEnvelope: McpToolResult carries exactly one of result / error', () => {
  const base = { request_id: 'req_01' };
  it.each([
    { name: 'success with result', payload: { ...base, success: true, result: { v: 1 } } },
    {
      name: 'success with result and null error',
      payload: { ...base, success: true, result: {}, error: null },
    },
    { name: 'success without result', payload: { ...base, success: true } },
    { name: 'failure with error', payload: { ...base, success: false, error: 'boom' } },
    {
      name: 'failure with error and null result',
      payload: { ...base, success: false, error: 'boom', result: null },
    },
  ])('accepts $name', ({ payload }) => {
    expect(accepted(withPayload('McpToolResult', payload)).payload).toEqual(payload);
  });

  it.each([
    {
      name: 'both result and error',
      payload: { ...base, success: true, result: {}, error: 'x' },
      msg: /Exactly one/,
    },
    {
      name: 'failure with both',
      payload: { ...base, success: false, result: {}, error: 'x' },
      msg: /Exactly one/,
    },
    { name: 'success with error', payload: { ...base, success: true, error: 'x' }, msg: /successful/ },
    { name: 'failure without error', payload: { ...base, success: false }, msg: /needs an error/ },
    {
      name: 'failure with result only',
      payload: { ...base, success: false, result: {} },
      msg: /needs an error/,
    },
    {
      name: 'failure with null error',
      payload: { ...base, success: false, error: null },
      msg: /needs an error/,
    },
  ])('rejects $name', ({ payload, msg }) => {
    expect(rejected(withPayload('McpToolResult', payload))).toEqual([
      { loc: ['payload', 'error'], msg: expect.stringMatching(msg), type: 'custom' },
    ]);
  });
});

describe('validateEnvelope: correlation_id on response types (§1)', () => {
  const cases = [
    ...['TaskResponse', 'task.response', 'task_response', 'taskresponse', 'TASK-RESPONSE'].map(
      (spelling) => ({
        spelling,
        payload: PAYLOADS.TaskResponse.minimal,
      }),
    ),
    ...['TaskStream', 'task.stream', 'task_stream'].map((spelling) => ({
      spelling,
      payload: PAYLOADS.TaskStream.full,
    })),
    ...['McpToolResult', 'mcp.tool_result', 'mcp_tool_result'].map((spelling) => ({
      spelling,
      payload: PAYLOADS.McpToolResult.full,
    })),
    ...['McpResourceData', 'mcp.resource.data', 'mcp_resource_data'].map((spelling) => ({
      spelling,
      payload: PAYLOADS.McpResourceData.full,
    })),
  ];

  it.each(cases)('requires correlation_id on $spelling', ({ spelling, payload }) => {
    const expected = [
      { loc: ['correlation_id'], msg: `correlation_id is required for ${spelling}`, type: 'missing' },
    ];
    expect(rejected(rawEnvelope({ payload_type: spelling, payload }))).toEqual(expected);
    expect(rejected(rawEnvelope({ payload_type: spelling, payload, correlation_id: null }))).toEqual(
      expected,
    );
    expect(rejected(rawEnvelope({ payload_type: spelling, payload, correlation_id: '' }))).toEqual(expected);
    expect(
      accepted(rawEnvelope({ payload_type: spelling, payload, correlation_id: 'req-1' })).correlation_id,
    ).toBe('req-1');
  });

  it.each(['TaskRequest', 'TaskUpdate', 'TaskCancel', 'MessageAck', 'CustomEvent'] as const)(
    'does not require correlation_id on %s',
    (type) => {
      const payload = type === 'CustomEvent' ? { any: 'thing' } : PAYLOADS[type].full;
      expect(accepted(rawEnvelope({ payload_type: type, payload })).correlation_id).toBeUndefined();
    },
  );
});

describe('validateEnvelope: unknown payload types pass through', () => {
  it.each([
    { payload_type: 'CustomEvent', payload: {} },
    { payload_type: 'vendor.audit.log', payload: { level: 'info', lines: ['a', 'b'], meta: null } },
    {
      payload_type: 'task.requestv2',
      payload: { conversation_id: 5, whatever: [1, { deep: [true, null] }] },
    },
    { payload_type: 'x', payload: { chunk: 1, progress: 'a lot', final: 'maybe', status: 'weird' } },
  ])('passes a $payload_type payload through untouched', ({ payload_type, payload }) => {
    const sent = structuredClone(payload);
    const env = accepted(rawEnvelope({ payload_type, payload: sent }));
    expect(env.payload).toStrictEqual(payload);
    expect(sent).toStrictEqual(payload);
  });
});

describe('validateEnvelope: prototype keys in JSON text', () => {
  const text = (env: Record<string, unknown>, inject: string) => `{${inject},${JSON.stringify(env).slice(1)}`;

  it.each([
    '"__proto__":{"polluted":true}',
    '"constructor":{"prototype":{"polluted":true}}',
    '"prototype":{}',
  ])('rejects an envelope with the top-level key %s without polluting Object.prototype', (inject) => {
    const input: unknown = JSON.parse(text(rawEnvelope(), inject));
    const key = inject.slice(1, inject.indexOf('"', 1));
    expect(rejected(input)).toEqual([
      { loc: [key], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
    expect(isPolluted()).toBe(false);
  });

  const hostile = '{"__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}},"ok":1}';

  it('passes __proto__ and constructor keys through an unknown payload', () => {
    const payload: unknown = JSON.parse(hostile);
    const env = accepted(rawEnvelope({ payload_type: 'CustomEvent', payload }));
    expect(Object.hasOwn(env.payload, '__proto__')).toBe(true);
    expect(Object.getPrototypeOf(env.payload)).toBe(Object.prototype);
    expect(JSON.stringify(env.payload)).toBe(hostile);
    expect(isPolluted()).toBe(false);
  });

  it('passes __proto__ and constructor keys through TaskRequest.input and McpToolCall.arguments', () => {
    const request = accepted(
      rawEnvelope({
        payload: { conversation_id: 'c', skill_id: 's', input: JSON.parse(hostile) as unknown },
      }),
    );
    expect(JSON.stringify(request.payload['input'])).toBe(hostile);
    const call = accepted(
      withPayload('McpToolCall', {
        request_id: 'r',
        tool_name: 't',
        arguments: JSON.parse(hostile) as unknown,
      }),
    );
    expect(JSON.stringify(call.payload['arguments'])).toBe(hostile);
    expect(isPolluted()).toBe(false);
  });

  it('rejects __proto__ as an unknown field of a known payload', () => {
    const payload: unknown = JSON.parse('{"task_id":"t","__proto__":{"polluted":true}}');
    expect(rejected(withPayload('TaskCancel', payload))).toEqual([
      { loc: ['payload', '__proto__'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
    expect(isPolluted()).toBe(false);
  });

  it('does not let __proto__ in metrics change any prototype', () => {
    const metrics: unknown = JSON.parse('{"duration_ms":3,"__proto__":{"polluted":true}}');
    const env = accepted(withPayload('TaskResponse', { task_id: 't', status: 'completed', metrics }));
    const out = env.payload['metrics'];
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect((out as { polluted?: unknown }).polluted).toBeUndefined();
    expect(isPolluted()).toBe(false);
  });
});

describe('validateEnvelope: deeply nested data', () => {
  const deep = nested(10_000);

  it('accepts 10,000 levels of arrays in TaskRequest.input without throwing', () => {
    const input = { conversation_id: 'c', skill_id: 's', input: { deep } };
    expect(() => validateEnvelope(rawEnvelope({ payload: input }))).not.toThrow();
    expect(accepted(rawEnvelope({ payload: input })).payload['input']).toEqual({ deep });
  });

  it('accepts deep nesting in an unknown payload and in extensions', () => {
    expect(validateEnvelope(rawEnvelope({ payload_type: 'Blob', payload: { deep } })).ok).toBe(true);
    expect(validateEnvelope(rawEnvelope({ extensions: { deep } })).ok).toBe(true);
  });
});

describe('validateEnvelope: id and timestamp', () => {
  it('fills an absent id and timestamp', () => {
    const input = rawEnvelope();
    delete input['id'];
    delete input['timestamp'];
    const before = Date.now();
    const env = accepted(input);
    expect(env.id).toMatch(ULID);
    expect(Date.parse(env.timestamp)).toBeGreaterThanOrEqual(before - 1);
    expect(Date.parse(env.timestamp)).toBeLessThanOrEqual(Date.now() + 1);
    expect(accepted(env)).toEqual(env);
  });

  it('fills a null id and timestamp', () => {
    const env = accepted(rawEnvelope({ id: null, timestamp: null }));
    expect(env.id).toMatch(ULID);
    expect(env.timestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });

  it('keeps a given id, even when it is not a ULID', () => {
    expect(accepted(rawEnvelope({ id: 'ws-req-1' })).id).toBe('ws-req-1');
  });
});

describe('createEnvelope', () => {
  const init = { sender: CLIENT, recipient: SERVER, payload_type: 'TaskCancel', payload: { task_id: 't' } };

  it('fills id, timestamp and asap_version and emits no optional field', () => {
    const env = createEnvelope(init);
    expect(env.id).toMatch(ULID);
    expect(env.asap_version).toBe(ASAP_VERSION);
    expect(ASAP_VERSION).toBe('0.1');
    expect(Math.abs(Date.parse(env.timestamp) - Date.now())).toBeLessThan(5_000);
    expect(Object.keys(env).sort()).toEqual(
      ['asap_version', 'id', 'payload', 'payload_type', 'recipient', 'sender', 'timestamp'].sort(),
    );
    expect(accepted(env)).toEqual(env);
  });

  it('keeps what the caller gives', () => {
    const env = createEnvelope({
      ...init,
      id: 'fixed-id',
      timestamp: '2026-11-26T17:30:00Z',
      asap_version: '0.2',
      correlation_id: 'corr',
      trace_id: 'trace',
      requires_ack: true,
      extensions: { nonce: 'abc' },
    });
    expect(env).toEqual({
      ...init,
      id: 'fixed-id',
      timestamp: '2026-11-26T17:30:00Z',
      asap_version: '0.2',
      correlation_id: 'corr',
      trace_id: 'trace',
      requires_ack: true,
      extensions: { nonce: 'abc' },
    });
  });

  it('omits null optional fields and a false requires_ack', () => {
    const env = createEnvelope({
      ...init,
      correlation_id: null,
      trace_id: null,
      extensions: null,
      requires_ack: false,
    });
    for (const key of ['correlation_id', 'trace_id', 'extensions', 'requires_ack'])
      expect(key in env).toBe(false);
  });

  it('generates ids that sort by creation', () => {
    const ids = Array.from({ length: 50 }, () => createEnvelope(init).id);
    expect(new Set(ids).size).toBe(50);
    expect([...ids].sort()).toEqual(ids);
    const a = newId();
    expect(newId() > a).toBe(true);
  });

  it('formats timestamps as RFC 3339 UTC with milliseconds', () => {
    expect(nowTimestamp(0)).toBe('1970-01-01T00:00:00.000Z');
    expect(nowTimestamp(Date.UTC(2026, 10, 26, 17, 30, 0, 123))).toBe('2026-11-26T17:30:00.123Z');
  });
});

describe('createReply', () => {
  const request = createEnvelope({
    sender: CLIENT,
    recipient: SERVER,
    asap_version: '0.1',
    payload_type: 'task.request',
    payload: PAYLOADS.TaskRequest.minimal,
    trace_id: 'trace-42',
  });

  it('swaps sender and recipient, correlates and carries the trace', () => {
    const reply = createReply(request, 'task.response', PAYLOADS.TaskResponse.minimal);
    expect(reply.sender).toBe(SERVER);
    expect(reply.recipient).toBe(CLIENT);
    expect(reply.correlation_id).toBe(request.id);
    expect(reply.trace_id).toBe('trace-42');
    expect(reply.payload_type).toBe('task.response');
    expect(reply.payload).toEqual(PAYLOADS.TaskResponse.minimal);
    expect(reply.id).not.toBe(request.id);
    expect(reply.id).toMatch(ULID);
    expect(accepted(reply)).toEqual(reply);
  });

  it('keeps the request asap_version', () => {
    const old = { ...request, asap_version: '0.0.9' };
    expect(createReply(old, 'TaskStream', { chunk: 'x' }).asap_version).toBe('0.0.9');
  });

  it('emits no trace_id when the request had none', () => {
    const reply = createReply({ ...request, trace_id: null }, 'TaskStream', {});
    expect('trace_id' in reply).toBe(false);
  });

  it('passes extensions and requires_ack through', () => {
    const reply = createReply(request, 'MessageAck', PAYLOADS.MessageAck.minimal, {
      extensions: { nonce: 'n' },
      requires_ack: true,
    });
    expect(reply.extensions).toEqual({ nonce: 'n' });
    expect(reply.requires_ack).toBe(true);
  });
});

describe('normalizePayloadType (§2)', () => {
  it.each([
    ['TaskRequest', 'taskrequest'],
    ['task.request', 'taskrequest'],
    ['task_request', 'taskrequest'],
    ['Task-Request', 'taskrequest'],
    ['  TASK REQUEST  ', 'taskrequest'],
    ['MCP_TOOL_CALL', 'mcptoolcall'],
    ['v2.Thing', 'v2thing'],
    ['caf\u00e9', 'caf'],
    ['', ''],
  ])('normalises %j to %j', (input, expected) => {
    expect(normalizePayloadType(input)).toBe(expected);
    expect(normalizePayloadType(input)).toBe(expected);
  });

  it('stays correct once its memo is full', () => {
    for (let i = 0; i < 1_500; i++) expect(normalizePayloadType(`Type.${i}_X`)).toBe(`type${i}x`);
    expect(normalizePayloadType('Late.Comer')).toBe('latecomer');
  });

  it('knows the 14 payload types under their normalised names', () => {
    expect(KNOWN_PAYLOAD_TYPES.size).toBe(14);
    for (const type of PAYLOAD_TYPES) expect(KNOWN_PAYLOAD_TYPES.get(type.toLowerCase())).toBe(type);
  });

  it('lists the correlated and acked types of §1 and §6', () => {
    expect([...CORRELATED_TYPES].sort()).toEqual([
      'mcpresourcedata',
      'mcptoolresult',
      'taskresponse',
      'taskstream',
    ]);
    expect([...ACKED_TYPES].sort()).toEqual(['messagesend', 'staterestore', 'taskcancel', 'taskrequest']);
  });
});

describe('isPayloadType', () => {
  const env = (payload_type: string) =>
    createEnvelope({ sender: CLIENT, recipient: SERVER, payload_type, payload: {} });

  it.each([
    ['task.request', 'TaskRequest', true],
    ['task_request', 'TaskRequest', true],
    ['TaskRequest', 'TaskRequest', true],
    ['TaskRequest', 'TaskResponse', false],
    ['mcp.tool.result', 'McpToolResult', true],
    ['CustomEvent', 'TaskRequest', false],
  ] as const)('%s is %s: %s', (payloadType, type, expected) => {
    expect(isPayloadType(env(payloadType), type)).toBe(expected);
  });

  it('narrows the payload type', () => {
    const e: Envelope<object> = createEnvelope({
      sender: CLIENT,
      recipient: SERVER,
      payload_type: 'task.cancel',
      payload: { task_id: 'task_9' },
    });
    if (!isPayloadType(e, 'TaskCancel')) throw new Error('expected a TaskCancel');
    expect(e.payload.task_id).toBe('task_9');
  });
});

describe('envelopeHeader', () => {
  const good = { id: 'e1', sender: CLIENT, recipient: SERVER };

  it.each([
    { name: 'a full envelope', value: rawEnvelope({ id: 'e1' }), header: good },
    {
      name: 'an invalid envelope with a readable header',
      value: { ...good, payload: 5, extra: 1 },
      header: good,
    },
    { name: 'null', value: null, header: undefined },
    { name: 'an array', value: [good], header: undefined },
    { name: 'a string', value: 'e1', header: undefined },
    { name: 'no id', value: { sender: CLIENT, recipient: SERVER }, header: undefined },
    { name: 'an empty id', value: { ...good, id: '' }, header: undefined },
    { name: 'a numeric id', value: { ...good, id: 1 }, header: undefined },
    { name: 'no sender', value: { id: 'e1', recipient: SERVER }, header: undefined },
    { name: 'a numeric recipient', value: { ...good, recipient: 1 }, header: undefined },
    { name: 'a bad sender URN', value: { ...good, sender: 'alice' }, header: undefined },
    { name: 'a bad recipient URN', value: { ...good, recipient: 'urn:asap:agent:Bad' }, header: undefined },
  ])('reads $name', ({ value, header }) => {
    expect(envelopeHeader(value)).toEqual(header);
  });
});

describe('task statuses', () => {
  it.each(TASK_STATUSES.map((s) => [s, ['completed', 'failed', 'cancelled'].includes(s)] as const))(
    '%s is terminal: %s',
    (status, terminal) => {
      expect(isTerminalStatus(status)).toBe(terminal);
    },
  );
});

describe('toValidationIssues', () => {
  it('turns symbol path segments into strings', () => {
    const error = new z.ZodError([{ code: 'custom', path: [Symbol('tag'), 0], message: 'bad', input: 1 }]);
    expect(toValidationIssues(error, {})).toEqual([{ loc: ['Symbol(tag)', 0], msg: 'bad', type: 'custom' }]);
  });

  it('reads a path through a non-object as absent', () => {
    const error = new z.ZodError([
      {
        code: 'invalid_type',
        expected: 'string',
        path: ['a', 'b'],
        message: 'Expected string',
        input: undefined,
      },
    ]);
    expect(toValidationIssues(error, { a: 5 }, ['payload'])).toEqual([
      { loc: ['payload', 'a', 'b'], msg: 'Field required', type: 'missing' },
    ]);
    expect(toValidationIssues(error, { a: null })[0]?.type).toBe('missing');
    expect(toValidationIssues(error, { a: { b: 1 } })[0]?.type).toBe('invalid_type');
  });
});

describe('newId', () => {
  it('gives unique, sortable ULIDs across many calls (pooled random source refills)', () => {
    const ids = Array.from({ length: 10_000 }, () => newId());
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (const id of ids.slice(0, 50)) expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
  });
});
