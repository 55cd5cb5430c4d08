/**
 * MemoryDedupeStore against a model that says the same thing in the plainest terms (arrays, linear
 * scans, JS strings): for any sequence of claims, completions, releases and clock moves, with
 * budgets small enough that ids are evicted early, outcomes dropped and both rings wrap and grow,
 * every answer and every counter must be the same.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { type Claim, hashKey, ID_OVERHEAD, MemoryDedupeStore, type Outcome } from '../../src/core/dedupe.js';

interface Opts {
  windowMs: number;
  maxIdBytes: number;
  maxOutcomesBytes: number;
  maxOutcomeBytes: number;
}

interface Rec {
  key: string;
  fp: number;
  expires: number;
  outcome: Outcome | undefined;
  bytes: number;
}

const utf8 = (s: string): number => new TextEncoder().encode(s).length;
const outcomeBytes = (o: Outcome): number =>
  o.kind === 'none' ? 0 : utf8(o.kind === 'result' ? o.envelope : JSON.stringify(o.error));

/** The semantics of MemoryDedupeStore, written for reading rather than speed. */
class Model {
  pending = new Map<string, { fp: number; waiting: boolean }>();
  recs: Rec[] = [];
  idsEvicted = 0;
  outcomesDropped = 0;
  lastExpiry = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly o: Opts,
    private readonly clock: ManualClock,
  ) {}

  claim(key: string, fp: number): Claim | { state: 'pending' } {
    const p = this.pending.get(key);
    if (p) return p.fp === fp ? { state: 'pending' } : { state: 'conflict' };
    const rec = this.recs.find((r) => r.key === key);
    if (rec) {
      const now = this.clock.now();
      if (rec.expires <= now) this.expire(now);
      else if (rec.fp !== fp) return { state: 'conflict' };
      else return rec.outcome === undefined ? { state: 'dropped' } : { state: 'done', outcome: rec.outcome };
    }
    this.pending.set(key, { fp, waiting: false });
    return { state: 'new' };
  }

  complete(key: string, outcome: Outcome): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    const now = this.clock.now();
    this.expire(now);
    this.lastExpiry = Math.max(now + this.o.windowMs, this.lastExpiry);
    const rec: Rec = { key, fp: p.fp, expires: this.lastExpiry, outcome: undefined, bytes: 0 };
    this.recs.push(rec);
    const idBytes = () => this.recs.reduce((n, r) => n + ID_OVERHEAD + 2 * r.key.length, 0);
    while (this.recs.length > 0 && idBytes() > this.o.maxIdBytes) {
      this.recs.shift();
      this.idsEvicted++;
    }
    if (this.recs.length === 0) return;
    const size = outcomeBytes(outcome);
    if (outcome.kind !== 'none' && size > Math.min(this.o.maxOutcomeBytes, this.o.maxOutcomesBytes)) {
      this.outcomesDropped++;
      return;
    }
    const held = () => this.recs.reduce((n, r) => n + (r.outcome ? r.bytes : 0), 0);
    while (held() + size > this.o.maxOutcomesBytes) {
      const oldest = this.recs.find((r) => r.outcome !== undefined)!;
      oldest.outcome = undefined;
      this.outcomesDropped++;
    }
    rec.outcome = outcome;
    rec.bytes = size;
  }

  release(key: string): void {
    this.pending.delete(key);
  }

  expire(now: number): void {
    while (this.recs.length > 0 && this.recs[0]!.expires <= now) this.recs.shift();
  }

  stats() {
    return {
      ids: this.recs.length,
      outcomes: this.recs.filter((r) => r.outcome !== undefined).length,
      pending: this.pending.size,
      idsEvicted: this.idsEvicted,
      outcomesDropped: this.outcomesDropped,
    };
  }
}

// Keys as callers make them, plus what UTF-8 could not tell apart (lone surrogates) and a long one.
const KEYS = [
  'caller\u0000urn:asap:agent:a\u000001JF00000000000000000000',
  'caller\u0000urn:asap:agent:a\u000001JF00000000000000000001',
  'k',
  '',
  'é',
  '😀',
  '\ud800',
  '\udc00',
  '\ufffd',
  'x'.repeat(300),
];

/** Outcomes whose text has up to `maxLength` UTF-16 units (up to 4 bytes each in UTF-8). */
function outcomes(maxLength: number): fc.Arbitrary<Outcome> {
  const text = fc.string({ unit: 'binary', maxLength, size: 'max' });
  return fc.oneof(
    text.map((envelope) => ({ kind: 'result' as const, envelope })),
    fc
      .record({ code: fc.integer({ min: -32099, max: -32000 }), message: text })
      .map((error) => ({ kind: 'error' as const, error })),
    fc.constant({ kind: 'none' as const }),
  );
}
type Op =
  | { t: 'claim'; key: string; fp: number }
  | { t: 'complete'; key: string; outcome: Outcome }
  /** Claim and complete at once: the usual request. */
  | { t: 'run'; key: string; fp: number; outcome: Outcome }
  | { t: 'release'; key: string }
  | { t: 'advance'; ms: number };

