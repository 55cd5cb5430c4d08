/**
 * What authentication may say about a caller. A token verifier can return
 * any value (it is handed to handlers as `ctx.principal`); these fields are
 * the ones the engine reads.
 */
export interface Principal {
  /** Who the caller is: per-caller state (dedupe, nonces) is kept apart per id. `sub` is read too. */
  id?: string;
  sub?: string;
  /**
   * The agent URNs this caller may speak for. When present, an envelope with
   * another `sender` is refused, and its WebSocket connection is reachable by
   * push only under these URNs (asap-wire.md §10 "Sender binding").
   */
  agents?: readonly string[];
  /**
   * The OAuth2 scopes this caller holds. When present (an array), every envelope is checked:
   * one whose payload type needs a scope not listed here (see `scopeFor` in scopes.ts) is
   * refused with -32602 and `data.required_scope`. Absent: no scope check.
   */
  scopes?: readonly string[];
  /** Scopes every envelope from this caller needs on top of its payload type's (only read with `scopes`). */
  requiredScopes?: readonly string[];
  /** When the credential ends, in ms since the epoch: a WebSocket is closed with 4401 `Token expired` then. */
  expiresAt?: number;
}

/**
 * @internal The id of a principal: a string principal is its own id; else `id`, then `sub`; '' when it
 * names none.
 */
export function principalId(principal: unknown): string {
  if (typeof principal === 'string') return principal;
  if (typeof principal !== 'object' || principal === null) return '';
  const { id, sub } = principal as Principal;
  if (typeof id === 'string') return id;
  return typeof sub === 'string' ? sub : '';
}

/**
 * @internal The URNs a principal may speak for, or undefined when it does not say (then any sender is
 * taken as is).
 */
export function boundAgents(principal: unknown): ReadonlySet<string> | undefined {
  if (typeof principal !== 'object' || principal === null) return undefined;
  const { agents } = principal as Principal;
  if (!Array.isArray(agents)) return undefined;
  return new Set(agents.filter((a): a is string => typeof a === 'string'));
}
