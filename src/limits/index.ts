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
  DEFAULT_REDIS_URL,
  type LimiterDeps,
} from './limiter.js';
export type {
  ActualUsage,
  AdmissionRequest,
  Limiter,
  LimiterCounters,
  Reservation,
  ScopeStanding,
  SettleOutcome,
} from './types.js';
export { LimitStoreError } from './types.js';
export type { Dimension, DimensionStanding, ScopeKind } from './policy.js';
export { encodeKeyToken, RATE_WINDOW_MS } from './policy.js';
export {
  createLimitHooks,
  maxCostUsd,
  type LimitHooks,
  type LimitHooksOptions,
  type LimitHookContext,
  type LimitHookOutcome,
  type PricedModel,
} from './hooks.js';
