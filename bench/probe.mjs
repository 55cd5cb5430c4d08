// Preloaded into every server process under test (`node --expose-gc --import bench/probe.mjs ...`),
// the baselines and `asap serve` alike, so the orchestrator can ask any of them, over the IPC channel
// it was spawned with, to collect garbage and report its memory and CPU usage. It touches nothing of
// the server: it only answers { type: 'gc' | 'mem' | 'cpu' | 'snapshot' } messages. Without an IPC channel it does nothing.
if (typeof process.send === 'function') {
  process.on('message', (msg) => {
    if (msg === null || typeof msg !== 'object') return;
    if (msg.type === 'gc') {
      // Two full collections: the first may only schedule finalisation of what it frees.
      if (typeof globalThis.gc === 'function') {
        globalThis.gc();
        globalThis.gc();
      }
    }
    if (msg.type === 'gc' || msg.type === 'mem') {
      const m = process.memoryUsage();
      process.send({
        type: 'mem',
        seq: msg.seq,
        gcExposed: typeof globalThis.gc === 'function',
        rss: m.rss,
        heapUsed: m.heapUsed,
        heapTotal: m.heapTotal,
        external: m.external,
        arrayBuffers: m.arrayBuffers,
      });
    } else if (msg.type === 'snapshot' && typeof msg.path === 'string') {
      // A heap snapshot, for digging into the memory row (not used by the benchmark itself).
      import('node:v8').then((v8) =>
        process.send({ type: 'snapshot', seq: msg.seq, path: v8.writeHeapSnapshot(msg.path) }),
      );
    } else if (msg.type === 'cpu') {
      const c = process.cpuUsage();
      process.send({ type: 'cpu', seq: msg.seq, user: c.user, system: c.system });
    }
  });
  // The channel must not keep a server alive once it has shut down by itself.
  process.channel?.unref();
}
