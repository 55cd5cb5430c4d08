// Process management for the benchmarks (used by bench/run.mjs and bench/profile.mjs): servers on
// core 0 and load generators on core 1 (taskset), each in its own process, every process with the
// same `ws` build (WS_NO_BUFFER_UTIL / WS_NO_UTF_8_VALIDATE: no native add-on anywhere), and the
// server's CPU time read from /proc/<pid>/stat at the start and the end of the measuring window.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const ROOT = dirname(BENCH_DIR);
export const OUT_DIR = join(BENCH_DIR, 'out');

/** Same `ws` code path in every process: the pure-JS masking and UTF-8 validation. */
export const CHILD_ENV = { ...process.env, WS_NO_BUFFER_UTIL: '1', WS_NO_UTF_8_VALIDATE: '1' };
delete CHILD_ENV.NODE_OPTIONS;

export const SERVER_CORE = '0';
export const CLIENT_CORE = '1';

function detectPinning() {
  const r = spawnSync('taskset', ['-c', `${SERVER_CORE},${CLIENT_CORE}`, 'true'], { stdio: 'ignore' });
  if (r.error !== undefined) return { ok: false, why: 'taskset is not installed' };
  if (r.status !== 0) return { ok: false, why: 'taskset cannot pin to cores 0 and 1 here' };
  return { ok: true, why: '' };
}

export const pinning = detectPinning();

/** The command line for a process pinned to `core` (unpinned when taskset is unusable). */
export function pinned(core, argv) {
  return pinning.ok ? ['taskset', '-c', core, ...argv] : argv;
}

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process, in microseconds (resolution: one clock tick). */
export function procCpuUs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // fields 14 (utime) and 15 (stime)
  return (ticks / CLK_TCK) * 1e6;
}

const hrUs = () => Number(process.hrtime.bigint() / 1000n);

/** Busy time (all but idle and iowait) of the server and client cores, in microseconds, from /proc/stat. */
export function coresBusyUs() {
  const stat = readFileSync('/proc/stat', 'utf8');
  let busy = 0;
  for (const core of pinning.ok ? [SERVER_CORE, CLIENT_CORE] : ['']) {
    const m = new RegExp(`^cpu${core} (.+)$`, 'm').exec(stat);
    if (m === null) continue;
    const f = m[1].trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal
    busy += f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
  }
  return (busy / CLK_TCK) * 1e6;
}

/** VmRSS of a process, in bytes. */
export function procRss(pid) {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? Number.NaN : Number(m[1]) * 1024;
}

const PROBE = pathToFileURL(join(BENCH_DIR, 'probe.mjs')).href;

/** The servers under test: a node script and its arguments. */
export const SERVERS = {
  'base-ws': { script: ['bench/baseline-ws-server.mjs', '--port', '0'], label: 'baseline ws server' },
  'base-http': { script: ['bench/baseline-http-server.mjs', '--port', '0'], label: 'baseline http server' },
  asap: {
    script: ['dist/cli/main.js', 'serve', '--port', '0', '--rate-limit', '0', '--log-level', 'silent'],
    label: 'asap serve',
  },
};

/**
 * Runs `asap serve` (and, via {@link distDir}, the ASAPClient load generator) from a copy of dist/
 * taken when the run starts, so that a rebuild of dist/ by someone else in the middle of a run
 * cannot make its repeats measure different code. `dir` is relative to the repo root.
 */
export function useDist(dir) {
  SERVERS.asap.script[0] = `${dir}/cli/main.js`;
  distDir = dir;
}
/** Where the code under test is loaded from (relative to the repo root). */
export let distDir = 'dist';

