import type { JsonRpcErrorObject } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';
import { ExpiringMap } from './expiring-map.js';

/** What processing an envelope produced, kept so a retransmission gets the same answer. */
export type Outcome =
  /** The reply envelope, as JSON text: encoded once, sent again as is, cheap to keep. */
  | { kind: 'result'; envelope: string }
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

/**
 * In memory, LRU by age plus TTL (every entry gets the same TTL, so the
 * oldest is also the first to expire).
 */
export class MemoryDedupeStore implements DedupeStore {
  private readonly entries: ExpiringMap<DedupeRecord>;

  constructor(opts: MemoryDedupeOptions = {}) {
    this.entries = new ExpiringMap(
      opts.ttlMs ?? 600_000,
      opts.maxEntries ?? 10_000,
      opts.clock ?? systemClock,
    );
  }

  get size(): number {
    return this.entries.size;
  }

  get(id: string): DedupeRecord | undefined {
    return this.entries.get(id);
  }

  /** Settling a pending record keeps its place and age. */
  set(id: string, record: DedupeRecord): void {
    this.entries.set(id, record);
  }

  delete(id: string): void {
    this.entries.delete(id);
  }
}
