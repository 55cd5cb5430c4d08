import type WebSocket from 'ws';
import type { WebSocketFactory, WebSocketLike } from './runtime.js';

/** The `ws` constructor, passed in: this file imports no `ws` code, so the browser graph stays free of it. */
export type WsConstructor = typeof WebSocket;

/**
 * `ws` behind the WHATWG surface the transport uses. ws's own `onmessage` wraps every frame in an
 * event object; its native events hand over the data directly, which is cheaper per message.
 */
class NodeWebSocket implements WebSocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(private readonly ws: WebSocket) {
    ws.on('open', () => this.onopen?.(undefined));
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      this.onmessage?.({ data: isBinary ? data : data.toString() });
    });
    ws.on('close', (code: number, reason: Buffer) => this.onclose?.({ code, reason: reason.toString() }));
    ws.on('error', (error: Error) => this.onerror?.({ error, message: error.message }));
  }

  get readyState(): number {
    return this.ws.readyState;
  }
  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }
  get protocol(): string {
    return this.ws.protocol;
  }
  get binaryType(): string {
    return this.ws.binaryType;
  }
  set binaryType(type: string) {
    this.ws.binaryType = type as WebSocket['binaryType'];
  }
  send(data: string): void {
    this.ws.send(data);
  }
  close(code?: number, reason?: string): void {
    this.ws.close(code, reason);
  }
  /** Drops the connection without a close handshake (a dead peer would never answer one). */
  terminate(): void {
    this.ws.terminate();
  }
}

/** @internal A factory over the `ws` constructor given: the token goes in the Authorization header. */
export function wsWebSocketFactory(Ctor: WsConstructor): WebSocketFactory {
  return (url, opts) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
    return new NodeWebSocket(new Ctor(url, opts.protocols, { headers, perMessageDeflate: false }));
  };
}
