import { parseDuration } from '../config/duration.js';

/**
 * Rollups are kept per UTC hour; days are derived from hours. An hour is
 * numbered by its start: `Math.floor(epochMs / HOUR_MS)`.
 */
export const HOUR_MS = 3_600_000;
export const HOURS_PER_DAY = 24;

export function hourOf(epochMs: number): number {
  return Math.floor(epochMs / HOUR_MS);
}

/** `2026-11-27T21:00Z`: the hour's start, ISO 8601 to the minute. */
export function hourLabel(hour: number): string {
  return `${new Date(hour * HOUR_MS).toISOString().slice(0, 13)}:00Z`;
}

/** `2026-11-27`: the UTC day the hour belongs to. */
export function dayLabel(hour: number): string {
  return new Date(hour * HOUR_MS).toISOString().slice(0, 10);
}

const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;
const RELATIVE_SPAN = /^\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)$/;

/**
 * An instant from an ISO 8601 timestamp (a date alone is UTC midnight; a time
 * without zone is taken as UTC) or a span back from `now` (`7d`, `24h`,
 * `30m`). Undefined when it is neither.
 */
export function parseInstant(value: string, now: number): number | undefined {
  const text = value.trim();
  if (RELATIVE_SPAN.test(text)) {
    const span = parseDuration(text);
    return span === undefined ? undefined : now - span;
  }
  if (!ISO_TIMESTAMP.test(text)) return undefined;
  const zoned = /(?:Z|[+-]\d{2}:?\d{2})$/.test(text) || !text.includes(':') ? text : `${text}Z`;
  const parsed = Date.parse(zoned.replace(' ', 'T'));
  return Number.isNaN(parsed) ? undefined : parsed;
}

/**
 * The hours a query covers: `since` is rounded down to the start of its hour
 * (inclusive) and `until` up to the end of its hour (exclusive), because that
 * is the resolution the rollups keep.
 */
export function sinceHourOf(epochMs: number): number {
  return Math.floor(epochMs / HOUR_MS);
}

export function untilHourOf(epochMs: number): number {
  return Math.ceil(epochMs / HOUR_MS);
}
