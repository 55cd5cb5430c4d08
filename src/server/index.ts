export { staticToken, type TokenVerifier } from './auth.js';
export type { ConnectionInfo } from './connection.js';
export { Connection } from './connection.js';
export { buildManifest, type ManifestInit } from './manifest.js';
export * from './server.js';
