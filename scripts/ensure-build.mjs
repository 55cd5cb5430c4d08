// Builds dist/ when it is missing or older than src/, so `npm start` and `npm run demo` work on a fresh clone.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function newest(dir) {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return latest;
}

const marker = 'dist/cli/main.js';
if (!existsSync(marker) || statSync(marker).mtimeMs < newest('src')) {
  process.stderr.write('Building asap-ts...\n');
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
}
