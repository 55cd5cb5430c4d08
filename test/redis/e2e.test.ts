/**
 * End to end on Redis (issue 14, "Real parts in tests"): three nodes of one agent, each a real
 * process (test/support/redis-node.ts: the demo agent on `redisStore`, as `asap serve --redis`
 * runs it, with short test intervals) on one real redis-server, and our WebSocketTransport behind
 * a real TCP proxy that the test re-targets to another node at every cut.
 *
 * 1. 1,000 `count` requests (one key each, 16 in flight) and 300 pushes from random nodes, through
 *    22 cuts and 3 `kill -9` + restarts (twice the node holding the client, once another one):
 *    every request answered once, every counter exactly 1 in Redis, every accepted push
 *    delivered exactly once, nothing pending. The node holding the client is killed with its
 *    replies held in the proxy once it has finished what it received (the crash is outside the
 *    documented crash-during-handler window, where nothing may run twice).
 * 2. The documented crash window itself, measured: `kill -9` of the node holding the client in
 *    the middle of the flow. A request whose handler was running there may run again once its
 *    claim's lease expires (src/redis/dedupe.ts); nothing else may.
 * 3. A push to a session whose connection is closing (a close frame or a reset seen, the socket's
 *    'close' not yet) is kept for the resume (asap-wire.md §12), not refused (a bug once: pushes
 *    were refused with "Connection is closed" while the client was moving).
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { WebSocketTransport } from '../../src/client/websocket-transport.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import { countingFactory } from '../chaos/helpers.js';
import {
  cleanupsAfterEach,
  countTask as countTaskFor,
  health,
  Progress,
  type PushResult,
  type RedisNode,
  readCounters,
  resultOf,
  seededRandom,
  startRedisNode,
  until,
  within,
} from '../support/redis-nodes.js';
import { type RedisServer, redisAvailable, startRedis } from '../support/redis-server.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const CLIENT_URN = 'urn:asap:agent:e2e-client';
const _AGENT_URN = 'urn:asap:agent:demo';

const cleanups = cleanupsAfterEach();
const countTask = (key: string) => countTaskFor(key, CLIENT_URN, 'conv-e2e');

async function startCluster(slots: number) {
  const redis: RedisServer = await startRedis();
  cleanups.push(() => redis.stop());
  const nodes: RedisNode[] = [];
  let incarnation = 0;
  const spawn = async (slot: number): Promise<RedisNode> => {
    const node = await startRedisNode(redis.url, `node-${slot}-${incarnation++}`);
    cleanups.push(() => node.kill9());
    nodes[slot] = node;
    return node;
  };
  await Promise.all(Array.from({ length: slots }, (_, slot) => spawn(slot)));
  const proxy = await TcpProxy.start({ targetPort: nodes[0]!.port });
  cleanups.push(() => Promise.race([proxy.close(), new Promise((r) => setTimeout(r, 3000))]));
  const writes = new Map<string, number>();
  const transport = new WebSocketTransport(proxy.url('/asap/ws', 'ws'), {
    webSocketFactory: countingFactory(writes),
    backoff: { baseMs: 10, maxMs: 100 },
    heartbeatIntervalMs: 250,
    timerResolutionMs: 10,
    ack: { timeoutMs: 3000, maxRetries: 5 },
    requestTimeoutMs: 30_000,
    // Connections refused while a node restarts must not open a breaker that fails requests fast.
    circuitBreaker: false,
  });
  cleanups.push(() => transport.close());
  await transport.connect();
  await until(() => transport.sessionId !== undefined, 'the session (§12)');
  return { redis, nodes, spawn, proxy, transport, writes };
}

/** Waits until the node has nothing in flight (health: no task, no queued answer), twice in a row. */
async function idle(node: RedisNode): Promise<void> {
  let quiet = 0;
  await until(
    async () => {
      const h = await health(node.port);
      quiet = h.activeTasks === 0 && h.queueDepth === 0 ? quiet + 1 : 0;
      return quiet >= 2;
    },
    `node ${node.nodeId} idle`,
    5000,
  );
}

