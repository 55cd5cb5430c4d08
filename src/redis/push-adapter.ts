import { createHash, randomUUID } from 'node:crypto';
import { type Logger, silentLogger } from '../core/logger.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import type { Envelope } from '../protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  LocalErrorCode,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
} from '../protocol/errors.js';
import type { LocalPushAdapter, PushAdapter, PushTarget } from '../server/push-adapter.js';

/**
 * The part of a node-redis client the adapter uses for commands (a `createClient()` client fits).
 * Everything goes through `sendCommand`, so any client options or type mappings do.
 */
export interface PushRedisClient {
  readonly isReady: boolean;
  sendCommand(args: string[]): Promise<unknown>;
  on(event: 'ready', listener: () => void): unknown;
  off(event: 'ready', listener: () => void): unknown;
}

/** The part of a node-redis client the adapter uses to receive (a separate connection in subscriber mode). */
export interface PushRedisSubscriber {
  readonly isReady: boolean;
  subscribe(channel: string, listener: (message: string) => void): Promise<void>;
  unsubscribe(channel: string, listener: (message: string) => void): Promise<void>;
  on(event: 'ready', listener: () => void): unknown;
  off(event: 'ready', listener: () => void): unknown;
}

export interface RedisPushAdapterOptions {
  /** Commands: presence, lookups, PUBLISH of requests and replies. */
  client: PushRedisClient;
  /** A separate connection that only subscribes (this node's request and reply channels). */
  subscriber: PushRedisSubscriber;
  /** This process's connections. */
  local: LocalPushAdapter;
  /** Unique per process (default: a random UUID). Reusing one across restarts is harmless, not useful. */
  nodeId?: string;
  /** Prefix of every key and channel (default `asap:`). */
  keyPrefix?: string;
  logger?: Logger;
  /**
   * How long this node's presence under a URN outlives its last refresh (default 15 s); refreshed
   * every third of it. A node that died drops out of push routing after this long. Use the same
   * value on every node.
   */
  presenceTtlMs?: number;
  /**
   * How long a remote node may stay silent about a push before it counts as not reached (0)
   * (default 10 s). A node whose push is still pending (waiting for acks) says so every third of it.
   */
  requestTimeoutMs?: number;
  timers?: Timers;
}

/** A push request on a node's request channel. */
interface PushRequest {
  id: string;
  /** The node that asked (its reply channel). */
  from: string;
  urn: string;
  env: Envelope<object>;
  /** The asker's request timeout: the receiver says "still working" every third of it. */
  t: number;
}

interface WireError {
  code?: number;
  message: string;
  data?: unknown;
}

/**
 * What a node answers: how many took it (`n`), with the failure when it had connections and none
 * did (`err`, `n` 0); or, without `n`, that it is still working (waiting for acks).
 */
interface PushReply {
  id: string;
  node: string;
  n?: number;
  err?: WireError;
}

interface NodeResult {
  n: number;
  err?: WireError;
}

/** Server time in ms (TIME), so that node clocks need not agree. */
const NOW = `local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
`;

/**
 * KEYS: presence keys. ARGV: node id, ttl ms. Records the node under each key until now + ttl,
 * drops expired holders, and keeps the key itself alive as long as its longest-lived holder.
 */
const REFRESH_SCRIPT = `${NOW}local ttl = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + ttl, ARGV[1])
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return #KEYS
`;

/**
 * KEYS[1]: presence key. ARGV: own node id, request channel prefix, request. Publishes the request
 * to every live holder but this node and returns those with a subscriber listening.
 */
const PUSH_SCRIPT = `${NOW}local sent = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if node ~= ARGV[1] and redis.call('PUBLISH', ARGV[2] .. node, ARGV[3]) > 0 then
    sent[#sent + 1] = node
  end
end
return sent
`;

const sha1 = (text: string): string => createHash('sha1').update(text).digest('hex');
const PUSH_SHA = sha1(PUSH_SCRIPT);

