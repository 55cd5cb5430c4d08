/**
 * The parent side of test/support/redis-node.ts (a demo-agent node on Redis in its own process,
 * killed for real with SIGKILL), and small helpers of the multi-node Redis tests: a progress
 * counter to await, the health endpoint, and the demo `count` counters read from Redis itself.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createClient } from '@redis/client';
import { afterEach } from 'vitest';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import type { TaskRequest } from '../../src/protocol/payloads.js';
import type { JsonObject } from '../../src/protocol/schema-util.js';
import type { NodeMessage, NodePushRequest } from './redis-node.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SCRIPT = fileURLToPath(new URL('./redis-node.ts', import.meta.url));

export interface PushResult {
  /** Connections that took the push (0 when none did, or when the node died before answering). */
  n: number;
  error?: string;
}

export interface RedisNode {
  readonly nodeId: string;
  readonly port: number;
  /** False once the process exited. */
  readonly alive: boolean;
  /** IPC pushes not answered yet. */
  readonly pendingPushes: number;
  /** `server.push(urn, TaskUpdate{task_id: marker})` in the node; an exit before the answer gives n 0 + error. */
  push(urn: string, marker: string): Promise<PushResult>;
  /** Resolves once no IPC push is pending. */
  settled(): Promise<void>;
  /** SIGKILL, and wait for the exit. */
  kill9(): Promise<void>;
  /** The last 4,000 characters the node wrote to stderr. */
  stderr(): string;
}

/** Starts a node (demo agent on `redisStore(url)`) and resolves once it listens. */
export async function startRedisNode(
  url: string,
  nodeId: string,
  env: Record<string, string> = {},
  timeoutMs = 15_000,
): Promise<RedisNode> {
  const child: ChildProcess = fork(SCRIPT, [url, nodeId], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err = (err + d).slice(-4000);
  });
  let alive = true;
  let nextId = 1;
  const pending = new Map<number, (r: PushResult) => void>();
  const idle: (() => void)[] = [];
  const checkIdle = () => {
    if (pending.size === 0) for (const r of idle.splice(0)) r();
  };
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      alive = false;
      for (const [, settle] of pending) settle({ n: 0, error: 'node exited before answering' });
      pending.clear();
      checkIdle();
      resolve();
    });
  });
  child.on('error', () => {});
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`node ${nodeId} did not listen within ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    child.on('message', (m: NodeMessage) => {
      if (m.type === 'listening') {
        clearTimeout(timer);
        resolve(m.port);
      } else if (m.type === 'pushed') {
        const settle = pending.get(m.id);
        pending.delete(m.id);
        settle?.(m.error === undefined ? { n: m.n } : { n: m.n, error: m.error });
        checkIdle();
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`node ${nodeId} exited before listening: ${err}`));
    });
  });
  return {
    nodeId,
    port,
    get alive() {
      return alive;
    },
    get pendingPushes() {
      return pending.size;
    },
    push(urn, marker) {
      if (!alive) return Promise.resolve({ n: 0, error: 'node not running' });
      const id = nextId++;
      return new Promise<PushResult>((resolve) => {
        pending.set(id, resolve);
        const msg: NodePushRequest = { type: 'push', id, urn, marker };
        child.send(msg);
      });
    },
    settled() {
      if (pending.size === 0) return Promise.resolve();
      return new Promise((resolve) => idle.push(resolve));
    },
    async kill9() {
      if (alive) child.kill('SIGKILL');
      await exited;
    },
    stderr: () => err,
  };
}

/** A number that only grows, and promises for the moments it reaches a value. */
export class Progress {
  private n = 0;
  private readonly waiters: { at: number; resolve: () => void }[] = [];

  get value(): number {
    return this.n;
  }

  set(value: number): void {
    this.n = Math.max(this.n, value);
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.at <= this.n) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  add(delta = 1): void {
    this.set(this.n + delta);
  }

  /** Resolves once the value is at least `at`. */
  until(at: number): Promise<void> {
    if (this.n >= at) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ at, resolve }));
  }
}

export interface HealthReading {
  status: number;
  activeTasks: number;
  queueDepth: number;
}

/** GET /.well-known/asap/health of the node on `port` (directly, not through any proxy). */
export async function health(port: number): Promise<HealthReading> {
  const res = await fetch(`http://127.0.0.1:${port}/.well-known/asap/health`, {
    signal: AbortSignal.timeout(2000),
  });
  const body = (await res.json()) as { load?: { active_tasks?: number; queue_depth?: number } };
  return {
    status: res.status,
    activeTasks: body.load?.active_tasks ?? -1,
    queueDepth: body.load?.queue_depth ?? -1,
  };
}

/** The Redis key of the demo `count` counter for input.key `k` (src/redis/store.ts: `<prefix>c:demo:count:<k>`). */
export const countKey = (k: string, prefix = 'asap:'): string => `${prefix}c:demo:count:${k}`;

/** Reads the demo counters of `keys` straight from Redis: the value of each, 0 when absent. */
export async function readCounters(url: string, keys: readonly string[]): Promise<number[]> {
  const client = createClient({ url });
  client.on('error', () => {});
  await client.connect();
  try {
    const out: number[] = [];
    for (let i = 0; i < keys.length; i += 500) {
      const values = await client.mGet(keys.slice(i, i + 500).map((k) => countKey(k)));
      for (const v of values) out.push(v === null ? 0 : Number(v));
    }
    return out;
  } finally {
    client.destroy();
  }
}

/** A small seeded PRNG (mulberry32): the same seed gives the same run of choices. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cleanups run after each test, last first; one failing does not stop the rest. */
export function cleanupsAfterEach(): (() => Promise<unknown> | unknown)[] {
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  afterEach(async () => {
    while (cleanups.length > 0) {
      try {
        await cleanups.pop()!();
      } catch {
        // Keep closing the rest.
      }
    }
  });
  return cleanups;
}

/** A `count` TaskRequest for `key` from `sender` to the demo agent. */
export function countTask(key: string, sender: string, conversation: string): Envelope<TaskRequest> {
  return createEnvelope({
    sender,
    recipient: 'urn:asap:agent:demo',
    payload_type: 'TaskRequest',
    payload: { conversation_id: conversation, skill_id: 'count', input: { key } },
  });
}

export const resultOf = (env: Envelope<object>): JsonObject =>
  (env.payload as { result?: JsonObject }).result ?? {};

/** Rejects when `p` has not settled within `ms`: a stalled run fails with what it was waiting for. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `cond` every 10 ms; throws with `what` after `timeoutMs`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
