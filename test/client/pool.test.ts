import { afterEach, describe, expect, it } from 'vitest';
import {
  ConnectionPool,
  type ConnectionPoolOptions,
  poolKey,
  type WebSocketTransport,
} from '../../src/client/index.js';
import type { Envelope } from '../../src/protocol/envelope.js';
import { manualTimers, tickUntil } from '../support/manual-time.js';
import { cleanups, type Demo, runCleanups, startDemo, taskInit, waitFor } from './helpers.js';

afterEach(runCleanups);

async function demo(): Promise<Demo> {
  const d = await startDemo();
  cleanups.push(() => d.server.close());
  return d;
}

function pool(opts: ConnectionPoolOptions = {}): ConnectionPool {
  const p = new ConnectionPool(opts);
  cleanups.push(() => p.close());
  return p;
}

/** A request that keeps the transport busy for `ms`. */
function busy(t: WebSocketTransport, ms = 300): Promise<unknown> {
  return t.request(taskInit('sleep', { ms }));
}

/** A `hold` skill on the demo agent: its requests run until `release()` (also called after the test). */
function holdSkill(d: Demo): { running: () => number; release: () => void } {
  const waiting: (() => void)[] = [];
  let started = 0;
  d.server.skill('hold', (env) => {
    started++;
    return new Promise((resolve) => {
      waiting.push(() => resolve({ task_id: env.id, status: 'completed', result: {} }));
    });
  });
  const release = () => {
    for (const w of waiting.splice(0)) w();
  };
  cleanups.push(release);
  return { running: () => started, release };
}

describe('poolKey', () => {
  it('is scheme, host, port and path', () => {
    expect(poolKey('ws://127.0.0.1:8080/asap/ws')).toBe('ws://127.0.0.1:8080/asap/ws');
    expect(poolKey('ws://127.0.0.1:8080/asap/ws?x=1#y')).toBe('ws://127.0.0.1:8080/asap/ws');
    expect(poolKey('ws://127.0.0.1:8080/asap/ws')).not.toBe(poolKey('wss://127.0.0.1:8080/asap/ws'));
    expect(poolKey('ws://127.0.0.1:8080/asap/ws')).not.toBe(poolKey('ws://127.0.0.1:8081/asap/ws'));
    expect(poolKey('ws://127.0.0.1:8080/asap/ws')).not.toBe(poolKey('ws://127.0.0.1:8080/other'));
    expect(poolKey('ws://localhost:8080/asap/ws')).not.toBe(poolKey('ws://127.0.0.1:8080/asap/ws'));
  });
});

