import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger } from 'pino';

/**
 * Keys whose values are replaced by "[redacted]" wherever they appear in a
 * logged object, at any depth (compared without case, `-` and `_`). Belt and
 * braces: no code logs a key on purpose, but an error's cause may carry
 * request options or headers.
 */
export const REDACTED_KEYS: ReadonlySet<string> = new Set(
  ['apiKey', 'api_key', 'authorization', 'x-internal-secret', 'secret', 'password', 'pass', 'token', 'cookie'].map(
    normalizeKey,
  ),
);

const CENSOR = '[redacted]';
/** Deeper than this, a logged object is cut (a cyclic or huge cause is no use in a log line). */
const MAX_DEPTH = 8;

function normalizeKey(key: string): string {
  return key.toLowerCase().replace(/[-_]/g, '');
}

/** Strings that carry a credential whatever key they sit under (an error message echoing a header). */
function scrubText(text: string): string {
  if (!/bearer|sk-|api.?key/i.test(text)) return text;
  return text
    .replace(/\bBearer\s+[^\s"',;]+/gi, `Bearer ${CENSOR}`)
    .replace(/\bsk-[A-Za-z0-9_*.-]{4,}/g, CENSOR)
    .replace(/(api[ _-]?key(?: provided)?\s*[:=]\s*)[^\s"',;]+/gi, `$1${CENSOR}`);
}

/**
 * A copy of `value` with secrets removed; the original is returned as is when
 * nothing in it needed changing, so the per-request log line (a handful of
 * numbers and short strings) costs one walk over a few keys and no copy.
 * pino's own `redact` needs a path per nesting level, and its wildcard paths
 * are costly on every line of a busy worker (docs/bench/results.md); this
 * needs neither.
 */
function scrub(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return scrubText(value);
  if (typeof value !== 'object' || value === null) return value;
  if (depth >= MAX_DEPTH) return '[depth limit]';
  if (value instanceof Error) return scrub(pino.stdSerializers.errWithCause(value), depth);
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    value.forEach((item, index) => {
      const cleaned = scrub(item, depth + 1);
      if (cleaned !== item) (copy ??= value.slice())[index] = cleaned;
    });
    return copy ?? value;
  }
  let copy: Record<string, unknown> | undefined;
  for (const key of Object.keys(value)) {
    const item = (value as Record<string, unknown>)[key];
    const cleaned =
      REDACTED_KEYS.has(normalizeKey(key)) && item !== undefined && item !== null ? CENSOR : scrub(item, depth + 1);
    if (cleaned !== item) (copy ??= { ...(value as Record<string, unknown>) })[key] = cleaned;
  }
  return copy ?? value;
}

/** Log lines are written in batches of about this size… */
const LOG_BUFFER_BYTES = 4096;
/** …or after this long, whichever comes first. */
const LOG_FLUSH_MS = 200;

export interface LoggerSettings {
  level?: string;
  /** Where lines go; by default stdout, written asynchronously. Tests pass a stream to capture them. */
  destination?: DestinationStream;
  /** Fields on every line (e.g. worker_id). */
  base?: Record<string, unknown>;
}

export function createLogger(settings: LoggerSettings = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? 'info',
    base: { service: 'llm-proxy', ...(settings.base ?? {}) },
    timestamp: pino.stdTimeFunctions.isoTime,
    // `scrub` has already turned errors into plain objects (with pino's own serializer).
    serializers: { err: (value: unknown) => value },
    formatters: {
      level: (label) => ({ level: label }),
      log: (object) => scrub(object, 0) as Record<string, unknown>,
    },
  };
  return pino(options, settings.destination ?? batchedStdout());
}

/**
 * stdout for log lines. A blocking write per line was a measurable share of the request path,
 * and so was an asynchronous one per line (a write, and a wake-up of the event loop when it
 * completes). Lines are collected up to 4 KiB and written together, and at most 200 ms after a
 * line came in, so a quiet worker's lines still show promptly; pino writes what is left at exit.
 * (sonic-boom's own `periodicFlush` writes every period even with nothing buffered: a timer
 * armed by a line does not.)
 */
function batchedStdout(): DestinationStream {
  const stdout = pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES });
  let timer: NodeJS.Timeout | undefined;
  const flushLater = (): void => {
    timer = undefined;
    stdout.flush();
  };
  const stream: DestinationStream & { flush(callback?: (error?: Error) => void): void } = {
    write(line: string): void {
      stdout.write(line);
      if (timer === undefined) {
        timer = setTimeout(flushLater, LOG_FLUSH_MS);
        timer.unref();
      }
    },
    // For `logger.flush()`.
    flush(callback?: (error?: Error) => void): void {
      stdout.flush(callback);
    },
  };
  return stream;
}

/** One child per request, so every line of it carries its ids. */
export function requestLogger(parent: Logger, requestId: string, agentId: string | undefined): Logger {
  return parent.child({ request_id: requestId, agent_id: agentId ?? null });
}
