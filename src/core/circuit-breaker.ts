import { type Clock, systemClock } from './clock.js';

export type CircuitState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the circuit (default 5). */
  failureThreshold?: number;
  /** Time open before one trial is let through (default 60 s). */
  resetTimeoutMs?: number;
  clock?: Clock;
  onStateChange?: (state: CircuitState, previous: CircuitState) => void;
}

/**
 * closed → open after N consecutive failures → half-open after the cool-down
 * (one trial call allowed) → closed on success, open again on failure.
 */
export class CircuitBreaker {
  private _state: CircuitState = 'closed';
  private failures = 0;
  private openedAt = 0;
  private trialInFlight = false;
  private readonly threshold: number;
  private readonly resetMs: number;
  private readonly clock: Clock;

  constructor(private readonly opts: CircuitBreakerOptions = {}) {
    this.threshold = opts.failureThreshold ?? 5;
    this.resetMs = opts.resetTimeoutMs ?? 60_000;
    this.clock = opts.clock ?? systemClock;
  }

  get state(): CircuitState {
    if (this._state === 'open' && this.clock.now() - this.openedAt >= this.resetMs)
      this.transition('half-open');
    return this._state;
  }

  get consecutiveFailures(): number {
    return this.failures;
  }

  /** True when a call may go ahead now; in half-open only one trial at a time. */
  allow(): boolean {
    const state = this.state;
    if (state === 'closed') return true;
    if (state === 'open' || this.trialInFlight) return false;
    this.trialInFlight = true;
    return true;
  }

  recordSuccess(): void {
    this.failures = 0;
    this.trialInFlight = false;
    if (this._state !== 'closed') this.transition('closed');
  }

  recordFailure(): void {
    this.failures++;
    this.trialInFlight = false;
    if (this._state === 'half-open' || (this._state === 'closed' && this.failures >= this.threshold)) {
      this.openedAt = this.clock.now();
      this.transition('open');
    }
  }

  private transition(next: CircuitState): void {
    const prev = this._state;
    this._state = next;
    this.opts.onStateChange?.(next, prev);
  }
}