/** Presence keys per refresh command (arguments of one EVAL). */
const REFRESH_BATCH = 500;

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function toWire(err: unknown): WireError {
  if (err instanceof ASAPError) {
    return err.data === undefined
      ? { code: err.code, message: err.message }
      : { code: err.code, message: err.message, data: err.data };
  }
  return { message: messageOf(err) };
}

/** The error a remote node reported, as the same class where it is one of ours. */
function revive(w: WireError): Error {
  switch (w.code) {
    case undefined:
      return new Error(w.message);
    case LocalErrorCode.ConnectionFailed:
      return new ConnectionError(w.message, w.data);
    case LocalErrorCode.RequestAborted:
      return new RequestAbortedError(w.message, w.data);
    case LocalErrorCode.RequestTimeout:
      return new RequestTimeoutError(w.message, w.data);
    case LocalErrorCode.ProtocolViolation:
      return new ProtocolError(w.message, w.data);
    default:
      return new ASAPError(w.code, w.message, w.data);
  }
}

/** One push to other nodes: who was asked, what they answered, who is overdue. */
class RemoteCall {
  readonly results = new Map<string, NodeResult>();
  /** Last time each node said something (or the request went out). */
  private readonly heard = new Map<string, number>();
  /** Nodes the request reached; undefined until the lookup answers. */
  private asked: string[] | undefined;
  private timer: Timer | undefined;
  private settled = false;
  readonly done: Promise<NodeResult[]>;
  private resolve!: (results: NodeResult[]) => void;
  private readonly started: number;

  constructor(
    private readonly timers: Timers,
    private readonly timeoutMs: number,
    private readonly onDone: () => void,
  ) {
    this.done = new Promise((r) => {
      this.resolve = r;
    });
    this.started = timers.now();
    this.arm(timeoutMs);
  }

  /** The lookup answered: these nodes got the request. */
  expect(nodes: readonly string[]): void {
    if (this.settled) return;
    this.asked = [...nodes];
    this.check();
  }

  /** An answer (only ever for an unsettled call: a settled one is no longer listed). */
  reply(r: PushReply): void {
    if (r.n === undefined) {
      this.heard.set(r.node, this.timers.now());
      return;
    }
    this.results.set(r.node, r.err === undefined ? { n: r.n } : { n: 0, err: r.err });
    this.check();
  }

  /**
   * Gives up on every node still silent. Runs once: from check() (never after it, as the timer is
   * cancelled and expect() looks at `settled`), or from close() (which only sees unsettled calls).
   */
  finish(): void {
    this.settled = true;
    this.timer?.cancel();
    this.onDone();
    this.resolve([...this.results.values()]);
  }

  /** Finishes when every asked node answered; otherwise waits for the earliest deadline. */
  private check(): void {
    const now = this.timers.now();
    let next = Number.POSITIVE_INFINITY;
    if (this.asked === undefined) {
      next = this.started + this.timeoutMs;
    } else {
      for (const node of this.asked) {
        if (this.results.has(node)) continue;
        const due = (this.heard.get(node) ?? this.started) + this.timeoutMs;
        if (due <= now) this.results.set(node, { n: 0 });
        else next = Math.min(next, due);
      }
    }
    if (next === Number.POSITIVE_INFINITY || next <= now) {
      this.finish();
      return;
    }
    this.arm(next - now);
  }

  private arm(ms: number): void {
    this.timer?.cancel();
    this.timer = this.timers.setTimeout(() => this.check(), ms);
  }
}

