import * as z from 'zod';
import { jsonObject, opt } from './schema-util.js';

/** Agent URN: `urn:asap:agent:<name>[:<sub>]`, at most 256 characters. */
export const URN_PATTERN = /^urn:asap:agent:[a-z0-9-]+(?::[a-z0-9-]+)?$/;
export const URN_MAX_LENGTH = 256;
export const AgentUrn = z
  .string()
  .max(URN_MAX_LENGTH, { message: `Agent URN must be at most ${URN_MAX_LENGTH} characters` })
  .regex(URN_PATTERN, { message: 'Agent URN must match urn:asap:agent:<name>[:<sub>]' });

export const TASK_STATUSES = [
  'submitted',
  'working',
  'completed',
  'failed',
  'cancelled',
  'input_required',
] as const;
export const TaskStatus = z.enum(TASK_STATUSES);
export type TaskStatus = z.infer<typeof TaskStatus>;
const TERMINAL = new Set<TaskStatus>(['completed', 'failed', 'cancelled']);
export const isTerminalStatus = (s: TaskStatus): boolean => TERMINAL.has(s);

export const TaskRequestConfig = z.strictObject({
  timeout_seconds: opt(z.int().min(1)),
  priority: opt(z.string()),
  idempotency_key: opt(z.string()),
  streaming: opt(z.boolean()),
  persist_state: opt(z.boolean()),
  model: opt(z.string()),
  temperature: opt(z.number().min(0).max(2)),
});

export const TaskRequest = z.strictObject({
  conversation_id: z.string(),
  parent_task_id: opt(z.string()),
  skill_id: z.string(),
  input: jsonObject,
  config: opt(TaskRequestConfig),
});

const count = opt(z.int().min(0));
export const TaskMetrics = z.looseObject({
  duration_ms: count,
  tokens_in: count,
  tokens_out: count,
  tokens_used: count,
  api_calls: count,
});

export const TaskResponse = z.strictObject({
  task_id: z.string(),
  status: TaskStatus,
  result: opt(jsonObject),
  final_state: opt(jsonObject),
  metrics: opt(TaskMetrics),
});

export const TaskUpdate = z.strictObject({
  task_id: z.string(),
  update_type: z.enum(['progress', 'input_required', 'status_change']),
  status: TaskStatus,
  progress: opt(z.looseObject({ percent: z.number().min(0).max(100).optional() })),
  input_request: opt(jsonObject),
});

export const TaskStream = z.strictObject({
  chunk: z.string().optional(),
  progress: opt(z.number().min(0).max(1)),
  final: z.boolean().optional(),
  status: opt(TaskStatus),
});

export const TaskCancel = z.strictObject({ task_id: z.string(), reason: opt(z.string()) });

export const MessageSend = z.strictObject({
  task_id: z.string(),
  message_id: z.string(),
  sender: AgentUrn,
  role: z.enum(['user', 'assistant', 'system']),
  parts: z.array(z.string()),
});

export const StateQuery = z.strictObject({ task_id: z.string(), version: opt(z.int()) });
export const StateRestore = z.strictObject({ task_id: z.string(), snapshot_id: z.string() });
export const ArtifactNotify = z.strictObject({
  artifact_id: z.string(),
  task_id: z.string(),
  name: opt(z.string()),
});

export const McpToolCall = z.strictObject({
  request_id: z.string(),
  tool_name: z.string(),
  arguments: jsonObject,
  mcp_context: opt(jsonObject),
});

export const McpToolResult = z
  .strictObject({
    request_id: z.string(),
    success: z.boolean(),
    result: opt(jsonObject),
    error: opt(z.string()),
  })
  .superRefine((v, ctx) => {
    const hasResult = v.result != null;
    const hasError = v.error != null;
    if (hasResult && hasError) {
      ctx.addIssue({ code: 'custom', message: 'Exactly one of result or error may be set', path: ['error'] });
    } else if (v.success && hasError) {
      ctx.addIssue({ code: 'custom', message: 'A successful result carries no error', path: ['error'] });
    } else if (!v.success && !hasError) {
      ctx.addIssue({ code: 'custom', message: 'A failed result needs an error', path: ['error'] });
    }
  });

