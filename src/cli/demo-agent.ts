import type { HandlerContext } from '../core/registry.js';
import { createEnvelope, type Envelope } from '../protocol/envelope.js';
import { ASAPError } from '../protocol/errors.js';
import type { TaskRequest, TaskStream, TaskUpdate } from '../protocol/payloads.js';
import type { JsonObject } from '../protocol/schema-util.js';
import { ASAPServer, type ASAPServerOptions } from '../server/server.js';

type Ctx = HandlerContext<TaskRequest>;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function nonNegativeInt(input: JsonObject, key: string, fallback: number): number {
  const v = input[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new ASAPError(-32602, `input.${key} must be a non-negative integer`, {
      validation_errors: [
        { loc: ['payload', 'input', key], msg: 'Input should be a non-negative integer', type: 'int_type' },
      ],
    });
  }
  return v;
}

const counters = new Map<string, number>();

/** The demo agent's skills (../shared/spec/demo-agent.md). */
export const demoSkills = {
  echo: (env: Envelope<TaskRequest>) => ({
    task_id: env.id,
    status: 'completed',
    result: { echo: env.payload.input },
  }),

  sleep: async (env: Envelope<TaskRequest>, ctx: Ctx) => {
    await sleep(nonNegativeInt(env.payload.input, 'ms', 0), ctx.signal);
    return { task_id: env.id, status: 'completed', result: { echo: env.payload.input } };
  },

  stream: async function* (env: Envelope<TaskRequest>, ctx: Ctx): AsyncGenerator<TaskStream> {
    const n = nonNegativeInt(env.payload.input, 'chunks', 3);
    const interval = nonNegativeInt(env.payload.input, 'interval_ms', 0);
    if (n === 0) {
      yield { chunk: '', progress: 1, final: true, status: 'completed' };
      return;
    }
    for (let i = 0; i < n; i++) {
      if (i > 0 && interval > 0) await sleep(interval, ctx.signal);
      const last = i === n - 1;
      yield {
        chunk: `chunk-${i}`,
        progress: (i + 1) / n,
        final: last,
        status: last ? 'completed' : 'working',
      };
    }
  },

  push: async (env: Envelope<TaskRequest>, ctx: Ctx) => {
    const n = nonNegativeInt(env.payload.input, 'count', 1);
    if (ctx.transport === 'http') return { task_id: env.id, status: 'completed', result: { pushed: 0 } };
    for (let i = 0; i < n; i++) {
      const payload: TaskUpdate = {
        task_id: env.id,
        update_type: 'progress',
        status: 'working',
        progress: { percent: Math.round(((i + 1) / n) * 100), message: `update ${i + 1} of ${n}` },
      };
      await ctx.push(
        createEnvelope({
          sender: env.recipient,
          recipient: env.sender,
          payload_type: 'TaskUpdate',
          payload,
          correlation_id: env.id,
          trace_id: env.trace_id,
        }),
      );
    }
    return { task_id: env.id, status: 'completed', result: { pushed: n } };
  },

  fail: (env: Envelope<TaskRequest>) => {
    const message = env.payload.input.message;
    throw new Error(typeof message === 'string' && message !== '' ? message : 'Task failed');
  },

  count: (env: Envelope<TaskRequest>) => {
    const key = env.payload.input.key;
    const k = typeof key === 'string' ? key : String(key ?? 'default');
    const c = (counters.get(k) ?? 0) + 1;
    counters.set(k, c);
    return { task_id: env.id, status: 'completed', result: { key: k, count: c } };
  },
};

const descriptions: Record<keyof typeof demoSkills, string> = {
  echo: 'Returns its input as result.echo',
  sleep: 'Waits input.ms milliseconds (cancellable), then echoes',
  stream: 'Streams input.chunks TaskStream chunks, input.interval_ms apart',
  push: 'Pushes input.count TaskUpdate envelopes to the caller, then completes',
  fail: 'Throws input.message (the caller gets -32603)',
  count: 'Counts calls per input.key: shows whether a retransmission ran twice',
};

/** A server with the demo agent's six skills registered. */
export function createDemoAgent(
  opts: Omit<ASAPServerOptions, 'manifest'> & { agentId?: string },
): ASAPServer {
  const { agentId = 'urn:asap:agent:demo', ...rest } = opts;
  const server = new ASAPServer({
    ...rest,
    manifest: {
      id: agentId,
      name: 'ASAP demo agent',
      version: '0.1.0',
      description: 'The asap-ts demo agent',
    },
  });
  for (const [id, handler] of Object.entries(demoSkills)) {
    server.skill(id, handler as Parameters<ASAPServer['skill']>[1], {
      description: descriptions[id as keyof typeof demoSkills],
    });
  }
  return server;
}
