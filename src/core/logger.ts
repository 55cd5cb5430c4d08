/**
 * The logging surface the engine needs: a subset of pino's, so a pino logger
 * can be passed as is, and the browser can use the silent one.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  /** Level check, so hot paths skip building log objects nobody reads. */
  isLevelEnabled?(level: string): boolean;
}

const noop = (): void => {};

export const silentLogger: Logger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  isLevelEnabled: () => false,
};

/** @internal True unless the logger says debug is off (building debug objects is then skipped). */
export function debugEnabled(logger: Logger): boolean {
  return logger.isLevelEnabled ? logger.isLevelEnabled('debug') : true;
}
