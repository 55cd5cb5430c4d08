import { backoffDelay } from '../core/backoff.js';
import type { Claim, DedupeStore, Outcome } from '../core/dedupe.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import { LuaScript, type RedisConnection } from './connection.js';

export interface RedisDedupeOptions {
  /** How long a processed envelope is remembered, from its completion (default 10 min, asap-wire.md §10). */
  windowMs?: number;
  /** Lease of a claim while its handler runs (default 30 s); renewed every third of it until complete/release. */
  leaseMs?: number;
  /** Largest outcome kept, in characters of its stored form (default 64 KiB, as the memory store); bigger: `dropped`. */
  maxOutcomeBytes?: number;
  /** Most outcomes held in this process while Redis cannot take them (default 10,000); past it the oldest go. */
  maxUnpersisted?: number;
  /** Backoff of the retries that persist outcomes completed while Redis was down (default 100 ms to 5 s). */
  persistRetry?: { baseMs?: number; maxMs?: number };
  timers?: Timers;
}

/*
 * Stored values (one string key per (caller, envelope id), `<prefix>dd:<key>`), the fingerprint as decimal text:
 *   P<fp>|<token>     pending: claimed by the node and claim named by token, lease = PX
 *   R<fp>|<envelope>  done, the reply envelope's JSON text
 *   E<fp>|<error>     done, the JSON-RPC error object as JSON
 *   N<fp>|            done, nothing to send back
 *   X<fp>|            done, outcome too big to keep (a repeat is answered `dropped`)
 * Messages on `<prefix>ddc:<key>` (published when the claim settles): a done value (for an
 * outcome too big to keep, the full value, so that copies already waiting still get it), or
 * `U` when the claim was released unprocessed.
 */

/** SET NX with the lease; on a taken key, its value (one round trip). */
const CLAIM = new LuaScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])`);

/**
 * Writes the outcome for the window and publishes it, unless the key already holds an
 * outcome (the first one stays). ARGV: value, window, channel, message (empty: the value).
 */
const COMPLETE = new LuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 1) ~= 'P' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] == '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) else redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1`);

/** Compare-and-delete: gives the claim back only while it is still ours, and tells the waiters. */
const RELEASE = new LuaScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'U')
return 1`);

/**
 * Renews a lease that is still ours, or takes the claim again when the key is gone (Redis
 * restarted and lost it): 1 renewed, 2 re-taken, 0 someone else holds the key.
 */
const RENEW = new LuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0`);

const NEW: Claim = { state: 'new' };
const DROPPED: Claim = { state: 'dropped' };
const CONFLICT: Claim = { state: 'conflict' };

/** A claim of this process: pending while its handler runs, then (only while Redis cannot take it) holding its outcome. */
interface Owned {
  readonly fp: string;
  /** The pending value in Redis (`P<fp>|<token>`). */
  readonly marker: string;
  waiters: { promise: Promise<Outcome | undefined>; resolve: (o: Outcome | undefined) => void } | undefined;
  /** Set once completed: the outcome not yet written to Redis. */
  outcome: Outcome | undefined;
  /** The value to write (`X…` when too big) and the message to publish (empty: the value). */
  stored: string;
  message: string;
}

/** Copies on this node waiting for another node's claim to settle. */
interface Waiting {
  readonly channel: string;
  readonly rkey: string;
  readonly fp: string;
  readonly listener: (message: string) => void;
  readonly resolvers: ((o: Outcome | undefined) => void)[];
  timer: Timer | undefined;
}

