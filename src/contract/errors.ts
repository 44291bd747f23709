/**
 * The wire error codes of DESIGN.md ("Errors") and the one error class every
 * layer throws. A single function, `toErrorReply`, turns any thrown value into
 * the reply body, so every path out of a handler speaks the same way.
 */
import type { AttemptRecord } from './reply.js';

export const ERROR_STATUS = {
  invalid_request: 400,
  unauthorized: 401,
  budget_exceeded: 402,
  model_not_found: 404,
  payload_too_large: 413,
  cancelled: 499,
  rate_limited: 429,
  internal: 500,
  upstream_error: 502,
  no_provider_available: 503,
  upstream_timeout: 504,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export const ERROR_CODES = Object.keys(ERROR_STATUS) as ErrorCode[];

/** Codes a client may retry as they stand (the same request, later or elsewhere). */
const RETRYABLE_BY_DEFAULT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'rate_limited',
  'upstream_error',
  'no_provider_available',
  'upstream_timeout',
]);

export interface ProxyErrorOptions {
  retryable?: boolean;
  retryAfterMs?: number;
  cause?: unknown;
  /** HTTP status the upstream provider answered with, when there was one. */
  upstreamStatus?: number;
  /** The upstream refused because the prompt is longer than the model's context. */
  contextLengthExceeded?: boolean;
  /** Deployments tried before giving up (the router sets it). */
  attempts?: AttemptRecord[];
}

export class ProxyError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly retryable: boolean;
  readonly retryAfterMs: number | undefined;
  readonly upstreamStatus: number | undefined;
  readonly contextLengthExceeded: boolean;
  attempts: AttemptRecord[] | undefined;

  constructor(code: ErrorCode, message: string, options: ProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ProxyError';
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.retryable = options.retryable ?? RETRYABLE_BY_DEFAULT.has(code);
    this.retryAfterMs = options.retryAfterMs;
    this.upstreamStatus = options.upstreamStatus;
    this.contextLengthExceeded = options.contextLengthExceeded ?? false;
    this.attempts = options.attempts;
  }
}

export function isProxyError(value: unknown): value is ProxyError {
  return value instanceof ProxyError;
}

export interface ErrorBody {
  code: ErrorCode;
  status: number;
  message: string;
  retryable: boolean;
  retry_after_ms?: number;
  request_id?: string;
  attempts?: AttemptRecord[];
}

export interface ErrorReply {
  error: ErrorBody;
}

/** Anything that is not a ProxyError becomes `internal` with a generic message; the cause is for logs only. */
export function asProxyError(value: unknown): ProxyError {
  if (value instanceof ProxyError) return value;
  return new ProxyError('internal', 'internal error', { cause: value, retryable: false });
}

export function toErrorReply(value: unknown, requestId?: string): ErrorReply {
  const error = asProxyError(value);
  const body: ErrorBody = {
    code: error.code,
    status: error.status,
    message: error.message,
    retryable: error.retryable,
  };
  if (error.retryAfterMs !== undefined) body.retry_after_ms = Math.max(0, Math.ceil(error.retryAfterMs));
  if (requestId !== undefined) body.request_id = requestId;
  if (error.attempts !== undefined && error.attempts.length > 1) body.attempts = error.attempts;
  return { error: body };
}

/** Rebuild a ProxyError from a reply body received over the wire (used by the client). */
export function fromErrorBody(body: ErrorBody): ProxyError {
  const code: ErrorCode = body.code in ERROR_STATUS ? body.code : 'internal';
  return new ProxyError(code, body.message, {
    retryable: body.retryable,
    ...(body.retry_after_ms !== undefined ? { retryAfterMs: body.retry_after_ms } : {}),
  });
}
