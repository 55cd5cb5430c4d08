/**
 * HttpTransport.stream (asap-wire.md §11, client side) against a real node:http server written here
 * that speaks SSE: chunks arrive as they are written, `event: error`, JSON answers, backpressure with
 * a slow consumer, early break and abort close the request, deadlines, binding checks, and the
 * ASAP-Version header both ways. Then ASAPClient.stream over http:// and the retry classification.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ASAP_TRANSPORT_VERSION,
  ASAPClient,
  HttpTransport,
  isRecoverable,
  retryAfterMs,
  streamUrlOf,
  taxonomyCode,
} from '../../src/client/index.js';
import { createEnvelope, createReply, type Envelope } from '../../src/protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ErrorCode,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
} from '../../src/protocol/errors.js';
import type { TaskStream } from '../../src/protocol/payloads.js';
import { cleanups, delay, demo, type Json, rejection, runCleanups, taskInit, waitFor } from './helpers.js';

afterEach(runCleanups);

interface Seen {
  url: string;
  headers: IncomingMessage['headers'];
  body: Json;
  /** Set when the server side of the request closed before the handler ended the response. */
  closedEarly: boolean;
}

interface SseServer {
  url: string;
  seen: Seen[];
}

type Handler = (req: Seen, res: ServerResponse, env: Envelope) => void | Promise<void>;