/**
 * The {@link DedupeStore} of several processes sharing one Redis (asap-wire.md §6, §10).
 *
 * - `claim` is one atomic `SET NX PX <lease>` (in a script that returns the value already
 *   there): of all copies of an envelope on all nodes exactly one gets `new`. The lease is
 *   renewed (every third of it, one sweep for every running claim of this process) until the
 *   claim is completed or released.
 * - A copy that finds the claim pending on another node subscribes to the key's channel,
 *   reads the key once more (closing the race with a completion between its claim and its
 *   subscription), and waits: for the published outcome, or for `U` (released), or, as a
 *   fallback for a lost message, a re-read every lease length. No polling. Its promise
 *   settles with undefined (the dispatcher then claims again) when the claim was released,
 *   when its lease ran out, or when Redis failed meanwhile (the new claim then answers -32040).
 *   Copies on the node that holds the claim wait in memory.
 * - `complete` writes the outcome for the window and publishes it in one script, and resolves
 *   once Redis has it, so the reply goes out only after the outcome is stored.
 * - `release` deletes the claim only if it is still this claim (compare-and-delete).
 *
 * Round trips per envelope on the command connection (each a single EVALSHA; the first use
 * of a script after Redis starts costs one more, EVAL):
 * - new: two, claim then complete (plus one per lease third its handler runs longer, shared
 *   by all claims running then: the renewals are pipelined);
 * - a duplicate of a done one: one (claim);
 * - a duplicate of one pending on this node: none (it waits in memory);
 * - a duplicate of one pending on another node: two (claim, re-read) plus a SUBSCRIBE and an
 *   UNSUBSCRIBE on the subscriber connection, and one re-read per lease length it waits;
 * - refused before its handler ran: two (claim, release).
 * Replay protection (the nonce store) adds one SET NX to each new envelope: three in all.
 *
 * Redis unreachable: `claim` throws the recoverable -32040 with `retry_after_ms`, except for
 * envelopes this process holds itself (answered from memory). A `complete` that cannot reach
 * Redis keeps the outcome in this process, answers local duplicates from it, retries with
 * backoff (and at once when Redis returns), and keeps the claim's lease alive (re-taking the
 * claim if Redis lost it), so an outage does not make anything run twice.
 *
 * Crash window: a node that dies while a handler runs (or while it holds outcomes it could
 * not write yet) leaves a claim that nobody renews. Once its lease expires (30 s by default)
 * a retransmission of that envelope, on any node, is `new` and runs again. Outside that window
 * (a crash before the claim, or once the outcome is in Redis) nothing runs twice. Likewise:
 * a partition longer than the lease that cuts one node off a Redis the others still reach;
 * and a Redis that loses its data (restarted without persistence) forgets the outcomes it
 * held, and, until their nodes re-take them, the claims running then: run Redis with AOF
 * (`appendonly yes`) when its restarts must not make anything run again.
 */
export class RedisDedupeStore implements DedupeStore {
  private readonly windowMs: number;
  private readonly leaseMs: number;
  private readonly maxOutcomeBytes: number;
  private readonly maxUnpersisted: number;
  private readonly retryBase: number;
  private readonly retryMax: number;
  private readonly timers: Timers;
  private readonly owned = new Map<string, Owned>();
  /** Owned claims completed while Redis could not take their outcome, oldest first. */
  private readonly unpersisted = new Set<string>();
  private readonly waiting = new Map<string, Waiting>();
  private sweepTimer: Timer | undefined;
  private retryTimer: Timer | undefined;
  private retryAttempt = 0;
  private claims = 0;
  private closed = false;
  private readonly offReady: () => void;

  constructor(
    private readonly conn: RedisConnection,
    opts: RedisDedupeOptions = {},
  ) {
    this.windowMs = opts.windowMs ?? 600_000;
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.maxOutcomeBytes = opts.maxOutcomeBytes ?? 64 * 1024;
    this.maxUnpersisted = opts.maxUnpersisted ?? 10_000;
    this.retryBase = opts.persistRetry?.baseMs ?? 100;
    this.retryMax = opts.persistRetry?.maxMs ?? 5000;
    this.timers = opts.timers ?? systemTimers;
    this.offReady = conn.onReady(() => this.recover());
  }

  /** Claims of this process now running, and outcomes it holds that Redis does not have yet. */
  get stats(): { pending: number; unpersisted: number; waiting: number } {
    return {
      pending: this.owned.size - this.unpersisted.size,
      unpersisted: this.unpersisted.size,
      waiting: this.waiting.size,
    };
  }

  async claim(key: string, fingerprint: number): Promise<Claim> {
    const fp = String(fingerprint);
    const own = this.owned.get(key);
    if (own !== undefined) return this.localClaim(own, fp);
    const marker = `P${fp}|${this.conn.nodeId}.${++this.claims}`;
    const rkey = this.conn.key('dd', key);
    const found = (await this.conn.run((c) => CLAIM.run(c, [rkey], [marker, String(this.leaseMs)]))) as
      | string
      | null;
    if (found === null) {
      this.owned.set(key, { fp, marker, waiters: undefined, outcome: undefined, stored: '', message: '' });
      this.startSweep();
      return NEW;
    }
    const value = parse(found);
    if (value.fp !== fp) return CONFLICT;
    if (value.kind === 'P') {
      // A claim of this process that started while this one was on its way.
      const mine = this.owned.get(key);
      if (mine !== undefined) return this.localClaim(mine, fp);
      return { state: 'pending', outcome: this.wait(key, rkey, fp) };
    }
    return settled(value);
  }

