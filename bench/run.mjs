// The benchmark: `npm run bench` (full, under 10 minutes) or `npm run bench -- --quick` (under 3).
// Compares `asap serve` with a baseline that does the least real work per round trip (JSON-RPC on
// raw `ws` / plain `node:http`, bench/baseline-*.mjs), interleaved in one run, and writes
// bench/RESULTS.md (machine, commands, table). Raw per-run numbers go to bench/out/ (git-ignored).
// `--only 8,9` runs those rows alone (ids as in the table; `4` is 4a and 4b): it prints the table and
// keeps the raw numbers but leaves RESULTS.md alone, which always holds a whole run.
// Rows 10 and 11 are rows 2 and 3 against `asap serve --redis`, with a redis-server of the bench's own
// on the server core; they are skipped (with a note) when redis-server is not installed.
// Row 12 is row 7's stream over Server-Sent Events (`POST /asap/stream`); it has no baseline of its
// own: it runs right after row 7 in every repeat (`--only 12` runs row 7 too) and is reported as a
// ratio to row 7's runs of the same repeat (the baseline ws stream, and asap serve over WebSocket).
// `--ws-native` lets every process (baselines, asap serve, clients) use ws's native add-ons
// (bufferutil, utf-8-validate; installed with `npm i --no-save bufferutil utf-8-validate`); such a
// run leaves RESULTS.md alone too, which is measured without them.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, relative } from 'node:path';
import {
  BENCH_DIR,
  CLIENT_CORE,
  CLK_TCK,
  clientCommand,
  distDir,
  measureFairness,
  measureIdle,
  measureSlowConsumer,
  median,
  OUT_DIR,
  openFileLimit,
  pinning,
  ROOT,
  redisCommand,
  redisServerBinary,
  redisServerVersion,
  runLoad,
  SERVER_CORE,
  SERVERS,
  serverCommand,
  startRedis,
  startServer,
  useDist,
  useNativeWs,
} from './harness.mjs';

const SNAPSHOT = join(OUT_DIR, 'dist-snapshot');

const quick = process.argv.includes('--quick');
/** `--ws-native`: the add-ons' versions; null for the pure-JS ws of RESULTS.md. */
const wsNative = (() => {
  if (!process.argv.includes('--ws-native')) return null;
  try {
    return useNativeWs();
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
})();
/** What the report says about ws's add-ons. */
const wsAddons =
  wsNative === null
    ? 'no native add-ons: WS_NO_BUFFER_UTIL=1, WS_NO_UTF_8_VALIDATE=1 in every process'
    : `native add-ons in every process: bufferutil ${wsNative.bufferutil}, utf-8-validate ${wsNative['utf-8-validate']}`;
/** RESULTS.md holds whole runs of the pure-JS ws only. */
const writesResults = () => only === null && wsNative === null;
const CFG = quick
  ? {
      mode: 'quick',
      warmupMs: 1000,
      windowMs: 2000,
      repeats: 1,
      redisRepeats: 1,
      idle: 1000,
      fairness: { chunks: 1_000_000, warmupMs: 1000, windowMs: 2000 },
      // Short: a quarter of the requests, and no wait for a 30 s grace (unless the CLI can shorten it).
      slow: { requests: 500, bytes: 100 * 1024, sendMs: 4000, closeWaitMs: 6000, readMs: 3000 },
    }
  : // Five short interleaved repeats rather than three long ones: on a shared VM the drift between
    // repeats is the main noise, and more repeats give a steadier median (about 8 minutes in all).
    // Rows 8 and 9 run once, after the repeats (about 1.5 minutes more). Rows 10 and 11 (Redis) run
    // in the first `redisRepeats` repeats only (about 1 minute more), to keep the whole run near 10 minutes.
    {
      mode: 'full',
      warmupMs: 1500,
      windowMs: 2500,
      repeats: 5,
      redisRepeats: 3,
      idle: 5000,
      fairness: { chunks: 1_000_000, warmupMs: 1500, windowMs: 4000 },
      // The server's slow-consumer grace is 30 s from when its send buffer fills, early in the sending.
      slow: { requests: 2000, bytes: 100 * 1024, sendMs: 30_000, closeWaitMs: 40_000, readMs: 10_000 },
    };

/** `--only 8,9` (or `--only=8,9`): the row ids to run; null runs them all. */
const only = (() => {
  const i = process.argv.findIndex((a) => a === '--only' || a.startsWith('--only='));
  if (i === -1) return null;
  const value = process.argv[i].startsWith('--only=') ? process.argv[i].slice(7) : process.argv[i + 1];
  const ids = new Set(
    (value ?? '')
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
  );
  const known = ['1', '2', '3', '4', '4a', '4b', '5', '6', '7', '8', '9', '10', '11', '12'];
  const unknown = [...ids].filter((x) => !known.includes(x));
  if (ids.size === 0 || unknown.length > 0) {
    process.stderr.write(`--only takes row ids among ${known.join(',')}; got ${value}\n`);
    process.exit(2);
  }
  return ids;
})();
const want = (id) =>
  only === null ||
  only.has(id) ||
  only.has(id.replace(/[ab]$/, '')) ||
  // Row 12 is measured against row 7 of the same run.
  (id === '7' && only.has('12'));

// ---- what is measured ----

/**
 * Rows 1–4, 6, 7, 12 (row 5, memory, is measured apart). `ref`: a row without a baseline of its own,
 * compared with that row's runs of the same repeat (its baseline, and its variant of the same name).
 */
const ROWS = [
  { id: '1', name: '1 conn × 1 in flight', load: { mode: 'ws', conns: 1, inflight: 1, ack: false } },
  { id: '2', name: '1 conn × 64 in flight', load: { mode: 'ws', conns: 1, inflight: 64, ack: false } },
  { id: '3', name: '32 conns × 8 in flight', load: { mode: 'ws', conns: 32, inflight: 8, ack: false } },
  {
    id: '4a',
    name: '1 conn × 64 in flight, requires_ack',
    load: { mode: 'ws', conns: 1, inflight: 64, ack: true },
  },
  {
    id: '4b',
    name: '32 conns × 8 in flight, requires_ack',
    load: { mode: 'ws', conns: 32, inflight: 8, ack: true },
  },
  { id: '6', name: 'HTTP keep-alive, 32 concurrent', load: { mode: 'http', conns: 32 }, http: true },
  { id: '7', name: 'stream of 10,000 chunks', load: { mode: 'stream', chunks: 10_000 }, unit: 'chunks/s' },
  {
    id: '12',
    name: 'stream of 10,000 chunks over SSE',
    load: { mode: 'sse', chunks: 10_000 },
    unit: 'chunks/s',
    sse: true,
    ref: '7',
  },
];
/** The variants a row runs (keys of VARIANTS): no ASAPClient on the HTTP row, no baseline on SSE. */
const rowVariants = (row) =>
  row.sse ? ['ours', 'stack'] : row.http ? ['base', 'ours'] : ['base', 'ours', 'stack'];
/** The URL a variant's load generator is given (HOST:PORT as printed by the server). */
function loadUrl(row, variant, httpBase, wsUrl) {
  // The raw client posts to the stream endpoint itself; ASAPClient is given its `/asap` endpoint.
  if (row.sse) return variant === 'stack' ? `${httpBase}/asap` : `${httpBase}/asap/stream`;
  return row.http ? `${httpBase}/asap` : wsUrl;
}

/**
 * Rows 10 and 11: rows 2 and 3 against `asap serve --redis` (dedupe outcomes, nonces, sessions and
 * push routing in Redis), each next to its own baseline run, interleaved the same way.
 */
const REDIS_ROWS = [
  { id: '10', name: '1 conn × 64 in flight, --redis', like: '2', load: ROWS[1].load },
  { id: '11', name: '32 conns × 8 in flight, --redis', like: '3', load: ROWS[2].load },
];
/** The variants of the Redis rows (keys of VARIANTS), rotated per repeat like the others. */
const REDIS_VARIANTS = ['base', 'redis'];

/** Who serves and who loads. `stack` (our ASAPClient) does not run the HTTP row. */
const VARIANTS = {
  base: {
    label: 'baseline',
    client: 'load-client.mjs',
    server: (row) => (row.http ? 'base-http' : 'base-ws'),
  },
  ours: {
    label: 'asap serve ← raw client',
    sseLabel: 'asap serve SSE ← raw http client',
    client: 'load-client.mjs',
    server: () => 'asap',
  },
  stack: {
    label: 'asap serve ← ASAPClient',
    sseLabel: 'asap serve SSE ← ASAPClient (http)',
    client: 'asap-client-load.mjs',
    server: () => 'asap',
  },
  // Rows 10 and 11 only; its server (asap serve --redis) and redis-server are started by runRedisRows.
  redis: { label: 'asap serve --redis ← raw client', client: 'load-client.mjs', server: () => 'asap-redis' },
};
/** MONITOR sample after each Redis window (outside it), to tell commands sent from commands run in scripts. */
const MONITOR_MS = 100;

const TARGETS = [
  { row: '2', variant: 'ours', metric: 'cpu', max: 1.1, what: 'server CPU/rt, row 2, raw client' },
  { row: '3', variant: 'ours', metric: 'cpu', max: 1.1, what: 'server CPU/rt, row 3, raw client' },
  { row: '4a', variant: 'ours', metric: 'cpu', max: 1.25, what: 'server CPU/rt with acks, row 4a' },
  { row: '4b', variant: 'ours', metric: 'cpu', max: 1.25, what: 'server CPU/rt with acks, row 4b' },
  { row: '2', variant: 'stack', metric: 'rate', min: 0.8, what: 'whole stack rt/s, row 2' },
  { row: '3', variant: 'stack', metric: 'rate', min: 0.8, what: 'whole stack rt/s, row 3' },
  { row: '3', variant: 'stack', metric: 'p99', max: 1.3, what: 'whole stack p99, row 3' },
  { row: '6', variant: 'ours', metric: 'rate', min: 0.5, what: 'HTTP requests/s, row 6' },
  // The asap serve process alone; redis-server's CPU is reported next to it (and summed) in rows 10, 11.
  {
    row: '10',
    variant: 'redis',
    metric: 'cpu',
    max: 1.8,
    what: 'server CPU/rt with --redis (asap serve, without redis-server), row 10',
  },
  {
    row: '11',
    variant: 'redis',
    metric: 'cpu',
    max: 1.8,
    what: 'server CPU/rt with --redis (asap serve, without redis-server), row 11',
  },
];
const MEMORY_TARGET_KIB = 8.5;
/** Row 8: echo p99 on one connection while another reads a 1,000,000-chunk stream. */
const FAIRNESS_TARGET_MS = 50;
/** Row 9: peak RSS growth under a slow consumer ≤ 2 × the hard cap (4 × the 1 MiB send high-water mark). */
const SLOW_TARGET_MIB = 2 * 4 * 1;
/** The slow-consumer grace asked for when `asap serve` has a flag for it (row 9 then needs no 30 s wait). */
const GRACE_S = 5;

// ---- helpers ----

const log = (msg) => process.stderr.write(`${msg}\n`);
const fmtInt = (n) => (n == null ? 'n/a' : Math.round(n).toLocaleString('en-US'));
const fmt1 = (n) => (n == null ? 'n/a' : n.toFixed(1));
const fmt2 = (n) => (n == null ? 'n/a' : `${n.toFixed(2)}×`);
const fmt2c = (n) => (n == null ? 'n/a' : n.toFixed(2));
const mib = (b) => (b == null ? 'n/a' : (b / 2 ** 20).toFixed(1));
/** A latency in µs as µs or ms; a censored one (an echo still unanswered when the window ended) as a timeout. */
const fmtLat = (us, censored) => {
  if (us == null) return 'n/a';
  const ms = us / 1000;
  const v = us < 1000 ? `${fmtInt(us)} µs` : `${ms < 100 ? ms.toFixed(ms < 10 ? 2 : 1) : fmtInt(ms)} ms`;
  return censored ? `timeout (≥ ${v})` : v;
};

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'n/a';
  }
}

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const wsVersion = JSON.parse(readFileSync(join(ROOT, 'node_modules/ws/package.json'), 'utf8')).version;
  return {
    nproc: sh('nproc', []),
    cpu: model,
    node: process.version,
    ws: wsVersion,
    kernel: `${os.type()} ${os.release()}`,
    memoryGiB: (os.totalmem() / 2 ** 30).toFixed(1),
    commit: `${sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])}${
      sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) === ''
        ? ''
        : ' + uncommitted changes in src/'
    }`,
  };
}

