/**
 * The little the client needs from its environment (the idea of vscode-jsonrpc's
 * `ral`): a WebSocket constructor. Nothing is installed on import: a transport
 * given no factory resolves the default the first time it needs one — `ws` in
 * Node (it can send an Authorization header, which the reference server needs),
 * else the global WebSocket (browsers).
 */
import { BEARER_PROTOCOL_PREFIX } from '../protocol/jsonrpc.js';
import { type WsConstructor, wsWebSocketFactory } from './node-websocket.js';

/**
 * A bearer token, or a function that returns one (a token *provider*): called for every new
 * connection (and every HTTP request), so an expired token is replaced by a fresh one.
 */
export type TokenSource = string | (() => string | Promise<string>);

/** The token of a source now (undefined when there is none). */
export async function tokenOf(source: TokenSource | undefined): Promise<string | undefined> {
  return typeof source === 'function' ? await source() : source;
}

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

interface NodeModuleBuiltin {
  createRequire(from: string): (id: string) => unknown;
}
interface NodeProcess {
  getBuiltinModule?(id: string): unknown;
}

/** `ws` once loaded (null: not resolvable from here, e.g. the browser bundle copied elsewhere). */
let wsDefault: WebSocketFactory | null | undefined;

/**
 * `ws` where the runtime is Node. Loaded synchronously on first use (`process.getBuiltinModule`, Node
 * ≥ 20.16) rather than imported: a static import would put `ws` in the browser graph, and an install on
 * import would be a global side effect. Bundlers leave this alone: no `node:` specifier, no `require`.
 */
function nodeDefault(): WebSocketFactory | undefined {
  const proc = (globalThis as { process?: NodeProcess }).process;
  if (typeof proc?.getBuiltinModule !== 'function') return undefined;
  if (wsDefault === undefined) {
    const { createRequire } = proc.getBuiltinModule('module') as NodeModuleBuiltin;
    try {
      wsDefault = wsWebSocketFactory(createRequire(import.meta.url)('ws') as WsConstructor);
    } catch {
      wsDefault = null;
    }
  }
  return wsDefault ?? undefined;
}

/**
 * @internal What a transport given no `webSocketFactory` uses: `ws` in Node, else the global
 * WebSocket. Resolved on each call, so nothing is decided (or installed) at import time.
 */
export function defaultWebSocketFactory(): WebSocketFactory {
  const node = nodeDefault();
  if (node !== undefined) return node;
  const Global = (globalThis as { WebSocket?: new (url: string, protocols?: string[]) => WebSocketLike })
    .WebSocket;
  if (Global === undefined) {
    throw new Error('No WebSocket implementation: pass webSocketFactory (in Node: nodeWebSocketFactory)');
  }
  return browserWebSocketFactory(Global);
}
