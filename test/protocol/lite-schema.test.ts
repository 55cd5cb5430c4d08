/**
 * src/protocol/lite-schema.ts against zod: the protocol's schema modules evaluated a second time with
 * `zod` resolved to the lite module (what the browser bundle does) must give, for any input, the
 * same verdict, the same output value and the same issues as with zod, and validateEnvelope /
 * validateManifest / validateHealth the same answers.
 */
import fc from 'fast-check';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import * as realEnvelope from '../../src/protocol/envelope.js';
import * as lite from '../../src/protocol/lite-schema.js';
import * as realManifest from '../../src/protocol/manifest.js';
import * as realPayloads from '../../src/protocol/payloads.js';
import { toValidationIssues } from '../../src/protocol/schema-util.js';
import { PAYLOAD_TYPES, PAYLOADS, rawEnvelope, SERVER_MANIFEST } from './fixtures.js';

type Modules = {
  envelope: typeof realEnvelope;
  payloads: typeof realPayloads;
  manifest: typeof realManifest;
};
const real: Modules = { envelope: realEnvelope, payloads: realPayloads, manifest: realManifest };
let mini: Modules;

beforeAll(async () => {
  vi.resetModules();
  vi.doMock('zod', () => import('../../src/protocol/lite-schema.js'));
  mini = {
    envelope: await import('../../src/protocol/envelope.js'),
    payloads: await import('../../src/protocol/payloads.js'),
    manifest: await import('../../src/protocol/manifest.js'),
  };
  vi.doUnmock('zod');
  vi.resetModules();
});

interface Parser {
  safeParse(input: unknown): { success: boolean; data?: unknown; error?: { issues: object[] } };
}

/** What a parse answers, in the terms callers read: verdict, value, issues (as zod reports them and as peers read them). */
function outcome(schema: Parser, input: unknown) {
  const r = schema.safeParse(input);
  if (r.success) return { ok: true, data: r.data };
  const issues = (r.error!.issues as Record<string, unknown>[]).map(
    ({ code, path, message, keys, params, expected, origin, format, minimum, maximum, values }) => ({
      code,
      path,
      message,
      keys,
      params,
      expected,
      origin,
      format,
      minimum,
      maximum,
      values,
    }),
  );
  return { ok: false, issues, wire: toValidationIssues(r.error as never, input) };
}

/** A text that tells apart everything a caller could see: absent and undefined fields, key order, NaN. */
function canon(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => {
    if (x === undefined) return '(undefined)';
    if (typeof x === 'number' && !Number.isFinite(x)) return `(${x})`;
    if (x instanceof Date) return `(Date ${x.getTime()})`;
    return x;
  });
}

function same(name: string, a: Parser, b: Parser, input: unknown): void {
  const x = outcome(a, input);
  const y = outcome(b, input);
  expect(canon(y), name).toBe(canon(x));
}

// Values that are sometimes right and often subtly wrong for the protocol's fields.
const leaf = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -3, max: 300 }),
  fc.double({ min: -3, max: 300 }),
  fc.constantFrom(0.5, 1.5, 2.5, 99.5, 101, 1e300, -1e300, 2 ** 53, -(2 ** 53), Number.NaN, Infinity),
  fc.constantFrom('', 'x', 'completed', 'working', 'received', 'progress', 'user', 'healthy', 'bogus'),
  fc.constantFrom(
    'urn:asap:agent:a',
    'urn:asap:agent:A',
    'urn:asap:agent:a:b',
    `urn:asap:agent:${'a'.repeat(250)}`,
  ),
  fc.constantFrom('1.2.3', '1.2', '1.2.3-rc.1', '😀', '😀😀', '\ud800'),
  fc.constantFrom(
    '2026-11-26T17:30:00Z',
    '2026-11-26T17:30:00.123456+00:00',
    '2024-02-29T10:00:00Z',
    '2026-02-29T10:00:00Z',
    '2026-11-26T24:00:00Z',
    '2026-11-26 17:30:00Z',
    '2026-11-26T17:30:00',
  ),
  fc.string({ maxLength: 4 }),
  // Objects are made afresh for each input (an edit may write into one).
  fc.constant(0).map(() => new Date(0)),
  fc.constant(0).map(() => Object.create(null) as object),
  fc.constant(0).map(() => []),
  fc.constant(0).map(() => ['a', 1]),
  fc.constant(0).map(() => ({})),
  fc.array(fc.constantFrom('a', 'b'), { maxLength: 300, minLength: 257 }),
);
const anyValue = fc.oneof(
  { weight: 6, arbitrary: leaf },
  fc.dictionary(fc.constantFrom('percent', 'a', '__proto__', 'task_id'), leaf, { maxKeys: 3 }),
);

type Obj = Record<string, unknown>;

/** `base` with some fields (nested ones too) replaced, removed or added. */
function mutated(base: Obj, extraKeys: string[] = ['extra', '__proto__', 'constructor']): fc.Arbitrary<Obj> {
  const paths: string[][] = [];
  const walk = (o: Obj, prefix: string[]): void => {
    for (const [k, v] of Object.entries(o)) {
      paths.push([...prefix, k]);
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) walk(v as Obj, [...prefix, k]);
    }
    for (const k of extraKeys) paths.push([...prefix, k]);
  };
  walk(base, []);
  return fc
    .array(fc.tuple(fc.constantFrom(...paths), anyValue, fc.boolean()), { maxLength: 4 })
    .map((edits) => {
      const copy = structuredClone(base);
      for (const [path, v, remove] of edits) {
        let o: Obj = copy;
        for (const k of path.slice(0, -1)) {
          const next = o[k];
          if (next === null || typeof next !== 'object' || Array.isArray(next)) break;
          o = next as Obj;
        }
        const last = path[path.length - 1]!;
        if (remove) delete o[last];
        else if (last === '__proto__')
          Object.defineProperty(o, last, { value: v, enumerable: true, writable: true, configurable: true });
        else o[last] = v;
      }
      return copy;
    });
}

