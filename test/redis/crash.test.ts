/**
 * Crashes around the shared state (issue 14, "Real parts in tests"), with the real `asap serve
 * --redis` command (spawned from the sources, as test/cli does) on a real redis-server:
 *
 * (a) `kill -9` with replies held: the server processed 50 requests (their counters and outcomes
 *     are in Redis) but its replies are still held in the TCP proxy when it is killed. A new
 *     process on the same port gets the client's resends (same envelope ids) and answers them
 *     from the dedupe store: 0 re-runs. (Without Redis the issue measured 50 re-runs of 50.)
 * (b) Redis restarted mid-load (SIGKILL, then started again with its data): requests get
 *     -32040 with data.retry_after_ms while it is away, or succeed; health is 503 meanwhile and
 *     200 after; the server recovers by itself; every counter is exactly 1 for each request the
 *     client saw succeed, and no counter is above 1.
 */
import { createClient } from '@redis/client';
import { describe, expect, it } from 'vitest';
import { WebSocketTransport, type WebSocketTransportOptions } from '../../src/client/websocket-transport.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { countingFactory } from '../chaos/helpers.js';
import { type CliProcess, LISTEN_LINE, spawnCli, startServe, waitFor } from '../cli/cli-helpers.js';
import {
  cleanupsAfterEach,
  countTask as countTaskFor,
  health,
  Progress,
  readCounters,
  resultOf,
  until,
  within,
} from '../support/redis-nodes.js';
import { freePort, type RedisServer, redisAvailable, startRedis } from '../support/redis-server.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const CLIENT_URN = 'urn:asap:agent:crash-client';
const _AGENT_URN = 'urn:asap:agent:demo';

const cleanups = cleanupsAfterEach();
const countTask = (key: string) => countTaskFor(key, CLIENT_URN, 'conv-crash');

async function useRedis(): Promise<RedisServer> {
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  return redis;
}

/** `asap serve --redis URL --port PORT` (from the sources), once it printed its listening line. */
async function serveOn(redisUrl: string, port: number): Promise<CliProcess> {
  const p = spawnCli([
    'serve',
    '--redis',
    redisUrl,
    '--port',
    String(port),
    '--rate-limit',
    '0',
    '--log-level',
    'warn',
  ]);
  cleanups.push(() => {
    if (p.running()) p.child.kill('SIGKILL');
    return p.exited;
  });
  await waitFor(
    () =>
      p
        .stdout()
        .split('\n')
        .some((l) => LISTEN_LINE.test(l)),
    15_000,
    () => `no listening line; stderr=${p.stderr()}`,
    () => !p.running(),
  );
  return p;
}

function transportTo(url: string, writes: Map<string, number>, opts: WebSocketTransportOptions = {}) {
  const transport = new WebSocketTransport(url, {
    webSocketFactory: countingFactory(writes),
    backoff: { baseMs: 10, maxMs: 100 },
    timerResolutionMs: 10,
    requestTimeoutMs: 30_000,
    circuitBreaker: false,
    ...opts,
  });
  cleanups.push(() => transport.close());
  return transport;
}

