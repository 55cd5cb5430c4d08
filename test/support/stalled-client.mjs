// A hostile WebSocket client in its own process (so its buffers are not counted as the
// server's memory): it upgrades, then writes `count` echo requests of `size` bytes each as
// fast as its socket drains, and never reads. On "read" (stdin) it stops writing, reads
// everything the server had sent, and prints the close frame it finds as JSON.
//   node stalled-client.mjs <port> <count> <size>
import { randomBytes } from 'node:crypto';
import net from 'node:net';

const [port, count, size] = process.argv.slice(2).map(Number);
const socket = net.connect(port, '127.0.0.1');
const key = randomBytes(16).toString('base64');
socket.write(
  `GET /asap/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
);

/** A masked text frame (the mask is zero, so the payload goes as is: allowed, and cheap). */
function frame(text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  const head = n < 126 ? Buffer.alloc(6) : n < 65536 ? Buffer.alloc(8) : Buffer.alloc(14);
  head[0] = 0x81;
  if (n < 126) head[1] = 0x80 | n;
  else if (n < 65536) {
    head[1] = 0x80 | 126;
    head.writeUInt16BE(n, 2);
  } else {
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, payload]);
}

const filler = 'x'.repeat(size);
let seq = 0;
function request() {
  seq++;
  const envelope = {
    id: `stall-${process.pid}-${seq}`,
    asap_version: '0.1',
    timestamp: new Date().toISOString(),
    sender: 'urn:asap:agent:stalled',
    recipient: 'urn:asap:agent:demo',
    payload_type: 'TaskRequest',
    payload: { conversation_id: 'c', skill_id: 'echo', input: { data: filler } },
  };
  return frame(JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope }, id: seq }));
}

let writing = true;
let sent = 0;
function pump() {
  while (writing && sent < count) {
    sent++;
    if (!socket.write(request())) {
      socket.once('drain', pump);
      return;
    }
  }
}

let head = Buffer.alloc(0);
socket.on('data', function handshake(chunk) {
  head = Buffer.concat([head, chunk]);
  const end = head.indexOf('\r\n\r\n');
  if (end < 0) return;
  socket.off('data', handshake);
  if (!head.subarray(0, end).toString().startsWith('HTTP/1.1 101')) {
    console.log(JSON.stringify({ error: head.subarray(0, end).toString() }));
    process.exit(1);
  }
  socket.pause(); // from here on: never read
  console.log(JSON.stringify({ upgraded: true }));
  pump();
});

let rest = Buffer.alloc(0);
let frames = 0;
function readAll() {
  writing = false;
  socket.on('data', (chunk) => {
    rest = Buffer.concat([rest, chunk]);
    for (;;) {
      if (rest.length < 2) return;
      let len = rest[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (rest.length < 4) return;
        len = rest.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (rest.length < 10) return;
        len = Number(rest.readBigUInt64BE(2));
        at = 10;
      }
      if (rest.length < at + len) return;
      const opcode = rest[0] & 0x0f;
      const payload = rest.subarray(at, at + len);
      rest = rest.subarray(at + len);
      frames++;
      if (opcode === 0x8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        console.log(
          JSON.stringify({ close: { code, reason: payload.subarray(2).toString() }, frames, sent }),
        );
        socket.destroy();
        process.exit(0);
      }
    }
  });
  socket.on('error', (err) => {
    console.log(JSON.stringify({ error: err.message, frames, sent }));
    process.exit(0);
  });
  socket.on('close', () => {
    console.log(JSON.stringify({ closedWithoutFrame: true, frames, sent }));
    process.exit(0);
  });
  socket.resume();
}

process.stdin.on('data', (d) => {
  if (d.toString().includes('read')) readAll();
});
process.stdin.on('end', () => process.exit(0));