  async complete(key: string, outcome: Outcome): Promise<void> {
    const own = this.owned.get(key);
    if (own === undefined || own.outcome !== undefined) return;
    const value = encode(own.fp, outcome);
    own.outcome = outcome;
    if (value.length > this.maxOutcomeBytes) {
      own.stored = `X${own.fp}|`;
      own.message = value;
    } else {
      own.stored = value;
    }
    own.waiters?.resolve(outcome);
    own.waiters = undefined;
    if (await this.persist(key, own)) return;
    this.unpersisted.add(key);
    while (this.unpersisted.size > this.maxUnpersisted) {
      const oldest = this.unpersisted.values().next().value as string;
      this.unpersisted.delete(oldest);
      this.owned.delete(oldest);
      this.conn.logger.error(
        { key: oldest },
        'dedupe outcome dropped before Redis could take it: a retransmission may run again',
      );
    }
    this.scheduleRetry();
  }

  async release(key: string): Promise<void> {
    const own = this.owned.get(key);
    if (own === undefined || own.outcome !== undefined) return;
    this.owned.delete(key);
    own.waiters?.resolve(undefined);
    this.stopSweepIfIdle();
    try {
      await this.conn.run((c) =>
        RELEASE.run(c, [this.conn.key('dd', key)], [own.marker, this.conn.key('ddc', key)]),
      );
    } catch {
      // Its lease expires by itself (nobody renews it now); a copy waiting elsewhere then claims it.
      this.conn.logger.warn(
        { key },
        'dedupe claim not released (Redis unavailable): it expires with its lease',
      );
    }
  }

  /** Stops the timers and forgets the waiters (they settle with undefined). Claims still running expire with their lease. */
  close(): void {
    this.closed = true;
    this.offReady();
    this.sweepTimer?.cancel();
    this.sweepTimer = undefined;
    this.retryTimer?.cancel();
    this.retryTimer = undefined;
    for (const key of [...this.waiting.keys()]) this.settle(key, undefined);
  }

  /** A claim on a key this process holds: answered from memory, no round trip. */
  private localClaim(own: Owned, fp: string): Claim {
    if (own.fp !== fp) return CONFLICT;
    if (own.outcome !== undefined) {
      return own.stored.charCodeAt(0) === 88 /* X */ ? DROPPED : { state: 'done', outcome: own.outcome };
    }
    if (own.waiters === undefined) {
      let resolve!: (o: Outcome | undefined) => void;
      const promise = new Promise<Outcome | undefined>((r) => {
        resolve = r;
      });
      own.waiters = { promise, resolve };
    }
    return { state: 'pending', outcome: own.waiters.promise };
  }

  /** Writes a completed claim's outcome; false when Redis could not take it. */
  private async persist(key: string, own: Owned): Promise<boolean> {
    try {
      await this.conn.run((c) =>
        COMPLETE.run(
          c,
          [this.conn.key('dd', key)],
          [own.stored, String(this.windowMs), this.conn.key('ddc', key), own.message],
        ),
      );
    } catch {
      return false;
    }
    if (this.owned.get(key) === own) this.owned.delete(key);
    this.unpersisted.delete(key);
    this.stopSweepIfIdle();
    return true;
  }

