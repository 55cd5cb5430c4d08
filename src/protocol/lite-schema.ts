/**
 * The part of zod's schema API that the protocol's schemas are written with (payloads.ts,
 * envelope.ts, manifest.ts, schema-util.ts), in a few kilobytes: the browser bundle is built with
 * `zod` resolved to this module (scripts/build-browser.mjs), so a page validates every envelope by
 * the same schema definitions as the server without carrying zod. Node keeps zod itself.
 *
 * It follows zod 4 rule for rule for the schemas it supports — the same verdict, the same output
 * value and the same issues (code, path, English message, keys, params) for any input; the
 * conformance test (test/protocol/lite-schema.test.ts) holds it to that. Anything else (other zod
 * APIs, async refinements, transforms) is absent on purpose.
 */

export interface LiteIssue {
  code: string;
  path: PropertyKey[];
  message: string;
  [field: string]: unknown;
}

/** What `safeParse` answers: zod's result, its error reduced to the issues. */
export type LiteResult =
  | { success: true; data: unknown }
  | { success: false; error: { issues: LiteIssue[] } };

interface Params {
  message?: string;
  params?: Record<string, unknown>;
}

/** A value being parsed and the issues raised so far (an issue with `continue: true` does not stop the checks). */
interface Payload {
  value: unknown;
  issues: LiteIssue[];
}

interface Check {
  /** Runs even after a type error (zod's length checks run on any value with a `length`). */
  always?: boolean;
  run(p: Payload): void;
}

// ---- messages (zod's English locale, for the issues these schemas raise) ----

function typeName(v: unknown): string {
  if (typeof v === 'number') return Number.isNaN(v) ? 'NaN' : Number.isFinite(v) ? 'number' : String(v);
  if (typeof v !== 'object') return typeof v;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return Object.getPrototypeOf(v) !== Object.prototype && 'constructor' in v && v.constructor
    ? (v.constructor as { name: string }).name
    : 'object';
}

const quote = (v: unknown): string => (typeof v === 'string' ? `"${v}"` : `${v}`);
const SIZES: Record<string, string> = { string: 'characters', array: 'items' };

function bound(iss: LiteIssue, word: string, cmp: string, limit: unknown): string {
  const unit = SIZES[iss.origin as string];
  return `Too ${word}: expected ${iss.origin} to ${unit ? 'have' : 'be'} ${cmp}${limit}${unit ? ` ${unit}` : ''}`;
}

function englishMessage(iss: LiteIssue, input: unknown): string {
  switch (iss.code) {
    case 'invalid_type':
      return `Invalid input: expected ${iss.expected}, received ${typeName(input)}`;
    case 'invalid_value': {
      const values = iss.values as unknown[];
      return values.length === 1
        ? `Invalid input: expected ${quote(values[0])}`
        : `Invalid option: expected one of ${values.map(quote).join('|')}`;
    }
    case 'too_big':
      return bound(iss, 'big', '<=', iss.maximum);
    case 'too_small':
      return bound(iss, 'small', '>=', iss.minimum);
    case 'invalid_format':
      return iss.format === 'regex'
        ? `Invalid string: must match pattern ${iss.pattern}`
        : 'Invalid ISO datetime';
    case 'unrecognized_keys': {
      const keys = iss.keys as string[];
      return `Unrecognized key${keys.length > 1 ? 's' : ''}: ${keys.map(quote).join(', ')}`;
    }
    default:
      return 'Invalid input';
  }
}

/** Records an issue about `input`, with the schema's own message if it has one. */
function raise(p: Payload, input: unknown, iss: Omit<LiteIssue, 'message' | 'path'>, params?: Params): void {
  const full = { ...iss, path: [] } as unknown as LiteIssue;
  full.message = params?.message ?? englishMessage(full, input);
  p.issues.push(full);
}

const aborted = (issues: LiteIssue[], from = 0): boolean => {
  for (let i = from; i < issues.length; i++) if (issues[i]!.continue !== true) return true;
  return false;
};

// ---- schemas ----

