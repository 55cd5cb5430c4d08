import { pino } from 'pino';
import type { Logger } from '../core/logger.js';
import type { LogLevel } from './log-levels.js';

export { LOG_LEVELS, type LogLevel } from './log-levels.js';

/** Structured JSON logs on stderr (stdout belongs to the command's output). Tokens are never logged. */
export function createLogger(level: LogLevel): Logger {
  return pino(
    {
      level,
      redact: ['token', 'authorization', '*.authorization', 'headers.authorization'],
      base: { pid: process.pid },
    },
    pino.destination({ fd: 2, sync: true }),
  );
}
