import { Emitter } from '../core/emitter.js';
import { systemTimers, type Timer, type Timers } from '../core/timers.js';
import type { Envelope } from '../protocol/envelope.js';
import { ConnectionError } from '../protocol/errors.js';
import { WebSocketTransport, type WebSocketTransportOptions } from './websocket-transport.js';

export interface ConnectionPoolOptions {
  /** Most connections per target (default 10). */
  maxPerTarget?: number;
  /** Connections idle longer than this are closed (default 60 s). */
  idleTimeoutMs?: number;
  /** Options for every transport the pool opens. */
  transport?: WebSocketTransportOptions;
  /** Clock and timers of the idle sweep (default: the transports' own, else the system's). */
  timers?: Timers;
}

interface Member {
  transport: WebSocketTransport;
  lastUsed: number;
}

export interface PoolEvents {
  message: (envelope: Envelope<object>, transport: WebSocketTransport) => void;
  transport: (transport: WebSocketTransport) => void;
}

/** The pool key of a URL: scheme, host, port and path. */
export function poolKey(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname}`;
}

/**
 * WebSocket connections reused per target; requests go to the least busy one,
 * a new connection opens only while every existing one is busy, idle ones (no
 * request started or ended for the idle timeout) close, dead ones are replaced.
 */
export class ConnectionPool extends Emitter<PoolEvents> {
  private readonly targets = new Map<string, Member[]>();
  private readonly keys = new Map<string, string>();
  private readonly max: number;
  private readonly idleMs: number;
  private readonly timers: Timers;
  private idleTimer: Timer | undefined;
  private closed = false;

  constructor(private readonly opts: ConnectionPoolOptions = {}) {
    super();
    this.timers = opts.timers ?? opts.transport?.timers ?? systemTimers;
    this.max = opts.maxPerTarget ?? 10;
    this.idleMs = opts.idleTimeoutMs ?? 60_000;
  }

  /** Connections open or opening, per target. */
  size(url?: string): number {
    if (url !== undefined) return this.targets.get(poolKey(url))?.length ?? 0;
    let n = 0;
    for (const members of this.targets.values()) n += members.length;
    return n;
  }

  /** A transport for `url`: the least busy live one, or a new one while under the limit. */
  acquire(url: string): WebSocketTransport {
    if (this.closed) throw new ConnectionError('Pool is closed');
    let key = this.keys.get(url);
    if (key === undefined) {
      // Parsing a URL costs more than the rest of acquire(): remember each spelling's key.
      key = poolKey(url);
      if (this.keys.size < 256) this.keys.set(url, key);
    }
    let members = this.targets.get(key);
    if (members === undefined) {
      members = [];
      this.targets.set(key, members);
    }
    let best: Member | undefined;
    for (let i = members.length - 1; i >= 0; i--) {
      const m = members[i]!;
      if (m.transport.state === 'closed') {
        members.splice(i, 1);
        continue;
      }
      if (best === undefined || m.transport.inFlight < best.transport.inFlight) best = m;
    }
    if (best === undefined || (best.transport.inFlight > 0 && members.length < this.max)) {
      const transport = new WebSocketTransport(url, this.opts.transport);
      transport.onMessage((env) => this.emit('message', env, transport));
      best = { transport, lastUsed: this.timers.now() };
      members.push(best);
      this.emit('transport', transport);
      this.ensureIdleSweep();
    }
    best.lastUsed = this.timers.now();
    return best.transport;
  }

  private ensureIdleSweep(): void {
    if (this.idleTimer !== undefined) return;
    this.idleTimer = this.timers.setInterval(() => this.sweepIdle(), Math.max(10, this.idleMs / 2));
  }

  private sweepIdle(): void {
    const now = this.timers.now();
    for (const [key, members] of this.targets) {
      for (let i = members.length - 1; i >= 0; i--) {
        const m = members[i]!;
        if (m.transport.state === 'closed') {
          members.splice(i, 1);
        } else if (
          m.transport.inFlight === 0 &&
          now - Math.max(m.lastUsed, m.transport.lastActivity) >= this.idleMs
        ) {
          members.splice(i, 1);
          void m.transport.close(1000, 'Idle');
        }
      }
      if (members.length === 0) this.targets.delete(key);
    }
    if (this.targets.size === 0 && this.idleTimer !== undefined) {
      this.idleTimer.cancel();
      this.idleTimer = undefined;
    }
  }

  /** Closes every connection. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    this.idleTimer?.cancel();
    this.idleTimer = undefined;
    const all = [...this.targets.values()].flat();
    this.targets.clear();
    await Promise.all(all.map((m) => m.transport.close()));
  }
}