export class LiteSchema {
  constructor(
    /** The type's own parse: checks the value's type and builds the output value. */
    readonly parseType: (p: Payload) => void,
    readonly checks: readonly Check[] = [],
    /** Absence allowed (optional, nullish): an absent key is skipped, and not emitted. */
    readonly opt = false,
  ) {}

  run(value: unknown): Payload {
    const p: Payload = { value, issues: [] };
    this.parseType(p);
    let stop = aborted(p.issues);
    for (const check of this.checks) {
      if (check.always ? p.issues.some((i) => i.continue === false) : stop) continue;
      const n = p.issues.length;
      check.run(p);
      stop ||= aborted(p.issues, n);
    }
    return p;
  }

  safeParse(input: unknown): LiteResult {
    const { value, issues } = this.run(input);
    if (issues.length === 0) return { success: true, data: value };
    for (const iss of issues) delete iss.continue;
    return { success: false, error: { issues } };
  }

  /** This schema with one more check. */
  add(check: Check): LiteSchema {
    return new LiteSchema(this.parseType, [...this.checks, check], this.opt);
  }

  /** At least `n`: numbers by value, strings by length in code points, arrays by items. */
  min(n: number, params?: Params): LiteSchema {
    return this.add(this.parseType === parseNumber ? atLeast(n) : sized('too_small', n, params));
  }

  /** At most `n` (as {@link min}). */
  max(n: number, params?: Params): LiteSchema {
    return this.add(this.parseType === parseNumber ? atMost(n) : sized('too_big', n, params));
  }

  regex(pattern: RegExp, params?: Params): LiteSchema {
    return this.add(matches(pattern, 'regex', params));
  }

  superRefine(fn: (value: never, ctx: { addIssue(issue: Partial<LiteIssue>): void }) => void): LiteSchema {
    return this.add({
      run: (p) =>
        fn(p.value as never, {
          addIssue: (iss) =>
            p.issues.push({
              code: 'custom',
              message: 'Invalid input',
              continue: true,
              ...iss,
              path: [...(iss.path ?? [])],
            }),
        }),
    });
  }

  optional(): LiteSchema {
    return new LiteSchema(
      (p) => {
        if (p.value !== undefined) runInto(this, p);
      },
      [],
      true,
    );
  }

  nullish(): LiteSchema {
    return new LiteSchema(
      (p) => {
        if (p.value != null) runInto(this, p);
      },
      [],
      true,
    );
  }
}

/** Runs `schema` on `p.value` in place (what a wrapper does with its inner schema). */
function runInto(schema: LiteSchema, p: Payload): void {
  const r = schema.run(p.value);
  p.value = r.value;
  p.issues.push(...r.issues);
}

function sized(code: 'too_small' | 'too_big', n: number, params?: Params): Check {
  return {
    always: true,
    run(p) {
      const v = p.value as string | unknown[] | null | undefined;
      if (v == null || v.length === undefined) return;
      const length = typeof v === 'string' ? [...v].length : v.length;
      if (code === 'too_small' ? length >= n : length <= n) return;
      const origin = typeof v === 'string' ? 'string' : Array.isArray(v) ? 'array' : 'unknown';
      const limit = code === 'too_small' ? { minimum: n } : { maximum: n };
      raise(p, v, { origin, code, ...limit, inclusive: true, continue: true }, params);
    },
  };
}

const atLeast = (n: number): Check => ({
  run(p) {
    if ((p.value as number) >= n) return;
    raise(p, p.value, { origin: 'number', code: 'too_small', minimum: n, inclusive: true, continue: true });
  },
});

const atMost = (n: number): Check => ({
  run(p) {
    if ((p.value as number) <= n) return;
    raise(p, p.value, { origin: 'number', code: 'too_big', maximum: n, inclusive: true, continue: true });
  },
});

function matches(pattern: RegExp, format: string, params?: Params): Check {
  return {
    run(p) {
      pattern.lastIndex = 0;
      if (pattern.test(p.value as string)) return;
      raise(
        p,
        p.value,
        { origin: 'string', code: 'invalid_format', format, pattern: pattern.toString(), continue: true },
        params,
      );
    },
  };
}

function primitive(expected: string, ok: (v: unknown) => boolean): (p: Payload) => void {
  return (p) => {
    if (!ok(p.value)) raise(p, p.value, { expected, code: 'invalid_type' });
  };
}