export const McpResourceFetch = z.strictObject({ resource_uri: z.string() });
export const McpResourceData = z.strictObject({ resource_uri: z.string(), content: jsonObject });

export const MessageAck = z.strictObject({
  original_envelope_id: z.string(),
  status: z.enum(['received', 'processed', 'rejected']),
  error: opt(z.string()),
});

export type TaskRequest = z.infer<typeof TaskRequest>;
export type TaskRequestConfig = z.infer<typeof TaskRequestConfig>;
export type TaskResponse = z.infer<typeof TaskResponse>;
export type TaskMetrics = z.infer<typeof TaskMetrics>;
export type TaskUpdate = z.infer<typeof TaskUpdate>;
export type TaskStream = z.infer<typeof TaskStream>;
export type TaskCancel = z.infer<typeof TaskCancel>;
export type MessageSend = z.infer<typeof MessageSend>;
export type StateQuery = z.infer<typeof StateQuery>;
export type StateRestore = z.infer<typeof StateRestore>;
export type ArtifactNotify = z.infer<typeof ArtifactNotify>;
export type McpToolCall = z.infer<typeof McpToolCall>;
export type McpToolResult = z.infer<typeof McpToolResult>;
export type McpResourceFetch = z.infer<typeof McpResourceFetch>;
export type McpResourceData = z.infer<typeof McpResourceData>;
export type MessageAck = z.infer<typeof MessageAck>;

/** The 14 payload types, by canonical name. */
export const PAYLOAD_SCHEMAS = {
  TaskRequest,
  TaskResponse,
  TaskUpdate,
  TaskStream,
  TaskCancel,
  MessageSend,
  StateQuery,
  StateRestore,
  ArtifactNotify,
  McpToolCall,
  McpToolResult,
  McpResourceFetch,
  McpResourceData,
  MessageAck,
} as const;

export type PayloadTypeName = keyof typeof PAYLOAD_SCHEMAS;

/** Maps each canonical name to its payload type. */
export interface PayloadMap {
  TaskRequest: TaskRequest;
  TaskResponse: TaskResponse;
  TaskUpdate: TaskUpdate;
  TaskStream: TaskStream;
  TaskCancel: TaskCancel;
  MessageSend: MessageSend;
  StateQuery: StateQuery;
  StateRestore: StateRestore;
  ArtifactNotify: ArtifactNotify;
  McpToolCall: McpToolCall;
  McpToolResult: McpToolResult;
  McpResourceFetch: McpResourceFetch;
  McpResourceData: McpResourceData;
  MessageAck: MessageAck;
}

/** Types whose envelope must carry the request's id as `correlation_id`. */
export const CORRELATED_TYPES: ReadonlySet<string> = new Set([
  'taskresponse',
  'taskstream',
  'mcptoolresult',
  'mcpresourcedata',
]);

/** Types a WebSocket sender marks `requires_ack` on its own (asap-wire.md §6). */
export const ACKED_TYPES: ReadonlySet<string> = new Set([
  'taskrequest',
  'taskcancel',
  'staterestore',
  'messagesend',
]);

const normalised = new Map<string, string>();

/**
 * `payload_type` comparison key: lower-case, only `[a-z0-9]`, so `task.request`,
 * `TaskRequest` and `task_request` are one type. Memoised: peers reuse a handful of spellings.
 */
export function normalizePayloadType(payloadType: string): string {
  let key = normalised.get(payloadType);
  if (key === undefined) {
    key = payloadType.toLowerCase().replace(/[^a-z0-9]/g, '');
    if (normalised.size < 1024) normalised.set(payloadType, key);
  }
  return key;
}

/** Canonical name of a known payload type, keyed by its normalised spelling. */
export const KNOWN_PAYLOAD_TYPES: ReadonlyMap<string, PayloadTypeName> = new Map(
  (Object.keys(PAYLOAD_SCHEMAS) as PayloadTypeName[]).map((name) => [normalizePayloadType(name), name]),
);