/** Every child still running, so an interrupted run leaves nothing behind. */
const children = new Set();
function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
}
export function killAll() {
  for (const c of children) c.kill('SIGKILL');
}
process.once('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** How a server is started, for the report (the probe path relative to the repo root). */
export function serverCommand(kind, nodeArgs = [], args = []) {
  const argv = [
    'node',
    '--expose-gc',
    '--import',
    './bench/probe.mjs',
    ...nodeArgs,
    ...SERVERS[kind].script,
    ...args,
  ];
  return pinned(SERVER_CORE, argv).join(' ');
}

function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/**
 * Starts a server on the server core with the probe preloaded (bench/probe.mjs) and an IPC
 * channel, and resolves once it printed its `listening on` line.
 */
export async function startServer(kind, { nodeArgs = [], args = [] } = {}) {
  const argv = pinned(SERVER_CORE, [
    process.execPath,
    '--expose-gc',
    '--import',
    PROBE,
    ...nodeArgs,
    ...SERVERS[kind].script,
    ...args,
  ]);
  const child = spawn(argv[0], argv.slice(1), {
    cwd: ROOT,
    env: CHILD_ENV,
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  track(child);
  let stopping = false;
  child.once('exit', (code, signal) => {
    if (!stopping)
      process.stderr.write(`${kind} (pid ${child.pid}) exited unexpectedly: ${signal ?? `code ${code}`}\n`);
  });
  let seq = 0;
  const waiting = new Map();
  child.on('message', (msg) => {
    const w = waiting.get(msg?.seq);
    if (w !== undefined) {
      waiting.delete(msg.seq);
      w(msg);
    }
  });
  const listening = await new Promise((resolve, reject) => {
    let out = '';
    const onData = (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+) \((ws:\/\/[^)\s]+)\)/.exec(out);
      if (m !== null) {
        child.stdout.off('data', onData);
        child.stdout.resume();
        resolve({ httpBase: m[1], wsUrl: m[2] });
      }
    };
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.once('exit', (code, signal) =>
      reject(new Error(`${kind} exited early (${code ?? signal}): ${out}`)),
    );
    setTimeout(() => reject(new Error(`${kind} did not start within 15 s`)), 15_000).unref();
  });
  return {
    kind,
    pid: child.pid,
    child,
    ...listening,
    /** Asks the probe ({type:'cpu'|'mem'|'gc'}); resolves with its answer. */
    ask(msg, timeoutMs = 10_000) {
      const s = ++seq;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          waiting.delete(s);
          reject(new Error(`${kind} did not answer ${msg.type}`));
        }, timeoutMs);
        waiting.set(s, (answer) => {
          clearTimeout(t);
          resolve(answer);
        });
        child.send({ ...msg, seq: s });
      });
    },
    /** SIGTERM (asap serve drains and exits 0), SIGKILL after `graceMs`. */
    async stop(graceMs = 5000) {
      stopping = true;
      child.kill('SIGTERM');
      if (!(await waitExit(child, graceMs))) {
        child.kill('SIGKILL');
        await waitExit(child, 2000);
      }
      return child.exitCode;
    },
  };
}

/** The command line of a load generator, for the report. */
export function clientCommand(script, cfg) {
  return pinned(CLIENT_CORE, ['node', `bench/${script}`, `'${JSON.stringify(cfg)}'`]).join(' ');
}

