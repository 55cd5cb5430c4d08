/**
 * The contract every implementation of the store seams keeps (memory and Redis alike): one
 * suite, run by test/redis/contract.test.ts against both. A factory gives two handles on one
 * shared state, `a` and `b`: two nodes on one Redis, or the same memory store twice.
 * Expiry is tested with short windows and real waits.
 */
import { expect, it } from 'vitest';
import type { DedupeStore, Outcome } from '../../src/core/dedupe.js';
import type { NonceStore } from '../../src/core/nonce-store.js';
import type { SessionEntry, SessionReplay, SessionStore } from '../../src/core/session-store.js';
import { sleep, waitFor } from './helpers.js';

export interface Pair<T> {
  a: T;
  b: T;
}

export type DedupeFactory = (opts: {
  windowMs?: number;
  maxOutcomeBytes?: number;
}) => Promise<Pair<DedupeStore>>;
export type NonceFactory = () => Promise<Pair<NonceStore>>;
export type SessionFactory = (opts: {
  disconnectWindowMs?: number;
  maxEntriesPerSession?: number;
  maxBytesPerSession?: number;
}) => Promise<Pair<SessionStore>>;

const FP = 2 ** 52 + 12345; // a 53-bit fingerprint
const OTHER_FP = 987654321;

const result = (n: number): Outcome => ({
  kind: 'result',
  envelope: `{"id":"reply-${n}","payload":{"n":${n}}}`,
});

let keys = 0;
const freshKey = (): string => `caller\u0000urn:asap:agent:x\u0000env-${Date.now()}-${keys++}`;

export function dedupeContract(make: DedupeFactory): void {
  it('claims a key once: new, then done with the outcome on every node', async () => {
    const { a, b } = await make({});
    const outcomes: Outcome[] = [
      result(1),
      { kind: 'error', error: { code: -32602, message: 'Invalid params', data: { validation_errors: [] } } },
      { kind: 'none' },
    ];
    for (const outcome of outcomes) {
      const key = freshKey();
      expect(await a.claim(key, FP)).toEqual({ state: 'new' });
      await a.complete(key, outcome);
      expect(await b.claim(key, FP)).toEqual({ state: 'done', outcome });
      expect(await a.claim(key, FP)).toEqual({ state: 'done', outcome });
    }
  });

  it('answers a copy of a running one `pending`, settled with its outcome', async () => {
    const { a, b } = await make({});
    const key = freshKey();
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    const onB = await b.claim(key, FP);
    const onA = await a.claim(key, FP);
    expect(onB.state).toBe('pending');
    expect(onA.state).toBe('pending');
    await a.complete(key, result(2));
    if (onB.state !== 'pending' || onA.state !== 'pending') throw new Error('unreachable');
    expect(await onB.outcome).toEqual(result(2));
    expect(await onA.outcome).toEqual(result(2));
  });

  it('refuses another envelope reusing the key (another fingerprint): conflict, pending or done', async () => {
    const { a, b } = await make({});
    const key = freshKey();
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    expect(await b.claim(key, OTHER_FP)).toEqual({ state: 'conflict' });
    expect(await a.claim(key, OTHER_FP)).toEqual({ state: 'conflict' });
    await a.complete(key, result(3));
    expect(await b.claim(key, OTHER_FP)).toEqual({ state: 'conflict' });
    expect(await a.claim(key, OTHER_FP)).toEqual({ state: 'conflict' });
  });

  it('drops an outcome over the cap: waiting copies still get it, later ones `dropped`', async () => {
    const { a, b } = await make({ maxOutcomeBytes: 200 });
    const key = freshKey();
    const big: Outcome = { kind: 'result', envelope: JSON.stringify({ blob: 'x'.repeat(500) }) };
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    const waiting = await b.claim(key, FP);
    if (waiting.state !== 'pending') throw new Error(`expected pending, got ${waiting.state}`);
    await a.complete(key, big);
    expect(await waiting.outcome).toEqual(big);
    expect(await b.claim(key, FP)).toEqual({ state: 'dropped' });
    expect(await a.claim(key, FP)).toEqual({ state: 'dropped' });
    expect(await a.claim(key, OTHER_FP)).toEqual({ state: 'conflict' });
  });

  it('gives a released claim back: waiting copies settle with undefined, the next claim is new', async () => {
    const { a, b } = await make({});
    const key = freshKey();
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    const waiting = await b.claim(key, FP);
    if (waiting.state !== 'pending') throw new Error(`expected pending, got ${waiting.state}`);
    await a.release(key);
    expect(await waiting.outcome).toBeUndefined();
    expect(await b.claim(key, FP)).toEqual({ state: 'new' });
    await b.complete(key, result(4));
    expect(await a.claim(key, FP)).toEqual({ state: 'done', outcome: result(4) });
  });

  it('ignores complete and release of a key it does not hold as pending', async () => {
    const { a, b } = await make({});
    const key = freshKey();
    await a.complete(key, result(5));
    await a.release(key);
    expect(await b.claim(key, FP)).toEqual({ state: 'new' });
    await b.complete(key, result(6));
    await b.complete(key, result(7));
    await b.release(key);
    expect(await a.claim(key, FP)).toEqual({ state: 'done', outcome: result(6) });
  });

  it('forgets a processed envelope after the window (from its completion)', async () => {
    const { a, b } = await make({ windowMs: 150 });
    const key = freshKey();
    expect(await a.claim(key, FP)).toEqual({ state: 'new' });
    await a.complete(key, result(8));
    expect(await b.claim(key, FP)).toEqual({ state: 'done', outcome: result(8) });
    await sleep(220);
    expect(await b.claim(key, FP)).toEqual({ state: 'new' });
  });
}

