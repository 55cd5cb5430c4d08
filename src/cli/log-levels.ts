/** The levels of `asap serve --log-level` (apart from the logger, so parsing flags does not load pino). */
export const LOG_LEVELS = ['silent', 'error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
