import WebSocket from 'ws';
import { setDefaultWebSocketFactory, type WebSocketFactory, type WebSocketLike } from './runtime.js';

/** `ws` as the client's WebSocket: the token goes in the Authorization header. */
export const nodeWebSocketFactory: WebSocketFactory = (url, opts) => {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  return new WebSocket(url, opts.protocols, {
    headers,
    perMessageDeflate: false,
  }) as unknown as WebSocketLike;
};

setDefaultWebSocketFactory(nodeWebSocketFactory);
