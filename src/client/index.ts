import './node-runtime.js';

export * from './client.js';
export * from './http-transport.js';
export { nodeWebSocketFactory } from './node-runtime.js';
export * from './pool.js';
export * from './runtime.js';
export * from './websocket-transport.js';
