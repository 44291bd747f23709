/**
 * Anthropic's errors. An HTTP error answer (`{"type":"error","error":{"type","message"}}`) goes
 * through the shared status table (transport/provider-error.ts), which reads `error.message`;
 * an error sent inside a 200 answer (an `error` stream event) is mapped as the HTTP answer of
 * its type would be, so that `overloaded_error` mid-stream is as retryable as a 529.
 */
import { ProxyError } from '../../contract/errors.js';
import { providerSecrets } from '../transport/http.js';
import { errorFromStatus } from '../transport/provider-error.js';
import type { ProviderSettings } from '../types.js';

/** Anthropic's error types and the HTTP status each comes with (its "Errors" page). */
const STATUS_BY_ERROR_TYPE: Readonly<Record<string, number>> = {
  invalid_request_error: 400,
  authentication_error: 401,
  billing_error: 402,
  permission_error: 403,
  not_found_error: 404,
  conflict_error: 409,
  request_too_large: 413,
  rate_limit_error: 429,
  api_error: 500,
  timeout_error: 504,
  overloaded_error: 529,
};

/** The HTTP status of an error type; an unknown type is taken as a server error (retryable). */
export function statusForErrorType(type: string | undefined): number {
  return type !== undefined && Object.hasOwn(STATUS_BY_ERROR_TYPE, type) ? STATUS_BY_ERROR_TYPE[type]! : 500;
}

/**
 * An error Anthropic sent with status 200 (an `error` stream event, or an error body): mapped like
 * the HTTP answer of its type, message kept (minus secrets), `upstreamStatus` 200 as it was.
 */
export function errorFromAnthropicPayload(settings: ProviderSettings, payload: unknown): ProxyError {
  const type = (payload as { error?: { type?: unknown } } | null)?.error?.type;
  const mapped = errorFromStatus({
    provider: settings.name,
    status: statusForErrorType(typeof type === 'string' ? type : undefined),
    headers: {},
    bodyText: JSON.stringify(payload),
    secrets: providerSecrets(settings),
  });
  return new ProxyError(mapped.code, mapped.message, {
    retryable: mapped.retryable,
    upstreamStatus: 200,
    contextLengthExceeded: mapped.contextLengthExceeded,
  });
}

/** Whether a decoded payload is Anthropic's error envelope. */
export function isAnthropicError(json: unknown): boolean {
  return typeof json === 'object' && json !== null && (json as { type?: unknown }).type === 'error';
}
