/** Builds dist/browser/asap-client.js (scripts/build-browser.mjs) when it is missing or older than src/. */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BUNDLE = join(ROOT, 'dist', 'browser', 'asap-client.js');

function newestMtime(dir: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return latest;
}

/** The build writes atomically, so test files that call this at the same time are safe. */
export function ensureBundle(): void {
  if (existsSync(BUNDLE) && statSync(BUNDLE).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'build-browser.mjs'), '--quiet'], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}
