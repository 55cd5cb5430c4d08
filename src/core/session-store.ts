import { ulid } from 'ulid';
import { type Clock, systemClock } from './clock.js';

/** One push kept for a session (asap-wire.md §12): its sequence number and the envelope as sent. */
export interface SessionEntry {
  /** Per-session sequence number, from 1, one more for every push. */
  seq: number;
  /** The pushed envelope, as JSON text (replayed as is). */
  envelope: string;
  /** The envelope's id, so that a resumed connection can track the acks it still needs. */
  envelopeId: string;
}

/**
 * What a resume can replay: the kept pushes after `last_seq`, in order; or `expired` when
 * the session is gone (unknown, expired, closed) or cannot replay without a gap.
 */
export interface AppendResult {
  seq: number;
  /** False when the session already held this envelope (nothing was added). */
  fresh: boolean;
}

export type SessionReplay = { expired: false; entries: SessionEntry[] } | { expired: true };

/**
 * Where resumable sessions (asap-wire.md §12) live: the pushes sent to each
 * session, kept until the client says it has them or the session expires. A
 * session belongs to one caller identity (§10) and is attached to the
 * connections that opened or resumed it; once none is left, it expires after
 * the disconnect window. Every method may answer with a promise, so a shared
 * store (Redis: a list per session, INCR for the seq, EXPIRE for the window)
 * lets a client resume on any node.
 *
 * Every successful `open` or `attach` is paired with exactly one `detach` (when
 * that connection goes), so a connection that resumed before the server saw the
 * old one close keeps its session alive when the old one is finally detached.
 */
export interface SessionStore {
  /** A new session owned by `callerId`, attached to the connection asking. Its id is unguessable. */
  open(callerId: string): { sessionId: string } | Promise<{ sessionId: string }>;
  /**
   * Keeps a push to the session (attached or not) and returns its seq: monotonic per
   * session, from 1. Idempotent by envelope id: appending an envelope the session already
   * holds returns its seq with `fresh: false` and notifies nobody (the same push may reach a
   * session through two nodes). Undefined when the session is gone.
   */
  append(
    sessionId: string,
    envelopeJson: string,
    envelopeId: string,
  ): AppendResult | undefined | Promise<AppendResult | undefined>;
  /**
   * Calls `listener` with every entry appended from now on (fresh ones only), from whichever
   * node appended it: the connection that holds the session writes them. Returns the remover.
   */
  subscribe(sessionId: string, listener: (entry: SessionEntry) => void): () => void;
  /**
   * The kept pushes with seq > `lastSeq`, in order; pushes up to `lastSeq` are delivered and
   * may be forgotten. `expired` when the session is gone, when pushes after `lastSeq` were
   * already dropped (a gap), or when `lastSeq` is not a seq this session could have sent.
   */
  since(sessionId: string, lastSeq: number): SessionReplay | Promise<SessionReplay>;
  /** One connection of the session went away; with none left, the disconnect window starts. */
  detach(sessionId: string): void | Promise<void>;
  /**
   * Attaches a resuming connection. False when the session is unknown or expired, or
   * belongs to another caller (the client then gets a new session).
   */
  attach(sessionId: string, callerId: string): boolean | Promise<boolean>;
  /** Forgets the session and its pushes. */
  close(sessionId: string): void | Promise<void>;
  /**
   * Records that the session's client speaks for `urn`, so that the connection resuming it (on
   * any node) takes pushes to that URN before it sends anything. No-op for an unknown session.
   */
  addUrn(sessionId: string, urn: string): void | Promise<void>;
  /** The URNs recorded for the session (none when it is unknown). */
  urns(sessionId: string): readonly string[] | Promise<readonly string[]>;
}

