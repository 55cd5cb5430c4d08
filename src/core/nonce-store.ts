import { type Clock, systemClock } from './clock.js';
import { ExpiringMap } from './expiring-map.js';

/**
 * Where replay protection (asap-wire.md §8) remembers the nonces it saw. The
 * key already names the caller (§10: principal id, sender, nonce), so a store
 * only answers "first time within `ttlMs`?". The check and the insert are one
 * atomic step, so that of two copies racing on several nodes exactly one
 * passes: a shared store does it with `SET key 1 NX PX ttlMs` (true when set).
 * A store may answer synchronously (the in-memory one: no promise on the hot
 * path) or with a promise (a shared one); a rejected promise refuses the
 * envelope with a generic `Internal error`.
 */
export interface NonceStore {
  /** Records a nonce for `ttlMs`; false when it was already recorded (a replay). */
  add(key: string, ttlMs: number): boolean | Promise<boolean>;
}

export interface MemoryNonceStoreOptions {
  /** Most nonces remembered (default 100,000); past it the oldest are forgotten first. */
  maxNonces?: number;
  clock?: Clock;
}

/** The in-process {@link NonceStore}: bounded, oldest out first, each nonce expiring after its TTL. */
export class MemoryNonceStore implements NonceStore {
  private readonly nonces: ExpiringMap<true>;

  constructor(opts: MemoryNonceStoreOptions = {}) {
    // The map's own TTL is never used: every add names its TTL.
    this.nonces = new ExpiringMap(0, opts.maxNonces ?? 100_000, opts.clock ?? systemClock);
  }

  /** Nonces remembered now (expired ones may still count until they are swept). */
  get size(): number {
    return this.nonces.size;
  }

  add(key: string, ttlMs: number): boolean {
    return this.nonces.add(key, true, ttlMs);
  }
}
