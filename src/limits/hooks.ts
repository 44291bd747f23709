import type { Context } from '@opentelemetry/api';
import type { ChatRequest } from '../contract/request.js';
import { ProxyError } from '../contract/errors.js';
import type { LimitSetConfig, LimitsConfig } from '../config/limits-schema.js';
import { LimitRefusalError, reservedCompletionTokens } from './limiter.js';
import type { Limiter, Reservation } from './types.js';
import { endLimitsSpan, startLimitsSpan, type LimitsRefusal } from '../telemetry/tracing.js';

/**
 * The limiter as the worker's request hooks (`beforeRoute` / `afterRoute`).
 * The shapes below are the parts of the worker's RequestContext and
 * RequestOutcome used here, written out so that limits does not import the
 * worker (dependencies point down); the worker's types satisfy them.
 */
export interface LimitHookContext {
  /** The worker's own id for this request (unique whatever the client's request_id): the concurrency lease's key. */
  eventId: string;
  request: ChatRequest;
  agentId: string | undefined;
  /** The request's per-agent key and its limits, a scope of its own. */
  key?: { id: string; limits: LimitSetConfig } | undefined;
  /** Epoch ms by which the request must be done: the concurrency lease ends there. */
  deadlineAt: number;
  logger: LimitHookLogger;
  state: Record<string, unknown>;
  /** The request's prompt tokens when its owner tokenizes once for everyone (the worker's record); else the hooks tokenize. */
  promptTokens?: () => number;
  /** The request span's context: the limits' spans (admit, settle) are its children. */
  traceContext?: Context | undefined;
}

export interface LimitHookOutcome {
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
  cached: boolean;
  /** Passed on to another worker, which admits and counts it: `handingOver` gave this admission back. */
  handedOver?: boolean;
}

export interface LimitHookLogger {
  warn(details: object, message: string): void;
  error(details: object, message: string): void;
}

/** Prices and fallbacks of a logical model (a ResolvedModel satisfies it). */
export interface PricedModel {
  cost_per_1k_prompt: number;
  cost_per_1k_completion: number;
  default_max_tokens?: number | undefined;
  /** The model's most tokens in one answer: what a request without a limit is sent with. */
  max_tokens?: number | undefined;
  fallbacks: string[];
  context_fallbacks: string[];
}

/** A request without a completion limit is reserved for: the model's `default_max_tokens`, else its `max_tokens` (what it is sent with). */
function reservationDefault(model: PricedModel | undefined): number | undefined {
  return model?.default_max_tokens ?? model?.max_tokens;
}

export interface LimitHooksOptions {
  /** `config.models` of the ResolvedConfig. */
  models: ReadonlyMap<string, PricedModel>;
  limits: Pick<LimitsConfig, 'default_max_tokens'> &
    Partial<Pick<LimitsConfig, 'default' | 'agents' | 'microdaos' | 'models'>>;
  /** The worker's prompt tokenizer (usage/tokens.ts `estimatePromptTokens`). */
  estimatePromptTokens: (request: ChatRequest) => number;
}

export interface LimitHooks {
  beforeRoute(context: LimitHookContext): Promise<void>;
  afterRoute(context: LimitHookContext, outcome: LimitHookOutcome): Promise<void>;
  /** Passed on to another worker, which counts it: the reservation given back whole (afterRoute then does nothing). */
  handingOver(context: LimitHookContext): Promise<void>;
}

const RESERVATION = 'limits.reservation';

/**
 * The most a request can cost: its prompt and max completion at the dearest
 * prices among the model and the models it may fall back to. Retries of
 * failed attempts that were billed are settled afterwards, not reserved.
 */
export function maxCostUsd(
  models: ReadonlyMap<string, PricedModel>,
  modelName: string,
  promptTokens: number,
  completionTokens: number,
): number {
  const model = models.get(modelName);
  if (model === undefined) return 0;
  let highest = 0;
  for (const name of [modelName, ...model.fallbacks, ...model.context_fallbacks]) {
    const candidate = models.get(name);
    if (candidate === undefined) continue;
    highest = Math.max(
      highest,
      (promptTokens * candidate.cost_per_1k_prompt + completionTokens * candidate.cost_per_1k_completion) / 1000,
    );
  }
  return highest;
}

/** True when some scope limits tokens or spending: only then does a request's prompt need tokenizing. */
export function countsTokens(limits: LimitHooksOptions['limits']): boolean {
  if (limits.default === undefined) return true; // not told: assume it does
  const sets = [
    limits.default,
    ...Object.values(limits.agents ?? {}),
    ...Object.values(limits.microdaos ?? {}),
    ...Object.values(limits.models ?? {}),
  ];
  return sets.some((set) => set.tpm != null || set.daily_usd != null || set.monthly_usd != null);
}

