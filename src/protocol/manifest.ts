import * as z from 'zod';
import type { ValidationIssue } from './errors.js';
import { AgentUrn } from './payloads.js';
import { jsonObject, opt, toValidationIssues } from './schema-util.js';

export const Skill = z.strictObject({
  id: z.string(),
  description: z.string(),
  input_schema: opt(jsonObject),
  output_schema: opt(jsonObject),
});

export const Capability = z.strictObject({
  asap_version: z.string().optional(),
  skills: z.array(Skill).optional(),
  state_persistence: z.boolean().optional(),
  streaming: z.boolean().optional(),
  mcp_tools: z.array(z.string()).optional(),
  hardware: opt(jsonObject),
  inference: opt(jsonObject),
});

export const Endpoint = z.strictObject({ asap: z.string(), events: opt(z.string()) });

export const AuthScheme = z.strictObject({ schemes: z.array(z.string()), oauth2: opt(jsonObject) });

export const Manifest = z.strictObject({
  id: AgentUrn,
  name: z.string(),
  version: z.string().regex(/^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)*$/, { message: 'version must be semver' }),
  description: z.string(),
  capabilities: Capability,
  endpoints: Endpoint,
  supported_versions: z.array(z.string()).min(1).optional(),
  auth: opt(AuthScheme),
  signature: opt(z.string()),
  sla: opt(jsonObject),
  verification: opt(jsonObject),
  ttl_seconds: z.int().min(1).optional(),
});

export const Health = z.strictObject({
  status: z.enum(['healthy', 'unhealthy']),
  agent_id: z.string(),
  version: z.string(),
  asap_version: z.string(),
  uptime_seconds: z.number().min(0),
  load: z.strictObject({ active_tasks: z.int().min(0), queue_depth: z.int().min(0) }),
});

export type Skill = z.infer<typeof Skill>;
export type Capability = z.infer<typeof Capability>;
export type Endpoint = z.infer<typeof Endpoint>;
export type AuthScheme = z.infer<typeof AuthScheme>;
export type Manifest = z.infer<typeof Manifest>;
export type Health = z.infer<typeof Health>;

export type ParseResult<T> = { ok: true; value: T } | { ok: false; issues: ValidationIssue[] };

export function validateManifest(input: unknown): ParseResult<Manifest> {
  const r = Manifest.safeParse(input);
  return r.success ? { ok: true, value: r.data } : { ok: false, issues: toValidationIssues(r.error, input) };
}

export function validateHealth(input: unknown): ParseResult<Health> {
  const r = Health.safeParse(input);
  return r.success ? { ok: true, value: r.data } : { ok: false, issues: toValidationIssues(r.error, input) };
}