/** A node:http server: parses the JSON-RPC body and hands the request envelope to `handler`. */
async function sseServer(handler: Handler, versionHeader: string | null = '2.2'): Promise<SseServer> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (c) => {
      text += c;
    });
    req.on('end', () => {
      const s: Seen = {
        url: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(text),
        closedEarly: false,
      };
      seen.push(s);
      res.on('close', () => {
        if (!res.writableFinished) s.closedEarly = true;
      });
      if (versionHeader !== null) res.setHeader('asap-version', versionHeader);
      void handler(s, res, s.body.params.envelope as Envelope);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/asap`, seen };
}

function startSse(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
}

function chunk(
  env: Envelope,
  i: number,
  final = false,
  extra: Partial<TaskStream> = {},
): Envelope<TaskStream> {
  return createReply(env, 'TaskStream', {
    chunk: `chunk-${i}`,
    final,
    status: final ? 'completed' : 'working',
    ...extra,
  }) as Envelope<TaskStream>;
}

const event = (value: unknown, name?: string) =>
  `${name === undefined ? '' : `event: ${name}\n`}data: ${JSON.stringify(value)}\n\n`;

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function streamRejection(it: AsyncIterable<unknown>): Promise<ASAPError> {
  return rejection(collect(it));
}

describe('HttpTransport.stream', () => {
  it('posts asap.send to /asap/stream with the SSE and version headers, and reads the negotiated version', async () => {
    const srv = await sseServer((_req, res, env) => {
      startSse(res);
      res.end(event(chunk(env, 0)) + event(chunk(env, 1, true)));
    }, '2.1');
    const http = new HttpTransport(srv.url, { headers: { 'x-extra': 'yes' }, token: 'tok' });
    expect(http.negotiatedVersion).toBeUndefined();
    const env = createEnvelope(taskInit('stream'));
    const got = await collect(http.stream(env));
    expect(got.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1']);
    expect(got.every((c) => c.correlation_id === env.id)).toBe(true);
    expect(http.negotiatedVersion).toBe('2.1');
    const [req] = srv.seen;
    expect(req?.url).toBe('/asap/stream');
    expect(req?.headers.accept).toBe('text/event-stream');
    expect(req?.headers['asap-version']).toBe(ASAP_TRANSPORT_VERSION);
    expect(req?.headers['content-type']).toBe('application/json');
    expect(req?.headers.authorization).toBe('Bearer tok');
    expect(req?.headers['x-extra']).toBe('yes');
    expect(req?.body).toMatchObject({
      jsonrpc: '2.0',
      method: 'asap.send',
      params: { envelope: { id: env.id } },
    });
    expect(typeof req?.body.id).toBe('number');
  });

  it('yields chunks as they arrive, spread over time, not at the end', async () => {
    let written = 0;
    const srv = await sseServer(async (_req, res, env) => {
      startSse(res);
      for (let i = 0; i < 4; i++) {
        if (i > 0) await delay(150);
        res.write(event(chunk(env, i, i === 3)));
        written++;
      }
      res.end();
    });
    const http = new HttpTransport(srv.url);
    const start = Date.now();
    const times: number[] = [];
    const writtenAtReceipt: number[] = [];
    for await (const _ of http.stream(taskInit('stream'))) {
      times.push(Date.now() - start);
      writtenAtReceipt.push(written);
    }
    expect(times).toHaveLength(4);
    // Each chunk is seen before the next one is written.
    expect(writtenAtReceipt).toEqual([1, 2, 3, 4]);
    for (let i = 1; i < 4; i++) expect((times[i] ?? 0) - (times[i - 1] ?? 0)).toBeGreaterThanOrEqual(100);
  });

  it('throws the error of an `event: error` after some chunks', async () => {
    const error = {
      code: ErrorCode.ResourceExhausted,
      message: 'Too many requests',
      data: { recoverable: true, asap_taxonomy_code: 'asap:transport/rate_limited', retry_after_ms: 250 },
    };
    const srv = await sseServer((_req, res, env) => {
      startSse(res);
      res.end(event(chunk(env, 0)) + event(chunk(env, 1)) + event(error, 'error'));
    });
    const got: string[] = [];
    const err = await rejection(
      (async () => {
        for await (const c of new HttpTransport(srv.url).stream(taskInit('stream')))
          got.push(c.payload.chunk ?? '');
      })(),
    );
    expect(got).toEqual(['chunk-0', 'chunk-1']);
    expect(err).toBeInstanceOf(ASAPError);
    expect(err.local).toBe(false);
    expect(err.toJSON()).toEqual(error);
    expect(isRecoverable(err)).toBe(true);
    expect(taxonomyCode(err)).toBe('asap:transport/rate_limited');
    expect(retryAfterMs(err)).toBe(250);
  });

  it('reads an error event carrying a whole error response, and refuses a malformed one', async () => {
    const srv = await sseServer((req, res) => {
      startSse(res);
      const n = srv.seen.indexOf(req);
      res.end(
        n === 0
          ? event({ jsonrpc: '2.0', error: { code: ErrorCode.Timeout, message: 'slow' }, id: 1 }, 'error')
          : 'event: error\ndata: nope\n\n',
      );
    });
    const http = new HttpTransport(srv.url);
    const first = await streamRejection(http.stream(taskInit('stream')));
    expect(first.code).toBe(ErrorCode.Timeout);
    expect(first.message).toBe('slow');
    const second = await streamRejection(http.stream(taskInit('stream')));
    expect(second).toBeInstanceOf(ProtocolError);
    expect(second.message).toMatch(/Malformed SSE error event/);
  });

  it('throws a JSON-RPC error answered before the stream started', async () => {
    const srv = await sseServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          jsonrpc: '2.0',
          error: { code: -32000, message: 'Unsupported ASAP-Version', data: { recoverable: false } },
          id: 1,
        }),
      );
    }, '2.2');
    const http = new HttpTransport(srv.url);
    const err = await streamRejection(http.stream(taskInit('stream')));
    expect(err.code).toBe(-32000);
    expect(isRecoverable(err)).toBe(false);
    expect(http.negotiatedVersion).toBe('2.2');
  });

  it('yields the single envelope of a JSON answer, and refuses a body that is neither', async () => {
    const srv = await sseServer((req, res, env) => {
      if (srv.seen.indexOf(req) === 0) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ jsonrpc: '2.0', result: { envelope: chunk(env, 9, true) }, id: 1 }));
      } else {
        res.writeHead(502, { 'content-type': 'text/html' });
        res.end('<h1>Bad gateway</h1>');
      }
    }, null);
    const http = new HttpTransport(srv.url);
    const got = await collect(http.stream(taskInit('stream')));
    expect(got.map((c) => c.payload.chunk)).toEqual(['chunk-9']);
    expect(http.negotiatedVersion).toBeUndefined();
    const err = await streamRejection(http.stream(taskInit('stream')));
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.data).toMatchObject({ status: 502 });
  });

  it('fails with a ProtocolError on a chunk that does not bind to the request, or is not an envelope', async () => {
    const srv = await sseServer((req, res, env) => {
      startSse(res);
      const n = srv.seen.indexOf(req);
      if (n === 0) res.end(event({ ...chunk(env, 0), correlation_id: 'someone-else' }));
      else if (n === 1) res.end('data: {not json\n\n');
      else res.end(event({ hello: 'world' }));
    });
    const http = new HttpTransport(srv.url);
    const mismatch = await streamRejection(http.stream(taskInit('stream')));
    expect(mismatch).toBeInstanceOf(ProtocolError);
    expect(mismatch.message).toMatch(/correlation_id mismatch/);
    expect(mismatch.data).toMatchObject({ received: 'someone-else' });
    expect(await streamRejection(http.stream(taskInit('stream')))).toBeInstanceOf(ProtocolError);
    const invalid = await streamRejection(http.stream(taskInit('stream')));
    expect(invalid.message).toMatch(/no valid envelope/);
  });

  it('ignores comments and unknown events, ends on a non-TaskStream answer, and fails a stream cut short', async () => {
    const srv = await sseServer((req, res, env) => {
      startSse(res);
      const n = srv.seen.indexOf(req);
      if (n === 0) {
        const response = createReply(env, 'TaskResponse', { task_id: env.id, status: 'completed' });
        res.end(
          `: keepalive\n\n${event({ x: 1 }, 'progress')}${event(chunk(env, 0), 'message')}${event(response)}`,
        );
      } else {
        res.end(event(chunk(env, 0)));
      }
    });
    const http = new HttpTransport(srv.url);
    const got = await collect(http.stream(taskInit('stream')));
    expect(got.map((c) => c.payload_type)).toEqual(['TaskStream', 'TaskResponse']);
    const cut = await streamRejection(http.stream(taskInit('stream')));
    expect(cut).toBeInstanceOf(ConnectionError);
    expect(cut.message).toMatch(/ended before its final chunk/);
  });

  it('does not read ahead of a slow consumer: the server is held by backpressure', async () => {
    const big = 'x'.repeat(64 * 1024);
    let written = 0;
    let blocked = false;
    const srv = await sseServer(async (req, res, env) => {
      startSse(res);
      for (let i = 0; i < 2000 && !res.destroyed; i++) {
        const ok = res.write(event(chunk(env, i, false, { chunk: big })));
        written += 1;
        if (!ok) {
          blocked = true;
          await new Promise<void>((resolve) => {
            const done = () => {
              res.off('drain', done);
              res.off('close', done);
              resolve();
            };
            res.once('drain', done);
            res.once('close', done);
          });
        }
      }
      void req;
      res.end();
    });
    const http = new HttpTransport(srv.url);
    const it = http.stream(taskInit('stream'))[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    // The consumer holds the chunk for a while; the server can only fill the socket buffers.
    await delay(400);
    expect(blocked).toBe(true);
    const whileHeld = written;
    expect(whileHeld).toBeLessThan(300); // 300 × 64 KiB ≈ 19 MiB, far below the 125 MiB offered
    await delay(100);
    expect(written).toBe(whileHeld);
    // Still flowing when pulled again.
    expect((await it.next()).done).toBe(false);
    await it.return?.();
    await waitFor(() => srv.seen[0]?.closedEarly === true, 'the server to see the request close');
  });

  it('leaving the loop early aborts the request: the server sees it close', async () => {
    const srv = await sseServer(async (_req, res, env) => {
      startSse(res);
      for (let i = 0; i < 50 && !res.destroyed; i++) {
        res.write(event(chunk(env, i)));
        await delay(20);
      }
      res.end();
    });
    const http = new HttpTransport(srv.url);
    let n = 0;
    for await (const _ of http.stream(taskInit('stream'))) {
      if (++n === 2) break;
    }
    await waitFor(() => srv.seen[0]?.closedEarly === true, 'the server to see the request close');
  });

  it('aborts with the signal: before the request, and mid-stream (the server sees it close)', async () => {
    const srv = await sseServer((_req, res, env) => {
      startSse(res);
      res.write(event(chunk(env, 0)));
    });
    const http = new HttpTransport(srv.url);
    const pre = new AbortController();
    pre.abort();
    expect(await streamRejection(http.stream(taskInit('stream'), { signal: pre.signal }))).toBeInstanceOf(
      RequestAbortedError,
    );
    expect(srv.seen).toHaveLength(0);

    const ac = new AbortController();
    const got: string[] = [];
    const done = rejection(
      (async () => {
        for await (const c of http.stream(taskInit('stream'), { signal: ac.signal })) {
          got.push(c.payload.chunk ?? '');
          setTimeout(() => ac.abort(), 30);
        }
      })(),
    );
    const err = await done;
    expect(err).toBeInstanceOf(RequestAbortedError);
    expect(got).toEqual(['chunk-0']);
    await waitFor(() => srv.seen[0]?.closedEarly === true, 'the server to see the request close');

    // An ASAPError reason is the error.
    const withReason = new AbortController();
    const it = http.stream(taskInit('stream'), { signal: withReason.signal })[Symbol.asyncIterator]();
    await it.next();
    withReason.abort(ASAPError.circuitOpen());
    expect((await rejection(it.next())).code).toBe(ErrorCode.CircuitOpen);
  });

  it('times out while the server is silent, renews the deadline with every chunk, and not while the consumer holds one', async () => {
    const srv = await sseServer(async (req, res, env) => {
      const n = srv.seen.indexOf(req);
      if (n === 0 || n === 3) return; // no headers at all
      startSse(res);
      if (n === 1) {
        res.write(event(chunk(env, 0)));
        return; // then silence
      }
      for (let i = 0; i < 5; i++) {
        if (i > 0) await delay(80);
        res.write(event(chunk(env, i, i === 4)));
      }
      res.end();
    });
    const http = new HttpTransport(srv.url, { requestTimeoutMs: 150 });
    const noHeaders = await streamRejection(http.stream(taskInit('stream')));
    expect(noHeaders).toBeInstanceOf(RequestTimeoutError);
    const got: string[] = [];
    const silent = await rejection(
      (async () => {
        for await (const c of http.stream(taskInit('stream'))) got.push(c.payload.chunk ?? '');
      })(),
    );
    expect(silent).toBeInstanceOf(RequestTimeoutError);
    expect(got).toEqual(['chunk-0']);
    // 5 chunks 80 ms apart: 320 ms in all, over twice the 150 ms deadline; the consumer also holds
    // the second chunk 300 ms.
    let i = 0;
    for await (const _ of http.stream(taskInit('stream'))) {
      if (i++ === 1) await delay(300);
    }
    expect(i).toBe(5);
    // The per-call deadline wins over the transport's.
    const quick = await streamRejection(
      new HttpTransport(srv.url, { requestTimeoutMs: 60_000 }).stream(taskInit('stream'), { timeoutMs: 100 }),
    );
    expect(quick).toBeInstanceOf(RequestTimeoutError);
  });

  it('fails with a ConnectionError when the server is unreachable or the token provider fails', async () => {
    const srv = await sseServer(() => {});
    const port = new URL(srv.url).port;
    await runCleanups(); // closes the server: its port refuses now
    const refused = await streamRejection(
      new HttpTransport(`http://127.0.0.1:${port}/asap`).stream(taskInit('stream')),
    );
    expect(refused).toBeInstanceOf(ConnectionError);
    expect(refused.message).toMatch(/Stream from .* failed/);
    const noToken = await streamRejection(
      new HttpTransport(`http://127.0.0.1:${port}/asap`, {
        token: () => Promise.reject(new Error('vault sealed')),
      }).stream(taskInit('stream')),
    );
    expect(noToken).toBeInstanceOf(ConnectionError);
    expect(noToken.message).toMatch(/vault sealed/);
  });

  it('fails an oversized event with a ProtocolError', async () => {
    const srv = await sseServer((_req, res) => {
      startSse(res);
      res.write(`data: ${'y'.repeat(5000)}`);
    });
    const err = await streamRejection(
      new HttpTransport(srv.url, { maxEventSize: 1000 }).stream(taskInit('stream')),
    );
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.message).toMatch(/larger than 1000/);
    await waitFor(() => srv.seen[0]?.closedEarly === true, 'the server to see the request close');
  });

  it('fails when the connection drops mid-stream, or in the middle of a JSON answer', async () => {
    const srv = await sseServer((req, res, env) => {
      if (srv.seen.indexOf(req) === 1) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
        res.write('{"jsonrpc":');
        setTimeout(() => res.destroy(), 30);
        return;
      }
      startSse(res);
      res.write(event(chunk(env, 0)));
      setTimeout(() => res.destroy(), 30);
    });
    const got: string[] = [];
    const err = await rejection(
      (async () => {
        for await (const c of new HttpTransport(srv.url).stream(taskInit('stream')))
          got.push(c.payload.chunk ?? '');
      })(),
    );
    expect(got).toEqual(['chunk-0']);
    expect(err).toBeInstanceOf(ConnectionError);
    const json = await streamRejection(new HttpTransport(srv.url).stream(taskInit('stream')));
    expect(json).toBeInstanceOf(ConnectionError);
  });
});

