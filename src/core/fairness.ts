/** Runs `fn` after the event loop has had a turn (I/O, timers): setImmediate in Node, a 0 ms timer in browsers. */
const nextTurn: (fn: () => void) => void =
  typeof setImmediate === 'function' ? (fn) => setImmediate(fn) : (fn) => setTimeout(fn, 0);

/**
 * @internal
 * Cooperative fairness for loops that would otherwise run in microtasks only
 * (a stream whose chunks are ready at once, a push loop whose writes never
 * block): they ask `pause()` between steps, and once the current turn has run
 * for `sliceMs` every such loop waits for the next turn of the event loop, so
 * sockets, timers (deadlines) and other peers get served in between.
 *
 * One budget is shared by every loop of a dispatcher: a hundred streams still
 * hold the loop for one slice per turn, not a hundred.
 */
export class TurnBudget {
  private turnStart = Number.NEGATIVE_INFINITY;
  private next: Promise<void> | undefined;

  constructor(private readonly sliceMs = 5) {}

  /** Undefined while the current slice has time left; otherwise a promise for the next turn. */
  pause(): Promise<void> | undefined {
    if (this.next !== undefined) return this.next;
    if (performance.now() - this.turnStart < this.sliceMs) return undefined;
    this.next = new Promise((resolve) =>
      nextTurn(() => {
        this.next = undefined;
        this.turnStart = performance.now();
        resolve();
      }),
    );
    return this.next;
  }
}
