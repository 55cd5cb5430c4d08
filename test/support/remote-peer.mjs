// A WebSocket peer in its own process, driven by JSON lines on stdin, answering JSON lines on
// stdout. Tests of fairness need the hostile peer out of the server's process: a client that
// shares the server's event loop cannot read while the server hogs it, so backpressure would
// hide the starvation a remote peer sees.
//   {"open": url}                 → {"opened": true} | {"error": …}
//   {"send": [frame, …]}          → {"sent": n}; a frame is a string, or {"b64": …} for binary
//   {"stats": true}               → {"received": n, "last": text (up to 2,000 chars), "closed": code|null}
//   {"close": true}               → {"closed": true}
// It reads everything the server sends, as fast as it can, and keeps only a count.
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

let ws;
let received = 0;
let last = '';
let closed = null;
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

function open(url) {
  ws?.terminate();
  received = 0;
  last = '';
  closed = null;
  ws = new WebSocket(url);
  ws.on('message', (data) => {
    received++;
    last = data.toString().slice(0, 2000);
  });
  ws.on('close', (code) => {
    closed = code;
  });
  ws.on('error', () => {});
  ws.once('open', () => out({ opened: true }));
  ws.once('unexpected-response', (_req, res) => out({ error: `HTTP ${res.statusCode}` }));
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.open) open(cmd.open);
  else if (cmd.send) {
    let n = 0;
    for (const f of cmd.send) {
      if (ws.readyState !== WebSocket.OPEN) break;
      ws.send(typeof f === 'string' ? f : Buffer.from(f.b64, 'base64'));
      n++;
    }
    out({ sent: n });
  } else if (cmd.stats) out({ received, last, closed });
  else if (cmd.close) {
    ws?.terminate();
    out({ closed: true });
  }
});
process.stdin.on('end', () => process.exit(0));
