// An incremental Server-Sent Events parser (the WHATWG "event stream interpretation"), browser-safe:
// no Node import. asap-wire.md §11 streams TaskStream envelopes as SSE events over `POST /asap/stream`.
import { ProtocolError } from '../protocol/errors.js';

/** One dispatched event. `event` only when an `event:` field named it; `id` the last event id, if any. */
export interface SSEEvent {
  event?: string;
  data: string;
  id?: string;
}

export interface SSEParserOptions {
  /**
   * Bound on one event's size in UTF-16 code units (≈ bytes for ASCII): its data so far plus the
   * line being read. Past it the parser throws a ProtocolError (default 10 MiB), so a hostile
   * server cannot grow memory without bound.
   */
  maxEventSize?: number;
}

export const DEFAULT_MAX_EVENT_SIZE = 10 * 1024 * 1024;

/**
 * Feed it chunks as they arrive (bytes, decoded as UTF-8 across chunk boundaries, or text); each
 * `feed` returns the events completed by that chunk. Lines end with CRLF, LF or CR (a CR at the end
 * of one chunk and an LF at the start of the next are one line end). `data:` lines join with `\n`,
 * `:` lines are comments, a blank line dispatches. An event not ended by a blank line when the
 * stream ends is discarded, as the WHATWG spec says.
 */
export class SSEParser {
  private readonly maxEventSize: number;
  private readonly decoder = new TextDecoder('utf-8');
  /** Pieces of the line being read (no terminator seen yet), and their total length. */
  private partial: string[] = [];
  private partialLength = 0;
  /** The last chunk ended with CR: an LF starting the next one belongs to that line end. */
  private afterCR = false;
  private started = false;
  private data: string[] = [];
  private dataLength = 0;
  private eventType = '';
  private lastEventId = '';

  constructor(opts: SSEParserOptions = {}) {
    this.maxEventSize = opts.maxEventSize ?? DEFAULT_MAX_EVENT_SIZE;
  }

  /** Takes the next chunk; returns the events it completes, in order. */
  feed(chunk: Uint8Array | string): SSEEvent[] {
    let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    const out: SSEEvent[] = [];
    if (text === '') return out;
    if (!this.started) {
      this.started = true;
      // A byte order mark before the first line is dropped (TextDecoder drops it from bytes already).
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let start = 0;
    if (this.afterCR) {
      this.afterCR = false;
      if (text.charCodeAt(0) === 10) start = 1;
    }
    const n = text.length;
    for (let i = start; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      let line = text.slice(start, i);
      if (this.partial.length > 0) {
        this.partial.push(line);
        line = this.partial.join('');
        this.partial = [];
        this.partialLength = 0;
      }
      this.checkSize(line.length);
      this.line(line, out);
      if (c === 13) {
        if (i + 1 < n) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.afterCR = true;
        }
      }
      start = i + 1;
    }
    if (start < n) {
      const rest = text.slice(start);
      this.partial.push(rest);
      this.partialLength += rest.length;
      this.checkSize(this.partialLength);
    }
    return out;
  }

  /** The stream ended: whatever was not dispatched is discarded; the parser is ready for a new stream. */
  end(): void {
    this.decoder.decode();
    this.partial = [];
    this.partialLength = 0;
    this.afterCR = false;
    this.started = false;
    this.data = [];
    this.dataLength = 0;
    this.eventType = '';
    this.lastEventId = '';
  }

  private checkSize(lineLength: number): void {
    if (this.dataLength + lineLength > this.maxEventSize) {
      throw new ProtocolError(`SSE event larger than ${this.maxEventSize} characters`, {
        max_event_size: this.maxEventSize,
      });
    }
  }

  private line(line: string, out: SSEEvent[]): void {
    if (line === '') {
      this.dispatch(out);
      return;
    }
    const colon = line.indexOf(':');
    if (colon === 0) return;
    let field = line;
    let value = '';
    if (colon > 0) {
      field = line.slice(0, colon);
      value = line.slice(line.charCodeAt(colon + 1) === 32 ? colon + 2 : colon + 1);
    }
    switch (field) {
      case 'data':
        this.data.push(value);
        this.dataLength += value.length + 1;
        return;
      case 'event':
        this.eventType = value;
        return;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        return;
      default:
      // `retry` and unknown fields: nothing for this client to do.
    }
  }

  private dispatch(out: SSEEvent[]): void {
    const type = this.eventType;
    this.eventType = '';
    if (this.data.length === 0) return;
    const event: SSEEvent = { data: this.data.join('\n') };
    this.data = [];
    this.dataLength = 0;
    if (type !== '') event.event = type;
    if (this.lastEventId !== '') event.id = this.lastEventId;
    out.push(event);
  }
}

/**
 * The events of an SSE body, read only as the consumer pulls (so the body's backpressure holds:
 * nothing is read ahead of the consumer). Leaving early cancels the body.
 */
export async function* readSSE(
  body: ReadableStream<Uint8Array>,
  opts: SSEParserOptions = {},
): AsyncGenerator<SSEEvent, void, undefined> {
  const parser = new SSEParser(opts);
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) {
        done = true;
        parser.end();
        return;
      }
      for (const event of parser.feed(r.value)) yield event;
    }
  } finally {
    if (!done) reader.cancel().catch(() => {});
  }
}
