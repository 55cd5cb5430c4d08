/**
 * The incremental SSE parser (src/client/sse.ts): every chunking of a sample stream gives the same
 * events, line endings, comments, multi-line data, UTF-8 split inside a character, the size bound,
 * and the discarding of an incomplete event at the end (WHATWG).
 */
import { describe, expect, it } from 'vitest';
import { readSSE, type SSEEvent, SSEParser } from '../../src/client/sse.js';
import { ProtocolError } from '../../src/protocol/errors.js';

const SAMPLE = [
  ': a comment first\n',
  'data: {"n":1}\n',
  '\n',
  'event: error\n',
  'data: line one\n',
  'data: line two\n',
  'id: 7\n',
  '\n',
  'data:no-space\n',
  'retry: 1000\n',
  'unknown: field\n',
  'data\n',
  '\n',
  'event: empty\n',
  '\n',
  ': only a comment\n',
  '\n',
  'data: héllo — ✓ 𝄞\n',
  '\n',
  'data: incomplete at the end\n',
].join('');

const EXPECTED: SSEEvent[] = [
  { data: '{"n":1}' },
  { event: 'error', data: 'line one\nline two', id: '7' },
  { data: 'no-space\n', id: '7' },
  { data: 'héllo — ✓ 𝄞', id: '7' },
];

function parseAll(chunks: (string | Uint8Array)[], parser = new SSEParser()): SSEEvent[] {
  const out: SSEEvent[] = [];
  for (const c of chunks) out.push(...parser.feed(c));
  parser.end();
  return out;
}

describe('SSEParser', () => {
  it('parses a whole stream at once', () => {
    expect(parseAll([SAMPLE])).toEqual(EXPECTED);
  });

  it('gives the same events for every split point, as text and as bytes', () => {
    for (let i = 0; i <= SAMPLE.length; i++) {
      expect(parseAll([SAMPLE.slice(0, i), SAMPLE.slice(i)]), `text split at ${i}`).toEqual(EXPECTED);
    }
    const bytes = new TextEncoder().encode(SAMPLE);
    for (let i = 0; i <= bytes.length; i++) {
      expect(parseAll([bytes.slice(0, i), bytes.slice(i)]), `byte split at ${i}`).toEqual(EXPECTED);
    }
  });

  it('gives the same events one byte at a time, and in three pieces at every pair of splits of CRLF text', () => {
    const bytes = new TextEncoder().encode(SAMPLE);
    expect(parseAll([...bytes].map((b) => Uint8Array.of(b)))).toEqual(EXPECTED);
    const crlf = SAMPLE.replaceAll('\n', '\r\n');
    for (let i = 0; i < crlf.length; i += 3) {
      for (let j = i; j <= crlf.length; j += 5) {
        expect(parseAll([crlf.slice(0, i), crlf.slice(i, j), crlf.slice(j)]), `${i}/${j}`).toEqual(EXPECTED);
      }
    }
  });

  it('takes CRLF, LF and CR line ends, mixed, with a CR at the end of a chunk', () => {
    for (const eol of ['\r\n', '\r', '\n']) {
      const text = SAMPLE.replaceAll('\n', eol);
      expect(parseAll([text]), JSON.stringify(eol)).toEqual(EXPECTED);
      for (let i = 0; i <= text.length; i++)
        expect(parseAll([text.slice(0, i), text.slice(i)])).toEqual(EXPECTED);
    }
    expect(parseAll(['data: a\r', '\ndata: b\n\r', '\r\n'])).toEqual([{ data: 'a\nb' }]);
    expect(parseAll(['data: a\r', '\r', 'data: b\r\n\n'])).toEqual([{ data: 'a' }, { data: 'b' }]);
  });

  it('decodes a multi-byte character split across chunks (stream decoding)', () => {
    const bytes = new TextEncoder().encode('data: 𝄞é\n\n');
    // 𝄞 is four bytes at offsets 6..9: split inside it at each offset.
    for (let i = 6; i <= 10; i++) {
      expect(parseAll([bytes.slice(0, i), bytes.slice(i)])).toEqual([{ data: '𝄞é' }]);
    }
  });

  it('drops a leading byte order mark, once', () => {
    expect(parseAll(['\uFEFFdata: x\n\n'])).toEqual([{ data: 'x' }]);
    expect(parseAll(['\uFEFF', 'data: x\n\n'])).toEqual([{ data: 'x' }]);
    expect(parseAll([Uint8Array.of(0xef, 0xbb, 0xbf), 'data: x\n\n'])).toEqual([{ data: 'x' }]);
    // Only the first: a later one is part of a field name (so an unknown field).
    expect(parseAll(['data: x\n\n\uFEFFdata: y\n\n'])).toEqual([{ data: 'x' }]);
  });

  it('ignores an id holding NUL and keeps the last id across events', () => {
    expect(parseAll(['id: 1\ndata: a\n\nid: 2\0\ndata: b\n\nid\ndata: c\n\n'])).toEqual([
      { data: 'a', id: '1' },
      { data: 'b', id: '1' },
      { data: 'c' },
    ]);
  });

  it('discards an incomplete event at the end and is reusable after end()', () => {
    const parser = new SSEParser();
    expect(parser.feed('data: a\n\ndata: b\n')).toEqual([{ data: 'a' }]);
    parser.end();
    expect(parser.feed('\n')).toEqual([]);
    expect(parser.feed('data: c')).toEqual([]);
    parser.end();
    expect(parser.feed('\uFEFFdata: d\n\n')).toEqual([{ data: 'd' }]);
    expect(parser.feed('')).toEqual([]);
  });

  it('bounds one event: data lines, or one endless line, past the limit throw', () => {
    const small = () => new SSEParser({ maxEventSize: 100 });
    const line = `data: ${'x'.repeat(40)}\n`;
    // Two lines fit, and a dispatch resets the count.
    expect(parseAll([line, line, '\n', line, line, '\n'], small())).toHaveLength(2);
    expect(() => parseAll([line, line, line], small())).toThrow(ProtocolError);
    // A line without its end, fed in small pieces.
    const p = small();
    expect(() => {
      for (let i = 0; i < 30; i++) p.feed('xxxxx');
    }).toThrow(/larger than 100/);
    // Comments do not accumulate.
    const q = small();
    for (let i = 0; i < 100; i++) q.feed(`: ${'c'.repeat(50)}\n`);
    expect(q.feed('data: ok\n\n')).toEqual([{ data: 'ok' }]);
    // The default is 10 MiB.
    const big = new SSEParser();
    expect(() => big.feed(`data: ${'y'.repeat(10 * 1024 * 1024)}`)).toThrow(ProtocolError);
  });
});