describe('stream URL', () => {
  it('appends /stream to an /asap path, else keeps the URL; an option overrides it', async () => {
    expect(streamUrlOf('http://h:1/asap')).toBe('http://h:1/asap/stream');
    expect(streamUrlOf('http://h:1/asap/')).toBe('http://h:1/asap/stream');
    expect(streamUrlOf('https://h/agents/a1/asap?x=1')).toBe('https://h/agents/a1/asap/stream?x=1');
    expect(streamUrlOf('http://h:1/rpc')).toBe('http://h:1/rpc');
    expect(new HttpTransport('http://h:1/asap').streamUrl).toBe('http://h:1/asap/stream');
    const srv = await sseServer((_req, res, env) => {
      startSse(res);
      res.end(event(chunk(env, 0, true)));
    });
    const custom = `${srv.url.replace(/\/asap$/, '')}/custom/sse`;
    const http = new HttpTransport(srv.url, { streamUrl: custom });
    expect(http.streamUrl).toBe(custom);
    await collect(http.stream(taskInit('stream')));
    expect(srv.seen[0]?.url).toBe('/custom/sse');
  });
});

describe('request() and the version header', () => {
  it('sends ASAP-Version on POST /asap and reads the answered one', async () => {
    const srv = await sseServer((_req, res, env) => {
      res.writeHead(200, { 'content-type': 'application/json', 'asap-version': '2.1' });
      res.end(
        JSON.stringify({
          jsonrpc: '2.0',
          result: { envelope: createReply(env, 'TaskResponse', { task_id: env.id, status: 'completed' }) },
          id: 1,
        }),
      );
    });
    const http = new HttpTransport(srv.url);
    await http.request(taskInit('echo'));
    expect(srv.seen[0]?.headers['asap-version']).toBe('2.2');
    expect(srv.seen[0]?.url).toBe('/asap');
    expect(http.negotiatedVersion).toBe('2.1');
  });
});

