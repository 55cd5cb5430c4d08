import { type ASAPError, RequestTimeoutError } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';

export interface AckOptions {
  /** How long to wait for an ack before retransmitting (default 30 s). */
  timeoutMs?: number;
  /** Retransmissions before giving up (default 3). */
  maxRetries?: number;
}

interface Entry {
  resend: () => void;
  fail: (err: ASAPError) => void;
  due: number;
  retries: number;
}

/**
 * The sender side of asap-wire.md §6: every envelope sent with
 * `requires_ack` is kept until acknowledged; on each `check()` the overdue
 * ones are retransmitted (same envelope, same id) with exponential backoff,
 * and given up after `maxRetries`. The owner calls `check()` from its single
 * timer, so no timer per message exists.
 */
export class AckTracker {
  private readonly entries = new Map<string, Entry>();
  private readonly timeoutMs: number;
  private readonly maxRetries: number;

  constructor(
    opts: AckOptions = {},
    private readonly clock: Clock = systemClock,
  ) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.maxRetries = opts.maxRetries ?? 3;
  }

  get size(): number {
    return this.entries.size;
  }

  has(envelopeId: string): boolean {
    return this.entries.has(envelopeId);
  }

  track(envelopeId: string, resend: () => void, fail: (err: ASAPError) => void): void {
    this.entries.set(envelopeId, { resend, fail, due: this.clock.now() + this.timeoutMs, retries: 0 });
  }

  /** Marks an envelope acknowledged; false when it was not waiting. */
  ack(envelopeId: string): boolean {
    return this.entries.delete(envelopeId);
  }

  /** Restarts the wait of every entry (after a reconnect, when everything was just re-sent). */
  restart(): void {
    const due = this.clock.now() + this.timeoutMs;
    for (const e of this.entries.values()) e.due = due;
  }

  /** Retransmits what is overdue; fails what has used up its retries. Returns how many were given up. */
  check(canSend: boolean): number {
    const now = this.clock.now();
    let failed = 0;
    for (const [id, e] of this.entries) {
      if (e.due > now) continue;
      if (e.retries >= this.maxRetries) {
        this.entries.delete(id);
        failed++;
        // Local: the peer never answered (a RequestTimeoutError, not the wire's -32033).
        e.fail(
          new RequestTimeoutError(`No acknowledgement for ${id} after ${e.retries} retransmissions`, {
            envelope_id: id,
          }),
        );
        continue;
      }
      e.retries++;
      e.due = now + this.timeoutMs * 2 ** e.retries;
      if (canSend) e.resend();
    }
    return failed;
  }

  /** Forgets everything (the owner fails the requests itself). */
  clear(): void {
    this.entries.clear();
  }
}
