import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import { ASAPError, LocalErrorCode } from '../../src/protocol/errors.js';
import { ASAPServer } from '../../src/server/server.js';

const CLIENT = 'urn:asap:agent:push-client';
const SERVER = 'urn:asap:agent:push-server';

let server: ASAPServer | undefined;
let socket: WebSocket | undefined;

afterEach(async () => {
  socket?.terminate();
  await server?.close();
  server = undefined;
  socket = undefined;
});

interface Received {
  method?: string;
  params?: { envelope: Envelope };
  result?: unknown;
  id?: unknown;
}

/** A server and a raw client that has identified itself with one request. */
async function setup(): Promise<{ frames: Received[] }> {
  server = new ASAPServer({
    manifest: { id: SERVER },
    rateLimit: 0,
    ack: { timeoutMs: 40, maxRetries: 2, checkIntervalMs: 10 },
  });
  server.on('MessageSend', () => undefined);
  const { port } = await server.listen({ port: 0 });
  socket = new WebSocket(`ws://127.0.0.1:${port}/asap/ws`);
  const frames: Received[] = [];
  socket.on('message', (data) => frames.push(JSON.parse(data.toString()) as Received));
  await new Promise((resolve) => socket!.once('open', resolve));
  const hello = createEnvelope({
    sender: CLIENT,
    recipient: SERVER,
    payload_type: 'MessageSend',
    payload: { task_id: 't', message_id: 'm', sender: CLIENT, role: 'user', parts: [] },
  });
  socket.send(JSON.stringify({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: hello }, id: 1 }));
  await waitFor(() => frames.some((f) => f.id === 1));
  return { frames };
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const taskRequest = () => ({
  payload_type: 'TaskRequest',
  payload: { conversation_id: 'c', skill_id: 'echo', input: {} },
});

function pushes(frames: Received[]): Envelope[] {
  return frames.filter((f) => f.method === 'asap.send' && f.id === undefined).map((f) => f.params!.envelope);
}

function ack(env: Envelope, status: 'received' | 'rejected', error?: string): string {
  const payload: Record<string, unknown> = { original_envelope_id: env.id, status };
  if (error) payload.error = error;
  const a = createEnvelope({
    sender: env.recipient,
    recipient: env.sender,
    payload_type: 'MessageAck',
    payload,
    correlation_id: env.id,
  });
  return JSON.stringify({ jsonrpc: '2.0', method: 'asap.ack', params: { envelope: a } });
}

describe('server push with acknowledgements (asap-wire.md §6)', () => {
  it('marks state-changing pushes requires_ack and settles when the client acks', async () => {
    const { frames } = await setup();
    const pushed = server!.push(CLIENT, taskRequest());
    await waitFor(() => pushes(frames).length === 1);
    const env = pushes(frames)[0]!;
    expect(env.requires_ack).toBe(true);
    socket!.send(ack(env, 'received'));
    await expect(pushed).resolves.toBe(1);
  });

  it('retransmits the same envelope until acked, then gives up with a local RequestTimeoutError', async () => {
    const { frames } = await setup();
    const pushed = server!.push(CLIENT, taskRequest());
    const err = await pushed.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ASAPError);
    expect((err as ASAPError).code).toBe(LocalErrorCode.RequestTimeout);
    const copies = pushes(frames);
    expect(copies.length).toBe(3);
    expect(new Set(copies.map((c) => c.id)).size).toBe(1);
  });

  it('rejects the push when the client answers rejected', async () => {
    const { frames } = await setup();
    const pushed = server!.push(CLIENT, taskRequest());
    await waitFor(() => pushes(frames).length === 1);
    socket!.send(ack(pushes(frames)[0]!, 'rejected', 'no thanks'));
    await expect(pushed).rejects.toThrow('no thanks');
  });

  it('fails a pending push when its connection closes', async () => {
    const { frames } = await setup();
    const pushed = server!.push(CLIENT, taskRequest());
    await waitFor(() => pushes(frames).length === 1);
    socket!.terminate();
    await expect(pushed).rejects.toThrow(/closed/);
  });

  it('does not track pushes that need no ack', async () => {
    const { frames } = await setup();
    const n = await server!.push(CLIENT, {
      payload_type: 'TaskUpdate',
      payload: { task_id: 't', update_type: 'progress', status: 'working' },
    });
    expect(n).toBe(1);
    await waitFor(() => pushes(frames).length === 1);
    expect(pushes(frames)[0]!.requires_ack).toBeUndefined();
  });
});
