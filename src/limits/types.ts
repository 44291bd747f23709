import type { LimitSetConfig } from '../config/limits-schema.js';
import type { Adjustment, Charge, DimensionStanding, Refusal, ScopeKind, ScopePlan, ScopeState } from './policy.js';

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
  /** Refusals by the refusing scope's kind and dimension, keyed `kind:dimension` (`agent:rpm`, `key:daily_usd`). */
  refusedBy: Record<string, number>;
}

export interface ScopeStanding {
  kind: ScopeKind;
  id: string;
  dimensions: DimensionStanding[];
}

export interface Limiter {
  readonly backend: 'memory' | 'nats' | 'redis' | 'disabled';
  /** Admit the request against every applicable limit, or throw a ProxyError (`rate_limited` / `budget_exceeded`). */
  admit(request: AdmissionRequest): Promise<Reservation>;
  /** An agent's standing (and its microDAO's / a model's when named and limited). */
  standing(agentId: string, options?: { microdaoId?: string; model?: string }): Promise<ScopeStanding[]>;
  counters(): LimiterCounters;
  close(): Promise<void>;
}

export type AdmitOutcome = { admitted: true } | { admitted: false; refusals: Refusal[] };

/** A shared (or in-process) place where scope records live. Every method is atomic as documented per store. */
export interface LimitStore {
  /** Admit on every scope or on none. */
  admit(plans: ScopePlan[], charge: Charge, now: number): Promise<AdmitOutcome>;
  /** Settle, cancel or roll back; never refuses. */
  adjust(plans: ScopePlan[], adjustment: Adjustment, now: number): Promise<void>;
  read(plans: ScopePlan[]): Promise<ScopeState[]>;
  close(): Promise<void>;
}

/** Thrown by stores when the backing server cannot be reached or answers with an error. */
export class LimitStoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LimitStoreError';
  }
}
