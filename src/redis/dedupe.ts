import { ErrorReply } from '@redis/client';
import { backoffDelay } from '../core/backoff.js';
import type { Claim, DedupeStore, Outcome } from '../core/dedupe.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import { LuaScript, type RedisClient, type RedisConnection } from './connection.js';

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

/**
 * Claims a batch of keys, one after the other: SET NX with the lease, and for each key already
 * taken its value. ARGV: the lease, then the pending value of each key. Answers one entry per
 * key: nil (claimed), the value found, or the error of that key alone.
 */
const CLAIM = new LuaScript(`
local out = {}
for i = 1, #KEYS do
  local set = redis.pcall('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1])
  if not set then out[i] = redis.pcall('GET', KEYS[i])
  elseif set.err then out[i] = set
  else out[i] = false end
end
return out`);

/**
 * Writes a batch of outcomes for the window and publishes each, except on a key that already
 * holds an outcome (the first one stays). ARGV: the window, the channel prefix, the length of
 * the key prefix, then per key its value and its message (empty: the value); the channel of a
 * key is the channel prefix and the key past its prefix. Answers one entry per key: 1 written,
 * 0 kept the outcome already there, or the error of that key alone.
 */
const COMPLETE = new LuaScript(`
local from = tonumber(ARGV[3]) + 1
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local cur = redis.pcall('GET', key)
  if type(cur) == 'table' then out[i] = cur
  elseif cur and string.sub(cur, 1, 1) ~= 'P' then out[i] = 0
  else
    local value = ARGV[2 * i + 2]
    local set = redis.pcall('SET', key, value, 'PX', ARGV[1])
    if set.err then out[i] = set
    else
      local message = ARGV[2 * i + 3]
      if message == '' then message = value end
      redis.pcall('PUBLISH', ARGV[2] .. string.sub(key, from), message)
      out[i] = 1
    end
  end
end
return out`);

