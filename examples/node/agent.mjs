// The agent of the Node example: an ASAPServer with three skills.
//   greet     answers at once, after pushing one progress update to the caller
//   count-to  streams n chunks (an async generator)
//   work      runs until it is cancelled (its signal aborts on a TaskCancel or the deadline)
// Run it on its own with `node examples/node/agent.mjs [port]` (after `npm run build`).
import { pathToFileURL } from 'node:url';
import { ASAPServer } from 'asap-ts';

export const AGENT_URN = 'urn:asap:agent:example';

/**
 * Starts the agent on 127.0.0.1:port (0 picks a free port). `events.started` and `events.cancelled`
 * hear of every `work` task that starts and that is cancelled (by its id).
 */
export async function startAgent(port = 0, events = {}) {
  const server = new ASAPServer({
    manifest: { id: AGENT_URN, description: 'The asap-ts Node example' },
  });

  server.skill('greet', async (env, ctx) => {
    // A push: delivered to the caller's connection, before the answer (a no-op over HTTP).
    await ctx.push({
      payload_type: 'TaskUpdate',
      payload: {
        task_id: env.id,
        update_type: 'progress',
        status: 'working',
        progress: { percent: 50, message: 'looking up a greeting' },
      },
      correlation_id: env.id,
    });
    return {
      task_id: env.id,
      status: 'completed',
      result: { greeting: `Hello, ${env.payload.input.name}!` },
    };
  });

  server.skill('count-to', async function* (env, ctx) {
    const n = Number(env.payload.input.n);
    for (let i = 1; i <= n; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      if (ctx.signal.aborted) return;
      yield { chunk: String(i), progress: i / n, final: i === n, status: i === n ? 'completed' : 'working' };
    }
  });

  server.skill(
    'work',
    (env, ctx) =>
      new Promise((_resolve, reject) => {
        ctx.signal.addEventListener('abort', () => {
          events.cancelled?.(env.id);
          reject(ctx.signal.reason);
        });
        events.started?.(env.id);
      }),
  );

  const address = await server.listen({ host: '127.0.0.1', port });
  return { server, port: address.port, ws: `ws://127.0.0.1:${address.port}/asap/ws` };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { ws } = await startAgent(Number(process.argv[2] ?? 8080));
  console.log(`agent listening on ${ws}`);
}
