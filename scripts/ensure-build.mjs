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

// The whole build (the browser bundle too: `asap serve --static examples/browser` serves it).
const markers = ['dist/cli/main.js', 'dist/browser/asap-client.js'];
const stale = markers.some((m) => !existsSync(m) || statSync(m).mtimeMs < newest('src'));
if (stale) {
  process.stderr.write('Building asap-ts...\n');
  execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
}
