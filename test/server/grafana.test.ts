/**
 * examples/grafana/asap-dashboard.json loads: it is valid JSON with the structure Grafana needs,
 * and every PromQL expression in it names only metrics that a real scrape of the demo agent
 * exposes after a small workload (a histogram's `_bucket`, `_sum` and `_count` series count).
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, connect, type Json, rpcRequest, startDemo, task } from './ws-helpers.js';

afterEach(cleanup);

const DASHBOARD = new URL('../../examples/grafana/asap-dashboard.json', import.meta.url);

/** PromQL words that are not metric names. */
const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
]);

/**
 * The metric names of a PromQL expression: what is left once strings, label matchers, grouping
 * clauses, ranges, numbers, Grafana variables and function calls are taken out.
 */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\$\w+/g, ' ')
    .replace(/\b\d+(?:\.\d+)?(?:ms|[smhdwy])?\b/g, ' ');
  const names: string[] = [];
  for (const m of bare.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2] !== undefined || KEYWORDS.has(m[1]!)) continue;
    names.push(m[1]!);
  }
  return names;
}

/** Every metric the exposition text declares, with a histogram's three series. */
function exposed(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\w+)$/.exec(line);
    if (type !== null) {
      names.add(type[1]!);
      if (type[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(type[1] + s);
    } else if (line !== '' && !line.startsWith('#')) {
      names.add(/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]);
    }
  }
  return names;
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: { expr: string; refId: string }[];
  panels?: Panel[];
}

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

describe('examples/grafana/asap-dashboard.json', () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
    title: string;
    uid: string;
    schemaVersion: number;
    panels: Panel[];
    templating: { list: { name: string; type: string; query: unknown }[] };
  };
  const panels = allPanels(dashboard.panels);
  const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  const variableQueries = dashboard.templating.list
    .filter((v) => v.type === 'query')
    .map((v) => (v.query as { query: string }).query)
    // label_values(METRIC_SELECTOR, LABEL): only the selector names a metric.
    .map((q) => /^label_values\((.*), *\w+\)$/.exec(q)![1]!);

  it('has what Grafana needs: ids, grid positions, a Prometheus data source variable, queries', () => {
    expect(dashboard.title).toBe('ASAP agent (asap-ts)');
    expect(dashboard.uid).toBe('asap-ts-agent');
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.templating.list.map((v) => [v.name, v.type])).toEqual([
      ['datasource', 'datasource'],
      ['job', 'query'],
      ['instance', 'query'],
    ]);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      if (p.type === 'row') continue;
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets!.length, p.title).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
    }
    // Every query is scoped by the job and instance variables.
    for (const e of exprs) expect(e).toContain('job=~"$job", instance=~"$instance"');
  });

  it('shows requests, latency quantiles, errors, connections, acks, retransmissions, dedupe, closes, Redis', () => {
    const used = new Set(exprs.flatMap(metricNames));
    expect([...used].sort()).toEqual([
      'asap_acks_received_total',
      'asap_acks_sent_total',
      'asap_auth_failures_total',
      'asap_dedupe_evicted_total',
      'asap_dedupe_total',
      'asap_draining',
      'asap_handler_errors_total',
      'asap_invalid_nonce_total',
      'asap_invalid_timestamp_total',
      'asap_pushes_total',
      'asap_rate_limited_total',
      'asap_rejected_total',
      'asap_request_duration_seconds_bucket',
      'asap_request_duration_seconds_count',
      'asap_request_duration_seconds_sum',
      'asap_requests_total',
      'asap_retransmissions_total',
      'asap_sender_mismatch_total',
      'asap_store_errors_total',
      'asap_store_operation_duration_seconds_bucket',
      'asap_store_operation_duration_seconds_count',
      'asap_stream_chunks_total',
      'asap_validation_errors_total',
      'asap_websocket_closes_total',
      'asap_websocket_connections',
    ]);
    for (const q of [0.5, 0.95, 0.99])
      expect(exprs).toContain(
        `histogram_quantile(${q}, sum by (le) (rate(asap_request_duration_seconds_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))`,
      );
    expect(
      exprs.some((e) => e.includes('asap_websocket_closes_total{') && e.includes('reason="slow_consumer"')),
    ).toBe(true);
  });

  it('names only metrics a scrape of the demo agent exposes after a small workload', async () => {
    const { url, wsUrl } = await startDemo({ metrics: true });
    const post = async (envelope: unknown) =>
      (await fetch(`${url}/asap`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: rpcRequest(envelope, 1),
      }).then((r) => r.json())) as Json;
    expect((await post(task('echo', { a: 1 }))).result.envelope.payload.status).toBe('completed');
    expect((await post(task('fail', { message: 'x' }))).error.code).toBe(-32603);
    const peer = await connect(wsUrl);
    expect(
      (await peer.call(task('stream', { chunks: 3, interval_ms: 0 }))).result.envelope.payload.final,
    ).toBe(true);
    const pushed = await peer.call(task('push', { count: 2 }));
    expect(pushed.result.envelope.payload.result).toEqual({ pushed: 2 });
    await peer.close(1000);

    const res = await fetch(`${url}/asap/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const names = exposed(text);
    const missing = [...new Set([...exprs, ...variableQueries].flatMap(metricNames))].filter(
      (n) => !names.has(n),
    );
    expect(missing).toEqual([]);
    // The workload shows in the series the dashboard reads.
    expect(text).toContain('asap_requests_total{payload_type="TaskRequest",status="success"} 3');
    expect(text).toContain('asap_requests_total{payload_type="TaskRequest",status="error"} 1');
  });

  it('metricNames reads PromQL as intended', () => {
    expect(
      metricNames(
        'sum by (le, payload_type) (rate(asap_x_bucket{job=~"$job", reason="a{b}"}[$__rate_interval])) / on (instance) group_left sum(asap_y offset 5m) > bool 0.5',
      ),
    ).toEqual(['asap_x_bucket', 'asap_y']);
    expect(variableQueries).toEqual(['asap_requests_total', 'asap_requests_total{job=~"$job"}']);
  });
});