/** A bench client script on the client core, with an IPC channel, tracked for cleanup. */
function spawnPinned(script, cfg) {
  const argv = pinned(CLIENT_CORE, [process.execPath, join(BENCH_DIR, script), JSON.stringify(cfg)]);
  const child = spawn(argv[0], argv.slice(1), {
    cwd: ROOT,
    env: CHILD_ENV,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  track(child);
  return child;
}

/**
 * Runs one load generator against `server` on the client core and measures the server over the
 * client's window: CPU time from /proc/<pid>/stat (primary) and from process.cpuUsage() via the
 * probe (cross-check).
 */
export async function runLoad(script, cfg, server) {
  const child = spawnPinned(script, cfg);
  let start;
  let end;
  let result;
  const probeCpu = [];
  child.on('message', (msg) => {
    if (msg?.type === 'start') {
      start = { cpuUs: procCpuUs(server.pid), coresUs: coresBusyUs(), at: performance.now(), hr: hrUs() };
      probeCpu[0] = server.ask({ type: 'cpu' }).catch(() => null);
    } else if (msg?.type === 'end') {
      end = { cpuUs: procCpuUs(server.pid), coresUs: coresBusyUs(), at: performance.now(), hr: hrUs() };
      probeCpu[1] = server.ask({ type: 'cpu' }).catch(() => null);
      result = msg.result;
      child.send({ type: 'stop' });
    }
  });
  const code = await new Promise((resolve) => child.once('exit', (c, s) => resolve(c ?? s)));
  if (code !== 0 || result === undefined) throw new Error(`${script} failed (exit ${code})`);
  const [c0, c1] = await Promise.all(probeCpu);
  const serverCpuUs = end.cpuUs - start.cpuUs;
  const wallMs = end.at - start.at;
  const cores = pinning.ok ? 2 : os.availableParallelism();
  // What else ran on the two cores meanwhile (other processes, and interrupts not charged to ours).
  const otherUs = end.coresUs - start.coresUs - serverCpuUs - result.clientCpuUs;
  return {
    ...result,
    serverCpuUs,
    serverCpuPerOpUs: serverCpuUs / result.count,
    serverCpuPct: (serverCpuUs / (wallMs * 1000)) * 100,
    /** The window on the monotonic clock in µs, the clock of V8's .cpuprofile timestamps. */
    windowHrUs: [start.hr, end.hr],
    otherCpuPct: Math.max(0, (otherUs / (wallMs * 1000 * cores)) * 100),
    // The cross-check (null when the probe did not answer in time).
    serverProbeCpuPerOpUs: c0 && c1 ? (c1.user + c1.system - c0.user - c0.system) / result.count : null,
  };
}

/**
 * Opens idle WebSocket connections from a client process, in stages (e.g. [1000, 5000]), and reads
 * the server's RSS (/proc/<pid>/status VmRSS) and V8 heap (via the probe) after a forced GC before
 * the first and after each stage.
 */
export async function measureIdle(server, stages) {
  await sleep(300);
  const snapshot = async (opened) => {
    const mem = await server.ask({ type: 'gc' });
    return { opened, rss: procRss(server.pid), heapUsed: mem.heapUsed, gcExposed: mem.gcExposed };
  };
  const points = [await snapshot(0)];
  const argv = pinned(CLIENT_CORE, [
    process.execPath,
    join(BENCH_DIR, 'load-client.mjs'),
    JSON.stringify({ mode: 'idle', url: server.wsUrl, stages }),
  ]);
  const child = spawn(argv[0], argv.slice(1), {
    cwd: ROOT,
    env: CHILD_ENV,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  track(child);
  let failed = 0;
  let openMs = 0;
  // Each stage's report, queued as it arrives.
  const reports = [];
  let wake = () => {};
  child.on('message', (msg) => {
    if (msg?.type !== 'opened') return;
    reports.push(msg);
    wake();
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const nextReport = async () => {
    while (reports.length === 0) {
      await Promise.race([
        new Promise((resolve) => {
          wake = resolve;
        }),
        exited.then((code) => {
          throw new Error(`idle client exited (${code}) while opening connections`);
        }),
      ]);
    }
    return reports.shift();
  };
  for (let i = 0; i < stages.length; i++) {
    const msg = await nextReport();
    await sleep(500);
    points.push(await snapshot(msg.opened));
    failed = msg.failed;
    openMs = msg.ms;
    child.send({ type: i === stages.length - 1 ? 'stop' : 'continue' });
  }
  await waitExit(child, 10_000);
  const first = points[0];
  const last = points[points.length - 1];
  const prev = points[points.length - 2];
  return {
    opened: last.opened,
    failed,
    openMs,
    points,
    /** (after − before) ÷ connections. */
    rssPerConn: (last.rss - first.rss) / last.opened,
    heapPerConn: (last.heapUsed - first.heapUsed) / last.opened,
    /** The slope over the last stage: what one more connection costs, without one-time growth. */
    rssMarginal: (last.rss - prev.rss) / (last.opened - prev.opened),
    heapMarginal: (last.heapUsed - prev.heapUsed) / (last.opened - prev.opened),
  };
}

/**
 * Starts a bench client (a script in bench/ taking a JSON config) on the client core with an IPC
 * channel. `next(type, ms)` resolves with its next message of that type, or null after `ms` or once
 * it exited, so a server that stops answering shows up as a timeout, not a hang.
 */
function spawnClient(script, cfg) {
  const child = spawnPinned(script, cfg);
  const inbox = [];
  const waiters = new Set();
  const wakeAll = () => {
    for (const w of waiters) w();
  };
  child.on('message', (msg) => {
    inbox.push(msg);
    wakeAll();
  });
  child.once('exit', wakeAll);
  const gone = () => child.exitCode !== null || child.signalCode !== null;
  return {
    child,
    send(msg) {
      if (child.connected) child.send(msg);
    },
    async next(type, ms) {
      const until = performance.now() + ms;
      for (;;) {
        const i = inbox.findIndex((m) => m?.type === type);
        if (i !== -1) return inbox.splice(i, 1)[0];
        const left = until - performance.now();
        if (left <= 0 || gone()) return null;
        await new Promise((resolve) => {
          const t = setTimeout(done, left);
          function done() {
            clearTimeout(t);
            waiters.delete(done);
            resolve();
          }
          waiters.add(done);
        });
      }
    },
    async stop() {
      this.send({ type: 'stop' });
      if (!(await waitExit(child, 3000))) {
        child.kill('SIGKILL');
        await waitExit(child, 2000);
      }
    },
  };
}

/**
 * Row 8: echo latency on one connection (one echo at a time), first alone (the reference), then
 * while another connection reads a `chunks`-chunk stream as fast as it can. Two client processes
 * (bench/fairness-client.mjs), both connected before the stream starts. Every wait is bounded: on a
 * server whose stream starves other connections the echo window still ends on time, and the echo
 * left waiting is reported with its age (censored), not waited for.
 */
export async function measureFairness(
  server,
  { chunks, warmupMs, windowMs, timeoutMs, streamWarmupMs = 500 },
) {
  const echo = spawnClient('fairness-client.mjs', { mode: 'echo', url: server.wsUrl, timeoutMs });
  const stream = spawnClient('fairness-client.mjs', { mode: 'stream', url: server.wsUrl, chunks });
  const slack = 10_000;
  const cpuPct = (c0, t0) => ((procCpuUs(server.pid) - c0) / ((performance.now() - t0) * 1000)) * 100;
  try {
    if ((await echo.next('ready', slack)) === null || (await stream.next('ready', slack)) === null)
      throw new Error('fairness clients could not connect');
    /** One echo window; `onStart` / `onEnd` run at its edges (the stream's marks). */
    const window = async (warmup, onStart = async () => {}) => {
      echo.send({ type: 'window', warmupMs: warmup, windowMs });
      if ((await echo.next('start', warmup + slack)) === null) return null;
      const c0 = procCpuUs(server.pid);
      const t0 = performance.now();
      await onStart();
      const end = await echo.next('end', windowMs + slack);
      return end === null ? null : { ...end.result, serverCpuPct: cpuPct(c0, t0) };
    };
    const alone = await window(warmupMs);
    stream.send({ type: 'go' });
    const flowing = await stream.next('flowing', slack);
    let m0 = null;
    const underStream =
      flowing === null
        ? null
        : await window(streamWarmupMs, async () => {
            stream.send({ type: 'mark' });
            m0 = await stream.next('mark', slack);
          });
    stream.send({ type: 'mark' });
    const m1 = await stream.next('mark', slack);
    const chunksPerSecond =
      m0 !== null && m1 !== null ? ((m1.count - m0.count) / (m1.at - m0.at)) * 1000 : null;
    return {
      alone,
      underStream,
      streamStarted: flowing !== null,
      chunksPerSecond,
      streamsCompleted: m1?.streams ?? null,
      streamErrors: m1?.errors ?? null,
      streamClosed: m1?.closed ?? null,
    };
  } finally {
    await Promise.all([echo.stop(), stream.stop()]);
  }
}

/**
 * Row 9: a client that sends `requests` echo requests of `bytes` characters and never reads
 * (bench/slow-consumer.mjs), against a fresh server; the server's VmRSS is sampled every 50 ms
 * from before the client starts until after it is gone. `read: true` runs the same client reading,
 * as the reference of what processing the requests alone costs.
 */
export async function measureSlowConsumer(server, cfg) {
  await sleep(300);
  await server.ask({ type: 'gc' });
  const before = procRss(server.pid);
  const t0 = performance.now();
  let peak = { rss: before, atMs: 0 };
  /** [ms, MiB] every 50 ms, for bench/out/. */
  const series = [];
  const sample = () => {
    try {
      const rss = procRss(server.pid);
      const atMs = Math.round(performance.now() - t0);
      series.push([atMs, Math.round((rss / 2 ** 20) * 10) / 10]);
      if (rss > peak.rss) peak = { rss, atMs };
    } catch {
      // the server is gone (e.g. killed for memory): the peak so far stands
    }
  };
  const timer = setInterval(sample, 50);
  const client = spawnClient('slow-consumer.mjs', { url: server.wsUrl, ...cfg });
  try {
    const bound = cfg.sendMs + cfg.closeWaitMs + cfg.readMs + 10_000;
    const open = await client.next('open', 10_000);
    const waited = open === null ? null : await client.next('waited', bound);
    // The peak while the client sends and does not read; its read-out afterwards is diagnostics.
    const during = peak;
    const end = waited === null ? null : await client.next('end', cfg.readMs + 10_000);
    await client.stop();
    sample();
    // After the client is gone: the server has dropped the connection and whatever it held for it.
    await sleep(1000);
    sample();
    clearInterval(timer);
    const afterNoGc = procRss(server.pid);
    const mem = await server.ask({ type: 'gc' }).catch(() => null);
    return {
      ...(end?.result ?? { failed: open === null ? 'no handshake' : 'no report' }),
      waitedMs: waited?.ms ?? null,
      requests: cfg.requests,
      read: cfg.read === true,
      rssBefore: before,
      rssPeak: during.rss,
      rssPeakAtMs: during.atMs,
      rssGrowth: during.rss - before,
      rssPeakWithReadOut: peak.rss,
      rssAfterNoGc: afterNoGc,
      rssAfter: procRss(server.pid),
      heapAfter: mem?.heapUsed ?? null,
      serverAlive: server.child.exitCode === null && server.child.signalCode === null,
      series,
    };
  } finally {
    clearInterval(timer);
    await client.stop();
  }
}

/** `ulimit -n` of this shell (what every child inherits). */
export function openFileLimit() {
  const r = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) ? n : Number.POSITIVE_INFINITY;
}

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}
