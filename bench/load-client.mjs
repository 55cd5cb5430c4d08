// The baseline's raw client, used against the baseline servers and `asap serve` alike: it does the
// least a client must: stringify the request, parse the response, match it to its request by the
// JSON-RPC id. It ignores `asap.ack` notifications (it only counts them).
//
// Usage: node bench/load-client.mjs '<json config>' — prints the result as JSON on stdout.
//   { "mode": "ws",     "url": "ws://…/asap/ws", "conns": 32, "inflight": 8, "ack": false, "warmupMs": 2000, "windowMs": 4000 }
//   { "mode": "stream", "url": "ws://…/asap/ws", "chunks": 10000, "warmupMs": …, "windowMs": … }
//   { "mode": "http",   "url": "http://…/asap", "conns": 32, "warmupMs": …, "windowMs": … }
//   { "mode": "sse",    "url": "http://…/asap/stream", "chunks": 10000, "warmupMs": …, "windowMs": … }
//       (the stream of row 7 over Server-Sent Events: one POST after another on a keep-alive socket)
//   { "mode": "idle",   "url": "ws://…/asap/ws", "stages": [1000, 5000] }
//       (opens that many connections in stages, reports after each and holds them until told to go on / stop)
import { Agent, request } from 'node:http';
import WebSocket from 'ws';
import { makeEnvelope } from './envelope.mjs';
import { drain, finish, Meter, measureWindow, parseConfig, waitForMessage, waitForStop } from './meter.mjs';

const cfg = parseConfig();
const meter = new Meter();
let stopping = false;
let nextId = 1;

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => {
      ws.off('error', reject);
      ws.on('error', () => {});
      resolve(ws);
    });
    ws.once('error', reject);
  });
}

function requestText(env, id) {
  return JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: env }, id });
}

/** Counts a response: anything but a completed TaskResponse is an error. */
function check(msg) {
  if (msg.result?.envelope?.payload?.status !== 'completed') meter.errors++;
}

// ---- WebSocket: `conns` connections, each keeping `inflight` requests outstanding ----

async function runWs() {
  const sockets = await Promise.all(Array.from({ length: cfg.conns }, () => openSocket(cfg.url)));
  const conns = sockets.map((ws) => ({ ws, pending: new Map() }));
  const sendOne = (c) => {
    const id = nextId++;
    const text = requestText(makeEnvelope({ requiresAck: cfg.ack === true }), id);
    c.pending.set(id, performance.now());
    c.ws.send(text);
  };
  for (const c of conns) {
    c.ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id === undefined) {
        if (msg.method === 'asap.ack' && meter.measuring) meter.acks++;
        return;
      }
      const started = c.pending.get(msg.id);
      if (started === undefined) return;
      c.pending.delete(msg.id);
      check(msg);
      meter.record(started, performance.now());
      if (!stopping) sendOne(c);
    });
    for (let i = 0; i < cfg.inflight; i++) sendOne(c);
  }
  const result = await measureWindow(meter, cfg);
  stopping = true;
  await drain(() => conns.reduce((n, c) => n + c.pending.size, 0));
  for (const c of conns) c.ws.close();
  return result;
}

// ---- streaming: one connection, one stream of `chunks` TaskStream frames after another ----

async function runStream() {
  const ws = await openSocket(cfg.url);
  let current;
  let active = false;
  const startStream = () => {
    current = nextId++;
    active = true;
    const env = makeEnvelope({ skill: 'stream', input: { chunks: cfg.chunks, interval_ms: 0 } });
    ws.send(requestText(env, current));
  };
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id !== current) return;
    const payload = msg.result?.envelope?.payload;
    if (payload === undefined) meter.errors++;
    meter.record();
    if (payload === undefined || payload.final === true) {
      active = false;
      if (!stopping) startStream();
    }
  });
  startStream();
  const result = await measureWindow(meter, cfg);
  stopping = true;
  await drain(() => (active ? 1 : 0), 10_000);
  ws.close();
  return result;
}

// ---- SSE: the same stream over `POST /asap/stream`, one response after another ----

/**
 * One `data:` event per chunk, split out of the response with the least a client must do: cut lines
 * at `\n` (a trailing `\r` dropped), gather the `data:` lines of an event, and at the blank line that
 * ends it parse the JSON and check it, as the WebSocket stream client does with each frame. Other
 * fields (`event:`, `id:`, comments) are skipped; an `event: error` or a JSON-RPC error counts as an error.
 */
