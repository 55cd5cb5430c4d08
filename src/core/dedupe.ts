import type { JsonRpcErrorObject } from '../protocol/errors.js';
import { type Clock, systemClock } from './clock.js';
import { type Logger, silentLogger } from './logger.js';

/** What processing an envelope produced, kept so a retransmission gets the same answer. */
export type Outcome =
  /** The reply envelope, as JSON text: encoded once, sent again as is, cheap to keep. */
  | { kind: 'result'; envelope: string }
  | { kind: 'error'; error: JsonRpcErrorObject }
  /** The envelope was a notification or produced nothing to send back. */
  | { kind: 'none' };

/**
 * The answer to a claim on (caller identity, envelope id), asap-wire.md §10:
 * - `new`: first sight; the claimant runs it, then calls `complete` (or `release` if it refused it);
 * - `pending`: another copy is running; `outcome` settles with its outcome, or with undefined
 *   when that copy was released unprocessed (claim again);
 * - `done`: processed; `outcome` is what it produced;
 * - `dropped`: processed, but a memory budget dropped its outcome before the window ended;
 * - `conflict`: the key was claimed by an envelope with other content (another fingerprint).
 */
export type Claim =
  | { state: 'new' }
  | { state: 'pending'; outcome: Promise<Outcome | undefined> }
  | { state: 'done'; outcome: Outcome }
  | { state: 'dropped' }
  | { state: 'conflict' };

/**
 * Where the dispatcher remembers the envelopes it accepted, per caller. The
 * claim is atomic: of several copies of one envelope (on one node or many),
 * exactly one gets `new`. Results may be promises, so a shared store fits.
 */
export interface DedupeStore {
  /** `fingerprint`: a 53-bit content hash (see `fingerprint()`); a shared store may keep it as text. */
  claim(key: string, fingerprint: number): Claim | Promise<Claim>;
  /** Records the outcome of a `new` claim; copies waiting on it get it. */
  complete(key: string, outcome: Outcome): void | Promise<void>;
  /** Gives a `new` claim back unprocessed (the envelope was refused before its handler ran). */
  release(key: string): void | Promise<void>;
}

/** Counters of the memory store, for logs and metrics. */
export interface DedupeStats {
  /** Envelopes remembered now (processed, within the window). */
  ids: number;
  /** Of those, how many still hold their outcome. */
  outcomes: number;
  /** Envelopes being processed now. */
  pending: number;
  /** Ids forgotten before their window ended because the id budget was full. */
  idsEvicted: number;
  /** Outcomes dropped before their window ended (budget full, or one outcome over `maxOutcomeBytes`). */
  outcomesDropped: number;
}

export interface MemoryDedupeOptions {
  /** How long a processed envelope is remembered (default 10 min). Time-based: never by count. */
  windowMs?: number;
  /**
   * Memory budget of the remembered ids and fingerprints (default 64 MiB, about 300,000 ids of
   * 80 characters: 64 bytes each plus 2 per character of the caller's key). An id forgotten early
   * is logged and counted: a repeat of it would run again.
   */
  maxIdBytes?: number;
  /**
   * Memory budget of the kept outcomes, in bytes of their UTF-8 JSON (default 64 MiB); past it the
   * oldest outcomes are dropped. Both budgets are held in buffers that start small and double up
   * to them, outside the JavaScript heap.
   */
  maxOutcomesBytes?: number;
  /**
   * Largest single outcome kept, in UTF-8 bytes (default 64 KiB): one caller's huge replies must not flush
   * everyone else's outcomes. A repeat of a bigger one is answered "outcome no longer held".
   */
  maxOutcomeBytes?: number;
  clock?: Clock;
  logger?: Logger;
}

/**
 * Bytes of bookkeeping per remembered id beyond its key: its slots in the record arrays and in
 * the hash table. An id costs this plus two bytes per UTF-16 unit of its key.
 * @internal
 */
export const ID_OVERHEAD = 64;
/** Early evictions are logged at most this often (they come in floods). */
const LOG_EVERY_MS = 10_000;

