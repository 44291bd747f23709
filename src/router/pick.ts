import type { RoutingStrategy } from '../config/schema.js';
import type { DeploymentState } from './deployment-state.js';

/** What a strategy needs to know about a deployment. */
export interface Candidate {
  weight: number;
  state: DeploymentState;
  /** False when its provider is not configured in this worker. */
  usable: boolean;
}

export interface PickOptions {
  strategy: RoutingStrategy;
  now: number;
  random: () => number;
  /** lowest-latency: share of picks made at random, so that a slow or recovered deployment is measured again. */
  exploration: number;
  /** Deployments already tried for this request: avoided while another one is available. */
  tried?: ReadonlySet<Candidate> | undefined;
  /** Deployments that must not be tried again for this request (they refused it for a reason of their own: a bad key…). */
  excluded?: ReadonlySet<Candidate> | undefined;
}

/*
 * Passes, in order of preference: untried deployments with a weight, then
 * untried standbys (weight 0), then the same allowing a deployment already
 * tried. A deployment cooling down, or whose provider is missing, is never picked.
 */
const ALLOW_TRIED = 1;
const ALLOW_STANDBY = 2;
const PASSES = [0, ALLOW_STANDBY, ALLOW_TRIED, ALLOW_TRIED | ALLOW_STANDBY] as const;

function isEligible(candidate: Candidate, options: PickOptions, pass: number): boolean {
  if (!candidate.usable || candidate.state.cooldownUntil > options.now) return false;
  if (options.excluded?.has(candidate)) return false;
  if ((pass & ALLOW_STANDBY) === 0 && candidate.weight <= 0) return false;
  if ((pass & ALLOW_TRIED) === 0 && options.tried !== undefined && options.tried.has(candidate)) return false;
  return true;
}

/** Choose the deployment for the next attempt, or undefined when none can take traffic. */
export function pickDeployment<T extends Candidate>(candidates: readonly T[], options: PickOptions): T | undefined {
  if (candidates.length === 1) {
    const only = candidates[0] as T;
    return isEligible(only, options, ALLOW_TRIED | ALLOW_STANDBY) ? only : undefined;
  }
  for (const pass of PASSES) {
    if ((pass & ALLOW_TRIED) !== 0 && options.tried === undefined) continue;
    const picked = pickInPass(candidates, options, pass);
    if (picked !== undefined) return picked;
  }
  return undefined;
}

function pickInPass<T extends Candidate>(candidates: readonly T[], options: PickOptions, pass: number): T | undefined {
  switch (options.strategy) {
    case 'weighted':
      return pickWeighted(candidates, options, pass);
    case 'least-in-flight':
      return pickLeastInFlight(candidates, options, pass);
    case 'lowest-latency':
      return options.random() < options.exploration
        ? pickUniform(candidates, options, pass)
        : pickLowestLatency(candidates, options, pass);
  }
}

/** Probability proportional to weight; standbys (weight 0) count as 1 among themselves. */
function pickWeighted<T extends Candidate>(
  candidates: readonly T[],
  options: PickOptions,
  pass: number,
): T | undefined {
  let total = 0;
  let last: T | undefined;
  for (const candidate of candidates) {
    if (!isEligible(candidate, options, pass)) continue;
    total += candidate.weight > 0 ? candidate.weight : 1;
    last = candidate;
  }
  if (last === undefined) return undefined;
  let point = options.random() * total;
  for (const candidate of candidates) {
    if (!isEligible(candidate, options, pass)) continue;
    point -= candidate.weight > 0 ? candidate.weight : 1;
    if (point < 0) return candidate;
  }
  // Rounding can leave `point` at 0 after the last subtraction.
  return last;
}

function pickUniform<T extends Candidate>(candidates: readonly T[], options: PickOptions, pass: number): T | undefined {
  let count = 0;
  let chosen: T | undefined;
  for (const candidate of candidates) {
    if (!isEligible(candidate, options, pass)) continue;
    count++;
    // Reservoir sampling: every eligible candidate ends up chosen with probability 1/count.
    if (options.random() * count < 1) chosen = candidate;
  }
  return chosen;
}

/** Fewest calls in flight; ties broken at random so that an idle pool is not always entered by its first member. */
function pickLeastInFlight<T extends Candidate>(
  candidates: readonly T[],
  options: PickOptions,
  pass: number,
): T | undefined {
  let best: T | undefined;
  let ties = 0;
  for (const candidate of candidates) {
    if (!isEligible(candidate, options, pass)) continue;
    if (best === undefined || candidate.state.inFlight < best.state.inFlight) {
      best = candidate;
      ties = 1;
    } else if (candidate.state.inFlight === best.state.inFlight) {
      ties++;
      if (options.random() * ties < 1) best = candidate;
    }
  }
  return best;
}

/**
 * Lowest average latency. A deployment never measured (new, or back from a
 * cooldown, which forgets the old average) goes first so that it gets measured,
 * but only one request at a time probes it: while the probe is in flight it
 * ranks last, so a deployment that is still slow does not draw a burst.
 */
function pickLowestLatency<T extends Candidate>(
  candidates: readonly T[],
  options: PickOptions,
  pass: number,
): T | undefined {
  let best: T | undefined;
  let bestLatency = Infinity;
  for (const candidate of candidates) {
    if (!isEligible(candidate, options, pass)) continue;
    const measured = candidate.state.ewmaLatencyMs;
    const latency = measured ?? (candidate.state.inFlight === 0 ? -1 : Infinity);
    if (best === undefined || latency < bestLatency) {
      best = candidate;
      bestLatency = latency;
    }
  }
  return best;
}
