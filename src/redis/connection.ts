import { createHash } from 'node:crypto';
import { createClient, ErrorReply, type RedisClientType } from '@redis/client';
import { ulid } from 'ulid';
import { backoffDelay } from '../core/backoff.js';
import type { Instrumentation } from '../core/instrumentation.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { ASAPError } from '../protocol/errors.js';

/** The node-redis client the Redis stores use (RESP2, no modules, scripts or type mapping). */
export type RedisClient = RedisClientType;

export interface RedisConnectionOptions {
  logger?: Logger;
  /** Prefix of every key and channel (default `asap:`), so several agents can share one Redis. */
  keyPrefix?: string;
  /** This process's id in claims and logs (default: a fresh ULID). */
  nodeId?: string;
  /** `retry_after_ms` of the -32040 answered while Redis is unreachable (default 1000). */
  retryAfterMs?: number;
  /** How long `connectRedis` waits for both connections to be ready before it fails (default 5000). */
  connectTimeoutMs?: number;
  /**
   * A command without an answer after this long fails with -32040 (default 2000), and Redis
   * counts as unavailable until it answers again: a stalled Redis is an unreachable one.
   */
  commandTimeoutMs?: number;
  /** Reconnect backoff: exponential from `baseMs` (default 50), capped at `maxMs` (default 2000), with jitter. */
  reconnect?: { baseMs?: number; maxMs?: number };
}

/**
 * The two connections every Redis store of a process shares: `client` for commands (and
 * PUBLISH), `subscriber` for SUBSCRIBE (node-redis needs a connection of its own for it).
 *
 * Both reconnect by themselves (bounded exponential backoff). While either is down the
 * connection is not {@link available}, and {@link run} fails at once with the recoverable
 * -32040 `Shared state unavailable; retry later` (with `retry_after_ms`) instead of queueing:
 * the offline queue is disabled, so nothing piles up while Redis is away. A Redis that
 * leaves a command unanswered for `commandTimeoutMs` counts as down too (stalled) until it
 * answers again. A command that fails for any other Redis reason (reset, error reply) gets
 * the same answer, its cause logged.
 */
export class RedisConnection {
  readonly keyPrefix: string;
  readonly nodeId: string;
  readonly logger: Logger;
  readonly retryAfterMs: number;
  private readonly commandTimeoutMs: number;
  private readonly readyListeners = new Set<() => void>();
  private closed = false;
  /** A command went unanswered for `commandTimeoutMs`: unavailable until a PING sent then is answered. */
  private stalled = false;
  /** Operations of {@link run} not finished yet, and the waiter of `close` for them. */
  private inFlight = 0;
  private drained: (() => void) | undefined;
  /** True from an outage until both connections are ready again (so it is logged once). */
  private down = false;
  /** Told of every operation of {@link run} (`storeOperation`), when set. */
  hooks: Instrumentation | undefined;
  /** Operations of {@link run} in flight, oldest first, and the stall check watching them. */
  private readonly operations = new Set<Operation>();
  private watcher: NodeJS.Timeout | undefined;
  private tick = 0;

  /** @internal Use {@link connectRedis}. */
  constructor(
    readonly client: RedisClient,
    readonly subscriber: RedisClient,
    opts: RedisConnectionOptions,
  ) {
    this.keyPrefix = opts.keyPrefix ?? 'asap:';
    this.nodeId = opts.nodeId ?? ulid();
    this.logger = opts.logger ?? silentLogger;
    this.retryAfterMs = opts.retryAfterMs ?? 1000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 2000;
    for (const [name, c] of [
      ['commands', client],
      ['subscriber', subscriber],
    ] as const) {
      c.on('error', (err: Error) => this.onError(name, err));
      c.on('ready', () => this.becameReady());
    }
  }

  /**
   * True while both connections are up: false from a socket error or close until they are
   * ready again, and while Redis leaves a command unanswered (stalled).
   */
  get available(): boolean {
    return !this.closed && !this.stalled && this.client.isReady && this.subscriber.isReady;
  }

  /** Calls `listener` every time the connection becomes available again after an outage. Returns the remover. */
  onReady(listener: () => void): () => void {
    this.readyListeners.add(listener);
    return () => this.readyListeners.delete(listener);
  }

  /** The -32040 answered while Redis is unreachable. */
  unavailable(): ASAPError {
    return ASAPError.resourceExhausted('Shared state unavailable; retry later', {
      retry_after_ms: this.retryAfterMs,
    });
  }

  /**
   * Runs Redis commands: fails fast with {@link unavailable} while the connection is down,
   * and turns any failure of `op` (other than an ASAPError it threw) into that error. An
   * `op` without an answer within `commandTimeoutMs` (checked every quarter of it, so within
   * 1.25 × `commandTimeoutMs`) fails too, and marks Redis stalled (unavailable) until it answers
   * again, so requests do not pile up behind a frozen Redis. One timer watches every operation
   * in flight (none per operation): a request makes two or three of them.
   */
  run<T>(op: (client: RedisClient) => Promise<T>): Promise<T> {
    if (!this.available) return Promise.reject(this.unavailable());
    this.inFlight++;
    const hooks = this.hooks;
    const started = hooks?.storeOperation === undefined ? 0 : performance.now();
    return new Promise<T>((resolve, reject) => {
      const entry: Operation = { tick: this.tick, fail: reject };
      this.operations.add(entry);
      this.watch();
      let answer: Promise<T>;
      try {
        answer = op(this.client);
      } catch (err) {
        answer = Promise.reject(err); // an op that throws before it returns fails the same way
      }
      answer.then(
        (value) => {
          if (!this.operations.delete(entry)) return; // failed as stalled already
          this.settled(started, true);
          resolve(value);
        },
        (err: unknown) => {
          if (!this.operations.delete(entry)) return;
          this.settled(started, err instanceof ASAPError);
          if (err instanceof ASAPError) return reject(err);
          this.logger.warn({ err: (err as Error).message }, 'Redis command failed');
          reject(this.unavailable());
        },
      );
    });
  }

