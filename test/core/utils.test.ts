/** AsyncQueue, Emitter, HandlerRegistry, ManualClock and the logger helpers. */
import { describe, expect, it } from 'vitest';
import { AsyncQueue } from '../../src/core/async-queue.js';
import { ManualClock } from '../../src/core/clock.js';
import { Emitter } from '../../src/core/emitter.js';
import { debugEnabled, silentLogger } from '../../src/core/logger.js';
import { type Handler, HandlerRegistry } from '../../src/core/registry.js';
import type { TaskRequest } from '../../src/protocol/payloads.js';

describe('AsyncQueue', () => {
  it('delivers pushed items in order to a waiting or later consumer', async () => {
    const q = new AsyncQueue<number>();
    const first = q.next();
    expect(q.push(1)).toBe(true);
    expect(await first).toEqual({ value: 1, done: false });
    q.push(2);
    q.push(3);
    expect(q.size).toBe(2);
    expect(await q.next()).toEqual({ value: 2, done: false });
    expect(await q.next()).toEqual({ value: 3, done: false });
  });

  it('ends: waiters and later reads get done, later pushes are refused', async () => {
    const q = new AsyncQueue<number>();
    const waiting = q.next();
    q.end();
    q.end();
    expect(q.done).toBe(true);
    expect(await waiting).toEqual({ value: undefined, done: true });
    expect(q.push(1)).toBe(false);
    expect(await q.next()).toEqual({ value: undefined, done: true });
  });

  it('drains buffered items before reporting the end', async () => {
    const q = new AsyncQueue<string>();
    q.push('a');
    q.push('b');
    q.end();
    const got: string[] = [];
    for await (const v of q) got.push(v);
    expect(got).toEqual(['a', 'b']);
  });

  it('fails: waiters reject, a later read rejects once, then done', async () => {
    const q = new AsyncQueue<number>();
    const waiting = q.next();
    const err = new Error('gone');
    q.fail(err);
    await expect(waiting).rejects.toBe(err);
    const q2 = new AsyncQueue<number>();
    q2.push(1);
    q2.fail(err);
    q2.fail(new Error('ignored'));
    q2.end();
    expect(await q2.next()).toEqual({ value: 1, done: false });
    await expect(q2.next()).rejects.toBe(err);
    expect(await q2.next()).toEqual({ value: undefined, done: true });
  });

  it('drops the oldest item past maxItems', async () => {
    const q = new AsyncQueue<number>(undefined, 2);
    expect(q.push(1)).toBe(true);
    expect(q.push(2)).toBe(true);
    expect(q.push(3)).toBe(false);
    expect(q.size).toBe(2);
    expect((await q.next()).value).toBe(2);
  });

  it('return() ends, empties and calls onReturn once', async () => {
    let returns = 0;
    const q = new AsyncQueue<number>(() => returns++);
    q.push(1);
    for await (const v of q) {
      expect(v).toBe(1);
      break;
    }
    expect(returns).toBe(1);
    expect(q.done).toBe(true);
    expect(q.size).toBe(0);
    expect(await q.return()).toEqual({ value: undefined, done: true });
    expect(returns).toBe(1);
    const plain = new AsyncQueue<number>();
    expect(await plain.return()).toEqual({ value: undefined, done: true });
    expect(plain[Symbol.asyncIterator]()).toBe(plain);
  });
});

describe('Emitter', () => {
  type Events = { data: (n: number) => void; end: () => void };
  class Probe extends Emitter<Events> {
    errors: unknown[] = [];
    fire<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
      this.emit(event, ...args);
    }
    protected override onListenerError(err: unknown): void {
      this.errors.push(err);
    }
  }
  class Plain extends Emitter<Events> {
    fire(n: number): void {
      this.emit('data', n);
    }
  }

  it('calls listeners; the returned function removes one', () => {
    const e = new Probe();
    const got: number[] = [];
    const off = e.on('data', (n) => got.push(n));
    e.on('data', (n) => got.push(n * 10));
    expect(e.listenerCount('data')).toBe(2);
    e.fire('data', 1);
    off();
    e.fire('data', 2);
    expect(got).toEqual([1, 10, 20]);
    expect(e.listenerCount('end')).toBe(0);
    e.fire('end');
  });

  it('once() fires a single time and can be removed before firing', () => {
    const e = new Probe();
    let n = 0;
    e.once('end', () => n++);
    e.fire('end');
    e.fire('end');
    expect(n).toBe(1);
    const off = e.once('end', () => n++);
    off();
    e.fire('end');
    expect(n).toBe(1);
    expect(e.listenerCount('end')).toBe(0);
  });

  it('a throwing listener is reported and does not stop the others', () => {
    const e = new Probe();
    const got: number[] = [];
    const boom = new Error('listener');
    e.on('data', () => {
      throw boom;
    });
    e.on('data', (n) => got.push(n));
    e.fire('data', 5);
    expect(got).toEqual([5]);
    expect(e.errors).toEqual([boom]);
    const p = new Plain();
    p.on('data', () => {
      throw boom;
    });
    expect(() => p.fire(1)).not.toThrow();
  });

  it('off() of an unknown listener is harmless', () => {
    const e = new Probe();
    e.off('data', () => {});
    expect(e.listenerCount('data')).toBe(0);
  });
});

describe('HandlerRegistry', () => {
  it('keys handlers by normalised payload type', () => {
    const r = new HandlerRegistry();
    const h: Handler = () => undefined;
    const h2: Handler = () => undefined;
    expect(r.on('task.request', h)).toBe(r);
    expect(r.get('taskrequest')).toBe(h);
    r.on('TaskRequest', h2);
    expect(r.get('taskrequest')).toBe(h2);
    expect(r.off('task_request')).toBe(r);
    expect(r.get('taskrequest')).toBeUndefined();
  });

  it('registers skills with their manifest info', () => {
    const r = new HandlerRegistry();
    expect(r.hasSkills).toBe(false);
    const echo: Handler<TaskRequest> = () => undefined;
    r.skill('echo', echo);
    r.skill('sum', echo, {
      description: 'Adds',
      input_schema: { type: 'object' },
      output_schema: { type: 'number' },
    });
    expect(r.hasSkills).toBe(true);
    expect(r.getSkill('echo')).toBe(echo);
    expect(r.getSkill('nope')).toBeUndefined();
    expect(r.skills()).toEqual([
      { id: 'echo', description: 'echo' },
      { id: 'sum', description: 'Adds', input_schema: { type: 'object' }, output_schema: { type: 'number' } },
    ]);
    r.skill('echo', echo, { description: 'replaced' });
    expect(r.skills()[0]).toEqual({ id: 'echo', description: 'replaced' });
  });
});

describe('clock and logger', () => {
  it('ManualClock moves only when told', () => {
    const c = new ManualClock();
    expect(c.now()).toBe(0);
    c.advance(5);
    expect(c.now()).toBe(5);
    c.set(100);
    expect(c.now()).toBe(100);
  });

  it('silentLogger is silent and debugEnabled reads the level', () => {
    for (const level of ['debug', 'info', 'warn', 'error'] as const) silentLogger[level]({}, 'x');
    expect(debugEnabled(silentLogger)).toBe(false);
    expect(debugEnabled({ ...silentLogger, isLevelEnabled: (l) => l === 'debug' })).toBe(true);
    const { isLevelEnabled: _drop, ...noLevel } = silentLogger;
    expect(debugEnabled(noLevel)).toBe(true);
  });
});
