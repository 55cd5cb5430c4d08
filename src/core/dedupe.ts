import type { JsonRpcErrorObject } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';
import { type Logger, silentLogger } from './logger.js';

/** What processing an envelope produced, kept so a retransmission gets the same answer. */
export type Outcome =
  /** The reply envelope, as JSON text: encoded once, sent again as is, cheap to keep. */
  | { kind: 'result'; envelope: string }
  | { kind: 'error'; error: JsonRpcErrorObject }
  /** The envelope was a notification or produced nothing to send back. */
  | { kind: 'none' };

/**
 * The answer to a claim on (caller identity, envelope id), asap-wire.md §10:
 * - `new`: first sight; the claimant runs it, then calls `complete` (or `release` if it refused it);
 * - `pending`: another copy is running; `outcome` settles with its outcome, or with undefined
 *   when that copy was released unprocessed (claim again);
 * - `done`: processed; `outcome` is what it produced;
 * - `dropped`: processed, but a memory budget dropped its outcome before the window ended;
 * - `conflict`: the key was claimed by an envelope with other content (another fingerprint).
 */
export type Claim =
  | { state: 'new' }
  | { state: 'pending'; outcome: Promise<Outcome | undefined> }
  | { state: 'done'; outcome: Outcome }
  | { state: 'dropped' }
  | { state: 'conflict' };

/**
 * Where the dispatcher remembers the envelopes it accepted, per caller. The
 * claim is atomic: of several copies of one envelope (on one node or many),
 * exactly one gets `new`. Results may be promises, so a shared store fits.
 */
export interface DedupeStore {
  claim(key: string, fingerprint: string): Claim | Promise<Claim>;
  /** Records the outcome of a `new` claim; copies waiting on it get it. */
  complete(key: string, outcome: Outcome): void | Promise<void>;
  /** Gives a `new` claim back unprocessed (the envelope was refused before its handler ran). */
  release(key: string): void | Promise<void>;
}

/** Counters of the memory store, for logs and metrics. */
export interface DedupeStats {
  /** Envelopes remembered now (processed, within the window). */
  ids: number;
  /** Of those, how many still hold their outcome. */
  outcomes: number;
  /** Envelopes being processed now. */
  pending: number;
  /** Ids forgotten before their window ended because the id budget was full. */
  idsEvicted: number;
  /** Outcomes dropped before their window ended (budget full, or one outcome over `maxOutcomeBytes`). */
  outcomesDropped: number;
}

export interface MemoryDedupeOptions {
  /** How long a processed envelope is remembered (default 10 min). Time-based: never by count. */
  windowMs?: number;
  /**
   * Memory budget of the remembered ids and fingerprints (default 64 MiB, about 300,000 ids).
   * An id forgotten early is logged and counted: a repeat of it would run again.
   */
  maxIdBytes?: number;
  /** Memory budget of the kept outcomes (default 64 MiB); past it the oldest outcomes are dropped. */
  maxOutcomesBytes?: number;
  /**
   * Largest single outcome kept (default 64 KiB): one caller's huge replies must not flush
   * everyone else's outcomes. A repeat of a bigger one is answered "outcome no longer held".
   */
  maxOutcomeBytes?: number;
  clock?: Clock;
  logger?: Logger;
}

/** Rough bytes of bookkeeping per remembered id (map entry, record, queue slot), beyond its strings. */
const ENTRY_OVERHEAD = 160;
/** Early evictions are logged at most this often (they come in floods). */
const LOG_EVERY_MS = 10_000;

interface Done {
  key: string;
  fingerprint: string;
  /** Undefined once dropped by the outcome budget. */
  outcome: Outcome | undefined;
  outcomeBytes: number;
  expires: number;
}

interface Pending {
  fingerprint: string;
  /** Made on the first duplicate that has to wait, so the usual request allocates no promise. */
  waiters?: { promise: Promise<Outcome | undefined>; resolve: (o: Outcome | undefined) => void };
}

const NEW: Claim = { state: 'new' };
const DROPPED: Claim = { state: 'dropped' };
const CONFLICT: Claim = { state: 'conflict' };

function outcomeSize(outcome: Outcome): number {
  switch (outcome.kind) {
    case 'result':
      return outcome.envelope.length;
    case 'error':
      return outcome.error.message.length + (outcome.error.data === undefined ? 0 : 256);
    case 'none':
      return 0;
  }
}

/**
 * In memory, within one process. Envelopes being processed sit in a small
 * map of their own (never evicted: their copies wait on them); processed
 * ones are remembered for the window from completion, in completion order,
 * so expiry and budget eviction both take from the head of one queue.
 */
export class MemoryDedupeStore implements DedupeStore {
  private readonly pending = new Map<string, Pending>();
  private readonly done = new Map<string, Done>();
  /** Processed records in completion order (= expiry order); `head` is the oldest live slot. */
  private queue: Done[] = [];
  private head = 0;
  /** Records still holding an outcome, oldest first. */
  private held: Done[] = [];
  private heldHead = 0;
  private idBytes = 0;
  private outcomeBytes = 0;
  private lastLog = Number.NEGATIVE_INFINITY;
  private readonly windowMs: number;
  private readonly maxIdBytes: number;
  private readonly maxOutcomesBytes: number;
  private readonly maxOutcomeBytes: number;
  private readonly clock: Clock;
  private readonly logger: Logger;
  readonly stats: DedupeStats = { ids: 0, outcomes: 0, pending: 0, idsEvicted: 0, outcomesDropped: 0 };

