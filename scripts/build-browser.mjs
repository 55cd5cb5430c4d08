// Builds the browser bundle of the client: dist/browser/asap-client.js (ESM, minified, self-contained).
// It is what `asap-ts/browser` and, under the `browser` condition, the package root resolve to.
//
// The bundle holds the client (src/client/browser.ts: WebSocketTransport on the global WebSocket,
// HttpTransport on the global fetch, ASAPClient, ConnectionPool) and the protocol layer
// (createEnvelope, validateEnvelope, errors, ...), so a page needs nothing else. Built for browsers:
// - the protocol's schemas are the same definitions as in Node, evaluated against
//   src/protocol/lite-schema.ts instead of zod (same verdicts, values and issues; 5 KB instead
//   of zod's 90), so every envelope a page receives is still validated, payload included;
// - ulid is src/protocol/ulid-lite.ts (its one function envelopes use);
// - what only ever runs in Node is left out (BROWSER_REPLACEMENTS below).
//
// Checks, each failing the build:
// - no Node-only code: esbuild with platform "browser" refuses `node:` imports, the output is
//   searched for `node:` specifiers and `require(` calls, and no package may be bundled (the two
//   runtime dependencies the client uses are replaced, PACKAGE_REPLACEMENTS);
// - size budget: the gzip size of the whole bundle, validation included, must stay within 20 KB.
//
// Usage: node scripts/build-browser.mjs [--quiet] [--out FILE] [--budget BYTES]
//   --out     where to write the bundle (default dist/browser/asap-client.js; size.json goes next to it)
//   --budget  the gzip budget of the bundle in bytes (default 20 KB)
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
const BUDGET_BYTES = Number(arg('--budget') ?? 20 * 1024);
const quiet = args.includes('--quiet');

const posix = (p) => p.split(sep).join('/');

/**
 * Modules of the client's graph replaced in the browser build, by path under src/. Each does nothing
 * in a browser: what it exports there is written here, and the build fails (no matching export) if
 * the real module comes to be used for more.
 */
const BROWSER_REPLACEMENTS = {
  // Answers reverse requests with the handlers of a HandlerRegistry, which the browser build does
  // not export: the server-side engine (tasks, dedupe, replay guard) stays out.
  'core/dispatcher.ts': `export class Dispatcher {
  constructor() { throw new Error('The browser build of asap-ts runs no handlers: reverse requests need the Node build'); }
}`,
  // Hand-written shortcuts for the schemas on the server's hot path: they change speed, never the
  // verdict (test/protocol/fast-path.test.ts), so the browser build lets the schemas decide alone.
  'protocol/fast-path.ts': 'export const quickEnvelope = () => false; export const QUICK_PAYLOADS = {};',
  // `ws`, loaded only where the runtime is Node (src/client/runtime.ts).
  'client/node-websocket.ts': `export function wsWebSocketFactory() { throw new Error('ws is for Node'); }`,
  // The default tracing: OpenTelemetry, loaded only where the runtime is Node. A page passes its own.
  'client/tracing.ts': 'export const defaultClientTracing = () => undefined;',
};

/** Packages replaced by the few lines of them that the client uses. */
const PACKAGE_REPLACEMENTS = {
  // The protocol's schemas: the same definitions, on a lite implementation of zod's API.
  zod: 'protocol/lite-schema.ts',
  // ulid's monotonicFactory.
  ulid: 'protocol/ulid-lite.ts',
};

const browserBuild = {
  name: 'asap-browser',
  setup(b) {
    b.onResolve({ filter: /^(zod|ulid)$/ }, (a) => ({
      path: join(root, 'src', PACKAGE_REPLACEMENTS[a.path]),
    }));
    b.onResolve({ filter: /^\.\.?\// }, (a) => {
      const abs = posix(resolve(a.resolveDir, a.path)).replace(/\.js$/, '.ts');
      const key = Object.keys(BROWSER_REPLACEMENTS).find((k) => abs === posix(join(root, 'src', k)));
      return key === undefined ? undefined : { path: key, namespace: 'browser-replacement' };
    });
    b.onLoad({ filter: /.*/, namespace: 'browser-replacement' }, (a) => ({
      contents: BROWSER_REPLACEMENTS[a.path],
      loader: 'js',
    }));
  },
};

function kb(n) {
  return `${(n / 1024).toFixed(1)} KB`;
}

function fail(message) {
  process.stderr.write(`build-browser: ${message}\n`);
  process.exit(1);
}

mkdirSync(dirname(outfile), { recursive: true });
let result;
try {
  result = await build({
    entryPoints: [join(root, 'src', 'client', 'browser.ts')],
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
    plugins: [browserBuild],
  });
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

// Packages with a "browser" field (ws) bundle without error yet only throw at run time, and the
// others (pino, OpenTelemetry, ...) are not for this bundle: none may come along.
for (const path of Object.keys(result.metafile.inputs)) {
  const m = posix(path).match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m) fail(`the bundle pulls in ${m[1]} (${path}), which is not for browsers`);
}

// Each part's share of the minified output (esbuild's metafile): src/<dir>, the validation, packages.
function partOf(path) {
  const p = posix(path);
  const pkg = p.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (pkg) return pkg[1];
  if (p.endsWith('src/protocol/lite-schema.ts')) return 'validation';
  if (p.startsWith('browser-replacement:')) return 'replaced';
  const dir = p.match(/src\/([^/]+)\//);
  return dir ? dir[1] : p;
}
const parts = {};
const files = {};
for (const [path, info] of Object.entries(Object.values(result.metafile.outputs)[0].inputs)) {
  if (info.bytesInOutput === 0) continue;
  const part = partOf(path);
  parts[part] = (parts[part] ?? 0) + info.bytesInOutput;
  files[posix(path).replace(/^.*?(src\/|node_modules\/)/, '$1')] = info.bytesInOutput;
}
const byBytes = (o) => Object.fromEntries(Object.entries(o).sort((a, b) => b[1] - a[1]));
const raw = Buffer.byteLength(code);
const gzip = gzipSync(code, { level: 9 }).length;

if (!quiet) {
  const rel = posix(relative(root, outfile));
  const shares = Object.entries(byBytes(parts))
    .map(([part, bytes]) => `${part} ${kb(bytes)}`)
    .join(', ');
  process.stdout.write(
    `${rel}: ${kb(raw)} minified, ${kb(gzip)} gzip (budget ${kb(BUDGET_BYTES)}); minified by part: ${shares}\n`,
  );
}
writeFileSync(
  join(dirname(outfile), 'size.json'),
  `${JSON.stringify({ minified: raw, gzip, budget: BUDGET_BYTES, parts: byBytes(parts), files: byBytes(files) }, null, 2)}\n`,
);
if (gzip > BUDGET_BYTES) fail(`over budget: ${kb(gzip)} gzip (budget ${kb(BUDGET_BYTES)})`);

// The bundle is written last, and atomically (a temporary file renamed over the old one): a failed
// check leaves no new bundle, and concurrent builds or a server reading it never see half a file.
const tmp = `${outfile}.${process.pid}.tmp`;
writeFileSync(tmp, result.outputFiles[0].contents);
renameSync(tmp, outfile);

// Types for `asap-ts/browser` and the root's `browser` condition: the declarations tsc writes for
// the entry.
if (outfile === join(root, 'dist', 'browser', 'asap-client.js')) {
  writeFileSync(join(dirname(outfile), 'asap-client.d.ts'), "export * from '../client/browser.js';\n");
}
