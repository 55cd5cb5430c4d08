/** TokenBucket, backoffDelay, CircuitBreaker and AckTracker, all on a ManualClock. */
import { describe, expect, it } from 'vitest';
import { AckTracker } from '../../src/core/ack-tracker.js';
import { backoffDelay } from '../../src/core/backoff.js';
import { CircuitBreaker, type CircuitState } from '../../src/core/circuit-breaker.js';
import { ManualClock, systemClock } from '../../src/core/clock.js';
import { TokenBucket } from '../../src/core/token-bucket.js';
import { type ASAPError, LocalErrorCode } from '../../src/protocol/errors.js';

describe('TokenBucket', () => {
  it('allows a burst, then refills at the rate up to the burst', () => {
    const clock = new ManualClock();
    const b = new TokenBucket(10, 3, clock);
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([true, true, true, false]);
    clock.advance(100); // one token
    expect(b.take()).toBe(true);
    expect(b.take()).toBe(false);
    clock.advance(50); // half a token
    expect(b.take()).toBe(false);
    clock.advance(50);
    expect(b.take()).toBe(true);
    clock.advance(10_000); // capped at the burst
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([true, true, true, false]);
  });

  it('uses the rate as burst by default and ignores a clock going back', () => {
    const clock = new ManualClock(1000);
    const b = new TokenBucket(2, undefined, clock);
    expect([b.take(), b.take(), b.take()]).toEqual([true, true, false]);
    clock.set(0);
    expect(b.take()).toBe(false);
  });

  it('runs on the system clock by default', () => {
    const b = new TokenBucket(1);
    expect(b.take()).toBe(true);
    expect(b.take()).toBe(false);
  });
});

describe('backoffDelay', () => {
  it('doubles from the base and caps at max', () => {
    const opts = { baseMs: 100, maxMs: 1000, jitter: 0 };
    expect([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, opts))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(backoffDelay(-3, opts)).toBe(100);
  });

  it('defaults to 1 s, 2 s, 4 s … capped at 30 s', () => {
    const random = () => 0;
    expect([0, 1, 2, 10].map((a) => backoffDelay(a, { random }))).toEqual([1000, 2000, 4000, 30_000]);
  });

  it('scales by a random factor in [1 - jitter, 1]', () => {
    expect(backoffDelay(1, { baseMs: 1000, jitter: 0.5, random: () => 1 })).toBe(1000);
    expect(backoffDelay(1, { baseMs: 1000, jitter: 0.5, random: () => 0.5 })).toBe(1500);
    expect(backoffDelay(1, { baseMs: 1000, jitter: 0.5, random: () => 0 })).toBe(2000);
    // Default jitter 0.2 with Math.random stays within bounds.
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(3);
      expect(d).toBeGreaterThanOrEqual(6400);
      expect(d).toBeLessThanOrEqual(8000);
    }
  });
});

describe('CircuitBreaker', () => {
  function make(threshold = 3, resetMs = 1000) {
    const clock = new ManualClock();
    const changes: [CircuitState, CircuitState][] = [];
    const cb = new CircuitBreaker({
      failureThreshold: threshold,
      resetTimeoutMs: resetMs,
      clock,
      onStateChange: (s, p) => changes.push([s, p]),
    });
    return { cb, clock, changes };
  }

  it('opens after N consecutive failures and fails fast', () => {
    const { cb, changes } = make(3);
    cb.recordFailure();
    cb.recordFailure();
    expect(cb.state).toBe('closed');
    expect(cb.consecutiveFailures).toBe(2);
    cb.recordSuccess();
    expect(cb.consecutiveFailures).toBe(0);
    cb.recordFailure();
    cb.recordFailure();
    expect(cb.allow()).toBe(true);
    cb.recordFailure();
    expect(cb.state).toBe('open');
    expect(cb.allow()).toBe(false);
    expect(changes).toEqual([['open', 'closed']]);
  });

  it('half-opens after the cool-down, lets one trial through, and closes on success', () => {
    const { cb, clock, changes } = make(1, 1000);
    cb.recordFailure();
    clock.advance(999);
    expect(cb.allow()).toBe(false);
    clock.advance(1);
    expect(cb.state).toBe('half-open');
    expect(cb.allow()).toBe(true);
    expect(cb.allow()).toBe(false); // one trial at a time
    cb.recordSuccess();
    expect(cb.state).toBe('closed');
    expect(cb.allow()).toBe(true);
    expect(changes).toEqual([
      ['open', 'closed'],
      ['half-open', 'open'],
      ['closed', 'half-open'],
    ]);
  });

  it('reopens when the half-open trial fails, for a new cool-down', () => {
    const { cb, clock, changes } = make(2, 500);
    cb.recordFailure();
    cb.recordFailure();
    clock.advance(500);
    expect(cb.allow()).toBe(true);
    cb.recordFailure();
    expect(cb.state).toBe('open');
    clock.advance(499);
    expect(cb.allow()).toBe(false);
    clock.advance(1);
    expect(cb.allow()).toBe(true);
    expect(changes.map(([s]) => s)).toEqual(['open', 'half-open', 'open', 'half-open']);
  });

  it('does not reopen on failures past the threshold while already open', () => {
    const { cb, changes } = make(1);
    cb.recordFailure();
    cb.recordFailure();
    expect(changes).toHaveLength(1);
    expect(cb.consecutiveFailures).toBe(2);
  });

  it('has defaults: 5 failures, 60 s, system clock, no callback', () => {
    const cb = new CircuitBreaker();
    for (let i = 0; i < 4; i++) cb.recordFailure();
    expect(cb.state).toBe('closed');
    cb.recordFailure();
    expect(cb.state).toBe('open');
    cb.recordSuccess();
    expect(cb.state).toBe('closed');
  });
});

