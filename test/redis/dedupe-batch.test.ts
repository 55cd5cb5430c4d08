/**
 * RedisDedupeStore batching: the claims (and the outcomes) of one tick go to Redis as one script
 * call, each caller still gets its own answer, and a failure of the call reaches every caller.
 */
import { createClient } from '@redis/client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Claim, Outcome } from '../../src/core/dedupe.js';
import { ASAPError } from '../../src/protocol/errors.js';
import type { RedisConnection } from '../../src/redis/connection.js';
import { type RedisDedupeOptions, RedisDedupeStore } from '../../src/redis/dedupe.js';
import {
  captureLogger,
  closeAll,
  connect,
  FP,
  pending,
  redisAvailable,
  reply,
  sleep,
  track,
  uniquePrefix,
  useRedis,
  waitFor,
} from './helpers.js';

/** How a promise settled: its value, or the error it rejected with. */
function outcome<T>(p: T | Promise<T>): Promise<{ ok: true; value: T } | { ok: false; err: unknown }> {
  return Promise.resolve(p).then(
    (value) => ({ ok: true as const, value }),
    (err: unknown) => ({ ok: false as const, err }),
  );
}

function claimOf(r: { ok: true; value: Claim } | { ok: false; err: unknown } | undefined): Claim {
  if (r === undefined || !r.ok) throw new Error('expected a claim');
  return r.value;
}

function expectUnavailable(r: { ok: boolean; err?: unknown }): void {
  expect(r.ok).toBe(false);
  expect(r.err).toBeInstanceOf(ASAPError);
  expect((r.err as ASAPError).code).toBe(-32040);
}

