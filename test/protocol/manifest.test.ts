import { describe, expect, it } from 'vitest';
import { type Health, validateHealth, validateManifest } from '../../src/protocol/index.js';
import { SERVER, SERVER_MANIFEST } from './fixtures.js';

const MINIMAL = {
  id: SERVER,
  name: 'Echo',
  version: '0.1.0',
  description: 'Echoes',
  capabilities: {},
  endpoints: { asap: 'http://127.0.0.1:8000/asap' },
};

function withField(
  base: Record<string, unknown>,
  path: (string | number)[],
  value: unknown,
): Record<string, unknown> {
  const copy = structuredClone(base);
  let cur: Record<string | number, unknown> = copy;
  for (const key of path.slice(0, -1)) cur = cur[key] as Record<string | number, unknown>;
  const last = path[path.length - 1] as string | number;
  if (value === undefined) delete cur[last];
  else cur[last] = value;
  return copy;
}

describe('validateManifest (§4, GET /.well-known/asap/manifest.json)', () => {
  it.each([
    { name: 'a minimal manifest', manifest: MINIMAL },
    { name: 'the server manifest', manifest: SERVER_MANIFEST },
    {
      name: 'a manifest with every optional field',
      manifest: {
        ...SERVER_MANIFEST,
        capabilities: {
          ...SERVER_MANIFEST.capabilities,
          hardware: { class: 'cloud' },
          inference: { modes: ['cloud'] },
        },
        auth: { schemes: ['bearer', 'oauth2'], oauth2: { token_url: 'https://auth.example.com/token' } },
        signature: 'sig',
        sla: { availability: '99.5%' },
        verification: { status: 'pending' },
      },
    },
    {
      name: 'null optional fields',
      manifest: { ...MINIMAL, auth: null, signature: null, sla: null, verification: null },
    },
    { name: 'a pre-release version', manifest: { ...MINIMAL, version: '1.0.0-beta.1' } },
    { name: 'a version with build metadata', manifest: { ...MINIMAL, version: '1.0.0-rc.1+build.5' } },
    { name: 'a sub-agent URN', manifest: { ...MINIMAL, id: 'urn:asap:agent:research:worker-1' } },
  ])('accepts $name', ({ manifest }) => {
    const r = validateManifest(manifest);
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    expect(r.value).toEqual(manifest);
  });

  it.each<{
    name: string;
    path: (string | number)[];
    value: unknown;
    loc: (string | number)[];
    type: string;
  }>([
    { name: 'a missing name', path: ['name'], value: undefined, loc: ['name'], type: 'missing' },
    {
      name: 'missing capabilities',
      path: ['capabilities'],
      value: undefined,
      loc: ['capabilities'],
      type: 'missing',
    },
    {
      name: 'missing endpoints.asap',
      path: ['endpoints', 'asap'],
      value: undefined,
      loc: ['endpoints', 'asap'],
      type: 'missing',
    },
    {
      name: 'an id that is not a URN',
      path: ['id'],
      value: 'research-agent',
      loc: ['id'],
      type: 'invalid_format',
    },
    { name: 'a two-part version', path: ['version'], value: '1.0', loc: ['version'], type: 'invalid_format' },
    {
      name: 'a v-prefixed version',
      path: ['version'],
      value: 'v1.0.0',
      loc: ['version'],
      type: 'invalid_format',
    },
    { name: 'a numeric version', path: ['version'], value: 1, loc: ['version'], type: 'invalid_type' },
    {
      name: 'an unknown top-level field',
      path: ['homepage'],
      value: 'x',
      loc: ['homepage'],
      type: 'extra_forbidden',
    },
    {
      name: 'an unknown capability',
      path: ['capabilities', 'telepathy'],
      value: true,
      loc: ['capabilities', 'telepathy'],
      type: 'extra_forbidden',
    },
    {
      name: 'a skill without description',
      path: ['capabilities', 'skills', 0, 'description'],
      value: undefined,
      loc: ['capabilities', 'skills', 0, 'description'],
      type: 'missing',
    },
    {
      name: 'a skill with an array input_schema',
      path: ['capabilities', 'skills', 1, 'input_schema'],
      value: [],
      loc: ['capabilities', 'skills', 1, 'input_schema'],
      type: 'custom',
    },
    {
      name: 'streaming as a string',
      path: ['capabilities', 'streaming'],
      value: 'yes',
      loc: ['capabilities', 'streaming'],
      type: 'invalid_type',
    },
    {
      name: 'empty supported_versions',
      path: ['supported_versions'],
      value: [],
      loc: ['supported_versions'],
      type: 'too_small',
    },
    { name: 'ttl_seconds 0', path: ['ttl_seconds'], value: 0, loc: ['ttl_seconds'], type: 'too_small' },
    {
      name: 'a fractional ttl_seconds',
      path: ['ttl_seconds'],
      value: 1.5,
      loc: ['ttl_seconds'],
      type: 'invalid_type',
    },
    {
      name: 'auth without schemes',
      path: ['auth', 'schemes'],
      value: undefined,
      loc: ['auth', 'schemes'],
      type: 'missing',
    },
    {
      name: 'auth.schemes as a string',
      path: ['auth', 'schemes'],
      value: 'bearer',
      loc: ['auth', 'schemes'],
      type: 'invalid_type',
    },
    {
      name: 'an unknown endpoint',
      path: ['endpoints', 'grpc'],
      value: 'x',
      loc: ['endpoints', 'grpc'],
      type: 'extra_forbidden',
    },
  ])('rejects $name', ({ path, value, loc, type }) => {
    const r = validateManifest(withField(SERVER_MANIFEST, path, value));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toEqual([{ loc, msg: expect.any(String), type }]);
  });

  it.each([null, 'manifest', [], 42])('rejects %j', (value) => {
    const r = validateManifest(value);
    expect(r.ok).toBe(false);
  });
});

