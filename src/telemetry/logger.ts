import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger } from 'pino';

/**
 * Paths pino replaces with "[redacted]" wherever they appear in a log
 * object. Belt and braces: no code logs a key on purpose, but an error's
 * cause may carry request options or headers.
 */
export const REDACTED_PATHS = [
  'apiKey',
  '*.apiKey',
  'api_key',
  '*.api_key',
  'authorization',
  '*.authorization',
  'Authorization',
  '*.Authorization',
  'headers.authorization',
  'headers.Authorization',
  '*.headers.authorization',
  '*.headers.Authorization',
  'headers["x-internal-secret"]',
  'headers["X-Internal-Secret"]',
  '*.headers["x-internal-secret"]',
  '*.headers["X-Internal-Secret"]',
  'secret',
  '*.secret',
  'password',
  '*.password',
  'token',
  '*.token',
  'pass',
  '*.pass',
];

export interface LoggerSettings {
  level?: string;
  /** Where lines go; stdout by default. Tests pass a stream to capture them. */
  destination?: DestinationStream;
  /** Fields on every line (e.g. worker_id). */
  base?: Record<string, unknown>;
}

export function createLogger(settings: LoggerSettings = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? 'info',
    base: { service: 'llm-proxy', ...(settings.base ?? {}) },
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  return settings.destination === undefined ? pino(options) : pino(options, settings.destination);
}

/** One child per request, so every line of it carries its ids. */
export function requestLogger(parent: Logger, requestId: string, agentId: string | undefined): Logger {
  return parent.child({ request_id: requestId, agent_id: agentId ?? null });
}