export function createLimitHooks(limiter: Limiter, options: LimitHooksOptions): LimitHooks {
  // With only request-rate and concurrency limits, the prompt is not tokenized at all (decided once).
  const tokenize = countsTokens(options.limits);
  const estimatePromptTokens = (context: LimitHookContext): number => {
    const keyLimits = context.key?.limits;
    const keyCounts =
      keyLimits !== undefined &&
      (keyLimits.tpm != null || keyLimits.daily_usd != null || keyLimits.monthly_usd != null);
    if (!tokenize && !keyCounts) return 0;
    return context.promptTokens !== undefined ? context.promptTokens() : options.estimatePromptTokens(context.request);
  };
  return {
    async beforeRoute(context: LimitHookContext): Promise<void> {
      const span = startLimitsSpan(context.traceContext, 'admit');
      const request = context.request;
      let reservation: Reservation;
      try {
        const promptTokens = estimatePromptTokens(context);
        const completionTokens = reservedCompletionTokens(
          options.limits,
          request.max_completion_tokens ?? request.max_tokens,
          reservationDefault(options.models.get(request.model)),
        );
        reservation = await limiter.admit({
          requestId: context.eventId,
          agentId: context.agentId,
          key: context.key,
          microdaoId: request.metadata?.microdao_id,
          model: request.model,
          estimatedPromptTokens: promptTokens,
          maxCompletionTokens: completionTokens,
          estimatedMaxCostUsd: maxCostUsd(options.models, request.model, promptTokens, completionTokens),
          // Issue 21: the slot's lease ends at the request's deadline (it was deadline + 30 s): a settle
          // that cannot reach the store keeps the slot no longer than the request could have run.
          leaseMs: Math.max(1, context.deadlineAt - Date.now()),
        });
      } catch (error) {
        const refusal = refusalOf(error);
        const storeDown = error instanceof ProxyError && error.code === 'internal';
        const refused = refusal.errorType === 'rate_limited' || refusal.errorType === 'budget_exceeded';
        endLimitsSpan(span, refused ? 'refused' : storeDown ? 'store_error' : 'error', limiter.backend, refusal);
        // A refusal is the client's business; a store that is down (fail_closed) is the operator's.
        if (storeDown) {
          context.logger.error(
            { err: error.cause ?? error, backend: limiter.backend },
            'limits store unreachable: request refused (fail_closed)',
          );
        }
        throw error;
      }
      endLimitsSpan(span, reservation.failedOpen ? 'failed_open' : 'admitted', limiter.backend);
      if (reservation.failedOpen) {
        context.logger.warn(
          { err: reservation.storeError, backend: limiter.backend },
          'limits store unreachable: request admitted uncounted (fail_open)',
        );
      }
      context.state[RESERVATION] = reservation;
    },

    async handingOver(context: LimitHookContext): Promise<void> {
      const reservation = context.state[RESERVATION] as Reservation | undefined;
      if (reservation === undefined) return;
      const span = startLimitsSpan(context.traceContext, 'settle');
      const result = await reservation.refund();
      endLimitsSpan(span, result.stored ? 'refunded' : 'not_stored', limiter.backend);
      if (!result.stored) {
        context.logger.warn(
          { err: result.error, backend: limiter.backend },
          'limits store unreachable: a request passed on stays counted here too',
        );
      }
    },

    async afterRoute(context: LimitHookContext, outcome: LimitHookOutcome): Promise<void> {
      const reservation = context.state[RESERVATION] as Reservation | undefined;
      // Passed on to another worker: handingOver gave it all back already.
      if (reservation === undefined || outcome.handedOver) return;
      const span = startLimitsSpan(context.traceContext, 'settle');
      // A cached reply used no upstream tokens and cost nothing: only its place in requests/minute stays.
      const result = outcome.cached
        ? await reservation.cancel()
        : await reservation.settle({
            promptTokens: outcome.promptTokens,
            completionTokens: outcome.completionTokens,
            costUsd: outcome.costUsd,
          });
      endLimitsSpan(span, !result.stored ? 'not_stored' : outcome.cached ? 'cancelled' : 'settled', limiter.backend);
      if (!result.stored) {
        context.logger.warn(
          { err: result.error, backend: limiter.backend },
          'limits store unreachable: reservation not settled (it stays charged)',
        );
      }
    },
  };
}

/** What a refusal says for a span: its code, and the refusing scope's kind and dimension (never a scope id). */
export function refusalOf(error: unknown): LimitsRefusal {
  if (error instanceof LimitRefusalError)
    return { errorType: error.code, scope: error.scope, dimension: error.dimension };
  return { errorType: error instanceof ProxyError ? error.code : 'internal' };
}
