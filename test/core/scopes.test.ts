/**
 * OAuth2 scopes (src/core/scopes.ts) and their check in the dispatcher: which payload types need
 * which scope, the refusal's form (the reference's -32602 with `data.status_code: 403`, plus
 * `data.required_scope`), and that principals without scopes are never checked.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Dispatcher } from '../../src/core/dispatcher.js';
import type { Instrumentation } from '../../src/core/instrumentation.js';
import { HandlerRegistry } from '../../src/core/registry.js';
import {
  ASAP_SCOPES,
  INSUFFICIENT_SCOPE,
  missingScope,
  parseScopes,
  SCOPE_ADMIN,
  SCOPE_EXECUTE,
  SCOPE_READ,
  scopeFor,
} from '../../src/core/scopes.js';
import { createReply } from '../../src/protocol/envelope.js';
import { ErrorCode } from '../../src/protocol/errors.js';
import { normalizePayloadType } from '../../src/protocol/payloads.js';
import { CLIENT, envelope, FakeSession, notify, RecordingLogger, send, taskRequest } from './helpers.js';

const dispatchers: Dispatcher[] = [];
afterEach(() => {
  for (const d of dispatchers.splice(0)) d.close();
});

function make(instrumentation?: Instrumentation, logger = new RecordingLogger()) {
  const registry = new HandlerRegistry();
  registry.skill('echo', (env) => ({ task_id: env.id, status: 'completed', result: { ok: true } }));
  registry.on('StateQuery', (env) =>
    createReply(env, 'TaskResponse', { task_id: 't', status: 'completed', result: { state: 1 } }),
  );
  const d = new Dispatcher({ registry, logger, instrumentation });
  dispatchers.push(d);
  return { d, logger };
}

describe('the scope table', () => {
  it("names the reference's three scopes", () => {
    expect([SCOPE_READ, SCOPE_EXECUTE, SCOPE_ADMIN]).toEqual(['asap:read', 'asap:execute', 'asap:admin']);
    expect(ASAP_SCOPES).toEqual(['asap:read', 'asap:execute', 'asap:admin']);
    expect(INSUFFICIENT_SCOPE).toBe('Insufficient scope');
  });

  it('needs asap:read to query and asap:execute for everything else, in any spelling', () => {
    for (const t of ['StateQuery', 'state.query', 'state_query', 'McpResourceFetch'])
      expect(scopeFor(normalizePayloadType(t)), t).toBe(SCOPE_READ);
    for (const t of [
      'TaskRequest',
      'task.request',
      'TaskCancel',
      'MessageSend',
      'StateRestore',
      'McpToolCall',
      'ArtifactNotify',
      'TaskUpdate',
      'TaskResponse',
      'com.example.Custom',
    ])
      expect(scopeFor(normalizePayloadType(t)), t).toBe(SCOPE_EXECUTE);
  });

  it('reads `scope` (string or array) and `scp` (array or string), without duplicates or junk', () => {
    expect(parseScopes('asap:read  asap:execute ')).toEqual(['asap:read', 'asap:execute']);
    expect(parseScopes(['asap:read', 7, '', 'asap:read'])).toEqual(['asap:read']);
    expect(parseScopes('openid', ['asap:execute'])).toEqual(['openid', 'asap:execute']);
    expect(parseScopes(undefined, 'asap:admin')).toEqual(['asap:admin']);
    expect(parseScopes(undefined, null, 12, { a: 1 })).toEqual([]);
    expect(parseScopes('')).toEqual([]);
  });

  it('finds the missing scope: required ones first, then the payload type’s', () => {
    const p = { scopes: ['asap:read'] };
    expect(missingScope(p, 'statequery')).toBeUndefined();
    expect(missingScope(p, 'taskrequest')).toBe(SCOPE_EXECUTE);
    expect(missingScope({ ...p, requiredScopes: ['tenant:a'] }, 'statequery')).toBe('tenant:a');
    expect(
      missingScope({ scopes: ['tenant:a', 'asap:execute'], requiredScopes: ['tenant:a'] }, 'taskrequest'),
    ).toBeUndefined();
    // asap:admin stands in for nothing else (the reference checks exact membership).
    expect(missingScope({ scopes: ['asap:admin'] }, 'taskrequest')).toBe(SCOPE_EXECUTE);
    // Not checked: no scopes array, or no principal object at all.
    for (const none of [undefined, null, 'alice', 7, {}, { scopes: 'asap:read' }, { requiredScopes: ['x'] }])
      expect(missingScope(none, 'taskrequest')).toBeUndefined();
  });
});

describe('the dispatcher’s scope check', () => {
  it('refuses an envelope whose type needs a scope the principal lacks, in the reference’s form', async () => {
    const events: unknown[] = [];
    const { d, logger } = make({ rejected: (reason, code) => events.push([reason, code]) });
    const s = new FakeSession(true, { id: 'alice', scopes: ['asap:read'] });
    const a = await send(d, s, taskRequest('echo', {}, { requires_ack: true }), 'r1');
    expect(a).toMatchObject({
      jsonrpc: '2.0',
      id: 'r1',
      error: {
        code: ErrorCode.InvalidParams,
        message: 'Insufficient scope',
        data: { error: 'Insufficient scope', status_code: 403, required_scope: 'asap:execute' },
      },
    });
    // Refused before anything else: no ack but `rejected`, no push indexing, no dedupe claim.
    expect(s.acks().map((x) => [x.payload.status, x.payload.error])).toEqual([
      ['rejected', 'Insufficient scope'],
    ]);
    expect(s.seen).toEqual([]);
    expect(events).toEqual([['auth', ErrorCode.InvalidParams]]);
    expect(logger.entries.find((e) => e.msg === 'Insufficient scope')?.obj).toMatchObject({
      required_scope: 'asap:execute',
      sender: CLIENT,
    });
    // The same session may still do what it holds the scope for.
    const q = await send(d, s, envelope('StateQuery', { task_id: 't' }), 'r2');
    expect(q?.result?.envelope?.payload).toMatchObject({ result: { state: 1 } });
  });

  it('admits what the principal holds the scope for, and a refused id may run once allowed', async () => {
    const { d } = make();
    const env = taskRequest('echo');
    const denied = await send(d, new FakeSession(false, { id: 'bob', scopes: [] }), env);
    expect(denied?.error?.data).toMatchObject({ required_scope: 'asap:execute' });
    const ok = await send(d, new FakeSession(false, { id: 'bob', scopes: ['asap:execute'] }), env);
    expect(ok?.result?.envelope?.payload).toMatchObject({ status: 'completed' });
    const q = await send(d, new FakeSession(false, { id: 'bob', scopes: ['asap:execute'] }), {
      ...envelope('StateQuery', { task_id: 't' }),
    });
    expect(q?.error?.data).toMatchObject({ required_scope: 'asap:read' });
  });

  it('tells the session which scope was missing (the HTTP binding’s 403), notifications included', async () => {
    const { d } = make();
    const seen: string[] = [];
    const s = Object.assign(new FakeSession(false, { scopes: ['asap:execute'], requiredScopes: ['x:y'] }), {
      onInsufficientScope: (scope: string) => seen.push(scope),
    });
    expect(await notify(d, s, taskRequest('echo'))).toBeUndefined();
    const a = await send(d, s, taskRequest('echo'));
    expect(a?.error?.data).toMatchObject({ required_scope: 'x:y' });
    expect(seen).toEqual(['x:y', 'x:y']);
  });

  it('never checks principals without scopes: static tokens, strings, custom objects', async () => {
    const { d } = make();
    for (const principal of [undefined, 'alice', { id: 'static-token' }, { scopes: 'asap:read' }]) {
      const a = await send(d, new FakeSession(false, principal), taskRequest('echo'));
      expect(a?.result?.envelope?.payload, JSON.stringify(principal)).toMatchObject({ status: 'completed' });
    }
  });

  it('checks the sender binding first: a foreign sender is refused as such, whatever the scopes', async () => {
    const { d } = make();
    const s = Object.assign(new FakeSession(false, { scopes: [] }), {
      agents: new Set(['urn:asap:agent:someone-else']),
    });
    const a = await send(d, s, taskRequest('echo'));
    expect(a?.error?.data).toMatchObject({
      error: 'Sender does not match authenticated identity',
      status_code: 403,
    });
  });
});
