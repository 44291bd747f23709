import type { ProxyError } from '../contract/errors.js';

export interface CooldownPolicy {
  /** Failures within `windowMs` (with no success in between) that take a deployment out. */
  failures: number;
  windowMs: number;
  durationMs: number;
}

/** Weight of the newest sample in the latency average: about the last 7 calls count. */
export const EWMA_ALPHA = 0.25;

/**
 * The health of one upstream: a provider and a physical model name. It is
 * shared by every logical model that routes there, because a key over its
 * rate limit or a box that is down is so for all of them. Time is passed in
 * (`now`, epoch ms) so that transitions can be tested without waiting.
 */
export class DeploymentState {
  inFlight = 0;
  ewmaLatencyMs: number | undefined = undefined;
  /** Epoch ms; the deployment gets no traffic before it. */
  cooldownUntil = 0;
  /** Failure times since the last success or cooldown, oldest first, at most `policy.failures` kept. */
  private readonly failureTimes: number[] = [];

  constructor(
    readonly provider: string,
    readonly physicalName: string,
    private readonly policy: CooldownPolicy,
  ) {}

  isCoolingDown(now: number): boolean {
    return now < this.cooldownUntil;
  }

  recordLatency(latencyMs: number): void {
    this.ewmaLatencyMs =
      this.ewmaLatencyMs === undefined ? latencyMs : this.ewmaLatencyMs + EWMA_ALPHA * (latencyMs - this.ewmaLatencyMs);
  }

  /** A success ends a run of failures: only failures in a row take a busy deployment out. */
  recordSuccess(latencyMs: number): void {
    this.recordLatency(latencyMs);
    if (this.failureTimes.length > 0) this.failureTimes.length = 0;
  }

  /**
   * Count a retryable failure. A 429 takes the deployment out at once, for
   * `durationMs` or the provider's Retry-After when longer; otherwise the
   * `failures`-th failure within `windowMs` does. Returns true when a
   * cooldown started.
   */
  recordFailure(now: number, error: ProxyError): boolean {
    if (error.code === 'rate_limited' || error.upstreamStatus === 429) {
      const retryAfterMs = error.retryAfterMs ?? 0;
      this.startCooldown(now, Math.max(this.policy.durationMs, retryAfterMs));
      return true;
    }
    const times = this.failureTimes;
    times.push(now);
    while (
      times.length > 0 &&
      (times.length > this.policy.failures || (times[0] as number) <= now - this.policy.windowMs)
    )
      times.shift();
    if (times.length >= this.policy.failures) {
      this.startCooldown(now, this.policy.durationMs);
      return true;
    }
    return false;
  }

  /** Failures inside the window since the last success (for health reports). */
  recentFailures(now: number): number {
    let count = 0;
    for (const time of this.failureTimes) if (time > now - this.policy.windowMs) count++;
    return count;
  }

  private startCooldown(now: number, durationMs: number): void {
    // Never shorten a cooldown already running (a later, shorter Retry-After).
    this.cooldownUntil = Math.max(this.cooldownUntil, now + durationMs);
    // After the cooldown the deployment starts afresh: one more failure must not take it out again,
    // and its old latency (likely of timeouts) must not keep lowest-latency from measuring it anew.
    this.failureTimes.length = 0;
    this.ewmaLatencyMs = undefined;
  }
}