describe('ConnectionPool', () => {
  it('reuses an idle connection', async () => {
    const d = await demo();
    const p = pool();
    const opened: WebSocketTransport[] = [];
    p.on('transport', (t) => opened.push(t));
    const a = p.acquire(d.ws);
    await a.request(taskInit('echo'));
    const b = p.acquire(d.ws);
    expect(b).toBe(a);
    expect(p.acquire(`${d.ws}?query=ignored`)).toBe(a);
    expect(opened).toEqual([a]);
    expect(p.size()).toBe(1);
    expect(p.size(d.ws)).toBe(1);
    expect(d.server.connections).toHaveLength(1);
  });

  it('opens another connection only while the existing ones are busy, up to maxPerTarget', async () => {
    const d = await demo();
    const p = pool({ maxPerTarget: 2 });
    const a = p.acquire(d.ws);
    const work = [busy(a)];
    const b = p.acquire(d.ws);
    expect(b).not.toBe(a);
    expect(p.size(d.ws)).toBe(2);
    work.push(busy(b), busy(a));
    // Both busy and at the limit: the least busy one (b: 1 in flight, a: 2).
    expect(a.inFlight).toBe(2);
    expect(b.inFlight).toBe(1);
    expect(p.acquire(d.ws)).toBe(b);
    work.push(busy(b), busy(b));
    expect(p.acquire(d.ws)).toBe(a);
    expect(p.size(d.ws)).toBe(2);
    await Promise.all(work);
    await waitFor(() => d.server.connections.length === 2, 'two connections');
  });

  it('with maxPerTarget 1 shares the one busy connection', async () => {
    const d = await demo();
    const p = pool({ maxPerTarget: 1 });
    const a = p.acquire(d.ws);
    const work = busy(a, 50);
    expect(p.acquire(d.ws)).toBe(a);
    await work;
  });

  it('keeps different paths and ports apart', async () => {
    const d1 = await demo();
    const d2 = await demo();
    const p = pool();
    const a = p.acquire(d1.ws);
    const b = p.acquire(d2.ws);
    const c = p.acquire(d1.ws.replace('/asap/ws', '/asap/ws/'));
    expect(new Set([a, b, c]).size).toBe(3);
    expect(p.size()).toBe(3);
    expect(p.size(d1.ws)).toBe(1);
    expect(p.size(d2.ws)).toBe(1);
    expect(p.size('ws://127.0.0.1:1/none')).toBe(0);
    await Promise.all([a.request(taskInit('echo')), b.request(taskInit('echo'))]);
    expect(d1.server.connections).toHaveLength(1);
    expect(d2.server.connections).toHaveLength(1);
  });

  it('closes connections idle past idleTimeoutMs, and not busy ones', async () => {
    // The pool and its transports on manual time; a `hold` request keeps one connection busy.
    const timers = manualTimers();
    const d = await demo();
    const hold = holdSkill(d);
    const p = pool({ idleTimeoutMs: 50, maxPerTarget: 2, timers, transport: { timers } });
    const idle = p.acquire(d.ws);
    await idle.request(taskInit('echo'));
    const working = p.acquire(`ws://127.0.0.1:${d.port}/asap/ws`);
    expect(working).toBe(idle);
    const long = working.request(taskInit('hold'));
    const second = p.acquire(d.ws); // busy: a second connection opens
    expect(second).not.toBe(working);
    await second.request(taskInit('echo'));
    await waitFor(() => hold.running() === 1 && working.unacknowledged === 0, 'the hold request to run');
    // The sweep runs every idleTimeoutMs / 2: the unused one is closed once unused for 50 ms, not before.
    await timers.tick(49);
    expect(second.state).toBe('open');
    await timers.tick(1);
    expect(second.state).toBe('closed');
    expect(working.state).toBe('open'); // its request is still running
    // However long it runs.
    await timers.tick(1000);
    expect(working.state).toBe('open');
    expect(p.size()).toBe(1);
    hold.release();
    await long;
    await tickUntil(timers, () => working.state === 'closed', 'the other once idle', {
      stepMs: 5,
      maxMs: 500,
    });
    expect(p.size()).toBe(0);
    await waitFor(() => d.server.connections.length === 0, 'server side closed');
    // The pool opens a fresh one afterwards.
    const fresh = p.acquire(d.ws);
    expect(fresh).not.toBe(idle);
    expect((await fresh.request(taskInit('echo'))).payload_type).toBe('TaskResponse');
  });

  // BUG (src/client/pool.ts): idleness is measured from the last acquire(), not from when the connection
  // last had work. A connection whose request outlived idleTimeoutMs is closed at the very next sweep
  // after the request ends (here 25 ms later with idleTimeoutMs 50), although it has been idle for less
  // than idleTimeoutMs; a transport used directly (without acquire()) is closed idleTimeoutMs after its
  // acquire even while it keeps sending short requests. Remove `.fails` once fixed.
  it('keeps a connection that just finished a long request open for idleTimeoutMs more', async () => {
    const timers = manualTimers();
    const d = await demo();
    const hold = holdSkill(d);
    const p = pool({ idleTimeoutMs: 50, timers, transport: { timers } });
    const t = p.acquire(d.ws);
    const long = t.request(taskInit('hold'));
    await waitFor(() => hold.running() === 1 && t.unacknowledged === 0, 'the hold request to run');
    await timers.tick(1000);
    expect(t.state).toBe('open');
    hold.release();
    await long;
    // Idle from now on: still open 49 ms later, closed by 50 + one sweep interval.
    await timers.tick(49);
    expect(t.state).toBe('open');
    await timers.tick(26);
    expect(t.state).toBe('closed');
  });

  it('keeps a transport that keeps working open without another acquire()', async () => {
    const timers = manualTimers();
    const d = await demo();
    const p = pool({ idleTimeoutMs: 50, timers, transport: { timers } });
    const t = p.acquire(d.ws);
    for (let i = 0; i < 8; i++) {
      await t.request(taskInit('echo'));
      await timers.tick(30);
      expect(t.state).toBe('open');
    }
    await timers.tick(75);
    expect(t.state).toBe('closed');
  });

  it('replaces a dead connection on the next acquire', async () => {
    const d = await demo();
    const p = pool();
    const a = p.acquire(d.ws);
    await a.request(taskInit('echo'));
    await a.close();
    const b = p.acquire(d.ws);
    expect(b).not.toBe(a);
    expect(p.size(d.ws)).toBe(1);
    expect((await b.request(taskInit('echo'))).payload_type).toBe('TaskResponse');
  });

  it('the idle sweep forgets a connection its user closed', async () => {
    const timers = manualTimers();
    const d = await demo();
    const p = pool({ idleTimeoutMs: 200, timers, transport: { timers } });
    const a = p.acquire(d.ws);
    await a.request(taskInit('echo'));
    await a.close();
    expect(p.size()).toBe(1); // still listed until the sweep or the next acquire
    // The sweep runs every idleTimeoutMs / 2.
    await timers.tick(99);
    expect(p.size()).toBe(1);
    await timers.tick(1);
    expect(p.size()).toBe(0);
  });

  it('forwards pushes with the transport they came on', async () => {
    const d = await demo();
    const p = pool();
    const got: [Envelope<object>, WebSocketTransport][] = [];
    p.on('message', (env, t) => got.push([env, t]));
    const a = p.acquire(d.ws);
    await a.request(taskInit('push', { count: 2 }));
    expect(got).toHaveLength(2);
    expect(got.every(([env, t]) => env.payload_type === 'TaskUpdate' && t === a)).toBe(true);
  });

  it('close() closes every connection; acquire() afterwards throws', async () => {
    const d = await demo();
    const p = pool({ maxPerTarget: 3 });
    const a = p.acquire(d.ws);
    const work = busy(a, 1000).catch((e: Error) => e);
    const b = p.acquire(d.ws);
    await b.request(taskInit('echo'));
    await p.close();
    expect(a.state).toBe('closed');
    expect(b.state).toBe('closed');
    expect(p.size()).toBe(0);
    expect(((await work) as Error).message).toBe('Transport closed');
    expect(() => p.acquire(d.ws)).toThrow('Pool is closed');
    await p.close(); // idempotent
    await waitFor(() => d.server.connections.length === 0, 'server side closed');
  });
});
