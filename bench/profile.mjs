// CPU profile of a server under row 3 of the benchmark (32 connections × 8 in flight, raw client),
// summarised as its top self-time functions.
//
//   node bench/profile.mjs                       profile `asap serve` (after `npm run build`) and summarise
//   node bench/profile.mjs --server base-ws      the same for the baseline ws server
//   node bench/profile.mjs --seconds 10 --top 15 --load '{"conns":1,"inflight":64}'
//   node bench/profile.mjs --server base-http --load '{"mode":"http","conns":32}'   (row 6)
//   node bench/profile.mjs --dist bench/out/dist-snapshot   the copy of dist/ that the last bench run used
//   node bench/profile.mjs --server-args '["--redis","redis://127.0.0.1:6379"]'   rows 10/11 (your Redis)
//   node bench/profile.mjs bench/out/x.cpuprofile [--whole]   summarise an existing profile only
//
// The server runs as in bench/run.mjs (pinned to core 0, the raw client on core 1), with
// `--cpu-prof --cpu-prof-dir=bench/out`; the profile is written when the server exits after SIGTERM.
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { OUT_DIR, ROOT, runLoad, serverCommand, startServer, useDist } from './harness.mjs';

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i === -1 ? fallback : process.argv[i + 1];
}

/** Where a function comes from, for grouping: our code, a dependency, node internals or V8. */
function origin(url) {
  if (url === '') return 'v8/native';
  if (url.startsWith('node:')) return 'node';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m !== null) return m[1];
  const d = /\/(dist|bench|src)\/(.+)$/.exec(url);
  return d === null ? url : `${d[1]}/${d[2]}`;
}

function label(frame) {
  const name = frame.functionName || '(anonymous)';
  if (frame.url === '') return name;
  const file = frame.url.startsWith('node:')
    ? frame.url
    : relative(ROOT, frame.url.replace(/^file:\/\//, ''));
  return `${name}  ${file}:${frame.lineNumber + 1}`;
}

/**
 * Self and inclusive time per function (merged over call sites), and self time per origin, over the
 * samples taken within `span` ([from, to] in µs of the monotonic clock; the whole profile when absent).
 * Sample i stands for the interval up to sample i+1 (timeDeltas[i+1]).
 */
function summarise(profile, top, span) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map();
  const incl = new Map();
  const origins = new Map();
  let total = 0;
  const { samples, timeDeltas } = profile;
  let at = profile.startTime;
  for (let i = 0; i < samples.length; i++) {
    at += timeDeltas[i];
    if (span !== undefined && (at < span[0] || at > span[1])) continue;
    const us = timeDeltas[i + 1] ?? 0;
    total += us;
    const node = byId.get(samples[i]);
    const key = label(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + us);
    const o = ['(idle)', '(program)', '(garbage collector)'].includes(node.callFrame.functionName)
      ? node.callFrame.functionName
      : origin(node.callFrame.url);
    origins.set(o, (origins.get(o) ?? 0) + us);
    const seen = new Set();
    for (let id = samples[i]; id !== undefined; id = parent.get(id)) {
      const k = label(byId.get(id).callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + us);
    }
  }
  const idle = self.get('(idle)') ?? 0;
  const busy = total - idle;
  const pct = (us) => `${((us / busy) * 100).toFixed(1).padStart(5)}%`;
  const ms = (us) => `${(us / 1000).toFixed(0).padStart(7)} ms`;
  const rows = (map, n, filter = () => true) =>
    [...map.entries()]
      .filter(([k]) => k !== '(idle)' && k !== '(root)' && filter(k))
      .sort((a, b) => b[1] - a[1])
      .slice(0, n);
  const out = [];
  out.push(
    `${span === undefined ? 'whole profile' : 'measuring window only'}: ${(total / 1e6).toFixed(2)} s sampled, ` +
      `${(busy / 1e6).toFixed(2)} s busy (${((busy / total) * 100).toFixed(0)}%); percentages are of busy time`,
  );
  out.push('', `Top ${top} functions by self time (% of busy time):`);
  for (const [k, us] of rows(self, top)) out.push(`${ms(us)} ${pct(us)}  ${k}`);
  out.push('', 'Self time by origin:');
  for (const [k, us] of rows(origins, 20)) out.push(`${ms(us)} ${pct(us)}  ${k}`);
  out.push('', `Top ${top} functions of dist/ (or of the baseline in bench/) by inclusive time:`);
  for (const [k, us] of rows(incl, top, (k) => k.includes('  dist/') || k.includes('  bench/')))
    out.push(`${ms(us)} ${pct(us)}  ${k}`);
  return out.join('\n');
}

function newestProfile(dir, since) {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => ({ f: join(dir, f), t: statSync(join(dir, f)).mtimeMs }))
    .filter((x) => x.t >= since)
    .sort((a, b) => b.t - a.t);
  return files[0]?.f;
}

