/** Realistic payloads of every ASAP payload type, shared by the protocol tests. */
import {
  createEnvelope,
  createReply,
  type Envelope,
  type JsonObject,
  type Manifest,
  PAYLOAD_SCHEMAS,
  type PayloadMap,
  type PayloadTypeName,
} from '../../src/protocol/index.js';

export const CLIENT = 'urn:asap:agent:coordinator';
export const SERVER = 'urn:asap:agent:research-v1';

export const PAYLOAD_TYPES = Object.keys(PAYLOAD_SCHEMAS) as PayloadTypeName[];

/** Per type: only the required fields, and every optional field filled. */
export const PAYLOADS: { [K in PayloadTypeName]: { minimal: PayloadMap[K]; full: PayloadMap[K] } } = {
  TaskRequest: {
    minimal: { conversation_id: 'conv_01', skill_id: 'web_research', input: {} },
    full: {
      conversation_id: 'conv_01',
      parent_task_id: 'task_00',
      skill_id: 'web_research',
      input: {
        query: 'wire-compatible agent protocols',
        max_results: 5,
        filters: { lang: 'en', since: null },
      },
      config: {
        timeout_seconds: 120,
        priority: 'high',
        idempotency_key: 'idem-7f3a',
        streaming: true,
        persist_state: false,
        model: 'gpt-4o-mini',
        temperature: 0.7,
      },
    },
  },
  TaskResponse: {
    minimal: { task_id: 'task_01', status: 'completed' },
    full: {
      task_id: 'task_01',
      status: 'completed',
      result: { summary: 'Three protocols compared.', artifacts: ['art_01'] },
      final_state: { step: 3, done: true },
      metrics: { duration_ms: 1234, tokens_in: 120, tokens_out: 480, tokens_used: 600, api_calls: 2 },
    },
  },
  TaskUpdate: {
    minimal: { task_id: 'task_01', update_type: 'status_change', status: 'working' },
    full: {
      task_id: 'task_01',
      update_type: 'input_required',
      status: 'input_required',
      progress: { percent: 42.5, message: 'Waiting for confirmation', eta_seconds: 30 },
      input_request: { prompt: 'Include paywalled sources?', options: ['yes', 'no'] },
    },
  },
  TaskStream: {
    minimal: {},
    full: { chunk: 'Hello, ', progress: 0.25, final: false, status: 'working' },
  },
  TaskCancel: {
    minimal: { task_id: 'task_01' },
    full: { task_id: 'task_01', reason: 'User aborted the request' },
  },
  MessageSend: {
    minimal: { task_id: 'task_01', message_id: 'msg_01', sender: CLIENT, role: 'user', parts: [] },
    full: {
      task_id: 'task_01',
      message_id: 'msg_02',
      sender: SERVER,
      role: 'assistant',
      parts: ['part_01', 'part_02'],
    },
  },
  StateQuery: {
    minimal: { task_id: 'task_01' },
    full: { task_id: 'task_01', version: 3 },
  },
  StateRestore: {
    minimal: { task_id: 'task_01', snapshot_id: 'snap_03' },
    full: { task_id: 'task_01', snapshot_id: 'snap_03' },
  },
  ArtifactNotify: {
    minimal: { artifact_id: 'art_01', task_id: 'task_01' },
    full: { artifact_id: 'art_01', task_id: 'task_01', name: 'report.pdf' },
  },
  McpToolCall: {
    minimal: { request_id: 'req_01', tool_name: 'web_search', arguments: {} },
    full: {
      request_id: 'req_01',
      tool_name: 'web_search',
      arguments: { q: 'asap protocol', limit: 10 },
      mcp_context: { server: 'mcp://search.local', session: 'sess_9' },
    },
  },
  McpToolResult: {
    minimal: { request_id: 'req_01', success: true },
    full: {
      request_id: 'req_01',
      success: true,
      result: { hits: [{ url: 'https://example.org', score: 0.9 }] },
    },
  },
  McpResourceFetch: {
    minimal: { resource_uri: 'mcp://docs/readme.md' },
    full: { resource_uri: 'mcp://docs/readme.md' },
  },
  McpResourceData: {
    minimal: { resource_uri: 'mcp://docs/readme.md', content: {} },
    full: { resource_uri: 'mcp://docs/readme.md', content: { mime_type: 'text/markdown', text: '# Readme' } },
  },
  MessageAck: {
    minimal: { original_envelope_id: '01JDQ1Z8K4X5V6W7Y8Z9A0B1C2', status: 'received' },
    full: {
      original_envelope_id: '01JDQ1Z8K4X5V6W7Y8Z9A0B1C2',
      status: 'rejected',
      error: 'payload failed validation',
    },
  },
};

/** Extra valid payloads worth covering on their own. */
export const EXTRA_PAYLOADS: { type: PayloadTypeName; name: string; payload: JsonObject }[] = [
  {
    type: 'McpToolResult',
    name: 'failed tool call',
    payload: { request_id: 'req_02', success: false, error: 'tool crashed' },
  },
  {
    type: 'TaskRequest',
    name: 'optional fields null',
    payload: { conversation_id: 'c', parent_task_id: null, skill_id: 's', input: {}, config: null },
  },
  {
    type: 'TaskResponse',
    name: 'failed without result',
    payload: { task_id: 't', status: 'failed', result: null, final_state: null, metrics: null },
  },
];

/** Types answered with a reply (correlation_id required). */
export const CORRELATED: ReadonlySet<PayloadTypeName> = new Set([
  'TaskResponse',
  'TaskStream',
  'McpToolResult',
  'McpResourceData',
]);

export const REQUEST_ENVELOPE: Envelope = createEnvelope({
  sender: CLIENT,
  recipient: SERVER,
  payload_type: 'TaskRequest',
  payload: { ...PAYLOADS.TaskRequest.full },
  trace_id: 'trace-0af7651916cd43dd',
});

/** An envelope of `type`, built the way a peer would: replies for correlated types, fresh envelopes otherwise. */
export function envelopeOf(type: PayloadTypeName, payload: object): Envelope<object> {
  return CORRELATED.has(type)
    ? createReply(REQUEST_ENVELOPE, type, payload)
    : createEnvelope({ sender: CLIENT, recipient: SERVER, payload_type: type, payload });
}

/** A wire-form envelope (plain JSON) with every field given explicitly. */
export function rawEnvelope(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: '01JDQ1Z8K4X5V6W7Y8Z9A0B1C2',
    asap_version: '0.1',
    timestamp: '2026-11-26T17:30:00.123Z',
    sender: CLIENT,
    recipient: SERVER,
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'conv_01', skill_id: 'web_research', input: { query: 'q' } },
    ...overrides,
  };
}

/** A manifest of the kind our server publishes at /.well-known/asap/manifest.json. */
export const SERVER_MANIFEST: Manifest = {
  id: SERVER,
  name: 'Research Agent',
  version: '1.2.0',
  description: 'Performs web research and summarisation',
  capabilities: {
    asap_version: '0.1',
    skills: [
      {
        id: 'web_research',
        description: 'Search and synthesise information from the web',
        input_schema: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
        output_schema: { type: 'object', properties: { summary: { type: 'string' } } },
      },
      { id: 'echo', description: 'Echoes its input' },
    ],
    state_persistence: false,
    streaming: true,
    mcp_tools: ['web_search'],
  },
  endpoints: { asap: 'http://127.0.0.1:8000/asap', events: 'ws://127.0.0.1:8000/asap/ws' },
  supported_versions: ['0.1'],
  auth: { schemes: ['bearer'] },
  ttl_seconds: 300,
};
