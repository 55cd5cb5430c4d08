import type { HandlerContext } from '../core/registry.js';
import { createEnvelope, type Envelope } from '../protocol/envelope.js';
import { ASAPError } from '../protocol/errors.js';
import { type TaskRequest, type TaskStream, type TaskUpdate, URN_PATTERN } from '../protocol/payloads.js';
import type { JsonObject } from '../protocol/schema-util.js';
import type { ManifestInit } from '../server/manifest.js';
import { ASAPServer, type ASAPServerOptions } from '../server/server.js';
import type { ServerStore } from '../server/store.js';

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

function invalidInput(key: string, message: string, msg: string, type: string): ASAPError {
  return new ASAPError(-32602, `input.${key} ${message}`, {
    validation_errors: [{ loc: ['payload', 'input', key], msg, type }],
  });
}

function nonNegativeInt(
  input: JsonObject,
  key: string,
  fallback: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = input[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw invalidInput(
      key,
      'must be a non-negative integer',
      'Input should be a non-negative integer',
      'int_type',
    );
  if (v > max)
    throw invalidInput(
      key,
      `must be at most ${max}`,
      `Input should be less than or equal to ${max}`,
      'less_than_equal',
    );
  return v;
}

/** The demo skills' size limits (demo-agent.md): big enough to show fairness, bounded all the same. */
export const MAX_STREAM_CHUNKS = 1_000_000;
export const MAX_PUSH_COUNT = 1_000_000;
/** Pushes awaiting their ack at once in `push` with `requires_ack`: bounds the ack tracker per task. */
const ACK_WINDOW = 64;

/** `count`: a counter in the server's store (this process's memory, or Redis shared by every node: INCR). */
function countIn(store: Pick<ServerStore, 'increment'>) {
  return async (env: Envelope<TaskRequest>) => {
    const key = env.payload.input.key;
    const k = typeof key === 'string' ? key : String(key ?? 'default');
    const c = await store.increment(`demo:count:${k}`);
    return { task_id: env.id, status: 'completed', result: { key: k, count: c } };
  };
}

/** The demo agent's skills (README, "The `asap` command"). */
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
    const n = nonNegativeInt(env.payload.input, 'chunks', 3, MAX_STREAM_CHUNKS);
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

  /**
   * `count` TaskUpdates to the caller, or with `to` to every connection of that agent URN; with
   * `requires_ack` each asks for an ack and the answer waits until every push settled.
   */
  push: async (env: Envelope<TaskRequest>, ctx: Ctx) => {
    const input = env.payload.input;
    const n = nonNegativeInt(input, 'count', 1, MAX_PUSH_COUNT);
    const to = input.to;
    if (to !== undefined && (typeof to !== 'string' || !URN_PATTERN.test(to)))
      throw invalidInput(
        'to',
        'must be an agent URN',
        'Input should be an agent URN',
        'string_pattern_mismatch',
      );
    const requiresAck = input.requires_ack === true;
    if (ctx.transport === 'http' && to === undefined)
      return { task_id: env.id, status: 'completed', result: { pushed: 0 } };
    let pushed = 0;
    let acked = 0;
    const waiting = new Set<Promise<void>>();
    for (let i = 0; i < n; i++) {
      const payload: TaskUpdate = {
        task_id: env.id,
        update_type: 'progress',
        status: 'working',
        progress: { percent: Math.round(((i + 1) / n) * 100), message: `update ${i + 1} of ${n}` },
      };
      const update = createEnvelope({
        sender: env.recipient,
        recipient: to ?? env.sender,
        payload_type: 'TaskUpdate',
        payload,
        correlation_id: env.id,
        trace_id: env.trace_id,
        requires_ack: requiresAck,
      });
      const sent: Promise<number> =
        to === undefined ? ctx.push(update).then(() => 1) : ctx.pushTo(to, update);
      if (!requiresAck) {
        pushed += await sent;
        continue;
      }
      // Acked pushes settle later: keep a bounded window of them in flight. A push to the
      // caller counts as pushed once written; one to `to` counts the connections that took it.
      if (to === undefined) pushed++;
      const settled: Promise<void> = sent.then(
        (reached) => {
          if (to !== undefined) pushed += reached;
          acked += reached;
        },
        () => {},
      );
      waiting.add(settled);
      void settled.then(() => waiting.delete(settled));
      if (waiting.size >= ACK_WINDOW) await Promise.race(waiting);
      if (ctx.signal.aborted) throw ctx.signal.reason;
    }
    await Promise.all(waiting);
    const result: JsonObject = requiresAck ? { pushed, acked } : { pushed };
    return { task_id: env.id, status: 'completed', result };
  },

  fail: (env: Envelope<TaskRequest>) => {
    const message = env.payload.input.message;
    throw new Error(typeof message === 'string' && message !== '' ? message : 'Task failed');
  },
};

const COUNT_DESCRIPTION = 'Counts calls per input.key: shows whether a retransmission ran twice';

const descriptions: Record<keyof typeof demoSkills, string> = {
  echo: 'Returns its input as result.echo',
  sleep: 'Waits input.ms milliseconds (cancellable), then echoes',
  stream: 'Streams input.chunks TaskStream chunks, input.interval_ms apart',
  push: 'Pushes input.count TaskUpdate envelopes to the caller (or to every connection of input.to), then completes',
  fail: 'Throws input.message (the caller gets -32603)',
};

/** A server with the demo agent's six skills registered. */
export function createDemoAgent(
  opts: Omit<ASAPServerOptions, 'manifest'> & { agentId?: string; auth?: ManifestInit['auth'] },
): ASAPServer {
  const { agentId = 'urn:asap:agent:demo', auth, ...rest } = opts;
  const server = new ASAPServer({
    ...rest,
    manifest: {
      id: agentId,
      name: 'ASAP demo agent',
      version: '0.1.0',
      description: 'The asap-ts demo agent',
      ...(auth === undefined ? {} : { auth }),
    },
  });
  for (const [id, handler] of Object.entries(demoSkills)) {
    server.skill(id, handler as Parameters<ASAPServer['skill']>[1], {
      description: descriptions[id as keyof typeof demoSkills],
    });
  }
  server.skill('count', countIn(server.store), { description: COUNT_DESCRIPTION });
  return server;
}
