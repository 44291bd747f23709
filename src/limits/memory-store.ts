import {
  adjustScope,
  evaluateScope,
  isIdle,
  restamped,
  withStamp,
  type Adjustment,
  type Charge,
  type Refusal,
  type ScopePlan,
  type ScopeState,
} from './policy.js';
import type { AdmitOutcome, LimitStore, NearlySpent } from './types.js';

/**
 * One worker's limits, in process. Admission is synchronous (evaluate every
 * scope, then write every scope), so concurrent requests in one process are
 * exact; with several workers each would admit the full limit: use `nats` or
 * `redis` there.
 */
/** Admissions between two sweeps of idle records (so that agents seen once do not stay forever). */
const SWEEP_EVERY = 10_000;

export function createMemoryStore(): LimitStore {
  const states = new Map<string, ScopeState>();
  let sinceSweep = 0;
  return {
    async admit(plans: ScopePlan[], charge: Charge, now: number): Promise<AdmitOutcome> {
      sinceSweep += 1;
      if (sinceSweep >= SWEEP_EVERY) {
        sinceSweep = 0;
        for (const [key, state] of states) if (isIdle(state, now)) states.delete(key);
      }
      const refusals: Refusal[] = [];
      const nearlySpent: NearlySpent[] = [];
      const nextStates: ScopeState[] = [];
      plans.forEach((plan, index) => {
        const evaluation = evaluateScope(states.get(plan.scope.key) ?? {}, plan.limits, charge, now, index);
        refusals.push(...evaluation.refusals);
        nextStates.push(withStamp(evaluation.next, plan.stamp, now));
        for (const dimension of evaluation.nearlySpent) nearlySpent.push({ scopeIndex: index, dimension });
      });
      if (refusals.length > 0) {
        for (const plan of plans) {
          const state = restamped(states.get(plan.scope.key) ?? {}, plan.stamp, now);
          if (state !== undefined) states.set(plan.scope.key, state);
        }
        return { admitted: false, refusals };
      }
      for (const [index, plan] of plans.entries()) states.set(plan.scope.key, nextStates[index] as ScopeState);
      return { admitted: true, nearlySpent };
    },
    async adjust(plans: ScopePlan[], adjustment: Adjustment, now: number): Promise<void> {
      for (const plan of plans) {
        states.set(plan.scope.key, adjustScope(states.get(plan.scope.key) ?? {}, plan.limits, adjustment, now));
      }
    },
    async read(plans: ScopePlan[]): Promise<ScopeState[]> {
      return plans.map((plan) => states.get(plan.scope.key) ?? {});
    },
    async close(): Promise<void> {
      states.clear();
    },
  };
}