describe.skipIf(!redisAvailable())('asap serve --redis: crashes', () => {
  it('(a) kill -9 with 50 replies held, restart on the same port: the resends are answered, 0 re-runs', async () => {
    const started = performance.now();
    const N = 50;
    const redis = await useRedis();
    const port = await freePort();
    let serve = await serveOn(redis.url, port);
    const proxy = await TcpProxy.start({ targetPort: port });
    cleanups.push(() => Promise.race([proxy.close(), new Promise((r) => setTimeout(r, 3000))]));
    const writes = new Map<string, number>();
    const transport = transportTo(proxy.url('/asap/ws', 'ws'), writes, {
      // The replies (and acks) are held on purpose: no heartbeat verdict, a long ack wait.
      heartbeatIntervalMs: 0,
      ack: { timeoutMs: 15_000, maxRetries: 3 },
    });
    await transport.connect();
    expect(resultOf(await transport.request(countTask('a-warmup')))).toEqual({ key: 'a-warmup', count: 1 });

    // Every chunk the proxy gets from now on waits 1.5 s: the requests reach the server after it,
    // and their replies would reach the client 1.5 s after that.
    proxy.setLatency(1500);
    const keys = Array.from({ length: N }, (_, i) => `a-${i}`);
    const envelopes = keys.map((k) => countTask(k));
    let settledEarly = 0;
    let killed = false;
    const answers = envelopes.map((env) =>
      transport.request(env).finally(() => {
        if (!killed) settledEarly++;
      }),
    );
    // Processed: every counter is 1 and the server has nothing in flight (each outcome is stored
    // and each reply written), while the replies still wait in the proxy. Then hold everything.
    await until(async () => (await readCounters(redis.url, keys)).every((c) => c === 1), 'counters at 1');
    await until(async () => {
      const h = await health(port);
      return h.activeTasks === 0 && h.queueDepth === 0;
    }, 'server idle');
    proxy.blackhole();
    expect(settledEarly).toBe(0); // no reply got through: the test holds what it means to hold

    killed = true;
    serve.child.kill('SIGKILL');
    expect((await serve.exited).signal).toBe('SIGKILL');
    proxy.cut(); // the held replies die with the connection
    proxy.setLatency(0);
    proxy.resume();
    const killedAt = performance.now();
    serve = await serveOn(redis.url, port);

    const results = await within(Promise.all(answers), 20_000, 'the answers after the restart');
    const recovered = performance.now();
    const counters = await readCounters(redis.url, keys);
    // Each envelope went out at least twice (first copy, resend after the reconnect), same id.
    const resent = envelopes.filter((e) => (writes.get(e.id) ?? 0) >= 2).length;
    console.log(
      `[redis crash a] ${JSON.stringify({
        requests: N,
        processedBeforeKill: N,
        repliesDeliveredBeforeKill: settledEarly,
        resent,
        reRuns: counters.reduce((s, c) => s + Math.max(0, c - 1), 0),
        answered: results.length,
        msKillToAllAnswered: Math.round(recovered - killedAt),
        msTotal: Math.round(performance.now() - started),
      })}`,
    );
    expect(results.map((env) => resultOf(env))).toEqual(keys.map((key) => ({ key, count: 1 })));
    expect(counters).toEqual(keys.map(() => 1));
    expect(resent).toBe(N);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  }, 30_000);

  it('(b) Redis killed and restarted mid-load: -32040 + retry_after_ms meanwhile, health 503 then 200, recovery, 0 re-runs', async () => {
    const started = performance.now();
    const redis = await useRedis();
    const serve = await startServe(['--redis', redis.url, '--rate-limit', '0', '--log-level', 'error']);
    cleanups.push(() => serve.stop('SIGKILL'));
    const writes = new Map<string, number>();
    const transport = transportTo(serve.ws, writes, { heartbeatIntervalMs: 1000 });
    await transport.connect();

    type Outcome =
      | { ok: true; count: number; key: string; phase: string }
      | { ok: false; code: number; retryAfterMs: unknown; message: string; phase: string };
    const outcomes: Outcome[] = [];
    const successes = new Progress();
    const refusals = new Progress();
    let phase = 'before';
    let stop = false;
    const WINDOW = 8;
    const load = (async () => {
      const window = new Set<Promise<void>>();
      for (let i = 0; !stop; i++) {
        while (window.size >= WINDOW) await Promise.race(window);
        const key = `b-${i}`;
        const p: Promise<void> = transport.request(countTask(key)).then(
          (env) => {
            const r = resultOf(env);
            outcomes[i] = { ok: true, key: String(r.key), count: Number(r.count), phase };
            successes.add();
          },
          (err: unknown) => {
            const e = err as ASAPError;
            const data =
              e instanceof ASAPError ? (e.data as { retry_after_ms?: unknown } | undefined) : undefined;
            outcomes[i] = {
              ok: false,
              code: e instanceof ASAPError ? e.code : 0,
              retryAfterMs: data?.retry_after_ms,
              message: (err as Error).message,
              phase,
            };
            refusals.add();
          },
        );
        const tracked = p.finally(() => window.delete(tracked));
        window.add(tracked);
      }
      await Promise.all(window);
    })();

    await within(successes.until(100), 10_000, '100 successes before the outage');
    expect((await health(serve.port)).status).toBe(200);

    // Redis goes away. Writes are paused first so that the snapshot it restarts from holds every
    // write it acknowledged (a Redis with durable persistence); then SIGKILL.
    const admin = createClient({ url: redis.url });
    admin.on('error', () => {});
    await admin.connect();
    await admin.sendCommand(['CLIENT', 'PAUSE', '10000', 'WRITE']);
    await admin.sendCommand(['SAVE']);
    phase = 'outage';
    await redis.kill9();
    admin.destroy();
    const outageAt = performance.now();
    await until(async () => (await health(serve.port)).status === 503, 'health 503 during the outage', 5000);
    const refusedBefore = refusals.value;
    await within(refusals.until(refusedBefore + 20), 5000, '20 refusals during the outage');

    await redis.restart({ keepData: true });
    const backAt = performance.now();
    await until(async () => (await health(serve.port)).status === 200, 'health 200 after', 10_000);
    const healthyAt = performance.now();
    phase = 'after';
    const okAfter = successes.value;
    await within(successes.until(okAfter + 100), 10_000, '100 successes after the outage');
    stop = true;
    await within(load, 10_000, 'the last requests');

    // Only two kinds of answers: success, or the recoverable -32040 with retry_after_ms.
    const all = Array.from(outcomes); // holes (never answered) become undefined
    const other = all.filter(
      (o) => o === undefined || (!o.ok && !(o.code === -32040 && typeof o.retryAfterMs === 'number')),
    );
    const ok = all.filter((o): o is Extract<Outcome, { ok: true }> => o?.ok === true);
    const refused = all.filter((o) => o?.ok === false);
    const keys = all.map((_, i) => `b-${i}`);
    const counters = await readCounters(redis.url, keys);
    const okButNotOne = all
      .map((o, i) => ({ o, c: counters[i], key: keys[i] }))
      .filter(({ o, c }) => o?.ok === true && c !== 1);
    console.log(
      `[redis crash b] ${JSON.stringify({
        requests: all.length,
        succeeded: ok.length,
        succeededAnsweredDuringOutage: ok.filter((o) => o.phase === 'outage').length,
        refused32040: refused.length,
        refusedByPhase: {
          before: refused.filter((o) => o.phase === 'before').length,
          outage: refused.filter((o) => o.phase === 'outage').length,
          after: refused.filter((o) => o.phase === 'after').length,
        },
        countersAtZero: counters.filter((c) => c === 0).length,
        reRuns: counters.reduce((s, c) => s + Math.max(0, c - 1), 0),
        msOutage: Math.round(backAt - outageAt),
        msBackToHealthy: Math.round(healthyAt - backAt),
        msTotal: Math.round(performance.now() - started),
      })}`,
    );
    expect(other).toEqual([]);
    expect(ok.filter((o) => o.count !== 1)).toEqual([]);
    expect(okButNotOne).toEqual([]); // every request the client saw succeed: its counter is exactly 1
    expect(counters.filter((c) => c > 1)).toEqual([]); // and nothing ran twice
    expect(refused.length).toBeGreaterThanOrEqual(20);
    expect(ok.some((o) => o.phase === 'after')).toBe(true);
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
  }, 40_000);
});
