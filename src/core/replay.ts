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

  private lastSecond = '';
  private lastSecondMs = 0;

  /**
   * Epoch ms of an RFC 3339 timestamp. The usual UTC form (`…:SS[.fff…]Z`) parses its second once
   * per second and adds the milliseconds by hand; anything else goes to Date.parse.
   */
  private parse(timestamp: string): number {
    const end = timestamp.length - 1;
    if (end >= 19 && timestamp.charCodeAt(end) === 90 /* Z */) {
      let ms = 0;
      if (end > 19) {
        if (timestamp.charCodeAt(19) !== 46 /* . */ || end === 20) return Date.parse(timestamp);
        for (let i = 20, scale = 100; i < end; i++, scale /= 10) {
          const d = timestamp.charCodeAt(i) - 48;
          if (d < 0 || d > 9) return Date.parse(timestamp);
          if (scale >= 1) ms += d * scale;
        }
      }
      const second = timestamp.slice(0, 19);
      if (second !== this.lastSecond) {
        const t = Date.parse(`${second}Z`);
        if (Number.isNaN(t)) return t;
        this.lastSecond = second;
        this.lastSecondMs = t;
      }
      return this.lastSecondMs + ms;
    }
    return Date.parse(timestamp);
  }

  /**
   * Returns the error to send back, or undefined when the envelope may pass. Nonces are
   * remembered per caller (principal id and sender, §10), so one caller cannot burn another's.
   */
  check(
    timestamp: string,
    extensions: Record<string, unknown> | null | undefined,
    callerId = '',
    sender = '',
  ): ASAPError | undefined {
    const now = this.clock.now();
    const t = this.parse(timestamp);
    if (Number.isNaN(t))
      return new ASAPError(ErrorCode.InvalidTimestamp, 'Unreadable timestamp', { timestamp });
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
    const key = `${callerId}\u0000${sender}\u0000${nonce}`;
    if (this.nonces.get(key) !== undefined) {
      return new ASAPError(ErrorCode.InvalidNonce, 'Nonce already used', { nonce });
    }
    this.nonces.set(key, true);
    return undefined;
  }
}