/**
 * Push routing across nodes on one Redis (issue 14): a push to an agent URN reaches its
 * connections on whichever node holds them.
 *
 * - Presence: a sorted set per URN (`<prefix>push:urn:<urn>`) of the node ids holding it, each
 *   scored by its expiry in Redis server time; the key expires with its last holder. A node
 *   refreshes the URNs it holds every `presenceTtlMs / 3` (one EVAL per 500 URNs, pipelined: one
 *   round trip), records a URN when its first local connection for it appears and ZREMs it when
 *   the last one goes. Pushes do not touch presence.
 * - Push: local connections directly, and one EVALSHA that looks up the live holders and PUBLISHes
 *   the request to each other holder's channel (`<prefix>push:req:<node>`): one round trip.
 *   Each holder pushes to its own connections and answers on the asker's reply channel
 *   (`<prefix>push:rep:<node>`) with how many took it or the error; while its pushes wait for
 *   acks it says so every third of the asker's timeout. A holder silent for `requestTimeoutMs`
 *   counts 0.
 * - Redis unreachable: local delivery goes on, remote delivery counts 0 (a warning is logged
 *   once per outage); presence is written again as soon as the client is ready.
 */
export class RedisPushAdapter implements PushAdapter {
  readonly nodeId: string;
  private readonly client: PushRedisClient;
  private readonly subscriber: PushRedisSubscriber;
  private readonly local: LocalPushAdapter;
  private readonly prefix: string;
  private readonly logger: Logger;
  private readonly ttlMs: number;
  private readonly timeoutMs: number;
  private readonly timers: Timers;
  /** URNs this node holds at least one connection of. */
  private readonly held = new Set<string>();
  private readonly calls = new Map<string, RemoteCall>();
  private seq = 0;
  private state: 'new' | 'started' | 'closed' = 'new';
  private subscribed = false;
  private subscribing: Promise<void> | undefined;
  private refresher: Timer | undefined;
  /** Set while Redis fails us: the warning is logged once per outage. */
  private degraded = false;

  constructor(opts: RedisPushAdapterOptions) {
    this.client = opts.client;
    this.subscriber = opts.subscriber;
    this.local = opts.local;
    this.nodeId = opts.nodeId ?? randomUUID();
    this.prefix = opts.keyPrefix ?? 'asap:';
    this.logger = opts.logger ?? silentLogger;
    this.ttlMs = opts.presenceTtlMs ?? 15_000;
    this.timeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.timers = opts.timers ?? systemTimers;
    if (!(this.ttlMs > 0 && this.timeoutMs > 0))
      throw new RangeError('presenceTtlMs and requestTimeoutMs must be > 0');
  }

  /** The presence key of a URN. */
  presenceKey(urn: string): string {
    return `${this.prefix}push:urn:${urn}`;
  }

  private requestChannel(node: string): string {
    return `${this.prefix}push:req:${node}`;
  }

  private replyChannel(node: string): string {
    return `${this.prefix}push:rep:${node}`;
  }

  /**
   * Subscribes to this node's channels, writes its presence and starts refreshing it. Call it
   * before the server takes connections. It does not fail when Redis is down: it keeps trying.
   */
  async start(): Promise<void> {
    if (this.state !== 'new') return;
    this.state = 'started';
    this.client.on('ready', this.onReady);
    this.subscriber.on('ready', this.onSubscriberReady);
    this.refresher = this.timers.setInterval(() => void this.refresh(), Math.max(1, this.ttlMs / 3));
    await Promise.all([this.subscribe(), this.refresh()]);
  }

