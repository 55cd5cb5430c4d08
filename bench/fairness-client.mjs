// Row 8 (fairness): two load generators, each its own process so that neither one's event loop
// delays the other's timing, driven step by step by the orchestrator (bench/harness.mjs
// measureFairness) over IPC.
//
// Usage: node bench/fairness-client.mjs '<json config>'
//   { "mode": "echo",   "url": "ws://…/asap/ws", "timeoutMs": 100 }
//       one connection, one echo at a time. On {type:'window', warmupMs, windowMs} it runs a warm-up
//       and a window, sending {type:'start'} and {type:'end', result} like bench/meter.mjs; it may be
//       told to run several windows (the reference, then under the stream).
//   { "mode": "stream", "url": "ws://…/asap/ws", "chunks": 1000000 }
//       one connection; on {type:'go'} it asks for a stream of `chunks` chunks (interval 0) and reads
//       the frames as fast as it can: it counts them without parsing (a frame holding `"final":true`
//       ends the stream, and another one starts). On {type:'mark'} it answers with its count.
// Both send {type:'ready'} once connected (before the stream starts: a server that does not share
// its event loop may accept no new connection while a stream runs) and exit on {type:'stop'}.
import WebSocket from 'ws';
import { makeEnvelope } from './envelope.mjs';
import { parseConfig, waitForMessage } from './meter.mjs';

const cfg = parseConfig();
let nextId = 1;

const ws = await new Promise((resolve, reject) => {
  const s = new WebSocket(cfg.url, { perMessageDeflate: false });
  s.once('open', () => resolve(s));
  s.once('error', reject);
});
let closed = null;
ws.on('error', () => {});
ws.on('close', (code) => {
  closed = code;
});

const requestText = (env, id) =>
  JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: env }, id });

/** Sequential echoes from the first window on; latencies in ms of those completed while measuring. */
function runEcho() {
  let pending; // { id, at } of the one echo in flight
  let measuring = false;
  let samples = [];
  let errors = 0;
  const sendOne = () => {
    pending = { id: nextId++, at: performance.now() };
    ws.send(requestText(makeEnvelope(), pending.id));
  };
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (pending === undefined || msg.id !== pending.id) return;
    if (measuring) {
      samples.push(performance.now() - pending.at);
      if (msg.result?.envelope?.payload?.status !== 'completed') errors++;
    }
    sendOne();
  });
  process.on('message', async (msg) => {
    if (msg?.type !== 'window') return;
    if (pending === undefined) sendOne();
    await sleep(msg.warmupMs);
    samples = [];
    errors = 0;
    measuring = true;
    const t0 = performance.now();
    process.send({ type: 'start' });
    await sleep(msg.windowMs);
    measuring = false;
    const end = performance.now();
    // The echo still in flight when the window ends is a sample too once older than `timeoutMs`,
    // censored at its age so far: on a server that starves this connection it is the only one.
    const age = pending === undefined || closed !== null ? 0 : end - pending.at;
    const outstandingMs = age >= (cfg.timeoutMs ?? 100) ? age : null;
    process.send({
      type: 'end',
      result: { ...summarise(samples, outstandingMs), errors, elapsedMs: end - t0, closed },
    });
  });
}

/** p50 / p99 in µs over the completed echoes plus the censored one; `censored` when a percentile is it. */
function summarise(samples, outstandingMs) {
  const all = Float64Array.from(samples).sort();
  const count = all.length;
  const censoredAt = outstandingMs !== null && outstandingMs > (all[count - 1] ?? 0) ? outstandingMs : null;
  const withCensored = censoredAt === null ? all : Float64Array.from([...all, censoredAt]);
  const n = withCensored.length;
  const pct = (p) => {
    if (n === 0) return { us: null, censored: false };
    const i = Math.min(n - 1, Math.floor(p * n));
    return { us: withCensored[i] * 1000, censored: censoredAt !== null && i === n - 1 };
  };
  const p50 = pct(0.5);
  const p99 = pct(0.99);
  return {
    count,
    p50Us: p50.us,
    p50Censored: p50.censored,
    p99Us: p99.us,
    p99Censored: p99.censored,
    maxUs: count === 0 ? null : all[count - 1] * 1000,
    outstandingMs,
  };
}

function runStream() {
  let current;
  let count = 0;
  let streams = 0;
  let errors = 0;
  const FINAL = Buffer.from('"final":true');
  const start = () => {
    current = nextId++;
    const env = makeEnvelope({ skill: 'stream', input: { chunks: cfg.chunks, interval_ms: 0 } });
    ws.send(requestText(env, current));
  };
  ws.on('message', (data) => {
    count++;
    if (count === 1) process.send({ type: 'flowing' });
    // Only this stream's frames carry `"final"`; an error response ends it too.
    if (data.indexOf(FINAL) !== -1 || data.indexOf('"error"') !== -1) {
      if (data.indexOf('"error"') !== -1) errors++;
      streams++;
      start();
    }
  });
  process.on('message', (msg) => {
    if (msg?.type === 'go') start();
    else if (msg?.type === 'mark')
      process.send({ type: 'mark', count, streams, errors, at: performance.now(), closed });
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

if (cfg.mode === 'echo') runEcho();
else if (cfg.mode === 'stream') runStream();
else throw new Error(`unknown mode ${cfg.mode}`);
process.send({ type: 'ready' });
await waitForMessage('stop');
ws.terminate();
process.exit(0);