  /** Persists the held outcomes, oldest first; reschedules itself (with backoff) while some remain. */
  private async flush(): Promise<void> {
    this.retryTimer = undefined;
    for (const key of [...this.unpersisted]) {
      const own = this.owned.get(key);
      if (own === undefined || !(await this.persist(key, own))) break;
    }
    if (this.unpersisted.size === 0) {
      this.retryAttempt = 0;
      return;
    }
    this.retryAttempt++;
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer !== undefined) return;
    const delay = backoffDelay(this.retryAttempt, { baseMs: this.retryBase, maxMs: this.retryMax });
    this.retryTimer = this.timers.setTimeout(() => void this.flush(), delay);
  }

  /** Redis is back: keep the leases, write what it missed, re-read what copies wait for. */
  private recover(): void {
    void this.sweep();
    if (this.unpersisted.size > 0) {
      this.retryTimer?.cancel();
      void this.flush();
    }
    for (const key of [...this.waiting.keys()]) void this.recheck(key);
  }

  private startSweep(): void {
    if (this.sweepTimer !== undefined || this.closed) return;
    this.sweepTimer = this.timers.setInterval(
      () => void this.sweep(),
      Math.max(1, Math.floor(this.leaseMs / 3)),
    );
  }

  private stopSweepIfIdle(): void {
    if (this.owned.size > 0 || this.sweepTimer === undefined) return;
    this.sweepTimer.cancel();
    this.sweepTimer = undefined;
  }

  /** Renews the lease of every claim this process holds (commands pipelined: one round trip). */
  private async sweep(): Promise<void> {
    const lease = String(this.leaseMs);
    await Promise.all(
      [...this.owned].map(async ([key, own]) => {
        let renewed: unknown;
        try {
          renewed = await this.conn.run((c) => RENEW.run(c, [this.conn.key('dd', key)], [own.marker, lease]));
        } catch {
          return; // Tried again at the next sweep or when Redis returns.
        }
        if (renewed === 0 && this.owned.get(key) === own && own.outcome === undefined) {
          this.conn.logger.warn({ key }, 'dedupe claim lost its lease while its handler runs');
        }
      }),
    );
  }

  /** Waits for another node's claim to settle. */
  private wait(key: string, rkey: string, fp: string): Promise<Outcome | undefined> {
    let w = this.waiting.get(key);
    if (w === undefined) {
      const channel = this.conn.key('ddc', key);
      const listener = (message: string): void => {
        if (message === 'U') this.settle(key, undefined);
        else this.settle(key, outcomeOf(parse(message), fp));
      };
      const created: Waiting = { channel, rkey, fp, listener, resolvers: [], timer: undefined };
      w = created;
      this.waiting.set(key, created);
      this.arm(key, created);
      // Subscribed, read the key again: an outcome written before the subscription took effect is not missed.
      this.conn.subscriber.subscribe(channel, listener).then(
        () => this.recheck(key),
        () => this.recheck(key),
      );
    }
    const { resolvers } = w;
    return new Promise((resolve) => resolvers.push(resolve));
  }

  private arm(key: string, w: Waiting): void {
    w.timer?.cancel();
    w.timer = this.timers.setTimeout(() => void this.recheck(key), this.leaseMs);
  }

  /** Reads a waited-for key: settles when it is no longer pending (or unreadable), else waits on. */
  private async recheck(key: string): Promise<void> {
    const w = this.waiting.get(key);
    if (w === undefined) return;
    let found: string | null;
    try {
      found = (await this.conn.run((c) => c.get(w.rkey))) as string | null;
    } catch {
      this.settle(key, undefined);
      return;
    }
    if (this.waiting.get(key) !== w) return;
    if (found === null) {
      this.settle(key, undefined); // released or lease expired: claim again
      return;
    }
    const value = parse(found);
    if (value.kind === 'P' && value.fp === w.fp) {
      this.arm(key, w);
      return;
    }
    this.settle(key, outcomeOf(value, w.fp));
  }

  private settle(key: string, outcome: Outcome | undefined): void {
    const w = this.waiting.get(key);
    if (w === undefined) return;
    this.waiting.delete(key);
    w.timer?.cancel();
    this.conn.subscriber.unsubscribe(w.channel, w.listener).catch(() => {
      // Offline: the subscription is gone with the connection (it is not restored once no listener is left).
    });
    for (const resolve of w.resolvers) resolve(outcome);
  }
}

interface Parsed {
  kind: string;
  fp: string;
  body: string;
}

function parse(value: string): Parsed {
  const bar = value.indexOf('|');
  return { kind: value.charAt(0), fp: value.slice(1, bar), body: value.slice(bar + 1) };
}

function encode(fp: string, outcome: Outcome): string {
  switch (outcome.kind) {
    case 'result':
      return `R${fp}|${outcome.envelope}`;
    case 'error':
      return `E${fp}|${JSON.stringify(outcome.error)}`;
    case 'none':
      return `N${fp}|`;
  }
}

/** The outcome of a done value, or undefined when it holds none (dropped; pending or another envelope's: claim again). */
function outcomeOf(value: Parsed, fp: string): Outcome | undefined {
  if (value.fp !== fp) return undefined;
  switch (value.kind) {
    case 'R':
      return { kind: 'result', envelope: value.body };
    case 'E':
      return { kind: 'error', error: JSON.parse(value.body) };
    case 'N':
      return { kind: 'none' };
    default:
      return undefined;
  }
}

/** The claim answered by a done value (its fingerprint already matched). */
function settled(value: Parsed): Claim {
  const outcome = outcomeOf(value, value.fp);
  return outcome === undefined ? DROPPED : { state: 'done', outcome };
}
