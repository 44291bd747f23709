import type { LimitSetConfig } from '../config/limits-schema.js';
import type {
  Adjustment,
  BudgetDimension,
  Charge,
  Dimension,
  DimensionStanding,
  Refusal,
  ScopeKind,
  ScopePlan,
  ScopeState,
  SliceExchange,
  SliceGrant,
} from './policy.js';

/** What the worker knows about a request before routing it. */
export interface AdmissionRequest {
  requestId: string;
  agentId: string | undefined;
  microdaoId: string | undefined;
  /** The per-agent key the request came with: its limits are one more scope (`key.<id>`). */
  key?: { id: string; limits: LimitSetConfig } | undefined;
  /** The logical model the request names. */
  model: string;
  /** Prompt tokens as estimated by the worker (gpt-tokenizer). */
  estimatedPromptTokens: number;
  /** The request's max_tokens / max_completion_tokens, else the model's default_max_tokens; else `limits.default_max_tokens`. */
  maxCompletionTokens?: number | undefined;
  /** The most the request can cost: prompt estimate plus max completion tokens, at the model's prices. */
  estimatedMaxCostUsd: number;
  /** How long the concurrency slot may be held if the worker dies; defaults to `limits.concurrency_lease_ms`. */
  leaseMs?: number | undefined;
  /**
   * The request's deadline (ms since the epoch, the limiter's clock): a concurrency slot's lease never
   * outlives it, so a settle that cannot reach the store keeps the slot no longer than the request could run.
   */
  deadlineAt?: number | undefined;
}

export interface ActualUsage {
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
}

/** How a settle or cancel went: `stored: false` when the store could not be reached (the reservation stays charged). */
export interface SettleOutcome {
  stored: boolean;
  error?: Error;
}

export interface Reservation {
  readonly requestId: string;
  /** Tokens held against tokens-per-minute limits until settled. */
  readonly reservedTokens: number;
  /** USD held against budgets until settled. */
  readonly reservedUsd: number;
  /** Admitted without the store, by the `fail_open` policy: nothing was counted. */
  readonly failedOpen: boolean;
  /** The store error behind a fail-open admission (for the caller's log). */
  readonly storeError: Error | undefined;
  /** Replace the reservation with the real usage; frees the concurrency slot. Idempotent; never throws. */
  settle(usage: ActualUsage): Promise<SettleOutcome>;
  /** The request consumed nothing but its place in requests/minute (failed before any upstream usage). Idempotent; never throws. */
  cancel(): Promise<SettleOutcome>;
  /**
   * The request is not this admission's to count: it was passed on to another worker, which admits and
   * counts it itself. Its place in requests/minute is given back too. Idempotent; never throws.
   */
  refund(): Promise<SettleOutcome>;
}

export interface LimiterCounters {
  admitted: number;
  refused: number;
  /** Store operations that failed (admission, settle, cancel, rollback). */
  storeErrors: number;
  /** Admissions let through by `fail_open` while the store was unreachable. */
  failedOpen: number;
  /** Admissions refused by `fail_closed` while the store was unreachable. */
  failedClosed: number;
  /** Compare-and-swap conflicts retried (nats backend). */
  conflicts: number;
  /**
   * Admissions refused `rate_limited` (retryable) because a scope's key stayed contended past the
   * store's bound (nats backend, issue 21); also counted in `refused`.
   */
  contended: number;
  /** Refusals by the refusing scope's kind and dimension, keyed `kind:dimension` (`agent:rpm`, `key:daily_usd`). */
  refusedBy: Record<string, number>;
  /**
   * Admissions after which a USD budget was at or above 90% used (the reservation counted: it is
   * the most the request may cost), keyed `kind:dimension` (`agent:daily_usd`, `microdao:monthly_usd`):
   * at most 8 keys. One admission counts once per budget it leaves nearly spent.
   */
  budgetNear: Record<string, number>;
}

export interface ScopeStanding {
  kind: ScopeKind;
  id: string;
  /** Used and remaining against the limits of `limitsFrom`. */
  dimensions: DimensionStanding[];
  /**
   * `workers`: the limits the workers enforce, as the last admission on the scope wrote them into
   * its record. `local`: this process's config, because the record holds none (`fallback` says why).
   */
  limitsFrom: 'workers' | 'local';
  /** With `local`: no record (nothing counted that is still kept), or a record written before limits were stored in it. */
  fallback?: 'no_record' | 'record_without_limits';
  /** With `workers`: the writing worker's limits config (fingerprint), its host and since when the record holds them. */
  enforcedBy?: { config: string; host: string | undefined; since: number };
  /**
   * This process's config: its fingerprint, its limits for the scope (per dimension, USD for budgets;
   * a key's are in the key store, so none) and whether they differ from those the standing uses.
   */
  local: { config: string; limits: Partial<Record<Dimension, number>>; differs: boolean };
}

export interface StandingOptions {
  microdaoId?: string | undefined;
  model?: string | undefined;
  /** A per-agent key's id: its scope (`key.<id>`), whose limits only the records know. */
  keyId?: string | undefined;
}

export interface Limiter {
  readonly backend: 'memory' | 'nats' | 'redis' | 'disabled';
  /** Admit the request against every applicable limit, or throw a ProxyError (`rate_limited` / `budget_exceeded`). */
  admit(request: AdmissionRequest): Promise<Reservation>;
  /**
   * An agent's standing (and its microDAO's / a model's / a key's when named and limited), measured
   * against the limits the workers stored in each scope's record (see policy.ts `RecordedLimits`).
   */
  standing(agentId: string, options?: StandingOptions): Promise<ScopeStanding[]>;
  counters(): LimiterCounters;
  close(): Promise<void>;
}

/** A USD budget an admission left at or above 90% used (policy.ts `isBudgetNear`). */
export interface NearlySpent {
  /** Index into the plans of the admission. */
  scopeIndex: number;
  dimension: BudgetDimension;
}

export type AdmitOutcome =
  | { admitted: true; nearlySpent?: NearlySpent[] | undefined }
  | { admitted: false; refusals: Refusal[] };

/** A shared (or in-process) place where scope records live. Every method is atomic as documented per store. */
export interface LimitStore {
  /**
   * Admit on every scope or on none. Each plan's `stamp` is written into its record where the
   * record holds other limits (or none), by an admission and by a refusal (which counts nothing).
   */
  admit(plans: ScopePlan[], charge: Charge, now: number): Promise<AdmitOutcome>;
  /** Settle, cancel or roll back; never refuses. */
  adjust(plans: ScopePlan[], adjustment: Adjustment, now: number): Promise<void>;
  read(plans: ScopePlan[]): Promise<ScopeState[]>;
  /**
   * Issue 21, stores with one record per scope written by compare-and-swap (nats): a worker's slice
   * of a shared scope given back and taken in one write (policy.ts `exchangeSlice`); the record after it.
   */
  exchange?(plan: ScopePlan, exchange: SliceExchange, now: number): Promise<{ granted: SliceGrant; state: ScopeState }>;
  close(): Promise<void>;
}

/** Thrown by stores when the backing server cannot be reached or answers with an error. */
export class LimitStoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LimitStoreError';
  }
}

/**
 * Thrown by a store when an operation could not get its turn on a key within its bound (issue 21):
 * the store answers, other writers keep winning. Not the store being down: an admission refused this
 * way is `rate_limited` (retryable), whatever `on_store_error` says.
 */
export class LimitContentionError extends LimitStoreError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LimitContentionError';
  }
}
