// The Node example, end to end: starts the agent of agent.mjs, then a client that
//   1. runs a skill and receives the push the skill sends on the way,
//   2. streams a skill's chunks,
//   3. cancels a running task twice: by aborting its AbortSignal, and with client.cancel(taskId),
//   4. survives a restart of the server on the same port (the client reconnects by itself).
// Run it after `npm run build`: node examples/node/run.mjs (it exits 0 when every step worked).
import { ASAPClient, RequestAbortedError } from 'asap-ts';
import { AGENT_URN, startAgent } from './agent.mjs';

// A stuck step must fail the run, not hang it.
setTimeout(() => {
  console.error('example: timed out');
  process.exit(1);
}, 30_000).unref();

const started = [];
const cancelled = [];
const events = { started: (id) => started.push(id), cancelled: (id) => cancelled.push(id) };
let agent = await startAgent(0, events);
console.log(`agent listening on ${agent.ws}`);

const client = new ASAPClient(agent.ws, { sender: 'urn:asap:agent:example-client', recipient: AGENT_URN });
const pushes = [];
client.onMessage((env) => {
  pushes.push(env);
  console.log(`push ${env.payload_type}: ${env.payload.progress?.message}`);
});

// 1. A task, and the push it causes (pushes arrive before the answer they precede).
const reply = await client.task('greet', { name: 'Ada' });
console.log(`greet -> ${reply.payload.status}: ${reply.payload.result.greeting}`);
if (pushes.length !== 1) throw new Error(`expected 1 push, got ${pushes.length}`);

// 2. A stream.
const chunks = [];
for await (const chunk of client.stream(client.taskEnvelope('count-to', { n: 3 }))) {
  chunks.push(chunk.payload.chunk);
}
console.log(`count-to streamed ${chunks.join(', ')}`);

// 3a. Cancel by aborting the request's signal: the client sends a TaskCancel, the handler's signal aborts.
const controller = new AbortController();
const aborted = client.task('work', {}, { signal: controller.signal });
await waitFor(() => started.length === 1, 'the server started the first work task');
controller.abort();
try {
  await aborted;
  throw new Error('work was not cancelled');
} catch (err) {
  if (!(err instanceof RequestAbortedError)) throw err;
  console.log(`work aborted by its signal: ${err.name}`);
}

// 3b. Cancel a task by its id (the id of its TaskRequest envelope): the answer says `cancelled`.
const work = client.taskEnvelope('work', {});
const running = client.send(work).catch((err) => err);
await waitFor(() => started.length === 2, 'the server started the second work task');
const cancelReply = await client.cancel(work.id, { reason: 'no longer needed' });
console.log(`client.cancel -> ${cancelReply.payload.status}`);
await running;
await waitFor(() => cancelled.length === 2, 'the server saw both cancels');
console.log(`server cancelled ${cancelled.length} tasks`);

// 4. The server restarts on the same port; the client reconnects and carries on.
const transport = client.transport();
const reconnected = new Promise((resolve) => transport.once('reconnected', resolve));
const port = agent.port;
await agent.server.close();
console.log('server stopped');
agent = await startAgent(port, events);
console.log(`server restarted on port ${port}`);
const { attempts } = await reconnected;
console.log(`client reconnected after ${attempts} attempt(s)`);
const again = await client.task('greet', { name: 'Grace' });
console.log(`greet after restart -> ${again.payload.status}: ${again.payload.result.greeting}`);

await client.close();
await agent.server.close();
console.log('example done');

async function waitFor(condition, what) {
  for (let i = 0; i < 1000 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  if (!condition()) throw new Error(`waited in vain: ${what}`);
}
