/**
 * `asap --help` stays fast (issue 18, item 8): parsing the command line loads commander and the
 * command's own small modules only; the server, the client, Redis, jose, prom-client, pino, ws and
 * zod are loaded by the command that runs. Checked on the built command in a child process that
 * records every module it loads, plus a generous bound on the time it takes.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { builtDist, loadedModules, packagesOf, ROOT } from '../support/loaded-modules.js';

const HEAVY = ['@redis/client', 'jose', 'pino', 'prom-client', 'ws', 'zod', 'ulid'];

describe.skipIf(!builtDist())('asap --help (dist/ as built)', () => {
  it.each([[['--help']], [['serve', '--help']], [['send', '--help']], [['--version']]])(
    'asap %j loads commander only, no server, client or redis module',
    (args) => {
      const files = loadedModules(['dist/cli/main.js', ...args]);
      expect(files.some((f) => f.endsWith('dist/cli/commands.js'))).toBe(true);
      expect(packagesOf(files)).toEqual(['commander']);
      for (const layer of ['server/server', 'client/', 'redis/', 'core/', 'cli/demo-agent', 'cli/logger'])
        expect(files.filter((f) => f.includes(`/dist/${layer}`))).toEqual([]);
      expect(HEAVY.filter((p) => packagesOf(files).includes(p))).toEqual([]);
    },
  );

  it('prints the usage quickly (a generous bound: the target is 250 ms on a quiet machine)', () => {
    const started = performance.now();
    const out = execFileSync(process.execPath, ['dist/cli/main.js', '--help'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    expect(out).toMatch(/Usage: asap/);
    expect(out).toMatch(/serve/);
    expect(performance.now() - started).toBeLessThan(2_000);
  });
});
