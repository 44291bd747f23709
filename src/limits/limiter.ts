import type { NatsConnection } from '@nats-io/nats-core';
import type { Redis } from 'ioredis';
import { ProxyError } from '../contract/errors.js';
import type { LimitsConfig } from '../config/limits-schema.js';
import { createMemoryStore } from './memory-store.js';
import { createNatsStore } from './nats-store.js';
import { createRedisStore } from './redis-store.js';
import {
  budgetWindows,
  decisiveRefusal,
  describeScope,
  hasBudget,
  hasRate,
  keyPlanFor,
  plansFor,
  toMicroUsd,
  type Adjustment,
  type Charge,
  type Refusal,
  type Scope,
  type ScopePlan,
} from './policy.js';
import type {
  ActualUsage,
  AdmissionRequest,
  Limiter,
  LimiterCounters,
  LimitStore,
  Reservation,
  ScopeStanding,
  SettleOutcome,
} from './types.js';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** What a client is told to wait when the store is down and the policy is fail_closed. */
const STORE_DOWN_RETRY_MS = 1_000;

export interface LimiterDeps {
  /** Required for `backend: nats`; stays the caller's (not closed by the limiter). */
  nats?: NatsConnection;
  /** An existing ioredis client for `backend: redis` (stays the caller's); else one is created from `redis_url`. */
  redis?: Redis;
  /** For REDIS_URL; defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /** The clock (ms since the epoch); tests freeze it to make windows deterministic. */
  now?: () => number;
}

export function redisUrlFor(config: Pick<LimitsConfig, 'redis_url'>, env: NodeJS.ProcessEnv = process.env): string {
  return config.redis_url ?? (env.REDIS_URL || DEFAULT_REDIS_URL);
}

/** The completion tokens reserved for a request: its own max, else the model's default, else the limits' default. */
export function reservedCompletionTokens(
  config: Pick<LimitsConfig, 'default_max_tokens'>,
  requested: number | undefined,
  modelDefault?: number,
): number {
  return requested ?? modelDefault ?? config.default_max_tokens;
}

/** Redis URLs may carry a password: show only where it points. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname === '/' ? '' : parsed.pathname}`;
  } catch {
    return 'redis (unparsable URL)';
  }
}

async function connectRedis(url: string, timeoutMs: number): Promise<Redis> {
  const { Redis } = await import('ioredis');
  const client = new Redis(url, {
    // Fail a command at once while disconnected rather than queueing it: the store policy decides.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    retryStrategy: (times: number) => Math.min(100 * times, 2_000),
  });
  // Connection errors surface as failed commands (counted there); without a listener ioredis prints each retry.
  client.on('error', () => undefined);
  return client;
}

/**
 * Give a connecting client up to `timeoutMs` to be ready, so that the first
 * admissions are not failed by a connection still being set up. A Redis that
 * is down does not stop the worker: the store policy covers it.
 */
async function awaitReady(client: Redis, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      client.off('ready', done);
      resolve();
    }
    client.once('ready', done);
  });
}

function scopeName(scope: Scope): string {
  if (scope.kind === 'agent') return scope.id.includes(':') ? scope.id : `agent ${scope.id}`;
  if (scope.kind === 'key') return `key ${scope.id}`;
  return scope.kind === 'microdao' ? `microDAO ${scope.id}` : `model ${scope.id}`;
}

function formatUsd(microUsd: number): string {
  const usd = microUsd / 1e6;
  return usd >= 0.01 || usd === 0 ? `$${usd.toFixed(2)}` : `$${usd.toFixed(6).replace(/0+$/, '')}`;
}

/** The DESIGN.md error for a refusal, naming the scope and the limit. */
export function refusalError(plan: ScopePlan, refusal: Refusal, charge: Charge): ProxyError {
  const name = scopeName(plan.scope);
  const limits = plan.limits;
  const retryAfterMs = Math.max(1, Math.ceil(refusal.retryAfterMs));
  switch (refusal.dimension) {
    case 'rpm':
      return new ProxyError('rate_limited', `${name} is over ${limits.rpm} requests/minute`, { retryAfterMs });
    case 'tpm':
      if (!refusal.fits) {
        return new ProxyError(
          'rate_limited',
          `${name} allows ${limits.tpm} tokens/minute and this request alone reserves ${charge.tokens} (prompt plus max_tokens): lower max_tokens`,
          { retryable: false },
        );
      }
      return new ProxyError(
        'rate_limited',
        `${name} is over ${limits.tpm} tokens/minute (this request reserves ${charge.tokens})`,
        { retryAfterMs },
      );
    case 'concurrent':
      return new ProxyError('rate_limited', `${name} is over ${limits.concurrent} concurrent requests`, {
        retryAfterMs,
      });
    case 'daily_usd':
    case 'monthly_usd': {
      const daily = refusal.dimension === 'daily_usd';
      const limit = (daily ? limits.dailyMicroUsd : limits.monthlyMicroUsd) ?? 0;
      return new ProxyError(
        'budget_exceeded',
        `${name} is over its ${daily ? 'daily' : 'monthly'} budget of ${formatUsd(limit)} ` +
          `(${formatUsd(refusal.used)} used ${daily ? 'today' : 'this month'}; this request may cost up to ${formatUsd(charge.microUsd)})`,
        { retryAfterMs },
      );
    }
  }
}

