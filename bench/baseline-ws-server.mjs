// Baseline WebSocket server: JSON-RPC over raw `ws`, doing the least real work per round trip.
// Per request it parses the frame, builds a reply envelope (new id, timestamp, swapped sender and
// recipient, correlation_id, trace_id, `{task_id, status, result: {echo: input}}`) and stringifies it.
// Like `asap serve` it acks envelopes that carry `requires_ack: true` with an `asap.ack` notification,
// and answers the `stream` skill with `chunks` TaskStream result frames under the request's id.
// Usage: node bench/baseline-ws-server.mjs [--port 0] [--host 127.0.0.1]
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';
import { replyEnvelope } from './envelope.mjs';

const HIGH_WATER_MARK = 1024 * 1024;

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i === -1 ? fallback : process.argv[i + 1];
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));

const server = createServer((_req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({
  server,
  path: '/asap/ws',
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 10 * 1024 * 1024,
});

wss.on('connection', (ws) => {
  ws.on('message', (data) => onMessage(ws, data));
  ws.on('error', () => {});
});

function onMessage(ws, data) {
  let msg;
  try {
    msg = JSON.parse(data.toString());
  } catch {
    ws.send('{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}');
    return;
  }
  const env = msg?.params?.envelope;
  if (msg.method !== 'asap.send' || env === undefined) return;
  if (env.requires_ack === true) {
    const ack = replyEnvelope(env, 'MessageAck', { original_envelope_id: env.id, status: 'received' });
    ws.send(JSON.stringify({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: ack } }));
  }
  if (msg.id === undefined) return;
  const input = env.payload.input;
  if (env.payload.skill_id === 'stream') {
    void stream(ws, msg.id, env, input.chunks ?? 3);
    return;
  }
  const reply = replyEnvelope(env, 'TaskResponse', {
    task_id: env.id,
    status: 'completed',
    result: { echo: input },
  });
  ws.send(JSON.stringify({ jsonrpc: '2.0', result: { envelope: reply }, id: msg.id }));
}

/** `n` result frames under one id; waits for the socket to drain above the high-water mark, as ours does. */
async function stream(ws, id, env, n) {
  for (let i = 0; i < n; i++) {
    if (ws.readyState !== 1) return;
    const last = i === n - 1;
    const reply = replyEnvelope(env, 'TaskStream', {
      chunk: `chunk-${i}`,
      progress: (i + 1) / n,
      final: last,
      status: last ? 'completed' : 'working',
    });
    const text = JSON.stringify({ jsonrpc: '2.0', result: { envelope: reply }, id });
    if (ws.bufferedAmount < HIGH_WATER_MARK) ws.send(text);
    else await new Promise((resolve) => ws.send(text, resolve));
  }
}

server.listen(port, host, () => {
  const a = server.address();
  const base = `${a.address}:${a.port}`;
  process.stdout.write(`ASAP agent listening on http://${base} (ws://${base}/asap/ws)\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
