// The benchmark: `npm run bench` (full, under 10 minutes) or `npm run bench -- --quick` (under 2).
// Compares `asap serve` with a baseline that does the least real work per round trip (JSON-RPC on
// raw `ws` / plain `node:http`, bench/baseline-*.mjs), interleaved in one run, and writes
// bench/RESULTS.md (machine, commands, table). Raw per-run numbers go to bench/out/ (git-ignored).
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
  measureIdle,
  median,
  OUT_DIR,
  openFileLimit,
  pinning,
  ROOT,
  runLoad,
  SERVER_CORE,
  SERVERS,
  serverCommand,
  startServer,
  useDist,
} from './harness.mjs';

const SNAPSHOT = join(OUT_DIR, 'dist-snapshot');

const quick = process.argv.includes('--quick');
const CFG = quick
  ? { mode: 'quick', warmupMs: 1000, windowMs: 2000, repeats: 1, idle: 1000 }
  : // Five short interleaved repeats rather than three long ones: on a shared VM the drift between
    // repeats is the main noise, and more repeats give a steadier median (about 8 minutes in all).
    { mode: 'full', warmupMs: 1500, windowMs: 2500, repeats: 5, idle: 5000 };

// ---- what is measured ----

/** Rows 1–4, 6, 7 (row 5, memory, is measured apart). */
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
];

/** Who serves and who loads. `stack` (our ASAPClient) does not run the HTTP row. */
const VARIANTS = {
  base: {
    label: 'baseline',
    client: 'load-client.mjs',
    server: (row) => (row.http ? 'base-http' : 'base-ws'),
  },
  ours: { label: 'asap serve ← raw client', client: 'load-client.mjs', server: () => 'asap' },
  stack: { label: 'asap serve ← ASAPClient', client: 'asap-client-load.mjs', server: () => 'asap' },
};

const TARGETS = [
  { row: '2', variant: 'ours', metric: 'cpu', max: 1.25, what: 'server CPU/rt, row 2, raw client' },
  { row: '3', variant: 'ours', metric: 'cpu', max: 1.25, what: 'server CPU/rt, row 3, raw client' },
  { row: '4a', variant: 'ours', metric: 'cpu', max: 1.6, what: 'server CPU/rt with acks, row 4a' },
  { row: '4b', variant: 'ours', metric: 'cpu', max: 1.6, what: 'server CPU/rt with acks, row 4b' },
  { row: '2', variant: 'stack', metric: 'rate', min: 0.75, what: 'whole stack rt/s, row 2' },
  { row: '6', variant: 'ours', metric: 'rate', min: 0.5, what: 'HTTP requests/s, row 6' },
];
const MEMORY_TARGET_KIB = 10;

// ---- helpers ----

