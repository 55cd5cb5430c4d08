import type { Envelope } from '../protocol/envelope.js';

/** What a push target is: one live connection, as the WebSocket binding holds it. */
export interface PushTarget {
  readonly id: number;
  push(envelope: Envelope<object>): Promise<void>;
}

/**
 * Where pushes to an agent URN go. The server indexes each connection under
 * the URNs it may speak for and asks the adapter to deliver; the local
 * adapter knows this process's connections, a shared one (Redis) also
 * reaches connections on other nodes.
 */
export interface PushAdapter {
  /** The connection now speaks as `urn`. */
  add(urn: string, target: PushTarget): void;
  /** The connection closed: forget it under every URN. */
  remove(urns: readonly string[], target: PushTarget): void;
  /** Connections of `urn` this adapter can reach from here. */
  targets(urn: string): PushTarget[];
  /**
   * Pushes to every connection of `urn`. Resolves with how many took it (wrote
   * it, or acknowledged it when it requires an ack); rejects with the first
   * failure when there were connections and none took it.
   */
  push(urn: string, envelope: Envelope<object>): Promise<number>;
}

/** The in-process adapter: a map from URN to its connections. */
export class LocalPushAdapter implements PushAdapter {
  private readonly byUrn = new Map<string, Set<PushTarget>>();

  add(urn: string, target: PushTarget): void {
    let set = this.byUrn.get(urn);
    if (set === undefined) {
      set = new Set();
      this.byUrn.set(urn, set);
    }
    set.add(target);
  }

  remove(urns: readonly string[], target: PushTarget): void {
    for (const urn of urns) {
      const set = this.byUrn.get(urn);
      set?.delete(target);
      if (set?.size === 0) this.byUrn.delete(urn);
    }
  }

  targets(urn: string): PushTarget[] {
    return [...(this.byUrn.get(urn) ?? [])];
  }

  async push(urn: string, envelope: Envelope<object>): Promise<number> {
    const results = await Promise.allSettled(this.targets(urn).map((t) => t.push(envelope)));
    let reached = 0;
    for (const r of results) if (r.status === 'fulfilled') reached++;
    if (reached === 0 && results.length > 0) throw (results[0] as PromiseRejectedResult).reason;
    return reached;
  }
}
