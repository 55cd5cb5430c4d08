import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { type RedisServer, redisAvailable, startRedis } from '../support/redis-server.js';

function send(port: number, cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${cmd}\r\n`));
    s.on('data', (d: string) => {
      s.destroy();
      resolve(d.trim());
    });
    s.on('error', reject);
  });
}

describe.skipIf(!redisAvailable())('test/support/redis-server', () => {
  let started: RedisServer | undefined;
  afterAll(() => started?.stop());

  it('starts, kill9s, restarts on the same port, keeps data when told', async () => {
    const srv = await startRedis();
    started = srv;
    expect(srv.url).toBe(`redis://127.0.0.1:${srv.port}`);
    expect(await send(srv.port, 'PING')).toBe('+PONG');
    await srv.kill9();
    expect(srv.running).toBe(false);
    await expect(send(srv.port, 'PING')).rejects.toThrow();
    await srv.restart();
    expect(srv.running).toBe(true);
    expect(await send(srv.port, 'PING')).toBe('+PONG');
    await send(srv.port, 'SET k v');
    await srv.restart({ keepData: true });
    expect(await send(srv.port, 'GET k')).toBe('$1\r\nv');
    await srv.restart();
    expect(await send(srv.port, 'GET k')).toBe('$-1');
    await srv.stop();
    await srv.stop();
    expect(srv.running).toBe(false);
  });

  it('with AOF, keeps its data across kill9 and restart({ keepData: true })', async () => {
    const aof = await startRedis({ args: ['--appendonly', 'yes', '--appendfsync', 'always'] });
    started = aof;
    await send(aof.port, 'SET k durable');
    await aof.kill9();
    await aof.restart({ keepData: true });
    expect(await send(aof.port, 'GET k')).toBe('$7\r\ndurable');
    await aof.restart();
    expect(await send(aof.port, 'GET k')).toBe('$-1');
    await aof.stop();
    expect(aof.running).toBe(false);
  });
});