/**
 * The flag of `asap serve` that sets the slow-consumer grace, if its help lists one (a name with
 * "slow" or "grace" in it), with the value for GRACE_S in the unit it names; null when there is none.
 */
function graceFlag() {
  const help = sh(process.execPath, [join(ROOT, SERVERS.asap.script[0]), 'serve', '--help']);
  const m = /(--[\w-]*(?:slow|grace)[\w-]*)\s+<([^>]+)>([^\n]*)/i.exec(help);
  if (m === null) return null;
  const ms = /\bms\b|milli/i.test(`${m[2]} ${m[3]}`);
  return { flag: m[1], args: [m[1], String(ms ? GRACE_S * 1000 : GRACE_S)] };
}

/** Row 9: what became of the connection of the client that never reads. */
function connectionOutcome(x) {
  const s = (ms) => `${(ms / 1000).toFixed(1)} s`;
  const st = x.state ?? {};
  const how =
    st.server === 'gone' && st.client === 'gone'
      ? 'reset'
      : st.server === 'fin-wait-1' && st.client === 'established'
        ? 'its FIN queued behind the unread data'
        : `server end ${st.server}, client end ${st.client}`;
  const parts = [
    x.closedAtMs != null
      ? `yes, ${s(x.closedAtMs)} after the first request (${how}${x.socketEvent ? `, ${x.socketEvent}` : ''})`
      : `no: open ${s(x.waitedMs ?? 0)} after the first request`,
  ];
  if (x.closeCode != null) parts.push(`close frame ${x.closeCode} "${x.closeReason}"`);
  return parts.join('; ');
}

/** Row 9: what the client that never reads found when it read at last. */
function readOut(x) {
  const n = fmtInt(x.responses);
  switch (x.readEnd) {
    case 'all responses read':
      return `${n} (all)`;
    case 'close frame':
      return `${n}, then the close frame`;
    case 'end':
      return `${n}, then the server's FIN (no close frame)`;
    case 'read timeout':
      return `${n} (still reading at the time limit)`;
    default:
      return `${n}, then ${x.readEnd}`;
  }
}

/** A hash of every file under a directory, to notice when dist/ changes during the run. */
function treeHash(dir, hash = createHash('sha1')) {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) treeHash(p, hash);
    else hash.update(entry.name).update(readFileSync(p));
  }
  return hash;
}

/**
 * What Redis did in one window of a Redis row, per round trip: its CPU time, the commands it ran
 * (INFO stats `total_commands_processed`, which counts the commands a script runs as well as the
 * script call, less our own INFO calls), per command (INFO commandstats), the socket reads it made
 * (`total_reads_processed`: batches of pipelined commands) and the bytes in and out; and, from the
 * MONITOR sample taken after the window, the share of commands sent by `asap serve` (the rest ran
 * inside Lua scripts).
 */
function redisWindow(res) {
  const c = res.companion;
  const out = { cpuUs: c.cpuUs, cpuPerOpUs: c.cpuPerOpUs, cpuPct: c.cpuPct };
  const { start, end } = c;
  if (start?.failed !== undefined || end?.failed !== undefined) {
    out.failed = start?.failed ?? end.failed;
    return out;
  }
  const n = res.count;
  const d = (k) => end.stats[k] - start.stats[k];
  const delta = (cmd) => (end.calls[cmd] ?? 0) - (start.calls[cmd] ?? 0);
  const own = delta('info');
  out.commandsPerRt = (d('total_commands_processed') - own) / n;
  out.readsPerRt = (d('total_reads_processed') - own) / n;
  out.bytesInPerRt = d('total_net_input_bytes') / n;
  out.bytesOutPerRt = d('total_net_output_bytes') / n;
  out.errorRepliesPerRt = d('total_error_replies') / n;
  const m = end.monitor;
  out.monitorLines = m?.lines ?? 0;
  /** Per command: calls per round trip, and the share of them sent by a client (not run by a script). */
  out.perCommand = {};
  for (const cmd of Object.keys(end.calls)) {
    const k = delta(cmd);
    if (cmd === 'info' || k <= 0) continue;
    const sent = m?.sent[cmd] ?? 0;
    const scripted = m?.inScript[cmd] ?? 0;
    out.perCommand[cmd] = { perRt: k / n, sentShare: sent + scripted > 0 ? sent / (sent + scripted) : null };
  }
  // Sent per request: each command's calls per request times its sent share in the sample (a command
  // the sample did not catch counts as unknown, left out of both parts).
  const known = Object.values(out.perCommand).filter((x) => x.sentShare !== null);
  out.sentPerRt = out.monitorLines > 0 ? known.reduce((t, x) => t + x.perRt * x.sentShare, 0) : null;
  out.scriptedPerRt =
    out.monitorLines > 0 ? known.reduce((t, x) => t + x.perRt * (1 - x.sentShare), 0) : null;
  return out;
}

