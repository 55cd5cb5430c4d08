/**
 * The client's runtime tells Node from a browser by `process.getBuiltinModule` (Node: `ws`, loaded on
 * first use; elsewhere: the global WebSocket). These helpers make this Node process look like a
 * browser to it, so the browser path runs over real sockets here.
 */
type Proc = { getBuiltinModule?: unknown };
type WithWebSocket = { WebSocket?: unknown };

/** Hides `process.getBuiltinModule`; returns the function that puts it back. */
export function hideNodeRuntime(): () => void {
  const proc = process as Proc;
  const saved = proc.getBuiltinModule;
  proc.getBuiltinModule = undefined;
  return () => {
    proc.getBuiltinModule = saved;
  };
}

/** Runs `fn` as in a browser whose global WebSocket is `globalWebSocket` (none when undefined); restores both. */
export async function asBrowser<T>(globalWebSocket: unknown, fn: () => T | Promise<T>): Promise<T> {
  const g = globalThis as WithWebSocket;
  const had = Object.hasOwn(g, 'WebSocket');
  const saved = g.WebSocket;
  if (globalWebSocket === undefined) delete g.WebSocket;
  else g.WebSocket = globalWebSocket;
  const restoreNode = hideNodeRuntime();
  try {
    return await fn();
  } finally {
    restoreNode();
    if (had) g.WebSocket = saved;
    else delete g.WebSocket;
  }
}
