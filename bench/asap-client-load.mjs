// The whole stack: our own ASAPClient (WebSocket transport) driving `asap serve`.
// Each connection is one ASAPClient (its own pool of one connection) with `inflight` concurrent
// `client.send(envelope)` loops; latency is the time `send()` takes to resolve.
//
// Usage: node bench/asap-client-load.mjs '<json config>' — prints the result as JSON on stdout.
//   { "mode": "ws",     "url": "ws://…/asap/ws", "conns": 1, "inflight": 64, "ack": false, "warmupMs": …, "windowMs": … }
//   { "mode": "stream", "url": "ws://…/asap/ws", "chunks": 10000, "warmupMs": …, "windowMs": … }
//   { "mode": "sse",    "url": "http://…/asap", "chunks": 10000, "warmupMs": …, "windowMs": … }
//       (the same stream over HTTP: the client's HTTP transport, `client.stream()` over Server-Sent
//       Events from `POST /asap/stream`, one stream after another)
//   optional "dist": "bench/out/dist-snapshot" loads ASAPClient from there instead of ../dist/.
// "ack": true runs the client as configured by default (it sets requires_ack on every TaskRequest and
// tracks the acks); "ack": false passes `websocket.ack: false`, so no ack is requested, like the raw client.
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { makeEnvelope, RECIPIENT, SENDER } from './envelope.mjs';
import { drain, finish, Meter, measureWindow, parseConfig } from './meter.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const cfg = parseConfig();
// `dist` (relative to the repo root) lets the orchestrator load a snapshot of dist/; default ../dist/.
const { ASAPClient } = await import(
  cfg.dist === undefined
    ? '../dist/client/index.js'
    : pathToFileURL(join(ROOT, cfg.dist, 'client/index.js')).href
);
const meter = new Meter();
let stopping = false;
let inFlight = 0;

function newClient() {
  if (cfg.mode === 'sse') return new ASAPClient(cfg.url, { recipient: RECIPIENT, sender: SENDER });
  const websocket = { heartbeatIntervalMs: 0 };
  if (cfg.ack !== true) websocket.ack = false;
  return new ASAPClient(cfg.url, { recipient: RECIPIENT, sender: SENDER, websocket });
}

async function echoLoop(client) {
  while (!stopping) {
    const env = makeEnvelope({ requiresAck: cfg.ack === true });
    const started = performance.now();
    inFlight++;
    try {
      const res = await client.send(env);
      if (res.payload.status !== 'completed') meter.errors++;
      meter.record(started, performance.now());
    } catch (err) {
      meter.errors++;
      process.stderr.write(`send failed: ${err.message}\n`);
    } finally {
      inFlight--;
    }
  }
}

async function streamLoop(client) {
  while (!stopping) {
    const env = makeEnvelope({ skill: 'stream', input: { chunks: cfg.chunks, interval_ms: 0 } });
    inFlight++;
    try {
      for await (const _chunk of client.stream(env)) meter.record();
    } catch (err) {
      meter.errors++;
      process.stderr.write(`stream failed: ${err.message}\n`);
    } finally {
      inFlight--;
    }
  }
}

const streaming = cfg.mode === 'stream' || cfg.mode === 'sse';
const clients = Array.from({ length: streaming ? 1 : cfg.conns }, newClient);
// Over HTTP there is no connection to open ahead (fetch opens and keeps its own).
if (cfg.mode !== 'sse') await Promise.all(clients.map((c) => c.transport().connect()));
const loops = [];
for (const client of clients) {
  if (streaming) loops.push(streamLoop(client));
  else for (let i = 0; i < cfg.inflight; i++) loops.push(echoLoop(client));
}
const result = await measureWindow(meter, cfg);
stopping = true;
await drain(() => inFlight, 10_000);
await Promise.all(clients.map((c) => c.close()));
finish(result);
