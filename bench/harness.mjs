// Process management for the benchmarks (used by bench/run.mjs and bench/profile.mjs): servers on
// core 0 and load generators on core 1 (taskset), each in its own process, every process with the
// same `ws` build (WS_NO_BUFFER_UTIL / WS_NO_UTF_8_VALIDATE: no native add-on anywhere), and the
// server's CPU time read from /proc/<pid>/stat at the start and the end of the measuring window.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const ROOT = dirname(BENCH_DIR);
export const OUT_DIR = join(BENCH_DIR, 'out');

/** Same `ws` code path in every process: the pure-JS masking and UTF-8 validation (see useNativeWs). */
export const CHILD_ENV = { ...process.env, WS_NO_BUFFER_UTIL: '1', WS_NO_UTF_8_VALIDATE: '1' };
delete CHILD_ENV.NODE_OPTIONS;

/**
 * Lets every process use `ws`'s native add-ons (bufferutil for masking, utf-8-validate), which `ws`
 * loads when they are installed. Returns their versions, or throws if either is not installed here
 * (they are not dependencies of the package: `npm i --no-save bufferutil utf-8-validate`).
 */
export function useNativeWs() {
  const version = (name) => {
    try {
      return JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
    } catch {
      throw new Error(`--ws-native: ${name} is not installed (npm i --no-save bufferutil utf-8-validate)`);
    }
  };
  const versions = { bufferutil: version('bufferutil'), 'utf-8-validate': version('utf-8-validate') };
  delete CHILD_ENV.WS_NO_BUFFER_UTIL;
  delete CHILD_ENV.WS_NO_UTF_8_VALIDATE;
  return versions;
}

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
 * probe (cross-check). `companion` ({pid, start(), end()}): a process the server depends on
 * (redis-server), whose CPU time is read at the same two moments; its async `start()` / `end()`
 * take snapshots (e.g. Redis INFO) at the window's edges, and the load runs on until `end()` is done.
 */
