/** MemorySessionStore: the in-memory store of resumable sessions (asap-wire.md §12), on a ManualClock. */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { MemorySessionStore, type SessionReplay, type SessionStore } from '../../src/core/session-store.js';

const WINDOW = 120_000;

/** The seqs a replay holds, or 'expired'. */
function seqs(r: SessionReplay): number[] | 'expired' {
  return r.expired ? 'expired' : r.entries.map((e) => e.seq);
}

function pushes(store: MemorySessionStore, sessionId: string, n: number, body = (i: number) => `{"n":${i}}`) {
  const out: (number | undefined)[] = [];
  for (let i = 0; i < n; i++) out.push(store.append(sessionId, body(i), `env-${i}`)?.seq);
  return out;
}

describe('MemorySessionStore', () => {
  it('opens sessions with distinct unguessable ids (ULIDs)', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const a = store.open('alice').sessionId;
    const b = store.open('alice').sessionId;
    expect(a).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(b).not.toBe(a);
    expect(store.size).toBe(2);
  });

  it('numbers pushes from 1, per session, and replays those after last_seq in order', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const s = store.open('alice').sessionId;
    const other = store.open('alice').sessionId;
    expect(pushes(store, s, 3)).toEqual([1, 2, 3]);
    expect(store.append(other, '{}', 'o-1')?.seq).toBe(1);
    const all = store.since(s, 0);
    expect(all).toEqual({
      expired: false,
      entries: [
        { seq: 1, envelope: '{"n":0}', envelopeId: 'env-0' },
        { seq: 2, envelope: '{"n":1}', envelopeId: 'env-1' },
        { seq: 3, envelope: '{"n":2}', envelopeId: 'env-2' },
      ],
    });
    expect(seqs(store.since(s, 1))).toEqual([2, 3]);
    expect(seqs(store.since(s, 3))).toEqual([]);
    expect(store.append(s, '{}', 'env-3')?.seq).toBe(4);
    expect(seqs(store.since(s, 3))).toEqual([4]);
  });

  it('forgets what the client confirmed: a later resume from before it is a gap', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const s = store.open('alice').sessionId;
    pushes(store, s, 4);
    expect(seqs(store.since(s, 2))).toEqual([3, 4]);
    expect(seqs(store.since(s, 1))).toBe('expired');
    expect(seqs(store.since(s, 2))).toEqual([3, 4]);
    expect(seqs(store.since(s, 4))).toEqual([]);
    expect(seqs(store.since(s, 3))).toBe('expired');
    expect(store.append(s, '{}', 'env-4')?.seq).toBe(5);
    expect(seqs(store.since(s, 4))).toEqual([5]);
  });

  it('refuses a last_seq it never sent or that is not a seq', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const s = store.open('alice').sessionId;
    expect(seqs(store.since(s, 0))).toEqual([]);
    pushes(store, s, 2);
    for (const bad of [3, -1, 1.5, Number.NaN]) expect(seqs(store.since(s, bad))).toBe('expired');
    expect(seqs(store.since(s, 0))).toEqual([1, 2]);
  });

  it('keeps at most maxEntriesPerSession pushes, oldest dropped; resuming before them is expired', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxEntriesPerSession: 3 });
    const s = store.open('alice').sessionId;
    expect(pushes(store, s, 5)).toEqual([1, 2, 3, 4, 5]);
    expect(seqs(store.since(s, 0))).toBe('expired');
    expect(seqs(store.since(s, 1))).toBe('expired');
    expect(seqs(store.since(s, 2))).toEqual([3, 4, 5]);
  });

  it('stays bounded and in order over many pushes', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxEntriesPerSession: 100 });
    const s = store.open('alice').sessionId;
    pushes(store, s, 1000);
    const r = store.since(s, 900);
    expect(r.expired).toBe(false);
    const got = seqs(r) as number[];
    expect(got).toHaveLength(100);
    expect(got[0]).toBe(901);
    expect(got[99]).toBe(1000);
    expect(got.every((seq, i) => i === 0 || seq === got[i - 1]! + 1)).toBe(true);
  });

  it('keeps at most maxBytesPerSession of pushes, counted in UTF-8', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxBytesPerSession: 8 });
    const s = store.open('alice').sessionId;
    expect(store.append(s, '😀', 'a')?.seq).toBe(1); // a surrogate pair: 4 bytes
    expect(store.append(s, '€a', 'b')?.seq).toBe(2); // 3 + 1 bytes
    expect(seqs(store.since(s, 0))).toEqual([1, 2]); // 8 bytes: exactly the budget
    expect(store.append(s, 'é', 'c')?.seq).toBe(3); // 2 more bytes: the oldest goes
    expect(seqs(store.since(s, 1))).toEqual([2, 3]);
    expect(store.append(s, 'a\ud800', 'd')?.seq).toBe(4); // a lone surrogate is 3 bytes (U+FFFD): 4 + 2 + 4 > 8
    expect(seqs(store.since(s, 2))).toEqual([3, 4]);
    expect(store.append(s, 'xx', 'e')?.seq).toBe(5); // 2 + 4 + 2 = 8: fits
    expect(seqs(store.since(s, 2))).toEqual([3, 4, 5]);
  });

  it('drops a push bigger than the whole budget: a resume from before it is expired', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxBytesPerSession: 10 });
    const s = store.open('alice').sessionId;
    expect(store.append(s, 'small', 'a')?.seq).toBe(1);
    expect(store.append(s, 'x'.repeat(11), 'big')?.seq).toBe(2);
    expect(seqs(store.since(s, 1))).toBe('expired');
    expect(seqs(store.since(s, 2))).toEqual([]);
    expect(store.append(s, 'next', 'c')?.seq).toBe(3);
    expect(seqs(store.since(s, 2))).toEqual([3]);
  });

  it('keeps a detached session, and the pushes sent meanwhile, for the disconnect window', () => {
    const clock = new ManualClock(0);
    const store = new MemorySessionStore({ clock });
    const s = store.open('alice').sessionId;
    pushes(store, s, 1);
    store.detach(s);
    clock.advance(WINDOW - 1);
    expect(store.append(s, '{"while":"away"}', 'away')?.seq).toBe(2);
    expect(store.attach(s, 'alice')).toBe(true);
    expect(seqs(store.since(s, 1))).toEqual([2]);
    // Attached again: the window no longer runs.
    clock.advance(10 * WINDOW);
    expect(store.append(s, '{}', 'later')?.seq).toBe(3);
  });

  it('expires a session the disconnect window after its last connection went', () => {
    const clock = new ManualClock(0);
    const store = new MemorySessionStore({ clock, disconnectWindowMs: 1000 });
    const s = store.open('alice').sessionId;
    pushes(store, s, 2);
    store.detach(s);
    clock.advance(1000);
    expect(seqs(store.since(s, 0))).toBe('expired');
    expect(store.append(s, '{}', 'x')).toBeUndefined();
    expect(store.attach(s, 'alice')).toBe(false);
    expect(store.size).toBe(0);
  });

  it('never expires while a connection holds it; each open or attach pairs with one detach', () => {
    const clock = new ManualClock(0);
    const store = new MemorySessionStore({ clock, disconnectWindowMs: 1000 });
    const s = store.open('alice').sessionId;
    clock.advance(1_000_000);
    expect(store.attach(s, 'alice')).toBe(true); // a new connection resumed before the old one closed
    store.detach(s); // the old connection finally goes
    clock.advance(5000);
    expect(store.append(s, '{}', 'a')?.seq).toBe(1);
    store.detach(s); // the new one goes: the window starts
    clock.advance(999);
    // An unmatched detach does not restart (extend) the window.
    store.detach(s);
    clock.advance(1);
    expect(store.attach(s, 'alice')).toBe(false);
  });

  it('belongs to the caller that opened it', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const s = store.open('alice').sessionId;
    store.detach(s);
    expect(store.attach(s, 'mallory')).toBe(false);
    expect(store.attach(s, '')).toBe(false);
    expect(store.attach(s, 'alice')).toBe(true);
    expect(store.attach('no-such-session', 'alice')).toBe(false);
  });

  it('forgets a closed session', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0) });
    const s = store.open('alice').sessionId;
    pushes(store, s, 2);
    store.close(s);
    store.close(s);
    store.detach(s);
    expect(store.size).toBe(0);
    expect(store.append(s, '{}', 'x')).toBeUndefined();
    expect(seqs(store.since(s, 0))).toBe('expired');
    expect(store.attach(s, 'alice')).toBe(false);
  });

  it('sweeps expired sessions when one opens', () => {
    const clock = new ManualClock(0);
    const store = new MemorySessionStore({ clock, disconnectWindowMs: 1000 });
    const a = store.open('a').sessionId;
    const b = store.open('b').sessionId;
    store.open('c');
    store.detach(a);
    clock.advance(500);
    store.detach(b);
    clock.advance(500);
    expect(store.size).toBe(3);
    store.open('d');
    expect(store.size).toBe(3); // a went; b (detached 500 ms ago) stays
    expect(store.attach(b, 'b')).toBe(true);
  });

  it('keeps at most maxSessions: the longest detached go first, then the oldest', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxSessions: 3 });
    const a = store.open('a').sessionId;
    const b = store.open('b').sessionId;
    const c = store.open('c').sessionId;
    store.detach(b);
    store.detach(a);
    const d = store.open('d').sessionId;
    expect(store.size).toBe(3);
    expect(store.attach(b, 'b')).toBe(false);
    expect(store.attach(a, 'a')).toBe(true); // detached later than b: kept (and attached again)
    const e = store.open('e').sessionId; // every session attached: the oldest (a) goes
    expect(store.size).toBe(3);
    expect(store.append(a, '{}', 'x')).toBeUndefined();
    for (const [id, caller] of [
      [c, 'c'],
      [d, 'd'],
      [e, 'e'],
    ] as const)
      expect(store.attach(id, caller)).toBe(true);
  });

  it('holds at least one session', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxSessions: 0 });
    const a = store.open('a').sessionId;
    const b = store.open('b').sessionId;
    expect(store.size).toBe(1);
    expect(store.attach(a, 'a')).toBe(false);
    expect(store.attach(b, 'b')).toBe(true);
  });

  it('works on the system clock with the defaults, through the SessionStore interface', async () => {
    const store: SessionStore = new MemorySessionStore();
    const { sessionId } = await store.open('alice');
    expect((await store.append(sessionId, '{"a":1}', 'id-1'))?.seq).toBe(1);
    await store.detach(sessionId);
    expect(await store.attach(sessionId, 'alice')).toBe(true);
    expect(seqs(await store.since(sessionId, 0))).toEqual([1]);
    await store.close(sessionId);
  });
});

