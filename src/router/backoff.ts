// By hand, not p-retry/exponential-backoff: the router owns the retry loop (deadline, Retry-After, fallbacks, cooldowns); all it needs from a library is this formula.
/** Retry timing: pure functions, so that tests can hand in their own random source. */

export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
  /** Fraction of the delay randomised: 0 = none, 1 = "full jitter" (uniform in [0, delay]). */
  jitter: number;
}

/**
 * Delay before retry number `retry` (1 for the first retry): exponential from
 * `baseMs`, capped at `maxMs`, then the jittered fraction drawn at random so
 * that many requests failing together do not come back together.
 */
export function backoffMs(retry: number, policy: BackoffPolicy, random: () => number): number {
  const exponential = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, retry - 1));
  return exponential * (1 - policy.jitter) + exponential * policy.jitter * random();
}

/**
 * Delay before retrying a deployment already tried: the backoff, or the
 * provider's Retry-After when that is longer (Retry-After is not capped by
 * `maxMs`: the provider has said when it will take the call again).
 */
export function retryDelayMs(
  retry: number,
  policy: BackoffPolicy,
  random: () => number,
  retryAfterMs: number | undefined,
): number {
  const backoff = backoffMs(retry, policy, random);
  return retryAfterMs !== undefined && retryAfterMs > backoff ? retryAfterMs : backoff;
}

/** A wait is worth it only when the retry still has time to run after it. */
export function fitsBeforeDeadline(now: number, delayMs: number, deadlineAt: number): boolean {
  return now + delayMs < deadlineAt;
}
