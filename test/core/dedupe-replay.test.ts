/** MemoryDedupeStore (§6 dedupe window) and ReplayGuard (§8), with a ManualClock. */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { type DedupeRecord, MemoryDedupeStore, type Outcome } from '../../src/core/dedupe.js';
import { ReplayGuard } from '../../src/core/replay.js';
import { ErrorCode } from '../../src/protocol/errors.js';

const done = (n: number): DedupeRecord => ({
  outcome: { kind: 'error', error: { code: n, message: String(n) } },
});

describe('MemoryDedupeStore', () => {
  it('remembers a record for its TTL, then forgets it', () => {
    const clock = new ManualClock(1000);
    const store = new MemoryDedupeStore({ ttlMs: 100, clock });
    expect(store.get('a')).toBeUndefined();
    store.set('a', done(1));
    expect(store.get('a')).toEqual(done(1));
    expect(store.size).toBe(1);
    clock.advance(99);
    expect(store.get('a')).toEqual(done(1));
    clock.advance(1);
    expect(store.get('a')).toBeUndefined();
    expect(store.size).toBe(0);
  });

  it('defaults to a 10 minute window', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ clock });
    store.set('a', done(1));
    clock.advance(599_999);
    expect(store.get('a')).toBeDefined();
    clock.advance(1);
    expect(store.get('a')).toBeUndefined();
  });

  it('evicts the oldest entries past maxEntries', () => {
    const store = new MemoryDedupeStore({ maxEntries: 2, clock: new ManualClock() });
    store.set('a', done(1));
    store.set('b', done(2));
    store.set('c', done(3));
    expect(store.size).toBe(2);
    expect(store.get('a')).toBeUndefined();
    expect(store.get('b')).toEqual(done(2));
    expect(store.get('c')).toEqual(done(3));
  });

  it('drops expired entries from the old end on insert', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ ttlMs: 10, clock });
    store.set('a', done(1));
    store.set('b', done(2));
    clock.advance(20);
    store.set('c', done(3));
    expect(store.size).toBe(1);
  });

  it('settling a pending record keeps its place and its age', async () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ ttlMs: 100, maxEntries: 2, clock });
    const pending: Promise<Outcome> = Promise.resolve({ kind: 'none' });
    store.set('a', { pending });
    expect(store.get('a')).toEqual({ pending });
    clock.advance(60);
    store.set('b', done(2));
    store.set('a', done(1));
    expect(store.get('a')).toEqual(done(1));
    expect(store.size).toBe(2);
    // Still the oldest: evicted first although settled last.
    store.set('c', done(3));
    expect(store.get('a')).toBeUndefined();
    expect(store.get('b')).toBeDefined();
    // And its TTL ran from the first set.
    const s2 = new MemoryDedupeStore({ ttlMs: 100, clock });
    s2.set('x', { pending });
    clock.advance(60);
    s2.set('x', done(9));
    clock.advance(40);
    expect(s2.get('x')).toBeUndefined();
  });

  it('deletes', () => {
    const store = new MemoryDedupeStore();
    store.set('a', done(1));
    store.delete('a');
    expect(store.get('a')).toBeUndefined();
    store.delete('never');
    expect(store.size).toBe(0);
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
