/**
 * ASAPClient retries what the peer answers as recoverable (asap-wire.md §11), with the same
 * envelope, so the server's dedupe makes it safe; what is not recoverable, or a local failure, is
 * not retried.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ASAPClient } from '../../src/client/client.js';
import { ASAPError } from '../../src/protocol/errors.js';
import { type Demo, startDemo } from './helpers.js';

const demos: Demo[] = [];
const clients: ASAPClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(demos.splice(0).map((d) => d.server.close()));
});

/** A demo agent whose `busy` skill answers -32040 (retry after 60 ms) `failures` times, then completes. */
async function busyAgent(failures: number) {
  const d = await startDemo();
  demos.push(d);
  const seen: { id: string; at: number }[] = [];
  d.server.skill('busy', (env) => {
    seen.push({ id: env.id, at: Date.now() });
    if (seen.length <= failures)
      throw ASAPError.resourceExhausted('Busy; retry later', { retry_after_ms: 60 });
    return { task_id: env.id, status: 'completed', result: { attempts: seen.length } };
  });
  d.server.skill('broken', () => {
    throw ASAPError.invalidParams([], 'never works');
  });
  return { d, seen };
}

describe('ASAPClient retry policy', () => {
  it.each(['http', 'ws'] as const)(
    '%s: retries a recoverable answer with the same envelope, after retry_after_ms',
    async (kind) => {
      const { d, seen } = await busyAgent(2);
      const client = new ASAPClient(kind === 'http' ? d.rpc : d.ws);
      clients.push(client);
      const reply = await client.task<{ attempts: number }>('busy');
      expect(reply.payload.result?.attempts).toBe(3);
      expect(new Set(seen.map((s) => s.id)).size).toBe(1);
      expect(seen[1]!.at - seen[0]!.at).toBeGreaterThanOrEqual(55);
    },
  );

  it('gives up after `attempts`, and never retries what is not recoverable', async () => {
    const { d, seen } = await busyAgent(10);
    const client = new ASAPClient(d.rpc, { retry: { attempts: 1 } });
    clients.push(client);
    await expect(client.task('busy')).rejects.toMatchObject({ code: -32040 });
    expect(seen).toHaveLength(2);
    const broken = await client.task('broken').catch((e: unknown) => e);
    expect(broken).toMatchObject({ code: -32602 });
    const off = new ASAPClient(d.rpc, { retry: false });
    clients.push(off);
    await expect(off.task('busy')).rejects.toMatchObject({ code: -32040 });
    expect(seen).toHaveLength(3);
  });

  it('an abort during the wait ends it', async () => {
    const { d } = await busyAgent(10);
    const client = new ASAPClient(d.rpc, { retry: { attempts: 5, baseMs: 10_000 } });
    clients.push(client);
    const ac = new AbortController();
    const started = Date.now();
    const pending = client.task('busy', {}, { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await expect(pending).rejects.toBeInstanceOf(ASAPError);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
