import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { EnvelopeSchema, validateEnvelope } from '../../src/protocol/envelope.js';
import { QUICK_PAYLOADS, quickEnvelope } from '../../src/protocol/fast-path.js';
import { PAYLOAD_SCHEMAS, type PayloadTypeName } from '../../src/protocol/payloads.js';
import { PAYLOADS, rawEnvelope } from './fixtures.js';

// Values that are sometimes right and often subtly wrong for the fields the checks model.
const anyValue = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -3, max: 3 }),
  fc.double({ noNaN: true, min: -3, max: 3 }),
  fc.constantFrom(-0.5, 0.5, 1.5, 2, 2.5, 99.5, 101),
  fc.constantFrom(
    '',
    'x',
    'completed',
    'working',
    'received',
    'bogus',
    'urn:asap:agent:a',
    'urn:asap:agent:A',
  ),
  fc.constantFrom(
    '2026-11-26T17:30:00Z',
    '2026-11-26T17:30:00.123456+00:00',
    '2026-02-30T10:00:00Z',
    '2026-11-26T24:00:00Z',
    '2026-11-26 17:30:00Z',
    '2026-11-26T17:30:00',
  ),
  fc.constant(`urn:asap:agent:${'a'.repeat(241)}`),
  fc.constant({}),
  fc.constant([]),
  fc.dictionary(fc.constantFrom('percent', 'a', '__proto__'), fc.integer()),
);

/** A valid object with some fields replaced, removed or added. */
function mutated(base: Record<string, unknown>, extraKeys: string[]): fc.Arbitrary<Record<string, unknown>> {
  const keys = [...Object.keys(base), ...extraKeys];
  return fc
    .array(fc.tuple(fc.constantFrom(...keys), anyValue, fc.boolean()), { maxLength: 4 })
    .map((edits) => {
      const copy: Record<string, unknown> = JSON.parse(JSON.stringify(base));
      for (const [k, v, remove] of edits) {
        if (remove) delete copy[k];
        else copy[k] = v;
      }
      return copy;
    });
}

describe('fast path: never more lenient than the schemas', () => {
  it('quickEnvelope(x) implies the envelope schema accepts x', () => {
    fc.assert(
      fc.property(mutated(rawEnvelope(), ['extra', '__proto__', 'constructor']), (env) => {
        if (quickEnvelope(env)) expect(EnvelopeSchema.safeParse(env).success).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });

  for (const type of Object.keys(QUICK_PAYLOADS) as PayloadTypeName[]) {
    it(`the ${type} check implies the ${type} schema accepts the payload`, () => {
      const check = QUICK_PAYLOADS[type]!;
      const base = PAYLOADS[type].full as unknown as Record<string, unknown>;
      fc.assert(
        fc.property(mutated(base, ['extra', 'percent', 'timeout_seconds']), (payload) => {
          if (check(payload)) expect(PAYLOAD_SCHEMAS[type].safeParse(payload).success).toBe(true);
        }),
        { numRuns: 2000 },
      );
    });
  }

  it('nested TaskRequest config is held to the schema too', () => {
    const base = PAYLOADS.TaskRequest.full as unknown as Record<string, unknown>;
    const config = base.config as Record<string, unknown>;
    fc.assert(
      fc.property(mutated(config, ['extra']), (cfg) => {
        const payload = { ...base, config: cfg };
        if (QUICK_PAYLOADS.TaskRequest!(payload)) {
          expect(PAYLOAD_SCHEMAS.TaskRequest.safeParse(payload).success).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('fast path: taken for ordinary traffic', () => {
  it('accepts a plain envelope and the full payloads it models', () => {
    expect(quickEnvelope(rawEnvelope())).toBe(true);
    for (const type of Object.keys(QUICK_PAYLOADS) as PayloadTypeName[]) {
      const payload = PAYLOADS[type].minimal as unknown as Record<string, unknown>;
      expect(QUICK_PAYLOADS[type]!(payload), type).toBe(true);
    }
  });

  it('leaves unusual but valid input to the schema, which accepts it', () => {
    const lateInMonth = rawEnvelope({ timestamp: '2026-01-31T10:00:00Z' });
    expect(quickEnvelope(lateInMonth)).toBe(false);
    expect(validateEnvelope(lateInMonth).ok).toBe(true);
  });

  it('returns the input itself when nothing needs filling, and never writes into it', () => {
    const env = rawEnvelope();
    const r = validateEnvelope(env);
    expect(r.ok && r.envelope).toBe(env);
    const bare = rawEnvelope({ id: undefined, timestamp: null });
    const filled = validateEnvelope(bare);
    expect(filled.ok && filled.envelope.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(bare.id).toBeUndefined();
    expect(bare.timestamp).toBeNull();
  });
});
