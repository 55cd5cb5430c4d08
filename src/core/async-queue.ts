/**
 * @internal
 * A single-consumer async queue: producers push, the consumer iterates.
 * Used for streamed chunks and for `receive()` of pushed envelopes.
 */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiters: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private ended = false;
  private error: unknown;

  constructor(
    private readonly onReturn?: () => void,
    private readonly maxItems = Number.POSITIVE_INFINITY,
  ) {}

  get size(): number {
    return this.items.length;
  }

  get done(): boolean {
    return this.ended;
  }

  /** Adds an item; past `maxItems` the oldest is dropped (returns false then). */
  push(item: T): boolean {
    if (this.ended) return false;
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter.resolve({ value: item, done: false });
      return true;
    }
    this.items.push(item);
    if (this.items.length > this.maxItems) {
      this.items.shift();
      return false;
    }
    return true;
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    for (const w of this.waiters) w.resolve({ value: undefined, done: true });
    this.waiters = [];
  }

  fail(err: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = err;
    for (const w of this.waiters) w.reject(err);
    this.waiters = [];
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
    if (this.ended) {
      if (this.error !== undefined) {
        const err = this.error;
        this.error = undefined;
        return Promise.reject(err);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    const wasEnded = this.ended;
    this.end();
    this.items.length = 0;
    if (!wasEnded) this.onReturn?.();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
