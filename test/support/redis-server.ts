/**
 * A real `redis-server` for tests: Debian's binary (or `ASAP_REDIS_SERVER`), on a free port
 * of 127.0.0.1, no persistence unless asked (`args`), its working directory in a fresh temp dir. No mocks of Redis.
 *
 * `stop()` shuts it down (SIGTERM) and removes the temp dir; `kill9()` kills it (SIGKILL) and
 * leaves the port free; `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT); `restart()` starts it
 * again on the same port, with an empty dataset unless `keepData`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RedisServer {
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** True while the process runs. */
  readonly running: boolean;
  /** Graceful shutdown (no save), then removes the temp dir. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL; resolves once the process has exited. Idempotent. */
  kill9(): Promise<void>;
  /** SIGSTOP: the server keeps its sockets but answers nothing (a stalled Redis) until `resume()`. */
  pause(): void;
  /** SIGCONT after `pause()`. */
  resume(): void;
  /**
   * Starts it again on the same port (killing it first if it still runs). The data is lost
   * unless `keepData` is true: a running server then writes an RDB file (SAVE) before it is
   * killed, and the new process loads what is on disk (that RDB file, or the AOF of a server
   * started with `args: ['--appendonly', 'yes']`, which also survives `kill9()`).
   */
  restart(opts?: { keepData?: boolean }): Promise<void>;
}

export interface StartRedisOptions {
  /** Extra `redis-server` arguments, e.g. `['--maxmemory', '1mb']`. */
  args?: string[];
}

const LOOPBACK = '127.0.0.1';

/** The `redis-server` binary, or undefined when this machine has none. */
export function redisServerBinary(): string | undefined {
  const fromEnv = process.env['ASAP_REDIS_SERVER'];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  for (const p of ['/usr/bin/redis-server', '/usr/local/bin/redis-server']) if (existsSync(p)) return p;
  return undefined;
}

/**
 * True when the Redis tests can run here. In CI (`CI` set) a missing binary is a failure, not a
 * skip: use `describe.skipIf(!redisAvailable())`, which is then never true there.
 */
export function redisAvailable(): boolean {
  return redisServerBinary() !== undefined || isCi();
}

const isCi = (): boolean => {
  const ci = process.env['CI'];
  return ci !== undefined && ci !== '' && ci !== 'false' && ci !== '0';
};

/** A port that was free a moment ago: listen on 0, read it, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, LOOPBACK, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Sends one inline command on a fresh socket and resolves with the first reply line (or rejects). */
function inline(port: number, command: string, timeoutMs = 1000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: LOOPBACK, port });
    let buf = '';
    const done = (err: Error | undefined, line?: string): void => {
      clearTimeout(timer);
      sock.destroy();
      if (err !== undefined) reject(err);
      else resolve(line!);
    };
    const timer = setTimeout(() => done(new Error(`redis ${command}: no answer`)), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const end = buf.indexOf('\r\n');
      if (end >= 0) done(undefined, buf.slice(0, end));
    });
    sock.on('error', (err) => done(err));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Starts `redis-server` and resolves once it answers PING. */
export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  const bin = redisServerBinary();
  if (bin === undefined) throw new Error('redis-server not found (apt-get install redis-server)');
  const dir = await mkdtemp(join(tmpdir(), 'asap-redis-'));
  let port = await freePort();
  let child: ChildProcess | undefined;
  let removed = false;

  const spawnOn = async (p: number, keepData: boolean): Promise<void> => {
    if (!keepData) {
      await rm(join(dir, 'dump.rdb'), { force: true });
      await rm(join(dir, 'appendonlydir'), { recursive: true, force: true });
    }
    const args = [
      '--port',
      String(p),
      '--bind',
      LOOPBACK,
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--dbfilename',
      'dump.rdb',
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
      ...(opts.args ?? []),
    ];
    const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (s: string) => {
      stderr = (stderr + s).slice(-2000);
    });
    proc.on('error', () => {});
    child = proc;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`redis-server exited before answering (port ${p}): ${stderr}`);
      }
      try {
        if ((await inline(p, 'PING', 500)) === '+PONG') return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`redis-server did not answer PING on port ${p}: ${stderr}`);
      }
      await sleep(20);
    }
  };

  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    const proc = child;
    child = undefined;
    if (proc === undefined) return;
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill(signal);
      if (signal !== 'SIGKILL') proc.kill('SIGCONT'); // a paused server must run to handle it
    }
    await exited(proc);
  };

  // A port found free may be taken before redis binds it: try a few.
  for (let attempt = 0; ; attempt++) {
    try {
      await spawnOn(port, false);
      break;
    } catch (err) {
      await kill('SIGKILL');
      if (attempt >= 4) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
      port = await freePort();
    }
  }

  const server: RedisServer = {
    url: `redis://${LOOPBACK}:${port}`,
    port,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    async stop() {
      await kill('SIGTERM');
      if (!removed) {
        removed = true;
        await rm(dir, { recursive: true, force: true });
      }
    },
    kill9: () => kill('SIGKILL'),
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    async restart(o = {}) {
      if (o.keepData === true && server.running) {
        await inline(port, 'SAVE', 10_000);
      }
      await kill('SIGKILL');
      // The port was ours a moment ago; if something grabbed it, retry briefly.
      const deadline = Date.now() + 5000;
      for (;;) {
        try {
          await spawnOn(port, o.keepData === true);
          return;
        } catch (err) {
          await kill('SIGKILL');
          if (Date.now() > deadline) throw err;
          await sleep(50);
        }
      }
    },
  };
  return server;
}
