import type { Clock } from '../core/clock.js';
import { type DedupeStore, MemoryDedupeStore } from '../core/dedupe.js';
import type { Instrumentation } from '../core/instrumentation.js';
import type { Logger } from '../core/logger.js';
import { MemoryNonceStore, type NonceStore } from '../core/nonce-store.js';
import { MemorySessionStore, type SessionStore } from '../core/session-store.js';
import type { LocalPushAdapter, PushAdapter } from './push-adapter.js';

/**
 * Everything a server remembers beyond one connection, in one place: dedupe
 * outcomes, nonces, sessions and their missed pushes, push routing, and named
 * counters. The in-memory store is the default (one process); a shared one
 * (Redis) lets several processes act as one agent and a restarted one remember.
 */
export interface ServerStore {
  readonly dedupe: DedupeStore;
  readonly nonces: NonceStore;
  readonly sessions: SessionStore;
  /** Where pushes to an agent URN go, given this process's own connections. */
  pushAdapter(local: LocalPushAdapter): PushAdapter;
  /** Adds one to a named counter and returns the new value. */
  increment(key: string): number | Promise<number>;
  /**
   * False while the backing service is unreachable: health answers 503, and requests that
   * need the store are refused with -32040 and `retry_after_ms` until it returns.
   */
  readonly available: boolean;
  /** Where a shared store reports each operation (`storeOperation`); the server gives its hooks. */
  instrument?(hooks: Instrumentation | undefined): void;
  /** Releases connections and timers (the server calls it on close when it owns the store). */
  close(): Promise<void>;
}

export interface MemoryStoreOptions {
  clock?: Clock;
  logger?: Logger;
  /** How long a session outlives its connection (default 2 min, asap-wire.md §12). */
  disconnectWindowMs?: number;
}

/** The embedded default: every part in this process's memory. */
export function memoryStore(opts: MemoryStoreOptions = {}): ServerStore {
  const counters = new Map<string, number>();
  return {
    dedupe: new MemoryDedupeStore({ clock: opts.clock, logger: opts.logger }),
    nonces: new MemoryNonceStore({ clock: opts.clock }),
    sessions: new MemorySessionStore({ clock: opts.clock, disconnectWindowMs: opts.disconnectWindowMs }),
    pushAdapter: (local) => local,
    increment: (key) => {
      const c = (counters.get(key) ?? 0) + 1;
      counters.set(key, c);
      return c;
    },
    available: true,
    close: () => Promise.resolve(),
  };
}
