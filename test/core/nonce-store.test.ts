/**
 * The NonceStore seam of replay protection (§8): the in-memory store, ReplayGuard over a
 * synchronous and an asynchronous store, and the Dispatcher with an asynchronous store.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Clock, ManualClock } from '../../src/core/clock.js';
import { Dispatcher, type DispatcherOptions } from '../../src/core/dispatcher.js';
import { ExpiringMap } from '../../src/core/expiring-map.js';
import { MemoryNonceStore, type NonceStore } from '../../src/core/nonce-store.js';
import { HandlerRegistry } from '../../src/core/registry.js';
import { ReplayGuard } from '../../src/core/replay.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import { decodeFrame, encodeRequest } from '../../src/protocol/jsonrpc.js';
import { CLIENT, FakeSession, RecordingLogger, send, taskRequest } from './helpers.js';

const T0 = Date.parse('2026-11-26T17:30:00.000Z');

/** Asserts that a check answered at once (no promise) and returns its verdict. */
function sync<T>(v: T | Promise<T>): T {
  expect(v).not.toBeInstanceOf(Promise);
  return v as T;
}
const iso = (ms: number) => new Date(ms).toISOString();

/**
 * A store that answers on a later turn, as a shared one (Redis SET NX PX) would: a real
 * NonceStore, with its own expiry on the clock it is given. `failing` makes it reject.
 */
class AsyncNonceStore implements NonceStore {
  readonly calls: { key: string; ttlMs: number }[] = [];
  failing: Error | undefined;
  private readonly expiry = new Map<string, number>();

  constructor(private readonly clock: Clock) {}

  async add(key: string, ttlMs: number): Promise<boolean> {
    this.calls.push({ key, ttlMs });
    await new Promise((resolve) => setImmediate(resolve));
    if (this.failing !== undefined) throw this.failing;
    const now = this.clock.now();
    const until = this.expiry.get(key);
    if (until !== undefined && until > now) return false;
    this.expiry.set(key, now + ttlMs);
    return true;
  }
}

describe('MemoryNonceStore', () => {
  it('records a nonce once and reports the repeat as a replay', () => {
    const store = new MemoryNonceStore({ clock: new ManualClock(0) });
    expect(store.add('k1', 1000)).toBe(true);
    expect(store.add('k1', 1000)).toBe(false);
    expect(store.add('k2', 1000)).toBe(true);
    expect(store.size).toBe(2);
  });

  it('forgets a nonce once its own TTL is over', () => {
    const clock = new ManualClock(0);
    const store = new MemoryNonceStore({ clock });
    expect(store.add('short', 100)).toBe(true);
    expect(store.add('long', 1000)).toBe(true);
    clock.advance(99);
    expect(store.add('short', 100)).toBe(false);
    clock.advance(1);
    expect(store.add('short', 100)).toBe(true);
    expect(store.add('long', 1000)).toBe(false);
    clock.advance(900);
    expect(store.add('long', 1000)).toBe(true);
  });

  it('keeps at most maxNonces, the oldest out first', () => {
    const store = new MemoryNonceStore({ maxNonces: 2, clock: new ManualClock(0) });
    for (const k of ['a', 'b', 'c']) expect(store.add(k, 60_000)).toBe(true);
    expect(store.size).toBe(2);
    expect(store.add('c', 60_000)).toBe(false);
    expect(store.add('b', 60_000)).toBe(false);
    expect(store.add('a', 60_000)).toBe(true);
  });

  it('uses the system clock by default', () => {
    const store = new MemoryNonceStore();
    expect(store.add('sys', 60_000)).toBe(true);
    expect(store.add('sys', 60_000)).toBe(false);
  });

  it('ExpiringMap.add inserts only absent or expired keys, with the map TTL by default', () => {
    const clock = new ManualClock(0);
    const m = new ExpiringMap<number>(100, 10, clock);
    expect(m.add('x', 1)).toBe(true);
    expect(m.add('x', 2)).toBe(false);
    expect(m.get('x')).toBe(1);
    clock.advance(100);
    expect(m.get('x')).toBeUndefined();
    expect(m.add('x', 3)).toBe(true);
    expect(m.get('x')).toBe(3);
  });
});

