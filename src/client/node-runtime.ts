import WebSocket from 'ws';
import { wsWebSocketFactory } from './node-websocket.js';
import type { WebSocketFactory } from './runtime.js';

/**
 * `ws` as the client's WebSocket: the token goes in the Authorization header. Transports given no
 * factory already use `ws` in Node; pass this one explicitly to wrap it, or on Node < 20.16.
 */
export const nodeWebSocketFactory: WebSocketFactory = wsWebSocketFactory(WebSocket);
