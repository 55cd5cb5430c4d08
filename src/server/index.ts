export { type Authenticator, type AuthRequest, staticToken, type TokenVerifier } from './auth.js';
export type { ConnectionInfo, ConnectionLimits } from './connection.js';
export { Connection } from './connection.js';
export { Drain } from './drain.js';
export { buildManifest, type ManifestInit } from './manifest.js';
export { LocalPushAdapter, type PushAdapter, type PushTarget } from './push-adapter.js';
export * from './server.js';
