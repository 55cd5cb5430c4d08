/**
 * 200 reconnect cycles through the proxy leave nothing behind: timers and sockets are back near the
 * baseline, the transport's listener counts are unchanged, and the heap does not grow.
 *
 * Heap check: run with `--expose-gc` (e.g. `npx vitest run test/chaos/leak.test.ts --execArgv=--expose-gc`);
 * without it the test turns the flag on at runtime, and only when even that fails is the heap assertion skipped.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import type { TransportEvents } from '../../src/client/websocket-transport.js';
import { activeResources, cleanup, nextEvent, resultOf, setup, task, waitFor, within } from './helpers.js';

afterEach(cleanup);

function findGc(): (() => void) | undefined {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  try {
    setFlagsFromString('--expose-gc');
    const fromVm = runInNewContext('gc') as unknown;
    return typeof fromVm === 'function' ? (fromVm as () => void) : undefined;
  } catch {
    return undefined;
  }
}

async function settledHeap(gc: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return process.memoryUsage().heapUsed;
}

const EVENTS: (keyof TransportEvents)[] = [
  'open',
  'close',
  'error',
  'message',
  'reconnecting',
  'reconnected',
  'gaveUp',
  'state',
  'circuit',
];

const SOCKETS = 'TCPSocketWrap';
const TIMERS = 'Timeout';
const count = (r: Record<string, number>, k: string): number => r[k] ?? 0;

describe('200 reconnect cycles', () => {
  it('leave no timers, sockets, listeners or heap behind', { timeout: 30_000 }, async () => {
    const gc = findGc();
    const baseline = activeResources();
    const { server, proxy, transport } = await setup();
    const listeners = () => EVENTS.map((e) => transport.listenerCount(e));
    const listenersBefore = listeners();

    const cycle = async (i: number): Promise<void> => {
      const reconnected = nextEvent(transport, 'reconnected', 5000);
      proxy.cut();
      await reconnected;
      const res = await within(transport.request(task('echo', { i })), 5000, `request ${i}`);
      expect(resultOf(res)).toEqual({ echo: { i } });
    };

    // Warm up (JIT, lazily created pools), then measure.
    for (let i = 0; i < 20; i++) await cycle(i);
    await waitFor(
      () => server.connections.length === 1 && proxy.connectionCount === 1,
      'one live connection',
    );
    const connected = activeResources();
    const heapBefore = gc ? await settledHeap(gc) : 0;

    for (let i = 20; i < 220; i++) await cycle(i);

    await waitFor(
      () => server.connections.length === 1 && proxy.connectionCount === 1,
      'one live connection',
    );
    expect(transport.inFlight).toBe(0);
    expect(transport.unacknowledged).toBe(0);
    expect(listeners()).toEqual(listenersBefore);
    const after = activeResources();
    expect(count(after, SOCKETS)).toBeLessThanOrEqual(count(connected, SOCKETS) + 2);
    expect(count(after, TIMERS)).toBeLessThanOrEqual(count(connected, TIMERS) + 3);
    if (gc) {
      const heapAfter = await settledHeap(gc);
      expect(heapAfter - heapBefore).toBeLessThan(5 * 1024 * 1024);
    }

    await cleanup();
    await waitFor(() => {
      const now = activeResources();
      return (
        count(now, SOCKETS) <= count(baseline, SOCKETS) && count(now, TIMERS) <= count(baseline, TIMERS) + 1
      );
    }, 'handles back at the baseline');
  });
});
