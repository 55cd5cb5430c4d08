export * from './client/index.js';
export * from './core/index.js';
export * from './protocol/index.js';
export * from './server/auth.js';
export { Connection, type ConnectionInfo } from './server/connection.js';
export { buildManifest, type ManifestInit } from './server/manifest.js';
export * from './server/server.js';