export async function runLoad(script, cfg, server, { companion } = {}) {
  const child = spawnPinned(script, cfg);
  let start;
  let end;
  let result;
  const probeCpu = [];
  /** The companion's snapshots at the window's edges (its `start()` / `end()`). */
  const companionAt = [];
  child.on('message', (msg) => {
    if (msg?.type === 'start') {
      start = { cpuUs: procCpuUs(server.pid), coresUs: coresBusyUs(), at: performance.now(), hr: hrUs() };
      if (companion !== undefined) {
        start.companionCpuUs = procCpuUs(companion.pid);
        companionAt[0] = companion.start().catch((err) => ({ failed: err.message }));
      }
      probeCpu[0] = server.ask({ type: 'cpu' }).catch(() => null);
    } else if (msg?.type === 'end') {
      end = { cpuUs: procCpuUs(server.pid), coresUs: coresBusyUs(), at: performance.now(), hr: hrUs() };
      probeCpu[1] = server.ask({ type: 'cpu' }).catch(() => null);
      result = msg.result;
      if (companion === undefined) {
        child.send({ type: 'stop' });
        return;
      }
      end.companionCpuUs = procCpuUs(companion.pid);
      // The load runs on until the companion's end snapshot is taken.
      companionAt[1] = companion.end().catch((err) => ({ failed: err.message }));
      companionAt[1].then(() => {
        if (child.connected) child.send({ type: 'stop' });
      });
    }
  });
  const code = await new Promise((resolve) => child.once('exit', (c, s) => resolve(c ?? s)));
  if (code !== 0 || result === undefined) throw new Error(`${script} failed (exit ${code})`);
  const [c0, c1] = await Promise.all(probeCpu);
  const serverCpuUs = end.cpuUs - start.cpuUs;
  const wallMs = end.at - start.at;
  const cores = pinning.ok ? 2 : os.availableParallelism();
  const companionCpuUs = companion === undefined ? 0 : end.companionCpuUs - start.companionCpuUs;
  // What else ran on the two cores meanwhile (other processes, and interrupts not charged to ours).
  const otherUs = end.coresUs - start.coresUs - serverCpuUs - companionCpuUs - result.clientCpuUs;
  return {
    ...result,
    ...(companion === undefined
      ? {}
      : {
          companion: {
            cpuUs: companionCpuUs,
            cpuPerOpUs: companionCpuUs / result.count,
            cpuPct: (companionCpuUs / (wallMs * 1000)) * 100,
            start: await companionAt[0],
            end: await companionAt[1],
          },
        }),
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
  const memBefore = await server.ask({ type: 'gc' });
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
    // Once the client's writes stall (the server stopped reading it): what the server holds for it,
    // its V8 heap and external memory after a full GC, apart from how big V8 let its heap grow.
    let held = null;
    if (open !== null && !cfg.read && (await client.next('sent', cfg.sendMs + 10_000)) !== null) {
      await sleep(500);
      held = await server.ask({ type: 'gc' }).catch(() => null);
    }
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
      heldGrowth:
        held === null ? null : held.heapUsed + held.external - (memBefore.heapUsed + memBefore.external),
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

// ---- Redis (rows 10 and 11: `asap serve --redis`) ----

/** The `redis-server` binary (ASAP_REDIS_SERVER, Debian's, or on PATH), or null when there is none. */
export function redisServerBinary() {
  const fromEnv = process.env.ASAP_REDIS_SERVER;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  for (const p of ['/usr/bin/redis-server', '/usr/local/bin/redis-server']) if (existsSync(p)) return p;
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() !== '' ? r.stdout.trim() : null;
}

/** `redis-server --version`, e.g. "Redis server v=7.0.15 …" (null when it does not run). */
export function redisServerVersion(bin) {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** A port that was free a moment ago on 127.0.0.1 (redis-server has no `--port 0`). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** redis-server's arguments: no persistence, loopback only, its files in `dir`. */
export function redisArgs(port, dir) {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
}

/** How redis-server is started, for the report. */
export function redisCommand(bin) {
  const argv = redisArgs('PORT', 'TMPDIR').map((a) => (a === '' ? "''" : a));
  return pinned(SERVER_CORE, [bin, ...argv]).join(' ');
}

/** RESP: an array of bulk strings. */
function encodeCommand(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
  return out;
}

/** Parses one RESP reply from `buf` at `at`: [value, next offset], or null when incomplete. */
function parseReply(buf, at) {
  const eol = buf.indexOf('\r\n', at);
  if (eol === -1) return null;
  const type = String.fromCharCode(buf[at]);
  const line = buf.toString('utf8', at + 1, eol);
  switch (type) {
    case '+':
      return [line, eol + 2];
    case '-':
      return [new Error(line), eol + 2];
    case ':':
      return [Number(line), eol + 2];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, eol + 2];
      if (buf.length < eol + 2 + n + 2) return null;
      return [buf.toString('utf8', eol + 2, eol + 2 + n), eol + 2 + n + 2];
    }
    case '*': {
      const n = Number(line);
      const items = [];
      let next = eol + 2;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, next);
        if (r === null) return null;
        items.push(r[0]);
        next = r[1];
      }
      return [n < 0 ? null : items, next];
    }
    default:
      throw new Error(`unexpected RESP reply type ${JSON.stringify(type)}`);
  }
}

/** A minimal Redis connection for the orchestrator (INFO, FLUSHALL): commands answered in order. */
function respConnect(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const queue = [];
    socket.on('data', (d) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      let at = 0;
      for (;;) {
        const r = parseReply(buf, at);
        if (r === null) break;
        at = r[1];
        const w = queue.shift();
        if (r[0] instanceof Error) w?.reject(r[0]);
        else w?.resolve(r[0]);
      }
      buf = buf.subarray(at);
    });
    const fail = (err) => {
      for (const w of queue.splice(0)) w.reject(err);
    };
    socket.on('close', () => fail(new Error('redis connection closed')));
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', fail);
      resolve({
        command(...args) {
          return new Promise((res, rej) => {
            queue.push({ resolve: res, reject: rej });
            socket.write(encodeCommand(args));
          });
        },
        close() {
          socket.destroy();
        },
      });
    });
  });
}