const RESULT = 0;
const ERROR = 1;
const NONE = 2;

const NEW: Claim = { state: 'new' };
const DROPPED: Claim = { state: 'dropped' };
const CONFLICT: Claim = { state: 'conflict' };
const NONE_OUTCOME: Outcome = { kind: 'none' };

/** An envelope whose handler runs now; its copies wait on it. */
interface Pending {
  fingerprint: number;
  hash: number;
  /** Made on the first copy that has to wait, so the usual request allocates no promise. */
  waiters: { promise: Promise<Outcome | undefined>; resolve: (o: Outcome | undefined) => void } | undefined;
}

/** An error outcome as JSON; undefined if its `data` cannot be JSON (then it is not kept, like one too big). */
function errorText(error: JsonRpcErrorObject): string | undefined {
  try {
    return JSON.stringify(error);
  } catch {
    return undefined;
  }
}

/** A first-in first-out run of units in one growable ring buffer: allocated at the tail, freed at the head. */
class Ring<A extends Uint8Array | Uint16Array> {
  head = 0;
  used = 0;
  constructor(
    public buf: A,
    private readonly make: (n: number) => A,
  ) {}

  /** Offset of the next unit written. */
  tail(): number {
    const t = this.head + this.used;
    return t >= this.buf.length ? t - this.buf.length : t;
  }

  free(n: number): void {
    this.used -= n;
    this.head = this.used === 0 ? 0 : (this.head + n) % this.buf.length;
  }

  /** Moves the live units to the start of a buffer of `cap` units; returns the offset change (old head, old size). */
  grow(cap: number): [number, number] {
    const old = this.buf;
    const h = this.head;
    const end = h + this.used;
    const next = this.make(cap);
    if (end <= old.length) next.set(old.subarray(h, end));
    else {
      next.set(old.subarray(h));
      next.set(old.subarray(0, end - old.length), old.length - h);
    }
    this.buf = next;
    this.head = 0;
    return [h, old.length];
  }
}

/** Where an offset of a ring that grew moved to. */
const moved = (off: number, [h, size]: [number, number]): number => (off >= h ? off - h : off + size - h);

/**
 * The table's string hash, seeded per store so a caller cannot choose ids that pile onto one slot
 * without knowing the seed (the same kind of protection V8 gives its own Map).
 * @internal
 */
export function hashKey(key: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < key.length; i++) {
    h = Math.imul(h ^ key.charCodeAt(i), 0x5bd1e995);
    h ^= h >>> 15;
  }
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * In memory, within one process. Envelopes being processed are objects in a Map (their copies
 * wait on them); processed ones live off the JavaScript heap: a record per envelope in parallel
 * typed arrays (in completion order, so expiry and budget eviction both take the oldest), an
 * open-addressing hash table over them, the keys (UTF-16, compared in full) in one ring and the
 * outcomes (UTF-8 JSON) in another. At tens of thousands of requests per second the window holds
 * hundreds of thousands of them; as objects and strings they survived every young-generation
 * collection and made each one slow, here the collector never sees them.
 */
export class MemoryDedupeStore implements DedupeStore {
  private readonly pending = new Map<string, Pending>();
  private readonly seed = (Math.random() * 0x1_0000_0000) | 0;
  /** Processed envelopes: `count` records from slot `first` on (wrapping), oldest first. */
  private cap = 1024;
  private first = 0;
  private count = 0;
  /** How many records from the oldest on hold no outcome (where dropping for the budget resumes). */
  private noOutcome = 0;
  private expires = new Float64Array(this.cap);
  private fingerprints = new Float64Array(this.cap);
  private hashes = new Int32Array(this.cap);
  private keyOff = new Uint32Array(this.cap);
  private keyLen = new Uint32Array(this.cap);
  private outOff = new Uint32Array(this.cap);
  /** UTF-8 bytes of the held outcome; -1: none held (dropped, or too big to keep). */
  private outLen = new Int32Array(this.cap);
  private kind = new Uint8Array(this.cap);
  /** Open addressing, linear probing: record slot + 1, 0 for empty; twice the records' capacity. */
  private table = new Int32Array(2 * this.cap);
  /** Both rings start small (or at their budget, if smaller) and double as they fill. */
  private readonly keys: Ring<Uint16Array>;
  private readonly outcomes: Ring<Uint8Array>;
  /** Where an outcome is encoded before it is copied into its ring (grows to the largest kept). */
  private scratch = new Uint8Array(4096);
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();
  private idBytes = 0;
  private lastExpiry = Number.NEGATIVE_INFINITY;
  private lastLog = Number.NEGATIVE_INFINITY;
  private readonly windowMs: number;
  private readonly maxIdBytes: number;
  private readonly maxOutcomesBytes: number;
  /** The largest outcome kept: `maxOutcomeBytes`, and never more than the whole budget. */
  private readonly keepLimit: number;
  private readonly clock: Clock;
  private readonly logger: Logger;
  readonly stats: DedupeStats = { ids: 0, outcomes: 0, pending: 0, idsEvicted: 0, outcomesDropped: 0 };

