/**
 * asap-wire.md §11 on the server: `POST /asap/stream` (and `POST /asap` with Accept:
 * text/event-stream) answered as Server-Sent Events through the dispatcher, `ASAP-Version`
 * negotiation on both routes, and the error taxonomy end to end. Real sockets, node:http
 * clients reading the body as it arrives.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { Envelope } from '../../src/protocol/envelope.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { acceptsEventStream, negotiateVersion } from '../../src/server/http-binding.js';
import { cleanup, type Json, rpcRequest, sleep, startDemo, task, uniqueKey, waitFor } from './ws-helpers.js';

afterEach(cleanup);

interface SseEvent {
  event: string;
  data: string;
  at: number;
}

/** A POST whose answer is read chunk by chunk; SSE events are parsed (and timestamped) as they come. */
class Exchange {
  readonly events: SseEvent[] = [];
  body = '';
  res!: IncomingMessage;
  readonly done: Promise<void>;
  readonly started: Promise<IncomingMessage>;
  private buffer = '';
  private readonly req;

  constructor(url: string, path: string, body: string, headers: Record<string, string> = {}) {
    const u = new URL(path, url);
    let onStart!: (res: IncomingMessage) => void;
    this.started = new Promise((resolve) => {
      onStart = resolve;
    });
    this.req = httpRequest(u, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
    });
    this.done = new Promise((resolve, reject) => {
      this.req.on('response', (res) => {
        this.res = res;
        res.setEncoding('utf8');
        res.on('data', (text: string) => this.take(text));
        res.on('end', () => resolve());
        res.on('error', () => resolve());
        res.on('close', () => resolve());
        onStart(res);
      });
      this.req.on('error', reject);
    });
    this.req.end(body);
  }

  private take(text: string): void {
    this.body += text;
    this.buffer += text;
    for (let i = this.buffer.indexOf('\n\n'); i !== -1; i = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, i);
      this.buffer = this.buffer.slice(i + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      this.events.push({ event, data: data.join('\n'), at: performance.now() });
    }
  }

  envelopes(): Envelope<Json>[] {
    return this.events.filter((e) => e.event === 'message').map((e) => JSON.parse(e.data));
  }

  destroy(): void {
    this.req.destroy();
  }
}

function post(url: string, path: string, body: string, headers: Record<string, string> = {}) {
  return new Exchange(url, path, body, headers);
}

const SSE = { accept: 'text/event-stream' };