function noReservation(requestId: string, storeError?: Error): Reservation {
  const outcome: SettleOutcome = { stored: true };
  return {
    requestId,
    reservedTokens: 0,
    reservedUsd: 0,
    failedOpen: storeError !== undefined,
    storeError,
    settle: async () => outcome,
    cancel: async () => outcome,
  };
}

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

/** Distinct (agent, microDAO, model) combinations whose scopes are remembered (see `plansOf`). */
const KNOWN_PLANS = 10_000;

export async function createLimiter(config: LimitsConfig, deps: LimiterDeps = {}): Promise<Limiter> {
  const counters: LimiterCounters = {
    admitted: 0,
    refused: 0,
    storeErrors: 0,
    failedOpen: 0,
    failedClosed: 0,
    conflicts: 0,
    refusedBy: {},
  };
  const clock = deps.now ?? Date.now;

  if (!config.enabled) {
    return {
      backend: 'disabled',
      admit: async (request) => noReservation(request.requestId),
      standing: async () => [],
      counters: () => ({ ...counters }),
      close: async () => undefined,
    };
  }

  /**
   * The scopes and limits of a combination depend on the config only, which
   * does not change while the limiter lives: worked out once per combination
   * (merging `default` with the agent's overrides, encoding the store keys)
   * instead of on every request. Plans are never modified after this.
   */
  const knownPlans = new Map<string, ScopePlan[]>();
  const plansOf = (
    agentId: string | undefined,
    microdaoId: string | undefined,
    model: string | undefined,
  ): ScopePlan[] => {
    const key = `${agentId ?? ''}\u0000${microdaoId ?? '\u0001'}\u0000${model ?? '\u0001'}`;
    let plans = knownPlans.get(key);
    if (plans === undefined) {
      plans = plansFor(config, { agentId, microdaoId, model });
      if (knownPlans.size >= KNOWN_PLANS) knownPlans.delete(knownPlans.keys().next().value as string);
      knownPlans.set(key, plans);
    }
    return plans;
  };

  /**
   * A key's own scope, worked out once per key record: a record's `limits` object lives until the
   * record is replaced (a change arrives as a new record), so it keys the cache and no entry goes stale.
   */
  const keyPlans = new WeakMap<object, ScopePlan | null>();
  const keyPlanOf = (key: NonNullable<AdmissionRequest['key']>): ScopePlan | undefined => {
    let plan = keyPlans.get(key.limits);
    if (plan === undefined) {
      plan = keyPlanFor(key) ?? null;
      keyPlans.set(key.limits, plan);
    }
    return plan ?? undefined;
  };

  /** Budget windows change at midnight UTC (a month too begins at one): worked out once a day. */
  let windows = budgetWindows(clock());
  const windowsAt = (now: number) => {
    if (now >= windows.dayEndsAt || now < windows.dayEndsAt - 86_400_000) windows = budgetWindows(now);
    return windows;
  };

  let store: LimitStore;
  switch (config.backend) {
    case 'memory':
      store = createMemoryStore();
      break;
    case 'nats':
      if (deps.nats === undefined)
        throw new Error('limits.backend is "nats" but no NATS connection was handed to createLimiter');
      store = await createNatsStore({
        connection: deps.nats,
        bucket: config.nats_bucket,
        timeoutMs: config.store_timeout_ms,
        onConflict: () => {
          counters.conflicts += 1;
        },
        onRollbackFailure: () => {
          counters.storeErrors += 1;
        },
      });
      break;
    case 'redis': {
      const client = deps.redis ?? (await connectRedis(redisUrlFor(config, deps.env), config.store_timeout_ms));
      await awaitReady(client, config.store_timeout_ms);
      store = createRedisStore({ client, keyPrefix: config.redis_key_prefix, ownsClient: deps.redis === undefined });
      break;
    }
  }

  function reservationFor(request: AdmissionRequest, plans: ScopePlan[], charge: Charge): Reservation {
    let finished = false;
    const holdsLease = plans.some((plan) => plan.limits.concurrent !== undefined);
    const holdsTokens = plans.some((plan) => plan.limits.tpm !== undefined);
    const holdsBudget = plans.some((plan) => hasBudget(plan.limits));

    async function finish(tokensUsed: number, microUsdUsed: number): Promise<SettleOutcome> {
      if (finished) return { stored: true };
      finished = true;
      const adjustment: Adjustment = {
        requestsDelta: 0,
        tokensDelta: holdsTokens ? tokensUsed - charge.tokens : 0,
        microUsdDelta: holdsBudget ? microUsdUsed - charge.microUsd : 0,
        day: charge.windows.day,
        month: charge.windows.month,
        releaseRequestId: holdsLease ? charge.requestId : undefined,
      };
      // Requests/minute alone has nothing to settle: no round trip.
      if (adjustment.tokensDelta === 0 && adjustment.microUsdDelta === 0 && adjustment.releaseRequestId === undefined)
        return { stored: true };
      try {
        await store.adjust(plans, adjustment, clock());
        return { stored: true };
      } catch (error) {
        counters.storeErrors += 1;
        return { stored: false, error: asError(error) };
      }
    }

    return {
      requestId: request.requestId,
      reservedTokens: charge.tokens,
      reservedUsd: charge.microUsd / 1e6,
      failedOpen: false,
      storeError: undefined,
      settle: (usage: ActualUsage) => {
        const tokens =
          Math.max(0, Math.round(usage.promptTokens || 0)) + Math.max(0, Math.round(usage.completionTokens || 0));
        return finish(tokens, toMicroUsd(usage.costUsd, 'nearest'));
      },
      cancel: () => finish(0, 0),
    };
  }

  return {
    backend: config.backend,

    async admit(request: AdmissionRequest): Promise<Reservation> {
      let plans = plansOf(request.agentId, request.microdaoId, request.model);
      const keyPlan = request.key === undefined ? undefined : keyPlanOf(request.key);
      // The cached plans are shared: a key's plan is added to a copy.
      if (keyPlan !== undefined) plans = [...plans, keyPlan];
      if (plans.length === 0) return noReservation(request.requestId);
      const now = clock();
      const promptTokens = Math.max(0, Math.ceil(request.estimatedPromptTokens || 0));
      const charge: Charge = {
        requestId: request.requestId,
        tokens: promptTokens + reservedCompletionTokens(config, request.maxCompletionTokens),
        microUsd: toMicroUsd(request.estimatedMaxCostUsd, 'up'),
        leaseUntil: now + (request.leaseMs ?? config.concurrency_lease_ms),
        windows: windowsAt(now),
      };

      let outcome: Awaited<ReturnType<LimitStore['admit']>>;
      try {
        outcome = await store.admit(plans, charge, now);
      } catch (error) {
        counters.storeErrors += 1;
        const closed =
          (plans.some((plan) => hasBudget(plan.limits)) && config.on_store_error.budget === 'fail_closed') ||
          (plans.some((plan) => hasRate(plan.limits)) && config.on_store_error.rate === 'fail_closed');
        if (closed) {
          counters.failedClosed += 1;
          const first = plans[0] as ScopePlan;
          throw new ProxyError(
            'internal',
            `the limits store (${config.backend}) is unreachable, so the limits of ${scopeName(first.scope)} cannot be checked`,
            {
              retryable: true,
              retryAfterMs: STORE_DOWN_RETRY_MS,
              cause: error,
            },
          );
        }
        counters.failedOpen += 1;
        return noReservation(request.requestId, asError(error));
      }

      if (!outcome.admitted) {
        counters.refused += 1;
        const refusal = decisiveRefusal(outcome.refusals) as Refusal;
        const plan = plans[refusal.scopeIndex] as ScopePlan;
        const by = `${plan.scope.kind}:${refusal.dimension}`;
        counters.refusedBy[by] = (counters.refusedBy[by] ?? 0) + 1;
        throw refusalError(plan, refusal, charge);
      }
      counters.admitted += 1;
      return reservationFor(request, plans, charge);
    },

    async standing(agentId: string, options: { microdaoId?: string; model?: string } = {}): Promise<ScopeStanding[]> {
      const plans = plansFor(config, { agentId, microdaoId: options.microdaoId, model: options.model });
      const states = await store.read(plans);
      const now = clock();
      return plans.map((plan, index) => ({
        kind: plan.scope.kind,
        id: plan.scope.id,
        dimensions: describeScope(states[index] ?? {}, plan.limits, now),
      }));
    },

    counters: () => ({ ...counters }),

    close: () => store.close(),
  };
}