async function runSse() {
  const url = new URL(cfg.url);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  let active = false;
  const startStream = () => {
    active = true;
    const id = nextId++;
    const env = makeEnvelope({ skill: 'stream', input: { chunks: cfg.chunks, interval_ms: 0 } });
    const body = requestText(env, id);
    let done = false; // the final chunk (or an error) was read
    let over = false;
    /** The response ended (or failed): an error unless the final chunk came; then the next stream. */
    const end = (err) => {
      if (over) return;
      over = true;
      if (err !== undefined) process.stderr.write(`sse request failed: ${err.message}\n`);
      if (!done) meter.errors++;
      active = false;
      if (!stopping) setTimeout(startStream, err === undefined ? 0 : 10);
    };
    const req = request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'text/event-stream',
          'asap-version': '2.2',
          'content-length': Buffer.byteLength(body),
        },
      },
      (res) => {
        if (res.statusCode !== 200 || !/^text\/event-stream/.test(res.headers['content-type'] ?? '')) {
          process.stderr.write(`sse: status ${res.statusCode}, ${res.headers['content-type']}\n`);
          res.resume();
          res.on('end', () => end());
          return;
        }
        res.setEncoding('utf8');
        let rest = '';
        let data = '';
        let isError = false;
        const event = () => {
          const msg = JSON.parse(data);
          data = '';
          const payload = msg.payload ?? msg.result?.envelope?.payload;
          if (isError || payload === undefined) {
            meter.errors++;
            done = true;
          } else if (payload.final === true) done = true;
          isError = false;
          meter.record();
        };
        res.on('data', (text) => {
          rest += text;
          let from = 0;
          for (let nl = rest.indexOf('\n'); nl !== -1; nl = rest.indexOf('\n', from)) {
            let line = rest.slice(from, nl);
            from = nl + 1;
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              if (data !== '') event();
            } else if (line.startsWith('data:')) {
              const v = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
              data = data === '' ? v : `${data}\n${v}`;
            } else if (line === 'event: error' || line === 'event:error') isError = true;
          }
          rest = rest.slice(from);
        });
        res.on('end', () => end());
        res.on('error', end);
      },
    );
    req.on('error', end);
    req.end(body);
  };
  startStream();
  const result = await measureWindow(meter, cfg);
  stopping = true;
  await drain(() => (active ? 1 : 0), 10_000);
  agent.destroy();
  return result;
}

// ---- HTTP: `conns` concurrent requests on a keep-alive agent with as many sockets ----

async function runHttp() {
  const url = new URL(cfg.url);
  const agent = new Agent({ keepAlive: true, maxSockets: cfg.conns });
  let inFlight = 0;
  const one = () => {
    const id = nextId++;
    const body = requestText(makeEnvelope(), id);
    const started = performance.now();
    inFlight++;
    const req = request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          inFlight--;
          const msg = JSON.parse((chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)).toString());
          if (msg.id !== id) meter.errors++;
          else check(msg);
          meter.record(started, performance.now());
          if (!stopping) one();
        });
      },
    );
    req.on('error', (err) => {
      inFlight--;
      meter.errors++;
      process.stderr.write(`http request failed: ${err.message}\n`);
      if (!stopping) setTimeout(one, 10);
    });
    req.end(body);
  };
  for (let i = 0; i < cfg.conns; i++) one();
  const result = await measureWindow(meter, cfg);
  stopping = true;
  await drain(() => inFlight);
  agent.destroy();
  return result;
}

// ---- idle connections for the memory row ----

async function runIdle() {
  const sockets = [];
  let failed = 0;
  let next = 0;
  const t0 = performance.now();
  // In stages (e.g. [1000, 5000]): after each one, report and wait for the orchestrator's `continue`.
  const stages = cfg.stages ?? [cfg.conns];
  for (const [i, upTo] of stages.entries()) {
    // A few dozen handshakes at a time: fast, without a burst of SYNs past the listen backlog.
    const worker = async () => {
      while (next < upTo) {
        next++;
        try {
          sockets.push(await openSocket(cfg.url));
        } catch {
          failed++;
        }
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    const last = i === stages.length - 1;
    const opened = { type: 'opened', opened: sockets.length, failed, ms: performance.now() - t0 };
    if (typeof process.send !== 'function') continue;
    const go = last ? waitForStop() : waitForMessage('continue');
    process.send(opened);
    await go;
  }
  for (const ws of sockets) ws.terminate();
  return { opened: sockets.length, failed, ms: performance.now() - t0 };
}

const runners = { ws: runWs, stream: runStream, sse: runSse, http: runHttp, idle: runIdle };
const runner = runners[cfg.mode];
if (runner === undefined) throw new Error(`unknown mode ${cfg.mode}`);
finish(await runner());
