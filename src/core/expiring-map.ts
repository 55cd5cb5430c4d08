import { type Clock, systemClock } from './clock.js';

interface Slot<V> {
  key: string;
  value: V;
  expires: number;
}

/**
 * @internal
 * A map whose entries expire after one fixed TTL, capped in size, oldest out
 * first. With one TTL, insertion order is expiry order, so a queue of slots
 * makes eviction O(1). (Walking a Map from its start instead is not: V8 keeps
 * deleted entries as holes until it rehashes, and every walk steps over them.)
 */
export class ExpiringMap<V> {
  private readonly map = new Map<string, Slot<V>>();
  private queue: Slot<V>[] = [];
  private head = 0;

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly clock: Clock = systemClock,
  ) {}

  get size(): number {
    return this.map.size;
  }

  get(key: string): V | undefined {
    const slot = this.map.get(key);
    if (slot === undefined) return undefined;
    if (slot.expires <= this.clock.now()) {
      this.map.delete(key);
      return undefined;
    }
    return slot.value;
  }

  /** Inserts, or replaces the value of a live entry keeping its age and place. */
  set(key: string, value: V): void {
    const now = this.clock.now();
    const existing = this.map.get(key);
    if (existing !== undefined && existing.expires > now) {
      existing.value = value;
      return;
    }
    const slot: Slot<V> = { key, value, expires: now + this.ttlMs };
    this.map.set(key, slot);
    this.queue.push(slot);
    this.evict(now);
  }

  /**
   * Inserts `key` unless a live entry holds it: true when inserted, false when it was already
   * there (its value and age untouched). One lookup, for "seen before?" checks on a hot path.
   * `ttlMs` overrides the map's TTL for this entry; the size cap still drops the oldest inserted
   * first, and an entry outliving a shorter-lived one behind it only delays that one's release,
   * never its expiry (`get` and `add` check each entry's own deadline).
   */
  add(key: string, value: V, ttlMs: number = this.ttlMs): boolean {
    const now = this.clock.now();
    const existing = this.map.get(key);
    if (existing !== undefined && existing.expires > now) return false;
    const slot: Slot<V> = { key, value, expires: now + ttlMs };
    this.map.set(key, slot);
    this.queue.push(slot);
    this.evict(now);
    return true;
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  private evict(now: number): void {
    const queue = this.queue;
    let head = this.head;
    while (head < queue.length) {
      const slot = queue[head]!;
      // Usual case first, without a lookup: under the cap and the oldest slot not yet due.
      // (A deleted key's slot left at the head is harmless: it goes when it comes due.)
      if (this.map.size <= this.maxEntries && slot.expires > now) break;
      if (this.map.get(slot.key) === slot) this.map.delete(slot.key);
      head++;
    }
    if (head > 1024 && head * 2 > queue.length) {
      this.queue = queue.slice(head);
      head = 0;
    }
    this.head = head;
  }
}
