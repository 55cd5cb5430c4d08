// Sends N echo TaskRequests (64 in flight) over one WebSocket, then exits: a fixed amount of work for
// bench/instructions.sh, which counts the server's instructions for it.
// Usage: node bench/fixed-load.mjs ws://HOST:PORT/asap/ws N
import WebSocket from 'ws';
import { makeEnvelope } from './envelope.mjs';

const [url, count] = process.argv.slice(2);
const total = Number(count);
const ws = new WebSocket(url, { perMessageDeflate: false });
await new Promise((resolve, reject) => {
  ws.once('open', resolve);
  ws.once('error', reject);
});
let sent = 0;
let done = 0;
let errors = 0;
const send = () => {
  sent++;
  ws.send(
    JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: makeEnvelope() }, id: sent }),
  );
};
await new Promise((resolve) => {
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id === undefined) return;
    if (msg.result?.envelope?.payload?.status !== 'completed') errors++;
    done++;
    if (sent < total) send();
    if (done === total) resolve();
  });
  for (let i = 0; i < 64 && sent < total; i++) send();
});
console.log(JSON.stringify({ done, errors }));
ws.close();