/** Row 10 / 11: the Redis commands of a request, sent and run inside scripts, in words. */
function redisWork(a) {
  const list = (pairs) =>
    pairs.length === 0 ? 'none' : pairs.map(([cmd, k]) => `${cmd.toUpperCase()} ${fmt2c(k)}`).join(', ');
  const sent = [];
  const scripted = [];
  const unseen = [];
  for (const [cmd, x] of Object.entries(a.perCommand ?? {}).sort((p, q) => q[1].perRt - p[1].perRt)) {
    if (x.perRt < 0.005) continue;
    if (x.sentShare == null) {
      unseen.push([cmd, x.perRt]);
      continue;
    }
    if (x.sentShare * x.perRt >= 0.005) sent.push([cmd, x.perRt * x.sentShare]);
    if ((1 - x.sentShare) * x.perRt >= 0.005) scripted.push([cmd, x.perRt * (1 - x.sentShare)]);
  }
  return (
    `${fmt2c(a.commandsPerRt)} commands, ${fmt2c(a.sentPerRt)} of them sent by asap serve (${list(sent)}) and ` +
    `${fmt2c(a.scriptedPerRt)} run inside its Lua scripts (${list(scripted)})` +
    `${unseen.length > 0 ? `; not seen in the MONITOR sample: ${list(unseen)}` : ''}. ` +
    `Redis read its sockets ${fmt2c(a.readsPerRt)} times per request (asap serve pipelines the commands of concurrent ` +
    `requests); ${fmtInt(a.bytesInPerRt)} bytes to Redis and ${fmtInt(a.bytesOutPerRt)} back per request` +
    `${a.errorRepliesPerRt >= 0.005 ? `; ${fmt2c(a.errorRepliesPerRt)} error replies per request` : ''}.`
  );
}

/** The rotation of variant order for repeat r, so each variant takes each place in turn. */
function order(keys, r) {
  const k = r % keys.length;
  return [...keys.slice(k), ...keys.slice(0, k)];
}

// ---- the run ----