/** Compare-and-delete: gives the claim back only while it is still ours, and tells the waiters. */
const RELEASE = new LuaScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'U')
return 1`);

/**
 * Renews a batch of leases: each one still ours is renewed, each one whose key is gone (Redis
 * restarted and lost it) is taken again. ARGV: the lease, then the pending value of each key.
 * Answers one entry per key: 1 renewed, 2 re-taken, 0 someone else holds the key, or the error
 * of that key alone.
 */
const RENEW = new LuaScript(`
local out = {}
for i = 1, #KEYS do
  local marker = ARGV[i + 1]
  local cur = redis.pcall('GET', KEYS[i])
  if type(cur) == 'table' then out[i] = cur
  elseif cur == marker then
    redis.pcall('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = 1
  elseif not cur then
    redis.pcall('SET', KEYS[i], marker, 'PX', ARGV[1])
    out[i] = 2
  else out[i] = 0 end
end
return out`);

const NEW: Claim = { state: 'new' };
const DROPPED: Claim = { state: 'dropped' };
const CONFLICT: Claim = { state: 'conflict' };

/** Most keys in one script call: the claims (or outcomes) of a busier tick go as several calls. */
const MAX_BATCH = 128;

/** A claim of this process: pending while its handler runs, then (only while Redis cannot take it) holding its outcome. */
interface Owned {
  readonly fp: string;
  /** The pending value in Redis (`P<fp>|<token>`). */
  readonly marker: string;
  /** Its Redis key (`<prefix>dd:<key>`). */
  readonly rkey: string;
  waiters: { promise: Promise<Outcome | undefined>; resolve: (o: Outcome | undefined) => void } | undefined;
  /** Set once completed: the outcome not yet written to Redis. */
  outcome: Outcome | undefined;
  /** The value to write (`X…` when too big) and the message to publish (empty: the value). */
  stored: string;
  message: string;
}

/**
 * The claims of one tick, sent as one CLAIM call. Parallel arrays (no object per claim):
 * `command` is the EVALSHA command being built, its Redis keys from index 3 on.
 */
interface ClaimBatch {
  readonly command: string[];
  readonly keys: string[];
  readonly fps: string[];
  readonly markers: string[];
  readonly resolves: ((claim: Claim) => void)[];
  readonly rejects: ((err: unknown) => void)[];
}

/** The outcomes of one tick (or of a retry), sent as one COMPLETE call; `command` as in {@link ClaimBatch}. */
interface WriteBatch {
  readonly command: string[];
  readonly keys: string[];
  readonly owns: Owned[];
  /** Settles once the batch is handled (written, or held for a retry): one promise for all its callers. */
  done: Promise<void> | undefined;
  resolve: (() => void) | undefined;
}

/** Index of the first Redis key in a batch's command (`EVALSHA <sha> <numkeys> <keys…>`). */
const FIRST_KEY = 3;

function claimBatch(): ClaimBatch {
  return { command: ['EVALSHA', CLAIM.sha, ''], keys: [], fps: [], markers: [], resolves: [], rejects: [] };
}

function writeBatch(): WriteBatch {
  return { command: ['EVALSHA', COMPLETE.sha, ''], keys: [], owns: [], done: undefined, resolve: undefined };
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
 * - Batched per tick: the claims made in one turn of the event loop (the frames of one socket
 *   read, or of every connection read in that turn) go to Redis as one script call that takes
 *   them in order, one key after the other, and answers each on its own; likewise the outcomes
 *   completed in one turn. A batch holds at most 128 keys (a busier turn sends several). Each
 *   caller gets the answer of its own key (a Redis error on one key fails that claim alone);
 *   a failure of the call itself (Redis unreachable, stalled, connection lost) reaches every
 *   caller of the batch: -32040 for the claims, the retry below for the outcomes.
 * - `release` deletes the claim only if it is still this claim (compare-and-delete).
 *
 * Script calls per envelope on the command connection (each a single EVALSHA, shared by the
 * batch it is in; the first use of a script after Redis starts costs one more, EVAL):
 * - new: two, claim then complete (plus one per lease third its handler runs longer, shared
 *   by all claims running then: the renewals are pipelined);
 * - a duplicate of a done one: one (claim);
 * - a duplicate of one pending on this node: none (it waits in memory);
 * - a duplicate of one pending on another node: two (claim, re-read) plus a SUBSCRIBE and an
 *   UNSUBSCRIBE on the subscriber connection, and one re-read per lease length it waits;
 * - refused before its handler ran: two (claim, release).
 * Under load a batch carries many envelopes: N new envelopes in one turn cost two calls, not 2N.
 * Replay protection (the nonce store) adds one SET NX to each new envelope that carries a nonce
 * (a command of its own, not batched).
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
  /** Made once: the prefixes of keys and channels, the lease and window as text, this node's claim token. */
  private readonly keyPrefix: string;
  private readonly channelPrefix: string;
  private readonly lease: string;
  private readonly window: string;
  private readonly token: string;
  private readonly owned = new Map<string, Owned>();
  /** Owned claims completed while Redis could not take their outcome, oldest first. */
  private readonly unpersisted = new Set<string>();
  private readonly waiting = new Map<string, Waiting>();
  /** The claims and the outcomes of this tick, sent together when it ends (or once MAX_BATCH are waiting). */
  private claimsDue = claimBatch();
  private writesDue = writeBatch();
  private claimsScheduled = false;
  private writesScheduled = false;
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
    this.keyPrefix = conn.key('dd', '');
    this.channelPrefix = conn.key('ddc', '');
    this.lease = String(this.leaseMs);
    this.window = String(this.windowMs);
    this.token = `${conn.nodeId}.`;
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

  /**
   * Answered from memory for a key this process holds; otherwise joins the claims of this tick,
   * sent to Redis as one script call when the tick ends.
   */
  claim(key: string, fingerprint: number): Claim | Promise<Claim> {
    const fp = String(fingerprint);
    const own = this.owned.get(key);
    if (own !== undefined) return this.localClaim(own, fp);
    const batch = this.claimsDue;
    batch.command.push(this.keyPrefix + key);
    batch.keys.push(key);
    batch.fps.push(fp);
    batch.markers.push(`P${fp}|${this.token}${++this.claims}`);
    const claim = new Promise<Claim>(this.enqueueClaim);
    if (batch.keys.length >= MAX_BATCH) this.sendClaims();
    else if (!this.claimsScheduled) {
      this.claimsScheduled = true;
      setImmediate(this.flushClaims);
    }
    return claim;
  }

  /**
   * Records the outcome (copies waiting here get it at once) and joins the outcomes of this
   * tick, written to Redis as one script call when the tick ends; resolves once Redis has it,
   * or once it is held here for a retry.
   */
  complete(key: string, outcome: Outcome): void | Promise<void> {
    const own = this.owned.get(key);
    if (own === undefined || own.outcome !== undefined) return;
    let value: string;
    try {
      value = encode(own.fp, outcome);
    } catch (err) {
      return Promise.reject(err); // an error without a JSON form (a BigInt, a cycle): rejects, never throws
    }
    own.outcome = outcome;
    if (value.length > this.maxOutcomeBytes) {
      own.stored = `X${own.fp}|`;
      own.message = value;
    } else {
      own.stored = value;
    }
    own.waiters?.resolve(outcome);
    own.waiters = undefined;
    const batch = this.writesDue;
    add(batch, key, own);
    batch.done ??= new Promise<void>(this.enqueueWrite);
    const done = batch.done;
    if (batch.keys.length >= MAX_BATCH) this.sendWrites();
    else if (!this.writesScheduled) {
      this.writesScheduled = true;
      setImmediate(this.flushWrites);
    }
    return done;
  }

  async release(key: string): Promise<void> {
    const own = this.owned.get(key);
    if (own === undefined || own.outcome !== undefined) return;
    this.owned.delete(key);
    own.waiters?.resolve(undefined);
    this.stopSweepIfIdle();
    try {
      await this.conn.run((c) => RELEASE.run(c, [own.rkey], [own.marker, this.channelPrefix + key]));
    } catch {
      // Its lease expires by itself (nobody renews it now); a copy waiting elsewhere then claims it.
      this.conn.logger.warn(
        { key },
        'dedupe claim not released (Redis unavailable): it expires with its lease',
      );
    }
  }

  /**
   * Sends the claims and outcomes of this tick at once (ahead of the connection's close), stops
   * the timers and forgets the waiters (they settle with undefined). Claims still running
   * expire with their lease.
   */
  close(): void {
    this.closed = true;
    this.offReady();
    if (this.claimsDue.keys.length > 0) this.sendClaims();
    if (this.writesDue.keys.length > 0) this.sendWrites();
    this.sweepTimer?.cancel();
    this.sweepTimer = undefined;
    this.retryTimer?.cancel();
    this.retryTimer = undefined;
    for (const key of [...this.waiting.keys()]) this.settle(key, undefined);
  }

  /** The executor of each claim's promise (made once: no closure per claim). */
  private readonly enqueueClaim = (resolve: (claim: Claim) => void, reject: (err: unknown) => void): void => {
    this.claimsDue.resolves.push(resolve);
    this.claimsDue.rejects.push(reject);
  };

  private readonly enqueueWrite = (resolve: () => void): void => {
    this.writesDue.resolve = resolve;
  };

  private readonly flushClaims = (): void => {
    this.claimsScheduled = false;
    if (this.claimsDue.keys.length > 0) this.sendClaims();
  };

  private readonly flushWrites = (): void => {
    this.writesScheduled = false;
    if (this.writesDue.keys.length > 0) this.sendWrites();
  };

  /** One CLAIM call for the claims waiting; a failure of the call reaches each of them. */
  private sendClaims(): void {
    const batch = this.claimsDue;
    this.claimsDue = claimBatch();
    const { command, markers } = batch;
    command[2] = String(batch.keys.length);
    command.push(this.lease);
    for (const marker of markers) command.push(marker);
    this.conn
      .run((c) => runBatch(c, CLAIM, command))
      .then(
        (reply) => this.claimed(batch, reply),
        (err: unknown) => {
          for (const reject of batch.rejects) reject(err);
        },
      );
  }

  /** Answers each claim of a batch from its entry of the reply, in order. */
  private claimed(batch: ClaimBatch, reply: unknown): void {
    const { keys, rejects, resolves } = batch;
    if (!Array.isArray(reply) || reply.length !== keys.length) {
      this.conn.logger.warn({ reply: typeof reply }, 'Redis command failed');
      for (const reject of rejects) reject(this.conn.unavailable());
      return;
    }
    for (let i = 0; i < keys.length; i++) {
      const found: unknown = reply[i];
      if (found instanceof ErrorReply) {
        this.conn.logger.warn({ err: found.message }, 'Redis command failed');
        rejects[i]!(this.conn.unavailable());
        continue;
      }
      try {
        resolves[i]!(
          this.answer(keys[i]!, batch.fps[i]!, batch.markers[i]!, batch.command[FIRST_KEY + i]!, found),
        );
      } catch (err) {
        rejects[i]!(err);
      }
    }
  }

  /** The claim answered by Redis: null when it was taken now, else the value found on the key. */
  private answer(key: string, fp: string, marker: string, rkey: string, found: unknown): Claim {
    if (found === null) {
      this.owned.set(key, {
        fp,
        marker,
        rkey,
        waiters: undefined,
        outcome: undefined,
        stored: '',
        message: '',
      });
      this.startSweep();
      return NEW;
    }
    const value = parse(found as string);
    if (value.fp !== fp) return CONFLICT;
    if (value.kind === 'P') {
      // A claim of this process that started while this one was on its way (or earlier in its batch).
      const mine = this.owned.get(key);
      if (mine !== undefined) return this.localClaim(mine, fp);
      return { state: 'pending', outcome: this.wait(key, rkey, fp) };
    }
    return settled(value);
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

  /** One COMPLETE call for the outcomes of this tick; those Redis could not take are held for a retry. */
  private sendWrites(): void {
    const batch = this.writesDue;
    this.writesDue = writeBatch();
    void this.write(batch).then((failed) => {
      if (failed > 0) {
        this.dropOverflow();
        this.scheduleRetry();
      }
      batch.resolve?.();
    });
  }

  /**
   * Writes a batch of outcomes (one script call); each written one is forgotten here, each
   * other one held (in `unpersisted`, unless it was dropped meanwhile). Resolves with how many
   * were not written; never rejects.
   */
  private write(batch: WriteBatch): Promise<number> {
    const { command, owns } = batch;
    command[2] = String(owns.length);
    command.push(this.window, this.channelPrefix, String(this.keyPrefix.length));
    for (const own of owns) command.push(own.stored, own.message);
    return this.conn
      .run((c) => runBatch(c, COMPLETE, command))
      .then(
        (reply) => this.wrote(batch, reply),
        () => this.wrote(batch, undefined),
      );
  }

  private wrote(batch: WriteBatch, reply: unknown): number {
    const { keys, owns } = batch;
    const answers = Array.isArray(reply) && reply.length === keys.length ? reply : undefined;
    if (reply !== undefined && answers === undefined)
      this.conn.logger.warn({ reply: typeof reply }, 'Redis command failed');
    let failed = 0;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      const own = owns[i]!;
      const written: unknown = answers?.[i];
      if (typeof written === 'number') {
        if (this.owned.get(key) === own) this.owned.delete(key);
        this.unpersisted.delete(key);
        continue;
      }
      if (written instanceof ErrorReply)
        this.conn.logger.warn({ err: written.message }, 'Redis command failed');
      failed++;
      if (this.owned.get(key) === own) this.unpersisted.add(key);
    }
    this.stopSweepIfIdle();
    return failed;
  }

  /** Past `maxUnpersisted` outcomes held here, the oldest go (logged: a retransmission of one may run again). */
  private dropOverflow(): void {
    while (this.unpersisted.size > this.maxUnpersisted) {
      const oldest = this.unpersisted.values().next().value as string;
      this.unpersisted.delete(oldest);
      this.owned.delete(oldest);
      this.conn.logger.error(
        { key: oldest },
        'dedupe outcome dropped before Redis could take it: a retransmission may run again',
      );
    }
  }

  /** Persists the held outcomes, oldest first, MAX_BATCH per call; reschedules itself (with backoff) while some remain. */
  private async flush(): Promise<void> {
    this.retryTimer = undefined;
    for (;;) {
      const batch = writeBatch();
      for (const key of this.unpersisted) {
        add(batch, key, this.owned.get(key) as Owned); // held outcomes stay owned until written or dropped
        if (batch.keys.length === MAX_BATCH) break;
      }
      if (batch.keys.length === 0 || (await this.write(batch)) > 0) break;
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

  /** Renews the lease of every claim this process holds (MAX_BATCH per script call, all sent at once). */
  private async sweep(): Promise<void> {
    const running = [...this.owned];
    const calls: Promise<void>[] = [];
    for (let i = 0; i < running.length; i += MAX_BATCH)
      calls.push(this.renew(running.slice(i, i + MAX_BATCH)));
    await Promise.all(calls);
  }

  private async renew(running: [string, Owned][]): Promise<void> {
    const command = ['EVALSHA', RENEW.sha, String(running.length)];
    for (const [, own] of running) command.push(own.rkey);
    command.push(this.lease);
    for (const [, own] of running) command.push(own.marker);
    let reply: unknown;
    try {
      reply = await this.conn.run((c) => runBatch(c, RENEW, command));
    } catch {
      return; // Tried again at the next sweep or when Redis returns.
    }
    const answers: unknown[] = Array.isArray(reply) ? reply : [];
    for (let i = 0; i < running.length; i++) {
      const [key, own] = running[i]!;
      if (answers[i] === 0 && this.owned.get(key) === own && own.outcome === undefined) {
        this.conn.logger.warn({ key }, 'dedupe claim lost its lease while its handler runs');
      }
    }
  }

  /** Waits for another node's claim to settle. */
  private wait(key: string, rkey: string, fp: string): Promise<Outcome | undefined> {
    let w = this.waiting.get(key);
    if (w === undefined) {
      const channel = this.channelPrefix + key;
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

/** Adds an outcome to a batch of writes. */
function add(batch: WriteBatch, key: string, own: Owned): void {
  batch.command.push(own.rkey);
  batch.keys.push(key);
  batch.owns.push(own);
}

/** Runs a batch's command (EVALSHA), loading the script with EVAL when Redis does not know it. */
async function runBatch(client: RedisClient, script: LuaScript, command: string[]): Promise<unknown> {
  try {
    return await client.sendCommand(command);
  } catch (err) {
    if (!(err instanceof ErrorReply) || !err.message.startsWith('NOSCRIPT')) throw err;
    command[0] = 'EVAL';
    command[1] = script.source;
    return client.sendCommand(command);
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
