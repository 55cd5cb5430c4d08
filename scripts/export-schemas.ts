/**
 * Writes the JSON Schemas of the protocol layer to `schemas/` (shipped in the package):
 * envelope, manifest, health and one file per payload type. Run with `npm run schemas`.
 * test/protocol/schemas-export.test.ts fails when the committed files drift from this output.
 */
import { mkdirSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { EnvelopeSchema } from '../src/protocol/envelope.js';
import { Health, Manifest } from '../src/protocol/manifest.js';
import { PAYLOAD_SCHEMAS } from '../src/protocol/payloads.js';
import { jsonObject } from '../src/protocol/schema-util.js';

export const SCHEMAS_DIR = fileURLToPath(new URL('../schemas/', import.meta.url));

/** `McpToolCall` → `mcp_tool_call`, the reference's file naming. */
export function snakeCase(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

function toSchema(schema: z.ZodType, title: string): object {
  const json = z.toJSONSchema(schema, {
    io: 'input',
    // `jsonObject` is a z.custom (checked without copying); every other unrepresentable type is a mistake.
    unrepresentable: (ctx) =>
      ctx.zodSchema === jsonObject ? { type: 'object', additionalProperties: true } : 'throw',
  });
  const { $schema, ...rest } = json;
  return { $schema, title, ...rest };
}

/** Every schema file, keyed by its path relative to `schemas/`. */
export function buildSchemas(): Record<string, object> {
  const out: Record<string, object> = {
    'envelope.schema.json': toSchema(EnvelopeSchema, 'Envelope'),
    'manifest.schema.json': toSchema(Manifest, 'Manifest'),
    'health.schema.json': toSchema(Health, 'Health'),
  };
  for (const [name, schema] of Object.entries(PAYLOAD_SCHEMAS)) {
    out[`payloads/${snakeCase(name)}.schema.json`] = toSchema(schema, name);
  }
  return out;
}

/** The exact text written for one schema. */
export function renderSchema(schema: object): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}

/** Writes every schema under `dir` and removes stale `*.schema.json` files; returns the paths written. */
export function writeSchemas(dir: string = SCHEMAS_DIR): string[] {
  const schemas = buildSchemas();
  for (const sub of ['', 'payloads']) {
    const folder = join(dir, sub);
    mkdirSync(folder, { recursive: true });
    for (const file of readdirSync(folder)) {
      const rel = sub === '' ? file : `${sub}/${file}`;
      if (file.endsWith('.schema.json') && !(rel in schemas)) rmSync(join(folder, file));
    }
  }
  const written: string[] = [];
  for (const [rel, schema] of Object.entries(schemas)) {
    const file = join(dir, rel);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, renderSchema(schema));
    written.push(file);
  }
  return written;
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  const written = writeSchemas();
  console.log(`Wrote ${written.length} schemas to ${SCHEMAS_DIR}`);
}
