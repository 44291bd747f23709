/** Latest instant an event's own clock is believed for: the end of year 9999 (PostgreSQL and JSON both hold it). */
const LATEST_MS = Date.UTC(10_000, 0, 1) - 1;

/**
 * When an event happened, for every count by time (aggregator hours, the PostgreSQL log's `ts`): the
 * event's `ts` when it reads as an instant between 1970 and 9999, else the time the stream stored it,
 * so that a worker with a broken clock still gets its requests counted, and both readers count them
 * in the same hour.
 */
export function usageEventTime(ts: string, storedAtMs: number): number {
  const parsed = Date.parse(ts);
  return Number.isNaN(parsed) || parsed < 0 || parsed > LATEST_MS ? storedAtMs : parsed;
}
