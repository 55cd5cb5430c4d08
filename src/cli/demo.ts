#!/usr/bin/env node
// `npm run demo`: a self-contained round trip. Starts the demo agent on a free port, talks to it over
// WebSocket and HTTP, prints the exchange, shuts down, exits 0.
import { ASAPClient } from '../client/index.js';
import type { Envelope } from '../protocol/envelope.js';
import { createDemoAgent } from './demo-agent.js';

const line = (s = '') => process.stdout.write(`${s}\n`);
const show = (label: string, env: Envelope<object>) =>
  line(`  ${label} ${env.payload_type} ${JSON.stringify(env.payload)}`);

async function main(): Promise<void> {
  const server = createDemoAgent({ rateLimit: 0 });
  const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
  const wsUrl = `${url.replace('http', 'ws')}/asap/ws`;
  line(`Demo agent listening on ${url} (${wsUrl})`);

  const ws = new ASAPClient(wsUrl, { sender: 'urn:asap:agent:demo-client' });
  const http = new ASAPClient(`${url}/asap`, { sender: 'urn:asap:agent:demo-client' });
  try {
    line('\nWebSocket:');
    const echoReq = ws.taskEnvelope('echo', { hello: 'world' });
    show('->', echoReq);
    show('<-', await ws.send(echoReq));

    const pushes: Envelope<object>[] = [];
    const stop = ws.onMessage((env) => pushes.push(env));
    const pushRes = await ws.task('push', { count: 2 });
    for (const p of pushes) show('<- push', p);
    show('<-', pushRes);
    stop();

    line('  stream of 3 chunks:');
    for await (const chunk of ws.stream(ws.taskEnvelope('stream', { chunks: 3, interval_ms: 50 })))
      show('  <-', chunk);

    line('\nHTTP:');
    const httpReq = http.taskEnvelope('echo', { hello: 'http' });
    show('->', httpReq);
    show('<-', await http.send(httpReq));

    const manifest = await http.discover();
    line(
      `\nManifest: ${manifest.id} with skills ${manifest.capabilities.skills?.map((s) => s.id).join(', ')}`,
    );
  } finally {
    await ws.close();
    await server.close();
  }
  line('\nDone.');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