async function main() {
  const started = Date.now();
  const info = machine();
  const notes = [];
  const loadStart = os.loadavg();
  // The code under test: a snapshot of dist/ (others may rebuild dist/ while this runs).
  const distBuilt = statSync(join(ROOT, 'dist/cli/main.js')).mtime;
  rmSync(SNAPSHOT, { recursive: true, force: true });
  cpSync(join(ROOT, 'dist'), SNAPSHOT, { recursive: true });
  const distHash = treeHash(SNAPSHOT).digest('hex');
  useDist(relative(ROOT, SNAPSHOT));
  if (!pinning.ok) notes.push(`No CPU pinning: ${pinning.why}; servers and clients share the cores.`);
  const limit = openFileLimit();
  // Each process holds its own end of every idle connection: the server and the client each need
  // that many descriptors, plus a few hundred for the rest.
  let idle = CFG.idle;
  if (limit < idle + 500) {
    idle = Math.max(100, Math.floor((limit - 500) / 100) * 100);
    notes.push(
      `ulimit -n is ${limit}: the memory row opens ${idle} connections instead of ${CFG.idle} (it cannot be raised from node).`,
    );
  }
  log(
    `asap-ts bench (${CFG.mode}): warm-up ${CFG.warmupMs} ms, window ${CFG.windowMs} ms, ${CFG.repeats} repeat(s); ` +
      `pinning ${pinning.ok ? `servers on core ${SERVER_CORE}, clients on core ${CLIENT_CORE}` : 'off'}`,
  );

  /** runs[rowId][variant] = [result per repeat] */
  const runs = {};
  const memory = { 'base-ws': [], asap: [] };
  const commands = new Map();
  const rows = ROWS.filter((row) => want(row.id));
  // Rows 10 and 11 need a redis-server, and an `asap serve` that has --redis.
  const redisWanted = REDIS_ROWS.filter((row) => want(row.id));
  const redisBin = redisWanted.length > 0 ? redisServerBinary() : null;
  let redisSkip = null;
  if (redisWanted.length > 0) {
    info.redis = redisBin === null ? null : redisServerVersion(redisBin);
    if (info.redis == null)
      redisSkip =
        "redis-server is not installed (none in ASAP_REDIS_SERVER, /usr/bin, /usr/local/bin or on PATH; CI installs Debian's)";
    else if (!/--redis\b/.test(sh(process.execPath, [join(ROOT, SERVERS.asap.script[0]), 'serve', '--help'])))
      redisSkip = 'this build of `asap serve` has no --redis flag (npm run build)';
  }
  const redisRows = redisSkip === null ? redisWanted : [];
  if (redisSkip !== null) {
    const ids = redisWanted.map((row) => row.id).join(' and ');
    notes.push(`Row${redisWanted.length > 1 ? 's' : ''} ${ids} (asap serve --redis) skipped: ${redisSkip}.`);
    log(`rows ${ids} skipped: ${redisSkip}`);
  }
  const redisRepeats = redisRows.length > 0 ? Math.min(CFG.redisRepeats, CFG.repeats) : 0;
  const repeats = Math.max(rows.length > 0 || want('5') ? CFG.repeats : 0, redisRepeats);

  /**
   * Rows 10 and 11 in repeat r: a fresh redis-server (on the server core, next to the server) and
   * `asap serve --redis` on it, against the baseline ws server of this repeat, in rotating order.
   * Redis is emptied before each window's load, its CPU time read at the window's edges, its INFO
   * (commands, socket reads) too, and a short MONITOR sample taken right after the window.
   */
  async function runRedisRows(r, baseServer) {
    const redis = await startRedis(redisBin);
    let asapRedis;
    /** This repeat's results, kept only once all of them are in (the ratios pair runs by repeat). */
    const got = {};
    try {
      const args = ['--redis', redis.url];
      asapRedis = await startServer('asap', { args });
      commands.set('redis-server', redisCommand(redisBin));
      commands.set(
        `${SERVERS.asap.label} --redis`,
        serverCommand('asap', [], ['--redis', 'redis://127.0.0.1:PORT']),
      );
      for (const row of redisRows) {
        for (const v of order(REDIS_VARIANTS, r)) {
          const variant = VARIANTS[v];
          const server = v === 'redis' ? asapRedis : baseServer;
          const cfg = { ...row.load, url: server.wsUrl, warmupMs: CFG.warmupMs, windowMs: CFG.windowMs };
          let companion;
          if (v === 'redis') {
            await redis.flush(); // every window starts from an empty Redis (scripts stay loaded)
            companion = {
              pid: redis.pid,
              start: () => redis.info(),
              end: async () => ({ ...(await redis.info()), monitor: await redis.monitor(MONITOR_MS) }),
            };
          }
          const res = await runLoad(variant.client, cfg, server, { companion });
          if (res.companion !== undefined) res.redis = redisWindow(res);
          got[row.id] ??= {};
          got[row.id][v] = res;
          const x = res.redis;
          log(
            `row ${row.id.padEnd(2)} ${variant.label.padEnd(24)} ${fmtInt(res.perSecond).padStart(8)}/s  ` +
              `srv ${fmt1(res.serverCpuPerOpUs).padStart(6)} µs/op ${fmt1(res.serverCpuPct).padStart(5)}% ` +
              `${x ? `redis ${fmt1(x.cpuPerOpUs)} µs/op ${fmt1(x.cpuPct)}% ${fmt2c(x.commandsPerRt)} cmds/rt ` : ''}` +
              `cli ${fmt1(res.clientCpuPct).padStart(5)}% other ${fmt1(res.otherCpuPct).padStart(5)}%` +
              `${res.errors ? `  ${res.errors} errors` : ''}`,
          );
        }
      }
      for (const [id, byVariant] of Object.entries(got)) {
        runs[id] ??= {};
        for (const [v, res] of Object.entries(byVariant)) {
          runs[id][v] ??= [];
          runs[id][v].push(res);
        }
      }
    } finally {
      await asapRedis?.stop();
      await redis.stop();
    }
  }

  for (let r = 0; r < repeats; r++) {
    log(`-- repeat ${r + 1}/${CFG.repeats}`);
    const servers = {};
    const redisNow = r < redisRepeats;
    const kinds = rows.length > 0 ? ['base-ws', 'base-http', 'asap'] : redisNow ? ['base-ws'] : [];
    for (const kind of kinds) {
      servers[kind] = await startServer(kind);
      commands.set(SERVERS[kind].label, serverCommand(kind));
    }
    try {
      for (const row of rows) {
        runs[row.id] ??= {};
        for (const v of order(rowVariants(row), r)) {
          const variant = VARIANTS[v];
          const server = servers[variant.server(row)];
          const url = loadUrl(row, v, server.httpBase, server.wsUrl);
          const cfg = { ...row.load, url, warmupMs: CFG.warmupMs, windowMs: CFG.windowMs };
          if (variant.client === 'asap-client-load.mjs') cfg.dist = distDir;
          const res = await runLoad(variant.client, cfg, server);
          runs[row.id][v] ??= [];
          runs[row.id][v].push(res);
          log(
            `row ${row.id.padEnd(2)} ${(row.sse ? variant.sseLabel : variant.label).padEnd(24)} ${fmtInt(res.perSecond).padStart(8)}/s  ` +
              `srv ${fmt1(res.serverCpuPerOpUs).padStart(6)} µs/op ${fmt1(res.serverCpuPct).padStart(5)}% ` +
              `cli ${fmt1(res.clientCpuPct).padStart(5)}% other ${fmt1(res.otherCpuPct).padStart(5)}%` +
              `${res.errors ? `  ${res.errors} errors` : ''}`,
          );
        }
      }
      if (redisNow) {
        await runRedisRows(r, servers['base-ws']).catch((err) => {
          notes.push(`Rows ${redisRows.map((row) => row.id).join(', ')}, repeat ${r + 1}: ${err.message}.`);
          log(`redis rows failed in repeat ${r + 1}: ${err.stack ?? err}`);
        });
      }
    } finally {
      for (const s of Object.values(servers)) await s.stop();
    }
    // Row 5: fresh servers, so the heap holds nothing from the load above.
    for (const kind of want('5') ? order(['base-ws', 'asap'], r) : []) {
      const server = await startServer(kind);
      try {
        const m = await measureIdle(server, [idle / 5, idle]);
        memory[kind].push(m);
        log(
          `row 5  ${kind.padEnd(24)} ${m.opened} idle conns: RSS ${fmt1(m.rssPerConn / 1024)} KiB/conn, ` +
            `heap ${fmt1(m.heapPerConn / 1024)} KiB/conn${m.failed ? ` (${m.failed} failed to open)` : ''}`,
        );
      } finally {
        await server.stop();
      }
    }
  }
  for (const row of [...rows, ...redisRows]) {
    const variants = redisRows.includes(row) ? REDIS_VARIANTS : rowVariants(row);
    const scripts = new Map(variants.map((v) => [VARIANTS[v].client, v]));
    for (const [script, v] of scripts) {
      const url = loadUrl(row, v, 'http://HOST:PORT', 'ws://HOST:PORT/asap/ws');
      const cfg = { ...row.load, url, warmupMs: CFG.warmupMs, windowMs: CFG.windowMs };
      if (script === 'asap-client-load.mjs') cfg.dist = distDir;
      commands.set(`row ${row.id}, ${script}`, clientCommand(script, cfg));
    }
  }
  if (want('5'))
    commands.set(
      'row 5, load-client.mjs',
      clientCommand('load-client.mjs', {
        mode: 'idle',
        url: 'ws://HOST:PORT/asap/ws',
        stages: [idle / 5, idle],
      }),
    );

  // ---- rows 8 and 9: once each, after the repeats, each measurement on a fresh server ----
  const fairnessCfg = { ...CFG.fairness, timeoutMs: 2 * FAIRNESS_TARGET_MS };
  /** fairness[kind]: echo alone and under the stream (bench/harness.mjs measureFairness). */
  const fairness = {};
  for (const kind of want('8') ? ['base-ws', 'asap'] : []) {
    const server = await startServer(kind);
    commands.set(SERVERS[kind].label, serverCommand(kind));
    try {
      const f = await measureFairness(server, fairnessCfg);
      fairness[kind] = f;
      const lat = (x) =>
        x === null ? 'no answer' : `${fmtLat(x.p50Us, x.p50Censored)} / ${fmtLat(x.p99Us, x.p99Censored)}`;
      log(
        `row 8  ${kind.padEnd(24)} echo p50 / p99 alone ${lat(f.alone)}, under the stream ${lat(f.underStream)}; ` +
          `stream ${fmtInt(f.chunksPerSecond)} chunks/s`,
      );
    } catch (err) {
      fairness[kind] = { failed: err.message };
      notes.push(`Row 8, ${SERVERS[kind].label}: ${err.message}.`);
    } finally {
      // A server whose stream holds its event loop heeds SIGTERM only once the stream ends: no long grace.
      await server.stop(2000);
    }
  }
  if (want('8')) {
    commands.set(
      'row 8, fairness-client.mjs (echo)',
      clientCommand('fairness-client.mjs', {
        mode: 'echo',
        url: 'ws://HOST:PORT/asap/ws',
        timeoutMs: fairnessCfg.timeoutMs,
      }),
    );
    commands.set(
      'row 8, fairness-client.mjs (stream)',
      clientCommand('fairness-client.mjs', {
        mode: 'stream',
        url: 'ws://HOST:PORT/asap/ws',
        chunks: fairnessCfg.chunks,
      }),
    );
  }

  /** slow.never (the client never reads) and slow.reads (the reference: it reads). */
  const slow = {};
  const grace = want('9') ? graceFlag() : null;
  // With a flag for the grace, a short one, and a wait to match; otherwise the default 30 s grace.
  const slowCfg =
    grace === null
      ? CFG.slow
      : {
          ...CFG.slow,
          sendMs: Math.min(CFG.slow.sendMs, (GRACE_S + 10) * 1000),
          closeWaitMs: (GRACE_S + 10) * 1000,
        };
  const slowArgs = grace?.args ?? [];
  const slowRuns = {
    never: { ...slowCfg, read: false },
    // The reference reads everything: time enough for all of it, whatever the mode.
    reads: {
      ...slowCfg,
      read: true,
      sendMs: Math.max(slowCfg.sendMs, 15_000),
      readMs: Math.max(slowCfg.readMs, 15_000),
    },
  };
  for (const [key, cfg] of want('9') ? Object.entries(slowRuns) : []) {
    const server = await startServer('asap', { args: slowArgs });
    try {
      const x = await measureSlowConsumer(server, cfg);
      slow[key] = x;
      log(
        `row 9  ${(key === 'never' ? 'client never reads' : 'client reads (reference)').padEnd(24)} ` +
          `wrote ${fmtInt(x.queued)}/${fmtInt(x.requests)}, RSS ${mib(x.rssBefore)} MiB, peak +${mib(x.rssGrowth)} MiB, ` +
          `after ${mib(x.rssAfter)} MiB; ${key === 'never' ? connectionOutcome(x) : `${fmtInt(x.responses)} responses read`}`,
      );
    } catch (err) {
      slow[key] = { failed: err.message };
      notes.push(`Row 9 (${key}): ${err.message}.`);
    } finally {
      await server.stop();
    }
  }
  if (want('9')) {
    if (grace === null && slowCfg.closeWaitMs < 35_000)
      notes.push(
        `Row 9 waits ${slowCfg.closeWaitMs / 1000} s for the server to end the connection, less than its 30 s slow-consumer grace: no close is expected in ${CFG.mode} mode.`,
      );
    if (slowArgs.length > 0)
      commands.set(`${SERVERS.asap.label} (row 9)`, serverCommand('asap', [], slowArgs));
    else commands.set(SERVERS.asap.label, serverCommand('asap'));
    for (const [key, cfg] of Object.entries(slowRuns))
      commands.set(
        `row 9${key === 'reads' ? ' reference' : ''}, slow-consumer.mjs`,
        clientCommand('slow-consumer.mjs', { url: 'ws://HOST:PORT/asap/ws', ...cfg }),
      );
  }

  // ---- aggregate: medians over repeats; ratios are medians of the per-repeat ratios ----
  /** The medians over repeats of what every load run reports. */
  const medians = (list) => {
    const pick = (key) => median(list.map((x) => x[key]));
    return {
      perSecond: pick('perSecond'),
      p50Us: pick('p50Us'),
      p99Us: pick('p99Us'),
      cpuPerOp: pick('serverCpuPerOpUs'),
      probeCpuPerOp: pick('serverProbeCpuPerOpUs'),
      serverCpuPct: pick('serverCpuPct'),
      clientCpuPct: pick('clientCpuPct'),
      clientCpuPerOp: median(list.map((x) => x.clientCpuUs / x.count)),
      otherCpuPct: pick('otherCpuPct'),
      errors: list.reduce((n, x) => n + x.errors, 0),
      count: pick('count'),
    };
  };
  const agg = {};
  for (const row of rows) {
    agg[row.id] = {};
    for (const [v, list] of Object.entries(runs[row.id])) {
      // A row without a baseline of its own (12) takes its reference row's (7), repeat by repeat.
      const base = runs[row.ref ?? row.id].base;
      agg[row.id][v] = {
        ...medians(list),
        acks: median(list.map((x) => x.acks)),
        rateRatio: median(list.map((x, i) => x.perSecond / base[i].perSecond)),
        cpuRatio: median(list.map((x, i) => x.serverCpuPerOpUs / base[i].serverCpuPerOpUs)),
        p99Ratio: median(list.map((x, i) => x.p99Us / base[i].p99Us)),
      };
      if (row.ref !== undefined) {
        // Row 12 ÷ row 7 in the same repeat: the raw client over WebSocket, and the same client over WebSocket.
        const vs = (other) => ({
          rate: median(list.map((x, i) => x.perSecond / other[i].perSecond)),
          cpu: median(list.map((x, i) => x.serverCpuPerOpUs / other[i].serverCpuPerOpUs)),
        });
        agg[row.id][v].vsRaw = vs(runs[row.ref].ours);
        agg[row.id][v].vsSame = vs(runs[row.ref][v]);
      }
      if (agg[row.id][v].errors > 0)
        notes.push(`Row ${row.id}, ${VARIANTS[v].label}: ${agg[row.id][v].errors} errors.`);
    }
  }
  for (const row of redisRows.filter((x) => runs[x.id]?.redis?.length > 0)) {
    agg[row.id] = {};
    const base = runs[row.id].base;
    for (const [v, list] of Object.entries(runs[row.id])) {
      const ratio = (f) => median(list.map((x, i) => f(x) / f(base[i])));
      const a = {
        ...medians(list),
        repeats: list.length,
        rateRatio: ratio((x) => x.perSecond),
        p99Ratio: ratio((x) => x.p99Us),
        cpuRatio: ratio((x) => x.serverCpuPerOpUs),
      };
      if (v === 'redis') {
        const rx = list.map((x) => x.redis);
        const rpick = (key) => median(rx.map((x) => x[key]));
        const both = (x) => (x.serverCpuUs + x.redis.cpuUs) / x.count;
        Object.assign(a, {
          redisCpuPerOp: rpick('cpuPerOpUs'),
          redisCpuPct: rpick('cpuPct'),
          bothCpuPerOp: median(list.map(both)),
          bothCpuPct: median(list.map((x) => x.serverCpuPct + x.redis.cpuPct)),
          bothRatio: median(list.map((x, i) => both(x) / base[i].serverCpuPerOpUs)),
          commandsPerRt: rpick('commandsPerRt'),
          sentPerRt: rpick('sentPerRt'),
          scriptedPerRt: rpick('scriptedPerRt'),
          readsPerRt: rpick('readsPerRt'),
          bytesInPerRt: rpick('bytesInPerRt'),
          bytesOutPerRt: rpick('bytesOutPerRt'),
          errorRepliesPerRt: rpick('errorRepliesPerRt'),
          perCommand: Object.fromEntries(
            [...new Set(rx.flatMap((x) => Object.keys(x.perCommand ?? {})))].map((cmd) => [
              cmd,
              {
                perRt: median(rx.map((x) => x.perCommand?.[cmd]?.perRt ?? 0)),
                sentShare: median(rx.map((x) => x.perCommand?.[cmd]?.sentShare)),
              },
            ]),
          ),
          redisFailed: rx.map((x) => x.failed).filter(Boolean),
        });
        for (const f of a.redisFailed) notes.push(`Row ${row.id}: a Redis INFO read failed (${f}).`);
      }
      agg[row.id][v] = a;
      if (a.errors > 0) notes.push(`Row ${row.id}, ${VARIANTS[v].label}: ${a.errors} errors.`);
    }
  }
  const otherMedian = median(
    Object.values(runs).flatMap((byVariant) =>
      Object.values(byVariant)
        .flat()
        .map((x) => x.otherCpuPct),
    ),
  );
  const otherMax = Math.max(
    ...Object.values(runs).flatMap((byVariant) =>
      Object.values(byVariant)
        .flat()
        .map((x) => x.otherCpuPct),
    ),
  );
  if (otherMax > 10) {
    notes.push(
      `Other processes used the benchmark cores during some windows (other CPU %: median ${otherMedian.toFixed(0)}%, ` +
        `max ${otherMax.toFixed(0)}%): those cells' rates are depressed; CPU per round trip and the interleaved ratios are less affected.`,
    );
  }
  const mem = {};
  for (const [kind, list] of want('5') ? Object.entries(memory) : []) {
    mem[kind] = {
      opened: median(list.map((m) => m.opened)),
      rssPerConn: median(list.map((m) => m.rssPerConn)),
      heapPerConn: median(list.map((m) => m.heapPerConn)),
      rssMarginal: median(list.map((m) => m.rssMarginal)),
      heapMarginal: median(list.map((m) => m.heapMarginal)),
      rssRatio: median(list.map((m, i) => m.rssPerConn / memory['base-ws'][i].rssPerConn)),
    };
  }

  // ---- targets ----
  const check = (t) => {
    const a = agg[t.row][t.variant];
    const value = t.metric === 'cpu' ? a.cpuRatio : t.metric === 'p99' ? a.p99Ratio : a.rateRatio;
    const ok = t.max !== undefined ? value <= t.max : value >= t.min;
    return { ...t, value, ok, limit: t.max !== undefined ? `≤ ${t.max}×` : `≥ ${t.min}×` };
  };
  // A target whose row did not run (rows 10, 11 without redis-server) is left out; the notes say why.
  const checks = TARGETS.filter((t) => want(t.row) && agg[t.row]?.[t.variant] !== undefined).map(check);
  const targetOf = (rowId, v, metric) =>
    checks.find((c) => c.row === rowId && c.variant === v && c.metric === metric);
  const mark = (c) => (c === undefined ? '' : ` (${c.limit} ${c.ok ? '✓' : '✗'})`);
  const memOk = want('5') && mem.asap.rssPerConn / 1024 <= MEMORY_TARGET_KIB;
  // Row 8: asap serve's echo p99 under the stream; a censored p99 is at least that, so it counts as is.
  const under = fairness.asap?.underStream ?? null;
  const fairP99Ms = under === null || under.p99Us == null ? null : under.p99Us / 1000;
  const fairOk = fairP99Ms !== null && fairP99Ms <= FAIRNESS_TARGET_MS;
  const growthMiB = slow.never?.rssGrowth == null ? null : slow.never.rssGrowth / 2 ** 20;
  const slowOk = growthMiB !== null && growthMiB <= SLOW_TARGET_MIB;
  const heldMiB = slow.never?.heldGrowth == null ? null : slow.never.heldGrowth / 2 ** 20;
  const heldOk = heldMiB !== null && heldMiB <= SLOW_TARGET_MIB;
  const okMark = (ok) => (ok ? '✓' : '✗');

  // ---- tables ----
  const lines = [];
  lines.push(
    '| row | scenario | server ← client | rt/s | × base | p50 µs | p99 µs | server CPU µs/rt | × base | server CPU % | client CPU µs/rt | client CPU % | other CPU % |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const row of rows) {
    for (const v of Object.keys(VARIANTS)) {
      const a = agg[row.id][v];
      if (a === undefined) continue;
      const isBase = v === 'base';
      const label = isBase
        ? row.http
          ? 'baseline http ← raw http client'
          : 'baseline ws ← raw client'
        : row.sse
          ? VARIANTS[v].sseLabel
          : VARIANTS[v].label;
      const rate = `${fmtInt(a.perSecond)}${row.unit ? ` ${row.unit}` : ''}`;
      lines.push(
        `| ${row.id} | ${row.name} | ${label} | ${rate} | ${isBase ? '1' : `${fmt2(a.rateRatio)}${mark(targetOf(row.id, v, 'rate'))}`} | ` +
          `${fmtInt(a.p50Us)} | ${fmtInt(a.p99Us)}${isBase ? '' : mark(targetOf(row.id, v, 'p99'))} | ${fmt1(a.cpuPerOp)} | ` +
          `${isBase ? '1' : `${fmt2(a.cpuRatio)}${mark(targetOf(row.id, v, 'cpu'))}`} | ${fmtInt(a.serverCpuPct)} | ${fmt1(a.clientCpuPerOp)} | ${fmtInt(a.clientCpuPct)} | ${fmtInt(a.otherCpuPct)} |`,
      );
    }
  }

  // Row 12: the stream over SSE next to row 7's over WebSocket (ratios per repeat, then the median).
  const sseLines = [];
  for (const row of rows.filter((x) => x.ref !== undefined)) {
    const ref = agg[row.ref];
    sseLines.push(
      `| row | server ← client | chunks/s | × row ${row.ref} raw client (ws) | × row ${row.ref} same client (ws) | × baseline ws stream | ` +
        `server CPU µs/chunk | × row ${row.ref} raw client (ws) | × row ${row.ref} same client (ws) | × baseline ws stream |`,
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    );
    for (const v of rowVariants(row)) {
      const a = agg[row.id][v];
      if (a === undefined) continue;
      sseLines.push(
        `| ${row.id} | ${VARIANTS[v].sseLabel} | ${fmtInt(a.perSecond)} | ${fmt2(a.vsRaw.rate)} | ${fmt2(a.vsSame.rate)} | ` +
          `${fmt2(a.rateRatio)} | ${fmt1(a.cpuPerOp)} | ${fmt2(a.vsRaw.cpu)} | ${fmt2(a.vsSame.cpu)} | ${fmt2(a.cpuRatio)} |`,
      );
    }
    sseLines.push(
      '',
      `Row ${row.id} is row ${row.ref}'s stream (10,000 TaskStream chunks, \`interval_ms: 0\`, one stream after another) ` +
        'over Server-Sent Events: `POST /asap/stream`, one `data:` event per chunk. It has no baseline server of its own; ' +
        `its ratios are to row ${row.ref}'s runs of the same repeat, run just before it: asap serve over WebSocket with the ` +
        `raw client (${fmtInt(ref.ours.perSecond)} chunks/s, ${fmt1(ref.ours.cpuPerOp)} µs/chunk) and with the same client ` +
        `(the ASAPClient: ${fmtInt(ref.stack?.perSecond)} chunks/s, ${fmt1(ref.stack?.cpuPerOp)} µs/chunk), and the ` +
        `baseline ws stream (${fmtInt(ref.base.perSecond)} chunks/s, ${fmt1(ref.base.cpuPerOp)} µs/chunk).`,
    );
  }

  // Rows 10 and 11: asap serve --redis, with redis-server's share of the server core beside it.
  const redisLines = [];
  if (redisRows.length > 0) {
    redisLines.push(
      '| row | scenario | server ← client | rt/s | × base | p50 µs | p99 µs | × base | asap serve CPU µs/rt | × base | redis-server CPU µs/rt | asap serve + redis-server CPU µs/rt | × base | server core CPU % | Redis commands/rt (sent by asap serve) | client CPU % | other CPU % |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    );
    for (const row of redisRows) {
      for (const v of REDIS_VARIANTS) {
        const a = agg[row.id]?.[v];
        if (a === undefined) continue;
        const isBase = v === 'base';
        const label = isBase ? 'baseline ws ← raw client' : VARIANTS[v].label;
        redisLines.push(
          isBase
            ? `| ${row.id} | ${row.name} | ${label} | ${fmtInt(a.perSecond)} | 1 | ${fmtInt(a.p50Us)} | ${fmtInt(a.p99Us)} | 1 | ` +
                `${fmt1(a.cpuPerOp)} | 1 | | ${fmt1(a.cpuPerOp)} | 1 | ${fmtInt(a.serverCpuPct)} | | ${fmtInt(a.clientCpuPct)} | ${fmtInt(a.otherCpuPct)} |`
            : `| ${row.id} | ${row.name} | ${label} | ${fmtInt(a.perSecond)} | ${fmt2(a.rateRatio)} | ${fmtInt(a.p50Us)} | ` +
                `${fmtInt(a.p99Us)} | ${fmt2(a.p99Ratio)} | ${fmt1(a.cpuPerOp)} | ${fmt2(a.cpuRatio)}${mark(targetOf(row.id, v, 'cpu'))} | ` +
                `${fmt1(a.redisCpuPerOp)} | ${fmt1(a.bothCpuPerOp)} | ${fmt2(a.bothRatio)} | ` +
                `${fmtInt(a.serverCpuPct)} + ${fmtInt(a.redisCpuPct)} | ${fmt2c(a.commandsPerRt)} (${fmt2c(a.sentPerRt)}) | ` +
                `${fmtInt(a.clientCpuPct)} | ${fmtInt(a.otherCpuPct)} |`,
        );
      }
    }
    const ran = redisRows.filter((row) => agg[row.id]?.redis !== undefined);
    const n = Math.max(0, ...ran.map((row) => agg[row.id].redis.repeats));
    if (ran.length > 0)
      redisLines.push(
        '',
        `${redisRows.length > 1 ? 'Rows' : 'Row'} ${redisRows.map((row) => row.id).join(' and ')} ${redisRows.length > 1 ? 'are rows' : 'is row'} ` +
          `${redisRows.map((row) => row.like).join(' and ')} against ` +
          '`asap serve --redis` (dedupe outcomes, nonces, sessions and push routing in Redis), each next to its own baseline ' +
          `run, in ${n} of the ${CFG.repeats} repeat(s)${n < CFG.repeats ? ' (fewer, to keep the run short)' : ''}. The bench starts ` +
          'its own redis-server, pinned to the server core: asap serve and redis-server share the one core the baseline has to ' +
          `itself, and "server core CPU %" is asap serve + redis-server. The ≤ 1.8× target applies to asap serve's own CPU per ` +
          "round trip. Counting redis-server's CPU as well, a round trip costs " +
          ran
            .map((row) => {
              const a = agg[row.id].redis;
              return `${fmt2(a.bothRatio)} the baseline's in row ${row.id} (${fmt1(a.bothCpuPerOp)} µs: ${fmt1(a.cpuPerOp)} in asap serve + ${fmt1(a.redisCpuPerOp)} in redis-server)`;
            })
            .join(', and ') +
          '.',
        '',
        'Redis work per request (INFO of redis-server over the window ÷ round trips; `total_commands_processed` counts the ' +
          'commands a Lua script runs as well as the script call; which were sent and which ran inside scripts is from a ' +
          `${MONITOR_MS} ms MONITOR sample taken right after each window):`,
        '',
        ...ran.map((row) => `- row ${row.id}: ${redisWork(agg[row.id].redis)}`),
      );
  }
  const kib = (b) => fmt1(b / 1024);
  const memRow = (name, m, isBase) =>
    `| 5 | ${name} | ${fmtInt(m.opened)} | ${kib(m.rssPerConn)} | ${isBase ? '1' : fmt2(m.rssRatio)} | ` +
    `${kib(m.heapPerConn)} | ${kib(m.rssMarginal)} | ${kib(m.heapMarginal)} | ` +
    `${isBase ? '' : `≤ ${MEMORY_TARGET_KIB} KiB ${memOk ? '✓' : '✗'}`} |`;
  const memLines = want('5')
    ? [
        '| row | server | idle connections | RSS KiB/conn | × base | V8 heap KiB/conn (after GC) | marginal RSS KiB/conn | marginal heap KiB/conn | target |',
        '|---|---|---:|---:|---:|---:|---:|---:|---|',
        memRow('baseline ws', mem['base-ws'], true),
        memRow('asap serve', mem.asap, false),
      ]
    : [];

  const fairLines = [];
  if (want('8')) {
    fairLines.push(
      '| row | scenario | server ← clients | echo p50 | echo p99 | echo max | echoes answered | stream chunks/s | server CPU % | target |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---|',
    );
    for (const kind of ['base-ws', 'asap']) {
      const f = fairness[kind];
      const label = kind === 'asap' ? 'asap serve ← raw clients' : 'baseline ws ← raw clients';
      if (f === undefined || f.failed !== undefined) {
        fairLines.push(
          `| 8 | echo, alone and under the stream | ${label} | failed: ${f?.failed ?? 'not run'} | | | | | | |`,
        );
        continue;
      }
      for (const [scenario, x, stream] of [
        ['echo, 1 in flight, alone (reference)', f.alone, false],
        [
          `echo, 1 in flight, while another connection reads a ${fmtInt(fairnessCfg.chunks)}-chunk stream`,
          f.underStream,
          true,
        ],
      ]) {
        const target = stream && kind === 'asap' ? `p99 ≤ ${FAIRNESS_TARGET_MS} ms ${okMark(fairOk)}` : '';
        if (x === null) {
          const why =
            stream && !f.streamStarted
              ? 'the stream did not start'
              : 'no window (the echo client did not report)';
          fairLines.push(`| 8 | ${scenario} | ${label} | ${why} | | | | | | ${target} |`);
          continue;
        }
        fairLines.push(
          `| 8 | ${scenario} | ${label} | ${fmtLat(x.p50Us, x.p50Censored)} | ${fmtLat(x.p99Us, x.p99Censored)} | ` +
            `${fmtLat(x.maxUs, false)} | ${fmtInt(x.count)} in ${fmt1(x.elapsedMs / 1000)} s | ` +
            `${stream ? fmtInt(f.chunksPerSecond) : ''} | ${fmtInt(x.serverCpuPct)} | ${target} |`,
        );
      }
    }
  }

  const slowLines = [];
  if (want('9')) {
    slowLines.push(
      '| row | client | requests written (100 KiB each) | server RSS before, MiB | peak RSS growth, MiB | heap + external held once it stalls (after GC), MiB | RSS after the client is gone (after GC), MiB | did the server end the connection? | responses read afterwards | target |',
      '|---|---|---:|---:|---:|---:|---:|---|---|---|',
    );
    for (const key of ['never', 'reads']) {
      const x = slow[key];
      const name = key === 'never' ? 'never reads' : 'reads everything (reference)';
      const target = key === 'never' ? `≤ ${SLOW_TARGET_MIB} MiB ${okMark(slowOk)}` : '';
      if (x === undefined || x.failed !== undefined) {
        slowLines.push(`| 9 | ${name} | failed: ${x?.failed ?? 'not run'} | | | | | | | ${target} |`);
        continue;
      }
      slowLines.push(
        `| 9 | ${name} | ${fmtInt(x.queued)} of ${fmtInt(x.requests)}${x.stalled ? ' (then the server stopped reading)' : ''} | ` +
          `${mib(x.rssBefore)} | +${mib(x.rssGrowth)} | ${x.heldGrowth == null ? 'n/a' : `+${mib(x.heldGrowth)}`} | ${mib(x.rssAfter)} | ${key === 'never' ? connectionOutcome(x) : 'n/a'} | ` +
          `${key === 'never' ? readOut(x) : fmtInt(x.responses)} | ${target} |`,
      );
    }
  }

  const targetLines = [
    '| target | measured | limit | |',
    '|---|---:|---:|---|',
    ...checks.map(
      (c) => `| ${c.what} | ${c.value.toFixed(2)}× baseline | ${c.limit} | ${c.ok ? '✓' : '✗'} |`,
    ),
  ];
  if (want('5'))
    targetLines.push(
      `| RSS per idle connection (asap serve, ${fmtInt(mem.asap.opened)} conns) | ${fmt1(mem.asap.rssPerConn / 1024)} KiB | ≤ ${MEMORY_TARGET_KIB} KiB | ${okMark(memOk)} |`,
    );
  if (want('8'))
    targetLines.push(
      `| echo p99 on one connection while another reads a ${fmtInt(fairnessCfg.chunks)}-chunk stream (asap serve) | ` +
        `${under === null ? 'n/a' : fmtLat(under.p99Us, under.p99Censored)} | ≤ ${FAIRNESS_TARGET_MS} ms | ${okMark(fairOk)} |`,
    );
  if (want('9'))
    targetLines.push(
      `| peak RSS growth, a client sending ${fmtInt(slowCfg.requests)} × 100 KiB echoes that never reads (asap serve) | ` +
        `${growthMiB === null ? 'n/a' : `${growthMiB.toFixed(1)} MiB`} | ≤ ${SLOW_TARGET_MIB} MiB (2 × the 4 MiB hard cap) | ${okMark(slowOk)} |`,
      `| heap + external memory the server holds once that client stalls, after GC (asap serve) | ` +
        `${heldMiB === null ? 'n/a' : `${heldMiB.toFixed(1)} MiB`} | ≤ ${SLOW_TARGET_MIB} MiB | ${okMark(heldOk)} |`,
    );
  const table = [
    rows.length > 0 ? lines : [],
    sseLines,
    redisLines,
    memLines,
    fairLines,
    slowLines,
    targetLines,
  ]
    .filter((t) => t.length > 0)
    .map((t) => t.join('\n'))
    .join('\n\n');

  const loadEnd = os.loadavg();
  if (treeHash(join(ROOT, 'dist')).digest('hex') !== distHash) {
    notes.push(
      'dist/ was rebuilt from a newer src/ during the run; the run measured the snapshot of dist/ taken at its start.',
    );
  }
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  process.stdout.write(`\n${table}\n\n`);
  for (const n of notes) process.stdout.write(`Note: ${n}\n`);

  const cmdLines = [...commands.entries()].map(([k, c]) => `- ${k}: \`${c}\``);
  const md = `# asap-ts benchmark results

Written by \`npm run bench${quick ? ' -- --quick' : ''}\` (${CFG.mode} mode) on ${new Date().toISOString()}, in ${minutes} min.

## Machine

| | |
|---|---|
| nproc | ${info.nproc} |
| CPU | ${info.cpu} |
| memory | ${info.memoryGiB} GiB |
| Node | ${info.node} |
| ws | ${info.ws} (${wsAddons}) |
| kernel | ${info.kernel} |
| commit | ${info.commit} |
| code under test | dist/ as built ${distBuilt.toISOString()} (sha1 of its files ${distHash.slice(0, 12)}), copied to ${relative(ROOT, SNAPSHOT)}/ at the start and run from there |
| pinning | ${pinning.ok ? `taskset: servers on core ${SERVER_CORE}, clients on core ${CLIENT_CORE}` : `none (${pinning.why})`} |
| load average | ${loadStart.map((x) => x.toFixed(2)).join(' ')} at start, ${loadEnd.map((x) => x.toFixed(2)).join(' ')} at end (the machine is shared) |
| ulimit -n | ${limit} |
${redisWanted.length > 0 ? `| redis-server | ${info.redis ?? 'not installed'} |\n` : ''}
## Results

${table}

rt/s = round trips (responses matched to their requests) per second; for rows 7 and 12 it is TaskStream chunks
per second and CPU is per chunk (row 12, SSE, has no baseline of its own: its "× base" is to row 7's baseline ws
stream of the same repeat). "× base" is the median over repeats of (this run ÷ the baseline run of the same
repeat). Targets are printed next to the ratios they apply to. Server CPU % and client CPU % are of one core
each; client CPU µs/rt is the load generator's own cost per round trip. "Other CPU %" is what else ran on the
two benchmark cores during the window (other processes on this shared machine, plus interrupt time not charged
to either process), as a share of both cores: when it is high, the servers were preempted and the absolute
numbers are low; the interleaved ratios are less affected.

Row 8 (fairness): echo round-trip latency on one connection, one echo at a time, first alone (the reference),
then while a second connection reads a stream of ${fmtInt(fairnessCfg.chunks)} chunks (\`stream\` skill,
\`interval_ms: 0\`) as fast as it can; "stream chunks/s" is what that stream achieved during the echo window.
An echo still unanswered when the window ends counts as a sample of its age so far once older than
${fairnessCfg.timeoutMs} ms, shown as "timeout (≥ …)": the window ends on time even when the server answers
nothing. Row 9 (slow consumer): a client sends ${fmtInt(slowCfg.requests)} echo requests with 100 KiB of input each
and never reads; "peak RSS growth" is the server's highest VmRSS while it sends and waits, less its VmRSS
before; "heap + external held" is the server's V8 heap used plus external memory after a full GC, taken
half a second after the client's writes stalled (the server had stopped reading it), less the same before:
what the server keeps for that client, apart from how far V8 grew its young generation meanwhile (RSS
counts the young generation's pages; requests of 100 KiB make V8 grow it). The reference client sends the same
and reads everything (what processing the requests costs on its own). Rows 8 and 9 run once, after the repeats, each measurement on a fresh server.
${notes.length > 0 ? `\n${notes.map((n) => `**Note:** ${n}`).join('\n\n')}\n` : ''}
## Method

- Each server and each load generator is its own process; servers run on core ${SERVER_CORE}, load generators on
  core ${CLIENT_CORE} (\`taskset -c\`). ${wsNative === null ? 'No process uses the `ws` native add-ons (the env vars above are set in all).' : 'Every process uses the `ws` native add-ons named above.'}
- Per measurement: a new load-generator process connects, runs a ${CFG.warmupMs / 1000} s warm-up, then a
  ${CFG.windowMs / 1000} s measuring window; ${CFG.repeats} repeat(s), medians reported. Within a repeat the three
  servers (baseline ws, baseline http, \`asap serve\`) stay up and, row by row, the baseline and ours run back to
  back in a rotating order, so drift on this shared machine hits both.
- Baseline: \`bench/baseline-ws-server.mjs\` (JSON-RPC on raw \`ws\`) and \`bench/baseline-http-server.mjs\` (plain
  \`node:http\`, keep-alive). Per request they parse the frame, build a reply envelope (new ULID, timestamp, swapped
  sender/recipient, correlation_id, trace_id, \`{task_id, status, result: {echo: input}}\`) and stringify it. For
  \`requires_ack: true\` they also send an \`asap.ack\` notification; for the \`stream\` skill they send
  \`chunks\` result frames under the request's id.
- Raw client (\`bench/load-client.mjs\`): builds a fresh ~540-byte TaskRequest envelope per request
  (\`bench/envelope.mjs\`: ULID id, timestamp, URNs, conversation_id, skill_id \`echo\`, a five-field input,
  trace_id), stringifies it, parses every frame and matches responses by JSON-RPC id; it ignores (counts)
  \`asap.ack\` notifications. The HTTP variant uses \`http.request\` on an \`Agent({keepAlive: true, maxSockets: 32})\`.
  Its SSE variant (row 12) posts the stream request to \`/asap/stream\` (\`accept: text/event-stream\`,
  \`asap-version: 2.2\`) with \`http.request\` on a keep-alive agent of one socket, one stream after another, cuts
  the response into lines, gathers each event's \`data:\` lines and parses its JSON, as it parses each frame of the
  WebSocket stream.
- Whole stack (\`bench/asap-client-load.mjs\`): \`new ASAPClient(url, {recipient: 'urn:asap:agent:demo',
  websocket: {heartbeatIntervalMs: 0}})\`, one client per connection, \`client.send(envelope)\` loops. The client
  sets \`requires_ack\` on every TaskRequest by default; rows without acks pass \`websocket.ack: false\`, the
  ack rows (4a, 4b) use the default. Row 12: \`new ASAPClient('http://…/asap', {recipient, sender})\` (its HTTP
  transport: fetch, \`client.stream()\` over SSE from \`/asap/stream\`), \`for await\` over one stream after another.
- Server CPU: utime + stime of the server process from \`/proc/<pid>/stat\` (clock ticks, CLK_TCK = ${CLK_TCK}), read
  by the orchestrator when the load generator reports the start and the end of its window (the load keeps
  running until both reads are done), divided by the round trips completed in the window. The same method for
  the baselines and \`asap serve\`; \`process.cpuUsage()\` of the server, fetched over the IPC channel by
  \`bench/probe.mjs\`, is kept in \`bench/out/\` as a cross-check.
- Memory (row 5): a fresh server started with \`--expose-gc\`; the probe (\`--import ./bench/probe.mjs\`, preloaded
  into every server, \`asap serve\` included, without changing it) runs \`gc()\` on request. VmRSS from
  \`/proc/<pid>/status\` and \`heapUsed\` after GC, before and after a client process opens the idle connections
  (upgrade done, no traffic), divided by their number. The connections open in two stages (${idle / 5}, then
  ${idle}); "marginal" is the slope over the second stage, what one more connection costs without the one-time
  growth (V8 young generation, code) that the plain average spreads over the connections.
- \`asap serve\` and the ASAPClient load generator run from a copy of dist/ taken when the run starts
  (\`bench/out/dist-snapshot/\`), so a rebuild of dist/ by someone else cannot change the code between repeats.
- Fairness (row 8): two processes of \`bench/fairness-client.mjs\` on the client core, both connected before
  the stream starts (a server that does not share its event loop may accept nothing while it streams): one sends
  echoes one at a time (the standard envelope), the other asks for the stream and counts the frames it reads
  without parsing them (a frame with \`"final":true\` ends it and it asks for another). Echo alone:
  ${fairnessCfg.warmupMs / 1000} s warm-up, ${fairnessCfg.windowMs / 1000} s window; then the stream starts and,
  once its first frame arrives, 0.5 s warm-up and a ${fairnessCfg.windowMs / 1000} s window. The orchestrator asks
  the stream client for its count at the edges of that window. Both the baseline ws server and \`asap serve\`;
  each server is stopped afterwards (SIGKILL 2 s after SIGTERM when its event loop does not come back).
- Slow consumer (row 9): \`bench/slow-consumer.mjs\` speaks WebSocket over a raw \`net\` socket (handshake and
  masked frames of its own), pauses the socket right after the handshake and writes the
  ${fmtInt(slowCfg.requests)} requests (\`{"data": "xxx…"}\`, 102,400 characters) as fast as the socket takes them,
  for at most ${slowCfg.sendMs / 1000} s (a server that stops reading stalls it). It then watches both ends of its
  connection in \`/proc/net/tcp\` (no read needed: a reset removes both; a server that closes with its answers
  still unsent leaves its end in FIN-WAIT-1, the FIN queued behind them, while the client's end stays open) until
  ${slowCfg.closeWaitMs / 1000} s after its first write${grace === null ? ` (\`asap serve\` has no flag for the slow-consumer grace, 30 s by default)` : ` (the server runs with \`${grace.args.join(' ')}\`)`},
  and finally reads what it was sent, for at most ${slowCfg.readMs / 1000} s, to count the responses and find a close
  frame's code and reason. The orchestrator reads the server's VmRSS every 50 ms from before the client starts;
  "RSS after" is read 1 s after the client process has exited, after a forced GC (probe).
- Redis (rows 10, 11): the bench starts its own \`redis-server\` (free port on 127.0.0.1, \`--save '' --appendonly no\`,
  a temp dir) pinned to the server core, and \`asap serve --redis redis://127.0.0.1:PORT\` on it, fresh in each repeat
  that runs these rows; before each window's load it runs \`FLUSHALL\`. At the window's edges the orchestrator reads
  both processes' utime + stime (\`/proc/<pid>/stat\`) and redis-server's \`INFO stats\` and \`INFO commandstats\`
  (one connection of its own: its two INFO calls are left out of the counts); right after the window, with the
  load still running, a ${MONITOR_MS} ms \`MONITOR\` sample tells the commands asap serve sent from those its Lua scripts
  ran. The baseline of these rows is the baseline ws server, run back to back with them as in the other rows.
- Profile of \`asap serve\` under row 3: \`node bench/profile.mjs\` (see that file).

## Commands

\`npm run bench${quick ? ' -- --quick' : ''}\` runs \`scripts/ensure-build.mjs\` (tsc to dist/ when src/ is newer) and
\`node bench/run.mjs${quick ? ' --quick' : ''}\`, which starts these processes (HOST:PORT as printed by each server,
\`--port 0\`), each with WS_NO_BUFFER_UTIL=1 and WS_NO_UTF_8_VALIDATE=1:

${cmdLines.join('\n')}
`;
  // RESULTS.md holds whole runs only; a run of some rows (--only) or with the add-ons leaves it as it is.
  if (writesResults()) writeFileSync(join(BENCH_DIR, 'RESULTS.md'), md);
  mkdirSync(OUT_DIR, { recursive: true });
  const tag = `${only === null ? CFG.mode : `${CFG.mode}-only-${[...only].join('_')}`}${wsNative === null ? '' : '-ws-native'}`;
  const rawFile = join(OUT_DIR, `results-${tag}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    rawFile,
    JSON.stringify(
      {
        cfg: CFG,
        only: only && [...only],
        info,
        pinning,
        runs,
        memory,
        agg,
        mem,
        checks,
        fairness,
        slow,
        grace,
      },
      null,
      2,
    ),
  );
  log(
    `\nwrote ${writesResults() ? 'bench/RESULTS.md and ' : ''}${rawFile.slice(ROOT.length + 1)} in ${minutes} min`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    log(`bench failed: ${err.stack ?? err}`);
    process.exit(1);
  },
);
