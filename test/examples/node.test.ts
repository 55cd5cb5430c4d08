/**
 * examples/node runs as a user would run it (`node examples/node/run.mjs`, against the built
 * package): it exits 0 and prints each step: a task with its push, a stream, both ways to cancel,
 * and a reconnect after the server restarts on the same port.
 */
import { execFile } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { builtDist, ROOT } from '../support/loaded-modules.js';

function runExample(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['examples/node/run.mjs'],
      { cwd: ROOT, timeout: 60_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr });
      },
    );
  });
}

describe.skipIf(!builtDist())('examples/node (dist/ as built)', () => {
  it('runs to the end: push, stream, cancel by signal and by id, reconnect after a restart', async () => {
    const r = await runExample();
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    const expected = [
      /^agent listening on ws:\/\/127\.0\.0\.1:(\d+)\/asap\/ws$/,
      /^push TaskUpdate: looking up a greeting$/,
      /^greet -> completed: Hello, Ada!$/,
      /^count-to streamed 1, 2, 3$/,
      /^work aborted by its signal: RequestAbortedError$/,
      /^client\.cancel -> cancelled$/,
      /^server cancelled 2 tasks$/,
      /^server stopped$/,
      /^server restarted on port \d+$/,
      /^client reconnected after \d+ attempt\(s\)$/,
      /^push TaskUpdate: looking up a greeting$/,
      /^greet after restart -> completed: Hello, Grace!$/,
      /^example done$/,
    ];
    expect(lines).toHaveLength(expected.length);
    for (const [i, re] of expected.entries()) expect(lines[i]).toMatch(re);
    // The same port before and after the restart.
    const port = /:(\d+)\//.exec(lines[0] ?? '')?.[1];
    expect(lines[8]).toBe(`server restarted on port ${port}`);
  }, 70_000);
});