  constructor(opts: MemoryDedupeOptions = {}) {
    this.windowMs = opts.windowMs ?? 600_000;
    this.maxIdBytes = opts.maxIdBytes ?? 64 * 1024 * 1024;
    this.maxOutcomesBytes = opts.maxOutcomesBytes ?? 64 * 1024 * 1024;
    this.maxOutcomeBytes = opts.maxOutcomeBytes ?? 64 * 1024;
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? silentLogger;
  }

  claim(key: string, fingerprint: string): Claim {
    const done = this.done.get(key);
    if (done !== undefined) {
      if (done.expires > this.clock.now()) {
        if (done.fingerprint !== fingerprint) return CONFLICT;
        return done.outcome === undefined ? DROPPED : { state: 'done', outcome: done.outcome };
      }
      this.forget(done);
    }
    const pending = this.pending.get(key);
    if (pending !== undefined) {
      if (pending.fingerprint !== fingerprint) return CONFLICT;
      if (pending.waiters === undefined) {
        let resolve!: (o: Outcome | undefined) => void;
        const promise = new Promise<Outcome | undefined>((r) => {
          resolve = r;
        });
        pending.waiters = { promise, resolve };
      }
      return { state: 'pending', outcome: pending.waiters.promise };
    }
    this.pending.set(key, { fingerprint });
    return NEW;
  }

  complete(key: string, outcome: Outcome): void {
    const pending = this.pending.get(key);
    if (pending === undefined) return;
    this.pending.delete(key);
    pending.waiters?.resolve(outcome);
    const now = this.clock.now();
    const size = outcomeSize(outcome);
    const keep = size <= this.maxOutcomeBytes;
    const rec: Done = {
      key,
      fingerprint: pending.fingerprint,
      outcome: keep ? outcome : undefined,
      outcomeBytes: keep ? size : 0,
      expires: now + this.windowMs,
    };
    if (!keep) this.stats.outcomesDropped++;
    this.done.set(key, rec);
    this.queue.push(rec);
    this.idBytes += this.idSize(rec);
    if (keep) {
      this.held.push(rec);
      this.outcomeBytes += size;
      this.stats.outcomes++;
    }
    this.evict(now);
  }

  release(key: string): void {
    const pending = this.pending.get(key);
    if (pending === undefined) return;
    this.pending.delete(key);
    pending.waiters?.resolve(undefined);
  }

  /** Refreshes and returns the counters. */
  snapshot(): DedupeStats {
    this.stats.ids = this.done.size;
    this.stats.pending = this.pending.size;
    return { ...this.stats };
  }

  private idSize(rec: Done): number {
    return ENTRY_OVERHEAD + 2 * (rec.key.length + rec.fingerprint.length);
  }

  private forget(rec: Done): void {
    if (this.done.get(rec.key) === rec) this.done.delete(rec.key);
    this.idBytes -= this.idSize(rec);
    this.dropOutcome(rec);
  }

  private dropOutcome(rec: Done): void {
    if (rec.outcome === undefined) return;
    rec.outcome = undefined;
    this.outcomeBytes -= rec.outcomeBytes;
    this.stats.outcomes--;
  }

  private evict(now: number): void {
    const queue = this.queue;
    let head = this.head;
    let early = 0;
    while (head < queue.length) {
      const rec = queue[head]!;
      const expired = rec.expires <= now;
      if (!expired && this.idBytes <= this.maxIdBytes) break;
      if (!expired && this.done.get(rec.key) === rec) early++;
      // A record already forgotten (expired on claim) has had its bytes taken off.
      if (this.done.get(rec.key) === rec) this.forget(rec);
      head++;
    }
    this.head = head;
    if (head > 1024 && head * 2 > queue.length) {
      this.queue = queue.slice(head);
      this.head = 0;
    }
    let dropped = 0;
    const held = this.held;
    let hh = this.heldHead;
    while (
      hh < held.length &&
      (this.outcomeBytes > this.maxOutcomesBytes || held[hh]!.outcome === undefined)
    ) {
      const rec = held[hh]!;
      if (rec.outcome !== undefined) {
        this.dropOutcome(rec);
        dropped++;
      }
      hh++;
    }
    this.heldHead = hh;
    if (hh > 1024 && hh * 2 > held.length) {
      this.held = held.slice(hh);
      this.heldHead = 0;
    }
    if (early === 0 && dropped === 0) return;
    this.stats.idsEvicted += early;
    this.stats.outcomesDropped += dropped;
    if (now - this.lastLog >= LOG_EVERY_MS) {
      this.lastLog = now;
      this.logger.warn(
        { ids_evicted: this.stats.idsEvicted, outcomes_dropped: this.stats.outcomesDropped },
        'dedupe budget full: entries leave before their window ends',
      );
    }
  }
}
