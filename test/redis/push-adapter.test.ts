import { createClient, type RedisClientType } from '@redis/client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/logger.js';
import { createEnvelope, type Envelope } from '../../src/protocol/envelope.js';
import {
  ASAPError,
  ConnectionError,
  ProtocolError,
  RequestAbortedError,
  RequestTimeoutError,
} from '../../src/protocol/errors.js';
import { RedisPushAdapter, type RedisPushAdapterOptions } from '../../src/redis/push-adapter.js';
import { LocalPushAdapter, type PushTarget } from '../../src/server/push-adapter.js';
import { type RedisServer, redisAvailable, startRedis } from '../support/redis-server.js';

/** A connection as the adapter sees one: records what it got, then settles as told. */
class Target implements PushTarget {
  private static nextId = 1;
  readonly id = Target.nextId++;
  readonly got: Envelope<object>[] = [];
  constructor(private readonly settle: () => Promise<void> = () => Promise.resolve()) {}
  push(envelope: Envelope<object>): Promise<void> {
    this.got.push(envelope);
    return this.settle();
  }
}

const failing = (err: unknown): Target => new Target(() => Promise.reject(err));
const slow = (ms: number): Target => new Target(() => new Promise((r) => setTimeout(r, ms)));

/** A logger that keeps what it is told. */
function recorder(): Logger & { lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = [];
  const at =
    (level: string) =>
    (_obj: object, msg?: string): void => {
      lines.push({ level, msg: msg ?? '' });
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

const env = (text = 'hi'): Envelope<object> =>
  createEnvelope({
    sender: 'urn:asap:agent:server',
    recipient: 'urn:asap:agent:x',
    payload_type: 'Notice',
    payload: { text },
  });

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(20);
  }
}

