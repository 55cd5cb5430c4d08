// Browser entry: the global WebSocket and fetch, no Node-only import. The protocol layer comes along
// so a page can build and check envelopes with the same package.
export * from '../protocol/index.js';
export * from './client.js';
export * from './http-transport.js';
export * from './pool.js';
export * from './retry.js';
export {
  browserWebSocketFactory,
  type WebSocketConnectOptions,
  type WebSocketFactory,
  type WebSocketLike,
} from './runtime.js';
export { readSSE, type SSEEvent, SSEParser, type SSEParserOptions } from './sse.js';
export * from './websocket-transport.js';
