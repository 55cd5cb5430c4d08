// Shared by the load generators (bench/load-client.mjs, bench/asap-client-load.mjs): counting, latency
// samples, and the measuring window, which they run in step with the orchestrator over IPC.
import { setTimeout as sleep } from 'node:timers/promises';

export class Meter {
  measuring = false;
  count = 0;
  errors = 0;
  acks = 0;
  /** Latencies in ms of the round trips completed inside the window. */
  samples = [];

  /** One completed round trip (or one stream chunk, without a latency). */
  record(startMs, endMs) {
    if (!this.measuring) return;
    this.count++;
    if (startMs !== undefined) this.samples.push(endMs - startMs);
  }

  summary(elapsedMs, cpu) {
    const lat = Float64Array.from(this.samples).sort();
    const pct = (p) =>
      lat.length === 0 ? null : lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] * 1000;
    return {
      count: this.count,
      elapsedMs,
      perSecond: (this.count / elapsedMs) * 1000,
      p50Us: pct(0.5),
      p99Us: pct(0.99),
      errors: this.errors,
      acks: this.acks,
      clientCpuUs: cpu.user + cpu.system,
      clientCpuPct: ((cpu.user + cpu.system) / (elapsedMs * 1000)) * 100,
    };
  }
}

/** Resolves with the next IPC message of this type from the orchestrator. */
export function waitForMessage(type) {
  return new Promise((resolve) => {
    const on = (msg) => {
      if (msg?.type !== type) return;
      process.off('message', on);
      resolve(msg);
    };
    process.on('message', on);
  });
}

/**
 * Warm-up, then the measuring window. The orchestrator is told when the window starts and ends (it
 * reads the server's CPU time at both moments); the load keeps running after the window until the
 * orchestrator answers `stop`, so the server is still busy when its CPU time is read. Standalone
 * (no IPC channel) it returns right after the window.
 */
export async function measureWindow(meter, { warmupMs, windowMs }) {
  await sleep(warmupMs);
  meter.count = 0;
  meter.errors = 0;
  meter.acks = 0;
  meter.samples = [];
  meter.measuring = true;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  process.send?.({ type: 'start' });
  await sleep(windowMs);
  meter.measuring = false;
  const result = meter.summary(performance.now() - t0, process.cpuUsage(cpu0));
  if (typeof process.send === 'function') {
    const stop = waitForMessage('stop');
    process.send({ type: 'end', result });
    await stop;
  }
  return result;
}

/** Waits for the orchestrator's `stop` (or returns at once without IPC). */
export function waitForStop() {
  return typeof process.send === 'function' ? waitForMessage('stop') : Promise.resolve();
}

/** Resolves when `pending()` reaches 0, or after `timeoutMs`. */
export async function drain(pending, timeoutMs = 5000) {
  const until = performance.now() + timeoutMs;
  while (pending() > 0 && performance.now() < until) await sleep(10);
}

/** Prints the result as JSON on stdout and exits. */
export function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

export function parseConfig() {
  const raw = process.argv[2];
  if (raw === undefined) {
    process.stderr.write(`usage: node ${process.argv[1]} '<json config>'\n`);
    process.exit(2);
  }
  return JSON.parse(raw);
}