export interface MemorySessionStoreOptions {
  /** Most pushes kept per session (default 1000); past it the oldest are dropped. */
  maxEntriesPerSession?: number;
  /** Most bytes (UTF-8) of pushes kept per session (default 1 MiB); past it the oldest are dropped. */
  maxBytesPerSession?: number;
  /** How long a session with no connection is kept (default 2 min, asap-wire.md §12). */
  disconnectWindowMs?: number;
  /**
   * Most sessions kept (default 10,000). Past it, opening one drops the one detached
   * longest ago; when every session is attached, the oldest one.
   */
  maxSessions?: number;
  /**
   * Most sessions one caller keeps (default 100): past it, its own oldest goes, so no caller can
   * push other callers' sessions out of `maxSessions`.
   */
  maxSessionsPerCaller?: number;
  clock?: Clock;
}

interface SessionRecord {
  readonly id: string;
  readonly caller: string;
  /** Kept pushes, oldest first, from `head` on. */
  entries: SessionEntry[];
  head: number;
  /** UTF-8 bytes of the kept pushes. */
  bytes: number;
  nextSeq: number;
  /** Connections holding it now. */
  attached: number;
  /** clock.now() when the last connection went (meaningful while `attached` is 0). */
  detachedAt: number;
  /** Envelope ids appended and still kept, to their seq (append is idempotent by id). */
  ids: Map<string, number>;
  listeners: Set<(entry: SessionEntry) => void>;
  /** The agent URNs its client speaks for. */
  urns: Set<string>;
}

/**
 * The in-process {@link SessionStore}: a client resumes on the same process. Bounded
 * per session (count and bytes of pushes) and in sessions; expiry is lazy (checked on
 * access, swept when a session opens), so it needs no timer.
 */
export class MemorySessionStore implements SessionStore {
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  private readonly windowMs: number;
  private readonly maxSessions: number;
  private readonly maxPerCaller: number;
  /** Each caller's sessions, oldest first. */
  private readonly byCaller = new Map<string, Set<string>>();
  private readonly clock: Clock;
  /** Every live session, in the order they opened. */
  private readonly sessions = new Map<string, SessionRecord>();
  /** Sessions with no connection, in the order their last one went (which is expiry order). */
  private readonly detached = new Map<string, SessionRecord>();

  constructor(opts: MemorySessionStoreOptions = {}) {
    this.maxEntries = opts.maxEntriesPerSession ?? 1000;
    this.maxBytes = opts.maxBytesPerSession ?? 1024 * 1024;
    this.windowMs = opts.disconnectWindowMs ?? 120_000;
    this.maxSessions = Math.max(1, opts.maxSessions ?? 10_000);
    this.maxPerCaller = Math.max(1, opts.maxSessionsPerCaller ?? 100);
    this.clock = opts.clock ?? systemClock;
  }

  /** Sessions held now (expired ones may count until they are swept). */
  get size(): number {
    return this.sessions.size;
  }

  open(callerId: string): { sessionId: string } {
    this.purge(this.clock.now());
    const own = this.byCaller.get(callerId);
    while (own !== undefined && own.size >= this.maxPerCaller) this.drop(this.sessions.get(first(own)!)!);
    while (this.sessions.size >= this.maxSessions) {
      const victim = first(this.detached) ?? first(this.sessions)!;
      this.drop(victim);
    }
    const rec: SessionRecord = {
      id: ulid(),
      caller: callerId,
      entries: [],
      head: 0,
      bytes: 0,
      nextSeq: 1,
      attached: 1,
      detachedAt: 0,
      ids: new Map(),
      listeners: new Set(),
      urns: new Set(),
    };
    this.sessions.set(rec.id, rec);
    let mine = this.byCaller.get(callerId);
    if (mine === undefined) {
      mine = new Set();
      this.byCaller.set(callerId, mine);
    }
    mine.add(rec.id);
    return { sessionId: rec.id };
  }

  append(sessionId: string, envelopeJson: string, envelopeId: string): AppendResult | undefined {
    const rec = this.get(sessionId);
    if (rec === undefined) return undefined;
    const known = rec.ids.get(envelopeId);
    if (known !== undefined) return { seq: known, fresh: false };
    const seq = rec.nextSeq++;
    const entry: SessionEntry = { seq, envelope: envelopeJson, envelopeId };
    rec.entries.push(entry);
    rec.ids.set(envelopeId, seq);
    rec.bytes += utf8Length(envelopeJson);
    while (rec.entries.length - rec.head > this.maxEntries || rec.bytes > this.maxBytes) this.shift(rec);
    for (const listener of rec.listeners) listener(entry);
    return { seq, fresh: true };
  }

