/**
 * What a Node process loads: runs `node --import record-loads.mjs …args` in the package root and
 * returns the file paths (and `node:` builtins) it loaded, ES modules and CommonJS alike.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const RECORDER = fileURLToPath(new URL('./record-loads.mjs', import.meta.url));

export function loadedModules(args: string[]): string[] {
  const dir = mkdtempSync(join(tmpdir(), 'asap-loads-'));
  const log = join(dir, 'loads.txt');
  try {
    execFileSync(process.execPath, ['--import', RECORDER, ...args], {
      cwd: ROOT,
      env: { ...process.env, ASAP_LOAD_LOG: log },
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 30_000,
    });
    const lines = readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l !== '');
    return [...new Set(lines.map((l) => (l.startsWith('file://') ? fileURLToPath(l) : l)))];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The npm packages among `files` (`node_modules/<name>` or `node_modules/@scope/<name>`). */
export function packagesOf(files: string[]): string[] {
  const names = new Set<string>();
  for (const f of files) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(f.replaceAll('\\', '/'));
    if (m?.[1] !== undefined) names.add(m[1]);
  }
  return [...names].sort();
}

/** The newest modification time under `d`. */
function newest(d: string): number {
  let latest = 0;
  for (const entry of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return latest;
}

/**
 * True when dist/ holds a build at least as new as src/. A missing or stale build makes the caller
 * skip on a developer's machine; under CI (.ci/run builds before testing) it is an error.
 */
export function builtDist(): boolean {
  const built =
    existsSync(join(ROOT, 'dist', 'index.js')) && newest(join(ROOT, 'dist')) >= newest(join(ROOT, 'src'));
  if (!built && process.env.CI === 'true')
    throw new Error('dist/ is missing or older than src/: run npm run build');
  return built;
}
