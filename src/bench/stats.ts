/**
 * Statistics for the benchmark: exact percentiles over a sorted array (the
 * sample counts here are tens of thousands at most, so no HDR histogram is
 * needed), and a least-squares slope for memory growth over a soak.
 */

export interface LatencySummary {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** Sorts a copy ascending as numbers (Array#sort would compare as strings). */
export function sortedCopy(samples: ArrayLike<number>): Float64Array {
  const sorted = Float64Array.from(samples);
  sorted.sort();
  return sorted;
}

/**
 * Nearest-rank percentile of an ascending array: the smallest sample such that
 * at least `percent`% of the samples are less than or equal to it. NaN when empty.
 */
export function percentile(sorted: ArrayLike<number>, percent: number): number {
  if (percent < 0 || percent > 100 || Number.isNaN(percent)) throw new RangeError(`percentile out of range: ${percent}`);
  const count = sorted.length;
  if (count === 0) return Number.NaN;
  if (percent === 0) return sorted[0]!;
  const rank = Math.ceil((percent / 100) * count);
  return sorted[Math.min(count, Math.max(1, rank)) - 1]!;
}

export function summarize(samples: ArrayLike<number>): LatencySummary {
  const sorted = sortedCopy(samples);
  const count = sorted.length;
  if (count === 0) {
    return { count: 0, min: Number.NaN, mean: Number.NaN, p50: Number.NaN, p90: Number.NaN, p99: Number.NaN, p999: Number.NaN, max: Number.NaN };
  }
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    count,
    min: sorted[0]!,
    mean: sum / count,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    p999: percentile(sorted, 99.9),
    max: sorted[count - 1]!,
  };
}

/** Least-squares slope of y over x (NaN with fewer than two distinct x). */
export function linearSlope(points: ReadonlyArray<{ x: number; y: number }>): number {
  const count = points.length;
  if (count < 2) return Number.NaN;
  let sumX = 0;
  let sumY = 0;
  for (const point of points) {
    sumX += point.x;
    sumY += point.y;
  }
  const meanX = sumX / count;
  const meanY = sumY / count;
  let covariance = 0;
  let varianceX = 0;
  for (const point of points) {
    covariance += (point.x - meanX) * (point.y - meanY);
    varianceX += (point.x - meanX) ** 2;
  }
  return varianceX === 0 ? Number.NaN : covariance / varianceX;
}

/** A latency minus a floor's, or NaN when either is missing. */
export function addedLatency(gateway: number | undefined, floor: number | undefined): number {
  if (gateway === undefined || floor === undefined) return Number.NaN;
  return gateway - floor;
}
