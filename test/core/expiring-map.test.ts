import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { ExpiringMap } from '../../src/core/expiring-map.js';

describe('ExpiringMap', () => {
  it('forgets entries after the TTL', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<number>(100, 10, clock);
    m.set('a', 1);
    clock.advance(99);
    expect(m.get('a')).toBe(1);
    clock.advance(1);
    expect(m.get('a')).toBeUndefined();
    expect(m.size).toBe(0);
  });

  it('drops the oldest past the size cap', () => {
    const m = new ExpiringMap<number>(1000, 3, new ManualClock(0));
    for (const k of ['a', 'b', 'c', 'd']) m.set(k, 1);
    expect(m.get('a')).toBeUndefined();
    expect(['b', 'c', 'd'].map((k) => m.get(k))).toEqual([1, 1, 1]);
    expect(m.size).toBe(3);
  });

  it('keeps age and place when a live entry is updated', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<string>(100, 2, clock);
    m.set('a', 'pending');
    clock.advance(50);
    m.set('a', 'done');
    clock.advance(50);
    expect(m.get('a')).toBeUndefined();
  });

  it('removes expired entries from the old end when inserting', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<number>(10, 100, clock);
    m.set('a', 1);
    m.set('b', 2);
    clock.advance(10);
    m.set('c', 3);
    expect(m.size).toBe(1);
  });

  it('does not let a stale queue slot evict a re-inserted key', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<number>(100, 2, clock);
    m.set('a', 1);
    m.delete('a');
    clock.advance(10);
    m.set('a', 2);
    m.set('b', 3);
    expect(m.get('a')).toBe(2);
    m.set('c', 4);
    expect(m.get('a')).toBeUndefined();
    expect(m.get('b')).toBe(3);
  });

  it('stays correct across queue compaction under churn', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<number>(1_000_000, 100, clock);
    for (let i = 0; i < 5000; i++) m.set(`k${i}`, i);
    expect(m.size).toBe(100);
    expect(m.get('k4899')).toBeUndefined();
    expect(m.get('k4900')).toBe(4900);
    expect(m.get('k4999')).toBe(4999);
  });
});