  /** An operation of {@link run} ended (answered, failed, or given up as stalled). */
  private settled(started: number, ok: boolean): void {
    if (started !== 0) this.hooks?.storeOperation?.(performance.now() - started, ok);
    if (--this.inFlight === 0) this.drained?.();
  }

  /** Starts the stall check while operations are in flight. */
  private watch(): void {
    if (this.watcher !== undefined) return;
    const every = Math.max(1, Math.ceil(this.commandTimeoutMs / STALL_TICKS));
    this.watcher = setInterval(() => this.checkStalls(), every);
    this.watcher.unref();
  }

  /**
   * Fails the operations older than `commandTimeoutMs` (STALL_TICKS ticks) and marks Redis
   * stalled; stops the timer once nothing is in flight.
   */
  private checkStalls(): void {
    this.tick++;
    let stalled = false;
    // In start order: the first one young enough ends the scan.
    for (const op of this.operations) {
      if (this.tick - op.tick <= STALL_TICKS) break;
      this.operations.delete(op);
      this.settled(0, false);
      this.hooks?.storeOperation?.(this.commandTimeoutMs, false);
      op.fail(this.unavailable());
      stalled = true;
    }
    if (stalled) this.stall();
    if (this.operations.size === 0) {
      clearInterval(this.watcher);
      this.watcher = undefined;
    }
  }

  /** A key (or channel) with the prefix. */
  key(...parts: string[]): string {
    return this.keyPrefix + parts.join(':');
  }

  /** Closes both connections, after the operations in flight (waiting a second at most). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.readyListeners.clear();
    if (this.inFlight > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        timer = setTimeout(resolve, 1000);
      });
      clearTimeout(timer);
    }
    // Open until here (their reconnect strategy never gives up): whatever is still pending is rejected.
    this.client.destroy();
    this.subscriber.destroy();
    clearInterval(this.watcher);
    this.watcher = undefined;
  }

  private onError(name: string, err: Error): void {
    if (this.closed || this.down) return;
    this.down = true;
    this.logger.warn({ connection: name, err: err.message }, 'Redis unavailable');
  }

  private stall(): void {
    if (this.stalled) return;
    this.stalled = true;
    this.onError('commands', new Error(`no answer within ${this.commandTimeoutMs} ms`));
    // Redis answers in order: once this PING is answered, so is everything sent before it. If the
    // connection breaks instead, its next 'ready' ends the outage.
    const end = (): void => {
      this.stalled = false;
      this.becameReady();
    };
    this.client.sendCommand(['PING']).then(end, end);
  }

  private becameReady(): void {
    if (this.closed || !this.available) return;
    if (this.down) {
      this.down = false;
      this.logger.info({}, 'Redis available again');
    }
    for (const listener of [...this.readyListeners]) listener();
  }
}

/** The stall check runs this many times per `commandTimeoutMs`. */
const STALL_TICKS = 4;

/** An operation of `run` in flight: the check tick it started in, and how to fail it. */
interface Operation {
  tick: number;
  fail: (err: unknown) => void;
}

/**
 * Opens the command and subscriber connections to `url` (`redis://[user:pass@]host:port[/db]`)
 * and resolves once both are ready; rejects (and closes them) if they are not within
 * `connectTimeoutMs`.
 */
export async function connectRedis(url: string, opts: RedisConnectionOptions = {}): Promise<RedisConnection> {
  const baseMs = opts.reconnect?.baseMs ?? 50;
  const maxMs = opts.reconnect?.maxMs ?? 2000;
  const make = (): RedisClient =>
    createClient({
      url,
      disableOfflineQueue: true,
      socket: { reconnectStrategy: (retries: number) => backoffDelay(retries, { baseMs, maxMs }) },
    }) as RedisClient;
  const client = make();
  const subscriber = make();
  const conn = new RedisConnection(client, subscriber, opts);
  const timeoutMs = opts.connectTimeoutMs ?? 5000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Redis at ${redactUrl(url)} not ready within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    await Promise.race([Promise.all([client.connect(), subscriber.connect()]), timeout]);
  } catch (err) {
    // Both still trying (their reconnect strategy never gives up): stop them.
    client.destroy();
    subscriber.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return conn;
}

/** The URL without its password, for messages. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

/**
 * A Lua script run with EVALSHA, loaded with EVAL when Redis does not know it (first use,
 * or after a restart): one round trip, two the first time.
 */
export class LuaScript {
  readonly sha: string;

  constructor(readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  async run(client: RedisClient, keys: readonly string[], args: readonly string[]): Promise<unknown> {
    const tail = [String(keys.length), ...keys, ...args];
    try {
      return await client.sendCommand(['EVALSHA', this.sha, ...tail]);
    } catch (err) {
      if (!(err instanceof ErrorReply) || !err.message.startsWith('NOSCRIPT')) throw err;
      return client.sendCommand(['EVAL', this.source, ...tail]);
    }
  }
}
