import type { Clock } from './clock.js';

/** A scheduled callback; `cancel()` is idempotent. */
export interface Timer {
  cancel(): void;
}

/**
 * Time for the engine: the clock and every timer the dispatcher, server,
 * connections, client and pool use. A timer keeps the process alive only
 * when asked to (`keepAlive`: a reconnect that work is waiting on, a close
 * in progress). Tests inject {@link ManualTimers} so heartbeats, backoff,
 * ack expiry and deadlines run without waiting.
 */
export interface Timers extends Clock {
  setTimeout(fn: () => void, ms: number, keepAlive?: boolean): Timer;
  setInterval(fn: () => void, ms: number): Timer;
}

type Handle = { unref?: () => void };

function unrefd(handle: Handle, clear: (h: never) => void, keepAlive = false): Timer {
  if (!keepAlive) handle.unref?.();
  return { cancel: () => clear(handle as never) };
}

/** The runtime's timers (unref'd in Node unless `keepAlive`) and `Date.now()`. */
export const systemTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms, keepAlive) => unrefd(setTimeout(fn, ms) as Handle, clearTimeout, keepAlive),
  setInterval: (fn, ms) => unrefd(setInterval(fn, ms) as Handle, clearInterval),
};

interface Scheduled {
  at: number;
  seq: number;
  every: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * Timers that only move when told to. `advance(ms)` runs every callback that
 * falls due, in time order, with `now()` at its due time; intervals re-arm.
 * `tick(ms)` does the same and lets pending promise callbacks run between
 * timers, so code that awaits inside a timer callback sees its continuation
 * before the next one fires.
 */
export class ManualTimers implements Timers {
  private t: number;
  private seq = 0;
  private queue: Scheduled[] = [];

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  /** Timers scheduled and not yet run or cancelled (intervals count once). */
  get pending(): number {
    return this.queue.filter((s) => !s.cancelled).length;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, 0);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, Math.max(1, ms));
  }

  /** Moves time forward by `ms`, running what falls due. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (let next = this.due(end); next !== undefined; next = this.due(end)) this.run(next);
    this.t = end;
  }

  /** As `advance`, awaiting queued microtasks and I/O callbacks around each timer. */
  async tick(ms: number): Promise<void> {
    const end = this.t + ms;
    await flush();
    for (let next = this.due(end); next !== undefined; next = this.due(end)) {
      this.run(next);
      await flush();
    }
    this.t = end;
  }

  private schedule(fn: () => void, ms: number, every: number): Timer {
    const s: Scheduled = { at: this.t + Math.max(0, ms), seq: this.seq++, every, fn, cancelled: false };
    this.queue.push(s);
    return {
      cancel: () => {
        s.cancelled = true;
        this.queue = this.queue.filter((q) => q !== s);
      },
    };
  }

  private due(end: number): Scheduled | undefined {
    let best: Scheduled | undefined;
    for (const s of this.queue) {
      if (s.at > end) continue;
      if (best === undefined || s.at < best.at || (s.at === best.at && s.seq < best.seq)) best = s;
    }
    return best;
  }

  private run(s: Scheduled): void {
    this.t = Math.max(this.t, s.at);
    if (s.every > 0) {
      s.at += s.every;
      s.seq = this.seq++;
    } else {
      this.queue = this.queue.filter((q) => q !== s);
    }
    s.fn();
  }
}

const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
