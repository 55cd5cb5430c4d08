import { ulid } from 'ulid';
import type { AppendResult, SessionEntry, SessionReplay, SessionStore } from '../core/session-store.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import { LuaScript, type RedisConnection } from './connection.js';

export interface RedisSessionOptions {
  /** Most pushes kept per session (default 1000); past it the oldest are dropped. */
  maxEntriesPerSession?: number;
  /** Most bytes (UTF-8) of pushes kept per session (default 1 MiB); past it the oldest are dropped. */
  maxBytesPerSession?: number;
  /** How long a session with no connection is kept (default 2 min, asap-wire.md §12). */
  disconnectWindowMs?: number;
  timers?: Timers;
}

/*
 * Keys of session S (the braces keep them in one cluster slot), all with the same TTL:
 *   <prefix>s:{S}     hash: caller, attached (connections holding it, all nodes), seq (last seq), bytes
 *   <prefix>s:{S}:x   stream of the kept pushes, entry id `<seq>-0`, fields e (envelope), i (envelope id)
 *   <prefix>s:{S}:i   hash: envelope id -> seq, for the kept pushes (append is idempotent by id)
 * Channel <prefix>sc:{S}: every fresh entry, as `<seq>:<envelope id bytes>:<envelope id><envelope>`.
 *
 * TTL: the disconnect window once no connection holds the session; while some node holds it,
 * window + refresh interval, renewed every refresh interval by each node that holds it. So a
 * session whose node died expires at most window + refresh interval after the last renewal.
 */

/** Drops the oldest kept push (ids hash and byte count included) while over a bound. KEYS: meta, stream, ids. */
const TRIM = `
local function trim(maxEntries, maxBytes)
  local len = redis.call('XLEN', KEYS[2])
  local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
  while len > 0 and (len > maxEntries or bytes > maxBytes) do
    local e = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[2], e[1])
    redis.call('HDEL', KEYS[3], e[2][4])
    bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -#e[2][2])
    len = len - 1
  end
end`;

/**
 * ARGV: envelope, envelope id, max entries, max bytes, channel. Nil when the session is gone;
 * else {seq, fresh (1/0)}. Idempotence, seq, XADD, trim, TTL and publish in one step.
 */
const APPEND = new LuaScript(`${TRIM}
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then return {tonumber(known), 0} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], seq .. '-0', 'e', ARGV[1], 'i', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], seq)
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[1])
trim(tonumber(ARGV[3]), tonumber(ARGV[4]))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
redis.call('PUBLISH', ARGV[5], seq .. ':' .. #ARGV[2] .. ':' .. ARGV[2] .. ARGV[1])
return {seq, 1}`);

/**
 * ARGV: last seq (a non-negative integer). Nil when the session is gone, when last seq is
 * past the last one sent, or when pushes after it were dropped (a gap); else forgets the
 * pushes up to it and returns the rest, as XRANGE entries.
 */
const SINCE = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local last = tonumber(ARGV[1])
local nextSeq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
if last >= nextSeq then return false end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local oldest = nextSeq
if first then oldest = tonumber(string.match(first[1], '^(%d+)')) end
if last + 1 < oldest then return false end
if last >= oldest then
  local freed = 0
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', last .. '-0')) do
    redis.call('XDEL', KEYS[2], e[1])
    redis.call('HDEL', KEYS[3], e[2][4])
    freed = freed + #e[2][2]
  end
  redis.call('HINCRBY', KEYS[1], 'bytes', -freed)
end
return redis.call('XRANGE', KEYS[2], (last + 1) .. '-0', '+')`);

/** ARGV: caller, TTL while attached. 1 attached; 0 gone or another caller's. */
const ATTACH = new LuaScript(`
if redis.call('HGET', KEYS[1], 'caller') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attached', 1)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1`);

/** ARGV: the disconnect window. With no connection left, the keys expire after it. */
/** Records a URN of the session's client (a `u:<urn>` field of the session hash), if the session exists. */
const ADD_URN = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'u:' .. ARGV[1], 1)
return 1
`);

const DETACH = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'attached', -1)
if n > 0 then return 1 end
if n < 0 then redis.call('HSET', KEYS[1], 'attached', 0) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 2`);