describe('ReplayGuard over a NonceStore', () => {
  it('answers synchronously with a synchronous store of its own', () => {
    const seen = new Set<string>();
    const store = {
      add(key: string): boolean {
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      },
    };
    const g = new ReplayGuard({ clock: new ManualClock(T0), nonces: store });
    expect(g.check(iso(T0), { nonce: 'n' })).toBeUndefined();
    expect(g.check(iso(T0), { nonce: 'n' })?.code).toBe(ErrorCode.InvalidNonce);
    expect([...seen]).toEqual(['\u0000\u0000n']);
  });

  it('answers with a promise when the store does, keyed by caller and sender, with nonceTtlMs', async () => {
    const clock = new ManualClock(T0);
    const store = new AsyncNonceStore(clock);
    const g = new ReplayGuard({ clock, nonces: store, nonceTtlMs: 5000, maxNonces: 1 });
    const first = g.check(iso(T0), { nonce: 'n1' }, 'alice', CLIENT);
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toBeUndefined();
    const again = await g.check(iso(T0), { nonce: 'n1' }, 'alice', CLIENT);
    expect(again?.code).toBe(ErrorCode.InvalidNonce);
    expect(again?.data).toEqual({ nonce: 'n1' });
    // Another caller, or another sender of the same caller, has its own nonces.
    expect(await g.check(iso(T0), { nonce: 'n1' }, 'bob', CLIENT)).toBeUndefined();
    expect(await g.check(iso(T0), { nonce: 'n1' }, 'alice', 'urn:asap:agent:other')).toBeUndefined();
    // maxNonces belongs to the default store: a given store keeps what it keeps.
    expect(await g.check(iso(T0), { nonce: 'n2' }, 'alice', CLIENT)).toBeUndefined();
    expect((await g.check(iso(T0), { nonce: 'n2' }, 'alice', CLIENT))?.code).toBe(ErrorCode.InvalidNonce);
    expect(store.calls[0]).toEqual({ key: `alice\u0000${CLIENT}\u0000n1`, ttlMs: 5000 });
    clock.advance(5000);
    expect(await g.check(iso(T0), { nonce: 'n1' }, 'alice', CLIENT)).toBeUndefined();
  });

  it('stays synchronous, store untouched, for timestamp errors, bad nonces and no nonce', () => {
    const clock = new ManualClock(T0);
    const store = new AsyncNonceStore(clock);
    const g = new ReplayGuard({ clock, nonces: store });
    expect(sync(g.check(iso(T0 - 300_001), { nonce: 'n' }))?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(sync(g.check(iso(T0 + 30_001), { nonce: 'n' }))?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(sync(g.check('garbage', { nonce: 'n' }))?.code).toBe(ErrorCode.InvalidTimestamp);
    expect(sync(g.check(iso(T0), { nonce: '' }))?.code).toBe(ErrorCode.InvalidNonce);
    expect(sync(g.check(iso(T0), { nonce: 7 }))?.code).toBe(ErrorCode.InvalidNonce);
    expect(sync(g.check(iso(T0), undefined))).toBeUndefined();
    expect(sync(g.check(iso(T0), { nonce: null }))).toBeUndefined();
    expect(store.calls).toEqual([]);
  });

  it('passes a store failure on as a rejected promise', async () => {
    const clock = new ManualClock(T0);
    const store = new AsyncNonceStore(clock);
    store.failing = new Error('store down');
    const g = new ReplayGuard({ clock, nonces: store });
    await expect(g.check(iso(T0), { nonce: 'n' })).rejects.toThrow('store down');
  });
});

describe('Dispatcher with an asynchronous NonceStore', () => {
  const dispatchers: Dispatcher[] = [];
  afterEach(() => {
    for (const d of dispatchers.splice(0)) d.close();
  });

  function make(store: NonceStore, opts: Partial<DispatcherOptions> = {}) {
    let runs = 0;
    const registry = new HandlerRegistry().skill('echo', (env) => {
      runs++;
      return { task_id: env.id, status: 'completed', result: { echo: env.payload.input } };
    });
    const d = new Dispatcher({ registry, replay: { nonces: store }, ...opts });
    dispatchers.push(d);
    return { d, runs: () => runs };
  }

  it('runs a fresh nonce, refuses its replay under a new id with -32003 and a rejected ack', async () => {
    const store = new AsyncNonceStore({ now: () => Date.now() });
    const { d, runs } = make(store);
    const s = Object.assign(new FakeSession(true), { callerId: 'alice' });
    const first = taskRequest('echo', { n: 1 }, { extensions: { nonce: 'once' }, requires_ack: true });
    const a = await send(d, s, first, 'r1');
    expect(a?.result?.envelope?.payload).toMatchObject({ status: 'completed', result: { echo: { n: 1 } } });
    // The same envelope again is a retransmission: dedupe answers it before any nonce check.
    const dup = await send(d, s, first, 'r2');
    expect(dup?.result?.envelope?.id).toBe(a?.result?.envelope?.id);
    expect(store.calls).toHaveLength(1);
    expect(store.calls[0]!.key).toBe(`alice\u0000${CLIENT}\u0000once`);
    // A new envelope reusing the nonce is a replay.
    const replay = taskRequest('echo', { n: 2 }, { extensions: { nonce: 'once' }, requires_ack: true });
    const r = await send(d, s, replay, 'r3');
    expect(r?.error?.code).toBe(ErrorCode.InvalidNonce);
    expect(runs()).toBe(1);
    expect(s.acks().map((ack) => [ack.payload.original_envelope_id, ack.payload.status])).toEqual([
      [first.id, 'received'],
      [first.id, 'received'],
      [replay.id, 'rejected'],
    ]);
  });

  it('answers timestamp errors at once, without asking the store', () => {
    const store = new AsyncNonceStore({ now: () => Date.now() });
    const { d } = make(store);
    const old = taskRequest(
      'echo',
      {},
      { timestamp: iso(Date.now() - 3_600_000), extensions: { nonce: 'x' } },
    );
    const out = d.handle(
      decodeFrame(encodeRequest('asap.send', { envelope: old }, 1)),
      new FakeSession(false),
    );
    expect(typeof out).toBe('string');
    expect(JSON.parse(out as string).error.code).toBe(ErrorCode.InvalidTimestamp);
    expect(store.calls).toEqual([]);
  });

  it('refuses with a generic Internal error when the store fails, and gives the claim back', async () => {
    const store = new AsyncNonceStore({ now: () => Date.now() });
    const logger = new RecordingLogger(false);
    const { d, runs } = make(store, { logger });
    const s = new FakeSession(false);
    const env = taskRequest('echo', {}, { extensions: { nonce: 'n-fail' } });
    store.failing = new Error('redis: connection refused');
    const a = await send(d, s, env);
    expect(a?.error).toMatchObject({ code: ErrorCode.InternalError, message: 'Internal error' });
    expect(JSON.stringify(a)).not.toContain('redis');
    const errorId = a?.error?.data?.error_id;
    expect(logger.entries.find((e) => e.level === 'error')?.obj).toMatchObject({
      error_id: errorId,
      err: 'redis: connection refused',
    });
    expect(runs()).toBe(0);
    // The claim was released: the same envelope, once the store is back, runs.
    store.failing = undefined;
    const b = await send(d, s, env);
    expect(b?.result?.envelope?.payload).toMatchObject({ status: 'completed' });
    expect(runs()).toBe(1);
  });

  it('works with dedupe off too', async () => {
    const store = new AsyncNonceStore({ now: () => Date.now() });
    const { d, runs } = make(store, { dedupe: false });
    const s = new FakeSession(false);
    const env = taskRequest('echo', {}, { extensions: { nonce: 'nd' } });
    expect((await send(d, s, env))?.result).toBeDefined();
    expect((await send(d, s, env))?.error?.code).toBe(ErrorCode.InvalidNonce);
    expect(runs()).toBe(1);
  });
});
