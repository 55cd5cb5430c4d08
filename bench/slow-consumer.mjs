// Row 9 (slow consumer): a client that sends many large echo requests and never reads the answers.
// It speaks WebSocket over a raw `net` socket (handshake and masked frames written here) so that not
// reading is real: the socket is paused right after the handshake, the kernel's receive buffer fills,
// and everything the server still has to send piles up in the server. Driven by the orchestrator
// (bench/harness.mjs measureSlowConsumer), which samples the server's RSS meanwhile.
//
// Usage: node bench/slow-consumer.mjs '<json config>'
//   { "url": "ws://…/asap/ws", "requests": 2000, "bytes": 102400, "sendMs": 30000, "closeWaitMs": 40000,
//     "readMs": 5000, "read": false }
//   Sends `requests` echo requests with input {"data": "xxx…"} of `bytes` characters, as fast as the
//   socket takes them (for at most `sendMs`: a server that stops reading stalls the writes), then
//   watches both ends of its TCP connection in /proc/net/tcp until the server lets go of it or
//   `closeWaitMs` after the first write. Then it reads what the server sent, for at most `readMs`, to count the responses
//   and find the close frame's code and reason. Reports over IPC: {type:'open'}, {type:'sent', …},
//   {type:'waited', closed, …} (before the read-out), {type:'end', result}; exits on {type:'stop'}.
//   `"read": true` is the reference: the same requests from a client that reads as they come.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeEnvelope } from './envelope.mjs';
import { parseConfig, waitForStop } from './meter.mjs';

const cfg = parseConfig();
// Standalone (no IPC channel) it prints each report as a JSON line instead.
const send = (msg) =>
  typeof process.send === 'function' ? process.send(msg) : process.stdout.write(`${JSON.stringify(msg)}\n`);
const url = new URL(cfg.url);
/** Times reported are from the first request's write (set there). */
let t0 = performance.now();
const since = () => Math.round(performance.now() - t0);

// ---- handshake ----

