/**
 * The public API of the package root (src/index.ts, the "." export): exactly these runtime names, at
 * most 40 of them, so that an accidental export fails here; and importing it (or `asap-ts/client`)
 * changes nothing outside the package: no global, no process listener, no installed default.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { defaultWebSocketFactory } from '../src/client/runtime.js';
import * as root from '../src/index.js';
import { asBrowser } from './support/browser-like.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Every runtime name of the root, sorted. Types are not listed: they vanish at run time. */
const ROOT_EXPORTS = [
  // Facades.
  'ASAPClient',
  'ASAPServer',
  'ConnectionPool',
  'HandlerRegistry',
  'HttpTransport',
  'WebSocketTransport',
  // Protocol.
  'ASAP_VERSION',
  'PAYLOAD_SCHEMAS',
  'createEnvelope',
  'createReply',
  'isPayloadType',
  'isTerminalStatus',
  'validateEnvelope',
  'validateManifest',
  // Errors callers catch.
  'ASAPError',
  'ConnectionError',
  'ErrorCode',
  'LocalErrorCode',
  'ProtocolError',
  'RequestAbortedError',
  'RequestTimeoutError',
  // Seams: the implementation each has here.
  'LocalPushAdapter',
  'MemoryDedupeStore',
  'MemoryNonceStore',
  'MemorySessionStore',
  'browserWebSocketFactory',
  'silentLogger',
  'staticToken',
].sort();

describe('public API of the package root', () => {
  it('exports exactly the facades, the protocol essentials, the errors and the seams', () => {
    expect(Object.keys(root).sort()).toEqual(ROOT_EXPORTS);
  });

  it('stays within 40 runtime names', () => {
    expect(Object.keys(root).length).toBeLessThanOrEqual(40);
  });

  it('keeps the internals out', () => {
    for (const internal of [
      'isPromiseLike',
      'ExpiringMap',
      'PING_FRAME',
      'encodeEnvelopeRequest',
      'decodeFrame',
      'setDefaultWebSocketFactory',
      'defaultWebSocketFactory',
      'nodeWebSocketFactory',
      'Connection',
      'Dispatcher',
    ]) {
      expect(internal in root, internal).toBe(false);
    }
  });

  it('installs no default WebSocket on import: outside Node, with no global one, there is none', async () => {
    await asBrowser(undefined, () => {
      expect(() => defaultWebSocketFactory()).toThrow(/No WebSocket implementation/);
    });
  });

  it('has no side effect on import: no global, process listener or env variable changes', async () => {
    const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) => {
      execFile(
        process.execPath,
        ['--import', 'tsx', 'test/support/import-side-effects.mjs', 'src/index.ts', 'src/client/index.ts'],
        { cwd: ROOT },
        (err, out, stderr) =>
          err === null ? resolve({ stdout: out }) : reject(new Error(`${err.message}\n${stderr}`)),
      );
    });
    const report = JSON.parse(stdout);
    expect(report.exported).toEqual({
      'src/index.ts': ROOT_EXPORTS.length,
      'src/client/index.ts': expect.any(Number),
    });
    expect(report.added).toEqual([]);
    expect(report.removed).toEqual([]);
    expect(report.replaced).toEqual([]);
    expect(report.listeners.after).toEqual(report.listeners.before);
    expect(report.env.after).toEqual(report.env.before);
  }, 30_000);
});