/** Keys from KEYS and `id-0` … `id-<ids-1>`. */
function ops(ids: number, maxLength: number, minLength = 0, textLength = 120): fc.Arbitrary<Op[]> {
  const outcome = outcomes(textLength);
  const key = fc.oneof(
    { weight: 1, arbitrary: fc.constantFrom(...KEYS) },
    { weight: 4, arbitrary: fc.noBias(fc.nat(ids - 1)).map((i) => `id-${i}`) },
  );
  const fp = fc.constantFrom(1, 2);
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 3, arbitrary: fc.record({ t: fc.constant('claim' as const), key, fp }) },
    { weight: 3, arbitrary: fc.record({ t: fc.constant('complete' as const), key, outcome }) },
    { weight: 4, arbitrary: fc.record({ t: fc.constant('run' as const), key, fp, outcome }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('release' as const), key }) },
    // Now and then the clock steps back (a system clock can): expiry must stay in completion order.
    {
      weight: 1,
      arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.integer({ min: -20, max: 40 }) }),
    },
  );
  return fc.array(op, { minLength, maxLength, size: 'max' });
}
const opts: fc.Arbitrary<Opts> = fc.record({
  windowMs: fc.integer({ min: 1, max: 200 }),
  maxIdBytes: fc.integer({ min: 0, max: 6000 }),
  maxOutcomesBytes: fc.integer({ min: 0, max: 1500 }),
  maxOutcomeBytes: fc.integer({ min: 0, max: 400 }),
});

/** Runs `ops` on the store and the model, checking every answer and the counters after each step. */
function compare(o: Opts, ops: Op[], ids: number): void {
  const clock = new ManualClock(1_000);
  const store = new MemoryDedupeStore({ ...o, clock });
  const model = new Model(o, clock);
  const same = (got: Claim, want: Claim | { state: 'pending' }, where: string) =>
    expect(got.state === 'pending' ? { state: 'pending' } : got, where).toEqual(want);
  for (const [i, step] of ops.entries()) {
    const where = `step ${i}: ${JSON.stringify(step)}`;
    switch (step.t) {
      case 'claim':
        same(store.claim(step.key, step.fp), model.claim(step.key, step.fp), where);
        break;
      case 'run':
        same(store.claim(step.key, step.fp), model.claim(step.key, step.fp), where);
        store.complete(step.key, step.outcome);
        model.complete(step.key, step.outcome);
        break;
      case 'complete':
        store.complete(step.key, step.outcome);
        model.complete(step.key, step.outcome);
        break;
      case 'release':
        store.release(step.key);
        model.release(step.key);
        break;
      case 'advance':
        clock.advance(step.ms);
        break;
    }
    expect(store.snapshot(), where).toEqual(model.stats());
  }
  // Every key still answers what the model holds for it.
  for (const k of [...KEYS, ...Array.from({ length: ids }, (_, i) => `id-${i}`)])
    same(store.claim(k, 1), model.claim(k, 1), `final claim of ${JSON.stringify(k)}`);
}

describe('MemoryDedupeStore against its model', () => {
  it('answers and counts like the model for any sequence of operations (small budgets)', () => {
    fc.assert(
      fc.property(opts, ops(40, 300), (o, steps) => compare(o, steps, 40)),
      { numRuns: 300 },
    );
  });

  it('the same with budgets that never bind: thousands of ids, the rings and the table growing', () => {
    fc.assert(
      fc.property(ops(20_000, 4000, 3500), (steps) =>
        compare(
          { windowMs: 100_000, maxIdBytes: 1 << 30, maxOutcomesBytes: 1 << 30, maxOutcomeBytes: 1 << 20 },
          steps,
          20_000,
        ),
      ),
      { numRuns: 5 },
    );
  });

  it('the same under load: most keys new, windows ending, budgets binding while the rings grow and wrap', () => {
    const loaded: fc.Arbitrary<Opts> = fc.record({
      windowMs: fc.integer({ min: 20, max: 2000 }),
      maxIdBytes: fc.integer({ min: 50_000, max: 300_000 }),
      maxOutcomesBytes: fc.integer({ min: 60_000, max: 400_000 }),
      maxOutcomeBytes: fc.integer({ min: 1000, max: 8000 }),
    });
    fc.assert(
      fc.property(loaded, ops(50_000, 3000, 2000, 2000), (o, steps) => compare(o, steps, 0)),
      { numRuns: 6 },
    );
  });
});

