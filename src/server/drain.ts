import type { Timers } from '../core/timers.js';

/**
 * Graceful drain (asap-wire.md §9): counts the work in flight on every
 * binding, says when the server is draining, and waits, up to a deadline,
 * for the count to reach zero.
 */
export class Drain {
  private active = 0;
  private waiters: (() => void)[] = [];
  private _draining = false;

  constructor(
    /** How long in-flight work may finish once draining; also the `retry_after_ms` refusals carry. */
    readonly timeoutMs: number,
    private readonly timers: Timers,
  ) {}

  get draining(): boolean {
    return this._draining;
  }

  /** Work in flight now. */
  get inFlight(): number {
    return this.active;
  }

  /** Counts one unit of work until the returned function is called (idempotent). */
  begin(): () => void {
    this.active++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.active--;
      if (this.active === 0) {
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w();
      }
    };
  }

  /** Starts draining and resolves once nothing is in flight or the deadline passed. */
  start(): Promise<void> {
    this._draining = true;
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = this.timers.setTimeout(resolve, this.timeoutMs, true);
      this.waiters.push(() => {
        timer.cancel();
        resolve();
      });
    });
  }
}
