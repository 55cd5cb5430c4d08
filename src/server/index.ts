export type { Corkable } from '../core/cork.js';
export {
  ASAP_SCOPES,
  INSUFFICIENT_SCOPE,
  parseScopes,
  SCOPE_ADMIN,
  SCOPE_EXECUTE,
  SCOPE_READ,
  scopeFor,
} from '../core/scopes.js';
export { type Authenticator, type AuthRequest, staticToken, type TokenVerifier } from './auth.js';
export type { ConnectionInfo, ConnectionLimits } from './connection.js';
export { Connection } from './connection.js';
export { Drain } from './drain.js';
export type {
  ConnectionEvent,
  DisconnectEvent,
  ServerErrorContext,
  ServerErrorSource,
  ServerEventName,
  ServerEvents,
} from './events.js';
export {
  type JwtAuthenticator,
  type JwtAuthenticatorOptions,
  type JwtPrincipal,
  JwtRefusedError,
  jwtAuthenticator,
} from './jwt.js';
export { buildManifest, type EndpointBase, type ManifestInit } from './manifest.js';
export {
  type MetricsSources,
  type PrometheusMetrics,
  type PrometheusMetricsOptions,
  prometheusMetrics,
} from './metrics.js';
export { LocalPushAdapter, type PushAdapter, type PushTarget } from './push-adapter.js';
export * from './server.js';
export type { ServerStore } from './store.js';