describe.skipIf(!redisAvailable())('RedisDedupeStore batching', () => {
  const redis = useRedis();
  // Each test's stores closed when it ends: their background calls (renewals, retries) would
  // otherwise land in the next test's command counts (INFO commandstats is per server).
  afterEach(closeAll);
  beforeEach(async () => {
    if (!redis.server.running) await redis.server.restart();
  });

  /**
   * Nodes a and b on one key prefix. Node a's stall check is `commandTimeoutMs` (default the
   * connection's 2 s: a shorter one would fail batches as stalled when the machine is busy).
   */
  async function twoNodes(
    opts: RedisDedupeOptions = {},
    logger = captureLogger(),
    commandTimeoutMs?: number,
  ) {
    const keyPrefix = uniquePrefix();
    const [ca, cb] = await Promise.all([
      connect(redis.server.url, { keyPrefix, nodeId: 'a', logger, commandTimeoutMs }),
      connect(redis.server.url, { keyPrefix, nodeId: 'b', logger }),
    ]);
    const a = track(new RedisDedupeStore(ca, opts));
    const b = track(new RedisDedupeStore(cb, opts));
    // Both scripts known to Redis (the first use of each costs a NOSCRIPT and an EVAL).
    await a.claim('warm-up', FP);
    await a.complete('warm-up', reply);
    return { ca, cb, a, b, logger };
  }

  /** Calls of each command since the last CONFIG RESETSTAT, from INFO commandstats. */
  async function commandCalls(): Promise<Record<string, number>> {
    const admin = createClient({ url: redis.server.url });
    await admin.connect();
    const info = await admin.info('commandstats');
    admin.destroy();
    const out: Record<string, number> = {};
    for (const m of info.matchAll(/cmdstat_(\w+):calls=(\d+)/g)) out[m[1]!] = Number(m[2]);
    return out;
  }

  async function resetStats(conn: RedisConnection): Promise<void> {
    await conn.client.configResetStat();
  }

  it('claims made in one tick go as one EVALSHA, and their outcomes as one more', async () => {
    const { a, b, ca } = await twoNodes();
    const keys = Array.from({ length: 50 }, (_, i) => `k-tick-${i}`);
    await resetStats(ca);
    const claims = await Promise.all(keys.map((k) => a.claim(k, FP)));
    expect(claims.every((c) => c.state === 'new')).toBe(true);
    expect(a.stats.pending).toBe(50);
    expect((await commandCalls()).evalsha).toBe(1);
    await Promise.all(keys.map((k, i) => a.complete(k, { kind: 'result', envelope: `{"n":${i}}` })));
    expect(a.stats).toEqual({ pending: 0, unpersisted: 0, waiting: 0 });
    const calls = await commandCalls();
    expect(calls.evalsha).toBe(2);
    expect(calls.set).toBe(100); // a claim and an outcome per key, all inside the two scripts
    expect(calls.publish).toBe(50);
    // Each outcome landed on its own key; another node reads them (its claims: one more call).
    const seen = await Promise.all(keys.map((k) => b.claim(k, FP)));
    expect(seen).toEqual(
      keys.map((_, i) => ({ state: 'done', outcome: { kind: 'result', envelope: `{"n":${i}}` } })),
    );
    expect((await commandCalls()).evalsha).toBe(3);
  });

  it('outcomes of any text (multi-byte UTF-8), too big or not, each reach their key and their waiters', async () => {
    const { a, b } = await twoNodes({ maxOutcomeBytes: 60 });
    const texts = [
      '{"t":"é"}',
      '{"t":"日本語"}',
      '{"t":"😀 ok"}',
      '{"t":"plain"}',
      `{"t":"${'ü'.repeat(80)}"}`,
      '',
    ];
    const keys = texts.map((_, i) => `k-utf8-${i}`);
    for (const c of await Promise.all(keys.map((k) => a.claim(k, FP)))) expect(c).toEqual({ state: 'new' });
    const waiting = (await Promise.all(keys.map((k) => b.claim(k, FP)))).map(pending);
    await waitFor(() => b.stats.waiting === keys.length, 'the waiters');
    await sleep(50); // subscribed
    const outcomes: Outcome[] = texts.map((t, i) =>
      i === 3
        ? { kind: 'error', error: { code: -32000, message: 'ñ', data: { t: 'ß' } } }
        : { kind: 'result', envelope: t },
    );
    await Promise.all(keys.map((k, i) => a.complete(k, outcomes[i]!)));
    // The waiters get every outcome, the one too big to keep included (its message carries it).
    expect(await Promise.all(waiting)).toEqual(outcomes);
    const again = await Promise.all(keys.map((k) => b.claim(k, FP)));
    expect(again).toEqual(
      outcomes.map((o, i) => (i === 4 ? { state: 'dropped' } : { state: 'done', outcome: o })),
    );
  });

  it('a tick with more than 128 claims is sent as several calls of at most 128 keys', async () => {
    const { a, ca } = await twoNodes();
    const keys = Array.from({ length: 300 }, (_, i) => `k-many-${i}`);
    await resetStats(ca);
    const claims = await Promise.all(keys.map((k) => a.claim(k, FP)));
    expect(claims.every((c) => c.state === 'new')).toBe(true);
    expect((await commandCalls()).evalsha).toBe(3); // 128 + 128 + 44
    await Promise.all(keys.map((k) => a.complete(k, reply)));
    expect((await commandCalls()).evalsha).toBe(6);
    expect(a.stats).toEqual({ pending: 0, unpersisted: 0, waiting: 0 });
  });

  it('renews the leases of running claims in calls of at most 128 keys; each key answered on its own', async () => {
    const logger = captureLogger();
    const { a, ca } = await twoNodes({}, logger); // lease 30 s: no sweep but the one run here
    const keys = Array.from({ length: 200 }, (_, i) => `k-renew-${i}`);
    await Promise.all(keys.map((k) => a.claim(k, FP)));
    await ca.client.set(ca.key('dd', 'k-renew-0'), 'P42|someone-else', {
      expiration: { type: 'PX', value: 5000 },
    });
    await ca.client.del(ca.key('dd', 'k-renew-1'));
    await ca.client.del(ca.key('dd', 'k-renew-2'));
    await ca.client.hSet(ca.key('dd', 'k-renew-2'), 'f', 'v');
    await resetStats(ca);
    await (a as unknown as { sweep(): Promise<void> }).sweep();
    const calls = await commandCalls();
    expect(calls.evalsha).toBe(2); // 128 + 72 keys
    expect(calls.pexpire).toBe(197);
    expect(await ca.client.get(ca.key('dd', 'k-renew-1'))).toMatch(/^P42\|a\./); // re-taken
    const warned = logger.lines.filter((l) => l.msg === 'dedupe claim lost its lease while its handler runs');
    expect(warned.map((l) => (l.obj as { key: string }).key)).toEqual(['k-renew-0']);
    await Promise.all(keys.map((k) => a.complete(k, reply)));
  });

  it('one batch answers new, done, dropped, conflict, pending elsewhere and pending here, each on its own', async () => {
    const { a, b, ca, cb } = await twoNodes({ maxOutcomeBytes: 100 });
    // Set-up, on node b: a done key, a done key whose outcome was too big to keep, a running claim.
    expect(await b.claim('k-done', FP)).toEqual({ state: 'new' });
    await b.complete('k-done', reply);
    expect(await b.claim('k-big', FP)).toEqual({ state: 'new' });
    await b.complete('k-big', { kind: 'result', envelope: 'x'.repeat(200) });
    expect(await b.claim('k-running', FP)).toEqual({ state: 'new' });
    // A key holding something else than a string: its claim alone fails.
    await cb.client.hSet(cb.key('dd', 'k-hash'), 'f', 'v');
    await resetStats(ca);
    const batch = [
      a.claim('k-new', FP),
      a.claim('k-done', FP),
      a.claim('k-big', FP),
      a.claim('k-done', FP + 1),
      a.claim('k-running', FP),
      a.claim('k-hash', FP),
      a.claim('k-new', FP), // the same envelope twice in one batch: the second copy waits here
      a.claim('k-new', FP + 1),
    ];
    const [fresh, done, dropped, conflict, elsewhere, broken, twice, other] = await Promise.all(
      batch.map((c) => outcome(c)),
    );
    expect((await commandCalls()).evalsha).toBe(1);
    expect(fresh).toEqual({ ok: true, value: { state: 'new' } });
    expect(done).toEqual({ ok: true, value: { state: 'done', outcome: reply } });
    expect(dropped).toEqual({ ok: true, value: { state: 'dropped' } });
    expect(conflict).toEqual({ ok: true, value: { state: 'conflict' } });
    expect(other).toEqual({ ok: true, value: { state: 'conflict' } });
    expectUnavailable(broken!);
    const remote = pending(claimOf(elsewhere));
    const local = pending(claimOf(twice));
    expect(a.stats).toEqual({ pending: 1, unpersisted: 0, waiting: 1 });
    await a.complete('k-new', { kind: 'none' });
    expect(await local).toEqual({ kind: 'none' });
    await b.complete('k-running', reply);
    expect(await remote).toEqual(reply);
    await waitFor(() => a.stats.waiting === 0, 'the waiter gone');
    expect(a.stats).toEqual({ pending: 0, unpersisted: 0, waiting: 0 });
  });

  it('Redis stalling with batches in flight: every caller of each batch gets -32040', async () => {
    const { a, ca } = await twoNodes({}, captureLogger(), 300);
    await redis.server.pause();
    // Two batches, a tick of the stall check apart: each fails on its own check.
    const first = Array.from({ length: 20 }, (_, i) => outcome(a.claim(`k-stall-${i}`, FP)));
    await sleep(100);
    const second = Array.from({ length: 20 }, (_, i) => outcome(a.claim(`k-stall-late-${i}`, FP)));
    try {
      for (const r of await Promise.all([...first, ...second])) expectUnavailable(r);
    } finally {
      await redis.server.kill9(); // the calls given up on now fail for good: nothing changes
    }
    await redis.server.restart();
    await waitFor(() => ca.available, 'Redis available again', 8000);
    expect(await a.claim('k-stall-0', FP)).toEqual({ state: 'new' });
  });

  it('Redis killed with a batch in flight: every caller gets -32040; outcomes in flight are held, then written', async () => {
    const { a, b, ca, cb } = await twoNodes({ persistRetry: { baseMs: 20, maxMs: 100 } });
    const done = Array.from({ length: 10 }, (_, i) => `k-held-${i}`);
    for (const c of await Promise.all(done.map((k) => a.claim(k, FP)))) expect(c).toEqual({ state: 'new' });
    expect(await a.claim('k-refused', FP)).toEqual({ state: 'new' });
    await redis.server.pause(); // the claims, outcomes and release below reach Redis but get no answer
    const claims = Array.from({ length: 20 }, (_, i) => outcome(a.claim(`k-kill-${i}`, FP)));
    const completes = done.map((k) => a.complete(k, reply));
    const released = a.release('k-refused');
    await sleep(20);
    await redis.server.kill9();
    for (const r of await Promise.all(claims)) expectUnavailable(r);
    await released; // not released: its lease runs out by itself
    await Promise.all(completes); // resolved: the outcomes are held here
    expect(a.stats).toEqual({ pending: 0, unpersisted: 10, waiting: 0 });
    for (const k of done) expect(await a.claim(k, FP)).toEqual({ state: 'done', outcome: reply });
    await redis.server.restart();
    await waitFor(() => ca.available && cb.available, 'Redis available again', 8000);
    await waitFor(() => a.stats.unpersisted === 0, 'persisted');
    for (const c of await Promise.all(done.map((k) => b.claim(k, FP))))
      expect(c).toEqual({ state: 'done', outcome: reply });
  });

  it('outcomes held through an outage are written back in calls of at most 128', async () => {
    const { a, b, ca, cb } = await twoNodes({ persistRetry: { baseMs: 20, maxMs: 100 } });
    const keys = Array.from({ length: 200 }, (_, i) => `k-back-${i}`);
    await Promise.all(keys.map((k) => a.claim(k, FP)));
    await redis.server.kill9();
    await waitFor(() => !ca.available, 'unavailable');
    await Promise.all(keys.map((k) => a.complete(k, reply)));
    expect(a.stats.unpersisted).toBe(200);
    await redis.server.restart();
    await waitFor(() => ca.available && cb.available, 'Redis available again', 8000);
    await waitFor(() => a.stats.unpersisted === 0, 'persisted');
    const seen = await Promise.all(keys.map((k) => b.claim(k, FP)));
    expect(seen.every((c) => c.state === 'done')).toBe(true);
  });

  it('close sends the claims and outcomes of the tick before the connection closes', async () => {
    const keyPrefix = uniquePrefix();
    const ca = await connect(redis.server.url, { keyPrefix, nodeId: 'a' });
    const cb = await connect(redis.server.url, { keyPrefix, nodeId: 'b' });
    const a = new RedisDedupeStore(ca);
    const b = track(new RedisDedupeStore(cb));
    expect(await a.claim('k-closing', FP)).toEqual({ state: 'new' });
    const completed = a.complete('k-closing', reply);
    const claimed = outcome(a.claim('k-late', FP));
    a.close();
    await ca.close();
    await completed;
    expect(await claimed).toEqual({ ok: true, value: { state: 'new' } });
    expect(await b.claim('k-closing', FP)).toEqual({ state: 'done', outcome: reply });
  });

  it('an outcome Redis refuses on its key alone is held and retried; the rest of its batch is written', async () => {
    const logger = captureLogger();
    const { a, b, ca } = await twoNodes({ persistRetry: { baseMs: 20, maxMs: 40 } }, logger);
    for (const k of ['k-w1', 'k-w2', 'k-w3']) expect(await a.claim(k, FP)).toEqual({ state: 'new' });
    await ca.client.del(ca.key('dd', 'k-w2'));
    await ca.client.hSet(ca.key('dd', 'k-w2'), 'f', 'v'); // not a string: GET fails on it
    await Promise.all(['k-w1', 'k-w2', 'k-w3'].map((k) => a.complete(k, reply)));
    expect(a.stats).toEqual({ pending: 0, unpersisted: 1, waiting: 0 });
    expect(logger.lines.some((l) => l.msg === 'Redis command failed')).toBe(true);
    expect(await b.claim('k-w1', FP)).toEqual({ state: 'done', outcome: reply });
    expect(await b.claim('k-w3', FP)).toEqual({ state: 'done', outcome: reply });
    expect(await a.claim('k-w2', FP)).toEqual({ state: 'done', outcome: reply }); // from memory meanwhile
    await ca.client.del(ca.key('dd', 'k-w2'));
    await waitFor(() => a.stats.unpersisted === 0, 'written by a retry');
    expect(await b.claim('k-w2', FP)).toEqual({ state: 'done', outcome: reply });
  });

  it('an outcome without a JSON form is refused by a rejected promise, not a throw', async () => {
    const { a } = await twoNodes();
    expect(await a.claim('k-bigint', FP)).toEqual({ state: 'new' });
    const bad: Outcome = { kind: 'error', error: { code: -32000, message: 'x', data: { n: 1n } } };
    let completed: unknown;
    expect(() => {
      completed = a.complete('k-bigint', bad);
    }).not.toThrow();
    await expect(completed).rejects.toBeInstanceOf(TypeError);
    await a.complete('k-bigint', reply); // the claim is still running: a later outcome lands
    expect(await a.claim('k-bigint', FP)).toEqual({ state: 'done', outcome: reply });
  });

  it('a stored error outcome that does not parse fails that claim alone', async () => {
    const { a, ca } = await twoNodes();
    await ca.client.set(ca.key('dd', 'k-bad'), `E${FP}|{not json`);
    const [bad, good] = await Promise.all([outcome(a.claim('k-bad', FP)), outcome(a.claim('k-good', FP))]);
    expect(bad.ok).toBe(false);
    expect((bad as { err: unknown }).err).toBeInstanceOf(SyntaxError);
    expect(good).toEqual({ ok: true, value: { state: 'new' } });
  });
});