  constructor(opts: MemoryDedupeOptions = {}) {
    this.windowMs = opts.windowMs ?? 600_000;
    this.maxIdBytes = opts.maxIdBytes ?? 64 * 1024 * 1024;
    this.maxOutcomesBytes = opts.maxOutcomesBytes ?? 64 * 1024 * 1024;
    this.keepLimit = Math.min(opts.maxOutcomeBytes ?? 64 * 1024, this.maxOutcomesBytes);
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? silentLogger;
    const keyUnits = Math.max(1, Math.min(16 * 1024, Math.floor(this.maxIdBytes / 2)));
    this.keys = new Ring(new Uint16Array(keyUnits), (n) => new Uint16Array(n));
    const outBytes = Math.max(1, Math.min(64 * 1024, this.maxOutcomesBytes));
    this.outcomes = new Ring(new Uint8Array(outBytes), (n) => new Uint8Array(n));
  }

  claim(key: string, fingerprint: number): Claim {
    const running = this.pending.get(key);
    if (running !== undefined) {
      if (running.fingerprint !== fingerprint) return CONFLICT;
      if (running.waiters === undefined) {
        let resolve!: (o: Outcome | undefined) => void;
        const promise = new Promise<Outcome | undefined>((r) => {
          resolve = r;
        });
        running.waiters = { promise, resolve };
      }
      return { state: 'pending', outcome: running.waiters.promise };
    }
    const hash = hashKey(key, this.seed);
    const r = this.find(key, hash);
    if (r >= 0) {
      const now = this.clock.now();
      // Expiry times only grow along the records, so expiring from the oldest reaches this one.
      if (this.expires[r]! <= now) this.expire(now);
      else if (this.fingerprints[r] !== fingerprint) return CONFLICT;
      else return this.outLen[r]! < 0 ? DROPPED : { state: 'done', outcome: this.outcomeOf(r) };
    }
    this.pending.set(key, { fingerprint, hash, waiters: undefined });
    return NEW;
  }

  complete(key: string, outcome: Outcome): void {
    const running = this.pending.get(key);
    if (running === undefined) return;
    this.pending.delete(key);
    running.waiters?.resolve(outcome);
    const now = this.clock.now();
    this.expire(now);
    const r = this.append(key, running, Math.max(now + this.windowMs, this.lastExpiry));
    let early = 0;
    while (this.idBytes > this.maxIdBytes && this.count > 0) {
      this.forgetOldest();
      early++;
    }
    // The new record is the newest: it is gone only if everything is.
    const dropped = this.count > 0 ? this.keep(r, outcome) : 0;
    if (early > 0 || dropped > 0) this.noteEvictions(early, dropped, now);
  }

  release(key: string): void {
    const running = this.pending.get(key);
    if (running === undefined) return;
    this.pending.delete(key);
    running.waiters?.resolve(undefined);
  }

  /** Refreshes and returns the counters. */
  snapshot(): DedupeStats {
    this.stats.ids = this.count;
    this.stats.pending = this.pending.size;
    return { ...this.stats };
  }

