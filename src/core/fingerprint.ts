import type { Envelope } from '../protocol/envelope.js';
import { normalizePayloadType } from '../protocol/payloads.js';

/**
 * @internal
 * The content fingerprint of asap-wire.md §10: a hash of the envelope
 * without its transport fields (id, timestamp, requires_ack, trace_id,
 * extensions) and without its sender (which the dedupe key holds), with
 * object keys in sorted order so a resend that re-serialises the payload in
 * another key order still matches.
 *
 * It tells a retransmission from an id reused by mistake, not a forgery (the
 * dedupe key is already scoped to the caller), so it is a fast 2 × 32-bit
 * hash rather than a cryptographic one, and strings over 4 KiB are hashed by
 * their length and an even sample of 4,096 characters: a 100 KB payload costs
 * microseconds, not a full pass.
 */
export function fingerprint(
  env: Envelope<object>,
  normalizedType = normalizePayloadType(env.payload_type),
): number {
  h1 = 0x811c9dc5;
  h2 = 0x9747b28c;
  // The sender is part of the dedupe key already.
  mixString(env.recipient);
  mixString(normalizedType);
  mixString(env.correlation_id ?? '');
  mixValue(env.payload);
  // 53 bits in one number: no string to allocate or keep per remembered envelope.
  return (h1 >>> 0) * 0x200000 + (h2 >>> 11);
}

const SAMPLE = 4096;
let h1 = 0;
let h2 = 0;

function mixTag(tag: number): void {
  h1 = Math.imul(h1 ^ tag, 16777619);
  h2 = Math.imul(h2 ^ tag, 0x5bd1e995);
}

function mixString(s: string): void {
  const n = s.length;
  const step = n <= SAMPLE ? 1 : Math.ceil(n / SAMPLE);
  let a = h1;
  let b = h2;
  for (let i = 0; i < n; i += step) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 16777619);
    b = Math.imul(b ^ c, 0x5bd1e995);
  }
  h1 = Math.imul(a ^ n, 16777619);
  h2 = Math.imul(b ^ (b >>> 13) ^ n, 0x5bd1e995);
}

function isSorted(keys: string[]): boolean {
  for (let i = 1; i < keys.length; i++) if (keys[i - 1]! > keys[i]!) return false;
  return true;
}

/** Depth is bounded by the frame decoder (MAX_JSON_DEPTH), so the recursion is too. */
function mixValue(v: unknown): void {
  switch (typeof v) {
    case 'string':
      mixTag(1);
      mixString(v);
      return;
    case 'number':
      if ((v | 0) === v) {
        mixTag(2);
        mixTag(v);
      } else {
        mixTag(11);
        mixString(String(v));
      }
      return;
    case 'boolean':
      mixTag(v ? 3 : 4);
      return;
    case 'object': {
      if (v === null) {
        mixTag(5);
        return;
      }
      if (Array.isArray(v)) {
        mixTag(6);
        for (let i = 0; i < v.length; i++) mixValue(v[i]);
        mixTag(7);
        return;
      }
      const obj = v as Record<string, unknown>;
      const keys = Object.keys(obj);
      if (keys.length > 1 && !isSorted(keys)) keys.sort();
      mixTag(8);
      for (let i = 0; i < keys.length; i++) {
        const k = keys[i]!;
        if (obj[k] === undefined) continue;
        mixString(k);
        mixValue(obj[k]);
      }
      mixTag(9);
      return;
    }
    default:
      mixTag(10);
  }
}

/**
 * @internal
 * Longest envelope id a dedupe key holds as it is. Ids are the peer's choice and the frame size is
 * their only bound, so a longer one is replaced by {@link idDigest}: a few envelopes with huge ids
 * must not fill the store's id budget and push other callers' ids out before their window ends.
 */
export const MAX_KEY_ID_LENGTH = 128;

/**
 * @internal
 * The dedupe key's stand-in for a long envelope id: four 32-bit hashes over every character, plus
 * the length (`#` and 32 hex digits, `:`, the length). Not secret and not seeded, so every node of a
 * shared store computes the same; a caller who crafts two ids with one digest only makes its own
 * envelopes look like copies of each other (the key also holds its identity).
 */
export function idDigest(id: string): string {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  let c = 0x2545f491;
  let d = 0x61c88647;
  for (let i = 0; i < id.length; i++) {
    const ch = id.charCodeAt(i);
    a = Math.imul(a ^ ch, 16777619);
    b = Math.imul(b ^ ch, 0x5bd1e995);
    b ^= b >>> 15;
    c = Math.imul(c ^ ch, 0x27d4eb2f);
    c ^= c >>> 13;
    d = Math.imul(d + ch, 0x165667b1);
    d ^= d >>> 16;
  }
  const hex = (h: number) => (h >>> 0).toString(16).padStart(8, '0');
  return `#${hex(a)}${hex(b)}${hex(c)}${hex(d)}:${id.length}`;
}