const parseNumber = primitive('number', (v) => typeof v === 'number' && Number.isFinite(v));

export const string = (): LiteSchema => new LiteSchema(primitive('string', (v) => typeof v === 'string'));
export const number = (): LiteSchema => new LiteSchema(parseNumber);
export const boolean = (): LiteSchema => new LiteSchema(primitive('boolean', (v) => typeof v === 'boolean'));

/** A safe integer (zod's `z.int()`). */
export const int = (): LiteSchema =>
  new LiteSchema(parseNumber, [
    {
      run(p) {
        const v = p.value as number;
        if (!Number.isInteger(v)) {
          raise(p, v, { expected: 'int', format: 'safeint', code: 'invalid_type', continue: false });
        } else if (!Number.isSafeInteger(v)) {
          const limit =
            v > 0
              ? { code: 'too_big', maximum: Number.MAX_SAFE_INTEGER }
              : { code: 'too_small', minimum: Number.MIN_SAFE_INTEGER };
          raise(p, v, {
            ...limit,
            note: 'Integers must be within the safe integer range.',
            origin: 'int',
            inclusive: true,
            continue: true,
          });
        }
      },
    },
  ]);

/** zod's RFC 3339 date-time with an offset (`z.iso.datetime({ offset: true })`). */
export const DATETIME =
  /^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))T(?:(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:Z|([+-](?:[01]\d|2[0-3]):[0-5]\d)))$/;

export const iso = {
  datetime: (_opts: { offset: true }): LiteSchema => string().add(matches(DATETIME, 'datetime')),
};

function enum_(values: readonly string[]): LiteSchema {
  const set = new Set<unknown>(values);
  return new LiteSchema((p) => {
    if (!set.has(p.value)) raise(p, p.value, { code: 'invalid_value', values: [...values] });
  });
}

export { enum_ as enum };

/** A value accepted by `fn`. As in zod, its issue carries `params` and stops the checks of the schemas around it. */
export function custom(fn: (v: unknown) => boolean, params?: Params): LiteSchema {
  return new LiteSchema(() => {}, [
    {
      run(p) {
        if (fn(p.value)) return;
        raise(
          p,
          p.value,
          { code: 'custom', continue: false, ...(params?.params && { params: params.params }) },
          params,
        );
      },
    },
  ]);
}

export function array(element: LiteSchema): LiteSchema {
  return new LiteSchema((p) => {
    const input = p.value;
    if (!Array.isArray(input)) return raise(p, input, { expected: 'array', code: 'invalid_type' });
    const out = new Array(input.length);
    p.value = out;
    for (let i = 0; i < input.length; i++) {
      const r = element.run(input[i]);
      for (const iss of r.issues) p.issues.push(prefixed(i, iss));
      out[i] = r.value;
    }
  });
}

function prefixed(key: PropertyKey, iss: LiteIssue): LiteIssue {
  iss.path.unshift(key);
  return iss;
}

function object(shape: Record<string, LiteSchema>, strict: boolean): LiteSchema {
  const keys = Object.keys(shape);
  return new LiteSchema((p) => {
    const input = p.value;
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      return raise(p, input, { expected: 'object', code: 'invalid_type' });
    }
    const out: Record<string, unknown> = {};
    p.value = out;
    const obj = input as Record<string, unknown>;
    for (const key of keys) {
      const field = shape[key]!;
      const present = key in obj;
      if (!present && field.opt) continue;
      const r = field.run(obj[key]);
      for (const iss of r.issues) p.issues.push(prefixed(key, iss));
      if (!present) continue;
      out[key] = r.value;
    }
    const unknown: string[] = [];
    for (const key in obj) {
      if (Object.hasOwn(shape, key)) continue;
      if (strict) unknown.push(key);
      else if (key !== '__proto__') out[key] = obj[key];
    }
    if (unknown.length > 0) raise(p, input, { code: 'unrecognized_keys', keys: unknown, continue: true });
  });
}

export const strictObject = (shape: Record<string, LiteSchema>): LiteSchema => object(shape, true);
export const looseObject = (shape: Record<string, LiteSchema>): LiteSchema => object(shape, false);
