/** Exponential backoff with jitter: base·2^attempt capped at `max`, then scaled by a random factor in [1-jitter, 1]. */
export interface BackoffOptions {
  baseMs?: number;
  maxMs?: number;
  /** Fraction of the delay that is randomised (0 = none, default 0.2). */
  jitter?: number;
  random?: () => number;
}

export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const base = opts.baseMs ?? 1000;
  const max = opts.maxMs ?? 30_000;
  const jitter = opts.jitter ?? 0.2;
  const random = opts.random ?? Math.random;
  const raw = Math.min(max, base * 2 ** Math.max(0, attempt));
  return Math.round(raw * (1 - jitter * random()));
}
