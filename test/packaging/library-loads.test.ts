/**
 * A library user loads neither pino nor commander (issue 18, item 6): both serve only the `asap`
 * command. They stay `dependencies` (the command must run after `npm i asap-ts`), so "pulls neither"
 * means the library's entry points never load them. Checked on the built entries in a child process
 * that records every module it loads.
 */
import { describe, expect, it } from 'vitest';
import { builtDist, loadedModules, packagesOf } from '../support/loaded-modules.js';

const ENTRIES = ['index', 'client/index', 'server/index', 'protocol/index', 'core/index', 'redis/index'];

describe.skipIf(!builtDist())('the library entries (dist/ as built)', () => {
  it.each(ENTRIES)('import of dist/%s.js loads neither pino nor commander, nor any CLI module', (entry) => {
    const files = loadedModules(['--input-type=module', '-e', `await import('./dist/${entry}.js');`]);
    // The recorder saw the entry itself: an empty list would prove nothing.
    expect(files.some((f) => f.endsWith(`dist/${entry}.js`))).toBe(true);
    const packages = packagesOf(files);
    expect(packages).not.toContain('pino');
    expect(packages).not.toContain('commander');
    expect(files.filter((f) => f.includes('/dist/cli/'))).toEqual([]);
  });

  it('the root entry with a client and a server in use loads neither', () => {
    const script = `
      const { ASAPClient, ASAPServer } = await import('./dist/index.js');
      const server = new ASAPServer({ manifest: { id: 'urn:asap:agent:loads' } });
      server.skill('echo', (env) => ({ task_id: env.id, status: 'completed', result: env.payload.input }));
      const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
      const client = new ASAPClient('ws://127.0.0.1:' + port + '/asap/ws', { recipient: 'urn:asap:agent:loads' });
      const reply = await client.task('echo', { a: 1 });
      if (reply.payload.status !== 'completed') process.exit(3);
      await client.close();
      await server.close();`;
    const packages = packagesOf(loadedModules(['--input-type=module', '-e', script]));
    expect(packages).toContain('ws');
    expect(packages).not.toContain('pino');
    expect(packages).not.toContain('commander');
  });
});
