/**
 * One node of a multi-node agent on Redis, in its own process, for tests that kill it for real
 * (SIGKILL). It is what `asap serve --redis URL` runs (the demo agent on `redisStore`), with the
 * test's short intervals: claim lease, presence TTL, remote push timeout, heartbeat.
 *
 * Run with `node --import tsx test/support/redis-node.ts <redis-url> <node-id>` from `fork()`
 * (an IPC channel is required). Messages:
 *   child → parent  {type: 'listening', port}         once it listens on 127.0.0.1 (a free port)
 *   parent → child  {type: 'push', id, urn, marker}    `server.push(urn, TaskUpdate)` with task_id = marker
 *   child → parent  {type: 'pushed', id, n, error?}    how many connections took it (0 and the error on failure)
 * Tunables (milliseconds) come from the environment: ASAP_NODE_LEASE_MS, ASAP_NODE_PRESENCE_TTL_MS,
 * ASAP_NODE_PUSH_TIMEOUT_MS, ASAP_NODE_HEARTBEAT_MS. Warnings and errors are logged to stderr.
 */
import { createDemoAgent } from '../../src/cli/demo-agent.js';
import { createLogger } from '../../src/cli/logger.js';
import { redisStore } from '../../src/redis/store.js';

export interface NodePushRequest {
  type: 'push';
  id: number;
  urn: string;
  marker: string;
}

export type NodeMessage =
  | { type: 'listening'; port: number }
  | { type: 'pushed'; id: number; n: number; error?: string };

const [url, nodeId] = process.argv.slice(2);
if (url === undefined || nodeId === undefined || process.send === undefined) {
  process.stderr.write('usage (from fork): redis-node.ts <redis-url> <node-id>\n');
  process.exit(2);
}
const ms = (name: string, fallback: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const send = (msg: NodeMessage): void => {
  process.send?.(msg);
};

const logger = createLogger('warn');
const store = await redisStore(url, {
  logger,
  nodeId,
  reconnect: { baseMs: 20, maxMs: 200 },
  dedupe: { leaseMs: ms('ASAP_NODE_LEASE_MS', 1500) },
  push: {
    presenceTtlMs: ms('ASAP_NODE_PRESENCE_TTL_MS', 3000),
    requestTimeoutMs: ms('ASAP_NODE_PUSH_TIMEOUT_MS', 1500),
  },
});
const server = createDemoAgent({
  store,
  logger,
  rateLimit: 0,
  heartbeatIntervalMs: ms('ASAP_NODE_HEARTBEAT_MS', 250),
  drainTimeoutMs: 300,
});
const { port } = await server.listen({ port: 0 });

process.on('message', (raw: NodePushRequest) => {
  if (raw?.type !== 'push') return;
  server
    .push(raw.urn, {
      payload_type: 'TaskUpdate',
      payload: {
        task_id: raw.marker,
        update_type: 'progress',
        status: 'working',
        progress: { percent: 50, message: raw.marker },
      },
    })
    .then(
      (n) => send({ type: 'pushed', id: raw.id, n }),
      (err: unknown) => send({ type: 'pushed', id: raw.id, n: 0, error: (err as Error).message }),
    );
});
// The parent went away (test ended or crashed): go too, gracefully.
process.on('disconnect', () => {
  void server
    .close()
    .then(() => store.close())
    .finally(() => process.exit(0));
});
send({ type: 'listening', port });
