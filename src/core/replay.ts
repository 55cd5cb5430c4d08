import { ASAPError, ErrorCode } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';
import { ExpiringMap } from './expiring-map.js';

export interface ReplayOptions {
  /** Oldest accepted timestamp (default 5 min). */
  maxAgeMs?: number;
  /** Furthest accepted timestamp into the future (default 30 s). */
  maxFutureMs?: number;
  /** How long a nonce is remembered (default 10 min). */
  nonceTtlMs?: number;
  /** Most nonces remembered (default 100,000). */
  maxNonces?: number;
  clock?: Clock;
}

/** Replay protection of asap-wire.md §8: timestamp window and nonce memory. */
export class ReplayGuard {
  private readonly nonces: ExpiringMap<true>;
  private readonly maxAge: number;
  private readonly maxFuture: number;
  private readonly clock: Clock;

  constructor(opts: ReplayOptions = {}) {
    this.maxAge = opts.maxAgeMs ?? 300_000;
    this.maxFuture = opts.maxFutureMs ?? 30_000;
    this.clock = opts.clock ?? systemClock;
    this.nonces = new ExpiringMap(opts.nonceTtlMs ?? 600_000, opts.maxNonces ?? 100_000, this.clock);
  }

  /** Returns the error to send back, or undefined when the envelope may pass. */
  check(timestamp: string, extensions: Record<string, unknown> | null | undefined): ASAPError | undefined {
    const now = this.clock.now();
    const t = Date.parse(timestamp);
    if (now - t > this.maxAge) {
      return new ASAPError(ErrorCode.InvalidTimestamp, 'Envelope timestamp is too old', { timestamp });
    }
    if (t - now > this.maxFuture) {
      return new ASAPError(ErrorCode.InvalidTimestamp, 'Envelope timestamp is in the future', { timestamp });
    }
    const nonce = extensions?.nonce;
    if (nonce === undefined || nonce === null) return undefined;
    if (typeof nonce !== 'string' || nonce === '') {
      return new ASAPError(ErrorCode.InvalidNonce, 'extensions.nonce must be a non-empty string');
    }
    if (this.nonces.get(nonce) !== undefined) {
      return new ASAPError(ErrorCode.InvalidNonce, 'Nonce already used', { nonce });
    }
    this.nonces.set(nonce, true);
    return undefined;
  }
}