describe('POST /asap/stream', () => {
  it('sends one data event per chunk as the handler yields them, spread over time, then ends', async () => {
    const { url } = await startDemo();
    const x = post(url, '/asap/stream', rpcRequest(task('stream', { chunks: 5, interval_ms: 80 }), 1), SSE);
    await x.done;
    expect(x.res.statusCode).toBe(200);
    expect(x.res.headers['content-type']).toBe('text/event-stream');
    expect(x.res.headers['cache-control']).toBe('no-cache');
    expect(x.res.headers['asap-version']).toBe('2.2');
    const envs = x.envelopes();
    expect(envs.map((e) => e.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2', 'chunk-3', 'chunk-4']);
    expect(envs.map((e) => e.payload.final)).toEqual([false, false, false, false, true]);
    expect(new Set(envs.map((e) => e.correlation_id)).size).toBe(1);
    // Chunks came as they were made: 4 intervals of 80 ms lie between the first and the last.
    const at = x.events.map((e) => e.at);
    expect(at[4]! - at[0]!).toBeGreaterThan(200);
    for (let i = 1; i < at.length; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThan(30);
  });

  it("answers a non-streaming handler's reply as one event", async () => {
    const { url } = await startDemo();
    const x = post(url, '/asap/stream', rpcRequest(task('echo', { a: 1 }), 'e'));
    await x.done;
    expect(x.res.headers['content-type']).toBe('text/event-stream');
    const envs = x.envelopes();
    expect(envs).toHaveLength(1);
    expect(envs[0]!.payload).toMatchObject({ status: 'completed', result: { echo: { a: 1 } } });
  });

  it('answers errors before the stream starts as JSON: validation, unknown handler, batches, bad JSON', async () => {
    const { url } = await startDemo();
    const bad = post(url, '/asap/stream', rpcRequest({ nope: true }, 'v'), SSE);
    await bad.done;
    expect(bad.res.statusCode).toBe(200);
    expect(bad.res.headers['content-type']).toBe('application/json');
    expect(bad.res.headers['asap-version']).toBe('2.2');
    const v = JSON.parse(bad.body);
    expect(v.id).toBe('v');
    expect(v.error.code).toBe(-32602);
    expect(v.error.data).toMatchObject({
      recoverable: false,
      asap_taxonomy_code: 'asap:protocol/malformed_envelope',
    });
    expect(v.error.data.validation_errors.length).toBeGreaterThan(0);

    const env = { ...task('x'), payload_type: 'x.custom_thing', payload: { any: 1 } };
    const none = post(url, '/asap/stream', rpcRequest(env, 'h'), SSE);
    await none.done;
    expect(JSON.parse(none.body).error).toMatchObject({
      code: -32012,
      data: { recoverable: false, asap_taxonomy_code: 'asap:transport/handler_not_found' },
    });

    const batch = post(url, '/asap/stream', `[${rpcRequest(task('echo'), 1)}]`, SSE);
    await batch.done;
    expect(batch.res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(batch.body).error).toMatchObject({ code: -32600, data: { recoverable: false } });

    const junk = post(url, '/asap/stream', '{', SSE);
    await junk.done;
    expect(JSON.parse(junk.body)).toMatchObject({ id: null, error: { code: -32700 } });
  });

  it('ends a stream that fails after it started with event: error carrying the error object', async () => {
    const { url, server } = await startDemo();
    server.skill('breaks', async function* () {
      yield { chunk: 'one', final: false, status: 'working' as const };
      throw new ASAPError(-32040, 'Downstream busy', { retry_after_ms: 50 });
    });
    const x = post(url, '/asap/stream', rpcRequest(task('breaks'), 2), SSE);
    await x.done;
    expect(x.res.headers['content-type']).toBe('text/event-stream');
    expect(x.events.map((e) => e.event)).toEqual(['message', 'error']);
    expect(JSON.parse(x.events[1]!.data)).toEqual({
      code: -32040,
      message: 'Downstream busy',
      data: { retry_after_ms: 50, recoverable: true, asap_taxonomy_code: 'asap:resource/exhausted' },
    });

    // The deadline, once chunks flowed: -32033, recoverable.
    const short = await startDemo({ defaultTimeoutMs: 150, deadlineResolutionMs: 20 });
    const slow = task('stream', { chunks: 5, interval_ms: 400 });
    const t = post(short.url, '/asap/stream', rpcRequest(slow, 3), SSE);
    await t.done;
    expect(t.events.map((e) => e.event)).toEqual(['message', 'error']);
    expect(JSON.parse(t.events[1]!.data)).toMatchObject({
      code: -32033,
      data: { recoverable: true, asap_taxonomy_code: 'asap:transport/timeout' },
    });
  });

  it('aborts the handler when the client goes away mid-stream', async () => {
    const { url, server } = await startDemo();
    let aborted = false;
    server.skill('forever', async function* (_env, ctx) {
      ctx.signal.addEventListener('abort', () => {
        aborted = true;
      });
      for (let i = 0; ; i++) {
        yield { chunk: `c${i}`, final: false, status: 'working' as const };
        await sleep(10);
      }
    });
    const x = post(url, '/asap/stream', rpcRequest(task('forever'), 4), SSE);
    await waitFor(() => x.events.length >= 3, 'three events');
    expect(server.dispatcher.inFlight).toBe(1);
    x.destroy();
    await waitFor(() => server.dispatcher.inFlight === 0, 'the handler to stop');
    expect(aborted).toBe(true);
    // And the server is fine.
    const after = post(url, '/asap/stream', rpcRequest(task('echo'), 5), SSE);
    await after.done;
    expect(after.envelopes()).toHaveLength(1);
  });

  it('releases a write waiting for drain when the client goes away', async () => {
    const { url, server } = await startDemo();
    const big = task('stream', { chunks: 1_000_000 });
    big.payload.config = { timeout_seconds: 60 };
    const x = post(url, '/asap/stream', rpcRequest(big, 6), SSE);
    const res = await x.started;
    res.pause();
    await sleep(300);
    expect(server.dispatcher.inFlight).toBe(1);
    x.destroy();
    await waitFor(() => server.dispatcher.inFlight === 0, 'the handler to stop', 10_000);
  });

  it('streams 100,000 chunks to a slow reader with bounded memory while others are served', async () => {
    const { url } = await startDemo();
    const big = task('stream', { chunks: 100_000 });
    big.payload.config = { timeout_seconds: 120 };
    const x = post(url, '/asap/stream', rpcRequest(big, 'big'), SSE);
    const res = await x.started;
    await waitFor(() => x.events.length > 0, 'the first event');
    res.pause();
    global.gc?.();
    const before = process.memoryUsage();
    // The reader sleeps; the server must stop producing rather than buffer 100,000 events.
    for (let i = 0; i < 5; i++) {
      await sleep(200);
      const t0 = performance.now();
      const echo = post(url, '/asap', rpcRequest(task('echo', { i }), i));
      await echo.done;
      expect(JSON.parse(echo.body).result.envelope.payload.result.echo).toEqual({ i });
      expect(performance.now() - t0).toBeLessThan(1000);
    }
    const during = process.memoryUsage();
    expect(during.heapUsed - before.heapUsed).toBeLessThan(64 * 1024 * 1024);
    expect(during.rss - before.rss).toBeLessThan(128 * 1024 * 1024);
    const received = x.body.length;
    expect(received).toBeLessThan(20 * 1024 * 1024);
    res.resume();
    await x.done;
    const envs = x.envelopes();
    expect(envs).toHaveLength(100_000);
    expect(envs[99_999]!.payload).toMatchObject({ chunk: 'chunk-99999', final: true });
  }, 60_000);

  it('never writes acks into the stream, even when the envelope asks for one', async () => {
    const { url } = await startDemo();
    const env = task('stream', { chunks: 3 }, { requires_ack: true });
    const x = post(url, '/asap/stream', rpcRequest(env, 7), SSE);
    await x.done;
    expect(x.envelopes().map((e) => e.payload_type)).toEqual(['TaskStream', 'TaskStream', 'TaskStream']);
  });

  it('answers a duplicate of a finished stream with its final chunk', async () => {
    const { url } = await startDemo();
    const env = task('stream', { chunks: 3 });
    const first = post(url, '/asap/stream', rpcRequest(env, 8), SSE);
    await first.done;
    const again = post(url, '/asap/stream', rpcRequest(env, 9), SSE);
    await again.done;
    expect(again.envelopes()).toEqual([first.envelopes()[2]]);
  });

  it('requires the token like POST /asap, and answers GET with 405, both with ASAP-Version', async () => {
    const { url } = await startDemo({ token: 's3cret' });
    const anon = post(url, '/asap/stream', rpcRequest(task('stream'), 1), SSE);
    await anon.done;
    expect(anon.res.statusCode).toBe(401);
    expect(anon.res.headers['asap-version']).toBe('2.2');
    expect(JSON.parse(anon.body).error).toMatchObject({
      code: -32004,
      data: { recoverable: false, asap_taxonomy_code: 'asap:auth/unauthorized' },
    });
    const ok = post(url, '/asap/stream', rpcRequest(task('stream', { chunks: 2 }), 2), {
      ...SSE,
      authorization: 'Bearer s3cret',
    });
    await ok.done;
    expect(ok.envelopes()).toHaveLength(2);
    const get = await fetch(`${url}/asap/stream`);
    expect(get.status).toBe(405);
    expect(get.headers.get('asap-version')).toBe('2.2');
  });
});

describe('POST /asap with Accept: text/event-stream', () => {
  it('streams a streaming handler as SSE and answers other handlers with plain JSON', async () => {
    const { url } = await startDemo();
    const s = post(url, '/asap', rpcRequest(task('stream', { chunks: 3, interval_ms: 20 }), 1), SSE);
    await s.done;
    expect(s.res.headers['content-type']).toBe('text/event-stream');
    expect(s.envelopes().map((e) => e.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2']);

    // A stream whose only chunk is the final one is still a stream.
    const one = post(url, '/asap', rpcRequest(task('stream', { chunks: 1 }), 2), SSE);
    await one.done;
    expect(one.res.headers['content-type']).toBe('text/event-stream');
    expect(one.envelopes()).toHaveLength(1);

    const e = post(url, '/asap', rpcRequest(task('echo', { x: 1 }), 3), SSE);
    await e.done;
    expect(e.res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(e.body).result.envelope.payload.result.echo).toEqual({ x: 1 });

    const fail = post(url, '/asap', rpcRequest(task('fail', { message: 'no' }), 4), SSE);
    await fail.done;
    expect(fail.res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(fail.body).error).toMatchObject({
      code: -32603,
      message: 'no',
      data: { recoverable: false, asap_taxonomy_code: 'asap:rpc/remote_error' },
    });

    // Without the Accept header, a stream is collected into its final chunk, as before.
    const plain = post(url, '/asap', rpcRequest(task('stream', { chunks: 3 }), 5));
    await plain.done;
    expect(plain.res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(plain.body).result.envelope.payload).toMatchObject({ chunk: 'chunk-2', final: true });

    // Batches stay JSON.
    const batch = post(url, '/asap', `[${rpcRequest(task('stream', { chunks: 2 }), 6)}]`, SSE);
    await batch.done;
    expect(batch.res.headers['content-type']).toBe('application/json');
    expect(JSON.parse(batch.body)).toHaveLength(1);
  });

  it('speaks SSE exactly as the reference TypeScript SDK does', async () => {
    const { url } = await startDemo();
    const envelope = task('stream', { chunks: 4, interval_ms: 10 });
    // The reference SDK's body: the envelope and an idempotency key next to it; and its headers.
    const body = JSON.stringify({
      jsonrpc: '2.0',
      method: 'asap.send',
      params: { envelope, idempotency_key: 'idem-1' },
      id: 'sdk-1',
    });
    const res = await fetch(`${url}/asap/stream`, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Accept: 'text/event-stream',
        'ASAP-Version': '2.2',
        'X-Idempotency-Key': 'idem-1',
      },
      body,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('asap-version')).toBe('2.2');
    // A plain line splitter: every `data:` line is one envelope.
    const text = await res.text();
    const envs = text
      .split('\n')
      .filter((line) => line.startsWith('data:'))
      .map((line) => JSON.parse(line.slice('data:'.length).trim()) as Envelope<Json>);
    expect(envs.map((e) => e.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2', 'chunk-3']);
    expect(envs.every((e) => e.correlation_id === envelope.id)).toBe(true);
    expect(envs[3]!.payload.final).toBe(true);
  });
});

describe('ASAP-Version negotiation (§11)', () => {
  const cases: { header?: string; version: string }[] = [
    { version: '2.2' },
    { header: '2.1', version: '2.1' },
    { header: '2.2, 2.1', version: '2.2' },
    { header: '9.9, 2.1', version: '2.1' },
  ];
  for (const path of ['/asap', '/asap/stream']) {
    for (const c of cases) {
      it(`${path} with ${c.header ?? 'no header'} answers with ASAP-Version ${c.version}`, async () => {
        const { url } = await startDemo();
        const headers: Record<string, string> = c.header === undefined ? {} : { 'asap-version': c.header };
        const x = post(url, path, rpcRequest(task('echo', { v: 1 }), 1), headers);
        await x.done;
        expect(x.res.statusCode).toBe(200);
        expect(x.res.headers['asap-version']).toBe(c.version);
      });
    }

    it(`${path} with an unsupported version answers -32000 with requested and supported; nothing runs`, async () => {
      const { url } = await startDemo();
      const key = uniqueKey('ver');
      const x = post(url, path, rpcRequest(task('count', { key }), 1), { 'asap-version': '9.9', ...SSE });
      await x.done;
      expect(x.res.statusCode).toBe(200);
      expect(x.res.headers['content-type']).toBe('application/json');
      expect(x.res.headers['asap-version']).toBe('2.2');
      expect(JSON.parse(x.body)).toEqual({
        jsonrpc: '2.0',
        error: {
          code: -32000,
          message: 'Unsupported ASAP-Version: 9.9',
          data: {
            requested: '9.9',
            supported: ['2.1', '2.2'],
            recoverable: false,
            asap_taxonomy_code: 'asap:protocol/invalid_state',
          },
        },
        id: null,
      });
      // The handler did not run: the counter starts at 1 now.
      const y = post(url, '/asap', rpcRequest(task('count', { key }), 2));
      await y.done;
      expect(JSON.parse(y.body).result.envelope.payload.result.count).toBe(1);
    });
  }

  it('negotiateVersion and acceptsEventStream', () => {
    expect(negotiateVersion(undefined)).toEqual({ ok: true, version: '2.2' });
    expect(negotiateVersion('  ')).toEqual({ ok: true, version: '2.2' });
    expect(negotiateVersion(['9.9', '2.1'])).toEqual({ ok: true, version: '2.1' });
    expect(negotiateVersion('1.0,3.0')).toEqual({ ok: false, requested: '1.0,3.0' });
    expect(acceptsEventStream(undefined)).toBe(false);
    expect(acceptsEventStream('application/json')).toBe(false);
    expect(acceptsEventStream('application/json, Text/Event-Stream;charset=utf-8')).toBe(true);
    expect(acceptsEventStream('text/event-stream;q=0')).toBe(false);
    expect(acceptsEventStream('text/event-stream; q=0.5')).toBe(true);
  });
});

describe('taxonomy end to end', () => {
  it('carries recoverable and asap_taxonomy_code on HTTP and WebSocket errors alike', async () => {
    const { url, server } = await startDemo();
    // -32010 from the built-in TaskCancel.
    const cancel = { ...task('x'), payload_type: 'TaskCancel', payload: { task_id: 'nope' } };
    const c = post(url, '/asap', rpcRequest(cancel, 1));
    await c.done;
    expect(JSON.parse(c.body).error).toMatchObject({
      code: -32010,
      data: { task_id: 'nope', recoverable: false, asap_taxonomy_code: 'asap:task/not_found' },
    });
    // -32011 thrown by a handler.
    server.skill('tripped', () => {
      throw ASAPError.circuitOpen();
    });
    const t = post(url, '/asap', rpcRequest(task('tripped'), 2));
    await t.done;
    expect(JSON.parse(t.body).error).toEqual({
      code: -32011,
      message: 'Circuit open',
      data: { recoverable: true, asap_taxonomy_code: 'asap:transport/circuit_open' },
    });
    // -32601 and -32003 (a reused nonce).
    const m = post(url, '/asap', JSON.stringify({ jsonrpc: '2.0', method: 'asap.nope', id: 3 }));
    await m.done;
    expect(JSON.parse(m.body).error.data).toEqual({
      method: 'asap.nope',
      recoverable: false,
      asap_taxonomy_code: 'asap:rpc/remote_error',
    });
    const nonce = `n-${uniqueKey()}`;
    const n1 = post(url, '/asap', rpcRequest(task('echo', {}, { extensions: { nonce } }), 4));
    await n1.done;
    const n2 = post(url, '/asap', rpcRequest(task('echo', {}, { extensions: { nonce } }), 5));
    await n2.done;
    expect(JSON.parse(n2.body).error).toMatchObject({
      code: -32003,
      data: { recoverable: false, asap_taxonomy_code: 'asap:protocol/invalid_nonce' },
    });
  });
});
