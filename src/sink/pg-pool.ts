import pg from 'pg';
import { redactUrl } from '../config/redact-url.js';
import type { Logger } from '../telemetry/logger.js';

export interface UsageLogConnection {
  /** `postgres://user:password@host:port/database` (printed only through {@link redactUrl}). */
  url: string;
  /** Schema holding the tables; the connections' `search_path`. */
  schema: string;
  poolSize?: number;
  applicationName?: string;
}

/**
 * A pool of connections to the usage log: `search_path` is the configured schema and the session
 * time zone UTC (days and months are UTC everywhere). Connection errors are never thrown as events
 * (an unhandled one would end the process): those of idle clients are logged, those of clients in use
 * reach their query.
 */
export function openUsageLogPool(connection: UsageLogConnection, logger?: Pick<Logger, 'warn'>): pg.Pool {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(connection.schema))
    throw new Error(`schema must be a lower-case PostgreSQL identifier, not ${JSON.stringify(connection.schema)}`);
  const pool = new pg.Pool({
    connectionString: connection.url,
    max: connection.poolSize ?? 4,
    application_name: connection.applicationName ?? 'llm-proxy',
    // jit=off: measured on 3M hourly cells, JIT's compile time costs more than it saves on these short sums.
    options: `-c search_path=${connection.schema} -c TimeZone=UTC -c jit=off`,
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
  });
  pool.on('error', (error) => {
    logger?.warn({ err: describePgError(error), url: redactUrl(connection.url) }, 'usage log connection lost');
  });
  // The pool listens for errors of idle clients only: a client in use whose server goes away emits 'error'
  // with no listener, which would end the process. Its query rejects as well, and the caller's retry and
  // release() (which discards the broken client) handle it.
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  return pool;
}

/** What is safe to log about an error of the pg client (its message, code and detail; never the URL). */
export function describePgError(error: unknown): { message: string; code?: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === 'string' ? { message: error.message, code } : { message: error.message };
  }
  return { message: String(error) };
}

/** SQLSTATE of a pg error, or undefined (a network error has none, or a Node code such as ECONNREFUSED). */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * Errors that say the row itself cannot be stored (data exceptions, constraint violations other
 * than the duplicate key the insert already tolerates, program limits such as an index row too
 * large): retrying the same row cannot help, so it goes to the dead letters.
 */
export function isRowError(error: unknown): boolean {
  const state = sqlState(error);
  return state !== undefined && (state.startsWith('22') || state.startsWith('23') || state.startsWith('54'));
}

/** Errors after which the same transaction, tried again, may succeed (deadlock, serialization). */
export function isTransient(error: unknown): boolean {
  const state = sqlState(error);
  return state === '40P01' || state === '40001';
}
