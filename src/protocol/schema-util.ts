import * as z from 'zod';
import type { ValidationIssue } from './errors.js';

/** A JSON object, checked without copying it (payload data is passed through untouched). */
export type JsonObject = Record<string, unknown>;

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// `params.expected` marks its issues as type errors, so an absent field still reads as `missing`.
export const jsonObject = z.custom<JsonObject>(isJsonObject, {
  message: 'Input should be a valid object',
  params: { expected: 'object' },
});

/** Optional field that may also be null on the wire (pydantic's `Optional[X] = None`). */
export const opt = <T extends z.ZodType>(schema: T) => schema.nullish();

/** Turns zod issues into pydantic-shaped `{loc, msg, type}` entries, so Python peers read them as-is. */
export function toValidationIssues(
  error: z.core.$ZodError,
  input: unknown,
  prefix: readonly (string | number)[] = [],
): ValidationIssue[] {
  const out: ValidationIssue[] = [];
  for (const issue of error.issues) {
    const path = issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p));
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        out.push({
          loc: [...prefix, ...path, key],
          msg: 'Extra inputs are not permitted',
          type: 'extra_forbidden',
        });
      }
      continue;
    }
    if (isTypeIssue(issue) && valueAt(input, path) === undefined) {
      out.push({ loc: [...prefix, ...path], msg: 'Field required', type: 'missing' });
      continue;
    }
    out.push({ loc: [...prefix, ...path], msg: issue.message, type: issue.code });
  }
  return out;
}

/** An issue about the value's type or enum member (not a refinement), so an absent value means a missing field. */
function isTypeIssue(issue: z.core.$ZodIssue): boolean {
  if (issue.code === 'invalid_type' || issue.code === 'invalid_value') return true;
  return issue.code === 'custom' && issue.params?.['expected'] === 'object';
}

function valueAt(root: unknown, path: (string | number)[]): unknown {
  let cur = root;
  for (const key of path) {
    if (typeof cur !== 'object' || cur === null || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string | number, unknown>)[key];
  }
  return cur;
}