describe('lite schemas give the same answers as zod', () => {
  for (const type of PAYLOAD_TYPES) {
    it(`${type}`, () => {
      const a = real.payloads.PAYLOAD_SCHEMAS[type] as unknown as Parser;
      const b = mini.payloads.PAYLOAD_SCHEMAS[type] as unknown as Parser;
      expect(b).not.toBe(a);
      for (const base of [PAYLOADS[type].minimal, PAYLOADS[type].full]) same(type, a, b, base);
      fc.assert(
        fc.property(
          fc.oneof(
            mutated(PAYLOADS[type].full as unknown as Obj),
            mutated(PAYLOADS[type].minimal as unknown as Obj),
            anyValue,
          ),
          (input) => same(type, a, b, input),
        ),
        { numRuns: 1500 },
      );
    });
  }

  it('the envelope', () => {
    const a = real.envelope.EnvelopeSchema as unknown as Parser;
    const b = mini.envelope.EnvelopeSchema as unknown as Parser;
    fc.assert(
      fc.property(fc.oneof(mutated(rawEnvelope() as unknown as Obj), anyValue), (input) =>
        same('envelope', a, b, input),
      ),
      { numRuns: 3000 },
    );
  });

  it('the manifest and the health answer', () => {
    const pairs: [string, Parser, Parser, Obj][] = [
      [
        'Manifest',
        real.manifest.Manifest as never,
        mini.manifest.Manifest as never,
        SERVER_MANIFEST as never,
      ],
      [
        'Health',
        real.manifest.Health as never,
        mini.manifest.Health as never,
        {
          status: 'healthy',
          agent_id: 'urn:asap:agent:a',
          version: '1.0.0',
          asap_version: '0.1',
          uptime_seconds: 3,
          load: { active_tasks: 0, queue_depth: 0 },
        },
      ],
    ];
    for (const [name, a, b, base] of pairs) {
      same(name, a, b, base);
      fc.assert(
        fc.property(fc.oneof(mutated(base), anyValue), (input) => same(name, a, b, input)),
        { numRuns: 2000 },
      );
    }
  });

  it('validateEnvelope, payloads included', () => {
    const envelopes = fc.constantFrom(...PAYLOAD_TYPES).chain((type) =>
      mutated(
        rawEnvelope({
          payload_type: type,
          payload: PAYLOADS[type].full as never,
          correlation_id: 'req-1',
        }) as unknown as Obj,
      ),
    );
    fc.assert(
      fc.property(envelopes, (input) => {
        const x = real.envelope.validateEnvelope(input);
        const y = mini.envelope.validateEnvelope(input);
        if (x.ok && y.ok) {
          // ids and timestamps a validation fills differ between two calls; everything else is equal.
          expect(canon({ ...y.envelope, id: 0, timestamp: 0 })).toBe(
            canon({ ...x.envelope, id: 0, timestamp: 0 }),
          );
        } else {
          expect(canon(y)).toBe(canon(x));
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('a refinement sees the value as parsed so far, as zod lets it', () => {
    const a = real.payloads.McpToolResult as unknown as Parser;
    const b = mini.payloads.McpToolResult as unknown as Parser;
    for (const input of [
      { request_id: 'r', success: true, result: [1], extra: 1 },
      { request_id: 'r', success: false, result: 'no', error: 'e' },
      { request_id: 1, success: false },
      { success: 'yes' },
    ]) {
      same('McpToolResult', a, b, input);
    }
  });
});

describe('lite schema details', () => {
  it('uses the date-time pattern zod uses', async () => {
    const z = await vi.importActual<typeof import('zod')>('zod');
    const pattern = (z.iso.datetime({ offset: true })._zod.def as { pattern: RegExp }).pattern;
    expect(lite.DATETIME.source).toBe(pattern.source);
  });

  it('messages name the type received, as zod says it', () => {
    const s = lite.strictObject({
      a: lite.string(),
      b: lite.enum(['x']),
      c: lite.array(lite.string()).min(1),
    });
    const r = s.safeParse({ a: new Date(0), b: 'y', c: [], d: 1, e: 2 });
    expect(r.success).toBe(false);
    expect(!r.success && r.error.issues.map((i) => i.message)).toEqual([
      'Invalid input: expected string, received Date',
      'Invalid input: expected "x"',
      'Too small: expected array to have >=1 items',
      'Unrecognized keys: "d", "e"',
    ]);
    const bare = lite.custom(() => false).safeParse(1);
    expect(!bare.success && bare.error.issues).toEqual([
      { code: 'custom', path: [], message: 'Invalid input' },
    ]);
    const re = lite.string().regex(/^a$/).safeParse('b');
    expect(!re.success && re.error.issues[0]!.message).toBe('Invalid string: must match pattern /^a$/');
  });
});
