// Builds the browser bundle of the client: dist/browser/asap-client.js (ESM, minified, zod and ulid inside).
//
// The bundle holds the client (src/client/browser.ts: WebSocketTransport on the global WebSocket,
// HttpTransport on the global fetch, ASAPClient, ConnectionPool) and the protocol layer
// (createEnvelope, validateEnvelope, errors, ...), so a page needs nothing else.
//
// Checks, each failing the build:
// - no Node-only code: esbuild with platform "browser" refuses `node:` imports, and the output is
//   searched for `node:` specifiers and `require(` calls;
// - size budget: the gzip size of the bundle without zod's share must stay under 30 KB (zod is a
//   schema library a page may share with its own code, so it is reported but not counted).
//
// Usage: node scripts/build-browser.mjs [--quiet] [--out FILE] [--budget BYTES]
//   --out     where to write the bundle (default dist/browser/asap-client.js; size.json goes next to it)
//   --budget  the gzip budget without zod in bytes (default 30 KB)
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
function arg(name) {
  const i = args.indexOf(name);
  return i === -1 ? undefined : args[i + 1];
}
const outfile = resolve(arg('--out') ?? join(root, 'dist', 'browser', 'asap-client.js'));
const BUDGET_BYTES = Number(arg('--budget') ?? 30 * 1024);
const quiet = args.includes('--quiet');

const entry = `export * from './src/client/browser.ts';
`;

function kb(n) {
  return `${(n / 1024).toFixed(1)} KB`;
}

function fail(message) {
  process.stderr.write(`build-browser: ${message}\n`);
  process.exit(1);
}

mkdirSync(dirname(outfile), { recursive: true });
const options = {
  stdin: { contents: entry, resolveDir: root, sourcefile: 'asap-client-entry.ts', loader: 'ts' },
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  metafile: true,
  outfile,
  write: false,
  logLevel: 'silent',
};
let result;
try {
  result = await build(options);
} catch (err) {
  // esbuild reports every `node:` import (and any module it cannot resolve for browsers) here.
  fail(`esbuild failed:\n${err.message}`);
}

const code = result.outputFiles[0].text;
const nodeOnly = [
  /["']node:[a-z_/]+["']/,
  /\brequire\(\s*["']ws["']\s*\)/,
  /\brequire\(\s*["'][^"']+["']\s*\)/,
  /ws does not work in the browser/,
];
for (const re of nodeOnly) {
  const m = code.match(re);
  if (m) fail(`the bundle contains Node-only code: ${m[0]}`);
}

// Packages with a "browser" field (ws) bundle without error yet only throw at run time: allow only
// the two runtime dependencies that work in browsers.
const allowed = new Set(['zod', 'ulid']);
for (const path of Object.keys(result.metafile.inputs)) {
  const m = path
    .split(/[\\/]/)
    .join('/')
    .match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m && !allowed.has(m[1])) fail(`the bundle pulls in ${m[1]} (${path}), which is not for browsers`);
}

// Each input's share of the output (esbuild's metafile), to tell zod's bytes from ours.
const output = Object.values(result.metafile.outputs)[0];
let total = 0;
let zod = 0;
for (const [path, info] of Object.entries(output.inputs)) {
  total += info.bytesInOutput;
  if (path.split(/[\\/]/).join('/').includes('node_modules/zod/')) zod += info.bytesInOutput;
}
const raw = Buffer.byteLength(code);
const gzip = gzipSync(code, { level: 9 }).length;
// Gzip sizes of the parts are not additive: estimate the part without zod by its share of the output
// bytes, and measure it too, with the same build leaving zod out (imported, not bundled).
const gzipWithoutZodEstimate = Math.round(gzip * ((total - zod) / total));
const withoutZod = await build({ ...options, external: ['zod'] });
const gzipWithoutZodMeasured = gzipSync(withoutZod.outputFiles[0].contents, { level: 9 }).length;
const gzipWithoutZod = Math.max(gzipWithoutZodEstimate, gzipWithoutZodMeasured);

if (!quiet) {
  const rel = relative(root, outfile).split(sep).join('/');
  process.stdout.write(
    `${rel}: ${kb(raw)} minified, ${kb(gzip)} gzip; zod's share ${kb(zod)} minified; ` +
      `without zod: ${kb(gzipWithoutZodEstimate)} gzip estimated from the metafile, ` +
      `${kb(gzipWithoutZodMeasured)} gzip measured (budget ${kb(BUDGET_BYTES)})\n`,
  );
}
writeFileSync(
  join(dirname(outfile), 'size.json'),
  `${JSON.stringify(
    {
      minified: raw,
      gzip,
      zodMinified: zod,
      gzipWithoutZodEstimate,
      gzipWithoutZodMeasured,
      budget: BUDGET_BYTES,
    },
    null,
    2,
  )}\n`,
);
if (gzipWithoutZod >= BUDGET_BYTES) {
  fail(`over budget: ${kb(gzipWithoutZod)} gzip without zod (budget ${kb(BUDGET_BYTES)})`);
}

// The bundle is written last, and atomically (a temporary file renamed over the old one): a failed
// check leaves no new bundle, and concurrent builds or a server reading it never see half a file.
const tmp = `${outfile}.${process.pid}.tmp`;
writeFileSync(tmp, result.outputFiles[0].contents);
renameSync(tmp, outfile);

// Types for the `asap-ts/browser` export: the declarations tsc writes for the same modules.
if (outfile === join(root, 'dist', 'browser', 'asap-client.js')) {
  writeFileSync(
    join(dirname(outfile), 'asap-client.d.ts'),
    "export * from '../client/browser.js';\nexport * from '../protocol/index.js';\n",
  );
}
