import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import {
  buildSchemas,
  renderSchema,
  SCHEMAS_DIR,
  snakeCase,
  writeSchemas,
} from '../../scripts/export-schemas.js';
import { PAYLOAD_TYPES, PAYLOADS, rawEnvelope, SERVER_MANIFEST } from './fixtures.js';

function listSchemaFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.split('\\').join('/'))
    .sort();
}

describe('schemas/ (npm run schemas)', () => {
  const built = buildSchemas();

  it('builds the envelope, manifest, health and one schema per payload type', () => {
    expect(Object.keys(built).sort()).toEqual(
      [
        'envelope.schema.json',
        'health.schema.json',
        'manifest.schema.json',
        ...PAYLOAD_TYPES.map((t) => `payloads/${snakeCase(t)}.schema.json`),
      ].sort(),
    );
  });

  it.each([
    ['TaskRequest', 'task_request'],
    ['McpToolCall', 'mcp_tool_call'],
    ['McpResourceData', 'mcp_resource_data'],
    ['MessageAck', 'message_ack'],
  ])('names the %s file %s', (name, snake) => {
    expect(snakeCase(name)).toBe(snake);
  });

  it('has committed files equal to what the script produces now (run `npm run schemas` if not)', () => {
    expect(listSchemaFiles(SCHEMAS_DIR)).toEqual(Object.keys(built).sort());
    for (const [rel, schema] of Object.entries(built)) {
      expect(readFileSync(join(SCHEMAS_DIR, rel), 'utf8'), rel).toBe(renderSchema(schema));
    }
  });

  it('writes every schema and removes stale ones', () => {
    const dir = mkdtempSync(join(tmpdir(), 'asap-schemas-'));
    try {
      writeFileSync(join(dir, 'old.schema.json'), '{}');
      writeFileSync(join(dir, 'notes.txt'), 'kept');
      const written = writeSchemas(dir);
      expect(written).toHaveLength(Object.keys(built).length);
      expect(listSchemaFiles(dir)).toEqual(Object.keys(built).sort());
      expect(readFileSync(join(dir, 'notes.txt'), 'utf8')).toBe('kept');
      expect(readFileSync(join(dir, 'envelope.schema.json'), 'utf8')).toBe(
        renderSchema(built['envelope.schema.json'] ?? {}),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('emits JSON objects as open objects and timestamps as date-time', () => {
    const text = renderSchema(built['envelope.schema.json'] ?? {});
    const envelope = JSON.parse(text) as {
      properties: Record<string, { anyOf?: Record<string, unknown>[] } & Record<string, unknown>>;
    };
    expect(envelope.properties['payload']).toEqual({ type: 'object', additionalProperties: true });
    expect(envelope.properties['timestamp']?.anyOf?.[0]).toMatchObject({
      type: 'string',
      format: 'date-time',
    });
  });

  describe('the exported schemas validate like the zod schemas', () => {
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats.default(ajv);
    const compile = (rel: string) => ajv.compile(built[rel] ?? {});

    it('accepts valid envelopes and rejects invalid ones', () => {
      const validate = compile('envelope.schema.json');
      expect(validate(rawEnvelope())).toBe(true);
      expect(validate(rawEnvelope({ extra: 1 }))).toBe(false);
      expect(validate(rawEnvelope({ sender: `urn:asap:agent:${'a'.repeat(242)}` }))).toBe(false);
      expect(validate(rawEnvelope({ timestamp: '2026-11-26T17:30:00' }))).toBe(false);
    });

    it.each(PAYLOAD_TYPES)('accepts %s payloads and rejects unknown fields', (type) => {
      const validate = compile(`payloads/${snakeCase(type)}.schema.json`);
      expect(validate(PAYLOADS[type].minimal)).toBe(true);
      expect(validate(PAYLOADS[type].full)).toBe(true);
      expect(validate({ ...PAYLOADS[type].full, surprise: 1 })).toBe(false);
    });

    it('accepts the server manifest', () => {
      expect(compile('manifest.schema.json')(SERVER_MANIFEST)).toBe(true);
      expect(compile('manifest.schema.json')({ ...SERVER_MANIFEST, version: 'one' })).toBe(false);
    });

    it('accepts a health report', () => {
      const validate = compile('health.schema.json');
      const health = {
        status: 'healthy',
        agent_id: 'urn:asap:agent:a',
        version: '1.0.0',
        asap_version: '0.1',
        uptime_seconds: 3,
        load: { active_tasks: 0, queue_depth: 0 },
      };
      expect(validate(health)).toBe(true);
      expect(validate({ ...health, status: 'degraded' })).toBe(false);
    });
  });
});
