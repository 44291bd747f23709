/**
 * Rate limits and budgets, exact across workers (issue 5). The worker calls
 * `limiter.admit()` before routing and `reservation.settle()` (or `cancel()`)
 * after the reply; nothing here knows about the worker or the router.
 */
export {
  createLimiter,
  redisUrlFor,
  reservedCompletionTokens,
  redactRedisUrl,
  LimitRefusalError,
  DEFAULT_REDIS_URL,
  type LimiterDeps,
} from './limiter.js';
export type {
  ActualUsage,
  AdmissionRequest,
  Limiter,
  LimiterCounters,
  Reservation,
  NearlySpent,
  ScopeStanding,
  SettleOutcome,
  StandingOptions,
} from './types.js';
export { LimitStoreError } from './types.js';
export type { BudgetDimension, Dimension, DimensionStanding, RecordedLimits, ScopeKind } from './policy.js';
export {
  BUDGET_NEAR_PERCENT,
  configFingerprint,
  DIMENSIONS,
  encodeKeyToken,
  RATE_WINDOW_MS,
  SCOPE_KINDS,
} from './policy.js';
export {
  createLimitHooks,
  maxCostUsd,
  type LimitHooks,
  type LimitHooksOptions,
  type LimitHookContext,
  type LimitHookOutcome,
  type PricedModel,
} from './hooks.js';