describe('validateHealth (§4, GET /.well-known/asap/health)', () => {
  const healthy: Health = {
    status: 'healthy',
    agent_id: SERVER,
    version: '1.2.0',
    asap_version: '0.1',
    uptime_seconds: 12.5,
    load: { active_tasks: 2, queue_depth: 0 },
  };

  it.each([
    { name: 'a healthy agent', health: healthy },
    { name: 'a draining agent', health: { ...healthy, status: 'unhealthy' as const } },
    { name: 'zero uptime', health: { ...healthy, uptime_seconds: 0 } },
  ])('accepts $name', ({ health }) => {
    const r = validateHealth(health);
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    expect(r.value).toEqual(health);
  });

  it.each<{
    name: string;
    path: (string | number)[];
    value: unknown;
    loc: (string | number)[];
    type: string;
  }>([
    { name: 'status degraded', path: ['status'], value: 'degraded', loc: ['status'], type: 'invalid_value' },
    { name: 'a missing status', path: ['status'], value: undefined, loc: ['status'], type: 'missing' },
    {
      name: 'a negative uptime',
      path: ['uptime_seconds'],
      value: -1,
      loc: ['uptime_seconds'],
      type: 'too_small',
    },
    { name: 'a missing load', path: ['load'], value: undefined, loc: ['load'], type: 'missing' },
    {
      name: 'negative active_tasks',
      path: ['load', 'active_tasks'],
      value: -1,
      loc: ['load', 'active_tasks'],
      type: 'too_small',
    },
    {
      name: 'fractional queue_depth',
      path: ['load', 'queue_depth'],
      value: 0.5,
      loc: ['load', 'queue_depth'],
      type: 'invalid_type',
    },
    {
      name: 'an unknown load field',
      path: ['load', 'cpu'],
      value: 0.3,
      loc: ['load', 'cpu'],
      type: 'extra_forbidden',
    },
    { name: 'an unknown field', path: ['region'], value: 'eu', loc: ['region'], type: 'extra_forbidden' },
  ])('rejects $name', ({ path, value, loc, type }) => {
    const r = validateHealth(withField(healthy, path, value));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toEqual([{ loc, msg: expect.any(String), type }]);
  });
});
