/** MemoryDedupeStore (§6 dedupe window) and ReplayGuard (§8), with a ManualClock. */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { MemoryDedupeStore, type Outcome } from '../../src/core/dedupe.js';
import { silentLogger } from '../../src/core/logger.js';
import { ReplayGuard } from '../../src/core/replay.js';
import { ErrorCode } from '../../src/protocol/errors.js';

const err = (n: number): Outcome => ({ kind: 'error', error: { code: n, message: String(n) } });
const result = (size: number): Outcome => ({ kind: 'result', envelope: 'x'.repeat(size) });

/** Claims `key` as new and completes it with `outcome`. */
function run(store: MemoryDedupeStore, key: string, outcome: Outcome, fp = 1): void {
  expect(store.claim(key, fp)).toEqual({ state: 'new' });
  store.complete(key, outcome);
}

describe('MemoryDedupeStore (§10: claim, time-based window, byte budgets)', () => {
  it('claims a key once: new, then done with its outcome for the window, then new again', () => {
    const clock = new ManualClock(1000);
    const store = new MemoryDedupeStore({ windowMs: 100, clock });
    run(store, 'a', err(1));
    expect(store.claim('a', 1)).toEqual({ state: 'done', outcome: err(1) });
    clock.advance(99);
    expect(store.claim('a', 1)).toEqual({ state: 'done', outcome: err(1) });
    clock.advance(1);
    expect(store.claim('a', 1)).toEqual({ state: 'new' });
    expect(store.snapshot()).toMatchObject({ ids: 0, pending: 1 });
  });

  it('defaults to a 10 minute window, counted from completion', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ clock });
    expect(store.claim('a', 1).state).toBe('new');
    clock.advance(5000);
    store.complete('a', err(1));
    clock.advance(599_999);
    expect(store.claim('a', 1).state).toBe('done');
    clock.advance(1);
    expect(store.claim('a', 1).state).toBe('new');
  });

  it('a copy that arrives while the first runs waits for its outcome', async () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    expect(store.claim('a', 1).state).toBe('new');
    const c1 = store.claim('a', 1);
    const c2 = store.claim('a', 1);
    expect(c1.state).toBe('pending');
    expect(c2).toEqual(c1); // one promise for every waiting copy
    store.complete('a', err(7));
    expect(await (c1 as { outcome: Promise<Outcome> }).outcome).toEqual(err(7));
  });

  it('a released claim lets its waiting copies claim again', async () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    expect(store.claim('a', 1).state).toBe('new');
    const waiting = store.claim('a', 1) as { outcome: Promise<Outcome | undefined> };
    store.release('a');
    expect(await waiting.outcome).toBeUndefined();
    expect(store.claim('a', 1).state).toBe('new');
    store.release('nothing'); // no-op
    store.complete('nothing', err(1)); // no-op
    expect(store.snapshot().ids).toBe(0);
  });

  it('another fingerprint under the same key is a conflict, pending or done', () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    expect(store.claim('a', 1).state).toBe('new');
    expect(store.claim('a', 2)).toEqual({ state: 'conflict' });
    store.complete('a', err(1));
    expect(store.claim('a', 2)).toEqual({ state: 'conflict' });
    expect(store.claim('a', 1).state).toBe('done');
  });

  it('remembers 12,000 ids (never a count limit)', () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    for (let i = 0; i < 12_000; i++) run(store, `k${i}`, err(i));
    expect(store.claim('k0', 1)).toEqual({ state: 'done', outcome: err(0) });
    expect(store.snapshot()).toMatchObject({ ids: 12_000, idsEvicted: 0, outcomesDropped: 0 });
  });

  it('drops the oldest outcomes past the outcome budget, keeping their ids: "dropped"', () => {
    const logs: object[] = [];
    const logger = { ...silentLogger, warn: (o: object) => logs.push(o) };
    const store = new MemoryDedupeStore({ maxOutcomesBytes: 250, clock: new ManualClock(), logger });
    run(store, 'a', result(100));
    run(store, 'b', result(100));
    run(store, 'c', result(100));
    expect(store.claim('a', 1)).toEqual({ state: 'dropped' });
    expect(store.claim('b', 1).state).toBe('done');
    expect(store.claim('c', 1).state).toBe('done');
    expect(store.snapshot()).toMatchObject({ ids: 3, outcomes: 2, outcomesDropped: 1 });
    expect(logs).toHaveLength(1);
  });

  it('keeps no outcome over maxOutcomeBytes (one caller cannot flush the others)', () => {
    const store = new MemoryDedupeStore({ maxOutcomeBytes: 50, clock: new ManualClock() });
    run(store, 'big', result(51));
    run(store, 'small', result(50));
    run(store, 'none', { kind: 'none' });
    expect(store.claim('big', 1)).toEqual({ state: 'dropped' });
    expect(store.claim('small', 1).state).toBe('done');
    expect(store.claim('none', 1)).toEqual({ state: 'done', outcome: { kind: 'none' } });
    expect(store.snapshot().outcomesDropped).toBe(1);
  });

  it('an error outcome whose data is no JSON is not kept: a repeat is "dropped", nothing throws', () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    const cyclic: { self?: object } = {};
    cyclic.self = cyclic;
    run(store, 'bigint', { kind: 'error', error: { code: -32000, message: 'm', data: { n: 1n } } });
    run(store, 'cyclic', { kind: 'error', error: { code: -32000, message: 'm', data: cyclic } });
    expect(store.claim('bigint', 1)).toEqual({ state: 'dropped' });
    expect(store.claim('cyclic', 1)).toEqual({ state: 'dropped' });
    expect(store.snapshot()).toMatchObject({ ids: 2, outcomes: 0, outcomesDropped: 2 });
  });

  it('forgets the oldest ids early past the id budget, counting and logging it (once per 10 s)', () => {
    const clock = new ManualClock();
    const logs: object[] = [];
    const logger = { ...silentLogger, warn: (o: object) => logs.push(o) };
    const store = new MemoryDedupeStore({ maxIdBytes: 1000, clock, logger });
    for (let i = 0; i < 20; i++) run(store, `k${i}`, err(i));
    const stats = store.snapshot();
    expect(stats.idsEvicted).toBeGreaterThan(0);
    expect(stats.ids + stats.idsEvicted).toBe(20);
    expect(store.claim('k0', 1).state).toBe('new');
    expect(store.claim('k19', 1).state).toBe('done');
    expect(logs).toHaveLength(1);
    clock.advance(10_000);
    run(store, 'later', err(1));
    expect(logs).toHaveLength(2);
  });

  it('expired records leave from the old end, and the queues compact', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ windowMs: 10, clock });
    for (let i = 0; i < 3000; i++) {
      run(store, `k${i}`, err(i));
      clock.advance(1);
    }
    expect(store.snapshot().ids).toBeLessThanOrEqual(11);
    expect(store.snapshot().outcomes).toBeLessThanOrEqual(11);
    // An expired key claimed again is new, and its stale slot is skipped later.
    clock.advance(100);
    expect(store.claim('k2999', 1).state).toBe('new');
    store.complete('k2999', err(1));
    expect(store.claim('k2999', 1).state).toBe('done');
  });
});

