import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Redis } from 'ioredis';
import { ProxyError } from '../contract/errors.js';
import type { LimitsConfig } from '../config/limits-schema.js';
import { createMemoryStore } from './memory-store.js';
import { createNatsStore } from './nats-store.js';
import { createRedisStore } from './redis-store.js';
import { SliceHolder, type SliceHold } from './slices.js';
import {
  ANONYMOUS_AGENT,
  budgetWindows,
  configFingerprint,
  configuredLimits,
  decisiveRefusal,
  describeScope,
  hasAnyLimit,
  hasBudget,
  hasRate,
  keyPlanFor,
  limitStamp,
  parseRecordedLimits,
  plansFor,
  recordedScopeLimits,
  sameScopeLimits,
  scopeFor,
  toMicroUsd,
  evaluateScope,
  type Adjustment,
  type Charge,
  type Dimension,
  type Refusal,
  type Scope,
  type ScopeLimits,
  type ScopeKind,
  type ScopePlan,
  type ScopeState,
} from './policy.js';
import {
  LimitContentionError,
  type ActualUsage,
  type AdmissionRequest,
  type Limiter,
  type LimiterCounters,
  type LimitStore,
  type NearlySpent,
  type Reservation,
  type ScopeStanding,
  type SettleOutcome,
  type StandingOptions,
} from './types.js';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** What a client is told to wait when the store is down and the policy is fail_closed. */
const STORE_DOWN_RETRY_MS = 1_000;
/** What a client is told to wait when its scopes stayed contended past the bound (issue 21): a short, jittered pause. */
const CONTENDED_RETRY_MS = 200;

export interface LimiterDeps {
  /** Required for `backend: nats`; stays the caller's (not closed by the limiter). */
  nats?: NatsConnection;
  /** An existing ioredis client for `backend: redis` (stays the caller's); else one is created from `redis_url`. */
  redis?: Redis;
  /** For REDIS_URL; defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /** The clock (ms since the epoch); tests freeze it to make windows deterministic. */
  now?: () => number;
  /** Who writes the limits into the records it counts in (shown by `llm-proxy limits`); default: the host name. */
  host?: string;
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

/** A refusal by a limit: the error the client gets, and which scope kind and dimension refused (for spans and metrics). */
export class LimitRefusalError extends ProxyError {
  readonly scope: ScopeKind;
  readonly dimension: Refusal['dimension'];