export function nonceContract(make: NonceFactory): void {
  it('passes a nonce once within its TTL, on any node', async () => {
    const { a, b } = await make();
    const key = `caller\u0000sender\u0000nonce-${Date.now()}-${keys++}`;
    expect(await a.add(key, 10_000)).toBe(true);
    expect(await a.add(key, 10_000)).toBe(false);
    expect(await b.add(key, 10_000)).toBe(false);
    expect(await b.add(`${key}-other`, 10_000)).toBe(true);
  });

  it('of copies racing, exactly one passes', async () => {
    const { a, b } = await make();
    const key = `race-${Date.now()}-${keys++}`;
    const results = await Promise.all([a, b, a, b, a, b].map((s) => s.add(key, 10_000)));
    expect(results.filter((r) => r)).toHaveLength(1);
  });

  it('passes it again after its TTL', async () => {
    const { a, b } = await make();
    const key = `ttl-${Date.now()}-${keys++}`;
    expect(await a.add(key, 100)).toBe(true);
    expect(await b.add(key, 100)).toBe(false);
    await sleep(160);
    expect(await b.add(key, 100)).toBe(true);
  });
}

/** The seqs a replay holds, or 'expired'. */
function seqs(r: SessionReplay): number[] | 'expired' {
  return r.expired ? 'expired' : r.entries.map((e) => e.seq);
}

async function pushes(store: SessionStore, id: string, n: number, from = 0): Promise<(number | undefined)[]> {
  const out: (number | undefined)[] = [];
  for (let i = from; i < from + n; i++) out.push((await store.append(id, `{"n":${i}}`, `env-${i}`))?.seq);
  return out;
}

