/**
 * Batching the writes of one tick into one syscall, for both ends of a WebSocket in Node: the TCP
 * socket under it is corked at the first write of a tick and uncorked at its end (the caller
 * schedules that), and flushed every FLUSH_EVERY writes in between, so a pipelining peer starts on
 * the first part of a long batch while the rest is made instead of waiting for the whole tick.
 */

/** The part of a TCP socket that batching writes needs (`net.Socket` has it). */
export interface Corkable {
  cork(): void;
  uncork(): void;
}

/** Corked writes flushed together at most. */
export const FLUSH_EVERY = 8;

/**
 * Call before each write to `wire`, with the number of writes held since this tick's first (0: none
 * yet). Returns true when this write corked the socket: the caller then uncorks it at the end of
 * the tick (and resets its count).
 */
export function holdWrite(wire: Corkable, held: number): boolean {
  if (held === 0) {
    wire.cork();
    return true;
  }
  if (held % FLUSH_EVERY === 0) {
    wire.uncork();
    wire.cork();
  }
  return false;
}
