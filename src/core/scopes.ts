/**
 * OAuth2 scopes of ASAP operations, named as the reference names them
 * (`asap-protocol` src/asap/auth/scopes.py): `asap:read` to query,
 * `asap:execute` to have work done, `asap:admin` to manage the agent. A
 * principal that carries `scopes` (a JWT principal does) is checked per
 * envelope by the dispatcher; one without (static token, custom verifiers) is not.
 */
import type { Principal } from './identity.js';

/** Query the agent: state queries and resource reads. */
export const SCOPE_READ = 'asap:read';
/** Have the agent act: tasks, messages, cancels, restores, tool calls, and anything else. */
export const SCOPE_EXECUTE = 'asap:execute';
/**
 * Manage the agent. As in the reference, a scope is held only when named: `asap:admin`
 * does not stand in for the other two.
 */
export const SCOPE_ADMIN = 'asap:admin';

/** Every scope this implementation knows, for the manifest's `auth.oauth2.scopes`. */
export const ASAP_SCOPES: readonly string[] = [SCOPE_READ, SCOPE_EXECUTE, SCOPE_ADMIN];

/** The refusal's message and `data.error` (the reference's `ERROR_INSUFFICIENT_SCOPE`). */
export const INSUFFICIENT_SCOPE = 'Insufficient scope';

/** Payload types (normalised, see `normalizePayloadType`) that only read; the rest change state. */
const READ_ONLY = new Set(['statequery', 'mcpresourcefetch']);

/**
 * The scope an envelope of this payload type needs. `type` is the normalised
 * spelling (`statequery`). Unknown and custom types need `asap:execute`: a handler
 * may do anything.
 */
export function scopeFor(type: string): string {
  return READ_ONLY.has(type) ? SCOPE_READ : SCOPE_EXECUTE;
}

/**
 * A token's scopes: the `scope` claim (RFC 8693/9068: space-separated string; the
 * reference also takes an array) and the `scp` claim (array or string, as Okta and
 * Entra ID issue it), deduplicated. Anything else counts as none.
 */
export function parseScopes(...claims: unknown[]): string[] {
  const out = new Set<string>();
  for (const claim of claims) {
    const parts = typeof claim === 'string' ? claim.split(/\s+/) : Array.isArray(claim) ? claim : [];
    for (const p of parts) if (typeof p === 'string' && p !== '') out.add(p);
  }
  return [...out];
}

/**
 * @internal The first scope a principal lacks to send an envelope of payload type `type`
 * (normalised): one of its `requiredScopes`, then the type's own. Undefined when nothing is
 * missing, or when the principal carries no `scopes` array (it is then not scope-checked).
 */
export function missingScope(principal: unknown, type: string): string | undefined {
  if (typeof principal !== 'object' || principal === null) return undefined;
  const { scopes, requiredScopes } = principal as Principal;
  if (!Array.isArray(scopes)) return undefined;
  if (Array.isArray(requiredScopes)) {
    for (const s of requiredScopes) if (!scopes.includes(s)) return s;
  }
  const needed = scopeFor(type);
  return scopes.includes(needed) ? undefined : needed;
}
