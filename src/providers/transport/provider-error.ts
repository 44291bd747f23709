/**
 * Every way a provider call can fail, mapped to one ProxyError. Retryability is
 * decided here and nowhere else: `retryable` means "the same request may
 * succeed if sent again, here later or to another deployment".
 */
import { ProxyError, type ErrorCode } from '../../contract/errors.js';
import { redact } from './redact.js';
import { parseRetryAfterMs } from './retry-after.js';
import type { CancelSignal } from './cancellation.js';

type HeaderValue = string | string[] | undefined;

/** Longest provider message kept in an error (some providers answer with whole HTML pages). */
const MAX_MESSAGE_LENGTH = 500;

/** Prompt-too-long wordings: OpenAI, DeepSeek and vLLM ("maximum context length"), llama.cpp ("context size"), Ollama ("context length"). */
const CONTEXT_LENGTH_PATTERN =
  /context[_ ]length[_ ]exceeded|maximum context length|exceeds? (?:the )?(?:maximum |available )?context (?:length|size|window)|context window (?:is )?exceeded|prompt is too long|too many tokens in (?:the )?prompt/i;

export function isContextLengthMessage(text: string): boolean {
  return CONTEXT_LENGTH_PATTERN.test(text);
}

/**
 * The provider's own message from an error body, read tolerantly: `{"error":{"message"}}` (OpenAI),
 * `{"error":"…"}` (Ollama), `{"message"}`, `{"detail"}` (vLLM/FastAPI), plain text; undefined when empty.
 */
export function extractProviderMessage(bodyText: string): string | undefined {
  const trimmed = bodyText.trim();
  if (trimmed === '') return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    return trimmed;
  }
  const fromValue = (value: unknown): string | undefined => {
    if (typeof value === 'string' && value.trim() !== '') return value.trim();
    if (Array.isArray(value)) return fromValue(value[0]);
    if (typeof value === 'object' && value !== null) {
      const record = value as Record<string, unknown>;
      return fromValue(record.message) ?? fromValue(record.error) ?? fromValue(record.detail) ?? fromValue(record.msg);
    }
    return undefined;
  };
  return fromValue(parsed) ?? trimmed;
}