describe('MemorySessionStore: one push, many paths', () => {
  it('append is idempotent by envelope id, and only fresh entries reach subscribers', () => {
    const store = new MemorySessionStore({ clock: new ManualClock(0), maxEntriesPerSession: 2 });
    const { sessionId } = store.open('alice');
    const heard: number[] = [];
    const stop = store.subscribe(sessionId, (e) => heard.push(e.seq));
    expect(store.append(sessionId, '{"a":1}', 'push-1')).toEqual({ seq: 1, fresh: true });
    expect(store.append(sessionId, '{"a":1}', 'push-1')).toEqual({ seq: 1, fresh: false });
    expect(store.append(sessionId, '{"b":2}', 'push-2')).toEqual({ seq: 2, fresh: true });
    expect(heard).toEqual([1, 2]);
    stop();
    // push-1 is trimmed by the bound: its id is forgotten with it.
    expect(store.append(sessionId, '{}', 'push-3')).toEqual({ seq: 3, fresh: true });
    expect(store.append(sessionId, '{"a":1}', 'push-1')).toEqual({ seq: 4, fresh: true });
    expect(heard).toEqual([1, 2]);
    expect(store.subscribe('unknown', () => heard.push(-1))).toBeTypeOf('function');
  });
});

describe('MemorySessionStore: per-caller bound', () => {
  it("one caller's sessions cannot push another caller's out: past maxSessionsPerCaller its own oldest goes", () => {
    const store = new MemorySessionStore({
      clock: new ManualClock(0),
      maxSessions: 5,
      maxSessionsPerCaller: 2,
    });
    const alice = store.open('alice').sessionId;
    const m1 = store.open('mallory').sessionId;
    const m2 = store.open('mallory').sessionId;
    for (let i = 0; i < 10; i++) store.open('mallory');
    expect(store.attach(alice, 'alice')).toBe(true);
    expect(store.attach(m1, 'mallory')).toBe(false);
    expect(store.attach(m2, 'mallory')).toBe(false);
    expect(store.size).toBe(3);
    store.close(alice);
    expect(store.size).toBe(2);
  });
});
