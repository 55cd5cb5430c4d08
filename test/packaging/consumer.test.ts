/**
 * What a user installs: `npm pack`, the tarball unpacked as node_modules/asap-ts of a fresh project
 * (its dependencies linked from this repository's node_modules, so no network is needed), a strict
 * TypeScript file using the README's API compiled without skipLibCheck, then run; and a page importing
 * the root entry bundled by esbuild for browsers (the `browser` condition: the browser build, no
 * Node-only code) and type-checked under that condition.
 */
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'asap-consumer-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MAIN = `import { ASAPClient, ASAPServer, type Envelope, LocalErrorCode } from 'asap-ts';
import { jwtAuthenticator } from 'asap-ts/server';
const server = new ASAPServer({ manifest: { id: 'urn:asap:agent:hello', description: 'Says hello' } });
server.skill('greet', (env) => ({ task_id: env.id, status: 'completed', result: { hi: env.payload.input.name } }));
const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
const client = new ASAPClient(url.replace('http', 'ws') + '/asap/ws', { recipient: 'urn:asap:agent:hello' });
const reply = await client.task<{ hi: string }>('greet', { name: 'Ada' });
const hi: string | undefined = reply.payload.result?.hi;
const status: 'submitted' | 'working' | 'input_required' | 'completed' | 'failed' | 'cancelled' | 'paused' | string =
  reply.payload.status;
const plain: Envelope<object> = reply;
const local: number = LocalErrorCode.RequestTimeout;
void jwtAuthenticator;
console.log(JSON.stringify({ type: plain.payload_type, hi, status, local }));
await client.close();
await server.close();
`;

const PAGE = `import { ASAPClient, createEnvelope, validateEnvelope } from 'asap-ts';
import * as all from 'asap-ts';
const env = createEnvelope({
  sender: 'urn:asap:agent:page',
  recipient: 'urn:asap:agent:hello',
  payload_type: 'TaskRequest',
  payload: { conversation_id: 'c', skill_id: 'greet', input: {} },
});
const bad = validateEnvelope({ ...env, payload: { skill_id: 'greet', input: {} } });
export const result = {
  client: typeof ASAPClient,
  ok: validateEnvelope(env).ok,
  server: (all as Record<string, unknown>).ASAPServer,
  rejected: bad.ok ? 'accepted' : bad.issues[0]?.type,
};
`;

/** The browser build's types: the client and the protocol; the server is not there. */
const PAGE_TYPES = `import { ASAPClient, createEnvelope, type Envelope, PAYLOAD_SCHEMAS, type TaskResponse } from 'asap-ts';
// @ts-expect-error the server is not part of the browser build
import { ASAPServer } from 'asap-ts';
void ASAPServer;
const client = new ASAPClient('wss://agent.example/asap/ws', { recipient: 'urn:asap:agent:hello' });
const env: Envelope<{ conversation_id: string; skill_id: string; input: object }> = createEnvelope({
  sender: 'urn:asap:agent:page',
  recipient: 'urn:asap:agent:hello',
  payload_type: 'TaskRequest',
  payload: { conversation_id: 'c', skill_id: 'greet', input: {} },
});
const parsed = PAYLOAD_SCHEMAS.TaskResponse.safeParse({ task_id: 't', status: 'completed' });
const status: TaskResponse['status'] | undefined = parsed.success ? parsed.data.status : undefined;
void client;
void env;
void status;
`;

/** The newest modification time under `d`. */
function newest(d: string): number {
  let latest = 0;
  for (const entry of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return latest;
}

// The package is dist/: built by `npm run build` (.ci/run builds before testing). A stale or
// missing build is skipped on a developer's machine and fails under CI.
const built =
  existsSync(join(ROOT, 'dist', 'index.d.ts')) && newest(join(ROOT, 'dist')) >= newest(join(ROOT, 'src'));
if (!built && process.env.CI === 'true')
  throw new Error('dist/ is missing or older than src/: run npm run build');

/** `npm pack`, the tarball unpacked as node_modules/asap-ts of the consumer project (once). */
let installed = false;
function install(): void {
  if (installed) return;
  execFileSync('npm', ['pack', '--pack-destination', dir, '--ignore-scripts'], {
    cwd: ROOT,
    stdio: 'ignore',
  });
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'))!;
  const pkgDir = join(dir, 'node_modules', 'asap-ts');
  mkdirSync(pkgDir, { recursive: true });
  execFileSync('tar', ['-xzf', join(dir, tarball), '-C', pkgDir, '--strip-components=1']);
  // Its dependencies, and the consumer's compiler and Node types, from this repository.
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>;
  };
  const links = [...Object.keys(pkg.dependencies), 'typescript', '@types/node'];
  for (const name of links) {
    const target = join(dir, 'node_modules', name);
    mkdirSync(join(target, '..'), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules', name), target, 'dir');
  }
  // Dependencies of dependencies resolve from here (the repository's flat node_modules).
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({ name: 'consumer', type: 'module', private: true }),
  );
  installed = true;
}

describe.skipIf(!built)('the published package (dist/ as built)', () => {
  it('compiles in a strict consumer without skipLibCheck, and runs', () => {
    install();
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          outDir: 'out',
          types: ['node'],
        },
        files: ['main.ts'],
      }),
    );
    writeFileSync(join(dir, 'main.ts'), MAIN);
    execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], {
      cwd: dir,
      encoding: 'utf8',
    });
    const out = execFileSync(process.execPath, [join(dir, 'out', 'main.js')], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...process.env, NODE_PATH: join(ROOT, 'node_modules') },
    });
    expect(JSON.parse(out.trim())).toEqual({
      type: 'TaskResponse',
      hi: 'Ada',
      status: 'completed',
      local: -31002,
    });
  }, 120_000);

  it('bundles for browsers from the root entry: the browser build, no Node-only code, no server', async () => {
    install();
    writeFileSync(join(dir, 'page.ts'), PAGE);
    const { build } = await import('esbuild');
    const r = await build({
      entryPoints: [join(dir, 'page.ts')],
      absWorkingDir: dir,
      bundle: true,
      platform: 'browser',
      format: 'esm',
      metafile: true,
      write: false,
      logLevel: 'silent',
    });
    const inputs = Object.keys(r.metafile.inputs);
    expect(inputs.sort()).toEqual(['node_modules/asap-ts/dist/browser/asap-client.js', 'page.ts']);
    const code = r.outputFiles[0]!.text;
    expect(code).not.toMatch(/["']node:/);
    expect(code).not.toMatch(/\brequire\(/);
    expect(code).not.toMatch(/ASAPServer|process\.env/);
    // It runs where only web platform APIs are assumed (here Node's, which has them).
    writeFileSync(join(dir, 'page.mjs'), code);
    const page = await import(pathToFileURL(join(dir, 'page.mjs')).href);
    expect(page.result).toEqual({ client: 'function', ok: true, server: undefined, rejected: 'missing' });
  }, 120_000);

  it('types the browser build under the browser condition', () => {
    install();
    writeFileSync(join(dir, 'page-types.ts'), PAGE_TYPES);
    writeFileSync(
      join(dir, 'tsconfig.browser.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          module: 'ESNext',
          moduleResolution: 'Bundler',
          customConditions: ['browser'],
          target: 'ES2022',
          lib: ['ES2022', 'DOM'],
          types: [],
          noEmit: true,
        },
        files: ['page-types.ts'],
      }),
    );
    execFileSync(
      process.execPath,
      [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.browser.json')],
      { cwd: dir, encoding: 'utf8' },
    );
  }, 120_000);
});
