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
  /** `fingerprint`: a 53-bit content hash (see `fingerprint()`); a shared store may keep it as text. */
  claim(key: string, fingerprint: number): Claim | Promise<Claim>;
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

/**
 * One remembered envelope. Pending while its handler runs (then in no queue, never evicted:
 * its copies wait on it); once completed, in the expiry queue and, while it holds its outcome,
 * in the outcome queue.
 */
interface Entry {
  key: string;
  fingerprint: number;
  pending: boolean;
  /** Made on the first copy that has to wait, so the usual request allocates no promise. */
  waiters: { promise: Promise<Outcome | undefined>; resolve: (o: Outcome | undefined) => void } | undefined;
  /** Undefined while pending, and once dropped by the outcome budget. */
  outcome: Outcome | undefined;
  outcomeBytes: number;
  expires: number;
}

/** Bookkeeping bytes of a remembered id: the entry, its map slot and queue slot, and its key (UTF-16 at worst). */
const idSize = (entry: Entry): number => ENTRY_OVERHEAD + 2 * entry.key.length;

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
 * In memory, within one process. One map holds every entry; processed ones
 * are remembered for the window from completion, in completion order, so
 * expiry and budget eviction both take from the head of one queue.
 */
export class MemoryDedupeStore implements DedupeStore {
  private readonly entries = new Map<string, Entry>();
  private pendingCount = 0;
  /** Processed entries in completion order (= expiry order); `head` is the oldest live slot. */
  private queue: Entry[] = [];
  private head = 0;
  /** Entries still holding an outcome, oldest first. */
  private held: Entry[] = [];
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

  claim(key: string, fingerprint: number): Claim {
    const entry = this.entries.get(key);
    if (entry === undefined) return this.begin(key, fingerprint);
    if (entry.pending) {
      if (entry.fingerprint !== fingerprint) return CONFLICT;
      if (entry.waiters === undefined) {
        let resolve!: (o: Outcome | undefined) => void;
        const promise = new Promise<Outcome | undefined>((r) => {
          resolve = r;
        });
        entry.waiters = { promise, resolve };
      }
      return { state: 'pending', outcome: entry.waiters.promise };
    }
    if (entry.expires <= this.clock.now()) {
      this.forget(entry);
      return this.begin(key, fingerprint);
    }
    if (entry.fingerprint !== fingerprint) return CONFLICT;
    return entry.outcome === undefined ? DROPPED : { state: 'done', outcome: entry.outcome };
  }

  complete(key: string, outcome: Outcome): void {
    const entry = this.entries.get(key);
    if (entry === undefined || !entry.pending) return;
    entry.pending = false;
    this.pendingCount--;
    entry.waiters?.resolve(outcome);
    entry.waiters = undefined;
    const now = this.clock.now();
    entry.expires = now + this.windowMs;
    this.queue.push(entry);
    this.idBytes += idSize(entry);
    const size = outcomeSize(outcome);
    if (size <= this.maxOutcomeBytes) {
      entry.outcome = outcome;
      entry.outcomeBytes = size;
      this.held.push(entry);
      this.outcomeBytes += size;
      this.stats.outcomes++;
    } else {
      this.stats.outcomesDropped++;
    }
    this.evict(now);
  }

  release(key: string): void {
    const entry = this.entries.get(key);
    if (entry === undefined || !entry.pending) return;
    this.entries.delete(key);
    this.pendingCount--;
    entry.waiters?.resolve(undefined);
  }

  /** Refreshes and returns the counters. */
  snapshot(): DedupeStats {
    this.stats.ids = this.entries.size - this.pendingCount;
    this.stats.pending = this.pendingCount;
    return { ...this.stats };
  }

  private begin(key: string, fingerprint: number): Claim {
    this.entries.set(key, {
      key,
      fingerprint,
      pending: true,
      waiters: undefined,
      outcome: undefined,
      outcomeBytes: 0,
      expires: Number.POSITIVE_INFINITY,
    });
    this.pendingCount++;
    return NEW;
  }

  /** Takes a completed entry out of the map (its queue slots go when they reach the head). */
  private forget(entry: Entry): void {
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    this.idBytes -= idSize(entry);
    entry.expires = Number.NEGATIVE_INFINITY; // marks it gone for the queues
    this.dropOutcome(entry);
  }

  private dropOutcome(entry: Entry): void {
    if (entry.outcome === undefined) return;
    entry.outcome = undefined;
    this.outcomeBytes -= entry.outcomeBytes;
    this.stats.outcomes--;
  }

  private evict(now: number): void {
    const queue = this.queue;
    let head = this.head;
    let early = 0;
    while (head < queue.length) {
      const entry = queue[head]!;
      const gone = entry.expires === Number.NEGATIVE_INFINITY; // forgotten already (expired on claim)
      const expired = entry.expires <= now;
      if (!expired && this.idBytes <= this.maxIdBytes) break;
      if (!gone) {
        if (!expired) early++;
        this.forget(entry);
      }
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