  private slot(i: number): number {
    return (this.first + i) & (this.cap - 1);
  }

  private find(key: string, hash: number): number {
    const table = this.table;
    const mask = table.length - 1;
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const s = table[i]!;
      if (s === 0) return -1;
      if (this.hashes[s - 1] === hash && this.keyIs(s - 1, key)) return s - 1;
    }
  }

  private keyIs(r: number, key: string): boolean {
    if (this.keyLen[r] !== key.length) return false;
    const buf = this.keys.buf;
    let p = this.keyOff[r]!;
    for (let i = 0; i < key.length; i++) {
      if (buf[p] !== key.charCodeAt(i)) return false;
      if (++p === buf.length) p = 0;
    }
    return true;
  }

  private insert(r: number): void {
    const table = this.table;
    const mask = table.length - 1;
    let i = this.hashes[r]! & mask;
    while (table[i] !== 0) i = (i + 1) & mask;
    table[i] = r + 1;
  }

  /** Takes record `r` out of the table, shifting back the records probed past its slot. */
  private unlink(r: number): void {
    const table = this.table;
    const mask = table.length - 1;
    let i = this.hashes[r]! & mask;
    while (table[i] !== r + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; table[j] !== 0; j = (j + 1) & mask) {
      const home = this.hashes[table[j]! - 1]! & mask;
      // The record at j may move to i unless its home lies cyclically in (i, j].
      if (i <= j ? i < home && home <= j : i < home || home <= j) continue;
      table[i] = table[j]!;
      i = j;
    }
    table[i] = 0;
  }

  /** Adds a processed envelope as the newest record, without outcome yet. */
  private append(key: string, running: Pending, expiry: number): number {
    if (this.count === this.cap) this.growRecords();
    const keys = this.keys;
    if (keys.used + key.length > keys.buf.length) {
      const shift = keys.grow(Math.max(2 * keys.buf.length, keys.used + key.length));
      for (let i = 0; i < this.count; i++) {
        const s = this.slot(i);
        this.keyOff[s] = moved(this.keyOff[s]!, shift);
      }
    }
    const r = this.slot(this.count);
    this.count++;
    this.lastExpiry = expiry;
    this.expires[r] = expiry;
    this.fingerprints[r] = running.fingerprint;
    this.hashes[r] = running.hash;
    this.outLen[r] = -1;
    const buf = keys.buf;
    let p = keys.tail();
    this.keyOff[r] = p;
    this.keyLen[r] = key.length;
    for (let i = 0; i < key.length; i++) {
      buf[p] = key.charCodeAt(i);
      if (++p === buf.length) p = 0;
    }
    keys.used += key.length;
    this.idBytes += ID_OVERHEAD + 2 * key.length;
    this.insert(r);
    return r;
  }

  /** Twice the record slots, the live ones moved to the start, and the table rebuilt over them. */
  private growRecords(): void {
    const cap = 2 * this.cap;
    const n = this.count;
    const first = this.first;
    const move = <A extends Float64Array | Int32Array | Uint32Array | Uint8Array>(old: A, next: A): A => {
      next.set(old.subarray(first));
      next.set(old.subarray(0, first), old.length - first);
      return next;
    };
    this.expires = move(this.expires, new Float64Array(cap));
    this.fingerprints = move(this.fingerprints, new Float64Array(cap));
    this.hashes = move(this.hashes, new Int32Array(cap));
    this.keyOff = move(this.keyOff, new Uint32Array(cap));
    this.keyLen = move(this.keyLen, new Uint32Array(cap));
    this.outOff = move(this.outOff, new Uint32Array(cap));
    this.outLen = move(this.outLen, new Int32Array(cap));
    this.kind = move(this.kind, new Uint8Array(cap));
    this.cap = cap;
    this.first = 0;
    this.table = new Int32Array(2 * cap);
    for (let r = 0; r < n; r++) this.insert(r);
  }

  /** Keeps the outcome of the newest record `r` if it fits; returns how many outcomes were dropped. */
  private keep(r: number, outcome: Outcome): number {
    if (outcome.kind === 'none') {
      this.kind[r] = NONE;
      this.outLen[r] = 0;
      this.stats.outcomes++;
      return 0;
    }
    const text = outcome.kind === 'result' ? outcome.envelope : errorText(outcome.error);
    if (text === undefined || text.length > this.keepLimit) return this.dropNew();
    if (this.scratch.length < 3 * text.length) this.scratch = new Uint8Array(3 * text.length);
    const n = this.encoder.encodeInto(text, this.scratch).written;
    if (n > this.keepLimit) return this.dropNew();
    let dropped = 0;
    const ring = this.outcomes;
    while (ring.used + n > this.maxOutcomesBytes) {
      this.dropOldestOutcome();
      dropped++;
    }
    if (ring.used + n > ring.buf.length) {
      const shift = ring.grow(Math.min(Math.max(2 * ring.buf.length, ring.used + n), this.maxOutcomesBytes));
      for (let i = this.noOutcome; i < this.count; i++) {
        const s = this.slot(i);
        if (this.outLen[s]! > 0) this.outOff[s] = moved(this.outOff[s]!, shift);
      }
    }
    const at = ring.tail();
    const room = ring.buf.length - at;
    if (n <= room) ring.buf.set(this.scratch.subarray(0, n), at);
    else {
      ring.buf.set(this.scratch.subarray(0, room), at);
      ring.buf.set(this.scratch.subarray(room, n), 0);
    }
    ring.used += n;
    this.kind[r] = outcome.kind === 'result' ? RESULT : ERROR;
    this.outOff[r] = at;
    this.outLen[r] = n;
    this.stats.outcomes++;
    return dropped;
  }

  private dropNew(): number {
    this.stats.outcomesDropped++;
    return 0;
  }

  private outcomeOf(r: number): Outcome {
    const kind = this.kind[r]!;
    if (kind === NONE) return NONE_OUTCOME;
    const n = this.outLen[r]!;
    const at = this.outOff[r]!;
    const buf = this.outcomes.buf;
    let bytes: Uint8Array;
    if (at + n <= buf.length) bytes = buf.subarray(at, at + n);
    else {
      bytes = new Uint8Array(n);
      bytes.set(buf.subarray(at));
      bytes.set(buf.subarray(0, at + n - buf.length), buf.length - at);
    }
    const text = this.decoder.decode(bytes);
    return kind === RESULT
      ? { kind: 'result', envelope: text }
      : { kind: 'error', error: JSON.parse(text) as JsonRpcErrorObject };
  }

  /** Forgets every record whose window has ended. */
  private expire(now: number): void {
    while (this.count > 0 && this.expires[this.first]! <= now) this.forgetOldest();
  }

  private forgetOldest(): void {
    const r = this.first;
    this.unlink(r);
    const len = this.keyLen[r]!;
    this.keys.free(len);
    this.idBytes -= ID_OVERHEAD + 2 * len;
    const held = this.outLen[r]!;
    if (held >= 0) {
      this.outcomes.free(held);
      this.stats.outcomes--;
    }
    this.first = (r + 1) & (this.cap - 1);
    this.count--;
    if (this.noOutcome > 0) this.noOutcome--;
  }

  /** Drops the oldest outcome still held (its id stays: a repeat is answered "dropped"). */
  private dropOldestOutcome(): void {
    let i = this.noOutcome;
    let s = this.slot(i);
    while (this.outLen[s]! < 0) s = this.slot(++i);
    this.outcomes.free(this.outLen[s]!);
    this.outLen[s] = -1;
    this.stats.outcomes--;
    this.noOutcome = i + 1;
  }

  private noteEvictions(early: number, dropped: number, now: number): void {
    this.stats.idsEvicted += early;
    this.stats.outcomesDropped += dropped;
    if (now - this.lastLog < LOG_EVERY_MS) return;
    this.lastLog = now;
    this.logger.warn(
      { ids_evicted: this.stats.idsEvicted, outcomes_dropped: this.stats.outcomesDropped },
      'dedupe budget full: entries leave before their window ends',
    );
  }
}
