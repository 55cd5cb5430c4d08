// Node entry of the client. It installs nothing on import: a transport given no factory picks `ws`
// in Node the first time it opens a socket (see runtime.ts).
export * from './client.js';
export * from './http-transport.js';
export { type ClientMetrics, type ClientMetricsOptions, clientMetrics } from './metrics.js';
export { nodeWebSocketFactory } from './node-runtime.js';
export * from './pool.js';
export {
  type ChannelEvents,
  type ChannelSink,
  ReconnectingChannel,
  type ReconnectingChannelOptions,
} from './reconnecting-channel.js';
export * from './retry.js';
export {
  browserWebSocketFactory,
  type TokenSource,
  type WebSocketConnectOptions,
  type WebSocketFactory,
  type WebSocketLike,
} from './runtime.js';
export { readSSE, type SSEEvent, SSEParser, type SSEParserOptions } from './sse.js';
export * from './websocket-transport.js';