describe('RedisDedupeStore batching, an unexpected reply', () => {
  /** A connection whose every operation answers `reply`. */
  function fakeConnection(reply: unknown) {
    const logger = captureLogger();
    const conn = {
      nodeId: 'n',
      logger,
      key: (...parts: string[]) => `p:${parts.join(':')}`,
      onReady: () => () => {},
      unavailable: () => ASAPError.resourceExhausted('Shared state unavailable; retry later'),
      run: () => Promise.resolve(reply),
    } as unknown as RedisConnection;
    return { conn, logger };
  }

  it('a claim reply that is not one entry per key fails every claim of the batch', async () => {
    const { conn, logger } = fakeConnection('OK');
    const store = new RedisDedupeStore(conn, { persistRetry: { baseMs: 10_000 } });
    for (const r of await Promise.all([outcome(store.claim('x', FP)), outcome(store.claim('y', FP))]))
      expectUnavailable(r);
    expect(logger.lines.filter((l) => l.msg === 'Redis command failed')).toHaveLength(1);
    store.close();
  });

  it('an outcome whose write got an unexpected reply is held for a retry', async () => {
    const { conn, logger } = fakeConnection([null]);
    const store = new RedisDedupeStore(conn, { leaseMs: 6, persistRetry: { baseMs: 10_000 } });
    expect(await store.claim('x', FP)).toEqual({ state: 'new' });
    (conn as { run: unknown }).run = () => Promise.resolve('OK');
    await sleep(20); // lease renewals answered 'OK' meanwhile: nothing to say about them
    expect(logger.lines).toEqual([]);
    await store.complete('x', reply);
    expect(store.stats).toEqual({ pending: 0, unpersisted: 1, waiting: 0 });
    expect(logger.lines.filter((l) => l.msg === 'Redis command failed')).toHaveLength(1);
    store.close();
  });
});
