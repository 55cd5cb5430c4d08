/**
 * The client's types, checked by the compiler (`tsc` runs over the tests): task results typed by the
 * caller, answers typed by the request's payload, stream chunks typed.
 */
import { describe, expectTypeOf, it } from 'vitest';
import { ASAPClient, type ReplyPayload, type TaskResult } from '../../src/client/client.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import type {
  McpResourceData,
  McpResourceFetch,
  McpToolCall,
  McpToolResult,
  TaskCancel,
  TaskRequest,
  TaskResponse,
  TaskStream,
  TaskUpdate,
} from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';

describe('ASAPClient types', () => {
  it('task<R>() types the result; without R it is a JSON object', () => {
    const client = new ASAPClient('http://127.0.0.1:1/asap');
    expectTypeOf(client.task<{ hi: string }>).returns.resolves.toEqualTypeOf<
      Envelope<TaskResult<{ hi: string }>>
    >();
    expectTypeOf<
      Awaited<ReturnType<typeof client.task<{ hi: string }>>>['payload']['result']
    >().toEqualTypeOf<{ hi: string } | undefined>();
    const untyped = () => client.task('echo'); // never called: only its type is checked
    expectTypeOf(untyped).returns.resolves.toEqualTypeOf<Envelope<TaskResult<JsonObject>>>();
    expectTypeOf<TaskResult['status']>().toEqualTypeOf<TaskResponse['status']>();
    // A typed result is still an envelope like any other.
    expectTypeOf<Envelope<TaskResult<{ hi: string }>>>().toExtend<Envelope<object>>();
  });

  it('send() types the answer by the request payload; stream() yields TaskStream envelopes', () => {
    expectTypeOf<ReplyPayload<TaskRequest>>().toEqualTypeOf<TaskResponse>();
    expectTypeOf<ReplyPayload<TaskCancel>>().toEqualTypeOf<TaskResponse>();
    expectTypeOf<ReplyPayload<McpToolCall>>().toEqualTypeOf<McpToolResult>();
    expectTypeOf<ReplyPayload<McpResourceFetch>>().toEqualTypeOf<McpResourceData>();
    // Structurally a TaskUpdate has every field of a TaskCancel: still no TaskResponse for it.
    expectTypeOf<ReplyPayload<TaskUpdate>>().toEqualTypeOf<object>();
    expectTypeOf<ReplyPayload<object>>().toEqualTypeOf<object>();
    const client = new ASAPClient('http://127.0.0.1:1/asap');
    expectTypeOf(client.send<TaskRequest>).returns.resolves.toEqualTypeOf<Envelope<TaskResponse>>();
    expectTypeOf(client.cancel).returns.resolves.toEqualTypeOf<Envelope<TaskResponse>>();
    expectTypeOf(client.stream).returns.toEqualTypeOf<AsyncIterable<Envelope<TaskStream>>>();
  });
});