/** The machine-readable error code in an OpenAI-shaped body (`context_length_exceeded`…), if any. */
function extractProviderCode(bodyText: string): string | undefined {
  try {
    const parsed = JSON.parse(bodyText) as { error?: { code?: unknown; type?: unknown } };
    const code = parsed?.error?.code ?? parsed?.error?.type;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

function truncate(text: string): string {
  return text.length <= MAX_MESSAGE_LENGTH ? text : `${text.slice(0, MAX_MESSAGE_LENGTH)}…`;
}

/** `<provider>: <message>`, secrets removed. */
export function providerMessage(provider: string, message: string, secrets: ReadonlyArray<string | undefined>): string {
  return `${provider}: ${truncate(redact(message.replace(/\s+/g, ' ').trim(), secrets))}`;
}

export interface HttpErrorInput {
  provider: string;
  status: number;
  headers: Record<string, HeaderValue>;
  bodyText: string;
  /** Values that must not appear in the message (the API key, secret headers). */
  secrets: ReadonlyArray<string | undefined>;
  now?: number;
}

interface StatusRule {
  code: ErrorCode;
  retryable: boolean;
}

/** The HTTP status table (vercel/ai's rule: 408, 409, 429 and 5xx are worth retrying). */
function ruleForStatus(status: number): StatusRule {
  switch (status) {
    case 400:
    case 422:
      return { code: 'invalid_request', retryable: false };
    case 401:
    case 403:
    case 404:
      // Our configured key or model name is at fault, not the agent's request: a 502 for the agent. Sending the same
      // call to the same deployment again cannot help; the router may still try another deployment or a fallback.
      return { code: 'upstream_error', retryable: false };
    case 408:
      return { code: 'upstream_timeout', retryable: true };
    case 409:
      return { code: 'upstream_error', retryable: true };
    case 413:
      return { code: 'payload_too_large', retryable: false };
    case 429:
      return { code: 'rate_limited', retryable: true };
    default:
      if (status >= 500) return { code: 'upstream_error', retryable: true };
      // Other answers (402 "insufficient balance", an unexpected redirect…) are the deployment's problem and lasting.
      return { code: 'upstream_error', retryable: false };
  }
}

/**
 * Google's wait, for APIs that send no Retry-After header (Gemini): a `google.rpc.RetryInfo` detail
 * in the error body, `{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}`.
 */
function googleRetryDelayMs(bodyText: string): number | undefined {
  if (!bodyText.includes('google.rpc.RetryInfo')) return undefined;
  try {
    const parsed = JSON.parse(bodyText) as unknown;
    const details = (Array.isArray(parsed) ? parsed[0] : parsed)?.error?.details;
    for (const detail of Array.isArray(details) ? details : []) {
      const delay = /^(\d+(?:\.\d+)?)s$/.exec(String(detail?.retryDelay ?? '').trim());
      if (String(detail?.['@type']).endsWith('google.rpc.RetryInfo') && delay !== null) return Number(delay[1]) * 1000;
    }
  } catch {
    // Not JSON: no delay.
  }
  return undefined;
}

export function errorFromStatus(input: HttpErrorInput): ProxyError {
  const rule = ruleForStatus(input.status);
  const original = extractProviderMessage(input.bodyText) ?? `HTTP ${input.status}`;
  const providerCode = extractProviderCode(input.bodyText);
  const contextLengthExceeded =
    (input.status === 400 || input.status === 413 || input.status === 422) &&
    (providerCode === 'context_length_exceeded' || isContextLengthMessage(original));
  // 529 is Anthropic's "overloaded", which may carry Retry-After as a 503 does.
  const retryAfterMs =
    input.status === 429 || input.status === 503 || input.status === 529
      ? (parseRetryAfterMs(input.headers, input.now) ?? googleRetryDelayMs(input.bodyText))
      : undefined;
  return new ProxyError(rule.code, providerMessage(input.provider, original, input.secrets), {
    retryable: rule.retryable,
    upstreamStatus: input.status,
    contextLengthExceeded,
    ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
  });
}

/** What a call whose signal was aborted throws: the reason when it is a ProxyError (deadline, cancel), else `cancelled`. */
export function abortError(signal: CancelSignal): ProxyError {
  const reason: unknown = signal.reason;
  if (reason instanceof ProxyError) return reason;
  return new ProxyError('cancelled', 'the request was cancelled', { retryable: false, cause: reason });
}

interface TransportRule {
  code: ErrorCode;
  retryable: boolean;
  describe: string;
}

/** undici and socket error codes (undici's lib/core/errors.js, Node's system errors). */
const TRANSPORT_RULES: Record<string, TransportRule> = {
  UND_ERR_CONNECT_TIMEOUT: { code: 'no_provider_available', retryable: true, describe: 'connect timed out' },
  ECONNREFUSED: { code: 'no_provider_available', retryable: true, describe: 'connection refused' },
  ENOTFOUND: { code: 'no_provider_available', retryable: true, describe: 'host not found' },
  EAI_AGAIN: { code: 'no_provider_available', retryable: true, describe: 'host name lookup failed' },
  EHOSTUNREACH: { code: 'no_provider_available', retryable: true, describe: 'host unreachable' },
  ENETUNREACH: { code: 'no_provider_available', retryable: true, describe: 'network unreachable' },
  ECONNRESET: { code: 'upstream_error', retryable: true, describe: 'connection reset' },
  EPIPE: { code: 'upstream_error', retryable: true, describe: 'connection broken' },
  UND_ERR_SOCKET: { code: 'upstream_error', retryable: true, describe: 'connection closed' },
  UND_ERR_CLOSED: { code: 'upstream_error', retryable: true, describe: 'connection closed' },
  UND_ERR_DESTROYED: { code: 'upstream_error', retryable: true, describe: 'connection pool closed' },
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: { code: 'upstream_error', retryable: true, describe: 'response cut short' },
  UND_ERR_HEADERS_TIMEOUT: { code: 'upstream_timeout', retryable: true, describe: 'no response headers in time' },
  UND_ERR_BODY_TIMEOUT: { code: 'upstream_timeout', retryable: true, describe: 'response body went silent' },
};

/** The first error code found on the error, its causes, or (AggregateError from connection attempts) its parts. */
function findErrorCode(error: unknown, depth = 0): string | undefined {
  if (typeof error !== 'object' || error === null || depth > 4) return undefined;
  const candidate = error as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof candidate.code === 'string' && candidate.code in TRANSPORT_RULES) return candidate.code;
  const fromCause = findErrorCode(candidate.cause, depth + 1);
  if (fromCause !== undefined) return fromCause;
  if (Array.isArray(candidate.errors)) {
    for (const part of candidate.errors) {
      const fromPart = findErrorCode(part, depth + 1);
      if (fromPart !== undefined) return fromPart;
    }
  }
  if (typeof candidate.code === 'string') return candidate.code;
  return undefined;
}

/** Any failure of the HTTP exchange itself (no usable status), mapped by its code. */
export function errorFromTransport(provider: string, error: unknown, signal?: CancelSignal): ProxyError {
  if (signal?.aborted) return abortError(signal);
  if (error instanceof ProxyError) return error;
  const code = findErrorCode(error);
  const rule = code === undefined ? undefined : TRANSPORT_RULES[code];
  if (rule !== undefined) {
    return new ProxyError(rule.code, `${provider}: ${rule.describe} (${code})`, {
      retryable: rule.retryable,
      cause: error,
    });
  }
  if (code?.startsWith('HPE_')) {
    return new ProxyError('upstream_error', `${provider}: invalid HTTP response (${code})`, {
      retryable: true,
      cause: error,
    });
  }
  // Unknown: keep it out of the message (it may hold anything) but in the cause, for logs.
  return new ProxyError('upstream_error', `${provider}: request failed${code === undefined ? '' : ` (${code})`}`, {
    retryable: false,
    cause: error,
  });
}

/** A 2xx answer we cannot read (malformed JSON, empty body, unexpected shape). */
export function malformedResponse(provider: string, detail: string, status?: number): ProxyError {
  return new ProxyError('upstream_error', `${provider}: ${detail}`, {
    retryable: true,
    ...(status !== undefined ? { upstreamStatus: status } : {}),
  });
}

/** A stream that ended before its end marker and before any finish reason: a failure, never a clean end. */
export function streamEndedEarly(provider: string): ProxyError {
  return new ProxyError('upstream_error', `${provider}: stream ended early`, { retryable: true, upstreamStatus: 200 });
}

/** An error sent inside a stream (`data: {"error":…}` or an NDJSON `{"error":"…"}` line) after a 200. */
export function errorFromStreamPayload(
  provider: string,
  payload: unknown,
  secrets: ReadonlyArray<string | undefined>,
): ProxyError {
  const message = extractProviderMessage(JSON.stringify(payload)) ?? 'error in stream';
  const contextLengthExceeded = isContextLengthMessage(message);
  return new ProxyError(
    contextLengthExceeded ? 'invalid_request' : 'upstream_error',
    providerMessage(provider, message, secrets),
    {
      retryable: !contextLengthExceeded,
      upstreamStatus: 200,
      contextLengthExceeded,
    },
  );
}

/**
 * A 2xx answer larger than the provider's `max_response_bytes`: the call is cut off. Not retryable:
 * the same upstream would most likely send the same again, and every try costs the bytes.
 */
export function responseTooLarge(provider: string, limit: number, status?: number): ProxyError {
  return new ProxyError('upstream_error', `${provider}: the answer exceeded max_response_bytes (${limit} bytes)`, {
    retryable: false,
    ...(status !== undefined ? { upstreamStatus: status } : {}),
  });
}

/** A line of a streamed answer (or an SSE event's data) longer than the provider's `max_line_bytes`. Not retryable, as above. */
export function lineTooLong(provider: string, limit: number, what: 'line' | 'event', status?: number): ProxyError {
  return new ProxyError(
    'upstream_error',
    `${provider}: ${what === 'line' ? 'a line' : 'an event'} of the answer exceeded max_line_bytes (${limit} bytes)`,
    {
      retryable: false,
      ...(status !== undefined ? { upstreamStatus: status } : {}),
    },
  );
}
