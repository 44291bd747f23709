/**
 * The integer units usage is summed in, by the aggregator and the PostgreSQL log alike, so that both
 * give the same totals whatever the order of addition.
 */

/** Cost in integer nano-dollars. */
export function usdToNano(costUsd: number): number {
  return Math.round(costUsd * 1e9);
}

/** Latency in integer microseconds. */
export function msToMicros(latencyMs: number): number {
  return Math.round(latencyMs * 1000);
}
