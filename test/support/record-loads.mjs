// Records every module a Node process loads, for tests that check what an entry point pulls in:
//   ASAP_LOAD_LOG=/tmp/file node --import ./test/support/record-loads.mjs <script> …
// Each ES module resolution (through a resolve hook) and, at exit, every CommonJS module in the
// require cache, is appended to the file as one URL or path per line. Node >= 20.6 (module.register).
import { appendFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';

const log = process.env.ASAP_LOAD_LOG;
if (log === undefined) throw new Error('record-loads.mjs: set ASAP_LOAD_LOG to a file path');
register('./record-loads-hooks.mjs', import.meta.url, { data: { log } });
const cache = createRequire(import.meta.url).cache;
process.on('exit', () => {
  appendFileSync(
    log,
    Object.keys(cache)
      .map((p) => `${p}\n`)
      .join(''),
  );
});