describe.skipIf(!redisAvailable())('Redis end to end: three nodes, cuts, kill -9, pushes', () => {
  it('1,000 requests and 300 pushes through 22 cuts and 3 kill -9: all exactly once', async () => {
    const started = performance.now();
    const REQUESTS = 1000;
    const PUSHES = 300;
    const WINDOW = 16;
    const PHASES = 25;
    const PER_PHASE = REQUESTS / PHASES;
    /** Phase → what happens at its middle; every other phase cuts the connection. */
    const KILLS = new Map<number, 'holder' | 'other'>([
      [5, 'holder'],
      [12, 'other'],
      [19, 'holder'],
    ]);
    const seed = Number(process.env['ASAP_E2E_SEED'] ?? Date.now() % 1_000_000);
    const random = seededRandom(seed);

    const { redis, nodes, spawn, proxy, transport, writes } = await startCluster(3);
    const setup = performance.now();
    let current = nodes[0]!;
    const dying = new Set<RedisNode>();
    const live = () => nodes.filter((n) => n.alive && !dying.has(n));
    /** Another live node than `current`, in turn. */
    const nextNode = (): RedisNode => {
      const others = live().filter((n) => n !== current);
      if (others.length === 0) throw new Error('no other live node');
      return others[Math.floor(random() * others.length)]!;
    };

    let lastOpen = performance.now();
    transport.on('open', () => {
      lastOpen = performance.now();
    });
    const sessions: { resumed: boolean }[] = [];
    transport.on('session', (s) => sessions.push(s));

    // ---- pushes seen by the client, by marker ----
    const delivered = new Map<string, number>();
    transport.onMessage((env) => {
      const marker = (env.payload as { task_id?: string }).task_id;
      if (typeof marker === 'string') delivered.set(marker, (delivered.get(marker) ?? 0) + 1);
    });

    // ---- requests: one key each, WINDOW in flight, no further than the controller allows ----
    const completed = new Progress();
    const allowed = new Progress();
    const answers: ({ key: string; count: number } | { error: string } | undefined)[] = new Array(REQUESTS);
    const settles = new Array<number>(REQUESTS).fill(0);
    const inFlightKeys = new Set<string>();
    const load = (async () => {
      const window = new Set<Promise<void>>();
      for (let i = 0; i < REQUESTS; i++) {
        await allowed.until(i + 1);
        while (window.size >= WINDOW) await Promise.race(window);
        const key = `k-${i}`;
        inFlightKeys.add(key);
        const p: Promise<void> = transport.request(countTask(key)).then(
          (env) => {
            const r = resultOf(env);
            answers[i] = { key: String(r.key), count: Number(r.count) };
          },
          (err: Error) => {
            answers[i] = { error: err.message };
          },
        );
        const tracked = p.finally(() => {
          settles[i] = (settles[i] ?? 0) + 1;
          inFlightKeys.delete(key);
          window.delete(tracked);
          completed.add();
        });
        window.add(tracked);
      }
      await Promise.all(window);
    })();

    // ---- pushes: spread over the run, from a random live node each ----
    interface PushRecord {
      marker: string;
      from: string;
      clientState: string;
      msSinceOpen: number;
      result?: PushResult;
    }
    const pushes: PushRecord[] = [];
    const pushing = (async () => {
      const pending = new Set<Promise<void>>();
      for (let j = 0; j < PUSHES; j++) {
        // From the first answer on: a connection is indexed under its URN by its first envelope.
        await completed.until(Math.max(1, Math.floor((j * REQUESTS) / PUSHES)));
        while (pending.size >= 8) await Promise.race(pending);
        const candidates = live();
        const node = candidates[Math.floor(random() * candidates.length)]!;
        const rec: PushRecord = {
          marker: `p-${j}`,
          from: node.nodeId,
          clientState: transport.state,
          msSinceOpen: Math.round(performance.now() - lastOpen),
        };
        pushes.push(rec);
        const p: Promise<void> = node.push(CLIENT_URN, rec.marker).then((r) => {
          rec.result = r;
        });
        const tracked = p.finally(() => pending.delete(tracked));
        pending.add(tracked);
      }
      await Promise.all(pending);
    })();

    // ---- the controller: at the middle of each phase, a cut or a kill ----
    let cuts = 0;
    const kills: { kind: string; node: string; inFlight: number }[] = [];
    for (let phase = 0; phase < PHASES; phase++) {
      allowed.set(PER_PHASE * (phase + 1));
      await within(completed.until(PER_PHASE * phase + PER_PHASE / 2), 20_000, `phase ${phase}: requests`);
      const kind = KILLS.get(phase);
      if (kind === undefined) {
        const next = nextNode();
        proxy.setTarget(next.port);
        current = next;
        proxy.cut();
        cuts++;
        continue;
      }
      const victim = kind === 'holder' ? current : nextNode();
      const slot = nodes.indexOf(victim);
      dying.add(victim);
      const inFlight = inFlightKeys.size;
      if (kind === 'holder') {
        // Replies held: nothing more reaches the client or the node; the node finishes what it has.
        proxy.blackhole();
        const next = nextNode();
        proxy.setTarget(next.port);
        current = next;
        await idle(victim);
      }
      await victim.settled(); // pushes sent through it have their answer (so each is accounted for)
      await victim.kill9();
      if (kind === 'holder') {
        proxy.cut(); // the held replies die with the connection
        proxy.resume();
      }
      kills.push({ kind, node: victim.nodeId, inFlight });
      dying.delete(victim);
      await spawn(slot);
    }
    await within(Promise.all([load, pushing]), 30_000, 'the last requests and pushes');
    const loadDone = performance.now();

    // ---- requests: each answered once, with its own key, never run twice ----
    const wrong = answers
      .map((a, i) => ({ a, key: `k-${i}` }))
      .filter(({ a, key }) => a === undefined || 'error' in a || a.key !== key || a.count !== 1);
    const counters = await readCounters(
      redis.url,
      Array.from({ length: REQUESTS }, (_, i) => `k-${i}`),
    );
    const notOne = counters.map((c, i) => ({ key: `k-${i}`, c })).filter(({ c }) => c !== 1);

    // ---- pushes: every accepted one delivered exactly once; none delivered twice ----
    const accepted = pushes.filter((p) => (p.result?.n ?? 0) >= 1);
    await until(
      () => accepted.every((p) => delivered.has(p.marker)),
      'every accepted push to be delivered',
      10_000,
    ).catch(() => {});
    const acceptedLost = accepted.filter((p) => delivered.get(p.marker) !== 1);
    // Not accepted (server.push answered 0, so the pusher knows; reported, not asserted): pushes that
    // reached only a connection whose socket was closing after a cut, "Connection is closed" (a bug:
    // see the `it.fails` below), or that found no connection nor parked session for the URN (after a
    // crash of the node holding the client, until its first envelope on the new node).
    const notAccepted = pushes.filter((p) => (p.result?.n ?? 0) === 0);
    const deliveredNotAccepted = notAccepted.filter((p) => delivered.has(p.marker));
    const twice = [...delivered].filter(([, n]) => n > 1);

    // ---- nothing pending ----
    await until(() => transport.inFlight === 0 && transport.unacknowledged === 0, 'nothing pending', 5000);

    const resent = [...writes.values()].filter((n) => n > 1).length;
    const summary = {
      seed,
      requests: REQUESTS,
      answered: answers.filter((a) => a !== undefined && !('error' in a)).length,
      reRuns: counters.reduce((s, c) => s + Math.max(0, c - 1), 0),
      envelopesWrittenMoreThanOnce: resent,
      cuts,
      kills,
      sessionsResumed: sessions.filter((s) => s.resumed).length,
      sessionsNotResumed: sessions.filter((s) => !s.resumed).length,
      pushes: {
        sent: pushes.length,
        accepted: accepted.length,
        delivered: delivered.size,
        acceptedNotDeliveredOnce: acceptedLost.map((p) => ({ ...p, times: delivered.get(p.marker) ?? 0 })),
        notAccepted: notAccepted.map((p) => ({ ...p, delivered: delivered.has(p.marker) })),
        deliveredNotAccepted: deliveredNotAccepted.length,
      },
      ms: {
        setup: Math.round(setup - started),
        load: Math.round(loadDone - setup),
        total: Math.round(performance.now() - started),
      },
    };
    console.log(`[redis e2e] ${JSON.stringify(summary)}`);

    expect(settles.every((n) => n === 1)).toBe(true);
    expect(wrong).toEqual([]);
    expect(notOne).toEqual([]);

    expect(cuts).toBeGreaterThanOrEqual(20);
    expect(kills).toHaveLength(3);
    expect(pushes).toHaveLength(PUSHES);
    expect(twice).toEqual([]);
    expect(acceptedLost).toEqual([]);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  }, 60_000);

  it('kill -9 mid-flow (the documented crash window): only requests in flight on the dead node may run again; accepted pushes survive', async () => {
    const REQUESTS = 300;
    const WINDOW = 16;
    const LEASE_MS = 1500; // test/support/redis-node.ts default
    const { redis, nodes, proxy, transport } = await startCluster(2);
    const [a, b] = [nodes[0]!, nodes[1]!];
    const delivered = new Map<string, number>();
    transport.onMessage((env) => {
      const marker = (env.payload as { task_id?: string }).task_id;
      if (typeof marker === 'string') delivered.set(marker, (delivered.get(marker) ?? 0) + 1);
    });
    // A first request indexes the client's connection under its URN (pushes to it reach it from then on).
    await transport.request(countTask('w-warmup'));

    const inFlightKeys = new Set<string>();
    const answers: ({ key: string; count: number; ms: number } | { error: string } | undefined)[] = new Array(
      REQUESTS,
    );
    let inFlightAtKill: string[] = [];
    let killedAt = 0;
    /** When the client first got an answer from the survivor (its connection is indexed there from then on). */
    let reopenedAt = Number.POSITIVE_INFINITY;
    let reindexedAt = Number.POSITIVE_INFINITY;
    transport.on('open', () => {
      if (killedAt > 0 && reopenedAt === Number.POSITIVE_INFINITY) reopenedAt = performance.now();
    });
    let killed: Promise<void> | undefined;
    /** With the window full, the node holding the client dies at once (SIGKILL is sent synchronously). */
    const kill = (): Promise<void> => {
      inFlightAtKill = [...inFlightKeys];
      proxy.setTarget(b.port);
      killedAt = performance.now();
      const dead = a.kill9();
      return dead.then(() => proxy.cut());
    };
    // Pushes from the surviving node to the client, one every other request, across the crash.
    const pushes: { marker: string; at: number; result?: PushResult }[] = [];
    const pushing = new Set<Promise<void>>();
    const started = performance.now();
    const window = new Set<Promise<void>>();
    for (let i = 0; i < REQUESTS; i++) {
      while (window.size >= WINDOW) await Promise.race(window);
      const key = `w-${i}`;
      inFlightKeys.add(key);
      const sentAt = performance.now();
      const p: Promise<void> = transport.request(countTask(key)).then(
        (env) => {
          const r = resultOf(env);
          const now = performance.now();
          answers[i] = { key: String(r.key), count: Number(r.count), ms: now - sentAt };
          if (now > reopenedAt && now < reindexedAt) reindexedAt = now;
        },
        (err: Error) => {
          answers[i] = { error: err.message };
        },
      );
      const tracked = p.finally(() => {
        inFlightKeys.delete(key);
        window.delete(tracked);
      });
      window.add(tracked);
      if (i % 2 === 0 && pushing.size < 8) {
        const rec: { marker: string; at: number; result?: PushResult } = {
          marker: `q-${i}`,
          at: performance.now(),
        };
        pushes.push(rec);
        const pushed: Promise<void> = b.push(CLIENT_URN, rec.marker).then((r) => {
          rec.result = r;
        });
        const t = pushed.finally(() => pushing.delete(t));
        pushing.add(t);
      }
      if (i === REQUESTS / 2) killed = kill();
    }
    await within(Promise.all([...window, ...pushing]), 15_000, 'the requests and pushes');
    expect(killed).toBeDefined();
    await killed;
    const elapsed = Math.round(performance.now() - started);

    const wrong = answers
      .map((x, i) => ({ x, key: `w-${i}` }))
      .filter(({ x, key }) => x === undefined || 'error' in x || x.key !== key);
    const keys = Array.from({ length: REQUESTS }, (_, i) => `w-${i}`);
    const counters = await readCounters(redis.url, keys);
    const atKill = new Set(inFlightAtKill);
    const reRun = keys.filter((_, i) => counters[i] === 2);
    /** Answered only after the dead node's claim lease ran out: their handler ran again on the survivor. */
    const waitedForLease = answers.filter((x) => x !== undefined && 'ms' in x && x.ms >= LEASE_MS * 0.6);
    const outsideWindow = keys
      .map((k, i) => ({ k, c: counters[i] }))
      .filter(({ k, c }) => (atKill.has(k) ? c !== 1 && c !== 2 : c !== 1));

    const accepted = pushes.filter((p) => (p.result?.n ?? 0) >= 1);
    await until(() => accepted.every((p) => delivered.has(p.marker)), 'accepted pushes', 10_000).catch(
      () => {},
    );
    const notAccepted = pushes
      .filter((p) => (p.result?.n ?? 0) === 0)
      .map((p) => ({
        marker: p.marker,
        msAfterKill: Math.round(p.at - killedAt),
        beforeReindex: p.at < reindexedAt,
        error: p.result?.error,
        delivered: delivered.has(p.marker),
      }));
    console.log(
      `[redis crash window] ${JSON.stringify({
        requests: REQUESTS,
        inFlightAtKill: inFlightAtKill.length,
        ranAgainAfterLease: waitedForLease.length,
        reRunCounters: reRun.length,
        reRunKeys: reRun,
        reopenedMsAfterKill: Math.round(reopenedAt - killedAt),
        reindexedMsAfterKill: Math.round(reindexedAt - killedAt),
        pushes: { sent: pushes.length, accepted: accepted.length, delivered: delivered.size, notAccepted },
        ms: elapsed,
      })}`,
    );
    expect(wrong).toEqual([]);
    // Outside the window nothing runs twice; inside it (documented) a request may run again.
    expect(outsideWindow).toEqual([]);
    expect(reRun.every((k) => atKill.has(k))).toBe(true);
    // Every push the survivor counted as taken reached the client, once.
    expect(accepted.filter((p) => delivered.get(p.marker) !== 1)).toEqual([]);
    expect([...delivered.values()].every((n) => n === 1)).toBe(true);
    // NOT GUARANTEED BY THE DESIGN (measured, reported): pushes sent around the crash, until the client's
    // connection is indexed under its URN on the survivor (its first envelope there), are refused
    // (server.push resolves 0: the pusher knows) and never delivered. The dead node's parked
    // session target died with it, and a resume on another node does not index the connection
    // under the session's URNs (SessionBinding.resume adopts only URNs parked on the same node).
    // Once re-indexed, every push is taken:
    expect(notAccepted.filter((p) => !p.beforeReindex)).toEqual([]);
    await until(() => transport.inFlight === 0 && transport.unacknowledged === 0, 'nothing pending', 5000);
  }, 30_000);

  /*
   * asap-wire.md §12, "Pushes to a session whose connection is gone are kept ... until it
   * resumes": once the server has seen the client's close frame (or a reset) its socket is
   * CLOSING until the 'close' event parks the session; with a client that does not answer the
   * close (here: it stops reading) that lasts ws's close timeout, 30 s. Pushes meanwhile go to
   * the session (Connection.push checks the session before the socket) and the resume replays them.
   */
  it('pushes to a session whose connection is closing are kept for the resume (§12)', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const node = await startRedisNode(redis.url, 'node-closing');
    cleanups.push(() => node.kill9());
    type Frame = {
      id?: unknown;
      method?: string;
      params?: { session_id?: string; resumed?: boolean; seq?: number; envelope?: Envelope<object> };
    };
    const open = async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${node.port}/asap/ws`, 'asap.v1');
      const frames: Frame[] = [];
      ws.on('message', (d) => frames.push(JSON.parse(String(d)) as Frame));
      ws.on('error', () => {});
      cleanups.push(() => ws.terminate());
      await once(ws, 'open');
      return { ws, frames, send: (f: unknown) => ws.send(JSON.stringify(f)) };
    };
    const markers = (frames: Frame[]) =>
      frames
        .filter((f) => f.method === 'asap.send')
        .map((f) => (f.params?.envelope?.payload as { task_id?: string } | undefined)?.task_id);

    // A client with a session, indexed under its URN by a first request, gets a first push (seq 1).
    const first = await open();
    first.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id: null } });
    await until(() => first.frames.some((f) => f.method === 'asap.session'), 'asap.session');
    const sessionId = first.frames.find((f) => f.method === 'asap.session')!.params!.session_id!;
    first.send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: countTask('closing') }, id: 'r1' });
    await until(() => first.frames.some((f) => f.id === 'r1'), 'the first answer');
    expect(await node.push(CLIENT_URN, 'c-0')).toEqual({ n: 1 });
    await until(() => markers(first.frames).includes('c-0'), 'the first push');

    // The client closes (close frame sent) and then reads nothing more: the server's socket stays CLOSING.
    first.ws.close(1000);
    (first.ws as unknown as { _socket: Socket })._socket.pause();
    const results: { marker: string; n: number; error?: string }[] = [];
    for (let i = 1; i <= 10; i++) {
      await new Promise((r) => setTimeout(r, 30));
      const marker = `c-${i}`;
      results.push({ marker, ...(await node.push(CLIENT_URN, marker)) });
    }

    // The client comes back and resumes from seq 1: every push sent meanwhile should be replayed.
    const second = await open();
    second.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id: sessionId, last_seq: 1 } });
    await until(() => second.frames.some((f) => f.method === 'asap.session'), 'the resume');
    expect(second.frames.find((f) => f.method === 'asap.session')!.params).toEqual({
      session_id: sessionId,
      resumed: true,
    });
    const kept = results.filter((r) => r.n >= 1).map((r) => r.marker);
    await until(() => kept.every((m) => markers(second.frames).includes(m)), 'the replay', 5000);
    console.log(`[redis closing-session push] ${JSON.stringify(results)}`);
    expect(results.filter((r) => r.n !== 1)).toEqual([]); // fails today: refused with "Connection is closed"
    expect(markers(second.frames)).toEqual(results.map((r) => r.marker));
  }, 20_000);
});
