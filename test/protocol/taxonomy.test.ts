/** asap-wire.md §11 "Error data taxonomy": the one mapping, and every encoder going through it. */
import { describe, expect, it } from 'vitest';
import {
  ASAPError,
  ConnectionError,
  ERROR_TAXONOMY,
  ErrorCode,
  encodeError,
  GENERIC_TAXONOMY,
  RequestTimeoutError,
  taxonomyOf,
  withTaxonomy,
} from '../../src/protocol/index.js';

const TABLE: [number, string, boolean][] = [
  [-32700, 'asap:rpc/remote_error', false],
  [-32600, 'asap:rpc/remote_error', false],
  [-32601, 'asap:rpc/remote_error', false],
  [-32602, 'asap:protocol/malformed_envelope', false],
  [-32603, 'asap:rpc/remote_error', false],
  [-32000, 'asap:protocol/invalid_state', false],
  [-32002, 'asap:protocol/invalid_timestamp', false],
  [-32003, 'asap:protocol/invalid_nonce', false],
  [-32004, 'asap:auth/unauthorized', false],
  [-32010, 'asap:task/not_found', false],
  [-32011, 'asap:transport/circuit_open', true],
  [-32012, 'asap:transport/handler_not_found', false],
  [-32033, 'asap:transport/timeout', true],
  [-32040, 'asap:resource/exhausted', true],
];

describe('error taxonomy', () => {
  it('covers every code of §3, and nothing else', () => {
    expect(Object.keys(ERROR_TAXONOMY).map(Number).sort()).toEqual(Object.values(ErrorCode).sort());
    expect(TABLE.map(([c]) => c).sort()).toEqual(Object.values(ErrorCode).sort());
  });

  it.each(TABLE)('%i → %s, recoverable %s, on every encoder', (code, taxonomy, recoverable) => {
    expect(taxonomyOf(code)).toEqual({ asap_taxonomy_code: taxonomy, recoverable });
    const err = new ASAPError(code, 'm', { extra: 1 });
    const data = { extra: 1, recoverable, asap_taxonomy_code: taxonomy };
    expect(err.toWire()).toEqual({ code, message: 'm', data });
    expect(JSON.parse(encodeError(1, err)).error.data).toEqual(data);
    expect(JSON.parse(encodeError(null, { code, message: 'm', data: { extra: 1 } })).error.data).toEqual(
      data,
    );
    // Its own form (for logs and callers) stays as it was.
    expect(err.toJSON()).toEqual({ code, message: 'm', data: { extra: 1 } });
  });

  it('gives codes outside the table the generic entry', () => {
    expect(taxonomyOf(-32050)).toBe(GENERIC_TAXONOMY);
    expect(taxonomyOf(1)).toEqual({ asap_taxonomy_code: 'asap:rpc/remote_error', recoverable: false });
  });

  it('keeps data as it is, wraps what is not an object, and lets well-typed values already there win', () => {
    expect(withTaxonomy({ code: -32603, message: 'x' }).data).toEqual(GENERIC_TAXONOMY);
    expect(withTaxonomy({ code: -32603, message: 'x', data: null }).data).toEqual(GENERIC_TAXONOMY);
    expect(withTaxonomy({ code: -32603, message: 'x', data: 'why' }).data).toEqual({
      value: 'why',
      ...GENERIC_TAXONOMY,
    });
    expect(withTaxonomy({ code: -32040, message: 'x', data: [1, 2] }).data).toEqual({
      value: [1, 2],
      recoverable: true,
      asap_taxonomy_code: 'asap:resource/exhausted',
    });
    const relayed = { recoverable: true, asap_taxonomy_code: 'asap:transport/thread_pool_exhausted' };
    expect(withTaxonomy({ code: -32603, message: 'x', data: relayed }).data).toEqual(relayed);
    expect(
      withTaxonomy({ code: -32033, message: 'x', data: { recoverable: 'yes', asap_taxonomy_code: 7 } }).data,
    ).toEqual({
      recoverable: true,
      asap_taxonomy_code: 'asap:transport/timeout',
    });
    const once = withTaxonomy({ code: -32040, message: 'x', data: { retry_after_ms: 10 } });
    expect(withTaxonomy(once)).toEqual(once);
    const original = { retry_after_ms: 10 };
    withTaxonomy({ code: -32040, message: 'x', data: original });
    expect(original).toEqual({ retry_after_ms: 10 });
  });

  it('maps a local error by its wire form', () => {
    expect(new RequestTimeoutError('late', { url: 'u' }).toWire()).toEqual({
      code: -32033,
      message: 'Handler timed out',
      data: { recoverable: true, asap_taxonomy_code: 'asap:transport/timeout' },
    });
    expect(new ConnectionError('down').toWire()).toEqual({
      code: -32603,
      message: 'Internal error',
      data: GENERIC_TAXONOMY,
    });
  });
});
