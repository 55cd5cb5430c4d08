/**
 * ulid's `monotonicFactory`, the one function of the `ulid` package envelopes use, in a few lines:
 * the browser bundle is built with `ulid` resolved to this module (scripts/build-browser.mjs). Same
 * ids for the same clock and random source: 10 characters of time and 16 random ones in Crockford's
 * base32, the random part incremented when the clock has not moved on (test/protocol/ulid-lite.test.ts
 * compares it with the package). Node keeps the package.
 */
const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

function encodeTime(ms: number): string {
  let s = '';
  for (let i = 0; i < 10; i++) {
    s = B32[ms % 32]! + s;
    ms = Math.floor(ms / 32);
  }
  return s;
}

/** `s` plus one in base32; throws past the largest value (ulid does too). */
function increment(s: string): string {
  for (let i = s.length - 1; i >= 0; i--) {
    const d = B32.indexOf(s[i]!);
    if (d < 31) return s.slice(0, i) + B32[d + 1] + '0'.repeat(s.length - 1 - i);
  }
  throw new Error('Failed incrementing string (B32_ENC_INVALID)');
}

export function monotonicFactory(prng: () => number): (seedTime?: number) => string {
  let lastTime = 0;
  let lastRandom = '';
  return (seedTime) => {
    const seed = !seedTime || Number.isNaN(seedTime) ? Date.now() : seedTime;
    if (seed <= lastTime) {
      lastRandom = increment(lastRandom);
      return encodeTime(lastTime) + lastRandom;
    }
    lastTime = seed;
    lastRandom = '';
    for (let i = 0; i < 16; i++) lastRandom = B32[Math.floor(prng() * 32) % 32] + lastRandom;
    return encodeTime(seed) + lastRandom;
  };
}