describe('readSSE', () => {
  function body(chunks: string[]): {
    stream: ReadableStream<Uint8Array>;
    pulled: () => number;
    cancelled: () => boolean;
  } {
    let i = 0;
    let cancelled = false;
    const enc = new TextEncoder();
    const stream = new ReadableStream<Uint8Array>(
      {
        pull(controller) {
          const c = chunks[i++];
          if (c === undefined) controller.close();
          else controller.enqueue(enc.encode(c));
        },
        cancel() {
          cancelled = true;
        },
      },
      { highWaterMark: 0 },
    );
    return { stream, pulled: () => i, cancelled: () => cancelled };
  }

  it('yields events as the body is read, and discards the incomplete tail', async () => {
    const b = body(['data: 1\n', '\ndata: 2\n\n', 'data: tail']);
    const got: SSEEvent[] = [];
    for await (const e of readSSE(b.stream)) got.push(e);
    expect(got).toEqual([{ data: '1' }, { data: '2' }]);
    expect(b.cancelled()).toBe(false);
  });

  it('reads only as the consumer pulls, and cancels the body when left early', async () => {
    const b = body(['data: 1\n\n', 'data: 2\n\n', 'data: 3\n\n', 'data: 4\n\n']);
    const it = readSSE(b.stream);
    expect((await it.next()).value).toEqual({ data: '1' });
    const pulledAfterFirst = b.pulled();
    await new Promise((r) => setTimeout(r, 20));
    expect(b.pulled()).toBe(pulledAfterFirst);
    await it.return();
    expect(b.cancelled()).toBe(true);
  });

  it('passes the size bound on', async () => {
    const b = body([`data: ${'z'.repeat(200)}\n\n`]);
    await expect(readSSE(b.stream, { maxEventSize: 50 }).next()).rejects.toThrow(ProtocolError);
  });
});
