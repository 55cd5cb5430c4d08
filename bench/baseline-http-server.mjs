// Baseline HTTP server: JSON-RPC on plain `node:http` with keep-alive, doing the least real work per
// request: read the body, parse it, build the reply envelope (as bench/baseline-ws-server.mjs does),
// stringify it and answer 200 with a Content-Length.
// Usage: node bench/baseline-http-server.mjs [--port 0] [--host 127.0.0.1]
import { createServer } from 'node:http';
import { replyEnvelope } from './envelope.mjs';

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i === -1 ? fallback : process.argv[i + 1];
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

// Same keep-alive timeout as ASAPServer.listen().
const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (req.method !== 'POST' || req.url !== '/asap') {
    send(res, 404, '{"error":"Not found"}');
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse((chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)).toString());
    } catch {
      send(res, 200, '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}');
      return;
    }
    const env = msg.params.envelope;
    const reply = replyEnvelope(env, 'TaskResponse', {
      task_id: env.id,
      status: 'completed',
      result: { echo: env.payload.input },
    });
    send(res, 200, JSON.stringify({ jsonrpc: '2.0', result: { envelope: reply }, id: msg.id }));
  });
});

server.listen(port, host, () => {
  const a = server.address();
  const base = `${a.address}:${a.port}`;
  process.stdout.write(`ASAP agent listening on http://${base} (ws://${base}/asap/ws)\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
