/**
 * How long a provider asks us to wait (429/503): `retry-after-ms` (OpenAI,
 * milliseconds), else `Retry-After` as delta-seconds or an HTTP date.
 * Undefined when absent or unreadable; never negative.
 */
type HeaderValue = string | string[] | undefined;

function firstValue(value: HeaderValue): string | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  const trimmed = text?.trim();
  return trimmed === undefined || trimmed === '' ? undefined : trimmed;
}

export function parseRetryAfterMs(headers: Record<string, HeaderValue>, now: number = Date.now()): number | undefined {
  const milliseconds = firstValue(headers['retry-after-ms']);
  if (milliseconds !== undefined && /^\d+(\.\d+)?$/.test(milliseconds)) return Math.max(0, Number(milliseconds));

  const retryAfter = firstValue(headers['retry-after']);
  if (retryAfter === undefined) return undefined;
  if (/^\d+(\.\d+)?$/.test(retryAfter)) return Math.max(0, Number(retryAfter) * 1000);
  // An HTTP date names its month; without that check Date.parse would take "-3" for a year.
  if (!/[A-Za-z]{3}/.test(retryAfter)) return undefined;
  const date = Date.parse(retryAfter);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}