/** ARGV: TTL while attached. Renews a session some connection of this node holds. */
const TOUCH = new LuaScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 1`);

/** This node's subscription to one session's channel. */
interface Subscription {
  readonly channel: string;
  readonly listeners: Set<(entry: SessionEntry) => void>;
  readonly handler: (message: Buffer) => void;
  /** Settles once SUBSCRIBE took effect (`since` waits for it, so no entry falls between). */
  readonly ready: Promise<void>;
}

/**
 * The {@link SessionStore} of several processes sharing one Redis (asap-wire.md §12): a
 * client resumes on any node. Same semantics as the memory store: seq from 1 per session,
 * append idempotent by envelope id, bounds per session (count and UTF-8 bytes of pushes),
 * `since` forgets what the client confirmed and answers `expired` on a gap, attach refused
 * to another caller, expiry after the disconnect window once no connection holds it.
 *
 * Every append is one script (idempotence, seq, XADD, trim, TTL, PUBLISH: one round trip);
 * every node with a subscription to the session gets the fresh entry from the channel, so
 * the node holding the live connection writes it wherever it was appended. `subscribe`
 * answers at once; `since` on this node waits until an earlier `subscribe` to the same
 * session took effect, so an entry appended meanwhile is in the replay or in the live feed.
 *
 * Unlike the memory store it has no bound on the number of sessions: each expires with its
 * TTL, and Redis's own memory limit is the bound. While Redis is unreachable, `open`,
 * `append`, `since` and `attach` reject with the recoverable -32040; `detach` and `close`
 * log and resolve (the keys then expire with their TTL, which nobody renews any more).
 */
export class RedisSessionStore implements SessionStore {
  private readonly maxEntries: string;
  private readonly maxBytes: string;
  private readonly windowMs: number;
  /** How often the sessions held here are renewed, and their extra TTL while attached. */
  private readonly refreshMs: number;
  private readonly timers: Timers;
  /** Connections of this node holding each session (open/attach minus detach). */
  private readonly held = new Map<string, number>();
  private readonly subscriptions = new Map<string, Subscription>();
  private refreshTimer: Timer | undefined;
  private closed = false;
  private readonly offReady: () => void;

  constructor(
    private readonly conn: RedisConnection,
    opts: RedisSessionOptions = {},
  ) {
    this.maxEntries = String(opts.maxEntriesPerSession ?? 1000);
    this.maxBytes = String(opts.maxBytesPerSession ?? 1024 * 1024);
    this.windowMs = opts.disconnectWindowMs ?? 120_000;
    this.refreshMs = Math.max(10, Math.min(30_000, Math.floor(this.windowMs / 3)));
    this.timers = opts.timers ?? systemTimers;
    this.offReady = conn.onReady(() => void this.refresh());
  }

  async open(callerId: string): Promise<{ sessionId: string }> {
    const sessionId = ulid();
    const [meta] = this.keys(sessionId);
    await this.conn.run((c) =>
      c
        .multi()
        .hSet(meta, { caller: callerId, attached: '1', seq: '0', bytes: '0' })
        .pExpire(meta, this.attachedTtl)
        .exec(),
    );
    this.hold(sessionId);
    return { sessionId };
  }

  async append(
    sessionId: string,
    envelopeJson: string,
    envelopeId: string,
  ): Promise<AppendResult | undefined> {
    const reply = (await this.conn.run((c) =>
      APPEND.run(c, this.keys(sessionId), [
        envelopeJson,
        envelopeId,
        this.maxEntries,
        this.maxBytes,
        this.channel(sessionId),
      ]),
    )) as [number, number] | null;
    return reply === null ? undefined : { seq: reply[0], fresh: reply[1] === 1 };
  }

  subscribe(sessionId: string, listener: (entry: SessionEntry) => void): () => void {
    let sub = this.subscriptions.get(sessionId);
    if (sub === undefined) {
      const channel = this.channel(sessionId);
      const listeners = new Set<(entry: SessionEntry) => void>();
      const handler = (message: Buffer): void => {
        const entry = decodeEntry(message);
        for (const l of [...listeners]) {
          try {
            l(entry);
          } catch (err) {
            this.conn.logger.error(
              { session: sessionId, err: (err as Error).message },
              'session listener failed',
            );
          }
        }
      };
      const ready = this.conn.subscriber.subscribe(channel, handler, true).catch((err: unknown) => {
        this.conn.logger.warn(
          { session: sessionId, err: (err as Error).message },
          'session subscribe failed',
        );
      });
      sub = { channel, listeners, handler, ready };
      this.subscriptions.set(sessionId, sub);
    }
    const s = sub;
    s.listeners.add(listener);
    return () => {
      if (!s.listeners.delete(listener) || s.listeners.size > 0) return;
      // Still the session's (close and shutdown empty a subscription they drop).
      this.subscriptions.delete(sessionId);
      this.unsubscribe(s);
    };
  }

  async since(sessionId: string, lastSeq: number): Promise<SessionReplay> {
    if (!Number.isInteger(lastSeq) || lastSeq < 0) return { expired: true };
    await this.subscriptions.get(sessionId)?.ready;
    const reply = (await this.conn.run((c) => SINCE.run(c, this.keys(sessionId), [String(lastSeq)]))) as
      | [string, string[]][]
      | null;
    if (reply === null) return { expired: true };
    return {
      expired: false,
      entries: reply.map(([id, fields]) => ({
        seq: Number.parseInt(id, 10),
        envelope: fields[1]!,
        envelopeId: fields[3]!,
      })),
    };
  }

  async detach(sessionId: string): Promise<void> {
    const n = this.held.get(sessionId);
    // A detach without a matching open/attach here must not restart (and so extend) the window.
    if (n === undefined) return;
    if (n > 1) this.held.set(sessionId, n - 1);
    else this.release(sessionId);
    try {
      await this.conn.run((c) => DETACH.run(c, this.keys(sessionId), [String(this.windowMs)]));
    } catch {
      this.conn.logger.warn(
        { session: sessionId },
        'session detach not recorded (Redis unavailable): it expires with its TTL',
      );
    }
  }

  async attach(sessionId: string, callerId: string): Promise<boolean> {
    const reply = await this.conn.run((c) =>
      ATTACH.run(c, this.keys(sessionId), [callerId, String(this.attachedTtl)]),
    );
    if (reply !== 1) return false;
    this.hold(sessionId);
    return true;
  }

  async close(sessionId: string): Promise<void> {
    this.release(sessionId);
    const sub = this.subscriptions.get(sessionId);
    if (sub !== undefined) {
      this.subscriptions.delete(sessionId);
      this.unsubscribe(sub);
    }
    try {
      await this.conn.run((c) => c.del(this.keys(sessionId)));
    } catch {
      this.conn.logger.warn(
        { session: sessionId },
        'session not deleted (Redis unavailable): it expires with its TTL',
      );
    }
  }

  async addUrn(sessionId: string, urn: string): Promise<void> {
    await this.conn.run((c) => ADD_URN.run(c, [this.keys(sessionId)[0]], [urn]));
  }

  async urns(sessionId: string): Promise<readonly string[]> {
    const fields = await this.conn.run((c) => c.hKeys(this.keys(sessionId)[0]));
    return fields.filter((f) => f.startsWith('u:')).map((f) => f.slice(2));
  }

  /** Stops renewing and drops every subscription (the server's shutdown); the sessions expire in Redis. */
  shutdown(): void {
    this.closed = true;
    this.offReady();
    this.refreshTimer?.cancel();
    this.refreshTimer = undefined;
    this.held.clear();
    for (const sub of this.subscriptions.values()) this.unsubscribe(sub);
    this.subscriptions.clear();
  }

  private get attachedTtl(): number {
    return this.windowMs + this.refreshMs;
  }

  private keys(sessionId: string): [string, string, string] {
    const meta = `${this.conn.keyPrefix}s:{${sessionId}}`;
    return [meta, `${meta}:x`, `${meta}:i`];
  }

  private channel(sessionId: string): string {
    return `${this.conn.keyPrefix}sc:{${sessionId}}`;
  }

  private unsubscribe(sub: Subscription): void {
    sub.listeners.clear();
    this.conn.subscriber.unsubscribe(sub.channel, sub.handler, true).catch(() => {
      // Offline: the subscription went with the connection and is not restored without listeners.
    });
  }

  private hold(sessionId: string): void {
    this.held.set(sessionId, (this.held.get(sessionId) ?? 0) + 1);
    if (this.refreshTimer === undefined && !this.closed) {
      this.refreshTimer = this.timers.setInterval(() => void this.refresh(), this.refreshMs);
    }
  }

  private release(sessionId: string): void {
    this.held.delete(sessionId);
    if (this.held.size > 0 || this.refreshTimer === undefined) return;
    this.refreshTimer.cancel();
    this.refreshTimer = undefined;
  }

  /** Renews every session a connection of this node holds (pipelined: one round trip). */
  private async refresh(): Promise<void> {
    const ttl = String(this.attachedTtl);
    await Promise.all(
      [...this.held.keys()].map((id) =>
        this.conn
          .run((c) => TOUCH.run(c, this.keys(id), [ttl]))
          .catch(() => {
            // Renewed at the next tick, or when Redis returns.
          }),
      ),
    );
  }
}

/** `<seq>:<envelope id bytes>:<envelope id><envelope>`, as APPEND publishes it. */
function decodeEntry(message: Buffer): SessionEntry {
  const a = message.indexOf(58); // ':'
  const b = message.indexOf(58, a + 1);
  const idBytes = Number.parseInt(message.toString('latin1', a + 1, b), 10);
  return {
    seq: Number.parseInt(message.toString('latin1', 0, a), 10),
    envelopeId: message.toString('utf8', b + 1, b + 1 + idBytes),
    envelope: message.toString('utf8', b + 1 + idBytes),
  };
}
