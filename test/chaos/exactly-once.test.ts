/**
 * End-to-end exactly-once (asap-wire.md §6, §7): 1,000 `count` requests, each on its own key, over one
 * WebSocketTransport through the proxy, about 50 at a time, while the connection is cut at random moments
 * and acks are now and then delayed past the ack timeout (so the client retransmits). Every request must get
 * exactly one response with count 1, the server must have run each envelope exactly once, and nothing may
 * be left pending.
 *
 * The chaos is driven by a seeded PRNG; a failure message names the seed (set CHAOS_SEED to replay it).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { Envelope } from '../../src/protocol/envelope.js';
import { cleanup, countingFactory, resultOf, setup, task, uniqueKey, waitFor, within } from './helpers.js';

afterEach(cleanup);

const TOTAL = 1000;
const CONCURRENCY = 50;
const MIN_CUTS = 20;

/** mulberry32: small, fast, good enough to place faults. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('exactly-once under cuts and late acks', () => {
  it('1,000 count requests: one response each, count 1 each, each envelope processed once', {
    timeout: 60_000,
  }, async () => {
    const seed = Number(process.env.CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const random = prng(seed);
    const writes = new Map<string, number>();
    // Heartbeats of 200 ms on both sides (3 intervals = 600 ms): the 150 ms latency periods must delay
    // acks, not look like a dead peer (with 50 ms heartbeats either side would drop the connection at once).
    const { proxy, transport } = await setup(
      { webSocketFactory: countingFactory(writes), requestTimeoutMs: 30_000, heartbeatIntervalMs: 200 },
      { heartbeatIntervalMs: 200 },
    );
    const pushes: Envelope<object>[] = [];
    transport.onMessage((env) => pushes.push(env));
    let reconnects = 0;
    transport.on('reconnected', () => reconnects++);

    const prefix = uniqueKey('once');
    const keys = Array.from({ length: TOTAL }, (_, i) => `${prefix}-${i}`);
    const envelopes = keys.map((key) => task('count', { key }));
    const responses: (Envelope<object> | undefined)[] = new Array(TOTAL);
    const errors: string[] = [];
    let responsesSeen = 0;
    let next = 0;
    let done = false;
    let cuts = 0;
    let slowPeriods = 0;

    // The chaos: cut every 20–80 ms; every third round, first delay everything by 150 ms (acks then
    // arrive after the 100 ms ack timeout, so the client retransmits) for 100–250 ms.
    const chaos = (async () => {
      let round = 0;
      while (!done) {
        round++;
        if (round % 3 === 0) {
          proxy.setLatency(150);
          slowPeriods++;
          await sleep(100 + Math.floor(random() * 150));
          proxy.setLatency(0);
        }
        await sleep(20 + Math.floor(random() * 60));
        if (done) break;
        // Count only cuts of an open connection (a cut during a handshake just fails that attempt).
        if (transport.state === 'open') cuts++;
        proxy.cut();
      }
    })();

    // Keep the load going until the chaos has cut often enough, so that the cuts land on live requests.
    const worker = async (): Promise<void> => {
      while (next < TOTAL) {
        const i = next++;
        // Each cut unlocks the next 1/MIN_CUTS of the requests: cuts keep landing on live traffic.
        while (cuts < MIN_CUTS && i >= (TOTAL * (cuts + 1)) / (MIN_CUTS + 1)) await sleep(5);
        try {
          const res = await transport.request(envelopes[i]!);
          responsesSeen++;
          if (responses[i] !== undefined) errors.push(`request ${i} resolved twice`);
          responses[i] = res;
        } catch (err) {
          errors.push(`request ${i}: ${(err as Error).message}`);
        }
      }
    };
    try {
      await within(
        Promise.all(Array.from({ length: CONCURRENCY }, worker)),
        45_000,
        `requests (seed ${seed})`,
      );
    } finally {
      done = true;
      await chaos;
      proxy.setLatency(0);
    }

    const context = `seed ${seed}, ${cuts} cuts, ${reconnects} reconnects, ${slowPeriods} slow periods`;
    expect(errors, context).toEqual([]);
    expect(responsesSeen, context).toBe(TOTAL);
    expect(cuts, context).toBeGreaterThanOrEqual(MIN_CUTS);
    expect(reconnects, context).toBeGreaterThanOrEqual(MIN_CUTS);
    const wrong = responses
      .map((res, i) => ({ i, res }))
      .filter(
        ({ i, res }) =>
          res === undefined ||
          res.correlation_id !== envelopes[i]!.id ||
          resultOf(res).key !== keys[i] ||
          resultOf(res).count !== 1,
      )
      .map(({ i, res }) => ({ i, result: res && resultOf(res) }));
    expect(wrong, context).toEqual([]);
    // Duplicate answers (to retransmitted copies) are dropped, never delivered as pushes.
    expect(pushes, context).toEqual([]);
    // The chaos really forced copies: some envelopes were written more than once.
    const copied = [...writes.values()].filter((n) => n > 1).length;
    expect(copied, context).toBeGreaterThan(0);
    await waitFor(
      () => transport.inFlight === 0 && transport.unacknowledged === 0,
      `nothing pending (${context}; ${transport.inFlight} in flight, ${transport.unacknowledged} unacked)`,
    );

    // The server ran each envelope exactly once: one more call per key, on a calm link, counts 2.
    let k = 0;
    const second: number[] = new Array(TOTAL);
    const check = async (): Promise<void> => {
      while (k < TOTAL) {
        const i = k++;
        second[i] = resultOf(await transport.request(task('count', { key: keys[i]! }))).count as number;
      }
    };
    await within(Promise.all(Array.from({ length: CONCURRENCY }, check)), 20_000, `second pass (${context})`);
    const twice = second.map((c, i) => ({ i, c })).filter(({ c }) => c !== 2);
    expect(twice, context).toEqual([]);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  });
});
