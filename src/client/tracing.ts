/**
 * The tracing a client transport given no `tracing` option uses: OpenTelemetry where the runtime is
 * Node and `@opentelemetry/api` can be loaded, else none (in a browser, pass `otelTracing(api)` of
 * `asap-ts/otel`). Loaded on first use rather than imported, like `ws` in runtime.ts: a static
 * import would put the API into the browser bundle.
 */
import type { ClientTracing } from '../core/tracing.js';
import { type OpenTelemetryApi, otelClientTracing } from '../otel/client.js';

interface NodeModuleBuiltin {
  createRequire(from: string): (id: string) => unknown;
}
interface NodeProcess {
  getBuiltinModule?(id: string): unknown;
}

/** null: not loadable here. */
let loaded: ClientTracing | null | undefined;

/** @internal The default tracing of client transports (resolved once, on first use). */
export function defaultClientTracing(): ClientTracing | undefined {
  if (loaded === undefined) {
    loaded = null;
    const proc = (globalThis as { process?: NodeProcess }).process;
    if (typeof proc?.getBuiltinModule === 'function') {
      const { createRequire } = proc.getBuiltinModule('module') as NodeModuleBuiltin;
      try {
        loaded = otelClientTracing(createRequire(import.meta.url)('@opentelemetry/api') as OpenTelemetryApi);
      } catch {
        // Not installed: no tracing.
      }
    }
  }
  return loaded ?? undefined;
}