describe('ASAPClient.stream over http://', () => {
  it('streams chunks over SSE and reports the negotiated version', async () => {
    const srv = await sseServer(async (_req, res, env) => {
      startSse(res);
      for (let i = 0; i < 3; i++) {
        if (i > 0) await delay(50);
        res.write(event(chunk(env, i, i === 2)));
      }
      res.end();
    });
    const client = new ASAPClient(srv.url);
    expect(client.negotiatedVersion).toBeUndefined();
    const env = client.taskEnvelope('stream', {}, { config: { streaming: true } });
    const got = await collect(client.stream(env));
    expect(got.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2']);
    expect(client.negotiatedVersion).toBe('2.2');
    expect(srv.seen[0]?.url).toBe('/asap/stream');
    expect(new ASAPClient('ws://127.0.0.1:1/asap/ws').negotiatedVersion).toBeUndefined();
  });
});

describe('isRecoverable', () => {
  it('follows data.recoverable when present, else the code', () => {
    expect(isRecoverable(new ASAPError(ErrorCode.InvalidParams, 'x', { recoverable: true }))).toBe(true);
    expect(isRecoverable(new ASAPError(ErrorCode.ResourceExhausted, 'x', { recoverable: false }))).toBe(
      false,
    );
    expect(isRecoverable(new ASAPError(ErrorCode.ResourceExhausted, 'x'))).toBe(true);
    expect(isRecoverable(ASAPError.circuitOpen())).toBe(true);
    expect(isRecoverable(ASAPError.timeout())).toBe(true);
    expect(isRecoverable(new RequestTimeoutError('t'))).toBe(true);
    expect(isRecoverable(new ConnectionError('c'))).toBe(true);
    expect(isRecoverable(new RequestAbortedError())).toBe(false);
    expect(isRecoverable(new ProtocolError('p'))).toBe(false);
    expect(isRecoverable(ASAPError.internal())).toBe(false);
    expect(isRecoverable(new ASAPError(ErrorCode.InvalidParams, 'x', ['recoverable']))).toBe(false);
    expect(isRecoverable(new Error('plain'))).toBe(false);
    expect(isRecoverable(undefined)).toBe(false);
  });

  it('reads the taxonomy code and retry hint only when well-formed', () => {
    expect(taxonomyCode(new ASAPError(1, 'x', { asap_taxonomy_code: 7 }))).toBeUndefined();
    expect(taxonomyCode(new Error('x'))).toBeUndefined();
    expect(retryAfterMs(new ASAPError(1, 'x', { retry_after_ms: -1 }))).toBeUndefined();
    expect(retryAfterMs(new ASAPError(1, 'x', { retry_after_ms: '5' }))).toBeUndefined();
    expect(retryAfterMs(new ASAPError(1, 'x', null))).toBeUndefined();
  });
});

describe('against the demo agent (server side of §11)', () => {
  it('streams the demo `stream` skill over POST /asap/stream as the chunks are made', async () => {
    const d = await demo();
    const http = new HttpTransport(d.rpc);
    const env = createEnvelope(taskInit('stream', { chunks: 4, interval_ms: 120 }));
    const start = Date.now();
    const times: number[] = [];
    const got: Envelope<TaskStream>[] = [];
    for await (const c of http.stream(env)) {
      times.push(Date.now() - start);
      got.push(c);
    }
    expect(got.map((c) => c.payload.chunk)).toEqual(['chunk-0', 'chunk-1', 'chunk-2', 'chunk-3']);
    expect(got.map((c) => c.payload.final)).toEqual([false, false, false, true]);
    expect(got.every((c) => c.correlation_id === env.id)).toBe(true);
    for (let i = 1; i < 4; i++) expect((times[i] ?? 0) - (times[i - 1] ?? 0)).toBeGreaterThanOrEqual(60);
    expect(http.negotiatedVersion).toBe('2.2');
    // A non-streaming skill answers with its single envelope.
    const echo = await collect(http.stream(taskInit('echo', { a: 1 })));
    expect(echo.map((e) => e.payload_type)).toEqual(['TaskResponse']);
  });

  it('surfaces a handler error as an ASAPError, and an early break stops the stream', async () => {
    const d = await demo();
    const client = new ASAPClient(d.rpc);
    const failed = await streamRejection(client.stream(taskInit('fail', { message: 'boom' })));
    expect(failed).toBeInstanceOf(ASAPError);
    expect(failed.local).toBe(false);
    expect(failed.code).toBe(ErrorCode.InternalError);
    expect(isRecoverable(failed)).toBe(false);
    let n = 0;
    for await (const _ of client.stream(taskInit('stream', { chunks: 50, interval_ms: 20 }))) {
      if (++n === 2) break;
    }
    expect(n).toBe(2);
    // The agent still answers afterwards.
    const again = await collect(client.stream(taskInit('stream', { chunks: 2 })));
    expect(again).toHaveLength(2);
  });
});
