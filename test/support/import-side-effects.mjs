// Imports the given modules in a fresh process and prints, as JSON, what that changed outside them:
// properties of globalThis added, removed or replaced, process listeners, and process.env keys.
//   node --import tsx import-side-effects.mjs <module path> …
// The runtime dependencies are imported first: zod keeps its registry on globalThis, which any user of
// zod gets; only what the modules themselves do is reported.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

await import('zod');
await import('ws');
await import('ulid');
// And a TypeScript file without imports, so that whatever the loader (tsx) sets up happens before.
await import(new URL('./browser-like.ts', import.meta.url).href);

function globals() {
  const out = new Map();
  for (const key of Reflect.ownKeys(globalThis)) {
    out.set(key, Object.getOwnPropertyDescriptor(globalThis, key));
  }
  return out;
}

function sameDescriptor(a, b) {
  return Object.is(a.value, b.value) && a.get === b.get && a.set === b.set;
}

function listeners() {
  return Object.fromEntries(process.eventNames().map((name) => [String(name), process.listenerCount(name)]));
}

const before = { globals: globals(), listeners: listeners(), env: Object.keys(process.env).sort() };
const exported = {};
for (const path of process.argv.slice(2)) {
  exported[path] = Object.keys(await import(pathToFileURL(resolve(path)).href)).length;
}
const after = { globals: globals(), listeners: listeners(), env: Object.keys(process.env).sort() };

const name = (key) => String(key);
process.stdout.write(
  JSON.stringify({
    exported,
    added: [...after.globals.keys()].filter((k) => !before.globals.has(k)).map(name),
    removed: [...before.globals.keys()].filter((k) => !after.globals.has(k)).map(name),
    replaced: [...after.globals.keys()]
      .filter((k) => before.globals.has(k) && !sameDescriptor(before.globals.get(k), after.globals.get(k)))
      .map(name),
    listeners: { before: before.listeners, after: after.listeners },
    env: { before: before.env, after: after.env },
  }),
);