  /** Stops refreshing, unsubscribes, removes this node's presence and gives up on pending remote pushes. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    const wasStarted = this.state === 'started';
    this.state = 'closed';
    this.refresher?.cancel();
    for (const call of [...this.calls.values()]) call.finish();
    if (!wasStarted) return;
    this.client.off('ready', this.onReady);
    this.subscriber.off('ready', this.onSubscriberReady);
    const work: Promise<unknown>[] = [];
    if (this.subscribed) {
      this.subscribed = false;
      work.push(this.unsubscribe());
    }
    if (this.client.isReady)
      for (const urn of this.held)
        work.push(this.client.sendCommand(['ZREM', this.presenceKey(urn), this.nodeId]));
    // Down Redis: presence expires by itself; an offline queue must not hold the close up.
    await this.bounded(Promise.allSettled(work));
  }

  add(urn: string, target: PushTarget): void {
    this.local.add(urn, target);
    if (this.held.has(urn)) return;
    this.held.add(urn);
    if (this.state === 'started') void this.announce([urn]);
  }

  remove(urns: readonly string[], target: PushTarget): void {
    this.local.remove(urns, target);
    for (const urn of urns) {
      if (!this.held.has(urn) || this.local.targets(urn).length > 0) continue;
      this.held.delete(urn);
      if (this.state === 'started' && this.client.isReady)
        this.client
          .sendCommand(['ZREM', this.presenceKey(urn), this.nodeId])
          .catch((err: unknown) => this.failed('remove', err));
    }
  }

  /** This node's connections of `urn` (the server lists its own). */
  targets(urn: string): PushTarget[] {
    return this.local.targets(urn);
  }

  async push(urn: string, envelope: Envelope<object>): Promise<number> {
    const [local, remote] = await Promise.all([
      Promise.allSettled(this.local.targets(urn).map((t) => t.push(envelope))),
      this.pushRemote(urn, envelope),
    ]);
    let reached = 0;
    let failure: { reason: unknown } | undefined;
    for (const r of local) {
      if (r.status === 'fulfilled') reached++;
      else failure ??= { reason: r.reason };
    }
    for (const r of remote) {
      reached += r.n;
      if (r.err !== undefined) failure ??= { reason: revive(r.err) };
    }
    if (reached === 0 && failure !== undefined) throw failure.reason;
    return reached;
  }

  // ---- asking other nodes ----

  private pushRemote(urn: string, envelope: Envelope<object>): Promise<NodeResult[]> {
    if (this.state !== 'started') return Promise.resolve([]);
    if (!this.client.isReady) {
      this.failed('push', new Error('client not ready'));
      return Promise.resolve([]);
    }
    const id = (++this.seq).toString(36);
    const call = new RemoteCall(this.timers, this.timeoutMs, () => this.calls.delete(id));
    this.calls.set(id, call);
    const request: PushRequest = { id, from: this.nodeId, urn, env: envelope, t: this.timeoutMs };
    this.evalPush(urn, JSON.stringify(request)).then(
      (nodes) => call.expect(nodes),
      (err: unknown) => {
        this.failed('push', err);
        call.expect([]);
      },
    );
    return call.done;
  }

  private async evalPush(urn: string, request: string): Promise<string[]> {
    const args = ['1', this.presenceKey(urn), this.nodeId, this.requestChannel(''), request];
    try {
      return (await this.client.sendCommand(['EVALSHA', PUSH_SHA, ...args])) as string[];
    } catch (err) {
      // Scripts are gone after a Redis restart (or never loaded): send the body once.
      if (!messageOf(err).startsWith('NOSCRIPT')) throw err;
      return (await this.client.sendCommand(['EVAL', PUSH_SCRIPT, ...args])) as string[];
    }
  }

  private readonly onReply = (message: string): void => {
    let reply: PushReply;
    try {
      reply = JSON.parse(message) as PushReply;
    } catch {
      this.logger.debug({ node: this.nodeId }, 'malformed push reply dropped');
      return;
    }
    this.calls.get(reply.id)?.reply(reply);
  };

  // ---- answering other nodes ----

  private readonly onRequest = (message: string): void => {
    if (this.state !== 'started') return;
    let req: PushRequest;
    try {
      req = JSON.parse(message) as PushRequest;
    } catch {
      this.logger.debug({ node: this.nodeId }, 'malformed push request dropped');
      return;
    }
    const answer = (reply: { n?: number; err?: WireError }): void => {
      if (!this.client.isReady) return;
      const text = JSON.stringify({ id: req.id, node: this.nodeId, ...reply });
      this.client
        .sendCommand(['PUBLISH', this.replyChannel(req.from), text])
        .catch((err: unknown) => this.failed('reply', err));
    };
    // Pushes that wait for acks may outlast the asker's timeout: tell it we are still at it.
    const alive = this.timers.setInterval(() => answer({}), Math.max(1, req.t / 3));
    this.local.push(req.urn, req.env).then(
      (n) => {
        alive.cancel();
        answer({ n });
      },
      (err: unknown) => {
        alive.cancel();
        answer({ n: 0, err: toWire(err) });
      },
    );
  };