const log = (msg) => process.stderr.write(`${msg}\n`);
const fmtInt = (n) => (n == null ? 'n/a' : Math.round(n).toLocaleString('en-US'));
const fmt1 = (n) => (n == null ? 'n/a' : n.toFixed(1));
const fmt2 = (n) => (n == null ? 'n/a' : `${n.toFixed(2)}×`);

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

  for (let r = 0; r < CFG.repeats; r++) {
    log(`-- repeat ${r + 1}/${CFG.repeats}`);
    const servers = {};
    for (const kind of ['base-ws', 'base-http', 'asap']) {
      servers[kind] = await startServer(kind);
      commands.set(SERVERS[kind].label, serverCommand(kind));
    }
    try {
      for (const row of ROWS) {
        runs[row.id] ??= {};
        const keys = Object.keys(VARIANTS).filter((v) => !(row.http && v === 'stack'));
        for (const v of order(keys, r)) {
          const variant = VARIANTS[v];
          const server = servers[variant.server(row)];
          const url = row.http ? `${server.httpBase}/asap` : server.wsUrl;
          const cfg = { ...row.load, url, warmupMs: CFG.warmupMs, windowMs: CFG.windowMs };
          if (variant.client === 'asap-client-load.mjs') cfg.dist = distDir;
          const res = await runLoad(variant.client, cfg, server);
          runs[row.id][v] ??= [];
          runs[row.id][v].push(res);
          log(
            `row ${row.id.padEnd(2)} ${variant.label.padEnd(24)} ${fmtInt(res.perSecond).padStart(8)}/s  ` +
              `srv ${fmt1(res.serverCpuPerOpUs).padStart(6)} µs/op ${fmt1(res.serverCpuPct).padStart(5)}% ` +
              `cli ${fmt1(res.clientCpuPct).padStart(5)}% other ${fmt1(res.otherCpuPct).padStart(5)}%` +
              `${res.errors ? `  ${res.errors} errors` : ''}`,
          );
        }
      }
    } finally {
      for (const s of Object.values(servers)) await s.stop();
    }
    // Row 5: fresh servers, so the heap holds nothing from the load above.
    for (const kind of order(['base-ws', 'asap'], r)) {
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
  for (const row of ROWS) {
    const scripts = new Set(
      Object.entries(VARIANTS)
        .filter(([v]) => !(row.http && v === 'stack'))
        .map(([, x]) => x.client),
    );
    for (const script of scripts) {
      const url = row.http ? 'http://HOST:PORT/asap' : 'ws://HOST:PORT/asap/ws';
      const cfg = { ...row.load, url, warmupMs: CFG.warmupMs, windowMs: CFG.windowMs };
      if (script === 'asap-client-load.mjs') cfg.dist = distDir;
      commands.set(`row ${row.id}, ${script}`, clientCommand(script, cfg));
    }
  }
  commands.set(
    'row 5, load-client.mjs',
    clientCommand('load-client.mjs', {
      mode: 'idle',
      url: 'ws://HOST:PORT/asap/ws',
      stages: [idle / 5, idle],
    }),
  );

  // ---- aggregate: medians over repeats; ratios are medians of the per-repeat ratios ----
  const agg = {};
  for (const row of ROWS) {
    agg[row.id] = {};
    for (const [v, list] of Object.entries(runs[row.id])) {
      const base = runs[row.id].base;
      const pick = (key) => median(list.map((x) => x[key]));
      agg[row.id][v] = {
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
        acks: pick('acks'),
        count: pick('count'),
        rateRatio: median(list.map((x, i) => x.perSecond / base[i].perSecond)),
        cpuRatio: median(list.map((x, i) => x.serverCpuPerOpUs / base[i].serverCpuPerOpUs)),
      };
      if (agg[row.id][v].errors > 0)
        notes.push(`Row ${row.id}, ${VARIANTS[v].label}: ${agg[row.id][v].errors} errors.`);
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
  for (const [kind, list] of Object.entries(memory)) {
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
    const value = t.metric === 'cpu' ? a.cpuRatio : a.rateRatio;
    const ok = t.max !== undefined ? value <= t.max : value >= t.min;
    return { ...t, value, ok, limit: t.max !== undefined ? `≤ ${t.max}×` : `≥ ${t.min}×` };
  };
  const checks = TARGETS.map(check);
  const targetOf = (rowId, v, metric) =>
    checks.find((c) => c.row === rowId && c.variant === v && c.metric === metric);
  const mark = (c) => (c === undefined ? '' : ` (${c.limit} ${c.ok ? '✓' : '✗'})`);
  const memOk = mem.asap.rssPerConn / 1024 <= MEMORY_TARGET_KIB;

  // ---- tables ----
  const lines = [];
  lines.push(
    '| row | scenario | server ← client | rt/s | × base | p50 µs | p99 µs | server CPU µs/rt | × base | server CPU % | client CPU µs/rt | client CPU % | other CPU % |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const row of ROWS) {
    for (const v of Object.keys(VARIANTS)) {
      const a = agg[row.id][v];
      if (a === undefined) continue;
      const isBase = v === 'base';
      const label = isBase
        ? row.http
          ? 'baseline http ← raw http client'
          : 'baseline ws ← raw client'
        : VARIANTS[v].label;
      const rate = `${fmtInt(a.perSecond)}${row.unit ? ` ${row.unit}` : ''}`;
      lines.push(
        `| ${row.id} | ${row.name} | ${label} | ${rate} | ${isBase ? '1' : `${fmt2(a.rateRatio)}${mark(targetOf(row.id, v, 'rate'))}`} | ` +
          `${fmtInt(a.p50Us)} | ${fmtInt(a.p99Us)} | ${fmt1(a.cpuPerOp)} | ` +
          `${isBase ? '1' : `${fmt2(a.cpuRatio)}${mark(targetOf(row.id, v, 'cpu'))}`} | ${fmtInt(a.serverCpuPct)} | ${fmt1(a.clientCpuPerOp)} | ${fmtInt(a.clientCpuPct)} | ${fmtInt(a.otherCpuPct)} |`,
      );
    }
  }
  const kib = (b) => fmt1(b / 1024);
  const memRow = (name, m, isBase) =>
    `| 5 | ${name} | ${fmtInt(m.opened)} | ${kib(m.rssPerConn)} | ${isBase ? '1' : fmt2(m.rssRatio)} | ` +
    `${kib(m.heapPerConn)} | ${kib(m.rssMarginal)} | ${kib(m.heapMarginal)} | ` +
    `${isBase ? '' : `≤ ${MEMORY_TARGET_KIB} KiB ${memOk ? '✓' : '✗'}`} |`;
  const memLines = [
    '| row | server | idle connections | RSS KiB/conn | × base | V8 heap KiB/conn (after GC) | marginal RSS KiB/conn | marginal heap KiB/conn | target |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|',
    memRow('baseline ws', mem['base-ws'], true),
    memRow('asap serve', mem.asap, false),
  ];
  const targetLines = [
    '| target | measured | limit | |',
    '|---|---:|---:|---|',
    ...checks.map(
      (c) => `| ${c.what} | ${c.value.toFixed(2)}× baseline | ${c.limit} | ${c.ok ? '✓' : '✗'} |`,
    ),
    `| RSS per idle connection (asap serve, ${fmtInt(mem.asap.opened)} conns) | ${fmt1(mem.asap.rssPerConn / 1024)} KiB | ≤ ${MEMORY_TARGET_KIB} KiB | ${memOk ? '✓' : '✗'} |`,
  ];
  const table = [...lines, '', ...memLines, '', ...targetLines].join('\n');

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
| ws | ${info.ws} (no native add-ons: WS_NO_BUFFER_UTIL=1, WS_NO_UTF_8_VALIDATE=1 in every process) |
| kernel | ${info.kernel} |
| commit | ${info.commit} |
| code under test | dist/ as built ${distBuilt.toISOString()} (sha1 of its files ${distHash.slice(0, 12)}), copied to ${relative(ROOT, SNAPSHOT)}/ at the start and run from there |
| pinning | ${pinning.ok ? `taskset: servers on core ${SERVER_CORE}, clients on core ${CLIENT_CORE}` : `none (${pinning.why})`} |
| load average | ${loadStart.map((x) => x.toFixed(2)).join(' ')} at start, ${loadEnd.map((x) => x.toFixed(2)).join(' ')} at end (the machine is shared) |
| ulimit -n | ${limit} |

## Results

${table}

rt/s = round trips (responses matched to their requests) per second; for row 7 it is TaskStream chunks per
second and CPU is per chunk. "× base" is the median over repeats of (this run ÷ the baseline run of the same
repeat). Targets are printed next to the ratios they apply to. Server CPU % and client CPU % are of one core
each; client CPU µs/rt is the load generator's own cost per round trip. "Other CPU %" is what else ran on the
two benchmark cores during the window (other processes on this shared machine, plus interrupt time not charged
to either process), as a share of both cores: when it is high, the servers were preempted and the absolute
numbers are low; the interleaved ratios are less affected.
${notes.length > 0 ? `\n${notes.map((n) => `**Note:** ${n}`).join('\n\n')}\n` : ''}
## Method

- Each server and each load generator is its own process; servers run on core ${SERVER_CORE}, load generators on
  core ${CLIENT_CORE} (\`taskset -c\`). No process uses the \`ws\` native add-ons (the env vars above are set in all).
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
- Whole stack (\`bench/asap-client-load.mjs\`): \`new ASAPClient(url, {recipient: 'urn:asap:agent:demo',
  websocket: {heartbeatIntervalMs: 0}})\`, one client per connection, \`client.send(envelope)\` loops. The client
  sets \`requires_ack\` on every TaskRequest by default; rows without acks pass \`websocket.ack: false\`, the
  ack rows (4a, 4b) use the default.
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
- Profile of \`asap serve\` under row 3: \`node bench/profile.mjs\` (see that file).

## Commands

\`npm run bench${quick ? ' -- --quick' : ''}\` runs \`scripts/ensure-build.mjs\` (tsc to dist/ when src/ is newer) and
\`node bench/run.mjs${quick ? ' --quick' : ''}\`, which starts these processes (HOST:PORT as printed by each server,
\`--port 0\`), each with WS_NO_BUFFER_UTIL=1 and WS_NO_UTF_8_VALIDATE=1:

${cmdLines.join('\n')}
`;
  writeFileSync(join(BENCH_DIR, 'RESULTS.md'), md);
  mkdirSync(OUT_DIR, { recursive: true });
  const rawFile = join(OUT_DIR, `results-${CFG.mode}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    rawFile,
    JSON.stringify({ cfg: CFG, info, pinning, runs, memory, agg, mem, checks }, null, 2),
  );
  log(`\nwrote bench/RESULTS.md and ${rawFile.slice(ROOT.length + 1)} in ${minutes} min`);
}

main().then(
  () => process.exit(0),
  (err) => {
    log(`bench failed: ${err.stack ?? err}`);
    process.exit(1);
  },
);
