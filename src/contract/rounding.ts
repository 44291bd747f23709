/**
 * The precision of the numbers on the wire (replies, usage events, router records): one place, so that a
 * reply, its usage event and the router's attempt record round the same measurement the same way.
 */

/** Milliseconds to one decimal (0.1 ms): latencies and time to first token. */
export function roundMs(value: number): number {
  return Math.round(value * 10) / 10;
}

/** USD to 1e-8, so that sums and comparisons are free of float noise. */
export function roundUsd(value: number): number {
  return Math.round(value * 1e8) / 1e8;
}
