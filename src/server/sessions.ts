import type { Logger } from '../core/logger.js';
import type { SessionEntry, SessionStore } from '../core/session-store.js';
import type { Timer, Timers } from '../core/timers.js';
import type { Envelope } from '../protocol/envelope.js';
import { ASAPError } from '../protocol/errors.js';
import { encodeNotification, METHOD_SESSION } from '../protocol/jsonrpc.js';
import { isJsonObject } from '../protocol/schema-util.js';
import type { PushAdapter, PushTarget } from './push-adapter.js';

/** What a session needs of the connection that holds it. */
export interface SessionHolder extends PushTarget {
  readonly callerId: string;
  readonly urns: readonly string[];
  readonly isOpen: boolean;
  /** Writes a frame (the `asap.session` answer). */
  send(text: string): unknown;
  /** Writes one kept push with its seq (and tracks its ack). */
  deliver(entry: SessionEntry, replayed?: boolean): void;
  /** The session now held, and the remover of its subscription. */
  bindSession(sessionId: string, unsubscribe: () => void): void;
  /** Speaks for these URNs too (those of the connection whose session it resumed). */
  adopt(urns: readonly string[]): void;
}

let nextParkedId = -1;

/** A session whose connection is gone: pushes to its URNs are kept for it until it resumes or expires. */
interface Parked {
  targets: PushTarget[];
  urns: readonly string[];
  timer: Timer;
}

/**
 * asap-wire.md §12 on the server: opening and resuming sessions, replaying
 * what a client missed, and keeping pushes for a session whose connection is
 * gone. Every push to a session goes through the store (append, then the
 * holder's subscription writes it), so it does not matter which node a push
 * or the resumed connection lands on.
 */
export class SessionBinding {
  private readonly parked = new Map<string, Parked>();

  constructor(
    private readonly store: SessionStore,
    private readonly pushes: PushAdapter,
    private readonly timers: Timers,
    private readonly logger: Logger,
    /** How long a session outlives its connection (as the store's window). */
    private readonly windowMs: number,
  ) {}

  /** `asap.resume` from a connection: open a session, or resume one and replay what it missed. */
  async resume(holder: SessionHolder, params: unknown): Promise<void> {
    const p = isJsonObject(params) ? params : {};
    const wanted = typeof p.session_id === 'string' && p.session_id !== '' ? p.session_id : undefined;
    const lastSeq = typeof p.last_seq === 'number' ? p.last_seq : 0;
    // Entries appended while the replay is read are held, then written after it, in seq order.
    let held: SessionEntry[] | undefined = [];
    const listen = (entry: SessionEntry) => {
      if (held !== undefined) held.push(entry);
      else holder.deliver(entry);
    };
    const flush = (after: number) => {
      const later = held ?? [];
      held = undefined;
      for (const entry of later) if (entry.seq > after) holder.deliver(entry);
    };
    try {
      if (wanted !== undefined && (await this.store.attach(wanted, holder.callerId))) {
        const unsubscribe = this.store.subscribe(wanted, listen);
        const replay = await this.store.since(wanted, lastSeq);
        if (!replay.expired && holder.isOpen) {
          // Pushes to the URNs the session's client speaks for now come here (whichever node it
          // spoke on before).
          holder.adopt([...(this.parked.get(wanted)?.urns ?? []), ...(await this.store.urns(wanted))]);
          this.unpark(wanted);
          holder.bindSession(wanted, unsubscribe);
          holder.send(sessionFrame(wanted, true));
          let last = lastSeq;
          for (const entry of replay.entries) {
            holder.deliver(entry, true);
            last = entry.seq;
          }
          flush(last);
          return;
        }
        unsubscribe();
        await this.store.close(wanted);
      }
      if (!holder.isOpen) return;
      const { sessionId } = await this.store.open(holder.callerId);
      holder.bindSession(sessionId, this.store.subscribe(sessionId, listen));
      holder.send(sessionFrame(sessionId, false));
      flush(0);
    } catch (err) {
      // The connection works on without a session (as for a client that never asked).
      this.logger.warn({ conn: holder.id, err: (err as Error).message }, 'session could not be opened');
    }
  }

  /** The connection holding `sessionId` now speaks as `urn`: recorded, for a resume on any node. */
  identified(sessionId: string, urn: string): void {
    void Promise.resolve(this.store.addUrn(sessionId, urn)).catch((err: unknown) =>
      this.logger.warn({ session: sessionId, err: (err as Error).message }, 'session URN not recorded'),
    );
  }

  /** A push to a connection that holds a session: kept in the session, written by its subscription. */
  async push(sessionId: string, envelope: Envelope<object>): Promise<void> {
    const appended = await this.store.append(sessionId, JSON.stringify(envelope), envelope.id);
    if (appended === undefined) throw ASAPError.invalidState('Session expired', { session_id: sessionId });
    // Another path (another node, a parked copy) kept it first: that one counts.
    if (!appended.fresh) throw ASAPError.invalidState('Push already kept for this session');
  }

  /** The connection holding `sessionId` closed: the session waits for a resume, keeping pushes to its URNs. */
  closed(holder: SessionHolder, sessionId: string): void {
    void Promise.resolve(this.store.detach(sessionId)).catch((err: unknown) =>
      this.logger.warn({ session: sessionId, err: (err as Error).message }, 'session detach failed'),
    );
    if (holder.urns.length === 0) return;
    const target: PushTarget = { id: nextParkedId--, push: (env) => this.push(sessionId, env) };
    for (const urn of holder.urns) this.pushes.add(urn, target);
    const timer = this.timers.setTimeout(() => this.unpark(sessionId), this.windowMs);
    this.unpark(sessionId);
    this.parked.set(sessionId, { targets: [target], urns: holder.urns, timer });
  }

  private unpark(sessionId: string): void {
    const p = this.parked.get(sessionId);
    if (p === undefined) return;
    this.parked.delete(sessionId);
    p.timer.cancel();
    for (const target of p.targets) this.pushes.remove(p.urns, target);
  }

  /** Stops every parked session's timer (server shutdown). */
  close(): void {
    for (const id of [...this.parked.keys()]) this.unpark(id);
  }
}

function sessionFrame(sessionId: string, resumed: boolean): string {
  return encodeNotification(METHOD_SESSION, { session_id: sessionId, resumed });
}