describe.skipIf(!redisAvailable())('RedisPushAdapter', () => {
  let redis: RedisServer;
  let admin: RedisClientType;
  const clients: RedisClientType[] = [];
  const adapters: RedisPushAdapter[] = [];
  let prefixSeq = 0;
  let prefix = '';

  const connect = async (user?: string): Promise<RedisClientType> => {
    const url = user === undefined ? redis.url : redis.url.replace('//', `//${user}:pw@`);
    const c = createClient({
      url,
      disableOfflineQueue: true,
      socket: { reconnectStrategy: () => 30 },
    }) as RedisClientType;
    c.on('error', () => {});
    clients.push(c);
    await c.connect();
    return c;
  };

  type NodeOptions = Partial<Omit<RedisPushAdapterOptions, 'local'>> & { start?: boolean };

  /** One node: its own two connections, its own local adapter. */
  const node = async (opts: NodeOptions = {}): Promise<RedisPushAdapter> => {
    const { start = true, ...rest } = opts;
    const a = new RedisPushAdapter({
      client: rest.client ?? (await connect()),
      subscriber: rest.subscriber ?? (await connect()),
      local: new LocalPushAdapter(),
      keyPrefix: prefix,
      requestTimeoutMs: 300,
      ...rest,
    });
    adapters.push(a);
    if (start) await a.start();
    return a;
  };

  const holders = async (urn: string): Promise<string[]> =>
    (await admin.sendCommand(['ZRANGE', `${prefix}push:urn:${urn}`, '0', '-1'])) as string[];

  beforeAll(async () => {
    redis = await startRedis();
    admin = await connect();
  });

  afterEach(async () => {
    await Promise.all(adapters.splice(0).map((a) => a.close()));
    for (const c of clients.splice(1)) if (c.isOpen) c.destroy();
    prefix = `t${++prefixSeq}:`;
  });

  afterAll(async () => {
    for (const c of clients) if (c.isOpen) c.destroy();
    await redis?.stop();
  });

  it('delivers a push from node A to a connection held by node B, and counts it', async () => {
    const a = await node({ nodeId: 'A' });
    const b = await node({ nodeId: 'B' });
    const t = new Target();
    b.add('urn:x', t);
    await until(async () => (await holders('urn:x')).includes('B'));
    const e = env();
    expect(await a.push('urn:x', e)).toBe(1);
    expect(t.got).toEqual([e]);
    expect(a.targets('urn:x')).toEqual([]);
    expect(b.targets('urn:x')).toEqual([t]);
    expect(a.nodeId).toBe('A');
    expect(a.presenceKey('urn:x')).toBe(`${prefix}push:urn:urn:x`);
  });

  it('sums local and remote counts over three nodes, failures on one not counting', async () => {
    const [a, b, c] = [await node(), await node(), await node()];
    const targets = [new Target(), new Target(), failing(new ConnectionError('gone')), new Target()];
    a.add('urn:x', targets[0]!);
    b.add('urn:x', targets[1]!);
    b.add('urn:x', targets[2]!);
    c.add('urn:x', targets[3]!);
    await until(async () => (await holders('urn:x')).length === 3);
    expect(await a.push('urn:x', env())).toBe(3);
    expect(await c.push('urn:x', env())).toBe(3);
    for (const t of targets) expect(t.got).toHaveLength(2);
  });

  it('resolves 0 when nobody holds the URN', async () => {
    const a = await node();
    await node();
    expect(await a.push('urn:nobody', env())).toBe(0);
  });

  it.each([
    ['ConnectionError', new ConnectionError('Connection is closed'), ConnectionError],
    ['RequestTimeoutError', new RequestTimeoutError('No ack', { id: 'e1' }), RequestTimeoutError],
    ['RequestAbortedError', new RequestAbortedError(), RequestAbortedError],
    ['ProtocolError', new ProtocolError('bad'), ProtocolError],
    ['ASAPError', ASAPError.resourceExhausted('Slow down', { retry_after_ms: 5 }), ASAPError],
    ['Error', new Error('boom'), Error],
    ['a thrown string', 'boom', Error],
  ])('rejects with the remote failure (%s) when the only holder did not take it', async (_, err, cls) => {
    const a = await node();
    const b = await node();
    b.add('urn:x', failing(err));
    await until(async () => (await holders('urn:x')).length === 1);
    const caught = await a.push('urn:x', env()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(caught).toBeInstanceOf(cls);
    const expected = err instanceof Error ? err : new Error(err);
    expect((caught as Error).message).toBe(expected.message);
    if (err instanceof ASAPError) {
      expect((caught as ASAPError).code).toBe(err.code);
      expect((caught as ASAPError).data).toEqual(err.data);
    }
  });

  it('rejects with the local failure first when no node took it', async () => {
    const a = await node();
    const b = await node();
    const local = new ConnectionError('local one');
    a.add('urn:x', failing(local));
    b.add('urn:x', failing(new Error('remote one')));
    await until(async () => (await holders('urn:x')).length === 2);
    await expect(a.push('urn:x', env())).rejects.toBe(local);
  });

  it('drops presence when the last local connection goes, and on close', async () => {
    const a = await node();
    const b = await node({ nodeId: 'B' });
    const [t1, t2] = [new Target(), new Target()];
    b.add('urn:x', t1);
    b.add('urn:x', t2);
    b.add('urn:y', t1);
    b.remove(['urn:x', 'urn:z'], t1);
    await until(async () => (await holders('urn:y')).includes('B'));
    expect(await holders('urn:x')).toEqual(['B']);
    b.remove(['urn:x'], t2);
    await until(async () => (await holders('urn:x')).length === 0);
    expect(await a.push('urn:x', env())).toBe(0);
    expect(await a.push('urn:y', env())).toBe(1);
    await b.close();
    expect(await holders('urn:y')).toEqual([]);
    const started = Date.now();
    expect(await a.push('urn:y', env())).toBe(0);
    expect(Date.now() - started).toBeLessThan(250);
    await b.close();
  });

  it('skips a node whose presence expired; waits requestTimeoutMs for one that is present but mute', async () => {
    const a = await node();
    const bClient = await connect();
    const b = await node({ client: bClient, presenceTtlMs: 300 });
    b.add('urn:x', new Target());
    await until(async () => (await holders('urn:x')).length === 1);
    // B's command connection dies: it can neither refresh its presence nor answer.
    bClient.destroy();
    let started = Date.now();
    expect(await a.push('urn:x', env())).toBe(0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    await until(async () => (await admin.exists(`${prefix}push:urn:urn:x`)) === 0, 1000);
    started = Date.now();
    expect(await a.push('urn:x', env())).toBe(0);
    expect(Date.now() - started).toBeLessThan(250);
  });

  it('counts a holder that never answers as 0 after requestTimeoutMs, and the others as they answer', async () => {
    const a = await node({ requestTimeoutMs: 200 });
    const b = await node();
    const t = new Target();
    b.add('urn:x', t);
    // A "node" that receives requests and never replies.
    const ghost = await connect();
    const seen: string[] = [];
    await ghost.subscribe(`${prefix}push:req:ghost`, (m) => {
      seen.push(m);
    });
    await admin.zAdd(`${prefix}push:urn:urn:x`, { score: Date.now() + 60_000, value: 'ghost' });
    await until(async () => (await holders('urn:x')).length === 2);
    const started = Date.now();
    expect(await a.push('urn:x', env())).toBe(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect(t.got).toHaveLength(1);
    expect(seen).toHaveLength(1);
    expect(JSON.parse(seen[0]!)).toMatchObject({ from: a.nodeId, urn: 'urn:x', t: 200 });
    // A push still waiting when its node closes settles at once with what it has.
    const pending = a.push('urn:x', env());
    await sleep(50);
    await a.close();
    expect(await pending).toBe(1);
  });

  it('keeps waiting for a holder whose push outlasts requestTimeoutMs while it says it is alive', async () => {
    const a = await node({ requestTimeoutMs: 120 });
    const b = await node();
    b.add('urn:x', slow(400));
    await until(async () => (await holders('urn:x')).length === 1);
    const started = Date.now();
    expect(await a.push('urn:x', env())).toBe(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
  });

  it('ignores malformed messages, replies to nobody, and requests after close', async () => {
    const logger = recorder();
    const a = await node({ nodeId: 'A', logger });
    const b = await node({ nodeId: 'B' });
    b.add('urn:x', new Target());
    await until(async () => (await holders('urn:x')).length === 1);
    await admin.publish(`${prefix}push:req:A`, 'not json');
    await admin.publish(`${prefix}push:rep:A`, '{oops');
    await admin.publish(`${prefix}push:rep:A`, JSON.stringify({ id: 'zz', node: 'B', n: 1 }));
    await until(() => logger.lines.filter((l) => l.level === 'debug').length === 2);
    expect(await a.push('urn:x', env())).toBe(1);
  });

  it('ignores requests once closed, even when Redis kept its subscription', async () => {
    await admin.sendCommand(['ACL', 'SETUSER', 'nounsub', 'on', '>pw', '~*', '&*', '+@all', '-unsubscribe']);
    const b = await node({ nodeId: 'B', subscriber: await connect('nounsub') });
    const t = new Target();
    b.add('urn:x', t);
    await b.close();
    const request = { id: '1', from: 'A', urn: 'urn:x', env: env(), t: 300 };
    expect(await admin.publish(`${prefix}push:req:B`, JSON.stringify(request))).toBe(1);
    await sleep(50);
    expect(t.got).toEqual([]);
  });

  it('works locally before start and after close, touching no Redis', async () => {
    const a = await node({ start: false });
    const t = new Target();
    a.add('urn:x', t);
    expect(await a.push('urn:x', env())).toBe(1);
    expect(await holders('urn:x')).toEqual([]);
    a.remove(['urn:x'], t);
    await a.close();
    await a.start();
    a.add('urn:x', t);
    expect(await a.push('urn:x', env())).toBe(1);
    await a.close();
    expect(await holders('urn:x')).toEqual([]);
    const bad = { client: admin, subscriber: admin, local: new LocalPushAdapter() };
    expect(() => new RedisPushAdapter({ ...bad, presenceTtlMs: 0 })).toThrow(RangeError);
    expect(() => new RedisPushAdapter({ ...bad, requestTimeoutMs: -1 })).toThrow(RangeError);
  });

  it('unsubscribes when closed while still subscribing; start is idempotent', async () => {
    const a = await node({ nodeId: 'early', start: false });
    const starting = a.start();
    await a.start();
    await a.close();
    await starting;
    await until(async () => {
      const r = (await admin.sendCommand(['PUBSUB', 'NUMSUB', `${prefix}push:req:early`])) as [
        string,
        number,
      ];
      return Number(r[1]) === 0;
    });
  });

  it('survives Redis refusing its commands: local delivery goes on, remote counts 0', async () => {
    await admin.sendCommand([
      'ACL',
      'SETUSER',
      'weak',
      'on',
      '>pw',
      '~*',
      '&*',
      '+@all',
      '-eval',
      '-evalsha',
      '-zrem',
      '-publish',
      '-ping',
      '-subscribe',
    ]);
    const logger = recorder();
    const weak = await connect('weak');
    const a = await node({ client: weak, subscriber: await connect('weak'), logger, presenceTtlMs: 90 });
    const t = new Target();
    a.add('urn:x', t);
    expect(await a.push('urn:x', env())).toBe(1);
    a.remove(['urn:x'], t);
    await sleep(60); // a refresh with nothing held: PING refused too
    expect(await a.push('urn:x', env())).toBe(0);
    expect(logger.lines.filter((l) => l.level === 'warn')).toHaveLength(1);
    expect(new Set(logger.lines.filter((l) => l.level === 'debug').map((l) => l.msg))).toEqual(
      new Set(['redis push routing failed']),
    );
    // A node that answers requests without being allowed to PUBLISH its replies.
    const b = await node({ client: weak, requestTimeoutMs: 100 });
    const c = await node({ requestTimeoutMs: 100 });
    b.add('urn:y', new Target());
    await admin.zAdd(`${prefix}push:urn:urn:y`, { score: Date.now() + 60_000, value: b.nodeId });
    expect(await c.push('urn:y', env())).toBe(0);
  });

  it('subscribes once Redis lets it, after refusing at start', async () => {
    await admin.sendCommand(['ACL', 'SETUSER', 'nosub', 'on', '>pw', '~*', '&*', '+@all', '-subscribe']);
    const sub = await connect('nosub');
    const b = await node({ subscriber: sub, nodeId: 'B', presenceTtlMs: 150 });
    const a = await node();
    b.add('urn:x', new Target());
    await until(async () => (await holders('urn:x')).length === 1);
    expect(await a.push('urn:x', env())).toBe(0);
    await admin.sendCommand(['ACL', 'SETUSER', 'nosub', '+subscribe']);
    // Retried on the next refresh, or on the subscriber's reconnect.
    await admin.sendCommand(['CLIENT', 'KILL', 'USER', 'nosub']);
    await until(async () => (await a.push('urn:x', env())) === 1);
  });

  it('gives up on a stalled Redis after requestTimeoutMs, local delivery counting', async () => {
    const a = await node({ requestTimeoutMs: 150 });
    a.add('urn:x', new Target());
    await until(async () => (await holders('urn:x')).length === 1);
    await admin.sendCommand(['CLIENT', 'PAUSE', '400', 'ALL']);
    let started = Date.now();
    expect(await a.push('urn:x', env())).toBe(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    // Closing does not wait for a stalled Redis either.
    started = Date.now();
    await a.close();
    expect(Date.now() - started).toBeLessThan(350);
    await admin.ping();
  });

  it('keeps local delivery while Redis is down, and reaches other nodes again once it is back', async () => {
    const logger = recorder();
    const a = await node({ nodeId: 'A', logger, presenceTtlMs: 3000 });
    const bClient = await connect();
    const b = await node({ nodeId: 'B', client: bClient, presenceTtlMs: 3000 });
    const [ta, tb] = [new Target(), new Target()];
    a.add('urn:a', ta);
    b.add('urn:b', tb);
    await until(async () => (await holders('urn:b')).length === 1);
    expect(await a.push('urn:b', env())).toBe(1);

    await redis.kill9();
    await until(() => !bClient.isReady);
    expect(await a.push('urn:a', env())).toBe(1);
    expect(await a.push('urn:b', env())).toBe(0);
    // Connections come and go meanwhile: nothing throws.
    const late = new Target();
    const gone = new Target();
    b.add('urn:late', late);
    b.add('urn:gone', gone);
    b.remove(['urn:gone'], gone);
    expect(logger.lines.some((l) => l.level === 'warn')).toBe(true);

    // Back with an empty dataset: presence is written again as soon as the clients are ready.
    await redis.restart();
    await until(async () => (await a.push('urn:b', env())) === 1, 5000);
    await until(async () => (await a.push('urn:late', env())) === 1);
    expect(await holders('urn:gone')).toEqual([]);
    await until(async () => (await b.push('urn:a', env())) === 1);
    expect(logger.lines.some((l) => l.msg === 'redis push routing restored')).toBe(true);
    expect(ta.got.length).toBeGreaterThanOrEqual(2);
  });
});