const socket = connect({ host: url.hostname, port: Number(url.port), noDelay: true });
socket.on('error', () => {});
await new Promise((resolve, reject) => {
  socket.once('connect', resolve);
  socket.once('error', reject);
});
socket.write(
  `GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
);
/** Bytes received after the handshake's headers (frames), kept for the read-out at the end. */
const received = await new Promise((resolve, reject) => {
  let head = Buffer.alloc(0);
  const onData = (d) => {
    head = Buffer.concat([head, d]);
    const end = head.indexOf('\r\n\r\n');
    if (end === -1) return;
    socket.off('data', onData);
    // Not reading from here on: the stream buffers up to its high-water mark, then stops reading.
    socket.pause();
    const status = head.subarray(0, head.indexOf('\r\n')).toString();
    if (!/^HTTP\/1\.1 101/.test(status)) reject(new Error(`handshake refused: ${status}`));
    else resolve(head.subarray(end + 4));
  };
  socket.on('data', onData);
});
const local = socket.localPort;
send({ type: 'open', localPort: local });

// ---- the TCP state of this connection, read without reading the socket ----

const TCP_STATES = {
  '01': 'established',
  '04': 'fin-wait-1',
  '05': 'fin-wait-2',
  '06': 'time-wait',
  '07': 'close',
  '08': 'close-wait',
  '09': 'last-ack',
  '0B': 'closing',
};
const hexPort = (p) => `:${p.toString(16).toUpperCase().padStart(4, '0')}`;
/**
 * Both ends of this connection in /proc/net/tcp. The server's end tells when it let go: a server
 * that closes while data it queued is still unsent (this client's window is shut) leaves its kernel
 * holding that data and the FIN behind it (fin-wait-1), and this end stays 'established' until it
 * reads; a reset makes both vanish ('gone').
 */
function tcpState() {
  const mine = hexPort(local);
  const theirs = hexPort(Number(url.port));
  const state = { client: 'gone', server: 'gone' };
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4) continue;
    if (f[1].endsWith(mine) && f[2].endsWith(theirs)) state.client = TCP_STATES[f[3]] ?? f[3];
    else if (f[1].endsWith(theirs) && f[2].endsWith(mine)) state.server = TCP_STATES[f[3]] ?? f[3];
  }
  return state;
}
const isOpen = (st) => st.client === 'established' && st.server === 'established';
let socketEvent = null;
for (const ev of ['end', 'close']) socket.once(ev, () => (socketEvent ??= ev));
socket.on('error', (err) => (socketEvent ??= err.code ?? err.message));

// ---- masked frames ----

/** One masked text frame (RFC 6455 §5.2); the key is random, the masking 4 bytes at a time. */
function frame(text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  const headLen = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const buf = Buffer.allocUnsafe(headLen + 4 + n);
  buf[0] = 0x81; // FIN, text
  if (n < 126) buf[1] = 0x80 | n;
  else if (n < 65536) {
    buf[1] = 0x80 | 126;
    buf.writeUInt16BE(n, 2);
  } else {
    buf[1] = 0x80 | 127;
    buf.writeBigUInt64BE(BigInt(n), 2);
  }
  const key = randomBytes(4);
  key.copy(buf, headLen);
  const k = key.readInt32LE(0);
  const out = headLen + 4;
  let i = 0;
  for (; i + 4 <= n; i += 4) buf.writeInt32LE(payload.readInt32LE(i) ^ k, out + i);
  for (; i < n; i++) buf[out + i] = payload[i] ^ key[i & 3];
  return buf;
}

// ---- send ----

const data = 'x'.repeat(cfg.bytes);
const tSend = performance.now();
t0 = tSend;
const sendDeadline = tSend + cfg.sendMs;
let queued = 0; // requests handed to socket.write
let queuedBytes = 0;
let stalled = false;
/** Resolves true on 'drain'; false at the send deadline or when the connection ends meanwhile. */
const drained = () =>
  new Promise((resolve) => {
    const done = (ok) => {
      clearTimeout(t);
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    const t = setTimeout(onClose, Math.max(0, sendDeadline - performance.now()));
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
let reader;
if (cfg.read) reader = startReading();
for (let i = 0; i < cfg.requests; i++) {
  if (socket.destroyed || performance.now() > sendDeadline) break;
  const text = JSON.stringify({
    jsonrpc: '2.0',
    method: 'asap.send',
    params: { envelope: makeEnvelope({ input: { data } }) },
    id: i + 1,
  });
  const f = frame(text);
  queued++;
  queuedBytes += f.length;
  if (!socket.write(f) && !(await drained())) {
    // The server stopped reading (or is too slow to take it all within sendMs), or ended the connection.
    stalled = !socket.destroyed;
    break;
  }
}
// What the kernel took: all that was queued but what is still in the socket's own buffer.
const sentBytes = queuedBytes - socket.writableLength;
const sent = {
  sentAtMs: since(),
  queued,
  queuedBytes,
  sentBytes,
  sentRequests: Math.floor(sentBytes / (queuedBytes / Math.max(1, queued))),
  stalled,
  state: tcpState(),
};
send({ type: 'sent', ...sent });

// ---- wait for the server to end the connection ----

let closedAtMs = null;
let state = tcpState();
if (!cfg.read) {
  // Timed from the first write: the server's grace starts about then, when its send buffer fills.
  const until = Math.max(tSend + cfg.closeWaitMs, performance.now() + 2000);
  while (isOpen(state) && socketEvent === null && performance.now() < until) {
    await sleep(100);
    state = tcpState();
  }
  if (!isOpen(state) || socketEvent !== null) closedAtMs = since();
  send({ type: 'waited', closed: closedAtMs !== null, ms: since(), state, socketEvent });
}

// ---- read what the server sent: the responses, then maybe a close frame ----

/** Parses server frames (unmasked) from `received` onwards; resolves when done or after `readMs`. */
function startReading() {
  const r = { responses: 0, errors: 0, closeCode: null, closeReason: null, bytes: 0, end: null };
  let buf = received;
  return {
    r,
    done: new Promise((resolve) => {
      let timer;
      const finish = (why) => {
        if (r.end !== null) return;
        r.end = why;
        clearTimeout(timer);
        socket.off('data', onData);
        resolve(r);
      };
      const parse = () => {
        for (;;) {
          if (buf.length < 2) return;
          const op = buf[0] & 0x0f;
          let len = buf[1] & 0x7f;
          let at = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            at = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            at = 10;
          }
          if (buf.length < at + len) return;
          const body = buf.subarray(at, at + len);
          buf = buf.subarray(at + len);
          if (op === 0x1) {
            r.responses++;
            // An error response has `"error"` near its start; an echo has it nowhere.
            const e = body.indexOf('"error"');
            if (e !== -1 && e < 64) r.errors++;
          } else if (op === 0x8) {
            r.closeCode = body.length >= 2 ? body.readUInt16BE(0) : null;
            r.closeReason = body.subarray(2).toString();
            finish('close frame');
            return;
          }
          if (!cfg.read && r.responses >= queued) {
            finish('all responses read');
            return;
          }
        }
      };
      const onData = (d) => {
        r.bytes += d.length;
        buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
        parse();
      };
      // Reset by the server: the kernel dropped whatever was unread.
      if (socket.destroyed) return finish(socketEvent ?? 'closed');
      socket.on('data', onData);
      socket.once('end', () => finish('end'));
      socket.once('close', () => finish('close'));
      socket.once('error', (err) => finish(err.code ?? err.message));
      if (!cfg.read) timer = setTimeout(() => finish('read timeout'), cfg.readMs);
      socket.resume();
      parse();
    }),
  };
}

let read;
if (cfg.read) {
  // The reference: wait (bounded) for every answer, then close.
  const until = performance.now() + cfg.readMs;
  while (reader.r.responses < queued && reader.r.end === null && performance.now() < until) await sleep(20);
  read = reader.r;
  send({ type: 'waited', closed: false, ms: since(), state: tcpState(), socketEvent });
} else {
  reader = startReading();
  read = await reader.done;
}
send({
  type: 'end',
  result: {
    ...sent,
    closedAtMs,
    state,
    socketEvent,
    responses: read.responses,
    errorResponses: read.errors,
    readBytes: read.bytes,
    readEnd: read.end,
    closeCode: read.closeCode,
    closeReason: read.closeReason,
    ms: since(),
  },
});
await waitForStop();
socket.destroy();
process.exit(0);