  subscribe(sessionId: string, listener: (entry: SessionEntry) => void): () => void {
    const rec = this.sessions.get(sessionId);
    if (rec === undefined) return () => {};
    rec.listeners.add(listener);
    return () => rec.listeners.delete(listener);
  }

  since(sessionId: string, lastSeq: number): SessionReplay {
    const rec = this.get(sessionId);
    if (rec === undefined || !Number.isInteger(lastSeq) || lastSeq < 0 || lastSeq >= rec.nextSeq) {
      return { expired: true };
    }
    const oldest = rec.head < rec.entries.length ? rec.entries[rec.head]!.seq : rec.nextSeq;
    if (lastSeq + 1 < oldest) return { expired: true };
    // The client has everything up to lastSeq: a later resume never asks for it again.
    while (rec.head < rec.entries.length && rec.entries[rec.head]!.seq <= lastSeq) this.shift(rec);
    return { expired: false, entries: rec.entries.slice(rec.head) };
  }

  detach(sessionId: string): void {
    const rec = this.get(sessionId);
    // A detach without a matching open/attach must not restart (and so extend) the window.
    if (rec === undefined || rec.attached === 0) return;
    if (--rec.attached > 0) return;
    rec.detachedAt = this.clock.now();
    this.detached.set(rec.id, rec);
  }

  attach(sessionId: string, callerId: string): boolean {
    const rec = this.get(sessionId);
    if (rec === undefined || rec.caller !== callerId) return false;
    rec.attached++;
    this.detached.delete(rec.id);
    return true;
  }

  close(sessionId: string): void {
    const rec = this.sessions.get(sessionId);
    if (rec !== undefined) this.drop(rec);
  }

  addUrn(sessionId: string, urn: string): void {
    this.get(sessionId)?.urns.add(urn);
  }

  urns(sessionId: string): readonly string[] {
    return [...(this.get(sessionId)?.urns ?? [])];
  }

  /** The live session, or undefined (an expired one is dropped on the way). */
  private get(sessionId: string): SessionRecord | undefined {
    const rec = this.sessions.get(sessionId);
    if (rec === undefined) return undefined;
    if (rec.attached === 0 && this.clock.now() - rec.detachedAt >= this.windowMs) {
      this.drop(rec);
      return undefined;
    }
    return rec;
  }

  /** Drops every expired session: the detached ones are in expiry order, so it stops at the first live one. */
  private purge(now: number): void {
    for (const rec of this.detached.values()) {
      if (now - rec.detachedAt < this.windowMs) break;
      this.drop(rec);
    }
  }

  private drop(rec: SessionRecord): void {
    this.sessions.delete(rec.id);
    this.detached.delete(rec.id);
    const mine = this.byCaller.get(rec.caller);
    mine?.delete(rec.id);
    if (mine?.size === 0) this.byCaller.delete(rec.caller);
  }

  /** Drops a session's oldest kept push. */
  private shift(rec: SessionRecord): void {
    const entry = rec.entries[rec.head]!;
    rec.head++;
    rec.bytes -= utf8Length(entry.envelope);
    // Bounded with the entries; a late copy of a forgotten push is dropped by the client (by envelope id).
    rec.ids.delete(entry.envelopeId);
    if (rec.head === rec.entries.length) {
      rec.entries = [];
      rec.head = 0;
    } else if (rec.head > 64 && rec.head * 2 > rec.entries.length) {
      rec.entries = rec.entries.slice(rec.head);
      rec.head = 0;
    }
  }
}

function first<V>(items: Map<string, V> | Set<V>): V | undefined {
  for (const v of items.values()) return v;
  return undefined;
}

/** Bytes of `s` in UTF-8, without encoding it. */
function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) {
      n += 1;
      continue;
    }
    n += 2;
    // A surrogate pair is 4 bytes for its 2 code units: count it once.
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
  }
  return n;
}
