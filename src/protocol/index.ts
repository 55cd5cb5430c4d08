export * from './envelope.js';
export * from './errors.js';
export * from './jsonrpc.js';
export * from './manifest.js';
export * from './payloads.js';
export { isJsonObject, type JsonObject } from './schema-util.js';
