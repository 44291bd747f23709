/**
 * The one error class an agent catches: every failure of a call, whether the
 * worker answered with an error reply, the bus said nobody is listening, a
 * timer ran out or the caller cancelled, surfaces as an `LlmProxyError` with
 * DESIGN.md's stable `code`, its wire `status`, `retryable`, `retryAfterMs`
 * and the `requestId` the call was sent with.
 */
import { errors as natsErrors } from '@nats-io/nats-core';
import {
  ERROR_STATUS,
  ProxyError,
  type AttemptRecord,
  type ErrorBody,
  type ErrorCode,
  type ProxyErrorOptions,
} from '../contract/index.js';

export interface LlmProxyErrorOptions extends ProxyErrorOptions {
  requestId?: string;
}

export class LlmProxyError extends ProxyError {
  readonly requestId: string | undefined;

  constructor(code: ErrorCode, message: string, options: LlmProxyErrorOptions = {}) {
    super(code, message, options);
    this.name = 'LlmProxyError';
    this.requestId = options.requestId;
  }

  /** The wire shape of DESIGN.md ("Errors"), for logs and `--json` output. */
  toJSON(): ErrorBody {
    const body: ErrorBody = { code: this.code, status: this.status, message: this.message, retryable: this.retryable };
    if (this.retryAfterMs !== undefined) body.retry_after_ms = this.retryAfterMs;
    if (this.requestId !== undefined) body.request_id = this.requestId;
    if (this.attempts !== undefined) body.attempts = this.attempts;
    return body;
  }
}

const CODE_BY_STATUS = new Map<number, ErrorCode>(
  (Object.entries(ERROR_STATUS) as Array<[ErrorCode, number]>).map(([code, status]) => [status, code]),
);

function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_STATUS, value);
}

/**
 * A code this client does not know (a newer worker) is read through its status
 * so that `retryable` decisions and exit codes stay sensible.
 */
function codeFor(code: unknown, status: unknown): ErrorCode {
  if (isErrorCode(code)) return code;
  if (typeof status === 'number') return CODE_BY_STATUS.get(status) ?? (status >= 500 ? 'upstream_error' : 'internal');
  return 'internal';
}

/** Rebuild the error a worker sent (`{"error": {...}}`); tolerant of missing fields. */
export function errorFromBody(body: Partial<ErrorBody> | undefined, requestId?: string): LlmProxyError {
  const code = codeFor(body?.code, body?.status);
  const message = typeof body?.message === 'string' && body.message !== '' ? body.message : `worker answered ${code}`;
  const options: LlmProxyErrorOptions = {};
  if (typeof body?.retryable === 'boolean') options.retryable = body.retryable;
  if (typeof body?.retry_after_ms === 'number') options.retryAfterMs = body.retry_after_ms;
  if (Array.isArray(body?.attempts)) options.attempts = body.attempts as AttemptRecord[];
  const id = typeof body?.request_id === 'string' ? body.request_id : requestId;
  if (id !== undefined) options.requestId = id;
  return new LlmProxyError(code, message, options);
}

/**
 * An error reply that came only as micro-service headers (`Nats-Service-Error`,
 * `Nats-Service-Error-Code`), without our JSON body.
 */
export function errorFromServiceHeaders(statusText: string, description: string, requestId?: string): LlmProxyError {
  const status = Number.parseInt(statusText, 10);
  const code = codeFor(undefined, Number.isFinite(status) ? status : undefined);
  return new LlmProxyError(
    code,
    description === '' ? `worker answered ${code}` : description,
    requestId === undefined ? {} : { requestId },
  );
}

export interface NatsFailureContext {
  subject: string;
  timeoutMs: number;
  requestId: string;
}

/** Map what nats.js throws for a request onto our codes (NATS-NOTES, "Client"). */
export function errorFromNats(error: unknown, context: NatsFailureContext): LlmProxyError {
  const requestId = context.requestId;
  if (error instanceof LlmProxyError) return error;
  if (error instanceof natsErrors.RequestError && error.isNoResponders()) {
    return new LlmProxyError('no_provider_available', `no worker is listening on ${context.subject}`, {
      requestId,
      cause: error,
    });
  }
  if (error instanceof natsErrors.NoRespondersError) {
    return new LlmProxyError('no_provider_available', `no worker is listening on ${context.subject}`, {
      requestId,
      cause: error,
    });
  }
  if (
    error instanceof natsErrors.TimeoutError ||
    (error instanceof natsErrors.RequestError && error.cause instanceof natsErrors.TimeoutError)
  ) {
    return new LlmProxyError('upstream_timeout', `no reply within ${context.timeoutMs} ms`, {
      requestId,
      cause: error,
    });
  }
  if (error instanceof natsErrors.InvalidArgumentError && /max_payload/.test(error.message)) {
    return new LlmProxyError('payload_too_large', 'request is larger than the NATS server max_payload', {
      requestId,
      cause: error,
    });
  }
  if (error instanceof natsErrors.ClosedConnectionError || error instanceof natsErrors.DrainingConnectionError) {
    return new LlmProxyError('internal', 'the NATS connection is closed', {
      requestId,
      cause: error,
      retryable: false,
    });
  }
  if (error instanceof ProxyError) {
    const options: LlmProxyErrorOptions = { requestId, cause: error, retryable: error.retryable };
    if (error.retryAfterMs !== undefined) options.retryAfterMs = error.retryAfterMs;
    return new LlmProxyError(error.code, error.message, options);
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new LlmProxyError('internal', `NATS request failed: ${detail}`, { requestId, cause: error, retryable: false });
}
