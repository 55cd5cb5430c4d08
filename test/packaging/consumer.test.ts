/**
 * What a user installs: `npm pack`, the tarball unpacked as node_modules/asap-ts of a fresh project
 * (its dependencies linked from this repository's node_modules, so no network is needed), a strict
 * TypeScript file using the README's API compiled without skipLibCheck, then run.
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
import { fileURLToPath } from 'node:url';
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
const reply: Envelope<object> = await client.task('greet', { name: 'Ada' });
const local: number = LocalErrorCode.RequestTimeout;
void jwtAuthenticator;
console.log(JSON.stringify({ type: reply.payload_type, local }));
await client.close();
await server.close();
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

describe.skipIf(!built)('the published package (dist/ as built)', () => {
  it('compiles in a strict consumer without skipLibCheck, and runs', () => {
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
    expect(JSON.parse(out.trim())).toEqual({ type: 'TaskResponse', local: -31002 });
  }, 120_000);
});