  constructor(
    code: 'rate_limited' | 'budget_exceeded',
    message: string,
    refused: { scope: ScopeKind; dimension: Refusal['dimension'] },
    options: ConstructorParameters<typeof ProxyError>[2] = {},
  ) {
    super(code, message, options);
    this.scope = refused.scope;
    this.dimension = refused.dimension;
  }
}

/** The DESIGN.md error for a refusal, naming the scope and the limit. */
export function refusalError(plan: ScopePlan, refusal: Refusal, charge: Charge): LimitRefusalError {
  const refused = { scope: plan.scope.kind, dimension: refusal.dimension };
  const refuse = (
    code: 'rate_limited' | 'budget_exceeded',
    message: string,
    options: ConstructorParameters<typeof LimitRefusalError>[3],
  ) => new LimitRefusalError(code, message, refused, options);
  const name = scopeName(plan.scope);
  const limits = plan.limits;
  const retryAfterMs = Math.max(1, Math.ceil(refusal.retryAfterMs));
  switch (refusal.dimension) {
    case 'rpm':
      return refuse('rate_limited', `${name} is over ${limits.rpm} requests/minute`, { retryAfterMs });
    case 'tpm':
      if (!refusal.fits) {
        return refuse(
          'rate_limited',
          `${name} allows ${limits.tpm} tokens/minute and this request alone reserves ${charge.tokens} (prompt plus max_tokens): lower max_tokens`,
          { retryable: false },
        );
      }
      return refuse(
        'rate_limited',
        `${name} is over ${limits.tpm} tokens/minute (this request reserves ${charge.tokens})`,
        { retryAfterMs },
      );
    case 'concurrent':
      return refuse('rate_limited', `${name} is over ${limits.concurrent} concurrent requests`, {
        retryAfterMs,
      });
    case 'daily_usd':
    case 'monthly_usd': {
      const daily = refusal.dimension === 'daily_usd';
      const limit = (daily ? limits.dailyMicroUsd : limits.monthlyMicroUsd) ?? 0;
      return refuse(
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
    refund: async () => outcome,
  };
}

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

/** Distinct (agent, microDAO, model) combinations whose scopes are remembered (see `plansOf`). */
const KNOWN_PLANS = 10_000;

/** A scope's limits per dimension, in the dimensions' units (USD for budgets). */
function limitsByDimension(limits: ScopeLimits): Partial<Record<Dimension, number>> {
  const byDimension: Partial<Record<Dimension, number>> = {};
  if (limits.rpm !== undefined) byDimension.rpm = limits.rpm;
  if (limits.tpm !== undefined) byDimension.tpm = limits.tpm;
  if (limits.concurrent !== undefined) byDimension.concurrent = limits.concurrent;
  if (limits.dailyMicroUsd !== undefined) byDimension.daily_usd = limits.dailyMicroUsd / 1e6;
  if (limits.monthlyMicroUsd !== undefined) byDimension.monthly_usd = limits.monthlyMicroUsd / 1e6;
  return byDimension;
}

function increment(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

export async function createLimiter(config: LimitsConfig, deps: LimiterDeps = {}): Promise<Limiter> {
  const counters: LimiterCounters = {
    admitted: 0,
    refused: 0,
    storeErrors: 0,
    failedOpen: 0,
    failedClosed: 0,
    conflicts: 0,
    contended: 0,
    refusedBy: {},
    budgetNear: {},
  };
  const snapshot = (): LimiterCounters => ({
    ...counters,
    refusedBy: { ...counters.refusedBy },
    budgetNear: { ...counters.budgetNear },
  });
  const clock = deps.now ?? Date.now;

  if (!config.enabled) {
    return {
      backend: 'disabled',
      admit: async (request) => noReservation(request.requestId),
      standing: async () => [],
      counters: snapshot,
      close: async () => undefined,
    };
  }

  /** Written with the limits into every record counted in: which config and which worker they came from. */
  const origin = { config: configFingerprint(config), host: deps.host ?? hostname() };
  const stamped = (plan: ScopePlan): ScopePlan => ({ ...plan, stamp: limitStamp(plan.limits, origin) });

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
      plans = plansFor(config, { agentId, microdaoId, model }).map(stamped);
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
      const keyPlan = keyPlanFor(key);
      plan = keyPlan === undefined ? null : stamped(keyPlan);
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

  /**
   * Issue 21: slices of the shared scopes (microDAO, model) on the nats backend (slices.ts): one
   * holder per scope, admitting locally; a timer gives each period's unused room back.
   */
  const slicing = config.shared_slices.enabled && store.exchange !== undefined;
  const holders = new Map<string, SliceHolder>();
  const owner = `${origin.host.slice(0, 20)}-${randomUUID().slice(0, 8)}`;
  const holderFor = (plan: ScopePlan): SliceHolder => {
    let holder = holders.get(plan.scope.key);
    // Keyed by scope: every (agent, microDAO, model) combination has its own plan objects, with the same limits.
    if (holder === undefined || !sameScopeLimits(holder.plan.limits, plan.limits)) {
      holder = new SliceHolder(
        plan,
        store as LimitStore & Required<Pick<LimitStore, 'exchange'>>,
        {
          now: clock,
          ttlMs: config.shared_slices.ttl_ms,
          divisor: config.shared_slices.slice_divisor,
          onBackgroundError: () => {
            counters.storeErrors += 1;
          },
        },
        owner,
      );
      holders.set(plan.scope.key, holder);
    }
    return holder;
  };
  const isShared = (plan: ScopePlan) => slicing && (plan.scope.kind === 'microdao' || plan.scope.kind === 'model');
  const flushTimer = slicing
    ? setInterval(() => {
        for (const holder of holders.values()) void holder.flush();
      }, config.shared_slices.ttl_ms)
    : undefined;
  flushTimer?.unref();

  /** A store that failed an admission: contended → `rate_limited`; unreachable → the `on_store_error` policy. */
  function storeFailure(error: unknown, request: AdmissionRequest, plans: ScopePlan[]): Reservation {
    if (error instanceof LimitContentionError) {
      // The store answers but the scope's key stayed contended past the bound: a refusal to retry, never `internal`.
      counters.refused += 1;
      counters.contended += 1;
      throw new ProxyError(
        'rate_limited',
        `the limits of ${scopeName((plans[plans.length - 1] as ScopePlan).scope)} are busy (contended): try again`,
        {
          retryable: true,
          retryAfterMs: CONTENDED_RETRY_MS + Math.floor(Math.random() * CONTENDED_RETRY_MS),
          cause: error,
        },
      );
    }
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

  /** A refusal: counted, and the decisive one thrown. */
  function refuse(plans: ScopePlan[], refusals: Refusal[], charge: Charge): never {
    counters.refused += 1;
    const refusal = decisiveRefusal(refusals) as Refusal;
    const plan = plans[refusal.scopeIndex] as ScopePlan;
    increment(counters.refusedBy, `${plan.scope.kind}:${refusal.dimension}`);
    throw refusalError(plan, refusal, charge);
  }

  /**
   * Admission with shared scopes in slices: those first (locally, or waiting for their slice's
   * exchange), then the others in the store; a refusal anywhere gives the slices' holds back.
   */
  async function admitSliced(
    request: AdmissionRequest,
    plans: ScopePlan[],
    charge: Charge,
    now: number,
  ): Promise<Reservation> {
    const exactIndexes: number[] = [];
    const holds: SliceHold[] = [];
    const holdIndexes: number[] = [];
    let refusals: Refusal[] = [];
    const release = () => {
      for (const hold of holds)
        hold.holder.giveBack(hold, { requests: 1, tokens: hold.tokens, microUsd: hold.microUsd });
    };
    try {
      for (const [index, plan] of plans.entries()) {
        if (!isShared(plan)) {
          exactIndexes.push(index);
          continue;
        }
        const outcome = await holderFor(plan).acquire(charge, index);
        if (Array.isArray(outcome)) {
          refusals = outcome;
          break;
        }
        holds.push(outcome);
        holdIndexes.push(index);
      }
    } catch (error) {
      release();
      return storeFailure(error, request, plans);
    }
    const exactPlans = exactIndexes.map((index) => plans[index] as ScopePlan);
    if (refusals.length > 0) {
      release();
      // The other scopes' refusals too (read, not charged), so that the decisive one is the same as without slices.
      const others = plans
        .map((plan, index) => ({ plan, index }))
        .filter(({ plan, index }) => !isShared(plan) || index > (refusals[0] as Refusal).scopeIndex);
      const states = await store.read(others.map(({ plan }) => plan)).catch((): ScopeState[] => []);
      states.forEach((state, offset) => {
        const { plan, index } = others[offset] as { plan: ScopePlan; index: number };
        refusals.push(...evaluateScope(state, plan.limits, charge, now, index).refusals);
      });
      refuse(plans, refusals, charge);
    }
    const nearlySpent: NearlySpent[] = [];
    if (exactPlans.length > 0) {
      let outcome: Awaited<ReturnType<LimitStore['admit']>>;
      try {
        outcome = await store.admit(exactPlans, charge, now);
      } catch (error) {
        release();
        return storeFailure(error, request, plans);
      }
      if (!outcome.admitted) {
        release();
        refuse(
          plans,
          outcome.refusals.map((refusal) => ({ ...refusal, scopeIndex: exactIndexes[refusal.scopeIndex] as number })),
          charge,
        );
      }
      for (const near of outcome.nearlySpent ?? [])
        nearlySpent.push({ ...near, scopeIndex: exactIndexes[near.scopeIndex] as number });
    }
    holds.forEach((hold, offset) => {
      for (const dimension of hold.nearlySpent)
        nearlySpent.push({ scopeIndex: holdIndexes[offset] as number, dimension });
    });
    counters.admitted += 1;
    for (const near of nearlySpent)
      increment(counters.budgetNear, `${(plans[near.scopeIndex] as ScopePlan).scope.kind}:${near.dimension}`);
    return reservationFor(request, exactPlans, charge, holds);
  }

  function reservationFor(
    request: AdmissionRequest,
    plans: ScopePlan[],
    charge: Charge,
    holds: SliceHold[] = [],
  ): Reservation {
    let finished = false;
    const holdsLease = plans.some((plan) => plan.limits.concurrent !== undefined);
    const holdsTokens = plans.some((plan) => plan.limits.tpm !== undefined);
    const holdsBudget = plans.some((plan) => hasBudget(plan.limits));

    async function finish(tokensUsed: number, microUsdUsed: number, requestGivenBack = false): Promise<SettleOutcome> {
      if (finished) return { stored: true };
      finished = true;
      // Slices settle locally: what went unused goes back into this worker's slice, the slot is free.
      for (const hold of holds)
        hold.holder.giveBack(hold, {
          requests: requestGivenBack ? 1 : 0,
          tokens: hold.tokens - tokensUsed,
          microUsd: hold.microUsd - microUsdUsed,
        });
      if (plans.length === 0) return { stored: true };
      const adjustment: Adjustment = {
        requestsDelta: requestGivenBack ? -1 : 0,
        tokensDelta: holdsTokens ? tokensUsed - charge.tokens : 0,
        microUsdDelta: holdsBudget ? microUsdUsed - charge.microUsd : 0,
        day: charge.windows.day,
        month: charge.windows.month,
        releaseRequestId: holdsLease ? charge.requestId : undefined,
      };
      // Requests/minute alone has nothing to settle: no round trip.
      if (
        adjustment.requestsDelta === 0 &&
        adjustment.tokensDelta === 0 &&
        adjustment.microUsdDelta === 0 &&
        adjustment.releaseRequestId === undefined
      )
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
      refund: () => finish(0, 0, true),
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
        // Never past the request's deadline: a settle that cannot reach the store frees the slot by then.
        leaseUntil:
          now +
          Math.max(
            1,
            Math.min(
              request.leaseMs ?? config.concurrency_lease_ms,
              (request.deadlineAt ?? Number.POSITIVE_INFINITY) - now,
            ),
          ),
        windows: windowsAt(now),
      };

      if (slicing && plans.some(isShared)) return admitSliced(request, plans, charge, now);

      let outcome: Awaited<ReturnType<LimitStore['admit']>>;
      try {
        outcome = await store.admit(plans, charge, now);
      } catch (error) {
        return storeFailure(error, request, plans);
      }

      if (!outcome.admitted) refuse(plans, outcome.refusals, charge);
      counters.admitted += 1;
      // Known from the admission's own write: no read of the store for it.
      for (const near of outcome.nearlySpent ?? [])
        increment(counters.budgetNear, `${(plans[near.scopeIndex] as ScopePlan).scope.kind}:${near.dimension}`);
      return reservationFor(request, plans, charge);
    },

    /**
     * Every named scope's record is read, whether or not this process's config limits it: the
     * record says what the workers counted it against. A scope limited neither by its record nor
     * by this config is left out.
     */
    async standing(agentId: string, options: StandingOptions = {}): Promise<ScopeStanding[]> {
      const scopes: Scope[] = [scopeFor('agent', agentId || ANONYMOUS_AGENT)];
      if (options.microdaoId !== undefined) scopes.push(scopeFor('microdao', options.microdaoId));
      if (options.model !== undefined) scopes.push(scopeFor('model', options.model));
      if (options.keyId !== undefined) scopes.push(scopeFor('key', options.keyId));
      const plans = scopes.map((scope) => ({ scope, limits: configuredLimits(config, scope) }));
      const states = await store.read(plans);
      const now = clock();
      const standings: ScopeStanding[] = [];
      plans.forEach((plan, index) => {
        const state = states[index] ?? {};
        const recorded = parseRecordedLimits(state.limits);
        const limits = recorded === undefined ? plan.limits : recordedScopeLimits(recorded);
        if (!hasAnyLimit(limits)) return;
        const standing: ScopeStanding = {
          kind: plan.scope.kind,
          id: plan.scope.id,
          dimensions: describeScope(state, limits, now),
          limitsFrom: recorded === undefined ? 'local' : 'workers',
          local: {
            config: origin.config,
            limits: limitsByDimension(plan.limits),
            differs: !sameScopeLimits(limits, plan.limits),
          },
        };
        if (recorded !== undefined) {
          standing.enforcedBy = { config: recorded.config, host: recorded.host, since: recorded.at };
        } else {
          standing.fallback = Object.keys(state).length === 0 ? 'no_record' : 'record_without_limits';
        }
        standings.push(standing);
      });
      return standings;
    },

    counters: snapshot,

    async close(): Promise<void> {
      if (flushTimer !== undefined) clearInterval(flushTimer);
      // A worker that stops gives its slices back (unused room, free slots), best effort.
      await Promise.all([...holders.values()].map((holder) => holder.flush(true)));
      await store.close();
    },
  };
}
