import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  BUDGET_NEAR_PERCENT,
  CONCURRENCY_RETRY_HINT_MS,
  DIMENSIONS,
  parseRecordedLimits,
  type Adjustment,
  type Charge,
  type Dimension,
  type Refusal,
  type ScopeLimits,
  type ScopePlan,
  type ScopeState,
} from './policy.js';
import { ADJUST_SCRIPT, ADMIT_SCRIPT } from './redis-scripts.js';
import { LimitStoreError, type AdmitOutcome, type LimitStore, type NearlySpent } from './types.js';

/**
 * Limits shared by every worker through Redis: each admission is one Lua
 * script over every scope it touches (redis-scripts.ts), one round trip,
 * atomic, which also writes the limits it enforced into a scope's hash when
 * the hash holds other ones. Time is the worker's clock, passed in (workers
 * need NTP; a skew of d shifts a scope's windows by d for that worker).
 *
 * On Redis Cluster, the keys of one admission must share a slot: give
 * `redis_key_prefix` a hash tag such as `{llm-limits}:` (which puts every
 * limit on one node).
 */
export interface RedisStoreOptions {
  client: Redis;
  keyPrefix: string;
  /** Close the client with the store (it was created by the limiter). */
  ownsClient: boolean;
}

interface Script {
  source: string;
  sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

function scriptLimits(limits: ScopeLimits): Record<string, number> {
  const encoded: Record<string, number> = {};
  if (limits.rpm !== undefined) encoded.rpm = limits.rpm;
  if (limits.tpm !== undefined) encoded.tpm = limits.tpm;
  if (limits.concurrent !== undefined) encoded.concurrent = limits.concurrent;
  if (limits.dailyMicroUsd !== undefined) encoded.daily = limits.dailyMicroUsd;
  if (limits.monthlyMicroUsd !== undefined) encoded.monthly = limits.monthlyMicroUsd;
  return encoded;
}

function isDimension(value: unknown): value is Dimension {
  return typeof value === 'string' && (DIMENSIONS as readonly string[]).includes(value);
}

/** The hash's `limits` (JSON of the limits and config), `limits_at` and `limits_host`, as a record's limits. */
function recordedFrom(json: string | null, at: string | null, host: string | null): ScopeState['limits'] {
  if (!json || !at) return undefined;
  let fields: unknown;
  try {
    fields = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (fields === null || typeof fields !== 'object') return undefined;
  return parseRecordedLimits({ ...fields, at: Number(at), ...(host ? { host } : {}) });
}

export function createRedisStore(options: RedisStoreOptions): LimitStore {
  const { client, keyPrefix } = options;
  const admitScript = script(ADMIT_SCRIPT);
  const adjustScript = script(ADJUST_SCRIPT);

  const keysFor = (plans: ScopePlan[]): string[] =>
    plans.flatMap((plan) => [`${keyPrefix}${plan.scope.key}`, `${keyPrefix}${plan.scope.key}:leases`]);

  /** EVALSHA, loading the script on the first NOSCRIPT (a restarted or new Redis). */
  async function run(target: Script, keys: string[], argument: object, now: number): Promise<unknown> {
    const args = [String(now), JSON.stringify(argument)];
    try {
      try {
        return await client.evalsha(target.sha, keys.length, ...keys, ...args);
      } catch (error) {
        if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
        return await client.eval(target.source, keys.length, ...keys, ...args);
      }
    } catch (error) {
      throw new LimitStoreError('Redis limits script failed', { cause: error });
    }
  }

  return {
    async admit(plans: ScopePlan[], charge: Charge, now: number): Promise<AdmitOutcome> {
      const reply = await run(
        admitScript,
        keysFor(plans),
        {
          scopes: plans.map((plan) =>
            plan.stamp === undefined
              ? scriptLimits(plan.limits)
              : { ...scriptLimits(plan.limits), stamp: plan.stamp.json },
          ),
          host: plans.find((plan) => plan.stamp !== undefined)?.stamp?.fields.host ?? '',
          near_percent: BUDGET_NEAR_PERCENT,
          tokens: charge.tokens,
          micro: charge.microUsd,
          id: charge.requestId,
          lease_until: charge.leaseUntil,
          day: charge.windows.day,
          day_ends_at: charge.windows.dayEndsAt,
          month: charge.windows.month,
          month_ends_at: charge.windows.monthEndsAt,
          hint: CONCURRENCY_RETRY_HINT_MS,
        },
        now,
      );
      if (!Array.isArray(reply))
        throw new LimitStoreError(`unexpected reply from the limits script: ${JSON.stringify(reply)}`);
      if (reply[0] === 1) {
        const nearlySpent: NearlySpent[] = [];
        for (let offset = 1; offset + 2 <= reply.length; offset += 2) {
          const [scope, dimension] = reply.slice(offset, offset + 2) as unknown[];
          if (dimension !== 'daily_usd' && dimension !== 'monthly_usd')
            throw new LimitStoreError(`unexpected budget from the limits script: ${String(dimension)}`);
          nearlySpent.push({ scopeIndex: Number(scope) - 1, dimension });
        }
        return { admitted: true, nearlySpent };
      }
      const refusals: Refusal[] = [];
      for (let offset = 1; offset + 5 <= reply.length; offset += 5) {
        const [scope, dimension, retryAfterMs, fits, used] = reply.slice(offset, offset + 5) as unknown[];
        if (!isDimension(dimension))
          throw new LimitStoreError(`unexpected dimension from the limits script: ${String(dimension)}`);
        refusals.push({
          scopeIndex: Number(scope) - 1,
          dimension,
          retryAfterMs: Number(retryAfterMs),
          fits: Number(fits) === 1,
          used: Number(used),
        });
      }
      return { admitted: false, refusals };
    },

    async adjust(plans: ScopePlan[], adjustment: Adjustment, now: number): Promise<void> {
      await run(
        adjustScript,
        keysFor(plans),
        {
          scopes: plans.map((plan) => scriptLimits(plan.limits)),
          requests: adjustment.requestsDelta,
          tokens: adjustment.tokensDelta,
          micro: adjustment.microUsdDelta,
          day: adjustment.day,
          month: adjustment.month,
          ...(adjustment.releaseRequestId === undefined ? {} : { release: adjustment.releaseRequestId }),
        },
        now,
      );
    },

    async read(plans: ScopePlan[]): Promise<ScopeState[]> {
      const pipeline = client.pipeline();
      for (const plan of plans) {
        pipeline.hmget(
          `${keyPrefix}${plan.scope.key}`,
          'rpm_tat',
          'tpm_tat',
          'day',
          'day_used',
          'month',
          'month_used',
          'limits',
          'limits_at',
          'limits_host',
        );
        pipeline.zrange(`${keyPrefix}${plan.scope.key}:leases`, '0', '-1', 'WITHSCORES');
      }
      let results: Array<[Error | null, unknown]> | null;
      try {
        results = await pipeline.exec();
      } catch (error) {
        throw new LimitStoreError('Redis read failed', { cause: error });
      }
      if (results === null) throw new LimitStoreError('Redis read failed: the pipeline was discarded');
      return plans.map((_, index) => {
        const [hashError, hash] = results[2 * index] ?? [new Error('missing reply'), null];
        const [leaseError, leases] = results[2 * index + 1] ?? [new Error('missing reply'), null];
        if (hashError !== null || leaseError !== null)
          throw new LimitStoreError('Redis read failed', { cause: hashError ?? leaseError });
        const [rpmTat, tpmTat, day, dayUsed, month, monthUsed, limits, limitsAt, limitsHost] = hash as Array<
          string | null
        >;
        const state: ScopeState = {};
        const recorded = recordedFrom(limits ?? null, limitsAt ?? null, limitsHost ?? null);
        if (recorded !== undefined) state.limits = recorded;
        if (rpmTat) state.rpm_tat = Number(rpmTat);
        if (tpmTat) state.tpm_tat = Number(tpmTat);
        if (day) state.day = day;
        if (dayUsed) state.day_used = Number(dayUsed);
        if (month) state.month = month;
        if (monthUsed) state.month_used = Number(monthUsed);
        const pairs = leases as string[];
        if (pairs.length > 0) {
          state.leases = {};
          for (let pair = 0; pair + 1 < pairs.length; pair += 2)
            state.leases[pairs[pair] as string] = Number(pairs[pair + 1]);
        }
        return state;
      });
    },

    async close(): Promise<void> {
      if (options.ownsClient) client.disconnect();
    },
  };
}
