/** The pieces of asap-wire.md §10 that need no socket: fingerprints, principals, the turn budget. */
import { describe, expect, it } from 'vitest';
import { TurnBudget } from '../../src/core/fairness.js';
import { fingerprint, idDigest, MAX_KEY_ID_LENGTH } from '../../src/core/fingerprint.js';
import { boundAgents, principalId } from '../../src/core/identity.js';
import { createEnvelope } from '../../src/protocol/envelope.js';

const env = (payload: object, extra: object = {}) =>
  createEnvelope({
    sender: 'urn:asap:agent:a',
    recipient: 'urn:asap:agent:b',
    payload_type: 'TaskRequest',
    payload,
    ...extra,
  });

describe('fingerprint (§10 dedupe scope)', () => {
  it('ignores transport fields and key order, and sees every content change', () => {
    const p = {
      conversation_id: 'c',
      skill_id: 's',
      input: { n: 1, list: [1, 'x', null, true, false], o: {} },
    };
    const base = fingerprint(env(p));
    const reordered = {
      input: { o: {}, list: [1, 'x', null, true, false], n: 1 },
      skill_id: 's',
      conversation_id: 'c',
    };
    expect(
      fingerprint(env(reordered, { trace_id: 't', requires_ack: true, extensions: { nonce: 'n' } })),
    ).toBe(base);
    const changes = [
      { ...p, skill_id: 't' },
      { ...p, input: { ...p.input, n: 2 } },
      { ...p, input: { ...p.input, n: '1' } },
      { ...p, input: { ...p.input, list: [1, 'x', null, false, true] } },
      { ...p, input: { ...p.input, list: [[1, 'x', null, true, false]] } },
      { ...p, input: { ...p.input, extra: undefined, more: 1 } },
    ];
    for (const c of changes) expect(fingerprint(env(c))).not.toBe(base);
    expect(fingerprint(env(p, { recipient: 'urn:asap:agent:z' }))).not.toBe(base);
    // The sender is part of the dedupe key, not of the fingerprint.
    expect(fingerprint(env(p, { sender: 'urn:asap:agent:z' }))).toBe(base);
    expect(fingerprint(env(p, { correlation_id: 'x' }))).not.toBe(base);
    expect(fingerprint({ ...env(p), payload_type: 'task.request' })).toBe(base);
  });

  it('skips undefined members and odd values the way JSON does not care about', () => {
    expect(fingerprint(env({ a: 1, b: undefined }))).toBe(fingerprint(env({ a: 1 })));
    expect(fingerprint(env({ f: () => 1 }))).toBe(fingerprint(env({ f: Symbol('x') })));
  });

  it('hashes long strings by length and a sample, in microseconds', () => {
    const big = 'x'.repeat(1_000_000);
    const t0 = performance.now();
    const a = fingerprint(env({ data: big }));
    expect(performance.now() - t0).toBeLessThan(200);
    expect(fingerprint(env({ data: `${big}y` }))).not.toBe(a);
    expect(fingerprint(env({ data: `y${big.slice(1)}` }))).not.toBe(a);
  });
});

describe('idDigest (the dedupe key of a long envelope id)', () => {
  it('is the same for the same id on every call (and node), and tells apart ids that differ anywhere', () => {
    const long = 'x'.repeat(MAX_KEY_ID_LENGTH * 100);
    const digest = idDigest(long);
    expect(digest).toBe(idDigest('x'.repeat(MAX_KEY_ID_LENGTH * 100)));
    expect(digest).toMatch(/^#[0-9a-f]{32}:12800$/);
    const seen = new Set([digest]);
    for (let i = 0; i < long.length; i += 97) seen.add(idDigest(`${long.slice(0, i)}y${long.slice(i + 1)}`));
    seen.add(idDigest(`${long}x`));
    seen.add(idDigest(long.slice(1)));
    expect(seen.size).toBe(2 + Math.ceil(long.length / 97) + 1);
  });
});

describe('principals (§10 identity of a caller)', () => {
  it('reads the id from a string, id or sub; none otherwise', () => {
    expect(principalId('alice')).toBe('alice');
    expect(principalId({ id: 'a', sub: 'b' })).toBe('a');
    expect(principalId({ sub: 'b' })).toBe('b');
    expect(principalId({ token: 'x' })).toBe('');
    expect(principalId(undefined)).toBe('');
    expect(principalId(42)).toBe('');
  });

  it('binds URNs only when the principal lists them', () => {
    expect(boundAgents({ agents: ['urn:asap:agent:a', 7] })).toEqual(new Set(['urn:asap:agent:a']));
    expect(boundAgents({ agents: [] })).toEqual(new Set());
    expect(boundAgents({ agents: 'urn:asap:agent:a' })).toBeUndefined();
    expect(boundAgents({ id: 'x' })).toBeUndefined();
    expect(boundAgents('alice')).toBeUndefined();
    expect(boundAgents(null)).toBeUndefined();
  });
});

describe('TurnBudget (§10 fairness)', () => {
  it('lets a loop run for its slice, then makes every loop wait for the same next turn', async () => {
    const budget = new TurnBudget(20);
    const first = budget.pause(); // no turn measured yet: yield once
    expect(first).toBeInstanceOf(Promise);
    expect(budget.pause()).toBe(first);
    await first;
    expect(budget.pause()).toBeUndefined();
    const start = performance.now();
    while (performance.now() - start < 25) {
      /* a loop that never awaits */
    }
    const next = budget.pause();
    expect(next).toBeInstanceOf(Promise);
    let timerRan = false;
    setTimeout(() => {
      timerRan = true;
    }, 0);
    await new Promise((r) => setTimeout(r, 1));
    await next;
    expect(timerRan).toBe(true);
  });
});
