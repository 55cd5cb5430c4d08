/**
 * Sessions and resumption (asap-wire.md §12) over real sockets: our client opens a session on
 * connect, the server numbers pushes to it, pushes sent while the client is away are kept and
 * replayed in order after it resumes, and clients that never ask see nothing new.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import type { Envelope } from '../../src/protocol/envelope.js';
import {
  AGENT_URN,
  CLIENT_URN,
  cleanup,
  onCleanup,
  setup,
  startAgent,
  task,
  waitFor,
  within,
} from './helpers.js';

afterEach(cleanup);

const update = (n: number) => ({
  payload_type: 'TaskUpdate',
  payload: { task_id: 'task-s', update_type: 'progress', status: 'working', progress: { percent: n } },
});
const percent = (env: Envelope<object>) =>
  (env.payload as { progress: { percent: number } }).progress.percent;

/** A raw WebSocket client that records every parsed frame. */
async function rawClient(url: string, headers: Record<string, string> = {}) {
  const ws = new WebSocket(url, 'asap.v1', { headers });
  // biome-ignore lint/suspicious/noExplicitAny: parsed JSON frames
  const frames: Record<string, any>[] = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  onCleanup(() => {
    ws.terminate();
  });
  const send = (frame: unknown) => ws.send(JSON.stringify(frame));
  const sessionFrame = () =>
    waitFor(() => frames.some((f) => f.method === 'asap.session'), 'asap.session').then(
      () =>
        frames.find((f) => f.method === 'asap.session')!.params as { session_id: string; resumed: boolean },
    );
  const call = async (id: string) => {
    send({ jsonrpc: '2.0', method: 'asap.send', params: { envelope: task('echo', { id }) }, id });
    await waitFor(() => frames.some((f) => f.id === id), `answer ${id}`);
  };
  return { ws, frames, send, sessionFrame, call };
}

