/**
 * The little the client needs from its environment (the idea of vscode-jsonrpc's
 * `ral`): a WebSocket constructor. Browsers use the global one; the Node entry
 * installs `ws`, which can also send an Authorization header.
 */

/** The subset of the WHATWG WebSocket that the transport uses; `ws` and browsers both provide it. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface WebSocketConnectOptions {
  /** Subprotocols to offer (always includes `asap.v1`). */
  protocols: string[];
  /** Bearer token; factories that can set headers send it as `Authorization`. */
  token?: string;
  headers?: Record<string, string>;
}

/** Opens a WebSocket. The returned object must not be open yet (events are attached right after). */
export type WebSocketFactory = (url: string, opts: WebSocketConnectOptions) => WebSocketLike;

import { BEARER_PROTOCOL_PREFIX } from '../protocol/jsonrpc.js';

let installed: WebSocketFactory | undefined;

/** Sets the factory used when none is passed (the Node entry installs `ws`). */
export function setDefaultWebSocketFactory(factory: WebSocketFactory | undefined): void {
  installed = factory;
}

/** A factory for a WHATWG WebSocket constructor: the token, if any, travels as a subprotocol entry. */
export function browserWebSocketFactory(
  Ctor: new (url: string, protocols?: string[]) => WebSocketLike,
): WebSocketFactory {
  return (url, opts) => {
    const protocols =
      opts.token === undefined ? opts.protocols : [...opts.protocols, BEARER_PROTOCOL_PREFIX + opts.token];
    return new Ctor(url, protocols);
  };
}

export function defaultWebSocketFactory(): WebSocketFactory {
  if (installed !== undefined) return installed;
  const Global = (globalThis as { WebSocket?: new (url: string, protocols?: string[]) => WebSocketLike })
    .WebSocket;
  if (Global === undefined) {
    throw new Error('No WebSocket implementation: pass webSocketFactory, or import asap-ts/client in Node');
  }
  return browserWebSocketFactory(Global);
}
