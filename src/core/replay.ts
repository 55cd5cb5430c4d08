import { ASAPError, ErrorCode } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';
import { MemoryNonceStore, type NonceStore } from './nonce-store.js';

export interface ReplayOptions<S extends NonceStore = NonceStore> {
  /** Oldest accepted timestamp (default 5 min). */
  maxAgeMs?: number;
  /** Furthest accepted timestamp into the future (default 30 s). */
  maxFutureMs?: number;
  /** How long a nonce is remembered (default 10 min). */
  nonceTtlMs?: number;
  /** Most nonces remembered by the default store (default 100,000); ignored when `nonces` is given. */
  maxNonces?: number;
  /** Where nonces are remembered (default: a {@link MemoryNonceStore} of `maxNonces`). */
  nonces?: S;
  clock?: Clock;
}

/** What a replay check says: the error to send back, or undefined when the envelope may pass. */
export type ReplayVerdict = ASAPError | undefined;

/**
 * The result of {@link ReplayGuard.check} for a store `S`: always synchronous with a synchronous
 * store; with one that may answer with a promise, a promise whenever the store was asked.
 */
export type ReplayCheck<S extends NonceStore> =
  ReturnType<S['add']> extends boolean ? ReplayVerdict : ReplayVerdict | Promise<ReplayVerdict>;

/** Replay protection of asap-wire.md §8: timestamp window and nonce memory. */
export class ReplayGuard<S extends NonceStore = MemoryNonceStore> {
  private readonly nonces: S;
  private readonly nonceTtl: number;
  private readonly maxAge: number;
  private readonly maxFuture: number;
  private readonly clock: Clock;

  constructor(opts: ReplayOptions<S> = {}) {
    this.maxAge = opts.maxAgeMs ?? 300_000;
    this.maxFuture = opts.maxFutureMs ?? 30_000;
    this.clock = opts.clock ?? systemClock;
    this.nonceTtl = opts.nonceTtlMs ?? 600_000;
    // Without `nonces`, S is its default, MemoryNonceStore (unless a caller names another S and no store).
    this.nonces =
      opts.nonces ??
      (new MemoryNonceStore({ maxNonces: opts.maxNonces, clock: this.clock }) as NonceStore as S);
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
   * Answers synchronously unless the nonce store answered with a promise.
   */
  check(
    timestamp: string,
    extensions: Record<string, unknown> | null | undefined,
    callerId?: string,
    sender?: string,
  ): ReplayCheck<S>;
  check(
    timestamp: string,
    extensions: Record<string, unknown> | null | undefined,
    callerId = '',
    sender = '',
  ): ReplayVerdict | Promise<ReplayVerdict> {
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
    const added = this.nonces.add(`${callerId}\u0000${sender}\u0000${nonce}`, this.nonceTtl);
    if (typeof added === 'boolean') return added ? undefined : nonceUsed(nonce);
    return Promise.resolve(added).then((ok) => (ok ? undefined : nonceUsed(nonce)));
  }
}

function nonceUsed(nonce: string): ASAPError {
  return new ASAPError(ErrorCode.InvalidNonce, 'Nonce already used', { nonce });
}
