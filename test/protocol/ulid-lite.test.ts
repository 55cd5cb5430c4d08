/** src/protocol/ulid-lite.ts (the browser bundle's `ulid`) against the package: the same ids for the same clock and random source. */
import fc from 'fast-check';
import { monotonicFactory as packaged } from 'ulid';
import { describe, expect, it } from 'vitest';
import { monotonicFactory as lite } from '../../src/protocol/ulid-lite.js';

/** A random source replaying `values` (then 0.5), so both factories draw the same numbers. */
function replay(values: number[]): () => number {
  let i = 0;
  return () => values[i++] ?? 0.5;
}

describe('ulid-lite', () => {
  it('makes the ids ulid makes, incrementing within a millisecond', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { maxLength: 64 }),
        fc.array(fc.integer({ min: 1, max: 2 ** 48 - 1 }), { minLength: 1, maxLength: 6 }),
        (randoms, times) => {
          const a = packaged(replay(randoms));
          const b = lite(replay(randoms));
          for (const t of times) {
            expect(b(t)).toBe(a(t));
            expect(b(t)).toBe(a(t));
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('carries through the random part, and fails past its largest value as ulid does', () => {
    const a = packaged(replay([0.999, 0.999]));
    const b = lite(replay([0.999, 0.999]));
    expect(b(1000)).toBe(a(1000));
    const next = b(1000);
    expect(next).toBe(a(1000));
    expect(next).toMatch(/H00$/);
    expect(b(999)).toBe(a(999));
    const full = lite(() => 0.999);
    full(5);
    expect(() => full(5)).toThrow(/B32_ENC_INVALID/);
    const fullPackaged = packaged(() => 0.999);
    fullPackaged(5);
    expect(() => fullPackaged(5)).toThrow(/B32_ENC_INVALID/);
  });

  it('uses the clock when given no time', () => {
    const before = Date.now();
    const id = lite(() => 0)();
    expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    const ms = [...id.slice(0, 10)].reduce(
      (t, c) => t * 32 + '0123456789ABCDEFGHJKMNPQRSTVWXYZ'.indexOf(c),
      0,
    );
    expect(ms).toBeGreaterThanOrEqual(before);
    expect(ms).toBeLessThanOrEqual(Date.now());
  });
});
