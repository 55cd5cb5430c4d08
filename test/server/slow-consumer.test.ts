/**
 * asap-wire.md §10 "Slow consumers": a peer that never reads cannot grow the server's memory,
 * is closed with 1008 `Slow consumer`, and other peers are served throughout.
 * Before: replies were written whatever the send buffer held (81 MB → 523 MB RSS in 15 s).
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/logger.js';
import { cleanup, connect, type Json, startDemo, task, waitFor } from './ws-helpers.js';

const CLIENT = fileURLToPath(new URL('../support/stalled-client.mjs', import.meta.url));
const children = new Set<ChildProcessWithoutNullStreams>();

afterEach(async () => {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  await cleanup();
});

function findGc(): () => void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

async function retained(gc: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

/** Starts the stalled client; `lines` collects what it prints (one JSON object a line). */
function stalledClient(port: number, count: number, size: number) {
  const child = spawn(process.execPath, [CLIENT, String(port), String(count), String(size)]);
  children.add(child);
  const lines: Json[] = [];
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
      nl = buf.indexOf('\n');
    }
  });
  return { child, lines };
}

function recordingLogger(): Logger & { lines: { level: string; obj: Json; msg?: string }[] } {
  const lines: { level: string; obj: Json; msg?: string }[] = [];
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

describe('§10 slow consumers', () => {
  it('a client that never reads: memory stays under 2 × the hard cap, it is closed 1008, others are served', async () => {
    const gc = findGc();
    const logger = recordingLogger();
    const mark = 1024 * 1024;
    const hardCap = 4 * mark;
    const { port, wsUrl } = await startDemo({ logger, slowConsumerGraceMs: 1000 });
    const other = await connect(wsUrl);
    await other.call(task('echo'), 'warm');
    const before = await retained(gc);

    const { child, lines } = stalledClient(port, 2000, 100_000);
    await waitFor(() => lines.some((l) => l.upgraded), 'the upgrade', 5000);

    // Served throughout: an echo every 50 ms while the stalled peer fills its buffers.
    let worst = 0;
    let peak = 0;
    let i = 0;
    const closing = () => logger.lines.some((l) => l.msg === 'slow consumer; closing');
    while (!closing()) {
      const t0 = performance.now();
      const r = await other.call(task('echo', { i }), `e${i++}`, 5000);
      expect(r.result.envelope.payload.result.echo).toEqual({ i: i - 1 });
      worst = Math.max(worst, performance.now() - t0);
      if (i % 5 === 0) peak = Math.max(peak, (await retained(gc)) - before);
      expect(i).toBeLessThan(400); // closed well within 20 s
      await new Promise((r) => setTimeout(r, 50));
    }
    if (process.env.ASAP_TEST_VERBOSE) console.log({ worstEchoMs: worst, peakGrowth: peak, echoes: i });
    expect(worst).toBeLessThan(1000);
    expect(peak).toBeLessThan(2 * hardCap);

    child.stdin.write('read\n');
    await waitFor(
      () => lines.find((l) => l.close || l.error || l.closedWithoutFrame),
      'the close frame',
      5000,
    );
    const last = lines.at(-1);
    expect(last.close).toEqual({ code: 1008, reason: 'Slow consumer' });
    expect(last.sent).toBeLessThan(2000); // the server stopped reading long before the end

    // Still serving, and the stalled connection's memory is gone.
    expect((await other.call(task('echo'), 'after')).result).toBeDefined();
    const after = await retained(gc);
    expect(after - before).toBeLessThan(hardCap);
  }, 30_000);

  it('a client that reads slowly but steadily is not closed', async () => {
    const logger = recordingLogger();
    const { wsUrl } = await startDemo({ logger, slowConsumerGraceMs: 400, sendHighWaterMark: 64 * 1024 });
    const peer = await connect(wsUrl);
    // Reads in bursts: paused 100 ms, then reading 100 ms — never stalled for a whole grace period.
    let reading = true;
    const toggle = setInterval(() => {
      reading = !reading;
      if (reading) peer.ws.resume();
      else peer.ws.pause();
    }, 100);
    try {
      const pad = 'y'.repeat(200_000);
      const ids = Array.from({ length: 40 }, (_, i) => peer.request(task('echo', { pad, i }), `big-${i}`));
      for (const id of ids) expect((await peer.response(id, 20_000)).result).toBeDefined();
    } finally {
      clearInterval(toggle);
      peer.ws.resume();
    }
    expect(logger.lines.some((l) => l.msg === 'slow consumer; closing')).toBe(false);
    expect(peer.isOpen).toBe(true);
  }, 30_000);
});