describe('sessions (§12)', () => {
  it('our client opens a session on connect, and pushes to it carry seq from 1', async () => {
    const { server, transport } = await setup();
    await waitFor(() => transport.sessionId !== undefined, 'the session');
    await transport.request(task('echo')); // indexes the connection under CLIENT_URN
    const seen: number[] = [];
    transport.onMessage((env) => seen.push(percent(env)));
    for (let i = 1; i <= 3; i++) expect(await server.push(CLIENT_URN, update(i))).toBe(1);
    await waitFor(() => seen.length === 3, 'three pushes');
    expect(seen).toEqual([1, 2, 3]);
  });

  it('pushes sent while the client is away are replayed in order after it resumes, exactly once', async () => {
    const { server, proxy, transport } = await setup();
    await waitFor(() => transport.sessionId !== undefined, 'the session');
    const sessionId = transport.sessionId;
    await transport.request(task('echo'));
    const seen: number[] = [];
    transport.onMessage((env) => seen.push(percent(env)));
    const sessions: { resumed: boolean }[] = [];
    transport.on('session', (s) => sessions.push(s));
    await server.push(CLIENT_URN, update(1));
    await waitFor(() => seen.length === 1, 'the first push');

    proxy.refuse(true);
    proxy.cut();
    await waitFor(() => server.connections.length === 0, 'the server to see the drop');
    // The client is away: these are kept for its session.
    for (let i = 2; i <= 6; i++) expect(await server.push(CLIENT_URN, update(i))).toBe(1);
    proxy.refuse(false);
    await waitFor(() => seen.length === 6, 'the replay', 5000);
    expect(seen).toEqual([1, 2, 3, 4, 5, 6]);
    expect(sessions).toEqual([{ sessionId, resumed: true }]);
    expect(transport.sessionId).toBe(sessionId);
    // And live again afterwards.
    await server.push(CLIENT_URN, update(7));
    await waitFor(() => seen.length === 7, 'a live push');
    expect(seen.at(-1)).toBe(7);
  });

  it('a client that never asks gets no asap.session and no seq', async () => {
    const server = await startAgent();
    const c = await rawClient(`${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`);
    await c.call('r1');
    await server.push(CLIENT_URN, update(1));
    await waitFor(() => c.frames.some((f) => f.method === 'asap.send'), 'the push');
    expect(c.frames.some((f) => f.method === 'asap.session')).toBe(false);
    expect(c.frames.find((f) => f.method === 'asap.send')!.params.seq).toBeUndefined();
  });

  it('resuming an unknown, expired or foreign session gives a new one (resumed: false)', async () => {
    const principals: Record<string, object> = { a: { id: 'alice' }, b: { id: 'bob' } };
    const server = await startAgent({
      authenticate: (t) => (t ? principals[t] : null),
      sessionWindowMs: 300,
    });
    const url = `${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`;
    const alice = await rawClient(url, { authorization: 'Bearer a' });
    alice.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id: null } });
    const opened = await alice.sessionFrame();
    expect(opened.resumed).toBe(false);
    expect(opened.session_id).toMatch(/^[0-9A-Z]{26}$/);

    // Bob cannot take Alice's session.
    const bob = await rawClient(url, { authorization: 'Bearer b' });
    bob.send({
      jsonrpc: '2.0',
      method: 'asap.resume',
      params: { session_id: opened.session_id, last_seq: 0 },
    });
    const forBob = await bob.sessionFrame();
    expect(forBob.resumed).toBe(false);
    expect(forBob.session_id).not.toBe(opened.session_id);

    const stranger = await rawClient(url, { authorization: 'Bearer a' });
    stranger.send({
      jsonrpc: '2.0',
      method: 'asap.resume',
      params: { session_id: 'no-such-session', last_seq: 3 },
    });
    expect((await stranger.sessionFrame()).resumed).toBe(false);

    // Alice goes away for longer than the window: her session is gone.
    alice.ws.close();
    await waitFor(() => server.connections.length === 2, 'alice to leave');
    await new Promise((r) => setTimeout(r, 400));
    const back = await rawClient(url, { authorization: 'Bearer a' });
    back.send({
      jsonrpc: '2.0',
      method: 'asap.resume',
      params: { session_id: opened.session_id, last_seq: 0 },
    });
    const again = await back.sessionFrame();
    expect(again.resumed).toBe(false);
    expect(again.session_id).not.toBe(opened.session_id);
  });

  it('a raw client resumes by last_seq: only what it had not delivered comes again, with the same seq', async () => {
    const server = await startAgent();
    const url = `${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`;
    const first = await rawClient(url);
    first.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id: null } });
    const { session_id } = await first.sessionFrame();
    await first.call('r1');
    for (let i = 1; i <= 4; i++) await server.push(CLIENT_URN, update(i));
    await waitFor(() => first.frames.filter((f) => f.method === 'asap.send').length === 4, 'four pushes');
    const pushes = first.frames.filter((f) => f.method === 'asap.send');
    expect(pushes.map((f) => f.params.seq)).toEqual([1, 2, 3, 4]);
    first.ws.terminate();
    await waitFor(() => server.connections.length === 0, 'the drop');
    await server.push(CLIENT_URN, update(5));

    const second = await rawClient(url);
    second.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id, last_seq: 2 } });
    expect(await second.sessionFrame()).toEqual({ session_id, resumed: true });
    await waitFor(() => second.frames.filter((f) => f.method === 'asap.send').length === 3, 'the replay');
    const replay = second.frames.filter((f) => f.method === 'asap.send');
    expect(replay.map((f) => [f.params.seq, percent(f.params.envelope)])).toEqual([
      [3, 3],
      [4, 4],
      [5, 5],
    ]);
    expect(replay[0]!.params.envelope.id).toBe(pushes[2]!.params.envelope.id);
    // The session frame comes before the replay.
    const order = second.frames.map((f) => f.method);
    expect(order.indexOf('asap.session')).toBeLessThan(order.indexOf('asap.send'));
    expect(AGENT_URN).toBe(pushes[0]!.params.envelope.sender);
  });

  it('resume: false on our client sends nothing new', async () => {
    const { transport } = await setup({ resume: false });
    await within(transport.request(task('echo')), 5000, 'echo');
    expect(transport.sessionId).toBeUndefined();
  });
});

describe('sessions: one per connection', () => {
  it('a repeated asap.resume on one connection is ignored (no session opened per frame)', async () => {
    const server = await startAgent();
    const c = await rawClient(`${server.boundAddress!.url.replace('http', 'ws')}/asap/ws`);
    for (let i = 0; i < 5; i++)
      c.send({ jsonrpc: '2.0', method: 'asap.resume', params: { session_id: null } });
    await c.sessionFrame();
    await c.call('after');
    expect(c.frames.filter((f) => f.method === 'asap.session')).toHaveLength(1);
  });
});
