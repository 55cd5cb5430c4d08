/**
 * Helpers for the end-to-end tests of the `asap` command (../shared/spec/demo-agent.md).
 *
 * - `runCli` / `spawnCli` / `startServe` run the real command as a child process from the
 *   TypeScript sources (`node --import tsx src/cli/main.ts …`).
 * - `runInProcess` calls `run(argv)` of src/cli/commands.ts in this process (so v8 coverage sees it),
 *   capturing what it writes to process.stdout / process.stderr.
 * - `referenceValidators` compiles the reference JSON Schemas of the Python package with Ajv, or
 *   returns undefined (with a warning) when the folder is absent.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type AnySchemaObject, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { expect } from 'vitest';
import { run } from '../../src/cli/commands.js';
import { SCHEMA_DIR } from '../support/reference-schemas.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = 'src/cli/main.ts';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves once the process has exited and its output streams are closed. */
  exited: Promise<Exit>;
  /** True until `exited` resolved. */
  running(): boolean;
}

/** Spawns `node --import tsx <script> …args` in the package root. */
export function spawnNode(script: string, args: string[]): CliProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  let alive = true;
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  // 'close' fires after 'exit' and after stdio ended, so the captured output is complete.
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => {
      alive = false;
      resolve({ code, signal });
    });
  });
  return { child, stdout: () => out, stderr: () => err, exited, running: () => alive };
}

export function spawnCli(args: string[]): CliProcess {
  return spawnNode(MAIN, args);
}

export interface CliResult extends Exit {
  stdout: string;
  stderr: string;
}

/** Runs the command to completion; kills it (SIGKILL) if it runs longer than `timeoutMs`. */
export async function runCli(args: string[], timeoutMs = 15_000): Promise<CliResult> {
  const p = spawnCli(args);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), timeoutMs);
  const exit = await p.exited;
  clearTimeout(timer);
  return { ...exit, stdout: p.stdout(), stderr: p.stderr() };
}

export const LISTEN_LINE =
  /^ASAP agent listening on http:\/\/127\.0\.0\.1:(\d+) \(ws:\/\/127\.0\.0\.1:(\d+)\/asap\/ws\)$/;

export interface Served extends CliProcess {
  port: number;
  http: string;
  ws: string;
  /** Sends `signal` (if still running) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

/** Starts `asap serve --port 0 …args` and waits for its listening line. */
export async function startServe(args: string[] = [], timeoutMs = 15_000): Promise<Served> {
  const p = spawnCli(['serve', '--port', '0', ...args]);
  const line = await waitFor(
    () =>
      p
        .stdout()
        .split('\n')
        .find((l) => LISTEN_LINE.test(l)),
    timeoutMs,
    () => `no listening line; stdout=${p.stdout()} stderr=${p.stderr()}`,
    () => !p.running(),
  );
  const m = LISTEN_LINE.exec(line) as RegExpExecArray;
  const port = Number(m[1]);
  return {
    ...p,
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/asap/ws`,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (p.running()) p.child.kill(signal);
      const timer = setTimeout(() => p.child.kill('SIGKILL'), 15_000);
      const exit = await p.exited;
      clearTimeout(timer);
      return exit;
    },
  };
}

/** Polls `probe` every 20 ms until it returns a value other than undefined, null or false. */
export async function waitFor<T>(
  probe: () => T | undefined | null | false,
  timeoutMs = 5_000,
  what: () => string = () => 'condition',
  abort: () => boolean = () => false,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== null && v !== false) return v;
    if (abort() || Date.now() > deadline) {
      // One last look: the abort condition may have raced with the value.
      const last = probe();
      if (last !== undefined && last !== null && last !== false) return last;
      throw new Error(`waitFor timed out: ${what()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export interface InProcessResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
}

export interface Captured {
  stdout(): string;
  stderr(): string;
}

/**
 * Runs `fn` with process.stdout.write and process.stderr.write temporarily replaced by collectors
 * (restored afterwards, even on error). Output written straight to fd 1 / fd 2 is not captured.
 */
export async function withCapturedOutput<T>(fn: (out: Captured) => Promise<T>): Promise<T> {
  let stdout = '';
  let stderr = '';
  const origOut = process.stdout.write;
  const origErr = process.stderr.write;
  const collector =
    (append: (s: string) => void) =>
    (chunk: unknown, ...rest: unknown[]): boolean => {
      append(typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8'));
      const cb = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      cb?.();
      return true;
    };
  process.stdout.write = collector((s) => {
    stdout += s;
  }) as typeof process.stdout.write;
  process.stderr.write = collector((s) => {
    stderr += s;
  }) as typeof process.stderr.write;
  try {
    return await fn({ stdout: () => stdout, stderr: () => stderr });
  } finally {
    process.stdout.write = origOut;
    process.stderr.write = origErr;
  }
}

/**
 * Calls `run(['node', 'asap', …args])` of src/cli/commands.ts in this process, capturing its output.
 * `onStarted` runs while the capture is active, with live access to the output so far.
 */
export function runInProcess(
  args: string[],
  onStarted?: (out: Captured) => Promise<void>,
): Promise<InProcessResult> {
  return withCapturedOutput(async (out) => {
    const running = run(['node', 'asap', ...args]);
    if (onStarted !== undefined) await onStarted(out);
    const code = await running;
    return { code, stdout: out.stdout(), stderr: out.stderr() };
  });
}

export interface ReferenceValidators {
  envelope: ValidateFunction;
  manifest: ValidateFunction;
}

let cached: ReferenceValidators | undefined | null = null;

/** The reference JSON Schemas (test/support/reference-schemas.ts) compiled, or undefined when absent. */
export function referenceValidators(): ReferenceValidators | undefined {
  if (cached !== null) return cached;
  if (!existsSync(fileURLToPath(new URL('envelope.schema.json', SCHEMA_DIR)))) {
    console.warn(
      `[cli] reference schemas not found at ${fileURLToPath(SCHEMA_DIR)}: reference-schema checks were SKIPPED`,
    );
    cached = undefined;
    return cached;
  }
  const load = (rel: string) => JSON.parse(readFileSync(new URL(rel, SCHEMA_DIR), 'utf8')) as AnySchemaObject;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  cached = {
    envelope: ajv.compile(load('envelope.schema.json')),
    manifest: ajv.compile(load('entities/manifest.schema.json')),
  };
  return cached;
}

/** Asserts `value` validates against the reference schema `which` (no-op when the schemas are absent). */
export function expectReferenceValid(which: keyof ReferenceValidators, value: unknown): void {
  const v = referenceValidators();
  if (v === undefined) return;
  const ok = v[which](value);
  expect(ok, JSON.stringify(v[which].errors, null, 2)).toBe(true);
}

/** Parses a stderr made of pino JSON lines plus plain text lines; returns the JSON ones. */
export function jsonLogLines(stderr: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    out.push(JSON.parse(line) as Record<string, unknown>);
  }
  return out;
}