async function capture() {
  // --dist bench/out/dist-snapshot profiles the build the last `npm run bench` measured.
  if (arg('--dist') !== undefined) useDist(arg('--dist'));
  const kind = arg('--server', 'asap');
  const seconds = Number(arg('--seconds', '10'));
  const load = { mode: 'ws', conns: 32, inflight: 8, ack: false, ...JSON.parse(arg('--load', '{}')) };
  mkdirSync(OUT_DIR, { recursive: true });
  const shape =
    load.mode === 'ws' ? `${load.conns}x${load.inflight}${load.ack ? '-ack' : ''}` : `${load.mode}`;
  const name = `${kind}-${shape}-${Date.now()}.cpuprofile`;
  const nodeArgs = ['--cpu-prof', `--cpu-prof-dir=${OUT_DIR}`, `--cpu-prof-name=${name}`];
  const since = Date.now();
  // --server-args '["--redis","redis://127.0.0.1:6399"]': extra flags for the server (asap serve).
  const args = JSON.parse(arg('--server-args', '[]'));
  const server = await startServer(kind, { nodeArgs, args });
  process.stderr.write(`profiling: ${serverCommand(kind, nodeArgs)}\n`);
  let res;
  try {
    res = await runLoad(
      'load-client.mjs',
      {
        ...load,
        url: load.mode === 'http' ? `${server.httpBase}/asap` : server.wsUrl,
        warmupMs: 2000,
        windowMs: seconds * 1000,
      },
      server,
    );
  } finally {
    const code = await server.stop(15_000);
    if (code !== 0) process.stderr.write(`server exited with ${code}: the profile may be missing\n`);
  }
  process.stderr.write(
    `load: ${Math.round(res.perSecond)} rt/s, server ${res.serverCpuPerOpUs.toFixed(1)} µs CPU/rt, ` +
      `server CPU ${res.serverCpuPct.toFixed(0)}%, client CPU ${res.clientCpuPct.toFixed(0)}%\n`,
  );
  const file = newestProfile(OUT_DIR, since);
  if (file === undefined) throw new Error(`no .cpuprofile written to ${OUT_DIR}`);
  return { file, window: res.windowHrUs };
}

// A captured profile keeps its measuring window beside it (<name>.window.json), so a rerun on the
// file summarises the same span; `--whole` summarises everything (start-up and shutdown included).
const given = process.argv.slice(2).find((a) => a.endsWith('.cpuprofile'));
let file;
let span;
if (given === undefined) {
  ({ file, window: span } = await capture());
  writeFileSync(`${file}.window.json`, JSON.stringify(span));
} else {
  file = given;
  if (existsSync(`${file}.window.json`)) span = JSON.parse(readFileSync(`${file}.window.json`, 'utf8'));
}
if (process.argv.includes('--whole')) span = undefined;
const top = Number(arg('--top', '15'));
const text = summarise(JSON.parse(readFileSync(file, 'utf8')), top, span);
process.stdout.write(`${relative(ROOT, file)}\n${text}\n`);
