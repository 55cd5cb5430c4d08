import type WebSocket from 'ws';
import { type Corkable, holdWrite } from '../core/cork.js';
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
  /** The TCP socket under the WebSocket (from the upgrade response), corked while a tick writes. */
  private wire: Corkable | undefined;
  /** Sends held in `wire` since it was corked this tick (0: not corked). */
  private corked = 0;
  private readonly uncork = (): void => {
    this.corked = 0;
    this.wire?.uncork();
  };

  constructor(private readonly ws: WebSocket) {
    ws.once('upgrade', (res: { socket: Corkable }) => {
      this.wire = res.socket;
    });
    ws.on('open', () => this.onopen?.(undefined));
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      this.onmessage?.({ data: isBinary ? data : data.toString() });
    });
    ws.on('close', (code: number, reason: Buffer) => this.onclose?.({ code, reason: reason.toString() }));
    ws.on('error', (error: Error) => {
      // What happened, in words (the HTTP status of a refused upgrade, a refused connection, a TLS
      // failure), with ws's own error as the cause: the close that follows says only 1006.
      const described = new Error(describeWsError(error, ws.url), { cause: error });
      this.onerror?.({ error: described, message: described.message });
    });
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
  /**
   * Sends one message. The requests a tick sends (many, when the caller pipelines) leave in one
   * write, one syscall, instead of one each: the socket is corked until the end of the tick.
   */
  send(data: string): void {
    if (this.wire !== undefined && holdWrite(this.wire, this.corked++)) process.nextTick(this.uncork);
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

/** The fields Node's network and TLS errors carry besides the message. */
interface SystemError extends Error {
  code?: string;
  address?: string;
  port?: number;
  hostname?: string;
}

/** `host:port` of a URL, for messages (the default port of its scheme when it names none). */
function hostPort(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === 'wss:' || u.protocol === 'https:' ? '443' : '80');
    return `${u.hostname}:${port}`;
  } catch {
    return url;
  }
}

/** Node's TLS failures: OpenSSL errors (EPROTO, ERR_SSL_*), certificate checks (ERR_TLS_*, *CERT*). */
function isTlsError(error: SystemError): boolean {
  const code = error.code ?? '';
  return (
    code === 'EPROTO' ||
    code.startsWith('ERR_SSL_') ||
    code.startsWith('ERR_TLS_') ||
    /CERT|SELF_SIGNED/.test(code) ||
    error.message.includes('SSL routines')
  );
}

/**
 * @internal One line saying why a `ws` connection failed: `HTTP 404 on WebSocket upgrade to URL`,
 * `connection refused (HOST:PORT)`, `host not found (HOST)`, `TLS error: REASON (URL)`; else ws's message.
 */
export function describeWsError(error: SystemError, url: string): string {
  const status = /^Unexpected server response: (\d+)$/.exec(error.message);
  if (status !== null) return `HTTP ${status[1]} on WebSocket upgrade to ${url}`;
  const where =
    error.address !== undefined && error.port !== undefined
      ? `${error.address}:${error.port}`
      : hostPort(url);
  switch (error.code) {
    case 'ECONNREFUSED':
      return `connection refused (${where})`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `host not found (${error.hostname ?? hostPort(url)})`;
    case 'ETIMEDOUT':
      return `connection timed out (${where})`;
    case 'ECONNRESET':
      return `connection reset (${where})`;
  }
  if (isTlsError(error)) {
    // OpenSSL's "…:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:…" → its reason.
    const reason = /SSL routines:[^:]*:([^:]+)/.exec(error.message)?.[1] ?? error.message;
    return `TLS error: ${reason.trim()} (${url})`;
  }
  return error.message;
}

/** @internal A factory over the `ws` constructor given: the token goes in the Authorization header. */
export function wsWebSocketFactory(Ctor: WsConstructor): WebSocketFactory {
  return (url, opts) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
    return new NodeWebSocket(new Ctor(url, opts.protocols, { headers, perMessageDeflate: false }));
  };
}