describe('ReplayGuard', () => {
  const T0 = Date.parse('2026-11-26T17:30:00.000Z');
  const iso = (ms: number) => new Date(ms).toISOString();

  it('accepts timestamps within 5 minutes back and 30 s ahead', () => {
    const clock = new ManualClock(T0);
    const g = new ReplayGuard({ clock });
    expect(g.check(iso(T0), undefined)).toBeUndefined();
    expect(g.check(iso(T0 - 300_000), null)).toBeUndefined();
    expect(g.check(iso(T0 + 30_000), {})).toBeUndefined();
  });

  it('reads offsets other than Z, and refuses an unreadable timestamp', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0) });
    expect(g.check('2026-11-26T18:30:00.000+01:00', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T16:30:00.000+01:00', undefined)?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(g.check('not-a-timestamp-at-allZ', undefined)?.code).toBe(ErrorCode.InvalidTimestamp);
  });

  it('reads milliseconds exactly in every UTC spelling, with the second parsed once', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0), maxAgeMs: 1000 });
    expect(g.check('2026-11-26T17:29:59.001Z', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T17:29:59.0001Z', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T17:29:59.5Z', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T17:29:59.000999Z', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T17:29:59Z', undefined)).toBeUndefined();
    expect(g.check('2026-11-26T17:29:58.999Z', undefined)?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(g.check('2026-11-26T17:29:59.9x9Z', undefined)?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(g.check('2026-11-26T17:29:59.Z', undefined)?.code).toBe(ErrorCode.InvalidTimestamp);
  });

  it('refuses older and further-ahead timestamps with -32002', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0) });
    const old = g.check(iso(T0 - 300_001), undefined);
    expect(old?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(old?.message).toContain('too old');
    expect(old?.data).toEqual({ timestamp: iso(T0 - 300_001) });
    const future = g.check(iso(T0 + 30_001), undefined);
    expect(future?.code).toBe(-32002);
    expect(future?.message).toContain('future');
  });

  it('honours a configured window and timestamps with an offset', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0), maxAgeMs: 1000, maxFutureMs: 0 });
    expect(g.check(iso(T0 - 1001), undefined)?.code).toBe(-32002);
    expect(g.check(iso(T0 + 1), undefined)?.code).toBe(-32002);
    expect(g.check('2026-11-26T18:30:00.000+01:00', undefined)).toBeUndefined();
  });

  it('refuses a nonce seen within its window with -32003, and accepts it again after', () => {
    const clock = new ManualClock(T0);
    const g = new ReplayGuard({ clock, nonceTtlMs: 1000, maxAgeMs: 10_000_000 });
    expect(g.check(iso(T0), { nonce: 'n1' })).toBeUndefined();
    const again = g.check(iso(T0), { nonce: 'n1' });
    expect(again?.code).toBe(ErrorCode.InvalidNonce);
    expect(again?.data).toEqual({ nonce: 'n1' });
    expect(g.check(iso(T0), { nonce: 'n2' })).toBeUndefined();
    clock.advance(1000);
    expect(g.check(iso(T0), { nonce: 'n1' })).toBeUndefined();
    expect(g.check(iso(T0), { nonce: 'n1' })?.code).toBe(-32003);
  });

  it('refuses a nonce that is not a non-empty string', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0) });
    expect(g.check(iso(T0), { nonce: 5 })?.code).toBe(-32003);
    expect(g.check(iso(T0), { nonce: '' })?.code).toBe(-32003);
    expect(g.check(iso(T0), { nonce: null })).toBeUndefined();
  });

  it('forgets the oldest nonces past maxNonces', () => {
    const g = new ReplayGuard({ clock: new ManualClock(T0), maxNonces: 2 });
    for (const n of ['a', 'b', 'c']) expect(g.check(iso(T0), { nonce: n })).toBeUndefined();
    expect(g.check(iso(T0), { nonce: 'c' })?.code).toBe(-32003);
    expect(g.check(iso(T0), { nonce: 'a' })).toBeUndefined();
  });

  it('uses the system clock by default', () => {
    const g = new ReplayGuard();
    expect(g.check(new Date().toISOString(), { nonce: 'sys' })).toBeUndefined();
    expect(g.check(iso(Date.now() - 3_600_000), undefined)?.code).toBe(-32002);
  });
});
