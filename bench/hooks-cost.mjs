// What recording the Prometheus metrics costs per request, in isolation: the hooks the dispatcher
// calls for one request (dedupe, requestFinished with its RequestInfo and two performance.now()
// readings), called in a loop, against the same loop without the metric hooks. Compare the
// difference with a round trip's server CPU (bench row 2: ~30 µs on this class of machine).
// Usage: npm run build && node bench/hooks-cost.mjs [DIST]
const dist = new URL(`../${process.argv[2] ?? 'dist'}/`, import.meta.url);
const { prometheusMetrics } = await import(new URL('server/metrics.js', dist));
const { guardInstrumentation, requestInfo } = await import(new URL('core/instrumentation.js', dist));

const logger = { error() {}, warn() {}, info() {}, debug() {} };
const env = {
  id: '01JEXAMPLE',
  sender: 'urn:asap:agent:a',
  recipient: 'urn:asap:agent:b',
  payload_type: 'TaskRequest',
};
const N = 1_000_000;

function run(hooks) {
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    hooks?.dedupe?.('new');
    const info = requestInfo(env, 'websocket', 'TaskRequest', 'echo');
    const started = performance.now();
    info.durationMs = performance.now() - started;
    hooks?.requestFinished?.(info);
  }
  return ((performance.now() - t0) * 1e6) / N;
}

const rows = [];
for (let round = 0; round < 5; round++) {
  const none = run(undefined);
  const metrics = run(guardInstrumentation(prometheusMetrics().instrumentation, logger));
  rows.push({ none, metrics });
}
const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const none = median(rows.map((r) => r.none));
const metrics = median(rows.map((r) => r.metrics));
console.log(`per request, median of 5 rounds of ${N.toLocaleString('en')}:`);
console.log(`  RequestInfo + 2 × performance.now(), no hooks: ${none.toFixed(0)} ns`);
console.log(
  `  the same with the metric hooks:               ${metrics.toFixed(0)} ns (+${(metrics - none).toFixed(0)} ns)`,
);
