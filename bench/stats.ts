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
  if (percent < 0 || percent > 100 || Number.isNaN(percent))
    throw new RangeError(`percentile out of range: ${percent}`);
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
    return {
      count: 0,
      min: Number.NaN,
      mean: Number.NaN,
      p50: Number.NaN,
      p90: Number.NaN,
      p99: Number.NaN,
      p999: Number.NaN,
      max: Number.NaN,
    };
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

export interface MedianInterval {
  /** Median of the values. */
  median: number;
  low: number;
  high: number;
  /** The interval's actual coverage (order statistics give steps, not exactly the level asked for). */
  coverage: number;
}

/**
 * A distribution-free confidence interval for the median of `values` (the sign-test interval):
 * the k-th smallest and k-th largest value, with k the largest rank such that a Binomial(n, ½)
 * falls below k with probability at most (1 − level)/2. It assumes nothing about the shape of
 * the noise, only that the values are independent: round-by-round differences of paired bench
 * rounds are. Undefined when there are too few values for the level (fewer than 6 at 95 %).
 */
export function medianInterval(values: readonly number[], level = 0.95): MedianInterval | undefined {
  const count = values.length;
  if (count === 0) return undefined;
  const sorted = sortedCopy(values);
  const tail = (1 - level) / 2;
  // P(B ≤ j) for B ~ Binomial(count, ½), summed term by term (count is a handful of rounds).
  let term = 0.5 ** count;
  let below = 0;
  let rank = 0;
  for (let j = 0; j < count; j++) {
    if (below + term > tail) break;
    below += term;
    rank = j + 1;
    term = (term * (count - j)) / (j + 1);
  }
  if (rank === 0) return undefined;
  const middle = count % 2 === 1 ? sorted[(count - 1) / 2]! : (sorted[count / 2 - 1]! + sorted[count / 2]!) / 2;
  return { median: middle, low: sorted[rank - 1]!, high: sorted[count - rank]!, coverage: 1 - 2 * below };
}
