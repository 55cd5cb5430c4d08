import type { Envelope } from '../protocol/envelope.js';
import type { JsonRpcErrorObject } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';

/** What processing an envelope produced, kept so a retransmission gets the same answer. */
export type Outcome =
  | { kind: 'result'; envelope: Envelope<object> | null }
  | { kind: 'error'; error: JsonRpcErrorObject }
  /** The envelope was a notification or produced nothing to send back. */
  | { kind: 'none' };

/** A record under an envelope id: settled with its outcome, or still running. */
export type DedupeRecord = { outcome: Outcome } | { pending: Promise<Outcome> };

/**
 * Where the dispatcher remembers envelope ids it has accepted. In-memory by
 * default; the interface admits a shared store (results may be promises) so
 * several server instances can deduplicate together.
 */
export interface DedupeStore {
  get(id: string): DedupeRecord | undefined | Promise<DedupeRecord | undefined>;
  set(id: string, record: DedupeRecord): void | Promise<void>;
  delete(id: string): void | Promise<void>;
  readonly size?: number;
}

export interface MemoryDedupeOptions {
  /** How long an id is remembered (default 10 min). */
  ttlMs?: number;
  /** Most ids kept; the oldest go first (default 10,000). */
  maxEntries?: number;
  clock?: Clock;
}

interface Slot {
  record: DedupeRecord;
  expires: number;
}

/**
 * LRU + TTL over a Map (insertion order = age, since every entry gets the same
 * TTL). Expired entries are dropped lazily on access and from the old end on insert.
 */
export class MemoryDedupeStore implements DedupeStore {
  private readonly map = new Map<string, Slot>();
  private readonly ttl: number;
  private readonly max: number;
  private readonly clock: Clock;

  constructor(opts: MemoryDedupeOptions = {}) {
    this.ttl = opts.ttlMs ?? 600_000;
    this.max = opts.maxEntries ?? 10_000;
    this.clock = opts.clock ?? systemClock;
  }

  get size(): number {
    return this.map.size;
  }

  get(id: string): DedupeRecord | undefined {
    const slot = this.map.get(id);
    if (slot === undefined) return undefined;
    if (slot.expires <= this.clock.now()) {
      this.map.delete(id);
      return undefined;
    }
    return slot.record;
  }

  set(id: string, record: DedupeRecord): void {
    const now = this.clock.now();
    const existing = this.map.get(id);
    if (existing !== undefined) {
      // Settling a pending record keeps its place and age.
      existing.record = record;
      return;
    }
    this.map.set(id, { record, expires: now + this.ttl });
    this.evict(now);
  }

  delete(id: string): void {
    this.map.delete(id);
  }

  private evict(now: number): void {
    for (const [key, slot] of this.map) {
      if (this.map.size <= this.max && slot.expires > now) break;
      this.map.delete(key);
    }
  }
}