/** `INFO` text as { field: value } (numbers where numeric). */
function parseInfo(text) {
  const out = {};
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':');
    if (i <= 0 || line.startsWith('#')) continue;
    const v = line.slice(i + 1);
    out[line.slice(0, i)] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  return out;
}

/** `INFO commandstats` as { command: calls }. */
function parseCommandStats(text) {
  const out = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2]);
  return out;
}

/**
 * Watches the commands Redis runs for `ms` (MONITOR on a connection of its own) and counts them,
 * per command, as sent by a client or run inside a Lua script (`[db lua]`). MONITOR slows Redis
 * down: call it outside measuring windows.
 */
function monitorSample(port, ms) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const sent = {};
    const inScript = {};
    let lines = 0;
    let rest = '';
    let timer;
    socket.setEncoding('utf8');
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.write('MONITOR\r\n');
      timer = setTimeout(() => {
        socket.destroy();
        resolve({ ms, lines, sent, inScript });
      }, ms);
    });
    socket.on('data', (d) => {
      const parts = (rest + d).split('\r\n');
      rest = parts.pop();
      for (const line of parts) {
        // +1733600000.123456 [0 127.0.0.1:40000] "evalsha" "…" …   or   … [0 lua] "SET" …
        const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"/.exec(line);
        if (m === null) continue;
        const cmd = m[2].toLowerCase();
        if (cmd === 'monitor') continue;
        lines++;
        const into = m[1] === 'lua' ? inScript : sent;
        into[cmd] = (into[cmd] ?? 0) + 1;
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ ms, lines, sent, inScript });
    });
  });
}

/**
 * Starts redis-server on a free port of 127.0.0.1, pinned to the server core (it shares that core
 * with the server under test), no persistence, its working directory a fresh temp dir. Resolves
 * once it accepts connections. `info()` reads INFO stats and commandstats; `monitor(ms)` samples
 * the commands it runs; `flush()` empties it.
 */
export async function startRedis(bin) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(join(os.tmpdir(), 'asap-bench-redis-'));
    const argv = pinned(SERVER_CORE, [bin, ...redisArgs(port, dir)]);
    const child = spawn(argv[0], argv.slice(1), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    let out = '';
    const ready = await new Promise((resolve) => {
      const onData = (d) => {
        out += d;
        if (/Ready to accept connections/.test(out)) resolve(true);
      };
      child.stdout.setEncoding('utf8').on('data', onData);
      child.stderr.setEncoding('utf8').on('data', onData);
      child.once('exit', () => resolve(false));
      setTimeout(() => resolve(false), 10_000).unref();
    });
    if (!ready) {
      child.kill('SIGKILL');
      await waitExit(child, 2000);
      rmSync(dir, { recursive: true, force: true });
      // Someone took the port between our check and redis-server's bind: another one.
      if (attempt < 3 && /in use/i.test(out)) continue;
      throw new Error(`redis-server did not start: ${out.trim().split('\n').slice(-3).join(' | ')}`);
    }
    child.stdout.resume();
    child.stderr.resume();
    let stopping = false;
    child.once('exit', (code, signal) => {
      if (!stopping)
        process.stderr.write(
          `redis-server (pid ${child.pid}) exited unexpectedly: ${signal ?? `code ${code}`}\n`,
        );
    });
    const conn = await respConnect(port);
    return {
      pid: child.pid,
      port,
      url: `redis://127.0.0.1:${port}`,
      child,
      /** INFO stats and commandstats, as numbers ({stats, calls}); two commands, sent together. */
      async info() {
        const [stats, cmds] = await Promise.all([
          conn.command('INFO', 'stats'),
          conn.command('INFO', 'commandstats'),
        ]);
        return { stats: parseInfo(stats), calls: parseCommandStats(cmds) };
      },
      monitor: (ms) => monitorSample(port, ms),
      flush: () => conn.command('FLUSHALL'),
      async stop() {
        stopping = true;
        conn.close();
        child.kill('SIGTERM');
        if (!(await waitExit(child, 5000))) {
          child.kill('SIGKILL');
          await waitExit(child, 2000);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