describe('AckTracker', () => {
  function make(timeoutMs = 100, maxRetries = 3) {
    const clock = new ManualClock();
    const t = new AckTracker({ timeoutMs, maxRetries }, clock);
    const sent: string[] = [];
    const failed: ASAPError[] = [];
    const track = (id: string) =>
      t.track(
        id,
        () => sent.push(id),
        (e) => failed.push(e),
      );
    return { t, clock, sent, failed, track };
  }

  it('retransmits overdue envelopes with exponential backoff, then gives up after maxRetries', () => {
    const { t, clock, sent, failed, track } = make(100, 2);
    track('e1');
    expect(t.has('e1')).toBe(true);
    expect(t.size).toBe(1);
    clock.advance(99);
    expect(t.check(true)).toBe(0);
    expect(sent).toEqual([]);
    clock.advance(1); // due at 100
    t.check(true);
    expect(sent).toEqual(['e1']);
    clock.advance(199); // next due 100 + 100·2 = 300
    t.check(true);
    expect(sent).toEqual(['e1']);
    clock.advance(1);
    t.check(true);
    expect(sent).toEqual(['e1', 'e1']);
    clock.advance(399); // next due 300 + 100·4 = 700
    t.check(true);
    expect(failed).toHaveLength(0);
    clock.advance(1);
    expect(t.check(true)).toBe(1);
    expect(sent).toHaveLength(2);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.code).toBe(LocalErrorCode.RequestTimeout);
    expect(failed[0]!.message).toContain('e1');
    expect(failed[0]!.data).toEqual({ envelope_id: 'e1' });
    expect(t.has('e1')).toBe(false);
    expect(t.size).toBe(0);
  });

  it('counts retries without sending while it cannot send', () => {
    const { t, clock, sent, failed, track } = make(10, 1);
    track('e1');
    clock.advance(10);
    t.check(false);
    expect(sent).toEqual([]);
    clock.advance(20);
    expect(t.check(false)).toBe(1);
    expect(failed).toHaveLength(1);
  });

  it('ack() stops the retransmission and reports whether it was waiting', () => {
    const { t, clock, sent, failed, track } = make();
    track('e1');
    track('e2');
    expect(t.ack('e1')).toBe(true);
    expect(t.ack('e1')).toBe(false);
    expect(t.ack('unknown')).toBe(false);
    clock.advance(100);
    t.check(true);
    expect(sent).toEqual(['e2']);
    expect(failed).toEqual([]);
  });

  it('restart() restarts every wait from now', () => {
    const { t, clock, sent, track } = make(100);
    track('e1');
    clock.advance(90);
    t.restart();
    clock.advance(90);
    t.check(true);
    expect(sent).toEqual([]);
    clock.advance(10);
    t.check(true);
    expect(sent).toEqual(['e1']);
  });

  it('clear() forgets everything without failing anything', () => {
    const { t, clock, failed, track } = make(1, 0);
    track('e1');
    t.clear();
    clock.advance(10);
    expect(t.check(true)).toBe(0);
    expect(failed).toEqual([]);
  });

  it('defaults to 30 s and 3 retries on the system clock', () => {
    const t = new AckTracker();
    let sent = 0;
    t.track(
      'x',
      () => sent++,
      () => {},
    );
    t.check(true);
    expect(sent).toBe(0);
    expect(systemClock.now()).toBeGreaterThan(0);
  });
});
