import type { Registry } from 'prom-client';

/**
 * Metric families whose children are plain numbers, for the counters the server bumps on every
 * request. prom-client's own Counter and Histogram hash their label object on every `inc()` /
 * `observe()` (a labelled child only binds the labels), which made recording the per-request
 * metrics cost ~14 % of a round trip; here a child is looked up once per label set and bumping
 * it is a field increment. The families register in a prom-client Registry like its own metrics
 * (`name`, `help`, `type`, `aggregator`, `get()`), so the registry's text and JSON output, its
 * default labels and `Registry.merge` work as for any metric; they are built only at scrape time.
 */

type Labels = Record<string, string>;

/** One sample as prom-client's registry reads it. */
interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

interface MetricData {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  aggregator: 'sum';
  values: Sample[];
}

/** A value a family reads when scraped (a gauge of the server's state). */
export type Reading = () => number;

abstract class Family<C> {
  readonly aggregator = 'sum';
  protected readonly children = new Map<string, { labels: Labels; child: C }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {}

  /** The child of one label set (values in `labelNames` order), made on first use. */
  child(...values: string[]): C {
    const key = values.length === 1 ? values[0]! : values.join('\u0000');
    let entry = this.children.get(key);
    if (entry === undefined) {
      const labels: Labels = {};
      this.labelNames.forEach((name, i) => {
        labels[name] = values[i] ?? '';
      });
      entry = { labels, child: this.make() };
      this.children.set(key, entry);
    }
    return entry.child;
  }

  protected abstract make(): C;
  abstract get(): MetricData;

  /** Forgets every child (prom-client's `registry.resetMetrics()`). */
  reset(): void {
    this.children.clear();
    if (this.labelNames.length === 0) this.child();
  }
}

/** A counter (or a gauge: the same numbers, another type) with plain-number children. */
export class CounterFamily extends Family<{ value: number }> {
  /** Readings added to the value of the unlabelled child when scraped (gauges of state). */
  private readonly readings: Reading[] = [];

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    readonly type: 'counter' | 'gauge' = 'counter',
  ) {
    super(name, help, labelNames);
    // An unlabelled metric shows 0 before its first event, as prom-client's do.
    if (labelNames.length === 0) this.child();
  }

  protected make(): { value: number } {
    return { value: 0 };
  }

  /** Adds a value read at scrape time (several servers in one registry each add theirs). */
  read(reading: Reading): void {
    this.readings.push(reading);
  }

  get(): MetricData {
    const values: Sample[] = [];
    for (const { labels, child } of this.children.values()) {
      let value = child.value;
      if (this.labelNames.length === 0) for (const r of this.readings) value += r();
      values.push({ labels, value });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export interface HistogramChild {
  /** Observations per bucket (not cumulative), the last one for +Inf. */
  readonly counts: number[];
  sum: number;
  count: number;
}

/** A histogram with fixed buckets whose children count observations in plain arrays. */
export class HistogramFamily extends Family<HistogramChild> {
  readonly type = 'histogram';

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
  }

  protected make(): HistogramChild {
    return { counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
  }

  /** Records one observation in `child`. */
  observe(child: HistogramChild, value: number): void {
    const b = this.buckets;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    child.counts[i]!++;
    child.sum += value;
    child.count++;
  }

  get(): MetricData {
    const values: Sample[] = [];
    for (const { labels, child } of this.children.values()) {
      let cumulative = 0;
      for (let i = 0; i <= this.buckets.length; i++) {
        cumulative += child.counts[i]!;
        const le = i < this.buckets.length ? this.buckets[i]! : '+Inf';
        values.push({ labels: { le, ...labels }, value: cumulative, metricName: `${this.name}_bucket` });
      }
      values.push({ labels, value: child.sum, metricName: `${this.name}_sum` });
      values.push({ labels, value: child.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/**
 * The family registered in `registry` under `family.name`, or `family` after registering it: several
 * servers sharing a registry share the families (and so add up). A metric of that name that is not
 * one of ours (the user's own) is an error: its numbers could not be told apart from ours.
 */
export function registered<F extends CounterFamily | HistogramFamily>(
  registry: Registry,
  family: F,
  kind: new (...args: never[]) => F,
): F {
  const existing = registry.getSingleMetric(family.name) as unknown;
  if (existing === undefined) {
    // biome-ignore lint/suspicious/noExplicitAny: the registry takes any object shaped as a metric
    registry.registerMetric(family as any);
    return family;
  }
  if (existing instanceof kind && (existing as F).type === family.type) return existing as F;
  throw new Error(`The registry already holds a metric named ${family.name} that ASAP does not record`);
}