  // ---- presence and subscription ----

  private readonly onReady = (): void => {
    void this.refresh();
  };

  private readonly onSubscriberReady = (): void => {
    void this.subscribe();
  };

  /** Subscribes once; node-redis resubscribes by itself after reconnects from then on. */
  private subscribe(): Promise<void> {
    if (this.subscribed) return Promise.resolve();
    this.subscribing ??= (async () => {
      try {
        await Promise.all([
          this.subscriber.subscribe(this.requestChannel(this.nodeId), this.onRequest),
          this.subscriber.subscribe(this.replyChannel(this.nodeId), this.onReply),
        ]);
        if (this.state === 'started') this.subscribed = true;
        // Closed meanwhile: close() saw nothing to unsubscribe.
        else await this.unsubscribe();
      } catch (err) {
        this.failed('subscribe', err);
      } finally {
        this.subscribing = undefined;
      }
    })();
    return this.subscribing;
  }

  private async unsubscribe(): Promise<void> {
    await Promise.all([
      this.subscriber.unsubscribe(this.requestChannel(this.nodeId), this.onRequest),
      this.subscriber.unsubscribe(this.replyChannel(this.nodeId), this.onReply),
    ]);
  }

  /** Writes presence for every URN held (and retries the subscription if it never took). */
  private async refresh(): Promise<void> {
    // Only while started: the timer and the ready listener go with close().
    void this.subscribe();
    if (!this.client.isReady) {
      this.failed('refresh', new Error('client not ready'));
      return;
    }
    const urns = [...this.held];
    const batches: Promise<boolean>[] = [];
    for (let i = 0; i < urns.length; i += REFRESH_BATCH)
      batches.push(this.announce(urns.slice(i, i + REFRESH_BATCH)));
    if (batches.length === 0) batches.push(this.ping());
    if ((await Promise.all(batches)).every(Boolean) && this.degraded) {
      this.degraded = false;
      this.logger.info({ node: this.nodeId, urns: urns.length }, 'redis push routing restored');
    }
  }

  /** Records this node under the URNs (EVAL: presence writes must keep their order with ZREMs). */
  private async announce(urns: string[]): Promise<boolean> {
    if (!this.client.isReady) {
      this.failed('add', new Error('client not ready'));
      return false;
    }
    const keys = urns.map((u) => this.presenceKey(u));
    try {
      await this.client.sendCommand([
        'EVAL',
        REFRESH_SCRIPT,
        String(keys.length),
        ...keys,
        this.nodeId,
        String(this.ttlMs),
      ]);
      return true;
    } catch (err) {
      this.failed('add', err);
      return false;
    }
  }

  /** With nothing to refresh: is Redis back? */
  private async ping(): Promise<boolean> {
    try {
      await this.client.sendCommand(['PING']);
      return true;
    } catch (err) {
      this.failed('refresh', err);
      return false;
    }
  }

  private failed(op: string, err: unknown): void {
    if (this.degraded) {
      this.logger.debug({ node: this.nodeId, op, err: messageOf(err) }, 'redis push routing failed');
      return;
    }
    this.degraded = true;
    this.logger.warn(
      { node: this.nodeId, op, err: messageOf(err) },
      'redis unavailable: pushes reach this node only',
    );
  }

  private bounded<T>(p: Promise<T>): Promise<T | undefined> {
    return new Promise((resolve) => {
      const t = this.timers.setTimeout(() => resolve(undefined), this.timeoutMs);
      void p.then((v) => {
        t.cancel();
        resolve(v);
      });
    });
  }
}