describe('MemoryDedupeStore: keys that collide in its table', () => {
  const done = (o: Outcome) => ({ state: 'done', outcome: o });
  const err = (n: number): Outcome => ({ kind: 'error', error: { code: -32000, message: `m${n}` } });
  const seedOf = (store: MemoryDedupeStore) => (store as unknown as { seed: number }).seed;

  it('tells apart keys with the same 32-bit hash, of the same length and of different lengths', () => {
    const store = new MemoryDedupeStore({ clock: new ManualClock() });
    const seed = seedOf(store);
    const seen = new Map<number, string>();
    let sameLength: [string, string] | undefined;
    let otherLength: [string, string] | undefined;
    for (let i = 0; !(sameLength && otherLength); i++) {
      const k = `c-${i}`;
      const h = hashKey(k, seed);
      const before = seen.get(h);
      if (before === undefined) seen.set(h, k);
      else if (before.length === k.length) sameLength ??= [before, k];
      else otherLength ??= [before, k];
    }
    for (const [n, [a, b]] of [sameLength!, otherLength!].entries()) {
      expect(hashKey(a, seed)).toBe(hashKey(b, seed));
      expect(store.claim(a, 1)).toEqual({ state: 'new' });
      store.complete(a, err(n));
      expect(store.claim(b, 1)).toEqual({ state: 'new' }); // not a's outcome
      store.complete(b, err(10 + n));
      expect(store.claim(a, 1)).toEqual(done(err(n)));
      expect(store.claim(b, 1)).toEqual(done(err(10 + n)));
    }
  });

  it('finds every key after others leave, also where a run of slots wraps past the end of the table', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ windowMs: 100, clock });
    const seed = seedOf(store);
    const mask = 2 * 1024 - 1; // the table of a new store
    const homeOf = (k: string) => hashKey(k, seed) & mask;
    const find = (home: number, n: number): string[] => {
      const out: string[] = [];
      for (let i = 0; out.length < n; i++) if (homeOf(`w-${home}-${i}`) === home) out.push(`w-${home}-${i}`);
      return out;
    };
    // Three keys whose home is the last slot (they take it and wrap to 0 and 1), then keys whose
    // homes are 0 and 1 (pushed further), then one more at the end: one run across the wrap.
    const keys = [...find(mask, 3), ...find(0, 2), ...find(1, 1), ...find(mask - 1, 1)];
    for (const [n, k] of keys.entries()) {
      expect(store.claim(k, 1)).toEqual({ state: 'new' });
      store.complete(k, err(n));
      clock.advance(1);
    }
    // They leave oldest first (the window ends for one each millisecond); the rest stay findable.
    for (let gone = 1; gone <= keys.length; gone++) {
      clock.set(100 + gone - 1);
      expect(store.claim(keys[gone - 1]!, 1)).toEqual({ state: 'new' }); // expired: new again
      store.release(keys[gone - 1]!);
      for (const [n, k] of keys.entries()) if (n >= gone) expect(store.claim(k, 1), k).toEqual(done(err(n)));
    }
    expect(store.snapshot()).toMatchObject({ ids: 0, pending: 0 });
  });
});

describe('MemoryDedupeStore: rings that grow after they wrapped', () => {
  it('keeps every live key and outcome in order when both rings grow with their contents wrapped', () => {
    const clock = new ManualClock();
    const store = new MemoryDedupeStore({ windowMs: 100, maxOutcomesBytes: 1 << 20, clock });
    const live: [string, Outcome][] = [];
    let n = 0;
    const add = () => {
      // 1,000-unit keys fill the key ring (16 Ki units) after 16; 3 KiB outcomes the outcome ring (64 KiB) after 21.
      const key = `${String(n).padStart(4, '0')}${'k'.repeat(996)}`;
      const outcome: Outcome = { kind: 'result', envelope: `${n}:${'é'.repeat(1500)}` };
      expect(store.claim(key, 1)).toEqual({ state: 'new' });
      store.complete(key, outcome);
      live.push([key, outcome]);
      n++;
    };
    for (let i = 0; i < 8; i++) add();
    clock.advance(50);
    for (let i = 0; i < 4; i++) add();
    clock.advance(50); // the first 8 leave on the next completion; the ring's head moves past them
    for (let i = 0; i < 12; i++) add(); // written from the tail on, wrapping to the start
    live.splice(0, 8);
    for (let i = 0; i < 40; i++) add(); // past both rings' size while wrapped: they grow
    for (const [key, outcome] of live) expect(store.claim(key, 1)).toEqual({ state: 'done', outcome });
    expect(store.snapshot()).toMatchObject({ ids: 56, outcomes: 56, idsEvicted: 0, outcomesDropped: 0 });
  });
});