export function sessionContract(make: SessionFactory): void {
  it('numbers pushes from 1 per session, on any node, and replays those after last_seq', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    const { sessionId: other } = await b.open('alice');
    expect(s).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(other).not.toBe(s);
    expect(await pushes(a, s, 2)).toEqual([1, 2]);
    expect(await pushes(b, s, 1, 2)).toEqual([3]);
    expect((await a.append(other, '{}', 'o-1'))?.seq).toBe(1);
    expect(await b.since(s, 0)).toEqual({
      expired: false,
      entries: [
        { seq: 1, envelope: '{"n":0}', envelopeId: 'env-0' },
        { seq: 2, envelope: '{"n":1}', envelopeId: 'env-1' },
        { seq: 3, envelope: '{"n":2}', envelopeId: 'env-2' },
      ],
    });
    expect(seqs(await a.since(s, 1))).toEqual([2, 3]);
    expect(seqs(await a.since(s, 3))).toEqual([]);
  });

  it('appends idempotently by envelope id: the same seq, not fresh, on every node', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    expect(await a.append(s, '{"x":1}', 'e-1')).toEqual({ seq: 1, fresh: true });
    expect(await b.append(s, '{"x":1}', 'e-1')).toEqual({ seq: 1, fresh: false });
    expect(await a.append(s, '{"x":1}', 'e-1')).toEqual({ seq: 1, fresh: false });
    expect(await b.append(s, '{"x":2}', 'e-2')).toEqual({ seq: 2, fresh: true });
    expect(seqs(await a.since(s, 0))).toEqual([1, 2]);
  });

  it('feeds every fresh entry to subscribers, from whichever node appended it', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    const got: SessionEntry[] = [];
    const unsubscribe = a.subscribe(s, (e) => got.push(e));
    const alsoGot: SessionEntry[] = [];
    const unsubscribeToo = a.subscribe(s, (e) => alsoGot.push(e));
    await a.since(s, 0); // the subscription is in effect once a since() on its node answered
    const id = 'env-ü-\u{1F600}:1';
    const envelope = '{"text":"grüße \u{1F600}","n":1}';
    expect(await b.append(s, envelope, id)).toEqual({ seq: 1, fresh: true });
    expect(await a.append(s, envelope, id)).toEqual({ seq: 1, fresh: false });
    expect(await a.append(s, '{"n":2}', 'env-2')).toEqual({ seq: 2, fresh: true });
    await waitFor(() => got.length >= 2 && alsoGot.length >= 2, 'both entries');
    expect(got).toEqual([
      { seq: 1, envelope, envelopeId: id },
      { seq: 2, envelope: '{"n":2}', envelopeId: 'env-2' },
    ]);
    unsubscribeToo();
    unsubscribeToo();
    await b.append(s, '{"n":3}', 'env-3');
    await waitFor(() => got.length >= 3, 'the third entry');
    expect(alsoGot).toHaveLength(2);
    unsubscribe();
    await b.append(s, '{"n":4}', 'env-4');
    await sleep(30);
    expect(got.map((e) => e.seq)).toEqual([1, 2, 3]);
  });

  it('forgets what the client confirmed: a later resume from before it is a gap', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    await pushes(a, s, 4);
    expect(seqs(await b.since(s, 2))).toEqual([3, 4]);
    expect(seqs(await a.since(s, 1))).toBe('expired');
    expect(seqs(await a.since(s, 2))).toEqual([3, 4]);
    expect(seqs(await b.since(s, 4))).toEqual([]);
    expect(seqs(await b.since(s, 3))).toBe('expired');
    expect((await a.append(s, '{}', 'env-4'))?.seq).toBe(5);
    expect(seqs(await b.since(s, 4))).toEqual([5]);
    // A confirmed push is forgotten by id too: appending it again is a new push.
    expect(await a.append(s, '{"n":0}', 'env-0')).toEqual({ seq: 6, fresh: true });
  });

  it('answers expired for an unknown session and a last_seq it could not have sent', async () => {
    const { a } = await make({});
    const { sessionId: s } = await a.open('alice');
    await pushes(a, s, 2);
    expect(seqs(await a.since('01ARZ3NDEKTSV4RRFFQ69G5FAV', 0))).toBe('expired');
    expect(await a.append('01ARZ3NDEKTSV4RRFFQ69G5FAV', '{}', 'x')).toBeUndefined();
    for (const bad of [3, 99, -1, 1.5, Number.NaN]) expect(seqs(await a.since(s, bad))).toBe('expired');
    expect(seqs(await a.since(s, 0))).toEqual([1, 2]);
    const { sessionId: empty } = await a.open('alice');
    expect(seqs(await a.since(empty, 0))).toEqual([]);
    expect(seqs(await a.since(empty, 1))).toBe('expired');
  });

  it('keeps at most maxEntriesPerSession pushes: the oldest go, a resume from before them is a gap', async () => {
    const { a, b } = await make({ maxEntriesPerSession: 3 });
    const { sessionId: s } = await a.open('alice');
    expect(await pushes(a, s, 5)).toEqual([1, 2, 3, 4, 5]);
    expect(seqs(await b.since(s, 0))).toBe('expired');
    expect(seqs(await b.since(s, 1))).toBe('expired');
    expect(seqs(await b.since(s, 2))).toEqual([3, 4, 5]);
    // A dropped push is forgotten by id: its copy is a new push.
    expect(await a.append(s, '{"n":0}', 'env-0')).toEqual({ seq: 6, fresh: true });
    expect(await a.append(s, '{"n":5}', 'env-5')).toEqual({ seq: 7, fresh: true });
    expect(await a.append(s, '{"n":5}', 'env-5')).toEqual({ seq: 7, fresh: false });
  });

  it('keeps at most maxBytesPerSession bytes (UTF-8) of pushes', async () => {
    const { a } = await make({ maxBytesPerSession: 100 });
    const { sessionId: s } = await a.open('alice');
    const body = (c: string) => `{"b":"${c.repeat(10)}"}`; // 'é' is 2 bytes: 28 bytes, 'a': 18
    expect((await a.append(s, body('é'), 'e1'))?.seq).toBe(1);
    expect((await a.append(s, body('é'), 'e2'))?.seq).toBe(2);
    expect((await a.append(s, body('é'), 'e3'))?.seq).toBe(3);
    expect(seqs(await a.since(s, 0))).toEqual([1, 2, 3]); // 84 bytes
    expect((await a.append(s, body('a'), 'e4'))?.seq).toBe(4); // 102: the oldest goes
    expect(seqs(await a.since(s, 1))).toEqual([2, 3, 4]);
    // One push bigger than the bound is not kept at all (nor is anything before it).
    expect((await a.append(s, `"${'x'.repeat(200)}"`, 'huge'))?.seq).toBe(5);
    expect(seqs(await a.since(s, 5))).toEqual([]);
    expect(seqs(await a.since(s, 4))).toBe('expired');
    expect((await a.append(s, body('a'), 'e6'))?.seq).toBe(6);
    expect(seqs(await a.since(s, 5))).toEqual([6]);
  });

  it('binds a session to its caller: attach by another caller (or to an unknown one) is refused', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    expect(await b.attach(s, 'mallory')).toBe(false);
    expect(await a.attach(s, 'mallory')).toBe(false);
    expect(await b.attach('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'alice')).toBe(false);
    expect(await b.attach(s, 'alice')).toBe(true);
    await b.detach(s);
    await a.detach(s);
  });

  it('expires a session the disconnect window after its last connection went, not before', async () => {
    const { a, b } = await make({ disconnectWindowMs: 300 });
    const { sessionId: s } = await a.open('alice');
    await a.append(s, '{}', 'e1');
    await a.detach(s);
    await sleep(120);
    // Resumed on another node within the window: it lives on while attached, whatever the window.
    expect(await b.attach(s, 'alice')).toBe(true);
    await sleep(450);
    expect(seqs(await a.since(s, 0))).toEqual([1]);
    await b.detach(s);
    await sleep(150);
    expect(seqs(await a.since(s, 1))).toEqual([]);
    await sleep(250);
    expect(await b.attach(s, 'alice')).toBe(false);
    expect(seqs(await a.since(s, 1))).toBe('expired');
    expect(await a.append(s, '{}', 'e2')).toBeUndefined();
  });

  it('counts connections: the window starts only when the last one went; an unmatched detach does nothing', async () => {
    const { a, b } = await make({ disconnectWindowMs: 300 });
    const { sessionId: s } = await a.open('alice');
    expect(await b.attach(s, 'alice')).toBe(true); // a resume before the old connection was seen to close
    await a.detach(s); // the old one
    await sleep(450);
    expect(seqs(await a.since(s, 0))).toEqual([]); // still held by b's connection
    await b.detach(s);
    await sleep(200);
    await b.detach(s); // unmatched: must not restart the window
    await a.detach(s);
    await sleep(200);
    expect(await a.attach(s, 'alice')).toBe(false);
  });

  it('records the URNs its client speaks for, readable on any node; none for an unknown session', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    expect(await b.urns(s)).toEqual([]);
    await a.addUrn(s, 'urn:asap:agent:alice');
    await b.addUrn(s, 'urn:asap:agent:alice');
    await b.addUrn(s, 'urn:asap:agent:alice-2');
    expect([...(await a.urns(s))].sort()).toEqual(['urn:asap:agent:alice', 'urn:asap:agent:alice-2']);
    await a.addUrn('no-such-session', 'urn:asap:agent:x');
    expect(await b.urns('no-such-session')).toEqual([]);
    await a.close(s);
    expect(await b.urns(s)).toEqual([]);
  });

  it('close forgets the session and its pushes', async () => {
    const { a, b } = await make({});
    const { sessionId: s } = await a.open('alice');
    await pushes(a, s, 2);
    await b.close(s);
    expect(seqs(await a.since(s, 0))).toBe('expired');
    expect(await a.attach(s, 'alice')).toBe(false);
    expect(await a.append(s, '{}', 'x')).toBeUndefined();
    await a.close(s);
  });
}
