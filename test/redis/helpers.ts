/** Helpers of the Redis tests: one real redis-server per test file, a key prefix per test, logs kept. */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll } from 'vitest';
import type { Claim, Outcome } from '../../src/core/dedupe.js';
import type { Logger } from '../../src/core/logger.js';
import {
  connectRedis,
  type RedisConnection,
  type RedisConnectionOptions,
} from '../../src/redis/connection.js';
import { type RedisServer, startRedis } from '../support/redis-server.js';

export { redisAvailable } from '../support/redis-server.js';

/** Starts a redis-server before the file's tests and stops it after them. */
export function useRedis(): { readonly server: RedisServer } {
  const holder = {} as { server: RedisServer };
  beforeAll(async () => {
    holder.server = await startRedis();
  });
  afterAll(async () => {
    await holder.server?.stop();
  });
  return holder;
}

let n = 0;
/** A key prefix no other test uses. */
export function uniquePrefix(): string {
  return `t${process.pid}-${Date.now().toString(36)}-${n++}:`;
}

/** A logger that keeps what it is told. */
export function captureLogger(): Logger & {
  lines: { level: string; obj: object; msg: string | undefined }[];
} {
  const lines: { level: string; obj: object; msg: string | undefined }[] = [];
  const at =
    (level: string) =>
    (obj: object, msg?: string): void => {
      lines.push({ level, obj, msg });
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** Connections that the file's afterEach-free tests close at the end (see `closeAll`). */
const opened: { close(): Promise<void> }[] = [];

/** Connects (fast reconnects, short timeouts) and remembers the connection for {@link closeAll}. */
export async function connect(url: string, opts: RedisConnectionOptions = {}): Promise<RedisConnection> {
  const conn = await connectRedis(url, {
    keyPrefix: uniquePrefix(),
    reconnect: { baseMs: 20, maxMs: 100 },
    connectTimeoutMs: 2000,
    ...opts,
  });
  opened.push(conn);
  return conn;
}

/** Remembers anything to close at the end of the file. */
export function track<T extends { close(): Promise<void> | void }>(thing: T): T {
  opened.push({ close: async () => thing.close() });
  return thing;
}

export async function closeAll(): Promise<void> {
  const all = opened.splice(0);
  await Promise.allSettled(all.map((c) => c.close()));
}

/** Polls `cond` every few ms of real time; throws after `timeoutMs`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`Timed out waiting for ${what}`);
    await sleep(5);
  }
}

export { sleep };

/** The fingerprint and outcome the dedupe tests claim and complete with. */
export const FP = 42;
export const reply: Outcome = { kind: 'result', envelope: '{"id":"r1"}' };

/** The outcome promise of a `pending` claim (fails the test on any other state). */
export function pending(c: Claim): Promise<Outcome | undefined> {
  if (c.state !== 'pending') throw new Error(`expected pending, got ${c.state}`);
  return c.outcome;
}
